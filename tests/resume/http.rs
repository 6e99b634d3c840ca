//! Fetching from HTTP servers: nginx (a cut resumed with `Range` and `If-Range`, a file
//! replaced in between, `--expect`, errors and their exit codes, redirects), xfer's own HTTP
//! side (its digest headers are checked), and hand-written servers for what nginx does not
//! do (ignore ranges, chunked and close-delimited bodies, no digest at all).

use std::net::SocketAddr;

use super::*;
use crate::util::proxy::{Action, Plan, Proxy};

/// Length of the response head a server sends to a `GET path` like fetch's (with
/// `Connection: close`): where its body starts in the stream.
fn head_len(addr: SocketAddr, path: &str) -> u64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        assert_eq!(s.read(&mut byte).expect("read head"), 1, "closed in the head");
        head.push(byte[0]);
    }
    head.len() as u64
}

/// Status of a `GET path` (connection closed after).
fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut line = [0u8; 12];
    if s.read_exact(&mut line).is_err() {
        return 0;
    }
    String::from_utf8_lossy(&line[9..12]).parse().unwrap_or(0)
}

/// A directory `www` holding `data.bin` (`size` pseudo-random bytes), and an empty `out`.
fn site(size: usize, seed: u64) -> (tempfile::TempDir, PathBuf, Vec<u8>, PathBuf) {
    let dir = tempdir();
    let www = dir.path().join("www");
    let outdir = dir.path().join("out");
    std::fs::create_dir(&www).unwrap();
    std::fs::create_dir(&outdir).unwrap();
    let data = random_bytes(size, seed);
    write_file(&www, "data.bin", &data);
    (dir, www, data, outdir)
}

// ---------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------

#[test]
fn nginx_cut_transfer_resumes_with_range_and_if_range() {
    let size = 4 * MIB + 3;
    let (_dir, www, data, outdir) = site(size as usize, 20_001);
    let Some(nginx) = Nginx::start(&www, "", "resume from nginx") else { return };
    let proxy = Proxy::start(nginx.addr, Plan::clean());
    let head = head_len(nginx.addr, "/data.bin");
    let url = format!("http://{}/data.bin", proxy.target());
    let out = outdir.join("copy.bin");
    let kept = cut_once(&proxy, &url, &out, head + size * 6 / 10, head, &[]);
    let record = std::fs::read_to_string(partial_of(&out).1).unwrap();
    let etag = record.lines().find_map(|l| l.strip_prefix("etag ")).map(str::to_string);
    assert!(
        etag.as_deref().is_some_and(|e| e.starts_with('"')) && record.contains("\nlast-modified "),
        "the record must keep nginx's strong ETag and Last-Modified:\n{record}"
    );

    let before = proxy.down_bytes();
    let res = fetch_default(&url, &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &data);
    let passed = proxy.down_bytes() - before;
    assert!(
        passed >= size - kept && passed <= size - kept + 1024,
        "the resumed request must bring only the missing {} bytes and a head; {passed} passed",
        size - kept
    );
    let line = summary(&res);
    assert!(line.contains(&format!("resuming at {kept}")), "summary: {line}");
    assert!(line.contains("not verified"), "nginx sends no digest, so nothing was verified: {line}");
    let log = nginx.wait_requests(3);
    let want = format!("206 \"bytes={kept}-\" \"{}\" /data.bin", etag.unwrap());
    assert!(log.last().is_some_and(|l| *l == want), "nginx's last request should be `{want}`: {log:?}");
    assert_eq!(dir_names(&outdir), vec!["copy.bin"]);
}

