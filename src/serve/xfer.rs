//! The native protocol on the server side: the 48-byte request (and, with a token, the
//! client's proof) collected as they arrive, the reply decided from them, and the reply's
//! head rendered (docs/PROTOCOL.md).
//!
//! With a token, a version 2 client is challenged: the server sends a fresh nonce, the
//! client answers with a proof bound to both nonces, and the success header carries the
//! server's own MAC over what it says (size, digest, name, offset), so a client can tell
//! the real server from an impostor. Version 1's token (its digest, replayable by anyone
//! who saw it) is refused by a server with a token.
//!
//! Owns: the request's bytes until it is whole, the nonces of a challenge, and what the
//! native client is told. Must never touch a socket: the session reads for it and the send
//! path delivers what it decides.

use std::net::IpAddr;
use std::ops::Range;
use std::time::Instant;

use super::admit::{Admission, Refusal};
use super::snapshot::Snapshot;
use crate::encoding::Decoded;
use crate::encoding::auth;
use crate::encoding::xfer::{self as wire, DecodeError, PROOF_LEN, REQUEST_LEN};

/// A request (or a proof), collected as its bytes arrive. The first read may also bring
/// the start of a proof the client sent without waiting for its challenge; those bytes are
/// kept for [`Incoming::early`], never more than one proof's worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    buf: [u8; REQUEST_LEN + PROOF_LEN],
    got: u8,
}

/// What the bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    NeedMore,
    Whole(T),
    /// Our protocol, but not a request we can serve: refuse it, in this version.
    Malformed(Refusal, u8),
    /// Not our protocol at all: close without an answer.
    NotOurs,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming { buf: [0; REQUEST_LEN + PROOF_LEN], got: 0 }
    }
}

impl Incoming {
    /// Where the next bytes go: never more than the message still lacks, so nothing past
    /// it is ever read by the session.
    pub fn spare(&mut self) -> &mut [u8] {
        let got = (self.got as usize).min(REQUEST_LEN);
        &mut self.buf[got..REQUEST_LEN]
    }

    /// `n` bytes were read into [`Incoming::spare`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.got as usize + n <= REQUEST_LEN);
        self.got += n as u8;
    }

    /// Takes the bytes of a first read that sniffing already did: the request, and what
    /// followed it up to one proof. Returns how many were taken.
    pub fn seed(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.buf.len());
        self.buf[..take].copy_from_slice(&data[..take]);
        self.got = take as u8;
        take
    }

    /// What arrived after the first message: the start of a proof sent early.
    pub fn early(&self) -> Incoming {
        let mut next = Incoming::default();
        // Nothing past the request (or not even all of it yet): nothing to start with.
        next.seed(self.buf.get(REQUEST_LEN..self.got as usize).unwrap_or_default());
        next
    }

    pub fn parse(&self) -> Parsed<wire::Request> {
        match wire::decode_request(&self.buf[..(self.got as usize).min(REQUEST_LEN)]) {
            Ok(Decoded::NeedMore(_)) => Parsed::NeedMore,
            Ok(Decoded::Done(req, _)) => Parsed::Whole(req),
            Err(DecodeError::BadMagic) => Parsed::NotOurs,
            // Told in version 1, which every client reads.
            Err(DecodeError::UnsupportedVersion(_)) => Parsed::Malformed(Refusal::UnsupportedVersion, wire::V1),
            Err(_) => Parsed::Malformed(Refusal::BadRequest, self.buf[4]),
        }
    }

    pub fn parse_proof(&self) -> Parsed<wire::Proof> {
        debug_assert_eq!(PROOF_LEN, REQUEST_LEN);
        match wire::decode_proof(&self.buf[..(self.got as usize).min(PROOF_LEN)]) {
            Ok(Decoded::NeedMore(_)) => Parsed::NeedMore,
            Ok(Decoded::Done(p, _)) => Parsed::Whole(p),
            Err(_) => Parsed::Malformed(Refusal::BadRequest, wire::VERSION),
        }
    }
}

/// A challenge in progress: both nonces and what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub client: [u8; 32],
    pub server: [u8; 32],
    pub offset: u64,
    pub version: u8,
    /// A verdict already reached (not allowed, busy, a penalised address): the proof is
    /// still asked for, so every failure looks the same, and then this is the answer.
    pub refuse: Option<Refusal>,
    /// The start of the proof, if the client sent it with its request.
    pub early: Incoming,
}

/// What a native reply begins with, in the version the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The success header: the snapshot's size and digest (and from version 2 its name,
    /// and after a challenge the server's MAC). The body follows.
    Ok { version: u8, mac: Option<Box<crate::encoding::Digest>> },
    /// A refusal header and its reason (and from version 2 when to try again); nothing
    /// follows.
    Refused { why: Refusal, version: u8 },
    /// The server's nonce; the client's proof is read next.
    Challenge(Box<Challenge>),
}

/// What to do with a whole request.
pub enum Decision {
    Reply(Head, Range<u64>),
    /// Challenge the client (it has a token; so has the server).
    Challenge(Box<Challenge>),
}

