//! What README.md and docs/RELIABILITY.md promise and no other test checked: one test per
//! promise, named after it, each able to fail when the promised behaviour breaks.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::encoding::xfer::{Response, Status};
use crate::util::fake::{Scripted, send_slowly};
use crate::util::proxy::{Action, Plan, Proxy};
use crate::util::pty::run_with_stderr_on_pty;
use crate::util::raw::{self, expect_refusal, port, request, request_header, stalled_client};
use crate::util::*;

// ---------------------------------------------------------------------------------------
// README: "A failed or interrupted fetch leaves nothing behind. An older file at OUT stays
// as it was." Exit code 130: interrupted. A signal's exit code is 128 + its number.
// ---------------------------------------------------------------------------------------

/// Sends `sig` to `xfer fetch` while it is writing its temporary file (through a slow link,
/// so the transfer is surely in progress), without and then with an older output. The
/// fetch must exit with one of `codes`, and the directory must hold exactly what it held
/// before: nothing, or the older output unchanged.
fn interrupted_fetch_leaves_nothing(sig: i32, codes: &[i32], seed: u64) {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, _) = big_file(dir.path(), "big.bin", size, seed);
    let server = Server::start(&path, &[]);
    // About 6 MB/s, with a small window toward the server: 32 MiB take seconds.
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(server.addr, slow);
    for old in [None, Some(&b"an older output\n"[..])] {
        let what = format!("signal {sig} to fetch (older output: {})", old.is_some());
        let outdir = dir.path().join(format!("out-{}", old.is_some()));
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("out.bin");
        if let Some(old) = old {
            std::fs::write(&out, old).unwrap();
        }
        let mut child = fetch_command(&proxy.target(), &out, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetch");
        let stderr = Collected::spawn(child.stderr.take().unwrap());
        let from = proxy.down_bytes();
        let writing = wait_until(Duration::from_secs(20), || {
            dir_names(&outdir).iter().any(|n| is_temp_of(n, "out.bin")) && proxy.down_bytes() - from >= 48 + MIB
        });
        assert!(writing, "{what}: the transfer did not get going: {:?}\n{}", dir_names(&outdir), stderr.text());
        send_signal(child.id(), sig);
        let st = wait_child_exit(&mut child, Duration::from_secs(10));
        let Some(st) = st else {
            let _ = child.kill();
            panic!("{what}: fetch still running 10 s after the signal\n{}", stderr.text());
        };
        assert!(proxy.down_bytes() - from < size, "test design: {what}: the whole file got through first");
        assert!(stderr.wait_eof(Duration::from_secs(5)), "{what}: stderr not closed after the exit");
        let left = dir_names(&outdir);
        assert!(
            st.code().is_some_and(|c| codes.contains(&c)),
            "{what}: expected exit code in {codes:?}, got {}; left in the output directory: {left:?}\nstderr:\n{}",
            status_str(&st),
            stderr.text()
        );
        let name = match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        assert!(
            stderr.text().contains(&format!("interrupted ({name})")),
            "{what}: the message does not name {name}:\n{}",
            stderr.text()
        );
        assert_nothing_left(&outdir, &out, old, &what);
    }
}

#[test]
fn fetch_interrupted_by_sigint_exits_130_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGINT, &[130], 2001);
}

#[test]
fn fetch_interrupted_by_sigterm_exits_143_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGTERM, &[143], 2002);
}

/// Issue 8, item 5: closing the terminal (SIGHUP) is handled like Ctrl+C and SIGTERM.
#[test]
fn item05_sighup_during_a_fetch_exits_129_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGHUP, &[129], 2003);
}

// ---------------------------------------------------------------------------------------
// README: "`-` as output writes to stdout, still verified: a mismatch exits 4, though the
// bytes have already gone out."
// ---------------------------------------------------------------------------------------

