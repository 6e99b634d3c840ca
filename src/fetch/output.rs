//! Where the fetched bytes go, decided and checked before any byte is fetched.
//!
//! - A regular file (new or existing) gets a temporary file beside it, which is renamed
//!   over it only once the digest matched. An existing file's permissions (and owner, when
//!   we are root) carry over to the new one; a new file gets the usual umask mode. With
//!   resuming on (the default), the temporary file is the stable partial `.NAME.xfer.part`
//!   (see `partial`): kept when a transfer that can be resumed fails, found again by the
//!   same command, and locked while in use.
//! - A symbolic link is followed: the link stays, and the file it points to is replaced,
//!   with the temporary file beside that file (a rename never crosses a file system).
//! - An existing device or FIFO is never renamed over: the bytes are written straight
//!   into it, as to stdout, and the digest is still checked (a mismatch still fails).
//! - `-` is stdout.
//! - A directory (or a path ending in `/`, or no output at all: the current directory):
//!   the file is saved there under the name the server gives, made safe first.
//!
//! Owns the temporary file's life: on a failure, and on SIGINT, SIGTERM and SIGHUP, it is
//! removed, or kept when it can be resumed. It must never know the wire format.

use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::FetchError;
use super::partial::{self, Record};

/// What the signal handler must do about the file being written. Holding the lock across
/// the final rename makes "handled" and "renamed" mutually exclusive.
struct Pending {
    path: PathBuf,
    info: Option<PathBuf>,
    /// A partial whose record is written: keep it, it can be resumed.
    keep: bool,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

fn pending() -> std::sync::MutexGuard<'static, Option<Pending>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Symbolic links followed at most (the kernel's own limit, MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// What the command line asked for, before anything is known of the file.
#[derive(Debug, Clone)]
pub enum Plan {
    Stdout,
    /// A file (or device, FIFO, link): its name is the user's.
    Path(PathBuf),
    /// A directory: the name is the server's.
    Dir(PathBuf),
}

impl Plan {
    /// Reads the output argument (`None`: the current directory) and checks what can be
    /// checked before the network: a typo should not cost a transfer.
    pub fn new(out: Option<&Path>) -> Result<Plan, FetchError> {
        let Some(out) = out else { return Ok(Plan::Dir(PathBuf::from("."))) };
        if out.as_os_str().is_empty() {
            return Err(FetchError::EmptyOutput);
        }
        if out.as_os_str() == "-" {
            return Ok(Plan::Stdout);
        }
        let slash = out.as_os_str().as_bytes().ends_with(b"/");
        match std::fs::metadata(out) {
            Ok(m) if m.is_dir() => Ok(Plan::Dir(out.to_path_buf())),
            _ if slash => Err(FetchError::NoOutputDir(out.to_path_buf())),
            _ => Ok(Plan::Path(out.to_path_buf())),
        }
    }
}

/// Where the body goes.
pub enum Output {
    Stdout,
    /// An existing device or FIFO, written straight into.
    Direct {
        path: PathBuf,
        file: File,
    },
    /// A regular file, replaced atomically once verified.
    Atomic(Box<Temp>),
}

/// The temporary file (or partial) beside the target; removed on drop unless committed or
/// kept.
pub struct Temp {
    /// The file that will be replaced (a symbolic link's target, not the link).
    target: PathBuf,
    path: PathBuf,
    /// The partial's record, when resuming is on.
    info: Option<PathBuf>,
    file: Option<File>,
    /// The record found beside an existing partial (resuming is possible from it).
    found: Option<Record>,
    /// The record written for this attempt: the partial can be kept.
    written: bool,
    keep: bool,
    committed: bool,
}

impl Output {
    /// Checks the output path and gets it ready: opens the device or FIFO, or creates the
    /// temporary file (with `resume`, this source's key: opens and locks the stable partial,
    /// and reads its record). Fails before any network traffic on anything that would
    /// fail later.
    pub fn prepare(out: &Path, resume: Option<&str>) -> Result<Output, FetchError> {
        if out.as_os_str().is_empty() {
            return Err(FetchError::EmptyOutput);
        }
        if out.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        if out.as_os_str().as_bytes().ends_with(b"/") {
            // With a trailing `/`, only a directory (or a link to one) exists at all: the
            // kernel answers ENOTDIR for anything else.
            return Err(match std::fs::metadata(out) {
                Ok(_) => FetchError::OutputIsDir(out.to_path_buf()),
                Err(_) => FetchError::NoOutputDir(out.to_path_buf()),
            });
        }
        let target = follow_links(out)?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) => existing(out, target, &m, resume),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                check_new(&target)?;
                Ok(Output::Atomic(Box::new(Temp::create(target, None, resume)?)))
            }
            Err(e) => Err(path_error(&target, e)),
        }
    }

    /// Where bytes go, for the receiver: the temporary file, the device, or stdout.
    pub fn writer(&self) -> Result<Writer, FetchError> {
        let dup = |f: &File, p: &Path| f.try_clone().map_err(|e| FetchError::Output { path: p.into(), source: e });
        Ok(match self {
            Output::Stdout => Writer::Stdout,
            Output::Direct { path, file } => Writer::Stream(dup(file, path)?),
            Output::Atomic(t) => Writer::Temp(dup(t.file.as_ref().expect("open until committed"), &t.path)?),
        })
    }

    /// Whether bytes reach the user as they arrive (stdout, a device, a FIFO), so that a
    /// failed check can only be reported, not undone.
    pub fn is_stream(&self) -> bool {
        !matches!(self, Output::Atomic(_))
    }

    /// What to call the output in messages.
    pub fn name(&self) -> PathBuf {
        match self {
            Output::Stdout => PathBuf::from("<stdout>"),
            Output::Direct { path, .. } => path.clone(),
            Output::Atomic(t) => t.target.clone(),
        }
    }

    pub fn temp(&mut self) -> Option<&mut Temp> {
        match self {
            Output::Atomic(t) => Some(&mut **t),
            _ => None,
        }
    }

    /// Makes a verified file permanent: sync, rename over the target, sync the directory.
    pub fn commit(self) -> Result<(), FetchError> {
        match self {
            Output::Stdout | Output::Direct { .. } => Ok(()),
            Output::Atomic(t) => (*t).commit(),
        }
    }
}

