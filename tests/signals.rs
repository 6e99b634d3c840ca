//! Signals: Ctrl+C on a terminal (under a pseudo-terminal), SIGINT/SIGTERM without one,
//! the drain, a second signal, and SIGHUP reloading the file. The drain deadline and the
//! client's own signals are in `promises`.
//!
//! Every wait is bounded; the only timing assertions are generous deadlines, and the few
//! sleeps are the subject (a transfer measured while a prompt is open, a server that must
//! not exit).

use crate::util::pty::Pty;
use crate::util::raw::{self, SLOW_RCVBUF, SlowReader, expected_response, in_kernel_bound, request, wait_refused};
use crate::util::*;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use encoding::xfer::Response;

const PROMPT: &str = "continue listening or exit? [c/e]";

/// `xfer serve` with stdin and stderr on a pseudo-terminal that is its controlling
/// terminal, stdout piped (for the address). Everything on the terminal (the server's
/// stderr and the echo of what we type) is collected in `tty`.
struct PtyServer {
    child: Child,
    addr: SocketAddr,
    pty: Pty,
}

impl PtyServer {
    fn start(file: &Path, extra: &[&str]) -> PtyServer {
        let mut pty = Pty::open();
        let mut cmd = serve_command(file, extra);
        pty.control(&mut cmd);
        cmd.stderr(pty.slave()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn xfer serve on a pty");
        // Close our copies of the slave, so the master reads EIO once the server is gone.
        drop(cmd);
        pty.release();
        let shown = pty.shown().clone();
        let (addr, _) = read_banner(&mut child, move || format!("terminal:\n{}", shown.text()));
        PtyServer { child, addr, pty }
    }

    fn tty(&self) -> String {
        self.pty.text()
    }

    fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }

    /// Types `text` on the terminal.
    fn type_text(&mut self, text: &str) {
        self.pty.type_text(text);
    }

