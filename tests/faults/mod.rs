//! Fault injection: the cases of RELIABILITY.md provoked against the real binary.
//!
//! Network faults go through the in-test proxy (`proxy.rs`: delay, stall, reset, cut or
//! flip a bit at byte N); hostile and slow clients are raw sockets (`raw.rs`); several
//! client hosts are several 127.x.y.z source addresses. Every test that runs a server ends
//! with `assert_healthy`: alive, no panic, descriptors back to the baseline, idle CPU.
//!
//! Environment knobs: `XFER_FAULTS_QUICK=1` runs the tiny-window transfer with 64 MiB
//! instead of 256 MiB; `XFER_SOAK_SEED` / `XFER_SOAK_N` steer the randomized soak (`soak.rs`).

mod proxy;
mod raw;
mod soak;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::encoding::{self, Response, Status};
use crate::util::*;
use proxy::{Action, Plan, Proxy};
use raw::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;

/// Starts a server and returns it with its descriptor count at rest.
fn start(file: &Path, extra: &[&str]) -> (Server, usize) {
    let s = Server::start(file, extra);
    let base = settled_fds(&s);
    if std::env::var_os("XFER_FD_DEBUG").is_some() {
        eprintln!("baseline {base} for {}: {}", s.pid(), fd_list(s.pid()));
    }
    (s, base)
}

/// The server's descriptor count at rest. Its first line can come before the event loop has
/// made its epoll and signal descriptors, so one junk connection is sent first: when the
/// server has closed it, the loop is running.
fn settled_fds(server: &Server) -> usize {
    if let Ok(mut s) = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)) {
        let _ = s.write_all(b"\0");
        let _ = read_until_closed(&mut s, Duration::from_secs(5));
    }
    server.fd_count()
}

