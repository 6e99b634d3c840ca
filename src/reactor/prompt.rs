//! The Ctrl+C question on the terminal: "continue listening or exit?".
//!
//! The event loop must never block on the terminal, so the question is written and the
//! answer read through stdin's readiness, one line at a time. This module owns the
//! terminal side only: writing the question where the person at the terminal sees it
//! (stderr when that is the terminal, else the terminal itself, since stderr may be a log
//! file), and turning a line into an answer. What a pause or an exit means for clients is
//! the reactor's business.

use std::fs::File;
use std::io::{self, IsTerminal, Write};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// What the person answered.
#[derive(Debug)]
pub enum Answer {
    Continue,
    Exit,
    /// The terminal closed (end of input).
    Eof,
    /// Nothing usable yet: the question was asked again, or there was nothing to read.
    Pending,
    /// Reading failed: nobody can answer.
    Failed(io::Error),
}

/// The question's state: whether stdin is registered, and where to write.
pub struct Prompt {
    registered: bool,
    /// The terminal, when stderr is not it (the question must still reach a person).
    tty: Option<File>,
}

impl Prompt {
    pub fn new() -> Prompt {
        Prompt { registered: false, tty: None }
    }

    /// Whether this process may ask on its terminal now: stdin is one and we are in its
    /// foreground. A background job touching the terminal is stopped by SIGTTOU, and its
    /// transfers with it.
    pub fn can_ask() -> bool {
        // SAFETY: plain queries with no memory arguments.
        unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
    }

    /// Writes text for the person at the terminal (nothing when stderr is that terminal:
    /// the log line already said it there).
    fn write_terminal(&mut self, text: &str) {
        if io::stderr().is_terminal() {
            let mut err = io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        } else {
            if self.tty.is_none() {
                self.tty = std::fs::OpenOptions::new().write(true).open("/dev/tty").ok();
            }
            if let Some(t) = &mut self.tty {
                let _ = t.write_all(text.as_bytes());
            }
        }
    }

    /// Asks the question: `status` goes to the log (stderr) and to the terminal, the
    /// question to the terminal; then stdin is watched for the answer.
    pub fn ask(&mut self, registry: &Registry, token: Token, status: &str) -> io::Result<()> {
        // Ctrl+C echoed `^C` where the cursor was: start on a fresh line.
        if io::stderr().is_terminal() {
            crate::say!("\n{status}");
        } else {
            crate::say!("{status}");
            self.write_terminal(&format!("\n{status}\n"));
        }
        // Discard anything typed before the question, so it cannot answer it.
        // SAFETY: tcflush on fd 0 has no memory-safety preconditions.
        unsafe {
            libc::tcflush(0, libc::TCIFLUSH);
        }
        self.question();
        if self.registered {
            registry.reregister(&mut SourceFd(&0), token, Interest::READABLE)
        } else {
            registry.register(&mut SourceFd(&0), token, Interest::READABLE)?;
            self.registered = true;
            Ok(())
        }
    }

    fn question(&mut self) {
        self.write_terminal("continue listening or exit? [c/e] ");
    }

    /// Tells the terminal (and the log) something, on its own line.
    pub fn tell(&mut self, text: &str) {
        crate::say!("{text}");
        if !io::stderr().is_terminal() {
            self.write_terminal(&format!("{text}\n"));
        }
    }

    /// Reads the answer when stdin is ready. Never blocks.
    pub fn read(&mut self, registry: &Registry, token: Token) -> Answer {
        // The event may be stale (e.g. input flushed when the question was asked): look
        // before reading, since a blocking read here would freeze every transfer.
        let mut pfd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            return self.rearm(registry, token);
        }
        let mut buf = [0u8; 256];
        // poll said readable, so this read returns at once (a terminal in canonical mode
        // reports readable when a whole line is there).
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                return self.rearm(registry, token);
            }
            return Answer::Failed(e);
        }
        if n == 0 {
            self.write_terminal("\n");
            return Answer::Eof;
        }
        let text = String::from_utf8_lossy(&buf[..n as usize]).to_ascii_lowercase();
        for line in text.lines() {
            match line.trim() {
                "c" | "continue" | "y" | "yes" => return Answer::Continue,
                "e" | "exit" | "q" | "quit" => return Answer::Exit,
                _ => {}
            }
        }
        self.write_terminal("please answer c (continue listening) or e (exit). ");
        self.question();
        self.rearm(registry, token)
    }

    /// Re-arms the edge-triggered stdin registration, so a line already waiting is reported.
    fn rearm(&mut self, registry: &Registry, token: Token) -> Answer {
        match registry.reregister(&mut SourceFd(&0), token, Interest::READABLE) {
            Ok(()) => Answer::Pending,
            Err(e) => Answer::Failed(e),
        }
    }

    /// Stops watching stdin (the question is over for good).
    pub fn close(&mut self, registry: &Registry) {
        if self.registered {
            let _ = registry.deregister(&mut SourceFd(&0));
            self.registered = false;
        }
    }
}
