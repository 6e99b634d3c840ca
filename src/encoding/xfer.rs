//! The native wire protocol (docs/PROTOCOL.md): a fixed-size request, a fixed-size
//! response header, then the file's bytes or a short refusal reason.
//!
//! Two versions are spoken. Version 2 adds, to a successful header, the file's base name
//! (so a client can save the file under it) and, to a refusal, a hint of when to try again.
//! A server answers in the version the client asked for; a client that gets "unsupported
//! version" from an older server asks again in version 1.
//!
//! Pure functions: nothing here does I/O or allocates from a length the peer sent (the only
//! lengths on the wire are single bytes). Decoders take whatever bytes have arrived so far
//! and answer "need more", a value, or a typed error; they never panic, whatever the input.

use thiserror::Error;

use super::{Decoded, Digest};

/// First four bytes of a request. `0xF0` is not ASCII, so no HTTP method or TLS record
/// starts this way and HTTP shares the port.
pub const REQUEST_MAGIC: [u8; 4] = [0xF0, b'X', b'F', b'Q'];
/// First four bytes of a response header.
pub const RESPONSE_MAGIC: [u8; 4] = [0xF0, b'X', b'F', b'R'];
/// The first version: no name, no retry hint.
pub const V1: u8 = 1;
/// The newest version spoken, and the one clients ask for.
pub const VERSION: u8 = 2;
/// Size of a request on the wire.
pub const REQUEST_LEN: usize = 48;
/// Size of a response header on the wire (a refusal's reason, or a v2 name, follows it).
pub const HEADER_LEN: usize = 48;
/// Request flag (version 1): the token field carries BLAKE3(token). That digest is the
/// credential itself, replayable by anyone who sees it: a server with a token refuses it.
pub const FLAG_TOKEN: u8 = 0x01;
/// Request flag (version 2): the client has a token and asks to be challenged; the token
/// field carries the client's fresh nonce.
pub const FLAG_AUTH: u8 = 0x02;
/// First four bytes of a client's proof (version 2, after a challenge).
pub const PROOF_MAGIC: [u8; 4] = [0xF0, b'X', b'F', b'P'];
/// Size of a proof on the wire.
pub const PROOF_LEN: usize = 48;
/// Response flag (version 2, byte 7): a 32-byte MAC follows the name.
pub const RESPONSE_MAC: u8 = 0x01;
/// Length of the server's MAC.
pub const MAC_LEN: usize = 32;
/// Longest refusal reason, and longest name: what a one-byte length can say.
pub const MAX_REASON: usize = 255;
pub const MAX_NAME: usize = 255;
/// Longest response before the body: a header, a reason or a name, and a MAC.
pub const MAX_RESPONSE_HEAD: usize = HEADER_LEN + 255 + MAC_LEN;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The protocol version the client speaks (and wants its answer in).
    pub version: u8,
    /// First byte of the file wanted.
    pub offset: u64,
    /// Version 1: BLAKE3 of the shared token, if the client has one.
    pub token: Option<Digest>,
    /// Version 2: the client has a token; its fresh nonce, for the challenge-response.
    pub auth: Option<[u8; 32]>,
}

impl Request {
    /// A request in the newest version, without a token.
    pub fn new(offset: u64) -> Request {
        Request { version: VERSION, offset, token: None, auth: None }
    }

    /// A request in the newest version from a client with a token: it will be challenged.
    pub fn authenticated(offset: u64, client_nonce: [u8; 32]) -> Request {
        Request { version: VERSION, offset, token: None, auth: Some(client_nonce) }
    }

    /// A request in version 1, as clients before version 2 send.
    pub fn v1(offset: u64, token: Option<Digest>) -> Request {
        Request { version: V1, offset, token, auth: None }
    }
}

/// A client's answer to a challenge: what it asks for again (the offset), and its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub offset: u64,
    pub proof: Digest,
}

