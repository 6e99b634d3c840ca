//! HTTP/1.1 as xfer speaks it: request heads parsed (with `httparse`, in place, no I/O),
//! and the pieces of a response head rendered. RFC 9110 (semantics), RFC 9112 (HTTP/1.1).
//!
//! Pure functions, as everywhere in `encoding`: nothing here reads a socket or allocates
//! in proportion to what a peer sent (a request head is at most [`MAX_HEAD`] bytes; a
//! `Range` header is looked at, never expanded). What the server answers to a request is
//! decided in `serve::http`; this module says what the bytes mean and how to write them.
//!
//! Strictness that keeps a proxy in front from being fooled (request smuggling): a body on
//! a request is refused, `Transfer-Encoding` is refused, two `Content-Length`s or two
//! `Host`s are refused, and httparse refuses bare CR, NUL and obsolete line folding.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use thiserror::Error;

use super::Decoded;

/// Longest request head accepted (request line and headers); a longer one gets 431.
pub const MAX_HEAD: usize = 8192;
/// Longest request line accepted; a longer one gets 414.
pub const MAX_LINE: usize = 4096;
/// Most header fields accepted in one request; more gets 431.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other method: answered 405.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head: the method, the target, and the few fields xfer acts on, all
/// borrowed from the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The method as sent (for the log).
    pub method_name: &'a str,
    /// The request target as sent (origin form `/path?query`, or absolute form).
    pub target: &'a str,
    pub version: Version,
    /// Whether the connection may carry another request after this one's reply.
    pub keep_alive: bool,
    pub host: Option<&'a str>,
    /// `None` as well when the field came twice (a range then means nothing).
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// Why a request head cannot be served; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request line too long")]
    LineTooLong,
    #[error("malformed request")]
    Malformed,
    #[error("HTTP version not supported")]
    Version,
    #[error("a request body is not accepted")]
    Body,
}

impl Error {
    pub fn status(self) -> u16 {
        match self {
            Error::HeadTooLarge => 431,
            Error::LineTooLong => 414,
            Error::Malformed => 400,
            Error::Version => 505,
            Error::Body => 413,
        }
    }
}

