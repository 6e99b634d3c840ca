//! Request and response framing, per protocol the load generator speaks: the bytes of one
//! request, where the head of a response ends and its body begins, and how the response
//! ends (at EOF, or after Content-Length body bytes on a kept-alive connection). This is
//! the one place to add a protocol: a variant here, and `load::drive` follows
//! [`Proto::keeps_alive`].
//!
//! Pure functions over byte slices, in the shape of `xfer::encoding`: they must never touch
//! a socket, know which server answers, or measure anything.

use xfer::encoding::Decoded;
use xfer::encoding::xfer::{HEADER_LEN, Request, Response, decode_response, encode_request};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// xfer's own protocol: the 48-byte request; a 48-byte header, the body, then EOF.
    /// The path is not sent: a server serves one file.
    Xfer,
    /// `GET /PATH HTTP/1.0`: a status line and headers, the body, then EOF (the server
    /// closes first).
    Http10,
    /// `GET /PATH HTTP/1.1` with a `Host`, kept alive: the body ends after Content-Length
    /// bytes, and the next request goes on the same connection.
    Http11,
}

/// A complete response head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Head {
    /// Bytes of the head; the body starts after them.
    pub len: usize,
    /// The server said `Connection: close`: no further request on this connection.
    pub closes: bool,
}

impl Proto {
    /// The bytes of one request for `path`.
    pub fn request(self, path: &str) -> Vec<u8> {
        match self {
            Proto::Xfer => encode_request(&Request::v1(0, None)).to_vec(),
            Proto::Http10 => format!("GET /{path} HTTP/1.0\r\n\r\n").into_bytes(),
            Proto::Http11 => format!("GET /{path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes(),
        }
    }

    /// Whether a response ends at its Content-Length, the connection staying open for the
    /// next request (otherwise it ends at EOF).
    pub fn keeps_alive(self) -> bool {
        self == Proto::Http11
    }

    /// Parses a response head from the bytes so far: `Ok(Some(head))` when complete and
    /// announcing `size` body bytes, `Ok(None)` when more is needed.
    pub fn parse_head(self, buf: &[u8], size: u64) -> Result<Option<Head>, String> {
        match self {
            Proto::Xfer => match decode_response(buf) {
                Ok(Decoded::NeedMore(_)) => Ok(None),
                Ok(Decoded::Done(Response::Ok { size: got, .. }, used)) => {
                    if got != size {
                        return Err(format!("header announces {got} bytes, file has {size}"));
                    }
                    debug_assert_eq!(used, HEADER_LEN);
                    Ok(Some(Head { len: used, closes: true }))
                }
                Ok(Decoded::Done(Response::Challenge { .. }, _)) => {
                    Err("challenged: the bench runs without a token".into())
                }
                Ok(Decoded::Done(Response::Refused { status, reason, .. }, _)) => {
                    Err(format!("refused {status:?}: {reason}"))
                }
                Err(e) => Err(format!("bad header: {e}")),
            },
            Proto::Http10 | Proto::Http11 => {
                let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return if buf.len() > 16384 { Err("HTTP header over 16 KiB".into()) } else { Ok(None) };
                };
                let mut lines = buf[..i].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
                let status = lines.next().unwrap_or(b"");
                if !(status.starts_with(b"HTTP/1.") && status.get(8..12) == Some(b" 200")) {
                    return Err(format!("HTTP status {:?}", String::from_utf8_lossy(status)));
                }
                if self == Proto::Http10 {
                    // The body's length is checked against `size` at EOF: with HTTP/1.0
                    // the close ends the body.
                    return Ok(Some(Head { len: i + 4, closes: true }));
                }
                let (mut length, mut closes) = (None, false);
                for line in lines {
                    let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
                    let (name, value) = (&line[..colon], String::from_utf8_lossy(&line[colon + 1..]));
                    if name.eq_ignore_ascii_case(b"content-length") {
                        length = value.trim().parse::<u64>().ok();
                    } else if name.eq_ignore_ascii_case(b"connection") {
                        closes = value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
                    }
                }
                match length {
                    Some(n) if n == size => Ok(Some(Head { len: i + 4, closes })),
                    Some(n) => Err(format!("Content-Length {n}, file has {size}")),
                    None => Err("no Content-Length on a kept-alive response".into()),
                }
            }
        }
    }
}
