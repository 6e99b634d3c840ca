//! Issue 10: fetch keeps what a failed attempt received and the same command resumes it,
//! retries what can be retried, fetches from any HTTP/1.1 server, and saves under the
//! server's name when the output is a directory.
//!
//! The parts: `native` (resume and retry against `xfer serve`: cuts, a replaced file,
//! damaged partials, two fetches into one output, a busy or restarted server, signals),
//! `http` (nginx, xfer's own HTTP side, and hand-written servers for what nginx will not
//! do: no ranges, chunked and close-delimited bodies), `names` (directory outputs, hostile
//! names over both protocols, no output at all, a version 1 server).
//!
//! Here: the helpers they share. Tools: nginx runs from its own config in a temporary
//! directory, and strace holds one race's window open; when a tool is missing, the tests
//! that need it say `SKIPPED` and pass, unless `XFER_REQUIRE_TOOLS=1`, which makes a missing
//! tool a failure. The scripted servers serve a bounded number of connections for a bounded
//! time, on loopback only.

mod http;
mod names;
mod native;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::fake::Scripted;
use crate::util::proxy::{Action, Plan, Proxy};
use crate::util::*;

/// The kept partial and its record beside the output `out` (`.NAME.xfer.part`, `.info`).
pub fn partial_of(out: &Path) -> (PathBuf, PathBuf) {
    let name = out.file_name().expect("an output file name").to_string_lossy();
    let dir = out.parent().expect("an output directory");
    (dir.join(format!(".{name}.xfer.part")), dir.join(format!(".{name}.xfer.part.info")))
}

/// Length of a file, 0 when there is none.
pub fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Bytes before the body in a version 2 answer for a file called `name`: the header, then
/// the name.
pub fn native_head(name: &str) -> u64 {
    48 + name.len() as u64
}

/// The summary line of a successful fetch (`fetched N bytes …`), or the whole stderr.
pub fn summary(o: &Output) -> String {
    let err = stderr_of(o);
    err.lines().find(|l| l.starts_with("fetched ")).map_or(err.clone(), str::to_string)
}

/// Lines of stderr that announce a retry.
pub fn retry_lines(err: &str) -> Vec<String> {
    err.lines().filter(|l| l.contains("; retrying in ")).map(str::to_string).collect()
}

/// Something done to a kept partial and its record (their paths) between two runs.
pub type Damage<'a> = Box<dyn Fn(&Path, &Path) + 'a>;

/// Asserts that a fetch into `out` either succeeded with exactly `expected`, or failed and
/// left nothing at `out`: never a success with other bytes, never bytes left at `out` by a
/// failure. Returns whether it succeeded.
pub fn assert_exact_or_clean_failure(out: &Path, o: &Output, expected: &[u8], what: &str) -> bool {
    if o.status.success() {
        let got = std::fs::read(out).unwrap_or_else(|e| panic!("{what}: exit 0 but {}: {e}", out.display()));
        assert!(
            got == expected,
            "{what}: exit 0 with WRONG bytes at the output ({} bytes, expected {})\n{}",
            got.len(),
            expected.len(),
            describe(o)
        );
        true
    } else {
        assert!(!out.exists(), "{what}: the fetch failed but left {}\n{}", out.display(), describe(o));
        assert!(!stderr_of(o).contains("panicked"), "{what}: panic\n{}", describe(o));
        false
    }
}

/// Spawns a prepared fetch command with stderr collected (stdout discarded).
pub fn spawn_collected(cmd: &mut Command) -> (Child, Collected) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn xfer fetch");
    let err = Collected::spawn(child.stderr.take().unwrap());
    (child, err)
}

/// Waits (up to `secs`) for a spawned fetch to exit; kills it and fails the test if it does
/// not. Returns its exit code (`None`: killed by a signal) once its stderr is complete.
pub fn finish(child: &mut Child, err: &Collected, secs: u64, what: &str) -> Option<i32> {
    let Some(st) = wait_child_exit(child, Duration::from_secs(secs)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: fetch still running after {secs} s; stderr:\n{}", err.text());
    };
    assert!(err.wait_eof(Duration::from_secs(5)), "{what}: stderr still open after the exit");
    st.code()
}

