//! The native protocol on the same port still works while HTTP clients are being served.

use std::io::Read;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::*;

/// Reads until at least `n` bytes have come (or `limit` passes, or the peer closes).
fn read_at_least(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < n && Instant::now() < end {
        s.set_read_timeout(Some(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    got
}

#[test]
fn native_fetch_works_while_http_clients_are_served() {
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "n.bin", 16 * MIB, 971);
    let data = Arc::new(std::fs::read(&path).unwrap());
    let mut server = Server::settled(&path, &[]);
    // Four HTTP clients, each stopped a megabyte into the file until the native fetch is done.
    let (started_tx, started) = mpsc::channel();
    let mut go = Vec::new();
    let mut readers = Vec::new();
    for i in 0..4 {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let (addr, started_tx, data) = (server.addr, started_tx.clone(), data.clone());
        readers.push(std::thread::spawn(move || {
            let mut c = Conn::over(raw::connect(addr, None, Some(64 * 1024)).expect("connect"));
            c.send(&request("GET", "/n.bin", &["Connection: close"]));
            let first = read_at_least(&mut c.s, MIB as usize, Duration::from_secs(20));
            let _ = started_tx.send(first.len());
            let _ = go_rx.recv_timeout(Duration::from_secs(120));
            let mut rest = raw::read_until_closed(&mut c.s, Duration::from_secs(60));
            let mut all = first;
            all.append(&mut rest.data);
            let (reply, n) = parse_reply(&all, false)
                .unwrap_or_else(|e| panic!("HTTP client {i}: {e}"))
                .unwrap_or_else(|| panic!("HTTP client {i}: {} bytes, not a whole response", all.len()));
            assert!(reply.status == 200 && reply.body == *data, "HTTP client {i}: {} ({} bytes)", reply.status, n);
        }));
    }
    for _ in 0..4 {
        let n = started.recv_timeout(Duration::from_secs(30)).expect("an HTTP client started");
        assert!(n >= MIB as usize, "an HTTP client got only {n} bytes");
    }
    let out = dir.path().join("native.bin");
    let r = fetch(&server.target(), &out, &["--quiet"]);
    assert_fetched(&out, &r, &data);
    for g in go {
        let _ = g.send(());
    }
    for r in readers {
        r.join().expect("an HTTP client failed");
    }
    let whole = |l: &Logged| l.method == "GET" && l.rest.starts_with("complete: 16777216 bytes");
    let native_line = |l: &str| l.contains(" complete: 16777216 bytes") && !l.contains(" GET ");
    server.wait_stderr(5, |e| transfer_lines(e).into_iter().any(native_line));
    let http = logged_count(&server, 5, 4, whole);
    let log = server.stderr();
    let native = transfer_lines(&log).into_iter().filter(|l| native_line(l)).count();
    assert_eq!(native, 1, "the native fetch's log line:\n{log}");
    assert_eq!(http, 4, "the HTTP clients' log lines:\n{log}");
    server.assert_healthy();
}
