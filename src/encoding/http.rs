//! HTTP/1.1 as xfer speaks it: request heads parsed (with `httparse`, in place, no I/O),
//! and the pieces of a response head rendered. RFC 9110 (semantics), RFC 9112 (HTTP/1.1).
//!
//! Pure functions, as everywhere in `encoding`: nothing here reads a socket or allocates
//! in proportion to what a peer sent (a request head is at most [`MAX_HEAD`] bytes; a
//! `Range` header is looked at, never expanded). What the server answers to a request is
//! decided in `serve::http`; this module says what the bytes mean and how to write them.
//!
//! Strictness that keeps a proxy in front from being fooled (request smuggling): a body on
//! a request is refused, `Transfer-Encoding` is refused, two `Content-Length`s or two
//! `Host`s are refused, and httparse refuses bare CR, NUL and obsolete line folding.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use thiserror::Error;

use super::Decoded;

/// Longest request head accepted (request line and headers); a longer one gets 431.
pub const MAX_HEAD: usize = 8192;
/// Longest request line accepted; a longer one gets 414.
pub const MAX_LINE: usize = 4096;
/// Most header fields accepted in one request; more gets 431.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other method: answered 405.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head: the method, the target, and the few fields xfer acts on, all
/// borrowed from the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The method as sent (for the log).
    pub method_name: &'a str,
    /// The request target as sent (origin form `/path?query`, or absolute form).
    pub target: &'a str,
    pub version: Version,
    /// Whether the connection may carry another request after this one's reply.
    pub keep_alive: bool,
    pub host: Option<&'a str>,
    /// `None` as well when the field came twice (a range then means nothing).
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// Why a request head cannot be served; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request line too long")]
    LineTooLong,
    #[error("malformed request")]
    Malformed,
    #[error("HTTP version not supported")]
    Version,
    #[error("a request body is not accepted")]
    Body,
}

impl Error {
    pub fn status(self) -> u16 {
        match self {
            Error::HeadTooLarge => 431,
            Error::LineTooLong => 414,
            Error::Malformed => 400,
            Error::Version => 505,
            Error::Body => 413,
        }
    }
}

