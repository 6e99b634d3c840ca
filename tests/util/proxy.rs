//! A fault-injecting TCP proxy, so network faults can be provoked on one box without
//! `tc netem` or iptables.
//!
//! The proxy listens on `127.0.0.1:0` and relays every accepted connection to a target. Each
//! direction of a connection follows a [`Dir`] plan: hold the first byte back (`delay`),
//! throttle (`chunk` bytes then `pause`), and at most one fault at an absolute byte position
//! of that direction's stream (the response header counts: body byte 0 is stream byte 48):
//!
//! * `Reset` — bytes `0..N` are forwarded, then both sockets are closed with `SO_LINGER 0`
//!   (an RST each way, as when a host or middlebox dies);
//! * `Cut` — bytes `0..N` are forwarded, then both sockets are closed normally (FIN);
//! * `Flip(bit)` — byte `N` is forwarded with that bit flipped, the rest unchanged;
//! * `Stall` — bytes `0..N` are forwarded, then that direction stops (the connection stays
//!   open) until the proxy is dropped or [`Proxy::kill_all`] is called.
//!
//! [`Proxy::unthrottle`] lifts the throttle of every connection, those in progress too.
//!
//! A fault only fires if byte `N` exists, so `N >= stream length` means "no fault".
//! Each connection is one thread running a `poll(2)` loop over two non-blocking sockets, so
//! every socket has exactly one descriptor and a close really sends the FIN or RST.
//! Resets and errors propagate: an RST from one side becomes an RST to the other.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::raw::reset;

/// What happens at the fault position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Reset,
    Cut,
    Flip(u8),
    Stall,
}

/// The plan for one direction of every connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dir {
    /// Nothing is forwarded before this much time has passed since the connection opened.
    pub delay: Duration,
    /// Forward at most this many bytes per step (0 means 64 KiB).
    pub chunk: usize,
    /// Wait this long after each forwarded chunk.
    pub pause: Duration,
    /// At most one fault, at this byte position of the stream.
    pub fault: Option<(u64, Action)>,
}

/// The plan for both directions: `up` is client → server, `down` is server → client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plan {
    pub up: Dir,
    pub down: Dir,
    /// `SO_RCVBUF` of the proxy's socket toward the server, set before connecting, so a
    /// slow downstream keeps the server's unsent bytes on its side (not in our buffers).
    pub server_rcvbuf: Option<usize>,
}

impl Plan {
    /// Forward everything untouched.
    pub fn clean() -> Plan {
        Plan::default()
    }
    /// A fault on the server → client stream at byte `at` (the header counts).
    pub fn down(at: u64, action: Action) -> Plan {
        Plan { down: Dir { fault: Some((at, action)), ..Dir::default() }, ..Plan::default() }
    }
    /// A fault on the client → server stream at byte `at`.
    pub fn up(at: u64, action: Action) -> Plan {
        Plan { up: Dir { fault: Some((at, action)), ..Dir::default() }, ..Plan::default() }
    }
    /// Throttle server → client to `chunk` bytes per `pause`.
    pub fn slow_down(chunk: usize, pause: Duration) -> Plan {
        Plan { down: Dir { chunk, pause, ..Dir::default() }, ..Plan::default() }
    }
    /// Sets a small receive buffer toward the server (see `server_rcvbuf`).
    pub fn server_rcvbuf(mut self, n: usize) -> Plan {
        self.server_rcvbuf = Some(n);
        self
    }
}

struct Shared {
    plan: std::sync::Mutex<Plan>,
    target: SocketAddr,
    /// Set to end everything: the accept loop and every relay (both sockets reset).
    stop: AtomicBool,
    /// Set to stop throttling every connection, old and new (see `Proxy::unthrottle`).
    unthrottled: AtomicBool,
    /// Bumped by `kill_all`: relays started before it reset their sockets and end.
    epoch: AtomicU64,
    fired: AtomicU64,
    live: AtomicUsize,
    down_bytes: AtomicU64,
    up_bytes: AtomicU64,
    /// Local ports of the proxy's connections to the server (what the server logs).
    server_ports: std::sync::Mutex<Vec<u16>>,
}