/// `fd -> target` for every descriptor of `pid` (for leak reports).
fn fd_list(pid: u32) -> String {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
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

/// `assert_healthy`, printing the descriptor table first if it has not come back.
fn healthy(server: &mut Server, base: usize) {
    if server.wait_fds_at_most(base, 10) > base {
        eprintln!("fds of {} above baseline {base}: {}", server.pid(), fd_list(server.pid()));
    }
    server.assert_healthy(base);
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn digest(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Writes a deterministic file of `size` bytes in 1 MiB pieces (large files never sit in
/// memory whole) and returns its path and BLAKE3 digest.
fn big_file(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, [u8; 32]) {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let mut h = blake3::Hasher::new();
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(MIB) as usize;
        let piece = random_bytes(n, seed.wrapping_mul(1_000_003).wrapping_add(i));
        h.update(&piece);
        f.write_all(&piece).expect("write");
        left -= n as u64;
        i += 1;
    }
    f.flush().unwrap();
    (path, *h.finalize().as_bytes())
}

/// The server's log line for the client at local port `port`, if any yet.
fn log_line(server: &Server, port: u16) -> Option<String> {
    let needle = format!(":{port} ");
    server.stderr().lines().find(|l| l.contains(&needle)).map(str::to_string)
}

/// Waits up to `secs` for the log line of the client at `port`.
fn wait_log(server: &Server, port: u16, secs: u64) -> Option<String> {
    let needle = format!(":{port} ");
    server.wait_stderr(secs, |e| e.lines().any(|l| l.contains(&needle)));
    log_line(server, port)
}

/// Retries `xfer fetch` for up to `secs` until it succeeds; returns the last output.
fn fetch_until_ok(target: &str, out: &Path, extra: &[&str], secs: u64) -> Output {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = fetch(target, out, extra);
        if r.status.success() || Instant::now() >= end {
            return r;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts a fetch failed with one of `codes` and left nothing but `left` in `dir`.
fn assert_failed_clean(res: &Output, codes: &[i32], dir: &Path, left: &[&str]) {
    assert!(code(res).is_some_and(|c| codes.contains(&c)), "expected exit code in {codes:?}\n{}", describe(res));
    let names = dir_names(dir);
    assert_eq!(names, left, "output directory after a failed fetch ({})", describe(res));
}

/// Reads (keeping the bytes) until the peer closes or `limit` passes.
/// Returns the bytes, whether it ended by RST, and when it ended (None: still open).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool, Option<Duration>) {
    let since = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            return (out, false, None);
        }
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => return (out, false, Some(since.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (out, true, Some(since.elapsed())),
        }
    }
}

/// xorshift64*: reproducible randomness without a rand crate.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Sends SIGCONT on drop, so a failing test never leaves a stopped server behind.
struct ContOnDrop(i32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// A one-connection fake server: reads the request, writes `reply`, then holds the
/// connection until `hold` passes or the returned sender is dropped.
fn fake_server(reply: Vec<u8>, hold: Duration) -> (SocketAddr, mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut req = [0u8; encoding::REQUEST_LEN];
        let _ = s.read_exact(&mut req);
        let _ = s.write_all(&reply);
        let _ = rx.recv_timeout(hold);
    });
    (addr, tx)
}

// ---------------------------------------------------------------------------------------
// Reactor and accept (RELIABILITY 1–7)
// ---------------------------------------------------------------------------------------

/// Case 1: Out of descriptors on accept: no busy loop, the running transfer goes on, and queued
/// clients are served again soon after descriptors free up — without a new connection
/// arriving to wake the listener (edge-triggered readiness won't repeat itself).
#[test]
fn emfile_backs_off_keeps_serving_and_recovers() {
    let dir = tempdir();
    let size = 8 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 1);
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=64:64", "--", bin(), "serve"]).arg(&path).args([
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--max-clients",
        "1000",
        "--max-per-ip",
        "1000",
    ]);
    let mut server = Server::spawn(&mut cmd);
    let base = settled_fds(&server);
    let addr = server.addr;

    // The in-flight transfer: ~1.6 MB/s, so it runs through the whole episode.
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = progress.clone();
    let inflight = thread::spawn(move || {
        let mut s = connect(addr, None, Some(64 * 1024)).expect("connect in-flight");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&raw_request(None)).unwrap();
        let r = read_response(&mut s);
        let d = drain(&mut s, Pace::bursts(16 * 1024, 32 * 1024, Duration::from_millis(20)), Some(&p2), false);
        (r, d)
    });
    let t = Instant::now();
    while progress.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(progress.load(Ordering::SeqCst) > 0, "in-flight transfer never started");

    // 200 clients that send a request and never read: each one the server accepts holds
    // a descriptor (its body does not fit the 4 KiB window), the rest wait in the backlog.
    let mut holders = Vec::new();
    for _ in 0..200 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        if sock.connect_timeout(&addr.into(), Duration::from_secs(2)).is_err() {
            continue;
        }
        let mut s: TcpStream = sock.into();
        let _ = s.write_all(&raw_request(None));
        holders.push(s);
    }
    assert!(holders.len() >= 150, "only {} of 200 holders could connect", holders.len());
    thread::sleep(Duration::from_secs(1));
    assert!(server.is_alive(), "server died out of fds; stderr:\n{}", server.stderr());
    let held_fds = server.fd_count();

    // While out of descriptors: no spinning, and the in-flight transfer still moves.
    let p0 = progress.load(Ordering::SeqCst);
    let c0 = server.cpu_ticks();
    thread::sleep(Duration::from_secs(1));
    let used = server.cpu_ticks() - c0;
    let moved = progress.load(Ordering::SeqCst) - p0;
    assert!(
        used <= 25,
        "server burnt {used} ticks (of 100) in 1 s while out of fds ({held_fds} open): spinning on accept?\nstderr:\n{}",
        server.stderr()
    );
    assert!(moved > 0 || p0 >= size, "in-flight transfer made no progress while the server was out of fds");

    // Release the answered holders round by round; the queued ones must then be answered
    // without any new connection arriving.
    let mut waiting = holders;
    let mut rounds = 0;
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued_at_start = waiting.iter().filter(|s| !readable_now(s)).count();
    loop {
        let (answered, still): (Vec<TcpStream>, Vec<TcpStream>) = waiting.into_iter().partition(readable_now);
        if still.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "holders still queued after 30 s");
        if answered.is_empty() {
            panic!(
                "{} clients still unanswered in the backlog after round {rounds}: the server does not \
                 accept again after descriptors are freed (EMFILE recovery)\nstderr tail:\n{}",
                still.len(),
                tail(&server.stderr(), 20)
            );
        }
        rounds += 1;
        drop(answered); // unread data: RST, the server frees those clients
        let released = Instant::now();
        let mut got = false;
        while released.elapsed() < Duration::from_secs(3) {
            if still.iter().any(readable_now) {
                got = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if got {
            worst = worst.max(released.elapsed());
        }
        waiting = still;
    }
    eprintln!(
        "emfile: {queued_at_start} of 200 clients queued behind EMFILE, drained in {rounds} rounds, \
         worst wait after freeing {worst:?}, fds while held {held_fds}"
    );
    assert!(worst <= Duration::from_millis(2500), "queued clients waited {worst:?} after fds were freed");

    let out = dir.path().join("out.bin");
    let r = fetch_until_ok(&server.target(), &out, &[], 5);
    assert!(r.status.success(), "fetch after releasing the flood failed:\n{}", describe(&r));
    assert_eq!(digest(&std::fs::read(&out).unwrap()), dig);

    let (resp, d) = inflight.join().unwrap();
    assert_eq!(resp.ok(), Some(Response::Ok { size, digest: dig }));
    assert!(d.is_exact(size, &dig), "in-flight transfer corrupted: {} bytes, err {:?}", d.bytes, d.err);
    healthy(&mut server, base);
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Case 2: 500 clients connect at once (from 100 source addresses, 5 each, under the default
/// per-address cap): every one gets the exact file.
#[test]
fn burst_of_500_clients_all_served() {
    let dir = tempdir();
    let data = random_bytes(20_000, 2);
    let path = write_file(dir.path(), "f.bin", &data);
    let (mut server, base) = start(&path, &[]);
    let mut expected = encoding::encode_ok(data.len() as u64, &digest(&data)).to_vec();
    expected.extend_from_slice(&data);
    let expected = Arc::new(expected);
    let addr = server.addr;
    let n = 500;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let expected = expected.clone();
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || -> Result<(), String> {
                    let src = ip(127, 0, 1, 1 + (i % 100) as u8);
                    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .map_err(|e| e.to_string())?;
                    sock.bind(&SocketAddr::new(src, 0).into()).map_err(|e| e.to_string())?;
                    barrier.wait();
                    sock.connect_timeout(&addr.into(), Duration::from_secs(20)).map_err(|e| format!("connect: {e}"))?;
                    let mut s: TcpStream = sock.into();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    s.write_all(&raw_request(None)).map_err(|e| format!("send: {e}"))?;
                    let mut v = Vec::new();
                    s.read_to_end(&mut v).map_err(|e| format!("read after {} bytes: {e}", v.len()))?;
                    if v == *expected {
                        Ok(())
                    } else {
                        Err(format!("got {} bytes, first 64: {:02x?}", v.len(), &v[..v.len().min(64)]))
                    }
                })
                .expect("spawn client")
        })
        .collect();
    let results: Vec<Result<(), String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} clients did not get the exact file; first: {:?}\nserver stderr tail:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        tail(&server.stderr(), 10)
    );
    healthy(&mut server, base);
}

/// Case 3: Connections reset while still in the accept queue (server stopped): accepting goes
/// on afterwards.
#[test]
fn connections_aborted_before_accept() {
    let dir = tempdir();
    let data = random_bytes(100_000, 3);
    let path = write_file(dir.path(), "f.bin", &data);
    let (mut server, base) = start(&path, &[]);
    let addr = server.addr;
    server.signal(libc::SIGSTOP);
    let _cont = ContOnDrop(server.pid() as i32);
    // Wait until the kernel has really stopped it.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('T')) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let mut aborted = 0;
    for i in 0..100 {
        let Ok(mut s) = connect(addr, None, None) else { continue };
        if i % 2 == 0 {
            let _ = s.write_all(&raw_request(None));
        }
        if i % 5 == 4 {
            drop(s); // plain close
        } else {
            reset(s);
            aborted += 1;
        }
    }
    assert!(aborted >= 50, "could not queue enough aborted connections");
    server.signal(libc::SIGCONT);
    let out = dir.path().join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_fetched(&out, &r, &data);
    let log = server.stderr();
    eprintln!(
        "aborted before accept: {aborted} reset + {} closed; server logged {} 'closed by peer', {} 'error', {} accept messages",
        100 - aborted,
        log.matches("closed by peer").count(),
        log.matches(" error (").count(),
        log.matches("accept:").count()
    );
    healthy(&mut server, base);
}

