//! The CLI contract end to end: byte-exact copies of every sample, concurrency, hostile raw
//! clients, a server killed mid-transfer, fake servers that lie, IPv6 and `localhost`,
//! bad inputs and outputs, `--help`, and the exit-code table of the README.
//!
//! Every test runs the real binary on port 0 (loopback only), reads the address it prints,
//! and compares bytes. Fake servers and the throttling proxy come from `util`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::encoding::{self, xfer::Status};
use crate::util::fake::Fake;
use crate::util::proxy::{Plan, Proxy};
use crate::util::raw::{self, request};
use crate::util::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A closed port on 127.0.0.1 (bound then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `data` in a fresh directory; returns (dir, file path).
fn served_file(name: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let p = write_file(dir.path(), name, data);
    (dir, p)
}

/// Fetches from a fake into a fresh directory (holding an older output `old`, if any), with
/// a short timeout; asserts the fake got a valid request, and the fetch failed with `code`
/// and left nothing new behind.
fn fetch_from_fake_fails(f: &Fake, old: Option<&[u8]>, code: i32, what: &str) -> Output {
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    if let Some(old) = old {
        std::fs::write(&out, old).unwrap();
    }
    let res = fetch(&f.target(), &out, &["--timeout", "5"]);
    f.assert_request_ok();
    assert_failed(&res, &[code], what);
    assert_nothing_left(dir.path(), &out, old, what);
    res
}

// ---------------------------------------------------------------------------------------
// 1. Every sample, plus empty / no trailing linefeed / 8 MiB random, byte-identical;
//    the server's banner names size, digest and a fetch command.
// ---------------------------------------------------------------------------------------

fn serve_and_check(path: &Path, data: &[u8]) {
    let server = Server::start(path, &[]);
    let lines = server.banner();
    let size = data.len().to_string();
    let digest = blake3::hash(data).to_hex().to_string();
    assert!(
        lines[1].split(|c: char| !c.is_ascii_digit()).any(|w| w == size),
        "line 2 should give the size {size}: {:?}",
        lines[1]
    );
    assert!(lines[1].contains(&digest), "line 2 should give the blake3 digest {digest}: {:?}", lines[1]);
    let port = server.addr.port().to_string();
    assert!(
        lines[2].contains("xfer fetch") && lines[2].contains(&port),
        "line 3 should be a fetch command naming port {port}: {:?}",
        lines[2]
    );

    let out_dir = tempdir();
    let out = out_dir.path().join("copy");
    let res = fetch(&server.target(), &out, &[]);
    assert_fetched(&out, &res, data);
    assert_eq!(dir_names(out_dir.path()), vec!["copy".to_string()], "temp file left behind");
    // The summary line is on stderr, never on stdout (stdout may carry the file).
    assert!(res.stdout.is_empty(), "fetch to a file printed on stdout:\n{}", describe(&res));
    let err = stderr_of(&res);
    assert!(
        err.contains(&format!("fetched {size} bytes")) && err.contains("verified blake3"),
        "summary line missing:\n{}",
        describe(&res)
    );
    assert!(error_lines(&res).is_empty(), "success printed an error line:\n{}", describe(&res));

    // --quiet: nothing at all on stdout or stderr; a second fetch replaces the first copy.
    std::fs::write(&out, b"previous copy").unwrap();
    let res = fetch(&server.target(), &out, &["--quiet"]);
    assert_fetched(&out, &res, data);
    assert!(res.stdout.is_empty() && res.stderr.is_empty(), "--quiet printed something:\n{}", describe(&res));
    assert_eq!(dir_names(out_dir.path()), vec!["copy".to_string()]);
}

#[test]
fn every_sample_and_edge_files_arrive_identical() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("input_file");
    let mut n = 0;
    for e in std::fs::read_dir(&samples).expect("input_file/") {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        serve_and_check(&p, &data);
        n += 1;
    }
    assert!(n > 0, "no samples in {}", samples.display());

    let dir = tempdir();
    let empty = write_file(dir.path(), "empty", b"");
    serve_and_check(&empty, b"");
    let nolf = b"the last line has no linefeed\nand here it ends";
    let p = write_file(dir.path(), "nolf.txt", nolf);
    serve_and_check(&p, nolf);
    let big = random_bytes((8 * MIB) as usize, 1);
    let p = write_file(dir.path(), "big.bin", &big);
    serve_and_check(&p, &big);
}

