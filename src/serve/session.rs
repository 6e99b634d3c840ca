//! A connection's life, from accept to close, and the [`Server`] the reactor drives.
//!
//! A [`Session`] is a phase and a few cursors: reading the request, sending a reply, or
//! lingering after the last byte. The request is handed to its protocol, which decides the
//! reply (a head to render and a byte range of the snapshot); the send path delivers it;
//! one log line records how it ended.
//!
//! Owns: the phases and their deadlines, and the glue between admission, the served file's
//! versions, the protocol and the send path. Must never know a wire format's bytes (the
//! protocol module renders them) nor how replies reach the socket (the send path does).
//!
//! Invariants: a session in `Send` never has more than its reply left to send; every byte
//! of a reply comes from the snapshot the session started on; a session is counted in the
//! limits from `open` to `close`, exactly once.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::admit::{Admission, Entry, Limits, Policy, Refusal, canonical};
use super::reload::{SharedVersions, Versions};
use super::send::{self, AfterLast, Conn, Delivery, HEAD_MAX, LINGER_POLL, Sent};
use super::snapshot::Snapshot;
use super::watch::Watch;
use super::{log, xfer};
use crate::reactor::{Service, Step, Timer};

/// A client being refused gets at most this long to send its request (whose bytes we read
/// only so that closing does not reset it).
const REFUSE_DEADLINE: Duration = Duration::from_secs(2);

/// How a transfer ended, for the log line.
#[derive(Debug)]
pub enum Outcome {
    /// Still going (the reactor closed it: shutdown deadline).
    Unfinished,
    Complete,
    ClosedByPeer,
    TimedOut,
    Refused(Refusal),
    /// Stopped on purpose: the file changed, or the server is exiting.
    Cut(&'static str),
    /// Not our protocol.
    NotXfer,
    Error(io::Error),
}

/// What a reply begins with, in its protocol. Rendered on the stack each time it is
/// (re)sent, from the reply and the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Xfer(xfer::Head),
}

impl Head {
    fn render(&self, snap: &Snapshot, out: &mut [u8]) -> usize {
        match self {
            Head::Xfer(h) => xfer::render(*h, snap, out),
        }
    }

    /// The refusal this head carries, if it is one.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Head::Xfer(xfer::Head::Refused(why)) => Some(*why),
            Head::Xfer(xfer::Head::Ok) => None,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading the native request. A refusal decided at accept time (not allowed, busy)
    /// waits here too: the request is read first so closing never resets the peer.
    Request { incoming: xfer::Incoming, refuse: Option<Refusal> },
    /// Sending a reply.
    Send { head: Head, d: Delivery },
    /// Everything is sent and our side is shut down; discarding what the peer still sends
    /// until it closes or `until`.
    Linger { until: Instant, discarded: u32 },
}

/// One connected client: its phase and cursors, the snapshot it is served from, and what
/// the log line needs.
pub struct Session {
    snap: Arc<Snapshot>,
    phase: Phase,
    pub(super) peer: SocketAddr,
    pub(super) started: Instant,
    last_progress: Instant,
    pub(super) body_sent: u64,
    /// Counted against the client limits; otherwise counted as a refusal in progress.
    admitted: bool,
    pub(super) outcome: Outcome,
}

impl Session {
    fn new(snap: Arc<Snapshot>, peer: SocketAddr, now: Instant, refuse: Option<Refusal>) -> Session {
        Session {
            snap,
            phase: Phase::Request { incoming: xfer::Incoming::default(), refuse },
            peer,
            started: now,
            last_progress: now,
            body_sent: 0,
            admitted: refuse.is_none(),
            outcome: Outcome::Unfinished,
        }
    }

    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    pub fn body_sent(&self) -> u64 {
        self.body_sent
    }

    /// Starts sending a reply: `head`, then `body` of the snapshot.
    fn reply(&mut self, head: Head, body: std::ops::Range<u64>, now: Instant) {
        let mut buf = [0u8; HEAD_MAX];
        let head_len = head.render(&self.snap, &mut buf);
        self.phase = Phase::Send { head, d: Delivery::new(head_len, body) };
        self.last_progress = now;
    }
}