    fn wait_tty(&self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        self.pty.wait_for(secs, pred)
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

    /// Answers "e" to the question and waits for the "exiting" line.
    fn answer_exit(&mut self) {
        self.type_text("e\n");
        let ok = self.wait_tty(10, |t| t.to_ascii_lowercase().contains("exiting"));
        assert!(ok, "no \"exiting\" line after answering e; terminal:\n{}", self.tty());
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the server exits with `code` within `secs`.
    fn assert_exits(&mut self, code: i32, secs: f64, what: &str) {
        assert_child_exits(&mut self.child, self.pty.shown(), code, Duration::from_secs_f64(secs), what);
    }
}

impl Drop for PtyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one whole response (header + body) from a connected stream, up to `secs`; it
/// must end with the server's clean close.
fn read_to_close(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    let got = raw::read_until_closed(s, Duration::from_secs(secs));
    assert!(got.closed_at.is_some() && !got.reset, "response not closed cleanly within {secs} s ({got:?})");
    got.data
}

// ---------------------------------------------------------------------------------------
// 1. Terminal: Ctrl+C pauses accepting; "c" resumes; nonsense asks again.
// ---------------------------------------------------------------------------------------

/// Connects, sends a request, and decodes the refusal the server answers with.
fn paused_refusal(addr: SocketAddr) -> (encoding::xfer::Status, String) {
    let got = raw::raw_fetch(addr, &request(None)).expect("raw fetch while paused");
    match encoding::xfer::decode_response(&got) {
        Ok(encoding::Decoded::Done(encoding::xfer::Response::Refused { status, reason, .. }, _)) => (status, reason),
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
    assert_eq!(status, encoding::xfer::Status::Unavailable, "reason: {reason}; terminal:\n{}", srv.tty());
    assert!(reason.contains("paused"), "reason {reason:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "the refusal took {:?}", t0.elapsed());
    let paused_fetch = fetch(&srv.addr.to_string(), &dir.path().join("paused.bin"), &["--quiet"]);
    assert_eq!(paused_fetch.status.code(), Some(6), "{}", describe(&paused_fetch));
    assert!(String::from_utf8_lossy(&paused_fetch.stderr).contains("paused"), "{}", describe(&paused_fetch));

    // Anything else asks again (and the server stays paused).
    srv.type_text("maybe\n");
    let ok = srv.wait_tty(10, |t| t.matches(PROMPT).count() >= 2);
    assert!(ok, "an unknown answer did not ask again; terminal:\n{}", srv.tty());
    assert_eq!(paused_refusal(srv.addr).0, encoding::xfer::Status::Unavailable);
    assert!(srv.is_alive(), "server exited on an unknown answer; terminal:\n{}", srv.tty());

    srv.type_text("c\n");
    let ok = srv.wait_tty(10, |t| t.to_ascii_lowercase().contains("resum"));
    assert!(ok, "no \"resumed\" line after answering c; terminal:\n{}", srv.tty());

    // A raw client gets exactly the response, ended by a clean close.
    let mut s = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5)).unwrap();
    std::io::Write::write_all(&mut s, &request(None)).unwrap();
    let got = read_to_close(&mut s, 20);
    assert!(got == expected_response(&data), "got {} bytes after resuming; terminal:\n{}", got.len(), srv.tty());
    // And a new fetch works.
    let out = dir.path().join("after.bin");
    assert_fetched(&out, &fetch(&srv.addr.to_string(), &out, &["--quiet"]), &data);
    assert!(srv.is_alive());

    // The state machine is reset: another Ctrl+C asks again, and "e" with nothing in
    // flight exits 0 promptly.
    let before = srv.prompts();
    srv.signal(libc::SIGINT);
    srv.wait_prompt(before + 1);
    srv.answer_exit();
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
    reader.wait_count(MIB, 10);

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);

    // While the question is open, the client keeps receiving more than the kernel buffers
    // could have held: the server itself is still sending.
    let c0 = reader.count();
    // The subject: how much moves in 2 s with the question open.
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

    srv.answer_exit();

    // Still draining (not exited) while the transfer is unfinished, and still sending.
    let c2 = reader.count();
    // The subject: the transfer keeps moving, and the server stays, while it drains.
    std::thread::sleep(Duration::from_millis(700));
    let c3 = reader.count();
    assert!(c3 < size, "transfer finished too early for the test to mean anything ({c3} of {size})");
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; terminal:\n{}", srv.tty());
    assert!(c3 > c2, "transfer stopped moving while draining; terminal:\n{}", srv.tty());

    reader.finish_exact(60, size, &digest, "in-flight transfer across Ctrl+C / e");
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
    let _stuck = raw::stalled_client(srv.addr, None);

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
    let _stuck = raw::stalled_client(srv.addr, None);

    srv.signal(libc::SIGINT);
    srv.wait_prompt(1);
    srv.answer_exit();
    // The subject: the server does not exit (the drain deadline is 30 s); only a wait shows it.
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
    reader.wait_count(MIB, 10);

    srv.signal(libc::SIGTERM);
    if let Err(last) = wait_refused(srv.addr, 10) {
        panic!("after SIGTERM (with a terminal) new connects were not refused ({last}); terminal:\n{}", srv.tty());
    }
    let c0 = reader.count();
    // The subject: the server stays and the transfer moves while it drains.
    std::thread::sleep(Duration::from_millis(300));
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; terminal:\n{}", srv.tty());
    assert!(reader.count() > c0, "in-flight transfer stopped moving during the drain; terminal:\n{}", srv.tty());
    assert!(!srv.tty().contains(PROMPT), "SIGTERM asked a question; terminal:\n{}", srv.tty());
    assert!(reader.count() < size, "transfer finished too early for the test to mean anything");

    reader.finish_exact(60, size, &digest, "in-flight transfer across SIGTERM (tty)");
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
    reader.wait_count(MIB, 10);

    srv.signal(sig);
    if let Err(last) = wait_refused(srv.addr, 5) {
        panic!("after signal {sig} new connects were not refused within 5 s ({last}); stderr:\n{}", srv.stderr());
    }
    // Draining, not gone: the transfer is unfinished and still moving.
    let c0 = reader.count();
    // The subject: the server stays and the transfer moves while it drains.
    std::thread::sleep(Duration::from_millis(500));
    let c1 = reader.count();
    assert!(c1 < size, "transfer finished too early for the test to mean anything ({c1} of {size})");
    assert!(srv.is_alive(), "server exited before its in-flight transfer finished; stderr:\n{}", srv.stderr());
    assert!(c1 > c0, "in-flight transfer stopped moving during the drain; stderr:\n{}", srv.stderr());

    reader.finish_exact(60, size, &digest, &format!("in-flight transfer across signal {sig}"));
    srv.assert_exits(0, 15.0, &format!("drain after signal {sig}"));
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
// 5. No terminal: a second signal during the drain exits at once with 130.
// ---------------------------------------------------------------------------------------

fn no_tty_second_signal(first: i32, second: i32, seed: u64) {
    let dir = tempdir();
    let (file, _) = big_file(dir.path(), "big.bin", 64 * MIB, seed);
    let mut srv = Server::start(&file, &[]);
    let _stuck = raw::stalled_client(srv.addr, None);

    srv.signal(first);
    // The drain has begun once the listener is closed; only then is a second signal a
    // second signal (two pending signals of one kind would merge).
    if let Err(last) = wait_refused(srv.addr, 5) {
        panic!("after signal {first} new connects were not refused within 5 s ({last}); stderr:\n{}", srv.stderr());
    }
    assert!(srv.is_alive(), "server exited with a transfer unfinished (drain timeout 30 s); stderr:\n{}", srv.stderr());
    srv.signal(second);
    srv.assert_exits(130, 5.0, &format!("second signal {second} during the drain"));
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
// 6. SIGHUP after a replace-by-rename: in flight finishes the old file, new gets the new.
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_reload_after_rename_old_in_flight_new_for_new() {
    let dir = tempdir();
    let old_size = 96 * MIB;
    let (file, old_digest) = big_file(dir.path(), "served.bin", old_size, 707);
    let mut srv = Server::start(&file, &[]);
    let reader = SlowReader::start(srv.addr, 16 * MIB);
    match &reader.header {
        Response::Ok { size, digest, .. } => {
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
    let raw = raw::raw_fetch(srv.addr, &request(None)).unwrap();
    assert!(raw == expected_response(&new_data), "raw fetch after reload is not the new file");

    // The transfer in flight since before the rename finishes the old file exactly.
    assert!(reader.count() < old_size, "old transfer finished too early for the test to mean anything");
    reader.finish_exact(60, old_size, &old_digest, "transfer in flight across SIGHUP");

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
        srv.assert_exits(0, 10.0, &format!("SIGTERM right after the banner (round {round})"));
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
