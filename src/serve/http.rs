//! HTTP/1.1 on the server side: the request heads of one connection collected as they
//! arrive, each request turned into a reply, and the reply's head rendered.
//!
//! Resources (nothing ever reaches the file system; the one snapshot is all there is):
//! - `/NAME` (percent-encoded): the file, with ranges and conditional requests;
//! - `/`: a small landing page (name, size, digests, a link, commands to copy);
//! - `/NAME.b3`, `/NAME.sha256`: checksum files that `b3sum -c` / `sha256sum -c` read;
//! - anything else: 404, naming the right URL.
//!
//! Owns: the connection's unparsed bytes (only while a request is incomplete or pipelined
//! ones wait), how requests map to replies, and every byte of an HTTP head. Must never
//! touch a socket: the session reads for it, the send path delivers what it decides.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::admit::{Admission, Refusal};
use super::snapshot::Snapshot;
use crate::encoding::Decoded;
use crate::encoding::http::{self as wire, Method, Out, Ranged, Version};
use crate::encoding::text::printable;

/// Requests answered on one connection before it is closed (nginx's keepalive_requests).
pub const MAX_REQUESTS: u32 = 1000;
/// How long a kept-alive connection may wait for its next request.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// What every reply of one server shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// `Cache-Control: public, max-age=N`; 0 sends `no-cache`.
    pub max_age: u32,
    /// `host:port` for the landing page's commands when the request names no usable host.
    pub fallback_host: String,
    /// The key that signs links (when there is a token): a page reached by a signed link
    /// links the file with signatures of the same expiry.
    pub links: Option<crate::encoding::auth::Key>,
}

/// Which resource or answer a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The file (200, 206, or a HEAD of either).
    File,
    NotModified,
    Unsatisfiable,
    Landing,
    B3Sum,
    Sha256Sum,
    /// `/NAME.sha256` asked before the SHA-256 is known.
    ShaPending,
    NotFound,
    MethodNotAllowed,
    Refused(Refusal),
    Bad(wire::Error),
}

/// What an HTTP reply begins with: everything needed to render its head (and the small
/// generated body some replies have) the same way every time it is (re)sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub kind: Kind,
    /// A HEAD request: the same head, no body.
    pub head_only: bool,
    /// For 206: the file's bytes sent (end exclusive).
    pub part: Option<(u64, u64)>,
    /// `Connection: close`: the connection ends after this reply.
    pub close: bool,
    /// An HTTP/1.0 client that asked to keep the connection: say so explicitly.
    pub keep_alive_10: bool,
    /// The `Date`, fixed when the reply was decided.
    pub date: u64,
    /// Whether the SHA-256 was known when the reply was decided (so a head re-rendered
    /// later does not change length).
    pub sha: bool,
    /// The landing page's host for its commands, from the request's `Host`.
    pub host: Option<Box<str>>,
    /// Reached by a signed link expiring then: the page's own links are signed alike.
    pub link_expires: Option<u64>,
}

/// A decided reply: its head, the byte range of the file after it, and what the log line
/// says.
#[derive(Debug, Clone)]
pub struct Reply {
    pub head: Head,
    pub body: Range<u64>,
    pub log: Log,
}

/// What the log line of one response says about its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub method: LogMethod,
    pub path: LogPath,
}

/// The method as sent (httparse allows only token characters in it), or `-` when the
/// request could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMethod {
    name: [u8; 16],
    len: u8,
}

impl LogMethod {
    fn new(name: &str) -> LogMethod {
        let mut m = LogMethod { name: [0; 16], len: 0 };
        let n = name.len().min(16);
        m.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        m.len = n as u8;
        m
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.name[..self.len as usize]).unwrap_or("-")
    }
}

/// The path as logged: a known resource by name, or what was asked (escaped, cut short,
/// never with its query string, which may carry secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPath {
    Resource(Kind),
    Asked(Box<str>),
    Unreadable,
}

/// One connection's HTTP state between requests. Boxed in the session: only HTTP
/// connections pay for it, and its buffer exists only while bytes wait to be parsed.
#[derive(Debug)]
pub struct Conn {
    pending: Vec<u8>,
    /// Requests answered so far.
    pub served: u32,
}

/// What the bytes so far amount to.
#[derive(Debug)]
pub enum Fed {
    /// A request is not whole yet.
    NeedMore,
    Reply(Reply),
}