/// Status byte of a response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    UnsupportedVersion,
    BadRequest,
    Forbidden,
    BadToken,
    Busy,
    BadOffset,
    Unavailable,
    /// Version 2: not an answer yet; prove you know the token (the digest field carries the
    /// server's nonce).
    Challenge,
    /// A status this build does not know; still a refusal.
    Other(u8),
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::UnsupportedVersion => 1,
            Status::BadRequest => 2,
            Status::Forbidden => 3,
            Status::BadToken => 4,
            Status::Busy => 5,
            Status::BadOffset => 6,
            Status::Unavailable => 7,
            Status::Challenge => 8,
            Status::Other(c) => c,
        }
    }

    pub fn from_code(code: u8) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::UnsupportedVersion,
            2 => Status::BadRequest,
            3 => Status::Forbidden,
            4 => Status::BadToken,
            5 => Status::Busy,
            6 => Status::BadOffset,
            7 => Status::Unavailable,
            8 => Status::Challenge,
            c => Status::Other(c),
        }
    }

    /// The reason a server sends with this status when it has nothing more specific.
    pub fn default_reason(self) -> &'static str {
        match self {
            Status::Ok => "",
            Status::UnsupportedVersion => "unsupported protocol version",
            Status::BadRequest => "malformed request",
            Status::Forbidden => "your address is not allowed",
            Status::BadToken => "missing or wrong access token",
            Status::Busy => "server busy, try again later",
            Status::BadOffset => "offset is past the end of the file",
            Status::Unavailable => "server is shutting down",
            Status::Challenge => "",
            Status::Other(_) => "refused",
        }
    }
}

/// A decoded response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The file follows: `size - offset` bytes whose whole-file digest is `digest`. A
    /// version 2 header also names the file (at most 255 bytes; it may be empty), and
    /// after a challenge carries the server's MAC over what it says (`header` is the
    /// 48 bytes it covers).
    Ok { size: u64, digest: Digest, name: Option<Vec<u8>>, mac: Option<Mac> },
    /// Version 2: the server wants proof of the token, bound to its fresh nonce.
    Challenge { nonce: [u8; 32] },
    /// The server refused; `reason` is at most 255 bytes, lossily decoded. A version 2
    /// refusal may say how long to wait before trying again.
    Refused { status: Status, reason: String, retry_after_ms: Option<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("not an xfer peer (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("refusal with status {0} carries no reason")]
    MissingReason(u8),
    #[error("success header carries a reason")]
    UnexpectedReason,
}

fn known(version: u8) -> bool {
    (V1..=VERSION).contains(&version)
}

/// A server's MAC, and the header bytes it was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mac {
    pub mac: Digest,
    pub header: [u8; HEADER_LEN],
}

/// Encodes a request.
pub fn encode_request(req: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&REQUEST_MAGIC);
    out[4] = req.version;
    out[8..16].copy_from_slice(&req.offset.to_be_bytes());
    if let Some(token) = &req.token {
        out[5] = FLAG_TOKEN;
        out[16..48].copy_from_slice(token);
    } else if let Some(nonce) = &req.auth {
        out[5] = FLAG_AUTH;
        out[16..48].copy_from_slice(nonce);
    }
    out
}

