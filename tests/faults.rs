//! Fault injection: the cases of RELIABILITY.md provoked against the real binary.
//!
//! Network faults go through the in-test proxy (`util/proxy.rs`: delay, stall, reset, cut or
//! flip a bit at byte N); hostile and slow clients are raw sockets (`util/raw.rs`); several
//! client hosts are several 127.x.y.z source addresses. Every test that runs a server ends
//! with `assert_healthy`: alive, no panic, descriptors back to the baseline, idle CPU.
//!
//! Environment knobs: `XFER_FAULTS_QUICK=1` runs the tiny-window transfer with 64 MiB
//! instead of 256 MiB; `XFER_SOAK_SEED` / `XFER_SOAK_N` steer the randomized soak (`soak.rs`).

mod soak;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::encoding::{
    self,
    xfer::{Response, Status},
};
use crate::util::fake::Fake;
use crate::util::proxy::{Action, Plan, Proxy};
use crate::util::raw::*;
use crate::util::*;

/// Sends SIGCONT on drop, so a failing test never leaves a stopped server behind.
struct ContOnDrop(u32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        send_signal(self.0, libc::SIGCONT);
    }
}

/// Asserts a fetch failed with one of `codes` and left exactly `left` in `dir`.
fn assert_failed_clean(res: &Output, codes: &[i32], dir: &Path, left: &[&str]) {
    assert_failed(res, codes, "fetch");
    assert_eq!(dir_names(dir), left, "output directory after a failed fetch ({})", describe(res));
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Reactor and accept (RELIABILITY 1–7)
// ---------------------------------------------------------------------------------------

/// Case 1: Out of descriptors on accept: no busy loop, the running transfer goes on, and queued
/// clients are served again as soon as descriptors free up — without a new connection
/// arriving to wake the listener (edge-triggered readiness won't repeat itself).
#[test]
fn emfile_backs_off_keeps_serving_and_recovers() {
    let dir = tempdir();
    let size = 8 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 1);
    let mut cmd = serve_command(&path, &["--max-clients", "1000", "--max-per-ip", "1000"]);
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // A hard limit of 64 too, so the server cannot raise it.
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::spawn(&mut cmd);
    server.settle();
    let addr = server.addr;

    // The in-flight transfer: ~1.6 MB/s, so it runs through the whole episode.
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = progress.clone();
    let (mut s, r) = request_header(addr, None, Some(64 * 1024));
    let inflight = thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        drain(&mut s, Pace::bursts(16 * 1024, 32 * 1024, Duration::from_millis(20)), Some(&p2), false)
    });
    assert_eq!(r, Response::Ok { size, digest: dig, name: None, mac: None });

    // 200 clients that send a request and never read: each one the server accepts holds
    // a descriptor (its body does not fit the 4 KiB window), the rest wait in the backlog.
    let mut holders = Vec::new();
    for _ in 0..200 {
        let Ok(mut s) = connect(addr, None, Some(4096)) else { continue };
        let _ = s.write_all(&request(None));
        holders.push(s);
    }
    assert!(holders.len() >= 150, "only {} of 200 holders could connect", holders.len());
    let paused = server.wait_stderr(10, |e| e.contains("pausing new connections"));
    assert!(paused, "no \"pausing new connections\" within 10 s with 200 clients held; stderr:\n{}", server.stderr());
    assert!(server.is_alive(), "server died out of fds; stderr:\n{}", server.stderr());
    let held_fds = server.fd_count();

    // While out of descriptors: no spinning, and the in-flight transfer still moves.
    let p0 = progress.load(Ordering::SeqCst);
    assert!(p0 < size, "test design: the in-flight transfer ended before the server ran out of descriptors");
    let c0 = server.cpu_ticks();
    // The subject: one second out of descriptors, measured.
    thread::sleep(Duration::from_secs(1));
    let used = server.cpu_ticks() - c0;
    let moved = progress.load(Ordering::SeqCst) - p0;
    assert!(
        used <= 25,
        "server burnt {used} ticks (of 100) in 1 s while out of fds ({held_fds} open): spinning on accept?\nstderr:\n{}",
        server.stderr()
    );
    assert!(moved > 0, "in-flight transfer made no progress in 1 s while the server was out of fds");

    // Release the answered holders round by round; the queued ones must then be answered
    // without any new connection arriving. RELIABILITY.md: accepting resumes as soon as a
    // client is freed (or 200 ms have passed). Measured from our close, the answer also
    // waits for the RST to reach the server and for the scheduler on a shared 2-core box,
    // so a round may take up to 1 s (seen: 20-111 ms); a server that only retried on a
    // slow timer, or never, fails here.
    let mut waiting = holders;
    let mut rounds = 0;
    let mut worst = Duration::ZERO;
    let queued_at_start = waiting.iter().filter(|s| !readable_now(s)).count();
    assert!(queued_at_start > 0, "test design: no client was left queued behind EMFILE");
    let mut drained = false;
    for round in 0..200 {
        let (answered, still): (Vec<TcpStream>, Vec<TcpStream>) =
            std::mem::take(&mut waiting).into_iter().partition(readable_now);
        if still.is_empty() {
            drained = true;
            break;
        }
        assert!(
            !answered.is_empty(),
            "round {round}: {} clients queued and none answered: the server does not accept again after \
             descriptors are freed (EMFILE recovery)\nstderr tail:\n{}",
            still.len(),
            tail(&server.stderr(), 20)
        );
        rounds += 1;
        drop(answered); // unread data: RST, the server frees those clients
        let released = Instant::now();
        let got = wait_until(Duration::from_secs(1), || still.iter().any(readable_now));
        let waited = released.elapsed();
        assert!(
            got,
            "round {round}: none of the {} queued clients was answered within 1 s of freeing descriptors\n\
             stderr tail:\n{}",
            still.len(),
            tail(&server.stderr(), 20)
        );
        worst = worst.max(waited);
        waiting = still;
    }
    assert!(drained, "clients still queued after 200 rounds");
    eprintln!(
        "emfile: {queued_at_start} of 200 clients queued behind EMFILE, drained in {rounds} rounds, \
         worst wait after freeing {worst:?}, fds while held {held_fds}"
    );

    // The queued fetch waits in the backlog until descriptors are free; no retry needed.
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &std::fs::read(&path).unwrap());

    let d = inflight.join().unwrap();
    assert!(d.is_exact(size, &dig), "in-flight transfer corrupted: {} bytes, err {:?}", d.bytes, d.err);
    server.assert_healthy();
}