/// What the receiver writes into (a second handle on the output, so that the writer thread
/// owns it). A temporary file is written at positions, after a resumed prefix.
pub enum Writer {
    Temp(File),
    Stream(File),
    Stdout,
}

/// An output that exists already.
fn existing(out: &Path, target: PathBuf, m: &Metadata, resume: Option<&str>) -> Result<Output, FetchError> {
    let ft = m.file_type();
    if ft.is_dir() {
        return Err(FetchError::OutputIsDir(out.to_path_buf()));
    }
    if ft.is_file() {
        return Ok(Output::Atomic(Box::new(Temp::create(target, Some(m), resume)?)));
    }
    if ft.is_socket() {
        return Err(FetchError::BadOutput { path: target, why: "is a socket, which cannot be written to" });
    }
    if ft.is_symlink() {
        // Still a link after MAX_LINKS hops: a loop.
        return Err(path_error(&target, io::Error::from_raw_os_error(libc::ELOOP)));
    }
    // A device or FIFO. Opening a FIFO waits for its reader, like `cat > fifo`.
    let file = OpenOptions::new().write(true).open(&target).map_err(|e| path_error(&target, e))?;
    Ok(Output::Direct { path: target, file })
}

/// Follows symbolic links in the last component until it names something else (or nothing).
fn follow_links(out: &Path) -> Result<PathBuf, FetchError> {
    let mut p = out.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(|e| path_error(&p, e))?;
                p = if link.is_absolute() { link } else { parent_dir(&p).join(link) };
            }
            _ => return Ok(p),
        }
    }
    Ok(p)
}