/// Everything a reply is decided from, besides the request.
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub admission: &'a mut Admission,
    /// The client's address (failed tokens are counted per address).
    pub ip: std::net::IpAddr,
    /// A verdict reached when the connection was accepted (busy, not allowed, paused).
    pub refuse: Option<Refusal>,
    /// The wall clock (for `Date`) and the loop's clock.
    pub now: SystemTime,
    pub when: std::time::Instant,
}

impl LogPath {
    /// The path as the log shows it, given the served file's name.
    pub fn shown(&self, name: &[u8]) -> String {
        // As a URL writes it, so a name with spaces cannot split the log line.
        let name = wire::url_segment(name);
        match self {
            LogPath::Resource(Kind::Landing) => "/".into(),
            LogPath::Resource(Kind::B3Sum) => format!("/{name}.b3"),
            LogPath::Resource(Kind::Sha256Sum) => format!("/{name}.sha256"),
            LogPath::Resource(_) => format!("/{name}"),
            LogPath::Asked(p) => p.to_string(),
            LogPath::Unreadable => "-".into(),
        }
    }
}

impl Conn {
    pub fn new() -> Conn {
        Conn { pending: Vec::new(), served: 0 }
    }

    /// Whether bytes of a next request are waiting (or arriving).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many more bytes may be read now: a request head is at most `MAX_HEAD` bytes,
    /// and one byte past that is enough to know it is too long.
    pub fn room(&self) -> usize {
        (wire::MAX_HEAD + 1).saturating_sub(self.pending.len())
    }

    /// Takes newly read bytes (`fresh` may be empty, to look at what is pending) and, when
    /// a request is whole, decides its reply. Bytes past it stay pending for the next.
    pub fn feed(&mut self, fresh: &[u8], ctx: &mut Ctx<'_>) -> Fed {
        if self.pending.is_empty() {
            // The usual case: the whole request came in one read; parse it where it lies.
            let (fed, used) = decide_from(fresh, ctx, self.served);
            if let Some(used) = used {
                self.pending.extend_from_slice(&fresh[used..]);
            } else {
                self.pending.extend_from_slice(fresh);
            }
            self.finish(fed)
        } else {
            self.pending.extend_from_slice(fresh);
            let (fed, used) = decide_from(&self.pending, ctx, self.served);
            if let Some(used) = used {
                self.pending.drain(..used);
                if self.pending.is_empty() {
                    // Give the memory back: an idle connection should cost nothing.
                    self.pending = Vec::new();
                }
            }
            self.finish(fed)
        }
    }