/// Decodes a request from the bytes received so far.
///
/// The magic is checked as soon as the bytes arrive, so a stranger is recognised early.
/// A bad version is reported before the rest of the request is waited for, so the server
/// can refuse a newer client with a reason instead of timing it out.
pub fn decode_request(buf: &[u8]) -> Result<Decoded<Request>, DecodeError> {
    check_magic(buf, &REQUEST_MAGIC)?;
    if let Some(&v) = buf.get(4)
        && !known(v)
    {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    if buf.len() < REQUEST_LEN {
        return Ok(Decoded::NeedMore(REQUEST_LEN - buf.len()));
    }
    let (version, flags) = (buf[4], buf[5]);
    // The two ways to carry a token exclude each other; challenge-response is version 2's.
    let allowed = if version >= 2 { FLAG_TOKEN | FLAG_AUTH } else { FLAG_TOKEN };
    if flags & !allowed != 0 || flags == FLAG_TOKEN | FLAG_AUTH {
        return Err(DecodeError::UnknownFlags(flags));
    }
    if buf[6] != 0 || buf[7] != 0 {
        return Err(DecodeError::Reserved);
    }
    let offset = u64::from_be_bytes(array8(&buf[8..16]));
    let mut field = [0u8; 32];
    field.copy_from_slice(&buf[16..48]);
    let (token, auth) = match flags {
        FLAG_TOKEN => (Some(field), None),
        FLAG_AUTH => (None, Some(field)),
        _ if field.iter().any(|&b| b != 0) => return Err(DecodeError::Reserved),
        _ => (None, None),
    };
    Ok(Decoded::Done(Request { version, offset, token, auth }, REQUEST_LEN))
}

/// Encodes a client's proof.
pub fn encode_proof(p: &Proof) -> [u8; PROOF_LEN] {
    let mut out = [0u8; PROOF_LEN];
    out[0..4].copy_from_slice(&PROOF_MAGIC);
    out[4] = VERSION;
    out[8..16].copy_from_slice(&p.offset.to_be_bytes());
    out[16..48].copy_from_slice(&p.proof);
    out
}

/// Decodes a client's proof from the bytes so far.
pub fn decode_proof(buf: &[u8]) -> Result<Decoded<Proof>, DecodeError> {
    check_magic(buf, &PROOF_MAGIC)?;
    if let Some(&v) = buf.get(4)
        && v != VERSION
    {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    if buf.len() < PROOF_LEN {
        return Ok(Decoded::NeedMore(PROOF_LEN - buf.len()));
    }
    if buf[5..8].iter().any(|&b| b != 0) {
        return Err(DecodeError::Reserved);
    }
    let mut proof = [0u8; 32];
    proof.copy_from_slice(&buf[16..48]);
    Ok(Decoded::Done(Proof { offset: u64::from_be_bytes(array8(&buf[8..16])), proof }, PROOF_LEN))
}

/// Encodes a challenge: the server's fresh nonce, in the digest field.
pub fn encode_challenge(nonce: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&RESPONSE_MAGIC);
    out[4] = VERSION;
    out[5] = Status::Challenge.code();
    out[16..48].copy_from_slice(nonce);
    out
}

/// Encodes the header of a successful version 1 response.
pub fn encode_ok(size: u64, digest: &Digest) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&RESPONSE_MAGIC);
    out[4] = V1;
    out[8..16].copy_from_slice(&size.to_be_bytes());
    out[16..48].copy_from_slice(digest);
    out
}

/// The header of a successful version 2 response, as a server MAC covers it: with the
/// name's length and the MAC flag set as they will be sent.
pub fn ok_header_v2(size: u64, digest: &Digest, name: &[u8], with_mac: bool) -> [u8; HEADER_LEN] {
    let mut h = encode_ok(size, digest);
    h[4] = VERSION;
    h[6] = name.len().min(MAX_NAME) as u8;
    h[7] = if with_mac { RESPONSE_MAC } else { 0 };
    h
}