#[test]
fn nginx_file_replaced_between_attempts_is_fetched_new_and_whole() {
    let size = 2 * MIB + 1;
    let (dir, www, data, outdir) = site(size as usize, 20_002);
    let Some(nginx) = Nginx::start(&www, "", "file replaced behind nginx") else { return };
    let proxy = Proxy::start(nginx.addr, Plan::clean());
    let head = head_len(nginx.addr, "/data.bin");
    let url = format!("http://{}/data.bin", proxy.target());
    let out = outdir.join("copy.bin");
    let kept = cut_once(&proxy, &url, &out, head + size * 6 / 10, head, &[]);
    // Another file of the same size, another modification time: another ETag.
    let new = random_bytes(data.len(), 20_003);
    let tmp = write_file(dir.path(), "next.tmp", &new);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    std::fs::rename(&tmp, www.join("data.bin")).unwrap();
    let res = fetch_default(&url, &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &new);
    assert!(!summary(&res).contains("resuming"), "resumed a partial of the old file: {}", summary(&res));
    let log = nginx.wait_requests(3);
    let last = log.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!("200 \"bytes={kept}-\"")),
        "the resumed request must carry If-Range, and nginx answer the whole new file: {log:?}"
    );
    assert_eq!(dir_names(&outdir), vec!["copy.bin"]);
}

#[test]
fn nginx_an_overlong_or_foreign_partial_is_fetched_again_whole() {
    let size = MIB + 7;
    let (_dir, www, data, outdir) = site(size as usize, 20_012);
    let Some(nginx) = Nginx::start(&www, "", "damaged partials from nginx") else { return };
    let proxy = Proxy::start(nginx.addr, Plan::clean());
    let head = head_len(nginx.addr, "/data.bin");
    let url = format!("http://{}/data.bin", proxy.target());
    // Longer than the file (nginx answers 416 to its range), then a record of another
    // version (nginx answers 200 to its If-Range). The bytes are made wrong too, so that
    // resuming them could only give a wrong file: nginx sends no digest to catch it.
    let cases: [(&str, Damage); 2] = [
        ("an overlong partial", Box::new(|part, _| std::fs::write(part, random_bytes(2 * MIB as usize, 3)).unwrap())),
        (
            "another version's partial",
            Box::new(|part, info| {
                std::fs::write(part, random_bytes(len_of(part) as usize, 4)).unwrap();
                let text = std::fs::read_to_string(info).unwrap();
                let etag = text.lines().find(|l| l.starts_with("etag ")).expect("an etag in the record").to_string();
                std::fs::write(info, text.replace(&etag, "etag \"0-0\"")).unwrap();
            }),
        ),
    ];
    for (i, (what, damage)) in cases.into_iter().enumerate() {
        let out = outdir.join(format!("copy{i}.bin"));
        cut_once(&proxy, &url, &out, head + size * 6 / 10, head, &[]);
        let (part, info) = partial_of(&out);
        damage(&part, &info);
        let res = fetch_default(&url, &out, &["--retry", "0"]);
        assert!(res.status.success(), "{what}:\n{}", describe(&res));
        assert!(std::fs::read(&out).unwrap() == data, "{what}: exit 0 with wrong bytes");
        assert!(!summary(&res).contains("resuming"), "{what}: resumed: {}", summary(&res));
    }
    let mut names = dir_names(&outdir);
    names.sort();
    assert_eq!(names, vec!["copy0.bin", "copy1.bin"], "partials or records left behind");
}

#[test]
fn expect_sha256_is_checked_against_nginx_a_mismatch_exits_4_and_writes_nothing() {
    let (_dir, www, data, outdir) = site(MIB as usize + 5, 20_004);
    let Some(nginx) = Nginx::start(&www, "", "--expect against nginx") else { return };
    let url = nginx.url("/data.bin");
    let out = outdir.join("copy.bin");
    let mut wrong = sha256(&data);
    wrong[0] ^= 1;
    let res = fetch_default(&url, &out, &["--expect", &format!("sha256:{}", hex(&wrong))]);
    assert_failed(&res, &[4], "--expect with a wrong sha256");
    assert!(error_lines(&res)[0].contains("--expect"), "the error must say which digest failed: {}", describe(&res));
    assert!(dir_names(&outdir).is_empty(), "a failed verification left {:?}", dir_names(&outdir));

    let right = hex(&sha256(&data));
    let res = fetch_default(&url, &out, &["--expect", &format!("sha256:{right}")]);
    assert_fetched(&out, &res, &data);
    assert!(summary(&res).contains(&format!("verified sha-256 {right}")), "summary: {}", summary(&res));
}

