//! One test per defect found trying xfer as a new user would (issue 8, items 1-19). Each
//! failed on the code before the fix; the name says which item it guards.

use crate::util::fake::{Fake, send_slowly};
use crate::util::pty::{Pty, run_with_stderr_on_pty};
use crate::util::raw::{raw_fetch, request};
use crate::util::*;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use encoding::xfer::{Status, encode_ok, encode_refusal};

fn stderr_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// A served file and a running server for it.
fn serving(data: &[u8], extra: &[&str]) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempdir();
    let file = write_file(dir.path(), "served.bin", data);
    let server = Server::start(&file, extra);
    (dir, file, server)
}

/// A listener that only records whether anybody connected.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Trap {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Trap(l)
    }
    fn target(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }
    fn was_contacted(&self) -> bool {
        self.0.accept().is_ok()
    }
}

// ---------------------------------------------------------------------------------------
// fetch: the output path
// ---------------------------------------------------------------------------------------

/// Reads a FIFO to its end on a thread; the bytes come back on the channel. (Should the
/// FIFO be replaced, the thread stays blocked in open, and the test fails on the timeout.)
fn fifo_reader(path: &Path) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Ok(mut f) = File::open(path) {
            let _ = f.read_to_end(&mut v);
        }
        let _ = tx.send(v);
    });
    rx
}