/// Encodes a successful response's head in `version`: the header and, from version 2, the
/// name after it (cut to 255 bytes) and the server's MAC when there is one. Returns the
/// length used.
pub fn encode_ok_in(
    version: u8,
    size: u64,
    digest: &Digest,
    name: &[u8],
    mac: Option<&Digest>,
    out: &mut [u8; MAX_RESPONSE_HEAD],
) -> usize {
    if version < 2 {
        out[..HEADER_LEN].copy_from_slice(&encode_ok(size, digest));
        return HEADER_LEN;
    }
    let name = &name[..name.len().min(MAX_NAME)];
    out[..HEADER_LEN].copy_from_slice(&ok_header_v2(size, digest, name, mac.is_some()));
    out[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
    let mut n = HEADER_LEN + name.len();
    if let Some(m) = mac {
        out[n..n + MAC_LEN].copy_from_slice(m);
        n += MAC_LEN;
    }
    n
}

/// Encodes a version 1 refusal: header then reason, into `out` (at least
/// `HEADER_LEN + MAX_REASON` bytes); returns the length used.
/// The reason is cut to 255 bytes (at a character boundary) and never left empty.
pub fn encode_refusal(status: Status, reason: &str, out: &mut [u8]) -> usize {
    encode_refusal_in(V1, status, reason, None, out)
}

/// Encodes a refusal in `version`; from version 2 it may carry a hint of how long to wait
/// before trying again (milliseconds, in the size field).
pub fn encode_refusal_in(
    version: u8,
    status: Status,
    reason: &str,
    retry_after_ms: Option<u64>,
    out: &mut [u8],
) -> usize {
    debug_assert!(status != Status::Ok, "a refusal needs a non-zero status");
    let reason = if reason.is_empty() { "refused" } else { reason };
    let reason = &reason[..reason.floor_char_boundary(MAX_REASON)];
    out[..HEADER_LEN].fill(0);
    out[0..4].copy_from_slice(&RESPONSE_MAGIC);
    out[4] = version;
    out[5] = status.code();
    out[6] = reason.len() as u8;
    if version >= 2 {
        out[8..16].copy_from_slice(&retry_after_ms.unwrap_or(0).to_be_bytes());
    }
    out[HEADER_LEN..HEADER_LEN + reason.len()].copy_from_slice(reason.as_bytes());
    HEADER_LEN + reason.len()
}

/// Decodes a response head (the header, and a refusal's reason or a version 2 name) from
/// the bytes so far. The returned length is where the body starts.
pub fn decode_response(buf: &[u8]) -> Result<Decoded<Response>, DecodeError> {
    check_magic(buf, &RESPONSE_MAGIC)?;
    let version = match buf.get(4) {
        Some(&v) if !known(v) => return Err(DecodeError::UnsupportedVersion(v)),
        Some(&v) => v,
        None => V1,
    };
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    }
    let status = Status::from_code(buf[5]);
    // Byte 7: reserved in version 1 and in refusals; a success's flags in version 2.
    let flags = buf[7];
    let with_mac = version >= 2 && status == Status::Ok && flags == RESPONSE_MAC;
    if flags != 0 && !with_mac {
        return Err(DecodeError::Reserved);
    }
    let len = buf[6] as usize;
    let total = HEADER_LEN + len + if with_mac { MAC_LEN } else { 0 };
    if status == Status::Challenge && version >= 2 {
        if len != 0 || buf[8..16].iter().any(|&b| b != 0) {
            return Err(DecodeError::Reserved);
        }
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&buf[16..48]);
        return Ok(Decoded::Done(Response::Challenge { nonce }, HEADER_LEN));
    }
    if status == Status::Ok {
        if version == V1 && len != 0 {
            return Err(DecodeError::UnexpectedReason);
        }
        if buf.len() < total {
            return Ok(Decoded::NeedMore(total - buf.len()));
        }
        let size = u64::from_be_bytes(array8(&buf[8..16]));
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&buf[16..48]);
        let name = (version >= 2).then(|| buf[HEADER_LEN..HEADER_LEN + len].to_vec());
        let mac = with_mac.then(|| {
            let mut m = [0u8; 32];
            m.copy_from_slice(&buf[HEADER_LEN + len..total]);
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&buf[..HEADER_LEN]);
            Mac { mac: m, header }
        });
        return Ok(Decoded::Done(Response::Ok { size, digest, name, mac }, total));
    }
    if len == 0 {
        return Err(DecodeError::MissingReason(buf[5]));
    }
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let reason = String::from_utf8_lossy(&buf[HEADER_LEN..total]).into_owned();
    let hint = u64::from_be_bytes(array8(&buf[8..16]));
    let retry_after_ms = (version >= 2 && hint > 0).then_some(hint);
    Ok(Decoded::Done(Response::Refused { status, reason, retry_after_ms }, total))
}

/// Compares the magic against however many bytes have arrived.
fn check_magic(buf: &[u8], magic: &[u8; 4]) -> Result<(), DecodeError> {
    let n = buf.len().min(4);
    if buf[..n] != magic[..n] {
        return Err(DecodeError::BadMagic);
    }
    Ok(())
}

