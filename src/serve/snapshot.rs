//! One version of the served file: its size, its BLAKE3 digest, and either its bytes (small
//! files) or the one open descriptor that every client's `sendfile(2)` reads from at its
//! own offset. Shared (`Arc`) by every client that started on it; no client owns a buffer.
//!
//! Owns: opening, checking and hashing the file, and telling whether the file on disk still
//! is this version. Must never know: clients, sockets, or any wire format (it holds no
//! wire bytes; each protocol renders its own head from it).
//!
//! Invariant: a snapshot seen to change is never finished as good. Its bytes in memory stay
//! exact whatever happens on disk; one served from the descriptor is `stale` once the file
//! changed, and its clients are cut.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::shown;
use crate::encoding::Digest;

/// Files up to this size are held in memory: head and body then leave in one `writev`,
/// and the snapshot is immune to the file changing on disk.
pub const MEMORY_MAX: u64 = 256 * 1024;

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
    memory: Option<Box<[u8]>>,
    identity: Identity,
    /// Set once the file is seen to differ from this snapshot on disk. Clients being served
    /// from the descriptor are then cut rather than handed mixed bytes.
    changed: AtomicBool,
    /// SHA-256 of the same bytes, for the tools that expect it (HTTP digest headers,
    /// `.sha256` files); computed off the event loop after the snapshot is first served
    /// (see [`Snapshot::start_sha256`]).
    sha256: OnceLock<Digest>,
    sha256_started: AtomicBool,
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
                file,
                size: identity.size,
                digest,
                memory,
                identity,
                changed: AtomicBool::new(false),
                sha256: OnceLock::new(),
                sha256_started: AtomicBool::new(false),
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

    /// The file's base name, as bytes (it need not be UTF-8).
    pub fn name(&self) -> &[u8] {
        use std::os::unix::ffi::OsStrExt;
        self.path.file_name().map_or(b"file", |n| n.as_bytes())
    }

    /// When the file was last modified, as of this snapshot.
    pub fn modified(&self) -> SystemTime {
        let (secs, nanos) = self.identity.mtime;
        let since = Duration::new(secs.unsigned_abs(), nanos as u32);
        if secs >= 0 { UNIX_EPOCH + since } else { UNIX_EPOCH - since }
    }

    /// The SHA-256 of the snapshot's bytes, once it is known.
    pub fn sha256(&self) -> Option<&Digest> {
        self.sha256.get()
    }

    /// Starts computing the SHA-256 on a helper thread, once: when the snapshot is first
    /// served over HTTP (native clients never need it, so they never pay for it). Serving
    /// goes on meanwhile; HTTP replies carry the SHA-256 once it is known. The helper holds
    /// the snapshot only while it reads a chunk: one replaced and forgotten stops it. A
    /// result is kept only if the file did not change while it was read, so it always
    /// describes the bytes the BLAKE3 digest does.
    pub fn want_sha256(self: &Arc<Self>) {
        if self.sha256_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("sha256".into()).spawn(move || {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let Some(snap) = weak.upgrade() else { return };
                if let Some(mem) = snap.memory() {
                    h.update(mem);
                    break;
                }
                if off >= snap.size {
                    break;
                }
                let n = ((snap.size - off) as usize).min(buf.len());
                if !matches!(read_exact_at(&snap.file, &mut buf[..n], off), Ok(true)) {
                    return;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
            let Some(snap) = weak.upgrade() else { return };
            if snap.in_memory() || snap.looks_unchanged() {
                let mut d = [0u8; 32];
                d.copy_from_slice(&h.finalize());
                let _ = snap.sha256.set(d);
            }
        });
        if let Err(e) = spawned {
            crate::say!("xfer: cannot start computing SHA-256 ({e}); HTTP replies go without it");
        }
    }

    /// Whether the bytes are held in memory (small files) rather than sent from the descriptor.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The bytes, when they are held in memory.
    pub fn memory(&self) -> Option<&[u8]> {
        self.memory.as_deref()
    }

    /// The open descriptor every client's `sendfile` reads from.
    pub fn file(&self) -> &File {
        &self.file
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

    /// Whether nothing (not even the ctime) says the file changed since it was hashed;
    /// unlike [`Snapshot::check_changed`], it marks nothing.
    fn looks_unchanged(&self) -> bool {
        !self.is_changed() && self.file.metadata().is_ok_and(|m| !self.identity.differs(&Identity::of(&m), true))
    }

    /// Records that the file's bytes were changed under this snapshot (a write was seen).
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Whether `path` still names this snapshot's file (not another file renamed over it).
    pub fn is_at(&self, path: &Path) -> bool {
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

/// A digest, and the bytes when they are kept in memory.
type Hashed = (Digest, Option<Box<[u8]>>);

/// Hashes `size` bytes of `file` with positional reads. Returns `None` if the file turned
/// out shorter than `size` (it is being truncated), and the bytes themselves when they are
/// few enough to keep in memory.
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
fn read_exact_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, off) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(Snapshot::open(Path::new("/dev/null")), Err(InputError::NotRegular { kind: "device", .. })));
    }

    /// A file shorter than the size it was opened with is being truncated: no digest.
    #[test]
    fn a_file_that_shrinks_while_hashed_gives_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let mut seen = Vec::new();
        let whole = hash_file(&f, data.len() as u64, &mut |done, _| seen.push(done)).unwrap();
        assert_eq!(whole.map(|(d, mem)| (d, mem.is_none())), Some((*blake3::hash(&data).as_bytes(), true)));
        assert_eq!(seen, [1 << 20, 2 << 20, 3 << 20], "progress after each MiB");
        assert!(hash_file(&f, data.len() as u64 + 1, &mut |_, _| {}).unwrap().is_none());
        let small = dir.path().join("s");
        std::fs::write(&small, b"abc").unwrap();
        let f = File::open(&small).unwrap();
        assert_eq!(hash_file(&f, 3, &mut |_, _| {}).unwrap().and_then(|(_, m)| m).as_deref(), Some(&b"abc"[..]));
        assert!(hash_file(&f, 4, &mut |_, _| {}).unwrap().is_none());
    }

    /// Polls for the SHA-256 for up to `limit`.
    fn sha256_within(snap: &Snapshot, limit: Duration) -> Option<Digest> {
        let start = std::time::Instant::now();
        loop {
            if let Some(d) = snap.sha256() {
                return Some(*d);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The SHA-256 describes the same bytes as the BLAKE3 digest, or is not given at all:
    /// a file changed under the snapshot gets none, and is also marked changed; an unchanged
    /// one (or one held in memory) gets the right one, and the stale, in-memory and changed
    /// states say what they should.
    #[test]
    fn sha256_is_given_only_for_the_snapshots_bytes() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = vec![3u8; 1 << 20];
        std::fs::write(&path, &data).unwrap();
        let snap = Arc::new(Snapshot::open(&path).unwrap());
        assert!(!snap.in_memory() && !snap.is_changed() && !snap.is_stale());
        snap.want_sha256();
        let want: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(sha256_within(&snap, Duration::from_secs(20)), Some(want));

        // Changed in place before the helper reads it: no SHA-256 at all.
        let snap = Arc::new(Snapshot::open(&path).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"zz", 10).unwrap();
        snap.want_sha256();
        assert_eq!(sha256_within(&snap, Duration::from_secs(2)), None, "a SHA-256 of other bytes");
        assert!(snap.check_changed(true) && snap.is_changed() && snap.is_stale());

        // A small file is held in memory: a change on disk cannot make it stale.
        let small = dir.path().join("small");
        std::fs::write(&small, b"abc").unwrap();
        let snap = Arc::new(Snapshot::open(&small).unwrap());
        std::fs::write(&small, b"xyz").unwrap();
        assert!(snap.in_memory() && snap.check_changed(true) && !snap.is_stale());
        snap.want_sha256();
        let abc: [u8; 32] = sha2::Sha256::digest(b"abc").into();
        assert_eq!(sha256_within(&snap, Duration::from_secs(20)), Some(abc));
    }
}