/// Case 5: A 256 MiB file to a client with a 4 KiB receive buffer that reads in bursts: every
/// short write is resumed, the bytes arrive exact. (`XFER_FAULTS_QUICK=1`: 64 MiB.)
#[test]
fn tiny_window_bursty_reader_gets_exact_bytes() {
    let quick = std::env::var_os("XFER_FAULTS_QUICK").is_some();
    let size = if quick { 64 * MIB } else { 256 * MIB };
    let dir = tempdir();
    let (path, dig) = big_file(dir.path(), "big.bin", size, 5);
    let (mut server, base) = start(&path, &[]);
    let t = Instant::now();
    let mut s = connect(server.addr, None, Some(4096)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&raw_request(None)).unwrap();
    let r = read_response(&mut s).expect("header");
    assert_eq!(r, Response::Ok { size, digest: dig });
    // Case 18 on the side: while serving, the file is not mapped (a truncation would SIGBUS).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap_or_default();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!maps.lines().any(|l| l.contains(&name)), "the served file is mmapped:\n{maps}");
    let d = drain(&mut s, Pace::bursts(4096, 256 * 1024, Duration::from_millis(5)), None, false);
    eprintln!("tiny window: {} MiB in {:?}", size / MIB, t.elapsed());
    assert!(d.is_exact(size, &dig), "got {} of {size} bytes, err {:?}, digest ok: {}", d.bytes, d.err, d.digest == dig);
    healthy(&mut server, base);
}

/// Case 6: A peer that resets mid-transfer (and one that resets right after its request) is
/// closed; the clients around it are untouched.
#[test]
fn peer_reset_mid_transfer_others_untouched() {
    let dir = tempdir();
    let size = 16 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 6);
    let (mut server, base) = start(&path, &[]);
    let addr = server.addr;
    let others: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                fetch_raw(
                    addr,
                    None,
                    Some(64 * 1024),
                    &raw_request(None),
                    Pace::bursts(64 * 1024, 256 * 1024, Duration::from_millis(10)),
                    false,
                )
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    // Victim 1: reads 1 MiB, then resets.
    let mut v = connect(addr, None, Some(64 * 1024)).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let vport = port(&v);
    v.write_all(&raw_request(None)).unwrap();
    assert!(matches!(read_response(&mut v), Ok(Response::Ok { .. })));
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < MIB as usize {
        let n = v.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    reset(v);
    // Victim 2: resets right after its request.
    let mut v2 = connect(addr, None, None).unwrap();
    v2.write_all(&raw_request(None)).unwrap();
    reset(v2);
    // A normal fetch alongside.
    let out = dir.path().join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert!(r.status.success(), "{}", describe(&r));
    assert_eq!(digest(&std::fs::read(&out).unwrap()), dig);
    for h in others {
        let (resp, d) = h.join().unwrap().expect("other client");
        assert_eq!(resp, Response::Ok { size, digest: dig });
        assert!(d.is_exact(size, &dig), "a bystander got {} bytes, err {:?}", d.bytes, d.err);
    }
    // Case 7 on the side: SIGPIPE stays ignored (writev/sendfile have no MSG_NOSIGNAL).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap_or_default();
    let ign = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(str::trim).unwrap_or("0");
    let mask = u64::from_str_radix(ign, 16).unwrap_or(0);
    assert!(mask & (1 << (libc::SIGPIPE - 1)) != 0, "SIGPIPE is not ignored (SigIgn {ign})");
    let line = wait_log(&server, vport, 5);
    let line = line.unwrap_or_else(|| panic!("no log line for the reset client :{vport}\n{}", server.stderr()));
    assert!(!line.contains("complete"), "reset client logged as complete: {line}");
    healthy(&mut server, base);
}

// ---------------------------------------------------------------------------------------
// Slow and hostile clients (RELIABILITY 8–13)
// ---------------------------------------------------------------------------------------

/// Case 8: A client that never reads is closed after `--send-timeout`, and logged "timed out";
/// meanwhile another client runs at full speed.
#[test]
fn never_reading_client_times_out_others_keep_speed() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 8);
    let (mut server, base) = start(&path, &["--send-timeout", "1"]);
    let addr = server.addr;
    let timed = || {
        let t = Instant::now();
        let (r, d) = fetch_raw(addr, None, None, &raw_request(None), Pace::fast(), false).expect("raw fetch");
        assert_eq!(r, Response::Ok { size, digest: dig });
        assert!(d.is_exact(size, &dig));
        t.elapsed()
    };
    let _ = timed(); // warm the page cache
    let alone = timed();

    let mut stuck = stalled_client(addr, None);
    let sport = port(&stuck);
    let since = Instant::now();
    let beside = timed();
    let out = dir.path().join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert!(r.status.success(), "{}", describe(&r));
    eprintln!("send timeout: {size} bytes alone {alone:?}, beside a stuck client {beside:?}");
    assert!(
        beside <= alone * 5 + Duration::from_millis(500),
        "a stuck client slowed another one down: {beside:?} vs {alone:?} alone"
    );
    let line = wait_log(&server, sport, 6);
    let after = since.elapsed();
    let line = line
        .unwrap_or_else(|| panic!("no log line for the stuck client :{sport} after {after:?}\n{}", server.stderr()));
    assert!(line.contains("timed out"), "stuck client logged as: {line}");
    assert!(after >= Duration::from_millis(800), "stuck client cut after only {after:?} (timeout is 1 s)");
    match wait_closed(&mut stuck, Instant::now(), Duration::from_secs(5)) {
        Closed::After { bytes, .. } => assert!((bytes as u64) < size),
        other => panic!("timed-out client's connection still open: {other:?}"),
    }
    healthy(&mut server, base);
}

