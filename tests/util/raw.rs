//! Raw protocol clients: they speak the wire format directly, with control over what
//! `xfer fetch` keeps to itself — the source address, the receive buffer, the reading pace,
//! a reset instead of a close, junk after the request, never reading at all.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::encoding::xfer::{Response, Status};
use super::encoding::{self, Decoded, Digest};
use super::{MIB, digest};

/// `a.b.c.d` as an address (several loopback sources stand in for several hosts).
pub fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Connects to `addr`, optionally from source address `bind` and with `SO_RCVBUF` set
/// before the handshake (so the advertised window really is small).
pub fn connect(addr: SocketAddr, bind: Option<IpAddr>, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(ip) = bind {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    Ok(sock.into())
}

/// The local port of a connection (to find its line in the server's log).
pub fn port(s: &TcpStream) -> u16 {
    s.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Closes a socket with an RST instead of a FIN (`SO_LINGER` 0).
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A protocol request in version 1, as older clients send (offset 0, optional token
/// digest): the server must keep answering those exactly as it always has.
pub fn request(token: Option<&str>) -> [u8; encoding::xfer::REQUEST_LEN] {
    encoding::xfer::encode_request(&encoding::xfer::Request::v1(
        0,
        token.map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
    ))
}

/// The whole response a good server gives for `data`: header, then the bytes.
pub fn expected_response(data: &[u8]) -> Vec<u8> {
    let mut v = encoding::xfer::encode_ok(data.len() as u64, &digest(data)).to_vec();
    v.extend_from_slice(data);
    v
}

/// Reads exactly one response header (and a refusal's reason), never a body byte.
pub fn read_response(s: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON);
    // A header and a reason take at most three rounds (header, reason length, reason).
    for _ in 0..4 {
        match encoding::xfer::decode_response(&buf) {
            Ok(Decoded::Done(r, _)) => return Ok(r),
            Ok(Decoded::NeedMore(n)) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                s.read_exact(&mut buf[start..])?;
            }
            Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, format!("{e}: {buf:02x?}"))),
        }
    }
    Err(io::Error::new(ErrorKind::InvalidData, format!("no response after {} bytes", buf.len())))
}

/// Connects (from `bind`, with `rcvbuf`), sends a request, and reads the response header.
pub fn request_header(addr: SocketAddr, bind: Option<IpAddr>, rcvbuf: Option<usize>) -> (TcpStream, Response) {
    let mut s = connect(addr, bind, rcvbuf).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(None)).expect("send request");
    let r = read_response(&mut s).unwrap_or_else(|e| panic!("reading the response header: {e}"));
    (s, r)
}

/// A client that is served (its header read) and then never reads again: with a 4 KiB
/// receive buffer, the server is stuck writing its body.
pub fn stalled_client(addr: SocketAddr, bind: Option<IpAddr>) -> TcpStream {
    match request_header(addr, bind, Some(4096)) {
        (s, Response::Ok { .. }) => s,
        (_, other) => panic!("stalled client was not served: {other:?}"),
    }
}