/// Case 2: 500 clients connect at once (from 100 source addresses, 5 each, under the default
/// per-address cap): every one gets the exact file.
#[test]
fn burst_of_500_clients_all_served() {
    let dir = tempdir();
    let data = random_bytes(20_000, 2);
    let path = write_file(dir.path(), "f.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let expected = Arc::new(expected_response(&data));
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
                    barrier.wait();
                    let mut s = connect(addr, Some(src), None).map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    s.write_all(&request(None)).map_err(|e| format!("send: {e}"))?;
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
    server.assert_healthy();
}

/// Case 3: Connections reset (or closed) while still in the accept queue (server stopped) are
/// each logged and skipped, none is taken for a finished transfer, and accepting goes on.
#[test]
fn connections_aborted_before_accept() {
    let dir = tempdir();
    let data = random_bytes(100_000, 3);
    let path = write_file(dir.path(), "f.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let addr = server.addr;
    server.signal(libc::SIGSTOP);
    let _cont = ContOnDrop(server.pid());
    let stat = format!("/proc/{}/stat", server.pid());
    let stopped = wait_until(Duration::from_secs(2), || {
        let st = std::fs::read_to_string(&stat).unwrap_or_default();
        st.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    });
    assert!(stopped, "the server was not stopped 2 s after SIGSTOP");
    let mut reset_ports = Vec::new();
    let mut closed_ports = Vec::new();
    for i in 0..100 {
        let mut s = connect(addr, None, None).expect("connect (into the stopped server's backlog)");
        if i % 2 == 0 {
            let _ = s.write_all(&request(None));
        }
        if i % 5 == 4 {
            closed_ports.push(port(&s));
            drop(s); // plain close
        } else {
            reset_ports.push(port(&s));
            reset(s);
        }
    }
    server.signal(libc::SIGCONT);
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &data);

    // Each of the 100 is accounted for: by its own log line, or by an `accept: ...; skipped`
    // line when accept(2) reported it aborted (which carries no address).
    let line_of = |log: &str, p: u16| log.lines().find(|l| l.contains(&format!(":{p} "))).map(str::to_string);
    let accounted = |log: &str| {
        let with_line = reset_ports.iter().chain(&closed_ports).filter(|p| line_of(log, **p).is_some()).count();
        with_line + count_lines(log, "; skipped")
    };
    let ok = server.wait_stderr(10, |log| accounted(log) >= 100);
    let log = server.stderr();
    assert!(ok, "only {} of 100 connections aborted before accept were logged:\n{log}", accounted(&log));
    assert_eq!(accounted(&log), 100, "more log lines than connections:\n{log}");
    for p in &reset_ports {
        if let Some(l) = line_of(&log, *p) {
            assert!(!l.contains("complete"), "a connection reset before accept was logged as a transfer: {l}");
        }
    }
    eprintln!(
        "aborted before accept: {} reset + {} closed; {} logged as skipped by accept",
        reset_ports.len(),
        closed_ports.len(),
        count_lines(&log, "; skipped")
    );
    server.assert_healthy();
}

/// Case 5: A 256 MiB file to a client with a 4 KiB receive buffer that reads in bursts: every
/// short write is resumed, the bytes arrive exact. (`XFER_FAULTS_QUICK=1`: 64 MiB.)
#[test]
fn tiny_window_bursty_reader_gets_exact_bytes() {
    let quick = std::env::var_os("XFER_FAULTS_QUICK").is_some();
    let size = if quick { 64 * MIB } else { 256 * MIB };
    let dir = tempdir();
    let (path, dig) = big_file(dir.path(), "big.bin", size, 5);
    let mut server = Server::settled(&path, &[]);
    let t = Instant::now();
    let (mut s, r) = request_header(server.addr, None, Some(4096));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(r, Response::Ok { size, digest: dig, name: None, mac: None });
    // Case 18 on the side: while serving, the file is not mapped (a truncation would SIGBUS).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap_or_default();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!maps.lines().any(|l| l.contains(&name)), "the served file is mmapped:\n{maps}");
    let d = drain(&mut s, Pace::bursts(4096, 256 * 1024, Duration::from_millis(5)), None, false);
    eprintln!("tiny window: {} MiB in {:?}", size / MIB, t.elapsed());
    assert!(d.is_exact(size, &dig), "got {} of {size} bytes, err {:?}, digest ok: {}", d.bytes, d.err, d.digest == dig);
    server.assert_healthy();
}

/// Case 6: A peer that resets mid-transfer (and one that resets right after its request) is
/// closed; the clients around it are untouched.
#[test]
fn peer_reset_mid_transfer_others_untouched() {
    let dir = tempdir();
    let size = 16 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 6);
    let mut server = Server::settled(&path, &[]);
    let addr = server.addr;
    // Three bystanders, surely in flight (served their header) before the victims act.
    let others: Vec<_> = (0..3)
        .map(|_| {
            let (mut s, r) = request_header(addr, None, Some(64 * 1024));
            assert_eq!(r, Response::Ok { size, digest: dig, name: None, mac: None });
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                drain(&mut s, Pace::bursts(64 * 1024, 256 * 1024, Duration::from_millis(10)), None, false)
            })
        })
        .collect();
    // Victim 1: reads 1 MiB, then resets.
    let (mut v, r) = request_header(addr, None, Some(64 * 1024));
    assert!(matches!(r, Response::Ok { .. }));
    let vport = port(&v);
    let mut first = vec![0u8; MIB as usize];
    v.read_exact(&mut first).expect("victim: 1 MiB of body");
    reset(v);
    // Victim 2: resets right after its request.
    let mut v2 = connect(addr, None, None).unwrap();
    v2.write_all(&request(None)).unwrap();
    reset(v2);
    // A normal fetch alongside.
    let out = dir.path().join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert!(r.status.success(), "{}", describe(&r));
    assert_eq!(digest(&std::fs::read(&out).unwrap()), dig);
    for h in others {
        let d = h.join().unwrap();
        assert!(d.is_exact(size, &dig), "a bystander got {} bytes, err {:?}", d.bytes, d.err);
    }
    // Case 7 on the side: SIGPIPE stays ignored (writev/sendfile have no MSG_NOSIGNAL).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap_or_default();
    let ign = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(str::trim).unwrap_or("0");
    let mask = u64::from_str_radix(ign, 16).unwrap_or(0);
    assert!(mask & (1 << (libc::SIGPIPE - 1)) != 0, "SIGPIPE is not ignored (SigIgn {ign})");
    let line = server.expect_log(vport, 5);
    assert!(!line.contains("complete"), "reset client logged as complete: {line}");
    server.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// Slow and hostile clients (RELIABILITY 8–13)