/// Parses a request head from the bytes received so far. `Done(request, n)`: the head is
/// the first `n` bytes (anything after it is the next, pipelined request).
pub fn parse(buf: &[u8]) -> Result<Decoded<Request<'_>>, Error> {
    // The request line's length is known before the head is whole.
    let line_end = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n');
    if line_end.is_none() && buf.len() > MAX_LINE {
        return Err(Error::LineTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore(1)),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(Error::Version),
        Err(_) => return Err(Error::Malformed),
    };
    if n > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let (Some(method_name), Some(target), Some(v)) = (req.method, req.path, req.version) else {
        return Err(Error::Malformed);
    };
    let version = if v == 0 { Version::Http10 } else { Version::Http11 };
    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let mut out = Request {
        method,
        method_name,
        target,
        version,
        keep_alive: version == Version::Http11,
        host: None,
        range: None,
        if_range: None,
        if_none_match: None,
        if_modified_since: None,
        authorization: None,
    };
    let (mut lengths, mut hosts, mut ranges) = (0, 0, 0);
    // Whether a body is announced is decided once every header is seen: the framing
    // headers that disagree (both kinds, or two lengths) are how requests are smuggled
    // past a proxy, and are malformed whatever they say; a plain body is only unwanted.
    let (mut chunked, mut body, mut bad_length) = (false, false, false);
    // `close` wins wherever it appears, even before a later `keep-alive`.
    let mut close = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).ok().map(str::trim);
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match value {
                Some("0") => {}
                Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => body = true,
                _ => bad_length = true,
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            out.host = value;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::Http10 {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("range") {
            ranges += 1;
            out.range = value;
        } else if name.eq_ignore_ascii_case("if-range") {
            out.if_range = out.if_range.or(value);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            out.if_none_match = out.if_none_match.or(value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            out.if_modified_since = out.if_modified_since.or(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = out.authorization.or(value);
        }
    }
    if bad_length || lengths > 1 || (chunked && lengths > 0) {
        return Err(Error::Malformed);
    }
    if chunked || body {
        return Err(Error::Body);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is a bad request.
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(Error::Malformed);
    }
    if ranges > 1 {
        out.range = None;
    }
    out.keep_alive &= !close;
    Ok(Decoded::Done(out, n))
}

/// The path of a request target, percent-decoded, without the query: the bytes to compare
/// with a resource's name. `None` for a target that is no path at all.
pub fn path_bytes(target: &str) -> Option<Cow<'_, [u8]>> {
    let path = if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        // Absolute form (what proxies send): the path starts after the authority.
        rest.find('/').map_or("/", |i| &rest[i..])
    } else if target.starts_with('/') {
        target
    } else {
        return None;
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    Some(percent_encoding::percent_decode_str(path).into())
}

/// A parameter of the request target's query (`?a=1&b=2`), as written (not decoded).
pub fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// Bytes that stay as they are in a URL path segment; everything else is %-encoded.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A file name as one URL path segment (`my file.txt` → `my%20file.txt`).
pub fn url_segment(name: &[u8]) -> String {
    percent_encoding::percent_encode(name, SEGMENT).to_string()
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range (none, another unit, malformed, or several): send it all (RFC 9110
    /// §14.2 lets a server ignore a range; xfer answers several ranges with the whole).
    Full,
    /// Bytes `start..end` (end exclusive; never empty).
    Part(u64, u64),
    /// Not satisfiable: 416.
    Unsatisfiable,
}

/// Reads a single byte range (`a-b`, `a-`, `-n`). Numbers past 2^64 are handled as the
/// RFC says (a last position past the end means the end; a first one means nothing fits).
pub fn parse_range(value: &str, size: u64) -> Ranged {
    let v = value.trim();
    let spec = match v.get(..6) {
        Some(unit) if unit.eq_ignore_ascii_case("bytes=") => &v[6..],
        _ => return Ranged::Full,
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Full };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u128> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let size128 = size as u128;
    match (first.is_empty(), last.is_empty()) {
        // "-n": the last n bytes.
        (true, false) => match num(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part((size128.saturating_sub(n)) as u64, size),
            None => Ranged::Full,
        },
        // "a-": from a to the end.
        (false, true) => match num(first) {
            Some(a) if a >= size128 => Ranged::Unsatisfiable,
            Some(a) => Ranged::Part(a as u64, size),
            None => Ranged::Full,
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if b < a => Ranged::Full,
            (Some(a), Some(_)) if a >= size128 => Ranged::Unsatisfiable,
            (Some(a), Some(b)) => Ranged::Part(a as u64, (b + 1).min(size128) as u64),
            _ => Ranged::Full,
        },
        (true, true) => Ranged::Full,
    }
}

/// Whether `list` (an `If-None-Match` or `If-Range` value) names `etag`. `weak`: compare
/// ignoring a `W/` prefix (If-None-Match); otherwise both must be strong (If-Range).
pub fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return weak;
        }
        match t.strip_prefix("W/") {
            Some(w) => weak && w == etag,
            None => t == etag,
        }
    })
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, or the two older forms).
pub fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn fmt_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The reason phrase for a status xfer sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `Content-Disposition: attachment` for a file name: `filename="…"` with an ASCII stand-in
/// that no header parser can misread, and RFC 5987 `filename*` with the exact name when it
/// is not plain ASCII. No byte of the name can end the header or start another. `%` is
/// not plain either: browsers decode `%XX` in `filename` (RFC 6266, appendix D), so a name
/// holding one gets `_` there and its exact self in `filename*`.
pub fn content_disposition(out: &mut impl fmt::Write, name: &[u8]) -> fmt::Result {
    let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'%') || b == b' ';
    out.write_str("attachment; filename=\"")?;
    for &b in name {
        out.write_char(if plain(b) { b as char } else { '_' })?;
    }
    out.write_char('"')?;
    if !name.iter().all(|&b| plain(b)) {
        // attr-char (RFC 5987): ALPHA DIGIT ! # $ & + - . ^ _ ` | ~
        const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'!')
            .remove(b'#')
            .remove(b'$')
            .remove(b'&')
            .remove(b'+')
            .remove(b'-')
            .remove(b'.')
            .remove(b'^')
            .remove(b'_')
            .remove(b'`')
            .remove(b'|')
            .remove(b'~');
        write!(out, "; filename*=UTF-8''{}", percent_encoding::percent_encode(name, ATTR))?;
    }
    Ok(())
}

/// Escapes text for an HTML element's content, where only `&` and `<` (and `>`, for
/// symmetry) mean anything: quotes stay as they are, so a name full of them does not grow
/// fivefold.
pub fn html_text(s: &str) -> Cow<'_, str> {
    escape_html(s, false)
}

/// Text made safe inside HTML (element content and quoted attribute values).
pub fn html(s: &str) -> Cow<'_, str> {
    escape_html(s, true)
}

fn escape_html(s: &str, quotes: bool) -> Cow<'_, str> {
    let special = |c: char| matches!(c, '&' | '<' | '>') || quotes && matches!(c, '"' | '\'');
    if !s.contains(special) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quotes => out.push_str("&quot;"),
            '\'' if quotes => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A checksum file's line, as `b3sum` and `sha256sum` print it and `-c` reads it:
/// `HEX  NAME`. A name holding a backslash, CR or newline is escaped the way coreutils
/// does (`\` before the line, `\\`, `\n`, `\r` in the name).
pub fn checksum_line(hex: &str, name: &[u8]) -> Vec<u8> {
    let escape = name.iter().any(|&b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut out = Vec::with_capacity(hex.len() + name.len() + 4);
    if escape {
        out.push(b'\\');
    }
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(b"  ");
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

/// Standard base64 with padding (RFC 4648), for the digest headers.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A bounded writer over a byte buffer, for rendering a head on the stack. Writing past
/// the end is an error (the head is then not sent as is; callers size for the worst case).
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    /// How many bytes have been written.
    pub fn written(&self) -> usize {
        self.len
    }

    pub fn bytes(&mut self, b: &[u8]) -> fmt::Result {
        let end = self.len.checked_add(b.len()).filter(|&e| e <= self.buf.len()).ok_or(fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// The client side: response heads, chunked bodies, and the headers fetch acts on.
// ---------------------------------------------------------------------------------------

/// Longest response head a client accepts.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A parsed response head: the status, and the fields fetch acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Content-Range: bytes a-b/total`: (a, b inclusive, total if known).
    pub content_range: Option<(u64, u64, Option<u64>)>,
    /// A `Content-Encoding` other than identity (the body is not the file's bytes).
    pub encoding: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    /// The file name from `Content-Disposition` (`filename*` preferred), as bytes.
    pub filename: Option<Vec<u8>>,
    /// SHA-256 of the whole representation, from `Repr-Digest` or the older `Digest`.
    pub sha256: Option<[u8; 32]>,
    /// BLAKE3 of the whole file, from xfer's own `Xfer-Blake3`.
    pub blake3: Option<[u8; 32]>,
}

/// Why a response head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("malformed HTTP response")]
    Malformed,
    #[error("HTTP response head over 64 KiB")]
    TooLarge,
    #[error("conflicting Content-Length fields")]
    Length,
}

/// Parses a response head from the bytes so far; `Done(head, n)`: the body starts at `n`.
pub fn parse_response(buf: &[u8]) -> Result<Decoded<ResponseHead>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => return Err(ResponseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore(1)),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let mut head = ResponseHead {
        status: resp.code.ok_or(ResponseError::Malformed)?,
        reason: resp.reason.unwrap_or("").to_string(),
        ..ResponseHead::default()
    };
    let (mut disposition, mut old_digest) = (None, None);
    for h in resp.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else { continue };
        let v = v.trim();
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("content-length") {
            let len: u64 = v.parse().map_err(|_| ResponseError::Malformed)?;
            if head.content_length.is_some_and(|l| l != len) {
                return Err(ResponseError::Length);
            }
            head.content_length = Some(len);
        } else if is("transfer-encoding") {
            head.chunked = v.rsplit(',').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if is("content-range") {
            head.content_range = parse_content_range(v);
        } else if is("content-encoding") {
            if !v.eq_ignore_ascii_case("identity") && !v.is_empty() {
                head.encoding = Some(v.to_string());
            }
        } else if is("etag") {
            head.etag = Some(v.to_string());
        } else if is("last-modified") {
            head.last_modified = Some(v.to_string());
        } else if is("location") {
            head.location = Some(v.to_string());
        } else if is("retry-after") {
            head.retry_after = Some(v.to_string());
        } else if is("content-disposition") {
            disposition = Some(v);
        } else if is("repr-digest") {
            head.sha256 = head.sha256.or_else(|| repr_digest_sha256(v));
        } else if is("digest") {
            old_digest = old_digest.or_else(|| digest_sha256(v));
        } else if is("xfer-blake3") {
            head.blake3 = parse_hex32(v);
        }
    }
    head.sha256 = head.sha256.or(old_digest);
    head.filename = disposition.and_then(disposition_filename);
    Ok(Decoded::Done(head, n))
}

/// `bytes a-b/total` (total may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.strip_prefix("bytes ")?.trim();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, total))
}

/// `Repr-Digest: sha-256=:BASE64:` (RFC 9530; a dictionary that may name other algorithms).
fn repr_digest_sha256(v: &str) -> Option<[u8; 32]> {
    sha256_item(v, |val| val.strip_prefix(':')?.strip_suffix(':'))
}

/// `Digest: SHA-256=BASE64` (RFC 3230; a list that may name other algorithms).
fn digest_sha256(v: &str) -> Option<[u8; 32]> {
    sha256_item(v, |val| Some(val))
}

/// The SHA-256 in a comma-separated list of `algorithm=value` items, its base64 taken out
/// of the value by `base64_of`.
fn sha256_item(v: &str, base64_of: impl Fn(&str) -> Option<&str>) -> Option<[u8; 32]> {
    v.split(',').find_map(|item| {
        let (alg, val) = item.trim().split_once('=')?;
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            return None;
        }
        base64_decode(base64_of(val.trim())?)?.try_into().ok()
    })
}