/// Case 9: A request dribbled one byte per 200 ms is cut by the total request deadline
/// (`--request-timeout 1`), long before it completes; a silent client too.
#[test]
fn dribbled_request_hits_total_deadline() {
    let dir = tempdir();
    let data = random_bytes(1000, 9);
    let path = write_file(dir.path(), "f.bin", &data);
    let (mut server, base) = start(&path, &["--request-timeout", "1"]);
    let req = raw_request(None);
    let mut silent = connect(server.addr, None, None).unwrap();
    let silent_since = Instant::now();
    let mut s = connect(server.addr, None, None).unwrap();
    s.set_nodelay(true).unwrap();
    let since = Instant::now();
    let mut sent = 0;
    let mut closed = None;
    let mut buf = [0u8; 512];
    'outer: while sent < req.len() && since.elapsed() < Duration::from_secs(6) {
        match s.write(&req[sent..sent + 1]) {
            Ok(1) => sent += 1,
            _ => {
                closed = Some(since.elapsed());
                break;
            }
        }
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_millis(200) {
            s.set_read_timeout(Some(Duration::from_millis(200) - tick.elapsed().min(Duration::from_millis(199))))
                .unwrap();
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = Some(since.elapsed());
                    break 'outer;
                }
                Ok(_) => {} // a refusal on the way out is fine; keep reading to the close
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => {
                    closed = Some(since.elapsed());
                    break 'outer;
                }
            }
        }
    }
    let closed =
        closed.unwrap_or_else(|| panic!("dribbling client never closed; sent {sent} bytes in {:?}", since.elapsed()));
    assert!(sent < req.len(), "the whole request got through");
    assert!(closed <= Duration::from_secs(3), "dribbling client closed only after {closed:?} ({sent} bytes sent)");
    assert!(closed >= Duration::from_millis(500), "dribbling client closed after only {closed:?}");
    match wait_closed(&mut silent, silent_since, Duration::from_secs(4)) {
        Closed::After { elapsed, .. } => {
            assert!(elapsed <= Duration::from_secs(3), "silent client closed after {elapsed:?}")
        }
        other => panic!("silent client still open: {other:?}"),
    }
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &data);
    healthy(&mut server, base);
}

/// Case 10: `--max-clients 4`: with four clients in, a fifth is refused "busy" at once (the
/// fetch exits 6), and is served once the others leave.
#[test]
fn max_clients_refuses_busy_fast() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 10);
    let (mut server, base) = start(&path, &["--max-clients", "4"]);
    let addr = server.addr;
    let stuck: Vec<TcpStream> = (0..4).map(|_| stalled_client(addr, None)).collect();

    let t = Instant::now();
    let mut s = connect(addr, None, None).unwrap();
    let _ = s.write_all(&raw_request(None));
    let (bytes, _, ended) = read_until_closed(&mut s, Duration::from_secs(3));
    let ended =
        ended.unwrap_or_else(|| panic!("5th client neither refused nor closed within 3 s ({} bytes)", bytes.len()));
    assert!(ended <= Duration::from_millis(1500), "5th client refused only after {:?}", t.elapsed());
    if !bytes.is_empty() {
        match encoding::decode_response(&bytes) {
            Ok(encoding::Decoded::Done(Response::Refused { status, .. }, _)) => assert_eq!(status, Status::Busy),
            other => panic!("5th client expected busy, got {other:?}"),
        }
    } else {
        eprintln!("max-clients: 5th raw client was closed without a busy header");
    }

    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(err_text(&r).to_lowercase().contains("busy"), "no 'busy' in: {}", err_text(&r));

    drop(stuck);
    let r = fetch_until_ok(&server.target(), &out, &[], 5);
    assert!(r.status.success(), "fetch after the stuck clients left: {}", describe(&r));
    assert_eq!(digest(&std::fs::read(&out).unwrap()), dig);
    healthy(&mut server, base);
}

/// Case 11: `--max-per-ip 2`: a third connection from 127.0.0.1 is refused busy, while a client
/// from 127.0.0.2 is served.
#[test]
fn max_per_ip_refuses_busy_other_address_served() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 11);
    let (mut server, base) = start(&path, &["--max-per-ip", "2"]);
    let addr = server.addr;
    let stuck: Vec<TcpStream> = (0..2).map(|_| stalled_client(addr, Some(ip(127, 0, 0, 1)))).collect();

    let mut s = connect(addr, Some(ip(127, 0, 0, 1)), None).unwrap();
    let _ = s.write_all(&raw_request(None));
    let (bytes, _, ended) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(ended.is_some(), "3rd client from 127.0.0.1 neither refused nor closed within 3 s");
    if !bytes.is_empty() {
        match encoding::decode_response(&bytes) {
            Ok(encoding::Decoded::Done(Response::Refused { status, .. }, _)) => assert_eq!(status, Status::Busy),
            other => panic!("3rd client expected busy, got {other:?}"),
        }
    }
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(err_text(&r).to_lowercase().contains("busy"), "no 'busy' in: {}", err_text(&r));

    let (resp, d) = fetch_raw(addr, Some(ip(127, 0, 0, 2)), None, &raw_request(None), Pace::fast(), false)
        .expect("client from 127.0.0.2");
    assert_eq!(resp, Response::Ok { size, digest: dig }, "client from another address was not served");
    assert!(d.is_exact(size, &dig));
    drop(stuck);
    let r = fetch_until_ok(&server.target(), &out, &[], 5);
    assert!(r.status.success(), "{}", describe(&r));
    healthy(&mut server, base);
}

