//! The event loop: one thread, one `mio::Poll`, a slab of sessions.
//!
//! It knows nothing of the wire format. It accepts connections, asks the [`Service`] for a
//! session for each, and whenever a socket may have work it asks the service to drive that
//! session, which answers blocked (the socket said WouldBlock), yield (out of budget for
//! this turn) or done. It also runs the sessions' deadlines, the signals, the Ctrl+C prompt
//! and the shutdown drain.
//!
//! Rules it keeps:
//! - Readiness is edge-triggered: after an event the session is driven until WouldBlock, or
//!   it would never hear of that socket again. A session that stopped for budget goes back
//!   on the run queue and is driven again before the next blocking poll, after every other
//!   queued session had its turn, so one fast client never starves the rest.
//! - Events only schedule work; sessions are driven and freed after the whole batch has been
//!   read. A stale or spurious event at worst drives a session that finds nothing to do.
//! - Tokens: a session's token is its slab key. The listener, signals and stdin use a
//!   reserved range at the top of the token space, which the slab never reaches.
//! - Per-session failures are the service's business and end only that session; only a
//!   failure of poll itself or of the listener ends the loop.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

mod prompt;
use prompt::{Answer, Prompt};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const STDIN: Token = Token(usize::MAX - 3);
const CONTROL: Token = Token(usize::MAX - 4);
/// A source of the service's own (the served file's watch).
const SERVICE: Token = Token(usize::MAX - 5);
/// Keys at or above this are reserved for the tokens above.
const RESERVED: usize = usize::MAX - 16;

/// Connections accepted per turn before the loop serves what it already has, so a flood of
/// connects cannot stall running transfers.
const ACCEPT_BATCH: usize = 256;
/// The same, for a loop that shares its listening socket with others.
const SHARED_ACCEPT_BATCH: usize = 16;
/// After running out of descriptors, retry accepting this soon even if no client is freed
/// (edge-triggered readiness will not tell us again that the backlog is not empty).
const ACCEPT_RETRY: Duration = Duration::from_millis(200);
/// Sessions' deadlines and the service's tick are looked at least this often while any
/// session exists. With no sessions the loop sleeps until something happens.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Slab slots reserved up front (at most; fewer when `max_sessions` is lower).
///
/// A slab grown by doubling copies itself at every step, and the allocator keeps the
/// copies it left behind resident: the start-up hash raised glibc's mmap threshold, so the
/// smaller copies live on the heap, whose holes it does not give back. At 5,000 stalled
/// clients that was 1 MB, 210 bytes per client on top of the 232-byte slot. A reservation
/// this large is mapped on its own and costs nothing until a slot is used (about 15 MB of
/// address space, no memory), and no copy ever happens under a flood of connects. Past
/// it the slab still grows, by remapping.
const SLAB_RESERVE: usize = 1 << 16;

/// What a session did with its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The socket said WouldBlock: wait for its next readiness event.
    Blocked,
    /// Out of budget for this turn; more to do at once.
    Yield,
    /// Finished (well or not): close it.
    Done,
}

/// A session's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    At(Instant),
    /// Passed: close the session (the service has recorded why).
    Expired,
}