/// 64 hex digits.
pub fn parse_hex32(v: &str) -> Option<[u8; 32]> {
    let v = v.trim().as_bytes();
    if v.len() != 64 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in v.chunks(2).enumerate() {
        out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(out)
}

/// Standard base64 (padding optional); `None` on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// The file name a `Content-Disposition` value gives: `filename*` (RFC 5987/8187,
/// percent-decoded; UTF-8 or ISO-8859-1) when present, else `filename` (quoted or not).
/// The bytes are not yet safe to use as a name; see `fetch`'s sanitiser.
pub fn disposition_filename(v: &str) -> Option<Vec<u8>> {
    let mut plain = None;
    let mut extended = None;
    let mut rest = v;
    // Parameters after the disposition type, `;`-separated; quoted strings may hold `;`.
    while let Some(i) = rest.find(';') {
        rest = rest[i + 1..].trim_start();
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_ascii_lowercase();
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut out = Vec::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            let mut b = [0; 4];
                            out.extend_from_slice(e.encode_utf8(&mut b).as_bytes());
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => {
                        let mut b = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    }
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().as_bytes().to_vec(), &after[end..])
        };
        match name.as_str() {
            "filename" => plain = Some(value),
            "filename*" => extended = rfc5987(&value),
            _ => {}
        }
        rest = tail;
    }
    extended.or(plain)
}

/// `charset'lang'pct-encoded` → bytes (UTF-8 as is; ISO-8859-1 converted to UTF-8).
fn rfc5987(v: &[u8]) -> Option<Vec<u8>> {
    let v = std::str::from_utf8(v).ok()?;
    let mut parts = v.splitn(3, '\'');
    let charset = parts.next()?.to_ascii_lowercase();
    let _lang = parts.next()?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(parts.next()?).collect();
    match charset.as_str() {
        "utf-8" => Some(bytes),
        "iso-8859-1" => Some(bytes.iter().map(|&b| b as char).collect::<String>().into_bytes()),
        _ => None,
    }
}

/// `Retry-After`: seconds, or an HTTP date (then relative to `now`).
pub fn retry_after(v: &str, now: SystemTime) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    parse_date(v).map(|t| t.duration_since(now).unwrap_or_default())
}

/// A chunked body's decoder (RFC 9112 §7.1): fed the raw bytes as they arrive, it keeps the
/// data and drops the framing, in place. Trailers are read and ignored. Chunk sizes are
/// looked at, never allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    /// Reading a chunk-size line; the digits so far.
    Size {
        size: u64,
        digits: u8,
        in_ext: bool,
    },
    /// The line ended with CR: expecting LF. `digits`: whether there was a size at all.
    SizeLf {
        size: u64,
        digits: bool,
    },
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: expecting CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_len: u32,
        cr: bool,
    },
    Done,
}

/// A chunked body that makes no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("malformed chunked body")]
pub struct ChunkError;

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size { size: 0, digits: 0, in_ext: false }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    /// Decodes `buf` in place: the data bytes are moved to its front; returns how many
    /// there are. Bytes after the end of the body are left where they are (and counted in
    /// nothing).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, ChunkError> {
        let (mut r, mut w) = (0usize, 0usize);
        while r < buf.len() {
            match *self {
                Chunked::Done => break,
                Chunked::Data(left) => {
                    let n = (left.min((buf.len() - r) as u64)) as usize;
                    buf.copy_within(r..r + n, w);
                    (r, w) = (r + n, w + n);
                    *self = if left == n as u64 { Chunked::DataCr } else { Chunked::Data(left - n as u64) };
                }
                Chunked::Size { size, digits, in_ext } => {
                    let c = buf[r];
                    r += 1;
                    *self = match c {
                        b'\r' => Chunked::SizeLf { size, digits: digits > 0 },
                        b'\n' => after_size(size, digits > 0)?,
                        _ if in_ext => Chunked::Size { size, digits, in_ext },
                        b';' | b' ' | b'\t' if digits > 0 => Chunked::Size { size, digits, in_ext: true },
                        c if c.is_ascii_hexdigit() && digits < 16 => {
                            let d = (c as char).to_digit(16).unwrap_or(0) as u64;
                            Chunked::Size { size: size << 4 | d, digits: digits + 1, in_ext }
                        }
                        _ => return Err(ChunkError),
                    };
                }
                Chunked::SizeLf { size, digits } => {
                    if buf[r] != b'\n' {
                        return Err(ChunkError);
                    }
                    r += 1;
                    *self = after_size(size, digits)?;
                }
                Chunked::DataCr => {
                    if buf[r] != b'\r' {
                        return Err(ChunkError);
                    }
                    r += 1;
                    *self = Chunked::DataLf;
                }
                Chunked::DataLf => {
                    if buf[r] != b'\n' {
                        return Err(ChunkError);
                    }
                    r += 1;
                    *self = Chunked::default();
                }
                Chunked::Trailer { line_len, cr } => {
                    let c = buf[r];
                    r += 1;
                    *self = match (c, cr) {
                        (b'\n', _) if line_len == 0 => Chunked::Done,
                        (b'\n', _) => Chunked::Trailer { line_len: 0, cr: false },
                        (b'\r', false) => Chunked::Trailer { line_len, cr: true },
                        (_, true) => return Err(ChunkError),
                        _ if line_len >= 8192 => return Err(ChunkError),
                        _ => Chunked::Trailer { line_len: line_len + 1, cr: false },
                    };
                }
            }
        }
        Ok(w)
    }
}

