//! A pseudo-terminal for tests of what a person at a terminal sees: the Ctrl+C question,
//! the progress bar. The master side collects everything shown and types answers; the
//! slave side is handed to the child.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Collected, wait_until};

pub struct Pty {
    master: File,
    /// Our copy of the slave, until the child has its own (`release`).
    slave: Option<OwnedFd>,
    shown: Collected,
}

impl Pty {
    /// A pseudo-terminal pair, both ends close-on-exec from the start, so no child spawned
    /// by another test at the same moment can hold the terminal open.
    pub fn open() -> Pty {
        // SAFETY: posix_openpt, grantpt, unlockpt, ptsname_r and open with valid arguments;
        // every descriptor returned is checked and then owned.
        let (master, slave) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(m);
            assert_eq!(libc::grantpt(m), 0, "grantpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::unlockpt(m), 0, "unlockpt: {}", std::io::Error::last_os_error());
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0, "ptsname_r");
            let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(s >= 0, "open the pty slave: {}", std::io::Error::last_os_error());
            (master, OwnedFd::from_raw_fd(s))
        };
        let shown = Collected::spawn(File::from(master.try_clone().expect("dup pty master")));
        Pty { master: File::from(master), slave: Some(slave), shown }
    }

    /// The terminal, to hand to a child as one of its standard streams.
    pub fn slave(&self) -> Stdio {
        Stdio::from(self.slave.as_ref().expect("pty slave released").try_clone().expect("dup pty slave"))
    }

    /// Makes the terminal the child's stdin and controlling terminal, the child the
    /// leader of its foreground process group (as a shell does for a foreground job).
    pub fn control(&self, cmd: &mut Command) {
        cmd.stdin(self.slave());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Drops our copy of the slave once the child has its own (after spawn, and after the
    /// `Command` holding other copies is dropped), so the master reads EOF when it exits.
    pub fn release(&mut self) {
        self.slave = None;
    }

    /// What the terminal showed, as collected text (to hand to helpers that report it).
    pub fn shown(&self) -> &Collected {
        &self.shown
    }

    /// Everything shown on the terminal so far (output, and the echo of what was typed).
    pub fn text(&self) -> String {
        self.shown.text()
    }

    pub fn wait_for(&self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        wait_until(Duration::from_secs(secs), || pred(&self.text()))
    }

    /// Types on the terminal.
    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to pty master");
        self.master.flush().expect("flush pty master");
    }
}

/// Runs `cmd` with its stderr on a new pseudo-terminal (stdin and stdout null) until it
/// exits, `secs` at most: how it exited, and the terminal, holding all it showed.
pub fn run_with_stderr_on_pty(cmd: &mut Command, secs: u64) -> (ExitStatus, Pty) {
    let mut pty = Pty::open();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(pty.slave()).spawn().unwrap();
    // The command's copy of the terminal goes too, so the master reads EOF at the exit.
    cmd.stderr(Stdio::null());
    pty.release();
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(pty.shown().wait_eof(Duration::from_secs(10)), "the terminal was never closed");
            return (status, pty);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish in {secs} s; the terminal showed:\n{}", pty.text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