#[test]
fn http_errors_exit_with_their_codes_and_only_transient_ones_are_retried() {
    let (_dir, www, _data, outdir) = site(1000, 20_005);
    let extra = "    location = /gone { return 410; }\n    location = /forbidden { return 403; }\n\
                 location = /busy { return 503; }\n";
    let Some(nginx) = Nginx::start(&www, extra, "HTTP errors") else { return };
    let out = outdir.join("copy.bin");
    for (path, code, status, retried) in [
        ("/missing.bin", 4, "404", false),
        ("/gone", 4, "410", false),
        ("/forbidden", 6, "403", false),
        ("/busy", 3, "503", true),
    ] {
        let res = fetch_default(&nginx.url(path), &out, &["--retry", "1"]);
        let what = format!("HTTP {status}");
        let retries = retry_lines(&stderr_of(&res));
        assert_eq!(retries.len(), usize::from(retried), "{what}: retried {} times:\n{}", retries.len(), describe(&res));
        // One line per retry, then the error.
        let lines = error_lines(&res);
        assert_eq!(res.status.code(), Some(code), "{what}: exit code\n{}", describe(&res));
        assert_eq!(lines.len(), retries.len() + 1, "{what}: one error line after the retries\n{}", describe(&res));
        assert!(lines.last().unwrap().contains(status), "{what}: the error must name the status: {}", describe(&res));
        assert!(!stderr_of(&res).contains("panicked"), "{what}: panic\n{}", describe(&res));
        assert!(dir_names(&outdir).is_empty(), "{what}: left {:?}", dir_names(&outdir));
    }
}

#[test]
fn redirect_chains_are_followed_and_loops_refused() {
    let (_dir, www, data, outdir) = site(MIB as usize, 20_006);
    let extra = "    location = /r1 { return 301 /r2; }\n    location = /r2 { return 302 /r3; }\n\
                 location = /r3 { return 303 /r4; }\n    location = /r4 { return 307 /r5; }\n\
                 location = /r5 { return 308 /data.bin; }\n    location = /loop { return 302 /loop; }\n\
                 location = /tls { return 302 https://127.0.0.1:1/data.bin; }\n";
    let Some(nginx) = Nginx::start(&www, extra, "redirects") else { return };
    let out = outdir.join("copy.bin");
    let res = fetch_default(&nginx.url("/r1"), &out, &[]);
    assert_fetched(&out, &res, &data);
    std::fs::remove_file(&out).unwrap();

    let before = nginx.wait_requests(6).len();
    let res = fetch_default(&nginx.url("/loop"), &out, &[]);
    assert_failed(&res, &[4], "a redirect loop");
    assert!(error_lines(&res)[0].contains("redirects"), "the error must say why: {}", describe(&res));
    let asked = nginx.wait_requests(before + 11).len() - before;
    assert_eq!(asked, 11, "the first request and at most 10 redirects");

    let res = fetch_default(&nginx.url("/tls"), &out, &[]);
    assert!(!res.status.success(), "a redirect to https cannot be followed:\n{}", describe(&res));
    assert!(error_lines(&res)[0].contains("only http://"), "the error must say why: {}", describe(&res));
    assert!(dir_names(&outdir).is_empty(), "left {:?}", dir_names(&outdir));
}

// ---------------------------------------------------------------------------------------
// xfer's own HTTP side
// ---------------------------------------------------------------------------------------

