//! The one line each connection leaves on stderr when it ends: who, how it ended, and how
//! many bytes of the file it got.
//!
//! Owns the wording of those lines (README quotes it). Must never know sockets or wire
//! formats. A line that cannot be written is dropped (see `crate::say!`).

use std::net::SocketAddr;

use super::admit::Refusal;
use super::session::{Outcome, Session};

/// `127.0.0.1:53122 complete: 8388608 bytes in 0.011 s (762.6 MB/s)`, or for a refusal
/// `127.0.0.1:53122 refused: REASON`.
pub fn finished(s: &Session) {
    // Not the loop's `now`: that is shared by a whole turn, and a small transfer can start
    // and end within one.
    let secs = s.started.elapsed().as_secs_f64();
    let what = match &s.outcome {
        Outcome::Refused(why) => return refused(s.peer, *why),
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

/// A client told no, with the reason it was told.
pub fn refused(peer: SocketAddr, why: Refusal) {
    crate::say!("{peer} refused: {}", why.reason());
}