/// Case 12: Junk instead of a request is closed without an answer, at once; the right magic
/// with a bad version or bad bits gets a refusal header.
#[test]
fn junk_and_malformed_requests() {
    let dir = tempdir();
    let data = random_bytes(5000, 12);
    let path = write_file(dir.path(), "f.bin", &data);
    let (mut server, base) = start(&path, &[]);
    let addr = server.addr;

    let mut junks: Vec<(&str, Vec<u8>)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        ("tls", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]),
        ("near-magic", [&[0xF0u8, b'X', b'F', b'R'][..], &[0u8; 44][..]].concat()),
        ("nul", vec![0u8; 48]),
        ("1 MiB", random_bytes(MIB as usize, 99)),
    ];
    for seed in 0..3 {
        let mut j = random_bytes(48 + seed as usize * 100, 120 + seed);
        j[0] = 0x41 + seed as u8;
        junks.push(("random", j));
    }
    for (what, junk) in &junks {
        let mut s = connect(addr, None, None).unwrap();
        let t = Instant::now();
        let _ = s.write_all(junk); // the server may close (and reset) mid-way
        let (bytes, _, ended) = read_until_closed(&mut s, Duration::from_secs(4));
        assert!(bytes.is_empty(), "{what}: junk got an answer: {:02x?}", &bytes[..bytes.len().min(64)]);
        assert!(
            ended.is_some_and(|_| t.elapsed() <= Duration::from_secs(2)),
            "{what}: junk connection not closed promptly ({:?})",
            t.elapsed()
        );
    }

    // A request cut short by the client's EOF: closed, nothing leaks.
    let mut s = connect(addr, None, None).unwrap();
    s.write_all(&raw_request(None)[..20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (_, _, ended) = read_until_closed(&mut s, Duration::from_secs(4));
    assert!(ended.is_some(), "half a request then EOF: connection not closed");

    let good = raw_request(None);
    let cases: [(&str, usize, u8, Status); 5] = [
        ("version 2", 4, 2, Status::UnsupportedVersion),
        ("version 0", 4, 0, Status::UnsupportedVersion),
        ("unknown flag", 5, 0x80, Status::BadRequest),
        ("reserved byte", 6, 1, Status::BadRequest),
        ("token bytes without the flag", 30, 7, Status::BadRequest),
    ];
    for (what, at, val, want) in cases {
        let mut req = good;
        req[at] = val;
        let (status, reason) = expect_refusal(addr, None, &req);
        assert_eq!(status, want, "{what}: reason {reason:?}");
        assert!(!reason.is_empty());
    }
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &data);
    healthy(&mut server, base);
}

/// Case 13: After the last byte the server half-closes and drains: a client that sent junk after
/// its request and reads slowly still gets every byte and a clean EOF, not an RST.
#[test]
fn no_reset_after_last_byte_with_unread_input() {
    let dir = tempdir();
    let size = 2 * MIB;
    let (path, dig) = big_file(dir.path(), "f.bin", size, 13);
    let (mut server, base) = start(&path, &[]);
    for round in 0..2 {
        let mut s = connect(server.addr, None, Some(16 * 1024)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut msg = raw_request(None).to_vec();
        msg.extend_from_slice(&random_bytes(4096 + round * 30_000, 130 + round as u64));
        s.write_all(&msg).unwrap();
        let r = read_response(&mut s).expect("header");
        assert_eq!(r, Response::Ok { size, digest: dig });
        // Slow, with long pauses near the end so the server finishes writing while the
        // tail is still queued in its socket.
        let mut h = blake3::Hasher::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 4096];
        let marks = [512 * 1024u64, 128 * 1024, 32 * 1024, 8 * 1024];
        let mut next_mark = 0;
        let err = loop {
            if next_mark < marks.len() && size - got <= marks[next_mark] {
                thread::sleep(Duration::from_millis(300));
                next_mark += 1;
            }
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    h.update(&buf[..n]);
                    got += n as u64;
                    if got % (64 * 1024) < 4096 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                Err(e) => break Some(e),
            }
        };
        assert!(err.is_none(), "round {round}: connection ended with {err:?} after {got} of {size} bytes");
        assert_eq!(got, size, "round {round}: short body");
        assert_eq!(*h.finalize().as_bytes(), dig);
    }
    healthy(&mut server, base);
}

// ---------------------------------------------------------------------------------------
// The served file (RELIABILITY 14–16)
// ---------------------------------------------------------------------------------------

/// Case 14: Edge sizes arrive exact, and the header carries the right size and digest.
#[test]
fn edge_sizes_exact() {
    let dir = tempdir();
    let sizes = [0usize, 1, 4095, 4096, 4097, 65535, 65536, 65537, 7919, 104_729, 1_299_709];
    for (i, &n) in sizes.iter().enumerate() {
        let data = random_bytes(n, 140 + i as u64);
        let path = write_file(dir.path(), &format!("in-{n}.bin"), &data);
        let (mut server, base) = start(&path, &[]);
        let out = dir.path().join(format!("out-{n}.bin"));
        let r = fetch(&server.target(), &out, &[]);
        assert_fetched(&out, &r, &data);
        let (resp, d) = fetch_raw(server.addr, None, None, &raw_request(None), Pace::fast(), true).unwrap();
        assert_eq!(resp, Response::Ok { size: n as u64, digest: digest(&data) }, "size {n}");
        assert!(d.err.is_none() && d.data == data, "size {n}: raw body differs");
        healthy(&mut server, base);
    }
}

