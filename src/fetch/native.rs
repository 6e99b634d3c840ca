//! Asking an xfer server for the file in its own protocol (docs/PROTOCOL.md): connect,
//! send the 48-byte request (version 2, from `offset`), read the header (and the file's
//! name, or a refusal's reason and retry hint). An older server that does not speak
//! version 2 is asked again in version 1, which has no name.
//!
//! Owns the native exchange up to the first body byte; every body byte is `receive`'s.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::receive::{Framing, Silence};
use super::{FetchError, Offer, Options};
use crate::encoding::Decoded;
use crate::encoding::target::Target;
use crate::encoding::text::printable;
use crate::encoding::xfer::{self as wire, MAX_RESPONSE_HEAD, Response, Status};

/// Asks for the file from `offset`; the offer says what the server has.
pub fn ask(target: &Target, port: u16, opts: &Options, offset: u64) -> Result<Offer, FetchError> {
    match ask_in(wire::VERSION, target, port, opts, offset) {
        // An xfer from before version 2 says so in version 1: ask it that way.
        Err(FetchError::Refused { status: Status::UnsupportedVersion, .. }) => {
            ask_in(wire::V1, target, port, opts, offset)
        }
        r => r,
    }
}

fn ask_in(version: u8, target: &Target, port: u16, opts: &Options, offset: u64) -> Result<Offer, FetchError> {
    let (mut stream, peer) = connect(target, port, opts.timeout)?;
    let peer = peer.to_string();
    let mut silence = Silence::start(&stream, opts.timeout).map_err(|e| lost(&peer, e))?;
    stream.set_write_timeout(Some(opts.timeout)).map_err(|e| lost(&peer, e))?;
    let token = opts.token.as_ref().map(|t| *blake3::hash(t).as_bytes());
    let req = wire::encode_request(&wire::Request { version, offset, token });
    if let Err(e) = stream.write_all(&req) {
        // A server that refuses before reading may close first; its answer may still be there.
        if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    FetchError::Timeout { target: peer, timeout: opts.timeout }
                }
                _ => lost(&peer, e),
            });
        }
    }
    let mut buf = [0u8; MAX_RESPONSE_HEAD];
    let mut have = 0usize;
    loop {
        let need = match wire::decode_response(&buf[..have]) {
            Ok(Decoded::NeedMore(n)) => n,
            Ok(Decoded::Done(Response::Ok { size, digest, name }, _)) => {
                return Ok(Offer {
                    size: Some(size),
                    start: offset,
                    framing: Framing::Length(size.saturating_sub(offset)),
                    blake3: Some(digest),
                    sha256: None,
                    name,
                    etag: None,
                    last_modified: None,
                    leftover: Vec::new(),
                    stream,
                    silence,
                    peer,
                });
            }
            Ok(Decoded::Done(Response::Refused { status, reason, retry_after_ms }, _)) => {
                let reason = printable(&reason).into_owned();
                let retry_after = retry_after_ms.map(Duration::from_millis);
                return Err(FetchError::Refused { target: peer, status, reason, retry_after });
            }
            Err(source) => return Err(FetchError::Protocol { target: peer, source }),
        };
        match silence.recv(&stream, &mut buf[have..have + need], false, || {}) {
            Ok(0) => {
                let detail = if have == 0 {
                    "closed the connection without answering".to_string()
                } else {
                    format!("closed the connection after {have} header bytes")
                };
                return Err(FetchError::Closed { target: peer, detail });
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(FetchError::Timeout { target: peer, timeout: opts.timeout });
            }
            Err(e) => return Err(lost(&peer, e)),
        }
    }
}

pub(super) fn lost(target: &str, e: io::Error) -> FetchError {
    FetchError::Closed { target: target.to_string(), detail: format!("failed: {e}") }
}

/// Tries every resolved address in turn; the error names the last failure.
pub(super) fn connect(target: &Target, port: u16, timeout: Duration) -> Result<(TcpStream, SocketAddr), FetchError> {
    let addrs = crate::reactor::resolve(target, port)
        .map_err(|source| FetchError::Resolve { host: target.host.to_string(), source })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok((s, *addr)),
            Err(e) => last = e,
        }
    }
    let shown = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => target.to_string(),
    };
    Err(FetchError::Connect { target: shown, source: last })
}