#[test]
fn xfer_http_replies_are_verified_by_their_digest_headers_and_resumed() {
    let size = 2 * MIB + 21;
    let (_dir, www, data, outdir) = site(size as usize, 20_007);
    let server = Server::start(&www.join("data.bin"), &[]);
    // The SHA-256 is computed on first use over HTTP; its checksum file answers 200 once
    // the replies carry it.
    let known = wait_until(Duration::from_secs(20), || status_of(server.addr, "/data.bin.sha256") == 200);
    assert!(known, "the server's SHA-256 was not ready within 20 s");
    let url = format!("http://{}/data.bin", server.target());
    let out = outdir.join("copy.bin");
    let res = fetch_default(&url, &out, &[]);
    assert_fetched(&out, &res, &data);
    let line = summary(&res);
    let b3 = blake3::hash(&data).to_hex().to_string();
    assert!(
        line.contains("verified") && line.contains(&format!("sha-256 {}", hex(&sha256(&data)))) && line.contains(&b3),
        "the summary must name both digests the server sent: {line}"
    );
    std::fs::remove_file(&out).unwrap();

    // Cut, then resumed with If-Range on xfer's ETag.
    let proxy = Proxy::start(server.addr, Plan::clean());
    let head = head_len(server.addr, "/data.bin");
    let url = format!("http://{}/data.bin", proxy.target());
    let kept = cut_once(&proxy, &url, &out, head + size * 6 / 10, head, &[]);
    let before = proxy.down_bytes();
    let res = fetch_default(&url, &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &data);
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));
    assert!(summary(&res).contains("verified"), "summary: {}", summary(&res));
    assert!(proxy.down_bytes() - before <= size - kept + 1024, "more than the missing bytes and a head passed");
    std::fs::remove_file(&out).unwrap();

    // A flipped bit on a fresh attempt: the digest headers catch it, nothing is written.
    proxy.set_plan(Plan::down(head + 1000, Action::Flip(2)));
    let res = fetch_default(&url, &out, &["--retry", "0"]);
    assert_eq!(proxy.fired(), 2, "test design: the bit was not flipped");
    assert_failed(&res, &[4], "a flipped bit over HTTP");
    assert!(dir_names(&outdir).is_empty(), "a failed verification left {:?}", dir_names(&outdir));
}

// ---------------------------------------------------------------------------------------
// Hand-written servers
// ---------------------------------------------------------------------------------------

