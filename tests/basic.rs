//! The CLI contract end to end: byte-exact copies of every sample, concurrency, hostile raw
//! clients, a server killed mid-transfer, fake servers that lie, IPv6 and `localhost`,
//! bad inputs and outputs, `--help`, and the exit-code table of the README.
//!
//! Every test runs the real binary on port 0 (loopback only), reads the address it prints,
//! and compares bytes. Fake servers and the slow relay are std threads in this file.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::encoding::{self, Status};
use crate::util::*;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Lines of stderr starting with `xfer:` (a progress bar, if any, is ignored).
fn error_lines(o: &Output) -> Vec<String> {
    stderr_of(o).lines().filter(|l| l.trim_start().starts_with("xfer:")).map(str::to_string).collect()
}

/// A failure: the given exit code, exactly one `xfer:` error line, no panic.
fn assert_failed_with(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{what}: wrong exit code\n{}", describe(o));
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "{what}: expected exactly one `xfer:` line on stderr\n{}", describe(o));
    assert!(!stderr_of(o).contains("panicked"), "{what}: panic\n{}", describe(o));
}

/// Runs `xfer ARGS...` (environment without XFER_TOKEN) with a time limit.
fn run_xfer(args: &[&str], secs: u64) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("XFER_TOKEN");
    run_with_timeout(&mut cmd, secs)
}

/// `xfer fetch TARGET OUT EXTRA...` without XFER_TOKEN in the environment.
fn fetch_clean(target: &str, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("fetch").arg(target).arg(out).args(extra).env_remove("XFER_TOKEN");
    run_with_timeout(&mut cmd, 60)
}

/// Waits until the server has printed at least `n` stdout lines (bounded), returns them.
fn wait_stdout_lines(s: &Server, n: usize, secs: u64) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let lines = s.stdout.lock().unwrap().clone();
        if lines.len() >= n || Instant::now() >= end {
            return lines;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn count_lines(text: &str, pat: &str) -> usize {
    text.lines().filter(|l| l.contains(pat)).count()
}

/// Sets SO_LINGER {1, 0}: the next close sends an RST instead of a FIN.
fn set_linger_zero(s: &TcpStream) {
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid fd, valid pointer and length for the option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Shrinks a socket's receive buffer (so a slow reader really holds the sender back).
fn set_rcvbuf(s: &TcpStream, bytes: i32) {
    // SAFETY: valid fd, valid pointer and length for the option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Starts a server and returns it with its descriptor count at rest. `listening on` may be
/// printed before the event loop has made its poller and signal pipe, so the baseline is
/// taken only after one transfer has completed and been logged (the loop is surely up).
fn start_settled(path: &Path, extra: &[&str]) -> (Server, usize) {
    let server = Server::start(path, extra);
    let probe = raw_fetch(server.addr, &raw_request(None)).expect("warm-up request");
    assert!(probe.starts_with(&encoding::RESPONSE_MAGIC), "warm-up: not an xfer answer");
    assert!(
        server.wait_stderr(10, |s| count_lines(s, " complete: ") >= 1),
        "warm-up transfer never logged:\n{}",
        server.stderr()
    );
    // The log line may precede the close by a moment: take the count once it is stable.
    let mut last = server.fd_count();
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(20));
        let now = server.fd_count();
        if now == last {
            break;
        }
        last = now;
    }
    (server, last)
}

/// A closed port on 127.0.0.1 (bound then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A server for `data` in a fresh directory; returns (dir, file path).
fn served_file(name: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let p = write_file(dir.path(), name, data);
    (dir, p)
}

// ---------------------------------------------------------------------------------------
// Fake servers: one connection, read the 48-byte request, then act.
// ---------------------------------------------------------------------------------------

struct Fake {
    addr: SocketAddr,
    /// What the fake saw: `Ok(())` when a valid request arrived, else a description.
    seen: mpsc::Receiver<Result<(), String>>,
    /// Dropping this releases a fake that holds its connection open.
    release: Option<mpsc::Sender<()>>,
}

impl Fake {
    fn target(&self) -> String {
        self.addr.to_string()
    }

    /// The request the fake received was a valid protocol request.
    fn assert_request_ok(&self) {
        match self.seen.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake server: {e}"),
            Err(_) => panic!("fake server: never got a connection/request"),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.release.take();
    }
}

/// Starts a fake server that accepts one connection, reads the request, and hands the
/// stream to `act` (which also gets a receiver that disconnects when the test releases it).
fn fake_server(act: impl FnOnce(TcpStream, mpsc::Receiver<()>) + Send + 'static) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind fake");
    let addr = l.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
        let mut req = [0u8; encoding::REQUEST_LEN];
        let verdict = match s.read_exact(&mut req) {
            Err(e) => Err(format!("reading request: {e}")),
            Ok(()) => match encoding::decode_request(&req) {
                Ok(encoding::Decoded::Done(r, _)) if r.offset == 0 => Ok(()),
                other => Err(format!("bad request {other:?}: {req:02x?}")),
            },
        };
        let _ = seen_tx.send(verdict);
        act(s, release_rx);
    });
    Fake { addr, seen, release: Some(release) }
}

