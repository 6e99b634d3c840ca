//! What no polite client sends, over raw sockets: the checklist's HTTP cases (RELIABILITY.md
//! 29–36). Slow and unfinished heads, heads too large or malformed, smuggling attempts,
//! ranges meant to multiply work, pipelining without reading, idle kept-alive
//! connections, file names built to break headers and pages, and paths built to leave the
//! one file.

use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::*;

/// Case 29: a head dribbled a byte at a time, and one that stops halfway, are closed at the
/// request deadline (`--request-timeout 1`), a deadline for the whole head rather than an
/// idle timer; other clients are served meanwhile.
#[test]
fn http_head_dribbled_or_unfinished_is_closed_at_the_request_deadline() {
    let dir = tempdir();
    let data = random_bytes(100_000, 951);
    let path = write_file(dir.path(), "d.bin", &data);
    let mut server = Server::settled(&path, &["--request-timeout", "1"]);

    let dribble = std::thread::spawn({
        let addr = server.addr;
        move || {
            let mut s = raw::connect(addr, None, None).expect("connect");
            let start = Instant::now();
            s.write_all(b"GET /d.bin HTTP/1.1\r\nHost: xfer.test\r\nX-Slow: ").unwrap();
            // One byte every 100 ms, never the end of the head: 10 s at most.
            for _ in 0..100 {
                if raw::readable_now(&s) {
                    break;
                }
                if s.write_all(b"a").is_err() {
                    break;
                }
                // The subject: a client sending its head a byte at a time.
                std::thread::sleep(Duration::from_millis(100));
            }
            let port = raw::port(&s);
            let end = raw::read_until_closed(&mut s, Duration::from_secs(5));
            (port, end.closed_at.map(|t| t - start), end.data)
        }
    });
    let mut halfway = raw::connect(server.addr, None, None).expect("connect");
    let start = Instant::now();
    halfway.write_all(b"GET /d.bin HTTP/1.1\r\nHost: xfer.test\r\n").unwrap();
    // Meanwhile the server serves others at once.
    let r = get(server.addr, "/d.bin", &[]);
    assert!(r.status == 200 && r.body == data, "a normal request beside the slow ones: {}", r.status);
    let end = raw::read_until_closed(&mut halfway, Duration::from_secs(10));
    let halfway_after = end.closed_at.map(|t| t - start);
    let (dribble_port, dribble_after, dribble_data) = dribble.join().unwrap();
    for (what, after, data) in
        [("a head that stopped halfway", halfway_after, &end.data), ("a dribbled head", dribble_after, &dribble_data)]
    {
        let after = after.unwrap_or_else(|| panic!("{what}: never closed"));
        assert!(
            after >= Duration::from_millis(900) && after <= Duration::from_secs(4),
            "{what}: closed after {after:?}, the request deadline is 1 s"
        );
        assert!(
            data.is_empty() || data.starts_with(b"HTTP/1.1 408 "),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&data[..data.len().min(100)])
        );
    }
    for port in [raw::port(&halfway), dribble_port] {
        let line = server.expect_log(port, 5);
        assert!(line.contains(" timed out"), "log for a head that never came whole: {line}");
    }
    server.assert_healthy();
}

