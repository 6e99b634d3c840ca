//! The server under test: `xfer serve` started on loopback and port 0, its address read
//! from the first line it prints, its stdout and stderr collected, its descriptors and CPU
//! read from /proc, and the checks every fault test ends with.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Collected, assert_child_exits, bin, raw, send_signal, wait_child_exit, wait_until};

/// A running `xfer serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the server printed on stdout (the first is the `listening on` line).
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Collected,
    /// Descriptors open at rest, once `settle` has run.
    baseline_fds: Option<usize>,
}

impl Server {
    /// `xfer serve FILE --listen 127.0.0.1 --port 0 EXTRA...`
    pub fn start(file: &Path, extra: &[&str]) -> Server {
        Server::spawn(&mut serve_command(file, extra))
    }

    /// `start`, then `settle`: for tests that end with `assert_healthy`.
    pub fn settled(file: &Path, extra: &[&str]) -> Server {
        let mut s = Server::start(file, extra);
        s.settle();
        s
    }

    /// `start`, `settle`d, waiting up to `limit` for the address: the file is hashed before
    /// the server says where it listens, and a file of gigabytes takes a while to hash.
    pub fn start_within(file: &Path, extra: &[&str], limit: Duration) -> Server {
        let mut s = Server::spawn_within(&mut serve_command(file, extra), limit);
        s.settle();
        s
    }

    /// Spawns a prepared command (see `serve_command`) and waits for its address.
    pub fn spawn(cmd: &mut Command) -> Server {
        Server::spawn_within(cmd, BANNER_WAIT)
    }

    fn spawn_within(cmd: &mut Command, limit: Duration) -> Server {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn xfer serve");
        let stderr = Collected::spawn(child.stderr.take().unwrap());
        let context = stderr.clone();
        let (addr, stdout) = read_banner_within(&mut child, limit, move || format!("stderr:\n{}", context.text()));
        Server { child, addr, stdout, stderr, baseline_fds: None }
    }

    /// Records the descriptor count at rest. The loop is surely running (its poller and
    /// signal pipe made) once it has answered a connection, so one junk connection goes
    /// first: the server closes it at once, and our EOF means its descriptor is gone.
    pub fn settle(&mut self) {
        let mut s = raw::connect(self.addr, None, None).expect("settle: connect");
        let _ = s.write_all(b"\0");
        let got = raw::read_until_closed(&mut s, Duration::from_secs(5));
        assert!(got.closed_at.is_some(), "settle: the server did not close a junk connection within 5 s");
        let base = self.fd_count();
        if std::env::var_os("XFER_FD_DEBUG").is_some() {
            eprintln!("baseline {base} for {}: {}", self.pid(), self.fd_list());
        }
        self.baseline_fds = Some(base);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` to hand to `xfer fetch`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The lines the server printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The three banner lines (address; size and digest; the fetch command), waiting up
    /// to 10 s for them.
    pub fn banner(&self) -> Vec<String> {
        let ok = wait_until(Duration::from_secs(10), || self.stdout_lines().len() >= 3);
        let lines = self.stdout_lines();
        assert!(ok, "the server printed fewer than 3 stdout lines in 10 s: {lines:?}");
        lines
    }

    /// Waits until `pred(stderr)` holds, up to `secs`; returns whether it did.
    pub fn wait_stderr(&self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        wait_until(Duration::from_secs(secs), || pred(&self.stderr()))
    }

    /// Waits (up to `secs`) for the log line of the client whose local port is `port`.
    pub fn wait_log(&self, port: u16, secs: u64) -> Option<String> {
        let needle = format!(":{port} ");
        let find = |e: &str| e.lines().find(|l| l.contains(&needle)).map(str::to_string);
        self.wait_stderr(secs, |e| find(e).is_some());
        find(&self.stderr())
    }

    /// `wait_log` that fails the test when the line does not come.
    pub fn expect_log(&self, port: u16, secs: u64) -> String {
        self.wait_log(port, secs)
            .unwrap_or_else(|| panic!("no log line for the client at :{port} within {secs} s:\n{}", self.stderr()))
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Waits for the server to exit, up to `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        wait_child_exit(&mut self.child, Duration::from_secs(secs))
    }