/// Decides what a whole request gets. `refuse`: a verdict already reached when the
/// connection was accepted.
pub fn decide(req: &wire::Request, refuse: Option<Refusal>, snap: &Snapshot, admission: &Admission) -> Decision {
    let version = req.version;
    let has_token = admission.native_key().is_some();
    if let (Some(client), true) = (req.auth, has_token) {
        let mut server = [0u8; 32];
        if getrandom::fill(&mut server).is_err() {
            // No randomness, no challenge worth the name.
            return Decision::Reply(Head::Refused { why: Refusal::Changing, version }, 0..0);
        }
        return Decision::Challenge(Box::new(Challenge {
            client,
            server,
            offset: req.offset,
            version,
            refuse,
            early: Incoming::default(),
        }));
    }
    let verdict = match refuse {
        Some(why) => Err(why),
        // A server with a token takes it only by challenge-response: version 1's digest is
        // a replayable credential, so it is refused unchecked (not counted as a guess, like
        // no token at all).
        None if has_token && req.version < 2 => Err(Refusal::TokenNeedsV2),
        None if has_token => Err(Refusal::BadToken),
        None if req.offset > snap.size() => Err(Refusal::BadOffset),
        None => Ok(req.offset),
    };
    match verdict {
        // A client that asked to be challenged by a server without a token gets an answer
        // without a MAC, and refuses it itself.
        Ok(offset) => Decision::Reply(Head::Ok { version, mac: None }, offset..snap.size()),
        Err(why) => Decision::Reply(Head::Refused { why, version }, 0..0),
    }
}

/// Decides what a client's proof gets: the file with the server's MAC, or a refusal.
pub fn decide_proof(
    proof: &wire::Proof,
    ch: &Challenge,
    snap: &Snapshot,
    admission: &mut Admission,
    ip: IpAddr,
    now: Instant,
) -> (Head, Range<u64>) {
    let version = ch.version;
    let Some(key) = admission.native_key().cloned() else {
        return (Head::Refused { why: Refusal::BadToken, version }, 0..0);
    };
    let want = key.client_proof(&ch.client, &ch.server, ch.offset, version);
    let good = proof.offset == ch.offset && auth::same(&proof.proof, &want);
    let verdict = admission.judge(ip, good, now).and_then(|()| match ch.refuse {
        Some(why) => Err(why),
        None if ch.offset > snap.size() => Err(Refusal::BadOffset),
        None => Ok(()),
    });
    if let Err(why) = verdict {
        return (Head::Refused { why, version }, 0..0);
    }
    let name = &snap.name()[..snap.name().len().min(wire::MAX_NAME)];
    let header = wire::ok_header_v2(snap.size(), snap.digest(), name, true);
    let mac = key.server_mac(&ch.client, &ch.server, &header, name, ch.offset);
    (Head::Ok { version, mac: Some(Box::new(mac)) }, ch.offset..snap.size())
}

/// Renders the head into `out` (at least [`wire::MAX_RESPONSE_HEAD`] bytes); returns its
/// length. The same head and snapshot always give the same bytes.
pub fn render(head: &Head, snap: &Snapshot, out: &mut [u8]) -> usize {
    let mut buf = [0u8; wire::MAX_RESPONSE_HEAD];
    let n = match head {
        Head::Ok { version, mac } => {
            wire::encode_ok_in(*version, snap.size(), snap.digest(), snap.name(), mac.as_deref(), &mut buf)
        }
        Head::Refused { why, version } => {
            let hint = why.retry_after().map(|d| d.as_millis() as u64);
            wire::encode_refusal_in(*version, why.status(), why.reason(), hint, &mut buf)
        }
        Head::Challenge(ch) => {
            buf[..wire::HEADER_LEN].copy_from_slice(&wire::encode_challenge(&ch.server));
            wire::HEADER_LEN
        }
    };
    out[..n].copy_from_slice(&buf[..n]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::admit::Policy;
    use std::sync::Arc;

    /// A proof is checked against the offset it was made for; the offset may be the end of
    /// the file (nothing left to send) but not past it; the MAC comes with the file only.
    #[test]
    fn proofs_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let snap = Snapshot::open(&path).unwrap();
        let policy = Policy::for_tests(Some(b"sesame"));
        let mut admission = Admission::new(policy, Arc::default());
        let key = admission.native_key().unwrap().clone();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut answer = |offset: u64, proven_offset: u64| {
            let ch = Challenge {
                client: [1; 32],
                server: [2; 32],
                offset,
                version: wire::VERSION,
                refuse: None,
                early: Incoming::default(),
            };
            let proof = wire::Proof {
                offset: proven_offset,
                proof: key.client_proof(&ch.client, &ch.server, proven_offset, wire::VERSION),
            };
            decide_proof(&proof, &ch, &snap, &mut admission, ip, Instant::now())
        };
        let (head, body) = answer(3, 3);
        assert!(matches!(head, Head::Ok { mac: Some(_), .. }) && body == (3..10));
        let (head, body) = answer(10, 10);
        assert!(matches!(head, Head::Ok { mac: Some(_), .. }) && body == (10..10), "the end: nothing left");
        let (head, _) = answer(11, 11);
        assert!(matches!(head, Head::Refused { why: Refusal::BadOffset, .. }));
        let (head, _) = answer(3, 4);
        assert!(matches!(head, Head::Refused { why: Refusal::BadToken, .. }), "proof for another offset");
    }
}
