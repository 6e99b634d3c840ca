//! HTTP on the same port as the native protocol (issue 9), tested with the clients people
//! really use — curl, wget, aria2c, Python's http.client, a headless Chromium, nginx as a
//! cache in front — and with raw sockets for what no polite client sends (the checklist's
//! cases 29–36 in RELIABILITY.md).
//!
//! A client that is not installed makes its test print `SKIPPED: <what>: <tool> not
//! installed` and pass, unless `XFER_REQUIRE_TOOLS=1` (CI) makes it fail. Every client is
//! pointed at loopback, with the proxy settings of the environment removed, so no test
//! sends a byte anywhere else.
//!
//! This file holds what the parts share: finding the tools, a strict reader of HTTP
//! responses (every head line must be well-formed, so a header injected through a file
//! name cannot go unnoticed), the server's HTTP log lines, and the few encodings (URL
//! segment, HTTP date, SHA-256, base64) the expected values are computed with, written
//! here so that the tests do not check the server against its own code.

mod aria2;
mod browser;
mod cache;
mod curl;
mod hostile;
mod native;
mod python;
mod reload;
mod slow;
mod wget;

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::raw::{self, Received};
use crate::util::*;

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

/// Whether a missing tool fails the test (CI sets `XFER_REQUIRE_TOOLS=1`) instead of
/// skipping it.
fn tools_required() -> bool {
    std::env::var_os("XFER_REQUIRE_TOOLS").is_some_and(|v| v == "1")
}

/// Says that `what` cannot run because `tool` is not installed: a skip, or under
/// `XFER_REQUIRE_TOOLS=1` a failure.
pub fn missing(what: &str, tool: &str) {
    assert!(!tools_required(), "{what}: {tool} not installed (XFER_REQUIRE_TOOLS=1 requires it)");
    skipped(what, &format!("{tool} not installed"));
}