/// Sends `req` from `bind` and expects a refusal; returns its status and reason.
pub fn expect_refusal(addr: SocketAddr, bind: Option<IpAddr>, req: &[u8]) -> (Status, String) {
    let mut s = connect(addr, bind, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req);
    match read_response(&mut s) {
        Ok(Response::Refused { status, reason, .. }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Connects, sends `req`, and reads the whole response (header included) until the server
/// closes; 30 s at most.
pub fn raw_fetch(addr: SocketAddr, req: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(req)?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// How a raw client reads the body.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Bytes per `read` call.
    pub read: usize,
    /// Bytes per burst; 0 means no pauses.
    pub burst: usize,
    /// Pause after each burst.
    pub pause: Duration,
}

impl Pace {
    pub fn fast() -> Pace {
        Pace { read: 256 * 1024, burst: 0, pause: Duration::ZERO }
    }
    pub fn bursts(read: usize, burst: usize, pause: Duration) -> Pace {
        Pace { read, burst, pause }
    }
}

/// What a raw client got after the header.
#[derive(Debug)]
pub struct Drained {
    pub bytes: u64,
    pub digest: Digest,
    /// The body, if it was kept.
    pub data: Vec<u8>,
    /// How the stream ended: `None` for a clean EOF.
    pub err: Option<io::Error>,
}

impl Drained {
    /// Whether this is exactly the file of `size` bytes with `digest`, ended by a clean EOF.
    pub fn is_exact(&self, size: u64, digest: &Digest) -> bool {
        self.err.is_none() && self.bytes == size && &self.digest == digest
    }
}

/// Reads until EOF (or error) at `pace`, hashing; `progress` follows the byte count;
/// `keep` keeps the bytes (for small files).
pub fn drain(s: &mut TcpStream, pace: Pace, progress: Option<&AtomicU64>, keep: bool) -> Drained {
    drain_with(s, pace, progress, keep, |_, _| {})
}

/// As `drain`, calling `each(offset, chunk)` for every chunk read.
pub fn drain_with(
    s: &mut TcpStream,
    pace: Pace,
    progress: Option<&AtomicU64>,
    keep: bool,
    mut each: impl FnMut(u64, &[u8]),
) -> Drained {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; pace.read.max(1)];
    let mut bytes = 0u64;
    let mut in_burst = 0usize;
    let mut data = Vec::new();
    let born = Instant::now();
    let err = loop {
        // A ceiling for a peer that never stops; the socket's read timeout ends a stall.
        if born.elapsed() > Duration::from_secs(600) {
            break Some(io::Error::new(ErrorKind::TimedOut, "still sending after 10 minutes"));
        }
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                hasher.update(&buf[..n]);
                each(bytes, &buf[..n]);
                if keep {
                    data.extend_from_slice(&buf[..n]);
                }
                bytes += n as u64;
                if let Some(p) = progress {
                    p.store(bytes, Ordering::SeqCst);
                }
                in_burst += n;
                if pace.burst > 0 && in_burst >= pace.burst {
                    in_burst = 0;
                    // The subject: a reader that pauses.
                    std::thread::sleep(pace.pause);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    Drained { bytes, digest: *hasher.finalize().as_bytes(), data, err }
}

/// Connects (from `bind`, with `rcvbuf`), sends `req`, reads the header and the body at `pace`.
pub fn fetch_raw(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    rcvbuf: Option<usize>,
    req: &[u8],
    pace: Pace,
    keep: bool,
) -> io::Result<(Response, Drained)> {
    let mut s = connect(addr, bind, rcvbuf)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(req)?;
    let r = read_response(&mut s)?;
    let d = drain(&mut s, pace, None, keep);
    Ok((r, d))
}

/// What a client waiting for the end of a connection saw.
#[derive(Debug)]
pub struct Received {
    pub data: Vec<u8>,
    /// When the peer closed (EOF or reset); `None`: still open at the deadline.
    pub closed_at: Option<Instant>,
    /// The end was a reset (or another error), not an EOF.
    pub reset: bool,
}

/// Reads (keeping the bytes) until the peer closes or `limit` passes.
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Received {
    let end = Instant::now() + limit;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Every round reads at least a byte or waits out the rest of the deadline, so the
    // rounds are bounded by the bytes a peer can send in `limit` (a few GiB) and time.
    for _ in 0..1_000_000 {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => return Received { data, closed_at: Some(Instant::now()), reset: false },
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return Received { data, closed_at: Some(Instant::now()), reset: true },
        }
    }
    Received { data, closed_at: None, reset: false }
}

/// Whether the socket has something to report (data, EOF or an error) right now.
pub fn readable_now(s: &TcpStream) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// How many bytes can sit between the server's `write`/`sendfile` and our `read` when our
/// receive buffer is pinned to `rcvbuf`: the largest send buffer the kernel will give the
/// server (autotuned or set explicitly), plus our receive buffer (doubled by the kernel),
/// plus a margin. A client that got more than this was sent more by the server itself.
pub fn in_kernel_bound(rcvbuf: u64) -> u64 {
    let read_num = |p: &str, field: usize| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.split_whitespace().nth(field).and_then(|v| v.parse().ok()))
            .unwrap_or(4 * MIB)
    };
    let tcp_wmem_max = read_num("/proc/sys/net/ipv4/tcp_wmem", 2);
    let wmem_max = read_num("/proc/sys/net/core/wmem_max", 0);
    tcp_wmem_max.max(2 * wmem_max) + 2 * rcvbuf + MIB
}

/// A client with a small, fixed receive buffer (set before connect, so the window never
/// grows) that reads the response on a thread at most `rate` bytes per second until told
/// to go at full speed.
pub struct SlowReader {
    /// Body bytes received so far.
    count: Arc<AtomicU64>,
    unlimited: Arc<AtomicBool>,
    pub header: Response,
    done: mpsc::Receiver<io::Result<(u64, Digest)>>,
}

pub const SLOW_RCVBUF: u64 = 128 * 1024;

impl SlowReader {
    pub fn start(addr: SocketAddr, rate: u64) -> SlowReader {
        let (mut s, header) = request_header(addr, None, Some(SLOW_RCVBUF as usize));
        assert!(matches!(header, Response::Ok { .. }), "slow reader refused: {header:?}");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let unlimited = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let (c, u) = (count.clone(), unlimited.clone());
        std::thread::spawn(move || {
            let res = (|| -> io::Result<(u64, Digest)> {
                let start = Instant::now();
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0u64;
                // Bounded by a 10-minute ceiling; the socket's read timeout ends a stall.
                while start.elapsed() < Duration::from_secs(600) {
                    let mut want = buf.len();
                    if !u.load(Ordering::SeqCst) {
                        let allowed = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                        if got >= allowed {
                            // The subject: pacing a slow reader.
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        want = want.min((allowed - got) as usize);
                    }
                    let n = s.read(&mut buf[..want])?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    got += n as u64;
                    c.store(got, Ordering::SeqCst);
                }
                Ok((got, *h.finalize().as_bytes()))
            })();
            let _ = tx.send(res);
        });
        SlowReader { count, unlimited, header, done }
    }

    /// Body bytes received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (up to `secs`) until at least `n` body bytes have arrived; fails the test if not.
    pub fn wait_count(&self, n: u64, secs: u64) {
        let ok = super::wait_until(Duration::from_secs(secs), || self.count() >= n);
        assert!(ok, "slow reader: only {} of the {n} bytes awaited arrived within {secs} s", self.count());
    }

    /// Goes to full speed and waits (up to `secs`) for EOF; asserts the body was exactly the
    /// file with `size` and `want`, and the header announced that file.
    pub fn finish_exact(self, secs: u64, size: u64, want: &Digest, what: &str) {
        self.unlimited.store(true, Ordering::SeqCst);
        let (n, d) = match self.done.recv_timeout(Duration::from_secs(secs)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{what}: slow reader failed after {} body bytes: {e}", self.count()),
            Err(_) => panic!("{what}: slow reader did not finish within {secs} s ({} body bytes)", self.count()),
        };
        match self.header {
            Response::Ok { size: hs, digest: hd, .. } => {
                assert_eq!(hs, size, "{what}: header size");
                assert!(
                    hd == *want,
                    "{what}: header digest {} != file digest {}",
                    blake3::Hash::from_bytes(hd).to_hex(),
                    blake3::Hash::from_bytes(*want).to_hex()
                );
            }
            other => panic!("{what}: header {other:?}"),
        }
        assert_eq!(n, size, "{what}: received {n} body bytes, expected {size}");
        assert!(
            d == *want,
            "{what}: body digest {} != file digest {}",
            blake3::Hash::from_bytes(d).to_hex(),
            blake3::Hash::from_bytes(*want).to_hex()
        );
    }
}

/// Waits until a connect to `addr` is refused (the listener is closed), up to `secs`;
/// connections that still succeed are closed at once. Says what it saw last if not.
pub fn wait_refused(addr: SocketAddr, secs: u64) -> Result<(), String> {
    let mut last = String::new();
    let refused = super::wait_until(Duration::from_secs(secs), || {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
            Err(e) => last = format!("connect error {e}"),
            Ok(_) => last = "connect still succeeds".into(),
        }
        false
    });
    if refused { Ok(()) } else { Err(last) }
}