/// Fetches from a fake into `dir/out.bin` with a short timeout.
fn fetch_from_fake(f: &Fake, dir: &Path, extra: &[&str]) -> (PathBuf, Output) {
    let out = dir.join("out.bin");
    let mut args = vec!["--timeout", "5"];
    args.extend_from_slice(extra);
    let o = fetch_clean(&f.target(), &out, &args);
    (out, o)
}

// ---------------------------------------------------------------------------------------
// A slow relay: fetch → relay → server, forwarding the server's bytes in small throttled
// steps, so a transfer is guaranteed to be in progress when the test acts.
// ---------------------------------------------------------------------------------------

struct SlowRelay {
    addr: SocketAddr,
    /// Server → client bytes forwarded so far (header included).
    forwarded: Arc<AtomicU64>,
    /// Once set, forward at full speed.
    fast: Arc<AtomicBool>,
}

fn slow_relay(upstream: SocketAddr) -> SlowRelay {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = l.local_addr().unwrap();
    let forwarded = Arc::new(AtomicU64::new(0));
    let fast = Arc::new(AtomicBool::new(false));
    let (fw, fa) = (forwarded.clone(), fast.clone());
    thread::spawn(move || {
        let Ok((mut down, _)) = l.accept() else { return };
        let Ok(mut up) = TcpStream::connect(upstream) else { return };
        set_rcvbuf(&up, 64 * 1024);
        let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = down.set_write_timeout(Some(Duration::from_secs(30)));
        // Client → server (the request), on its own thread.
        if let (Ok(mut d2), Ok(mut u2)) = (down.try_clone(), up.try_clone()) {
            thread::spawn(move || {
                let _ = d2.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = std::io::copy(&mut d2, &mut u2);
            });
        }
        let mut buf = vec![0u8; 16 * 1024];
        let end = Instant::now() + Duration::from_secs(60);
        // Bounded: at most one step per 16 KiB of a 1 GiB stream, and 60 s.
        for _ in 0..65_536 {
            if Instant::now() > end {
                break;
            }
            match up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if down.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    fw.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            if !fa.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(2));
            }
        }
        // The server is gone: pass the end on as the server's kernel did (FIN).
        let _ = down.shutdown(Shutdown::Write);
    });
    SlowRelay { addr, forwarded, fast }
}

// ---------------------------------------------------------------------------------------
// 1. Every sample, plus empty / no trailing linefeed / 8 MiB random, byte-identical;
//    the server's banner names size, digest and a fetch command.
// ---------------------------------------------------------------------------------------

