//! curl against the server: saving under the URL's name and under Content-Disposition's,
//! the head it is shown, every range form (past 4 GiB too), resuming, conditional
//! requests, and two URLs over one kept-alive connection.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::*;

/// Every field of the file's head that curl -I shows, with the values computed here.
#[test]
fn curl_saves_exact_copies_and_sees_every_header() {
    let Some(curl_bin) = tool("curl -O, -OJ and -I", "curl") else { return };
    let dir = tempdir();
    let name = "two words.txt";
    let data = random_bytes(300_000, 901);
    let path = write_file(dir.path(), name, &data);
    backdate(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    assert_eq!(url, format!("http://{}/two%20words.txt", server.addr), "the banner's HTTP URL");

    // -O names the copy after the URL's last segment as written; -OJ after the header.
    for (flags, sub, saved) in [("-fO", "o", "two%20words.txt"), ("-fOJ", "oj", name)] {
        let out = dir.path().join(sub);
        std::fs::create_dir(&out).unwrap();
        let r = curl(&out, &curl_bin, &[flags, &url]);
        assert_ok(&r, &format!("curl {flags}"));
        assert_eq!(dir_names(&out), vec![saved.to_string()], "curl {flags} saved under another name");
        assert!(std::fs::read(out.join(saved)).unwrap() == data, "curl {flags}: the copy differs");
    }

    let sha = sha256(&data);
    assert_eq!(wait_sha256(server.addr, "two%20words.txt"), hex(&sha), "the .sha256 file's digest");
    let r = curl(dir.path(), &curl_bin, &["-fI", &url]);
    assert_ok(&r, "curl -I");
    let (head, _) = parse_reply(&r.stdout, true).and_then(|h| h.ok_or("no whole head".into())).unwrap_or_else(|e| {
        panic!("curl -I printed no well-formed head: {e}\n{}", describe(&r));
    });
    let b3 = blake3::hash(&data).to_hex().to_string();
    let want = [
        ("Content-Length", "300000".to_string()),
        ("Content-Type", "text/plain; charset=utf-8".into()),
        // A plain ASCII name needs no filename*.
        ("Content-Disposition", "attachment; filename=\"two words.txt\"".into()),
        ("Last-Modified", http_date(mtime)),
        ("ETag", format!("\"{b3}\"")),
        ("Accept-Ranges", "bytes".into()),
        ("Cache-Control", "public, max-age=10".into()),
        ("Repr-Digest", format!("sha-256=:{}:", base64(&sha))),
        ("Digest", format!("SHA-256={}", base64(&sha))),
        ("Xfer-Blake3", b3.clone()),
    ];
    assert_eq!(head.status, 200, "curl -I: {head:?}");
    for (field, value) in &want {
        assert_eq!(head.count(field), 1, "curl -I: {field} should be there once: {head:?}");
        assert_eq!(head.header(field), Some(value.as_str()), "curl -I: {field}");
    }
    assert!(head.header("Date").is_some() && !head.closes(), "curl -I: {head:?}");

    // The checksum files are what b3sum -c and sha256sum -c read, beside a copy.
    let copy_dir = dir.path().join("oj");
    for (sum, suffix) in [("b3sum", "b3"), ("sha256sum", "sha256")] {
        let Some(sum_bin) = tool(&format!("checking /NAME.{suffix}"), sum) else { continue };
        let list = curl(&copy_dir, &curl_bin, &["-f", "-o", "sums", &format!("{url}.{suffix}")]);
        assert_ok(&list, &format!("curl {url}.{suffix}"));
        let check = run_in(&copy_dir, &sum_bin, &["-c", "sums"], 30);
        assert_ok(&check, &format!("{sum} -c on the server's .{suffix} file"));
        assert_eq!(stdout_of(&check).trim(), format!("{name}: OK"), "{sum} -c");
    }

    // --max-age 0: caches must ask every time.
    let no_cache = Server::start(&path, &["--max-age", "0"]);
    let r = curl(dir.path(), &curl_bin, &["-fI", &banner_url(&no_cache)]);
    assert_ok(&r, "curl -I (--max-age 0)");
    let (head, _) = parse_reply(&r.stdout, true).unwrap().expect("a whole head");
    assert_eq!(head.header("Cache-Control"), Some("no-cache"), "--max-age 0: {head:?}");
    server.assert_healthy();
}

/// Runs `curl -r RANGE -D head -o body URL` (or with `extra` fields) and returns the
/// response's head and body.
fn ranged(dir: &Path, curl_bin: &Path, url: &str, range: &str, extra: &[&str]) -> Reply {
    let (h, b) = (dir.join("head"), dir.join("body"));
    let mut args = vec!["-r", range, "-D", h.to_str().unwrap(), "-o", b.to_str().unwrap()];
    for e in extra {
        args.extend(["-H", e]);
    }
    args.push(url);
    let r = curl(dir, curl_bin, &args);
    assert_ok(&r, &format!("curl -r {range}"));
    let head = std::fs::read(&h).unwrap();
    let (mut reply, _) = parse_reply(&head, true)
        .unwrap_or_else(|e| panic!("curl -r {range}: {e}"))
        .unwrap_or_else(|| panic!("curl -r {range}: no whole head: {:?}", String::from_utf8_lossy(&head)));
    reply.body = std::fs::read(&b).unwrap_or_default();
    std::fs::remove_file(&h).unwrap();
    let _ = std::fs::remove_file(&b);
    reply
}

#[test]
fn curl_ranges_single_unsatisfiable_several_and_if_range() {
    let Some(curl_bin) = tool("curl -r", "curl") else { return };
    let dir = tempdir();
    let size = 300_000usize;
    let data = random_bytes(size, 902);
    let path = write_file(dir.path(), "r.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    let etag = format!("\"{}\"", blake3::hash(&data).to_hex());
    let (last, total) = (size - 1, size);
    let etag_if_range = format!("If-Range: {etag}");
    let whole = String::new();
    // (curl's -r, an If-Range field or "", status, Content-Range or "", the bytes)
    let cases: [(&str, &str, u16, String, &[u8]); 8] = [
        ("0-99", "", 206, format!("bytes 0-99/{total}"), &data[..100]),
        ("100-", "", 206, format!("bytes 100-{last}/{total}"), &data[100..]),
        ("-50", "", 206, format!("bytes {}-{last}/{total}", size - 50), &data[size - 50..]),
        // A last position past the end means the end.
        ("299990-400000", "", 206, format!("bytes 299990-{last}/{total}"), &data[299_990..]),
        ("300000-", "", 416, format!("bytes */{total}"), b""),
        // Several ranges: the whole file, never a multipart answer.
        ("0-1,5-6", "", 200, whole.clone(), &data),
        ("10-19", &etag_if_range, 206, format!("bytes 10-19/{total}"), &data[10..20]),
        // Another version's tag: the range no longer applies, the whole file comes.
        ("10-19", "If-Range: \"0000\"", 200, whole, &data),
    ];
    for (range, if_range, status, content_range, bytes) in cases {
        let what = format!("-r {range} {if_range}");
        let extra: Vec<&str> = Some(if_range).filter(|f| !f.is_empty()).into_iter().collect();
        let r = ranged(dir.path(), &curl_bin, &url, range, &extra);
        assert_eq!(r.status, status, "{what}: {r:?}");
        let want_range = Some(content_range.as_str()).filter(|c| !c.is_empty());
        assert_eq!(r.header("Content-Range"), want_range, "{what}");
        if status == 416 {
            assert!(r.text().contains("range not satisfiable"), "{what}: body {:?}", r.text());
        } else {
            assert_eq!(r.header("Content-Length"), Some(bytes.len().to_string().as_str()), "{what}");
            assert!(r.body == bytes, "{what}: {} bytes that differ from the file's", r.body.len());
        }
    }
    expect_logged(&server, 5, "206 bytes 0-99", |l| {
        l.method == "GET"
            && l.path == "/r.bin"
            && l.status == 206
            && l.rest.starts_with("bytes 0-99 complete: 100 bytes")
    });
    server.assert_healthy();
}

/// A sparse file over 4 GiB: a range that starts past 2^32 and one longer than 4 GiB come
/// with the right Content-Range and exactly the right bytes (checked as they stream from
/// curl, never stored).
#[test]
fn curl_ranges_past_4gib() {
    let Some(curl_bin) = tool("curl -r past 4 GiB", "curl") else { return };
    let dir = tempdir();
    let size: u64 = (1 << 32) + 2 * MIB + 3;
    let path = dir.path().join("sparse.bin");
    let markers: Vec<(u64, &[u8])> = vec![
        (0, b"start"),
        ((1 << 31) - 5, b"two-to-the-31"),
        ((1 << 32) - 7, b"two-to-the-32!"),
        ((1 << 32) + 20, b"past-4-GiB"),
        (size - 9, b"the-end!!"),
    ];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in &markers {
            f.write_all_at(bytes, *at).unwrap();
        }
    }
    // Hashing 4 GiB at start takes a while on a busy machine.
    let mut server = Server::start_within(&path, &[], Duration::from_secs(120));
    let url = banner_url(&server);
    let byte_at = |pos: u64| -> u8 {
        let marker = markers.iter().find(|(at, b)| pos >= *at && pos < at + b.len() as u64);
        marker.map_or(0, |(at, b)| b[(pos - at) as usize])
    };
    let last = size - 1;
    for (range, first, end) in [
        (format!("{}-{}", (1u64 << 32) + 10, (1u64 << 32) + 109), (1u64 << 32) + 10, (1u64 << 32) + 110),
        ("1000-".to_string(), 1000, size),
        ("-100".to_string(), size - 100, size),
    ] {
        let what = format!("curl -r {range}");
        let head_path = dir.path().join("head");
        let mut child = client(&curl_bin)
            .args(["-q", "-sS", "--noproxy", "*", "-r", &range, "-D"])
            .arg(&head_path)
            .args(["-o", "-", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn curl");
        let watchdog = Watchdog::kill_after(child.id(), Duration::from_secs(180));
        let mut out = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = first;
        let mut wrong = None;
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("{what}: reading curl's output: {e}"),
            };
            if wrong.is_none() {
                wrong = first_wrong(&buf[..n], pos, &markers).map(|at| (at, buf[(at - pos) as usize]));
            }
            pos += n as u64;
        }
        let st = child.wait().unwrap();
        watchdog.disarm();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(st.success(), "{what}: {}: {err}", status_str(&st));
        let head = std::fs::read(&head_path).unwrap();
        let (reply, _) = parse_reply(&head, true).unwrap().expect("a whole head");
        assert_eq!(reply.status, 206, "{what}: {reply:?}");
        let cr = format!("bytes {first}-{}/{size}", end - 1);
        assert_eq!(reply.header("Content-Range"), Some(cr.as_str()), "{what}");
        assert_eq!(reply.header("Content-Length"), Some((end - first).to_string().as_str()), "{what}");
        assert_eq!(pos, end, "{what}: {} bytes arrived, expected {}", pos - first, end - first);
        if let Some((at, got)) = wrong {
            panic!("{what}: byte {at} is {got:#04x}, expected {:#04x}", byte_at(at));
        }
        expect_logged(&server, 10, &what, |l| {
            l.status == 206 && l.rest.starts_with(&format!("bytes {first}-{} complete: {} bytes", end - 1, end - first))
        });
    }
    assert!(last > 1 << 32, "test design: the file is over 4 GiB");
    // The SHA-256 of 4 GiB is still being computed on its helper thread; idle means after.
    wait_sha256(server.addr, "sparse.bin");
    server.assert_healthy();
}