/// Parses a request head from the bytes received so far. `Done(request, n)`: the head is
/// the first `n` bytes (anything after it is the next, pipelined request).
pub fn parse(buf: &[u8]) -> Result<Decoded<Request<'_>>, Error> {
    // The request line's length is known before the head is whole.
    let line_end = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n');
    if line_end.is_none() && buf.len() > MAX_LINE {
        return Err(Error::LineTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore(1)),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(Error::Version),
        Err(_) => return Err(Error::Malformed),
    };
    if n > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let (Some(method_name), Some(target), Some(v)) = (req.method, req.path, req.version) else {
        return Err(Error::Malformed);
    };
    let version = if v == 0 { Version::Http10 } else { Version::Http11 };
    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let mut out = Request {
        method,
        method_name,
        target,
        version,
        keep_alive: version == Version::Http11,
        host: None,
        range: None,
        if_range: None,
        if_none_match: None,
        if_modified_since: None,
        authorization: None,
    };
    let (mut lengths, mut hosts, mut ranges) = (0, 0, 0);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).ok().map(str::trim);
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::Body);
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match value {
                Some("0") if lengths == 1 => {}
                Some(v) if lengths == 1 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(Error::Body);
                }
                _ => return Err(Error::Malformed),
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            out.host = value;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::Http10 {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("range") {
            ranges += 1;
            out.range = value;
        } else if name.eq_ignore_ascii_case("if-range") {
            out.if_range = out.if_range.or(value);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            out.if_none_match = out.if_none_match.or(value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            out.if_modified_since = out.if_modified_since.or(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = out.authorization.or(value);
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is a bad request.
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(Error::Malformed);
    }
    if ranges > 1 {
        out.range = None;
    }
    Ok(Decoded::Done(out, n))
}

/// The path of a request target, percent-decoded, without the query: the bytes to compare
/// with a resource's name. `None` for a target that is no path at all.
pub fn path_bytes(target: &str) -> Option<Cow<'_, [u8]>> {
    let path = if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        // Absolute form (what proxies send): the path starts after the authority.
        rest.find('/').map_or("/", |i| &rest[i..])
    } else if target.starts_with('/') {
        target
    } else {
        return None;
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    Some(percent_encoding::percent_decode_str(path).into())
}

/// Bytes that stay as they are in a URL path segment; everything else is %-encoded.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A file name as one URL path segment (`my file.txt` → `my%20file.txt`).
pub fn url_segment(name: &[u8]) -> String {
    percent_encoding::percent_encode(name, SEGMENT).to_string()
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range (none, another unit, malformed, or several): send it all (RFC 9110
    /// §14.2 lets a server ignore a range; xfer answers several ranges with the whole).
    Full,
    /// Bytes `start..end` (end exclusive; never empty).
    Part(u64, u64),
    /// Not satisfiable: 416.
    Unsatisfiable,
}

/// Reads a single byte range (`a-b`, `a-`, `-n`). Numbers past 2^64 are handled as the
/// RFC says (a last position past the end means the end; a first one means nothing fits).
pub fn parse_range(value: &str, size: u64) -> Ranged {
    let v = value.trim();
    let spec = match v.get(..6) {
        Some(unit) if unit.eq_ignore_ascii_case("bytes=") => &v[6..],
        _ => return Ranged::Full,
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Full };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u128> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let size128 = size as u128;
    match (first.is_empty(), last.is_empty()) {
        // "-n": the last n bytes.
        (true, false) => match num(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part((size128.saturating_sub(n)) as u64, size),
            None => Ranged::Full,
        },
        // "a-": from a to the end.
        (false, true) => match num(first) {
            Some(a) if a >= size128 => Ranged::Unsatisfiable,
            Some(a) => Ranged::Part(a as u64, size),
            None => Ranged::Full,
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if b < a => Ranged::Full,
            (Some(a), Some(_)) if a >= size128 => Ranged::Unsatisfiable,
            (Some(a), Some(b)) => Ranged::Part(a as u64, (b + 1).min(size128) as u64),
            _ => Ranged::Full,
        },
        (true, true) => Ranged::Full,
    }
}

/// Whether `list` (an `If-None-Match` or `If-Range` value) names `etag`. `weak`: compare
/// ignoring a `W/` prefix (If-None-Match); otherwise both must be strong (If-Range).
pub fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return weak;
        }
        match t.strip_prefix("W/") {
            Some(w) => weak && w == etag,
            None => t == etag,
        }
    })
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, or the two older forms).
pub fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn fmt_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The reason phrase for a status xfer sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `Content-Disposition: attachment` for a file name: `filename="…"` with an ASCII stand-in
/// that no header parser can misread, and RFC 5987 `filename*` with the exact name when it
/// is not plain ASCII. No byte of the name can end the header or start another.
pub fn content_disposition(out: &mut impl fmt::Write, name: &[u8]) -> fmt::Result {
    let plain = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ';
    out.write_str("attachment; filename=\"")?;
    for &b in name {
        out.write_char(if plain(b) { b as char } else { '_' })?;
    }
    out.write_char('"')?;
    if !name.iter().all(|&b| plain(b)) {
        // attr-char (RFC 5987): ALPHA DIGIT ! # $ & + - . ^ _ ` | ~
        const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'!')
            .remove(b'#')
            .remove(b'$')
            .remove(b'&')
            .remove(b'+')
            .remove(b'-')
            .remove(b'.')
            .remove(b'^')
            .remove(b'_')
            .remove(b'`')
            .remove(b'|')
            .remove(b'~');
        write!(out, "; filename*=UTF-8''{}", percent_encoding::percent_encode(name, ATTR))?;
    }
    Ok(())
}

