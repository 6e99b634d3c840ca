//! The served file over time: which snapshot new clients get, and when to take a new one.
//!
//! A new snapshot is taken on SIGHUP, when the path is replaced by rename or removed and
//! put back, and when the file is written in place. Changes are seen as they happen
//! through the inotify [`Watch`] (one event loop has it), and looked for now and then
//! besides (every half second while clients are served, at most every 100 ms as clients
//! arrive), which is all there is where inotify is not.
//!
//! Owns: the current snapshot of this loop, the newest one shared by all loops, the older
//! ones still in use (watched too, so an in-place change still cuts their clients), and the
//! hashing of a new one on a helper thread. Must never know: clients, sockets, wire formats.
//!
//! Invariants: one hash at a time across all loops; clients in flight keep the snapshot
//! they started on; a snapshot whose file was written to is marked changed before any new
//! client could be handed it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::snapshot::{InputError, Snapshot};
use super::watch::{self, Watch};
use super::{lock, shown};

/// New clients look at the served file at most this often, so the first client after an
/// idle change gets the new version.
const OPEN_CHECK_EVERY: Duration = Duration::from_millis(100);
/// After a failed reload (the file missing, or changing while hashed), wait this long
/// before the next automatic attempt.
const RELOAD_BACKOFF: Duration = Duration::from_secs(1);
/// How often, at most, the served file is looked at while clients are being served.
pub const CHANGE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// After a change is seen, wait this long for the writer to finish before hashing.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);
/// ... but never longer than this after the first change of a burst.
const RELOAD_SETTLE_MAX: Duration = Duration::from_secs(1);

/// What the event loops of one server share about the file.
#[derive(Clone)]
pub struct SharedVersions {
    /// The newest snapshot: whoever reloads first puts it here, and the others adopt it.
    newest: Arc<Mutex<Arc<Snapshot>>>,
    /// Set while any loop's helper is hashing, so loops never hash the same file twice.
    reloading: Arc<AtomicBool>,
    /// Set while some loop watches the path with inotify: writes are then seen as they
    /// happen, and the ctime need not stand in for them.
    watching: Arc<AtomicBool>,
}

impl SharedVersions {
    pub fn new(snapshot: Arc<Snapshot>) -> SharedVersions {
        SharedVersions { newest: Arc::new(Mutex::new(snapshot)), reloading: Arc::default(), watching: Arc::default() }
    }
}

/// One event loop's view of the file over time.
pub struct Versions {
    current: Arc<Snapshot>,
    shared: SharedVersions,
    /// Earlier snapshots that clients may still be served from.
    older: Vec<Weak<Snapshot>>,
    next_check: Option<Instant>,
    next_open_check: Option<Instant>,
    reload_retry_at: Option<Instant>,
    /// The last reload failure logged, so a file that stays missing is not logged anew
    /// at every retry.
    last_reload_error: Option<String>,
    /// A new snapshot being hashed on a helper thread. The helper sends its result here
    /// before it wakes the loop, so a wake-up always finds the result waiting.
    reload_job: Option<Receiver<Result<Snapshot, InputError>>>,
    waker: Option<Arc<mio::Waker>>,
    /// inotify on the served path (one loop has it; see [`Versions::watch`]).
    watch: Option<Watch>,
    /// Inode watches and the snapshots on them.
    watched: Vec<(i32, Weak<Snapshot>)>,
    /// A change was seen: take a new snapshot at `.0`. Events in a burst (a file being
    /// written) push it back by RELOAD_SETTLE, but never past `.1`.
    reload_due: Option<(Instant, Instant)>,
}

impl Versions {
    pub fn new(shared: &SharedVersions) -> Versions {
        Versions {
            current: lock(&shared.newest).clone(),
            shared: shared.clone(),
            older: Vec::new(),
            next_check: None,
            next_open_check: None,
            reload_retry_at: None,
            last_reload_error: None,
            reload_job: None,
            waker: None,
            watch: None,
            watched: Vec::new(),
            reload_due: None,
        }
    }

