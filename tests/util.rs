//! Shared helpers: start the real server, run the real client, inspect the server process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use xfer::encoding;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xfer")
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("xfer-test-").tempdir().expect("tempdir")
}

/// Deterministic pseudo-random bytes (xorshift64*): reproducible without a rand crate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

/// A running `xfer serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the server printed on stdout (the first is the `listening on` line).
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Everything the server printed on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `xfer serve FILE --listen 127.0.0.1 --port 0 EXTRA...`
    pub fn start(file: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec!["serve".into(), file.display().to_string()];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1".into()]);
        }
        if !extra.contains(&"--port") {
            args.extend(["--port".into(), "0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn(Command::new(bin()).args(&args))
    }

    /// Spawns a prepared command (e.g. wrapped in `prlimit`) and waits for its address.
    pub fn spawn(cmd: &mut Command) -> Server {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn xfer serve");
        let stderr = collect_text(child.stderr.take().unwrap());
        let context = stderr.clone();
        let (addr, lines) = read_banner(&mut child, move || format!("stderr:\n{}", context.lock().unwrap()));
        Server { child, addr, stdout: lines, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` to hand to `xfer fetch`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Number of open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// User + system CPU time of the server, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    }

    /// Waits until `pred(stderr)` holds, up to `secs`; returns whether it did.
    pub fn wait_stderr(&self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if pred(&self.stderr()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.stderr())
    }

    /// Waits until the fd count is at most `n`, up to `secs`; returns the last count.
    pub fn wait_fds_at_most(&self, n: usize, secs: u64) -> usize {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.fd_count();
            if c <= n || Instant::now() >= end {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The checks every fault test ends with: alive, no panic, fds back to `baseline`,
    /// and no CPU burnt while idle.
    pub fn assert_healthy(&mut self, baseline_fds: usize) {
        assert!(self.is_alive(), "server died; stderr:\n{}", self.stderr());
        let fds = self.wait_fds_at_most(baseline_fds, 10);
        assert!(fds <= baseline_fds, "fd leak: {fds} open, baseline {baseline_fds}");
        let before = self.cpu_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let used = self.cpu_ticks() - before;
        // 500 ms idle at 100 ticks/s: a spinning loop would burn ~50 ticks.
        assert!(used <= 5, "server used {used} ticks of CPU while idle");
        let err = self.stderr();
        assert!(!err.contains("panicked"), "server panicked:\n{err}");
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the server to exit, up to `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies everything `r` yields into a shared string, on a thread, until EOF or an error.
pub fn collect_text(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    text
}

/// Waits (20 s at most) for the server's first stdout line, `listening on ADDR`, and returns
/// the address and the stdout lines, which keep being collected. On failure it kills the
/// server and panics, with `context()` saying what the server printed elsewhere.
pub fn read_banner(child: &mut Child, context: impl Fn() -> String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let out = child.stdout.take().expect("server stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if sink.lock().unwrap().is_empty() {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let first = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("server printed no address line; {}", context());
        }
    };
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {first:?}: {e}"));
    (addr, lines)
}

/// Runs `xfer fetch TARGET OUT EXTRA...` and returns its output; killed after 60 s.
pub fn fetch(target: &str, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("fetch").arg(target).arg(out).args(extra);
    run_with_timeout(&mut cmd, 60)
}

/// Runs a command with a time limit; panics (with the command) if it is exceeded.
pub fn run_with_timeout(cmd: &mut Command, secs: u64) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("command timed out after {secs} s: {desc}");
        }
    }
}

/// Describes a finished command for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts a fetch succeeded and wrote exactly `expected` to `out`.
pub fn assert_fetched(out_path: &Path, res: &Output, expected: &[u8]) {
    assert!(res.status.success(), "fetch failed:\n{}", describe(res));
    let got = std::fs::read(out_path).unwrap_or_else(|e| panic!("read {}: {e}\n{}", out_path.display(), describe(res)));
    assert!(got == expected, "fetched {} bytes, expected {} (content differs)", got.len(), expected.len());
}

/// Lists the names in `dir` (to prove nothing, not even a temp file, was left behind).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A raw protocol request (offset 0, optional token digest).
pub fn raw_request(token: Option<&str>) -> [u8; encoding::REQUEST_LEN] {
    encoding::encode_request(&encoding::Request {
        offset: 0,
        token: token.map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
    })
}

/// Connects, sends a request, and reads the whole response (header included), with a timeout.
pub fn raw_fetch(addr: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(req)?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}