fn serve_and_check(path: &Path, data: &[u8]) {
    let server = Server::start(path, &[]);
    let lines = wait_stdout_lines(&server, 3, 10);
    assert!(lines.len() >= 3, "server printed fewer than 3 stdout lines: {lines:?}");
    let size = data.len().to_string();
    let digest = blake3::hash(data).to_hex().to_string();
    assert_eq!(digest.len(), 64);
    assert!(
        lines[1].split(|c: char| !c.is_ascii_digit()).any(|w| w == size),
        "line 2 should give the size {size}: {:?}",
        lines[1]
    );
    assert!(lines[1].contains(&digest), "line 2 should give the blake3 digest {digest}: {:?}", lines[1]);
    let port = server.addr.port().to_string();
    assert!(
        lines[2].contains("xfer fetch") && lines[2].contains(&port),
        "line 3 should be a fetch command naming port {port}: {:?}",
        lines[2]
    );

    let out_dir = tempdir();
    let out = out_dir.path().join("copy");
    let res = fetch_clean(&server.target(), &out, &[]);
    assert_fetched(&out, &res, data);
    assert_eq!(dir_names(out_dir.path()), vec!["copy".to_string()], "temp file left behind");
    // The summary line is on stderr, never on stdout (stdout may carry the file).
    assert!(res.stdout.is_empty(), "fetch to a file printed on stdout:\n{}", describe(&res));
    let err = stderr_of(&res);
    assert!(
        err.contains(&format!("fetched {size} bytes")) && err.contains("verified blake3"),
        "summary line missing:\n{}",
        describe(&res)
    );
    assert!(error_lines(&res).is_empty(), "success printed an error line:\n{}", describe(&res));

    // --quiet: nothing at all on stdout or stderr; a second fetch replaces the first copy.
    std::fs::write(&out, b"previous copy").unwrap();
    let res = fetch_clean(&server.target(), &out, &["--quiet"]);
    assert_fetched(&out, &res, data);
    assert!(res.stdout.is_empty() && res.stderr.is_empty(), "--quiet printed something:\n{}", describe(&res));
    assert_eq!(dir_names(out_dir.path()), vec!["copy".to_string()]);
}

#[test]
fn every_sample_and_edge_files_arrive_identical() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("input_file");
    let mut n = 0;
    for e in std::fs::read_dir(&samples).expect("input_file/") {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        serve_and_check(&p, &data);
        n += 1;
    }
    assert!(n > 0, "no samples in {}", samples.display());

    let dir = tempdir();
    let empty = write_file(dir.path(), "empty", b"");
    serve_and_check(&empty, b"");
    let nolf = b"the last line has no linefeed\nand here it ends";
    let p = write_file(dir.path(), "nolf.txt", nolf);
    serve_and_check(&p, nolf);
    let big = random_bytes(8 * MIB, 1);
    let p = write_file(dir.path(), "big.bin", &big);
    serve_and_check(&p, &big);
}

// ---------------------------------------------------------------------------------------
// 2. 50 concurrent fetches of 8 MiB.
// ---------------------------------------------------------------------------------------

#[test]
fn fifty_concurrent_fetches_are_identical_and_logged() {
    let data = Arc::new(random_bytes(8 * MIB, 2));
    let (_sd, path) = served_file("big.bin", &data);
    let (mut server, baseline) = start_settled(&path, &[]);
    let out_dir = tempdir();
    let target = server.target();

    let handles: Vec<_> = (0..50)
        .map(|i| {
            let out = out_dir.path().join(format!("copy{i}"));
            let target = target.clone();
            thread::spawn(move || {
                let res = fetch_clean(&target, &out, &["--quiet"]);
                (out, res)
            })
        })
        .collect();
    for h in handles {
        let (out, res) = h.join().expect("fetch thread");
        assert_fetched(&out, &res, &data);
        std::fs::remove_file(&out).unwrap();
    }
    assert!(dir_names(out_dir.path()).is_empty(), "left behind: {:?}", dir_names(out_dir.path()));

    let pat = format!(" complete: {} bytes", data.len());
    // 50 fetches plus the warm-up transfer of start_settled.
    let ok = server.wait_stderr(30, |s| count_lines(s, &pat) >= 51);
    let err = server.stderr();
    assert!(ok, "expected 50 (+1 warm-up) `complete` lines, got {}:\n{err}", count_lines(&err, &pat));
    assert_eq!(count_lines(&err, "complete"), 51, "more than 50 (+1 warm-up) `complete` lines:\n{err}");
    server.assert_healthy(baseline);
}

