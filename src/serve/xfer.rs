//! The native protocol on the server side: the 48-byte request collected as it arrives, the
//! reply decided from it, and the reply's head rendered (docs/PROTOCOL.md).
//!
//! Owns: the request's bytes until it is whole, and what the native client is told. Must
//! never touch a socket: the session reads for it and the send path delivers what it
//! decides.

use std::ops::Range;

use super::admit::{Admission, Refusal};
use super::snapshot::Snapshot;
use crate::encoding::Decoded;
use crate::encoding::xfer::{self as wire, DecodeError, REQUEST_LEN};

/// The request, collected as its bytes arrive.
#[derive(Debug, Clone)]
pub struct Incoming {
    buf: [u8; REQUEST_LEN],
    got: u8,
}

/// What the bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    NeedMore,
    Request(wire::Request),
    /// Our protocol, but not a request we can serve.
    Malformed(Refusal),
    /// Not our protocol at all: close without an answer.
    NotOurs,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming { buf: [0; REQUEST_LEN], got: 0 }
    }
}

impl Incoming {
    /// Where the next bytes go: never more than the request still lacks, so nothing past
    /// it is ever read (or buffered).
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.got as usize..]
    }

    /// `n` bytes were read into [`Incoming::spare`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.got as usize + n <= REQUEST_LEN);
        self.got += n as u8;
    }

    pub fn parse(&self) -> Parsed {
        match wire::decode_request(&self.buf[..self.got as usize]) {
            Ok(Decoded::NeedMore(_)) => Parsed::NeedMore,
            Ok(Decoded::Done(req, _)) => Parsed::Request(req),
            Err(DecodeError::BadMagic) => Parsed::NotOurs,
            Err(DecodeError::UnsupportedVersion(_)) => Parsed::Malformed(Refusal::UnsupportedVersion),
            Err(_) => Parsed::Malformed(Refusal::BadRequest),
        }
    }
}

/// What a native reply begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The success header: the snapshot's size and digest. The body follows.
    Ok,
    /// A refusal header and its reason; nothing follows.
    Refused(Refusal),
}

/// Decides the reply to a whole request: the head, and the byte range of the snapshot
/// that follows it. `refuse`: a verdict already reached when the connection was accepted.
pub fn decide(
    req: &wire::Request,
    refuse: Option<Refusal>,
    snap: &Snapshot,
    admission: &Admission,
) -> (Head, Range<u64>) {
    let verdict = match refuse {
        Some(why) => Err(why),
        None => admission
            .check_token(req.token.as_ref())
            .and_then(|()| if req.offset > snap.size() { Err(Refusal::BadOffset) } else { Ok(req.offset) }),
    };
    match verdict {
        Ok(offset) => (Head::Ok, offset..snap.size()),
        Err(why) => (Head::Refused(why), 0..0),
    }
}

/// Renders the head into `out` (at least [`wire::HEADER_LEN`] + [`wire::MAX_REASON`]
/// bytes); returns its length. The same head and snapshot always give the same bytes.
pub fn render(head: Head, snap: &Snapshot, out: &mut [u8]) -> usize {
    match head {
        Head::Ok => {
            out[..wire::HEADER_LEN].copy_from_slice(&wire::encode_ok(snap.size(), snap.digest()));
            wire::HEADER_LEN
        }
        Head::Refused(why) => {
            let mut wire_buf = [0u8; wire::HEADER_LEN + wire::MAX_REASON];
            let n = wire::encode_refusal(why.status(), why.reason(), &mut wire_buf);
            out[..n].copy_from_slice(&wire_buf[..n]);
            n
        }
    }
}
