//! Request and response framing, per protocol the load generator speaks: the bytes of one
//! request, and where the head of a response ends and its body begins. This is the one place
//! to add a protocol (say HTTP/1.1 with keep-alive, against xfer and nginx alike): a variant
//! here, and in `load::drive` the point where a response ends (today: at EOF, for both).
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
    /// `GET /PATH HTTP/1.0`: a status line and headers, the body, then EOF.
    Http10,
}

impl Proto {
    /// The bytes of one request for `path`.
    pub fn request(self, path: &str) -> Vec<u8> {
        match self {
            Proto::Xfer => encode_request(&Request::v1(0, None)).to_vec(),
            Proto::Http10 => format!("GET /{path} HTTP/1.0\r\n\r\n").into_bytes(),
        }
    }

    /// Parses a response head from the bytes so far: `Ok(Some(head_len))` when complete and
    /// announcing `size` body bytes, `Ok(None)` when more is needed.
    pub fn parse_head(self, buf: &[u8], size: u64) -> Result<Option<usize>, String> {
        match self {
            Proto::Xfer => match decode_response(buf) {
                Ok(Decoded::NeedMore(_)) => Ok(None),
                Ok(Decoded::Done(Response::Ok { size: got, .. }, used)) => {
                    if got != size {
                        return Err(format!("header announces {got} bytes, file has {size}"));
                    }
                    debug_assert_eq!(used, HEADER_LEN);
                    Ok(Some(used))
                }
                Ok(Decoded::Done(Response::Challenge { .. }, _)) => {
                    Err("challenged: the bench runs without a token".into())
                }
                Ok(Decoded::Done(Response::Refused { status, reason, .. }, _)) => {
                    Err(format!("refused {status:?}: {reason}"))
                }
                Err(e) => Err(format!("bad header: {e}")),
            },
            Proto::Http10 => {
                // The body's length is checked against `size` at EOF, not read from
                // Content-Length: with HTTP/1.0 the close ends the body.
                let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return if buf.len() > 16384 { Err("HTTP header over 16 KiB".into()) } else { Ok(None) };
                };
                let line = buf[..i].split(|&b| b == b'\r').next().unwrap_or(b"");
                if !(line.starts_with(b"HTTP/1.") && line.get(8..12) == Some(b" 200")) {
                    return Err(format!("HTTP status {:?}", String::from_utf8_lossy(line)));
                }
                Ok(Some(i + 4))
            }
        }
    }
}
