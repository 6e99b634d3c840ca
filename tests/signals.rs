//! Signals: Ctrl+C on a terminal (under a pseudo-terminal), SIGINT/SIGTERM without one,
//! the drain and its deadline, a second signal, and SIGHUP reloading the file.
//!
//! Every wait is bounded; the only timing assertions are generous deadlines.

use crate::util::*;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use encoding::{Digest, Response};

const PROMPT: &str = "continue listening or exit? [c/e]";
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Writes a pseudo-random file of `size` bytes in 1 MiB chunks (never all in memory) and
/// returns its path and BLAKE3 digest.
fn big_file(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, Digest) {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(File::create(&path).expect("create big file"));
    let mut h = blake3::Hasher::new();
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(MIB) as usize;
        let chunk = random_bytes(n, seed.wrapping_mul(1_000_003).wrapping_add(i));
        h.update(&chunk);
        f.write_all(&chunk).expect("write big file");
        left -= n as u64;
        i += 1;
    }
    f.flush().unwrap();
    f.into_inner().unwrap().sync_all().unwrap();
    (path, *h.finalize().as_bytes())
}

fn digest_of(data: &[u8]) -> Digest {
    *blake3::hash(data).as_bytes()
}

/// How many bytes can sit between the server's `write`/`sendfile` and our `read` when our
/// receive buffer is pinned to `rcvbuf`: the largest send buffer the kernel will give the
/// server (autotuned or set explicitly), plus our receive buffer (doubled by the kernel),
/// plus a margin. Reading more than this proves the server itself kept sending.
fn in_kernel_bound(rcvbuf: u64) -> u64 {
    let read_num = |p: &str, field: usize| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.split_whitespace().nth(field).and_then(|v| v.parse().ok()))
            .unwrap_or(4 * MIB)
    };
    let tcp_wmem_max = read_num("/proc/sys/net/ipv4/tcp_wmem", 2);
    let wmem_max = read_num("/proc/sys/net/core/wmem_max", 0);
    tcp_wmem_max.max(2 * wmem_max) + 2 * rcvbuf + MIB
}

