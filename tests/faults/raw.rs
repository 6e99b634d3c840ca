//! Raw protocol clients for the fault tests: they speak the wire format directly, with
//! control over what `xfer fetch` keeps to itself — the source address, the receive buffer,
//! the reading pace, a reset instead of a close, junk after the request.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::encoding::{self, Decoded, Response, Status};

pub use super::proxy::reset;

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

/// Reads exactly one response header (and a refusal's reason), never a body byte.
pub fn read_response(s: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(encoding::HEADER_LEN + encoding::MAX_REASON);
    loop {
        match encoding::decode_response(&buf) {
            Ok(Decoded::Done(r, _)) => return Ok(r),
            Ok(Decoded::NeedMore(n)) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                s.read_exact(&mut buf[start..])?;
            }
            Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, format!("{e}: {buf:02x?}"))),
        }
    }
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
    pub digest: [u8; 32],
    /// The body, if it was kept.
    pub data: Vec<u8>,
    /// How the stream ended: `None` for a clean EOF.
    pub err: Option<io::Error>,
}

impl Drained {
    /// Whether this is exactly the file of `size` bytes with `digest`, ended by a clean EOF.
    pub fn is_exact(&self, size: u64, digest: &[u8; 32]) -> bool {
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
    let err = loop {
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

/// Sends `req` from `bind` and expects a refusal; returns its status and reason.
pub fn expect_refusal(addr: SocketAddr, bind: Option<IpAddr>, req: &[u8]) -> (Status, String) {
    let mut s = connect(addr, bind, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req);
    match read_response(&mut s) {
        Ok(Response::Refused { status, reason }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Connects with a 4 KiB receive buffer, sends a request and reads only the header: the
/// server is now stuck writing the body to a client that does not read.
pub fn stalled_client(addr: SocketAddr, bind: Option<IpAddr>) -> TcpStream {
    let mut s = connect(addr, bind, Some(4096)).expect("connect stalled client");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&crate::util::raw_request(None)).expect("send request");
    match read_response(&mut s) {
        Ok(Response::Ok { .. }) => s,
        other => panic!("stalled client was not served: {other:?}"),
    }
}

/// How a connection ended, seen from a client waiting to read.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// EOF (or RST) after this many bytes, this long after `since`.
    After { bytes: usize, reset: bool, elapsed: Duration },
    /// Still open at the deadline.
    StillOpen { bytes: usize },
}

/// Reads (discarding) until the peer closes or `limit` passes.
pub fn wait_closed(s: &mut TcpStream, since: Instant, limit: Duration) -> Closed {
    let mut bytes = 0usize;
    let mut buf = [0u8; 64 * 1024];
    let end = since + limit;
    loop {
        let now = Instant::now();
        if now >= end {
            return Closed::StillOpen { bytes };
        }
        let _ = s.set_read_timeout(Some((end - now).max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => return Closed::After { bytes, reset: false, elapsed: since.elapsed() },
            Ok(n) => bytes += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Closed::After { bytes, reset: true, elapsed: since.elapsed() },
        }
    }
}

/// Whether the socket has something to report (data, EOF or an error) right now.
pub fn readable_now(s: &TcpStream) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}