// ---------------------------------------------------------------------------------------
// 3. A client that never reads and one that resets mid-body do not disturb others.
// ---------------------------------------------------------------------------------------

#[test]
fn stalled_and_resetting_clients_do_not_disturb_others() {
    let data = random_bytes(8 * MIB, 3);
    let (_sd, path) = served_file("big.bin", &data);
    let (mut server, baseline) = start_settled(&path, &[]);
    let req = raw_request(None);

    // Never reads.
    let mut sleeper = TcpStream::connect(server.addr).unwrap();
    sleeper.write_all(&req).unwrap();

    // Reads 64 KiB of the body, then resets.
    {
        let mut r = TcpStream::connect(server.addr).unwrap();
        r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        r.write_all(&req).unwrap();
        let mut head = vec![0u8; encoding::HEADER_LEN + 64 * 1024];
        r.read_exact(&mut head).expect("resetting client: read header and 64 KiB");
        assert_eq!(&head[..4], &encoding::RESPONSE_MAGIC);
        assert_eq!(&head[encoding::HEADER_LEN..], &data[..64 * 1024]);
        set_linger_zero(&r);
    }

    let out_dir = tempdir();
    for i in 0..5 {
        let out = out_dir.path().join(format!("copy{i}"));
        let res = fetch_clean(&server.target(), &out, &["--quiet", "--timeout", "10"]);
        assert_fetched(&out, &res, &data);
    }
    assert!(server.is_alive(), "server died; stderr:\n{}", server.stderr());
    drop(sleeper);

    // Every transfer logs one line: warm-up + 5 complete, plus one each for the two raw clients.
    let outcomes = ["complete", "closed by peer", "timed out", "refused (", "cut (file changed)", "error ("];
    let count = |s: &str| s.lines().filter(|l| outcomes.iter().any(|o| l.contains(o))).count();
    let ok = server.wait_stderr(10, |s| count(s) >= 8);
    let err = server.stderr();
    assert!(ok, "expected 8 transfer log lines (warm-up + 5 complete + 2 raw clients), got:\n{err}");
    assert_eq!(count_lines(&err, " complete: "), 6, "stderr:\n{err}");
    server.assert_healthy(baseline);
}

// ---------------------------------------------------------------------------------------
// 4. The server dies mid-transfer.
// ---------------------------------------------------------------------------------------