#[test]
fn item01_fifo_and_device_outputs_are_written_into_never_replaced() {
    let data = random_bytes(300_000, 1);
    let (dir, _f, server) = serving(&data, &[]);

    // A FIFO: its reader gets the bytes, and it stays a FIFO.
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = fifo_reader(&fifo);
    let res = fetch(&server.target(), &fifo, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    let got = reader.recv_timeout(Duration::from_secs(10)).expect("the FIFO's reader got no end of file");
    assert!(got == data, "the FIFO's reader did not get the exact bytes");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    assert_eq!(dir_names(dir.path()), ["pipe", "served.bin"], "a temporary file was left behind");

    // A corrupted stream into a FIFO still fails verification (the bytes went out).
    let bad = random_bytes(1000, 2);
    let fake = Fake::start(move |mut s, _| {
        let _ = s.write_all(&encode_ok(1000, blake3::hash(b"something else").as_bytes()));
        let _ = s.write_all(&bad);
    });
    let drain = fifo_reader(&fifo);
    let res = fetch(&fake.target(), &fifo, &["--quiet"]);
    assert_eq!(code(&res), Some(4), "{}", describe(&res));
    assert_eq!(drain.recv_timeout(Duration::from_secs(10)).expect("no end of file").len(), 1000);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    // A character device (a private copy of /dev/null, which only root may make).
    let dev = dir.path().join("null");
    let c = std::ffi::CString::new(dev.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path; makedev(1, 3) is the null device.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } != 0 {
        eprintln!("SKIPPED (device part): mknod needs root: {}", std::io::Error::last_os_error());
        return;
    }
    let res = fetch(&server.target(), &dev, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_char_device(), "the device was replaced");
    assert_eq!(dir_names(dir.path()), ["null", "pipe", "served.bin"]);
}

#[test]
fn item02_symlink_output_keeps_the_link_and_replaces_its_target() {
    let data = random_bytes(200_000, 3);
    let (dir, _f, server) = serving(&data, &[]);
    let other = tempdir();
    let target = other.path().join("real.bin");
    std::fs::write(&target, b"old contents").unwrap();
    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let res = fetch(&server.target(), &link, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert!(std::fs::read(&target).unwrap() == data, "the link's target does not hold the file");
    assert_eq!(dir_names(other.path()), ["real.bin"], "temporary file left beside the target");

    // A dangling link (relative): the file is created where it points.
    let dangling = dir.path().join("dangling.bin");
    std::os::unix::fs::symlink("made.bin", &dangling).unwrap();
    let res = fetch(&server.target(), &dangling, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    assert!(std::fs::read(dir.path().join("made.bin")).unwrap() == data);
}

#[test]
fn item03_an_existing_outputs_permissions_are_kept() {
    let data = random_bytes(100_000, 4);
    let (dir, _f, server) = serving(&data, &[]);
    for mode in [0o600, 0o640, 0o755] {
        let out = dir.path().join(format!("out-{mode:o}.bin"));
        std::fs::write(&out, b"old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode)).unwrap();
        let res = fetch(&server.target(), &out, &["--quiet"]);
        assert_eq!(code(&res), Some(0), "{}", describe(&res));
        assert!(std::fs::read(&out).unwrap() == data);
        let got = std::fs::metadata(&out).unwrap().mode() & 0o7777;
        assert_eq!(got, mode, "mode {mode:o} became {got:o}");
    }
    // A new file gets the usual umask mode.
    // SAFETY: umask only swaps the process mask; put back at once.
    let umask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    let out = dir.path().join("new.bin");
    let res = fetch(&server.target(), &out, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o666 & !umask);
}

#[test]
fn item04_a_bad_output_path_fails_before_connecting() {
    let dir = tempdir();
    let file = write_file(dir.path(), "plain", b"x");
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let long = dir.path().join("n".repeat(300));
    // (An existing directory is no mistake: the file is saved there under its own name.)
    let cases: Vec<(PathBuf, i32, &str)> = vec![
        (PathBuf::from(""), 2, "empty"),
        (file.join("child"), 5, "Not a directory"),
        (dir.path().join("new/"), 5, "does not exist"),
        (dir.path().join("missing/out"), 5, "does not exist"),
        (long, 5, "too long"),
    ];
    for (out, want, says) in cases {
        let trap = Trap::new();
        let res = run_with_timeout(&mut fetch_default_command(&trap.target(), &out, &[]), 20);
        assert_eq!(code(&res), Some(want), "{out:?}: {}", describe(&res));
        let err = stderr_text(&res);
        assert!(err.contains(says), "{out:?}: expected {says:?} in {err:?}");
        assert_eq!(err.lines().count(), 1, "{out:?}: not one line: {err:?}");
        assert!(!trap.was_contacted(), "{out:?}: the server was contacted before the path was checked");
    }
    assert_eq!(dir_names(dir.path()), ["adir", "plain"]);
}

// ---------------------------------------------------------------------------------------
// fetch: time and screen
// ---------------------------------------------------------------------------------------

#[test]
fn item06_timeout_is_the_longest_silence_after_the_last_byte() {
    // The header, one byte 100 ms later, then silence. The limit counts from that byte:
    // a fetch that waited a whole timeout per read would fail about 2 s after it.
    let (tx, rx) = mpsc::channel();
    let fake = Fake::start(move |mut s, stop| {
        let _ = s.write_all(&encode_ok(10, &[7; 32]));
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(b"x");
        let _ = tx.send(Instant::now());
        let _ = stop.recv_timeout(Duration::from_secs(20));
    });
    let dir = tempdir();
    let out = dir.path().join("out");
    let res = fetch(&fake.target(), &out, &["--timeout", "1"]);
    let ended = Instant::now();
    let last_byte = rx.recv().unwrap();
    let silence = ended - last_byte;
    assert_eq!(code(&res), Some(3), "{}", describe(&res));
    assert!(stderr_text(&res).contains("no data for 1 s"), "{}", describe(&res));
    assert!(silence >= Duration::from_millis(950), "gave up after only {silence:?} of silence");
    assert!(silence < Duration::from_millis(1600), "waited {silence:?} after the last byte; the limit is 1 s");

    // Sub-second values are reported as given.
    let fake = Fake::start(|_s, stop| {
        let _ = stop.recv_timeout(Duration::from_secs(20));
    });
    let res = fetch(&fake.target(), &out, &["--timeout", "0.25"]);
    assert_eq!(code(&res), Some(3), "{}", describe(&res));
    assert!(stderr_text(&res).contains("no data for 0.25 s"), "{}", describe(&res));

    // A value that becomes zero is a usage error, not a timeout.
    let res = fetch("127.0.0.1:1", &out, &["--timeout", "1e-10"]);
    assert_eq!(code(&res), Some(2), "{}", describe(&res));
    assert!(!out.exists());
}

#[test]
fn item07_progress_moves_at_least_every_200ms_on_a_slow_link() {
    // 60 kB at 1 kB per 20 ms: about 1.2 s, all of it in one receive buffer.
    let data = random_bytes(60_000, 7);
    let body = data.clone();
    let fake = Fake::start(move |mut s, _| send_slowly(&mut s, &body));
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let mut cmd = Command::new(bin());
    cmd.arg("fetch").arg(fake.target()).arg(&out);
    let (status, pty) = run_with_stderr_on_pty(&mut cmd, 30);
    assert!(status.success(), "fetch failed: {}", pty.text());
    assert!(std::fs::read(&out).unwrap() == data);
    let shown = pty.text();
    // Each redraw of the bar prints its template, which holds " eta ".
    let redraws = shown.matches(" eta ").count();
    assert!(redraws >= 5, "the bar was drawn {redraws} times in about 1.2 s:\n{shown:?}");
    assert!(shown.contains("kB") && !shown.contains("KiB"), "units differ from the summary's:\n{shown:?}");
}

#[test]
fn item08_a_refusal_reason_from_the_network_is_escaped() {
    let evil = "nope\x1b[2J\x07\r\nxfer: fetch: fetched fine\0";
    let fake = Fake::start(move |mut s, _| {
        let mut wire = [0u8; encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON];
        let n = encode_refusal(Status::Busy, evil, &mut wire);
        let _ = s.write_all(&wire[..n]);
    });
    let dir = tempdir();
    let res = fetch(&fake.target(), &dir.path().join("o"), &[]);
    assert_eq!(code(&res), Some(6), "{}", describe(&res));
    let err = stderr_text(&res);
    assert_eq!(err.lines().count(), 1, "the error is not one line: {err:?}");
    assert!(!err.trim_end_matches('\n').bytes().any(|b| b < 0x20 || b == 0x7f), "raw control bytes: {err:?}");
    assert!(err.contains("\\x1b[2J\\x07\\r\\nxfer: fetch: fetched fine\\x00"), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------------------------

#[test]
fn item09_non_utf8_paths_work() {
    let dir = tempdir();
    let data = random_bytes(50_000, 9);
    let name = OsStr::from_bytes(b"caf\xe9-\xff.bin");
    let file = dir.path().join(name);
    std::fs::write(&file, &data).unwrap();
    let server =
        Server::spawn(Command::new(bin()).arg("serve").arg(&file).args(["--listen", "127.0.0.1", "--port", "0"]));
    let out = dir.path().join(OsStr::from_bytes(b"out-\xfe.bin"));
    let res = fetch(&server.target(), &out, &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert!(std::fs::read(&out).unwrap() == data);
    // Messages show such bytes escaped, not lost.
    let res = fetch(&server.target(), &dir.path().join(OsStr::from_bytes(b"no\xffdir/x")), &[]);
    assert_eq!(code(&res), Some(5), "{}", describe(&res));
    assert!(stderr_text(&res).contains("no\\xffdir"), "{}", describe(&res));
}

#[test]
fn item10_dash_is_stdout_only_for_fetch_output() {
    let dir = tempdir();
    let data = random_bytes(10_000, 10);
    std::fs::write(dir.path().join("-"), &data).unwrap();
    // `serve -` serves the file named `-`.
    let server = Server::spawn(Command::new(bin()).current_dir(dir.path()).args([
        "serve",
        "-",
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
    ]));
    let res = fetch(&server.target(), Path::new("-"), &["--quiet"]);
    assert_eq!(code(&res), Some(0), "{}", describe(&res));
    assert!(res.stdout == data, "stdout is not the file");
    // `fetch - OUT`: `-` is not a host, and no internal name leaks.
    let res = fetch("-", &dir.path().join("o"), &[]);
    assert_eq!(code(&res), Some(2), "{}", describe(&res));
    let err = stderr_text(&res);
    assert!(err.contains("`-`") && !err.contains("stdout"), "{err:?}");
    // `serve -` without such a file names it as `-`.
    let empty = tempdir();
    let res = run_with_timeout(Command::new(bin()).current_dir(empty.path()).args(["serve", "-", "--port", "0"]), 20);
    assert_eq!(code(&res), Some(5), "{}", describe(&res));
    assert!(stderr_text(&res).starts_with("xfer: serve: -: "), "{}", describe(&res));
}

#[test]
fn item11_version_help_usage_and_listen_forms() {
    for flag in ["--version", "-V"] {
        let res = run_with_timeout(Command::new(bin()).arg(flag), 10);
        assert_eq!(code(&res), Some(0), "{}", describe(&res));
        assert!(String::from_utf8_lossy(&res.stdout).starts_with("xfer 0."), "{}", describe(&res));
    }
    // One exit-code list, the same in every help.
    let codes = |args: &[&str]| {
        let res = run_with_timeout(Command::new(bin()).args(args), 10);
        assert_eq!(code(&res), Some(0), "{args:?}: {}", describe(&res));
        let out = String::from_utf8_lossy(&res.stdout).into_owned();
        out.split_once("Exit codes:").map(|(_, c)| c.to_string()).unwrap_or_else(|| panic!("{args:?}: {out}"))
    };
    let top = codes(&["-h"]);
    assert_eq!(codes(&["--help"]), top);
    assert_eq!(codes(&["serve", "-h"]), top);
    assert_eq!(codes(&["fetch", "--help"]), top);
    for c in ["  2 ", "  3 ", "  4 ", "  5 ", "  6 ", "  130 "] {
        assert!(top.contains(c), "exit code {c} missing:\n{top}");
    }
    // Usage errors: one clean line naming the subcommand's help.
    for (args, says) in [
        (vec!["serve"], "xfer: serve: missing FILE (see 'xfer serve --help')"),
        (vec!["fetch"], "xfer: fetch: missing HOST (see 'xfer fetch --help')"),
        (vec!["fetch", "h", "o", "--timeout", "2e9"], "at most 1e9 seconds"),
        (vec!["serve", "f", "--max-clients", "0"], "from 1 to"),
        (vec!["serve", "f", "--listen", "127.0.0.1:80", "--port", "81"], "--port"),
    ] {
        let res = run_with_timeout(Command::new(bin()).args(&args), 10);
        assert_eq!(code(&res), Some(2), "{args:?}: {}", describe(&res));
        let err = stderr_text(&res);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(says), "{args:?}: expected {says:?} in {err:?}");
        assert!(!err.contains("not provided") && !err.contains(":;"), "{args:?}: {err:?}");
    }
    // --listen takes a host name, and an IPv6 address with a zone.
    let dir = tempdir();
    let file = write_file(dir.path(), "f", b"hello");
    let s = Server::spawn(Command::new(bin()).arg("serve").arg(&file).args(["--listen", "localhost", "--port", "0"]));
    assert!(s.addr.ip().is_loopback(), "{}", s.addr);
    let out = dir.path().join("o");
    assert_fetched(&out, &fetch(&s.target(), &out, &["--quiet"]), b"hello");
    let same_port = s.addr.port().to_string();
    let res = run_with_timeout(
        Command::new(bin())
            .arg("serve")
            .arg(&file)
            .args(["--listen", &format!("localhost:{same_port}")])
            .args(["--port", &same_port]),
        10,
    );
    // The same port given twice is no conflict (here the port is taken: exit 3, not 2).
    assert_eq!(code(&res), Some(3), "{}", describe(&res));
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let z = Server::spawn(Command::new(bin()).arg("serve").arg(&file).args(["--listen", "::1%lo", "--port", "0"]));
        assert!(z.addr.is_ipv6(), "{}", z.addr);
        let out = dir.path().join("o6");
        assert_fetched(&out, &fetch(&z.target(), &out, &["--quiet"]), b"hello");
    } else {
        eprintln!("SKIPPED (zone part): no IPv6 loopback here");
    }
}

// ---------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------

#[test]
fn item12_a_second_server_cannot_share_the_port() {
    let dir = tempdir();
    let a = write_file(dir.path(), "a", b"file a");
    let b = write_file(dir.path(), "b", b"file b");
    let first = Server::start(&a, &["--threads", "2"]);
    let port = first.addr.port().to_string();
    let res = run_with_timeout(
        Command::new(bin()).arg("serve").arg(&b).args(["--threads", "2", "--listen", "127.0.0.1", "--port", &port]),
        10,
    );
    assert_eq!(code(&res), Some(3), "the second server started: {}", describe(&res));
    assert!(stderr_text(&res).contains("in use"), "{}", describe(&res));
    // Every client still gets the first server's file.
    for i in 0..20 {
        let out = dir.path().join(format!("o{i}"));
        assert_fetched(&out, &fetch(&first.target(), &out, &["--quiet"]), b"file a");
    }
}

#[test]
fn item13_a_rename_or_delete_is_noticed_without_sighup() {
    let data = random_bytes(1 << 20, 13);
    let (dir, file, server) = serving(&data, &[]);
    let out = dir.path().join("o1");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &data);

    // Replace by rename while idle: seen without any client asking.
    let new = random_bytes(1 << 20, 14);
    let tmp = write_file(dir.path(), ".new", &new);
    std::fs::rename(&tmp, &file).unwrap();
    assert!(
        server.wait_stderr(3, |e| e.contains("reloaded")),
        "the rename was not noticed by itself:\n{}",
        server.stderr()
    );
    let out = dir.path().join("o2");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &new);

    // Delete: noticed, and the version held open is still served.
    std::fs::remove_file(&file).unwrap();
    assert!(
        server.wait_stderr(3, |e| e.contains("replaced or removed")),
        "the delete was not noticed:\n{}",
        server.stderr()
    );
    let out = dir.path().join("o3");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &new);
    // And a file put back is picked up.
    write_file(dir.path(), ".back", &data);
    std::fs::rename(dir.path().join(".back"), &file).unwrap();
    assert!(server.wait_stderr(3, |e| e.matches("reloaded").count() >= 2), "{}", server.stderr());
    let out = dir.path().join("o4");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &data);
}

#[test]
fn item14_an_in_place_change_that_keeps_size_and_mtime_is_noticed() {
    let data = random_bytes(32 << 20, 15);
    let (dir, file, server) = serving(&data, &[]);
    // A client mid-transfer, reading slowly: with a 4 KiB receive buffer the server cannot
    // have pushed the whole file into the kernel's buffers before the change.
    let mut slow = crate::util::raw::connect(server.addr, None, Some(4096)).unwrap();
    slow.write_all(&request(None)).unwrap();
    let mut first = vec![0u8; 100_000];
    slow.read_exact(&mut first).unwrap();

    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let mut changed = data.clone();
    changed[30_000_000..30_000_016].copy_from_slice(b"CHANGED IN PLACE");
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"CHANGED IN PLACE", 30_000_000).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);

    // The client of the old version is cut, never handed the mix as good.
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        (first.len() + rest.len()) < data.len() + encoding::xfer::HEADER_LEN,
        "the old version's client got the whole response after an in-place change"
    );
    assert!(server.wait_stderr(5, |e| e.contains("cut (file changed)")), "{}", server.stderr());
    // New clients get the new bytes, verified.
    let out = dir.path().join("o");
    let res = fetch(&server.target(), &out, &["--quiet"]);
    assert!(res.status.success(), "{}\nserver:\n{}", describe(&res), server.stderr());
    assert_fetched(&out, &res, &changed);
}

