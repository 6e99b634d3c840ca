//! The one line each connection leaves on stderr when it ends: who, how it ended, and how
//! many bytes of the file it got.
//!
//! Owns the wording of those lines (README quotes it). Must never know sockets or wire
//! formats. A line that cannot be written is dropped (see `crate::say!`).

use std::net::SocketAddr;

use super::admit::Refusal;
use super::http;
use super::session::{Outcome, Session};

/// `127.0.0.1:53122 complete: 8388608 bytes in 0.011 s (762.6 MB/s)`, or for a refusal
/// `127.0.0.1:53122 refused: REASON`.
pub fn finished(s: &Session) {
    // Not the loop's `now`: that is shared by a whole turn, and a small transfer can start
    // and end within one.
    let what = match &s.outcome {
        Outcome::Refused(why) => return refused(s.peer, *why),
        Outcome::NotOurs => return crate::say!("{} closed: neither an xfer nor an HTTP request", s.peer),
        other => outcome(other),
    };
    crate::say!("{} {what}: {}", s.peer, amount(s));
}

/// `127.0.0.1:53122 GET /big.iso 206 bytes 0-99 complete: 100 bytes in 0.001 s (...)`, one
/// per HTTP response; a refused one ends with the reason it was told.
pub fn http_response(s: &Session, log: &http::Log, head: &http::Head) {
    let range = match head.part {
        Some((a, b)) => format!(" bytes {a}-{}", b - 1),
        None => String::new(),
    };
    let request =
        format!("{} {} {} {}{range}", s.peer, log.method.as_str(), log.path.shown(s.snap_name()), head.status);
    match &s.outcome {
        Outcome::Refused(why) => crate::say!("{request} refused: {}", why.reason()),
        // Only the file's replies count bytes: a page or a checksum line is not the file.
        other if head.kind == http::Kind::File => crate::say!("{request} {}: {}", outcome(other), amount(s)),
        other => crate::say!("{request} {}", outcome(other)),
    }
}

/// How a transfer ended, in the log's words.
fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Unfinished => "cut (server exiting)".to_string(),
        Outcome::Complete => "complete".to_string(),
        Outcome::ClosedByPeer => "closed by peer".to_string(),
        Outcome::TimedOut => "timed out".to_string(),
        Outcome::Cut(why) => format!("cut ({why})"),
        Outcome::Error(e) => format!("error: {e}"),
        Outcome::Refused(_) => "refused".to_string(),
        Outcome::NotOurs => "not our protocol".to_string(),
    }
}

/// `N bytes in S s (RATE)`: the file's bytes sent, how long it took, how fast.
fn amount(s: &Session) -> String {
    // Not the loop's `now`: that is shared by a whole turn, and a small transfer can start
    // and end within one.
    let secs = s.started.elapsed().as_secs_f64();
    let rate = match s.body_sent {
        0 => String::new(),
        n => format!(" ({})", crate::rate(n, secs)),
    };
    format!("{} bytes in {secs:.3} s{rate}", s.body_sent)
}

/// A client told no, with the reason it was told.
pub fn refused(peer: SocketAddr, why: Refusal) {
    crate::say!("{peer} refused: {}", why.reason());
}