/// `xfer fetch TARGET - EXTRA...` run in `cwd`.
fn fetch_to_stdout(target: &str, cwd: &Path, extra: &[&str]) -> std::process::Output {
    run_with_timeout(fetch_command(target, Path::new("-"), extra).current_dir(cwd), 60)
}

#[test]
fn fetch_to_stdout_writes_exactly_the_file() {
    let dir = tempdir();
    let data = random_bytes((3 * MIB + 17) as usize, 2010);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &[]);
    let cwd = tempdir();
    let res = fetch_to_stdout(&server.target(), cwd.path(), &[]);
    assert!(res.status.success(), "fetch to stdout failed:\n{}", stderr_of(&res));
    assert!(
        res.stdout == data,
        "stdout: {} bytes, expected exactly the {} bytes of the file",
        res.stdout.len(),
        data.len()
    );
    assert!(error_lines(&res).is_empty(), "success printed an error line:\n{}", stderr_of(&res));
    assert!(dir_names(cwd.path()).is_empty(), "fetch to stdout wrote files: {:?}", dir_names(cwd.path()));
}

#[test]
fn fetch_to_stdout_still_verifies_a_flipped_bit_exits_4() {
    let dir = tempdir();
    let data = random_bytes((4 * MIB) as usize, 2011);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &[]);
    let at = 2 * MIB as usize + 5;
    // fetch speaks version 2: the header, then the file's name, then the body.
    let head = 48 + "f.bin".len() as u64;
    let proxy = Proxy::start(server.addr, Plan::down(head + at as u64, Action::Flip(3)));
    let cwd = tempdir();
    let res = fetch_to_stdout(&proxy.target(), cwd.path(), &["--timeout", "5"]);
    assert_eq!(proxy.fired(), 1, "the bit was not flipped");
    assert_failed(&res, &[4], "flipped bit, output to stdout");
    assert!(error_lines(&res)[0].to_lowercase().contains("verif"), "not a verification error:\n{}", describe(&res));
    // The bytes went out, exactly as they arrived: the file with that one bit flipped.
    let mut flipped = data.clone();
    flipped[at] ^= 1 << 3;
    assert!(res.stdout == flipped, "stdout: {} bytes, not the received stream", res.stdout.len());
    assert!(dir_names(cwd.path()).is_empty(), "fetch to stdout wrote files: {:?}", dir_names(cwd.path()));
}

// ---------------------------------------------------------------------------------------
// README: `--threads N`: "N event loops on one port (SO_REUSEPORT) sharing one snapshot
// and the limits"; RELIABILITY.md: "With `--threads` the limits are shared by all event
// loops."
// ---------------------------------------------------------------------------------------

