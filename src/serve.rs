//! The served file and the per-client state machine.
//!
//! A [`Snapshot`] is the file as it was when it was opened: its size, its BLAKE3 digest, the
//! response header every client gets, and either the bytes themselves (small files) or the
//! one open descriptor that every client's `sendfile(2)` reads from at its own offset. No
//! client owns a buffer; a [`Session`] is a phase and a few cursors.
//!
//! [`Server`] is the reactor's [`Service`]: it admits connections (allow list, client and
//! per-address limits, token), drives sessions through their phases, enforces their
//! deadlines, notices the file changing under it, and logs one line per finished transfer.
//!
//! Invariants: a session in `Send` has `pos <= end`; bytes `pos..end` of the response
//! (header then body from the requested offset) are still owed. Every byte leaves either
//! from the snapshot's memory or from its descriptor, so two clients never see different
//! versions within one snapshot, and a snapshot seen to change is never finished as good.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::encoding::{self, DecodeError, Decoded, Digest, HEADER_LEN, MAX_REASON, REQUEST_LEN, Status};
use crate::reactor::{Service, Step, Timer};

/// Files up to this size are held in memory: header and body then leave in one `writev`,
/// and the snapshot is immune to the file changing on disk.
pub const MEMORY_MAX: u64 = 256 * 1024;

/// `sendfile(2)` moves at most this many bytes per call on Linux.
const SENDFILE_MAX: usize = 0x7fff_f000;

/// After the last byte, how long we keep discarding what the peer sends before closing.
const LINGER: Duration = Duration::from_secs(2);
/// ... and how much of it we are willing to read.
const LINGER_MAX_BYTES: u32 = 256 * 1024;
/// While lingering, how often we look whether the peer has acknowledged everything.
const LINGER_POLL: Duration = Duration::from_millis(100);

/// A client being refused gets at most this long to send its request (whose bytes we read
/// only so that closing does not reset it).
const REFUSE_DEADLINE: Duration = Duration::from_secs(2);
/// Refusals in progress per address; past it, that address's connections are closed at
/// once, so one address cannot fill the slots kept for answering "busy".
const REFUSING_PER_IP: u32 = 8;
/// New clients look at the served file at most this often, so the first client after an
/// idle change gets the new version.
const OPEN_CHECK_EVERY: Duration = Duration::from_millis(100);
/// After a failed reload (the file missing, or changing while hashed), wait this long
/// before the next automatic attempt: hashing runs on the event loop.
const RELOAD_BACKOFF: Duration = Duration::from_secs(1);

/// How often, at most, the served file is checked for in-place changes while clients are
/// being served from its descriptor.
const CHANGE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why the input file cannot be served.
#[derive(Debug, Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: the file kept changing while it was being read")]
    Unstable { path: PathBuf },
}

/// What identifies one version of a file's contents, as far as `fstat` can tell. Not the
/// ctime: replacing the file by rename unlinks the old inode, which moves its ctime while
/// its bytes stay exactly as they were, and those are what in-flight clients still get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    size: u64,
    mtime: (i64, i64),
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity { size: m.size(), mtime: (m.mtime(), m.mtime_nsec()) }
    }
}

/// One version of the served file, shared by every client that started on it.
pub struct Snapshot {
    path: PathBuf,
    file: File,
    size: u64,
    digest: Digest,
    header: [u8; HEADER_LEN],
    memory: Option<Box<[u8]>>,
    identity: Identity,
    /// Set once the file is seen to differ from this snapshot on disk. Clients being served
    /// from the descriptor are then cut rather than handed mixed bytes.
    changed: AtomicBool,
}

