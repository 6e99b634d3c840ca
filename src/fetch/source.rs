//! What to fetch from: an xfer server (`host[:port]`, the native protocol) or any HTTP
//! server (`http://host[:port]/path`).
//!
//! Owns the parsing of the command line's first argument into one of the two, and the key
//! that names a source in a kept partial's record, so that "the same command again"
//! recognises its own partial. Must never touch the network.

use super::FetchError;
use crate::encoding::target::{self, Target};

#[derive(Debug, Clone)]
pub enum Source {
    /// An xfer server; `port` is `--port`, used when the target names none.
    Xfer {
        target: Target,
        port: u16,
    },
    Http {
        url: url::Url,
    },
}

impl Source {
    /// Reads the command line's source argument.
    pub fn parse(arg: &str, port: Option<u16>) -> Result<Source, FetchError> {
        let lower = arg.get(..8).unwrap_or(arg).to_ascii_lowercase();
        if lower.starts_with("http://") {
            if port.is_some() {
                return Err(FetchError::Usage("--port does not apply to a URL; put the port in the URL".into()));
            }
            let url = url::Url::parse(arg).map_err(|e| FetchError::Usage(format!("bad URL `{}`: {e}", shown(arg))))?;
            if url.host().is_none() {
                return Err(FetchError::Usage(format!("bad URL `{}`: no host", shown(arg))));
            }
            return Ok(Source::Http { url });
        }
        if lower.starts_with("https://") {
            return Err(FetchError::Usage(
                "https is not supported yet; use http:// or xfer's own protocol (HOST[:PORT])".into(),
            ));
        }
        if let Some((scheme, _)) = arg.split_once("://") {
            return Err(FetchError::Usage(format!(
                "unknown scheme `{}`: give HOST[:PORT] for an xfer server or an http:// URL",
                shown(scheme)
            )));
        }
        let target = target::parse(arg).map_err(|e| FetchError::BadTarget(shown(arg), e))?;
        Ok(Source::Xfer { target, port: port.unwrap_or(crate::DEFAULT_PORT) })
    }

    /// How a kept partial's record names this source.
    pub fn key(&self) -> String {
        match self {
            Source::Xfer { target, port } => {
                let t = Target { host: target.host.clone(), port: Some(target.port.unwrap_or(*port)) };
                format!("xfer://{t}")
            }
            Source::Http { url } => url.as_str().to_string(),
        }
    }

    /// The name the URL's path ends with, percent-decoded: HTTP's fallback file name.
    pub fn url_name(&self) -> Option<Vec<u8>> {
        let Source::Http { url } = self else { return None };
        let last = url.path_segments()?.next_back()?;
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(last).collect();
        (!bytes.is_empty()).then_some(bytes)
    }
}

fn shown(s: &str) -> String {
    crate::encoding::text::printable(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert!(matches!(Source::parse("host:9", None), Ok(Source::Xfer { .. })));
        assert_eq!(Source::parse("host", Some(7)).unwrap().key(), "xfer://host:7");
        assert_eq!(Source::parse("[::1]:5", None).unwrap().key(), "xfer://[::1]:5");
        let s = Source::parse("http://h:8080/dir/my%20file.txt?x=1", None).unwrap();
        assert_eq!(s.key(), "http://h:8080/dir/my%20file.txt?x=1");
        assert_eq!(s.url_name().as_deref(), Some(&b"my file.txt"[..]));
        assert_eq!(Source::parse("HTTP://h/", None).unwrap().url_name(), None);
        for bad in ["https://h/x", "ftp://h/x", "http://", "http://h/x --port"] {
            let port = bad.ends_with("--port").then_some(1);
            assert!(Source::parse(bad.trim_end_matches(" --port"), port).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_what_was_given_made_printable() {
        let text = |arg: &str| Source::parse(arg, None).unwrap_err().to_string();
        assert_eq!(text("http://[::1/x"), "bad URL `http://[::1/x`: invalid IPv6 address");
        assert_eq!(
            text("ftp\x1b[2J://h/x"),
            "unknown scheme `ftp\\x1b[2J`: give HOST[:PORT] for an xfer server or an http:// URL"
        );
        assert!(text("[::1").starts_with("bad address `[::1`: "), "{}", text("[::1"));
    }
}