/// The path of `tool` (a name looked up in `PATH`, or an absolute path), or `None` after
/// saying it is missing (see [`missing`]).
pub fn tool(what: &str, tool: &str) -> Option<PathBuf> {
    let found = if tool.contains('/') {
        Some(PathBuf::from(tool)).filter(|p| is_executable(p))
    } else {
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(tool)).find(|p| is_executable(p))
    };
    if found.is_none() {
        missing(what, tool);
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `/usr/bin/python3` if it can import every one of `modules`, or `None` after saying what
/// is missing (the Debian package name, as the skip line says what to install).
pub fn python(what: &str, modules: &[&str], package: &str) -> Option<PathBuf> {
    let py = tool(what, "/usr/bin/python3")?;
    let imports = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
    let ok = Command::new(&py).args(["-c", &imports]).output().is_ok_and(|o| o.status.success());
    if !ok {
        missing(what, package);
        return None;
    }
    Some(py)
}

/// Environment variables that could send a client's traffic to a proxy instead of loopback.
const PROXY_VARS: [&str; 8] =
    ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"];

/// A command for a client tool, with the environment's proxy settings removed.
pub fn client(tool: &Path) -> Command {
    let mut cmd = Command::new(tool);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// Runs `tool ARGS...` in `dir` (proxies removed), killed after `secs`.
pub fn run_in(dir: &Path, tool: &Path, args: &[impl AsRef<OsStr>], secs: u64) -> Output {
    run_with_timeout(client(tool).current_dir(dir).args(args), secs)
}

/// Asserts a client command exited 0.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", describe(out));
}

/// `curl -q -sS ARGS...` in `dir`: no `.curlrc`, no progress meter, errors shown.
pub fn curl(dir: &Path, curl: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-q", "-sS", "--noproxy", "*"];
    all.extend_from_slice(args);
    run_in(dir, curl, &all, 120)
}

// ---------------------------------------------------------------------------------------
// The server's side
// ---------------------------------------------------------------------------------------

/// The URL the banner's fourth line gives for the file (`or over HTTP (curl, wget, a
/// browser): http://HOST:PORT/NAME`), waiting up to 10 s for it.
pub fn banner_url(server: &Server) -> String {
    const PREFIX: &str = "or over HTTP (curl, wget, a browser): ";
    let ok = wait_until(Duration::from_secs(10), || server.stdout_lines().len() >= 4);
    let lines = server.stdout_lines();
    assert!(ok, "the banner has no fourth line within 10 s: {lines:?}");
    let url = lines[3].strip_prefix(PREFIX).unwrap_or_else(|| panic!("banner line 4 is {:?}", lines[3]));
    url.to_string()
}

/// Polls `/SEGMENT.sha256` until the server knows the SHA-256 (it is computed on a helper
/// thread after the file is first served over HTTP); returns the hex digest it gives.
pub fn wait_sha256(addr: SocketAddr, segment: &str) -> String {
    let path = format!("/{segment}.sha256");
    let mut last = None;
    let known = wait_until(Duration::from_secs(60), || {
        let r = get(addr, &path, &[]);
        let done = r.status == 200;
        last = Some(r);
        if !done {
            // The subject: waiting for the helper thread, at a polite pace.
            std::thread::sleep(Duration::from_millis(20));
        }
        done
    });
    let last = last.expect("asked at least once");
    assert!(known, "{path} still says {} after 60 s: {}", last.status, last.text());
    // A line for a name with a backslash, CR or LF starts with a backslash (coreutils' escape).
    let text = last.text();
    let hex = text.trim_start_matches('\\').split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(hex.len(), 64, "{path} gave {:?}", last.text());
    hex
}

/// One HTTP response line of the server's log: `ADDR METHOD PATH STATUS[ bytes A-B]
/// OUTCOME: ...` (or `... STATUS refused: REASON`).
#[derive(Debug, Clone)]
pub struct Logged {
    pub client: SocketAddr,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Everything after the status.
    pub rest: String,
}

/// The HTTP response lines in a server's stderr, in order.
pub fn http_log(stderr: &str) -> Vec<Logged> {
    let mut out = Vec::new();
    for line in transfer_lines(stderr) {
        let mut parts = line.splitn(5, ' ');
        let (Some(a), Some(m), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let method_like = m == "-" || (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()));
        let (Ok(client), Ok(status)) = (a.parse(), s.parse::<u16>()) else { continue };
        if method_like && (100..600).contains(&status) {
            let rest = parts.next().unwrap_or("").to_string();
            out.push(Logged { client, method: m.into(), path: p.into(), status, rest });
        }
    }
    out
}

/// The server's HTTP log lines for the client at local `port`.
pub fn logged_for(server: &Server, port: u16) -> Vec<Logged> {
    http_log(&server.stderr()).into_iter().filter(|l| l.client.port() == port).collect()
}

/// How many of the server's HTTP log lines `pred` holds for, once there are `at_least` of
/// them or `secs` have passed (a line is written as the last byte goes out, and collected
/// from the server's stderr a moment later).
pub fn logged_count(server: &Server, secs: u64, at_least: usize, pred: impl Fn(&Logged) -> bool) -> usize {
    let count = || http_log(&server.stderr()).iter().filter(|l| pred(l)).count();
    server.wait_stderr(secs, |_| count() >= at_least);
    count()
}

/// Waits (up to `secs`) until the server's HTTP log has a line for which `pred` holds, and
/// returns it; fails the test with the log otherwise.
pub fn expect_logged(server: &Server, secs: u64, what: &str, pred: impl Fn(&Logged) -> bool) -> Logged {
    let find = || http_log(&server.stderr()).into_iter().find(|l| pred(l));
    server.wait_stderr(secs, |_| find().is_some());
    find().unwrap_or_else(|| panic!("no log line for {what} within {secs} s:\n{}", server.stderr()))
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/// One HTTP response as received.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The head's fields in order, as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// How many fields are called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the response says the connection ends after it.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response off the front of `buf`, strictly: the status line and every field
/// line end in CRLF, hold no other CR or LF, and are visible ASCII; every field is `Name:
/// value` with a token name; the body's length is its Content-Length (none for a HEAD's
/// answer, `head_request`, or a 304). `Ok(None)`: not whole yet. `Ok(Some((reply, n)))`:
/// the response was the first `n` bytes.
pub fn parse_reply(buf: &[u8], head_request: bool) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 { Err("no end of head in 64 KiB".into()) } else { Ok(None) };
    };
    let head = &buf[..end];
    // Every line with its CRLF: split at LF, each piece must end in CR and hold no other.
    let mut lines = buf[..end + 1].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").ok_or(l));
    let bad = |what: &str, l: &[u8]| format!("{what}: {:?} in head {:?}", lossy(l), lossy(head));
    let status_line = match lines.next() {
        Some(Ok(l)) => l,
        _ => return Err(bad("a status line ending in a bare LF", head)),
    };
    let status_text = std::str::from_utf8(status_line).map_err(|_| bad("status line not UTF-8", status_line))?;
    let mut sp = status_text.splitn(3, ' ');
    let (Some("HTTP/1.1"), Some(code), Some(_reason)) = (sp.next(), sp.next(), sp.next()) else {
        return Err(bad("status line", status_line));
    };
    let status: u16 = code.parse().map_err(|_| bad("status", status_line))?;
    let mut headers = Vec::new();
    for l in lines {
        let l = l.map_err(|l| bad("a field line ending in a bare LF", l))?;
        if l.iter().any(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b))) {
            return Err(bad("a field line with a bare CR or a byte that is not visible ASCII", l));
        }
        let text = std::str::from_utf8(l).expect("ASCII");
        let Some((name, value)) = text.split_once(':') else { return Err(bad("a field line without a colon", l)) };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(bad("a field name that is no token", l));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut reply = Reply { status, headers, body: Vec::new() };
    let lengths = reply.count("content-length");
    let body_len = if head_request || status == 304 {
        0
    } else if lengths == 1 {
        reply
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| bad("Content-Length", head))?
    } else {
        return Err(bad(&format!("{lengths} Content-Length fields"), head));
    };
    let start = end + 4;
    if buf.len() < start + body_len {
        return Ok(None);
    }
    reply.body = buf[start..start + body_len].to_vec();
    Ok(Some((reply, start + body_len)))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `METHOD TARGET HTTP/1.1` with `Host` and `extra` fields.
