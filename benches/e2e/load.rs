//! The load generator: one mio thread that opens client connections to an address, sends
//! each its request, reads the response to its end and checks its length, many at once. A
//! response ends at EOF, or, with a keep-alive protocol, after Content-Length body bytes;
//! the client then sends its next request on the same connection, up to `per_conn`
//! requests, and closes it itself. Body
//! bytes are dropped with `recv(MSG_TRUNC)`, so a client costs the kernel's receive work and
//! little else (`XFER_BENCH_COPY_READS=1` copies them instead). Against a server with a
//! token, a native version 2 client first answers the server's challenge (a fresh nonce per
//! connection, the proof, the server's MAC checked: proto.rs's `NativeAuth`). It also holds
//! clients that send their request and never read, for the stall phase.
//!
//! It knows an address, a protocol's framing (proto.rs) and a byte count, and must never know
//! which server is behind the address, how servers are started or measured, or what the
//! report shows: it returns counts, times and errors. Readiness is edge-triggered, so a
//! connection is driven until it answers WouldBlock every time it gets an event.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::{AuthStep, Credential, NativeAuth, Proto};
use crate::readings::thread_cpu_us;

/// Where to connect, what to send, and how many body bytes each response must carry.
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// The request every connection sends (HTTP with a token: with its Bearer header).
    pub req: Vec<u8>,
    pub size: u64,
    /// Native version 2 with a token: each connection proves it by challenge-response
    /// instead of sending `req`.
    native_auth: Option<Credential>,
}

impl Target {
    /// `cred`: the token the server requires, if any.
    pub fn new(addr: SocketAddr, proto: Proto, path: &str, size: u64, cred: Option<&Credential>) -> Target {
        let native_auth = cred.filter(|_| proto == Proto::XferV2).cloned();
        Target { addr, proto, req: proto.request(path, cred), size, native_auth }
    }
}

pub struct LoadOpts {
    /// Clients in flight at once.
    pub conc: usize,
    /// Transfers to start in all.
    pub max_transfers: u64,
    /// No new transfer starts after this.
    pub window: Duration,
    /// Hard stop; transfers still open then count as timed out.
    pub deadline: Duration,
    /// SO_RCVBUF for client sockets.
    pub rcvbuf: Option<usize>,
    /// Record each transfer's completion time.
    pub latency: bool,
    /// Requests per connection with a keep-alive protocol (ignored by the others: one).
    pub per_conn: u32,
    pub copy_reads: bool,
}

#[derive(Default)]
pub struct Outcome {
    pub ok: u64,
    pub bad: u64,
    pub timed_out: u64,
    pub body_bytes: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// CPU time of the load generator's thread during the run.
    pub load_cpu_us: f64,
}

impl Outcome {
    fn error(&mut self, e: String) {
        *self.errors.entry(e).or_insert(0) += 1;
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ok, {} bad, {} timed out, {:.3} s",
            self.ok,
            self.bad,
            self.timed_out,
            self.elapsed.as_secs_f64()
        );
        if !self.errors.is_empty() {
            let mut v: Vec<_> = self.errors.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            let e: Vec<String> = v.iter().take(4).map(|(k, n)| format!("{n}× {k}")).collect();
            s.push_str(&format!("; errors: {}", e.join("; ")));
        }
        s
    }
}

struct Conn {
    sock: TcpStream,
    started: Instant,
    sent: usize,
    hdr: Vec<u8>,
    hdr_done: bool,
    /// The server announced it closes after this response.
    server_closes: bool,
    /// Body bytes of the response in progress.
    body: u64,
    /// Responses completed on this connection, and their body bytes.
    answered: u32,
    answered_bytes: u64,
    /// The native challenge-response, when the target wants one.
    auth: Option<Box<NativeAuth>>,
}

impl Conn {
    fn new(sock: TcpStream, t: &Target) -> Conn {
        Conn {
            sock,
            started: Instant::now(),
            sent: 0,
            hdr: Vec::new(),
            hdr_done: false,
            server_closes: false,
            body: 0,
            answered: 0,
            answered_bytes: 0,
            auth: t.native_auth.as_ref().map(|c| Box::new(NativeAuth::new(c))),
        }
    }

    /// Sends (the rest of) what goes out now: the target's request, or this connection's
    /// message of the challenge-response.
    fn send(&mut self, t: &Target) -> Result<bool, String> {
        let msg = match &self.auth {
            Some(a) => a.message(),
            None => &t.req[..],
        };
        send_request(&mut self.sock, &mut self.sent, msg)
    }

    /// Parses the head so far: the target protocol's framing, or the challenge-response's.
    fn parse_head(&mut self, t: &Target) -> Result<AuthStep, String> {
        match &mut self.auth {
            Some(a) => a.parse_head(&self.hdr, t.size),
            None => t.proto.parse_head(&self.hdr, t.size).map(|h| h.map_or(AuthStep::More, AuthStep::Head)),
        }
    }