/// The position of the first byte of `chunk` (which starts at file position `pos`) that
/// differs from a sparse file holding `markers` (sorted by position) and zeros elsewhere.
fn first_wrong(chunk: &[u8], pos: u64, markers: &[(u64, &[u8])]) -> Option<u64> {
    let zeros_from = |from: usize, to: usize| -> Option<u64> {
        // Whole 4 KiB blocks first (the compiler vectorises the fold), then the byte.
        let slice = &chunk[from..to];
        let block = slice.chunks(4096).position(|c| c.iter().fold(0u8, |a, &b| a | b) != 0)?;
        let byte = slice[block * 4096..].iter().position(|&b| b != 0)?;
        Some(pos + (from + block * 4096 + byte) as u64)
    };
    let end = pos + chunk.len() as u64;
    let mut cursor = 0usize;
    for (at, bytes) in markers {
        let (from, to) = ((*at).max(pos), (at + bytes.len() as u64).min(end));
        if from >= to {
            continue;
        }
        let (a, b) = ((from - pos) as usize, (to - pos) as usize);
        if let Some(w) = zeros_from(cursor, a) {
            return Some(w);
        }
        let want = &bytes[(from - at) as usize..(to - at) as usize];
        if let Some(i) = chunk[a..b].iter().zip(want).position(|(x, y)| x != y) {
            return Some(from + i as u64);
        }
        cursor = b;
    }
    zeros_from(cursor, chunk.len())
}