// ---------------------------------------------------------------------------------------

/// Case 8: A client that never reads is closed after `--send-timeout`, and logged "timed out";
/// meanwhile other clients are served whole. (How fast they are served beside it is a
/// benchmark's question, not a test's: this machine is shared.)
#[test]
fn never_reading_client_times_out_others_unaffected() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 8);
    let file = std::fs::read(&path).unwrap();
    let mut server = Server::settled(&path, &["--send-timeout", "4"]);
    let addr = server.addr;
    let mut stuck = stalled_client(addr, None);
    let sport = port(&stuck);
    let since = Instant::now();
    for _ in 0..3 {
        let (r, d) = fetch_raw(addr, None, None, &request(None), Pace::fast(), false).expect("raw fetch");
        assert_eq!(r, Response::Ok { size, digest: dig, name: None, mac: None });
        assert!(d.is_exact(size, &dig));
    }
    let served_in = since.elapsed();
    assert!(
        server.wait_log(sport, 0).is_none(),
        "test design: the stuck client was closed before the others were served ({served_in:?})"
    );
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &file);

    let line = server.expect_log(sport, 10);
    let after = since.elapsed();
    assert!(line.contains("timed out"), "stuck client logged as: {line}");
    assert!(after >= Duration::from_millis(3600), "stuck client cut after only {after:?} (timeout is 4 s)");
    // Closed by the server; what it still holds for us (after the header it read) is the
    // exact start of the body, and far from all of it.
    let got = read_until_closed(&mut stuck, Duration::from_secs(5));
    assert!(got.closed_at.is_some(), "timed-out client's connection still open 5 s after its log line");
    let n = got.data.len();
    assert!(n < file.len() && got.data == file[..n], "the stuck client's {n} bytes are not the start of the body");
    server.assert_healthy();
}