/// Bytes each thread of `pid` has written (`wchar` of `/proc/PID/task/TID/io`: `write`,
/// `writev` and `sendfile` all count).
fn thread_wchar(pid: u32) -> Vec<(String, u64)> {
    let wchar = |tid: &str| -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/io")).unwrap_or_default();
        io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let mut v: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let tid = e.file_name().to_string_lossy().into_owned();
                    let w = wchar(&tid);
                    (tid, w)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn threads_serve_many_concurrent_fetches_exactly() {
    let dir = tempdir();
    let data = std::sync::Arc::new(random_bytes((8 * MIB) as usize, 2020));
    let path = write_file(dir.path(), "big.bin", &data);
    let mut server = Server::settled(&path, &["--threads", "3"]);
    let before = thread_wchar(server.pid());
    assert!(before.len() >= 3, "--threads 3 runs {} threads", before.len());

    let outdir = tempdir();
    let n = 30;
    assert_concurrent_fetches(&server.target(), outdir.path(), n, &data);
    let pat = format!(" complete: {} bytes", data.len());
    let logged = server.wait_stderr(10, |e| count_lines(e, &pat) >= n);
    assert!(logged, "expected {n} `complete` lines:\n{}", server.stderr());

    // The kernel spread the connections over the loops (30 of them all on one of three
    // loops has odds of 3^-29): more than one loop did the sending, each sending whole files.
    let after = thread_wchar(server.pid());
    let sent: Vec<u64> =
        after.iter().map(|(tid, w)| w - before.iter().find(|(b, _)| b == tid).map_or(0, |(_, bw)| *bw)).collect();
    eprintln!("--threads 3: bytes written per thread for {n} fetches: {sent:?}");
    let busy = sent.iter().filter(|w| **w >= data.len() as u64).count();
    assert!(busy >= 2, "only {busy} thread(s) of the server sent a whole file of the {n}: bytes per thread {sent:?}");
    assert!(sent.iter().sum::<u64>() >= n as u64 * data.len() as u64, "bytes per thread {sent:?}");
    server.assert_healthy();
}

/// Opens clients one at a time from `bind(i)`, each sending its request and then never
/// reading; returns how each was answered, with the streams kept open.
fn hold_clients(
    addr: std::net::SocketAddr,
    n: usize,
    bind: impl Fn(usize) -> std::net::IpAddr,
) -> Vec<(std::net::TcpStream, Response)> {
    (0..n).map(|i| request_header(addr, Some(bind(i)), Some(4096))).collect()
}

fn assert_limit(held: &[(std::net::TcpStream, Response)], admitted: usize, what: &str) {
    for (i, (_, r)) in held.iter().enumerate() {
        if i < admitted {
            assert!(matches!(r, Response::Ok { .. }), "{what}: client {i} of the first {admitted} not served: {r:?}");
        } else {
            assert!(
                matches!(r, Response::Refused { status: Status::Busy, .. }),
                "{what}: client {i}, over the limit of {admitted} for the whole server, got {r:?}, not busy"
            );
        }
    }
}

#[test]
fn threads_share_the_client_limits() {
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "big.bin", 32 * MIB, 2021);
    // Which loop a connection lands on is the kernel's choice; 12 connections all on one
    // of three loops has odds of 3^-11. Per-loop limits would admit 4 per loop.
    {
        let mut server = Server::settled(&path, &["--threads", "3", "--max-clients", "4"]);
        // Each from its own address, so that no per-address limit takes part.
        let held = hold_clients(server.addr, 12, |i| raw::ip(127, 0, 5, 1 + i as u8));
        assert_limit(&held, 4, "--threads 3 --max-clients 4");
        drop(held);
        server.assert_healthy();
    }
    {
        let mut server = Server::settled(&path, &["--threads", "3", "--max-per-ip", "2"]);
        let held = hold_clients(server.addr, 8, |_| raw::ip(127, 0, 0, 1));
        assert_limit(&held, 2, "--threads 3 --max-per-ip 2");
        // Another address is not held back by the first one's limit.
        let other = stalled_client(server.addr, Some(raw::ip(127, 0, 0, 2)));
        drop((held, other));
        server.assert_healthy();
    }
}

// ---------------------------------------------------------------------------------------
// README: `--quiet`: "no per-transfer log lines"; "The first line on stdout is `listening
// on ADDR:PORT`... Next come the file's size and BLAKE3 digest, then the exact command
// to fetch it. Each finished transfer logs one line on stderr."
// ---------------------------------------------------------------------------------------

