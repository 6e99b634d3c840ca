//! The client: connect, request, receive, verify, and only then put the file in place.
//!
//! The parts:
//! - [`output`]: where the bytes go (a temporary file beside a regular file, a device, a
//!   FIFO or stdout), checked before any network traffic, and the temporary file's life;
//! - [`receive`]: the body, from the socket into the output while it is hashed, with the
//!   silence timeout and the progress ticks;
//! - this file: the order of things: check the output, connect, request, read the header,
//!   receive, compare digests, commit.
//!
//! On any failure, signals included, the temporary file is removed and a pre-existing
//! output file is left exactly as it was.

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::encoding::text::printable;
use crate::encoding::xfer::{self as wire, DecodeError, HEADER_LEN, MAX_REASON, Response, Status};
use crate::encoding::{self, Decoded, Digest};
use crate::exit;

pub mod output;
pub mod receive;

use output::Output;
use receive::{Failure, Silence};

#[derive(Debug, Clone)]
pub struct Options {
    /// `host`, `host:port`, `[v6]:port`, a bare IPv6 address, or one with a zone.
    pub target: String,
    /// Port when the target names none.
    pub port: Option<u16>,
    /// Output path, or `-` for stdout.
    pub output: PathBuf,
    /// Connect timeout, and the longest silence tolerated while receiving.
    pub timeout: Duration,
    pub token: Option<Vec<u8>>,
    pub quiet: bool,
}

/// What a successful fetch did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub bytes: u64,
    pub elapsed: Duration,
    pub digest: Digest,
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("bad address `{0}`: {1}")]
    BadTarget(String, encoding::target::TargetError),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("{target}: no data for {} s (timed out)", secs_text(*.timeout))]
    Timeout { target: String, timeout: Duration },
    #[error("{target} {detail}")]
    Closed { target: String, detail: String },
    #[error("connection lost after {got} of {expected} bytes: {cause}")]
    Lost { got: u64, expected: u64, cause: String },
    /// `reason` is the peer's text, already made printable.
    #[error("refused by {target}: {reason}")]
    Refused { target: String, status: Status, reason: String },
    #[error("{target} is not an xfer server or sent a malformed header: {source}")]
    Protocol { target: String, source: DecodeError },
    #[error("verification failed: received {bytes} bytes with blake3 {got}, server announced {expected}{}", if *.streamed { " (the bytes were already written out)" } else { "" })]
    Mismatch { bytes: u64, got: String, expected: String, streamed: bool },
    #[error("the output path is empty; give a file name, or - for stdout")]
    EmptyOutput,
    #[error("output directory {} does not exist", shown(.0))]
    NoOutputDir(PathBuf),
    #[error("{} is a directory; give a file name", shown(.0))]
    OutputIsDir(PathBuf),
    #[error("{}: {why}", shown(.path))]
    BadOutput { path: PathBuf, why: &'static str },
    #[error("{}: {source}", shown(.path))]
    Output { path: PathBuf, source: io::Error },
    /// The reader of our stdout (or of the FIFO) went away: not an error worth a message.
    #[error("stdout closed")]
    StdoutClosed,
}

impl FetchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            FetchError::BadTarget(..) => exit::USAGE,
            FetchError::EmptyOutput => exit::USAGE,
            FetchError::Resolve { .. }
            | FetchError::Connect { .. }
            | FetchError::Timeout { .. }
            | FetchError::Closed { .. }
            | FetchError::Lost { .. } => exit::NETWORK,
            FetchError::Refused { .. } => exit::REFUSED,
            FetchError::Protocol { .. } | FetchError::Mismatch { .. } => exit::PROTOCOL,
            FetchError::NoOutputDir(_)
            | FetchError::OutputIsDir(_)
            | FetchError::BadOutput { .. }
            | FetchError::Output { .. } => exit::LOCAL_IO,
            FetchError::StdoutClosed => exit::OK,
        }
    }
}

/// A path as it can be shown on one line.
fn shown(p: &std::path::Path) -> String {
    encoding::text::path(p)
}