#[test]
fn item15_closed_log_pipes_do_not_kill_the_server() {
    let dir = tempdir();
    let data = random_bytes(100_000, 16);
    let file = write_file(dir.path(), "f", &data);
    let mut child = Command::new(bin())
        .arg("serve")
        .arg(&file)
        .args(["--listen", "127.0.0.1", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let addr = String::from_utf8(line).unwrap().strip_prefix("listening on ").unwrap().to_string();
    // The reader of both pipes goes away (`| head -n1`, a closed terminal).
    drop(out);
    drop(child.stderr.take());
    for i in 0..3 {
        let o = dir.path().join(format!("o{i}"));
        assert_fetched(&o, &fetch(&addr, &o, &["--quiet"]), &data);
    }
    assert!(child.try_wait().unwrap().is_none(), "the server died on a closed log pipe");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0), "exit after SIGTERM: {st:?}");
}

#[test]
fn item16_a_crowd_behind_one_address_is_served_and_the_excess_is_told_why() {
    // 80 clients at once from one address, default limits: all served.
    let data = random_bytes(200_000, 17);
    let (dir, _f, server) = serving(&data, &[]);
    let handles: Vec<_> = (0..80)
        .map(|i| {
            let target = server.target();
            let out = dir.path().join(format!("c{i}"));
            std::thread::spawn(move || (fetch(&target, &out, &["--quiet"]), out))
        })
        .collect();
    for h in handles {
        let (res, out) = h.join().unwrap();
        assert_fetched(&out, &res, &data);
    }

    // With --max-per-ip 1 and one client held, every other connection gets a "busy"
    // refusal with a reason, however many there are, and each is logged.
    let big = random_bytes(8 << 20, 18);
    let (_d, _f, limited) = serving(&big, &["--max-per-ip", "1"]);
    let mut held = TcpStream::connect(limited.addr).unwrap();
    held.write_all(&request(None)).unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).unwrap();
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let addr = limited.addr;
            std::thread::spawn(move || raw_fetch(addr, &request(None)))
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap().expect("connection failed instead of a refusal");
        match encoding::xfer::decode_response(&got) {
            Ok(encoding::Decoded::Done(encoding::xfer::Response::Refused { status, reason, .. }, _)) => {
                assert_eq!(status, Status::Busy);
                assert!(reason.contains("from your address"), "{reason:?}");
            }
            other => panic!("expected a refusal, got {other:?} ({} bytes)", got.len()),
        }
    }
    assert!(
        limited.wait_stderr(5, |e| e.matches("refused: server busy").count() >= 40),
        "not every refusal was logged:\n{}",
        limited.stderr()
    );
}