fn kill_server_mid_transfer(path: &Path, size: usize, pre_existing: Option<&[u8]>) {
    let mut server = Server::start(path, &[]);
    let relay = slow_relay(server.addr);
    let out_dir = tempdir();
    let out = out_dir.path().join("out.bin");
    if let Some(old) = pre_existing {
        std::fs::write(&out, old).unwrap();
    }
    let target = relay.addr.to_string();
    let out2 = out.clone();
    let fetcher = thread::spawn(move || fetch_clean(&target, &out2, &["--timeout", "10"]));

    // Wait until the body is flowing and the temporary file is there.
    let baseline_names = dir_names(out_dir.path());
    let end = Instant::now() + Duration::from_secs(20);
    let mut temp_seen = false;
    while Instant::now() < end {
        temp_seen = dir_names(out_dir.path()).len() > baseline_names.len();
        if temp_seen && relay.forwarded.load(Ordering::SeqCst) >= 2 * MIB as u64 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let fwd = relay.forwarded.load(Ordering::SeqCst);
    assert!(fwd >= 2 * MIB as u64, "transfer did not get going through the relay ({fwd} bytes)");
    assert!(temp_seen, "no temporary file beside the output during the transfer: {:?}", dir_names(out_dir.path()));

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    relay.fast.store(true, Ordering::SeqCst);

    let res = fetcher.join().expect("fetch thread");
    let fwd = relay.forwarded.load(Ordering::SeqCst);
    assert!(fwd < (size + encoding::HEADER_LEN) as u64, "test design: the whole file got through before the kill");
    assert_failed_with(&res, 3, "server killed mid-transfer");
    match pre_existing {
        None => {
            assert!(!out.exists(), "output exists after a failed fetch");
            assert!(dir_names(out_dir.path()).is_empty(), "left behind: {:?}", dir_names(out_dir.path()));
        }
        Some(old) => {
            assert_eq!(std::fs::read(&out).unwrap(), old, "pre-existing output was changed");
            assert_eq!(dir_names(out_dir.path()), vec!["out.bin".to_string()], "temp file left behind");
        }
    }
}

#[test]
fn server_killed_mid_transfer_leaves_nothing() {
    let size = 64 * MIB;
    let (_sd, path) = served_file("huge.bin", &random_bytes(size, 4));
    kill_server_mid_transfer(&path, size, None);
    kill_server_mid_transfer(&path, size, Some(b"old contents"));
}

// ---------------------------------------------------------------------------------------
// 5. Fake servers that lie.
// ---------------------------------------------------------------------------------------

/// Checks a failed fetch left nothing new in `dir` (and an old output untouched).
fn assert_nothing_left(dir: &Path, out: &Path, old: Option<&[u8]>, what: &str) {
    match old {
        None => {
            assert!(!out.exists(), "{what}: output file exists");
            assert!(dir_names(dir).is_empty(), "{what}: left behind {:?}", dir_names(dir));
        }
        Some(old) => {
            assert_eq!(std::fs::read(out).unwrap(), old, "{what}: old output changed");
            assert_eq!(dir_names(dir), vec!["out.bin".to_string()], "{what}: temp file left behind");
        }
    }
}

#[test]
fn fake_server_wrong_digest_is_rejected() {
    let body = random_bytes(300_000, 5);
    let mut wrong = *blake3::hash(&body).as_bytes();
    wrong[7] ^= 0x20;
    let f = fake_server(move |mut s, _| {
        let _ = s.write_all(&encoding::encode_ok(body.len() as u64, &wrong));
        let _ = s.write_all(&body);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let dir = tempdir();
    std::fs::write(dir.path().join("out.bin"), b"old contents").unwrap();
    let (out, res) = fetch_from_fake(&f, dir.path(), &[]);
    f.assert_request_ok();
    assert_failed_with(&res, 4, "wrong digest");
    assert_nothing_left(dir.path(), &out, Some(b"old contents"), "wrong digest");
}

#[test]
fn fake_server_short_body_is_network_error() {
    let body = random_bytes(200_000, 6);
    let digest = *blake3::hash(&body).as_bytes();
    let f = fake_server(move |mut s, _| {
        let _ = s.write_all(&encoding::encode_ok(body.len() as u64, &digest));
        let _ = s.write_all(&body[..body.len() / 2]);
        // Plain close (FIN) after half the body.
    });
    let dir = tempdir();
    let (out, res) = fetch_from_fake(&f, dir.path(), &[]);
    f.assert_request_ok();
    assert_failed_with(&res, 3, "short body");
    assert_nothing_left(dir.path(), &out, None, "short body");
}

#[test]
fn fake_http_server_is_protocol_error() {
    let f = fake_server(|mut s, _| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
        );
        let _ = s.write_all(&[b'x'; 5000]);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let dir = tempdir();
    let (out, res) = fetch_from_fake(&f, dir.path(), &[]);
    f.assert_request_ok();
    assert_failed_with(&res, 4, "HTTP answer");
    assert_nothing_left(dir.path(), &out, None, "HTTP answer");
}

#[test]
fn fake_refusal_is_shown_and_exits_6() {
    let f = fake_server(|mut s, _| {
        let mut buf = [0u8; encoding::HEADER_LEN + encoding::MAX_REASON];
        let n = encoding::encode_refusal(Status::Busy, "go away", &mut buf);
        let _ = s.write_all(&buf[..n]);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let dir = tempdir();
    let (out, res) = fetch_from_fake(&f, dir.path(), &[]);
    f.assert_request_ok();
    assert_failed_with(&res, 6, "refusal");
    assert!(error_lines(&res)[0].contains("go away"), "reason not shown:\n{}", describe(&res));
    assert_nothing_left(dir.path(), &out, None, "refusal");
}

#[test]
fn fake_silent_server_times_out() {
    let f = fake_server(|s, release| {
        // Hold the connection open, answering nothing, until the test is done (max 20 s).
        let _ = release.recv_timeout(Duration::from_secs(20));
        drop(s);
    });
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let t0 = Instant::now();
    let res = fetch_clean(&f.target(), &out, &["--timeout", "1"]);
    let took = t0.elapsed();
    f.assert_request_ok();
    assert_failed_with(&res, 3, "silent server");
    assert!(took < Duration::from_secs(5), "--timeout 1 took {took:?}");
    assert_nothing_left(dir.path(), &out, None, "silent server");
}

#[test]
fn fake_huge_size_fails_cleanly() {
    let f = fake_server(|mut s, _| {
        let _ = s.write_all(&encoding::encode_ok(u64::MAX, &[0x5a; 32]));
        let _ = s.write_all(b"just a few bytes");
        // Plain close.
    });
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let t0 = Instant::now();
    let res = fetch_clean(&f.target(), &out, &["--timeout", "5"]);
    f.assert_request_ok();
    assert_failed_with(&res, 3, "size u64::MAX");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_nothing_left(dir.path(), &out, None, "size u64::MAX");
}

// ---------------------------------------------------------------------------------------
// 6. IPv6 loopback and `localhost`.
// ---------------------------------------------------------------------------------------

#[test]
fn ipv6_loopback_and_localhost() {
    let data = random_bytes(1_000_003, 7);
    let (_sd, path) = served_file("f.bin", &data);
    let out_dir = tempdir();

    // localhost against a server on 127.0.0.1 (whatever localhost resolves to first).
    {
        let server = Server::start(&path, &[]);
        let out = out_dir.path().join("via-localhost");
        let res = fetch_clean(&format!("localhost:{}", server.addr.port()), &out, &["--quiet"]);
        assert_fetched(&out, &res, &data);
        // `--port` when the host has none.
        let out = out_dir.path().join("via-port-flag");
        let port = server.addr.port().to_string();
        let res = fetch_clean("127.0.0.1", &out, &["--quiet", "--port", &port]);
        assert_fetched(&out, &res, &data);
    }

    if let Err(e) = TcpListener::bind("[::1]:0") {
        eprintln!("note: skipping the IPv6 part, cannot bind [::1]: {e}");
        return;
    }
    let server = Server::start(&path, &["--listen", "::1"]);
    assert!(server.addr.is_ipv6() && server.addr.ip().is_loopback(), "listening on {}", server.addr);
    let port = server.addr.port();
    let out = out_dir.path().join("via-v6");
    let res = fetch_clean(&format!("[::1]:{port}"), &out, &["--quiet"]);
    assert_fetched(&out, &res, &data);
    // A bare IPv6 literal takes its port from --port.
    let out = out_dir.path().join("via-v6-bare");
    let res = fetch_clean("::1", &out, &["--quiet", "--port", &port.to_string()]);
    assert_fetched(&out, &res, &data);
}

// ---------------------------------------------------------------------------------------
// 7. Bad inputs for `serve`.
// ---------------------------------------------------------------------------------------

fn assert_serve_rejects(input: &Path, what: &str) {
    let t0 = Instant::now();
    let res = run_xfer(&["serve", input.to_str().unwrap(), "--listen", "127.0.0.1", "--port", "0"], 10);
    assert!(t0.elapsed() < Duration::from_secs(5), "{what}: took {:?}", t0.elapsed());
    assert_failed_with(&res, 5, what);
    assert!(!stdout_of(&res).contains("listening on"), "{what}: printed `listening on`:\n{}", describe(&res));
}

#[test]
fn serve_rejects_missing_directory_and_fifo() {
    let dir = tempdir();
    assert_serve_rejects(&dir.path().join("no-such-file"), "missing input");
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    assert_serve_rejects(&sub, "directory as input");
    let fifo = dir.path().join("a-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    assert_serve_rejects(&fifo, "FIFO as input");
}

// ---------------------------------------------------------------------------------------
// 8. Output paths: missing directory, stdout, a bare relative name.
// ---------------------------------------------------------------------------------------

#[test]
fn output_missing_dir_stdout_and_relative() {
    let data = random_bytes(3 * MIB + 17, 8);
    let (_sd, path) = served_file("f.bin", &data);
    let server = Server::start(&path, &[]);

    let dir = tempdir();
    let out = dir.path().join("missing").join("deeper").join("out.bin");
    let res = fetch_clean(&server.target(), &out, &[]);
    assert_failed_with(&res, 5, "missing output directory");
    assert!(dir_names(dir.path()).is_empty(), "fetch created something: {:?}", dir_names(dir.path()));

    // `-`: the exact bytes on stdout, nothing else there.
    let res = run_xfer(&["fetch", &server.target(), "-"], 60);
    assert!(res.status.success(), "fetch to stdout failed:\n{}", String::from_utf8_lossy(&res.stderr));
    assert!(
        res.stdout.len() == data.len() && res.stdout == data,
        "stdout: {} bytes, expected {}",
        res.stdout.len(),
        data.len()
    );

    // A bare file name, relative to the current directory.
    let mut cmd = Command::new(bin());
    cmd.args(["fetch", &server.target(), "plain.bin", "--quiet"]).current_dir(dir.path()).env_remove("XFER_TOKEN");
    let res = run_with_timeout(&mut cmd, 60);
    assert_fetched(&dir.path().join("plain.bin"), &res, &data);
    assert_eq!(dir_names(dir.path()), vec!["plain.bin".to_string()]);
}

// ---------------------------------------------------------------------------------------
// 9. --help and bad options.
// ---------------------------------------------------------------------------------------

fn help_text(o: &Output) -> String {
    format!("{}{}", stdout_of(o), stderr_of(o))
}

#[test]
fn help_and_usage_errors() {
    let top = run_xfer(&["--help"], 10);
    assert_eq!(top.status.code(), Some(0), "{}", describe(&top));
    let t = help_text(&top);
    assert!(t.contains("serve") && t.contains("fetch"), "top-level help:\n{t}");

    let serve = run_xfer(&["serve", "--help"], 10);
    assert_eq!(serve.status.code(), Some(0), "{}", describe(&serve));
    let t = help_text(&serve);
    for opt in [
        "--listen",
        "--port",
        "--quiet",
        "--max-clients",
        "--max-per-ip",
        "--allow",
        "--token",
        "--request-timeout",
        "--send-timeout",
        "--drain-timeout",
        "--threads",
    ] {
        assert!(t.contains(opt), "serve --help lacks {opt}:\n{t}");
    }

    let fetch = run_xfer(&["fetch", "--help"], 10);
    assert_eq!(fetch.status.code(), Some(0), "{}", describe(&fetch));
    let t = help_text(&fetch);
    for opt in ["--port", "--timeout", "--token", "--quiet"] {
        assert!(t.contains(opt), "fetch --help lacks {opt}:\n{t}");
    }

    let dir = tempdir();
    let f = write_file(dir.path(), "f", b"x");
    let fs = f.to_str().unwrap();
    let out = dir.path().join("o");
    let os = out.to_str().unwrap();
    for args in [
        vec!["--bogus"],
        vec!["frobnicate"],
        vec![],
        vec!["serve"],
        vec!["serve", fs, "--bogus"],
        vec!["serve", fs, "--port", "notaport"],
        vec!["serve", fs, "--port", "70000"],
        vec!["fetch"],
        vec!["fetch", "127.0.0.1:1"],
        vec!["fetch", "127.0.0.1:1", os, "--bogus"],
        vec!["fetch", "127.0.0.1:1", os, "--port", "99999"],
    ] {
        let res = run_xfer(&args, 10);
        assert_eq!(res.status.code(), Some(2), "xfer {args:?} should be a usage error\n{}", describe(&res));
        assert!(
            stderr_of(&res).lines().next().is_some_and(|l| l.starts_with("xfer:")),
            "xfer {args:?}: usage error should start with `xfer:`\n{}",
            describe(&res)
        );
        assert!(!out.exists() && !stdout_of(&res).contains("listening on"), "xfer {args:?} did something");
    }
}

// ---------------------------------------------------------------------------------------
// 10. Exit codes of the README table.
// ---------------------------------------------------------------------------------------

#[test]
fn exit_codes_network_and_refusal() {
    let dir = tempdir();
    let out = dir.path().join("out.bin");

    // Connection refused → 3.
    let port = closed_port();
    let res = fetch_clean(&format!("127.0.0.1:{port}"), &out, &["--timeout", "5"]);
    assert_failed_with(&res, 3, "connection refused");
    assert!(dir_names(dir.path()).is_empty());

    // Cannot bind (port taken) → 3, no `listening on`.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = taken.local_addr().unwrap().port().to_string();
    let f = write_file(dir.path(), "f.txt", b"hello\n");
    let res = run_xfer(&["serve", f.to_str().unwrap(), "--listen", "127.0.0.1", "--port", &tport], 10);
    assert_failed_with(&res, 3, "port in use");
    assert!(!stdout_of(&res).contains("listening on"), "{}", describe(&res));
    drop(taken);

    // Token: missing or wrong → 6 with nothing written; right → 0.
    let data = b"secret payload\n";
    let (_sd, path) = served_file("s.txt", data);
    let server = Server::start(&path, &["--token", "sesame"]);
    let res = fetch_clean(&server.target(), &out, &[]);
    assert_failed_with(&res, 6, "no token");
    let res = fetch_clean(&server.target(), &out, &["--token", "wrong"]);
    assert_failed_with(&res, 6, "wrong token");
    assert_eq!(dir_names(dir.path()), vec!["f.txt".to_string()]);
    let res = fetch_clean(&server.target(), &out, &["--token", "sesame", "--quiet"]);
    assert_fetched(&out, &res, data);
    let mut cmd = Command::new(bin());
    let out2 = dir.path().join("out2.bin");
    cmd.arg("fetch").arg(server.target()).arg(&out2).arg("--quiet").env("XFER_TOKEN", "sesame");
    let res = run_with_timeout(&mut cmd, 60);
    assert_fetched(&out2, &res, data);

    // A busy server (--max-clients 1, one client parked) refuses with 6.
    let big = random_bytes(8 * MIB, 9);
    let (_sd2, bpath) = served_file("b.bin", &big);
    let busy = Server::start(&bpath, &["--max-clients", "1"]);
    let mut parked = TcpStream::connect(busy.addr).unwrap();
    parked.write_all(&raw_request(None)).unwrap();
    parked.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hdr = [0u8; encoding::HEADER_LEN];
    parked.read_exact(&mut hdr).unwrap();
    assert!(
        matches!(encoding::decode_response(&hdr), Ok(encoding::Decoded::Done(encoding::Response::Ok { .. }, _))),
        "parked client was not served: {hdr:02x?}"
    );
    let out3 = dir.path().join("out3.bin");
    let res = fetch_clean(&busy.target(), &out3, &["--timeout", "5"]);
    assert_failed_with(&res, 6, "busy");
    assert!(!out3.exists());
    drop(parked);
}
