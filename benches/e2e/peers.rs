//! The programs the bench runs: `xfer serve` and nginx as servers under test, `xfer fetch`,
//! curl and b3sum as timed client commands. It finds their executables, starts them pinned
//! to given cores, waits until a server answers, and makes sure none outlives the bench.
//!
//! It owns how each program is started and stopped and which protocols each server speaks
//! (xfer: native and HTTP on one port; nginx: HTTP), and must never measure: CPU, memory and timing of a load phase are taken by the callers
//! (readings.rs, compare.rs), and nothing here knows the phases or the report. Each server
//! reports the processes whose CPU and memory count, because only it knows them (nginx: a
//! master and its workers).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::load::Target;
use crate::proto::{Credential, Proto};
use crate::readings::{alive, children_of, cpu_us};

/// The peers found on this machine; each is `None` when missing or `XFER_BENCH_NO_PEERS=1`.
pub struct Tools {
    pub nginx: Option<PathBuf>,
    pub curl: Option<PathBuf>,
    pub b3sum: Option<PathBuf>,
}

impl Tools {
    pub fn find(enabled: bool) -> Tools {
        let find = |name: &str| find_exe(name).filter(|_| enabled);
        Tools { nginx: find("nginx"), curl: find("curl"), b3sum: find("b3sum") }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Xfer,
    Nginx,
}

/// A running server. Dropping it stops it and every process it started.
pub struct Server {
    pub name: String,
    kind: Kind,
    child: Child,
    pub addr: SocketAddr,
    /// Processes whose CPU time counts (nginx: master + workers).
    pub cpu_pids: Vec<i32>,
    /// Process whose RSS counts (nginx: the worker).
    pub rss_pid: i32,
    stderr: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
    /// The token the server requires (xfer with `--token-file`); its targets carry it.
    cred: Option<Credential>,
}

impl Server {
    /// Requests in `proto` for `path` (a name in the served directory, which is also the
    /// name xfer serves its one file under) whose responses carry `size` body bytes; with
    /// the server's token when it has one.
    pub fn target(&self, proto: Proto, path: &str, size: u64) -> Target {
        debug_assert!(self.kind == Kind::Xfer || !proto.native(), "nginx speaks only HTTP");
        Target::new(self.addr, proto, path, size, self.cred.as_ref())
    }

    pub fn cpu_us(&self) -> f64 {
        cpu_us(&self.cpu_pids)
    }

    fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().unwrap();
        let t: Vec<&str> = s.lines().rev().take(5).collect();
        t.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self.kind {
            // xfer drains in-flight transfers on SIGTERM; the bench has none it cares about.
            Kind::Xfer => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            Kind::Nginx => {
                let master = self.child.id() as i32;
                // SAFETY: kill(2) takes plain integers; `master` is our own child, not yet reaped.
                unsafe { libc::kill(master, libc::SIGTERM) };
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                for &p in &self.cpu_pids {
                    if p != master && alive(p) {
                        // SAFETY: as above; a worker left behind by a master that did not stop.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// Keeps the last 32-64 KiB of a child's stderr, for error messages, and keeps the pipe
/// drained so that the child never blocks on a full one.
fn spawn_stderr_sink(child: &mut Child) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let sink = sink.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut s = sink.lock().unwrap();
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if s.len() > 64 * 1024 {
                            let cut = s.len() - 32 * 1024;
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            }
        });
    }
    sink
}

/// `xfer serve FILE --listen 127.0.0.1 --port PORT --quiet ...` (port 0: any free one),
/// pinned to `cores`; with `--token-file` when `token` names one (and the credential its
/// first line gives).
pub fn start_xfer(
    bin: &Path,
    file: &Path,
    threads: usize,
    cores: Option<&[usize]>,
    port: u16,
    token: Option<(&Path, &Credential)>,
) -> Result<Server, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(file)
        .args(["--listen", "127.0.0.1", "--port", &port.to_string(), "--quiet"])
        // Every bench client comes from 127.0.0.1; the default of 64 per address would
        // refuse most of them.
        .args(["--max-per-ip", "1000000"]);
    if threads > 1 {
        cmd.args(["--threads", &threads.to_string()]);
    }
    if let Some((path, _)) = token {
        cmd.arg("--token-file").arg(path);
    }
    die_with_parent(&mut cmd);
    if let Some(c) = cores {
        pin_cmd(&mut cmd, c);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    let stderr = spawn_stderr_sink(&mut child);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout for the server's whole life.
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(120));
    let fail = |mut child: Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        Err(format!("{why}; command: {desc}; stderr: {}", stderr.lock().unwrap().trim()))
    };
    let first = match first {
        Ok(l) => l,
        Err(_) => return fail(child, "xfer serve printed no `listening on` line".into()),
    };
    let addr: SocketAddr = match first.strip_prefix("listening on ").and_then(|a| a.trim().parse().ok()) {
        Some(a) => a,
        None => return fail(child, format!("unexpected first line {first:?}")),
    };
    let pid = child.id() as i32;
    let mut s = Server {
        name: if threads > 1 { format!("xfer --threads {threads}") } else { "xfer".into() },
        kind: Kind::Xfer,
        child,
        addr,
        cpu_pids: vec![pid],
        rss_pid: pid,
        stderr,
        _dir: None,
        cred: token.map(|(_, c)| c.clone()),
    };
    // An answered request proves the server is serving, so no phase measures its start-up.
    // With a token the probe asks over HTTP, with the token as a Bearer header.
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    probe(&s, &s.target(if token.is_some() { Proto::Http10 } else { Proto::Xfer }, &name, size))?;
    if !s.is_alive() {
        return Err(format!("xfer serve exited; stderr: {}", s.stderr_tail()));
    }
    Ok(s)
}