/// Text made safe inside HTML (element content and quoted attribute values).
pub fn html(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A checksum file's line, as `b3sum` and `sha256sum` print it and `-c` reads it:
/// `HEX  NAME`. A name holding a backslash, CR or newline is escaped the way coreutils
/// does (`\` before the line, `\\`, `\n`, `\r` in the name).
pub fn checksum_line(hex: &str, name: &[u8]) -> Vec<u8> {
    let escape = name.iter().any(|&b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut out = Vec::with_capacity(hex.len() + name.len() + 4);
    if escape {
        out.push(b'\\');
    }
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(b"  ");
    for &b in name {
        match b {
            b'\\' if escape => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

/// Standard base64 with padding (RFC 4648), for the digest headers.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A bounded writer over a byte buffer, for rendering a head on the stack. Writing past
/// the end is an error (the head is then not sent as is; callers size for the worst case).
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&mut self, b: &[u8]) -> fmt::Result {
        let end = self.len.checked_add(b.len()).filter(|&e| e <= self.buf.len()).ok_or(fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write;

    fn done(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Ok(Decoded::Done(r, n)) => (r, n),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn requests() {
        let (r, n) = done(b"GET /f.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\nGET /next");
        assert_eq!(n, 50);
        assert_eq!((r.method, r.target, r.version, r.keep_alive), (Method::Get, "/f.bin", Version::Http11, true));
        assert_eq!((r.host, r.range), (Some("x"), Some("bytes=0-9")));
        let (r, _) = done(b"HEAD / HTTP/1.0\r\n\r\n");
        assert_eq!((r.method, r.version, r.keep_alive), (Method::Head, Version::Http10, false));
        let (r, _) = done(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = done(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, Method::Other);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.method, Method::Get);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=5-6\r\n\r\n");
        assert_eq!(r.range, None, "two ranges mean nothing");
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(Decoded::NeedMore(1)));
    }

    #[test]
    fn refusals() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Error::Body),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Error::Body),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/2.0\r\n\r\n", Error::Version),
        ] {
            assert_eq!(parse(bytes), Err(want), "{:?}", String::from_utf8_lossy(bytes));
        }
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_LINE));
        assert_eq!(parse(long_line.as_bytes()), Err(Error::LineTooLong));
        assert_eq!(parse(&long_line.as_bytes()[..MAX_LINE + 1]), Err(Error::LineTooLong), "known before the end");
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes()), Err(Error::HeadTooLarge));
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS));
        assert_eq!(parse(many.as_bytes()), Err(Error::HeadTooLarge));
    }

    #[test]
    fn paths() {
        assert_eq!(path_bytes("/my%20file.txt?x=1").as_deref(), Some(&b"/my file.txt"[..]));
        assert_eq!(path_bytes("http://h:1/a%2Fb").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(path_bytes("http://h:1").as_deref(), Some(&b"/"[..]));
        assert_eq!(path_bytes("/%00%ff").as_deref(), Some(&b"/\0\xff"[..]));
        assert_eq!(path_bytes("/%252F").as_deref(), Some(&b"/%2F"[..]), "decoded once");
        assert_eq!(path_bytes("*"), None);
        assert_eq!(url_segment("my file-1.txt".as_bytes()), "my%20file-1.txt");
        assert_eq!(url_segment(b"a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn ranges() {
        let r = |v: &str| parse_range(v, 1000);
        assert_eq!(r("bytes=0-99"), Ranged::Part(0, 100));
        assert_eq!(r("bytes=990-"), Ranged::Part(990, 1000));
        assert_eq!(r("bytes=-10"), Ranged::Part(990, 1000));
        assert_eq!(r("bytes=-5000"), Ranged::Part(0, 1000));
        assert_eq!(r("bytes=500-99999999999999999999999"), Ranged::Part(500, 1000));
        assert_eq!(r("bytes=1000-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=5-4"), Ranged::Full, "invalid: ignored");
        assert_eq!(r("bytes=0-0,5-6"), Ranged::Full, "several: the whole");
        assert_eq!(r(&format!("bytes={}", "0-0,".repeat(10_000))), Ranged::Full);
        assert_eq!(r("items=0-5"), Ranged::Full);
        assert_eq!(r("bytes=-"), Ranged::Full);
        assert_eq!(r("bytes= 1 - 2 "), Ranged::Part(1, 3));
        assert_eq!(r("bytes=+1-2"), Ranged::Full);
        assert_eq!(parse_range("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Ranged::Unsatisfiable);
        let big = 5u64 << 32;
        assert_eq!(parse_range("bytes=4294967296-", big), Ranged::Part(1 << 32, big));
    }

    #[test]
    fn etags_and_dates() {
        let e = "\"abc\"";
        assert!(etag_matches("\"abc\"", e, true));
        assert!(etag_matches("\"x\", W/\"abc\"", e, true));
        assert!(!etag_matches("W/\"abc\"", e, false), "If-Range wants a strong match");
        assert!(etag_matches("*", e, true));
        assert!(!etag_matches("\"abd\"", e, true));
        let t = parse_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(fmt_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn names_in_headers_and_pages() {
        let mut s = String::new();
        content_disposition(&mut s, b"report 2026.pdf").unwrap();
        assert_eq!(s, "attachment; filename=\"report 2026.pdf\"");
        let mut s = String::new();
        content_disposition(&mut s, "é\"x\r\nSet-Cookie: a;.txt".as_bytes()).unwrap();
        assert!(!s.contains(['\r', '\n']), "{s}");
        assert_eq!(s.matches('"').count(), 2, "{s}");
        assert!(s.contains("filename*=UTF-8''%C3%A9%22x%0D%0ASet-Cookie%3A%20a%3B.txt"), "{s}");
        assert_eq!(html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(checksum_line("ab", b"f.txt"), b"ab  f.txt\n");
        assert_eq!(checksum_line("ab", b"a\\b\nc"), b"\\ab  a\\\\b\\nc\n");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let mut buf = [0u8; 4];
        let mut out = Out::new(&mut buf);
        assert!(out.write_str("abcd").is_ok());
        assert!(out.write_str("e").is_err());
        assert_eq!(out.len(), 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parse_never_panics_and_prefixes_agree(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let whole = parse(&bytes);
            if let Ok(Decoded::Done(r, n)) = &whole {
                prop_assert!(*n <= bytes.len() && *n <= MAX_HEAD);
                prop_assert_eq!(parse(&bytes[..*n]), Ok(Decoded::Done(r.clone(), *n)));
            }
        }

        #[test]
        fn near_valid_heads(
            method in "(GET|HEAD|POST|get|G ET)",
            path in "/[ -~]{0,40}",
            headers in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..8),
        ) {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &headers {
                req.push_str(&format!("{n}: {v}\r\n"));
            }
            req.push_str("\r\n");
            // Any verdict is fine; a head accepted whole is accepted from exactly its bytes.
            if let Ok(Decoded::Done(r, n)) = parse(req.as_bytes()) {
                prop_assert_eq!(n, req.len());
                prop_assert_eq!(r.target, path.as_str());
            }
        }

        #[test]
        fn ranges_stay_inside(v in "bytes=[0-9]{0,25}-[0-9]{0,25}", size in any::<u64>()) {
            match parse_range(&v, size) {
                Ranged::Part(a, b) => prop_assert!(a < b && b <= size),
                Ranged::Full | Ranged::Unsatisfiable => {}
            }
        }

        #[test]
        fn disposition_is_one_header_line(name in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut s = String::new();
            content_disposition(&mut s, &name).unwrap();
            prop_assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", s);
            prop_assert_eq!(s.matches('"').count(), 2);
        }
    }
}