/// A file to be created: its directory must exist and be a directory, and its name must fit.
fn check_new(target: &Path) -> Result<(), FetchError> {
    let dir = parent_dir(target);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(FetchError::BadOutput { path: dir.to_path_buf(), why: "is not a directory" }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FetchError::NoOutputDir(dir.to_path_buf())),
        Err(e) => return Err(path_error(dir, e)),
    }
    let name_len = target.file_name().map_or(0, |n| n.len());
    if name_len > name_max(dir) {
        return Err(path_error(target, io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    Ok(())
}

/// The longest file name the directory's file system takes.
fn name_max(dir: &Path) -> usize {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 255 };
    // SAFETY: c is a valid NUL-terminated path for the call.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 { n as usize } else { 255 }
}

fn path_error(path: &Path, e: io::Error) -> FetchError {
    FetchError::Output { path: path.to_path_buf(), source: e }
}

/// The directory a path is in (`.` for a bare name): where the temporary file goes, and
/// what is synced after the rename.
fn parent_dir(p: &Path) -> &Path {
    p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A file name from the network made safe to save under: its last `/`-separated part,
/// which must not be empty, `.`, `..`, hidden (a leading `.` could aim at a dotfile such
/// as `.bashrc`), hold a control character, or be longer than a file system takes.
pub fn safe_name(raw: &[u8]) -> Result<OsString, &'static str> {
    let base = raw.rsplit(|&b| b == b'/').next().unwrap_or(raw);
    if base.is_empty() || base == b"." || base == b".." {
        return Err("it is empty or a directory name");
    }
    if base.starts_with(b".") {
        return Err("it names a hidden file");
    }
    if base.len() > 255 {
        return Err("it is longer than 255 bytes");
    }
    // C0 controls and DEL are ASCII, so they survive the lossy decoding as themselves.
    if String::from_utf8_lossy(base).chars().any(char::is_control) {
        return Err("it holds control characters");
    }
    Ok(OsString::from_vec(base.to_vec()))
}

impl Temp {
    /// Creates the temporary file beside `target`, with the old file's mode (and owner,
    /// as root) when there is one, and private until then. With
    /// `resume` (this source's key), it is the stable, locked partial, and a record left by
    /// an earlier attempt from the same source is read.
    fn create(target: PathBuf, old: Option<&Metadata>, resume: Option<&str>) -> Result<Temp, FetchError> {
        // Replacing a file: private until take_attributes gives it the old file's mode.
        let mode = if old.is_some() { 0o600 } else { 0o666 };
        let (path, file, info) = match resume {
            Some(_) => {
                let (path, info) = partial::paths(&target);
                let mut pending = pending();
                let file = open_locked(&path, mode)?.ok_or_else(|| FetchError::Locked(target.clone()))?;
                *pending = Some(Pending { path: path.clone(), info: Some(info.clone()), keep: false });
                (path, file, Some(info))
            }
            None => Temp::unique(&target, mode)?,
        };
        let found = match (&info, resume) {
            (Some(i), Some(key)) => partial::read_record(i).filter(|r| r.source == key && r.resumable()),
            _ => None,
        };
        let mut temp =
            Temp { target, path, info, file: Some(file), found, written: false, keep: false, committed: false };
        if temp.found.is_none() {
            // Bytes without a record of what they are cannot be trusted: start afresh.
            temp.truncate(0)?;
        } else if temp.resume_point().is_some() {
            // What an earlier attempt kept stays kept until this one proves it wrong
            // (discard) or starts its own bytes (begin): a failure before the server
            // answers, or a signal while waiting for it, must not lose it.
            temp.written = true;
            temp.keep = true;
            if let Some(p) = pending().as_mut() {
                p.keep = true;
            }
        }
        if let Some(m) = old {
            temp.take_attributes(m)?;
        }
        Ok(temp)
    }

    /// A temporary file of this process's own (resuming off): never kept.
    fn unique(target: &Path, mode: u32) -> Result<(PathBuf, File, Option<PathBuf>), FetchError> {
        let dir = parent_dir(target);
        let name = target.file_name().ok_or_else(|| FetchError::OutputIsDir(target.to_path_buf()))?;
        // Keep the temporary name within NAME_MAX however long the output name is.
        let mut stem = name.as_bytes().to_vec();
        stem.truncate(200);
        let stem = String::from_utf8_lossy(&stem).into_owned();
        let pid = std::process::id();
        for n in 0..100u32 {
            let path = dir.join(format!(".{stem}.xfer-{pid}-{n}.part"));
            let mut pending = pending();
            match OpenOptions::new().write(true).create_new(true).mode(mode).open(&path) {
                Ok(file) => {
                    *pending = Some(Pending { path: path.clone(), info: None, keep: false });
                    return Ok((path, file, None));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(path_error(&path, e)),
            }
        }
        Err(path_error(dir, io::Error::other("no free temporary name")))
    }

    /// The file this temporary file will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where an earlier attempt left off: the partial's length and what it is a prefix of.
    pub fn resume_point(&self) -> Option<(u64, &Record)> {
        let len = self.file.as_ref()?.metadata().ok()?.len();
        self.found.as_ref().filter(|_| len > 0).map(|r| (len, r))
    }

    /// Starts this attempt's bytes at `offset` (the prefix before it is kept; anything
    /// after it goes), and records what they are part of, so that they can be kept.
    pub fn begin(&mut self, offset: u64, record: Option<Record>) -> Result<(), FetchError> {
        self.truncate(offset)?;
        self.found = None;
        // From here, whether to keep the partial is decided by how this attempt ends.
        self.keep = false;
        if let (Some(info), Some(r)) = (&self.info, record.filter(Record::resumable)) {
            partial::write_record(info, &r).map_err(|e| path_error(info, e))?;
            self.written = true;
            self.found = Some(r);
            if let Some(p) = pending().as_mut() {
                p.keep = true;
            }
        }
        Ok(())
    }

    /// Drops what an earlier attempt left (its prefix turned out wrong, or belongs to
    /// another version of the file).
    pub fn discard(&mut self) -> Result<(), FetchError> {
        self.found = None;
        self.written = false;
        self.keep = false;
        if let Some(p) = pending().as_mut() {
            p.keep = false;
        }
        if let Some(info) = &self.info {
            let _ = std::fs::remove_file(info);
        }
        self.truncate(0)
    }

    /// Keeps the partial after a failure that can be resumed; returns its length, or
    /// `None` when there is nothing worth keeping (no record, no byte).
    pub fn keep(&mut self) -> Option<u64> {
        let len = self.file.as_ref()?.metadata().ok()?.len();
        if self.written && len > 0 {
            self.keep = true;
            Some(len)
        } else {
            None
        }
    }

    /// The partial's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn truncate(&mut self, len: u64) -> Result<(), FetchError> {
        if let Some(f) = &self.file {
            f.set_len(len).map_err(|e| path_error(&self.path, e))?;
        }
        Ok(())
    }

    /// Gives the temporary file the old file's owner (only root may) and exact mode (the
    /// umask narrowed it at creation, and chown clears set-id bits, so chmod comes last).
    fn take_attributes(&self, old: &Metadata) -> Result<(), FetchError> {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.file else { return Ok(()) };
        let fd = file.as_raw_fd();
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            if libc::geteuid() == 0 && libc::fchown(fd, old.uid(), old.gid()) != 0 {
                return Err(path_error(&self.path, io::Error::last_os_error()));
            }
            if libc::fchmod(fd, old.mode() & 0o7777) != 0 {
                return Err(path_error(&self.path, io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn commit(mut self) -> Result<(), FetchError> {
        let file = self.file.take().expect("committed once");
        file.sync_all().map_err(|e| path_error(&self.path, e))?;
        {
            let mut pending = pending();
            // The record goes first, while the lock is held: once the lock is released it
            // may already be the record of another fetch's new partial.
            if let Some(info) = &self.info {
                let _ = std::fs::remove_file(info);
            }
            std::fs::rename(&self.path, &self.target).map_err(|e| path_error(&self.target, e))?;
            *pending = None;
            self.committed = true;
        }
        // The lock goes with the descriptor, after the rename: a fetch that opened the
        // partial meanwhile finds, once it has the lock, that the name no longer leads to
        // it (open_locked), and starts a partial of its own.
        drop(file);
        let dir = parent_dir(&self.target);
        // The rename is only durable once the directory is; a failure here is reported
        // although the file is already in place.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| path_error(dir, e))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut pending = pending();
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
            if let Some(info) = &self.info {
                let _ = std::fs::remove_file(info);
            }
        }
        *pending = None;
    }
}

/// Opens (or creates) the stable partial at `path` and takes its lock; `None` if another
/// fetch holds it. Opening and locking are two steps: if the file was renamed into place by
/// the fetch that held the lock in between, the lock is on the finished output, and writing
/// there would destroy it; so the name must still lead to the locked file, or it is opened
/// again.
fn open_locked(path: &Path, mode: u32) -> Result<Option<File>, FetchError> {
    for _ in 0..MAX_LINKS {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map_err(|e| path_error(path, e))?;
        if !partial::lock(&file).map_err(|e| path_error(path, e))? {
            return Ok(None);
        }
        let held = file.metadata().map_err(|e| path_error(path, e))?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            // Renamed away (or replaced) between open and lock: try the name again.
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(path_error(path, e)),
        }
    }
    Err(path_error(path, io::Error::other("the partial keeps being replaced")))
}

/// On SIGINT, SIGTERM or SIGHUP: removes the temporary file, or keeps a partial that can
/// be resumed; says so, and exits with 128 + the signal's number, as a shell reports a
/// process killed by it.
pub fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        let Some(sig) = signals.forever().next() else { return };
        let name = match sig {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let pending = pending();
        let shown = |p: &Path| crate::encoding::text::path(p);
        // After the ^C a terminal echoes (and a progress bar), start on a fresh line.
        let nl = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { "\n" } else { "" };
        match pending.as_ref() {
            Some(p) if p.keep && std::fs::metadata(&p.path).is_ok_and(|m| m.len() > 0) => {
                let len = std::fs::metadata(&p.path).map_or(0, |m| m.len());
                crate::say!(
                    "{nl}xfer: fetch: interrupted ({name}); kept {} in {}; run the same command again to resume",
                    crate::human_bytes(len),
                    shown(&p.path)
                );
            }
            Some(p) => {
                let _ = std::fs::remove_file(&p.path);
                if let Some(info) = &p.info {
                    let _ = std::fs::remove_file(info);
                }
                crate::say!("{nl}xfer: fetch: interrupted ({name}); nothing written");
            }
            // Already renamed into place, or writing to a stream.
            None => crate::say!("{nl}xfer: fetch: interrupted ({name})"),
        }
        std::process::exit(128 + sig);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_network() {
        assert_eq!(safe_name(b"report.pdf").unwrap(), "report.pdf");
        assert_eq!(safe_name(b"../../etc/passwd").unwrap(), "passwd");
        assert_eq!(safe_name(b"a/b").unwrap(), "b");
        assert_eq!(safe_name(b"caf\xc3\xa9 \xff.txt").unwrap(), OsString::from_vec(b"caf\xc3\xa9 \xff.txt".to_vec()));
        for bad in
            [&b""[..], b"..", b".", b"dir/", b".bashrc", b"a\nb", b"a\x1b[2Jb", "x\u{85}y".as_bytes(), &[b'x'; 300]]
        {
            assert!(safe_name(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Each refusal says its own reason; the limits are exact.
        assert_eq!(safe_name(b"."), Err("it is empty or a directory name"));
        assert_eq!(safe_name(b"a/.."), Err("it is empty or a directory name"));
        assert_eq!(safe_name(b"a\x7fb"), Err("it holds control characters"));
        assert_eq!(safe_name(&[b'x'; 256]), Err("it is longer than 255 bytes"));
        assert_eq!(safe_name(&[b'x'; 255]).unwrap().len(), 255);
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn write_all(out: &Output, bytes: &[u8]) {
        use std::io::Write;
        let Ok(Writer::Temp(mut f)) = out.writer() else { panic!("not a temporary file") };
        f.write_all(bytes).unwrap();
    }

    /// Every way an output path can be wrong is found before connecting, with its own error.
    #[test]
    fn bad_output_paths_fail_with_their_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file"), b"x").unwrap();
        let err = |p: &Path| Output::prepare(p, None).err().expect("must fail");
        assert!(matches!(err(Path::new("")), FetchError::EmptyOutput));
        assert!(matches!(err(&d.join("sub/")), FetchError::NoOutputDir(_)));
        std::fs::create_dir(d.join("sub")).unwrap();
        assert!(matches!(err(Path::new(&format!("{}/sub/", d.display()))), FetchError::OutputIsDir(_)));
        assert!(matches!(err(&d.join("sub")), FetchError::OutputIsDir(_)));
        assert!(matches!(err(&d.join("none/new")), FetchError::NoOutputDir(p) if p == d.join("none")));
        assert!(
            matches!(err(&d.join("file/new")), FetchError::Output { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR))
        );
        assert!(matches!(check_new(&d.join("file/new")), Err(FetchError::BadOutput { why: "is not a directory", .. })));
        // A parent that cannot be looked at is reported as it is, not as missing.
        std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
        assert!(
            matches!(check_new(&d.join("loop/new")), Err(FetchError::Output { source, .. }) if source.raw_os_error() == Some(libc::ELOOP))
        );
        std::fs::remove_file(d.join("loop")).unwrap();
        let long = d.join("n".repeat(name_max(d) + 1));
        assert!(
            matches!(err(&long), FetchError::Output { source, .. } if source.raw_os_error() == Some(libc::ENAMETOOLONG))
        );
        assert_eq!(files_in(d), ["file", "sub"], "nothing created");
        // The longest name the file system takes is fine.
        let longest = Output::prepare(&d.join("n".repeat(name_max(d))), None).unwrap();
        assert!(!longest.is_stream());
    }

    /// A new file appears whole only at commit; until then only the temporary file exists,
    /// and dropping it leaves nothing.
    #[test]
    fn a_new_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut out = Output::prepare(&target, None).unwrap();
        assert!(!out.is_stream() && out.temp().is_some());
        assert_eq!(out.name(), target);
        write_all(&out, b"hello");
        assert!(!target.exists());
        assert_eq!(files_in(dir.path()).len(), 1, "one temporary file");
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(files_in(dir.path()), ["out.bin"]);
        // A temporary name already taken (a leftover of a process with our pid) is skipped,
        // and the leftover left alone.
        let taken = dir.path().join(format!(".next.bin.xfer-{}-0.part", std::process::id()));
        std::fs::write(&taken, b"not ours").unwrap();
        let mut next = Output::prepare(&dir.path().join("next.bin"), None).unwrap();
        assert_ne!(next.temp().unwrap().path(), taken);
        drop(next);
        assert_eq!(std::fs::read(&taken).unwrap(), b"not ours");
        std::fs::remove_file(&taken).unwrap();
        // Not committed: nothing left at all.
        let other = dir.path().join("other.bin");
        let out = Output::prepare(&other, None).unwrap();
        write_all(&out, b"half");
        drop(out);
        assert_eq!(files_in(dir.path()), ["out.bin"]);
    }

    /// An existing file keeps its mode; a link keeps being a link to the replaced file.
    #[test]
    fn an_existing_file_keeps_its_mode_and_a_link_its_target() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"old").unwrap();
        // As root the owner carries over too, and the set-id bit survives the chown.
        let root = unsafe { libc::geteuid() } == 0;
        let mode = if root { 0o2750 } else { 0o640 };
        if root {
            std::os::unix::fs::chown(&real, Some(4321), Some(4322)).unwrap();
        }
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let out = Output::prepare(&link, None).unwrap();
        assert_eq!(out.name(), real, "the link's target is what gets replaced");
        write_all(&out, b"new");
        out.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let m = std::fs::metadata(&real).unwrap();
        assert_eq!(m.mode() & 0o7777, mode);
        if root {
            assert_eq!((m.uid(), m.gid()), (4321, 4322));
        }
    }

    /// Stdout and devices are streams, written straight into and never renamed over.
    #[test]
    fn stdout_and_devices_are_streams() {
        let out = Output::prepare(Path::new("-"), None).unwrap();
        assert!(out.is_stream() && matches!(out, Output::Stdout));
        assert_eq!(out.name(), Path::new("<stdout>"));
        let mut null = Output::prepare(Path::new("/dev/null"), None).unwrap();
        assert!(null.is_stream() && null.temp().is_none());
        assert_eq!(null.name(), Path::new("/dev/null"));
        assert!(matches!(null.writer(), Ok(Writer::Stream(_))));
        null.commit().unwrap();
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    }

    /// The partial's life: locked while in use, kept only with a record and bytes, found
    /// again by the same source only, dropped by discard, gone once committed.
    #[test]
    fn a_partial_is_kept_found_locked_discarded_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let (part, info) = partial::paths(&target);
        let record = Record { source: "xfer://h:1".into(), blake3: Some([1; 32]), size: Some(10), ..Record::default() };
        let mut out = Output::prepare(&target, Some("xfer://h:1")).unwrap();
        {
            let t = out.temp().unwrap();
            assert_eq!(t.path(), part);
            assert!(t.resume_point().is_none(), "nothing yet");
            assert_eq!(t.keep(), None, "no record, no byte: nothing to keep");
            t.begin(0, Some(record.clone())).unwrap();
            assert_eq!(t.keep(), None, "a record but no byte: nothing to keep");
        }
        assert!(
            matches!(Output::prepare(&target, Some("xfer://h:1")), Err(FetchError::Locked(_))),
            "a second fetch into the same output is told it is locked"
        );
        write_all(&out, b"01234");
        assert_eq!(out.temp().unwrap().keep(), Some(5));
        drop(out);
        assert!(part.exists() && info.exists(), "kept");
        // Another source's fetch does not resume it (and starts afresh).
        let mut other = Output::prepare(&target, Some("xfer://h:2")).unwrap();
        assert!(other.temp().unwrap().resume_point().is_none());
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
        drop(other);
        // A record beside an empty partial: nothing to resume from.
        partial::write_record(&info, &record).unwrap();
        let mut empty = Output::prepare(&target, Some("xfer://h:1")).unwrap();
        assert!(empty.temp().unwrap().resume_point().is_none());
        drop(empty);
        // The same source resumes from where it stopped.
        std::fs::write(&part, b"01234").unwrap();
        partial::write_record(&info, &record).unwrap();
        let mut again = Output::prepare(&target, Some("xfer://h:1")).unwrap();
        let t = again.temp().unwrap();
        assert_eq!(t.resume_point().map(|(n, r)| (n, r.clone())), Some((5, record.clone())));
        assert_eq!(t.keep(), Some(5), "kept again if this attempt fails before a byte");
        t.discard().unwrap();
        assert!(t.resume_point().is_none() && !info.exists());
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
        t.begin(0, Some(record.clone())).unwrap();
        write_all(&again, b"0123456789");
        again.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"0123456789");
        assert_eq!(files_in(dir.path()), ["data"], "no partial, no record left");
    }
}