    /// The snapshot new clients get.
    pub fn current(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// Gives this loop the inotify watch on the served path (started before the first
    /// snapshot was hashed, so no write after the hash goes unseen). Only one loop of a
    /// server watches; the others adopt its snapshots.
    pub fn watch(&mut self, mut w: Watch) {
        self.shared.watching.store(true, Ordering::Release);
        let snap = self.current.clone();
        self.watch_inode(&mut w, &snap, Instant::now());
        self.watch = Some(w);
    }

    /// Registers the watch with this loop's poll, and keeps the waker for the hashing
    /// helper.
    pub fn attach(&mut self, registry: &mio::Registry, token: mio::Token, waker: Arc<mio::Waker>) -> io::Result<()> {
        self.waker = Some(waker);
        if let Some(w) = &self.watch {
            use std::os::fd::AsRawFd;
            registry.register(&mut mio::unix::SourceFd(&w.as_raw_fd()), token, mio::Interest::READABLE)?;
        }
        Ok(())
    }

    /// A client is arriving: a change already seen is acted on for it; otherwise the file
    /// is looked at now and then (inotify may be missing, or may not see a network file
    /// system). `idle`: nobody is being served, so a new snapshot may be hashed at once.
    pub fn on_open(&mut self, now: Instant, idle: bool) {
        if self.reload_due.is_some() || self.current.is_changed() || self.next_open_check.is_none_or(|t| now >= t) {
            self.next_open_check = Some(now + OPEN_CHECK_EVERY);
            self.refresh(now, true, idle);
        }
    }

    /// Periodic work; returns when it wants to run next.
    pub fn tick(&mut self, now: Instant, sessions: usize, idle: bool) -> Option<Instant> {
        if sessions == 0 {
            self.next_check = None;
            if self.reload_due.is_some_and(|(at, _)| now >= at) {
                self.refresh(now, false, idle);
            }
        } else {
            let due = *self.next_check.get_or_insert(now);
            if now >= due || self.reload_due.is_some_and(|(at, _)| now >= at) {
                // Snapshots still in use by clients are watched too; forgotten ones go.
                let by_ctime = self.by_ctime();
                self.older.retain(|w| w.upgrade().map(|s| s.check_changed(by_ctime)).is_some());
                self.prune_watches();
                self.refresh(now, false, idle);
                self.next_check = Some(now + CHANGE_CHECK_EVERY);
            }
        }
        // A pending change that a failed reload put off is retried when the wait is over.
        let pending = self.reload_due.map(|(at, _)| self.reload_retry_at.map_or(at, |r| r.max(at)));
        [self.next_check, pending].into_iter().flatten().min()
    }

    /// inotify has something to say; returns when a new snapshot is due.
    pub fn event(&mut self, now: Instant) -> Option<Instant> {
        self.apply_events(now);
        self.reload_due.map(|(at, _)| at)
    }

    /// The waker went off: a helper may have finished hashing.
    pub fn woken(&mut self) {
        self.poll_reload();
    }

    /// Adds the inode watch for a new snapshot, and makes sure nothing slipped through
    /// between its hash and the watch: the path must still name it, unchanged.
    fn watch_inode(&mut self, w: &mut Watch, snap: &Arc<Snapshot>, now: Instant) {
        match w.watch_inode(snap.path()) {
            Ok(wd) => self.watched.push((wd, Arc::downgrade(snap))),
            Err(e) => crate::say!("xfer: cannot watch {}: {e}", shown(snap.path())),
        }
        if !snap.is_at(snap.path()) || snap.check_changed(true) {
            self.want_reload(now);
        }
    }

    /// Whether the ctime has to stand in for inotify (see `Identity::differs`).
    fn by_ctime(&self) -> bool {
        !self.shared.watching.load(Ordering::Acquire)
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
                    if !self.current.is_at(self.current.path()) {
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

    /// Takes a fresh snapshot of the same path (SIGHUP, or the file changed). Clients in
    /// flight keep the snapshot they started on. If another event loop already took a
    /// newer snapshot, this one adopts it instead of hashing the file again.
    ///
    /// Hashing reads the whole file. With transfers in flight it runs on a helper thread,
    /// so they keep moving, and the result is picked up when the helper wakes the loop.
    /// An idle server hashes at once: nobody waits but the next client, who then gets the
    /// new version instead of a refusal.
    pub fn reload(&mut self, idle: bool) {
        // Events already queued are about the old snapshots; read them before hashing, so
        // that they are not taken for writes to the new one.
        self.apply_events(Instant::now());
        if self.adopt_newer() || self.reload_job.is_some() {
            return;
        }
        self.reload_due = None;
        let path = self.current.path().to_path_buf();
        match &self.waker {
            Some(waker) if !idle => {
                if self.shared.reloading.swap(true, Ordering::AcqRel) {
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
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err(InputError::Open {
                path: self.current.path().to_path_buf(),
                source: io::Error::other("hashing thread died"),
            }),
        };
        self.reload_job = None;
        self.install(r);
        self.shared.reloading.store(false, Ordering::Release);
    }

    /// Makes a freshly read snapshot current (and shared), or reports why there is none.
    fn install(&mut self, r: Result<Snapshot, InputError>) {
        let now = Instant::now();
        match r {
            Ok(s) => {
                let fresh = Arc::new(s);
                *lock(&self.shared.newest) = fresh.clone();
                self.reload_retry_at = None;
                self.last_reload_error = None;
                crate::say!(
                    "reloaded {}: {} bytes, blake3 {}",
                    shown(fresh.path()),
                    fresh.size(),
                    blake3::Hash::from_bytes(*fresh.digest()).to_hex()
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
        let newest = lock(&self.shared.newest).clone();
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
    fn refresh(&mut self, now: Instant, eager: bool, idle: bool) {
        self.poll_reload();
        self.apply_events(now);
        self.adopt_newer();
        self.reload_if_changed(now, eager, idle);
    }

    /// Reloads when the file changed (or a change is pending), unless a failed attempt
    /// asks to wait.
    fn reload_if_changed(&mut self, now: Instant, eager: bool, idle: bool) {
        // One reload at a time, in this loop or any other.
        if self.reload_job.is_some() || self.shared.reloading.load(Ordering::Acquire) {
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
        let moved = !snap.is_at(snap.path());
        if due || unannounced || moved {
            if self.last_reload_error.is_none() {
                let what = if moved { "replaced or removed" } else { "changed on disk" };
                crate::say!("{}: {what}; taking a new snapshot", shown(snap.path()));
            }
            self.reload(idle);
        }
    }
}