#[test]
fn item17_pause_is_logged_when_stderr_is_not_a_terminal() {
    let dir = tempdir();
    let file = write_file(dir.path(), "f", b"paused file");
    let mut pty = Pty::open();
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg(&file).args(["--listen", "127.0.0.1", "--port", "0"]);
    pty.control(&mut cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    pty.release();
    let log = Collected::spawn(child.stderr.take().unwrap());
    let context = log.clone();
    let (addr, _lines) = read_banner(&mut child, move || context.text());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let asked = pty.wait_for(10, |t| t.contains("continue listening or exit?"));
    assert!(asked, "no question on the terminal: {:?}", pty.text());
    let wait_log = |what: &str| wait_until(Duration::from_secs(10), || log.text().contains(what));
    assert!(wait_log("paused (Ctrl+C)"), "the pause is not in the log: {:?}", log.text());
    assert!(!pty.text().contains("^C"), "\"^C\" printed by the server: {:?}", pty.text());
    let res = fetch(&addr.to_string(), &dir.path().join("o"), &[]);
    assert_eq!(code(&res), Some(6), "{}", describe(&res));
    assert!(stderr_text(&res).contains("server paused"), "{}", describe(&res));
    pty.type_text("c\n");
    assert!(wait_log("resumed"), "{:?}", log.text());
    let out = dir.path().join("o2");
    assert_fetched(&out, &fetch(&addr.to_string(), &out, &["--quiet"]), b"paused file");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn item18_the_port_is_bound_before_the_file_is_read() {
    // A port in use is reported before anything about the file: here the file does
    // not even exist, and the answer is still "address in use" (exit 3), not exit 5.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempdir();
    let res = run_with_timeout(
        Command::new(bin()).arg("serve").arg(dir.path().join("missing")).args([
            "--listen",
            "127.0.0.1",
            "--port",
            &port,
        ]),
        10,
    );
    assert_eq!(code(&res), Some(3), "{}", describe(&res));
    assert!(stderr_text(&res).contains("in use"), "{}", describe(&res));

    // A large file is announced while it is hashed; the address is still stdout's first line.
    let big = dir.path().join("big");
    File::create(&big).unwrap().set_len(200 << 20).unwrap();
    let server = Server::start(&big, &[]);
    assert!(server.stderr().contains("hashing"), "no hashing notice: {:?}", server.stderr());
    assert!(server.banner()[0].starts_with("listening on "));
}

/// The banner's "fetch it with:" command.
fn fetch_hint(s: &Server) -> String {
    let lines = s.banner();
    lines.iter().find_map(|l| l.strip_prefix("fetch it with: ").map(String::from)).expect("no fetch hint")
}

#[test]
fn item19_messages_read_cleanly() {
    let dir = tempdir();
    let file = write_file(dir.path(), "my file.txt", b"spaces in the name\n");
    // The fetch hint is quoted, and pasting it into a shell works.
    let mut server = Server::start(&file, &["--allow", "10.0.0.0/8", "--allow", "127.0.0.1"]);
    let hint = fetch_hint(&server);
    let digest = blake3::hash(b"spaces in the name\n").to_hex();
    assert_eq!(hint, format!("xfer fetch {} 'output_file/my file.txt' --expect blake3:{digest}", server.target()));
    let work = tempdir();
    std::fs::create_dir(work.path().join("output_file")).unwrap();
    let bindir = Path::new(bin()).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap_or_default());
    let res = run_with_timeout(Command::new("sh").arg("-c").arg(&hint).current_dir(work.path()).env("PATH", &path), 20);
    assert_eq!(code(&res), Some(0), "{hint}: {}", describe(&res));
    assert_eq!(std::fs::read(work.path().join("output_file/my file.txt")).unwrap(), b"spaces in the name\n");
    // The summary uses decimal units.
    let summary = stderr_text(&res);
    assert!(summary.contains("B/s") && !summary.contains("iB"), "{summary}");

    // With a token from the environment, the hint never shows it (fetch reads $XFER_TOKEN
    // itself) and a line says a token is needed; from a file, the hint names the file.
    let t = Server::spawn(
        Command::new(bin())
            .arg("serve")
            .arg(&file)
            .args(["--listen", "127.0.0.1", "--port", "0"])
            .env("XFER_TOKEN", "s3"),
    );
    let hint = fetch_hint(&t);
    assert!(hint.ends_with(&format!("--expect blake3:{digest}")) && !hint.contains("s3"), "{hint:?}");
    let noted =
        wait_until(Duration::from_secs(10), || t.stdout_lines().iter().any(|l| l.starts_with("a token is required")));
    assert!(noted, "{:?}", t.stdout_lines());
    let tokens = tempdir();
    let token_file = secret_file(tokens.path(), "the token", b"s3\n");
    let t = Server::start(&file, &["--token-file", token_file.to_str().unwrap()]);
    let hint = fetch_hint(&t);
    assert!(hint.ends_with(&format!("--token-file '{}'", token_file.display())), "{hint:?}");
    std::fs::remove_file(work.path().join("output_file/my file.txt")).unwrap();
    let res = run_with_timeout(Command::new("sh").arg("-c").arg(&hint).current_dir(work.path()).env("PATH", &path), 20);
    assert_eq!(code(&res), Some(0), "{hint}: {}", describe(&res));
    assert_eq!(std::fs::read(work.path().join("output_file/my file.txt")).unwrap(), b"spaces in the name\n");

    // A refusal's log line: no nested parentheses, no byte count or rate.
    let s2 = Server::start(&file, &["--allow", "10.0.0.0/8"]);
    let res = fetch(&s2.target(), &dir.path().join("x"), &[]);
    assert_eq!(code(&res), Some(6), "{}", describe(&res));
    assert!(s2.wait_stderr(5, |e| e.contains("refused")), "{}", s2.stderr());
    let line = s2.stderr().lines().find(|l| l.contains("refused")).unwrap().to_string();
    assert!(line.ends_with("refused: your address is not allowed"), "{line}");
    assert!(!line.contains('(') && !line.contains("B/s"), "{line}");

    // A change while nobody is being served says just that.
    std::fs::write(&file, b"new contents\n").unwrap();
    assert!(server.wait_stderr(5, |e| e.contains("reloaded")), "{}", server.stderr());
    assert!(!server.stderr().contains("while being served"), "{}", server.stderr());

    // SIGTERM with nothing in flight: no "waiting for 0 transfers".
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(10).and_then(|s| s.code()), Some(0));
    let err = server.stderr();
    assert!(err.contains("SIGTERM: no transfers in flight; exiting"), "{err}");
    assert!(!err.contains("waiting up to") && !err.contains(" 0 transfers"), "{err}");
}