#[test]
fn quiet_server_logs_no_transfer_lines_but_keeps_its_banner() {
    let dir = tempdir();
    let data = random_bytes(300_000, 2060);
    let path = write_file(dir.path(), "f.bin", &data);
    for quiet in [false, true] {
        let extra: &[&str] = if quiet { &["--quiet"] } else { &[] };
        let mut server = Server::start(&path, extra);
        let banner = server.banner();
        assert!(banner[0].starts_with("listening on "), "quiet {quiet}: {banner:?}");
        assert!(banner[1].contains(&blake3::hash(&data).to_hex().to_string()), "quiet {quiet}: {banner:?}");
        assert!(banner[2].contains("xfer fetch"), "quiet {quiet}: {banner:?}");

        // Three transfers: two complete, one that is not our protocol.
        for i in 0..2 {
            let out = dir.path().join(format!("copy-{quiet}-{i}"));
            assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &data);
        }
        let mut junk = raw::connect(server.addr, None, None).unwrap();
        junk.write_all(&[0x16, 3, 1, 0, 0xa5]).unwrap();
        let closed = raw::read_until_closed(&mut junk, Duration::from_secs(5));
        assert!(closed.closed_at.is_some(), "quiet {quiet}: junk connection not closed");

        // Everything the server will ever log about them is out once it has exited.
        server.signal(libc::SIGTERM);
        server.assert_exits(0, 10.0, &format!("quiet {quiet}: SIGTERM"));
        let err = server.stderr();
        let lines = transfer_lines(&err);
        if quiet {
            assert!(lines.is_empty(), "--quiet logged transfers:\n{err}");
        } else {
            assert_eq!(lines.len(), 3, "one line per transfer expected:\n{err}");
            assert_eq!(count_lines(&err, " complete: "), 2, "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// README, fetch: "`--quiet`: no progress bar, summary or retry lines", even on a terminal.
// ---------------------------------------------------------------------------------------

#[test]
fn quiet_fetch_on_a_terminal_shows_no_bar_summary_or_retry_line() {
    let data = random_bytes(40_000, 2061);
    let dir = tempdir();
    for quiet in [false, true] {
        // Busy once, then the body on a slow link: a retry line, then about 0.8 s of bar.
        let body = data.clone();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let server = Scripted::start(2, move |n, mut s| {
            count.fetch_add(1, Ordering::SeqCst);
            let mut req = [0u8; encoding::xfer::REQUEST_LEN];
            let _ = std::io::Read::read_exact(&mut s, &mut req);
            if n == 0 {
                let mut wire = [0u8; encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON];
                let k = encoding::xfer::encode_refusal(Status::Busy, "full", &mut wire);
                let _ = s.write_all(&wire[..k]);
            } else {
                send_slowly(&mut s, &body);
            }
        });
        let out = dir.path().join(format!("out-{quiet}.bin"));
        let mut cmd = fetch_default_command(&server.target(), &out, if quiet { &["--quiet"] } else { &[] });
        let (status, pty) = run_with_stderr_on_pty(&mut cmd, 30);
        assert!(status.success(), "quiet {quiet}: fetch failed: {}", pty.text());
        assert!(std::fs::read(&out).unwrap() == data, "quiet {quiet}: not an exact copy");
        assert_eq!(seen.load(Ordering::SeqCst), 2, "quiet {quiet}: busy, then the file");
        let shown = pty.text();
        if quiet {
            assert_eq!(shown, "", "--quiet showed something on the terminal");
        } else {
            assert!(
                shown.contains(" eta ") && shown.contains("retrying in") && shown.contains("fetched "),
                "bar, retry line and summary expected:\n{shown:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// README: "`--drain-timeout SECS`: on exit, how long in-flight transfers may take to
// finish"; SIGTERM "stops accepting, drains within the deadline, and exits 0".
// ---------------------------------------------------------------------------------------

#[test]
fn drain_deadline_closes_unfinished_transfers_then_exits_0() {
    let dir = tempdir();
    let size = 64 * MIB;
    let (file, _) = big_file(dir.path(), "big.bin", size, 2070);
    let mut server = Server::start(&file, &["--drain-timeout", "1"]);
    let mut stuck = stalled_client(server.addr, None);
    let sport = port(&stuck);

    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    server.assert_exits(0, 10.0, "SIGTERM with a client that never reads");
    let took = t0.elapsed();
    let err = server.stderr();
    // About the deadline: not before it (the server's clock starts after our t0), and not
    // long after it.
    assert!(took >= Duration::from_millis(950), "exited {took:?} after SIGTERM, before the 1 s deadline:\n{err}");
    assert!(took <= Duration::from_secs(4), "exited only {took:?} after SIGTERM with a 1 s deadline:\n{err}");

    // In this order: the drain begins, the deadline passes and closes the one unfinished
    // transfer, which is logged as cut; then the exit (the stream is complete at EOF).
    let at = |pat: &str| err.find(pat).unwrap_or_else(|| panic!("no {pat:?} in the server's stderr:\n{err}"));
    let began = at("SIGTERM: no longer accepting; exiting when 1 transfer in flight finishes");
    let deadline = at("drain deadline passed: closing 1 unfinished transfer\n");
    let cut = at(&format!(":{sport} cut (server exiting)"));
    assert!(began < deadline && deadline < cut, "out of order:\n{err}");

    // The stuck client is closed, with the exact start of the body (after the header it
    // read) and far from all of it.
    let got = raw::read_until_closed(&mut stuck, Duration::from_secs(5));
    assert!(got.closed_at.is_some(), "the stuck client is still open 5 s after the server exited");
    let n = got.data.len();
    let start = std::fs::read(&file).unwrap();
    assert!((n as u64) < size && got.data == start[..n], "the stuck client's {n} bytes are not the start of the body");
}

// ---------------------------------------------------------------------------------------
// RELIABILITY.md: "After a failed reload (the file missing, or changing while it is
// read), automatic retries wait 1 s. While no good snapshot exists, new clients are
// refused with 'the file is being changed on the server; try again shortly'."
// ---------------------------------------------------------------------------------------

#[test]
fn file_being_changed_refuses_new_clients_then_a_retry_gets_the_new_version() {
    let dir = tempdir();
    // Over 256 KiB: served from the open descriptor, not from memory, so a change to the
    // file makes the snapshot unservable.
    let (path, _) = big_file(dir.path(), "served.bin", 4 * MIB, 2030);
    backdate(&path);
    let server = Server::start(&path, &[]);
    // A client in flight keeps the server checking the file while serving it.
    let stalled = stalled_client(server.addr, None);
    let sport = port(&stalled);

    // The file is being changed: moved aside (the server's descriptor follows it) and
    // rewritten in place there, while nothing is at the served path.
    let aside = dir.path().join("served.bin.editing");
    std::fs::rename(&path, &aside).unwrap();
    overwrite_in_place(&aside, MIB, 2031);

    // The server notices, cannot read a new version, and cuts the client of the old one.
    let failed = server.wait_stderr(5, |e| e.contains("reload failed"));
    assert!(failed, "no failed reload logged 5 s after the file changed and vanished:\n{}", server.stderr());
    let line = server.expect_log(sport, 5);
    assert!(line.contains("cut (file changed)"), "the client of the changed file was not cut: {line}");

    // New clients are refused, with status 7 and the promised reason, and a fetch leaves
    // nothing.
    let (status, reason) = expect_refusal(server.addr, None, &request(None));
    assert_eq!(status, Status::Unavailable, "reason {reason:?}");
    let promised = "the file is being changed on the server; try again shortly";
    assert!(reason.contains(promised), "refusal reason {reason:?}");
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let r = fetch(&server.target(), &out, &[]);
    assert_failed(&r, &[6], "fetch while the file is being changed");
    assert!(stderr_of(&r).contains(promised), "the reason is not shown:\n{}", describe(&r));
    assert_nothing_left(&outdir, &out, None, "fetch while the file is being changed");

    // The new version lands (written aside, renamed into place). Trying again shortly, as
    // the reason says: the server retries a failed reload after 1 s, so within a few
    // seconds a fetch gets the new file. Until then, only the same refusal is allowed.
    let new = random_bytes((3 * MIB + 5) as usize, 2032);
    let tmp = write_file(dir.path(), "served.bin.new", &new);
    std::fs::rename(&tmp, &path).unwrap();
    let mut last = None;
    for _ in 0..30 {
        let r = fetch(&server.target(), &out, &["--quiet"]);
        if r.status.success() {
            last = Some(r);
            break;
        }
        assert_failed(&r, &[6], "fetch right after the file came back");
        assert!(stderr_of(&r).contains(promised), "unexpected refusal:\n{}", describe(&r));
        assert_nothing_left(&outdir, &out, None, "refused fetch");
        // The subject: a client trying again shortly.
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = last.unwrap_or_else(|| panic!("still refused ~6 s after the file came back:\n{}", server.stderr()));
    assert_fetched(&out, &r, &new);
    assert!(server.stderr().contains("reloaded"), "no reload logged:\n{}", server.stderr());
}

// ---------------------------------------------------------------------------------------
// README: "SIGHUP re-reads the file (also after a replace-by-rename)"; RELIABILITY.md:
// "SIGHUP, or a file replaced by rename, gives new clients a new snapshot."
// ---------------------------------------------------------------------------------------

#[test]
fn rename_alone_gives_new_clients_the_new_file() {
    let dir = tempdir();
    let old = random_bytes((MIB + 7) as usize, 2040);
    let path = write_file(dir.path(), "served.bin", &old);
    // No client before the rename: the first client after it is also the server's first
    // look at the file since its snapshot, whatever the look interval.
    let server = Server::start(&path, &[]);
    let old_hex = blake3::hash(&old).to_hex().to_string();
    assert!(server.banner()[1].contains(&old_hex), "the server did not take the old file first");

    // A new version, written beside it and renamed over it; no SIGHUP.
    let new = random_bytes((2 * MIB + 3) as usize, 2041);
    let tmp = write_file(dir.path(), "served.bin.tmp", &new);
    std::fs::rename(&tmp, &path).unwrap();

    let out = dir.path().join("copy");
    let r = fetch(&server.target(), &out, &["--quiet"]);
    assert!(r.status.success(), "fetch after the rename failed:\n{}", describe(&r));
    let got = std::fs::read(&out).unwrap();
    assert!(got != old, "a file replaced by rename (no SIGHUP): a new client still got the old version");
    assert!(got == new, "fetched {} bytes, neither the old nor the new version", got.len());
    let (_, header) = request_header(server.addr, None, None);
    assert_eq!(
        header,
        Response::Ok { size: new.len() as u64, digest: digest(&new), name: None, mac: None },
        "header of the new file"
    );
}

// ---------------------------------------------------------------------------------------
// RELIABILITY.md: "Older snapshots still in use are watched too: an in-place change
// followed by SIGHUP still cuts their clients."
// ---------------------------------------------------------------------------------------

#[test]
fn in_place_change_and_sighup_cut_clients_of_the_old_snapshot() {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, _) = big_file(dir.path(), "served.bin", size, 2050);
    backdate(&path);
    let server = Server::start(&path, &[]);
    // A slow client, with most of the file still unsent on the server's side.
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(server.addr, slow);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.bin");
    let (target, o2) = (proxy.target(), out.clone());
    let fetcher = std::thread::spawn(move || fetch(&target, &o2, &["--timeout", "10"]));
    let going = wait_until(Duration::from_secs(20), || proxy.down_bytes() >= 2 * MIB);
    assert!(going, "the slow transfer did not get going ({} bytes)", proxy.down_bytes());

    // Same size, other bytes, ahead of the client; then SIGHUP at once.
    overwrite_in_place(&path, size / 2, 2051);
    server.signal(libc::SIGHUP);
    let at_change = proxy.down_bytes();
    assert!(at_change < size / 2, "test design: the client had passed the changed bytes ({at_change})");

    let r = fetcher.join().unwrap();
    assert_failed(&r, &[3, 4], "the slow fetch of the changed file");
    assert_nothing_left(&outdir, &out, None, "the slow fetch of the changed file");
    let sport = proxy.server_ports()[0];
    let line = server.expect_log(sport, 5);
    assert!(line.contains("cut (file changed)"), "the old snapshot's client was not cut: {line}");

    // And new clients get the new version.
    let now = std::fs::read(&path).unwrap();
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &now);
}
