//! Asking any HTTP/1.1 server for the file: `GET` with `Range` and `If-Range` to resume,
//! redirects followed (a bounded number of times, never to another scheme), and the
//! response head read into an offer: the size, how the body is framed, the digests the
//! server states, the file's name and its validators.
//!
//! Owns the HTTP exchange up to the first body byte (the head may carry some body bytes
//! with it: they are handed over, not lost); every body byte is `receive`'s. Plain HTTP
//! only: https is refused before any connection.

use std::io::{self, Write};

use super::native::{connect, lost, recv_head};
use super::receive::{Framing, Silence};
use super::{FetchError, Offer, Options};
use crate::encoding::Decoded;
use crate::encoding::http::{self as wire, Chunked, ResponseHead};
use crate::encoding::target::{Host, Target};
use crate::encoding::text::printable;

/// Redirects followed at most (curl's default is 50; browsers use about 20).
const MAX_REDIRECTS: u32 = 10;

/// What a resumed request asks for: the rest of the file from `offset`, if the server's
/// version is still the one `validator` (an ETag or a date) names.
pub struct Resume<'a> {
    pub offset: u64,
    pub validator: &'a str,
}

/// Asks for the file at `url`.
pub fn ask(url: &url::Url, opts: &Options, resume: Option<Resume<'_>>) -> Result<Offer, FetchError> {
    let mut url = url.clone();
    // The token goes only to the host it was given for.
    let origin = url.origin();
    for _ in 0..=MAX_REDIRECTS {
        let token = opts.token.as_deref().filter(|_| url.origin() == origin);
        let (mut offer, head) = exchange(&url, opts, resume.as_ref(), token)?;
        match head.status {
            301 | 302 | 303 | 307 | 308 => {
                let loc = head.location.as_deref().ok_or_else(|| http_error(&offer.peer, &head))?;
                let next = url.join(loc).map_err(|_| FetchError::Http {
                    target: offer.peer.clone(),
                    status: head.status,
                    reason: format!("a redirect to a bad address `{}`", printable(loc)),
                    retry_after: None,
                })?;
                if next.scheme() != "http" {
                    return Err(FetchError::Usage(format!(
                        "{} redirects to {}, and only http:// is supported",
                        url,
                        printable(next.as_str())
                    )));
                }
                url = next;
            }
            200 => {
                offer.start = 0;
                return Ok(offer);
            }
            206 => {
                let want = resume.as_ref().map_or(0, |r| r.offset);
                match head.content_range {
                    Some((a, _, _)) if a == want => {
                        offer.start = a;
                        return Ok(offer);
                    }
                    _ => {
                        return Err(FetchError::Http {
                            target: offer.peer,
                            status: 206,
                            reason: format!("a range that was not asked for (wanted bytes {want}-)"),
                            retry_after: None,
                        });
                    }
                }
            }
            // The partial is as long as the file or longer: it is not a prefix of this one.
            416 if resume.is_some() => return Err(FetchError::RangeGone),
            _ => return Err(http_error(&offer.peer, &head)),
        }
    }
    Err(FetchError::BadHttp { target: url.to_string(), why: format!("more than {MAX_REDIRECTS} redirects") })
}

/// The error a status that brings no file means (see `FetchError::exit_code`).
fn http_error(peer: &str, head: &ResponseHead) -> FetchError {
    let retry_after = head.retry_after.as_deref().and_then(|v| wire::retry_after(v, std::time::SystemTime::now()));
    FetchError::Http {
        target: peer.to_string(),
        status: head.status,
        reason: printable(&head.reason).into_owned(),
        retry_after,
    }
}

/// One request and its response head.
fn exchange(
    url: &url::Url,
    opts: &Options,
    resume: Option<&Resume<'_>>,
    token: Option<&[u8]>,
) -> Result<(Offer, ResponseHead), FetchError> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.to_string()),
        Some(url::Host::Ipv4(a)) => Host::Ip(a.into()),
        Some(url::Host::Ipv6(a)) => Host::Ip(a.into()),
        None => return Err(FetchError::Usage(format!("bad URL `{url}`: no host"))),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let (mut stream, peer) = connect(&Target { host, port: Some(port) }, port, opts.timeout)?;
    let peer = peer.to_string();
    let mut silence = Silence::start(&stream, opts.timeout).map_err(|e| lost(&peer, e))?;
    stream.set_write_timeout(Some(opts.timeout)).map_err(|e| lost(&peer, e))?;
    let mut req = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xfer/{}\r\nAccept: */*\r\nAccept-Encoding: identity\r\n\
         Connection: close\r\n",
        url.path(),
        url.query().map(|q| format!("?{q}")).unwrap_or_default(),
        host_header(url),
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes();
    if let Some(r) = resume {
        req.extend_from_slice(format!("Range: bytes={}-\r\nIf-Range: {}\r\n", r.offset, r.validator).as_bytes());
    }
    if let Some(t) = token {
        if t.iter().any(|&b| !(0x21..0x7f).contains(&b)) {
            return Err(FetchError::Usage("a token sent over HTTP must be printable ASCII without spaces".into()));
        }
        req.extend_from_slice(b"Authorization: Bearer ");
        req.extend_from_slice(t);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    stream.write_all(&req).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            FetchError::Timeout { target: peer.clone(), timeout: opts.timeout }
        }
        _ => lost(&peer, e),
    })?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0usize;
    let (head, used) = loop {
        match wire::parse_response(&buf[..have]) {
            Ok(Decoded::Done(head, used)) => break (head, used),
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => {
                return Err(FetchError::BadHttp { target: peer, why: e.to_string() });
            }
        }
        // Full: grow, up to the limit (a full buffer of that size is a head too large).
        if have == buf.len() {
            buf.resize((buf.len() * 2).min(wire::MAX_RESPONSE_HEAD), 0);
        }
        have += recv_head(&mut silence, &stream, &mut buf[have..], have, "bytes of the response head", &peer, opts)?;
    };
    if let Some(enc) = &head.encoding
        && matches!(head.status, 200 | 206)
    {
        return Err(FetchError::Http {
            target: peer,
            status: head.status,
            reason: format!("the body is encoded ({}), and xfer saves bytes only as they are", printable(enc)),
            retry_after: None,
        });
    }
    let framing = if head.chunked {
        Framing::Chunked(Chunked::default())
    } else if let Some(n) = head.content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    // A 206 without Content-Range is refused by `ask`: its size does not matter.
    let size = match (head.status, head.content_range) {
        (206, Some((_, _, total))) => total,
        _ if head.chunked => None,
        _ => head.content_length,
    };
    let offer = Offer {
        size,
        start: 0,
        framing,
        blake3: head.blake3,
        sha256: head.sha256,
        name: head.filename.clone(),
        etag: head.etag.clone(),
        last_modified: head.last_modified.clone(),
        leftover: buf[used..have].to_vec(),
        stream,
        silence,
        peer,
    };
    Ok((offer, head))
}

/// `Host:` as the URL has it: the port only when it is not the default.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
