//! xfer: serve one file to many clients at once; fetch an exact, BLAKE3-verified copy.
//!
//! `main.rs` is only the command line. The work lives here so that tests and benches can
//! reach it:
//! - [`encoding`]: the wire format, pure functions (docs/PROTOCOL.md);
//! - [`reactor`]: the mio event loop (listener, slab of sessions, timers, signals), which
//!   knows nothing of the wire format;
//! - [`serve`]: the file snapshot and the per-client state machine the reactor drives;
//! - [`fetch`]: the client, which streams into a temporary file while hashing and renames
//!   it into place only once the digest matches.

pub mod encoding;
pub mod fetch;
pub mod reactor;
pub mod serve;

/// Exit codes shared by both subcommands (README's table).
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NETWORK: i32 = 3;
    pub const PROTOCOL: i32 = 4;
    pub const LOCAL_IO: i32 = 5;
    pub const REFUSED: i32 = 6;
    pub const INTERRUPTED: i32 = 130;
}

/// Writes one message line to stderr. A failed write is ignored: a server whose log pipe
/// closed (`| head`, a terminal that went away) keeps serving, and nothing panics.
/// The line goes out in one write, so lines from several threads never interleave.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// See [`say!`]: writes to stderr in one call, ignoring failure.
pub fn say_err(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(args.to_string().as_bytes());
}

/// Writes to stdout in one call and flushes, ignoring failure (see [`say!`]).
pub fn say_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(args.to_string().as_bytes());
    let _ = out.flush();
}

/// Default TCP port for both `serve` and `fetch`.
pub const DEFAULT_PORT: u16 = 4747;

/// Formats a byte count for people: `4.0 GB`, `12.5 MB`, `800 B` (decimal units).
pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e12 {
        format!("{:.1} TB", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Formats a byte rate for log lines: `762.6 MB/s` (decimal units, as network tools do).
pub fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".to_string();
    }
    let r = bytes as f64 / secs;
    if r >= 1e9 {
        format!("{:.2} GB/s", r / 1e9)
    } else if r >= 1e6 {
        format!("{:.1} MB/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} kB/s", r / 1e3)
    } else {
        format!("{r:.0} B/s")
    }
}