    fn finish(&mut self, fed: Fed) -> Fed {
        if matches!(fed, Fed::Reply(_)) {
            self.served += 1;
        }
        fed
    }
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

/// Decides from `buf`: the outcome, and how many bytes the request used (`None`: none yet;
/// after an error that ends the connection, all of them).
fn decide_from(buf: &[u8], ctx: &mut Ctx<'_>, served: u32) -> (Fed, Option<usize>) {
    match wire::parse(buf) {
        Ok(Decoded::NeedMore(_)) => (Fed::NeedMore, None),
        Ok(Decoded::Done(req, used)) => (Fed::Reply(decide(&req, ctx, served)), Some(used)),
        Err(e) => {
            let log = Log { method: LogMethod::new("-"), path: LogPath::Unreadable };
            let head = error_head(e.status(), Kind::Bad(e), false, ctx.now);
            (Fed::Reply(Reply { head, body: 0..0, log }), Some(buf.len()))
        }
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The head of a refusal decided before the request was read (busy, not allowed), for a
/// connection answered at once.
pub fn refusal(why: Refusal, now: SystemTime) -> Head {
    error_head(refusal_status(why), Kind::Refused(why), false, now)
}

fn refusal_status(why: Refusal) -> u16 {
    match why {
        Refusal::Forbidden => 403,
        Refusal::BadToken | Refusal::TokenNeedsV2 => 401,
        Refusal::LinkForged => 403,
        Refusal::LinkExpired => 410,
        _ => 503,
    }
}

/// A reply that ends the connection and has only a generated body.
fn error_head(status: u16, kind: Kind, head_only: bool, now: SystemTime) -> Head {
    Head {
        status,
        kind,
        head_only,
        part: None,
        close: true,
        keep_alive_10: false,
        date: seconds(now),
        sha: false,
        host: None,
        link_expires: None,
    }
}

/// The strong ETag of a snapshot: its BLAKE3 digest, so every server holding the same
/// bytes gives the same tag, and no two versions ever share one.
fn etag(snap: &Snapshot) -> String {
    format!("\"{}\"", blake3::Hash::from_bytes(*snap.digest()).to_hex())
}

/// Turns one request into a reply.
pub fn decide(req: &wire::Request<'_>, ctx: &mut Ctx<'_>, served: u32) -> Reply {
    let snap = ctx.snap;
    let method = LogMethod::new(req.method_name);
    let resource = resource(req.target, snap.name());
    let path = match resource {
        Some(k) => LogPath::Resource(k),
        None => LogPath::Asked(logged_path(req.target)),
    };
    let log = Log { method, path };
    let head_only = req.method == Method::Head;
    let close = !req.keep_alive || served + 1 >= MAX_REQUESTS;
    let mut head = Head {
        status: 200,
        kind: Kind::NotFound,
        head_only,
        part: None,
        close,
        keep_alive_10: req.version == Version::Http10 && !close,
        date: seconds(ctx.now),
        sha: snap.sha256().is_some(),
        host: None,
        link_expires: None,
    };
    // A signed link is a credential of its own: the path and its expiry, signed with the
    // token. Wrong: 403 (and a failed attempt); expired: 410.
    match signed_link(req.target, ctx) {
        Some(Err(why)) => {
            let head = error_head(refusal_status(why), Kind::Refused(why), head_only, ctx.now);
            return Reply { head, body: 0..0, log };
        }
        Some(Ok(expires)) => head.link_expires = Some(expires),
        None => {}
    }
    let refusal = ctx.refuse.or_else(|| {
        if head.link_expires.is_some() {
            return None;
        }
        let presented = bearer(req.authorization).map(|t| *blake3::hash(t.as_bytes()).as_bytes());
        ctx.admission.check_token(ctx.ip, presented.as_ref(), ctx.when).err()
    });
    if let Some(why) = refusal {
        // A refusal ends the connection, as the native protocol's does.
        let head = error_head(refusal_status(why), Kind::Refused(why), head_only, ctx.now);
        return Reply { head, body: 0..0, log };
    }
    if req.method == Method::Other {
        let head = error_head(405, Kind::MethodNotAllowed, false, ctx.now);
        return Reply { head, body: 0..0, log };
    }
    head.kind = resource.unwrap_or(Kind::NotFound);
    let body = match head.kind {
        Kind::File => file_reply(req, snap, &mut head),
        Kind::Landing => {
            head.host = usable_host(req.host).map(Into::into);
            0..0
        }
        Kind::Sha256Sum if !head.sha => {
            head.kind = Kind::ShaPending;
            head.status = 503;
            0..0
        }
        Kind::NotFound => {
            head.status = 404;
            0..0
        }
        _ => 0..0,
    };
    let body = if head_only { body.start..body.start } else { body };
    Reply { head, body, log }
}

/// A signed link's verdict: `None` when the target carries no signature (or the server has
/// no token to check one with), else its expiry or why it is refused.
fn signed_link(target: &str, ctx: &mut Ctx<'_>) -> Option<Result<u64, Refusal>> {
    let sig = wire::query_param(target, "sig")?;
    let key = ctx.admission.link_key()?.clone();
    let expires: Option<u64> = wire::query_param(target, "expires").and_then(|e| e.parse().ok());
    let path = wire::path_bytes(target)?;
    let given = hex16(sig);
    let good = match (expires, given) {
        (Some(e), Some(g)) => crate::encoding::auth::same(&key.sign_link(&path, e), &g),
        _ => false,
    };
    if ctx.admission.judge(ctx.ip, good, ctx.when).is_err() {
        return Some(Err(Refusal::LinkForged));
    }
    let expires = expires?;
    if seconds(ctx.now) > expires {
        return Some(Err(Refusal::LinkExpired));
    }
    Some(Ok(expires))
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `?expires=E&sig=S` for `path` (percent-encoded as in the URL), when signing.
pub fn link_query(key: &crate::encoding::auth::Key, path: &[u8], expires: u64) -> String {
    let sig: String = key.sign_link(path, expires).iter().map(|b| format!("{b:02x}")).collect();
    format!("?expires={expires}&sig={sig}")
}

/// The file: 200, 206, 304 or 416, from the conditionals and the range.
fn file_reply(req: &wire::Request<'_>, snap: &Snapshot, head: &mut Head) -> Range<u64> {
    let tag = etag(snap);
    let modified = snap.modified();
    // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
    let not_modified = match (req.if_none_match, req.if_modified_since) {
        (Some(list), _) => wire::etag_matches(list, &tag, true),
        (None, Some(since)) => wire::parse_date(since).is_some_and(|since| seconds(modified) <= seconds(since)),
        (None, None) => false,
    };
    if not_modified {
        head.kind = Kind::NotModified;
        head.status = 304;
        return 0..0;
    }
    let size = snap.size();
    // If-Range: the range only if the client's copy is this version.
    let range_valid = match req.if_range {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => wire::etag_matches(v, &tag, false),
        Some(v) => wire::parse_date(v).is_some_and(|d| seconds(d) == seconds(modified)),
    };
    let ranged = match req.range {
        Some(r) if range_valid => wire::parse_range(r, size),
        _ => Ranged::Full,
    };
    match ranged {
        Ranged::Full => 0..size,
        Ranged::Part(a, b) => {
            head.status = 206;
            head.part = Some((a, b));
            a..b
        }
        Ranged::Unsatisfiable => {
            head.kind = Kind::Unsatisfiable;
            head.status = 416;
            0..0
        }
    }
}

/// Which resource a request target names, if any.
fn resource(target: &str, name: &[u8]) -> Option<Kind> {
    let path = wire::path_bytes(target)?;
    let path: &[u8] = &path;
    if path == b"/" {
        return Some(Kind::Landing);
    }
    let rest = path.strip_prefix(b"/")?;
    if rest == name {
        Some(Kind::File)
    } else if rest.strip_suffix(b".b3") == Some(name) {
        Some(Kind::B3Sum)
    } else if rest.strip_suffix(b".sha256") == Some(name) {
        Some(Kind::Sha256Sum)
    } else {
        None
    }
}

/// A request target for the log: the path only (a query may hold secrets), printable, at
/// most 200 characters.
fn logged_path(target: &str) -> Box<str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut p: String = printable(path).chars().take(200).collect();
    if p.is_empty() {
        p.push('-');
    }
    p.into_boxed_str()
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(value: Option<&str>) -> Option<&str> {
    let v = value?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A `Host` value fit to put in a command line and a page: a name or address and port.
fn usable_host(host: Option<&str>) -> Option<&str> {
    let h = host?;
    let ok = !h.is_empty()
        && h.len() <= 261
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]%".contains(&b))
        && !h.starts_with(['-', '.']);
    ok.then_some(h)
}

/// The largest generated body: the landing page for the worst 255-byte name and the longest
/// usable Host fits (a test renders it).
const GENERATED_MAX: usize = 12 * 1024;

/// Renders the head (and any generated body) into `out`; returns the length. The same
/// head, snapshot and config always give the same bytes.
pub fn render(head: &Head, snap: &Snapshot, cfg: &Config, out: &mut [u8]) -> usize {
    let mut body_buf = [0u8; GENERATED_MAX];
    let mut body = Out::new(&mut body_buf);
    let body_len = match write_body(&mut body, head, snap, cfg) {
        Ok(()) => body.written(),
        Err(_) => {
            // Only a page for a pathological file name can overflow: say less.
            let mut short = Out::new(&mut body_buf);
            let _ = writeln!(short, "{} bytes", snap.size());
            short.written()
        }
    };
    let mut o = Out::new(out);
    if write_head(&mut o, head, snap, cfg, body_len as u64).is_err() {
        // Cannot happen for any input (the head is bounded); never send half a head.
        debug_assert!(false, "an HTTP head overflowed its buffer");
        return 0;
    }
    if !head.head_only && o.bytes(&body_buf[..body_len]).is_err() {
        debug_assert!(false, "an HTTP reply overflowed its buffer");
        return 0;
    }
    o.written()
}

fn write_head(o: &mut Out<'_>, h: &Head, snap: &Snapshot, cfg: &Config, body_len: u64) -> std::fmt::Result {
    write!(o, "HTTP/1.1 {} {}\r\n", h.status, wire::reason(h.status))?;
    write!(o, "Date: {}\r\n", wire::fmt_date(UNIX_EPOCH + Duration::from_secs(h.date)))?;
    o.write_str(concat!("Server: xfer/", env!("CARGO_PKG_VERSION"), "\r\n"))?;
    let cache = |o: &mut Out<'_>| match cfg.max_age {
        0 => o.write_str("Cache-Control: no-cache\r\n"),
        n => write!(o, "Cache-Control: public, max-age={n}\r\n"),
    };
    match h.kind {
        Kind::File => {
            let size = snap.size();
            let len = h.part.map_or(size, |(a, b)| b - a);
            write!(o, "Content-Length: {len}\r\n")?;
            if let Some((a, b)) = h.part {
                write!(o, "Content-Range: bytes {a}-{}/{size}\r\n", b - 1)?;
            }
            write!(o, "Content-Type: {}\r\n", content_type(snap.name()))?;
            o.write_str("Content-Disposition: ")?;
            wire::content_disposition(o, snap.name())?;
            o.write_str("\r\nAccept-Ranges: bytes\r\n")?;
            validators(o, snap)?;
            cache(o)?;
            digests(o, h, snap)?;
        }
        Kind::NotModified => {
            validators(o, snap)?;
            cache(o)?;
        }
        Kind::Unsatisfiable => {
            write!(o, "Content-Range: bytes */{}\r\n", snap.size())?;
            text_type(o, body_len)?;
        }
        Kind::Landing => {
            write!(o, "Content-Length: {body_len}\r\nContent-Type: text/html; charset=utf-8\r\n")?;
            cache(o)?;
        }
        Kind::B3Sum | Kind::Sha256Sum => {
            text_type(o, body_len)?;
            cache(o)?;
        }
        Kind::MethodNotAllowed => {
            o.write_str("Allow: GET, HEAD\r\n")?;
            text_type(o, body_len)?;
        }
        Kind::Refused(why) => {
            if why == Refusal::BadToken {
                o.write_str("WWW-Authenticate: Bearer realm=\"xfer\"\r\n")?;
            }
            if let Some(after) = why.retry_after() {
                write!(o, "Retry-After: {}\r\n", after.as_secs())?;
            }
            text_type(o, body_len)?;
        }
        Kind::ShaPending => {
            o.write_str("Retry-After: 1\r\n")?;
            text_type(o, body_len)?;
        }
        Kind::NotFound | Kind::Bad(_) => text_type(o, body_len)?,
    }
    if h.close {
        o.write_str("Connection: close\r\n")?;
    } else if h.keep_alive_10 {
        o.write_str("Connection: keep-alive\r\n")?;
    }
    o.write_str("\r\n")
}

fn text_type(o: &mut Out<'_>, len: u64) -> std::fmt::Result {
    write!(o, "Content-Length: {len}\r\nContent-Type: text/plain; charset=utf-8\r\n")
}

fn validators(o: &mut Out<'_>, snap: &Snapshot) -> std::fmt::Result {
    write!(o, "ETag: {}\r\nLast-Modified: {}\r\n", etag(snap), wire::fmt_date(snap.modified()))
}

/// The digests of the whole file (a range's too: they describe the representation):
/// RFC 9530 `Repr-Digest`, the older RFC 3230 `Digest` (which aria2c checks), and BLAKE3.
fn digests(o: &mut Out<'_>, h: &Head, snap: &Snapshot) -> std::fmt::Result {
    if h.sha
        && let Some(sha) = snap.sha256()
    {
        let b64 = wire::base64(sha);
        write!(o, "Repr-Digest: sha-256=:{b64}:\r\nDigest: SHA-256={b64}\r\n")?;
    }
    write!(o, "Xfer-Blake3: {}\r\n", blake3::Hash::from_bytes(*snap.digest()).to_hex())
}

/// Content-Type by the name's extension; text is declared UTF-8.
fn content_type(name: &[u8]) -> Cow<'static, str> {
    let name = String::from_utf8_lossy(name);
    let mime = mime_guess::from_path(name.as_ref()).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT {
        Cow::Owned(format!("{}/{}; charset=utf-8", mime.type_(), mime.subtype()))
    } else {
        Cow::Owned(mime.essence_str().to_string())
    }
}

/// The small bodies replies other than the file carry.
fn write_body(o: &mut Out<'_>, h: &Head, snap: &Snapshot, cfg: &Config) -> std::fmt::Result {
    let name = snap.name();
    let url = format!("/{}", wire::url_segment(name));
    match h.kind {
        Kind::File | Kind::NotModified => Ok(()),
        Kind::Unsatisfiable => writeln!(o, "range not satisfiable: the file has {} bytes", snap.size()),
        Kind::Landing => landing(o, h, snap, cfg, &url),
        Kind::B3Sum => o.bytes(&wire::checksum_line(&blake3::Hash::from_bytes(*snap.digest()).to_hex(), name)),
        Kind::Sha256Sum => {
            let sha = snap.sha256().map(|d| blake3::Hash::from_bytes(*d).to_hex().to_string()).unwrap_or_default();
            o.bytes(&wire::checksum_line(&sha, name))
        }
        Kind::ShaPending => o.write_str("the SHA-256 is still being computed; try again in a moment\n"),
        Kind::NotFound => writeln!(o, "not found; the file served here is {url}"),
        Kind::MethodNotAllowed => o.write_str("method not allowed; use GET or HEAD\n"),
        Kind::Refused(why) => writeln!(o, "{}", why.reason()),
        Kind::Bad(e) => writeln!(o, "{e}"),
    }
}

/// The landing page: what the file is, how to check it, how to get it from a shell.
fn landing(o: &mut Out<'_>, h: &Head, snap: &Snapshot, cfg: &Config, url: &str) -> std::fmt::Result {
    use crate::encoding::text::shell_quote;
    let name = String::from_utf8_lossy(snap.name());
    let shown = wire::html_text(&printable(&name)).into_owned();
    // Reached by a signed link: the page's links carry signatures of the same expiry.
    let signed = |path: &str| match (h.link_expires, &cfg.links) {
        (Some(e), Some(k)) => {
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
            format!("{path}{}", link_query(k, &bytes, e))
        }
        _ => path.to_string(),
    };
    let url = &signed(url);
    let b3 = blake3::Hash::from_bytes(*snap.digest()).to_hex();
    let host = h.host.as_deref().unwrap_or(&cfg.fallback_host);
    let full = format!("http://{host}{url}");
    let sum_path = signed(&format!("/{}.b3", wire::url_segment(snap.name())));
    let size = snap.size();
    write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{shown} - xfer</title>\
         <style>body{{font:16px/1.5 sans-serif;max-width:52em;margin:2em auto;padding:0 1em}}\
         code,pre{{font-family:monospace;background:#f3f3f3}}pre{{padding:.5em;overflow-x:auto}}\
         td{{padding-right:1em}}</style></head><body>\n<h1 id=\"name\">{shown}</h1>\n\
         <p><a id=\"download\" href=\"{}\" download>Download</a></p>\n<table>\n\
         <tr><td>size</td><td><span id=\"size\">{size}</span> bytes{}</td></tr>\n\
         <tr><td>BLAKE3</td><td><code id=\"blake3\">{b3}</code></td></tr>\n",
        wire::html(url),
        if size >= 1000 { format!(" ({})", crate::human_bytes(size)) } else { String::new() },
    )?;
    match snap.sha256().filter(|_| h.sha) {
        Some(sha) => writeln!(
            o,
            "<tr><td>SHA-256</td><td><code id=\"sha256\">{}</code></td></tr>",
            blake3::Hash::from_bytes(*sha).to_hex()
        )?,
        None => o.write_str("<tr><td>SHA-256</td><td>being computed; reload in a moment</td></tr>\n")?,
    }
    let q_name = shell_quote(&name);
    let q_url = shell_quote(&full);
    let sum_url = format!("http://{host}{sum_path}");
    let q_sum = shell_quote(&sum_url);
    // curl -O names the file after the URL's last segment as it is written (still
    // %-encoded, and a signed link's query with it), so such a name is given with -o.
    // wget does the same (without --content-disposition).
    let plain = wire::url_segment(snap.name()).as_bytes() == snap.name() && h.link_expires.is_none();
    let (curl, wget) = if plain {
        (format!("curl -fO {q_url}"), format!("wget {q_url}"))
    } else {
        (format!("curl -fo {q_name} {q_url}"), format!("wget -O {q_name} {q_url}"))
    };
    let target = shell_quote(host);
    // xfer pins the digest shown here, saves under the server's name (into `.`), and proves
    // the token itself (which this page never shows) when the server has one.
    let token = if cfg.links.is_some() { " --token-file FILE" } else { "" };
    write!(
        o,
        "</table>\n<h2>From a shell</h2>\n<pre id=\"curl\">{} &amp;&amp; curl -fsS {} | b3sum -c</pre>\n\
         <pre id=\"wget\">{}</pre>\n<pre id=\"xfer\">xfer fetch {} . --expect blake3:{b3}{token}</pre>\n</body></html>\n",
        wire::html_text(&curl),
        wire::html_text(&q_sum),
        wire::html_text(&wget),
        wire::html_text(&target),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// One server's view for `decide`: a snapshot of `data.bin`, and admission with `token`.
    struct Fixture {
        _dir: tempfile::TempDir,
        snap: std::sync::Arc<Snapshot>,
        admission: Admission,
    }

    fn fixture(token: Option<&[u8]>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let policy = crate::serve::admit::Policy::for_tests(token);
        let admission = Admission::new(policy, std::sync::Arc::default());
        Fixture { _dir: dir, snap: std::sync::Arc::new(Snapshot::open(&path).unwrap()), admission }
    }

    /// Asks `raw` (a request head) of the fixture at wall-clock second `now`.
    fn ask(f: &mut Fixture, raw: &str, refuse: Option<Refusal>, served: u32, now: u64) -> Head {
        let Ok(crate::encoding::Decoded::Done(req, _)) = wire::parse(raw.as_bytes()) else { panic!("{raw:?}") };
        let mut ctx = Ctx {
            snap: &f.snap,
            admission: &mut f.admission,
            ip: "127.0.0.1".parse().unwrap(),
            refuse,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(now),
            when: std::time::Instant::now(),
        };
        decide(&req, &mut ctx, served).head
    }

    fn get(target: &str, extra: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: h\r\n{extra}\r\n")
    }

    #[test]
    fn each_refusal_gets_its_status() {
        let mut f = fixture(None);
        for (why, status) in [
            (Refusal::Forbidden, 403),
            (Refusal::BadToken, 401),
            (Refusal::TokenNeedsV2, 401),
            (Refusal::LinkForged, 403),
            (Refusal::LinkExpired, 410),
            (Refusal::Busy, 503),
            (Refusal::BusyFromYou, 503),
            (Refusal::Changing, 503),
            (Refusal::Paused, 503),
        ] {
            assert_eq!(refusal(why, SystemTime::now()).status, status, "{why:?}");
            let h = ask(&mut f, &get("/data.bin", ""), Some(why), 0, 1);
            assert_eq!((h.status, h.kind, h.close), (status, Kind::Refused(why), true), "{why:?}");
        }
    }

    #[test]
    fn resources_methods_and_keep_alive() {
        let mut f = fixture(None);
        let h = ask(&mut f, &get("/data.bin", ""), None, 0, 1);
        assert_eq!((h.status, h.kind, h.close, h.head_only), (200, Kind::File, false, false));
        // The landing page's commands name the host the client used, when it is fit to.
        let h = ask(&mut f, "GET / HTTP/1.1\r\nHost: files.example:8080\r\n\r\n", None, 0, 1);
        assert_eq!((h.kind, h.host.as_deref()), (Kind::Landing, Some("files.example:8080")));
        let h = ask(&mut f, "GET / HTTP/1.1\r\nHost: -x;rm\r\n\r\n", None, 0, 1);
        assert_eq!((h.kind, h.host.as_deref()), (Kind::Landing, None));
        assert_eq!(ask(&mut f, &get("/data.bin.b3", ""), None, 0, 1).kind, Kind::B3Sum);
        let h = ask(&mut f, &get("/other", ""), None, 0, 1);
        assert_eq!((h.status, h.kind), (404, Kind::NotFound));
        let h = ask(&mut f, &get("/data.bin.sha256", ""), None, 0, 1);
        assert_eq!((h.status, h.kind), (503, Kind::ShaPending), "SHA-256 not computed yet");
        f.snap.want_sha256();
        let start = std::time::Instant::now();
        while f.snap.sha256().is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let h = ask(&mut f, &get("/data.bin.sha256", ""), None, 0, 1);
        assert_eq!((h.status, h.kind), (200, Kind::Sha256Sum), "SHA-256 known");
        let h = ask(&mut f, "HEAD /data.bin HTTP/1.1\r\nHost: h\r\n\r\n", None, 0, 1);
        assert!(h.head_only && h.status == 200);
        let h = ask(&mut f, "PUT /data.bin HTTP/1.1\r\nHost: h\r\n\r\n", None, 0, 1);
        assert_eq!((h.status, h.kind, h.close), (405, Kind::MethodNotAllowed, true));
        // A kept-alive connection serves MAX_REQUESTS requests; the last one closes it.
        assert!(!ask(&mut f, &get("/data.bin", ""), None, MAX_REQUESTS - 2, 1).close);
        assert!(ask(&mut f, &get("/data.bin", ""), None, MAX_REQUESTS - 1, 1).close);
        assert!(ask(&mut f, &get("/data.bin", "Connection: close\r\n"), None, 0, 1).close);
        let h10 = ask(&mut f, "GET /data.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", None, 0, 1);
        assert!(h10.keep_alive_10 && !h10.close);
        assert!(!ask(&mut f, "GET /data.bin HTTP/1.0\r\n\r\n", None, 0, 1).keep_alive_10);
    }

    #[test]
    fn bearer_tokens_and_signed_links() {
        let mut f = fixture(Some(b"sesame"));
        let status =
            |f: &mut Fixture, target: &str, extra: &str, now: u64| ask(f, &get(target, extra), None, 0, now).status;
        assert_eq!(status(&mut f, "/data.bin", "", 1), 401);
        assert_eq!(status(&mut f, "/data.bin", "Authorization: Bearer sesame\r\n", 1), 200);
        assert_eq!(status(&mut f, "/data.bin", "Authorization: bearer   sesame \r\n", 1), 200);
        assert_eq!(status(&mut f, "/data.bin", "Authorization: Basic c2VzYW1l\r\n", 1), 401);
        assert_eq!(bearer(Some("Bearer a b")), Some("a b"));
        assert_eq!(bearer(Some("Token abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
        // A link signed for the path and an expiry works until that second, inclusive.
        let key = f.admission.link_key().unwrap().clone();
        let link = format!("/data.bin{}", link_query(&key, b"/data.bin", 1000));
        let h = ask(&mut f, &get(&link, ""), None, 0, 1000);
        assert_eq!((h.status, h.link_expires), (200, Some(1000)));
        assert_eq!(status(&mut f, &link, "", 1001), 410);
        // Any change to it is a forgery (and a counted failure, so there are few here).
        let later = link.replace("expires=1000", "expires=2000");
        assert_eq!(status(&mut f, &later, "", 1), 403);
        let short = &link[..link.len() - 2];
        assert_eq!(status(&mut f, short, "", 1), 403);
        // Without a signature a link is an ordinary request (a token is then needed).
        assert_eq!(status(&mut f, "/data.bin?expires=1000", "", 1), 401);
        let want = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(hex16("00112233445566778899aabbccddeeff"), Some(want));
        assert_eq!(hex16("00112233445566778899aabbccddeef"), None);
        assert_eq!(hex16("00112233445566778899aabbccddeefg"), None);
    }

    /// The longest page: a 255-byte name of the characters that grow most when escaped
    /// (for HTML, for the shell, for URLs), a long Host, a page reached by a signed link.
    #[test]
    fn landing_page_fits_for_the_worst_names() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("{}:4747", "h".repeat(255));
        let cfg =
            Config { max_age: 10, fallback_host: host.clone(), links: Some(crate::encoding::auth::Key::links(b"t")) };
        let mut worst = 0;
        for unit in [&b"'"[..], b"\"", b"&", b"<", b"\xff", b"\x01", b"%", b"\\", "\u{2028}".as_bytes(), b"'\xff&\"<%"]
        {
            let mut name: Vec<u8> = unit.iter().copied().cycle().take(251).collect();
            while std::str::from_utf8(&name).is_err() && name.len() > 248 && !unit.contains(&0xff) {
                name.pop();
            }
            name.extend_from_slice(b".txt");
            let path = dir.path().join(std::ffi::OsStr::from_bytes(&name));
            std::fs::write(&path, b"x").unwrap();
            let snap = Snapshot::open(&path).unwrap();
            let head = Head {
                status: 200,
                kind: Kind::Landing,
                head_only: false,
                part: None,
                close: false,
                keep_alive_10: false,
                date: 0,
                sha: false,
                host: Some(host.clone().into()),
                link_expires: Some(u64::MAX),
            };
            let mut big = vec![0u8; 1 << 16];
            let mut o = Out::new(&mut big);
            write_body(&mut o, &head, &snap, &cfg).unwrap();
            worst = worst.max(o.written());
            // Rendered for real: the whole page, not the short fallback.
            let mut out = [0u8; crate::serve::send::HEAD_MAX];
            let n = render(&head, &snap, &cfg, &mut out);
            let text = String::from_utf8_lossy(&out[..n]);
            for id in ["name", "size", "blake3", "download", "curl", "wget", "xfer"] {
                assert!(text.contains(&format!("id=\"{id}\"")), "{unit:?}: no {id} in the page");
            }
            std::fs::remove_file(&path).unwrap();
        }
        assert!(worst <= GENERATED_MAX, "the worst page is {worst} bytes");
    }
}
