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
    /// Our protocol, but not a request we can serve: refuse it, in this version.
    Malformed(Refusal, u8),
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
            // Told in version 1, which every client reads.
            Err(DecodeError::UnsupportedVersion(_)) => Parsed::Malformed(Refusal::UnsupportedVersion, wire::V1),
            Err(_) => Parsed::Malformed(Refusal::BadRequest, self.buf[4]),
        }
    }
}

/// What a native reply begins with, in the version the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The success header: the snapshot's size and digest (and from version 2 its name).
    /// The body follows.
    Ok { version: u8 },
    /// A refusal header and its reason (and from version 2 when to try again); nothing
    /// follows.
    Refused { why: Refusal, version: u8 },
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
    let version = req.version;
    match verdict {
        Ok(offset) => (Head::Ok { version }, offset..snap.size()),
        Err(why) => (Head::Refused { why, version }, 0..0),
    }
}

/// Renders the head into `out` (at least [`wire::MAX_RESPONSE_HEAD`] bytes); returns its
/// length. The same head and snapshot always give the same bytes.
pub fn render(head: Head, snap: &Snapshot, out: &mut [u8]) -> usize {
    let mut buf = [0u8; wire::MAX_RESPONSE_HEAD];
    let n = match head {
        Head::Ok { version } => wire::encode_ok_in(version, snap.size(), snap.digest(), snap.name(), &mut buf),
        Head::Refused { why, version } => {
            let hint = why.retry_after().map(|d| d.as_millis() as u64);
            wire::encode_refusal_in(version, why.status(), why.reason(), hint, &mut buf)
        }
    };
    out[..n].copy_from_slice(&buf[..n]);
    n
}