fn array8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() {
        for req in [
            Request::v1(0, None),
            Request::v1(u64::MAX, Some([7; 32])),
            Request::new(1 << 33),
            Request::authenticated(9, [3; 32]),
        ] {
            let wire = encode_request(&req);
            assert_eq!(decode_request(&wire), Ok(Decoded::Done(req, REQUEST_LEN)));
        }
    }

    #[test]
    fn request_needs_more_at_every_prefix() {
        let wire = encode_request(&Request::new(5));
        for n in 0..REQUEST_LEN {
            assert_eq!(decode_request(&wire[..n]), Ok(Decoded::NeedMore(REQUEST_LEN - n)), "prefix {n}");
        }
    }

    #[test]
    fn request_extra_bytes_are_not_consumed() {
        let mut wire = encode_request(&Request::v1(0, None)).to_vec();
        wire.extend_from_slice(b"trailing");
        assert!(matches!(decode_request(&wire), Ok(Decoded::Done(_, REQUEST_LEN))));
    }

    #[test]
    fn request_malformed() {
        let good = encode_request(&Request::v1(0, None));
        assert_eq!(decode_request(b"GET / HTTP/1.1\r\n"), Err(DecodeError::BadMagic));
        assert_eq!(decode_request(b"HEAD"), Err(DecodeError::BadMagic));
        assert_eq!(decode_request(&[0x16, 3, 1]), Err(DecodeError::BadMagic));
        assert_eq!(decode_request(&[0xF0, b'X', b'F', b'R']), Err(DecodeError::BadMagic));
        let mut v = good;
        v[4] = 3;
        assert_eq!(decode_request(&v[..5]), Err(DecodeError::UnsupportedVersion(3)));
        v[4] = 0;
        assert_eq!(decode_request(&v[..5]), Err(DecodeError::UnsupportedVersion(0)));
        let mut f = good;
        f[5] = 0x80;
        assert_eq!(decode_request(&f), Err(DecodeError::UnknownFlags(0x80)));
        let mut r = good;
        r[7] = 1;
        assert_eq!(decode_request(&r), Err(DecodeError::Reserved));
        let mut t = good;
        t[20] = 1; // token bytes without the token flag
        assert_eq!(decode_request(&t), Err(DecodeError::Reserved));
    }

    #[test]
    fn ok_header_round_trip() {
        let digest = *blake3::hash(b"abc").as_bytes();
        let wire = encode_ok(u64::MAX, &digest);
        assert_eq!(
            decode_response(&wire),
            Ok(Decoded::Done(Response::Ok { size: u64::MAX, digest, name: None, mac: None }, HEADER_LEN))
        );
        for n in 0..HEADER_LEN {
            assert_eq!(decode_response(&wire[..n]), Ok(Decoded::NeedMore(HEADER_LEN - n)));
        }
    }

    #[test]
    fn refusal_round_trip_and_truncation() {
        let mut buf = [0u8; MAX_RESPONSE_HEAD];
        let n = encode_refusal(Status::Busy, "too many", &mut buf);
        assert_eq!(n, HEADER_LEN + 8);
        for cut in HEADER_LEN..n {
            assert_eq!(decode_response(&buf[..cut]), Ok(Decoded::NeedMore(n - cut)), "prefix {cut}");
        }
        assert_eq!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(
                Response::Refused { status: Status::Busy, reason: "too many".into(), retry_after_ms: None },
                n
            ))
        );
        // A long reason is cut at a character boundary, never mid-character.
        let long = "é".repeat(200);
        let n = encode_refusal(Status::Forbidden, &long, &mut buf);
        assert!(n <= HEADER_LEN + MAX_REASON);
        match decode_response(&buf[..n]) {
            Ok(Decoded::Done(Response::Refused { reason, .. }, _)) => {
                assert!(reason.chars().all(|c| c == 'é'));
                assert_eq!(reason.len(), 254);
            }
            other => panic!("unexpected {other:?}"),
        }
        // 255 bytes fit whole; 256 lose the last one.
        for (len, kept) in [(255, 255), (256, 255)] {
            let n = encode_refusal(Status::Busy, &"r".repeat(len), &mut buf);
            assert_eq!((n, usize::from(buf[6])), (HEADER_LEN + kept, kept), "{len}");
        }
        let n = encode_refusal(Status::Other(200), "", &mut buf);
        assert!(matches!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(Response::Refused { status: Status::Other(200), .. }, _))
        ));
    }

    #[test]
    fn response_malformed() {
        let ok = encode_ok(1, &[0; 32]);
        assert_eq!(decode_response(b"HTTP/1.1 200 OK"), Err(DecodeError::BadMagic));
        let mut v = ok;
        v[4] = 9;
        assert_eq!(decode_response(&v), Err(DecodeError::UnsupportedVersion(9)));
        let mut r = ok;
        r[7] = 1;
        assert_eq!(decode_response(&r), Err(DecodeError::Reserved));
        let mut e = ok;
        e[6] = 3;
        assert_eq!(decode_response(&e), Err(DecodeError::UnexpectedReason));
        let mut m = ok;
        m[5] = 4;
        assert_eq!(decode_response(&m), Err(DecodeError::MissingReason(4)));
    }

    #[test]
    fn version_2_names_the_file_and_hints_at_retries() {
        let digest = *blake3::hash(b"abc").as_bytes();
        let mut buf = [0u8; MAX_RESPONSE_HEAD];
        let n = encode_ok_in(VERSION, 77, &digest, b"report.pdf", Some(&[3; 32]), &mut buf);
        assert_eq!(n, HEADER_LEN + 10 + MAC_LEN);
        for cut in 0..n {
            // Until the header is in, the header is what is missing; then the rest is known.
            let want = if cut < HEADER_LEN { HEADER_LEN - cut } else { n - cut };
            assert_eq!(decode_response(&buf[..cut]), Ok(Decoded::NeedMore(want)), "prefix {cut}");
        }
        let n = encode_ok_in(VERSION, 77, &digest, b"report.pdf", None, &mut buf);
        assert_eq!(n, HEADER_LEN + 10);
        let name = Some(b"report.pdf".to_vec());
        assert_eq!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(Response::Ok { size: 77, digest, name, mac: None }, n))
        );
        // A version 1 client gets no name; the bytes are exactly version 1's.
        assert_eq!(encode_ok_in(V1, 77, &digest, b"report.pdf", None, &mut buf), HEADER_LEN);
        assert_eq!(buf[..HEADER_LEN], encode_ok(77, &digest));
        // Names are cut to what one length byte can say.
        let long = vec![b'x'; 300];
        assert_eq!(encode_ok_in(VERSION, 1, &digest, &long, None, &mut buf), HEADER_LEN + MAX_NAME);
        // The longest head of all, a full name and a MAC, is what MAX_RESPONSE_HEAD allows:
        // the bound is exact, so a reader's buffer of that size is never short.
        assert_eq!(encode_ok_in(VERSION, 1, &digest, &long, Some(&[7; 32]), &mut buf), MAX_RESPONSE_HEAD);
        assert!(matches!(decode_response(&buf), Ok(Decoded::Done(Response::Ok { .. }, MAX_RESPONSE_HEAD))));
        let n = encode_refusal_in(VERSION, Status::Busy, "busy", Some(1500), &mut buf);
        assert_eq!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(
                Response::Refused { status: Status::Busy, reason: "busy".into(), retry_after_ms: Some(1500) },
                n
            ))
        );
        // No hint is no hint, not a hint of zero.
        let n = encode_refusal_in(VERSION, Status::Forbidden, "no", None, &mut buf);
        assert!(matches!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(Response::Refused { retry_after_ms: None, .. }, _))
        ));
        // Version 1 refusals never carry a hint (old clients ignore the field anyway).
        let n = encode_refusal_in(V1, Status::Busy, "busy", Some(1500), &mut buf);
        assert!(matches!(
            decode_response(&buf[..n]),
            Ok(Decoded::Done(Response::Refused { retry_after_ms: None, .. }, _))
        ));
    }

    #[test]
    fn version_2_challenge_proof_and_mac() {
        let nonce = [9u8; 32];
        let c = encode_challenge(&nonce);
        assert_eq!(decode_response(&c), Ok(Decoded::Done(Response::Challenge { nonce }, HEADER_LEN)));
        let p = Proof { offset: 77, proof: [5; 32] };
        let w = encode_proof(&p);
        assert_eq!(decode_proof(&w), Ok(Decoded::Done(p, PROOF_LEN)));
        for n in 0..PROOF_LEN {
            assert_eq!(decode_proof(&w[..n]), Ok(Decoded::NeedMore(PROOF_LEN - n)), "prefix {n}");
        }
        let mut bad = w;
        bad[6] = 1;
        assert_eq!(decode_proof(&bad), Err(DecodeError::Reserved));
        assert_eq!(decode_proof(&encode_request(&Request::new(0))), Err(DecodeError::BadMagic));
        // A success with the server's MAC: the MAC follows the name, and the header it
        // covers is handed over as received.
        let digest = [4u8; 32];
        let mut buf = [0u8; MAX_RESPONSE_HEAD];
        let n = encode_ok_in(VERSION, 10, &digest, b"f", Some(&[8; 32]), &mut buf);
        assert_eq!(n, HEADER_LEN + 1 + MAC_LEN);
        let header = ok_header_v2(10, &digest, b"f", true);
        let want =
            Response::Ok { size: 10, digest, name: Some(b"f".to_vec()), mac: Some(Mac { mac: [8; 32], header }) };
        assert_eq!(decode_response(&buf[..n]), Ok(Decoded::Done(want, n)));
        assert!(matches!(decode_response(&buf[..n - 1]), Ok(Decoded::NeedMore(1))));
        // The two ways of carrying a token exclude each other; version 1 knows only one.
        let mut both = encode_request(&Request::authenticated(0, [1; 32]));
        both[5] = FLAG_TOKEN | FLAG_AUTH;
        assert_eq!(decode_request(&both), Err(DecodeError::UnknownFlags(3)));
        let mut v1auth = encode_request(&Request::authenticated(0, [1; 32]));
        v1auth[4] = V1;
        assert_eq!(decode_request(&v1auth), Err(DecodeError::UnknownFlags(FLAG_AUTH)));
    }

    #[test]
    fn status_codes_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(Status::from_code(c).code(), c);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_near_valid(
            mut head in proptest::array::uniform32(any::<u8>()),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            which in 0..2u8,
        ) {
            // Mostly-valid prefixes reach the deeper branches that random bytes rarely do.
            let magic = if which == 0 { REQUEST_MAGIC } else { RESPONSE_MAGIC };
            head[..4].copy_from_slice(&magic);
            head[4] = VERSION;
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(&tail);
            // Whatever the verdict, it must be consistent: a value decoded from the whole
            // input decodes the same from exactly the bytes it used, "need more" never asks
            // for bytes that were already there, and a value never uses more than was given.
            if which == 0 {
                match decode_request(&bytes) {
                    Ok(Decoded::Done(v, n)) => {
                        prop_assert!(n <= bytes.len());
                        prop_assert_eq!(decode_request(&bytes[..n]), Ok(Decoded::Done(v, n)));
                    }
                    Ok(Decoded::NeedMore(k)) => prop_assert_eq!(bytes.len() + k, REQUEST_LEN),
                    Err(e) => prop_assert_ne!(e, DecodeError::BadMagic, "the magic was right"),
                }
            } else {
                match decode_response(&bytes) {
                    Ok(Decoded::Done(v, n)) => {
                        prop_assert!(n <= bytes.len());
                        prop_assert_eq!(decode_response(&bytes[..n]), Ok(Decoded::Done(v, n)));
                    }
                    Ok(Decoded::NeedMore(k)) => prop_assert!(k > 0 && bytes.len() + k <= HEADER_LEN + MAX_REASON),
                    Err(e) => prop_assert_ne!(e, DecodeError::BadMagic, "the magic was right"),
                }
            }
        }

        #[test]
        fn request_round_trips(offset in any::<u64>(), token in proptest::option::of(proptest::array::uniform32(any::<u8>()))) {
            let req = if offset % 2 == 0 { Request::v1(offset, token) } else { Request { version: VERSION, offset, token: None, auth: token } };
            prop_assert_eq!(decode_request(&encode_request(&req)), Ok(Decoded::Done(req, REQUEST_LEN)));
        }

        #[test]
        fn refusal_reason_round_trips(code in 1..=255u8, reason in "[a-z ]{1,255}") {
            let mut buf = [0u8; MAX_RESPONSE_HEAD];
            let n = encode_refusal(Status::from_code(code), &reason, &mut buf);
            prop_assert_eq!(
                decode_response(&buf[..n]),
                Ok(Decoded::Done(Response::Refused { status: Status::from_code(code), reason: reason.clone(), retry_after_ms: None }, n))
            );
        }
    }
}