/// Kills a process unless disarmed in time (a child that never ends must not hang the
/// test).
struct Watchdog {
    disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn kill_after(pid: u32, limit: Duration) -> Watchdog {
        let (disarm, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                send_signal(pid, libc::SIGKILL);
            }
        });
        Watchdog { disarm }
    }

    fn disarm(self) {
        let _ = self.disarm.send(());
    }
}

#[test]
fn curl_resumes_a_partial_copy_and_asks_conditionally() {
    let Some(curl_bin) = tool("curl -C -, --etag-compare and -z", "curl") else { return };
    let dir = tempdir();
    let data = random_bytes(MIB as usize, 903);
    let path = write_file(dir.path(), "c.bin", &data);
    backdate(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);

    // -C -: curl asks for the rest of what it has.
    let out = dir.path().join("partial.bin");
    std::fs::write(&out, &data[..123_457]).unwrap();
    let r = curl(dir.path(), &curl_bin, &["-f", "-C", "-", "-o", "partial.bin", &url]);
    assert_ok(&r, "curl -C -");
    assert!(std::fs::read(&out).unwrap() == data, "curl -C -: the resumed copy differs");
    expect_logged(&server, 5, "the resumed part", |l| {
        l.status == 206
            && l.rest.starts_with(&format!("bytes 123457-{} complete: {} bytes", data.len() - 1, 1_048_576 - 123_457))
    });

    // If-None-Match with the tag curl saved: 304, and nothing sent again.
    let r = curl(dir.path(), &curl_bin, &["-f", "--etag-save", "tag", "-o", "first.bin", &url]);
    assert_ok(&r, "curl --etag-save");
    let tag = std::fs::read_to_string(dir.path().join("tag")).unwrap();
    assert_eq!(tag.trim(), format!("\"{}\"", blake3::hash(&data).to_hex()), "the ETag curl saved");
    let r = curl(dir.path(), &curl_bin, &["--etag-compare", "tag", "-o", "again.bin", "-w", "%{http_code}", &url]);
    assert_ok(&r, "curl --etag-compare");
    assert_eq!(stdout_of(&r), "304", "If-None-Match with the file's own tag");

    // If-Modified-Since (-z DATE): not modified since its own date; modified since earlier.
    let hour = Duration::from_secs(3600);
    for (since, code) in [(http_date(mtime), "304"), (http_date(mtime - hour), "200")] {
        let r = curl(dir.path(), &curl_bin, &["-z", &since, "-o", "since.bin", "-w", "%{http_code}", &url]);
        assert_ok(&r, "curl -z");
        assert_eq!(stdout_of(&r), code, "-z {since:?} (the file's Last-Modified is {})", http_date(mtime));
        if code == "200" {
            assert!(std::fs::read(dir.path().join("since.bin")).unwrap() == data, "-z {since:?}: copy differs");
        }
    }
    let not_modified = logged_count(&server, 5, 2, |l| l.status == 304);
    assert_eq!(not_modified, 2, "two 304s logged:\n{}", server.stderr());
    server.assert_healthy();
}