pub fn request(method: &str, target: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: xfer.test\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One HTTP connection, with the bytes received and not yet taken as a response.
pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::over(raw::connect(addr, None, None).expect("connect"))
    }

    /// Takes over a connected socket (one made with a small receive buffer, say).
    pub fn over(s: TcpStream) -> Conn {
        Conn { s, buf: Vec::new() }
    }

    /// Our local port (the log line's key).
    pub fn port(&self) -> u16 {
        raw::port(&self.s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap_or_else(|e| panic!("sending {:?}: {e}", lossy(&bytes[..bytes.len().min(200)])));
    }

    /// The next response (`head_request`: it answers a HEAD), within `limit`.
    pub fn try_reply(&mut self, head_request: bool, limit: Duration) -> Result<Reply, String> {
        let end = Instant::now() + limit;
        let mut chunk = vec![0u8; 256 * 1024];
        // Each round reads at least a byte or waits out the deadline.
        for _ in 0..1_000_000 {
            if let Some((reply, n)) = parse_reply(&self.buf, head_request)? {
                self.buf.drain(..n);
                return Ok(reply);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.s.set_read_timeout(Some(left)).expect("set_read_timeout");
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!("closed after {} bytes of a response: {:?}", self.buf.len(), self.shown()));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("{e} after {} bytes of a response: {:?}", self.buf.len(), self.shown())),
            }
        }
        Err(format!("no whole response within {limit:?}; got {} bytes: {:?}", self.buf.len(), self.shown()))
    }

    /// The next response; fails the test if it does not come whole within 30 s.
    pub fn reply(&mut self, head_request: bool) -> Reply {
        self.try_reply(head_request, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits up to `limit` for the server to close; what arrived first (after any
    /// response already taken) is in `data`.
    pub fn closed(&mut self, limit: Duration) -> Received {
        let mut r = raw::read_until_closed(&mut self.s, limit);
        let mut data = std::mem::take(&mut self.buf);
        data.append(&mut r.data);
        r.data = data;
        r
    }

    fn shown(&self) -> String {
        lossy(&self.buf[..self.buf.len().min(300)])
    }
}

/// `GET target` with `extra` fields and `Connection: close` on a new connection: the one
/// response, after which the server must close.
pub fn get(addr: SocketAddr, target: &str, extra: &[&str]) -> Reply {
    one(addr, "GET", target, extra)
}

/// `METHOD target` as [`get`] does.
pub fn one(addr: SocketAddr, method: &str, target: &str, extra: &[&str]) -> Reply {
    let mut c = Conn::connect(addr);
    let mut fields = extra.to_vec();
    fields.push("Connection: close");
    c.send(&request(method, target, &fields));
    let r = c.reply(method == "HEAD");
    let end = c.closed(Duration::from_secs(10));
    assert!(end.closed_at.is_some(), "{method} {target} with Connection: close: still open 10 s after the reply");
    assert!(end.data.is_empty(), "{method} {target}: bytes after the reply: {:?}", lossy(&end.data));
    r
}

// ---------------------------------------------------------------------------------------
// Expected values, computed independently of the server's code
// ---------------------------------------------------------------------------------------

/// A file name as one URL path segment: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`.
pub fn url_segment(name: &[u8]) -> String {
    let mut s = String::new();
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// An HTTP date (IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// SHA-256 (FIPS 180-4), for the digest headers and aria2c's checksum.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[test]
fn http_helpers_compute_what_the_standards_say() {
    // FIPS 180-4's and RFC 4648's own examples, and RFC 9110's example date.
    assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(hex(&sha256(&[b'a'; 1000])), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(url_segment("my file_é.txt".as_bytes()), "my%20file_%C3%A9.txt");
    let (r, n) = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nabGET", false).unwrap().unwrap();
    assert_eq!((r.status, r.header("x"), r.body.as_slice(), n), (200, Some("y"), &b"ab"[..], 46));
    assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\nInjected: 1\r\n\r\nab", false).is_err());
    assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\rInjected: 1\r\n\r\nab", false).is_err());
    assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na", false).unwrap().is_none());
}