impl Snapshot {
    /// Opens, checks and hashes the file. Refuses anything but a regular file before opening
    /// it (opening a FIFO would block), and re-reads if the file changes while being hashed.
    pub fn open(path: &Path) -> Result<Snapshot, InputError> {
        let open_err = |source| InputError::Open { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        check_regular(path, &meta)?;
        // O_NONBLOCK: should the path be swapped for a FIFO between the check and the open,
        // the open still returns at once; the fstat below then refuses it.
        let file =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err)?;
        for _ in 0..5 {
            let before = file.metadata().map_err(open_err)?;
            check_regular(path, &before)?;
            let identity = Identity::of(&before);
            let Some((digest, memory)) = hash_file(&file, identity.size).map_err(open_err)? else {
                continue; // shrank while being read
            };
            let after = Identity::of(&file.metadata().map_err(open_err)?);
            if after != identity {
                continue;
            }
            return Ok(Snapshot {
                path: path.to_path_buf(),
                header: encoding::encode_ok(identity.size, &digest),
                file,
                size: identity.size,
                digest,
                memory,
                identity,
                changed: AtomicBool::new(false),
            });
        }
        Err(InputError::Unstable { path: path.to_path_buf() })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the bytes are held in memory (small files) rather than sent from the descriptor.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Whether the file was seen to change on disk since this snapshot was taken.
    pub fn is_changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// Whether this snapshot can no longer be served: it is sent from a descriptor, and the
    /// file behind it changed. (A snapshot held in memory stays exact whatever happens.)
    pub fn is_stale(&self) -> bool {
        self.is_changed() && !self.in_memory()
    }

    /// Compares the open descriptor with the snapshot; marks and reports a change.
    /// A snapshot held in memory cannot go stale, but a change still means new clients
    /// should get a new snapshot, so it is reported all the same.
    pub fn check_changed(&self) -> bool {
        if self.is_changed() {
            return true;
        }
        let now = match self.file.metadata() {
            Ok(m) => Identity::of(&m),
            Err(_) => return false,
        };
        if now != self.identity {
            self.changed.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), InputError> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(InputError::NotRegular { path: path.to_path_buf(), kind })
}

/// Hashes `size` bytes of `file` with positional reads. Returns `None` if the file turned
/// out shorter than `size` (it is being truncated), and the bytes themselves when they are
/// few enough to keep in memory.
/// A digest, and the bytes when they are kept in memory.
type Hashed = (Digest, Option<Box<[u8]>>);

fn hash_file(file: &File, size: u64) -> io::Result<Option<Hashed>> {
    let mut hasher = blake3::Hasher::new();
    if size <= MEMORY_MAX {
        let mut buf = vec![0u8; size as usize];
        if !read_exact_at(file, &mut buf, 0)? {
            return Ok(None);
        }
        hasher.update(&buf);
        return Ok(Some((*hasher.finalize().as_bytes(), Some(buf.into_boxed_slice()))));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        if !read_exact_at(file, &mut buf[..n], off)? {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Some((*hasher.finalize().as_bytes(), None)))
}

/// `read_exact_at` that reports a short file as `false` instead of an error.
fn read_exact_at(file: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<bool> {
    while !buf.is_empty() {
        match file.read_at(buf, off) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The socket operations a session needs. Implemented by mio's `TcpStream`; unit tests
/// implement it with a peer that takes k bytes and then says WouldBlock.
pub trait Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Writes a small prefix that more data will follow soon (MSG_MORE on a socket), so the
    /// header and the first body bytes share a segment.
    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sends up to `len` bytes of `file` from `offset` without copying through user space.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Bytes sent but not yet acknowledged by the peer.
    fn unacked(&self) -> usize;
}

impl Conn for mio::net::TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }

    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; the fd is ours for the call.
        let n = unsafe { libc::send(self.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_MORE) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut off = offset as libc::off_t;
        // SAFETY: both descriptors are open for the call; `off` is a valid in/out pointer.
        let n = unsafe { libc::sendfile(self.as_raw_fd(), file.as_raw_fd(), &mut off, len.min(SENDFILE_MAX)) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        mio::net::TcpStream::shutdown(self, std::net::Shutdown::Write)
    }

    fn unacked(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the valid pointer.
        let r = unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        // If the kernel cannot say, assume data is outstanding: lingering is the safe side.
        if r == 0 { n.max(0) as usize } else { 1 }
    }
}

/// How a transfer ended, for the log line.
#[derive(Debug)]
pub enum Outcome {
    /// Still going (the reactor closed it: shutdown deadline).
    Unfinished,
    Complete,
    ClosedByPeer,
    TimedOut,
    Refused(Status),
    /// Stopped on purpose: the file changed, or the server is exiting.
    Cut(&'static str),
    /// Not our protocol.
    NotXfer,
    Error(io::Error),
}

#[derive(Debug)]
enum Phase {
    /// Reading the fixed-size request. A refusal decided at accept time (not allowed,
    /// busy) waits here too: the request is read first so closing never resets the peer.
    Request { buf: [u8; REQUEST_LEN], got: u8, refuse: Option<Status> },
    /// Writing a refusal header and reason; `sent` bytes are out.
    Refuse { status: Status, sent: u16 },
    /// Writing header then body; `pos` counts response bytes sent, `end` is the total.
    Send { pos: u64, end: u64, offset: u64 },
    /// Everything is sent and our side is shut down; discarding what the peer still sends
    /// until it closes or `until`.
    Linger { until: Instant, discarded: u32 },
}

/// One connected client: its phase and cursors, the snapshot it is served from, and what
/// the log line needs.
pub struct Session {
    snap: Arc<Snapshot>,
    phase: Phase,
    peer: SocketAddr,
    started: Instant,
    last_progress: Instant,
    body_sent: u64,
    /// Counted against the client limits; otherwise counted as a refusal in progress.
    admitted: bool,
    outcome: Outcome,
}

impl Session {
    fn new(snap: Arc<Snapshot>, peer: SocketAddr, now: Instant, refuse: Option<Status>) -> Session {
        Session {
            snap,
            phase: Phase::Request { buf: [0; REQUEST_LEN], got: 0, refuse },
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
}

/// Limits and policy for admitting clients.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_clients: usize,
    pub max_per_ip: usize,
    pub allow: Vec<Cidr>,
    /// BLAKE3 of the shared token, when one is required.
    pub token: Option<Digest>,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    pub quiet: bool,
}

/// The reactor's service: admits, drives and logs sessions of one served file.
pub struct Server {
    current: Arc<Snapshot>,
    /// The newest snapshot, shared by all event loops (`--threads`): whoever reloads first
    /// puts it here and the others adopt it.
    shared: Arc<Mutex<Arc<Snapshot>>>,
    /// Earlier snapshots that clients may still be served from; checked for in-place
    /// changes too, so their clients are cut rather than handed mixed bytes.
    older: Vec<Weak<Snapshot>>,
    policy: Policy,
    /// Shared by all event loops, so limits and counts hold for the whole server.
    limits: Arc<Mutex<Limits>>,
    /// Reused by the read+write fallback when sendfile is unavailable; never per client.
    scratch: Vec<u8>,
    next_check: Option<Instant>,
    next_open_check: Option<Instant>,
    reload_retry_at: Option<Instant>,
    /// A new snapshot being hashed on a helper thread while transfers are in flight.
    /// The helper sends its result here before it wakes the loop, so a wake-up always
    /// finds the result waiting.
    reload_job: Option<std::sync::mpsc::Receiver<Result<Snapshot, InputError>>>,
    /// Set while any loop's helper is hashing, so loops never hash the same file twice.
    reloading: Arc<std::sync::atomic::AtomicBool>,
    waker: Option<Arc<mio::Waker>>,
}

/// Clients in flight, overall and per address.
#[derive(Debug, Default)]
pub struct Limits {
    active: usize,
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    admitted: u32,
    refusing: u32,
}

/// What all event loops of one server share.
#[derive(Clone)]
pub struct Shared {
    snapshot: Arc<Mutex<Arc<Snapshot>>>,
    limits: Arc<Mutex<Limits>>,
    reloading: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn new(snapshot: Arc<Snapshot>) -> Shared {
        Shared { snapshot: Arc::new(Mutex::new(snapshot)), limits: Arc::default(), reloading: Arc::default() }
    }
}

impl Server {
    pub fn new(snapshot: Arc<Snapshot>, policy: Policy) -> Server {
        Server::with_shared(&Shared::new(snapshot), policy)
    }

    /// A server whose snapshot and limits are shared with other event loops.
    pub fn with_shared(shared: &Shared, policy: Policy) -> Server {
        let current = lock(&shared.snapshot).clone();
        Server {
            current,
            shared: shared.snapshot.clone(),
            older: Vec::new(),
            policy,
            limits: shared.limits.clone(),
            scratch: Vec::new(),
            next_check: None,
            next_open_check: None,
            reload_retry_at: None,
            reload_job: None,
            reloading: shared.reloading.clone(),
            waker: None,
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// Decides, from the request, what the client gets.
    fn answer(&self, s: &Session, req: &encoding::Request) -> Result<Phase, Status> {
        if let Some(want) = &self.policy.token {
            match &req.token {
                Some(got) if encoding::digest_eq(got, want) => {}
                _ => return Err(Status::BadToken),
            }
        }
        if req.offset > s.snap.size {
            return Err(Status::BadOffset);
        }
        Ok(Phase::Send { pos: 0, end: HEADER_LEN as u64 + (s.snap.size - req.offset), offset: req.offset })
    }

    fn log(&self, s: &Session) {
        if self.policy.quiet {
            return;
        }
        // Not the loop's `now`: that is shared by a whole turn, and a small transfer can
        // start and end within one.
        let secs = s.started.elapsed().as_secs_f64();
        let what = match &s.outcome {
            Outcome::Unfinished => "cut (server exiting)".to_string(),
            Outcome::Complete => "complete".to_string(),
            Outcome::ClosedByPeer => "closed by peer".to_string(),
            Outcome::TimedOut => "timed out".to_string(),
            Outcome::Refused(st) => format!("refused ({})", refusal_reason(*st)),
            Outcome::Cut(why) => format!("cut ({why})"),
            Outcome::NotXfer => "error (not an xfer request)".to_string(),
            Outcome::Error(e) => format!("error ({e})"),
        };
        let line =
            format!("{} {what}: {} bytes in {secs:.3} s ({})\n", s.peer, s.body_sent, crate::rate(s.body_sent, secs));
        // One write per line, so lines from a busy server never interleave mid-line.
        let _ = io::stderr().write_all(line.as_bytes());
    }

    /// Replaces the snapshot with a fresh one of the same path (SIGHUP, or the file changed).
    /// Clients in flight keep the snapshot they started on. If another event loop already
    /// took a newer snapshot, this one adopts it instead of hashing the file again.
    ///
    /// Hashing reads the whole file. With transfers in flight it runs on a helper thread,
    /// so they keep moving, and the result is picked up when the helper wakes the loop.
    /// An idle server hashes at once: nobody waits but the next client, who then gets the
    /// new version instead of a refusal.
    pub fn reload_snapshot(&mut self) {
        if self.adopt_newer() || self.reload_job.is_some() {
            return;
        }
        let path = self.current.path.clone();
        let idle = lock(&self.limits).active == 0;
        match &self.waker {
            Some(waker) if !idle => {
                if self.reloading.swap(true, Ordering::AcqRel) {
                    return; // another loop is hashing it; we adopt its result
                }
                let waker = waker.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                self.reload_job = Some(rx);
                std::thread::spawn(move || {
                    let _ = tx.send(Snapshot::open(&path));
                    let _ = waker.wake();
                });
            }
            _ => {
                let r = Snapshot::open(&path);
                self.install(r);
            }
        }
    }

    /// Picks up a finished helper's snapshot, if any.
    fn poll_reload(&mut self) {
        let Some(job) = &self.reload_job else { return };
        let r = match job.try_recv() {
            Ok(r) => r,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(InputError::Open {
                path: self.current.path.clone(),
                source: io::Error::other("hashing thread died"),
            }),
        };
        self.reload_job = None;
        self.install(r);
        self.reloading.store(false, Ordering::Release);
    }

    /// Makes a freshly read snapshot current (and shared), or reports why there is none.
    fn install(&mut self, r: Result<Snapshot, InputError>) {
        match r {
            Ok(s) => {
                let fresh = Arc::new(s);
                *lock(&self.shared) = fresh.clone();
                self.reload_retry_at = None;
                eprintln!(
                    "reloaded {}: {} bytes, blake3 {}",
                    fresh.path.display(),
                    fresh.size,
                    encoding::hex(&fresh.digest)
                );
                self.retire(fresh);
            }
            Err(e) => {
                self.reload_retry_at = Some(Instant::now() + RELOAD_BACKOFF);
                let what = if self.current.is_stale() {
                    "refusing new clients until it can be read again"
                } else {
                    "still serving the previous version"
                };
                eprintln!("xfer: reload failed, {what}: {e}");
            }
        }
    }

    /// Adopts a snapshot another loop already installed; true if there was one.
    fn adopt_newer(&mut self) -> bool {
        let newest = lock(&self.shared).clone();
        if Arc::ptr_eq(&newest, &self.current) {
            return false;
        }
        self.retire(newest);
        true
    }

    /// Makes `fresh` current. The old snapshot is checked once more (an in-place change
    /// followed by SIGHUP must still cut its clients) and kept watched while in use.
    fn retire(&mut self, fresh: Arc<Snapshot>) {
        let old = std::mem::replace(&mut self.current, fresh);
        old.check_changed();
        self.older.push(Arc::downgrade(&old));
    }

    /// Brings the current snapshot up to date: a helper's finished hash, another loop's
    /// newer snapshot, or a reload if the file changed.
    fn refresh(&mut self, now: Instant) {
        self.poll_reload();
        self.adopt_newer();
        self.reload_if_changed(now);
    }

    /// Reloads when the file changed, unless a failed attempt asks to wait.
    fn reload_if_changed(&mut self, now: Instant) {
        // One reload at a time, in this loop or any other.
        if self.reload_job.is_some() || self.reloading.load(Ordering::Acquire) {
            return;
        }
        if self.current.check_changed() && self.reload_retry_at.is_none_or(|t| now >= t) {
            eprintln!("{}: changed on disk while being served; taking a new snapshot", self.current.path.display());
            self.reload_snapshot();
        }
    }

    /// Drives a session over any [`Conn`]: what the reactor does with a socket, open to
    /// unit tests and benches with a scripted peer.
    pub fn step<C: Conn>(&mut self, s: &mut Session, conn: &mut C, budget: usize, now: Instant) -> Step {
        let mut budget = budget;
        loop {
            match &mut s.phase {
                Phase::Request { buf, got, refuse } => {
                    let n = match conn.read(&mut buf[*got as usize..]) {
                        Ok(0) => return finish(s, Outcome::ClosedByPeer),
                        Ok(n) => n,
                        Err(e) => match io_error(s, e) {
                            Some(step) => return step,
                            None => continue,
                        },
                    };
                    *got += n as u8;
                    let refuse = *refuse;
                    let next = match encoding::decode_request(&buf[..*got as usize]) {
                        Ok(Decoded::NeedMore(_)) => continue,
                        Err(DecodeError::BadMagic) => return finish(s, Outcome::NotXfer),
                        Err(DecodeError::UnsupportedVersion(_)) => Err(Status::UnsupportedVersion),
                        Err(_) => Err(Status::BadRequest),
                        Ok(Decoded::Done(req, _)) => match refuse {
                            Some(st) => Err(st),
                            None => self.answer(s, &req),
                        },
                    };
                    s.phase = match next {
                        Ok(send) => send,
                        Err(status) => Phase::Refuse { status, sent: 0 },
                    };
                    s.last_progress = now;
                }
                Phase::Refuse { status, sent } => {
                    let mut wire = [0u8; HEADER_LEN + MAX_REASON];
                    let len = encoding::encode_refusal(*status, refusal_reason(*status), &mut wire);
                    match conn.write_vectored(&[IoSlice::new(&wire[*sent as usize..len])]) {
                        Ok(n) => {
                            *sent += n as u16;
                            s.last_progress = now;
                            if *sent as usize == len {
                                s.outcome = Outcome::Refused(*status);
                                return self.after_last_byte(s, conn, now);
                            }
                        }
                        Err(e) => {
                            if let Some(step) = io_error(s, e) {
                                return step;
                            }
                        }
                    }
                }
                Phase::Send { pos, end, offset } => {
                    if *pos == *end {
                        s.outcome = Outcome::Complete;
                        return self.after_last_byte(s, conn, now);
                    }
                    if budget == 0 {
                        return Step::Yield;
                    }
                    let snap = &s.snap;
                    if snap.is_stale() {
                        return finish(s, Outcome::Cut("file changed"));
                    }
                    let body_pos = *offset + pos.saturating_sub(HEADER_LEN as u64);
                    let want = ((*end - *pos) as usize).min(budget);
                    let res = if let Some(mem) = &snap.memory {
                        let body = &mem[body_pos as usize..];
                        if (*pos as usize) < HEADER_LEN {
                            let head = &snap.header[*pos as usize..];
                            conn.write_vectored(&[IoSlice::new(head), IoSlice::new(&body[..body.len().min(want)])])
                        } else {
                            conn.write_vectored(&[IoSlice::new(&body[..want])])
                        }
                    } else if (*pos as usize) < HEADER_LEN {
                        conn.write_more(&snap.header[*pos as usize..])
                    } else {
                        match conn.send_file(&snap.file, body_pos, want) {
                            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                                copy_through(&mut self.scratch, conn, &snap.file, body_pos, want)
                            }
                            r => r,
                        }
                    };
                    match res {
                        // Writing to a socket never takes 0 bytes of a non-empty buffer; a 0
                        // here is the file ending before our size (sendfile or its fallback):
                        // it was truncated under us. Not "done", not "again".
                        Ok(0) => {
                            snap.changed.store(true, Ordering::Relaxed);
                            return finish(s, Outcome::Cut("file shrank"));
                        }
                        Ok(n) => {
                            debug_assert!(*pos + n as u64 <= *end, "wrote past the end of the response");
                            let header_part = (HEADER_LEN as u64).saturating_sub(*pos).min(n as u64);
                            s.body_sent += n as u64 - header_part;
                            *pos += n as u64;
                            budget = budget.saturating_sub(n);
                            s.last_progress = now;
                        }
                        Err(e) => {
                            if let Some(step) = io_error(s, e) {
                                return step;
                            }
                        }
                    }
                }
                Phase::Linger { discarded, .. } => {
                    let mut sink = [0u8; 4096];
                    match conn.read(&mut sink) {
                        Ok(0) => return Step::Done,
                        Ok(n) => {
                            *discarded = discarded.saturating_add(n as u32);
                            if *discarded > LINGER_MAX_BYTES {
                                return Step::Done;
                            }
                        }
                        Err(e) => match classify(e) {
                            Io::Again => return Step::Blocked,
                            Io::Retry => {}
                            Io::Closed | Io::Failed(_) => return Step::Done,
                        },
                    }
                }
            }
        }
    }

    /// The last byte is out. Closing now is right only when the peer has acknowledged
    /// everything and sent nothing we have not read. Otherwise the socket must stay ours
    /// for a while:
    /// - Unread input makes close() answer with a reset, which can destroy the tail of what
    ///   we sent in the peer's buffers.
    /// - A closed socket with unacknowledged data becomes an orphan. Under TCP memory
    ///   pressure the kernel resets orphans instead of delivering their data.
    ///
    /// So shut down our side (the peer sees EOF after the last byte) and discard what it
    /// sends until it closes. Wait up to the send timeout while data is unacknowledged (a
    /// slow reader may need it), otherwise just long enough to drain its stray bytes.
    fn after_last_byte<C: Conn>(&mut self, s: &mut Session, conn: &mut C, now: Instant) -> Step {
        let mut probe = [0u8; 1024];
        let extra = loop {
            match conn.read(&mut probe) {
                // The peer is done sending; it has read what it wanted.
                Ok(0) => return Step::Done,
                Ok(n) => break n as u32,
                Err(e) => match classify(e) {
                    Io::Again => break 0,
                    Io::Retry => continue,
                    Io::Closed | Io::Failed(_) => return Step::Done,
                },
            }
        };
        let unacked = conn.unacked();
        if extra == 0 && unacked == 0 {
            return Step::Done;
        }
        let _ = conn.shutdown_write();
        let wait = if unacked > 0 { self.policy.send_timeout.max(LINGER) } else { LINGER };
        s.phase = Phase::Linger { until: now + wait, discarded: extra };
        // Keep reading until WouldBlock: readiness is edge-triggered.
        self.step(s, conn, 0, now)
    }
}

fn finish(s: &mut Session, outcome: Outcome) -> Step {
    s.outcome = outcome;
    Step::Done
}

/// What a failed read or write of the request or response means for the session:
/// wait for readiness, end it, or (`None`, interrupted) try again now.
fn io_error(s: &mut Session, e: io::Error) -> Option<Step> {
    match classify(e) {
        Io::Again => Some(Step::Blocked),
        Io::Retry => None,
        Io::Closed => Some(finish(s, Outcome::ClosedByPeer)),
        Io::Failed(e) => Some(finish(s, Outcome::Error(e))),
    }
}

/// The reason text sent with, and logged for, a refusal.
fn refusal_reason(st: Status) -> &'static str {
    match st {
        Status::Busy => "server busy: too many clients (at the server's limit or from your address)",
        Status::Unavailable => "the file is being changed on the server; try again shortly",
        other => other.default_reason(),
    }
}

/// Fallback when sendfile cannot be used on this file: positional read into the shared
/// scratch buffer, then write. Bytes read but not written are simply read again next time.
fn copy_through<C: Conn>(scratch: &mut Vec<u8>, conn: &mut C, file: &File, off: u64, want: usize) -> io::Result<usize> {
    if scratch.is_empty() {
        scratch.resize(256 * 1024, 0);
    }
    let n = want.min(scratch.len());
    let got = file.read_at(&mut scratch[..n], off)?;
    if got == 0 {
        // Past the end: the file shrank. Report it as sendfile would.
        return Ok(0);
    }
    conn.write_vectored(&[IoSlice::new(&scratch[..got])])
}

enum Io {
    /// WouldBlock: wait for readiness.
    Again,
    /// Interrupted: try again now.
    Retry,
    /// The peer went away (reset, broken pipe): a quiet close, not an error.
    Closed,
    Failed(io::Error),
}

fn classify(e: io::Error) -> Io {
    use io::ErrorKind::*;
    match e.kind() {
        WouldBlock => Io::Again,
        Interrupted => Io::Retry,
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof => Io::Closed,
        _ => Io::Failed(e),
    }
}

impl Service for Server {
    type Session = Session;

    fn open(&mut self, peer: SocketAddr, now: Instant) -> Option<Session> {
        if self.next_open_check.is_none_or(|t| now >= t) {
            self.next_open_check = Some(now + OPEN_CHECK_EVERY);
            self.refresh(now);
        }
        let peer = canonical(peer);
        let ip = peer.ip();
        let allowed = self.policy.allow.is_empty() || self.policy.allow.iter().any(|c| c.contains(ip));
        let unavailable = self.current.is_stale();
        let mut limits = lock(&self.limits);
        let active = limits.active;
        let counts = limits.per_ip.entry(ip).or_default();
        let refuse = if !allowed {
            Some(Status::Forbidden)
        } else if active >= self.policy.max_clients || counts.admitted as usize >= self.policy.max_per_ip {
            Some(Status::Busy)
        } else if unavailable {
            Some(Status::Unavailable)
        } else {
            None
        };
        match refuse {
            None => {
                counts.admitted += 1;
                limits.active += 1;
            }
            Some(_) if counts.refusing >= REFUSING_PER_IP => {
                if counts.admitted == 0 && counts.refusing == 0 {
                    limits.per_ip.remove(&ip);
                }
                return None;
            }
            Some(_) => counts.refusing += 1,
        }
        drop(limits);
        Some(Session::new(self.current.clone(), peer, now, refuse))
    }

    fn drive(&mut self, s: &mut Session, stream: &mut mio::net::TcpStream, budget: usize, now: Instant) -> Step {
        self.step(s, stream, budget, now)
    }

    fn timer(&mut self, s: &mut Session, stream: &mio::net::TcpStream, now: Instant) -> Timer {
        let deadline = match &s.phase {
            Phase::Request { refuse: Some(_), .. } => s.started + self.policy.request_timeout.min(REFUSE_DEADLINE),
            Phase::Request { .. } => s.started + self.policy.request_timeout,
            Phase::Send { .. } if s.snap.is_stale() => {
                s.outcome = Outcome::Cut("file changed");
                return Timer::Expired;
            }
            Phase::Refuse { .. } | Phase::Send { .. } => s.last_progress + self.policy.send_timeout,
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
        if sessions == 0 {
            self.next_check = None;
            return None;
        }
        let due = *self.next_check.get_or_insert(now);
        if now >= due {
            // Snapshots still in use by clients are watched too; forgotten ones are dropped.
            self.older.retain(|w| w.upgrade().map(|s| s.check_changed()).is_some());
            self.refresh(now);
            self.next_check = Some(now + CHANGE_CHECK_EVERY);
        }
        self.next_check
    }

    fn close(&mut self, s: Session, _now: Instant) {
        let ip = s.peer.ip();
        let mut limits = lock(&self.limits);
        if s.admitted {
            limits.active = limits.active.saturating_sub(1);
        }
        if let Some(c) = limits.per_ip.get_mut(&ip) {
            if s.admitted {
                c.admitted = c.admitted.saturating_sub(1);
            } else {
                c.refusing = c.refusing.saturating_sub(1);
            }
            if c.admitted == 0 && c.refusing == 0 {
                limits.per_ip.remove(&ip);
            }
        }
        drop(limits);
        self.log(&s);
    }

    fn attach_waker(&mut self, waker: Arc<mio::Waker>) {
        self.waker = Some(waker);
    }

    fn woken(&mut self, _now: Instant) {
        self.poll_reload();
    }

    fn reload(&mut self) {
        self.reload_snapshot();
    }

    fn in_flight(&self) -> usize {
        lock(&self.limits).active
    }
}

/// Locks a mutex, carrying on if another loop panicked while holding it: the data is
/// plain counters and a pointer, never left half-updated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`; limits, the allow
/// list and the logs all want the plain IPv4 address.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// An address block for `--allow`: `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        // A mapped IPv6 block is stored as IPv4 so that it matches IPv4 clients.
        let (addr, max, shift) = match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() => (IpAddr::V4(v4), 32u8, 96u8),
            IpAddr::V4(v4) => (IpAddr::V4(v4), 32, 0),
            v6 => (v6, 128, 0),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let p: u8 = p.parse().map_err(|_| format!("`{s}`: bad prefix length"))?;
                if p < shift || p - shift > max {
                    return Err(format!("`{s}`: prefix length out of range"));
                }
                p - shift
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

/// Everything `xfer serve` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub file: PathBuf,
    /// `--listen`: an address, or address and port.
    pub listen: Option<String>,
    pub port: u16,
    pub quiet: bool,
    pub max_clients: Option<usize>,
    pub max_per_ip: usize,
    pub allow: Vec<Cidr>,
    pub token: Option<String>,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    pub threads: usize,
}

/// Why `serve` could not start or had to stop.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("bad --listen `{0}`: expected an IP address, optionally with :port")]
    BadListen(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("event loop failed: {0}")]
    Poll(#[source] io::Error),
}

impl ServeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Input(_) => crate::exit::LOCAL_IO,
            ServeError::BadListen(_) => crate::exit::USAGE,
            ServeError::Bind { .. } => crate::exit::NETWORK,
            ServeError::Poll(_) => crate::exit::INTERNAL,
        }
    }
}

/// Bytes a client may move per turn of the loop before the others get theirs
/// (nginx's sendfile_max_chunk).
pub const BUDGET: usize = 512 * 1024;

/// Runs `xfer serve` until it is asked to exit.
pub fn run(opts: &Options) -> Result<crate::reactor::Exit, ServeError> {
    use std::io::IsTerminal;
    let snapshot = Arc::new(Snapshot::open(&opts.file)?);
    let nofile = crate::reactor::raise_nofile_limit();
    // Leave descriptors for the listener, epoll, signals, stdio and the served file, and
    // room to answer "busy" to some clients over the limit instead of dropping them.
    let reserve = (nofile / 4).min(64);
    let max_clients = opts.max_clients.unwrap_or(((nofile - reserve) * 7 / 8).max(1));
    let threads = opts.threads.max(1);
    // The limits are shared by all loops; each loop's slab is sized for all of them, since
    // the kernel may hand any loop any share of the connections.
    let per_thread = max_clients;
    let slack = (max_clients / 8).clamp(8, 1024);

    let addrs = listen_addrs(opts)?;
    let (first, addr) = bind_first(&addrs, threads > 1)?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() => hostname(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let policy = Policy {
        max_clients,
        max_per_ip: opts.max_per_ip,
        allow: opts.allow.clone(),
        token: opts.token.as_ref().map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
        request_timeout: opts.request_timeout,
        send_timeout: opts.send_timeout,
        quiet: opts.quiet,
    };
    let shared = Shared::new(snapshot.clone());
    let cfg = crate::reactor::Config {
        max_sessions: per_thread.saturating_add(slack),
        budget: BUDGET,
        drain_timeout: opts.drain_timeout,
        signals: true,
        interactive: std::io::stdin().is_terminal(),
    };
    // The first loop owns the signals and the prompt, and tells the others what to do.
    let server = Server::with_shared(&shared, policy.clone());
    let mut reactor = crate::reactor::Reactor::new(first, server, cfg.clone()).map_err(ServeError::Poll)?;
    let leader = reactor.controller().map_err(ServeError::Poll)?;
    let mut followers = Vec::new();
    let mut handles = Vec::new();
    for _ in 1..threads {
        let listener =
            crate::reactor::bind(addr, true).map_err(|source| ServeError::Bind { addr: addr.to_string(), source })?;
        let server = Server::with_shared(&shared, policy.clone());
        let mut follower =
            crate::reactor::Reactor::new(listener, server, crate::reactor::Config { signals: false, ..cfg.clone() })
                .map_err(ServeError::Poll)?;
        followers.push(follower.controller().map_err(ServeError::Poll)?);
        let leader = leader.clone();
        handles.push(std::thread::spawn(move || {
            let r = follower.run();
            // However it ended, the leader must stop waiting for this loop.
            leader.send(crate::reactor::Command::FollowerDone);
            r
        }));
    }
    reactor.set_followers(followers);
    let name = opts.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    // The first line is the contract with scripts and tests: the real bound address. It is
    // printed once everything is set up, so whoever reads it finds a server in its steady
    // state (all descriptors open, signals handled).
    println!("listening on {addr}");
    println!("serving {}: {} bytes, blake3 {}", opts.file.display(), snapshot.size(), encoding::hex(snapshot.digest()));
    println!("fetch it with: xfer fetch {host}:{} output_file/{name}", addr.port());
    // From here on only the sessions and the shared cell hold snapshots, so a reload
    // really lets go of the old descriptor (and a replaced file's disk space).
    drop(snapshot);
    drop(shared);
    let exit = reactor.run().map_err(ServeError::Poll)?;
    for h in handles {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ServeError::Poll(e)),
            Err(_) => return Err(ServeError::Poll(io::Error::other("an event loop thread panicked"))),
        }
    }
    Ok(exit)
}

/// The addresses to try, in order: `--listen` as given, or dual-stack `[::]` then `0.0.0.0`.
fn listen_addrs(opts: &Options) -> Result<Vec<SocketAddr>, ServeError> {
    let Some(l) = &opts.listen else {
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), opts.port),
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), opts.port),
        ]);
    };
    let bad = || ServeError::BadListen(l.clone());
    if let Ok(ip) = l.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, opts.port)]);
    }
    let sa: SocketAddr = l.parse().map_err(|_| bad())?;
    Ok(vec![sa])
}