/// Formats an exit status for messages.
fn status_str(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Connects to `addr` with a small, fixed receive buffer (set before connect, so the window
/// never grows), sends a request, and reads the response in a thread, at most `rate` bytes
/// per second until told to go at full speed.
struct SlowReader {
    /// Body bytes received so far.
    count: Arc<AtomicU64>,
    unlimited: Arc<AtomicBool>,
    header: Response,
    done: mpsc::Receiver<std::io::Result<(u64, Digest)>>,
}

const SLOW_RCVBUF: u64 = 128 * 1024;

impl SlowReader {
    fn start(addr: SocketAddr, rate: u64) -> SlowReader {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        sock.set_recv_buffer_size(SLOW_RCVBUF as usize).expect("SO_RCVBUF");
        sock.connect_timeout(&addr.into(), Duration::from_secs(5)).expect("slow reader: connect");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&raw_request(None)).expect("slow reader: send request");
        let mut hdr = [0u8; encoding::HEADER_LEN];
        s.read_exact(&mut hdr).expect("slow reader: read header");
        let header = match encoding::decode_response(&hdr) {
            Ok(encoding::Decoded::Done(r, _)) => r,
            other => panic!("slow reader: bad header {other:?}"),
        };
        assert!(matches!(header, Response::Ok { .. }), "slow reader refused: {header:?}");
        let count = Arc::new(AtomicU64::new(0));
        let unlimited = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        {
            let count = count.clone();
            let unlimited = unlimited.clone();
            std::thread::spawn(move || {
                let res = (|| -> std::io::Result<(u64, Digest)> {
                    let start = Instant::now();
                    let mut h = blake3::Hasher::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0u64;
                    loop {
                        let mut want = buf.len();
                        if !unlimited.load(Ordering::SeqCst) {
                            let allowed = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                            if got >= allowed {
                                std::thread::sleep(Duration::from_millis(2));
                                continue;
                            }
                            want = want.min((allowed - got) as usize);
                        }
                        let n = s.read(&mut buf[..want])?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                        got += n as u64;
                        count.store(got, Ordering::SeqCst);
                    }
                    Ok((got, *h.finalize().as_bytes()))
                })();
                let _ = tx.send(res);
            });
        }
        SlowReader { count, unlimited, header, done }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn full_speed(&self) {
        self.unlimited.store(true, Ordering::SeqCst);
    }

    /// Goes to full speed and waits (up to `secs`) for EOF: (body length, body digest).
    fn finish(self, secs: u64) -> (Response, u64, Digest) {
        self.full_speed();
        match self.done.recv_timeout(Duration::from_secs(secs)) {
            Ok(Ok((n, d))) => (self.header, n, d),
            Ok(Err(e)) => panic!("slow reader failed after {} body bytes: {e}", self.count()),
            Err(_) => panic!("slow reader did not finish within {secs} s ({} body bytes)", self.count()),
        }
    }
}

/// Asserts a finished slow reader got exactly the file with `size` and `digest`.
fn assert_exact(what: &str, res: (Response, u64, Digest), size: u64, digest: &Digest) {
    let (header, n, d) = res;
    match header {
        Response::Ok { size: hs, digest: hd } => {
            assert_eq!(hs, size, "{what}: header size");
            assert!(
                hd == *digest,
                "{what}: header digest {} != file digest {}",
                encoding::hex(&hd),
                encoding::hex(digest)
            );
        }
        other => panic!("{what}: header {other:?}"),
    }
    assert_eq!(n, size, "{what}: received {n} body bytes, expected {size}");
    assert!(d == *digest, "{what}: body digest {} != file digest {}", encoding::hex(&d), encoding::hex(digest));
}

/// A client that sends a request, reads the header, and then never reads again.
fn stuck_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("stuck client: connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&raw_request(None)).expect("stuck client: send");
    let mut hdr = [0u8; encoding::HEADER_LEN];
    s.read_exact(&mut hdr).expect("stuck client: header");
    assert!(
        matches!(encoding::decode_response(&hdr), Ok(encoding::Decoded::Done(Response::Ok { .. }, _))),
        "stuck client: not an OK header"
    );
    s
}

/// Waits until a connect to `addr` is refused (listener closed), up to `secs`.
/// Connections that still succeed are closed at once.
fn wait_refused(addr: SocketAddr, secs: u64) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < end {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(()),
            Err(e) => last = format!("connect error {e}"),
            Ok(s) => {
                drop(s);
                last = "connect still succeeds".into();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn wait_child_exit(child: &mut Child, secs: f64) -> Option<ExitStatus> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.try_wait().ok().flatten()
}

/// `xfer serve` with stdin and stderr on a pseudo-terminal that is its controlling
/// terminal, stdout piped (for the address). Everything on the terminal (the server's
/// stderr and the echo of what we type) is collected in `tty`.
struct PtyServer {
    child: Child,
    addr: SocketAddr,
    master: File,
    tty: Arc<Mutex<String>>,
}

impl PtyServer {
    fn start(file: &Path, extra: &[&str]) -> PtyServer {
        let (mut m, mut s) = (-1, -1);
        // SAFETY: valid out-pointers; null name/termios/winsize are allowed.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh descriptors that we now own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // Keep them out of every other child the tests spawn.
            // SAFETY: fcntl on descriptors we own.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg(file).args(["--listen", "127.0.0.1", "--port", "0"]).args(extra);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap())).stderr(Stdio::from(slave)).stdout(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn xfer serve on a pty");
        // Close our copies of the slave, so the master reads EIO once the server is gone.
        drop(cmd);

        let tty = collect_text(File::from(master.try_clone().unwrap()));
        let context = tty.clone();
        let (addr, _) = read_banner(&mut child, move || format!("terminal:\n{}", context.lock().unwrap()));
        PtyServer { child, addr, master: File::from(master), tty }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tty(&self) -> String {
        self.tty.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Types `text` on the terminal.
    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to pty master");
        self.master.flush().unwrap();
    }

    fn wait_tty(&self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if pred(&self.tty()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        pred(&self.tty())
    }

    fn prompts(&self) -> usize {
        self.tty().matches(PROMPT).count()
    }

    /// Waits for the `n`th prompt (and the "in flight" line before the first).
    fn wait_prompt(&mut self, n: usize) {
        let ok = self.wait_tty(10, |t| t.contains("in flight") && t.matches(PROMPT).count() >= n);
        if !ok {
            let state = match self.child.try_wait() {
                Ok(Some(st)) => format!("server exited: {}", status_str(&st)),
                _ => "server still running".to_string(),
            };
            panic!("no prompt #{n} (with an \"in flight\" line) after SIGINT ({state}); terminal:\n{}", self.tty());
        }
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_exit(&mut self, secs: f64) -> Option<ExitStatus> {
        wait_child_exit(&mut self.child, secs)
    }

    /// Asserts the server exits with `code` within `secs`.
    fn assert_exits(&mut self, code: i32, secs: f64, what: &str) {
        match self.wait_exit(secs) {
            Some(st) => assert!(
                st.code() == Some(code),
                "{what}: expected exit code {code}, got {}; terminal:\n{}",
                status_str(&st),
                self.tty()
            ),
            None => panic!("{what}: server still running after {secs} s; terminal:\n{}", self.tty()),
        }
        std::thread::sleep(Duration::from_millis(50));
        let t = self.tty();
        assert!(!t.contains("panicked"), "{what}: server panicked:\n{t}");
    }
}

impl Drop for PtyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a plain server exits with `code` within `secs`.
fn assert_server_exits(server: &mut Server, code: i32, secs: f64, what: &str) {
    match wait_child_exit(&mut server.child, secs) {
        Some(st) => assert!(
            st.code() == Some(code),
            "{what}: expected exit code {code}, got {}; stderr:\n{}",
            status_str(&st),
            server.stderr()
        ),
        None => panic!("{what}: server still running after {secs} s; stderr:\n{}", server.stderr()),
    }
    std::thread::sleep(Duration::from_millis(50));
    let err = server.stderr();
    assert!(!err.contains("panicked"), "{what}: server panicked:\n{err}");
}

fn expected_response(data: &[u8]) -> Vec<u8> {
    let mut v = encoding::encode_ok(data.len() as u64, &digest_of(data)).to_vec();
    v.extend_from_slice(data);
    v
}

// ---------------------------------------------------------------------------------------
// 1. Terminal: Ctrl+C pauses accepting; "c" resumes; nonsense asks again.
// ---------------------------------------------------------------------------------------

/// Connects, sends a request, and decodes the refusal the server answers with.
fn paused_refusal(addr: SocketAddr) -> (encoding::Status, String) {
    let got = raw_fetch(addr, &raw_request(None)).expect("raw fetch while paused");
    match encoding::decode_response(&got) {
        Ok(encoding::Decoded::Done(encoding::Response::Refused { status, reason }, _)) => (status, reason),
        other => panic!("expected a refusal while paused, got {other:?} ({} bytes)", got.len()),
    }
}

#[test]
fn tty_ctrl_c_pauses_then_continue_resumes() {
    let dir = tempdir();
    let data = random_bytes((MIB + 3) as usize, 101);
    let file = write_file(dir.path(), "f.bin", &data);
    let mut srv = PtyServer::start(&file, &[]);

    // Works before anything happens.
    let out = dir.path().join("before.bin");
    assert_fetched(&out, &fetch(&srv.addr.to_string(), &out, &["--quiet"]), &data);

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);
    assert!(srv.is_alive(), "server died on Ctrl+C; terminal:\n{}", srv.tty());

    // Paused: a new client is not left waiting in the backlog; it is told at once to
    // come back ("unavailable: server paused"), and the pause is in the log.
    let t0 = Instant::now();
    let (status, reason) = paused_refusal(srv.addr);
    assert_eq!(status, encoding::Status::Unavailable, "reason: {reason}; terminal:\n{}", srv.tty());
    assert!(reason.contains("paused"), "reason {reason:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "the refusal took {:?}", t0.elapsed());
    let paused_fetch = fetch(&srv.addr.to_string(), &dir.path().join("paused.bin"), &["--quiet"]);
    assert_eq!(paused_fetch.status.code(), Some(6), "{}", describe(&paused_fetch));
    assert!(String::from_utf8_lossy(&paused_fetch.stderr).contains("paused"), "{}", describe(&paused_fetch));

    // Anything else asks again (and the server stays paused).
    srv.type_text("maybe\n");
    let ok = srv.wait_tty(10, |t| t.matches(PROMPT).count() >= 2);
    assert!(ok, "an unknown answer did not ask again; terminal:\n{}", srv.tty());
    assert_eq!(paused_refusal(srv.addr).0, encoding::Status::Unavailable);
    assert!(srv.is_alive(), "server exited on an unknown answer; terminal:\n{}", srv.tty());

    srv.type_text("c\n");
    let ok = srv.wait_tty(10, |t| t.to_ascii_lowercase().contains("resum"));
    assert!(ok, "no \"resumed\" line after answering c; terminal:\n{}", srv.tty());

    // And a new fetch works.
    let out = dir.path().join("after.bin");
    assert_fetched(&out, &fetch(&srv.addr.to_string(), &out, &["--quiet"]), &data);
    assert!(srv.is_alive());

    // The state machine is reset: another Ctrl+C asks again, and "e" with nothing in
    // flight exits 0 promptly.
    let before = srv.prompts();
    srv.signal(libc::SIGINT);
    srv.wait_prompt(before + 1);
    srv.type_text("e\n");
    let ok = srv.wait_tty(10, |t| t.to_ascii_lowercase().contains("exiting"));
    assert!(ok, "no \"exiting\" line after answering e; terminal:\n{}", srv.tty());
    srv.assert_exits(0, 10.0, "answer e with nothing in flight");
}

// ---------------------------------------------------------------------------------------
// 2. Terminal: a transfer keeps flowing while the question is open; "e" drains it.
// ---------------------------------------------------------------------------------------

#[test]
fn tty_transfer_keeps_flowing_while_prompt_is_open_then_exit_drains() {
    let dir = tempdir();
    let size = 160 * MIB;
    let (file, digest) = big_file(dir.path(), "big.bin", size, 202);
    let mut srv = PtyServer::start(&file, &[]);

    let rate = 16 * MIB;
    let reader = SlowReader::start(srv.addr, rate);
    // Let the transfer get going.
    let end = Instant::now() + Duration::from_secs(10);
    while reader.count() < MIB && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reader.count() >= MIB, "transfer did not start; terminal:\n{}", srv.tty());

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);

    // While the question is open, the client keeps receiving more than the kernel buffers
    // could have held: the server itself is still sending.
    let c0 = reader.count();
    std::thread::sleep(Duration::from_millis(2000));
    let c1 = reader.count();
    let bound = in_kernel_bound(SLOW_RCVBUF);
    assert!(srv.is_alive(), "server exited with the question open; terminal:\n{}", srv.tty());
    assert!(
        c1 - c0 > bound,
        "transfer stalled while the prompt was open: {} bytes in 2 s (kernel buffers alone hold up to {bound}); \
         terminal:\n{}",
        c1 - c0,
        srv.tty()
    );
    assert!(c1 < size, "transfer finished too early for the test to mean anything ({c1} of {size})");

    srv.type_text("e\n");
    let ok = srv.wait_tty(10, |t| t.to_ascii_lowercase().contains("exiting"));
    assert!(ok, "no \"exiting\" line after answering e; terminal:\n{}", srv.tty());

    // Still draining (not exited) while the transfer is unfinished, and still sending.
    let c2 = reader.count();
    std::thread::sleep(Duration::from_millis(700));
    let c3 = reader.count();
    assert!(c3 < size, "transfer finished too early for the test to mean anything ({c3} of {size})");
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; terminal:\n{}", srv.tty());
    assert!(c3 > c2, "transfer stopped moving while draining; terminal:\n{}", srv.tty());

    let res = reader.finish(60);
    assert_exact("in-flight transfer across Ctrl+C / e", res, size, &digest);
    srv.assert_exits(0, 15.0, "after the drained transfer");
    let t = srv.tty();
    assert!(t.contains("complete"), "no completion line for the drained transfer; terminal:\n{t}");
}

// ---------------------------------------------------------------------------------------
// 3. Terminal: a second Ctrl+C exits at once with 130 (prompt open, or draining after "e").
// ---------------------------------------------------------------------------------------

#[test]
fn tty_second_ctrl_c_while_prompt_is_open_exits_130() {
    let dir = tempdir();
    let (file, _) = big_file(dir.path(), "big.bin", 64 * MIB, 303);
    let mut srv = PtyServer::start(&file, &[]);
    // A transfer that will never finish, so only "at once" can explain a quick exit.
    let _stuck = stuck_client(srv.addr);
    std::thread::sleep(Duration::from_millis(200));

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);
    let t0 = Instant::now();
    srv.signal(libc::SIGINT);
    srv.assert_exits(130, 5.0, "second Ctrl+C with the prompt open");
    eprintln!("second Ctrl+C: exited after {:?}", t0.elapsed());
}

#[test]
fn tty_second_ctrl_c_while_draining_exits_130() {
    let dir = tempdir();
    let (file, _) = big_file(dir.path(), "big.bin", 64 * MIB, 304);
    let mut srv = PtyServer::start(&file, &[]);
    let _stuck = stuck_client(srv.addr);
    std::thread::sleep(Duration::from_millis(200));

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);
    srv.type_text("e\n");
    let ok = srv.wait_tty(10, |t| t.to_ascii_lowercase().contains("exiting"));
    assert!(ok, "no \"exiting\" line after answering e; terminal:\n{}", srv.tty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        srv.is_alive(),
        "server exited with a transfer unfinished (drain timeout is 30 s); terminal:\n{}",
        srv.tty()
    );
    srv.signal(libc::SIGINT);
    srv.assert_exits(130, 5.0, "second Ctrl+C while draining");
}

/// Ctrl+D (end of input) at the question counts as "exit".
#[test]
fn tty_eof_at_prompt_exits_0() {
    let dir = tempdir();
    let data = random_bytes(100_000, 305);
    let file = write_file(dir.path(), "f.bin", &data);
    let mut srv = PtyServer::start(&file, &[]);
    // Serving for sure (see `signal_right_after_banner_*` for the race before that).
    let out = dir.path().join("before.bin");
    assert_fetched(&out, &fetch(&srv.addr.to_string(), &out, &["--quiet"]), &data);
    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);
    // VEOF at the start of a line: the server's read returns 0.
    srv.type_text("\x04");
    srv.assert_exits(0, 10.0, "end of input at the prompt");
}

/// SIGTERM with a terminal drains without asking.
#[test]
fn tty_sigterm_drains_without_asking() {
    let dir = tempdir();
    let size = 96 * MIB;
    let (file, digest) = big_file(dir.path(), "big.bin", size, 306);
    let mut srv = PtyServer::start(&file, &[]);
    let reader = SlowReader::start(srv.addr, 16 * MIB);
    std::thread::sleep(Duration::from_millis(300));

    srv.signal(libc::SIGTERM);
    if let Err(last) = wait_refused(srv.addr, 10) {
        panic!("after SIGTERM (with a terminal) new connects were not refused ({last}); terminal:\n{}", srv.tty());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; terminal:\n{}", srv.tty());
    assert!(!srv.tty().contains(PROMPT), "SIGTERM asked a question; terminal:\n{}", srv.tty());
    assert!(reader.count() < size, "transfer finished too early for the test to mean anything");

    let res = reader.finish(60);
    assert_exact("in-flight transfer across SIGTERM (tty)", res, size, &digest);
    srv.assert_exits(0, 15.0, "SIGTERM drain with a terminal");
    assert!(!srv.tty().contains(PROMPT), "SIGTERM asked a question; terminal:\n{}", srv.tty());
}

// ---------------------------------------------------------------------------------------
// 4. No terminal: SIGTERM / SIGINT stop accepting, drain, exit 0.
// ---------------------------------------------------------------------------------------

fn no_tty_signal_drains(sig: i32, seed: u64) {
    let dir = tempdir();
    let size = 96 * MIB;
    let (file, digest) = big_file(dir.path(), "big.bin", size, seed);
    let mut srv = Server::start(&file, &[]);
    let reader = SlowReader::start(srv.addr, 16 * MIB);
    let end = Instant::now() + Duration::from_secs(10);
    while reader.count() < MIB && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }

    srv.signal(sig);
    if let Err(last) = wait_refused(srv.addr, 5) {
        panic!("after signal {sig} new connects were not refused within 5 s ({last}); stderr:\n{}", srv.stderr());
    }
    // Draining, not gone: the transfer is unfinished and still moving.
    let c0 = reader.count();
    std::thread::sleep(Duration::from_millis(500));
    let c1 = reader.count();
    assert!(c1 < size, "transfer finished too early for the test to mean anything ({c1} of {size})");
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; stderr:\n{}", srv.stderr());
    assert!(c1 > c0, "in-flight transfer stopped moving during the drain; stderr:\n{}", srv.stderr());

    let res = reader.finish(60);
    assert_exact(&format!("in-flight transfer across signal {sig}"), res, size, &digest);
    assert_server_exits(&mut srv, 0, 15.0, &format!("drain after signal {sig}"));
    let err = srv.stderr();
    assert!(err.contains("complete"), "no completion line for the drained transfer; stderr:\n{err}");
}

#[test]
fn no_tty_sigterm_refuses_new_drains_in_flight_exits_0() {
    no_tty_signal_drains(libc::SIGTERM, 404);
}

#[test]
fn no_tty_sigint_refuses_new_drains_in_flight_exits_0() {
    no_tty_signal_drains(libc::SIGINT, 405);
}

// ---------------------------------------------------------------------------------------
// 5. No terminal: the drain deadline force-closes a client that never reads.
// ---------------------------------------------------------------------------------------

#[test]
fn no_tty_drain_deadline_force_closes_stuck_client() {
    let dir = tempdir();
    let size = 64 * MIB;
    let (file, _) = big_file(dir.path(), "big.bin", size, 505);
    let mut srv = Server::start(&file, &["--drain-timeout", "1"]);
    let mut stuck = stuck_client(srv.addr);
    // Let the socket buffers fill up.
    std::thread::sleep(Duration::from_millis(500));
    assert!(srv.is_alive());

    let t0 = Instant::now();
    srv.signal(libc::SIGTERM);
    assert_server_exits(&mut srv, 0, 10.0, "drain deadline with a client that never reads");
    eprintln!("drain deadline: exited after {:?}", t0.elapsed());

    // The stuck client got a cut transfer, not the whole file.
    stuck.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stuck client after server exit: {e} after {total} bytes"),
        }
    }
    assert!(total < size, "stuck client received the whole file ({total}) though it never read during the drain");
}

