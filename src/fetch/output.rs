//! Where the fetched bytes go, decided and checked before any byte is fetched.
//!
//! - A regular file (new or existing) gets a temporary file beside it, which is renamed
//!   over it only once the digest matched. An existing file's permissions (and owner, when
//!   we are root) carry over to the new one; a new file gets the usual umask mode.
//! - A symbolic link is followed: the link stays, and the file it points to is replaced,
//!   with the temporary file beside that file (a rename never crosses a file system).
//! - An existing device or FIFO is never renamed over: the bytes are written straight
//!   into it, as to stdout, and the digest is still checked (a mismatch still fails).
//! - `-` is stdout.
//!
//! Owns the temporary file's life: it is removed on every failure, and on SIGINT, SIGTERM
//! and SIGHUP (closing the terminal). It must never know the wire format.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::FetchError;

/// Path of the temporary file being written, for the signal handler to remove. Holding the
/// lock across the final rename makes "removed" and "renamed" mutually exclusive.
static PENDING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Symbolic links followed at most (the kernel's own limit, MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// Where the body goes.
pub enum Output {
    Stdout,
    /// An existing device or FIFO, written straight into.
    Direct {
        path: PathBuf,
        file: File,
    },
    /// A regular file, replaced atomically once verified.
    Atomic(Temp),
}

/// The temporary file beside the target; removed on drop unless committed.
pub struct Temp {
    /// The file that will be replaced (a symbolic link's target, not the link).
    target: PathBuf,
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl Output {
    /// Checks the output path and gets it ready: opens the device or FIFO, or creates the
    /// temporary file. Fails before any network traffic on anything that would fail later.
    pub fn prepare(out: &Path) -> Result<Output, FetchError> {
        if out.as_os_str().is_empty() {
            return Err(FetchError::EmptyOutput);
        }
        if out.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        if out.as_os_str().as_bytes().ends_with(b"/") {
            return Err(match std::fs::metadata(out) {
                Ok(m) if m.is_dir() => FetchError::OutputIsDir(out.to_path_buf()),
                _ => FetchError::NoOutputDir(out.to_path_buf()),
            });
        }
        let target = follow_links(out)?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) => existing(out, target, &m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                check_new(&target)?;
                Ok(Output::Atomic(Temp::create(target, None)?))
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

    /// Makes a verified file permanent: sync, rename over the target, sync the directory.
    pub fn commit(self) -> Result<(), FetchError> {
        match self {
            Output::Stdout | Output::Direct { .. } => Ok(()),
            Output::Atomic(t) => t.commit(),
        }
    }
}

/// What the receiver writes into (a second handle on the output, so that the writer thread
/// owns it).
pub enum Writer {
    Temp(File),
    Stream(File),
    Stdout,
}

/// An output that exists already.
fn existing(out: &Path, target: PathBuf, m: &Metadata) -> Result<Output, FetchError> {
    let ft = m.file_type();
    if ft.is_dir() {
        return Err(FetchError::OutputIsDir(out.to_path_buf()));
    }
    if ft.is_file() {
        return Ok(Output::Atomic(Temp::create(target, Some(m))?));
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

impl Temp {
    /// Creates the temporary file beside `target`, with the old file's mode (and owner,
    /// as root) when there is one: the partial copy of a private file is private too.
    fn create(target: PathBuf, old: Option<&Metadata>) -> Result<Temp, FetchError> {
        let dir = parent_dir(&target).to_path_buf();
        let name = target.file_name().ok_or_else(|| FetchError::OutputIsDir(target.clone()))?;
        // Keep the temporary name within NAME_MAX however long the output name is.
        let mut stem = name.as_bytes().to_vec();
        if stem.len() > 200 {
            stem.truncate(200);
        }
        let stem = String::from_utf8_lossy(&stem).into_owned();
        let pid = std::process::id();
        for n in 0..100u32 {
            let path = dir.join(format!(".{stem}.xfer-{pid}-{n}.part"));
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            let mode = old.map_or(0o666, |m| m.mode() & 0o777);
            match OpenOptions::new().write(true).create_new(true).mode(mode).open(&path) {
                Ok(file) => {
                    *pending = Some(path.clone());
                    drop(pending);
                    let temp = Temp { target, path, file: Some(file), committed: false };
                    if let Some(m) = old {
                        temp.take_attributes(m)?;
                    }
                    return Ok(temp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(path_error(&path, e)),
            }
        }
        Err(path_error(&dir, io::Error::other("no free temporary name")))
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
        drop(file);
        {
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::rename(&self.path, &self.target).map_err(|e| path_error(&self.target, e))?;
            *pending = None;
            self.committed = true;
        }
        let dir = parent_dir(&self.target);
        // The rename is only durable once the directory is; a failure here is reported
        // although the file is already in place.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| path_error(dir, e))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            let _ = std::fs::remove_file(&self.path);
            *pending = None;
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: removes the temporary file, says so, and exits with
/// 128 + the signal's number, as a shell reports a process killed by it.
pub fn install_signal_cleanup(output_name: PathBuf) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        let Some(sig) = signals.forever().next() else { return };
        let name = match sig {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        match pending.as_ref() {
            Some(p) => {
                let _ = std::fs::remove_file(p);
                crate::say!(
                    "\nxfer: fetch: interrupted ({name}); nothing written to {}",
                    crate::encoding::text::path(&output_name)
                );
            }
            // Already renamed into place, or writing to a stream.
            None => crate::say!("\nxfer: fetch: interrupted ({name})"),
        }
        std::process::exit(128 + sig);
    });
}