/// What follows a chunk-size line: data, or the trailer after the last (empty) chunk.
fn after_size(size: u64, digits: bool) -> Result<Chunked, ChunkError> {
    match (digits, size) {
        (false, _) => Err(ChunkError),
        (true, 0) => Ok(Chunked::Trailer { line_len: 0, cr: false }),
        (true, n) => Ok(Chunked::Data(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write;

    fn done(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Ok(Decoded::Done(r, n)) => (r, n),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn requests() {
        let (r, n) = done(b"GET /f.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\nGET /next");
        assert_eq!(n, 50);
        assert_eq!((r.method, r.target, r.version, r.keep_alive), (Method::Get, "/f.bin", Version::Http11, true));
        assert_eq!((r.host, r.range), (Some("x"), Some("bytes=0-9")));
        let (r, _) = done(b"HEAD / HTTP/1.0\r\n\r\n");
        assert_eq!((r.method, r.version, r.keep_alive), (Method::Head, Version::Http10, false));
        let (r, _) = done(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = done(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, Method::Other);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.method, Method::Get);
        let (r, _) = done(b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=5-6\r\n\r\n");
        assert_eq!(r.range, None, "two ranges mean nothing");
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(Decoded::NeedMore(1)));
    }

    #[test]
    fn refusals() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Error::Body),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Error::Body),
            // Smuggling shapes: both framings, or two lengths (even equal ones), in any order.
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", Error::Malformed),
            (b"GET / HTTP/2.0\r\n\r\n", Error::Version),
        ] {
            assert_eq!(parse(bytes), Err(want), "{:?}", String::from_utf8_lossy(bytes));
        }
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_LINE));
        assert_eq!(parse(long_line.as_bytes()), Err(Error::LineTooLong));
        assert_eq!(parse(&long_line.as_bytes()[..MAX_LINE + 1]), Err(Error::LineTooLong), "known before the end");
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes()), Err(Error::HeadTooLarge));
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS));
        assert_eq!(parse(many.as_bytes()), Err(Error::HeadTooLarge));
    }

    /// Each limit is exact: a head at the limit is served, one byte more is refused, and an
    /// unfinished head is refused as soon as it can no longer fit.
    #[test]
    fn limits_hold_at_their_exact_bounds() {
        // A request line of MAX_LINE bytes plus its '\n' is still a request line.
        let pad = |total: usize, fixed: usize| "a".repeat(total - fixed);
        let line = format!("GET /{} HTTP/1.1\r\n", pad(MAX_LINE, "GET / HTTP/1.1\r".len()));
        assert_eq!(line.len(), MAX_LINE + 1);
        let fits = format!("{line}Host: x\r\n\r\n");
        assert_eq!(done(fits.as_bytes()).1, fits.len());
        let unfinished = &line.as_bytes()[..MAX_LINE];
        assert_eq!(parse(unfinished), Ok(Decoded::NeedMore(1)), "MAX_LINE bytes may still end in '\\n'");
        let longer = format!("GET /a{} HTTP/1.1\r\n", pad(MAX_LINE, "GET / HTTP/1.1\r".len()));
        assert_eq!(parse(longer.as_bytes()), Err(Error::LineTooLong));

        // A complete head of exactly MAX_HEAD bytes is served; one more byte is not.
        let head = |len: usize| {
            let fixed = "GET / HTTP/1.1\r\nHost: x\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "b".repeat(len - fixed))
        };
        let exact = head(MAX_HEAD);
        assert_eq!(done(exact.as_bytes()).1, MAX_HEAD);
        assert_eq!(parse(head(MAX_HEAD + 1).as_bytes()), Err(Error::HeadTooLarge));
        // Unfinished: MAX_HEAD - 1 bytes may still end in time; MAX_HEAD bytes cannot.
        assert_eq!(parse(&exact.as_bytes()[..MAX_HEAD - 1]), Ok(Decoded::NeedMore(1)));
        let endless = head(MAX_HEAD + 10);
        assert_eq!(parse(&endless.as_bytes()[..MAX_HEAD]), Err(Error::HeadTooLarge));
    }

    /// `Connection: close` wins over anything else; keep-alive opts in on HTTP/1.0 only, and
    /// other tokens change nothing.
    #[test]
    fn connection_tokens() {
        let keep = |req: &str| done(req.as_bytes()).0.keep_alive;
        assert!(!keep("GET / HTTP/1.1\r\nHost: x\r\nConnection: close, keep-alive\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\nConnection: TE\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"));
        assert!(keep("GET / HTTP/1.1\r\nHost: x\r\nConnection: TE\r\n\r\n"));
    }

    #[test]
    fn paths() {
        assert_eq!(path_bytes("/my%20file.txt?x=1").as_deref(), Some(&b"/my file.txt"[..]));
        assert_eq!(path_bytes("http://h:1/a%2Fb").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(path_bytes("http://h:1").as_deref(), Some(&b"/"[..]));
        assert_eq!(path_bytes("/%00%ff").as_deref(), Some(&b"/\0\xff"[..]));
        assert_eq!(path_bytes("/%252F").as_deref(), Some(&b"/%2F"[..]), "decoded once");
        assert_eq!(path_bytes("*"), None);
        assert_eq!(query_param("/f?expires=12&sig=ab#x", "sig"), Some("ab"));
        assert_eq!(query_param("/f?expires=12&sig=ab", "expires"), Some("12"));
        assert_eq!(query_param("/f?x", "sig"), None);
        assert_eq!(query_param("/f", "sig"), None);
        assert_eq!(url_segment("my file-1.txt".as_bytes()), "my%20file-1.txt");
        assert_eq!(url_segment(b"a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn ranges() {
        let r = |v: &str| parse_range(v, 1000);
        assert_eq!(r("bytes=0-99"), Ranged::Part(0, 100));
        assert_eq!(r("bytes=990-"), Ranged::Part(990, 1000));
        assert_eq!(r("bytes=-10"), Ranged::Part(990, 1000));
        assert_eq!(r("bytes=-5000"), Ranged::Part(0, 1000));
        assert_eq!(r("bytes=500-99999999999999999999999"), Ranged::Part(500, 1000));
        assert_eq!(r("bytes=1000-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=5-4"), Ranged::Full, "invalid: ignored");
        assert_eq!(r("bytes=0-0,5-6"), Ranged::Full, "several: the whole");
        assert_eq!(r(&format!("bytes={}", "0-0,".repeat(10_000))), Ranged::Full);
        assert_eq!(r("items=0-5"), Ranged::Full);
        assert_eq!(r("bytes=-"), Ranged::Full);
        assert_eq!(r("bytes= 1 - 2 "), Ranged::Part(1, 3));
        assert_eq!(r("bytes=+1-2"), Ranged::Full);
        // Numbers are read up to 39 digits (all a u128 holds), leading zeros included;
        // a longer one is ignored even when its value is small.
        assert_eq!(r(&format!("bytes={}5-", "0".repeat(38))), Ranged::Part(5, 1000));
        assert_eq!(r(&format!("bytes={}5-", "0".repeat(39))), Ranged::Full);
        assert_eq!(r(&format!("bytes=0-{}5", "0".repeat(39))), Ranged::Full);
        assert_eq!(parse_range("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Ranged::Unsatisfiable);
        let big = 5u64 << 32;
        assert_eq!(parse_range("bytes=4294967296-", big), Ranged::Part(1 << 32, big));
    }

    #[test]
    fn etags_and_dates() {
        let e = "\"abc\"";
        assert!(etag_matches("\"abc\"", e, true));
        assert!(etag_matches("\"x\", W/\"abc\"", e, true));
        assert!(!etag_matches("W/\"abc\"", e, false), "If-Range wants a strong match");
        assert!(etag_matches("*", e, true));
        assert!(!etag_matches("\"abd\"", e, true));
        let t = parse_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(fmt_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn names_in_headers_and_pages() {
        let mut s = String::new();
        content_disposition(&mut s, b"report 2026.pdf").unwrap();
        assert_eq!(s, "attachment; filename=\"report 2026.pdf\"");
        let mut s = String::new();
        content_disposition(&mut s, "é\"x\r\nSet-Cookie: a;.txt".as_bytes()).unwrap();
        assert!(!s.contains(['\r', '\n']), "{s}");
        assert_eq!(s.matches('"').count(), 2, "{s}");
        assert!(s.contains("filename*=UTF-8''%C3%A9%22x%0D%0ASet-Cookie%3A%20a%3B.txt"), "{s}");
        // A browser would decode %41 in filename="…" into A: filename* carries the name.
        let mut s = String::new();
        content_disposition(&mut s, b"report %41.txt").unwrap();
        assert_eq!(s, "attachment; filename=\"report _41.txt\"; filename*=UTF-8''report%20%2541.txt");
        assert_eq!(html_text("a'\"<&>"), "a'\"&lt;&amp;&gt;");
        assert_eq!(html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(checksum_line("ab", b"f.txt"), b"ab  f.txt\n");
        assert_eq!(checksum_line("ab", b"a\\b\nc"), b"\\ab  a\\\\b\\nc\n");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let mut buf = [0u8; 4];
        let mut out = Out::new(&mut buf);
        assert!(out.write_str("abcd").is_ok());
        assert!(out.write_str("e").is_err());
        assert_eq!(out.written(), 4);
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 5-14/100\r\n\
            ETag: \"abc\"\r\nRepr-Digest: md5=:AAAA:, sha-256=:qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=:\r\n\
            Content-Disposition: attachment; filename=\"a;b.txt\"; filename*=UTF-8''caf%C3%A9.txt\r\n\
            Xfer-Blake3: dc5a4edb8240b018124052c330270696f96771a63b45250a5c17d3000e823355\r\n\r\nbody";
        let Ok(Decoded::Done(h, n)) = parse_response(raw) else { panic!() };
        assert_eq!(n, raw.len() - 4);
        assert_eq!((h.status, h.content_length, h.content_range), (206, Some(10), Some((5, 14, Some(100)))));
        assert_eq!(h.etag.as_deref(), Some("\"abc\""));
        assert_eq!(h.filename.as_deref(), Some("café.txt".as_bytes()));
        assert_eq!(base64(&h.sha256.unwrap()), "qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=");
        assert!(h.blake3.is_some());
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nDigest: SHA-256=qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=\r\n\r\n";
        let Ok(Decoded::Done(h, _)) = parse_response(raw) else { panic!() };
        assert!(h.chunked && h.sha256.is_some());
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ResponseError::Length)
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Ok(Decoded::NeedMore(1)));
        assert_eq!(disposition_filename("attachment; filename=plain.bin"), Some(b"plain.bin".to_vec()));
        assert_eq!(disposition_filename("inline; filename=\"q\\\"x\""), Some(b"q\"x".to_vec()));
        assert_eq!(
            disposition_filename("attachment; filename*=iso-8859-1'en'%E9t%E9"),
            Some("été".as_bytes().to_vec())
        );
        assert_eq!(disposition_filename("attachment"), None);
        // A quoted value ends at its closing quote, whatever it holds; the next one is read.
        assert_eq!(
            disposition_filename("attachment; filename=\"a;\"; filename*=UTF-8''b.txt"),
            Some(b"b.txt".to_vec())
        );
        assert_eq!(disposition_filename("attachment; filename=\"\"; filename*=UTF-8''c"), Some(b"c".to_vec()));
        assert_eq!(disposition_filename("attachment; filename=\"\""), Some(Vec::new()));
        assert_eq!(base64_decode("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(base64_decode("/w"), Some(vec![0xff]));
        assert_eq!(base64_decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(base64_decode("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(retry_after("7", SystemTime::now()), Some(std::time::Duration::from_secs(7)));
    }

    /// What fetch acts on in a response head, field by field, at the edges.
    #[test]
    fn response_fields_at_their_edges() {
        let head = |extra: &str| {
            let raw = format!("HTTP/1.1 404 Not Here\r\nContent-Length: 0\r\n{extra}\r\n");
            match parse_response(raw.as_bytes()) {
                Ok(Decoded::Done(h, n)) if n == raw.len() => h,
                other => panic!("{other:?} for {raw:?}"),
            }
        };
        let h = head("");
        assert_eq!((h.status, h.reason.as_str(), h.sha256, h.encoding), (404, "Not Here", None, None));
        // Content-Range: a one-byte range is a range; an inverted one is none.
        assert_eq!(head("Content-Range: bytes 5-5/10\r\n").content_range, Some((5, 5, Some(10))));
        assert_eq!(head("Content-Range: bytes 0-9/*\r\n").content_range, Some((0, 9, None)));
        assert_eq!(head("Content-Range: bytes 6-5/10\r\n").content_range, None);
        // Content-Encoding: identity (or nothing) is no encoding at all.
        assert_eq!(head("Content-Encoding: identity\r\n").encoding, None);
        assert_eq!(head("Content-Encoding: IDENTITY\r\n").encoding, None);
        assert_eq!(head("Content-Encoding:\r\n").encoding, None);
        assert_eq!(head("Content-Encoding: gzip\r\n").encoding.as_deref(), Some("gzip"));
        // Digest (RFC 3230): SHA-256 found among others; anything else is no digest.
        let sha = "qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=";
        let h = head(&format!("Digest: MD5=AAAA, sha-256={sha}\r\n"));
        assert_eq!(h.sha256.map(|d| base64(&d)).as_deref(), Some(sha));
        assert_eq!(head("Digest: MD5=AAAA\r\n").sha256, None);
        assert_eq!(head("Digest: SHA-256=AAAA\r\n").sha256, None, "not 32 bytes");
        // Repr-Digest wins over the older Digest when both are given.
        let other = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let h = head(&format!("Digest: SHA-256={other}\r\nRepr-Digest: sha-256=:{sha}:\r\n"));
        assert_eq!(h.sha256.map(|d| base64(&d)).as_deref(), Some(sha));
        // A large head (long cookies, long redirects) is accepted up to 64 KiB; an
        // unfinished one is refused once it cannot end in time.
        let big = head(&format!("Location: /{}\r\n", "l".repeat(60_000)));
        assert_eq!(big.location.map(|l| l.len()), Some(60_001));
        let endless = format!("HTTP/1.1 200 OK\r\nX: {}", "x".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(
            parse_response(&endless.as_bytes()[..60_000]),
            Ok(Decoded::NeedMore(1)),
            "64 KiB, as the error says"
        );
        assert_eq!(parse_response(&endless.as_bytes()[..MAX_RESPONSE_HEAD - 1]), Ok(Decoded::NeedMore(1)));
        assert_eq!(parse_response(&endless.as_bytes()[..MAX_RESPONSE_HEAD]), Err(ResponseError::TooLarge));
    }

    /// The reason phrases are the ones RFC 9110 gives for each status xfer sends.
    #[test]
    fn reason_phrases() {
        for (code, phrase) in [
            (200, "OK"),
            (206, "Partial Content"),
            (304, "Not Modified"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (410, "Gone"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (416, "Range Not Satisfiable"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
            (299, "Unknown"),
        ] {
            assert_eq!(reason(code), phrase);
        }
    }

    #[test]
    fn chunked_bodies() {
        let mut body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT".to_vec();
        let mut d = Chunked::default();
        let n = d.decode(&mut body).unwrap();
        assert_eq!(&body[..n], b"Wikipedia in\r\n\r\nchunks.");
        assert!(d.is_done());
        // Byte by byte, the same.
        let whole = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n".to_vec();
        let (mut d, mut out) = (Chunked::default(), Vec::new());
        for &b in &whole {
            let mut one = [b];
            let n = d.decode(&mut one).unwrap();
            out.extend_from_slice(&one[..n]);
        }
        assert_eq!(out, b"Wikipedia");
        assert!(d.is_done());
        // Not done until the last chunk and the trailer's empty line are in.
        let mut d = Chunked::default();
        for part in [&b"4\r\nWi"[..], b"ki\r\n", b"0\r\n", b"X: 1\r\n"] {
            d.decode(&mut part.to_vec()).unwrap();
            assert!(!d.is_done(), "after {:?}", String::from_utf8_lossy(part));
        }
        d.decode(&mut b"\r\n".to_vec()).unwrap();
        assert!(d.is_done());
        // A bare LF ends a size line too (RFC 9112 §2.2 lets a recipient accept it).
        let mut lf = b"4\nWiki\r\n0\n\r\n".to_vec();
        let mut d = Chunked::default();
        assert_eq!(d.decode(&mut lf), Ok(4));
        assert!(d.is_done() && lf.starts_with(b"Wiki"));
        // A line end with no size before it is no chunk.
        assert_eq!(Chunked::default().decode(&mut b"\n".to_vec()), Err(ChunkError));
        // An extension with no size before it is refused at its first byte.
        assert_eq!(Chunked::default().decode(&mut b";".to_vec()), Err(ChunkError));
        for bad in [&b"x\r\n"[..], b"\r\n", b"4\r\nWikiX", b"11111111111111111\r\n", b";\r\n"] {
            let mut v = bad.to_vec();
            assert_eq!(Chunked::default().decode(&mut v), Err(ChunkError), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn chunked_decoding_is_split_proof(data in proptest::collection::vec(any::<u8>(), 0..500), sizes in proptest::collection::vec(1usize..40, 1..20), cut in 0usize..600) {
            let mut wire = Vec::new();
            let mut rest = &data[..];
            for s in sizes.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*s).min(rest.len());
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let cut = cut.min(wire.len());
            let (mut a, mut b) = (wire[..cut].to_vec(), wire[cut..].to_vec());
            let mut d = Chunked::default();
            let na = d.decode(&mut a).unwrap();
            let nb = d.decode(&mut b).unwrap();
            let mut out = a[..na].to_vec();
            out.extend_from_slice(&b[..nb]);
            prop_assert_eq!(out, data);
            prop_assert!(d.is_done());
        }

        #[test]
        fn response_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_response(&bytes);
            let _ = Chunked::default().decode(&mut bytes.clone());
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = disposition_filename(s);
                let _ = base64_decode(s);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parse_never_panics_and_prefixes_agree(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let whole = parse(&bytes);
            if let Ok(Decoded::Done(r, n)) = &whole {
                prop_assert!(*n <= bytes.len() && *n <= MAX_HEAD);
                prop_assert_eq!(parse(&bytes[..*n]), Ok(Decoded::Done(r.clone(), *n)));
            }
        }

        #[test]
        fn near_valid_heads(
            method in "(GET|HEAD|POST|get|G ET)",
            path in "/[ -~]{0,40}",
            headers in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..8),
        ) {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &headers {
                req.push_str(&format!("{n}: {v}\r\n"));
            }
            req.push_str("\r\n");
            // Any verdict is fine; a head accepted whole is accepted from exactly its bytes.
            if let Ok(Decoded::Done(r, n)) = parse(req.as_bytes()) {
                prop_assert_eq!(n, req.len());
                prop_assert_eq!(r.target, path.as_str());
            }
        }

        #[test]
        fn ranges_stay_inside(v in "bytes=[0-9]{0,25}-[0-9]{0,25}", size in any::<u64>()) {
            match parse_range(&v, size) {
                Ranged::Part(a, b) => prop_assert!(a < b && b <= size),
                Ranged::Full | Ranged::Unsatisfiable => {}
            }
        }

        #[test]
        fn disposition_is_one_header_line(name in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut s = String::new();
            content_disposition(&mut s, &name).unwrap();
            prop_assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", s);
            prop_assert_eq!(s.matches('"').count(), 2);
        }
    }
}