/// What the reactor drives: the per-connection logic of one service.
pub trait Service {
    type Session;
    /// A connection from `peer` was accepted. `None`: answer it at once with `reject`.
    fn open(&mut self, peer: SocketAddr, now: Instant) -> Option<Self::Session>;
    /// Answers a connection that gets no session (declined by `open`, or the loop is out
    /// of room) in one non-blocking go; the reactor closes it right after.
    fn reject(&mut self, stream: &mut TcpStream, peer: SocketAddr, now: Instant);
    /// Make progress on the session's socket, moving at most about `budget` bytes.
    fn drive(&mut self, s: &mut Self::Session, stream: &mut TcpStream, budget: usize, now: Instant) -> Step;
    /// The session's next deadline, or that it has passed. Gets the socket, because some
    /// deadlines depend on it (e.g. whether the peer has acknowledged everything).
    fn timer(&mut self, s: &mut Self::Session, stream: &TcpStream, now: Instant) -> Timer;
    /// Periodic service-wide work while sessions exist; returns when it wants to run next.
    fn tick(&mut self, now: Instant, sessions: usize) -> Option<Instant>;
    /// The session is about to be closed: what it holds of the service's limits is given
    /// back now, before its socket goes, so a peer that sees the close and connects again
    /// at once (to this loop or another) finds the room it left.
    fn release(&mut self, _s: &mut Self::Session) {}
    /// The session is being closed (finished, expired, or the server is exiting); its
    /// socket is closed already.
    fn close(&mut self, s: Self::Session, now: Instant);
    /// SIGHUP.
    fn reload(&mut self);
    /// Called once before the loop runs. The service may register a source of its own
    /// with `token` (its readiness then calls `event`), and keep `waker` to wake this loop
    /// from work it hands off to other threads (it is then told `woken`).
    fn attach(
        &mut self,
        _registry: &mio::Registry,
        _token: Token,
        _waker: std::sync::Arc<mio::Waker>,
    ) -> io::Result<()> {
        Ok(())
    }
    /// The service's own source is ready. Returns when it wants its `tick`, if sooner.
    fn event(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
    /// The waker was used (by the service's own helpers, or to deliver a command).
    fn woken(&mut self, _now: Instant) {}
    /// The Ctrl+C question opened (true) or closed: new connections are still accepted,
    /// and the service tells them to come back later.
    fn pause(&mut self, _paused: bool) {}
    /// Whether the session is between requests (an idle keep-alive connection): it may be
    /// closed when the server drains or runs short of descriptors, and nothing is lost.
    fn is_idle(&self, s: &Self::Session) -> bool;
    /// Transfers in flight in the whole server, for the Ctrl+C and drain messages.
    fn in_flight(&self) -> usize;
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to exit and drained (or the drain deadline passed).
    Drained,
    /// A second interrupt: exit at once.
    Interrupted,
}

/// A command from the controlling reactor to the others when several run (`--threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Drain,
    Exit,
    Reload,
    /// Sent to the controlling loop by another one that has stopped.
    FollowerDone,
}

/// Settings of one reactor.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections held at once (served or being refused); beyond it, new connections are
    /// closed at once. Kept below the descriptor limit.
    pub max_sessions: usize,
    /// Bytes a session may move per turn (nginx's sendfile_max_chunk).
    pub budget: usize,
    pub drain_timeout: Duration,
    /// Whether this reactor owns the signals (and the prompt, when stdin is a terminal).
    pub signals: bool,
    /// Whether Ctrl+C asks on the terminal (stdin is a terminal) instead of draining.
    pub interactive: bool,
    /// Whether other loops accept from the same listening socket (`--threads`).
    pub shared_listener: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Accepting,
    /// Ctrl+C: accepting paused while the question is open.
    Asking,
    /// Paused by the controlling reactor (it is asking).
    Paused,
    Draining {
        deadline: Instant,
    },
}

struct Slot<S> {
    stream: TcpStream,
    session: S,
    /// On the run queue already.
    queued: bool,
}

/// Receives commands from another thread's reactor.
pub struct Remote {
    rx: std::sync::mpsc::Receiver<Command>,
}

/// Sends commands to a reactor on another thread.
#[derive(Clone)]
pub struct Controller {
    tx: std::sync::mpsc::Sender<Command>,
    waker: std::sync::Arc<mio::Waker>,
}

