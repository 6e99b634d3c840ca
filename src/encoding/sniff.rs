//! Which protocol a connection speaks, from its first bytes. Both share one port.
//!
//! The native request starts with `0xF0`, which is not ASCII, so it is never confused with
//! HTTP (a method: upper-case letters, then a space) or TLS (`0x16`). Anything else is
//! neither, and is closed unanswered.

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Xfer,
    Http,
    Unknown,
}

/// Longest method token looked at; real methods are far shorter.
pub const MAX_METHOD: usize = 16;

/// Decides the protocol from the bytes received so far; `None` until they decide it.
pub fn sniff(first: &[u8]) -> Option<Protocol> {
    let &b0 = first.first()?;
    if b0 == 0xF0 {
        return Some(Protocol::Xfer);
    }
    for (i, &b) in first.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' => {}
            b' ' if i > 0 => return Some(Protocol::Http),
            _ => return Some(Protocol::Unknown),
        }
    }
    if first.len() > MAX_METHOD { Some(Protocol::Unknown) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_bytes_decide() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(&[0xF0]), Some(Protocol::Xfer));
        assert_eq!(sniff(b"G"), None);
        assert_eq!(sniff(b"GET"), None);
        assert_eq!(sniff(b"GET "), Some(Protocol::Http));
        assert_eq!(sniff(b"HEAD /x HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(sniff(b"BREW / HTTP/1.1"), Some(Protocol::Http), "unknown methods are HTTP's to refuse");
        assert_eq!(sniff(b" GET"), Some(Protocol::Unknown));
        assert_eq!(sniff(b"get /"), Some(Protocol::Unknown));
        assert_eq!(sniff(&[0x16, 3, 1]), Some(Protocol::Unknown), "TLS");
        assert_eq!(sniff(b"AAAAAAAAAAAAAAAAA"), Some(Protocol::Unknown), "no method is that long");
        assert_eq!(sniff(b"AAAAAAAAAAAAAAAA"), None);
        assert_eq!(sniff(b"AAAAAAAAAAAAAAAA "), Some(Protocol::Http), "a method of MAX_METHOD letters is one");
    }

    proptest! {
        #[test]
        fn a_decision_stands_for_every_longer_input(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            for cut in 0..=bytes.len() {
                if let Some(p) = sniff(&bytes[..cut]) {
                    prop_assert_eq!(sniff(&bytes), Some(p));
                    break;
                }
            }
        }
    }
}
