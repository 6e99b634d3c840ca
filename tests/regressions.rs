//! Regression tests for bugs found in review: each one failed (hung, was refused, or got
//! stale bytes) before its fix.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // Let the pipeline fill up behind a reader that does not read, then read a little
    // and go away.
    std::thread::sleep(Duration::from_millis(800));
    let mut first = [0u8; 10];
    out.read_exact(&mut first).expect("first bytes");
    drop(out);
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("fetch hung after its stdout reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
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
    let server = Server::start(&path, &["--quiet"]);
    let out = dir.path().join("copy");
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &old);
    // Rewrite in place, same size, so only the contents and mtime differ.
    std::thread::sleep(Duration::from_millis(20));
    let new = random_bytes(1 << 20, 8);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&new, 0).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_fetched(&out, &fetch(&server.target(), &out, &["--quiet"]), &new);
}

fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src.into()).expect("bind source address");
    sock.connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
    sock.into()
}

/// Connections refused for being over the per-address cap must not fill the slots kept
/// for refusals, or one address locks everyone else out.
#[test]
fn one_address_cannot_lock_out_another() {
    let dir = tempdir();
    let data = random_bytes(4096, 3);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &["--max-clients", "20", "--max-per-ip", "2", "--quiet"]);
    // 40 idle connections from one address: 2 admitted, the rest over its cap.
    let hogs: Vec<TcpStream> = (0..40).map(|_| connect_from("127.0.0.1", server.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut s = connect_from("127.0.0.2", server.addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&raw_request(None)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("another address is served");
    assert!(got.len() == encoding::HEADER_LEN + data.len(), "got {} bytes", got.len());
    assert!(got[encoding::HEADER_LEN..] == data[..]);
    drop(hogs);
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
        let mut stalled: Vec<TcpStream> = (0..6)
            .map(|_| {
                let mut s = TcpStream::connect(server.addr).unwrap();
                s.write_all(&raw_request(None)).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        server.signal(libc::SIGTERM);
        // Wait until the drain has begun (new connects refused) before the second signal,
        // or the two could merge into one.
        let end = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(server.addr).is_ok() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        stalled.truncate(1);
        std::thread::sleep(Duration::from_millis(300));
        assert!(server.is_alive(), "round {round}: exited before its last transfer ended");
        server.signal(libc::SIGINT);
        let st = server.wait_exit(5).unwrap_or_else(|| panic!("round {round}: second signal ignored"));
        assert_eq!(st.code(), Some(130), "round {round}");
    }
}
