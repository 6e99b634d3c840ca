//! Regression tests for bugs found in review: each one failed (hung, was refused, or got
//! stale bytes) before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::raw::{connect, ip, readable_now, request, stalled_client, wait_refused};
use crate::util::*;

/// A writer stage that fails while it is the slow stage must not strand the reader
/// waiting for a buffer: fetch to a pipe whose reader goes away must exit, not hang.
#[test]
fn fetch_exits_when_its_stdout_reader_goes_away() {
    let dir = tempdir();
    let path = write_file(dir.path(), "big.bin", &random_bytes(96 << 20, 41));
    let server = Server::start(&path, &["--quiet"]);
    let mut child = Command::new(bin())
        .args(["fetch", &server.target(), "-", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetch");
    let mut out = child.stdout.take().unwrap();
    // Let the pipeline fill up behind a reader that does not read: the pipe is full when
    // it holds its capacity. Then read a little and go away.
    let fd = out.as_raw_fd();
    // SAFETY: fcntl and ioctl on our own open pipe descriptor, with a valid out-pointer.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(capacity > 0, "F_GETPIPE_SZ: {}", std::io::Error::last_os_error());
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n
    };
    let full = wait_until(Duration::from_secs(20), || queued() >= capacity);
    assert!(full, "the pipe never filled ({} of {capacity} bytes queued)", queued());
    let mut first = [0u8; 10];
    out.read_exact(&mut first).expect("first bytes");
    drop(out);
    let status = wait_child_exit(&mut child, Duration::from_secs(20));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("fetch hung after its stdout reader went away");
    };
    // A reader that stops early is not an error (as with any Unix filter).
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

/// The first client after the file changed while the server was idle gets the new
/// version, not the old digest with new bytes.
#[test]
fn first_fetch_after_an_idle_change_gets_the_new_version() {
    let dir = tempdir();
    let old = random_bytes(1 << 20, 7);
    let path = write_file(dir.path(), "f.bin", &old);
    // So that the rewrite below surely moves the mtime, the only other thing that differs.
    backdate(&path);
    let server = Server::start(&path, &["--quiet"]);
    let out = dir.path().join("copy");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &old);
    // Rewrite in place, same size.
    let new = random_bytes(1 << 20, 8);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&new, 0).unwrap();
    // The subject: RELIABILITY.md says new clients look at the file at most every 100 ms,
    // so the first client after a change made while the server was idle gets the new
    // version. "After" means once that interval has passed since the fetch above.
    std::thread::sleep(Duration::from_millis(150));
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &new);
}

/// Connections refused for being over the per-address cap must not fill the slots kept
/// for refusals, or one address locks everyone else out.
#[test]
fn one_address_cannot_lock_out_another() {
    let dir = tempdir();
    let data = random_bytes(4096, 3);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &["--max-clients", "20", "--max-per-ip", "2", "--quiet"]);
    // 40 idle connections from one address: 2 admitted, the rest over its cap. The accept
    // queue is first in, first out, so the server takes all of them before the client
    // from the other address below.
    let hogs: Vec<TcpStream> =
        (0..40).map(|_| connect(server.addr, Some(ip(127, 0, 0, 1)), None).expect("connect a hog")).collect();
    let mut s = connect(server.addr, Some(ip(127, 0, 0, 2)), None).expect("connect from 127.0.0.2");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(None)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("another address is served");
    assert!(got.len() == encoding::xfer::HEADER_LEN + data.len(), "got {} bytes", got.len());
    assert!(got[encoding::xfer::HEADER_LEN..] == data[..]);
    // The lock-out really was tried: past the few refusals it may have in progress, the
    // hogging address had its connections closed at once.
    let closed = wait_until(Duration::from_secs(5), || hogs.iter().filter(|h| readable_now(h)).count() >= 20);
    let n = hogs.iter().filter(|h| readable_now(h)).count();
    assert!(closed, "only {n} of 40 connections over the per-address cap were closed");
}

/// With several event loops, the one that owns the signals must keep listening for a
/// second signal while the others still drain. Which loop a connection lands on is the
/// kernel's choice, so each round leaves one stalled client, wherever it is, and the
/// rounds make it likely that it sits on a loop other than the one owning the signals.
#[test]
fn threads_second_signal_exits_at_once() {
    let dir = tempdir();
    let path = write_file(dir.path(), "big.bin", &random_bytes(64 << 20, 5));
    for round in 0..3 {
        let mut server = Server::start(&path, &["--threads", "2", "--quiet"]);
        let mut stalled: Vec<TcpStream> = (0..6).map(|_| stalled_client(server.addr, None)).collect();
        server.signal(libc::SIGTERM);
        // Wait until the drain has begun (new connects refused) before the second signal,
        // or the two could merge into one.
        if let Err(last) = wait_refused(server.addr, 5) {
            panic!("round {round}: new connects not refused 5 s after SIGTERM ({last})");
        }
        // Leave one; wait until the server has closed the other five (the listeners are
        // closed already: connects are refused).
        let fds_with_six = server.fd_count();
        stalled.truncate(1);
        let fds = server.wait_fds_at_most(fds_with_six - 5, 5);
        assert!(fds <= fds_with_six - 5, "round {round}: five closed clients still open on the server after 5 s");
        assert!(server.is_alive(), "round {round}: exited before its last transfer ended");
        server.signal(libc::SIGINT);
        let st = server.wait_exit(5).unwrap_or_else(|| panic!("round {round}: second signal ignored"));
        assert_eq!(st.code(), Some(130), "round {round}");
    }
}