/// Case 14: A sparse file over 4 GiB: offsets past 2^31 and 2^32 and past one sendfile call's
/// 0x7ffff000 limit. A raw client hashes the stream without storing it and checks marker
/// bytes at 2^31, 2^32 and the end.
#[test]
fn sparse_file_over_4gib() {
    let dir = tempdir();
    let size: u64 = (4 << 30) + 4097;
    let path = dir.path().join("sparse.bin");
    let markers: Vec<(u64, Vec<u8>)> = vec![
        (0, b"start".to_vec()),
        (0x7fff_f000 - 3, b"SENDFILE-MAX".to_vec()),
        ((1 << 31) - 5, b"two-to-the-31".to_vec()),
        ((1 << 32) - 7, b"two-to-the-32!".to_vec()),
        (size - 9, b"the-end!!".to_vec()),
    ];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in &markers {
            f.write_all_at(bytes, *at).unwrap();
        }
    }
    // The expected digest, computed from the layout (not from the file) while the server starts.
    let mk = markers.clone();
    let expect = thread::spawn(move || {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut pos = 0u64;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            for (at, bytes) in &mk {
                for (k, b) in bytes.iter().enumerate() {
                    let p = at + k as u64;
                    if p >= pos && p < pos + n as u64 {
                        buf[(p - pos) as usize] = *b;
                    }
                }
            }
            h.update(&buf[..n]);
            pos += n as u64;
        }
        *h.finalize().as_bytes()
    });
    let t = Instant::now();
    let (mut server, base) = start(&path, &[]);
    let mut s = connect(server.addr, None, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&raw_request(None)).unwrap();
    let Response::Ok { size: hsize, digest: hdig } = read_response(&mut s).expect("header") else { panic!("refused") };
    assert_eq!(hsize, size, "header size");
    let mut seen = vec![Vec::new(); markers.len()];
    let d = drain_with(&mut s, Pace { read: 1 << 20, burst: 0, pause: Duration::ZERO }, None, false, |off, chunk| {
        for (i, (at, bytes)) in markers.iter().enumerate() {
            for k in 0..bytes.len() as u64 {
                let p = at + k;
                if p >= off && p < off + chunk.len() as u64 {
                    seen[i].push(chunk[(p - off) as usize]);
                }
            }
        }
    });
    let expected = expect.join().unwrap();
    eprintln!("sparse 4 GiB: served and checked in {:?}", t.elapsed());
    assert!(d.err.is_none(), "stream ended with {:?} after {} bytes", d.err, d.bytes);
    assert_eq!(d.bytes, size, "body length");
    for (i, (at, bytes)) in markers.iter().enumerate() {
        assert_eq!(&seen[i], bytes, "marker at {at:#x}");
    }
    assert_eq!(d.digest, hdig, "stream does not hash to the header digest");
    assert_eq!(hdig, expected, "header digest is not the file's digest");
    healthy(&mut server, base);
}

/// Case 15: The file is truncated while served (ahead of the client, and to zero): the client
/// does not get a full-size, digest-good transfer and is not left hanging; the server logs
/// it as not complete, stays alive and idle (a short sendfile is not "again").
#[test]
fn file_truncated_while_served() {
    let dir = tempdir();
    let size = 32 * MIB;
    for (round, cut_to) in [(0u64, 12 * MIB), (1, 0)] {
        let (path, dig) = big_file(dir.path(), &format!("big-{round}.bin"), size, 15);
        let (mut server, base) = start(&path, &[]);
        let mut s = connect(server.addr, None, Some(64 * 1024)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let cport = port(&s);
        s.write_all(&raw_request(None)).unwrap();
        let resp = read_response(&mut s).expect("header");
        assert_eq!(resp, Response::Ok { size, digest: dig });
        let mut h = blake3::Hasher::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut truncated = false;
        let t_end = Instant::now() + Duration::from_secs(15);
        let mut hung = false;
        let err = loop {
            if !truncated && got >= 4 * MIB {
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut_to).unwrap();
                truncated = true;
            }
            if Instant::now() > t_end {
                hung = true;
                break None;
            }
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    h.update(&buf[..n]);
                    got += n as u64;
                    if !truncated {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    hung = true;
                    break Some(e);
                }
                Err(e) => break Some(e),
            }
        };
        assert!(!hung, "truncate to {cut_to}: client left hanging after {got} bytes (server stuck?)");
        let good = err.is_none() && got == size && *h.finalize().as_bytes() == dig;
        assert!(!good, "truncate to {cut_to}: a full, digest-good transfer of a file truncated mid-way");
        let line =
            wait_log(&server, cport, 5).unwrap_or_else(|| panic!("no log line for :{cport}\n{}", server.stderr()));
        assert!(!line.contains("complete"), "truncated transfer logged as complete: {line}");
        eprintln!("truncate to {cut_to}: client got {got} bytes, err {err:?}; server: {line}");
        healthy(&mut server, base);
    }
}

/// Case 16: The file is overwritten in place while served. Through a slow link with most of the
/// body still unsent (small buffers toward the server), the server must notice and cut the
/// client ("cut (file changed)"); the fetch fails and leaves nothing. Through a slow link
/// with big buffers (much of the body already in flight), the fetch must still fail its
/// digest check rather than keep mixed bytes.
#[test]
fn file_overwritten_in_place_while_served() {
    let dir = tempdir();
    let size = 16 * MIB;
    for (round, rcvbuf) in [(0u64, Some(64 * 1024)), (1, None)] {
        let (path, _dig) = big_file(dir.path(), &format!("big-{round}.bin"), size, 16 + round);
        let (mut server, base) = start(&path, &[]);
        let mut plan = Plan::slow_down(64 * 1024, Duration::from_millis(10));
        plan.server_rcvbuf = rcvbuf;
        let proxy = Proxy::start(server.addr, plan);
        let outdir = dir.path().join(format!("out-{round}"));
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("out.bin");
        let target = proxy.target();
        let o2 = out.clone();
        let h = thread::spawn(move || fetch(&target, &o2, &[]));
        let t = Instant::now();
        while proxy.down_bytes() < MIB && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(proxy.down_bytes() >= MIB, "transfer did not start");
        let at_change = proxy.down_bytes();
        let changed_at = Instant::now();
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for i in 0..(size / MIB) {
                f.write_all(&random_bytes(MIB as usize, 7000 + i)).unwrap();
            }
            f.sync_all().unwrap();
        }
        let r = h.join().unwrap();
        let ended = changed_at.elapsed();
        let sport = proxy.server_ports().first().copied().unwrap_or(0);
        let line = wait_log(&server, sport, 5);
        eprintln!(
            "overwrite in place (proxy rcvbuf {rcvbuf:?}): fetch exit {:?} ({}); server: {line:?}",
            code(&r),
            err_text(&r).trim()
        );
        assert_failed_clean(&r, &[3, 4], &outdir, &[]);
        if rcvbuf.is_some() {
            let line = line.unwrap_or_else(|| panic!("no log line for :{sport}\n{}", server.stderr()));
            assert!(
                line.contains("cut (file changed)"),
                "file changed in place when the client had {} of {} bytes, and the transfer went on for \
                 {ended:?} after the change, but the server did not cut it: {line}\nserver stderr:\n{}",
                at_change,
                size + 48,
                server.stderr()
            );
        }
        drop(proxy);
        healthy(&mut server, base);
    }
}

// ---------------------------------------------------------------------------------------
// The client (RELIABILITY 20–25) through the fault proxy and fake servers
// ---------------------------------------------------------------------------------------