#[test]
fn a_server_that_ignores_range_is_fetched_again_from_zero_exactly() {
    let data = random_bytes(MIB as usize + 99, 20_008);
    let seen: Seen = Seen::default();
    let (body, log) = (data.clone(), seen.clone());
    let server = Scripted::start(2, move |n, mut s| {
        let head = read_http_head(&mut s);
        log.lock().unwrap().push(head);
        let h = [format!("Content-Length: {}", body.len()), "ETag: \"v1\"".into(), "Connection: close".into()];
        // The first answer stops at 60 %; the second ignores the Range asked for.
        let end = if n == 0 { body.len() * 6 / 10 } else { body.len() };
        send_and_close(s, &http_response("200 OK", &h, &body[..end]));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let url = server.url("/data.bin");
    let first = fetch_default(&url, &out, &["--retry", "0"]);
    assert_failed(&first, &[3], "a body cut short");
    let kept = len_of(&partial_of(&out).0);
    assert_eq!(kept, data.len() as u64 * 6 / 10, "the partial holds what arrived");
    let lost = format!("connection lost after {kept} of {} bytes", data.len());
    assert!(error_lines(&first)[0].contains(&lost), "Content-Length is the size: {}", describe(&first));
    let res = fetch_default(&url, &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &data);
    assert!(!summary(&res).contains("resuming"), "a 200 answer to a range restarts from zero: {}", summary(&res));
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "two requests");
    assert_eq!(header(&heads[1], "range"), Some(format!("bytes={kept}-").as_str()), "request: {}", heads[1]);
    assert_eq!(header(&heads[1], "if-range"), Some("\"v1\""), "request: {}", heads[1]);
    assert_eq!(dir_names(dir.path()), vec!["copy.bin"]);
}

#[test]
fn a_chunked_body_is_fetched_exactly() {
    let data = random_bytes(300_001, 20_009);
    let body = data.clone();
    let server = Scripted::start(1, move |_, mut s| {
        read_http_head(&mut s);
        let mut wire = Vec::new();
        let mut rng = Rng::new(5);
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = ((rng.below(70_000) + 1) as usize).min(body.len() - at);
            // Hex in both cases, a chunk extension now and then.
            let size = if i % 2 == 0 { format!("{n:x}") } else { format!("{n:X}") };
            let ext = if i % 3 == 0 { ";name=value" } else { "" };
            wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
            wire.extend_from_slice(&body[at..at + n]);
            wire.extend_from_slice(b"\r\n");
            at += n;
            i += 1;
        }
        wire.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
        // A Content-Length beside chunked is ignored (RFC 9112, 6.3): not the size.
        let h = ["Transfer-Encoding: chunked".to_string(), "Content-Length: 7".into(), "Connection: close".into()];
        send_and_close(s, &http_response("200 OK", &h, &wire));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch_default(&server.url("/data.bin"), &out, &[]);
    assert_fetched(&out, &res, &data);
    assert!(summary(&res).contains("not verified"), "no digest was sent: {}", summary(&res));
}

#[test]
fn a_body_ended_by_close_is_fetched_exactly_and_checked_by_its_digest() {
    let data = random_bytes(500_003, 20_010);
    // The first answer carries the right Repr-Digest, the second a wrong one.
    let (body, good) = (data.clone(), base64(&sha256(&data)));
    let server = Scripted::start(2, move |n, mut s| {
        read_http_head(&mut s);
        let d = if n == 0 { good.clone() } else { base64(&[7u8; 32]) };
        let h = [format!("Repr-Digest: sha-256=:{d}:"), "Connection: close".into()];
        send_and_close(s, &http_response("200 OK", &h, &body));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch_default(&server.url("/data.bin"), &out, &[]);
    assert_fetched(&out, &res, &data);
    assert!(summary(&res).contains("verified sha-256"), "summary: {}", summary(&res));
    let out2 = dir.path().join("copy2.bin");
    let res = fetch_default(&server.url("/data.bin"), &out2, &[]);
    assert_failed(&res, &[4], "a body whose Repr-Digest does not match");
    assert_eq!(dir_names(dir.path()), vec!["copy.bin"], "a failed verification left files");
}

#[test]
fn a_server_sending_no_digest_is_reported_not_verified() {
    let data = random_bytes(100_000, 20_011);
    let body = data.clone();
    let server = Scripted::start(1, move |_, mut s| {
        read_http_head(&mut s);
        let h = [format!("Content-Length: {}", body.len()), "Connection: close".into()];
        send_and_close(s, &http_response("200 OK", &h, &body));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch_default(&server.url("/data.bin"), &out, &[]);
    assert_fetched(&out, &res, &data);
    let line = summary(&res);
    assert!(line.contains("not verified"), "summary: {line}");
    assert!(!line.replace("not verified", "").contains("verified"), "claims a verification: {line}");
}

#[test]
fn a_503_with_retry_after_is_retried_after_that_time_then_fetched() {
    let data = random_bytes(100_000, 20_013);
    let body = data.clone();
    let server = Scripted::start(2, move |n, mut s| {
        read_http_head(&mut s);
        let reply = if n == 0 {
            http_response("503 Service Unavailable", &["Retry-After: 1".into(), "Content-Length: 0".into()], b"")
        } else {
            http_response("200 OK", &[format!("Content-Length: {}", body.len())], &body)
        };
        send_and_close(s, &reply);
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch_default(&server.url("/data.bin"), &out, &[]);
    assert_fetched(&out, &res, &data);
    let retries = retry_lines(&stderr_of(&res));
    assert_eq!(retries.len(), 1, "one 503, one retry:\n{}", stderr_of(&res));
    // The first backoff alone would be 0.4-0.6 s.
    assert!(
        retries[0].contains("503") && retries[0].contains("retrying in 1.0 s"),
        "Retry-After: 1 ignored: {}",
        retries[0]
    );
}

#[test]
fn the_token_goes_to_its_own_origin_only_and_redirects_keep_the_query() {
    let data = random_bytes(10_000, 20_014);
    let reply = |body: &[u8]| http_response("200 OK", &[format!("Content-Length: {}", body.len())], body);
    // Another origin (another port): it must never see the token.
    let (other_seen, body) = (Seen::default(), data.clone());
    let log = other_seen.clone();
    let other = Scripted::start(1, move |_, mut s| {
        log.lock().unwrap().push(read_http_head(&mut s));
        send_and_close(s, &reply(&body));
    });
    let to_other = other.url("/elsewhere.bin");
    let (seen, body) = (Seen::default(), data.clone());
    let log = seen.clone();
    let first = Scripted::start(3, move |n, mut s| {
        log.lock().unwrap().push(read_http_head(&mut s));
        let moved =
            |to: &str| http_response("302 Found", &[format!("Location: {to}"), "Content-Length: 0".into()], b"");
        let answer = match n {
            0 => moved("/moved?b=2"),
            1 => reply(&body),
            _ => moved(&to_other),
        };
        send_and_close(s, &answer);
    });
    let dir = tempdir();
    let (out, out2) = (dir.path().join("copy.bin"), dir.path().join("copy2.bin"));

    let res = fetch_default(&first.url("/start?a=1"), &out, &["--token", "s3cret"]);
    assert_fetched(&out, &res, &data);
    let res = fetch_default(&first.url("/away"), &out2, &["--token", "s3cret"]);
    assert_fetched(&out2, &res, &data);

    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "three requests: {heads:?}");
    let line = |h: &str| h.lines().next().unwrap_or("").to_string();
    assert_eq!(line(&heads[0]), "GET /start?a=1 HTTP/1.1");
    assert_eq!(line(&heads[1]), "GET /moved?b=2 HTTP/1.1", "a redirect within the origin");
    for h in &heads {
        assert_eq!(header(h, "authorization"), Some("Bearer s3cret"), "the origin it was given for: {h}");
        assert_eq!(header(h, "host"), Some(first.addr.to_string().as_str()), "Host with its port: {h}");
        assert_eq!(header(h, "connection"), Some("close"), "{h}");
        assert_eq!(header(h, "range"), None, "nothing to resume: {h}");
    }
    let heads = other_seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "the redirect to another origin was followed: {heads:?}");
    assert_eq!(line(&heads[0]), "GET /elsewhere.bin HTTP/1.1");
    assert_eq!(header(&heads[0], "authorization"), None, "the token leaked to another origin: {}", heads[0]);
    assert_eq!(header(&heads[0], "host"), Some(other.addr.to_string().as_str()));
}

#[test]
fn response_heads_up_to_the_limit_are_read_and_longer_ones_refused() {
    let data = random_bytes(50_000, 20_015);
    // 100 fields of 400 bytes (the read buffer starts at 16 KiB), then of 700: over 64 KiB.
    let (body, filler) = (data.clone(), |n: usize| (0..100).map(move |i| format!("X-Filler-{i}: {}", "f".repeat(n))));
    let server = Scripted::start(2, move |n, mut s| {
        read_http_head(&mut s);
        let mut h: Vec<String> = filler(if n == 0 { 400 } else { 700 }).collect();
        h.push(format!("Content-Length: {}", body.len()));
        send_and_close(s, &http_response("200 OK", &h, &body));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch(&server.url("/data.bin"), &out, &[]);
    assert_fetched(&out, &res, &data);
    let out2 = dir.path().join("copy2.bin");
    let res = fetch(&server.url("/data.bin"), &out2, &[]);
    assert_failed(&res, &[4], "a response head over 64 KiB");
    let line = &error_lines(&res)[0];
    assert!(line.ends_with(": HTTP response head over 64 KiB"), "the error must say why: {}", describe(&res));
    assert_eq!(dir_names(dir.path()), vec!["copy.bin"]);
}

#[test]
fn a_range_not_asked_for_and_a_416_without_a_partial_are_errors_of_their_own() {
    let data = random_bytes(200, 20_016);
    let seen = Seen::default();
    let (body, log) = (data.clone(), seen.clone());
    let server = Scripted::start(2, move |n, mut s| {
        log.lock().unwrap().push(read_http_head(&mut s));
        let reply = if n == 0 {
            // Part of the file, to a request for all of it.
            let h = ["Content-Range: bytes 100-199/200".to_string(), "Content-Length: 100".into()];
            http_response("206 Partial Content", &h, &body[100..])
        } else {
            let h = ["Content-Range: bytes */200".to_string(), "Content-Length: 0".into()];
            http_response("416 Range Not Satisfiable", &h, b"")
        };
        send_and_close(s, &reply);
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let res = fetch(&server.url("/data.bin"), &out, &[]);
    assert_failed(&res, &[4], "a 206 to a request without Range");
    assert!(error_lines(&res)[0].contains("a range that was not asked for"), "{}", describe(&res));
    let res = fetch(&server.url("/data.bin"), &out, &[]);
    assert_failed(&res, &[4], "a 416 to a request without Range");
    assert!(error_lines(&res)[0].contains("416"), "the server's answer, not a partial's fault: {}", describe(&res));
    assert_eq!(seen.lock().unwrap().len(), 2, "one request each");
    assert!(dir_names(dir.path()).is_empty(), "left {:?}", dir_names(dir.path()));
}