// ---------------------------------------------------------------------------------------
// 6. No terminal: a second signal during the drain exits at once with 130.
// ---------------------------------------------------------------------------------------

fn no_tty_second_signal(first: i32, second: i32, seed: u64) {
    let dir = tempdir();
    let (file, _) = big_file(dir.path(), "big.bin", 64 * MIB, seed);
    let mut srv = Server::start(&file, &[]);
    let _stuck = stuck_client(srv.addr);
    std::thread::sleep(Duration::from_millis(200));

    srv.signal(first);
    // The drain has begun once the listener is closed; only then is a second signal a
    // second signal (two pending signals of one kind would merge).
    if let Err(last) = wait_refused(srv.addr, 5) {
        panic!("after signal {first} new connects were not refused within 5 s ({last}); stderr:\n{}", srv.stderr());
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(srv.is_alive(), "server exited with a transfer unfinished (drain timeout 30 s); stderr:\n{}", srv.stderr());
    srv.signal(second);
    assert_server_exits(&mut srv, 130, 5.0, &format!("second signal {second} during the drain"));
}

#[test]
fn no_tty_second_sigterm_during_drain_exits_130() {
    no_tty_second_signal(libc::SIGTERM, libc::SIGTERM, 606);
}

#[test]
fn no_tty_sigint_then_sigterm_during_drain_exits_130() {
    no_tty_second_signal(libc::SIGINT, libc::SIGTERM, 607);
}

// ---------------------------------------------------------------------------------------
// 7. SIGHUP after a replace-by-rename: in flight finishes the old file, new gets the new.
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_reload_after_rename_old_in_flight_new_for_new() {
    let dir = tempdir();
    let old_size = 96 * MIB;
    let (file, old_digest) = big_file(dir.path(), "served.bin", old_size, 707);
    let mut srv = Server::start(&file, &[]);
    let reader = SlowReader::start(srv.addr, 16 * MIB);
    match &reader.header {
        Response::Ok { size, digest } => {
            assert_eq!(*size, old_size);
            assert!(*digest == old_digest, "header digest is not the old file's");
        }
        other => panic!("{other:?}"),
    }

    let new_data = random_bytes((MIB + 12_345) as usize, 708);
    let tmp = write_file(dir.path(), "served.bin.tmp", &new_data);
    std::fs::rename(&tmp, &file).unwrap();
    srv.signal(libc::SIGHUP);
    let ok = srv.wait_stderr(10, |e| e.to_ascii_lowercase().contains("reload"));
    assert!(ok, "stderr does not mention reloading after SIGHUP; stderr:\n{}", srv.stderr());
    assert!(srv.is_alive(), "server exited on SIGHUP; stderr:\n{}", srv.stderr());

    // New clients get the new file.
    let out = dir.path().join("new.bin");
    assert_fetched(&out, &fetch(&srv.target(), &out, &["--quiet"]), &new_data);
    let raw = raw_fetch(srv.addr, &raw_request(None)).unwrap();
    assert!(raw == expected_response(&new_data), "raw fetch after reload is not the new file");

    // The transfer in flight since before the rename finishes the old file exactly.
    assert!(reader.count() < old_size, "old transfer finished too early for the test to mean anything");
    let res = reader.finish(60);
    assert_exact("transfer in flight across SIGHUP", res, old_size, &old_digest);

    assert!(srv.is_alive(), "server died; stderr:\n{}", srv.stderr());
    let err = srv.stderr();
    assert!(!err.contains("panicked"), "server panicked:\n{err}");
    assert!(!err.contains("cut ("), "a transfer was cut by the rename+SIGHUP:\n{err}");
}

// ---------------------------------------------------------------------------------------
// The `listening on` line is the readiness contract: a signal sent as soon as it is
// printed must already get the documented handling, not the default action (death).
// ---------------------------------------------------------------------------------------

#[test]
fn signal_right_after_banner_sigterm_no_tty_exits_0() {
    let dir = tempdir();
    let file = write_file(dir.path(), "f.bin", &random_bytes(100_000, 801));
    for round in 0..10 {
        let mut srv = Server::start(&file, &[]);
        srv.signal(libc::SIGTERM);
        assert_server_exits(&mut srv, 0, 10.0, &format!("SIGTERM right after the banner (round {round})"));
    }
}

#[test]
fn signal_right_after_banner_ctrl_c_on_tty_asks() {
    let dir = tempdir();
    let file = write_file(dir.path(), "f.bin", &random_bytes(100_000, 802));
    for _round in 0..10 {
        let mut srv = PtyServer::start(&file, &[]);
        srv.signal(libc::SIGINT);
        srv.wait_prompt(1);
        srv.type_text("e\n");
        srv.assert_exits(0, 10.0, "e after a Ctrl+C right after the banner");
    }
}