/// Two URLs on one command line go over one kept-alive connection: curl says it re-used
/// it, and the server logs both responses from the same client port.
#[test]
fn curl_two_urls_share_one_kept_alive_connection() {
    let Some(curl_bin) = tool("curl keep-alive", "curl") else { return };
    let dir = tempdir();
    let data = random_bytes(200_000, 904);
    let path = write_file(dir.path(), "k.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    let r = curl(dir.path(), &curl_bin, &["-v", "-f", "-o", "one.bin", &url, "-o", "sums.b3", &format!("{url}.b3")]);
    assert_ok(&r, "curl with two URLs");
    assert!(
        stderr_of(&r).contains("Re-using existing connection"),
        "curl did not re-use the connection:\n{}",
        stderr_of(&r)
    );
    assert!(std::fs::read(dir.path().join("one.bin")).unwrap() == data, "the first URL's copy differs");
    let sums = std::fs::read_to_string(dir.path().join("sums.b3")).unwrap();
    assert_eq!(sums, format!("{}  k.bin\n", blake3::hash(&data).to_hex()), "the second URL's body");
    expect_logged(&server, 5, "the .b3 request", |l| l.path == "/k.bin.b3");
    let log = http_log(&server.stderr());
    let file = log.iter().find(|l| l.path == "/k.bin").expect("the file's line");
    let sum = log.iter().find(|l| l.path == "/k.bin.b3").expect("the .b3 line");
    assert_eq!(file.client, sum.client, "two responses, two client ports:\n{}", server.stderr());
    assert!(file.rest.starts_with("complete: 200000 bytes"), "{file:?}");
    server.assert_healthy();
}

/// Refusals over HTTP carry a status, the reason as the body, and what the client needs:
/// 401 with `WWW-Authenticate` without the token (200 with it), 403 outside `--allow`,
/// 503 with `Retry-After` when busy; each is logged with its reason.
#[test]
fn curl_is_refused_with_401_403_and_503_and_a_reason() {
    let Some(curl_bin) = tool("curl refused", "curl") else { return };
    let dir = tempdir();
    let data = random_bytes(2 * MIB as usize, 905);
    let path = write_file(dir.path(), "r.bin", &data);
    let refused = |extra: &[&str], args: &[&str]| {
        let server = Server::start(&path, extra);
        let url = banner_url(&server);
        let mut all = vec!["-D", "-", "-o", "body"];
        all.extend_from_slice(args);
        all.push(&url);
        let r = curl(dir.path(), &curl_bin, &all);
        assert_ok(&r, &format!("curl against serve {extra:?}"));
        let (head, _) = parse_reply(&r.stdout, true).unwrap().expect("a whole head");
        let body = std::fs::read(dir.path().join("body")).unwrap_or_default();
        (server, head, body)
    };

    let (_s, head, body) = refused(&["--token", "s3cret"], &[]);
    assert_eq!(head.status, 401, "no token: {head:?}");
    assert_eq!(head.header("WWW-Authenticate"), Some("Bearer realm=\"xfer\""), "no token: {head:?}");
    assert!(head.closes() && !body.is_empty(), "no token: {head:?} {}", String::from_utf8_lossy(&body));
    let (_s, head, _) = refused(&["--token", "s3cret"], &["-H", "Authorization: Bearer wrong"]);
    assert_eq!(head.status, 401, "a wrong token: {head:?}");
    let (_s, head, body) = refused(&["--token", "s3cret"], &["-H", "Authorization: Bearer s3cret"]);
    assert_eq!(head.status, 200, "the right token: {head:?}");
    assert!(body == data, "the right token: the copy differs");

    let (s, head, body) = refused(&["--allow", "10.0.0.0/8"], &[]);
    assert_eq!(head.status, 403, "outside --allow: {head:?}");
    assert!(head.closes() && !body.is_empty(), "outside --allow: {head:?} {}", String::from_utf8_lossy(&body));
    expect_logged(&s, 5, "the 403", |l| l.status == 403 && l.rest.starts_with("refused: "));

    // Busy: one client holds the only place, stalled mid-body.
    let mut server = Server::settled(&path, &["--max-clients", "1"]);
    let mut holder = Conn::over(raw::connect(server.addr, None, Some(4096)).expect("connect"));
    holder.send(&request("GET", "/r.bin", &[]));
    assert!(wait_until(Duration::from_secs(5), || raw::readable_now(&holder.s)), "the first client was not served");
    let r = curl(dir.path(), &curl_bin, &["-D", "-", "-o", "body", &banner_url(&server)]);
    assert_ok(&r, "curl against a busy server");
    let (head, _) = parse_reply(&r.stdout, true).unwrap().expect("a whole head");
    let body = std::fs::read_to_string(dir.path().join("body")).unwrap_or_default();
    assert_eq!(head.status, 503, "busy: {head:?}");
    assert_eq!(head.header("Retry-After"), Some("1"), "busy: {head:?}");
    assert_eq!(body.trim(), "server busy: at its limit of clients; try again later", "busy: the reason");
    expect_logged(&server, 5, "the 503", |l| {
        l.status == 503 && l.rest == "refused: server busy: at its limit of clients; try again later"
    });
    drop(holder);
    server.assert_healthy();
}

/// While the Ctrl+C question is open, an HTTP client is told 503 with `Retry-After` and
/// the reason; after `c`, it is served.
#[test]
fn curl_is_told_503_while_the_server_is_paused() {
    use crate::util::pty::Pty;
    let Some(curl_bin) = tool("curl while paused", "curl") else { return };
    let dir = tempdir();
    let data = random_bytes(10_000, 906);
    let path = write_file(dir.path(), "p.bin", &data);
    let mut pty = Pty::open();
    let mut cmd = serve_command(&path, &[]);
    pty.control(&mut cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn xfer serve on a terminal");
    drop(cmd);
    pty.release();
    let log = Collected::spawn(child.stderr.take().unwrap());
    let context = log.clone();
    let (addr, _) = read_banner(&mut child, move || context.text());
    let url = format!("http://{addr}/p.bin");
    send_signal(child.id(), libc::SIGINT);
    let asked = pty.wait_for(10, |t| t.contains("continue listening or exit?"));
    let paused = wait_until(Duration::from_secs(10), || log.text().contains("paused (Ctrl+C)"));
    let result = std::panic::catch_unwind(|| {
        assert!(asked && paused, "no pause: terminal {:?}, log {:?}", pty.text(), log.text());
        let r = curl(dir.path(), &curl_bin, &["-D", "-", "-o", "body", &url]);
        assert_ok(&r, "curl while paused");
        let (head, _) = parse_reply(&r.stdout, true).unwrap().expect("a whole head");
        assert_eq!(head.status, 503, "paused: {head:?}");
        assert_eq!(head.header("Retry-After"), Some("5"), "paused: {head:?}");
        let body = std::fs::read_to_string(dir.path().join("body")).unwrap();
        assert_eq!(body.trim(), "server paused; try again shortly", "paused: the reason");
    });
    pty.type_text("c\n");
    let resumed = wait_until(Duration::from_secs(10), || log.text().contains("resumed"));
    let after = resumed.then(|| curl(dir.path(), &curl_bin, &["-f", "-o", "after.bin", &url]));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(resumed, "not resumed after c: {:?}", log.text());
    assert_ok(&after.unwrap(), "curl after resuming");
    assert!(std::fs::read(dir.path().join("after.bin")).unwrap() == data, "after resuming: the copy differs");
}
