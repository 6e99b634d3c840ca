//! What the shared token promises (README, docs/PROTOCOL.md, RELIABILITY 38), shown against
//! the real binary by an attacker on the path or at the door: a recorded exchange replayed,
//! an impostor server, a proxy that rewrites the answer, a guesser, someone reading `ps` and
//! the logs, HTTP clients without the token, and a peer that tries an older protocol.
//!
//! Each test speaks the protocol by hand where the attack needs it (the keys come from the
//! library, `xfer::encoding::auth::Key`, as an attacker who knew the token would compute
//! them). Failed attempts are counted per address by the server, so checks that must be
//! judged on their own come from their own 127.x.y.z source address.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xfer::encoding::auth::{self, Key};
use xfer::encoding::xfer::{self as wire, Response, Status};

use crate::util::encoding::{Decoded, Digest};
use crate::util::raw::{self, ip};
use crate::util::*;

/// The token of the real server in these tests.
const TOKEN: &str = "correct-horse-battery-staple-7f3a9c";
/// A wrong guess, as distinctive, so that it can be looked for in the logs too.
const WRONG: &str = "incorrect-donkey-guess-41b2e8";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh 32-byte nonce.
fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("getrandom");
    n
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `xfer serve FILE --token-file DIR/token` (the token in a file only its owner reads).
fn token_server(dir: &Path, file: &Path, token: &str, extra: &[&str]) -> Server {
    let tf =
        secret_file(dir, &format!("token-{}", hex(&digest(token.as_bytes())[..4])), format!("{token}\n").as_bytes());
    let mut args = vec!["--token-file", tf.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(file, &args)
}

/// Reads exactly one response head (header, then a reason or a name and MAC) and returns
/// it with its bytes; never reads a body byte.
fn read_head(s: &mut TcpStream) -> io::Result<(Response, Vec<u8>)> {
    let mut buf = Vec::with_capacity(wire::MAX_RESPONSE_HEAD);
    // Header, then what follows it: three rounds at most.
    for _ in 0..4 {
        match wire::decode_response(&buf) {
            Ok(Decoded::Done(r, used)) => {
                assert_eq!(used, buf.len(), "read_head read past the head");
                return Ok((r, buf));
            }
            Ok(Decoded::NeedMore(n)) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                s.read_exact(&mut buf[start..])?;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {buf:02x?}"))),
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, format!("no head after {} bytes", buf.len())))
}

/// How an authenticated exchange spoken by hand ended.
#[derive(Debug)]
enum Exchange {
    /// The file was sent: the header, whether its MAC proves the server knows the token we
    /// used, and every byte after the head until the server closed.
    Served { size: u64, digest: Digest, name: Vec<u8>, mac_ok: bool, body: Vec<u8>, clean_end: bool },
    /// Refused after the proof: the status and reason, the head's exact bytes (to compare
    /// refusals), and whatever came after it (nothing, for a good server).
    Refused { status: Status, reason: String, head: Vec<u8>, after: Vec<u8> },
}

/// A native client with `token`, from `bind`: request with a fresh nonce, read the
/// challenge, send the proof, read the answer and everything after it.
fn authenticate(addr: SocketAddr, bind: Option<IpAddr>, token: &[u8]) -> Exchange {
    let mut s = raw::connect(addr, bind, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let client = nonce();
    s.write_all(&wire::encode_request(&wire::Request::authenticated(0, client))).expect("send request");
    let server = match read_head(&mut s) {
        Ok((Response::Challenge { nonce }, _)) => nonce,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let key = Key::native(token);
    let proof = key.client_proof(&client, &server, 0, wire::VERSION);
    s.write_all(&wire::encode_proof(&wire::Proof { offset: 0, proof })).expect("send proof");
    let (resp, head) = read_head(&mut s).unwrap_or_else(|e| panic!("reading the answer to a proof: {e}"));
    let rest = raw::read_until_closed(&mut s, Duration::from_secs(30));
    let clean_end = rest.closed_at.is_some() && !rest.reset;
    match resp {
        Response::Ok { size, digest, name, mac } => {
            let name = name.unwrap_or_default();
            let mac_ok =
                mac.is_some_and(|m| auth::same(&key.server_mac(&client, &server, &m.header, &name, 0), &m.mac));
            Exchange::Served { size, digest, name, mac_ok, body: rest.data, clean_end }
        }
        Response::Refused { status, reason, .. } => Exchange::Refused { status, reason, head, after: rest.data },
        Response::Challenge { .. } => panic!("a second challenge after the proof"),
    }
}

/// Asserts an exchange got exactly `data` (served as `in.bin`), announced truly and proven
/// by the server's MAC.
fn assert_served(e: &Exchange, data: &[u8], what: &str) {
    match e {
        Exchange::Served { size, digest: d, name, mac_ok, body, clean_end } => {
            assert!(*mac_ok, "{what}: the server's MAC does not verify");
            assert_eq!(String::from_utf8_lossy(name), "in.bin", "{what}: announced name");
            assert_eq!(*size, data.len() as u64, "{what}: announced size");
            assert!(*d == digest(data), "{what}: announced digest");
            assert!(*clean_end, "{what}: the body did not end with a clean close");
            assert!(body.as_slice() == data, "{what}: got {} body bytes, not the file's {}", body.len(), data.len());
        }
        other => panic!("{what}: expected the file, got {other:?}"),
    }
}

/// Asserts an exchange was refused for the token, with nothing after the refusal; returns
/// the refusal's bytes.
fn assert_refused(e: Exchange, what: &str) -> Vec<u8> {
    match e {
        Exchange::Refused { status, reason, head, after } => {
            assert_eq!(status, Status::BadToken, "{what}: status (reason {reason:?})");
            assert!(after.is_empty(), "{what}: {} bytes after the refusal", after.len());
            head
        }
        Exchange::Served { body, .. } => panic!("{what}: served {} bytes instead of being refused", body.len()),
    }
}

/// Asserts a fetch failed with `code`, one line on stderr, and left nothing in `dir`
/// (no output, no temporary or partial file).
fn assert_refused_fetch(r: &Output, code: i32, dir: &Path, what: &str) {
    assert_failed(r, &[code], what);
    assert_eq!(stderr_of(r).lines().count(), 1, "{what}: stderr is not one line ({})", describe(r));
    assert_eq!(dir_names(dir), Vec::<String>::new(), "{what}: left in the output directory ({})", describe(r));
}

/// A fresh empty directory `parent/name`.
fn empty_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    d
}

/// Accepts connections on `127.0.0.1:0` and hands each to `handler` on a thread of its
/// own (sockets blocking, with 30 s timeouts, so every handler ends by itself). Stops
/// accepting when dropped, and after two minutes in any case.
struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Acceptor {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let stopped = stop.clone();
        let accept = thread::spawn(move || {
            let born = Instant::now();
            while !stopped.load(Ordering::SeqCst) && born.elapsed() < Duration::from_secs(120) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                        let h = handler.clone();
                        thread::spawn(move || h(s));
                    }
                    // Nobody yet: look again shortly (the subject: a test's accept loop).
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Acceptor { addr, stop, accept: Some(accept) }
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Connects to the real server for a proxy, with the same timeouts as the client side.
fn upstream(target: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Copies `from` to `to` until EOF (passed on as a half-close) or an error, keeping a copy.
fn pump(mut from: TcpStream, mut to: TcpStream, tape: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A relay that records every byte each way: what an eavesdropper on the path keeps.
struct Recorder {
    acceptor: Acceptor,
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
}

impl Recorder {
    fn start(target: SocketAddr) -> Recorder {
        let (up, down, done) =
            (Arc::<Mutex<Vec<u8>>>::default(), Arc::<Mutex<Vec<u8>>>::default(), Arc::<AtomicBool>::default());
        let (u, d, fin) = (up.clone(), down.clone(), done.clone());
        let acceptor = Acceptor::start(move |client| {
            let Ok(server) = upstream(target) else { return };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
            let u = u.clone();
            let t = thread::spawn(move || pump(c2, s2, &u));
            pump(server, client, &d);
            let _ = t.join();
            fin.store(true, Ordering::SeqCst);
        });
        Recorder { acceptor, up, down, done }
    }
}

/// How a rewriting proxy changes the server's successful answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rewrite {
    /// Its own file instead: the header's size and digest made to match it (a MAC, if
    /// any, left as it was).
    Consistent,
    /// Its own file and a matching header, with the MAC removed (flag cleared).
    StripMac,
    /// The header untouched, the body replaced by other bytes of the same length.
    BodyOnly,
}

/// A man in the middle that relays the request (and a challenge and proof, if the client
/// asks to be challenged) untouched, then answers the client with `evil` as `mode` says.
/// Refusals are passed on as they are.
fn rewriting_proxy(target: SocketAddr, evil: Arc<Vec<u8>>, mode: Rewrite) -> Acceptor {
    Acceptor::start(move |mut client| {
        let _ = (|| -> io::Result<()> {
            let mut server = upstream(target)?;
            let mut req = [0u8; wire::REQUEST_LEN];
            client.read_exact(&mut req)?;
            server.write_all(&req)?;
            if req[5] & wire::FLAG_AUTH != 0 {
                let (_, challenge) = read_head(&mut server)?;
                client.write_all(&challenge)?;
                let mut proof = [0u8; wire::PROOF_LEN];
                client.read_exact(&mut proof)?;
                server.write_all(&proof)?;
            }
            let (resp, mut head) = read_head(&mut server)?;
            let Response::Ok { size, .. } = resp else {
                client.write_all(&head)?;
                return Ok(());
            };
            let body: Vec<u8> = match mode {
                Rewrite::BodyOnly => random_bytes(size as usize, 0xE71),
                Rewrite::Consistent | Rewrite::StripMac => {
                    head[8..16].copy_from_slice(&(evil.len() as u64).to_be_bytes());
                    head[16..48].copy_from_slice(&digest(&evil));
                    if mode == Rewrite::StripMac && head[7] == wire::RESPONSE_MAC {
                        head[7] = 0;
                        head.truncate(head.len() - wire::MAC_LEN);
                    }
                    evil.to_vec()
                }
            };
            // The server's own body is never read: the server sees its client go away.
            drop(server);
            client.write_all(&head)?;
            client.write_all(&body)?;
            client.shutdown(std::net::Shutdown::Write)?;
            let mut sink = Vec::new();
            client.read_to_end(&mut sink)?;
            Ok(())
        })();
    })
}

/// An HTTP answer: status, head (lines), body.
struct HttpReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl HttpReply {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// `GET TARGET HTTP/1.1` with `headers` and `Connection: close`, from `bind`; the whole
/// answer.
fn http_get(addr: SocketAddr, bind: Option<IpAddr>, target: &str, headers: &[String]) -> HttpReply {
    let mut s = raw::connect(addr, bind, None).expect("connect");
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send HTTP request");
    let got = raw::read_until_closed(&mut s, Duration::from_secs(30));
    assert!(got.closed_at.is_some(), "HTTP {target}: not closed within 30 s");
    let end = got
        .data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("HTTP {target}: no complete head in {:?}", String::from_utf8_lossy(&got.data)));
    let head = String::from_utf8_lossy(&got.data[..end]).into_owned();
    let status =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line of {head:?}"));
    HttpReply { status, head, body: got.data[end + 4..].to_vec() }
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `/PATH?expires=E&sig=S` signed with the links key of `token`, as the server signs.
fn signed(token: &str, path: &str, expires: u64) -> String {
    format!("{path}?expires={expires}&sig={}", hex(&Key::links(token.as_bytes()).sign_link(path.as_bytes(), expires)))
}

// ---------------------------------------------------------------------------------------
// 1. Replay
// ---------------------------------------------------------------------------------------

/// RELIABILITY 38: "A recorded authenticated exchange replayed → no file bytes." An
/// eavesdropper records a real fetch byte for byte; replaying the client's side, whole or
/// step by step, or the recorded proof after a fresh request, gets a fresh challenge and a
/// refusal, never a byte of the file.
#[test]
fn recorded_exchange_replayed_gets_no_file_bytes() {
    let dir = tempdir();
    let data = random_bytes(300_000, 0x5EC1);
    let path = write_file(dir.path(), "in.bin", &data);
    // A short request deadline: a replay that leaves the server waiting for a proof is
    // closed soon.
    let server = token_server(dir.path(), &path, TOKEN, &["--request-timeout", "3"]);
    let tf = secret_file(dir.path(), "client-token", format!("{TOKEN}\n").as_bytes());

    let rec = Recorder::start(server.addr);
    let out = dir.path().join("out.bin");
    let r = fetch(&rec.acceptor.target(), &out, &["--token-file", tf.to_str().unwrap()]);
    assert_fetched(&out, &r, &data);
    assert!(wait_until(Duration::from_secs(10), || rec.done.load(Ordering::SeqCst)), "the recorded relay did not end");
    let up = rec.up.lock().unwrap().clone();
    let down = rec.down.lock().unwrap().clone();

    // What was recorded: a request asking to be challenged, then a proof; nothing else,
    // and nothing that is the token or its digest.
    assert_eq!(up.len(), wire::REQUEST_LEN + wire::PROOF_LEN, "client → server bytes: {up:02x?}");
    let req = match wire::decode_request(&up[..wire::REQUEST_LEN]) {
        Ok(Decoded::Done(req, _)) => req,
        other => panic!("recorded request: {other:?}"),
    };
    let client_nonce = req.auth.expect("the recorded request asks to be challenged");
    assert!(req.token.is_none());
    assert!(matches!(wire::decode_proof(&up[wire::REQUEST_LEN..]), Ok(Decoded::Done(..))), "recorded proof");
    for secret in [TOKEN.as_bytes(), &digest(TOKEN.as_bytes())[..]] {
        assert!(!contains(&up, secret), "the token (or its digest) crossed the wire");
    }
    let recorded_nonce = match wire::decode_response(&down) {
        Ok(Decoded::Done(Response::Challenge { nonce }, _)) => nonce,
        other => panic!("recorded answer does not start with a challenge: {other:?}"),
    };
    assert!(down.len() > data.len(), "the recorded answer holds the file");
    let (recorded_request, recorded_proof) = up.split_at(wire::REQUEST_LEN);

    // The file's bytes must not appear in anything a replay gets: look for any 32-byte
    // piece of the file.
    let holds_file_bytes = |got: &[u8]| data.chunks(32).take(64).any(|c| contains(got, c));

    // (a) The client's whole recording in one write, as a naive replay sends it.
    let mut s = raw::connect(server.addr, Some(ip(127, 0, 0, 11)), None).unwrap();
    s.write_all(&up).unwrap();
    let got = raw::read_until_closed(&mut s, Duration::from_secs(15));
    assert!(got.closed_at.is_some(), "replay (whole): the server did not close within 15 s");
    assert!(got.data.len() < 400, "replay (whole): {} bytes came back", got.data.len());
    assert!(!holds_file_bytes(&got.data), "replay (whole): file bytes came back");
    match wire::decode_response(&got.data) {
        Ok(Decoded::Done(Response::Challenge { nonce }, n)) => {
            assert_ne!(nonce, recorded_nonce, "replay (whole): the server reused its nonce");
            // Then a refusal: the proof sent along with the request is heard (not left to
            // the request deadline) and refused; never a success header.
            let rest = &got.data[n..];
            match wire::decode_response(rest) {
                Ok(Decoded::Done(Response::Refused { status: Status::BadToken, .. }, m)) => {
                    assert_eq!(m, rest.len(), "replay (whole): bytes after the refusal")
                }
                other => panic!("replay (whole): after the challenge: {other:?}"),
            }
        }
        other => panic!("replay (whole): expected a fresh challenge first, got {other:?}"),
    }

    // (b) Step by step, as a replayer who waits for the challenge: the recorded request,
    // then the recorded proof, which was bound to the old nonce.
    let mut s = raw::connect(server.addr, Some(ip(127, 0, 0, 12)), None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(recorded_request).unwrap();
    match read_head(&mut s) {
        Ok((Response::Challenge { nonce }, _)) => assert_ne!(nonce, recorded_nonce, "replay (steps): nonce reused"),
        other => panic!("replay (steps): expected a challenge, got {other:?}"),
    }
    s.write_all(recorded_proof).unwrap();
    match read_head(&mut s) {
        Ok((Response::Refused { status: Status::BadToken, .. }, _)) => {}
        other => panic!("replay (steps): the recorded proof was not refused: {other:?}"),
    }
    let rest = raw::read_until_closed(&mut s, Duration::from_secs(10));
    assert!(
        rest.closed_at.is_some() && rest.data.is_empty(),
        "replay (steps): {} bytes after the refusal",
        rest.data.len()
    );

    // (c) A fresh request of our own (a new client nonce), then the recorded proof.
    let mut s = raw::connect(server.addr, Some(ip(127, 0, 0, 13)), None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mine = nonce();
    assert_ne!(mine, client_nonce);
    s.write_all(&wire::encode_request(&wire::Request::authenticated(0, mine))).unwrap();
    assert!(matches!(read_head(&mut s), Ok((Response::Challenge { .. }, _))), "replay (fresh request): no challenge");
    s.write_all(recorded_proof).unwrap();
    match read_head(&mut s) {
        Ok((Response::Refused { status: Status::BadToken, .. }, _)) => {}
        other => panic!("replay (fresh request): the recorded proof was not refused: {other:?}"),
    }
    let rest = raw::read_until_closed(&mut s, Duration::from_secs(10));
    assert!(rest.data.is_empty(), "replay (fresh request): {} bytes after the refusal", rest.data.len());

    // (d) The recorded proof alone, as if it were a request: not our protocol, no answer.
    let mut s = raw::connect(server.addr, Some(ip(127, 0, 0, 14)), None).unwrap();
    s.write_all(recorded_proof).unwrap();
    let got = raw::read_until_closed(&mut s, Duration::from_secs(15));
    assert!(got.closed_at.is_some() && got.data.is_empty(), "a proof without a request got {} bytes", got.data.len());

    // The real client, meanwhile, is still served.
    std::fs::remove_file(&out).unwrap();
    let r = fetch(&server.target(), &out, &["--token-file", tf.to_str().unwrap()]);
    assert_fetched(&out, &r, &data);
    let err = server.stderr();
    assert!(!err.contains("panicked"), "server panicked:\n{err}");
}

// ---------------------------------------------------------------------------------------
// 2. Impostor
// ---------------------------------------------------------------------------------------

/// With the token, fetch believes only a server that proves it knows the token. An
/// impostor serving another file, without a token (exit 4: it answers without a proof),
/// with another token (exit 6: it cannot check our proof and refuses), or one that answers
/// with a MAC of its own key (exit 4), gets nothing written: no output, no partial file.
/// Without a token, `--expect` with the real digest catches the impostor (exit 4) the same.
#[test]
fn impostor_server_is_caught_by_token_or_expect_and_nothing_is_written() {
    let dir = tempdir();
    let real = random_bytes(250_000, 0x1A1);
    let fake = random_bytes(180_000, 0x1A2);
    let real_path = write_file(dir.path(), "real.bin", &real);
    let fake_dir = empty_dir(dir.path(), "impostor");
    // Same name as the real file: nothing but the proof tells them apart.
    let fake_path = write_file(&fake_dir, "real.bin", &fake);
    let server = token_server(dir.path(), &real_path, TOKEN, &[]);
    let open_impostor = Server::start(&fake_path, &[]);
    let keyed_impostor = token_server(&fake_dir, &fake_path, "the-impostors-own-token", &[]);
    // An impostor that accepts any proof and answers with a MAC under its own key.
    let fake_arc = Arc::new(fake.clone());
    let lying_impostor = Acceptor::start(move |mut s| {
        let _ = (|| -> io::Result<()> {
            let mut req = [0u8; wire::REQUEST_LEN];
            s.read_exact(&mut req)?;
            let mut client = [0u8; 32];
            client.copy_from_slice(&req[16..48]);
            let server_nonce = nonce();
            s.write_all(&wire::encode_challenge(&server_nonce))?;
            let mut proof = [0u8; wire::PROOF_LEN];
            s.read_exact(&mut proof)?;
            let (size, d, name) = (fake_arc.len() as u64, digest(&fake_arc), b"real.bin");
            let header = wire::ok_header_v2(size, &d, name, true);
            let mac = Key::native(b"the-impostors-own-token").server_mac(&client, &server_nonce, &header, name, 0);
            let mut head = [0u8; wire::MAX_RESPONSE_HEAD];
            let n = wire::encode_ok_in(wire::VERSION, size, &d, name, Some(&mac), &mut head);
            s.write_all(&head[..n])?;
            s.write_all(&fake_arc)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut sink = Vec::new();
            s.read_to_end(&mut sink)?;
            Ok(())
        })();
    });
    let tf = secret_file(dir.path(), "client-token", format!("{TOKEN}\n").as_bytes());
    let with_token = ["--token-file", tf.to_str().unwrap()];

    for (i, (what, target, code)) in [
        ("impostor without a token", open_impostor.target(), 4),
        ("impostor with another token", keyed_impostor.target(), 6),
        ("impostor with a MAC of its own", lying_impostor.target(), 4),
    ]
    .into_iter()
    .enumerate()
    {
        // Into a named output, and into a directory (saved under the server's name).
        let outdir = empty_dir(dir.path(), &format!("out-{i}"));
        let r = fetch(&target, &outdir.join("copy.bin"), &with_token);
        assert_refused_fetch(&r, code, &outdir, what);
        assert!(stderr_of(&r).contains("token"), "{what}: the error does not say why: {}", stderr_of(&r));
        // The default mode keeps partial files for resuming: still nothing may stay.
        let mut cmd = fetch_default_command(&target, &outdir, &["--retry", "0"]);
        cmd.args(with_token);
        let r = run_with_timeout(&mut cmd, 60);
        assert_refused_fetch(&r, code, &outdir, &format!("{what} (into a directory, resumable)"));
    }
    let err = open_impostor.stderr();
    assert!(!err.contains(TOKEN), "the impostor saw the token:\n{err}");

    // --expect pins the real file with no token anywhere.
    let pin = format!("blake3:{}", hex(&digest(&real)));
    let outdir = empty_dir(dir.path(), "out-expect");
    let r = fetch(&open_impostor.target(), &outdir.join("copy.bin"), &["--expect", &pin]);
    assert_refused_fetch(&r, 4, &outdir, "--expect against an impostor");
    assert!(stderr_of(&r).contains("--expect"), "the error names the pin: {}", stderr_of(&r));
    let r = run_with_timeout(
        &mut fetch_default_command(&open_impostor.target(), &outdir, &["--retry", "0", "--expect", &pin]),
        60,
    );
    assert_refused_fetch(&r, 4, &outdir, "--expect against an impostor (into a directory, resumable)");

    // And the real server, with the same options, is believed.
    let out = outdir.join("copy.bin");
    let r = fetch(&server.target(), &out, &with_token);
    assert_fetched(&out, &r, &real);
    std::fs::remove_file(&out).unwrap();
    let mut args = with_token.to_vec();
    args.extend(["--expect", pin.as_str()]);
    let r = fetch(&server.target(), &out, &args);
    assert_fetched(&out, &r, &real);
    // The server's digest and the pin are the same check: said once, marked as pinned.
    let hex = pin.trim_start_matches("blake3:");
    let said = stderr_of(&r);
    assert!(said.contains(&format!("verified blake3 {hex} (--expect)")), "summary: {said}");
    assert_eq!(said.matches(hex).count(), 1, "the digest is said once: {said}");
}

// ---------------------------------------------------------------------------------------
// 3. A proxy that rewrites the answer
// ---------------------------------------------------------------------------------------

/// The documented limit: without a token and without `--expect`, the digest in the header
/// is only as trustworthy as the path. A proxy that replaces the file and rewrites size and
/// digest to match goes unnoticed: the fetch succeeds with the proxy's bytes.
#[test]
fn rewriting_proxy_is_undetectable_without_token_or_expect() {
    let dir = tempdir();
    let real = random_bytes(300_000, 0x3E1);
    let evil = Arc::new(random_bytes(123_457, 0x3E2));
    let path = write_file(dir.path(), "in.bin", &real);
    let server = Server::start(&path, &[]);
    let proxy = rewriting_proxy(server.addr, evil.clone(), Rewrite::Consistent);
    let out = dir.path().join("out.bin");
    let r = fetch(&proxy.target(), &out, &[]);
    // Not a wish: this is what happens, and why README says to use a token or --expect.
    assert_fetched(&out, &r, &evil);
}

/// With a token, the server's MAC covers size, digest, name and offset, and the digest
/// covers the body: a proxy that rewrites the header (MAC kept or stripped) or only the
/// body is caught, and nothing is written. With `--expect` and no token anywhere, the
/// consistent rewrite is caught too.
#[test]
fn rewriting_proxy_is_caught_by_token_or_expect() {
    let dir = tempdir();
    let real = random_bytes(300_000, 0x3E3);
    let evil = Arc::new(random_bytes(123_457, 0x3E4));
    let path = write_file(dir.path(), "in.bin", &real);
    let server = token_server(dir.path(), &path, TOKEN, &[]);
    let tf = secret_file(dir.path(), "client-token", format!("{TOKEN}\n").as_bytes());
    for mode in [Rewrite::Consistent, Rewrite::StripMac, Rewrite::BodyOnly] {
        let what = format!("token, proxy {mode:?}");
        let proxy = rewriting_proxy(server.addr, evil.clone(), mode);
        let outdir = empty_dir(dir.path(), &format!("out-{mode:?}"));
        let r = fetch(&proxy.target(), &outdir.join("out.bin"), &["--token-file", tf.to_str().unwrap()]);
        assert_refused_fetch(&r, 4, &outdir, &what);
        let mut cmd =
            fetch_default_command(&proxy.target(), &outdir, &["--retry", "0", "--token-file", tf.to_str().unwrap()]);
        let r = run_with_timeout(&mut cmd, 60);
        assert_refused_fetch(&r, 4, &outdir, &format!("{what} (into a directory, resumable)"));
    }
    // The real server through a clean path: served (so the proxies above were the cause).
    let out = dir.path().join("direct.bin");
    let r = fetch(&server.target(), &out, &["--token-file", tf.to_str().unwrap()]);
    assert_fetched(&out, &r, &real);

    // No token, but the user pinned the digest.
    let plain = Server::start(&path, &[]);
    let pin = format!("blake3:{}", hex(&digest(&real)));
    let proxy = rewriting_proxy(plain.addr, evil.clone(), Rewrite::Consistent);
    let outdir = empty_dir(dir.path(), "out-expect");
    let r = fetch(&proxy.target(), &outdir.join("out.bin"), &["--expect", &pin]);
    assert_refused_fetch(&r, 4, &outdir, "--expect, proxy Consistent");
    let r =
        run_with_timeout(&mut fetch_default_command(&proxy.target(), &outdir, &["--retry", "0", "--expect", &pin]), 60);
    assert_refused_fetch(&r, 4, &outdir, "--expect, proxy Consistent (into a directory, resumable)");
}

// ---------------------------------------------------------------------------------------
// 4. Throttling guesses
// ---------------------------------------------------------------------------------------

/// RELIABILITY 38: guessing from one address is throttled without slowing other addresses,
/// and a wrong token is refused the same way as any other failure. 127.0.0.1 makes 50 wrong
/// guesses: 3 are free, the 4th starts a 1 s penalty, and guesses during it are refused
/// unheard and not counted, so the burst costs a short penalty logged once (or a few times
/// if the burst outlasts a penalty), not 50 lines. During the penalty even the right token
/// from 127.0.0.1 is refused, byte for byte like a wrong one; 127.0.0.2 is served at once,
/// throughout; after the penalty, 127.0.0.1 with the right token is served again.
#[test]
fn guessing_is_throttled_per_address_without_slowing_others() {
    let dir = tempdir();
    let data = Arc::new(random_bytes(200_000, 0x7407));
    let path = write_file(dir.path(), "in.bin", &data);
    let server = token_server(dir.path(), &path, TOKEN, &[]);
    let addr = server.addr;
    let (guesser, other) = (ip(127, 0, 0, 1), ip(127, 0, 0, 2));
    let wrong = WRONG.as_bytes();
    let right = TOKEN.as_bytes();

    let mut refusals = Vec::new();
    for i in 0..3 {
        refusals.push(assert_refused(authenticate(addr, Some(guesser), wrong), &format!("free guess {i}")));
    }
    // The 4th failure starts the penalty: no sooner than now.
    let penalty_from = Instant::now();
    refusals.push(assert_refused(authenticate(addr, Some(guesser), wrong), "guess 3"));
    let during = authenticate(addr, Some(guesser), right);
    if penalty_from.elapsed() < Duration::from_millis(900) {
        // Surely within the first penalty (it lasts 1 s from after `penalty_from`).
        let head = assert_refused(during, "the right token during the penalty");
        assert_eq!(head, refusals[0], "a penalised right token is refused exactly as a wrong one (no oracle)");
    } else {
        skipped("right token during the penalty", "the machine took 0.9 s for two exchanges");
    }
    let t = Instant::now();
    assert_served(&authenticate(addr, Some(other), right), &data, "another address during the penalty");
    assert!(t.elapsed() < Duration::from_secs(5), "another address waited {:?}", t.elapsed());

    // The rest of the burst (50 guesses in all), with the other address served meanwhile.
    let d = data.clone();
    let bystander = thread::spawn(move || {
        for i in 0..5 {
            let t = Instant::now();
            let e = authenticate(addr, Some(other), TOKEN.as_bytes());
            assert_served(&e, &d, &format!("bystander {i}"));
            assert!(t.elapsed() < Duration::from_secs(5), "bystander {i} waited {:?}", t.elapsed());
        }
    });
    for i in 4..50 {
        let head = assert_refused(authenticate(addr, Some(guesser), wrong), &format!("guess {i}"));
        assert_eq!(head, refusals[0], "guess {i}: every refusal looks the same");
    }
    bystander.join().expect("the other address was not served promptly");

    // Penalised, the right token keeps being refused (and is not counted) until the
    // penalty ends; then it is served.
    let end = Instant::now() + Duration::from_secs(20);
    let served_at = loop {
        match authenticate(addr, Some(guesser), right) {
            e @ Exchange::Served { .. } => {
                assert_served(&e, &data, "the right token after the penalty");
                break Instant::now();
            }
            e => {
                assert_refused(e, "the right token while penalised");
            }
        }
        assert!(Instant::now() < end, "the right token still refused 20 s after 50 guesses:\n{}", server.stderr());
        // The subject: waiting out a penalty of about a second.
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        served_at.duration_since(penalty_from) >= Duration::from_millis(950),
        "served {:?} after the penalty began: the penalty did not hold",
        served_at.duration_since(penalty_from)
    );

    // The penalty is logged once per penalty: not once per guess.
    let err = server.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("failed token attempts")).collect();
    assert!(!lines.is_empty(), "no penalty was logged:\n{err}");
    assert!(lines.len() <= 4, "{} penalty lines for one burst:\n{}", lines.len(), lines.join("\n"));
    assert!(lines.iter().all(|l| l.starts_with("127.0.0.1:")), "penalty lines name another address:\n{err}");
    assert!(lines[0].contains(": 4 failed token attempts; refusing it for 1 s"), "first penalty: {}", lines[0]);
    for s in [TOKEN, WRONG] {
        assert!(!err.contains(s), "the log holds a token");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Secrets stay secret
// ---------------------------------------------------------------------------------------

/// Every form of `token` that must never be shown: itself, its BLAKE3 (what HTTP compares
/// and version 1 sent), and the keys derived from it (contexts as in src/encoding/auth.rs).
fn secret_forms(token: &str) -> Vec<(String, String)> {
    let t = token.as_bytes();
    vec![
        (format!("token {token}"), token.to_string()),
        ("BLAKE3(token)".into(), hex(&digest(t))),
        ("native key".into(), hex(&blake3::derive_key("xfer 2026-11-30 native protocol v2 challenge-response", t))),
        ("links key".into(), hex(&blake3::derive_key("xfer 2026-11-30 http signed links v1", t))),
    ]
}

/// Asserts none of `secrets` appears in any of `texts` (named pieces of output).
fn assert_nothing_shows(texts: &[(String, String)], secrets: &[(String, String)]) {
    for (where_, text) in texts {
        for (what, s) in secrets {
            assert!(!text.contains(s.as_str()), "{what} appears in {where_}:\n{text}");
        }
    }
}

/// `/proc/PID/cmdline`, NULs as spaces.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!raw.is_empty(), "no cmdline for {pid}");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Everything a process printed, for the search.
fn outputs(what: &str, o: &Output) -> [(String, String); 2] {
    [(format!("{what} stdout"), stdout_of(o)), (format!("{what} stderr"), stderr_of(o))]
}

/// The server-side and client-side traces of a token: never in `ps` (with --token-file or
/// XFER_TOKEN), never in any output of server or client, successful or failed, native or
/// HTTP, right or wrong; a generated token is printed once, after the banner, and never
/// again; signed links' query strings and Authorization headers are never logged.
#[test]
fn secrets_never_show_in_ps_or_in_any_output() {
    let dir = tempdir();
    let data = random_bytes(100_000, 0x5EC5);
    let path = write_file(dir.path(), "in.bin", &data);
    let tf = secret_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes());
    let wrong_tf = secret_file(dir.path(), "wrong", format!("{WRONG}\n").as_bytes());
    let mut texts: Vec<(String, String)> = Vec::new();
    let out = dir.path().join("out.bin");

    // Server 1: --token-file, with signed links.
    let mut s1 = Server::start(&path, &["--token-file", tf.to_str().unwrap(), "--link-ttl", "600"]);
    // Server 2: XFER_TOKEN in its environment.
    let mut s2 = Server::spawn(serve_command(&path, &[]).env("XFER_TOKEN", TOKEN));
    for (what, s) in [("serve --token-file", &s1), ("serve with XFER_TOKEN", &s2)] {
        let c = cmdline(s.pid());
        assert!(c.contains("serve"), "{what}: cmdline {c:?}");
        assert!(!c.contains(TOKEN), "{what}: the token is in ps: {c:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || s1
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("signed link to its page"))),
        "no signed links printed: {:?}",
        s1.stdout_lines()
    );

    // Clients that succeed, on both servers: native with --token-file and XFER_TOKEN,
    // HTTP with --token-file, HTTP by hand with a Bearer and with the signed link.
    let file_link = s1
        .stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("signed link to the file, ").map(str::to_string))
        .expect("signed link line");
    let url = file_link.split_once(": ").expect("link after the colon").1.to_string();
    let link_target = format!("/{}", url.splitn(4, '/').nth(3).expect("path in the link"));
    let sig = link_target.split("sig=").nth(1).expect("sig in the link").to_string();
    for (i, s) in [&s1, &s2].into_iter().enumerate() {
        let r = fetch(&s.target(), &out, &["--token-file", tf.to_str().unwrap()]);
        assert_fetched(&out, &r, &data);
        texts.extend(outputs(&format!("fetch --token-file (server {i})"), &r));
        let r = run_with_timeout(fetch_command(&s.target(), &out, &[]).env("XFER_TOKEN", TOKEN), 60);
        assert_fetched(&out, &r, &data);
        texts.extend(outputs(&format!("fetch with XFER_TOKEN (server {i})"), &r));
        let http = format!("http://{}/in.bin", s.target());
        let r = fetch(&http, &out, &["--token-file", tf.to_str().unwrap()]);
        assert_fetched(&out, &r, &data);
        texts.extend(outputs(&format!("fetch over HTTP (server {i})"), &r));
        let h = http_get(s.addr, None, "/in.bin", &bearer(TOKEN));
        assert_eq!((h.status, h.body == data), (200, true), "Bearer (server {i})");
    }
    let h = http_get(s1.addr, None, &link_target, &[]);
    assert_eq!((h.status, h.body == data), (200, true), "signed link");

    // Clients that fail, each from its own address where it can choose one: wrong tokens
    // natively and over HTTP, a tampered link.
    for (i, s) in [&s1, &s2].into_iter().enumerate() {
        let r = fetch(&s.target(), &out, &["--token-file", wrong_tf.to_str().unwrap()]);
        assert_failed(&r, &[6], "wrong token");
        texts.extend(outputs(&format!("fetch, wrong token (server {i})"), &r));
        let r = run_with_timeout(fetch_command(&s.target(), &out, &[]).env("XFER_TOKEN", WRONG), 60);
        assert_failed(&r, &[6], "wrong XFER_TOKEN");
        texts.extend(outputs(&format!("fetch, wrong XFER_TOKEN (server {i})"), &r));
        let r = fetch(&format!("http://{}/in.bin", s.target()), &out, &["--token-file", wrong_tf.to_str().unwrap()]);
        assert_failed(&r, &[6], "wrong token over HTTP");
        texts.extend(outputs(&format!("fetch over HTTP, wrong token (server {i})"), &r));
        let h = http_get(s.addr, Some(ip(127, 0, 0, 51)), "/in.bin", &bearer(WRONG));
        assert_eq!(h.status, 401, "wrong Bearer (server {i})");
        assert!(!String::from_utf8_lossy(&h.body).contains(WRONG), "the 401 echoes the token");
    }
    let tampered = link_target.replace(&sig, &format!("{}{}", if sig.starts_with('0') { '1' } else { '0' }, &sig[1..]));
    assert_eq!(http_get(s1.addr, Some(ip(127, 0, 0, 52)), &tampered, &[]).status, 403, "tampered link");
    let expired = signed(TOKEN, "/in.bin", now_secs() - 60);
    assert_eq!(http_get(s1.addr, Some(ip(127, 0, 0, 53)), &expired, &[]).status, 410, "expired link");
    // Paths the server does not know are logged as asked: without their query.
    let elsewhere = format!("/elsewhere?{}", link_target.split_once('?').unwrap().1);
    assert_eq!(http_get(s1.addr, Some(ip(127, 0, 0, 54)), &elsewhere, &[]).status, 403, "a link moved elsewhere");
    let in_query = format!("/elsewhere?token={TOKEN}");
    assert_eq!(http_get(s1.addr, Some(ip(127, 0, 0, 55)), &in_query, &[]).status, 401, "the token in a query");

    // While a fetch waits on a server that never answers, its command line is in `ps`.
    for (what, env, args) in [
        ("fetch --token-file", None, vec!["--token-file", tf.to_str().unwrap()]),
        ("fetch with XFER_TOKEN", Some(TOKEN), vec![]),
    ] {
        let fake = crate::util::fake::Fake::reply(Vec::new(), true);
        let mut cmd = fetch_command(&fake.target(), &out, &args);
        if let Some(t) = env {
            cmd.env("XFER_TOKEN", t);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn fetch");
        fake.assert_request_ok();
        let c = cmdline(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(c.contains("fetch"), "{what}: cmdline {c:?}");
        assert!(!c.contains(TOKEN), "{what}: the token is in ps: {c:?}");
    }

    // Server 3: a generated token, printed once, after the banner; then used.
    let mut s3 = Server::start(&path, &["--token", "generate"]);
    let prefix = "token (shown only now; keep it in a file for --token-file): ";
    assert!(
        wait_until(Duration::from_secs(10), || s3.stdout_lines().iter().any(|l| l.starts_with(prefix))),
        "no generated token printed: {:?}",
        s3.stdout_lines()
    );
    let generated = s3.stdout_lines().iter().find_map(|l| l.strip_prefix(prefix).map(str::to_string)).unwrap();
    assert_eq!(generated.len(), 64, "a 256-bit token in hex: {generated:?}");
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!cmdline(s3.pid()).contains(&generated), "the generated token is in ps");
    let gen_tf = secret_file(dir.path(), "generated", format!("{generated}\n").as_bytes());
    let r = fetch(&s3.target(), &out, &["--token-file", gen_tf.to_str().unwrap()]);
    assert_fetched(&out, &r, &data);
    texts.extend(outputs("fetch with the generated token", &r));
    let r = fetch(&s3.target(), &out, &["--token-file", wrong_tf.to_str().unwrap()]);
    assert_failed(&r, &[6], "wrong token (generated server)");
    texts.extend(outputs("fetch, wrong token (generated server)", &r));
    let h = http_get(s3.addr, None, "/in.bin", &bearer(&generated));
    assert_eq!((h.status, h.body == data), (200, true), "Bearer with the generated token");

    // Server 4: --token VALUE warns that ps shows it, without repeating it.
    let mut s4 = Server::start(&path, &["--token", TOKEN]);
    assert!(s4.wait_stderr(10, |e| e.contains("visible to other users")), "no warning for --token:\n{}", s4.stderr());

    // Every server's log is complete once it has exited.
    for (what, s) in [("server 1", &mut s1), ("server 2", &mut s2), ("server 3", &mut s3), ("server 4", &mut s4)] {
        s.signal(libc::SIGTERM);
        s.assert_exits(0, 30.0, what);
        texts.push((format!("{what} stderr"), s.stderr()));
    }
    let stdout = |s: &Server| s.stdout_lines().join("\n");
    // Server stdout: the banner (and the signed links asked for); no token there.
    for (what, s) in [("server 1", &s1), ("server 2", &s2), ("server 4", &s4)] {
        texts.push((format!("{what} stdout"), stdout(s)));
    }
    // The generated token's one appearance is its own line; the rest of stdout is clean.
    let s3_out = s3.stdout_lines();
    let shown: Vec<&String> = s3_out.iter().filter(|l| l.contains(&generated)).collect();
    assert_eq!(shown.len(), 1, "the generated token shown {} times on stdout: {s3_out:?}", shown.len());
    assert!(shown[0].starts_with(prefix), "the generated token shown outside its line: {s3_out:?}");
    let banner_end = s3_out.iter().position(|l| l.starts_with("or over HTTP")).expect("the banner's HTTP line");
    assert!(
        s3_out.iter().skip(banner_end + 1).any(|l| l.starts_with(prefix)),
        "the token line comes after the banner: {s3_out:?}"
    );
    texts.push((
        "server 3 stdout without the token line".into(),
        s3_out.iter().filter(|l| !l.starts_with(prefix)).cloned().collect::<Vec<_>>().join("\n"),
    ));

    let mut secrets = secret_forms(TOKEN);
    secrets.extend(secret_forms(WRONG));
    secrets.extend(secret_forms(&generated));
    assert_nothing_shows(&texts, &secrets);

    // HTTP log lines never carry a query string or a credential.
    let logs: Vec<&(String, String)> =
        texts.iter().filter(|(w, _)| w.starts_with("server") && w.ends_with("stderr")).collect();
    for (what, log) in logs {
        for needle in ["sig=", "expires=", sig.as_str(), "Bearer", "Authorization"] {
            assert!(!log.contains(needle), "{what} logs {needle:?}:\n{log}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. HTTP
// ---------------------------------------------------------------------------------------

/// HTTP on a server with a token (README: "a token required → 401"): no credentials,
/// a wrong Bearer, Basic in any form, or the token's digest as a Bearer → 401 with
/// `WWW-Authenticate: Bearer`; the right Bearer → 200 and the exact bytes; the printed
/// signed link → 200 without credentials; a tampered signature, path or expiry → 403; an
/// expired link signed with the real key → 410. Each failure from its own address, so
/// that none is answered by a penalty instead of its own check.
#[test]
fn http_requires_bearer_or_valid_signed_link() {
    let dir = tempdir();
    let data = random_bytes(77_777, 0x4774);
    let path = write_file(dir.path(), "in.bin", &data);
    let server = token_server(dir.path(), &path, TOKEN, &["--link-ttl", "300"]);
    let addr = server.addr;
    assert!(
        wait_until(Duration::from_secs(10), || server
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("signed link to its page"))),
        "no signed links printed: {:?}",
        server.stdout_lines()
    );
    let lines = server.stdout_lines();
    let link = |prefix: &str| -> String {
        let l = lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"));
        let url = l.rsplit_once(' ').unwrap().1;
        let rest = url.strip_prefix(&format!("http://{addr}")).unwrap_or_else(|| panic!("link not to {addr}: {url}"));
        rest.to_string()
    };
    let file_link = link("signed link to the file");
    let page_link = link("signed link to its page");
    assert!(file_link.starts_with("/in.bin?expires=") && file_link.contains("&sig="), "{file_link}");

    let mut next = 20u8;
    let mut fresh = || {
        next += 1;
        Some(ip(127, 0, 0, next))
    };
    // Refused for the token: 401, a Bearer challenge, and not the file.
    let mut refused = |what: &str, target: &str, headers: Vec<String>| {
        let h = http_get(addr, fresh(), target, &headers);
        assert_eq!(h.status, 401, "{what}:\n{}", h.head);
        let challenge =
            h.header("WWW-Authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate:\n{}", h.head));
        assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate {challenge:?}");
        assert!(h.body.len() < 1000 && !contains(&h.body, &data[..64]), "{what}: body of {} bytes", h.body.len());
    };
    refused("no credentials", "/in.bin", vec![]);
    refused("no credentials, landing page", "/", vec![]);
    refused("wrong Bearer", "/in.bin", bearer(WRONG));
    refused("empty Bearer", "/in.bin", vec!["Authorization: Bearer ".into()]);
    refused("the token's BLAKE3 as a Bearer", "/in.bin", bearer(&hex(&digest(TOKEN.as_bytes()))));
    let basic = xfer::encoding::http::base64(format!("user:{TOKEN}").as_bytes());
    refused("Basic user:token", "/in.bin", vec![format!("Authorization: Basic {basic}")]);
    refused("Basic token", "/in.bin", vec![format!("Authorization: Basic {TOKEN}")]);
    refused("the token without a scheme", "/in.bin", vec![format!("Authorization: {TOKEN}")]);
    refused("the token in a query", &format!("/in.bin?token={TOKEN}"), vec![]);

    // The right Bearer, the signed links: served.
    for (what, target, headers) in [
        ("Bearer", "/in.bin".to_string(), bearer(TOKEN)),
        ("bearer (scheme in lower case)", "/in.bin".to_string(), vec![format!("Authorization: bearer {TOKEN}")]),
        ("signed link", file_link.clone(), vec![]),
    ] {
        let h = http_get(addr, None, &target, &headers);
        assert_eq!(h.status, 200, "{what}:\n{}", h.head);
        assert!(h.body == data, "{what}: {} bytes, not the file's {}", h.body.len(), data.len());
    }
    let page = http_get(addr, None, &page_link, &[]);
    assert_eq!(page.status, 200, "signed page link:\n{}", page.head);

    // Signed links altered: 403.
    let (path_part, query) = file_link.split_once('?').unwrap();
    let sig = query.split("sig=").nth(1).unwrap();
    let expires: u64 = query.split("expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let flipped = format!("{}{}", if sig.starts_with('0') { '1' } else { '0' }, &sig[1..]);
    for (what, target) in [
        ("tampered signature", format!("{path_part}?expires={expires}&sig={flipped}")),
        ("signature cut short", format!("{path_part}?expires={expires}&sig={}", &sig[..30])),
        ("tampered expiry", format!("{path_part}?expires={}&sig={sig}", expires + 3600)),
        ("tampered path (checksum file)", format!("/in.bin.b3?{query}")),
        ("tampered path (the page's link on the file)", format!("/in.bin?{}", page_link.split_once('?').unwrap().1)),
        ("signed with another token", signed(WRONG, "/in.bin", expires)),
        ("no expiry", format!("{path_part}?sig={sig}")),
    ] {
        let h = http_get(addr, fresh(), &target, &[]);
        assert_eq!(h.status, 403, "{what} ({target}):\n{}", h.head);
        assert!(h.body.len() < 1000, "{what}: body of {} bytes", h.body.len());
    }
    // Signed with the real key, but past its time: 410.
    let h = http_get(addr, fresh(), &signed(TOKEN, "/in.bin", now_secs() - 5), &[]);
    assert_eq!(h.status, 410, "expired link:\n{}", h.head);
    assert!(h.body.len() < 1000, "expired link: body of {} bytes", h.body.len());

    // fetch over HTTP sends the token as a Bearer; without it, 401 is exit 6.
    let tf = secret_file(dir.path(), "client-token", format!("{TOKEN}\n").as_bytes());
    let outdir = empty_dir(dir.path(), "out");
    let out = outdir.join("out.bin");
    let url = format!("http://{addr}/in.bin");
    let r = fetch(&url, &out, &[]);
    assert_refused_fetch(&r, 6, &outdir, "HTTP fetch without a token");
    let r = fetch(&url, &out, &["--token-file", tf.to_str().unwrap()]);
    assert_fetched(&out, &r, &data);
}

// ---------------------------------------------------------------------------------------
// 7. Version negotiation
// ---------------------------------------------------------------------------------------

/// Sends `req` from `bind` and reads the one answer; asserts nothing follows it.
fn one_answer(addr: SocketAddr, bind: IpAddr, req: &[u8]) -> (Response, Vec<u8>) {
    let mut s = raw::connect(addr, Some(bind), None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).expect("send");
    let (r, head) = read_head(&mut s).unwrap_or_else(|e| panic!("reading the answer: {e}"));
    let rest = raw::read_until_closed(&mut s, Duration::from_secs(10));
    assert!(rest.closed_at.is_some() && rest.data.is_empty(), "{} bytes after {r:?}", rest.data.len());
    (r, head)
}

/// No way around the challenge: a server with a token refuses version 1's token digest
/// (even the right one: it is replayable) and a version 2 request that does not ask to be
/// challenged, each in the client's own version with a reason; fetch with a token refuses
/// a server that answers without proving the token (exit 4), and never falls back to
/// version 1 with a token, not even when the server says it speaks only version 1.
#[test]
fn version_negotiation_never_weakens_the_token() {
    let dir = tempdir();
    let data = random_bytes(64_000, 0x7E57);
    let path = write_file(dir.path(), "in.bin", &data);
    let server = token_server(dir.path(), &path, TOKEN, &[]);
    let v2_plain = wire::encode_request(&wire::Request::new(0));
    for (what, req, version, from) in [
        ("version 1 with the right token's digest", raw::request(Some(TOKEN)), wire::V1, 31),
        ("version 1 without a token", raw::request(None), wire::V1, 32),
        ("version 2 without asking to be challenged", v2_plain, wire::VERSION, 33),
    ] {
        let (r, head) = one_answer(server.addr, ip(127, 0, 0, from), &req);
        match r {
            Response::Refused { status: Status::BadToken, reason, .. } => {
                assert!(reason.contains("token"), "{what}: reason {reason:?}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(head[4], version, "{what}: answered in version {}", head[4]);
    }
    // A version 1 request that claims the challenge flag is malformed, not challenged.
    let mut v1_auth = wire::encode_request(&wire::Request::authenticated(0, nonce()));
    v1_auth[4] = wire::V1;
    let (r, _) = one_answer(server.addr, ip(127, 0, 0, 34), &v1_auth);
    assert!(matches!(r, Response::Refused { status: Status::BadRequest, .. }), "version 1 with FLAG_AUTH: {r:?}");

    let tf = secret_file(dir.path(), "client-token", format!("{TOKEN}\n").as_bytes());
    let with_token = ["--token-file", tf.to_str().unwrap()];
    // The same file from a server without a token: still not believed.
    let plain = Server::start(&path, &[]);
    let outdir = empty_dir(dir.path(), "out");
    let r = fetch(&plain.target(), &outdir.join("out.bin"), &with_token);
    assert_refused_fetch(&r, 4, &outdir, "a token against a server without one");
    assert!(stderr_of(&r).contains("token"), "the error says why: {}", stderr_of(&r));

    // A server that speaks only version 1: every request is answered "unsupported version"
    // in version 1, and recorded.
    let seen: Arc<Mutex<Vec<[u8; wire::REQUEST_LEN]>>> = Arc::default();
    let log = seen.clone();
    let old = Acceptor::start(move |mut s| {
        let mut req = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        log.lock().unwrap().push(req);
        let mut buf = [0u8; wire::MAX_RESPONSE_HEAD];
        let n = wire::encode_refusal(Status::UnsupportedVersion, "unsupported protocol version", &mut buf);
        let _ = s.write_all(&buf[..n]);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    // Without a token the client asks again in version 1 (so this fake does see a fallback).
    let r = fetch(&old.target(), &outdir.join("out.bin"), &[]);
    assert_refused_fetch(&r, 6, &outdir, "no token, version 1 server");
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.iter().map(|r| r[4]).collect::<Vec<_>>(), vec![wire::VERSION, wire::V1], "without a token");
    seen.lock().unwrap().clear();
    // With a token: one request, version 2, asking to be challenged; no second try.
    let r = fetch(&old.target(), &outdir.join("out.bin"), &with_token);
    assert_refused_fetch(&r, 4, &outdir, "a token against a version 1 server");
    assert!(stderr_of(&r).contains("version 1"), "the error says why: {}", stderr_of(&r));
    // Each request is recorded before it is answered, and fetch has exited: every
    // connection it made is in the list.
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "with a token: {} requests", reqs.len());
    assert_eq!((reqs[0][4], reqs[0][5]), (wire::VERSION, wire::FLAG_AUTH), "with a token: {:02x?}", reqs[0]);
    assert!(reqs[0][16..] != digest(TOKEN.as_bytes()), "the token's digest was sent");

    // The right client is still served by the token server.
    let r = fetch(&server.target(), &outdir.join("out.bin"), &with_token);
    assert_fetched(&outdir.join("out.bin"), &r, &data);
}