/// Cases 30 and 31: heads too large, malformed, or built to smuggle a second request past a
/// proxy get one answer with their status and `Connection: close`, then the close; the
/// request hidden behind each is never answered.
#[test]
fn http_malformed_and_smuggling_heads_get_their_status_then_close() {
    let dir = tempdir();
    let data = random_bytes(70_000, 952);
    let path = write_file(dir.path(), "m.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let head = |fields: &str| format!("GET /m.bin HTTP/1.1\r\nHost: xfer.test\r\n{fields}\r\n").into_bytes();
    let big_fields: String = (0..3).map(|i| format!("X-Fill-{i}: {}\r\n", "a".repeat(3000))).collect();
    let many_fields: String = (0..70).map(|i| format!("X-Field-{i}: 1\r\n")).collect();
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: xfer.test\r\n\r\n", "a".repeat(5000)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a head over 8 KiB", head(&big_fields), 431),
        ("more than 64 fields", head(&many_fields), 431),
        ("a request line over 4 KiB", long_line, 414),
        ("NUL in a field", head("X-Nul: a\0b\r\n"), 400),
        ("a bare CR in a field", head("X-Cr: a\rb\r\n"), 400),
        ("obsolete line folding", head("X-Folded: a\r\n folded\r\n"), 400),
        ("a space before the colon", head("X-Space : a\r\n"), 400),
        ("no Host on HTTP/1.1", b"GET /m.bin HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two Hosts", head("Host: other.test\r\n"), 400),
        ("two Content-Lengths", head("Content-Length: 0\r\nContent-Length: 0\r\n"), 400),
        ("Content-Length and Transfer-Encoding", head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400),
        ("Transfer-Encoding and Content-Length", head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400),
        ("two different Content-Lengths", head("Content-Length: 5\r\nContent-Length: 6\r\n"), 400),
        ("Transfer-Encoding alone", head("Transfer-Encoding: chunked\r\n"), 413),
        ("a body on GET", head("Content-Length: 5\r\n"), 413),
        ("HTTP/2.0", b"GET /m.bin HTTP/2.0\r\nHost: xfer.test\r\n\r\n".to_vec(), 505),
    ];
    // What each head would smuggle: a body that is itself a request.
    let smuggled = request("GET", "/m.bin", &[]);
    for (what, mut bytes, status) in cases {
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes.extend_from_slice(&smuggled);
        let mut c = Conn::connect(server.addr);
        c.send(&bytes);
        let r = c.try_reply(false, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(r.closes(), "{what}: no Connection: close: {r:?}");
        let end = c.closed(Duration::from_secs(10));
        assert!(end.closed_at.is_some(), "{what}: still open 10 s after the answer");
        assert!(
            end.data.is_empty(),
            "{what}: more was sent after the answer (the smuggled request answered?): {:?}",
            String::from_utf8_lossy(&end.data[..end.data.len().min(200)])
        );
        let port = c.port();
        let line = expect_logged(&server, 5, what, |l| l.client.port() == port);
        assert_eq!(line.status, status, "{what}: logged {line:?}");
    }
    server.assert_healthy();
}