/// Case 9: A request dribbled one byte per 200 ms is cut by the total request deadline
/// (`--request-timeout 1`), long before it completes; a silent client too.
#[test]
fn dribbled_request_hits_total_deadline() {
    let dir = tempdir();
    let data = random_bytes(1000, 9);
    let path = write_file(dir.path(), "f.bin", &data);
    let mut server = Server::settled(&path, &["--request-timeout", "1"]);
    let req = request(None);
    let mut silent = connect(server.addr, None, None).unwrap();
    let silent_since = Instant::now();
    let mut s = connect(server.addr, None, None).unwrap();
    s.set_nodelay(true).unwrap();
    let since = Instant::now();
    let mut sent = 0;
    let mut closed = None;
    let mut buf = [0u8; 512];
    // The subject: one byte every 200 ms (48 rounds at most, 6 s at most).
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
    let got = read_until_closed(&mut silent, Duration::from_secs(4));
    let at = got.closed_at.unwrap_or_else(|| panic!("silent client still open after {:?}", silent_since.elapsed()));
    let elapsed = at - silent_since;
    assert!(elapsed <= Duration::from_secs(3), "silent client closed after {elapsed:?}");
    let out = dir.path().join("out.bin");
    assert_fetched(&out, &fetch(&server.target(), &out, &[]), &data);
    server.assert_healthy();
}

/// Expects a refusal with `want` on a connection that has sent its request, within `secs`.
fn assert_refused(s: &mut TcpStream, want: Status, secs: u64, what: &str) {
    let t = Instant::now();
    let got = read_until_closed(s, Duration::from_secs(secs));
    let at = got
        .closed_at
        .unwrap_or_else(|| panic!("{what}: neither refused nor closed within {secs} s ({} bytes)", got.data.len()));
    match encoding::xfer::decode_response(&got.data) {
        Ok(encoding::Decoded::Done(Response::Refused { status, reason, .. }, n)) => {
            assert_eq!(status, want, "{what}: reason {reason:?}");
            assert_eq!(n, got.data.len(), "{what}: bytes after the refusal");
        }
        other => panic!("{what}: expected a {want:?} refusal, got {other:?} ({} bytes)", got.data.len()),
    }
    let took = at - t;
    assert!(took <= Duration::from_millis(1500), "{what}: refused only after {took:?}");
}