/// A server with a 4 MiB file for the client-side tests.
fn client_fixture(seed: u64) -> (tempfile::TempDir, Vec<u8>, Server, usize) {
    let dir = tempdir();
    let data = random_bytes(4 * MIB as usize, seed);
    let path = write_file(dir.path(), "in.bin", &data);
    let (server, base) = start(&path, &[]);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    (dir, data, server, base)
}

/// Case 20: The server dies mid-transfer (an RST at byte N): non-zero exit, nothing at the output
/// path, an older file there untouched.
#[test]
fn client_server_dies_mid_transfer() {
    let (dir, _data, mut server, base) = client_fixture(20);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    std::fs::write(&out, b"old contents\n").unwrap();
    let proxy = Proxy::start(server.addr, Plan::down(48 + MIB, Action::Reset));
    let r = fetch(&proxy.target(), &out, &[]);
    assert_failed_clean(&r, &[3], &outdir, &["out.bin"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old contents\n", "older output was touched");
    // And with no older file: nothing at all.
    std::fs::remove_file(&out).unwrap();
    proxy.set_plan(Plan::down(20, Action::Reset)); // inside the header
    let r = fetch(&proxy.target(), &out, &[]);
    assert_failed_clean(&r, &[3, 4], &outdir, &[]);
    assert_eq!(proxy.fired(), 2);
    drop(proxy);
    healthy(&mut server, base);
}

/// Case 23: One flipped bit in the body: digest mismatch, exit 4, nothing left. A flip in the
/// header's magic, size or digest fails too.
#[test]
fn client_bit_flip_fails_verification() {
    let (dir, data, mut server, base) = client_fixture(23);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    for (at, bit, codes) in [
        (48 + 2 * MIB + 7, 3u8, &[4][..]),
        (48 + data.len() as u64 - 1, 0, &[4][..]),
        (48, 7, &[4][..]),
        (1, 0, &[4][..]),
        (20, 5, &[4][..]),
        (15, 0, &[3, 4][..]), // size off by one: short or long body
    ] {
        let proxy = Proxy::start(server.addr, Plan::down(at, Action::Flip(bit)));
        let r = fetch(&proxy.target(), &out, &["--timeout", "3"]);
        assert_eq!(proxy.fired(), 1);
        assert!(
            code(&r).is_some_and(|c| codes.contains(&c)),
            "flip at byte {at} bit {bit}: expected exit {codes:?}\n{}",
            describe(&r)
        );
        assert_eq!(dir_names(&outdir), Vec::<String>::new(), "flip at {at}: something left behind");
    }
    healthy(&mut server, base);
}

/// Case 20: The connection is closed cleanly (FIN) early: exit 3, nothing left.
#[test]
fn client_cut_mid_transfer() {
    let (dir, _data, mut server, base) = client_fixture(21);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    for at in [48 + MIB, 48, 30] {
        let proxy = Proxy::start(server.addr, Plan::down(at, Action::Cut));
        let r = fetch(&proxy.target(), &out, &[]);
        let codes: &[i32] = if at >= 48 { &[3] } else { &[3, 4] };
        assert_failed_clean(&r, codes, &outdir, &[]);
    }
    healthy(&mut server, base);
}

/// Case 25: The stream stalls (the server or the path goes silent): `--timeout 1` gives exit 3
/// within a few seconds; so does a server that accepts and never answers, and a connect
/// that hangs.
#[test]
fn client_stall_and_silence_time_out() {
    let (dir, _data, mut server, base) = client_fixture(25);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    for plan in [Plan::down(48 + MIB, Action::Stall), Plan::down(10, Action::Stall), Plan::up(0, Action::Stall)] {
        let proxy = Proxy::start(server.addr, plan);
        let t = Instant::now();
        let r = fetch(&proxy.target(), &out, &["--timeout", "1"]);
        let took = t.elapsed();
        assert_failed_clean(&r, &[3], &outdir, &[]);
        assert!(took <= Duration::from_secs(4), "stall {plan:?}: fetch took {took:?} with --timeout 1");
        drop(proxy);
    }
    // A fake server that accepts, reads the request and says nothing.
    let (addr, _hold) = fake_server(Vec::new(), Duration::from_secs(10));
    let t = Instant::now();
    let r = fetch(&addr.to_string(), &out, &["--timeout", "1"]);
    assert_failed_clean(&r, &[3], &outdir, &[]);
    assert!(t.elapsed() <= Duration::from_secs(4), "silent server: fetch took {:?}", t.elapsed());

    // A connect that hangs: a listener with a full accept queue drops new SYNs.
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    l.listen(0).unwrap();
    let laddr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if s.connect_timeout(&laddr.into(), Duration::from_millis(300)).is_ok() {
            fillers.push(s);
        }
    }
    let t = Instant::now();
    let r = fetch(&laddr.to_string(), &out, &["--timeout", "1"]);
    assert_failed_clean(&r, &[3], &outdir, &[]);
    assert!(t.elapsed() <= Duration::from_secs(4), "hanging connect: fetch took {:?}", t.elapsed());
    drop(fillers);
    healthy(&mut server, base);
}

/// Case 21/22: Fake servers with bad answers: clear errors with the documented exit codes, no
/// allocation from a 2^64-1 size, nothing left behind.
#[test]
fn client_rejects_bad_headers() {
    let dir = tempdir();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let body = b"0123456789".to_vec();
    let ok = encoding::encode_ok(body.len() as u64, &digest(&body));
    let with = |mut h: [u8; 48], at: usize, v: u8| {
        h[at] = v;
        [&h[..], &body[..]].concat()
    };
    let mut refusal = [0u8; encoding::HEADER_LEN + encoding::MAX_REASON];
    let n = encoding::encode_refusal(Status::Other(200), "go away, says the fake", &mut refusal);
    let huge = [&encoding::encode_ok(u64::MAX, &[7; 32])[..], &random_bytes(100_000, 22)[..]].concat();
    let cases: Vec<(&str, Vec<u8>, &[i32])> = vec![
        ("http answer", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), &[4]),
        ("version 9", with(ok, 4, 9), &[4]),
        ("reserved byte", with(ok, 7, 1), &[4]),
        ("ok with a reason", with(ok, 6, 3), &[4]),
        ("refusal without reason", with(ok, 5, 4), &[4]),
        ("wrong digest", with(ok, 20, 0xAA), &[4]),
        ("short header", ok[..20].to_vec(), &[3, 4]),
        ("short body", ok.iter().chain(&body[..5]).copied().collect(), &[3, 4]),
        ("size 2^64-1", huge, &[3, 4]),
        ("unknown status", refusal[..n].to_vec(), &[6]),
    ];
    for (what, reply, codes) in cases {
        let (addr, _hold) = fake_server(reply, Duration::ZERO);
        let t = Instant::now();
        let r = fetch(&addr.to_string(), &out, &["--timeout", "3"]);
        assert!(code(&r).is_some_and(|c| codes.contains(&c)), "{what}: expected exit {codes:?}\n{}", describe(&r));
        assert!(t.elapsed() < Duration::from_secs(6), "{what}: took {:?}", t.elapsed());
        let e = err_text(&r);
        assert!(e.contains("xfer: ") && !e.contains("panicked"), "{what}: error not one clear line: {e}");
        if what == "unknown status" {
            assert!(e.contains("go away, says the fake"), "refusal reason not shown: {e}");
        }
        assert_eq!(dir_names(&outdir), Vec::<String>::new(), "{what}: something left behind");
    }
}

