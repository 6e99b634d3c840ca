//! End-to-end benchmark: the real `xfer serve` against nginx, on loopback, in one run.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench e2e                          # full
//! XFER_BENCH_SCALE=quick CARGO_TARGET_DIR=/work/target-bench cargo bench --bench e2e   # < 1 min
//! ```
//!
//! A raw mio load generator of its own (one thread, pinned to core 1 when there are two
//! or more cores) drives `xfer serve` (pinned to core 0) and, when it is installed, nginx
//! (1 worker, sendfile on, access_log off, pinned to core 0) serving the same files. For
//! xfer each client sends the 48-byte request and reads header + body to EOF; for nginx it
//! sends `GET /file HTTP/1.0` and reads to EOF. Every transfer's byte count is checked.
//! Body bytes are discarded with `recv(MSG_TRUNC)` (no copy into user space), so the
//! load generator costs as little as possible and both servers see the same client;
//! `XFER_BENCH_COPY_READS=1` copies them instead.
//!
//! Phases (each bounded in count and time; traffic only to 127.0.0.1):
//! - small: 80-byte file, 100 concurrent clients, a new connection per transfer.
//! - fanout: 10 MiB file, 100 concurrent clients, repeated; 1 reactor vs 1 worker, then
//!   `--threads 2` vs 2 workers (both unpinned over cores 0-1, the load too).
//! - fetch: 1 GiB `xfer fetch` (verify + atomic write) vs `curl -o` + `b3sum` and vs
//!   `curl -o /dev/null` (against nginx), when those are installed. Outputs on tmpfs
//!   (/dev/shm) so the VM's disk is not what is measured; on disk (fsync on both sides) too,
//!   as information.
//! - stall: 5,000 clients that send the request and never read a 64 MiB file; server RSS
//!   growth per client once it settles (and the kernel's TCP memory, as information).
//! - crowd: 10,000 clients of a 1 MiB file started at once; completion-time p50/p99.
//!
//! Each load phase also reports the server's CPU (/proc/PID/stat), the load generator's,
//! the kernel softirq threads', other processes' (a measurement taken while something
//! else used more than 5% of the machine is marked "noisy"; before each one the bench
//! waits up to `XFER_BENCH_QUIET_WAIT` seconds, default 120, for the machine to be idle),
//! and the kernel TCP counters that moved (listen overflows, resets on memory pressure).
//!
//! Environment:
//! - `XFER_BENCH_SCALE`: `quick` (= 0.1), `full` (= 1, the default) or a number; scales
//!   durations, the fetch size and the client counts.
//! - `XFER_BENCH_ONLY`: comma list of phases to run (small,fanout,fanout2,fetch,stall,crowd).
//! - `XFER_BENCH_NO_PEERS=1`: do not run nginx/curl/b3sum even when installed.
//! - `XFER_BENCH_COPY_READS=1`: the load generator copies body bytes instead of MSG_TRUNC.
//! - `XFER_BENCH_FETCH_DISK=1`: fetch outputs on disk only (no tmpfs).
//! - `XFER_BENCH_QUIET_WAIT=SECS`: how long to wait for an idle machine before a measurement.
//! - `XFER_BENCH_PROFILE='perf record -g -p {pids} -o /tmp/{name}.data'`: a command run
//!   during each measured load phase, stopped with SIGINT at its end.
//! - `XFER_BIN`: path of the xfer binary to test (default: the one cargo built beside us).
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it does nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use xfer::encoding::Decoded;
use xfer::encoding::xfer::{HEADER_LEN, Request, Response, decode_response, encode_request};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

struct Cfg {
    scale: f64,
    scale_label: String,
    pin: bool,
    copy_reads: bool,
    peers: bool,
    only: Option<Vec<String>>,
    small_secs: f64,
    small_conc: usize,
    fan_secs: f64,
    fan_conc: usize,
    fan_size: u64,
    big_size: u64,
    big_reps: usize,
    stall_clients: usize,
    stall_size: u64,
    crowd_clients: usize,
    crowd_size: u64,
}

impl Cfg {
    fn from_env(nofile: u64) -> Cfg {
        let raw = std::env::var("XFER_BENCH_SCALE").unwrap_or_default();
        let (scale, label) = match raw.trim() {
            "" | "full" => (1.0, "full (1.0)".to_string()),
            "quick" => (0.1, "quick (0.1)".to_string()),
            s => match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => (v.min(10.0), format!("{}", v.min(10.0))),
                _ => {
                    eprintln!("XFER_BENCH_SCALE={s:?} is not `quick`, `full` or a positive number; using 1.0");
                    (1.0, "full (1.0)".to_string())
                }
            },
        };
        let flag = |k: &str| std::env::var(k).map(|v| v == "1" || v == "true").unwrap_or(false);
        let only = std::env::var("XFER_BENCH_ONLY")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        // Each client holds one fd here; keep 200 spare for everything else.
        let fd_room = nofile.saturating_sub(200) as usize;
        let big_mib = ((1024.0 * scale).round() as u64).clamp(64, 4096);
        Cfg {
            scale,
            scale_label: label,
            pin: nproc() >= 2,
            copy_reads: flag("XFER_BENCH_COPY_READS"),
            peers: !flag("XFER_BENCH_NO_PEERS"),
            only,
            small_secs: (5.0 * scale).clamp(0.5, 60.0),
            small_conc: 100,
            fan_secs: (5.0 * scale).clamp(1.0, 60.0),
            fan_conc: 100,
            fan_size: 10 * MIB,
            big_size: big_mib * MIB,
            big_reps: if scale >= 0.5 { 3 } else { 1 },
            stall_clients: ((5000.0 * scale).round() as usize).clamp(500, 5000 * 10).min(fd_room),
            stall_size: 64 * MIB,
            crowd_clients: ((10000.0 * scale).round() as usize).clamp(1000, 10000 * 10).min(fd_room),
            crowd_size: MIB,
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|v| v.iter().any(|p| p == phase))
    }
}

// ---------------------------------------------------------------------------------------
// Small OS helpers
// ---------------------------------------------------------------------------------------