/// Case 10: `--max-clients 4`: with four clients in, a fifth is refused "busy" at once (the
/// fetch exits 6), and is served once the others leave.
#[test]
fn max_clients_refuses_busy_fast() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 10);
    let mut server = Server::settled(&path, &["--max-clients", "4"]);
    let addr = server.addr;
    let stuck: Vec<TcpStream> = (0..4).map(|_| stalled_client(addr, None)).collect();

    let mut s = connect(addr, None, None).unwrap();
    let _ = s.write_all(&request(None));
    assert_refused(&mut s, Status::Busy, 3, "5th client");

    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(stderr_of(&r).to_lowercase().contains("busy"), "no 'busy' in: {}", stderr_of(&r));

    // Once the server has let the four go (its log line comes after their slots are
    // free), a fetch is served.
    let ports: Vec<u16> = stuck.iter().map(port).collect();
    drop(stuck);
    for p in ports {
        server.expect_log(p, 5);
    }
    let r = fetch(&server.target(), &out, &[]);
    assert!(r.status.success(), "fetch after the stuck clients left: {}", describe(&r));
    assert_eq!(digest(&std::fs::read(&out).unwrap()), dig);
    server.assert_healthy();
}

/// Case 11: `--max-per-ip 2`: a third connection from 127.0.0.1 is refused busy, while a client
/// from 127.0.0.2 is served.
#[test]
fn max_per_ip_refuses_busy_other_address_served() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, dig) = big_file(dir.path(), "big.bin", size, 11);
    let mut server = Server::settled(&path, &["--max-per-ip", "2"]);
    let addr = server.addr;
    let stuck: Vec<TcpStream> = (0..2).map(|_| stalled_client(addr, Some(ip(127, 0, 0, 1)))).collect();

    let mut s = connect(addr, Some(ip(127, 0, 0, 1)), None).unwrap();
    let _ = s.write_all(&request(None));
    assert_refused(&mut s, Status::Busy, 3, "3rd client from 127.0.0.1");
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(stderr_of(&r).to_lowercase().contains("busy"), "no 'busy' in: {}", stderr_of(&r));

    let (resp, d) = fetch_raw(addr, Some(ip(127, 0, 0, 2)), None, &request(None), Pace::fast(), false)
        .expect("client from 127.0.0.2");
    assert_eq!(
        resp,
        Response::Ok { size, digest: dig, name: None, mac: None },
        "client from another address was not served"
    );
    assert!(d.is_exact(size, &dig));
    let ports: Vec<u16> = stuck.iter().map(port).collect();
    drop(stuck);
    for p in ports {
        server.expect_log(p, 5);
    }
    let r = fetch(&server.target(), &out, &[]);
    assert!(r.status.success(), "{}", describe(&r));
    server.assert_healthy();
}

