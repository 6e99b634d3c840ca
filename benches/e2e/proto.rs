//! Request and response framing, per protocol the load generator speaks: the bytes of one
//! request, where the head of a response ends and its body begins, and how the response
//! ends (at EOF, or after Content-Length body bytes on a kept-alive connection). This is
//! the one place to add a protocol: a variant here, and `load::drive` follows
//! [`Proto::keeps_alive`].
//!
//! A server with a token is asked with it: over HTTP as `Authorization: Bearer` in the
//! request, over the native protocol by the challenge-response of docs/PROTOCOL.md
//! ("Authentication"), whose per-connection state ([`NativeAuth`]) is here too.
//!
//! Pure functions over byte slices, in the shape of `xfer::encoding`: they must never touch
//! a socket, know which server answers, or measure anything.

use xfer::encoding::Decoded;
use xfer::encoding::auth::{Key, same};
use xfer::encoding::xfer::{
    HEADER_LEN, Proof, REQUEST_LEN, Request, Response, VERSION, decode_response, encode_proof, encode_request,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// xfer's own protocol: the 48-byte request; a 48-byte header, the body, then EOF.
    /// The path is not sent: a server serves one file. Version 1, no token.
    Xfer,
    /// The native protocol in version 2, as `xfer fetch` speaks it: the 48-byte request; a
    /// header and the file's name, the body, then EOF. With a token, the challenge-response
    /// comes first (a fresh nonce per connection, one more round trip, the server's MAC
    /// checked), through [`NativeAuth`].
    XferV2,
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

/// The token a server requires, as clients prove it: its text, sent over HTTP as
/// `Authorization: Bearer`, and the native protocol's key derived from it.
#[derive(Clone)]
pub struct Credential {
    bearer: String,
    key: Key,
}

impl Credential {
    /// `token`: the first line of the server's token file, without its line end.
    pub fn new(token: &str) -> Credential {
        Credential { bearer: token.to_string(), key: Key::native(token.as_bytes()) }
    }
}

impl Proto {
    /// The bytes of one request for `path`, the same for every connection. Native version 2
    /// with a token has none: each connection sends its own ([`NativeAuth`]).
    pub fn request(self, path: &str, cred: Option<&Credential>) -> Vec<u8> {
        let auth = cred.map(|c| format!("Authorization: Bearer {}\r\n", c.bearer)).unwrap_or_default();
        match self {
            Proto::Xfer => encode_request(&Request::v1(0, None)).to_vec(),
            Proto::XferV2 if cred.is_some() => Vec::new(),
            Proto::XferV2 => encode_request(&Request::new(0)).to_vec(),
            Proto::Http10 => format!("GET /{path} HTTP/1.0\r\n{auth}\r\n").into_bytes(),
            Proto::Http11 => format!("GET /{path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes(),
        }
    }

    /// Whether this is one of xfer's native versions (nginx speaks only HTTP).
    pub fn native(self) -> bool {
        matches!(self, Proto::Xfer | Proto::XferV2)
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
            Proto::Xfer | Proto::XferV2 => match decode_response(buf) {
                Ok(Decoded::NeedMore(_)) => Ok(None),
                Ok(Decoded::Done(Response::Ok { size: got, mac, .. }, used)) => {
                    if got != size {
                        return Err(format!("header announces {got} bytes, file has {size}"));
                    }
                    if mac.is_some() {
                        return Err("a MAC no request asked for".into());
                    }
                    debug_assert!(self == Proto::XferV2 || used == HEADER_LEN);
                    Ok(Some(Head { len: used, closes: true }))
                }
                Ok(Decoded::Done(Response::Challenge { .. }, _)) => {
                    Err("challenged: the request carries no token".into())
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

/// What a native challenge-response's bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// More bytes are needed.
    More,
    /// The challenge is in and answered: send [`NativeAuth::message`] (the proof) and read
    /// the next head from an empty buffer.
    Proof,
    /// The success head, its MAC checked; the body follows.
    Head(Head),
}

/// One connection's native challenge-response (docs/PROTOCOL.md, "Authentication"): the
/// request with a fresh nonce, then the proof over both nonces once the server's challenge
/// is in, then the check of the server's MAC over the header and name it sends. Offset 0.
pub struct NativeAuth {
    key: Key,
    nonce: [u8; 32],
    server_nonce: Option<[u8; 32]>,
    /// What to send now: the request, then the proof (both 48 bytes).
    message: [u8; REQUEST_LEN],
}

impl NativeAuth {
    /// A new connection's exchange, with a fresh nonce from the operating system.
    pub fn new(cred: &Credential) -> NativeAuth {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).expect("getrandom");
        let message = encode_request(&Request::authenticated(0, nonce));
        NativeAuth { key: cred.key.clone(), nonce, server_nonce: None, message }
    }

    /// The bytes to send now.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Parses what the server sent since the last message: the challenge (then the proof is
    /// made), or the success head, whose size must be `size` and whose MAC must be right.
    pub fn parse_head(&mut self, buf: &[u8], size: u64) -> Result<AuthStep, String> {
        match decode_response(buf) {
            Ok(Decoded::NeedMore(_)) => Ok(AuthStep::More),
            Ok(Decoded::Done(Response::Challenge { nonce }, used)) => {
                if self.server_nonce.is_some() {
                    return Err("a second challenge".into());
                }
                if used != buf.len() {
                    return Err("bytes after the challenge".into());
                }
                let proof = self.key.client_proof(&self.nonce, &nonce, 0, VERSION);
                self.message = encode_proof(&Proof { offset: 0, proof });
                self.server_nonce = Some(nonce);
                Ok(AuthStep::Proof)
            }
            Ok(Decoded::Done(Response::Ok { size: got, name, mac, .. }, used)) => {
                let (Some(server), Some(mac)) = (self.server_nonce, mac) else {
                    return Err("a success without a challenge or without a MAC".into());
                };
                let name = name.unwrap_or_default();
                let want = self.key.server_mac(&self.nonce, &server, &mac.header, &name, 0);
                if !same(&want, &mac.mac) {
                    return Err("the server's MAC is wrong".into());
                }
                if got != size {
                    return Err(format!("header announces {got} bytes, file has {size}"));
                }
                Ok(AuthStep::Head(Head { len: used, closes: true }))
            }
            Ok(Decoded::Done(Response::Refused { status, reason, .. }, _)) => {
                Err(format!("refused {status:?}: {reason}"))
            }
            Err(e) => Err(format!("bad header: {e}")),
        }
    }
}