/// Online CPUs (not the affinity mask: this thread is pinned to one of them).
fn nproc() -> usize {
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Pins the calling thread (and what it spawns afterwards) to `cores`.
fn pin_self(cores: &[usize]) -> bool {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Pins a child to `cores` (what `taskset -c` does), set between fork and exec.
fn pin_cmd(cmd: &mut Command, cores: &[usize]) {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
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
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

/// utime + stime of one process, in clock ticks.
fn proc_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Summed CPU time (µs) of `pids`, from /proc/PID/stat.
fn cpu_us(pids: &[i32]) -> f64 {
    pids.iter().filter_map(|&p| proc_ticks(p)).sum::<u64>() as f64 * 1e6 / clk_tck()
}

/// CPU time (µs) of the calling thread.
fn thread_cpu_us() -> f64 {
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        (ru.ru_utime.tv_sec as f64 + ru.ru_stime.tv_sec as f64) * 1e6
            + (ru.ru_utime.tv_usec as f64 + ru.ru_stime.tv_usec as f64)
    }
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Children of `pid` (from /proc/*/stat).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn find_exe(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn first_line(cmd: &mut Command) -> String {
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

/// Deterministic incompressible bytes (xorshift64*).
fn make_file(path: &Path, size: u64, seed: u64) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).expect("create data file"));
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).expect("write data file");
        left -= n as u64;
    }
    w.flush().expect("flush data file");
}

fn blake3_file(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path).expect("open data file");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read data file");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

// ---------------------------------------------------------------------------------------
// Servers under test
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Xfer,
    Http,
}

struct Server {
    name: String,
    proto: Proto,
    child: Child,
    addr: SocketAddr,
    /// Processes whose CPU time counts (nginx: master + workers).
    cpu_pids: Vec<i32>,
    /// Process whose RSS counts (nginx: the worker).
    rss_pid: i32,
    stderr: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn cpu_us(&self) -> f64 {
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
        match self.proto {
            // xfer drains in-flight transfers on SIGTERM; the bench has none it cares about.
            Proto::Xfer => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            Proto::Http => {
                let master = self.child.id() as i32;
                unsafe { libc::kill(master, libc::SIGTERM) };
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                for &p in &self.cpu_pids {
                    if p != master && alive(p) {
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

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

/// `xfer serve FILE --listen 127.0.0.1 --port 0 --quiet ...`, pinned to `cores`.
fn start_xfer(bin: &Path, file: &Path, threads: usize, cores: Option<&[usize]>) -> Result<Server, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(file)
        .args(["--listen", "127.0.0.1", "--port", "0", "--quiet"])
        // Every bench client comes from 127.0.0.1; the default of 64 per address would
        // refuse most of them.
        .args(["--max-per-ip", "1000000"]);
    if threads > 1 {
        cmd.args(["--threads", &threads.to_string()]);
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
        proto: Proto::Xfer,
        child,
        addr,
        cpu_pids: vec![pid],
        rss_pid: pid,
        stderr,
        _dir: None,
    };
    probe(&s, std::fs::metadata(file).map(|m| m.len()).unwrap_or(0), "")?;
    if !s.is_alive() {
        return Err(format!("xfer serve exited; stderr: {}", s.stderr_tail()));
    }
    Ok(s)
}

/// nginx with a generated config serving `root`, `workers` worker processes, pinned to `cores`.
fn start_nginx(
    nginx: &Path,
    root: &Path,
    workers: usize,
    cores: Option<&[usize]>,
    nofile: u64,
) -> Result<Server, String> {
    let dir = tempfile::Builder::new().prefix("xfer-bench-nginx-").tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let port = free_port();
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
    let end = Instant::now() + Duration::from_secs(10);
    let mut pids = vec![master];
    let mut ok = false;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited ({st}): {} {}", stderr.lock().unwrap().trim(), log.trim()));
        }
        let w = children_of(master);
        if w.len() >= workers && StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            pids.extend(w);
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_pid = pids.get(1).copied().unwrap_or(master);
    let s = Server {
        name: if workers > 1 { format!("nginx ({workers} workers)") } else { "nginx".into() },
        proto: Proto::Http,
        child,
        addr,
        cpu_pids: pids,
        rss_pid,
        stderr,
        _dir: Some(dir),
    };
    if !ok {
        return Err("nginx did not start listening within 10 s".into());
    }
    Ok(s)
}

/// One request; checks the response header says `size` bytes follow. Blocking, with timeouts.
fn probe(s: &Server, size: u64, path: &str) -> Result<(), String> {
    let err = |e: io::Error| format!("probe of {} at {}: {e}", s.name, s.addr);
    let mut c = StdTcpStream::connect_timeout(&s.addr, Duration::from_secs(10)).map_err(err)?;
    c.set_read_timeout(Some(Duration::from_secs(120))).map_err(err)?;
    c.write_all(&request_bytes(s.proto, path)).map_err(err)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Err(format!("probe of {}: EOF after {} bytes, before the header", s.name, got.len()));
        }
        got.extend_from_slice(&buf[..n]);
        match parse_header(s.proto, &got, size) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => continue,
            Err(e) => return Err(format!("probe of {}: {e}", s.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------

fn request_bytes(proto: Proto, path: &str) -> Vec<u8> {
    match proto {
        Proto::Xfer => encode_request(&Request { offset: 0, token: None }).to_vec(),
        Proto::Http => format!("GET /{path} HTTP/1.0\r\n\r\n").into_bytes(),
    }
}

/// Parses a response header from the bytes so far: `Ok(Some(header_len))` when complete and
/// announcing `size` body bytes, `Ok(None)` when more is needed.
fn parse_header(proto: Proto, buf: &[u8], size: u64) -> Result<Option<usize>, String> {
    match proto {
        Proto::Xfer => match decode_response(buf) {
            Ok(Decoded::NeedMore(_)) => Ok(None),
            Ok(Decoded::Done(Response::Ok { size: got, .. }, used)) => {
                if got != size {
                    return Err(format!("header announces {got} bytes, file has {size}"));
                }
                debug_assert_eq!(used, HEADER_LEN);
                Ok(Some(used))
            }
            Ok(Decoded::Done(Response::Refused { status, reason }, _)) => Err(format!("refused {status:?}: {reason}")),
            Err(e) => Err(format!("bad header: {e}")),
        },
        Proto::Http => {
            let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if buf.len() > 16384 { Err("HTTP header over 16 KiB".into()) } else { Ok(None) };
            };
            let line = buf[..i].split(|&b| b == b'\r').next().unwrap_or(b"");
            if !(line.starts_with(b"HTTP/1.") && line.get(8..12) == Some(b" 200")) {
                return Err(format!("HTTP status {:?}", String::from_utf8_lossy(line)));
            }
            Ok(Some(i + 4))
        }
    }
}

struct Target {
    addr: SocketAddr,
    proto: Proto,
    req: Vec<u8>,
    size: u64,
}

impl Target {
    fn new(s: &Server, path: &str, size: u64) -> Target {
        Target { addr: s.addr, proto: s.proto, req: request_bytes(s.proto, path), size }
    }
}

struct LoadOpts {
    /// Clients in flight at once.
    conc: usize,
    /// Transfers to start in all.
    max_transfers: u64,
    /// No new transfer starts after this.
    window: Duration,
    /// Hard stop; transfers still open then count as timed out.
    deadline: Duration,
    /// SO_RCVBUF for client sockets.
    rcvbuf: Option<usize>,
    /// Record each transfer's completion time.
    latency: bool,
    copy_reads: bool,
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    bad: u64,
    timed_out: u64,
    body_bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    load_cpu_us: f64,
}

impl Outcome {
    fn error(&mut self, e: String) {
        *self.errors.entry(e).or_insert(0) += 1;
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} ok, {} bad, {} timed out, {:.3} s",
            self.ok,
            self.bad,
            self.timed_out,
            self.elapsed.as_secs_f64()
        );
        if !self.errors.is_empty() {
            let mut v: Vec<_> = self.errors.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            let e: Vec<String> = v.iter().take(4).map(|(k, n)| format!("{n}× {k}")).collect();
            s.push_str(&format!("; errors: {}", e.join("; ")));
        }
        s
    }
}

struct Conn {
    sock: TcpStream,
    started: Instant,
    sent: usize,
    hdr: Vec<u8>,
    hdr_done: bool,
    body: u64,
}

enum Step {
    Pending,
    Done(Result<(), String>),
}

fn open_socket(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Sends (the rest of) the request; `Ok(true)` once it is all sent. A socket still
/// connecting answers WouldBlock, and one whose connect failed reports that error here,
/// so there is no separate connect check (on loopback the handshake is usually done by
/// the time `connect` returns, and the request leaves without waiting for an event).
fn send_request(sock: &mut TcpStream, sent: &mut usize, req: &[u8]) -> Result<bool, String> {
    while *sent < req.len() {
        match sock.write(&req[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("connect/send: {}", e.kind())),
        }
    }
    Ok(true)
}

/// Reads body bytes, discarding them without a copy into user space (MSG_TRUNC on TCP).
fn recv_discard(sock: &TcpStream, scratch: &mut [u8], copy: bool) -> io::Result<usize> {
    let flags = if copy { 0 } else { libc::MSG_TRUNC };
    let n = unsafe { libc::recv(sock.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len(), flags) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn drive(c: &mut Conn, t: &Target, scratch: &mut [u8], copy: bool) -> Step {
    match send_request(&mut c.sock, &mut c.sent, &t.req) {
        Ok(true) => {}
        Ok(false) => return Step::Pending,
        Err(e) => return Step::Done(Err(e)),
    }
    loop {
        let r = if c.hdr_done { recv_discard(&c.sock, scratch, copy) } else { c.sock.read(&mut scratch[..4096]) };
        match r {
            Ok(0) => {
                return Step::Done(if !c.hdr_done {
                    Err(format!("EOF before the header ({} bytes)", c.hdr.len()))
                } else if c.body != t.size {
                    Err(format!("short body: {} of {} bytes", c.body, t.size))
                } else {
                    Ok(())
                });
            }
            Ok(n) => {
                if c.hdr_done {
                    c.body += n as u64;
                } else {
                    c.hdr.extend_from_slice(&scratch[..n]);
                    match parse_header(t.proto, &c.hdr, t.size) {
                        Ok(None) => {}
                        Ok(Some(used)) => {
                            c.hdr_done = true;
                            c.body = (c.hdr.len() - used) as u64;
                        }
                        Err(e) => return Step::Done(Err(e)),
                    }
                }
                if c.body > t.size {
                    return Step::Done(Err(format!("more than {} body bytes", t.size)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::Done(Err(format!("recv after {} body bytes: {}", c.body, e.kind()))),
        }
    }
}

/// Runs clients until `max_transfers` have started or the window closed, then drains.
fn run_load(t: &Target, o: &LoadOpts) -> Outcome {
    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(4096);
    let mut conns: Slab<Conn> = Slab::with_capacity(o.conc);
    let mut out = Outcome::default();
    let mut scratch = vec![0u8; 1 << 20];
    let cpu0 = thread_cpu_us();
    let start = Instant::now();
    let mut last_done = start;
    let mut started = 0u64;
    let mut pending = o.conc;
    let mut connect_errors = 0u64;
    loop {
        let now = Instant::now();
        let may_start = now.duration_since(start) < o.window && started < o.max_transfers;
        while pending > 0 && may_start && started < o.max_transfers {
            started += 1;
            match open_socket(t.addr, o.rcvbuf) {
                Ok(mut sock) => {
                    let entry = conns.vacant_entry();
                    poll.registry()
                        .register(&mut sock, Token(entry.key()), Interest::READABLE | Interest::WRITABLE)
                        .expect("register");
                    let key = entry.key();
                    let c = entry.insert(Conn {
                        sock,
                        started: Instant::now(),
                        sent: 0,
                        hdr: Vec::new(),
                        hdr_done: false,
                        body: 0,
                    });
                    pending -= 1;
                    // Send now; the answer (and any connect error) arrives as an event.
                    if let Err(e) = send_request(&mut c.sock, &mut c.sent, &t.req) {
                        let c = conns.remove(key);
                        out.bad += 1;
                        out.error(e);
                        out.body_bytes += c.body;
                        pending += 1;
                        connect_errors += 1;
                        break; // retry on the next turn
                    }
                }
                Err(e) => {
                    out.bad += 1;
                    out.error(format!("connect: {}", e.kind()));
                    connect_errors += 1;
                    break; // retry on the next turn
                }
            }
        }
        if conns.is_empty() && !(pending > 0 && may_start) {
            break;
        }
        if now.duration_since(start) > o.deadline || connect_errors > 100_000 {
            out.timed_out += conns.len() as u64;
            for (_, c) in conns.iter() {
                out.body_bytes += c.body;
            }
            break;
        }
        let wait = if pending > 0 && may_start { Duration::from_millis(1) } else { Duration::from_millis(50) };
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            let k = ev.token().0;
            let Some(c) = conns.get_mut(k) else { continue };
            if let Step::Done(res) = drive(c, t, &mut scratch, o.copy_reads) {
                let c = conns.remove(k);
                let done = Instant::now();
                match res {
                    Ok(()) => {
                        out.ok += 1;
                        if o.latency {
                            out.latencies.push(done - c.started);
                        }
                    }
                    Err(e) => {
                        out.bad += 1;
                        out.error(e);
                    }
                }
                out.body_bytes += c.body;
                last_done = done;
                pending += 1;
            }
        }
    }
    out.elapsed = if out.ok > 0 { last_done - start } else { start.elapsed() };
    out.load_cpu_us = thread_cpu_us() - cpu0;
    out
}

/// A load phase against one server: the outcome and the server's CPU time for it.
struct Measured {
    out: Outcome,
    server_cpu_us: f64,
    /// CPU used by processes other than the server and this bench, as % of all cores.
    foreign_pct: f64,
    /// Kernel TCP counters that moved during the phase.
    kernel: String,
    /// CPU of the kernel's softirq threads (network processing deferred there), % of a core.
    softirqd_pct: f64,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.out.ok as f64 / self.out.elapsed.as_secs_f64().max(1e-9)
    }
    fn gb_per_sec(&self) -> f64 {
        self.out.body_bytes as f64 / self.out.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
    fn cpu_per_transfer_us(&self) -> f64 {
        self.server_cpu_us / (self.out.ok as f64).max(1.0)
    }
    fn exact(&self) -> bool {
        self.out.bad == 0 && self.out.timed_out == 0 && self.out.ok > 0
    }
    fn noisy(&self) -> bool {
        self.foreign_pct > NOISY_PCT
    }
    /// Suffix for a table cell: errors or other load on the machine.
    fn flags(&self) -> &'static str {
        match (self.exact(), self.noisy()) {
            (false, _) => " (errors!)",
            (true, true) => " (noisy)",
            _ => "",
        }
    }
    fn describe(&self, s: &Server) -> String {
        let secs = self.out.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{}: {}; {:.0}/s, {:.3} GB/s; server CPU {:.3} s ({:.0}% of a core, {:.1} µs/transfer); \
             load-gen CPU {:.0}%; ksoftirqd {:.0}% of a core; other processes {:.0}% of the machine{}",
            s.name,
            self.out.summary(),
            self.per_sec(),
            self.gb_per_sec(),
            self.server_cpu_us / 1e6,
            self.server_cpu_us / 1e4 / secs,
            self.cpu_per_transfer_us(),
            self.out.load_cpu_us / 1e4 / secs,
            self.softirqd_pct,
            self.foreign_pct,
            if self.noisy() { " — NOISY, another job was using the CPU" } else { "" },
        ) + &format!("\n      kernel TCP counters: {}", self.kernel)
    }
}

/// Above this share of the machine used by other processes, a measurement is flagged.
const NOISY_PCT: f64 = 5.0;

/// (busy, total) ticks of all CPUs, from /proc/stat (busy includes irq and softirq).
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    (total - get(3) - get(4), total)
}

/// CPU ticks of this process and its waited-for children (curl, b3sum, xfer fetch).
fn self_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().skip(11).take(4).filter_map(|x| x.parse::<u64>().ok()).sum()
}

/// Kernel TCP counters that explain failed or slow transfers: accept-queue overflows (SYNs
/// dropped, clients retry after 1 s), resets on memory pressure, SYN retransmits.
const TCP_WATCH: &[&str] = &[
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
    "TCPSynRetrans",
    "TCPMemoryPressures",
    "TCPAbortOnMemory",
    "TCPAbortOnData",
    "TCPAbortOnTimeout",
    "EstabResets",
    "OutRsts",
];

/// TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters by name.
fn tcp_counters() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else { continue };
            if p1 != p2 || !(p1 == "TcpExt" || p1 == "Tcp") {
                continue;
            }
            for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
                if let Ok(x) = val.parse::<i64>() {
                    m.insert(k.to_string(), x.max(0) as u64);
                }
            }
        }
    }
    m
}

/// The watched counters that moved since `before`, e.g. "ListenOverflows +12".
fn tcp_delta(before: &BTreeMap<String, u64>) -> String {
    let now = tcp_counters();
    let v: Vec<String> = TCP_WATCH
        .iter()
        .filter_map(|k| {
            let d = now.get(*k)?.saturating_sub(*before.get(*k).unwrap_or(&0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// The kernel's per-CPU softirq threads. Loopback traffic is partly processed there under
/// load: that is work of the benchmark itself, not of another job.
fn softirqd_pids() -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return v };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            v.push(p);
        }
    }
    v
}

/// CPU use while `f` runs: (value, % of the machine used by processes other than ours and
/// the softirq threads, % of one core used by the softirq threads).
fn with_foreign<T>(ours: &[i32], f: impl FnOnce() -> T) -> (T, f64, f64) {
    let sirq = softirqd_pids();
    let ticks = |pids: &[i32]| pids.iter().filter_map(|&p| proc_ticks(p)).sum::<u64>();
    let (b0, t0) = machine_ticks();
    let o0 = ticks(ours) + self_ticks();
    let s0 = ticks(&sirq);
    let v = f();
    let (b1, t1) = machine_ticks();
    let o1 = ticks(ours) + self_ticks();
    let s1 = ticks(&sirq);
    let foreign = (b1 - b0).saturating_sub(o1 - o0).saturating_sub(s1 - s0) as f64;
    let total = (t1 - t0).max(1) as f64;
    (v, 100.0 * foreign / total, 100.0 * (s1 - s0) as f64 / total * nproc() as f64)
}

/// Waits (up to `max`) until the machine is idle (< 5% busy over 300 ms), so that a build
/// or test run of someone else's does not land in a measurement. Returns whether it was.
fn wait_quiet(max: Duration) -> bool {
    let t0 = Instant::now();
    let mut warned = false;
    loop {
        let (b0, a0) = machine_ticks();
        std::thread::sleep(Duration::from_millis(300));
        let (b1, a1) = machine_ticks();
        let pct = 100.0 * (b1 - b0) as f64 / (a1 - a0).max(1) as f64;
        if pct < NOISY_PCT {
            return true;
        }
        if t0.elapsed() > max {
            println!("  (machine still {pct:.0}% busy with other work after {} s; measuring anyway)", max.as_secs());
            return false;
        }
        if !warned {
            println!("  (machine {pct:.0}% busy with other work; waiting up to {} s for it to settle)", max.as_secs());
            warned = true;
        }
    }
}

fn measure(phase: &str, s: &Server, t: &Target, o: &LoadOpts) -> Measured {
    wait_quiet(quiet_wait());
    let profiler = start_profiler(phase, s);
    let k0 = tcp_counters();
    let c0 = s.cpu_us();
    let (out, foreign_pct, softirqd_pct) = with_foreign(&s.cpu_pids, || run_load(t, o));
    let server_cpu_us = s.cpu_us() - c0;
    stop_profiler(profiler);
    Measured { out, server_cpu_us, foreign_pct, softirqd_pct, kernel: tcp_delta(&k0) }
}

/// `XFER_BENCH_PROFILE='perf record -g -p {pids} -o /tmp/{name}.data'` runs that shell
/// command during each measured load phase ({pids}: the server's processes, comma-separated;
/// {name}: phase and server), and stops it with SIGINT when the phase ends.
fn start_profiler(phase: &str, s: &Server) -> Option<Child> {
    let tmpl = std::env::var("XFER_BENCH_PROFILE").ok().filter(|t| !t.trim().is_empty())?;
    let pids: Vec<String> = s.cpu_pids.iter().map(|p| p.to_string()).collect();
    let name: String =
        format!("{phase}-{}", s.name).chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let cmd = tmpl.replace("{pids}", &pids.join(",")).replace("{name}", &name);
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("exec {cmd}")).stdin(Stdio::null());
    let child = c.spawn().map_err(|e| println!("  (profiler {cmd:?} failed to start: {e})")).ok()?;
    std::thread::sleep(Duration::from_millis(300)); // let it attach
    Some(child)
}

fn stop_profiler(p: Option<Child>) {
    if let Some(mut c) = p {
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How long to wait for other work on the machine to finish before each measurement.
fn quiet_wait() -> Duration {
    let secs = std::env::var("XFER_BENCH_QUIET_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------------------
// Stalled clients
// ---------------------------------------------------------------------------------------

struct Stall {
    clients: usize,
    mid_transfer: usize,
    rss_before: u64,
    rss_after: u64,
    /// Growth of the kernel's TCP socket memory (both ends: server send queues and the
    /// clients' 16 KiB receive buffers).
    kmem: u64,
    settle: Duration,
    errors: BTreeMap<String, u64>,
}

impl Stall {
    fn per_client(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.clients.max(1) as f64
    }
    fn ok(&self) -> bool {
        self.mid_transfer == self.clients
    }
}

fn fionread(sock: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// Pages of memory all TCP sockets hold in the kernel (/proc/net/sockstat "TCP: ... mem N").
fn tcp_mem_pages() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("TCP:")) else { return 0 };
    let f: Vec<&str> = line.split_whitespace().collect();
    f.iter().position(|w| *w == "mem").and_then(|i| f.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Opens `n` clients that send the request and never read; measures server RSS growth.
fn stall_clients(s: &Server, t: &Target, n: usize) -> Stall {
    wait_quiet(quiet_wait());
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_bytes(s.rss_pid).unwrap_or(0);
    let kmem_before = tcp_mem_pages() * 4096;
    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(4096);
    struct C {
        sock: TcpStream,
        sent: usize,
        done: bool,
    }
    let mut conns: Vec<C> = Vec::with_capacity(n);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        // A small receive window: the server's sends stall after ~16 KiB per client.
        match open_socket(t.addr, Some(16 * 1024)) {
            Ok(mut sock) => {
                poll.registry().register(&mut sock, Token(i), Interest::WRITABLE).expect("register");
                conns.push(C { sock, sent: 0, done: false });
            }
            Err(e) => *errors.entry(format!("connect: {}", e.kind())).or_insert(0) += 1,
        }
    }
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < conns.len() && t0.elapsed() < Duration::from_secs(30) {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else { continue };
            if c.done {
                continue;
            }
            match send_request(&mut c.sock, &mut c.sent, &t.req) {
                Ok(true) => {
                    c.done = true;
                    sent += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    c.done = true;
                    sent += 1;
                    *errors.entry(e).or_insert(0) += 1;
                }
            }
        }
    }
    // Mid-transfer means more bytes waiting than any refusal (≤ 303 bytes) or HTTP header.
    let count_mid = |conns: &Vec<C>| conns.iter().filter(|c| fionread(&c.sock) >= 4096).count();
    let mut mid = count_mid(&conns);
    let t1 = Instant::now();
    while mid < n && t1.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        mid = count_mid(&conns);
    }
    // Let the RSS settle: five samples 250 ms apart within 16 KiB of each other (≤ 15 s).
    let mut samples: Vec<u64> = Vec::new();
    let t2 = Instant::now();
    loop {
        samples.push(rss_bytes(s.rss_pid).unwrap_or(0));
        let last = &samples[samples.len().saturating_sub(5)..];
        if last.len() == 5 && last.iter().max().unwrap() - last.iter().min().unwrap() <= 16 * 1024 {
            break;
        }
        if t2.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rss_after = *samples.last().unwrap();
    let kmem_after = tcp_mem_pages() * 4096;
    let mid_end = count_mid(&conns);
    drop(conns);
    Stall {
        clients: n,
        mid_transfer: mid.min(mid_end),
        rss_before,
        rss_after,
        kmem: kmem_after.saturating_sub(kmem_before),
        settle: t1.elapsed(),
        errors,
    }
}

// ---------------------------------------------------------------------------------------
// Timed commands (fetch vs curl)
// ---------------------------------------------------------------------------------------

/// Runs a command to completion (≤ `limit`), returns its wall time, or an error with stderr.
fn time_cmd(cmd: &mut Command, limit: Duration) -> Result<(Duration, String), String> {
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
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let took = t0.elapsed();
                let err = errs.join().unwrap_or_default();
                let out = outs.join().unwrap_or_default();
                if !st.success() {
                    return Err(format!("{desc} failed ({st}): {}", err.trim()));
                }
                return Ok((took, out));
            }
            Ok(None) if t0.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} took over {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(500)),
            Err(e) => return Err(format!("wait {desc}: {e}")),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sync_disks() {
    unsafe { libc::sync() };
}

/// Medians' inputs of the fetch phase, in seconds.
#[derive(Default)]
struct FetchTimes {
    x_main: Vec<f64>,
    x_main_all: Vec<f64>,
    cb_main: Vec<f64>,
    x_null: Vec<f64>,
    x_null_all: Vec<f64>,
    c_null: Vec<f64>,
    x_disk: Vec<f64>,
    cbs_disk: Vec<f64>,
}

/// A temporary directory on tmpfs (/dev/shm) with room for two copies of `size`, if any.
fn mem_dir(size: u64) -> Option<tempfile::TempDir> {
    if std::env::var("XFER_BENCH_FETCH_DISK").is_ok_and(|v| v == "1") {
        return None;
    }
    let shm = Path::new("/dev/shm");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new("/dev/shm").unwrap();
    if !shm.is_dir() || unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < 2 * size + 256 * MIB {
        return None;
    }
    tempfile::Builder::new().prefix("xfer-bench-").tempdir_in(shm).ok()
}

/// `xfer fetch ADDR OUT --quiet` (or to stdout → /dev/null when `out` is None); wall seconds.
fn xfer_fetch(
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

/// `curl -o OUT URL` then `b3sum OUT` (checked against `digest`), then fsync(OUT) when asked.
fn curl_b3sum(
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

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

struct Row {
    metric: String,
    xfer: String,
    peer: String,
    ratio: String,
    target: String,
    result: String,
}

fn row(metric: &str, xfer: String, peer: String, ratio: Option<f64>, target: &str, pass: Option<bool>) -> Row {
    Row {
        metric: metric.into(),
        xfer,
        peer,
        ratio: ratio.filter(|r| r.is_finite()).map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into()),
        target: target.into(),
        result: match pass {
            Some(true) => "pass".into(),
            Some(false) => "MISS".into(),
            None => "–".into(),
        },
    }
}

fn na(why: &str) -> String {
    format!("n/a ({why})")
}

fn print_table(rows: &[Row]) {
    let head = ["metric", "xfer", "peer", "ratio", "target", "result"];
    let cells: Vec<[&str; 6]> =
        rows.iter().map(|r| [&*r.metric, &*r.xfer, &*r.peer, &*r.ratio, &*r.target, &*r.result]).collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..6 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::from("|");
        for i in 0..6 {
            let pad = w[i] - c[i].chars().count();
            s.push(' ');
            s.push_str(c[i]);
            s.push_str(&" ".repeat(pad));
            s.push_str(" |");
        }
        s
    };
    println!("{}", line(head));
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(n + 2)).collect();
    println!("|{}|", sep.join("|"));
    for c in cells {
        println!("{}", line(c));
    }
}

fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b.abs() >= 1e4 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

// ---------------------------------------------------------------------------------------
// Finding the binary under test
// ---------------------------------------------------------------------------------------

fn xfer_bin() -> PathBuf {
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

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and a test run should not start a minutes-long benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: not run (no --bench argument); use `cargo bench --bench e2e`");
        return;
    }
    let nofile = raise_nofile();
    let cfg = Cfg::from_env(nofile);
    let bin = xfer_bin();
    let peers = cfg.peers;
    let nginx = find_exe("nginx").filter(|_| peers);
    let curl = find_exe("curl").filter(|_| peers);
    let b3sum = find_exe("b3sum").filter(|_| peers);

    // Server on core 0, load (this thread and every command it spawns) on core 1.
    let server_cores: Option<Vec<usize>> = cfg.pin.then(|| vec![0]);
    let all_cores: Vec<usize> = (0..nproc()).collect();
    let pinned = cfg.pin && pin_self(&[1]);
    let sc = server_cores.as_deref();

    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("# xfer end-to-end benchmark");
    println!("machine: {} cores, {model}, kernel {}", nproc(), kernel.trim());
    println!("scale: {} (XFER_BENCH_SCALE; factor {}); open-file limit {nofile}", cfg.scale_label, cfg.scale);
    println!(
        "pinning: {}",
        if pinned { "servers on core 0, load generator and clients on core 1" } else { "none (fewer than 2 cores)" }
    );
    println!(
        "load generator: one mio thread; body bytes {}",
        if cfg.copy_reads { "copied (read)" } else { "discarded with recv(MSG_TRUNC), no copy" }
    );
    let git = |args: &[&str]| first_line(Command::new("git").arg("-C").arg(env!("CARGO_MANIFEST_DIR")).args(args));
    let dirty = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    println!(
        "xfer: {} (source: commit {}{})",
        bin.display(),
        git(&["rev-parse", "--short", "HEAD"]),
        if dirty { " + uncommitted changes" } else { "" }
    );
    match &nginx {
        Some(p) => println!("nginx: {} ({})", p.display(), first_line(Command::new(p).arg("-v"))),
        None => println!("nginx: not installed (or XFER_BENCH_NO_PEERS) — peer columns skipped"),
    }
    match &curl {
        Some(p) => println!("curl: {}", first_line(Command::new(p).arg("--version"))),
        None => println!("curl: not installed — fetch comparison skipped"),
    }
    match &b3sum {
        Some(p) => println!("b3sum: {}", first_line(Command::new(p).arg("--version"))),
        None => println!("b3sum: not installed — curl -o + b3sum comparison skipped"),
    }

    let data = tempfile::Builder::new().prefix("xfer-bench-").tempdir().expect("tempdir");
    let dd = data.path();
    let small = dd.join("small.bin");
    let fan = dd.join("fan.bin");
    let big = dd.join("big.bin");
    let stallf = dd.join("stall.bin");
    let crowd = dd.join("crowd.bin");
    let out_dir = dd.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let t_gen = Instant::now();
    make_file(&small, 80, 1);
    make_file(&fan, cfg.fan_size, 2);
    if cfg.runs("fetch") {
        make_file(&big, cfg.big_size, 3);
    }
    make_file(&stallf, cfg.stall_size, 4);
    make_file(&crowd, cfg.crowd_size, 5);
    println!("data: {} ({:.1} s to write)", dd.display(), t_gen.elapsed().as_secs_f64());
    println!();

    let mut rows: Vec<Row> = Vec::new();
    let mut fatal: Vec<String> = Vec::new();
    let t_all = Instant::now();

    // Starts nginx or explains why not.
    let nginx_for = |workers: usize, cores: Option<&[usize]>| -> Result<Server, String> {
        match &nginx {
            None => Err("nginx not installed".into()),
            Some(p) => start_nginx(p, dd, workers, cores, nofile),
        }
    };

    // ---- small files ----
    if cfg.runs("small") {
        println!(
            "## small: 80-byte file, {} concurrent clients, new connection per transfer, {:.1} s",
            cfg.small_conc, cfg.small_secs
        );
        let opts = |secs: f64| LoadOpts {
            conc: cfg.small_conc,
            max_transfers: u64::MAX,
            window: Duration::from_secs_f64(secs),
            deadline: Duration::from_secs_f64(secs + 30.0),
            rcvbuf: None,
            latency: false,
            copy_reads: cfg.copy_reads,
        };
        let run = |s: &Server| -> Measured {
            let t = Target::new(s, "small.bin", 80);
            let _ = run_load(&t, &opts(0.3)); // warm-up
            std::thread::sleep(Duration::from_millis(200));
            let m = measure("small", s, &t, &opts(cfg.small_secs));
            println!("  {}", m.describe(s));
            m
        };
        let x = match start_xfer(&bin, &small, 1, sc) {
            Ok(s) => Some(run(&s)),
            Err(e) => {
                println!("  xfer: FAILED TO START: {e}");
                fatal.push(e);
                None
            }
        };
        let n = match nginx_for(1, sc) {
            Ok(s) => Some(run(&s)),
            Err(e) => {
                println!("  nginx: skipped: {e}");
                None
            }
        };
        let tps = |m: &Option<Measured>| m.as_ref().map(|m| format!("{:.0}/s{}", m.per_sec(), m.flags()));
        let cpu = |m: &Option<Measured>| m.as_ref().map(|m| format!("{:.1} µs{}", m.cpu_per_transfer_us(), m.flags()));
        let r_tps = x.as_ref().zip(n.as_ref()).map(|(x, n)| x.per_sec() / n.per_sec());
        let r_cpu = x.as_ref().zip(n.as_ref()).map(|(x, n)| x.cpu_per_transfer_us() / n.cpu_per_transfer_us());
        let x_exact = x.as_ref().map(|m| m.exact()).unwrap_or(false);
        rows.push(row(
            "small file: transfers/s",
            tps(&x).unwrap_or_else(|| na("failed")),
            tps(&n).unwrap_or_else(|| na("nginx missing")),
            r_tps,
            "≥ 1.0×",
            r_tps.map(|r| r >= 1.0 && x_exact),
        ));
        rows.push(row(
            "small file: server CPU per transfer",
            cpu(&x).unwrap_or_else(|| na("failed")),
            cpu(&n).unwrap_or_else(|| na("nginx missing")),
            r_cpu,
            "≤ 0.9×",
            r_cpu.map(|r| r <= 0.9 && x_exact),
        ));
        println!();
    }

    // ---- fan-out ----
    for (phase, threads) in [("fanout", 1usize), ("fanout2", 2)] {
        if !cfg.runs(phase) {
            continue;
        }
        let cores: Option<Vec<usize>> =
            if threads > 1 { cfg.pin.then(|| all_cores.clone()) } else { server_cores.clone() };
        println!(
            "## {phase}: {} MiB file, {} concurrent clients, repeated for {:.1} s; xfer {} vs nginx {} worker(s){}",
            cfg.fan_size / MIB,
            cfg.fan_conc,
            cfg.fan_secs,
            if threads > 1 { format!("--threads {threads}") } else { "1 reactor".into() },
            threads,
            if threads > 1 { "; servers and load unpinned over all cores" } else { "" }
        );
        if threads > 1 && pinned {
            pin_self(&all_cores);
        }
        let opts = |secs: f64| LoadOpts {
            conc: cfg.fan_conc,
            max_transfers: u64::MAX,
            window: Duration::from_secs_f64(secs),
            deadline: Duration::from_secs_f64(secs + 60.0),
            rcvbuf: None,
            latency: false,
            copy_reads: cfg.copy_reads,
        };
        let run = |s: &Server| -> Measured {
            let t = Target::new(s, "fan.bin", cfg.fan_size);
            let _ = run_load(&t, &opts(0.3));
            std::thread::sleep(Duration::from_millis(200));
            let m = measure(phase, s, &t, &opts(cfg.fan_secs));
            println!("  {}", m.describe(s));
            m
        };
        let x = match start_xfer(&bin, &fan, threads, cores.as_deref()) {
            Ok(s) => Some(run(&s)),
            Err(e) => {
                println!("  xfer: FAILED TO START: {e}");
                if threads == 1 {
                    fatal.push(e);
                }
                None
            }
        };
        let n = match nginx_for(threads, cores.as_deref()) {
            Ok(s) => Some(run(&s)),
            Err(e) => {
                println!("  nginx: skipped: {e}");
                None
            }
        };
        if threads > 1 && pinned {
            pin_self(&[1]);
        }
        let label = if threads > 1 { "fan-out (2 threads vs 2 workers)" } else { "fan-out (1 reactor vs 1 worker)" };
        let gbs = |m: &Option<Measured>| m.as_ref().map(|m| format!("{:.2} GB/s{}", m.gb_per_sec(), m.flags()));
        let cpu = |m: &Option<Measured>| m.as_ref().map(|m| format!("{:.0} µs{}", m.cpu_per_transfer_us(), m.flags()));
        let r_gbs = x.as_ref().zip(n.as_ref()).map(|(x, n)| x.gb_per_sec() / n.gb_per_sec());
        let r_cpu = x.as_ref().zip(n.as_ref()).map(|(x, n)| x.cpu_per_transfer_us() / n.cpu_per_transfer_us());
        let x_exact = x.as_ref().map(|m| m.exact()).unwrap_or(false);
        rows.push(row(
            &format!("{label}: aggregate"),
            gbs(&x).unwrap_or_else(|| na("failed")),
            gbs(&n).unwrap_or_else(|| na("nginx missing")),
            r_gbs,
            "≥ 1.5×",
            r_gbs.map(|r| r >= 1.5 && x_exact),
        ));
        rows.push(row(
            &format!("{label}: server CPU per transfer"),
            cpu(&x).unwrap_or_else(|| na("failed")),
            cpu(&n).unwrap_or_else(|| na("nginx missing")),
            r_cpu,
            "≤ 1.0×",
            r_cpu.map(|r| r <= 1.0 && x_exact),
        ));
        println!();
    }

    // ---- 1 GiB fetch and verify ----
    if cfg.runs("fetch") {
        let size = cfg.big_size;
        let mib = size / MIB;
        let gb = size as f64 / 1e9;
        // Outputs go to tmpfs: the disk of this VM is not under test, and how fast it takes
        // a GiB depends on whether its blocks were written before (0.65 s to 2.6 s for the
        // same fetch). The same on disk, with fsync on both sides, is reported as info.
        let mem = mem_dir(size);
        let disk_out = out_dir.join("big.out");
        let main_out = mem.as_ref().map(|d| d.path().join("big.out")).unwrap_or_else(|| disk_out.clone());
        let main_where = if mem.is_some() { "tmpfs" } else { "disk" };
        println!(
            "## fetch: {mib} MiB file, {} run(s) each, median; clients on core 1; outputs on {main_where} ({}) and disk ({})",
            cfg.big_reps,
            main_out.parent().unwrap().display(),
            out_dir.display()
        );
        let t_hash = Instant::now();
        let digest = blake3_file(&big);
        println!("  expected blake3 {digest} ({:.2} s in-process)", t_hash.elapsed().as_secs_f64());
        let xs = start_xfer(&bin, &big, 1, sc);
        if let Err(e) = &xs {
            println!("  xfer: FAILED TO START: {e}");
            fatal.push(e.clone());
        }
        let ns = if curl.is_some() { nginx_for(1, sc) } else { Err("curl not installed".into()) };
        if let Err(e) = &ns {
            println!("  curl/nginx: skipped: {e}");
        }
        let limit = Duration::from_secs(600);
        let mut t = FetchTimes::default();
        let mut errs: Vec<String> = Vec::new();
        let ours: Vec<i32> = xs.iter().chain(ns.iter()).flat_map(|s| s.cpu_pids.clone()).collect();
        let mut foreign_max = 0.0f64;
        for _ in 0..cfg.big_reps {
            wait_quiet(quiet_wait());
            let ((), f, _) = with_foreign(&ours, || {
                let mut keep = |r: Result<f64, String>, v: &mut Vec<f64>| match r {
                    Ok(d) => v.push(d),
                    Err(e) => errs.push(e),
                };
                if let Ok(s) = &xs {
                    let a = s.addr.to_string();
                    keep(xfer_fetch(&bin, &a, Some(&main_out), size, None, limit), &mut t.x_main);
                    if mem.is_some() {
                        keep(xfer_fetch(&bin, &a, Some(&disk_out), size, None, limit), &mut t.x_disk);
                    }
                    if pinned {
                        keep(xfer_fetch(&bin, &a, Some(&main_out), size, Some(&all_cores), limit), &mut t.x_main_all);
                    }
                    keep(xfer_fetch(&bin, &a, None, size, None, limit), &mut t.x_null);
                    if pinned {
                        keep(xfer_fetch(&bin, &a, None, size, Some(&all_cores), limit), &mut t.x_null_all);
                    }
                }
                if let (Ok(n), Some(curl)) = (&ns, &curl) {
                    let url = format!("http://{}/big.bin", n.addr);
                    if let Some(b3) = &b3sum {
                        keep(curl_b3sum(curl, b3, &url, &main_out, false, &digest, limit), &mut t.cb_main);
                        keep(curl_b3sum(curl, b3, &url, &disk_out, true, &digest, limit), &mut t.cbs_disk);
                    }
                    sync_disks();
                    let r = time_cmd(
                        Command::new(curl).args(["-sS", "-o", "/dev/null"]).arg(&url).stdout(Stdio::null()),
                        limit,
                    );
                    keep(r.map(|(d, _)| d.as_secs_f64()), &mut t.c_null);
                }
            });
            foreign_max = foreign_max.max(f);
        }
        if foreign_max > NOISY_PCT {
            println!("  NOISY: other processes used up to {foreign_max:.0}% of the machine during a fetch round");
        }
        for e in &errs {
            println!("  error: {e}");
        }
        let show = |v: &[f64]| v.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(", ");
        println!("  xfer fetch OUT ({main_where}; verify, fsync, rename): [{}] s", show(&t.x_main));
        println!("  xfer fetch OUT ({main_where}), client on all cores: [{}] s", show(&t.x_main_all));
        println!("  curl -o OUT + b3sum OUT ({main_where}): [{}] s", show(&t.cb_main));
        println!("  xfer fetch - > /dev/null (verify, no file): [{}] s", show(&t.x_null));
        println!("  xfer fetch - > /dev/null, client on all cores: [{}] s", show(&t.x_null_all));
        println!("  curl -o /dev/null: [{}] s", show(&t.c_null));
        println!("  xfer fetch OUT (disk; verify, fsync, rename): [{}] s", show(&t.x_disk));
        println!("  curl -o OUT + b3sum OUT + fsync OUT (disk): [{}] s", show(&t.cbs_disk));
        let noisy = if foreign_max > NOISY_PCT { " (noisy)" } else { "" };
        let m = |v: &mut Vec<f64>| median(v);
        let x_main_all = median(&mut t.x_main_all);
        let (x_main, cb_main, x_null, x_null_all, c_null, x_disk, cbs_disk) = (
            m(&mut t.x_main),
            m(&mut t.cb_main),
            m(&mut t.x_null),
            m(&mut t.x_null_all),
            m(&mut t.c_null),
            m(&mut t.x_disk),
            m(&mut t.cbs_disk),
        );
        let secs = |t: f64| if t.is_finite() { format!("{t:.3} s{noisy}") } else { na("failed or skipped") };
        let rate = |t: f64| {
            if t.is_finite() { format!("{t:.3} s ({:.2} GB/s){noisy}", gb / t) } else { na("failed or skipped") }
        };
        let both = |a: f64, b: f64| (a.is_finite() && b.is_finite()).then_some((a, b));
        let speedup = both(x_main, cb_main).map(|(x, c)| c / x);
        rows.push(row(
            &format!("{mib} MiB fetch+verify to {main_where} vs curl -o + b3sum"),
            secs(x_main),
            if b3sum.is_none() { na("b3sum missing") } else { secs(cb_main) },
            speedup,
            "≥ 1.5× faster",
            speedup.map(|r| r >= 1.5),
        ));
        if x_main_all.is_finite() {
            rows.push(row(
                &format!("(info) {mib} MiB fetch+verify to {main_where}, client unpinned, vs curl -o + b3sum"),
                secs(x_main_all),
                if b3sum.is_none() { na("b3sum missing") } else { secs(cb_main) },
                both(x_main_all, cb_main).map(|(x, c)| c / x),
                "(none)",
                None,
            ));
        }
        let rel = both(x_main, c_null).map(|(x, c)| x / c);
        rows.push(row(
            &format!("{mib} MiB fetch+verify to {main_where} vs curl -o /dev/null"),
            secs(x_main),
            secs(c_null),
            rel,
            "≤ 1.2× the time",
            rel.map(|r| r <= 1.2),
        ));
        rows.push(row(
            &format!("(info) {mib} MiB xfer fetch - >/dev/null vs curl -o /dev/null"),
            rate(x_null),
            rate(c_null),
            both(x_null, c_null).map(|(x, c)| x / c),
            "(none)",
            None,
        ));
        if x_null_all.is_finite() {
            rows.push(row(
                &format!("(info) {mib} MiB xfer fetch - >/dev/null, client unpinned, vs curl -o /dev/null"),
                rate(x_null_all),
                rate(c_null),
                both(x_null_all, c_null).map(|(x, c)| x / c),
                "(none)",
                None,
            ));
        }
        if mem.is_some() {
            rows.push(row(
                &format!("(info) {mib} MiB fetch+verify to disk vs curl -o + b3sum + fsync"),
                secs(x_disk),
                if b3sum.is_none() { na("b3sum missing") } else { secs(cbs_disk) },
                both(x_disk, cbs_disk).map(|(x, c)| c / x),
                "(none)",
                None,
            ));
        }
        drop(xs);
        drop(ns);
        let _ = std::fs::remove_file(&disk_out);
        let _ = std::fs::remove_file(&main_out);
        println!();
    }

    // ---- stalled clients ----
    if cfg.runs("stall") {
        let n = cfg.stall_clients;
        println!("## stall: {n} clients request a {} MiB file and never read (SO_RCVBUF 16 KiB)", cfg.stall_size / MIB);
        let run = |s: &Server, path: &str| -> Stall {
            let t = Target::new(s, path, cfg.stall_size);
            let _ = probe(s, cfg.stall_size, path);
            let k0 = tcp_counters();
            let r = stall_clients(s, &t, n);
            let kernel = tcp_delta(&k0);
            println!(
                "  {}: {} of {} mid-transfer; RSS {} → {} ({} per client) after {:.1} s{}",
                s.name,
                r.mid_transfer,
                r.clients,
                fmt_bytes(r.rss_before as f64),
                fmt_bytes(r.rss_after as f64),
                fmt_bytes(r.per_client()),
                r.settle.as_secs_f64(),
                if r.errors.is_empty() { String::new() } else { format!("; errors: {:?}", r.errors) }
            );
            println!(
                "      kernel TCP socket memory +{} ({} per client, both ends); kernel TCP counters: {kernel}",
                fmt_bytes(r.kmem as f64),
                fmt_bytes(r.kmem as f64 / n as f64)
            );
            r
        };
        let x = match start_xfer(&bin, &stallf, 1, sc) {
            Ok(s) => Some(run(&s, "")),
            Err(e) => {
                println!("  xfer: FAILED TO START: {e}");
                fatal.push(e);
                None
            }
        };
        std::thread::sleep(Duration::from_millis(500));
        let nn = match nginx_for(1, sc) {
            Ok(s) => Some(run(&s, "stall.bin")),
            Err(e) => {
                println!("  nginx: skipped: {e}");
                None
            }
        };
        let v = |r: &Option<Stall>| {
            r.as_ref().map(|r| {
                format!("{}{}", fmt_bytes(r.per_client()), if r.ok() { "" } else { " (not all stalled mid-transfer!)" })
            })
        };
        let ratio = x.as_ref().zip(nn.as_ref()).map(|(x, n)| x.per_client() / n.per_client());
        rows.push(row(
            &format!("RSS growth per stalled client ({n} clients)"),
            v(&x).unwrap_or_else(|| na("failed")),
            v(&nn).unwrap_or_else(|| na("nginx missing")),
            ratio,
            "≤ 512 B",
            x.as_ref().map(|x| x.ok() && x.per_client() <= 512.0),
        ));
        let km = |r: &Option<Stall>| r.as_ref().map(|r| fmt_bytes(r.kmem as f64 / r.clients.max(1) as f64));
        let kratio = x.as_ref().zip(nn.as_ref()).map(|(x, n)| x.kmem as f64 / (n.kmem as f64).max(1.0));
        rows.push(row(
            "(info) kernel TCP memory per stalled client (both ends)",
            km(&x).unwrap_or_else(|| na("failed")),
            km(&nn).unwrap_or_else(|| na("nginx missing")),
            kratio,
            "(none)",
            None,
        ));
        println!();
    }

    // ---- crowd ----
    if cfg.runs("crowd") {
        let n = cfg.crowd_clients;
        println!(
            "## crowd: {n} clients of a {} MiB file, all started at once; time from connect() to EOF",
            cfg.crowd_size / MIB
        );
        let opts = LoadOpts {
            conc: n,
            max_transfers: n as u64,
            window: Duration::from_secs(300),
            deadline: Duration::from_secs(180),
            rcvbuf: None,
            latency: true,
            copy_reads: cfg.copy_reads,
        };
        let run = |s: &Server, path: &str| -> (Measured, f64, f64) {
            let t = Target::new(s, path, cfg.crowd_size);
            let mut m = measure("crowd", s, &t, &opts);
            m.out.latencies.sort();
            let pct = |p: f64| {
                let l = &m.out.latencies;
                if l.is_empty() {
                    return f64::NAN;
                }
                let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
                l[i].as_secs_f64() * 1e3
            };
            let (p50, p99) = (pct(0.50), pct(0.99));
            let max = m.out.latencies.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN);
            println!("  {}\n      completion: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms", m.describe(s));
            (m, p50, p99)
        };
        let x = match start_xfer(&bin, &crowd, 1, sc) {
            Ok(s) => Some(run(&s, "")),
            Err(e) => {
                println!("  xfer: FAILED TO START: {e}");
                fatal.push(e);
                None
            }
        };
        std::thread::sleep(Duration::from_millis(500));
        let nn = match nginx_for(1, sc) {
            Ok(s) => Some(run(&s, "crowd.bin")),
            Err(e) => {
                println!("  nginx: skipped: {e}");
                None
            }
        };
        let exact = |r: &Option<(Measured, f64, f64)>| r.as_ref().map(|(m, _, _)| format!("{} of {n} exact", m.out.ok));
        let x_all = x.as_ref().map(|(m, _, _)| m.out.ok == n as u64 && m.exact());
        rows.push(row(
            &format!("{n} clients × {} MiB: all exact", cfg.crowd_size / MIB),
            exact(&x).unwrap_or_else(|| na("failed")),
            exact(&nn).unwrap_or_else(|| na("nginx missing")),
            None,
            "all",
            x_all,
        ));
        let lat = |r: &Option<(Measured, f64, f64)>| {
            r.as_ref().map(|(_, a, b)| format!("{a:.0} / {b:.0} ms (×{:.2})", b / a))
        };
        let x_ratio = x.as_ref().map(|(_, a, b)| b / a);
        rows.push(row(
            &format!("{n} clients × {} MiB: p50 / p99 completion", cfg.crowd_size / MIB),
            lat(&x).unwrap_or_else(|| na("failed")),
            lat(&nn).unwrap_or_else(|| na("nginx missing")),
            x_ratio,
            "xfer p99/p50 ≤ 2",
            x_ratio.map(|r| r <= 2.0),
        ));
        println!();
    }

    println!(
        "## results (ratio = xfer ÷ peer; in the `vs curl -o + b3sum` rows it is curl's time ÷ xfer's, a speed-up)"
    );
    println!();
    print_table(&rows);
    println!();
    println!("total bench time {:.1} s (scale {})", t_all.elapsed().as_secs_f64(), cfg.scale_label);
    if !fatal.is_empty() {
        eprintln!("xfer could not be benchmarked in some phases:");
        for e in &fatal {
            eprintln!("  {e}");
        }
        std::process::exit(1);
    }
}
