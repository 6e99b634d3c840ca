//! A connection's life, from accept to close, and the [`Server`] the reactor drives.
//!
//! A [`Session`] is a phase and a few cursors. Its first bytes say which protocol it
//! speaks (native or HTTP; anything else is closed). The request goes to that protocol,
//! which decides the reply (a head to render and a byte range of the snapshot); the send
//! path delivers it; one log line per response records how it ended. An HTTP connection
//! then waits for its next request; a native one lingers and closes.
//!
//! Owns: the phases and their deadlines, and the glue between admission, the served file's
//! versions, the protocols and the send path. Must never know a wire format's bytes (the
//! protocol modules render them) nor how replies reach the socket (the send path does).
//!
//! Invariants: a session in `Send` never has more than its reply left to send; every byte
//! of a reply comes from one snapshot: the one current when the session opened, or for a
//! later request on a kept-alive HTTP connection, the one current when it arrived; a
//! session is counted in the limits from `open` to `close`, exactly once; requests are read only while no reply is
//! being sent, so pipelined requests wait in the kernel, not in our memory.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::admit::{Admission, Entry, Limits, Policy, Refusal, canonical};
use super::reload::{SharedVersions, Versions};
use super::send::{self, AfterLast, Conn, Delivery, HEAD_MAX, LINGER_POLL, Sent};
use super::snapshot::Snapshot;
use super::watch::Watch;
use super::{http, log, xfer};
use crate::encoding::sniff::{self, Protocol};
use crate::reactor::{Service, Step, Timer};

/// A client being refused gets at most this long to send its request (whose bytes we read
/// only so that closing does not reset it).
const REFUSE_DEADLINE: Duration = Duration::from_secs(2);

/// How a response (or a connection without one) ended, for the log line.
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
    /// Neither of our protocols.
    NotOurs,
    Error(io::Error),
}

/// What a reply begins with, in its protocol. Rendered on the stack each time it is
/// (re)sent, from the reply and the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Xfer(xfer::Head),
    Http(http::Head),
}

impl Head {
    fn render(&self, snap: &Snapshot, cfg: &http::Config, out: &mut [u8]) -> usize {
        match self {
            Head::Xfer(h) => xfer::render(h, snap, out),
            Head::Http(h) => http::render(h, snap, cfg, out),
        }
    }

    /// The refusal this head carries, if it is one.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Head::Xfer(xfer::Head::Refused { why, .. }) => Some(*why),
            Head::Http(http::Head { kind: http::Kind::Refused(why), .. }) => Some(*why),
            _ => None,
        }
    }

    /// Whether the connection ends after this reply.
    fn closes(&self) -> bool {
        match self {
            Head::Xfer(_) => true,
            Head::Http(h) => h.close,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// The first bytes, until they say which protocol. A refusal decided at accept time
    /// (not allowed, busy) waits here and in the request phases: the request is read
    /// first so closing never resets the peer, and it is answered in its own protocol.
    Start { first: [u8; sniff::MAX_METHOD], got: u8, refuse: Option<Refusal> },
    /// Reading the native request.
    Xfer { incoming: xfer::Incoming, refuse: Option<Refusal> },
    /// Challenged (the nonce is out): reading the client's proof.
    Proof { incoming: xfer::Incoming, challenge: Box<xfer::Challenge> },
    /// Waiting for (or reading) an HTTP request head; its bytes are in `Session::http`.
    Http { refuse: Option<Refusal> },
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
    /// When the connection (native) or the current response (HTTP) began.
    pub(super) started: Instant,
    /// When the current request began to arrive (or the wait for it began).
    request_since: Instant,
    last_progress: Instant,
    pub(super) body_sent: u64,
    /// Counted against the client limits; otherwise counted as a refusal in progress.
    admitted: bool,
    /// Still counted (as admitted or refusing); given back once, when its work is done.
    counted: bool,
    pub(super) outcome: Outcome,
    /// An HTTP connection's state between requests, and what its response's log line says.
    http: Option<Box<HttpState>>,
}

/// What an HTTP connection keeps beside its phase.
struct HttpState {
    conn: http::Conn,
    /// The log line's request part, for the response in progress.
    log: Option<http::Log>,
}

impl Session {
    fn new(snap: Arc<Snapshot>, peer: SocketAddr, now: Instant, refuse: Option<Refusal>) -> Session {
        Session {
            snap,
            phase: Phase::Start { first: [0; sniff::MAX_METHOD], got: 0, refuse },
            peer,
            started: now,
            request_since: now,
            last_progress: now,
            body_sent: 0,
            admitted: refuse.is_none(),
            counted: true,
            outcome: Outcome::Unfinished,
            http: None,
        }
    }

    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    pub fn body_sent(&self) -> u64 {
        self.body_sent
    }

    /// The served file's name, for log lines.
    pub(super) fn snap_name(&self) -> &[u8] {
        self.snap.name()
    }

    /// Starts sending a reply: `head`, then `body` of the snapshot.
    fn reply(&mut self, head: Head, body: std::ops::Range<u64>, cfg: &http::Config, now: Instant) {
        let mut buf = [0u8; HEAD_MAX];
        let head_len = head.render(&self.snap, cfg, &mut buf);
        self.phase = Phase::Send { head, d: Delivery::new(head_len, body) };
        self.last_progress = now;
        self.body_sent = 0;
    }

    /// Whether this is an HTTP connection waiting, with nothing pending, for a next
    /// request: closing it loses nothing.
    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Http { refuse: None })
            && self.http.as_ref().is_some_and(|h| h.conn.served > 0 && !h.conn.has_pending())
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
    http: http::Config,
    /// Where requests are read into: one per event loop, never per client.
    inbox: Box<[u8]>,
    /// Reused by the read+write fallback when sendfile is unavailable; never per client.
    scratch: Vec<u8>,
    /// Why `open` just declined a connection, for the `reject` that follows.
    rejecting: Option<Refusal>,
}