/// What all event loops of one server share.
#[derive(Clone)]
pub struct Shared {
    versions: SharedVersions,
    limits: Arc<Mutex<Limits>>,
}

impl Shared {
    pub fn new(snapshot: Arc<Snapshot>) -> Shared {
        Shared { versions: SharedVersions::new(snapshot), limits: Arc::default() }
    }
}

/// The reactor's service: admits, drives and logs sessions of one served file.
pub struct Server {
    versions: Versions,
    admission: Admission,
    /// Reused by the read+write fallback when sendfile is unavailable; never per client.
    scratch: Vec<u8>,
    /// Why `open` just declined a connection, for the `reject` that follows.
    rejecting: Option<Refusal>,
}

impl Server {
    pub fn new(snapshot: Arc<Snapshot>, policy: Policy) -> Server {
        Server::with_shared(&Shared::new(snapshot), policy)
    }

    /// A server whose snapshot and limits are shared with other event loops.
    pub fn with_shared(shared: &Shared, policy: Policy) -> Server {
        Server {
            versions: Versions::new(&shared.versions),
            admission: Admission::new(policy, shared.limits.clone()),
            scratch: Vec::new(),
            rejecting: None,
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        self.versions.current()
    }

    /// Gives this loop the inotify watch on the served path.
    pub fn watch(&mut self, w: Watch) {
        self.versions.watch(w);
    }

    fn idle(&self) -> bool {
        self.admission.in_flight() == 0
    }

    /// Drives a session over any [`Conn`]: what the reactor does with a socket, open to
    /// unit tests and benches with a scripted peer.
    pub fn step<C: Conn>(&mut self, s: &mut Session, conn: &mut C, budget: usize, now: Instant) -> Step {
        let mut budget = budget;
        loop {
            match &mut s.phase {
                Phase::Request { incoming, refuse } => {
                    let n = match conn.read(incoming.spare()) {
                        Ok(0) => return finish(s, Outcome::ClosedByPeer),
                        Ok(n) => n,
                        Err(e) => match io_error(s, e) {
                            Some(step) => return step,
                            None => continue,
                        },
                    };
                    incoming.filled(n);
                    let refuse = *refuse;
                    let (head, body) = match incoming.parse() {
                        xfer::Parsed::NeedMore => continue,
                        xfer::Parsed::NotOurs => return finish(s, Outcome::NotXfer),
                        xfer::Parsed::Malformed(why) => (xfer::Head::Refused(why), 0..0),
                        xfer::Parsed::Request(req) => xfer::decide(&req, refuse, &s.snap, &self.admission),
                    };
                    s.reply(Head::Xfer(head), body, now);
                }
                Phase::Send { head, d } => {
                    let (head, before) = (*head, d.pos);
                    let snap = &s.snap;
                    let r = send::send(conn, d, &|out| head.render(snap, out), snap, &mut budget, &mut self.scratch);
                    s.body_sent = d.body_sent();
                    if d.pos != before {
                        s.last_progress = now;
                    }
                    return match r {
                        Sent::Done => {
                            s.outcome = match head.refusal() {
                                Some(why) => Outcome::Refused(why),
                                None => Outcome::Complete,
                            };
                            self.after_last_byte(s, conn, now)
                        }
                        Sent::Blocked => Step::Blocked,
                        Sent::Yield => Step::Yield,
                        Sent::Cut(why) => finish(s, Outcome::Cut(why)),
                        Sent::Closed => finish(s, Outcome::ClosedByPeer),
                        Sent::Failed(e) => finish(s, Outcome::Error(e)),
                    };
                }
                Phase::Linger { discarded, .. } => {
                    return if send::linger(conn, discarded) { Step::Done } else { Step::Blocked };
                }
            }
        }
    }

    /// The last byte is out: close, or linger until the peer has it all.
    fn after_last_byte<C: Conn>(&mut self, s: &mut Session, conn: &mut C, now: Instant) -> Step {
        match send::after_last_byte(conn, self.admission.policy.send_timeout, now) {
            AfterLast::Close => Step::Done,
            AfterLast::Linger { until, discarded } => {
                s.phase = Phase::Linger { until, discarded };
                // Keep reading until WouldBlock: readiness is edge-triggered.
                self.step(s, conn, 0, now)
            }
        }
    }
}

fn finish(s: &mut Session, outcome: Outcome) -> Step {
    s.outcome = outcome;
    Step::Done
}

/// What a failed read of the request means for the session: wait for readiness, end it,
/// or (`None`, interrupted) try again now.
fn io_error(s: &mut Session, e: io::Error) -> Option<Step> {
    match send::classify(e) {
        send::Io::Again => Some(Step::Blocked),
        send::Io::Retry => None,
        send::Io::Closed => Some(finish(s, Outcome::ClosedByPeer)),
        send::Io::Failed(e) => Some(finish(s, Outcome::Error(e))),
    }
}

impl Service for Server {
    type Session = Session;