// ---------------------------------------------------------------------------------------
// 2. 50 concurrent fetches of 8 MiB.
// ---------------------------------------------------------------------------------------

#[test]
fn fifty_concurrent_fetches_are_identical_and_logged() {
    let data = Arc::new(random_bytes((8 * MIB) as usize, 2));
    let (_sd, path) = served_file("big.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let out_dir = tempdir();
    assert_concurrent_fetches(&server.target(), out_dir.path(), 50, &data);
    assert!(dir_names(out_dir.path()).is_empty(), "left behind: {:?}", dir_names(out_dir.path()));

    let pat = format!(" complete: {} bytes", data.len());
    let ok = server.wait_stderr(30, |s| count_lines(s, &pat) >= 50);
    let err = server.stderr();
    assert!(ok, "expected 50 `complete` lines, got {}:\n{err}", count_lines(&err, &pat));
    assert_eq!(count_lines(&err, "complete"), 50, "more than 50 `complete` lines:\n{err}");
    server.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 3. A client that never reads and one that resets mid-body do not disturb others.
// ---------------------------------------------------------------------------------------

#[test]
fn stalled_and_resetting_clients_do_not_disturb_others() {
    let data = random_bytes((8 * MIB) as usize, 3);
    let (_sd, path) = served_file("big.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let req = request(None);

    // Never reads.
    let sleeper = raw::stalled_client(server.addr, None);

    // Reads 64 KiB of the body, then resets.
    {
        let mut r = TcpStream::connect(server.addr).unwrap();
        r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        r.write_all(&req).unwrap();
        let mut head = vec![0u8; encoding::xfer::HEADER_LEN + 64 * 1024];
        r.read_exact(&mut head).expect("resetting client: read header and 64 KiB");
        assert_eq!(&head[..4], &encoding::xfer::RESPONSE_MAGIC);
        assert_eq!(&head[encoding::xfer::HEADER_LEN..], &data[..64 * 1024]);
        raw::reset(r);
    }

    let out_dir = tempdir();
    for i in 0..5 {
        let out = out_dir.path().join(format!("copy{i}"));
        let res = fetch(&server.target(), &out, &["--quiet", "--timeout", "10"]);
        assert_fetched(&out, &res, &data);
    }
    assert!(server.is_alive(), "server died; stderr:\n{}", server.stderr());
    drop(sleeper);

    // Every transfer logs one line: the settling probe, 5 complete, one each for the two
    // raw clients.
    let ok = server.wait_stderr(10, |s| transfer_lines(s).len() >= 8);
    let err = server.stderr();
    assert!(ok, "expected 8 transfer log lines (probe + 5 complete + 2 raw clients), got:\n{err}");
    assert_eq!(transfer_lines(&err).len(), 8, "stderr:\n{err}");
    assert_eq!(count_lines(&err, " complete: "), 5, "stderr:\n{err}");
    server.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// 4. The server dies mid-transfer.
// ---------------------------------------------------------------------------------------

fn kill_server_mid_transfer(path: &Path, size: u64, old: Option<&[u8]>) {
    let mut server = Server::start(path, &[]);
    // A slow link with a small window toward the server, so most of the file is still
    // unsent (on the server's side) when it dies.
    let proxy =
        Proxy::start(server.addr, Plan::slow_down(16 * 1024, Duration::from_millis(2)).server_rcvbuf(64 * 1024));
    let out_dir = tempdir();
    let out = out_dir.path().join("out.bin");
    if let Some(old) = old {
        std::fs::write(&out, old).unwrap();
    }
    let target = proxy.target();
    let out2 = out.clone();
    let fetcher = thread::spawn(move || fetch(&target, &out2, &["--timeout", "10"]));

    // Wait until the body is flowing and the temporary file is there.
    let temp_seen = || dir_names(out_dir.path()).iter().any(|n| is_temp_of(n, "out.bin"));
    let flowing = wait_until(Duration::from_secs(20), || temp_seen() && proxy.down_bytes() >= 2 * MIB);
    assert!(
        flowing,
        "transfer did not get going: {} bytes through the proxy, output directory {:?}",
        proxy.down_bytes(),
        dir_names(out_dir.path())
    );

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // What the dead server's kernel still holds arrives at full speed, then its end.
    proxy.unthrottle();

    let res = fetcher.join().expect("fetch thread");
    let fwd = proxy.down_bytes();
    assert!(fwd < size + encoding::xfer::HEADER_LEN as u64, "test design: the whole file got through before the kill");
    assert_failed(&res, &[3], "server killed mid-transfer");
    assert_nothing_left(out_dir.path(), &out, old, "server killed mid-transfer");
}

#[test]
fn server_killed_mid_transfer_leaves_nothing() {
    let size = 64 * MIB;
    let (_sd, path) = served_file("huge.bin", &random_bytes(size as usize, 4));
    kill_server_mid_transfer(&path, size, None);
    kill_server_mid_transfer(&path, size, Some(b"old contents"));
}

// ---------------------------------------------------------------------------------------
// 5. Fake servers that lie.
// ---------------------------------------------------------------------------------------

#[test]
fn fake_server_wrong_digest_is_rejected() {
    let body = random_bytes(300_000, 5);
    let mut wrong = digest(&body);
    wrong[7] ^= 0x20;
    let f = Fake::reply_then_drain([&encoding::xfer::encode_ok(body.len() as u64, &wrong)[..], &body].concat());
    fetch_from_fake_fails(&f, Some(b"old contents"), 4, "wrong digest");
}

#[test]
fn fake_server_short_body_is_network_error() {
    let body = random_bytes(200_000, 6);
    // A plain close (FIN) after half the body.
    let f = Fake::reply(
        [&encoding::xfer::encode_ok(body.len() as u64, &digest(&body))[..], &body[..100_000]].concat(),
        false,
    );
    fetch_from_fake_fails(&f, None, 3, "short body");
}

#[test]
fn fake_http_server_is_protocol_error() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
    let f = Fake::reply_then_drain([&head[..], &[b'x'; 5000]].concat());
    fetch_from_fake_fails(&f, None, 4, "HTTP answer");
}

#[test]
fn fake_refusal_is_shown_and_exits_6() {
    let mut buf = [0u8; encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON];
    let n = encoding::xfer::encode_refusal(Status::Busy, "go away", &mut buf);
    let f = Fake::reply_then_drain(buf[..n].to_vec());
    let res = fetch_from_fake_fails(&f, None, 6, "refusal");
    assert!(error_lines(&res)[0].contains("go away"), "reason not shown:\n{}", describe(&res));
}

#[test]
fn fake_silent_server_times_out() {
    // Holds the connection open, answering nothing, until the test is done.
    let f = Fake::reply(Vec::new(), true);
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let t0 = Instant::now();
    let res = fetch(&f.target(), &out, &["--timeout", "1"]);
    let took = t0.elapsed();
    f.assert_request_ok();
    assert_failed(&res, &[3], "silent server");
    assert!(took < Duration::from_secs(5), "--timeout 1 took {took:?}");
    assert_nothing_left(dir.path(), &out, None, "silent server");
}

#[test]
fn fake_huge_size_fails_cleanly() {
    // A plain close after a few bytes.
    let f = Fake::reply([&encoding::xfer::encode_ok(u64::MAX, &[0x5a; 32])[..], b"just a few bytes"].concat(), false);
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let t0 = Instant::now();
    let res = fetch(&f.target(), &out, &["--timeout", "5"]);
    f.assert_request_ok();
    assert_failed(&res, &[3], "size u64::MAX");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_nothing_left(dir.path(), &out, None, "size u64::MAX");
}

// ---------------------------------------------------------------------------------------
// 6. IPv6 loopback and `localhost`.
// ---------------------------------------------------------------------------------------

#[test]
fn ipv6_loopback_and_localhost() {
    let data = random_bytes(1_000_003, 7);
    let (_sd, path) = served_file("f.bin", &data);
    let out_dir = tempdir();

    // localhost against a server on 127.0.0.1 (whatever localhost resolves to first).
    {
        let server = Server::start(&path, &[]);
        let out = out_dir.path().join("via-localhost");
        let res = fetch(&format!("localhost:{}", server.addr.port()), &out, &["--quiet"]);
        assert_fetched(&out, &res, &data);
        // `--port` when the host has none.
        let out = out_dir.path().join("via-port-flag");
        let port = server.addr.port().to_string();
        let res = fetch("127.0.0.1", &out, &["--quiet", "--port", &port]);
        assert_fetched(&out, &res, &data);
    }

    if let Err(e) = TcpListener::bind("[::1]:0") {
        skipped("ipv6_loopback_and_localhost, its IPv6 part", &format!("cannot bind [::1]: {e}"));
        return;
    }
    let server = Server::start(&path, &["--listen", "::1"]);
    assert!(server.addr.is_ipv6() && server.addr.ip().is_loopback(), "listening on {}", server.addr);
    let port = server.addr.port();
    let out = out_dir.path().join("via-v6");
    let res = fetch(&format!("[::1]:{port}"), &out, &["--quiet"]);
    assert_fetched(&out, &res, &data);
    // A bare IPv6 literal takes its port from --port.
    let out = out_dir.path().join("via-v6-bare");
    let res = fetch("::1", &out, &["--quiet", "--port", &port.to_string()]);
    assert_fetched(&out, &res, &data);
}

// ---------------------------------------------------------------------------------------
// 7. Bad inputs for `serve`.
// ---------------------------------------------------------------------------------------

fn assert_serve_rejects(input: &Path, what: &str) {
    let t0 = Instant::now();
    let res = run_xfer(&["serve", input.to_str().unwrap(), "--listen", "127.0.0.1", "--port", "0"], 10);
    assert!(t0.elapsed() < Duration::from_secs(5), "{what}: took {:?}", t0.elapsed());
    assert_failed(&res, &[5], what);
    assert!(!stdout_of(&res).contains("listening on"), "{what}: printed `listening on`:\n{}", describe(&res));
}

#[test]
fn serve_rejects_missing_directory_and_fifo() {
    let dir = tempdir();
    assert_serve_rejects(&dir.path().join("no-such-file"), "missing input");
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    assert_serve_rejects(&sub, "directory as input");
    let fifo = dir.path().join("a-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    assert_serve_rejects(&fifo, "FIFO as input");
}

// ---------------------------------------------------------------------------------------
// 8. Output paths: a missing directory, a bare relative name (stdout: see `promises`).
// ---------------------------------------------------------------------------------------

#[test]
fn output_missing_dir_and_relative() {
    let data = random_bytes((3 * MIB + 17) as usize, 8);
    let (_sd, path) = served_file("f.bin", &data);
    let server = Server::start(&path, &[]);

    let dir = tempdir();
    let out = dir.path().join("missing").join("deeper").join("out.bin");
    let res = fetch(&server.target(), &out, &[]);
    assert_failed(&res, &[5], "missing output directory");
    assert!(dir_names(dir.path()).is_empty(), "fetch created something: {:?}", dir_names(dir.path()));

    // A bare file name, relative to the current directory.
    let mut cmd = Command::new(bin());
    cmd.args(["fetch", &server.target(), "plain.bin", "--quiet"]).current_dir(dir.path()).env_remove("XFER_TOKEN");
    let res = run_with_timeout(&mut cmd, 60);
    assert_fetched(&dir.path().join("plain.bin"), &res, &data);
    assert_eq!(dir_names(dir.path()), vec!["plain.bin".to_string()]);
}

// ---------------------------------------------------------------------------------------
// 9. --help and bad options.
// ---------------------------------------------------------------------------------------

fn help_text(o: &Output) -> String {
    format!("{}{}", stdout_of(o), stderr_of(o))
}

#[test]
fn help_and_usage_errors() {
    let top = run_xfer(&["--help"], 10);
    assert_eq!(top.status.code(), Some(0), "{}", describe(&top));
    let t = help_text(&top);
    assert!(t.contains("serve") && t.contains("fetch"), "top-level help:\n{t}");

    let serve = run_xfer(&["serve", "--help"], 10);
    assert_eq!(serve.status.code(), Some(0), "{}", describe(&serve));
    let t = help_text(&serve);
    for opt in [
        "--listen",
        "--port",
        "--quiet",
        "--max-clients",
        "--max-per-ip",
        "--allow",
        "--token",
        "--request-timeout",
        "--send-timeout",
        "--drain-timeout",
        "--threads",
    ] {
        assert!(t.contains(opt), "serve --help lacks {opt}:\n{t}");
    }

    let fetch = run_xfer(&["fetch", "--help"], 10);
    assert_eq!(fetch.status.code(), Some(0), "{}", describe(&fetch));
    let t = help_text(&fetch);
    for opt in ["--port", "--timeout", "--token", "--quiet"] {
        assert!(t.contains(opt), "fetch --help lacks {opt}:\n{t}");
    }

    let dir = tempdir();
    let f = write_file(dir.path(), "f", b"x");
    let fs = f.to_str().unwrap();
    let out = dir.path().join("o");
    let os = out.to_str().unwrap();
    for args in [
        vec!["--bogus"],
        vec!["frobnicate"],
        vec![],
        vec!["serve"],
        vec!["serve", fs, "--bogus"],
        vec!["serve", fs, "--port", "notaport"],
        vec!["serve", fs, "--port", "70000"],
        vec!["fetch"],
        vec!["fetch", "127.0.0.1:1", os, "--bogus"],
        vec!["fetch", "127.0.0.1:1", os, "--port", "99999"],
    ] {
        let res = run_xfer(&args, 10);
        assert_eq!(res.status.code(), Some(2), "xfer {args:?} should be a usage error\n{}", describe(&res));
        assert!(
            stderr_of(&res).lines().next().is_some_and(|l| l.starts_with("xfer:")),
            "xfer {args:?}: usage error should start with `xfer:`\n{}",
            describe(&res)
        );
        assert!(!out.exists() && !stdout_of(&res).contains("listening on"), "xfer {args:?} did something");
    }
}

// ---------------------------------------------------------------------------------------
// 10. Exit codes of the README table.
// ---------------------------------------------------------------------------------------

#[test]
fn exit_codes_network_and_refusal() {
    let dir = tempdir();
    let out = dir.path().join("out.bin");

    // Connection refused → 3.
    let port = closed_port();
    let res = fetch(&format!("127.0.0.1:{port}"), &out, &["--timeout", "5"]);
    assert_failed(&res, &[3], "connection refused");
    assert!(dir_names(dir.path()).is_empty());

    // Cannot bind (port taken) → 3, no `listening on`.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = taken.local_addr().unwrap().port().to_string();
    let f = write_file(dir.path(), "f.txt", b"hello\n");
    let res = run_xfer(&["serve", f.to_str().unwrap(), "--listen", "127.0.0.1", "--port", &tport], 10);
    assert_failed(&res, &[3], "port in use");
    assert!(!stdout_of(&res).contains("listening on"), "{}", describe(&res));
    drop(taken);

    // Token: missing or wrong → 6 with nothing written; right → 0.
    let data = b"secret payload\n";
    let (_sd, path) = served_file("s.txt", data);
    let server = Server::start(&path, &["--token", "sesame"]);
    let res = fetch(&server.target(), &out, &[]);
    assert_failed(&res, &[6], "no token");
    let res = run_with_timeout(fetch_command(&server.target(), &out, &[]).env("XFER_TOKEN", "wrong"), 60);
    assert_failed(&res, &[6], "wrong token");
    assert_eq!(dir_names(dir.path()), vec!["f.txt".to_string()]);
    let tokens = tempdir();
    let file = secret_file(tokens.path(), "token", b"sesame\n");
    let res = fetch(&server.target(), &out, &["--token-file", file.to_str().unwrap(), "--quiet"]);
    assert_fetched(&out, &res, data);
    let mut cmd = Command::new(bin());
    let out2 = dir.path().join("out2.bin");
    cmd.arg("fetch").arg(server.target()).arg(&out2).arg("--quiet").env("XFER_TOKEN", "sesame");
    let res = run_with_timeout(&mut cmd, 60);
    assert_fetched(&out2, &res, data);

    // A busy server (--max-clients 1, one client parked) refuses with 6.
    let big = random_bytes((8 * MIB) as usize, 9);
    let (_sd2, bpath) = served_file("b.bin", &big);
    let busy = Server::start(&bpath, &["--max-clients", "1"]);
    let parked = raw::stalled_client(busy.addr, None);
    let out3 = dir.path().join("out3.bin");
    let res = fetch(&busy.target(), &out3, &["--timeout", "5"]);
    assert_failed(&res, &[6], "busy");
    assert!(!out3.exists());
    drop(parked);
}

#[test]
fn fake_server_resetting_before_its_header_is_a_lost_connection_not_a_timeout() {
    let f = Fake::start(|s, _| crate::util::raw::reset(s));
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let res = fetch(&f.target(), &out, &["--timeout", "30"]);
    assert_failed(&res, &[3], "reset before the header");
    f.assert_request_ok();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!err.contains("timed out") && err.contains("reset"), "a reset must be told as one:\n{err}");
    assert_nothing_left(dir.path(), &out, None, "reset before the header");
}

#[test]
fn a_refused_connection_names_the_address_tried_with_its_port() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port)).map(Iterator::collect).unwrap_or_default();
    // One address: that address; several: the name, each with the port.
    let tried = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => format!("localhost:{port}"),
    };
    let (port_arg, with_port) = (port.to_string(), format!("localhost:{port}"));
    for (target, extra) in [("localhost", &["--port", port_arg.as_str()][..]), (with_port.as_str(), &[][..])] {
        let res = fetch(target, &out, extra);
        assert_failed(&res, &[3], "connection refused");
        let line = &error_lines(&res)[0];
        assert!(line.starts_with(&format!("xfer: fetch: cannot connect to {tried}: ")), "{target}: {line}");
    }
    assert_nothing_left(dir.path(), &out, None, "connection refused");
}

#[test]
fn a_server_closing_before_or_inside_its_header_says_which() {
    let dir = tempdir();
    let out = dir.path().join("out.bin");
    // Nothing at all, then the first 10 bytes of a header.
    let silent = Fake::reply_then_drain(Vec::new());
    let res = fetch(&silent.target(), &out, &[]);
    assert_failed(&res, &[3], "closed without answering");
    silent.assert_request_ok();
    let line = &error_lines(&res)[0];
    assert!(line.ends_with(" closed the connection without answering"), "{line}");
    let header = encoding::xfer::encode_ok(5, &[0; 32]);
    let short = Fake::reply_then_drain(header[..10].to_vec());
    let res = fetch(&short.target(), &out, &[]);
    assert_failed(&res, &[3], "closed inside the header");
    let line = &error_lines(&res)[0];
    assert!(line.ends_with(" closed the connection after 10 header bytes"), "{line}");
    assert_nothing_left(dir.path(), &out, None, "closed before the body");
}
