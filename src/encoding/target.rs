//! Where to connect or listen, as the user writes it: `host`, `host:port`, `[v6]:port`,
//! a bare IPv6 address, or one with a zone (`fe80::1%eth0`, `[fe80::1%eth0]:4747`).
//!
//! Pure parsing: names are not looked up and zones are not turned into interface numbers
//! here (that is `reactor::resolve`, which asks the system).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use thiserror::Error;

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A link-local IPv6 address with its zone: an interface name or number.
    Scoped(Ipv6Addr, String),
    Name(String),
}

/// A parsed `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("empty address")]
    Empty,
    #[error("missing `]` after an IPv6 address")]
    NoBracket,
    #[error("not an IPv6 address inside [ ]")]
    BadIpv6,
    #[error("expected `:PORT` after `]`")]
    AfterBracket,
    #[error("bad port `{0}`: expected a number from 0 to 65535")]
    BadPort(String),
    #[error("missing host before `:`")]
    NoHost,
    #[error("not a host name or address (write IPv6 with a port as [ADDR]:PORT)")]
    BadHost,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Scoped(v6, zone) => write!(f, "[{v6}%{zone}]"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Parses a target as the user wrote it.
pub fn parse(s: &str) -> Result<Target, TargetError> {
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(TargetError::NoBracket)?;
        let host = ipv6_host(inside).ok_or(TargetError::BadIpv6)?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':').ok_or(TargetError::AfterBracket)?)?),
        };
        return Ok(Target { host, port });
    }
    match s.matches(':').count() {
        0 => Ok(Target { host: host(s)?, port: None }),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            if h.is_empty() {
                return Err(TargetError::NoHost);
            }
            Ok(Target { host: host(h)?, port: Some(port(p)?) })
        }
        // Several colons and no brackets: only a bare IPv6 address makes sense.
        _ => Ok(Target { host: ipv6_host(s).ok_or(TargetError::BadHost)?, port: None }),
    }
}

fn port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::BadPort(p.to_string()));
    }
    p.parse().map_err(|_| TargetError::BadPort(p.to_string()))
}

/// An IPv6 address, with an optional `%zone`.
fn ipv6_host(s: &str) -> Option<Host> {
    match s.split_once('%') {
        Some((addr, zone)) => {
            let valid_zone = !zone.is_empty()
                && zone.len() <= 15 // IFNAMSIZ - 1
                && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            valid_zone.then_some(())?;
            Some(Host::Scoped(addr.parse().ok()?, zone.to_string()))
        }
        None => Some(Host::Ip(IpAddr::V6(s.parse().ok()?))),
    }
}

/// An IPv4 address or a DNS name (letters, digits, `-`, `_` and dots; at most 253 bytes).
fn host(s: &str) -> Result<Host, TargetError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let ok = s.len() <= 253
        && !s.starts_with(['-', '.'])
        && s.strip_suffix('.').unwrap_or(s).split('.').all(|label| !label.is_empty())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok { Ok(Host::Name(s.to_string())) } else { Err(TargetError::BadHost) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> (String, Option<u16>) {
        let t = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (t.host.to_string(), t.port)
    }

    #[test]
    fn forms() {
        assert_eq!(t("host"), ("host".into(), None));
        assert_eq!(t("host:80"), ("host".into(), Some(80)));
        assert_eq!(t("10.0.0.1:7"), ("10.0.0.1".into(), Some(7)));
        assert_eq!(t("[::1]:4747"), ("[::1]".into(), Some(4747)));
        assert_eq!(t("[::1]"), ("[::1]".into(), None));
        assert_eq!(t("::1"), ("[::1]".into(), None));
        assert_eq!(t("fe80::1%eth0"), ("[fe80::1%eth0]".into(), None));
        assert_eq!(t("[fe80::1%2]:9"), ("[fe80::1%2]".into(), Some(9)));
        assert_eq!(t("my-host.example."), ("my-host.example.".into(), None));
        assert_eq!(parse("::1").unwrap().host, Host::Ip("::1".parse().unwrap()));
    }

    #[test]
    fn errors() {
        for (bad, want) in [
            ("", TargetError::Empty),
            ("host:", TargetError::BadPort(String::new())),
            ("host:x", TargetError::BadPort("x".into())),
            ("host:70000", TargetError::BadPort("70000".into())),
            ("host:+80", TargetError::BadPort("+80".into())),
            (":80", TargetError::NoHost),
            ("[::1", TargetError::NoBracket),
            ("[::1]x", TargetError::AfterBracket),
            ("[nope]:1", TargetError::BadIpv6),
            ("a:b:c", TargetError::BadHost),
            ("fe80::1%", TargetError::BadHost),
            ("fe80::1%a b", TargetError::BadHost),
            ("-", TargetError::BadHost),
            ("a b", TargetError::BadHost),
            ("a..b", TargetError::BadHost),
        ] {
            assert_eq!(parse(bad), Err(want), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(t) = parse(&s) {
                prop_assert_eq!(parse(&t.to_string()), Ok(t));
            }
        }
    }
}