    /// Body bytes received on this connection, complete responses and the current one.
    fn bytes(&self) -> u64 {
        self.answered_bytes + self.body
    }
}

/// How far reading a response got.
enum Progress {
    /// WouldBlock: wait for the next event.
    Blocked,
    /// The response is whole.
    Whole,
    /// A challenge came and was answered: the proof goes out, then the head is read anew.
    Answer,
}

enum Step {
    Pending,
    /// The connection is over: `Ok` when its last response was whole (its responses, in
    /// `answered`, count as transfers).
    Done(Result<(), String>),
}

/// A non-blocking socket connecting to `addr`; the connect completes (or fails) later.
fn open_socket(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Sends (the rest of) the request; `Ok(true)` once it is all sent. A socket still
/// connecting answers WouldBlock, and one whose connect failed reports that error here,
/// so there is no separate connect check (on loopback the handshake is usually done by
/// the time `connect` returns, and the request leaves without waiting for an event).
fn send_request(sock: &mut TcpStream, sent: &mut usize, req: &[u8]) -> Result<bool, String> {
    while *sent < req.len() {
        match sock.write(&req[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("connect/send: {}", e.kind())),
        }
    }
    Ok(true)
}

/// Reads body bytes, discarding them without a copy into user space (MSG_TRUNC on TCP).
fn recv_discard(sock: &TcpStream, scratch: &mut [u8], copy: bool) -> io::Result<usize> {
    let flags = if copy { 0 } else { libc::MSG_TRUNC };
    // SAFETY: `scratch` is valid for writes of its length for the duration of the call
    // (with MSG_TRUNC the kernel writes nothing to it at all).
    let n = unsafe { libc::recv(sock.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len(), flags) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Moves one connection as far as it goes without blocking: the request out, then the
/// head, then the body. The head goes through `Proto::parse_head`. A response ends at EOF,
/// or with a keep-alive protocol at `size` body bytes: then the next request goes out at
/// once, unless this connection has had `per_conn` of them, the server said it closes, or
/// `more` is false (the load's window is over); then this client closes first.
fn drive(c: &mut Conn, t: &Target, o: &LoadOpts, more: bool, scratch: &mut [u8]) -> Step {
    loop {
        match c.send(t) {
            Ok(true) => {}
            Ok(false) => return Step::Pending,
            Err(e) => return Step::Done(Err(e)),
        }
        match read_response(c, t, scratch, o.copy_reads) {
            Ok(Progress::Blocked) => return Step::Pending,
            Ok(Progress::Answer) => continue,
            Ok(Progress::Whole) => {}
            Err(e) => return Step::Done(Err(e)),
        }
        // The response is whole: its bytes move from the one in progress to the answered
        // ones (counted once: `Conn::bytes` adds the two).
        c.answered += 1;
        c.answered_bytes += std::mem::take(&mut c.body);
        if !t.proto.keeps_alive() || c.server_closes || c.answered >= o.per_conn.max(1) || !more {
            return Step::Done(Ok(()));
        }
        // The next request on the same connection.
        c.sent = 0;
        c.hdr.clear();
        c.hdr_done = false;
    }
}

/// Reads (the rest of) one response, or up to a challenge (whose proof is then ready to go).
fn read_response(c: &mut Conn, t: &Target, scratch: &mut [u8], copy: bool) -> Result<Progress, String> {
    let at_length = t.proto.keeps_alive();
    loop {
        if at_length && c.hdr_done && c.body == t.size {
            return Ok(Progress::Whole);
        }
        let r = if c.hdr_done { recv_discard(&c.sock, scratch, copy) } else { c.sock.read(&mut scratch[..4096]) };
        match r {
            Ok(0) => {
                return if !c.hdr_done {
                    Err(format!("EOF before the header ({} bytes)", c.hdr.len()))
                } else if c.body != t.size {
                    Err(format!("short body: {} of {} bytes", c.body, t.size))
                } else {
                    Ok(Progress::Whole)
                };
            }
            Ok(n) => {
                if c.hdr_done {
                    c.body += n as u64;
                } else {
                    c.hdr.extend_from_slice(&scratch[..n]);
                    match c.parse_head(t) {
                        Ok(AuthStep::More) => {}
                        Ok(AuthStep::Head(head)) => {
                            c.hdr_done = true;
                            c.server_closes = head.closes;
                            c.body = (c.hdr.len() - head.len) as u64;
                        }
                        Ok(AuthStep::Proof) => {
                            c.hdr.clear();
                            c.sent = 0;
                            return Ok(Progress::Answer);
                        }
                        Err(e) => return Err(e),
                    }
                }
                if c.body > t.size {
                    return Err(format!("more than {} body bytes", t.size));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv after {} body bytes: {}", c.body, e.kind())),
        }
    }
}

/// Runs clients until `max_transfers` have started or the window closed, then drains.
pub fn run_load(t: &Target, o: &LoadOpts) -> Outcome {
    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(4096);
    let mut conns: Slab<Conn> = Slab::with_capacity(o.conc);
    let mut out = Outcome::default();
    let mut scratch = vec![0u8; 1 << 20];
    let cpu0 = thread_cpu_us();
    let start = Instant::now();
    let mut last_done = start;
    let mut started = 0u64;
    let mut pending = o.conc;
    let mut connect_errors = 0u64;
    loop {
        let now = Instant::now();
        let may_start = now.duration_since(start) < o.window && started < o.max_transfers;
        while pending > 0 && may_start && started < o.max_transfers {
            started += 1;
            match open_socket(t.addr, o.rcvbuf) {
                Ok(mut sock) => {
                    let entry = conns.vacant_entry();
                    poll.registry()
                        .register(&mut sock, Token(entry.key()), Interest::READABLE | Interest::WRITABLE)
                        .expect("register");
                    let key = entry.key();
                    let c = entry.insert(Conn::new(sock, t));
                    pending -= 1;
                    // Send now; the answer (and any connect error) arrives as an event.
                    if let Err(e) = c.send(t) {
                        let c = conns.remove(key);
                        out.bad += 1;
                        out.error(e);
                        out.body_bytes += c.bytes();
                        pending += 1;
                        connect_errors += 1;
                        break; // retry on the next turn
                    }
                }
                Err(e) => {
                    out.bad += 1;
                    out.error(format!("connect: {}", e.kind()));
                    connect_errors += 1;
                    break; // retry on the next turn
                }
            }
        }
        if conns.is_empty() && !(pending > 0 && may_start) {
            break;
        }
        if now.duration_since(start) > o.deadline || connect_errors > 100_000 {
            out.timed_out += conns.len() as u64;
            for (_, c) in conns.iter() {
                out.ok += c.answered as u64;
                out.body_bytes += c.bytes();
            }
            break;
        }
        let wait = if pending > 0 && may_start { Duration::from_millis(1) } else { Duration::from_millis(50) };
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            let k = ev.token().0;
            // Spurious events happen, and a finished connection's token may still be reported.
            let Some(c) = conns.get_mut(k) else { continue };
            let more = start.elapsed() < o.window;
            if let Step::Done(res) = drive(c, t, o, more, &mut scratch) {
                let c = conns.remove(k);
                let done = Instant::now();
                out.ok += c.answered as u64;
                match res {
                    Ok(()) => {
                        if o.latency {
                            out.latencies.push(done - c.started);
                        }
                    }
                    Err(e) => {
                        out.bad += 1;
                        out.error(e);
                    }
                }
                out.body_bytes += c.bytes();
                last_done = done;
                pending += 1;
            }
        }
    }
    out.elapsed = if out.ok > 0 { last_done - start } else { start.elapsed() };
    out.load_cpu_us = thread_cpu_us() - cpu0;
    out
}

/// Clients that have sent their request and never read: the server's sends stall once
/// their small receive buffers are full. They are held open until this is dropped.
pub struct Stalled {
    socks: Vec<TcpStream>,
    errors: BTreeMap<String, u64>,
}

impl Stalled {
    /// Opens `n` clients with a 16 KiB receive buffer and sends each its request (≤ 30 s).
    pub fn open(t: &Target, n: usize) -> Stalled {
        let mut poll = Poll::new().expect("mio poll");
        let mut events = Events::with_capacity(4096);
        struct C {
            sock: TcpStream,
            sent: usize,
            done: bool,
        }
        let mut conns: Vec<C> = Vec::with_capacity(n);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..n {
            // A small receive window: the server's sends stall after ~16 KiB per client.
            match open_socket(t.addr, Some(16 * 1024)) {
                Ok(mut sock) => {
                    poll.registry().register(&mut sock, Token(i), Interest::WRITABLE).expect("register");
                    conns.push(C { sock, sent: 0, done: false });
                }
                Err(e) => *errors.entry(format!("connect: {}", e.kind())).or_insert(0) += 1,
            }
        }
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < conns.len() && t0.elapsed() < Duration::from_secs(30) {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
            for ev in events.iter() {
                let Some(c) = conns.get_mut(ev.token().0) else { continue };
                if c.done {
                    continue;
                }
                match send_request(&mut c.sock, &mut c.sent, &t.req) {
                    Ok(true) => {
                        c.done = true;
                        sent += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        c.done = true;
                        sent += 1;
                        *errors.entry(e).or_insert(0) += 1;
                    }
                }
            }
        }
        Stalled { socks: conns.into_iter().map(|c| c.sock).collect(), errors }
    }

    /// Clients with part of the body waiting unread. Mid-transfer means more bytes waiting
    /// than any refusal (≤ 303 bytes) or HTTP header.
    pub fn mid_transfer(&self) -> usize {
        self.socks.iter().filter(|s| fionread(s) >= 4096).count()
    }

    /// Closes every client; returns the errors met while opening them, by kind.
    pub fn close(self) -> BTreeMap<String, u64> {
        drop(self.socks);
        self.errors
    }
}

fn fionread(sock: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given, which outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}