    /// Asserts the server exits with `code` within `secs`, without a panic.
    pub fn assert_exits(&mut self, code: i32, secs: f64, what: &str) {
        assert_child_exits(&mut self.child, &self.stderr, code, Duration::from_secs_f64(secs), what);
    }

    /// Number of open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// `fd -> target` for every descriptor (for leak reports).
    pub fn fd_list(&self) -> String {
        let mut v: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        let n = e.file_name().to_string_lossy().parse().unwrap_or(0);
                        let t = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                        (n, t)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.iter().map(|(n, t)| format!("{n}->{t}")).collect::<Vec<_>>().join(" ")
    }

    /// Waits until the fd count is at most `n`, up to `secs`; returns the last count.
    pub fn wait_fds_at_most(&self, n: usize, secs: u64) -> usize {
        wait_until(Duration::from_secs(secs), || self.fd_count() <= n);
        self.fd_count()
    }

    /// The server's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// User + system CPU time of the whole server (all threads), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.pid()))
    }

    /// The checks every fault test ends with: alive, no panic, descriptors back to the
    /// baseline `settle` took, and no CPU burnt while idle.
    pub fn assert_healthy(&mut self) {
        let base = self.baseline_fds.expect("assert_healthy needs a settled server");
        assert!(self.is_alive(), "server died; stderr:\n{}", self.stderr());
        let fds = self.wait_fds_at_most(base, 10);
        assert!(fds <= base, "fd leak: {fds} open, baseline {base}: {}", self.fd_list());
        let before = self.cpu_ticks();
        // The subject: 500 ms of idleness, measured.
        std::thread::sleep(Duration::from_millis(500));
        let used = self.cpu_ticks() - before;
        // 500 ms idle at 100 ticks/s: a spinning loop would burn ~50 ticks.
        assert!(used <= 5, "server used {used} ticks of CPU while idle");
        let err = self.stderr();
        assert!(!err.contains("panicked"), "server panicked:\n{err}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command `Server::start` runs: `xfer serve FILE`, on loopback and port 0 unless
/// `extra` says otherwise, without `XFER_TOKEN` from the environment.
pub fn serve_command(file: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg(file).env_remove("XFER_TOKEN");
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1"]);
    }
    if !extra.contains(&"--port") {
        cmd.args(["--port", "0"]);
    }
    cmd.args(extra);
    cmd
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` file, in clock ticks.
pub fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// How long a server may take to say where it listens (it hashes the file first).
const BANNER_WAIT: Duration = Duration::from_secs(60);

/// Waits (a minute at most) for the server's first stdout line, `listening on ADDR`, and returns
/// the address and the stdout lines, which keep being collected. On failure it kills the
/// server and panics, with `context()` saying what the server printed elsewhere.
pub fn read_banner(child: &mut Child, context: impl Fn() -> String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    read_banner_within(child, BANNER_WAIT, context)
}

/// `read_banner`, waiting up to `limit`.
pub fn read_banner_within(
    child: &mut Child,
    limit: Duration,
    context: impl Fn() -> String,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
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
    let first = match rx.recv_timeout(limit) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
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

/// The per-connection log lines in a server's stderr: each starts with the client's
/// address (`ADDR complete: N bytes in S s (RATE)`, `ADDR refused: REASON`, ...).
pub fn transfer_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.split(' ').next().is_some_and(|a| a.parse::<SocketAddr>().is_ok())).collect()
}

/// Lines of `text` containing `pat`.
pub fn count_lines(text: &str, pat: &str) -> usize {
    text.lines().filter(|l| l.contains(pat)).count()
}