fn bind_first(addrs: &[SocketAddr], reuse_port: bool) -> Result<(mio::net::TcpListener, SocketAddr), ServeError> {
    let mut last = None;
    for a in addrs {
        match crate::reactor::bind(*a, reuse_port) {
            Ok(l) => {
                let bound = l.local_addr().map_err(|source| ServeError::Bind { addr: a.to_string(), source })?;
                return Ok((l, bound));
            }
            Err(source) => last = Some(ServeError::Bind { addr: a.to_string(), source }),
        }
    }
    Err(last.unwrap_or_else(|| ServeError::BadListen(String::new())))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() { "localhost".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut v = encoding::encode_ok(data.len() as u64, blake3::hash(data).as_bytes()).to_vec();
        v.extend_from_slice(data);
        v
    }

    fn req() -> [u8; REQUEST_LEN] {
        encoding::encode_request(&encoding::Request { offset: 0, token: None })
    }

    #[test]
    fn short_writes_and_would_block_deliver_exact_bytes() {
        for size in
            [0usize, 1, 47, 48, 49, 4095, 4096, 4097, 65537, MEMORY_MAX as usize, MEMORY_MAX as usize + 1, 700_001]
        {
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
        assert!(matches!(s.outcome, Outcome::Refused(Status::BadToken)));
        match encoding::decode_response(&got) {
            Ok(Decoded::Done(encoding::Response::Refused { status: Status::BadToken, .. }, n)) => {
                assert_eq!(n, got.len())
            }
            other => panic!("{other:?}"),
        }
        let good = encoding::encode_request(&encoding::Request {
            offset: 0,
            token: Some(*blake3::hash(b"secret").as_bytes()),
        });
        let (got, _) = serve_through(b"data", 5, 1 << 20, p, &good);
        assert_eq!(got, expected(b"data"));

        let mut v2 = req();
        v2[4] = 2;
        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), &v2);
        assert!(matches!(s.outcome, Outcome::Refused(Status::UnsupportedVersion)));
        assert!(matches!(
            encoding::decode_response(&got),
            Ok(Decoded::Done(encoding::Response::Refused { status: Status::UnsupportedVersion, .. }, _))
        ));

        let (got, s) = serve_through(b"data", 64, 1 << 20, policy(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(s.outcome, Outcome::NotXfer));
        assert!(got.is_empty());
    }

    #[test]
    fn offsets_serve_the_tail() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let r = encoding::encode_request(&encoding::Request { offset: 123_457, token: None });
        let (got, _) = serve_through(&data, 4096, 1 << 20, policy(), &r);
        assert_eq!(&got[..HEADER_LEN], &expected(&data)[..HEADER_LEN]);
        assert!(got[HEADER_LEN..] == data[123_457..]);
        let past = encoding::encode_request(&encoding::Request { offset: 300_001, token: None });
        let (_, s) = serve_through(&data, 4096, 1 << 20, policy(), &past);
        assert!(matches!(s.outcome, Outcome::Refused(Status::BadOffset)));
    }

    #[test]
    fn limits_and_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let mut p = policy();
        p.max_per_ip = 2;
        p.max_clients = 3;
        p.allow = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let mut server = Server::new(Arc::new(Snapshot::open(&path).unwrap()), p);
        let now = Instant::now();
        let mut open = |a: &str| server.open(a.parse().unwrap(), now);
        let a1 = open("127.0.0.1:1").unwrap();
        let a2 = open("[::ffff:127.0.0.1]:2").unwrap();
        let a3 = open("127.0.0.1:3").unwrap();
        assert!(a1.admitted && a2.admitted && !a3.admitted, "per-address cap counts mapped addresses too");
        let b1 = open("127.0.0.2:1").unwrap();
        assert!(b1.admitted);
        let b2 = open("127.0.0.3:1").unwrap();
        assert!(!b2.admitted, "client cap");
        let c = open("10.0.0.1:1").unwrap();
        assert!(matches!(c.phase, Phase::Request { refuse: Some(Status::Forbidden), .. }));
        // One address may hold only a few refusals in progress; past that it is dropped.
        let mut refusing = Vec::new();
        while let Some(r) = open("10.0.0.9:1") {
            assert!(!r.admitted);
            refusing.push(r);
            assert!(refusing.len() <= REFUSING_PER_IP as usize, "refusals per address are capped");
        }
        assert_eq!(refusing.len(), REFUSING_PER_IP as usize);
        assert_eq!(server.in_flight(), 3);
        server.close(a1, now);
        server.close(a3, now);
        assert_eq!(server.in_flight(), 2);
        let a4 = server.open("127.0.0.1:4".parse().unwrap(), now).unwrap();
        assert!(a4.admitted);
        for r in refusing {
            server.close(r, now);
        }
        assert!(server.open("10.0.0.9:2".parse().unwrap(), now).is_some(), "refusal slots come back");
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

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(c.contains("192.168.1.77".parse().unwrap()));
        assert!(c.contains("::ffff:192.168.1.77".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x", "::ffff:1.2.3.4/90"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_notices_in_place_changes_and_refuses_specials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let snap = Snapshot::open(&path).unwrap();
        assert!(!snap.in_memory());
        assert!(!snap.check_changed());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"zz", 10).unwrap();
        assert!(snap.check_changed());
        assert!(matches!(Snapshot::open(dir.path()), Err(InputError::NotRegular { kind: "directory", .. })));
        assert!(matches!(Snapshot::open(&dir.path().join("missing")), Err(InputError::Open { .. })));
    }
}