impl Controller {
    pub fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

pub struct Reactor<S: Service> {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    slab: Slab<Slot<S::Session>>,
    run_queue: VecDeque<usize>,
    service: S,
    cfg: Config,
    state: State,
    signals: Option<Signals>,
    remote: Option<Remote>,
    followers: Vec<Controller>,
    /// Followers that have not reported `FollowerDone` yet; the controlling loop waits for
    /// them before it returns, so it keeps handling signals while they drain.
    followers_left: usize,
    prompt: Prompt,
    /// "Pausing new connections" was logged for the current shortage of descriptors.
    accept_pause_logged: bool,
    /// The listener has (or may have) connections waiting.
    accept_pending: bool,
    /// Out of descriptors: do not accept before this.
    accept_retry_at: Option<Instant>,
    next_sweep: Option<Instant>,
    next_tick: Option<Instant>,
    /// Wakes this loop from other threads (commands, the service's helpers). One per Poll.
    waker: std::sync::Arc<mio::Waker>,
}

impl<S: Service> Reactor<S> {
    pub fn new(listener: TcpListener, service: S, cfg: Config) -> io::Result<Reactor<S>> {
        let poll = Poll::new()?;
        let mut listener = listener;
        if cfg.shared_listener {
            listen_exclusively(&poll, &listener, libc::EPOLL_CTL_ADD)?;
        } else {
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        }
        let signals = if cfg.signals {
            let mut s = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            poll.registry().register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), CONTROL)?);
        let mut service = service;
        service.attach(poll.registry(), SERVICE, waker.clone())?;
        Ok(Reactor {
            waker,
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            slab: Slab::with_capacity(cfg.max_sessions.min(SLAB_RESERVE)),
            run_queue: VecDeque::new(),
            service,
            cfg,
            state: State::Accepting,
            signals,
            remote: None,
            followers: Vec::new(),
            followers_left: 0,
            prompt: Prompt::new(),
            accept_pause_logged: false,
            accept_pending: true,
            accept_retry_at: None,
            next_sweep: None,
            next_tick: None,
        })
    }

    /// Makes this reactor controllable from another thread; returns the handle to do it.
    pub fn controller(&mut self) -> io::Result<Controller> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.remote = Some(Remote { rx });
        Ok(Controller { tx, waker: self.waker.clone() })
    }

    /// Reactors on other threads that should follow this one's signals and prompt.
    pub fn set_followers(&mut self, followers: Vec<Controller>) {
        self.followers_left = followers.len();
        self.followers = followers;
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    /// Runs until asked to exit.
    pub fn run(&mut self) -> io::Result<Exit> {
        loop {
            let now = Instant::now();
            let timeout = if !self.run_queue.is_empty() || (self.accept_pending && self.may_accept(now)) {
                Some(Duration::ZERO)
            } else {
                self.next_wakeup().map(|t| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                // A signal arriving during epoll_wait is not an error; its handler already
                // wrote to the self-pipe, which the next poll reports.
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let (mut signal, mut stdin, mut control, mut service) = (false, false, false, false);
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    SIGNALS => signal = true,
                    STDIN => stdin = true,
                    CONTROL => control = true,
                    SERVICE => service = true,
                    Token(key) => {
                        // A key with no slot is a stale event for a freed session: ignore it.
                        if let Some(slot) = self.slab.get_mut(key)
                            && !slot.queued
                        {
                            slot.queued = true;
                            self.run_queue.push_back(key);
                        }
                    }
                }
            }
            if signal && let Some(exit) = self.on_signals(now) {
                return Ok(exit);
            }
            if control {
                self.service.woken(now);
                if let Some(exit) = self.on_commands(now) {
                    return Ok(exit);
                }
            }
            if stdin {
                self.on_stdin(now);
            }
            // Before accepting: a change to the served file seen in this batch applies to
            // the clients accepted in it.
            if service && let Some(t) = self.service.event(now) {
                self.next_tick = Some(self.next_tick.map_or(t, |n| n.min(t)));
            }
            if self.accept_pending && self.may_accept(now) {
                self.accept(now)?;
            }
            self.run_sessions(now);
            if self.next_sweep.is_some_and(|t| now >= t) || self.next_tick.is_some_and(|t| now >= t) {
                self.sweep(now);
            }
            if let State::Draining { deadline } = self.state {
                // A connection between requests has nothing in flight: it goes at once.
                self.close_idle(now);
                if self.slab.is_empty() && self.followers_left == 0 {
                    return Ok(Exit::Drained);
                }
                if now >= deadline {
                    if !self.slab.is_empty() {
                        let n = self.slab.len();
                        crate::say!(
                            "drain deadline passed: closing {n} unfinished transfer{}",
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    self.close_all(now);
                    // The other loops passed the same deadline; make sure they stop.
                    self.broadcast(Command::Exit);
                    return Ok(Exit::Drained);
                }
            }
        }
    }

    /// Connections are accepted while the question is open too: they are told to come
    /// back, rather than left to time out in the backlog.
    fn may_accept(&self, now: Instant) -> bool {
        !matches!(self.state, State::Draining { .. })
            && self.listener.is_some()
            && self.accept_retry_at.is_none_or(|t| now >= t)
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let drain = match self.state {
            State::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let retry = if self.accept_pending && !matches!(self.state, State::Draining { .. }) {
            self.accept_retry_at
        } else {
            None
        };
        [self.next_sweep, self.next_tick, drain, retry].into_iter().flatten().min()
    }

    /// Accepts until WouldBlock (edge-triggered), or until this turn's batch is used up.
    /// A loop sharing the socket takes a smaller batch, so that a burst of connections is
    /// spread over the loops rather than taken by whichever woke first.
    fn accept(&mut self, now: Instant) -> io::Result<()> {
        self.accept_retry_at = None;
        let batch = if self.cfg.shared_listener { SHARED_ACCEPT_BATCH } else { ACCEPT_BATCH };
        for _ in 0..batch {
            let Some(listener) = &self.listener else { return Ok(()) };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept_pause_logged = false;
                    self.admit(stream, peer, now);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.accept_pending = false;
                        return Ok(());
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => match e.raw_os_error() {
                        // Out of descriptors or kernel memory. Spinning on accept would only
                        // fail again; serve the clients we have, and try again when one is
                        // freed or after a short pause.
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            // Idle connections between requests are the first to give
                            // their descriptors back; then accepting may work at once.
                            if self.close_idle(now) > 0 {
                                continue;
                            }
                            if !self.accept_pause_logged {
                                self.accept_pause_logged = true;
                                crate::say!("xfer: accept: {e}; pausing new connections");
                            }
                            self.accept_retry_at = Some(now + ACCEPT_RETRY);
                            return Ok(());
                        }
                        // Errors of one pending connection (aborted before we got to it, or
                        // network errors accept(2) passes on): skip it.
                        Some(
                            libc::ECONNABORTED
                            | libc::EPROTO
                            | libc::EPERM
                            | libc::ENETDOWN
                            | libc::ENOPROTOOPT
                            | libc::EHOSTDOWN
                            | libc::ENONET
                            | libc::EHOSTUNREACH
                            | libc::EOPNOTSUPP
                            | libc::ENETUNREACH
                            | libc::ETIMEDOUT,
                        ) => crate::say!("xfer: accept: {e}; skipped"),
                        _ => return Err(e),
                    },
                },
            }
        }
        // Batch used up: more may be waiting; the loop comes back after serving a turn.
        self.accept_pending = true;
        Ok(())
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.slab.len() >= self.cfg.max_sessions.min(RESERVED) {
            // Over the hard cap even for refusals: an answer in one go, then close.
            self.service.reject(&mut stream, peer, now);
            return;
        }
        let Some(mut session) = self.service.open(peer, now) else {
            self.service.reject(&mut stream, peer, now);
            return;
        };
        // Under load the request is usually there already. Drive the session before
        // registering it: a small file then costs accept, read, write, close, and never
        // touches epoll. Registering afterwards loses nothing, because epoll reports the
        // socket's current readiness when it is added.
        // Only a slice of the budget: up to ACCEPT_BATCH new clients are driven here before
        // the queued ones get their turn, and a small file's response fits in a slice.
        let step = self.service.drive(&mut session, &mut stream, (self.cfg.budget / 8).max(1), now);
        if step == Step::Done {
            self.service.release(&mut session);
            drop(stream);
            self.service.close(session, now);
            return;
        }
        // Order matters: take the key, register with it, and only then insert, so a failed
        // registration leaves nothing behind.
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            crate::say!("xfer: register {peer}: {e}; dropped");
            self.service.release(&mut session);
            drop(stream);
            self.service.close(session, now);
            return;
        }
        let queued = step == Step::Yield;
        entry.insert(Slot { stream, session, queued });
        if queued {
            self.run_queue.push_back(key);
        }
        self.schedule(key, now);
        // The service's periodic work (the served file's change check) runs while any
        // session exists, starting now, not only when the first deadline comes due.
        if self.next_tick.is_none() {
            self.next_tick = Some(now);
        }
    }

    /// Makes sure the sweep comes in time for the session's deadline (a phase change can
    /// bring it closer, e.g. the short linger after the last byte).
    fn schedule(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slab.get_mut(key) else { return };
        let due = match self.service.timer(&mut slot.session, &slot.stream, now) {
            Timer::At(t) => t,
            Timer::Expired => now,
        };
        self.next_sweep = Some(self.next_sweep.map_or(due, |n| n.min(due)));
    }

    /// Gives every queued session one turn.
    fn run_sessions(&mut self, now: Instant) {
        for _ in 0..self.run_queue.len() {
            let Some(key) = self.run_queue.pop_front() else { break };
            let Some(slot) = self.slab.get_mut(key) else { continue };
            if !slot.queued {
                continue;
            }
            slot.queued = false;
            match self.service.drive(&mut slot.session, &mut slot.stream, self.cfg.budget, now) {
                Step::Blocked => {}
                Step::Yield => {
                    slot.queued = true;
                    self.run_queue.push_back(key);
                }
                Step::Done => {
                    self.close(key, now);
                    continue;
                }
            }
            self.schedule(key, now);
        }
    }

    /// Closes expired sessions and works out when the next deadline is due.
    fn sweep(&mut self, now: Instant) {
        self.next_tick = self.service.tick(now, self.slab.len());
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, slot) in self.slab.iter_mut() {
            match self.service.timer(&mut slot.session, &slot.stream, now) {
                Timer::Expired => expired.push(key),
                Timer::At(t) => next = Some(next.map_or(t, |n| n.min(t))),
            }
        }
        for key in expired {
            self.close(key, now);
        }
        self.next_sweep =
            if self.slab.is_empty() { None } else { Some(next.unwrap_or(now + SWEEP_EVERY).min(now + SWEEP_EVERY)) };
    }

    fn close(&mut self, key: usize, now: Instant) {
        // Dropping the stream closes the descriptor, which also removes it from epoll. It
        // goes before the service logs the outcome, so a log line means the socket is gone.
        let Slot { stream, mut session, .. } = self.slab.remove(key);
        self.service.release(&mut session);
        drop(stream);
        self.service.close(session, now);
        if self.accept_retry_at.is_some() {
            // A descriptor was just freed: accepting may work again.
            self.accept_retry_at = None;
            self.accept_pending = true;
        }
    }

    /// Closes the sessions waiting between requests; returns how many.
    fn close_idle(&mut self, now: Instant) -> usize {
        let idle: Vec<usize> =
            self.slab.iter().filter(|(_, s)| self.service.is_idle(&s.session)).map(|(k, _)| k).collect();
        for &key in &idle {
            self.close(key, now);
        }
        idle.len()
    }

    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, now);
        }
    }

    fn broadcast(&self, c: Command) {
        for f in &self.followers {
            f.send(c);
        }
    }

    fn on_signals(&mut self, now: Instant) -> Option<Exit> {
        let pending: Vec<i32> = match &mut self.signals {
            Some(s) => s.pending().collect(),
            None => return None,
        };
        for sig in pending {
            match (sig, self.state) {
                (SIGHUP, _) => {
                    self.service.reload();
                    self.broadcast(Command::Reload);
                }
                (SIGINT, State::Accepting) if self.cfg.interactive && Prompt::can_ask() => self.ask(),
                (SIGINT, State::Asking) | (_, State::Draining { .. }) => {
                    self.prompt.tell("interrupted again: exiting now");
                    self.broadcast(Command::Exit);
                    return Some(Exit::Interrupted);
                }
                (_, _) => {
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    self.drain(now, name);
                }
            }
        }
        None
    }

    fn on_commands(&mut self, now: Instant) -> Option<Exit> {
        let cmds: Vec<Command> = match &self.remote {
            Some(r) => r.rx.try_iter().collect(),
            None => return None,
        };
        for c in cmds {
            match c {
                Command::Pause if self.state == State::Accepting => {
                    self.state = State::Paused;
                    self.service.pause(true);
                }
                Command::Resume if self.state == State::Paused => {
                    self.state = State::Accepting;
                    self.service.pause(false);
                }
                Command::Drain => self.start_drain(now),
                Command::Exit => return Some(Exit::Interrupted),
                Command::Reload => self.service.reload(),
                Command::FollowerDone => self.followers_left = self.followers_left.saturating_sub(1),
                _ => {}
            }
        }
        None
    }

    /// Ctrl+C on a terminal: ask, without blocking the loop. New clients meanwhile are
    /// told to come back. The answer arrives as a readiness event on stdin.
    fn ask(&mut self) {
        self.state = State::Asking;
        self.service.pause(true);
        self.broadcast(Command::Pause);
        let n = self.service.in_flight();
        let status = format!("paused (Ctrl+C): {} in flight; new clients are told to retry", transfers(n));
        if let Err(e) = self.prompt.ask(self.poll.registry(), STDIN, &status) {
            // Cannot wait for an answer: behave as without a terminal.
            crate::say!("xfer: cannot read the answer ({e}); exiting after in-flight transfers");
            self.drain(Instant::now(), "SIGINT");
        }
    }

    fn on_stdin(&mut self, now: Instant) {
        if self.state != State::Asking {
            return;
        }
        match self.prompt.read(self.poll.registry(), STDIN) {
            Answer::Pending => {}
            Answer::Continue => {
                self.prompt.tell("resumed: accepting new clients again");
                self.state = State::Accepting;
                self.accept_pending = true;
                self.service.pause(false);
                self.broadcast(Command::Resume);
            }
            Answer::Exit => self.drain(now, "exit requested"),
            Answer::Eof => self.drain(now, "end of input"),
            Answer::Failed(e) => {
                crate::say!("xfer: reading the answer: {e}; exiting after in-flight transfers");
                self.drain(now, "SIGINT");
            }
        }
    }

    /// Stops accepting for good and lets in-flight transfers finish within the deadline.
    fn drain(&mut self, now: Instant, why: &str) {
        let n = self.service.in_flight();
        if n == 0 {
            self.prompt.tell(&format!("{why}: no transfers in flight; exiting"));
        } else {
            self.prompt.tell(&format!(
                "{why}: no longer accepting; exiting when {} in flight {} (at most {} s)",
                transfers(n),
                if n == 1 { "finishes" } else { "finish" },
                self.cfg.drain_timeout.as_secs_f64(),
            ));
        }
        self.broadcast(Command::Drain);
        self.start_drain(now);
    }

    fn start_drain(&mut self, now: Instant) {
        if matches!(self.state, State::Draining { .. }) {
            return;
        }
        self.prompt.close(self.poll.registry());
        // Closing the listener makes new connects fail at once instead of waiting in a
        // backlog nobody will accept from.
        if let Some(mut l) = self.listener.take() {
            if self.cfg.shared_listener {
                // Explicitly: the other loops' copies keep the socket (and, without this,
                // its registration here) alive.
                let _ = listen_exclusively(&self.poll, &l, libc::EPOLL_CTL_DEL);
            } else {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        self.service.pause(false);
        self.state = State::Draining { deadline: now + self.cfg.drain_timeout };
    }
}

/// Registers (or removes) a listening socket shared by several loops with EPOLLEXCLUSIVE,
/// as nginx does: a new connection wakes one waiting loop, not all of them, and a loop
/// busy serving leaves the next connection to an idle one. mio has no word for the flag,
/// so this one registration goes to epoll directly, under the token mio reports it by.
/// Level-triggered: a loop that stops short of WouldBlock is told again.
fn listen_exclusively(poll: &Poll, l: &TcpListener, op: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32, u64: LISTENER.0 as u64 };
    // SAFETY: both descriptors are open for the call; `ev` is a valid epoll_event.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), op, l.as_raw_fd(), &mut ev) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// "1 transfer", "3 transfers".
fn transfers(n: usize) -> String {
    format!("{n} transfer{}", if n == 1 { "" } else { "s" })
}

/// A non-blocking listener on `addr`. IPv6 unspecified is made dual-stack explicitly
/// (the system default may say otherwise).
///
/// Never SO_REUSEPORT: with it, a second server on the same port would bind too and take
/// a share of the clients, serving them another file. Several loops of one server share
/// this one socket instead (`try_clone`); each accepts until WouldBlock.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // A restarted server must not wait for old connections' TIME_WAIT to bind again.
    // (On Linux this never lets two listeners share a port.)
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The socket addresses a target names, in the order the system prefers: an address as it
/// is, a zone turned into its interface number, a name looked up. `default_port` applies
/// when the target names none.
pub fn resolve(target: &crate::encoding::target::Target, default_port: u16) -> io::Result<Vec<SocketAddr>> {
    use crate::encoding::target::Host;
    use std::net::{SocketAddrV6, ToSocketAddrs};
    let port = target.port.unwrap_or(default_port);
    match &target.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Scoped(v6, zone) => {
            let scope = match zone.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let name = std::ffi::CString::new(zone.as_str()).map_err(io::Error::other)?;
                    // SAFETY: name is a valid NUL-terminated string for the call.
                    unsafe { libc::if_nametoindex(name.as_ptr()) }
                }
            };
            if scope == 0 {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("no network interface `{zone}`")));
            }
            Ok(vec![SocketAddr::V6(SocketAddrV6::new(*v6, port, 0, scope))])
        }
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = (name.as_str(), port).to_socket_addrs()?.collect();
            if addrs.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "the name has no addresses"));
            }
            Ok(addrs)
        }
    }
}

/// Raises the soft open-file limit to the hard limit, as servers that hold many
/// connections do; returns the limit now in force.
pub fn raise_nofile_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let want = lim.rlim_max.min(1 << 20);
    if want > lim.rlim_cur {
        let new = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max };
        // SAFETY: new is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            lim.rlim_cur = want;
        }
    }
    lim.rlim_cur as usize
}