/// A duration in seconds as the user would write it: `30`, `0.25`, `1.5`.
pub fn secs_text(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// Fetches as `opts` says. Prints the summary line (unless quiet) and returns it.
pub fn run(opts: &Options) -> Result<Summary, FetchError> {
    let target =
        encoding::target::parse(&opts.target).map_err(|e| FetchError::BadTarget(printable(&opts.target).into(), e))?;
    // The output first, before any network traffic: a typo in the path should not cost a
    // transfer, and the signal handler must know what to clean up from the start.
    output::install_signal_cleanup(opts.output.clone());
    let out = Output::prepare(&opts.output)?;
    let start = Instant::now();
    let (mut stream, peer) = connect(&target, opts)?;
    let peer = peer.to_string();
    let mut silence = Silence::start(&stream, opts.timeout).map_err(|e| lost(&peer, e))?;
    let (size, digest) = handshake(&mut stream, &peer, opts, &mut silence)?;

    let bar = (!opts.quiet && io::stderr().is_terminal()).then(|| progress_bar(size));
    let mut progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let streamed = out.is_stream();
    let got = receive::receive(&stream, &mut silence, size, out.writer()?, &mut progress).map_err(|f| match f {
        Failure::Closed(got) => {
            FetchError::Lost { got, expected: size, cause: "server closed the connection early".into() }
        }
        Failure::Silent(_) => FetchError::Timeout { target: peer.clone(), timeout: opts.timeout },
        Failure::Lost(got, e) => FetchError::Lost { got, expected: size, cause: e.to_string() },
        Failure::Write(e) => FetchError::Output { path: out.name(), source: e },
        Failure::ReaderGone => FetchError::StdoutClosed,
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let got = got?;
    // blake3::Hash compares in constant time.
    let (got, digest) = (blake3::Hash::from_bytes(got), blake3::Hash::from_bytes(digest));
    if got != digest {
        return Err(FetchError::Mismatch {
            bytes: size,
            got: got.to_hex().to_string(),
            expected: digest.to_hex().to_string(),
            streamed,
        });
    }
    out.commit()?;
    let summary = Summary { bytes: size, elapsed: start.elapsed(), digest: *digest.as_bytes() };
    if !opts.quiet {
        let secs = summary.elapsed.as_secs_f64();
        crate::say!(
            "fetched {size} bytes in {secs:.2} s ({}), verified blake3 {}",
            crate::rate(size, secs),
            digest.to_hex()
        );
    }
    Ok(summary)
}

fn progress_bar(size: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    // Decimal units (MB, MB/s), as in the summary line and the server's log.
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{decimal_bytes:>10}/{decimal_total_bytes} {decimal_bytes_per_sec:>12} eta {eta:>4} [{wide_bar}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn lost(target: &str, e: io::Error) -> FetchError {
    FetchError::Closed { target: target.to_string(), detail: format!("failed: {e}") }
}

/// Tries every resolved address in turn; the error names the last failure.
fn connect(target: &encoding::target::Target, opts: &Options) -> Result<(TcpStream, SocketAddr), FetchError> {
    let addrs = crate::reactor::resolve(target, opts.port.unwrap_or(crate::DEFAULT_PORT))
        .map_err(|source| FetchError::Resolve { host: target.host.to_string(), source })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, opts.timeout) {
            Ok(s) => return Ok((s, *addr)),
            Err(e) => last = e,
        }
    }
    let shown = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => target.to_string(),
    };
    Err(FetchError::Connect { target: shown, source: last })
}

/// Sends the request and reads the header (and a refusal's reason). Reads no further than
/// the header, so every body byte goes through `receive`.
fn handshake(
    stream: &mut TcpStream,
    target: &str,
    opts: &Options,
    silence: &mut Silence,
) -> Result<(u64, Digest), FetchError> {
    stream.set_write_timeout(Some(opts.timeout)).map_err(|e| lost(target, e))?;
    let token = opts.token.as_ref().map(|t| *blake3::hash(t).as_bytes());
    let req = wire::encode_request(&wire::Request::v1(0, token));
    if let Err(e) = stream.write_all(&req) {
        // A server that refuses before reading may close first; its answer may still be there.
        if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    FetchError::Timeout { target: target.to_string(), timeout: opts.timeout }
                }
                _ => lost(target, e),
            });
        }
    }
    let mut buf = [0u8; HEADER_LEN + MAX_REASON];
    let mut have = 0usize;
    loop {
        let need = match wire::decode_response(&buf[..have]) {
            Ok(Decoded::NeedMore(n)) => n,
            Ok(Decoded::Done(Response::Ok { size, digest, .. }, _)) => return Ok((size, digest)),
            Ok(Decoded::Done(Response::Refused { status, reason, .. }, _)) => {
                let reason = printable(&reason).into_owned();
                return Err(FetchError::Refused { target: target.to_string(), status, reason });
            }
            Err(source) => return Err(FetchError::Protocol { target: target.to_string(), source }),
        };
        match silence.recv(stream, &mut buf[have..have + need], false, || {}) {
            Ok(0) => {
                let detail = if have == 0 {
                    "closed the connection without answering".to_string()
                } else {
                    format!("closed the connection after {have} header bytes")
                };
                return Err(FetchError::Closed { target: target.to_string(), detail });
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(FetchError::Timeout { target: target.to_string(), timeout: opts.timeout });
            }
            Err(e) => return Err(lost(target, e)),
        }
    }
}
