//! Watching the served path with inotify, so a change is seen when it happens rather than
//! at the next periodic look.
//!
//! Two kinds of watch:
//! - the path's directory, for the name: a file renamed over it, created at it, moved
//!   away or deleted (the path now names another file, or none);
//! - each snapshot's own inode, for its content: written to (even when the writer puts the
//!   size and mtime back afterwards, as `rsync --inplace -t` does), attributes changed,
//!   closed after writing. An inode watch follows the inode, not the name, so a snapshot
//!   replaced by rename is still watched while clients are served from it.
//!
//! This module only reads events and says what they mean; what to do about them (cut
//! clients, take a new snapshot) is the server's. It must never know the wire format.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// What an inotify event means for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The inode behind this watch was written to.
    Modified(i32),
    /// Its attributes changed (size, times, mode, link count).
    Attrib(i32),
    /// A writer closed it.
    ClosedWrite(i32),
    /// The kernel dropped this watch (the inode is gone).
    Gone(i32),
    /// The path now names another file, or none.
    PathChanged,
    /// Events were lost: anything may have changed.
    Overflow,
}

/// An inotify instance watching one path's directory and the inodes of its snapshots.
pub struct Watch {
    fd: OwnedFd,
    dir: i32,
    name: OsString,
}

const INODE_MASK: u32 = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE;
const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Watch {
    /// Starts watching the directory that holds `path`.
    pub fn new(path: &Path) -> io::Result<Watch> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let c = cpath(dir)?;
        // SAFETY: c is a valid NUL-terminated path; fd is our inotify instance.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), DIR_MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { fd, dir: wd, name })
    }

    /// Watches the inode `path` names now (following symbolic links); returns the watch.
    /// Several snapshots of one inode share one watch.
    pub fn watch_inode(&mut self, path: &Path) -> io::Result<i32> {
        let c = cpath(path)?;
        // SAFETY: as in `new`.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), INODE_MASK) };
        if wd < 0 { Err(io::Error::last_os_error()) } else { Ok(wd) }
    }

    /// Stops watching an inode.
    pub fn unwatch(&mut self, wd: i32) {
        if wd != self.dir {
            // SAFETY: plain syscall; a stale wd only makes it fail with EINVAL.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    /// Reads every pending event (until the descriptor would block) into `out`.
    pub fn read(&mut self, out: &mut Vec<Event>) {
        // Aligned for the event headers; room for many events per read.
        #[repr(C, align(8))]
        struct Buf([u8; 8192]);
        let mut buf = Buf([0; 8192]);
        loop {
            // SAFETY: buf is valid for its length; fd is our inotify instance.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.0.as_mut_ptr().cast(), buf.0.len()) };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    // Anything else: we can no longer trust what we heard.
                    _ => {
                        out.push(Event::Overflow);
                        return;
                    }
                }
            }
            if n == 0 {
                return;
            }
            self.parse(&buf.0[..n as usize], out);
        }
    }

    fn parse(&self, mut bytes: &[u8], out: &mut Vec<Event>) {
        const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
        while bytes.len() >= HEAD {
            let field = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            let (wd, mask, len) = (field(0) as i32, field(4), field(12) as usize);
            let Some(name) = bytes.get(HEAD..HEAD + len) else { return };
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
            bytes = &bytes[HEAD + len..];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                out.push(Event::Overflow);
            } else if wd == self.dir {
                let ours = name == self.name.as_bytes();
                if ours || mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
                    out.push(Event::PathChanged);
                }
            } else if mask & libc::IN_IGNORED != 0 {
                out.push(Event::Gone(wd));
            } else if mask & libc::IN_MODIFY != 0 {
                out.push(Event::Modified(wd));
            } else if mask & libc::IN_CLOSE_WRITE != 0 {
                out.push(Event::ClosedWrite(wd));
            } else if mask & libc::IN_ATTRIB != 0 {
                out.push(Event::Attrib(wd));
            }
        }
    }

    pub fn name(&self) -> OsString {
        OsString::from_vec(self.name.as_bytes().to_vec())
    }
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn events(w: &mut Watch) -> Vec<Event> {
        let mut v = Vec::new();
        w.read(&mut v);
        v
    }

    #[test]
    fn sees_in_place_writes_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("served");
        std::fs::write(&path, b"hello").unwrap();
        let mut w = Watch::new(&path).unwrap();
        let wd = w.watch_inode(&path).unwrap();
        assert!(events(&mut w).is_empty());

        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"J", 0).unwrap();
        let ev = events(&mut w);
        assert!(ev.contains(&Event::Modified(wd)), "{ev:?}");
        assert!(ev.contains(&Event::ClosedWrite(wd)), "{ev:?}");

        // Another file in the directory is none of our business.
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        assert!(events(&mut w).is_empty());

        let new = dir.path().join(".new");
        std::fs::write(&new, b"v2").unwrap();
        let _ = events(&mut w);
        std::fs::rename(&new, &path).unwrap();
        let ev = events(&mut w);
        assert!(ev.contains(&Event::PathChanged), "{ev:?}");
        assert!(!ev.contains(&Event::Modified(wd)), "a rename does not touch the old inode's bytes: {ev:?}");

        std::fs::remove_file(&path).unwrap();
        assert!(events(&mut w).contains(&Event::PathChanged));
    }
}