/// Case 32: ranges meant to multiply work (thousands in one header, overlapping, each the
/// whole file) get one bounded answer, and odd ones (numbers past 2^64, negative, blank,
/// other units) the answer RFC 9110 gives.
#[test]
fn http_many_or_odd_ranges_get_one_bounded_answer() {
    let dir = tempdir();
    let size = 2 * MIB as usize + 7;
    let data = random_bytes(size, 953);
    let path = write_file(dir.path(), "g.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let zeros = format!("Range: bytes={}", vec!["0-0"; 1900].join(","));
    let overlapping = format!("Range: bytes={}", (0..1000).map(|i| format!("{i}-")).collect::<Vec<_>>().join(","));
    for (what, field) in [("1900 ranges 0-0", zeros), ("1000 overlapping ranges, each to the end", overlapping)] {
        let start = Instant::now();
        let r = get(server.addr, "/g.bin", &[&field]);
        let took = start.elapsed();
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(r.header("Content-Length"), Some(size.to_string().as_str()), "{what}: not one bounded answer");
        assert!(r.body == data, "{what}: the body is not the file");
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    }
    let (last, big) = (size - 1, "99999999999999999999999");
    use Answer::*;
    let odd = [
        (format!("bytes={big}-"), Unsatisfiable),
        (format!("bytes=0-{big}"), Part(0, last)),
        (format!("bytes=-{big}"), Part(0, last)),
        ("bytes=-0".into(), Unsatisfiable),
        (format!("bytes={size}-{big}"), Unsatisfiable),
        ("bytes=".into(), Whole),
        ("bytes=-".into(), Whole),
        ("bytes=5-3".into(), Whole),
        ("bytes=-5-3".into(), Whole),
        ("bytes=a-b".into(), Whole),
        ("bytes=0-5,3-8".into(), Whole),
        ("items=0-5".into(), Whole),
        ("bytes = 10-19".into(), Whole),
        (" bytes=10-19 ".into(), Part(10, 19)),
        ("BYTES=10-19".into(), Part(10, 19)),
        (format!("bytes={}-{}", last - 9, last + 100), Part(last - 9, last)),
    ];
    let mut c = Conn::connect(server.addr);
    for (range, want) in odd {
        let what = format!("Range: {range:?}");
        c.send(&request("GET", "/g.bin", &[&format!("Range: {range}")]));
        let r = c.try_reply(false, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"));
        match want {
            Part(a, b) => {
                assert_eq!(r.status, 206, "{what}: {r:?}");
                assert_eq!(r.header("Content-Range"), Some(format!("bytes {a}-{b}/{size}").as_str()), "{what}");
                assert!(r.body == data[a..=b], "{what}: the part's bytes differ");
            }
            Unsatisfiable => {
                assert_eq!(r.status, 416, "{what}: {r:?}");
                assert_eq!(r.header("Content-Range"), Some(format!("bytes */{size}").as_str()), "{what}");
            }
            Whole => assert!(r.status == 200 && r.body == data, "{what}: not the whole file: {}", r.status),
        }
    }
    // Two Range fields mean nothing: the whole file.
    c.send(&request("GET", "/g.bin", &["Range: bytes=0-9", "Range: bytes=20-29"]));
    let r = c.reply(false);
    assert!(r.status == 200 && r.body == data, "two Range fields: {}", r.status);
    drop(c);
    server.assert_healthy();
}

/// What a request with a range gets.
enum Answer {
    Whole,
    /// 206 with these bytes (last included).
    Part(usize, usize),
    /// 416 with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
}

/// Case 33: a client pipelining hundreds of requests for a large file and never reading:
/// requests wait in the kernel, not in the server's memory, and its RSS stays flat.
#[test]
fn http_pipelining_without_reading_keeps_server_memory_flat() {
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "p.bin", 8 * MIB, 954);
    let data = std::fs::read(&path).unwrap();
    let mut server = Server::settled(&path, &[]);
    // Served once over HTTP, with its SHA-256 known, so the helper thread's memory counts in
    // the baseline.
    wait_sha256(server.addr, "p.bin");
    let before = server.rss_kib();
    let one = request("GET", "/p.bin", &[]);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
    let per_client_cap = 32 * MIB as usize;
    let mut clients = Vec::new();
    let mut queued = Vec::new();
    for _ in 0..8 {
        let s = raw::connect(server.addr, None, Some(4096)).expect("connect");
        s.set_nonblocking(true).unwrap();
        let mut c = Conn::over(s);
        let mut sent = 0usize;
        let mut blocked_since: Option<Instant> = None;
        let start = Instant::now();
        // Until the kernel takes no more for 300 ms, 32 MiB, or 5 s.
        while sent < per_client_cap && start.elapsed() < Duration::from_secs(5) {
            match c.s.write(&batch[sent % batch.len()..]) {
                Ok(n) => {
                    sent += n;
                    blocked_since = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                    // The subject: waiting to see whether the server reads more.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("writing pipelined requests: {e}"),
            }
        }
        queued.push(sent / one.len());
        clients.push(c);
    }
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        queued.iter().all(|&q| q >= 200),
        "test design: each client should have hundreds of requests queued: {queued:?}"
    );
    assert!(
        queued.iter().all(|&q| q * one.len() < per_client_cap),
        "the server kept reading requests while its reply was unsent: {queued:?} requests of {} bytes taken",
        one.len()
    );
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB with {queued:?} requests queued by 8 clients");
    // The first client starts reading: its answers come whole and in order.
    let c = &mut clients[0];
    c.s.set_nonblocking(false).unwrap();
    for i in 0..2 {
        let r = c.reply(false);
        assert!(r.status == 200 && r.body == data, "pipelined answer {i}: {} ({} bytes)", r.status, r.body.len());
    }
    drop(clients);
    server.assert_healthy();
}

/// Case 34: `Connection: close` and HTTP/1.0 end the connection after the answer; a kept-alive
/// connection ends after 1000 requests; a draining server (SIGTERM) closes idle kept-alive
/// connections at once; and an idle one is closed after 15 s.
#[test]
fn http_keep_alive_ends_by_close_by_http10_by_the_cap_by_drain_and_by_idling() {
    let dir = tempdir();
    let data = random_bytes(5000, 955);
    let path = write_file(dir.path(), "k.bin", &data);
    let mut server = Server::settled(&path, &[]);

    // An idle kept-alive connection, timed from its answer.
    let mut idle = Conn::connect(server.addr);
    idle.send(&request("GET", "/k.bin.b3", &[]));
    let r = idle.reply(false);
    let idle_since = Instant::now();
    assert!(r.status == 200 && !r.closes(), "a kept-alive answer: {r:?}");

    for (what, bytes) in [
        ("Connection: close", request("GET", "/k.bin", &["Connection: close"])),
        ("HTTP/1.0", b"GET /k.bin HTTP/1.0\r\n\r\n".to_vec()),
    ] {
        let mut c = Conn::connect(server.addr);
        c.send(&bytes);
        let r = c.reply(false);
        assert!(r.status == 200 && r.body == data && r.closes(), "{what}: {r:?}");
        let end = c.closed(Duration::from_secs(5));
        assert!(end.closed_at.is_some() && end.data.is_empty(), "{what}: not closed after the answer");
    }

    // 1001 requests in one write: 1000 answers, the last says close, and nothing more.
    let mut c = Conn::connect(server.addr);
    let head = request("HEAD", "/k.bin", &[]);
    c.send(&head.repeat(1001));
    for i in 1..=1000 {
        let r = c.try_reply(true, Duration::from_secs(10)).unwrap_or_else(|e| panic!("answer {i}: {e}"));
        assert_eq!(r.status, 200, "answer {i}");
        assert_eq!(r.closes(), i == 1000, "answer {i}: Connection: close on the 1000th only");
    }
    let end = c.closed(Duration::from_secs(5));
    assert!(end.closed_at.is_some(), "still open after 1000 requests");
    assert!(end.data.is_empty(), "the 1001st request was answered");

    // A second server, draining on SIGTERM, closes its idle kept-alive connection at once.
    let mut draining = Server::start(&path, &[]);
    let mut kept = Conn::connect(draining.addr);
    kept.send(&request("GET", "/k.bin", &[]));
    assert_eq!(kept.reply(false).status, 200);
    draining.signal(libc::SIGTERM);
    let end = kept.closed(Duration::from_secs(5));
    assert!(end.closed_at.is_some(), "an idle kept-alive connection held the drain");
    draining.assert_exits(0, 5.0, "SIGTERM with only an idle kept-alive connection");

    // The idle one: closed after the 15 s idle timeout, quietly.
    let end = idle.closed(Duration::from_secs(25));
    let after = end.closed_at.map(|t| t - idle_since);
    assert!(
        after.is_some_and(|a| a >= Duration::from_secs(14) && a <= Duration::from_secs(20)),
        "idle kept-alive connection closed after {after:?}, the idle timeout is 15 s"
    );
    assert!(end.data.is_empty(), "bytes sent to an idle connection");
    server.assert_healthy();
}

/// Case 34, out of descriptors: idle kept-alive connections are the first to give theirs
/// back, so new clients are answered at once rather than after the 15 s idle timeout.
#[test]
fn http_idle_kept_alive_connections_give_way_when_descriptors_run_out() {
    let dir = tempdir();
    let path = write_file(dir.path(), "e.bin", b"a small file\n");
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
    // Each client is answered and stays connected, idle: more of them than descriptors.
    let mut kept = Vec::new();
    for i in 0..150 {
        let mut c = Conn::connect(server.addr);
        c.send(&request("HEAD", "/e.bin", &[]));
        match c.try_reply(true, Duration::from_secs(5)) {
            Ok(r) => assert_eq!(r.status, 200, "client {i}: {r:?}"),
            Err(e) => panic!(
                "client {i} was not answered within 5 s while idle kept-alive connections held the \
                 descriptors ({} open): {e}\n{}",
                server.fd_count(),
                server.stderr()
            ),
        }
        kept.push(c);
    }
    let closed = kept.iter().filter(|c| raw::readable_now(&c.s)).count();
    assert!(closed >= 50, "150 kept-alive clients under a limit of 64 descriptors, and only {closed} were closed");
    drop(kept);
    server.assert_healthy();
}

/// The RFC 5987 `attr-char`s stay; every other byte is `%XX`.
fn ext_value(name: &[u8]) -> String {
    let mut s = String::from("UTF-8''");
    for &b in name {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Case 35: a file name with quotes, CR, LF, `;`, `%`, `<`, non-UTF-8 bytes and a backslash
/// stays inside its fields: every head line is well-formed, no field is injected,
/// `filename*` carries the exact bytes, the page escapes the name as HTML, the log line
/// stays one line, and `sha256sum -c` reads the checksum file.
#[test]
fn http_hostile_file_name_stays_inside_its_fields() {
    let dir = tempdir();
    let name: &[u8] = b"a\"b\r\nX-Injected: 1;c%41 <b>\xc3\xa9\xff\\.txt";
    let path = dir.path().join(std::ffi::OsStr::from_bytes(name));
    let data = random_bytes(10_000, 956);
    std::fs::write(&path, &data).unwrap();
    let mut server = Server::settled(&path, &[]);
    let segment = url_segment(name);
    assert_eq!(banner_url(&server), format!("http://{}/{segment}", server.addr), "the banner's URL");

    for method in ["HEAD", "GET"] {
        // `one` reads strictly: a CR or LF from the name in a head line fails here.
        let r = one(server.addr, method, &format!("/{segment}"), &[]);
        assert_eq!(r.status, 200, "{method}: {r:?}");
        assert_eq!(r.count("X-Injected"), 0, "{method}: a field was injected: {r:?}");
        assert!(method == "HEAD" || r.body == data, "GET: the body differs");
        let cd = r.header("Content-Disposition").expect("Content-Disposition");
        let rest = cd.strip_prefix("attachment; filename=\"").unwrap_or_else(|| panic!("{method}: {cd}"));
        let (fallback, ext) = rest.split_once("\"; filename*=").unwrap_or_else(|| panic!("{method}: {cd}"));
        assert!(!fallback.contains(['"', '\\']), "{method}: the quoted filename is not a plain string: {cd}");
        assert_eq!(ext, ext_value(name), "{method}: filename* is not the name, percent-encoded");
    }

    let page = get(server.addr, "/", &[]);
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(!html.contains("<b>") && html.contains("&lt;b&gt;"), "the page does not escape the name:\n{html}");
    assert!(!html.contains('\r') && !html.contains("\nX-Injected"), "the name's CR LF is raw in the page:\n{html}");
    let h1 = html.split("<h1 id=\"name\">").nth(1).and_then(|s| s.split("</h1>").next()).expect("the #name element");
    // Quotes are only text inside an element; < and > would be markup.
    assert!(!h1.contains(['<', '>']), "#name holds markup: {h1}");
    assert!(html.contains(&format!("href=\"/{segment}\"")), "the download link is not the encoded URL:\n{html}");

    expect_logged(&server, 5, "the GET with the encoded path", |l| {
        l.method == "GET" && l.path == format!("/{segment}") && l.status == 200
    });
    let log = server.stderr();
    assert!(!log.lines().any(|l| l.starts_with("X-Injected")), "the name split a log line:\n{log}");

    if let Some(sum) = tool("sha256sum -c with a hostile name", "sha256sum") {
        wait_sha256(server.addr, &segment);
        let sums = get(server.addr, &format!("/{segment}.sha256"), &[]);
        std::fs::write(dir.path().join("sums"), &sums.body).unwrap();
        let check = run_in(dir.path(), &sum, &["-c", "sums"], 30);
        assert_ok(&check, "sha256sum -c on the .sha256 file of a hostile name");
    }
    server.assert_healthy();
}

/// Case 35, at the longest: a name of 255 bytes that grows most when escaped (`&`, `<`,
/// `>`, `"`, `'`, non-UTF-8 bytes) still gets the whole landing page, its name escaped.
#[test]
fn http_landing_page_holds_for_the_longest_name_that_needs_escaping() {
    let dir = tempdir();
    let mut name: Vec<u8> = b"&<>\"'\xff".iter().copied().cycle().take(251).collect();
    name.extend_from_slice(b".txt");
    let path = dir.path().join(std::ffi::OsStr::from_bytes(&name));
    let data = random_bytes(1000, 958);
    std::fs::write(&path, &data).unwrap();
    let mut server = Server::settled(&path, &[]);
    let page = get(server.addr, "/", &[]);
    assert_eq!(page.status, 200, "{page:?}");
    let html = page.text();
    for id in ["name", "size", "blake3", "download", "curl", "wget", "xfer"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page for a 255-byte name has no #{id}:\n{html}");
    }
    let h1 = html.split("<h1 id=\"name\">").nth(1).and_then(|s| s.split("</h1>").next()).unwrap_or("");
    assert!(h1.starts_with("&amp;&lt;&gt;\"'") && !h1.contains(['<', '>']), "#name: {h1}");
    assert!(html.contains(&format!("href=\"/{}\"", url_segment(&name))), "the download link");
    let r = get(server.addr, &format!("/{}", url_segment(&name)), &[]);
    assert!(r.status == 200 && r.body == data, "the file by its 255-byte name: {}", r.status);
    server.assert_healthy();
}

/// Case 36: paths built to leave the one file (`..`, `%2F`, `%00`, overlong UTF-8, double
/// encoding, absolute form) get 404, or the file itself when they decode to exactly its
/// name; nothing else on the file system is ever sent.
#[test]
fn http_paths_that_try_to_escape_get_404_or_the_one_file() {
    let dir = tempdir();
    let data = random_bytes(20_000, 957);
    let path = write_file(dir.path(), "f.bin", &data);
    write_file(dir.path(), "secret.txt", b"SECRET-CONTENT-957\n");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    write_file(&sub, "secret.txt", b"SECRET-CONTENT-957\n");
    let mut server = Server::settled(&path, &[]);
    let not_found = [
        "/secret.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2Fsecret.txt",
        "/f.bin/../secret.txt",
        "/f.bin/",
        "/./f.bin",
        "/sub/secret.txt",
        "/sub%2Fsecret.txt",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "/etc/passwd",
        "/f.bin%00",
        "/f.bin%00.txt",
        "/%00",
        "/%C0%AF..%C0%AFsecret.txt",
        "/%C0%AE%C0%AE/secret.txt",
        "/%252e%252e/secret.txt",
        "/f%252Ebin",
        "/%2566.bin",
        "http://xfer.test/../secret.txt",
        "f.bin",
        "*",
    ];
    let the_file = [
        "/f.bin",
        "/%66.bin",
        "/f%2Ebin",
        "/f%2ebin",
        "/%66%2E%62%69%6E",
        "/f.bin?x=../secret.txt",
        "http://xfer.test/f.bin",
    ];
    for (target, want) in not_found.iter().map(|t| (t, 404)).chain(the_file.iter().map(|t| (t, 200))) {
        let r = get(server.addr, target, &[]);
        assert_eq!(r.status, want, "GET {target}: {r:?}");
        assert!(!r.text().contains("SECRET-CONTENT") && !r.text().contains("root:"), "GET {target} leaked a file");
        if want == 200 {
            assert!(r.body == data, "GET {target}: not the file");
        } else {
            assert!(r.text().contains("/f.bin"), "GET {target}: the 404 does not name the right URL: {}", r.text());
        }
    }
    // A name with `%` in it: found by its encoding, and by the `%` as is when what follows is
    // no encoding; never by a second decoding.
    let pct = write_file(dir.path(), "100%.txt", b"percent\n");
    let pct_server = Server::start(&pct, &[]);
    for (target, want) in [("/100%25.txt", 200), ("/100%.txt", 200), ("/100%2525.txt", 404)] {
        let r = get(pct_server.addr, target, &[]);
        assert_eq!(r.status, want, "GET {target} for a file named 100%.txt: {r:?}");
    }
    server.assert_healthy();
}
