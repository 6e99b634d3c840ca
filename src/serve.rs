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

pub mod watch;

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
    #[error("{}: {source}", shown(.path))]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: is a {kind}, not a regular file", shown(.path))]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: the file kept changing while it was being read", shown(.path))]
    Unstable { path: PathBuf },
}

/// What `fstat` can tell of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: (u64, u64),
    nlink: u64,
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: (m.dev(), m.ino()),
            nlink: m.nlink(),
        }
    }

    /// Whether the bytes may differ from `self`'s. Size and mtime say so for most writers;
    /// one that puts the mtime back (`rsync --inplace -t`, `touch -d`) still moves the
    /// ctime, which only the kernel sets. But the ctime also moves when a rename replaces
    /// the file (its link count drops) or it is renamed or chmod-ed, none of which touch
    /// its bytes. So `by_ctime` is used only where inotify cannot tell us of writes: a
    /// ctime change with the link count unchanged then counts as a change (a chmod or a
    /// rename of the served file itself costs its clients a cut, never a wrong byte).
    fn differs(&self, now: &Identity, by_ctime: bool) -> bool {
        self.size != now.size
            || self.mtime != now.mtime
            || (by_ctime && self.ctime != now.ctime && self.nlink == now.nlink)
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
        Snapshot::open_with(path, &mut |_, _| {})
    }

    /// [`Snapshot::open`], telling `progress(hashed, size)` as the hashing goes.
    pub fn open_with(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Snapshot, InputError> {
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
            let Some((digest, memory)) = hash_file(&file, identity.size, progress).map_err(open_err)? else {
                continue; // shrank while being read
            };
            let after = Identity::of(&file.metadata().map_err(open_err)?);
            if identity.differs(&after, true) {
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

    /// Compares the open descriptor with the snapshot; marks and reports a change (see
    /// [`Identity::differs`] for `by_ctime`). A snapshot held in memory cannot go stale,
    /// but a change still means new clients should get a new snapshot, so it is reported
    /// all the same.
    pub fn check_changed(&self, by_ctime: bool) -> bool {
        if self.is_changed() {
            return true;
        }
        let now = match self.file.metadata() {
            Ok(m) => Identity::of(&m),
            Err(_) => return false,
        };
        if self.identity.differs(&now, by_ctime) {
            self.mark_changed();
            return true;
        }
        false
    }

    /// Records that the file's bytes were changed under this snapshot (a write was seen).
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Whether `path` still names this snapshot's file (not another file renamed over it).
    fn is_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity.inode)
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

fn hash_file(file: &File, size: u64, progress: &mut dyn FnMut(u64, u64)) -> io::Result<Option<Hashed>> {
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
        progress(off, size);
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

/// Why a client is refused: the server's verdict, which the protocol turns into its own
/// answer (a refusal header with a status and a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not in `--allow`.
    Forbidden,
    BadToken,
    /// The server is at `--max-clients`.
    Busy,
    /// Its address is at `--max-per-ip`.
    BusyFromYou,
    /// No good snapshot: the file is being changed.
    Changing,
    /// The Ctrl+C question is open.
    Paused,
    BadRequest,
    UnsupportedVersion,
    BadOffset,
}

impl Refusal {
    pub fn status(self) -> Status {
        match self {
            Refusal::Forbidden => Status::Forbidden,
            Refusal::BadToken => Status::BadToken,
            Refusal::Busy | Refusal::BusyFromYou => Status::Busy,
            Refusal::Changing | Refusal::Paused => Status::Unavailable,
            Refusal::BadRequest => Status::BadRequest,
            Refusal::UnsupportedVersion => Status::UnsupportedVersion,
            Refusal::BadOffset => Status::BadOffset,
        }
    }

    /// The text the client is shown, and the server logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "server busy: at its limit of clients; try again later",
            Refusal::BusyFromYou => "server busy: too many clients from your address; try again later",
            Refusal::Changing => "the file is being changed on the server; try again shortly",
            Refusal::Paused => "server paused; try again shortly",
            other => other.status().default_reason(),
        }
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
    Refused(Refusal),
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
    Request { buf: [u8; REQUEST_LEN], got: u8, refuse: Option<Refusal> },
    /// Writing a refusal header and reason; `sent` bytes are out.
    Refuse { why: Refusal, sent: u16 },
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
    fn new(snap: Arc<Snapshot>, peer: SocketAddr, now: Instant, refuse: Option<Refusal>) -> Session {
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
    /// Clients at once from one address; `usize::MAX` for no limit.
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
    /// The last reload failure logged, so a file that stays missing is not logged anew
    /// at every retry.
    last_reload_error: Option<String>,
    /// A new snapshot being hashed on a helper thread while transfers are in flight.
    /// The helper sends its result here before it wakes the loop, so a wake-up always
    /// finds the result waiting.
    reload_job: Option<std::sync::mpsc::Receiver<Result<Snapshot, InputError>>>,
    /// Set while any loop's helper is hashing, so loops never hash the same file twice.
    reloading: Arc<AtomicBool>,
    /// Set while some loop watches the path with inotify: writes are then seen as they
    /// happen, and the ctime need not stand in for them.
    watching: Arc<AtomicBool>,
    waker: Option<Arc<mio::Waker>>,
    /// inotify on the served path (one loop has it; see [`Server::watch`]).
    watch: Option<watch::Watch>,
    /// Inode watches and the snapshots on them.
    watched: Vec<(i32, Weak<Snapshot>)>,
    /// A change was seen: take a new snapshot at `.0`. Events in a burst (a file being
    /// written) push it back by RELOAD_SETTLE, but never past `.1`.
    reload_due: Option<(Instant, Instant)>,
    /// The Ctrl+C question is open: new clients are told to come back.
    paused: bool,
    /// Why `open` just declined a connection, for the `reject` that follows.
    rejecting: Option<Refusal>,
}

/// After a change is seen, wait this long for the writer to finish before hashing.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);
/// ... but never longer than this after the first change of a burst.
const RELOAD_SETTLE_MAX: Duration = Duration::from_secs(1);

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
    reloading: Arc<AtomicBool>,
    watching: Arc<AtomicBool>,
}

impl Shared {
    pub fn new(snapshot: Arc<Snapshot>) -> Shared {
        Shared {
            snapshot: Arc::new(Mutex::new(snapshot)),
            limits: Arc::default(),
            reloading: Arc::default(),
            watching: Arc::default(),
        }
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
            last_reload_error: None,
            reload_job: None,
            reloading: shared.reloading.clone(),
            watching: shared.watching.clone(),
            waker: None,
            watch: None,
            watched: Vec::new(),
            reload_due: None,
            paused: false,
            rejecting: None,
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// Gives this loop the inotify watch on the served path (started before the first
    /// snapshot was hashed, so no write after the hash goes unseen). Only one loop of a
    /// server watches; the others adopt its snapshots.
    pub fn watch(&mut self, mut w: watch::Watch) {
        self.watching.store(true, Ordering::Release);
        let snap = self.current.clone();
        self.watch_inode(&mut w, &snap, Instant::now());
        self.watch = Some(w);
    }

    /// Adds the inode watch for a new snapshot, and makes sure nothing slipped through
    /// between its hash and the watch: the path must still name it, unchanged.
    fn watch_inode(&mut self, w: &mut watch::Watch, snap: &Arc<Snapshot>, now: Instant) {
        match w.watch_inode(&snap.path) {
            Ok(wd) => self.watched.push((wd, Arc::downgrade(snap))),
            Err(e) => crate::say!("xfer: cannot watch {}: {e}", shown(&snap.path)),
        }
        if !snap.is_at(&snap.path) || snap.check_changed(true) {
            self.want_reload(now);
        }
    }

    /// Whether the ctime has to stand in for inotify (see [`Identity::differs`]).
    fn by_ctime(&self) -> bool {
        !self.watching.load(Ordering::Acquire)
    }

    /// Reads what inotify has to say and acts on it: a write marks the snapshots of that
    /// inode changed (their clients are cut; new clients wait for a new snapshot), and any
    /// change asks for a new snapshot once the writer is done.
    fn apply_events(&mut self, now: Instant) {
        let Some(w) = &mut self.watch else { return };
        let mut events = Vec::new();
        w.read(&mut events);
        for e in events {
            match e {
                watch::Event::Modified(wd) => {
                    self.on_inode(wd, |s| s.mark_changed());
                    self.want_reload(now);
                }
                watch::Event::Attrib(wd) | watch::Event::ClosedWrite(wd) => {
                    let by_ctime = self.by_ctime();
                    let mut changed = false;
                    self.on_inode(wd, |s| changed |= s.check_changed(by_ctime));
                    if changed || matches!(e, watch::Event::ClosedWrite(_)) && self.current.is_changed() {
                        self.want_reload(now);
                    }
                }
                watch::Event::Gone(wd) => self.watched.retain(|(w, _)| *w != wd),
                watch::Event::PathChanged => {
                    if !self.current.is_at(&self.current.path) {
                        self.want_reload(now);
                    }
                }
                watch::Event::Overflow => {
                    for (_, s) in &self.watched {
                        if let Some(s) = s.upgrade() {
                            s.check_changed(true);
                        }
                    }
                    self.want_reload(now);
                }
            }
        }
    }

    fn on_inode(&self, wd: i32, mut f: impl FnMut(&Snapshot)) {
        for (w, s) in &self.watched {
            if *w == wd
                && let Some(s) = s.upgrade()
            {
                f(&s);
            }
        }
    }

    fn want_reload(&mut self, now: Instant) {
        let first = self.reload_due.map_or(now, |(_, first)| first);
        self.reload_due = Some(((now + RELOAD_SETTLE).min(first + RELOAD_SETTLE_MAX), first));
    }

    /// Drops the watches of snapshots nobody uses any more.
    fn prune_watches(&mut self) {
        let Some(w) = &mut self.watch else { return };
        let mut dead = Vec::new();
        self.watched.retain(|(wd, s)| {
            let alive = s.strong_count() > 0;
            if !alive {
                dead.push(*wd);
            }
            alive
        });
        for wd in dead {
            if !self.watched.iter().any(|(w, _)| *w == wd) {
                w.unwatch(wd);
            }
        }
    }

    /// Decides, from the request, what the client gets.
    fn answer(&self, s: &Session, req: &encoding::Request) -> Result<Phase, Refusal> {
        if let Some(want) = &self.policy.token {
            match &req.token {
                Some(got) if encoding::digest_eq(got, want) => {}
                _ => return Err(Refusal::BadToken),
            }
        }
        if req.offset > s.snap.size {
            return Err(Refusal::BadOffset);
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
            Outcome::Refused(why) => return crate::say!("{} refused: {}", s.peer, why.reason()),
            Outcome::NotXfer => return crate::say!("{} closed: not an xfer request", s.peer),
            Outcome::Unfinished => "cut (server exiting)".to_string(),
            Outcome::Complete => "complete".to_string(),
            Outcome::ClosedByPeer => "closed by peer".to_string(),
            Outcome::TimedOut => "timed out".to_string(),
            Outcome::Cut(why) => format!("cut ({why})"),
            Outcome::Error(e) => format!("error: {e}"),
        };
        let rate = match s.body_sent {
            0 => String::new(),
            n => format!(" ({})", crate::rate(n, secs)),
        };
        crate::say!("{} {what}: {} bytes in {secs:.3} s{rate}", s.peer, s.body_sent);
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
        // Events already queued are about the old snapshots; read them before hashing, so
        // that they are not taken for writes to the new one.
        self.apply_events(Instant::now());
        if self.adopt_newer() || self.reload_job.is_some() {
            return;
        }
        self.reload_due = None;
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
        let now = Instant::now();
        match r {
            Ok(s) => {
                let fresh = Arc::new(s);
                *lock(&self.shared) = fresh.clone();
                self.reload_retry_at = None;
                self.last_reload_error = None;
                crate::say!(
                    "reloaded {}: {} bytes, blake3 {}",
                    shown(&fresh.path),
                    fresh.size,
                    encoding::hex(&fresh.digest)
                );
                if let Some(mut w) = self.watch.take() {
                    self.watch_inode(&mut w, &fresh, now);
                    self.watch = Some(w);
                }
                self.retire(fresh);
            }
            Err(e) => {
                self.reload_retry_at = Some(now + RELOAD_BACKOFF);
                let text = e.to_string();
                if self.last_reload_error.as_deref() != Some(text.as_str()) {
                    let what = if self.current.is_stale() {
                        "refusing new clients until it can be read again"
                    } else {
                        "still serving the previous version"
                    };
                    crate::say!("xfer: reload failed, {what}: {text}");
                    self.last_reload_error = Some(text);
                }
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
        old.check_changed(self.by_ctime());
        self.older.push(Arc::downgrade(&old));
    }

    /// Brings the current snapshot up to date: a helper's finished hash, another loop's
    /// newer snapshot, or a reload if the file changed. `eager`: a client is waiting, so
    /// a pending change is acted on now rather than when the writer seems done.
    fn refresh(&mut self, now: Instant, eager: bool) {
        self.poll_reload();
        self.apply_events(now);
        self.adopt_newer();
        self.reload_if_changed(now, eager);
    }

    /// Reloads when the file changed (or a change is pending), unless a failed attempt
    /// asks to wait.
    fn reload_if_changed(&mut self, now: Instant, eager: bool) {
        // One reload at a time, in this loop or any other.
        if self.reload_job.is_some() || self.reloading.load(Ordering::Acquire) {
            return;
        }
        if self.reload_retry_at.is_some_and(|t| now < t) {
            return;
        }
        let snap = &self.current;
        // A change inotify announced waits for its settling time; one found by looking
        // (no inotify, or it missed it) and a file replaced by rename need no waiting.
        let due = self.reload_due.is_some_and(|(at, _)| eager || now >= at);
        let unannounced = self.reload_due.is_none() && snap.check_changed(self.by_ctime());
        let moved = !snap.is_at(&snap.path);
        if due || unannounced || moved {
            if self.last_reload_error.is_none() {
                let what = if moved { "replaced or removed" } else { "changed on disk" };
                crate::say!("{}: {what}; taking a new snapshot", shown(&snap.path));
            }
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
                        Err(DecodeError::UnsupportedVersion(_)) => Err(Refusal::UnsupportedVersion),
                        Err(_) => Err(Refusal::BadRequest),
                        Ok(Decoded::Done(req, _)) => match refuse {
                            Some(st) => Err(st),
                            None => self.answer(s, &req),
                        },
                    };
                    s.phase = match next {
                        Ok(send) => send,
                        Err(why) => Phase::Refuse { why, sent: 0 },
                    };
                    s.last_progress = now;
                }
                Phase::Refuse { why, sent } => {
                    let mut wire = [0u8; HEADER_LEN + MAX_REASON];
                    let len = encoding::encode_refusal(why.status(), why.reason(), &mut wire);
                    match conn.write_vectored(&[IoSlice::new(&wire[*sent as usize..len])]) {
                        Ok(n) => {
                            *sent += n as u16;
                            s.last_progress = now;
                            if *sent as usize == len {
                                s.outcome = Outcome::Refused(*why);
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
        // A change already seen is acted on for this client; otherwise the file is looked
        // at now and then (inotify may be missing, or may not see a network file system).
        if self.reload_due.is_some() || self.current.is_changed() || self.next_open_check.is_none_or(|t| now >= t) {
            self.next_open_check = Some(now + OPEN_CHECK_EVERY);
            self.refresh(now, true);
        }
        let peer = canonical(peer);
        let ip = peer.ip();
        let allowed = self.policy.allow.is_empty() || self.policy.allow.iter().any(|c| c.contains(ip));
        let unavailable = self.current.is_stale();
        let mut limits = lock(&self.limits);
        let active = limits.active;
        let counts = limits.per_ip.entry(ip).or_default();
        // Strangers learn nothing but that they are not allowed.
        let refuse = if !allowed {
            Some(Refusal::Forbidden)
        } else if self.paused {
            Some(Refusal::Paused)
        } else if active >= self.policy.max_clients {
            Some(Refusal::Busy)
        } else if counts.admitted as usize >= self.policy.max_per_ip {
            Some(Refusal::BusyFromYou)
        } else if unavailable {
            Some(Refusal::Changing)
        } else {
            None
        };
        match refuse {
            None => {
                counts.admitted += 1;
                limits.active += 1;
            }
            // Past a few refusals in progress from one address, the rest are answered at
            // once without waiting for their request (`reject`), so one address cannot
            // take the slots kept for answering others.
            Some(why) if counts.refusing >= REFUSING_PER_IP => {
                if counts.admitted == 0 && counts.refusing == 0 {
                    limits.per_ip.remove(&ip);
                }
                self.rejecting = Some(why);
                return None;
            }
            Some(_) => counts.refusing += 1,
        }
        drop(limits);
        Some(Session::new(self.current.clone(), peer, now, refuse))
    }

    fn reject(&mut self, stream: &mut mio::net::TcpStream, peer: SocketAddr, _now: Instant) {
        // Without a reason from `open`, the reactor is out of room for sessions.
        let why = self.rejecting.take().unwrap_or(Refusal::Busy);
        let mut wire = [0u8; HEADER_LEN + MAX_REASON];
        let len = encoding::encode_refusal(why.status(), why.reason(), &mut wire);
        // A fresh socket's send buffer takes these few bytes whole; if not, the client
        // sees the connection close, which is all we can afford under a flood.
        let _ = Write::write(stream, &wire[..len]);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Read what the client already sent, so the close that follows is a plain FIN and
        // not a reset, which could destroy the refusal in the client's buffers.
        let mut sink = [0u8; 512];
        for _ in 0..4 {
            if !matches!(Read::read(stream, &mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        if !self.policy.quiet {
            crate::say!("{} refused: {}", canonical(peer), why.reason());
        }
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
            if self.reload_due.is_some_and(|(at, _)| now >= at) {
                self.refresh(now, false);
            }
        } else {
            let due = *self.next_check.get_or_insert(now);
            if now >= due || self.reload_due.is_some_and(|(at, _)| now >= at) {
                // Snapshots still in use by clients are watched too; forgotten ones go.
                let by_ctime = self.by_ctime();
                self.older.retain(|w| w.upgrade().map(|s| s.check_changed(by_ctime)).is_some());
                self.prune_watches();
                self.refresh(now, false);
                self.next_check = Some(now + CHANGE_CHECK_EVERY);
            }
        }
        // A pending change that a failed reload put off is retried when the wait is over.
        let pending = self.reload_due.map(|(at, _)| self.reload_retry_at.map_or(at, |r| r.max(at)));
        [self.next_check, pending].into_iter().flatten().min()
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

    fn attach(&mut self, registry: &mio::Registry, token: mio::Token, waker: Arc<mio::Waker>) -> io::Result<()> {
        self.waker = Some(waker);
        if let Some(w) = &self.watch {
            use std::os::fd::AsRawFd;
            registry.register(&mut mio::unix::SourceFd(&w.as_raw_fd()), token, mio::Interest::READABLE)?;
        }
        Ok(())
    }

    fn event(&mut self, now: Instant) -> Option<Instant> {
        self.apply_events(now);
        self.reload_due.map(|(at, _)| at)
    }

    fn woken(&mut self, _now: Instant) {
        self.poll_reload();
    }

    fn reload(&mut self) {
        self.reload_snapshot();
    }

    fn pause(&mut self, paused: bool) {
        self.paused = paused;
    }

    fn in_flight(&self) -> usize {
        lock(&self.limits).active
    }
}

/// A path for a message, with anything a terminal would act on escaped.
fn shown(p: &Path) -> String {
    crate::encoding::text::path(p)
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
    /// `--listen`: an address or host name, with or without a port.
    pub listen: Option<String>,
    /// `--port`: when `--listen` names a port too, the two must agree.
    pub port: Option<u16>,
    pub quiet: bool,
    pub max_clients: Option<usize>,
    /// `None`: no limit per address.
    pub max_per_ip: Option<usize>,
    pub allow: Vec<Cidr>,
    pub token: Option<Vec<u8>>,
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
    #[error("bad --listen `{0}`: {1}")]
    BadListen(String, crate::encoding::target::TargetError),
    #[error("--listen {listen} names port {listen_port}, but --port says {port}; give the port once")]
    PortConflict { listen: String, listen_port: u16, port: u16 },
    #[error("cannot resolve --listen {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("event loop failed: {0}")]
    Poll(#[source] io::Error),
}

impl ServeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Input(_) => crate::exit::LOCAL_IO,
            ServeError::BadListen(..) | ServeError::PortConflict { .. } => crate::exit::USAGE,
            ServeError::Resolve { .. } | ServeError::Bind { .. } => crate::exit::NETWORK,
            ServeError::Poll(_) => crate::exit::INTERNAL,
        }
    }
}

/// Bytes a client may move per turn of the loop before the others get theirs
/// (nginx's sendfile_max_chunk).
pub const BUDGET: usize = 512 * 1024;

/// Files at least this large are announced before they are hashed, since hashing them
/// (from a cold disk especially) takes a moment the user should not mistake for a hang.
const ANNOUNCE_HASHING: u64 = 64 << 20;

/// Runs `xfer serve` until it is asked to exit.
pub fn run(opts: &Options) -> Result<crate::reactor::Exit, ServeError> {
    use std::io::IsTerminal;
    // Bind first: a port in use must fail at once, not after hashing a large file.
    // Clients that connect meanwhile wait in the backlog.
    let addrs = listen_addrs(opts)?;
    let (listener, addr) = bind_first(&addrs)?;
    // Watch before hashing, so a write during or after the hash is never missed.
    let watch = match watch::Watch::new(&opts.file) {
        Ok(w) => Some(w),
        Err(e) => {
            crate::say!(
                "xfer: cannot watch {} for changes ({e}); looking every {} s instead",
                shown(&opts.file),
                CHANGE_CHECK_EVERY.as_secs_f64()
            );
            None
        }
    };
    let snapshot = Arc::new(hash_announced(&opts.file)?);
    let nofile = crate::reactor::raise_nofile_limit();
    // Leave descriptors for the listener, epoll, signals, stdio and the served file, and
    // room to answer "busy" to some clients over the limit instead of dropping them.
    let reserve = (nofile / 4).min(64);
    let max_clients = opts.max_clients.unwrap_or(((nofile - reserve) * 7 / 8).max(1));
    // The limits are shared by all loops; each loop's slab is sized for all of them, since
    // any loop may accept any share of the connections.
    let slack = (max_clients / 8).clamp(8, 1024);
    let policy = Policy {
        max_clients,
        max_per_ip: opts.max_per_ip.unwrap_or(usize::MAX),
        allow: opts.allow.clone(),
        token: opts.token.as_ref().map(|t| *blake3::hash(t).as_bytes()),
        request_timeout: opts.request_timeout,
        send_timeout: opts.send_timeout,
        quiet: opts.quiet,
    };
    let shared = Shared::new(snapshot.clone());
    let cfg = crate::reactor::Config {
        max_sessions: max_clients.saturating_add(slack),
        budget: BUDGET,
        drain_timeout: opts.drain_timeout,
        signals: true,
        interactive: std::io::stdin().is_terminal(),
    };
    let clone = |l: &std::net::TcpListener| {
        l.try_clone()
            .map(mio::net::TcpListener::from_std)
            .map_err(|source| ServeError::Bind { addr: addr.to_string(), source })
    };
    // The first loop owns the signals, the prompt and the watch, and tells the others
    // what to do.
    let mut server = Server::with_shared(&shared, policy.clone());
    if let Some(w) = watch {
        server.watch(w);
    }
    let mut reactor = crate::reactor::Reactor::new(clone(&listener)?, server, cfg.clone()).map_err(ServeError::Poll)?;
    let leader = reactor.controller().map_err(ServeError::Poll)?;
    let mut followers = Vec::new();
    let mut handles = Vec::new();
    for _ in 1..opts.threads.max(1) {
        let server = Server::with_shared(&shared, policy.clone());
        let mut follower = crate::reactor::Reactor::new(
            clone(&listener)?,
            server,
            crate::reactor::Config { signals: false, ..cfg.clone() },
        )
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
    // Only the loops hold the socket now: when the last one stops listening, connects fail.
    drop(listener);
    // The first line is the contract with scripts and tests: the real bound address. It is
    // printed once everything is set up, so whoever reads it finds a server in its steady
    // state (all descriptors open, signals handled).
    crate::say_out(format_args!("{}", banner(opts, addr, &snapshot)));
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

/// Takes the first snapshot, saying so first when the file is large (with a progress bar
/// when stderr is a terminal).
fn hash_announced(file: &Path) -> Result<Snapshot, InputError> {
    use std::io::IsTerminal;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size < ANNOUNCE_HASHING {
        return Snapshot::open(file);
    }
    crate::say!("hashing {} ({}) ...", shown(file), crate::human_bytes(size));
    if !io::stderr().is_terminal() {
        return Snapshot::open(file);
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{decimal_bytes:>10}/{decimal_total_bytes} {decimal_bytes_per_sec:>12} eta {eta:>4} [{wide_bar}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let r = Snapshot::open_with(file, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    r
}

/// The lines printed on stdout at start: the address, the file, and a command that
/// fetches it, quoted so that it can be pasted into a shell as it is.
fn banner(opts: &Options, addr: SocketAddr, snap: &Snapshot) -> String {
    use crate::encoding::text::shell_quote;
    let host = match addr {
        a if a.ip().is_unspecified() => hostname(),
        SocketAddr::V6(v6) if v6.scope_id() != 0 => format!("[{}%{}]", v6.ip(), v6.scope_id()),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        a => a.ip().to_string(),
    };
    let name = opts.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    let target = shell_quote(&format!("{host}:{}", addr.port())).into_owned();
    let out = shell_quote(&format!("output_file/{name}")).into_owned();
    let token = if opts.token.is_some() { " --token \"$XFER_TOKEN\"" } else { "" };
    format!(
        "listening on {addr}\nserving {}: {} bytes, blake3 {}\nfetch it with: xfer fetch {target} {out}{token}\n",
        shown(&opts.file),
        snap.size(),
        encoding::hex(snap.digest()),
    )
}

/// The addresses to try, in order: `--listen` as given, or dual-stack `[::]` then `0.0.0.0`.
fn listen_addrs(opts: &Options) -> Result<Vec<SocketAddr>, ServeError> {
    use crate::encoding::target;
    let Some(l) = &opts.listen else {
        let port = opts.port.unwrap_or(crate::DEFAULT_PORT);
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
        ]);
    };
    let t = target::parse(l).map_err(|e| ServeError::BadListen(l.clone(), e))?;
    if let (Some(listen_port), Some(port)) = (t.port, opts.port)
        && listen_port != port
    {
        return Err(ServeError::PortConflict { listen: l.clone(), listen_port, port });
    }
    let port = t.port.or(opts.port).unwrap_or(crate::DEFAULT_PORT);
    crate::reactor::resolve(&t, port).map_err(|source| ServeError::Resolve { host: t.host.to_string(), source })
}

fn bind_first(addrs: &[SocketAddr]) -> Result<(std::net::TcpListener, SocketAddr), ServeError> {
    let mut last = None;
    for a in addrs {
        match crate::reactor::bind(*a) {
            Ok(l) => {
                let bound = l.local_addr().map_err(|source| ServeError::Bind { addr: a.to_string(), source })?;
                return Ok((l, bound));
            }
            Err(source) => last = Some(ServeError::Bind { addr: a.to_string(), source }),
        }
    }
    Err(last.unwrap_or_else(|| ServeError::Resolve {
        host: String::new(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
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
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadToken)));
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
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::UnsupportedVersion)));
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
        assert!(matches!(s.outcome, Outcome::Refused(Refusal::BadOffset)));
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
        assert!(matches!(c.phase, Phase::Request { refuse: Some(Refusal::Forbidden), .. }));
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
        assert!(!snap.check_changed(true));
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"zz", 10).unwrap();
        assert!(snap.check_changed(false));

        // A write that puts size and mtime back is seen only by the ctime.
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let snap = Snapshot::open(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"zz", 10).unwrap();
        f.set_modified(mtime).unwrap();
        assert!(!snap.check_changed(false), "size and mtime are as they were");
        assert!(snap.check_changed(true), "the ctime moved");

        // A rename over the path drops the old file's link count and moves its ctime, but
        // not its bytes: that is no change.
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let snap = Snapshot::open(&path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("new"), b"v2").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        assert!(!snap.check_changed(true));
        assert!(!snap.is_at(&path));
        assert!(matches!(Snapshot::open(dir.path()), Err(InputError::NotRegular { kind: "directory", .. })));
        assert!(matches!(Snapshot::open(&dir.path().join("missing")), Err(InputError::Open { .. })));
    }
}