/// nginx with a generated config serving `root`, `workers` worker processes, pinned to `cores`.
pub fn start_nginx(
    nginx: &Path,
    root: &Path,
    workers: usize,
    cores: Option<&[usize]>,
    nofile: u64,
) -> Result<Server, String> {
    let dir = tempfile::Builder::new().prefix("xfer-bench-nginx-").tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let port = free_port();
    // SAFETY: geteuid cannot fail and touches no memory.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    let rlimit = nofile.max(65536);
    let conf = format!(
        "daemon off;\nmaster_process on;\n{user}worker_processes {workers};\n\
         worker_rlimit_nofile {rlimit};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 40000; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  default_type application/octet-stream;\n  types {{ }}\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location / {{ }}\n  }}\n}}\n",
        d = d.display(),
        root = root.display(),
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(d).arg("-e").arg(d.join("error.log")).arg("-c").arg(&conf_path);
    die_with_parent(&mut cmd);
    if let Some(c) = cores {
        pin_cmd(&mut cmd, c);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn nginx: {e}"))?;
    let stderr = spawn_stderr_sink(&mut child);
    let master = child.id() as i32;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Ready once every worker exists (their CPU counts) and the port accepts.
    let end = Instant::now() + Duration::from_secs(10);
    let mut pids = vec![master];
    let mut ok = false;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited ({st}): {} {}", stderr.lock().unwrap().trim(), log.trim()));
        }
        let w = children_of(master);
        if w.len() >= workers && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            pids.extend(w);
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_pid = pids.get(1).copied().unwrap_or(master);
    let s = Server {
        name: if workers > 1 { format!("nginx ({workers} workers)") } else { "nginx".into() },
        kind: Kind::Nginx,
        child,
        addr,
        cpu_pids: pids,
        rss_pid,
        stderr,
        _dir: Some(dir),
        cred: None,
    };
    if !ok {
        return Err("nginx did not start listening within 10 s".into());
    }
    Ok(s)
}

/// One request; checks the response head announces `t.size` bytes. Blocking, with timeouts.
pub fn probe(s: &Server, t: &Target) -> Result<(), String> {
    let err = |e: io::Error| format!("probe of {} at {}: {e}", s.name, t.addr);
    let mut c = TcpStream::connect_timeout(&t.addr, Duration::from_secs(10)).map_err(err)?;
    c.set_read_timeout(Some(Duration::from_secs(120))).map_err(err)?;
    c.write_all(&t.req).map_err(err)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Err(format!("probe of {}: EOF after {} bytes, before the header", s.name, got.len()));
        }
        got.extend_from_slice(&buf[..n]);
        match t.proto.parse_head(&got, t.size) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => continue,
            Err(e) => return Err(format!("probe of {}: {e}", s.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Timed client commands (the fetch phase)
// ---------------------------------------------------------------------------------------

/// What a command that ran to its end did.
pub struct Ran {
    pub wall: Duration,
    /// CPU time of the command and all its threads (user + system), from wait4's rusage.
    pub cpu_us: f64,
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command line and how it ended, for messages.
    pub desc: String,
}

/// Runs a command to completion (≤ `limit`, else it is killed and this is an error); its
/// wall time, CPU time and exit code, whatever the code.
pub fn run_cmd(cmd: &mut Command, limit: Duration) -> Result<Ran, String> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    let mut err_pipe = child.stderr.take().unwrap();
    let mut out_pipe = child.stdout.take();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let outs = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let pid = child.id() as i32;
    // Polled rather than waited for, so that a command past `limit` can be killed; 0.5 ms
    // is well under the resolution the fetch figures are printed at. wait4 reaps it and
    // says what CPU it used (std's Child is then never waited for again).
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is a struct of integers, for which all zeroes is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are ours to fill and outlive the call; `pid` is our own
        // child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let wall = t0.elapsed();
            let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            let how = match code {
                Some(c) => format!("exit status: {c}"),
                None => format!("signal {}", libc::WTERMSIG(status)),
            };
            return Ok(Ran {
                wall,
                cpu_us: tv(ru.ru_utime) + tv(ru.ru_stime),
                code,
                stdout: outs.join().unwrap_or_default(),
                stderr: errs.join().unwrap_or_default(),
                desc: format!("{desc} ({how})"),
            });
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("wait {desc}: {e}"));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{desc} took over {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Runs a command to completion (≤ `limit`), returns its wall time and stdout, or an error
/// with stderr when it failed.
pub fn time_cmd(cmd: &mut Command, limit: Duration) -> Result<(Duration, String), String> {
    let r = run_cmd(cmd, limit)?;
    if r.code != Some(0) {
        return Err(format!("{} failed: {}", r.desc, r.stderr.trim()));
    }
    Ok((r.wall, r.stdout))
}

/// Writes back dirty pages before a timed command, so that it does not pay for the last one's.
pub fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `xfer fetch ADDR OUT --quiet` (or to stdout → /dev/null when `out` is None); wall seconds.
pub fn xfer_fetch(
    bin: &Path,
    addr: &str,
    out: Option<&Path>,
    size: u64,
    cores: Option<&[usize]>,
    limit: Duration,
) -> Result<f64, String> {
    if let Some(o) = out {
        let _ = std::fs::remove_file(o);
    }
    sync_disks();
    let mut c = Command::new(bin);
    c.arg("fetch").arg(addr);
    match out {
        Some(o) => c.arg(o),
        None => c.arg("-"),
    };
    c.arg("--quiet").stdout(Stdio::null());
    if let Some(cores) = cores {
        pin_cmd(&mut c, cores);
    }
    let r = time_cmd(&mut c, limit).map(|(d, _)| d.as_secs_f64());
    if let (Ok(_), Some(o)) = (&r, out) {
        let got = std::fs::metadata(o).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(o);
        if got != size {
            return Err(format!("xfer fetch: output has {got} bytes, expected {size}"));
        }
    }
    r
}

/// `xfer fetch ADDR OUT --retry 0`, run to its end whatever its exit code: a fetch that is
/// cut keeps its partial and exits 3 at once, and the same command run again resumes it. No
/// `--quiet`: the summary line on stderr says where a fetch resumed.
pub fn xfer_fetch_once(bin: &Path, addr: &str, out: &Path, limit: Duration) -> Result<Ran, String> {
    let mut c = Command::new(bin);
    c.arg("fetch").arg(addr).arg(out).args(["--retry", "0"]).stdout(Stdio::null());
    run_cmd(&mut c, limit)
}

/// `curl -o OUT URL` then `b3sum OUT` (checked against `digest`), then fsync(OUT) when asked.
pub fn curl_b3sum(
    curl: &Path,
    b3: &Path,
    url: &str,
    out: &Path,
    fsync: bool,
    digest: &str,
    limit: Duration,
) -> Result<f64, String> {
    let _ = std::fs::remove_file(out);
    sync_disks();
    let r = time_cmd(Command::new(curl).args(["-sS", "-o"]).arg(out).arg(url).stdout(Stdio::null()), limit)
        .and_then(|(d1, _)| {
            time_cmd(Command::new(b3).arg(out).stdout(Stdio::piped()), limit).and_then(|(d2, o)| {
                if o.split_whitespace().next() == Some(digest) {
                    Ok(d1 + d2)
                } else {
                    Err(format!("curl + b3sum: digest mismatch: {}", o.trim()))
                }
            })
        })
        .and_then(|d| {
            if !fsync {
                return Ok(d);
            }
            let t0 = Instant::now();
            File::open(out).and_then(|f| f.sync_all()).map_err(|e| format!("fsync: {e}"))?;
            Ok(d + t0.elapsed())
        });
    let _ = std::fs::remove_file(out);
    r.map(|d| d.as_secs_f64())
}

/// `curl -o /dev/null URL`: the receive copy alone, the floor a verified fetch is held to.
pub fn curl_null(curl: &Path, url: &str, limit: Duration) -> Result<f64, String> {
    sync_disks();
    let r = time_cmd(Command::new(curl).args(["-sS", "-o", "/dev/null"]).arg(url).stdout(Stdio::null()), limit);
    r.map(|(d, _)| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Processes: executables, pinning, lifetime
// ---------------------------------------------------------------------------------------

/// The xfer binary under test: `XFER_BIN`, else the one cargo built for this bench, else
/// `target/release/xfer` beside the bench executable (built now if it is missing).
pub fn xfer_bin() -> PathBuf {
    if let Ok(p) = std::env::var("XFER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_xfer")
        && Path::new(p).is_file()
    {
        return PathBuf::from(p);
    }
    // .../target/release/deps/e2e-xxxx -> .../target/release/xfer
    let exe = std::env::current_exe().expect("current_exe");
    let release = exe.parent().and_then(|d| d.parent()).expect("bench exe has no grandparent").to_path_buf();
    let bin = release.join("xfer");
    if !bin.is_file() {
        let target = release.parent().expect("target dir").to_path_buf();
        eprintln!("building xfer into {}", target.display());
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "xfer"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build --release --bin xfer failed");
    }
    bin
}

/// An executable on PATH, or in the sbin directories a non-root PATH often lacks (nginx).
fn find_exe(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The first line a command prints on stdout or stderr (versions, git), or "".
pub fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// A port free right now, for nginx's config (xfer takes port 0 and says what it got).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn cpu_set(cores: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        // SAFETY: CPU_SET only writes a bit of the set it is given (it ignores c ≥ CPU_SETSIZE).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Pins the calling thread (and what it spawns afterwards) to `cores`.
pub fn pin_self(cores: &[usize]) -> bool {
    let set = cpu_set(cores);
    // SAFETY: the set outlives the call, and its size is the one passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Pins a child to `cores` (what `taskset -c` does), set between fork and exec.
pub fn pin_cmd(cmd: &mut Command, cores: &[usize]) {
    let set = cpu_set(cores);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sched_setaffinity, which is async-signal-safe, on a set it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child is killed when this bench dies (even by SIGKILL), so no server outlives it.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
