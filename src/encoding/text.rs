//! Text that came from outside (a peer's refusal reason, a file name, a command-line
//! argument) made safe to show on one line of a terminal, or to paste into a shell.
//!
//! Pure functions. A terminal obeys escape sequences, so a server that could put ESC, CR or
//! BEL into our error line could rewrite the user's screen; bidirectional overrides can make
//! a line read differently from what it says. Everything of that kind is shown escaped.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` with control characters, backslashes and invisible direction marks escaped
/// (`\n`, `\x1b`, `\u{202e}`, `\\`), so it prints as one inert line.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path (or any OS string) for a message: like [`printable`], with bytes that are not
/// UTF-8 shown as `\xNN` rather than lost.
pub fn path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&printable(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `s` quoted for a POSIX shell when it needs it: as is when it is made only of characters
/// no shell treats specially, in single quotes otherwise, and as `$'…'` (bash, zsh, ksh)
/// when it holds characters that cannot be typed as they are.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+,=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    if s.chars().any(needs_escape) {
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if needs_escape(c) => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        return Cow::Owned(out);
    }
    Cow::Owned(format!("'{}'", s.replace('\'', "'\\''")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(printable("server busy: try again"), Cow::Borrowed(_)));
        assert_eq!(printable("héllo wörld"), "héllo wörld");
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(printable("x\ny\rz\u{7}\0"), "x\\ny\\rz\\x07\\x00");
        assert_eq!(printable("back\\slash"), "back\\\\slash");
        assert_eq!(printable("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(printable("c1\u{9b}"), "c1\\u{9b}");
    }

    #[test]
    fn paths_keep_their_bytes_visible() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"dir/caf\xc3\xa9 \xff\x1b.txt"));
        assert_eq!(path(p), "dir/café \\xff\\x1b.txt");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("output_file/sample.txt"), "output_file/sample.txt");
        assert_eq!(shell_quote("my file.txt"), "'my file.txt'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\nb"), "$'a\\x0ab'");
    }

    proptest! {
        #[test]
        fn printable_is_one_inert_line(s in any::<String>()) {
            let p = printable(&s);
            prop_assert!(!p.chars().any(|c| c.is_control()), "{:?}", p);
            let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            prop_assert!(!p.chars().any(bidi), "{:?}", p);
        }

        #[test]
        fn shell_quote_never_leaks_a_control(s in any::<String>()) {
            let q = shell_quote(&s);
            prop_assert!(!q.chars().any(|c| c.is_control()), "{:?}", q);
        }
    }
}