/// Case 22: Disk full (a 1 MiB tmpfs) during a 4 MiB fetch: exit 5, temp file removed, an older
/// file untouched. Skipped where tmpfs cannot be mounted.
#[test]
fn client_disk_full() {
    let (dir, _data, mut server, base) = client_fixture(22);
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("client_disk_full: SKIPPED (cannot mount a tmpfs here)");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let out = mnt.join("out.bin");
    std::fs::write(&out, b"old").unwrap();
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[5], &mnt, &["out.bin"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    std::fs::remove_file(&out).unwrap();
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[5], &mnt, &[]);
    healthy(&mut server, base);
}

/// Case 24: The client killed at random moments: the output path holds the old file or the whole
/// new one, never a part.
#[test]
fn client_killed_leaves_old_or_whole() {
    let dir = tempdir();
    let data = random_bytes(8 * MIB as usize, 24);
    let path = write_file(dir.path(), "in.bin", &data);
    let (mut server, base) = start(&path, &[]);
    let proxy = Proxy::start(server.addr, Plan::slow_down(64 * 1024, Duration::from_millis(10)));
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    std::fs::write(&out, b"old").unwrap();
    let mut rng = Rng::new(24);
    let mut completed = 0;
    for _ in 0..6 {
        let mut child = Command::new(bin())
            .arg("fetch")
            .arg(proxy.target())
            .arg(&out)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(rng.below(2500)));
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            completed += 1;
        }
        let now = std::fs::read(&out).expect("output path vanished");
        assert!(now == b"old" || now == data, "output holds {} bytes: neither old nor new", now.len());
        if now == data {
            std::fs::write(&out, b"old").unwrap();
        }
    }
    eprintln!("killed fetches: {completed} of 6 had completed before the kill");
    drop(proxy);
    healthy(&mut server, base);
}

// ---------------------------------------------------------------------------------------
// Access control: --allow and --token
// ---------------------------------------------------------------------------------------

/// `--allow 127.0.0.2/32`: 127.0.0.1 is refused (exit 6, "not allowed"; status 3 on the
/// wire, no file byte), 127.0.0.2 is served.
#[test]
fn allow_list_refuses_others() {
    let dir = tempdir();
    let data = random_bytes(300_000, 30);
    let path = write_file(dir.path(), "in.bin", &data);
    let (mut server, base) = start(&path, &["--allow", "127.0.0.2/32"]);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(err_text(&r).contains("not allowed"), "no 'not allowed' in: {}", err_text(&r));
    let (status, _) = expect_refusal(server.addr, Some(ip(127, 0, 0, 1)), &raw_request(None));
    assert_eq!(status, Status::Forbidden);
    let (resp, d) =
        fetch_raw(server.addr, Some(ip(127, 0, 0, 2)), None, &raw_request(None), Pace::fast(), true).unwrap();
    assert_eq!(resp, Response::Ok { size: data.len() as u64, digest: digest(&data) });
    assert!(d.err.is_none() && d.data == data);
    healthy(&mut server, base);
}

/// A token from `XFER_TOKEN` on the server: no token or a wrong one → exit 6 naming the
/// token; `--token` or `XFER_TOKEN` on the client → served.
#[test]
fn token_required() {
    let dir = tempdir();
    let data = random_bytes(300_000, 31);
    let path = write_file(dir.path(), "in.bin", &data);
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg(&path).args(["--listen", "127.0.0.1", "--port", "0"]).env("XFER_TOKEN", "s3cret");
    let mut server = Server::spawn(&mut cmd);
    let base = settled_fds(&server);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let run = |env: Option<&str>, args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("fetch").arg(server.target()).arg(&out).args(args).env_remove("XFER_TOKEN");
        if let Some(v) = env {
            c.env("XFER_TOKEN", v);
        }
        run_with_timeout(&mut c, 60)
    };
    for (what, env, args) in [
        ("no token", None, &[][..]),
        ("wrong --token", None, &["--token", "nope"][..]),
        ("wrong XFER_TOKEN", Some("s3cre"), &[][..]),
    ] {
        let r = run(env, args);
        assert_failed_clean(&r, &[6], &outdir, &[]);
        assert!(err_text(&r).contains("token"), "{what}: no 'token' in: {}", err_text(&r));
    }
    let (status, _) = expect_refusal(server.addr, None, &raw_request(None));
    assert_eq!(status, Status::BadToken);
    let (status, _) = expect_refusal(server.addr, None, &raw_request(Some("wrong")));
    assert_eq!(status, Status::BadToken);
    let r = run(None, &["--token", "s3cret"]);
    assert_fetched(&out, &r, &data);
    std::fs::remove_file(&out).unwrap();
    let r = run(Some("s3cret"), &[]);
    assert_fetched(&out, &r, &data);
    healthy(&mut server, base);
}
