//! The load generator: one mio thread that opens client connections to an address, sends
//! each its request, reads the response to EOF and checks its length, many at once. Body
//! bytes are dropped with `recv(MSG_TRUNC)`, so a client costs the kernel's receive work and
//! little else (`XFER_BENCH_COPY_READS=1` copies them instead). It also holds clients that
//! send their request and never read, for the stall phase.
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

use crate::proto::Proto;
use crate::readings::thread_cpu_us;

/// Where to connect, what to send, and how many body bytes each response must carry.
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub req: Vec<u8>,
    pub size: u64,
}

impl Target {
    pub fn new(addr: SocketAddr, proto: Proto, path: &str, size: u64) -> Target {
        Target { addr, proto, req: proto.request(path), size }
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
    body: u64,
}

enum Step {
    Pending,
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
/// head, then the body. The head goes through `Proto::parse_head`; a response ends at EOF,
/// the only ending the protocols have today (a keep-alive one would end at `size` body
/// bytes and send the next request here).
fn drive(c: &mut Conn, t: &Target, scratch: &mut [u8], copy: bool) -> Step {
    match send_request(&mut c.sock, &mut c.sent, &t.req) {
        Ok(true) => {}
        Ok(false) => return Step::Pending,
        Err(e) => return Step::Done(Err(e)),
    }
    loop {
        let r = if c.hdr_done { recv_discard(&c.sock, scratch, copy) } else { c.sock.read(&mut scratch[..4096]) };
        match r {
            Ok(0) => {
                return Step::Done(if !c.hdr_done {
                    Err(format!("EOF before the header ({} bytes)", c.hdr.len()))
                } else if c.body != t.size {
                    Err(format!("short body: {} of {} bytes", c.body, t.size))
                } else {
                    Ok(())
                });
            }
            Ok(n) => {
                if c.hdr_done {
                    c.body += n as u64;
                } else {
                    c.hdr.extend_from_slice(&scratch[..n]);
                    match t.proto.parse_head(&c.hdr, t.size) {
                        Ok(None) => {}
                        Ok(Some(used)) => {
                            c.hdr_done = true;
                            c.body = (c.hdr.len() - used) as u64;
                        }
                        Err(e) => return Step::Done(Err(e)),
                    }
                }
                if c.body > t.size {
                    return Step::Done(Err(format!("more than {} body bytes", t.size)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::Done(Err(format!("recv after {} body bytes: {}", c.body, e.kind()))),
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
                    let c = entry.insert(Conn {
                        sock,
                        started: Instant::now(),
                        sent: 0,
                        hdr: Vec::new(),
                        hdr_done: false,
                        body: 0,
                    });
                    pending -= 1;
                    // Send now; the answer (and any connect error) arrives as an event.
                    if let Err(e) = send_request(&mut c.sock, &mut c.sent, &t.req) {
                        let c = conns.remove(key);
                        out.bad += 1;
                        out.error(e);
                        out.body_bytes += c.body;
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
                out.body_bytes += c.body;
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
            if let Step::Done(res) = drive(c, t, &mut scratch, o.copy_reads) {
                let c = conns.remove(k);
                let done = Instant::now();
                match res {
                    Ok(()) => {
                        out.ok += 1;
                        if o.latency {
                            out.latencies.push(done - c.started);
                        }
                    }
                    Err(e) => {
                        out.bad += 1;
                        out.error(e);
                    }
                }
                out.body_bytes += c.body;
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
