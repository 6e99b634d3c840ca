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
use crate::encoding::auth::Key;
use crate::encoding::target::Target;
use crate::encoding::text::printable;
use crate::encoding::xfer::{self as wire, MAX_RESPONSE_HEAD, Response, Status};

/// Asks for the file from `offset`; the offer says what the server has.
pub fn ask(target: &Target, port: u16, opts: &Options, offset: u64) -> Result<Offer, FetchError> {
    match ask_in(wire::VERSION, target, port, opts, offset) {
        // An xfer from before version 2 says so in version 1: ask it that way, unless a
        // token is in play. Version 1 sends the token's digest, which anyone who sees it
        // can replay, and cannot authenticate the server: no downgrade to that.
        Err(FetchError::Refused { status: Status::UnsupportedVersion, target: t, .. }) if opts.token.is_some() => {
            Err(FetchError::Unauthenticated {
                target: t,
                why: "the server speaks only protocol version 1, which cannot use a token safely; upgrade it",
            })
        }
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
    // With a token, version 2 proves it by challenge-response: a fresh nonce of ours now,
    // the server's in its challenge.
    let key = opts.token.as_deref().map(Key::native);
    let client_nonce = match (&key, version) {
        (Some(_), v) if v >= 2 => {
            let mut n = [0u8; 32];
            getrandom::fill(&mut n).map_err(|e| lost(&peer, std::io::Error::other(e.to_string())))?;
            Some(n)
        }
        _ => None,
    };
    let req = match client_nonce {
        Some(n) => wire::Request::authenticated(offset, n),
        None if version < 2 => wire::Request::v1(offset, opts.token.as_ref().map(|t| *blake3::hash(t).as_bytes())),
        None => wire::Request::new(offset),
    };
    send(&mut stream, &wire::encode_request(&req), &peer, opts.timeout)?;
    let mut server_nonce: Option<[u8; 32]> = None;
    let mut buf = [0u8; MAX_RESPONSE_HEAD];
    let mut have = 0usize;
    loop {
        let need = match wire::decode_response(&buf[..have]) {
            Ok(Decoded::NeedMore(n)) => n,
            Ok(Decoded::Done(Response::Challenge { nonce }, used)) => {
                let (Some(key), Some(client), None) = (&key, client_nonce, server_nonce) else {
                    return Err(FetchError::Unauthenticated {
                        target: peer,
                        why: "the server sent a challenge no request asked for",
                    });
                };
                let proof = key.client_proof(&client, &nonce, offset, version);
                send(&mut stream, &wire::encode_proof(&wire::Proof { offset, proof }), &peer, opts.timeout)?;
                server_nonce = Some(nonce);
                buf.copy_within(used..have, 0);
                have -= used;
                continue;
            }
            Ok(Decoded::Done(Response::Ok { size, digest, name, mac }, _)) => {
                if let (Some(key), Some(client)) = (&key, client_nonce) {
                    // Nothing the server says is believed before it proves it has the token.
                    let (Some(server), Some(mac)) = (server_nonce, mac) else {
                        return Err(FetchError::Unauthenticated {
                            target: peer,
                            why: "the server answered without proving it knows the token \
                                  (it has none, or it is not the server you meant)",
                        });
                    };
                    let name_bytes = name.as_deref().unwrap_or(&[]);
                    let want = key.server_mac(&client, &server, &mac.header, name_bytes, offset);
                    if !crate::encoding::auth::same(&want, &mac.mac) {
                        return Err(FetchError::Unauthenticated {
                            target: peer,
                            why: "the server's proof is wrong: it does not know the token, or its answer was altered",
                        });
                    }
                }
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
        have += recv_head(&mut silence, &stream, &mut buf[have..have + need], have, "header bytes", &peer, opts)?;
    }
}

/// Reads more of a response head (`have` bytes of it, `what`, are in): how many arrived.
/// A close before the head is whole, silence past the timeout, and any other failure each
/// get their own error.
pub(super) fn recv_head(
    silence: &mut Silence,
    stream: &TcpStream,
    buf: &mut [u8],
    have: usize,
    what: &str,
    peer: &str,
    opts: &Options,
) -> Result<usize, FetchError> {
    match silence.recv(stream, buf, false, || {}) {
        Ok(0) => {
            let detail = if have == 0 {
                "closed the connection without answering".to_string()
            } else {
                format!("closed the connection after {have} {what}")
            };
            Err(FetchError::Closed { target: peer.to_string(), detail })
        }
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(FetchError::Timeout { target: peer.to_string(), timeout: opts.timeout })
        }
        Err(e) => Err(lost(peer, e)),
    }
}

/// Sends a request or a proof. A server that refuses before reading may close first; its
/// answer may still be there, so a broken pipe is left for the read to explain.
fn send(stream: &mut TcpStream, bytes: &[u8], peer: &str, timeout: Duration) -> Result<(), FetchError> {
    match stream.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(FetchError::Timeout { target: peer.to_string(), timeout })
        }
        Err(e) => Err(lost(peer, e)),
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
    // The address tried, or the name (with the port) when there were several.
    let shown = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => Target { host: target.host.clone(), port: Some(target.port.unwrap_or(port)) }.to_string(),
    };
    Err(FetchError::Connect { target: shown, source: last })
}