/// Case 12: Junk instead of a request is closed without an answer, at once; the right magic
/// with a bad version or bad bits gets a refusal header.
#[test]
fn junk_and_malformed_requests() {
    let dir = tempdir();
    let data = random_bytes(5000, 12);
    let path = write_file(dir.path(), "f.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let addr = server.addr;

    let mut junks: Vec<(&str, Vec<u8>)> = vec![
        // HTTP shares the port (tests/http.rs); a lower-case method is no HTTP.
        ("not-http", b"get / http/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
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
        let got = read_until_closed(&mut s, Duration::from_secs(4));
        let bytes = &got.data;
        assert!(bytes.is_empty(), "{what}: junk got an answer: {:02x?}", &bytes[..bytes.len().min(64)]);
        assert!(
            got.closed_at.is_some_and(|at| at - t <= Duration::from_secs(2)),
            "{what}: junk connection not closed promptly ({:?})",
            t.elapsed()
        );
    }

    // A request cut short by the client's EOF: closed, nothing leaks.
    let mut s = connect(addr, None, None).unwrap();
    s.write_all(&request(None)[..20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(4));
    assert!(got.closed_at.is_some(), "half a request then EOF: connection not closed");

    let good = request(None);
    let cases: [(&str, usize, u8, Status); 5] = [
        ("version 3", 4, 3, Status::UnsupportedVersion),
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
    server.assert_healthy();
}

/// Case 13: After the last byte the server half-closes and drains: a client that sent junk after
/// its request and reads slowly still gets every byte and a clean EOF, not an RST.
#[test]
fn no_reset_after_last_byte_with_unread_input() {
    let dir = tempdir();
    let size = 2 * MIB;
    let (path, dig) = big_file(dir.path(), "f.bin", size, 13);
    let mut server = Server::settled(&path, &[]);
    for round in 0..2 {
        let mut s = connect(server.addr, None, Some(16 * 1024)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut msg = request(None).to_vec();
        msg.extend_from_slice(&random_bytes(4096 + round * 30_000, 130 + round as u64));
        s.write_all(&msg).unwrap();
        let r = read_response(&mut s).expect("header");
        assert_eq!(r, Response::Ok { size, digest: dig, name: None, mac: None });
        // Slow, with long pauses near the end so the server finishes writing while the
        // tail is still queued in its socket.
        let mut h = blake3::Hasher::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 4096];
        let marks = [512 * 1024u64, 128 * 1024, 32 * 1024, 8 * 1024];
        let mut next_mark = 0;
        let err = loop {
            if next_mark < marks.len() && size - got <= marks[next_mark] {
                // The subject: a reader that pauses near the end.
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
    server.assert_healthy();
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
        let mut server = Server::settled(&path, &[]);
        let out = dir.path().join(format!("out-{n}.bin"));
        let r = fetch(&server.target(), &out, &[]);
        assert_fetched(&out, &r, &data);
        let (resp, d) = fetch_raw(server.addr, None, None, &request(None), Pace::fast(), true).unwrap();
        assert_eq!(resp, Response::Ok { size: n as u64, digest: digest(&data), name: None, mac: None }, "size {n}");
        assert!(d.err.is_none() && d.data == data, "size {n}: raw body differs");
        server.assert_healthy();
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
    // The server hashes 4 GiB before it says where it listens: on a busy machine that can
    // take longer than the usual wait for the banner.
    let mut server = Server::start_within(&path, &[], Duration::from_secs(120));
    let mut s = connect(server.addr, None, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request(None)).unwrap();
    let Response::Ok { size: hsize, digest: hdig, .. } = read_response(&mut s).expect("header") else {
        panic!("refused")
    };
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
    server.assert_healthy();
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
        let mut server = Server::settled(&path, &[]);
        let (mut s, resp) = request_header(server.addr, None, Some(64 * 1024));
        let cport = port(&s);
        assert_eq!(resp, Response::Ok { size, digest: dig, name: None, mac: None });
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
                        // The subject: a reader slow enough that the file is cut under it.
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
        let line = server.expect_log(cport, 5);
        assert!(!line.contains("complete"), "truncated transfer logged as complete: {line}");
        eprintln!("truncate to {cut_to}: client got {got} bytes, err {err:?}; server: {line}");
        server.assert_healthy();
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
        let mut server = Server::settled(&path, &[]);
        let mut plan = Plan::slow_down(64 * 1024, Duration::from_millis(10));
        plan.server_rcvbuf = rcvbuf;
        let proxy = Proxy::start(server.addr, plan);
        let outdir = dir.path().join(format!("out-{round}"));
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("out.bin");
        let target = proxy.target();
        let o2 = out.clone();
        let h = thread::spawn(move || fetch(&target, &o2, &[]));
        let started = wait_until(Duration::from_secs(10), || proxy.down_bytes() >= MIB);
        assert!(started, "transfer did not start ({} bytes in 10 s)", proxy.down_bytes());
        let at_change = proxy.down_bytes();
        let changed_at = Instant::now();
        overwrite_in_place(&path, 0, 7000);
        let r = h.join().unwrap();
        let ended = changed_at.elapsed();
        let sport = proxy.server_ports().first().copied().unwrap_or(0);
        let line = server.wait_log(sport, 5);
        eprintln!(
            "overwrite in place (proxy rcvbuf {rcvbuf:?}): fetch exit {:?} ({}); server: {line:?}",
            r.status.code(),
            stderr_of(&r).trim()
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
        server.assert_healthy();
    }
}

// ---------------------------------------------------------------------------------------
// The client (RELIABILITY 20–25) through the fault proxy and fake servers
// ---------------------------------------------------------------------------------------

/// A server with a 4 MiB file for the client-side tests.
fn client_fixture(seed: u64) -> (tempfile::TempDir, Vec<u8>, Server) {
    let dir = tempdir();
    let data = random_bytes(4 * MIB as usize, seed);
    let path = write_file(dir.path(), "in.bin", &data);
    let server = Server::settled(&path, &[]);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    (dir, data, server)
}

/// Case 20: The server dies mid-transfer (an RST at byte N): non-zero exit, nothing at the output
/// path, an older file there untouched.
#[test]
fn client_server_dies_mid_transfer() {
    let (dir, _data, mut server) = client_fixture(20);
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
    server.assert_healthy();
}

/// Case 23: One flipped bit in the body: digest mismatch, exit 4, nothing left. A flip in the
/// header's magic, size or digest fails too.
#[test]
fn client_bit_flip_fails_verification() {
    let (dir, data, mut server) = client_fixture(23);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    // fetch speaks version 2: the header, then the file's name ("in.bin"), then the body.
    let head = 48 + "in.bin".len() as u64;
    for (at, bit, codes) in [
        (head + 2 * MIB + 7, 3u8, &[4][..]),
        (head + data.len() as u64 - 1, 0, &[4][..]),
        (head, 7, &[4][..]),
        (1, 0, &[4][..]),
        (20, 5, &[4][..]),
        (15, 0, &[3, 4][..]), // size off by one: short or long body
    ] {
        let proxy = Proxy::start(server.addr, Plan::down(at, Action::Flip(bit)));
        let r = fetch(&proxy.target(), &out, &["--timeout", "3"]);
        assert_eq!(proxy.fired(), 1);
        assert_failed(&r, codes, &format!("flip at byte {at} bit {bit}"));
        assert_nothing_left(&outdir, &out, None, &format!("flip at byte {at} bit {bit}"));
    }
    server.assert_healthy();
}

/// Case 20: The connection is closed cleanly (FIN) early: exit 3, nothing left.
#[test]
fn client_cut_mid_transfer() {
    let (dir, _data, mut server) = client_fixture(21);
    let outdir = dir.path().join("out");
    let out = outdir.join("out.bin");
    for at in [48 + MIB, 48, 30] {
        let proxy = Proxy::start(server.addr, Plan::down(at, Action::Cut));
        let r = fetch(&proxy.target(), &out, &[]);
        let codes: &[i32] = if at >= 48 { &[3] } else { &[3, 4] };
        assert_failed_clean(&r, codes, &outdir, &[]);
    }
    server.assert_healthy();
}

/// Case 25: The stream stalls (the server or the path goes silent): `--timeout 1` gives exit 3
/// within a few seconds; so does a server that accepts and never answers, and a connect
/// that hangs.
#[test]
fn client_stall_and_silence_time_out() {
    let (dir, _data, mut server) = client_fixture(25);
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
    let fake = Fake::reply(Vec::new(), true);
    let t = Instant::now();
    let r = fetch(&fake.target(), &out, &["--timeout", "1"]);
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
    assert!(fillers.len() < 4, "test design: the accept queue never filled, so no connect would hang");
    let t = Instant::now();
    let r = fetch(&laddr.to_string(), &out, &["--timeout", "1"]);
    assert_failed_clean(&r, &[3], &outdir, &[]);
    assert!(t.elapsed() <= Duration::from_secs(4), "hanging connect: fetch took {:?}", t.elapsed());
    drop(fillers);
    server.assert_healthy();
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
    let ok = encoding::xfer::encode_ok(body.len() as u64, &digest(&body));
    let with = |mut h: [u8; 48], at: usize, v: u8| {
        h[at] = v;
        [&h[..], &body[..]].concat()
    };
    let mut refusal = [0u8; encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON];
    let n = encoding::xfer::encode_refusal(Status::Other(200), "go away, says the fake", &mut refusal);
    let huge = [&encoding::xfer::encode_ok(u64::MAX, &[7; 32])[..], &random_bytes(100_000, 22)[..]].concat();
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
        let fake = Fake::reply(reply, false);
        let t = Instant::now();
        let r = fetch(&fake.target(), &out, &["--timeout", "3"]);
        assert_failed(&r, codes, what);
        assert!(t.elapsed() < Duration::from_secs(6), "{what}: took {:?}", t.elapsed());
        let e = stderr_of(&r);
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
    // Whether a tmpfs can be mounted here is known only by trying; try before anything else.
    let mnt_dir = tempdir();
    let mnt = mnt_dir.path().to_path_buf();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).stderr(Stdio::null()).status();
    if !mounted.as_ref().is_ok_and(|s| s.success()) {
        skipped("client_disk_full", &format!("cannot mount a 1 MiB tmpfs here ({mounted:?}; needs CAP_SYS_ADMIN)"));
        return;
    }
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let (_dir, _data, mut server) = client_fixture(22);
    let out = mnt.join("out.bin");
    std::fs::write(&out, b"old").unwrap();
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[5], &mnt, &["out.bin"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    std::fs::remove_file(&out).unwrap();
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[5], &mnt, &[]);
    server.assert_healthy();
}

/// Case 24: The client killed at random moments: the output path holds the old file or the whole
/// new one, never a part.
#[test]
fn client_killed_leaves_old_or_whole() {
    let dir = tempdir();
    let data = random_bytes(8 * MIB as usize, 24);
    let path = write_file(dir.path(), "in.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let proxy = Proxy::start(server.addr, Plan::slow_down(64 * 1024, Duration::from_millis(10)));
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    std::fs::write(&out, b"old").unwrap();
    let mut rng = Rng::new(24);
    let mut completed = 0;
    let mut mid_transfer = 0;
    for _ in 0..6 {
        let mut child = fetch_command(&proxy.target(), &out, &["--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The subject: a kill at a random moment of the transfer (about 1.3 s long).
        thread::sleep(Duration::from_millis(rng.below(2500)));
        let pid = format!(".xfer-{}-", child.id());
        let writing = dir_names(&outdir).iter().any(|n| is_temp_of(n, "out.bin") && n.contains(&pid));
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            completed += 1;
        } else if writing {
            mid_transfer += 1;
        }
        let now = std::fs::read(&out).expect("output path vanished");
        assert!(now == b"old" || now == data, "output holds {} bytes: neither old nor new", now.len());
        if now == data {
            std::fs::write(&out, b"old").unwrap();
        }
    }
    eprintln!("killed fetches: {completed} of 6 had completed before the kill, {mid_transfer} were mid-transfer");
    assert!(mid_transfer > 0, "test design: no fetch was killed while writing its temporary file");
    drop(proxy);
    server.assert_healthy();
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
    let mut server = Server::settled(&path, &["--allow", "127.0.0.2/32"]);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed_clean(&r, &[6], &outdir, &[]);
    assert!(stderr_of(&r).contains("not allowed"), "no 'not allowed' in: {}", stderr_of(&r));
    let (status, _) = expect_refusal(server.addr, Some(ip(127, 0, 0, 1)), &request(None));
    assert_eq!(status, Status::Forbidden);
    let (resp, d) = fetch_raw(server.addr, Some(ip(127, 0, 0, 2)), None, &request(None), Pace::fast(), true).unwrap();
    assert_eq!(resp, Response::Ok { size: data.len() as u64, digest: digest(&data), name: None, mac: None });
    assert!(d.err.is_none() && d.data == data);
    server.assert_healthy();
}

/// A token from `XFER_TOKEN` on the server: no token or a wrong one → exit 6 naming the
/// token; `--token` or `XFER_TOKEN` on the client → served.
#[test]
fn token_required() {
    let dir = tempdir();
    let data = random_bytes(300_000, 31);
    let path = write_file(dir.path(), "in.bin", &data);
    let mut server = Server::spawn(serve_command(&path, &[]).env("XFER_TOKEN", "s3cret"));
    server.settle();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let run = |env: Option<&str>, args: &[&str]| {
        let mut c = fetch_command(&server.target(), &out, args);
        if let Some(v) = env {
            c.env("XFER_TOKEN", v);
        }
        run_with_timeout(&mut c, 60)
    };
    let tokens = tempdir();
    let wrong = secret_file(tokens.path(), "wrong", b"nope\n");
    let right = secret_file(tokens.path(), "right", b"s3cret\n");
    for (what, env, args) in [
        ("no token", None, &[][..]),
        ("wrong --token-file", None, &["--token-file", wrong.to_str().unwrap()][..]),
        ("wrong XFER_TOKEN", Some("s3cre"), &[][..]),
    ] {
        let r = run(env, args);
        assert_failed_clean(&r, &[6], &outdir, &[]);
        assert!(stderr_of(&r).contains("token"), "{what}: no 'token' in: {}", stderr_of(&r));
    }
    let (status, _) = expect_refusal(server.addr, None, &request(None));
    assert_eq!(status, Status::BadToken);
    let (status, _) = expect_refusal(server.addr, None, &request(Some("wrong")));
    assert_eq!(status, Status::BadToken);
    // Five failures from this address earned a short penalty (docs/SECURITY.md): until it
    // passes even the right token is refused the same way; after it, it is served.
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = run(None, &["--token-file", right.to_str().unwrap()]);
        if r.status.success() || Instant::now() > deadline {
            break r;
        }
        assert_failed_clean(&r, &[6], &outdir, &[]);
        thread::sleep(Duration::from_millis(250));
    };
    assert_fetched(&out, &r, &data);
    std::fs::remove_file(&out).unwrap();
    let r = run(Some("s3cret"), &[]);
    assert_fetched(&out, &r, &data);
    server.assert_healthy();
}