/// A running proxy; dropping it resets every connection it still relays.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `target` applying `plan` to every connection.
    pub fn start(target: SocketAddr, plan: Plan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("proxy nonblocking");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            plan: std::sync::Mutex::new(plan),
            target,
            stop: AtomicBool::new(false),
            unthrottled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            down_bytes: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            server_ports: std::sync::Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn proxy");
        Proxy { addr, shared, accept: Some(accept) }
    }

    /// `host:port` to hand to `xfer fetch`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Plan for connections accepted from now on.
    pub fn set_plan(&self, plan: Plan) {
        *self.shared.plan.lock().unwrap() = plan;
    }

    /// Faults that fired (byte N was seen) so far.
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Connections currently relayed.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server → client so far, over all connections.
    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client → server so far, over all connections.
    pub fn up_bytes(&self) -> u64 {
        self.shared.up_bytes.load(Ordering::SeqCst)
    }

    /// Local ports of the proxy's connections to the server, in connection order.
    pub fn server_ports(&self) -> Vec<u16> {
        self.shared.server_ports.lock().unwrap().clone()
    }

    /// From now on, every connection (those in progress too) forwards at full speed.
    pub fn unthrottle(&self) {
        self.shared.unthrottled.store(true, Ordering::SeqCst);
    }

    /// Resets both sockets of every live connection and waits (up to 5 s) until they are
    /// gone; returns whether they are.
    pub fn kill_all(&self) -> bool {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        super::wait_until(Duration::from_secs(5), || self.live() == 0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Teardown: a relay that outlives this wait ends on its own at its next poll.
        let _ = self.kill_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// No proxy outlives this, whatever a test forgets: a ceiling on every loop here.
const LIFETIME: Duration = Duration::from_secs(600);

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let born = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) && born.elapsed() < LIFETIME {
        match listener.accept() {
            Ok((client, _)) => {
                sh.live.fetch_add(1, Ordering::SeqCst);
                let plan = *sh.plan.lock().unwrap();
                let epoch = sh.epoch.load(Ordering::SeqCst);
                let sh2 = sh.clone();
                let spawned =
                    std::thread::Builder::new().name("proxy-relay".into()).stack_size(256 * 1024).spawn(move || {
                        relay(client, plan, &sh2, epoch);
                        sh2.live.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    sh.live.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                poll_one(listener.as_raw_fd(), libc::POLLIN, 20);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn poll_one(fd: i32, events: i16, ms: i32) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

fn connect_to(target: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(target), socket2::Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// One direction's progress.
struct Flow {
    plan: Dir,
    /// Bytes read from the source so far (= stream position of the next byte read).
    pos: u64,
    /// Read but not yet written to the destination.
    buf: Vec<u8>,
    sent: usize,
    /// Earliest time the next chunk may be read.
    not_before: Instant,
    /// The source said EOF.
    eof: bool,
    /// EOF passed on (destination shut down for writing).
    done: bool,
    /// After `buf` is flushed, do this to the connection.
    pending: Option<Action>,
    stalled: bool,
}

enum End {
    Graceful,
    Reset,
}

fn relay(client: TcpStream, plan: Plan, sh: &Shared, epoch: u64) {
    let server = match connect_to(sh.target, plan.server_rcvbuf) {
        Ok(s) => s,
        Err(_) => {
            reset(client);
            return;
        }
    };
    if let Ok(a) = server.local_addr() {
        sh.server_ports.lock().unwrap().push(a.port());
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if client.set_nonblocking(true).is_err() || server.set_nonblocking(true).is_err() {
        reset(client);
        reset(server);
        return;
    }
    let start = Instant::now();
    let mk = |d: Dir| Flow {
        plan: d,
        pos: 0,
        buf: Vec::new(),
        sent: 0,
        not_before: start + d.delay,
        eof: false,
        done: false,
        pending: None,
        stalled: false,
    };
    // flows[0]: client → server; flows[1]: server → client.
    let mut flows = [mk(plan.up), mk(plan.down)];
    let socks = [client, server];
    let end = run(&socks, &mut flows, sh, epoch);
    let [client, server] = socks;
    match end {
        End::Graceful => {
            drop(client);
            drop(server);
        }
        End::Reset => {
            reset(client);
            reset(server);
        }
    }
}

fn unthrottled(sh: &Shared) -> bool {
    sh.unthrottled.load(Ordering::SeqCst)
}

fn run(socks: &[TcpStream; 2], flows: &mut [Flow; 2], sh: &Shared, epoch: u64) -> End {
    let counters = [&sh.up_bytes, &sh.down_bytes];
    let mut scratch = vec![0u8; 64 * 1024];
    let born = Instant::now();
    loop {
        if sh.stop.load(Ordering::SeqCst) || sh.epoch.load(Ordering::SeqCst) != epoch || born.elapsed() > LIFETIME {
            return End::Reset;
        }
        // Faults whose bytes before N have all been delivered.
        for f in flows.iter_mut() {
            if f.sent == f.buf.len()
                && let Some(a) = f.pending.take()
            {
                match a {
                    Action::Reset => return End::Reset,
                    Action::Cut => return End::Graceful,
                    Action::Stall => f.stalled = true,
                    Action::Flip(_) => {}
                }
            }
        }
        // Flows whose source ended and whose bytes are delivered pass the EOF on.
        for (i, f) in flows.iter_mut().enumerate() {
            if f.eof && !f.done && f.sent == f.buf.len() && f.pending.is_none() {
                let _ = socks[1 - i].shutdown(Shutdown::Write);
                f.done = true;
            }
        }
        if flows.iter().all(|f| f.done) {
            return End::Graceful;
        }
        let now = Instant::now();
        let mut timeout = Duration::from_millis(50);
        let mut events = [0i16; 2];
        for (i, f) in flows.iter().enumerate() {
            if f.sent < f.buf.len() {
                events[1 - i] |= libc::POLLOUT;
            } else if !f.eof && !f.stalled && f.pending.is_none() {
                if now >= f.not_before {
                    events[i] |= libc::POLLIN;
                } else {
                    timeout = timeout.min(f.not_before - now);
                }
            }
        }
        let mut pfds = [
            libc::pollfd { fd: socks[0].as_raw_fd(), events: events[0], revents: 0 },
            libc::pollfd { fd: socks[1].as_raw_fd(), events: events[1], revents: 0 },
        ];
        let ms = timeout.as_millis().max(1) as i32;
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            continue;
        }
        for (i, p) in pfds.iter().enumerate() {
            if p.revents & libc::POLLERR != 0 {
                // A reset or other error on one side: pass it on as a reset.
                return End::Reset;
            }
            if p.revents & libc::POLLHUP != 0 && p.events == 0 && flows[1 - i].done && flows[i].stalled {
                // Both directions of this socket are shut while its flow is stalled:
                // nothing can move any more.
                return End::Reset;
            }
        }
        for i in 0..2 {
            let f = &mut flows[i];
            // Write what is pending toward socks[1 - i].
            if f.sent < f.buf.len() {
                match (&socks[1 - i]).write(&f.buf[f.sent..]) {
                    Ok(k) => {
                        f.sent += k;
                        counters[i].fetch_add(k as u64, Ordering::SeqCst);
                        if f.sent == f.buf.len() {
                            let pause = if unthrottled(sh) { Duration::ZERO } else { f.plan.pause };
                            f.not_before = Instant::now() + pause;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return End::Reset,
                }
                continue;
            }
            if events[i] & libc::POLLIN == 0 || pfds[i].revents == 0 {
                continue;
            }
            let chunk =
                if f.plan.chunk == 0 || unthrottled(sh) { scratch.len() } else { f.plan.chunk.min(scratch.len()) };
            match (&socks[i]).read(&mut scratch[..chunk]) {
                Ok(0) => f.eof = true,
                Ok(k) => {
                    let mut data = &scratch[..k];
                    let mut flipped = None;
                    if let Some((at, action)) = f.plan.fault
                        && at >= f.pos
                        && at < f.pos + k as u64
                    {
                        sh.fired.fetch_add(1, Ordering::SeqCst);
                        f.plan.fault = None;
                        let idx = (at - f.pos) as usize;
                        match action {
                            Action::Flip(bit) => flipped = Some((idx, bit)),
                            other => {
                                data = &scratch[..idx];
                                f.pending = Some(other);
                            }
                        }
                    }
                    f.pos += k as u64;
                    f.buf.clear();
                    f.buf.extend_from_slice(data);
                    f.sent = 0;
                    if let Some((idx, bit)) = flipped {
                        f.buf[idx] ^= 1 << (bit & 7);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return End::Reset,
            }
        }
    }
}