impl Server {
    pub fn new(snapshot: Arc<Snapshot>, policy: Policy) -> Server {
        let http = http::Config { max_age: 10, fallback_host: "localhost".into(), links: None };
        Server::with_shared(&Shared::new(snapshot), policy, http)
    }

    /// A server whose snapshot and limits are shared with other event loops.
    pub fn with_shared(shared: &Shared, policy: Policy, http: http::Config) -> Server {
        Server {
            versions: Versions::new(&shared.versions),
            admission: Admission::new(policy, shared.limits.clone()),
            http,
            inbox: vec![0; crate::encoding::http::MAX_HEAD + 1].into_boxed_slice(),
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
                Phase::Start { first, got, refuse } => {
                    let refuse = *refuse;
                    // Bytes kept from an earlier read that did not decide go first.
                    let kept = *got as usize;
                    self.inbox[..kept].copy_from_slice(&first[..kept]);
                    let n = match conn.read(&mut self.inbox[kept..]) {
                        Ok(0) => return finish(s, Outcome::ClosedByPeer),
                        Ok(n) => n,
                        Err(e) => match io_error(s, e) {
                            Some(step) => return step,
                            None => continue,
                        },
                    };
                    let data = &self.inbox[..kept + n];
                    match sniff::sniff(data) {
                        None => {
                            first[..data.len()].copy_from_slice(data);
                            *got = data.len() as u8;
                        }
                        Some(Protocol::Unknown) => return finish(s, Outcome::NotOurs),
                        Some(Protocol::Xfer) => {
                            let mut incoming = xfer::Incoming::default();
                            incoming.seed(data);
                            s.phase = Phase::Xfer { incoming, refuse };
                            if let Some(step) = self.on_xfer_bytes(s, now) {
                                return step;
                            }
                        }
                        Some(Protocol::Http) => {
                            s.http = Some(Box::new(HttpState { conn: http::Conn::new(), log: None }));
                            s.phase = Phase::Http { refuse };
                            self.on_http_bytes(s, Some(kept + n), now);
                        }
                    }
                }
                Phase::Xfer { incoming, .. } | Phase::Proof { incoming, .. } => {
                    let n = match conn.read(incoming.spare()) {
                        Ok(0) => return finish(s, Outcome::ClosedByPeer),
                        Ok(n) => n,
                        Err(e) => match io_error(s, e) {
                            Some(step) => return step,
                            None => continue,
                        },
                    };
                    incoming.filled(n);
                    if let Some(step) = self.on_xfer_bytes(s, now) {
                        return step;
                    }
                }
                Phase::Http { .. } => {
                    let pending = s.http.as_ref().is_some_and(|h| h.conn.has_pending());
                    // Pipelined requests already here are answered before reading more.
                    if pending && self.on_http_bytes(s, Some(0), now) {
                        continue;
                    }
                    let room = s.http.as_ref().map_or(0, |h| h.conn.room());
                    let n = match conn.read(&mut self.inbox[..room]) {
                        Ok(0) => return self.http_eof(s),
                        Ok(n) => n,
                        Err(e) => match io_error(s, e) {
                            Some(step) => return self.http_stop(s, step),
                            None => continue,
                        },
                    };
                    if !pending {
                        s.request_since = now;
                    }
                    self.on_http_bytes(s, Some(n), now);
                }
                Phase::Send { head, d } => {
                    let before = d.pos;
                    let (snap, cfg) = (&s.snap, &self.http);
                    let head_ref = &*head;
                    let r = send::send(
                        conn,
                        d,
                        &|out| head_ref.render(snap, cfg, out),
                        snap,
                        &mut budget,
                        &mut self.scratch,
                    );
                    s.body_sent = d.body_sent();
                    if d.pos != before {
                        s.last_progress = now;
                    }
                    match r {
                        Sent::Done => {
                            if let Head::Xfer(xfer::Head::Challenge(ch)) = head {
                                // The nonce is out; the proof comes next (or came already,
                                // with the request: then it is answered without a read).
                                let mut challenge = ch.clone();
                                let incoming = std::mem::take(&mut challenge.early);
                                s.phase = Phase::Proof { incoming, challenge };
                                if let Some(step) = self.on_xfer_bytes(s, now) {
                                    return step;
                                }
                                continue;
                            }
                            s.outcome = match head.refusal() {
                                Some(why) => Outcome::Refused(why),
                                None => Outcome::Complete,
                            };
                            if head.closes() {
                                return self.after_last_byte(s, conn, now);
                            }
                            // A kept-alive HTTP connection: log this response, wait for the next.
                            self.log_response(s);
                            s.phase = Phase::Http { refuse: None };
                            s.outcome = Outcome::Unfinished;
                            s.started = now;
                            s.request_since = now;
                            s.body_sent = 0;
                        }
                        Sent::Blocked => return Step::Blocked,
                        Sent::Yield => return Step::Yield,
                        Sent::Cut(why) => return finish(s, Outcome::Cut(why)),
                        Sent::Closed => return finish(s, Outcome::ClosedByPeer),
                        Sent::Failed(e) => return finish(s, Outcome::Error(e)),
                    }
                }
                Phase::Linger { discarded, .. } => {
                    return if send::linger(conn, discarded) { Step::Done } else { Step::Blocked };
                }
            }
        }
    }

    /// The native request (or proof) may be whole: decide and start the reply.
    /// `Some(step)`: the session is done (not our protocol after all).
    fn on_xfer_bytes(&mut self, s: &mut Session, now: Instant) -> Option<Step> {
        let ip = s.peer.ip();
        let (head, body) = match &s.phase {
            Phase::Xfer { incoming, refuse } => match incoming.parse() {
                xfer::Parsed::NeedMore => return None,
                xfer::Parsed::NotOurs => return Some(finish(s, Outcome::NotOurs)),
                xfer::Parsed::Malformed(why, version) => (xfer::Head::Refused { why, version }, 0..0),
                xfer::Parsed::Whole(req) => match xfer::decide(&req, *refuse, &s.snap, &self.admission) {
                    xfer::Decision::Reply(head, body) => (head, body),
                    xfer::Decision::Challenge(mut ch) => {
                        ch.early = incoming.early();
                        (xfer::Head::Challenge(ch), 0..0)
                    }
                },
            },
            Phase::Proof { incoming, challenge } => match incoming.parse_proof() {
                xfer::Parsed::NeedMore => return None,
                xfer::Parsed::Whole(p) => xfer::decide_proof(&p, challenge, &s.snap, &mut self.admission, ip, now),
                _ => (xfer::Head::Refused { why: Refusal::BadRequest, version: challenge.version }, 0..0),
            },
            _ => return None,
        };
        s.reply(Head::Xfer(head), body, &self.http, now);
        None
    }

    /// Feeds HTTP bytes (the first `fresh` bytes of the inbox; `Some(0)`: just look at what
    /// is pending) and starts the reply when a request is whole. True if one started.
    fn on_http_bytes(&mut self, s: &mut Session, fresh: Option<usize>, now: Instant) -> bool {
        let Phase::Http { refuse } = s.phase else { return false };
        // Each request on a kept-alive connection is answered from the file as it is now,
        // not as it was when the connection opened (a cache in front keeps its upstream
        // connections for a long time); nothing of the last reply is in flight here.
        let current = self.versions.current();
        if !Arc::ptr_eq(current, &s.snap) {
            s.snap = current.clone();
        }
        let refuse = refuse.or_else(|| s.snap.is_stale().then_some(Refusal::Changing));
        s.snap.want_sha256();
        let Some(state) = s.http.as_mut() else { return false };
        let mut ctx = http::Ctx {
            snap: &s.snap,
            admission: &mut self.admission,
            ip: s.peer.ip(),
            refuse,
            now: SystemTime::now(),
            when: now,
        };
        let fresh = &self.inbox[..fresh.unwrap_or(0)];
        match state.conn.feed(fresh, &mut ctx) {
            http::Fed::NeedMore => false,
            http::Fed::Reply(reply) => {
                state.log = Some(reply.log);
                s.started = now;
                s.reply(Head::Http(reply.head), reply.body, &self.http, now);
                true
            }
        }
    }

    /// The peer closed an HTTP connection while we waited for a request.
    fn http_eof(&mut self, s: &mut Session) -> Step {
        let quiet = s.http.as_ref().is_some_and(|h| h.conn.served > 0 && !h.conn.has_pending());
        s.outcome = if quiet { Outcome::Complete } else { Outcome::ClosedByPeer };
        Step::Done
    }

    /// An HTTP connection's read failed between requests: an idle one goes quietly.
    fn http_stop(&mut self, s: &mut Session, step: Step) -> Step {
        if step == Step::Done && s.is_idle() {
            s.outcome = Outcome::Complete;
        }
        step
    }

    /// Logs an HTTP response that ended (well or not).
    fn log_response(&self, s: &mut Session) {
        let log = s.http.as_mut().and_then(|h| h.log.take());
        if let (Some(log), Phase::Send { head: Head::Http(head), .. }) = (log, &s.phase)
            && !self.admission.policy.quiet
        {
            log::http_response(s, &log, head);
        }
    }

    /// Gives back what the session holds of the limits (once).
    fn release(&mut self, s: &mut Session) {
        if std::mem::take(&mut s.counted) {
            self.admission.leave(s.peer.ip(), s.admitted);
        }
    }

    /// The last byte is out: close, or linger until the peer has it all. A lingering
    /// connection no longer counts against the limits: its transfer is over.
    fn after_last_byte<C: Conn>(&mut self, s: &mut Session, conn: &mut C, now: Instant) -> Step {
        self.log_response(s);
        self.release(s);
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

/// What a failed read of a request means for the session: wait for readiness, end it, or
/// (`None`, interrupted) try again now.
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
        // Read what the client already sent: it says which protocol to answer in, and a
        // close with unread input would be a reset that can destroy the answer.
        let mut got = 0;
        for _ in 0..4 {
            match Read::read(stream, &mut self.inbox[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        let snap = self.versions.current().clone();
        let mut head = [0u8; HEAD_MAX];
        let n = match sniff::sniff(&self.inbox[..got]) {
            Some(Protocol::Http) => {
                let reply = http::refusal(why, SystemTime::now());
                http::render(&reply, &snap, &self.http, &mut head)
            }
            Some(Protocol::Unknown) => 0,
            // Nothing yet (or the native magic): answer natively, in the version of the
            // request when it is here, else in version 1, which every client reads.
            _ => {
                let version = self.inbox.get(4).copied().filter(|v| got > 4 && (1..=2).contains(v)).unwrap_or(1);
                xfer::render(&xfer::Head::Refused { why, version }, &snap, &mut head)
            }
        };
        // A fresh socket's send buffer takes these few bytes whole; if not, the client
        // sees the connection close, which is all we can afford under a flood.
        let _ = Write::write(stream, &head[..n]);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if !self.admission.policy.quiet {
            log::refused(canonical(peer), why);
        }
    }

    fn drive(&mut self, s: &mut Session, stream: &mut mio::net::TcpStream, budget: usize, now: Instant) -> Step {
        self.step(s, stream, budget, now)
    }

    fn timer(&mut self, s: &mut Session, stream: &mio::net::TcpStream, now: Instant) -> Timer {
        let policy = &self.admission.policy;
        let request = |refuse: Option<Refusal>| match refuse {
            Some(_) => policy.request_timeout.min(REFUSE_DEADLINE),
            None => policy.request_timeout,
        };
        let deadline = match &s.phase {
            Phase::Start { refuse, .. } | Phase::Xfer { refuse, .. } => s.started + request(*refuse),
            Phase::Proof { .. } => s.started + policy.request_timeout,
            Phase::Http { refuse } => {
                if s.is_idle() {
                    s.request_since + http::KEEPALIVE_IDLE
                } else {
                    s.request_since + request(*refuse)
                }
            }
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
        // An idle kept-alive connection that times out ends quietly.
        s.outcome = if s.is_idle() { Outcome::Complete } else { Outcome::TimedOut };
        Timer::Expired
    }

    fn tick(&mut self, now: Instant, sessions: usize) -> Option<Instant> {
        let idle = self.idle();
        self.versions.tick(now, sessions, idle)
    }

    fn release(&mut self, s: &mut Session) {
        Server::release(self, s);
    }

    fn close(&mut self, mut s: Session, _now: Instant) {
        self.release(&mut s);
        if self.admission.policy.quiet {
            return;
        }
        match (&s.phase, s.http.is_some()) {
            // A response cut short (or one whose linger ended): its line.
            (Phase::Send { .. }, true) => self.log_response(&mut s),
            // After a logged response, or idle between requests: nothing more to say.
            (Phase::Linger { .. }, true) => {}
            (Phase::Http { .. }, true) if matches!(s.outcome, Outcome::Complete) => {}
            _ => log::finished(&s),
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

    fn is_idle(&self, s: &Session) -> bool {
        s.is_idle()
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
        /// Reads give everything sent so far at once, as when a client writes its request
        /// and proof in one go (normally: one byte per read).
        gulp: bool,
        /// The unsent limit the send path asked for, if any.
        limited: Option<u32>,
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
                gulp: false,
                limited: None,
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
            // Dribble the request one byte at a time, or hand over all of it.
            let n = if self.gulp { buf.len().min(self.request.len() - self.read_pos) } else { 1 };
            buf[..n].copy_from_slice(&self.request[self.read_pos..self.read_pos + n]);
            self.read_pos += n;
            Ok(n)
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
        fn limit_unsent(&mut self, bytes: u32) {
            self.limited = Some(bytes);
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
        serve_through_with(data, chunk, budget, policy, req, false)
    }

    fn serve_through_with(
        data: &[u8],
        chunk: usize,
        budget: usize,
        policy: Policy,
        req: &[u8],
        gulp: bool,
    ) -> (Vec<u8>, Session) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        let snap = Arc::new(Snapshot::open(&path).unwrap());
        let mut server = Server::new(snap, policy);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::now();
        let mut s = server.open(peer, now).expect("admitted or refusing");
        let mut conn = Trickle::new(req, chunk);
        conn.gulp = gulp;
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
        wire::encode_request(&wire::Request::v1(0, None))
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
    fn a_proof_sent_with_the_request_is_answered_without_another_read() {
        let mut p = policy();
        p.token = Some(Arc::new(super::super::admit::Token::new(b"secret")));
        let mut bytes = wire::encode_request(&wire::Request::authenticated(0, [5; 32])).to_vec();
        // A proof made before the nonce was known cannot be right, but it must be heard.
        bytes.extend_from_slice(&wire::encode_proof(&wire::Proof { offset: 0, proof: [6; 32] }));
        let (got, s) = serve_through_with(b"data", usize::MAX, 1 << 20, p, &bytes, true);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadToken)), "{:?}", s.outcome);
        let Ok(Decoded::Done(wire::Response::Challenge { .. }, n)) = wire::decode_response(&got) else {
            panic!("no challenge first: {got:?}")
        };
        assert!(matches!(
            wire::decode_response(&got[n..]),
            Ok(Decoded::Done(wire::Response::Refused { status: Status::BadToken, .. }, _))
        ));
    }

    #[test]
    fn refusals_carry_a_reason() {
        let mut p = policy();
        p.token = Some(Arc::new(super::super::admit::Token::new(b"secret")));
        // No token at all, in version 2: a plain "missing or wrong token".
        let v2 = wire::encode_request(&wire::Request::new(0));
        let (got, s) = serve_through(b"data", 5, 1 << 20, p.clone(), &v2);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadToken)), "{:?}", s.outcome);
        match wire::decode_response(&got) {
            Ok(Decoded::Done(wire::Response::Refused { status: Status::BadToken, .. }, n)) => {
                assert_eq!(n, got.len())
            }
            other => panic!("{other:?}"),
        }
        // Version 1's token is its digest, which anyone who saw it can replay: a server
        // with a token takes it only by challenge-response, and refuses even the right one.
        let v1 = wire::encode_request(&wire::Request::v1(0, Some(*blake3::hash(b"secret").as_bytes())));
        // Status 4 all the same, with a reason that says what to do.
        for v1 in [v1, req()] {
            let (got, s) = serve_through(b"data", 5, 1 << 20, p.clone(), &v1);
            assert!(matches!(s.outcome, Outcome::Refused(Refusal::TokenNeedsV2)), "{:?}", s.outcome);
            match wire::decode_response(&got) {
                Ok(Decoded::Done(wire::Response::Refused { status: Status::BadToken, reason, .. }, _)) => {
                    assert!(reason.contains("upgrade"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }

        let mut v3 = req();
        v3[4] = 3;
        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), &v3);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::UnsupportedVersion)));
        assert!(matches!(
            wire::decode_response(&got),
            Ok(Decoded::Done(wire::Response::Refused { status: Status::UnsupportedVersion, .. }, _))
        ));

        // A TLS opener is neither protocol: closed unanswered.
        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), &[0x16, 3, 1, 0, 5]);
        assert!(matches!(s.outcome, Outcome::NotOurs));
        assert!(got.is_empty());
    }

    #[test]
    fn http_requests_dribbled_byte_by_byte_get_their_replies() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let req = b"GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n";
        let (got, s) = serve_through(&data, 4096, 1 << 20, policy(), req);
        assert!(matches!(s.outcome, Outcome::Complete), "{:?}", s.outcome);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Range: bytes 10-19/300000\r\n"), "{text}");
        assert!(got.ends_with(&data[10..20]));
        // No Host on HTTP/1.1: 400, and the connection ends.
        let (got, _) = serve_through(&data, 4096, 1 << 20, policy(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(got.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&got));
    }

    #[test]
    fn offsets_serve_the_tail() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let r = wire::encode_request(&wire::Request::v1(123_457, None));
        let (got, _) = serve_through(&data, 4096, 1 << 20, policy(), &r);
        assert_eq!(&got[..HEADER_LEN], &expected(&data)[..HEADER_LEN]);
        assert!(got[HEADER_LEN..] == data[123_457..]);
        let past = wire::encode_request(&wire::Request::v1(300_001, None));
        let (_, s) = serve_through(&data, 4096, 1 << 20, policy(), &past);
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadOffset)));
    }

    #[test]
    fn large_bodies_cap_the_unsent_backlog_small_ones_skip_it() {
        for (size, want) in [(2 << 20, Some(super::super::send::UNSENT_MAX)), (300_000, None)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![3u8; size]).unwrap();
            let mut server = Server::new(Arc::new(Snapshot::open(&path).unwrap()), policy());
            let now = Instant::now();
            let mut s = server.open("127.0.0.1:9".parse().unwrap(), now).unwrap();
            let mut conn = Trickle::new(&req(), 1 << 20);
            conn.never_block = true;
            while server.step(&mut s, &mut conn, 1 << 20, now) != Step::Done {}
            assert_eq!(conn.limited, want, "a {size}-byte body");
            assert!(conn.got == expected(&vec![3u8; size]));
        }
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