/// A proxy whose every connection is cut (FIN) at stream byte `at`; `fetch --retry 0` through
/// it into `out` must fail with exit 3 and keep exactly the bytes before the cut. Afterwards
/// the proxy forwards cleanly. Returns the kept length.
pub fn cut_once(proxy: &Proxy, source: &str, out: &Path, at: u64, head: u64, extra: &[&str]) -> u64 {
    proxy.set_plan(Plan::down(at, Action::Cut));
    let fired = proxy.fired();
    let mut args = vec!["--retry", "0"];
    args.extend_from_slice(extra);
    let res = fetch_default(source, out, &args);
    proxy.set_plan(Plan::clean());
    assert_eq!(proxy.fired(), fired + 1, "test design: the cut did not happen\n{}", describe(&res));
    assert_failed(&res, &[3], "a transfer cut by the network");
    let line = &error_lines(&res)[0];
    let (part, info) = partial_of(out);
    assert!(
        line.contains("kept") && line.contains("run the same command again to resume"),
        "a cut transfer must say what it kept and how to resume: {line}"
    );
    assert!(!out.exists(), "a cut transfer left something at the output {}", out.display());
    assert!(
        part.exists() && info.exists(),
        "no partial and record kept after a cut: {:?}",
        dir_names(out.parent().unwrap())
    );
    let kept = len_of(&part);
    let got = lost_after(line).unwrap_or_else(|| panic!("the error must say how much arrived: {line}"));
    assert_eq!(kept, got, "the partial must hold every byte that arrived\n{}", describe(&res));
    // Everything before the cut arrives, unless the proxy's close reached the client as a
    // reset (seen now and then on a busy machine), which drops what was still in flight.
    if line.contains("reset") {
        assert!(got <= at - head, "more arrived than was sent: {line}");
    } else {
        assert_eq!(got, at - head, "not every byte before the cut arrived\n{}", describe(&res));
    }
    kept
}

/// The byte count of a "connection lost after N of …" error (or retry) line.
pub fn lost_after(line: &str) -> Option<u64> {
    line.split("connection lost after ").nth(1)?.split(' ').next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

/// Whether `tool` (an absolute path) is installed; if not, says `SKIPPED: what` and returns
/// false, or fails the test when `XFER_REQUIRE_TOOLS=1`.
pub fn have_tool(tool: &str, what: &str) -> bool {
    if Path::new(tool).exists() {
        return true;
    }
    let why = format!("{tool} is not installed");
    assert!(std::env::var("XFER_REQUIRE_TOOLS").as_deref() != Ok("1"), "{what}: {why} (XFER_REQUIRE_TOOLS=1)");
    skipped(what, &why);
    false
}

pub const NGINX: &str = "/usr/sbin/nginx";

/// nginx serving one directory on a free loopback port, with its own config, logs and pid
/// file in a temporary directory. Each request is logged as `STATUS RANGE IF-RANGE URI`.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx serving `root`, with `extra` (directives) in its server block; `None`
    /// after saying SKIPPED when nginx is not installed.
    pub fn start(root: &Path, extra: &str, what: &str) -> Option<Nginx> {
        if !have_tool(NGINX, what) {
            return None;
        }
        let mut last = String::new();
        // A free port is found by binding port 0 and letting it go; another process may take
        // it in between, so a failed start is tried again on another port (three times).
        for _ in 0..3 {
            match Nginx::try_start(root, extra) {
                Ok(n) => return Some(n),
                Err(e) => last = e,
            }
        }
        panic!("{what}: nginx did not start: {last}");
    }

    fn try_start(root: &Path, extra: &str) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new().prefix("xfer-test-nginx-").tempdir().map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
        let conf = format!(
            "master_process off;\n{user}pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  log_format resume escape=none '$status \"$http_range\" \"$http_if_range\" $uri';\n\
               access_log {d}/access.log resume;\n  default_type application/octet-stream;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n{extra}\n    location / {{ }}\n  }}\n}}\n",
            root = root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        let log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        if let Some(st) = exited {
            return Err(format!("nginx exited ({st}): {}", log()));
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("nginx did not listen within 10 s: {}", log()));
        }
        Ok(Nginx { child, addr, dir })
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The access log's lines so far (`STATUS "RANGE" "IF-RANGE" URI`).
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    /// Waits (up to 5 s) until the access log has `n` lines, and returns them.
    pub fn wait_requests(&self, n: usize) -> Vec<String> {
        wait_until(Duration::from_secs(5), || self.requests().len() >= n);
        self.requests()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Scripted servers
// ---------------------------------------------------------------------------------------

/// What a scripted server's connections saw (request heads, versions …), in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// Reads an HTTP request head (up to the blank line; 64 KiB at most).
pub fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The request target of a request head (`GET /x HTTP/1.1` → `/x`).
pub fn request_path(head: &str) -> String {
    head.split_whitespace().nth(1).unwrap_or("").to_string()
}

/// A header's value in a request head (first match, name case-insensitive).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends `bytes`, closes the write side (FIN), and reads whatever the client still sends
/// until it closes (10 s at most), so that the client never sees a reset.
pub fn send_and_close(mut s: TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// An HTTP/1.1 response: the status line, the headers, then `body`.
pub fn http_response(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for h in headers {
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

/// SHA-256 of `data`, as `Repr-Digest` carries it (base64) and as `--expect` wants it (hex).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn base64(d: &[u8]) -> String {
    xfer::encoding::http::base64(d)
}