    fn open(&mut self, peer: SocketAddr, now: Instant) -> Option<Session> {
        let idle = self.idle();
        self.versions.on_open(now, idle);
        let peer = canonical(peer);
        let snap = self.versions.current().clone();
        match self.admission.enter(peer.ip(), snap.is_stale()) {
            Entry::Admitted => Some(Session::new(snap, peer, now, None)),
            Entry::Refusing(why) => Some(Session::new(snap, peer, now, Some(why))),
            Entry::Reject(why) => {
                self.rejecting = Some(why);
                None
            }
        }
    }

    fn reject(&mut self, stream: &mut mio::net::TcpStream, peer: SocketAddr, _now: Instant) {
        // Without a reason from `open`, the reactor is out of room for sessions.
        let why = self.rejecting.take().unwrap_or(Refusal::Busy);
        let mut head = [0u8; HEAD_MAX];
        let n = xfer::render(xfer::Head::Refused(why), self.versions.current(), &mut head);
        // A fresh socket's send buffer takes these few bytes whole; if not, the client
        // sees the connection close, which is all we can afford under a flood.
        let _ = Write::write(stream, &head[..n]);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Read what the client already sent, so the close that follows is a plain FIN and
        // not a reset, which could destroy the refusal in the client's buffers.
        let mut sink = [0u8; 512];
        for _ in 0..4 {
            if !matches!(Read::read(stream, &mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        if !self.admission.policy.quiet {
            log::refused(canonical(peer), why);
        }
    }

    fn drive(&mut self, s: &mut Session, stream: &mut mio::net::TcpStream, budget: usize, now: Instant) -> Step {
        self.step(s, stream, budget, now)
    }

    fn timer(&mut self, s: &mut Session, stream: &mio::net::TcpStream, now: Instant) -> Timer {
        let policy = &self.admission.policy;
        let deadline = match &s.phase {
            Phase::Request { refuse: Some(_), .. } => s.started + policy.request_timeout.min(REFUSE_DEADLINE),
            Phase::Request { .. } => s.started + policy.request_timeout,
            Phase::Send { d, .. } if d.body_end > d.body_start && s.snap.is_stale() => {
                s.outcome = Outcome::Cut("file changed");
                return Timer::Expired;
            }
            Phase::Send { .. } => s.last_progress + policy.send_timeout,
            Phase::Linger { until, .. } => {
                // Everything acknowledged: the bytes are safe in the peer's buffers, and
                // closing cannot lose them. No event says so, hence the polling.
                if stream.unacked() == 0 {
                    return Timer::Expired;
                }
                if now >= *until {
                    // The peer never took the tail of what we sent.
                    s.outcome = Outcome::TimedOut;
                    return Timer::Expired;
                }
                return Timer::At((now + LINGER_POLL).min(*until));
            }
        };
        if now < deadline {
            return Timer::At(deadline);
        }
        s.outcome = Outcome::TimedOut;
        Timer::Expired
    }

    fn tick(&mut self, now: Instant, sessions: usize) -> Option<Instant> {
        let idle = self.idle();
        self.versions.tick(now, sessions, idle)
    }

    fn close(&mut self, s: Session, _now: Instant) {
        self.admission.leave(s.peer.ip(), s.admitted);
        if !self.admission.policy.quiet {
            log::finished(&s);
        }
    }

    fn attach(&mut self, registry: &mio::Registry, token: mio::Token, waker: Arc<mio::Waker>) -> io::Result<()> {
        self.versions.attach(registry, token, waker)
    }

    fn event(&mut self, now: Instant) -> Option<Instant> {
        self.versions.event(now)
    }

    fn woken(&mut self, _now: Instant) {
        self.versions.woken();
    }

    fn reload(&mut self) {
        let idle = self.idle();
        self.versions.reload(idle);
    }

    fn pause(&mut self, paused: bool) {
        self.admission.set_paused(paused);
    }

    fn is_idle(&self, _s: &Session) -> bool {
        // A native connection carries one transfer: it is never waiting for another.
        false
    }

    fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Decoded;
    use crate::encoding::xfer::{self as wire, HEADER_LEN, REQUEST_LEN, Status};
    use std::fs::File;
    use std::io::IoSlice;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    /// A peer that accepts `chunk` bytes per write, then says WouldBlock every other call,
    /// like a socket whose buffer fills. It records everything it was sent.
    struct Trickle {
        request: Vec<u8>,
        read_pos: usize,
        chunk: usize,
        blocked: bool,
        /// Never say WouldBlock on writes: only the budget can stop a session.
        never_block: bool,
        /// Answer sendfile with EINVAL, as on a file it cannot handle.
        no_sendfile: bool,
        got: Vec<u8>,
        shut: bool,
    }

    impl Trickle {
        fn new(request: &[u8], chunk: usize) -> Trickle {
            Trickle {
                request: request.to_vec(),
                read_pos: 0,
                chunk,
                blocked: false,
                never_block: false,
                no_sendfile: false,
                got: Vec::new(),
                shut: false,
            }
        }

        fn take(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.blocked && !self.never_block {
                self.blocked = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.blocked = true;
            let n = data.len().min(self.chunk);
            self.got.extend_from_slice(&data[..n]);
            Ok(n)
        }
    }

    impl Conn for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.read_pos == self.request.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Dribble the request one byte at a time.
            buf[0] = self.request[self.read_pos];
            self.read_pos += 1;
            Ok(1)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.take(&all)
        }
        fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.take(buf)
        }
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            if self.no_sendfile {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let mut tmp = vec![0u8; len.min(self.chunk)];
            let n = file.read_at(&mut tmp, offset)?;
            if n == 0 {
                return Ok(0);
            }
            self.take(&tmp[..n])
        }
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
        fn unacked(&self) -> usize {
            0
        }
    }

    fn policy() -> Policy {
        Policy {
            max_clients: 10,
            max_per_ip: 10,
            allow: vec![],
            token: None,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            quiet: true,
        }
    }

    fn serve_through(data: &[u8], chunk: usize, budget: usize, policy: Policy, req: &[u8]) -> (Vec<u8>, Session) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        let snap = Arc::new(Snapshot::open(&path).unwrap());
        let mut server = Server::new(snap, policy);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::now();
        let mut s = server.open(peer, now).expect("admitted or refusing");
        let mut conn = Trickle::new(req, chunk);
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10_000_000, "no progress");
            match server.step(&mut s, &mut conn, budget, now) {
                Step::Done => break,
                // Lingering ends on the peer's EOF or the timer, neither of which this
                // peer provides; what was sent is final.
                Step::Blocked if matches!(s.phase, Phase::Linger { .. }) => break,
                Step::Blocked | Step::Yield => {}
            }
        }
        (conn.got, s)
    }

    fn expected(data: &[u8]) -> Vec<u8> {
        let mut v = wire::encode_ok(data.len() as u64, blake3::hash(data).as_bytes()).to_vec();
        v.extend_from_slice(data);
        v
    }

    fn req() -> [u8; REQUEST_LEN] {
        wire::encode_request(&wire::Request { offset: 0, token: None })
    }

    #[test]
    fn short_writes_and_would_block_deliver_exact_bytes() {
        for size in [
            0usize,
            1,
            47,
            48,
            49,
            4095,
            4096,
            4097,
            65537,
            super::super::MEMORY_MAX as usize,
            super::super::MEMORY_MAX as usize + 1,
            700_001,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for (chunk, budget) in [(1usize, 7usize), (7, 1 << 20), (4096, 10_000), (65536, 1 << 20)] {
                if size > 70_000 && chunk < 4096 {
                    continue; // keep the test fast; small chunks are covered by the small sizes
                }
                let (got, s) = serve_through(&data, chunk, budget, policy(), &req());
                assert!(got == expected(&data), "size {size} chunk {chunk} budget {budget}");
                assert!(matches!(s.outcome, Outcome::Complete), "{:?}", s.outcome);
                assert_eq!(s.body_sent, size as u64);
            }
        }
    }

    #[test]
    fn budget_yields_instead_of_hogging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![9u8; 1 << 20]).unwrap();
        let mut server = Server::new(Arc::new(Snapshot::open(&path).unwrap()), policy());
        let now = Instant::now();
        let mut s = server.open("127.0.0.1:9".parse().unwrap(), now).unwrap();
        // A peer that never blocks: only the budget can stop the session.
        let mut conn = Trickle::new(&req(), usize::MAX);
        conn.never_block = true;
        // The request arrives one byte per read, then WouldBlock.
        while matches!(server.step(&mut s, &mut conn, 64 * 1024, now), Step::Blocked) {}
        let mut yields = 0;
        loop {
            match server.step(&mut s, &mut conn, 64 * 1024, now) {
                Step::Yield => yields += 1,
                Step::Done => break,
                Step::Blocked => panic!("never-blocking peer reported blocked"),
            }
        }
        assert!(yields >= 15, "only {yields} yields for 1 MiB at 64 KiB per turn");
        assert!(conn.got == expected(&vec![9u8; 1 << 20]));
    }

    #[test]
    fn refusals_carry_a_reason() {
        let mut p = policy();
        p.token = Some(*blake3::hash(b"secret").as_bytes());
        let (got, s) = serve_through(b"data", 5, 1 << 20, p.clone(), &req());
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadToken)));
        match wire::decode_response(&got) {
            Ok(Decoded::Done(wire::Response::Refused { status: Status::BadToken, .. }, n)) => {
                assert_eq!(n, got.len())
            }
            other => panic!("{other:?}"),
        }
        let good = wire::encode_request(&wire::Request { offset: 0, token: Some(*blake3::hash(b"secret").as_bytes()) });
        let (got, _) = serve_through(b"data", 5, 1 << 20, p, &good);
        assert_eq!(got, expected(b"data"));

        let mut v2 = req();
        v2[4] = 2;
        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), &v2);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::UnsupportedVersion)));
        assert!(matches!(
            wire::decode_response(&got),
            Ok(Decoded::Done(wire::Response::Refused { status: Status::UnsupportedVersion, .. }, _))
        ));

        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(s.outcome, Outcome::NotXfer));
        assert!(got.is_empty());
    }

    #[test]
    fn offsets_serve_the_tail() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let r = wire::encode_request(&wire::Request { offset: 123_457, token: None });
        let (got, _) = serve_through(&data, 4096, 1 << 20, policy(), &r);
        assert_eq!(&got[..HEADER_LEN], &expected(&data)[..HEADER_LEN]);
        assert!(got[HEADER_LEN..] == data[123_457..]);
        let past = wire::encode_request(&wire::Request { offset: 300_001, token: None });
        let (_, s) = serve_through(&data, 4096, 1 << 20, policy(), &past);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadOffset)));
    }

    #[test]
    fn truncated_file_under_the_copy_fallback_is_cut_not_spun() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![5u8; 1 << 20]).unwrap();
        let mut server = Server::new(Arc::new(Snapshot::open(&path).unwrap()), policy());
        let now = Instant::now();
        let mut s = server.open("127.0.0.1:9".parse().unwrap(), now).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1000).unwrap();
        // A peer whose sendfile is unsupported forces the read+write fallback.
        let mut conn = Trickle::new(&req(), 1 << 16);
        conn.no_sendfile = true;
        conn.never_block = true;
        let mut turns = 0;
        while server.step(&mut s, &mut conn, 1 << 20, now) != Step::Done {
            turns += 1;
            assert!(turns < 1000, "the session never ended");
        }
        assert!(matches!(s.outcome, Outcome::Cut("file shrank")), "{:?}", s.outcome);
    }
}
