//! The client: ask a server (xfer's own protocol, or any HTTP server) for the file, receive
//! it, verify it, and only then put it in place; resume what an earlier attempt left, and
//! retry what can be retried.
//!
//! The parts:
//! - [`source`]: what to fetch from (`host[:port]` or `http://…`);
//! - [`output`] and [`partial`]: where the bytes go (a temporary file or a kept partial
//!   beside a regular file, a device, a FIFO, stdout; a directory and the server's name),
//!   checked before any network traffic, and the temporary file's life;
//! - [`native`] and [`http`]: asking the server, up to the first body byte, which gives an
//!   [`Offer`]: the size, the digests, the name, how the body is framed;
//! - [`receive`]: the body, from the socket into the output while it is hashed;
//! - [`verify`]: the digests checked (the server's, and `--expect`);
//! - [`retry`]: when another attempt is worth it, and how long to wait first;
//! - this file: the order of things, per attempt: the output, the prefix kept from before,
//!   the offer, whether the prefix still belongs to it, receive, verify, commit.
//!
//! On any failure, signals included, the output path holds nothing new and a pre-existing
//! file there is left exactly as it was; a partial is kept only when it can be resumed.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::encoding::text::printable;
use crate::encoding::xfer::{DecodeError, Status};
use crate::encoding::{self, Digest};
use crate::exit;

pub mod http;
pub mod native;
pub mod output;
pub mod partial;
pub mod receive;
pub mod retry;
pub mod source;
pub mod verify;

use output::{Output, Plan};
use partial::Record;
use receive::{Failure, Framing, Silence};
use source::Source;
use verify::{Algorithm, Expect, Want};

#[derive(Debug, Clone)]
pub struct Options {
    /// `host`, `host:port`, `[v6]:port`, an IPv6 address with a zone, or an `http://` URL.
    pub target: String,
    /// Port when the target names none.
    pub port: Option<u16>,
    /// Output path, `-` for stdout; `None`: the current directory, under the server's name.
    pub output: Option<PathBuf>,
    /// Connect timeout, and the longest silence tolerated while receiving.
    pub timeout: Duration,
    pub token: Option<Vec<u8>>,
    pub quiet: bool,
    /// Keep a partial that can be resumed, and resume one (`--no-resume` turns it off).
    pub resume: bool,
    /// Retries after the first attempt (`--retry`; 0: none).
    pub retry: u32,
    /// A bound on the whole, retries included (`--retry-for`).
    pub retry_for: Option<Duration>,
    /// Digests the file must have, whatever the server says.
    pub expect: Vec<Expect>,
}

/// What a server offers, once asked: what the file is and how its body comes.
pub struct Offer {
    /// The whole file's size, when the server says.
    pub size: Option<u64>,
    /// Where the body starts in the file: 0, or the offset a resumed request was granted.
    pub start: u64,
    pub framing: Framing,
    pub blake3: Option<Digest>,
    pub sha256: Option<Digest>,
    /// The name the server gives the file (not yet made safe).
    pub name: Option<Vec<u8>>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Body bytes read along with the head.
    pub leftover: Vec<u8>,
    pub stream: TcpStream,
    pub silence: Silence,
    pub peer: String,
}

/// What a successful fetch did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub bytes: u64,
    pub elapsed: Duration,
    pub digest: Digest,
    pub path: PathBuf,
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}")]
    Usage(String),
    #[error("bad address `{0}`: {1}")]
    BadTarget(String, encoding::target::TargetError),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("{target}: no data for {} s (timed out)", secs_text(*.timeout))]
    Timeout { target: String, timeout: Duration },
    #[error("{target} {detail}")]
    Closed { target: String, detail: String },
    #[error("connection lost after {got} of {} bytes: {cause}", of(*.expected))]
    Lost { got: u64, expected: Option<u64>, cause: String },
    /// `reason` is the peer's text, already made printable.
    #[error("refused by {target}: {reason}")]
    Refused { target: String, status: Status, reason: String, retry_after: Option<Duration> },
    #[error("{target} answered {status} {reason}")]
    Http { target: String, status: u16, reason: String, retry_after: Option<Duration> },
    /// An HTTP answer that cannot be used: a malformed head, endless redirects.
    #[error("{target}: {why}")]
    BadHttp { target: String, why: String },
    /// The server did not prove it knows the token (or what it proved was altered).
    #[error("{target}: {why}")]
    Unauthenticated { target: String, why: &'static str },
    #[error("{target} is not an xfer server or sent a malformed header: {source}")]
    Protocol { target: String, source: DecodeError },
    #[error("{}", mismatch_text(.0, *.1))]
    Mismatch(verify::Mismatch, bool),
    #[error("received {got} bytes, but the server announced {expected}")]
    Size { got: u64, expected: u64 },
    /// A resumed prefix turned out not to belong to the file: start again from zero.
    #[error("the kept partial did not match the file; it was thrown away")]
    BadPrefix,
    /// HTTP 416 to a resumed request: the partial is no prefix of the file now.
    #[error("the kept partial is longer than the file on the server")]
    RangeGone,
    #[error("the server's file name `{name}` cannot be used: {why}; give an output file name")]
    BadName { name: String, why: &'static str },
    #[error("the server does not say the file's name; give an output file name")]
    NoName,
    #[error("the output path is empty; give a file name, or - for stdout")]
    EmptyOutput,
    #[error("output directory {} does not exist", shown(.0))]
    NoOutputDir(PathBuf),
    #[error("{} is a directory; give a file name", shown(.0))]
    OutputIsDir(PathBuf),
    #[error("{}: {why}", shown(.path))]
    BadOutput { path: PathBuf, why: &'static str },
    #[error("{}: {source}", shown(.path))]
    Output { path: PathBuf, source: std::io::Error },
    #[error("another xfer fetch is writing {} right now; try again once it is done", shown(.0))]
    Locked(PathBuf),
    /// A failure after which a partial was kept, to be resumed.
    #[error("{inner}; kept {} in {}: run the same command again to resume", crate::human_bytes(*.kept), shown(.path))]
    Kept { inner: Box<FetchError>, kept: u64, path: PathBuf },
    /// The reader of our stdout (or of the FIFO) went away: not an error worth a message.
    #[error("stdout closed")]
    StdoutClosed,
}

/// The size the server announced (exact, as the count beside it is), or that it did not.
fn of(n: Option<u64>) -> String {
    n.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string())
}

fn mismatch_text(m: &verify::Mismatch, streamed: bool) -> String {
    let from = if m.want.pinned { "--expect" } else { "the server" };
    format!(
        "verification failed: {} of what arrived is {}, {from} says {}{}",
        m.want.algorithm.name(),
        verify::hex(&m.got),
        verify::hex(&m.want.digest),
        if streamed { " (the bytes were already written out)" } else { "" }
    )
}

impl FetchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            FetchError::Usage(_) | FetchError::BadTarget(..) | FetchError::EmptyOutput => exit::USAGE,
            FetchError::Resolve { .. }
            | FetchError::Connect { .. }
            | FetchError::Timeout { .. }
            | FetchError::Closed { .. }
            | FetchError::Lost { .. } => exit::NETWORK,
            FetchError::Refused { .. } => exit::REFUSED,
            FetchError::Http { status, .. } => match status {
                401 | 403 | 407 | 429 => exit::REFUSED,
                500..=599 => exit::NETWORK,
                _ => exit::PROTOCOL,
            },
            FetchError::Protocol { .. }
            | FetchError::BadHttp { .. }
            | FetchError::Unauthenticated { .. }
            | FetchError::Mismatch(..)
            | FetchError::Size { .. }
            | FetchError::BadPrefix
            | FetchError::RangeGone
            | FetchError::BadName { .. }
            | FetchError::NoName => exit::PROTOCOL,
            FetchError::NoOutputDir(_)
            | FetchError::OutputIsDir(_)
            | FetchError::BadOutput { .. }
            | FetchError::Output { .. }
            | FetchError::Locked(_) => exit::LOCAL_IO,
            FetchError::Kept { inner, .. } => inner.exit_code(),
            FetchError::StdoutClosed => exit::OK,
        }
    }

    /// Whether another attempt may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Connect { .. }
            | FetchError::Timeout { .. }
            | FetchError::Closed { .. }
            | FetchError::Lost { .. } => true,
            FetchError::Refused { status, .. } => matches!(status, Status::Busy | Status::Unavailable),
            FetchError::Http { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            FetchError::Kept { inner, .. } => inner.is_transient(),
            _ => false,
        }
    }

    /// When the server said to come back.
    pub fn retry_hint(&self) -> Option<Duration> {
        match self {
            FetchError::Refused { retry_after, .. } | FetchError::Http { retry_after, .. } => *retry_after,
            FetchError::Kept { inner, .. } => inner.retry_hint(),
            _ => None,
        }
    }
}

/// A path as it can be shown on one line.
fn shown(p: &Path) -> String {
    encoding::text::path(p)
}

/// A duration in seconds as the user would write it: `30`, `0.25`, `1.5`.
pub fn secs_text(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// Fetches as `opts` says: attempts, retried while the failures are transient. Prints the
/// summary line (unless quiet) and returns it.
pub fn run(opts: &Options) -> Result<Summary, FetchError> {
    let source = Source::parse(&opts.target, opts.port)?;
    // The output first, before any network traffic: a typo in the path should not cost a
    // transfer, and the signal handler must know what to clean up from the start.
    output::install_signal_cleanup();
    let plan = Plan::new(opts.output.as_deref())?;
    let mut retry = retry::Retry::new(opts.retry, opts.retry_for);
    let started = Instant::now();
    let mut fresh = false;
    loop {
        match attempt(&source, &plan, opts, started, fresh) {
            Ok(s) => return Ok(s),
            // A resumed prefix that turned out wrong: thrown away; start again from zero,
            // once, at once.
            Err(FetchError::BadPrefix) if !fresh => {
                fresh = true;
                if !opts.quiet {
                    crate::say!("xfer: fetch: the kept partial did not match the file; starting again from zero");
                }
            }
            Err(e) if e.is_transient() => match retry.next(e.retry_hint()) {
                Some(wait) => {
                    if !opts.quiet {
                        crate::say!(
                            "xfer: fetch: {e}; retrying in {:.1} s ({} of {})",
                            wait.as_secs_f64(),
                            retry.done(),
                            retry.max()
                        );
                    }
                    std::thread::sleep(wait);
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// The validator a resumed HTTP request sends as `If-Range`: a strong ETag, else the date.
fn validator(r: &Record) -> Option<&str> {
    r.etag.as_deref().filter(|e| e.starts_with('"')).or(r.last_modified.as_deref())
}

/// Whether the server's file is still the one a kept prefix belongs to (as far as both
/// sides say: a size or digest that one of them does not know cannot disagree).
fn same_version(r: &Record, o: &Offer) -> bool {
    let agree = |a: Option<&Digest>, b: Option<&Digest>| match (a, b) {
        (Some(a), Some(b)) => blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b),
        _ => true,
    };
    let sizes = match (r.size, o.size) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    sizes && agree(r.blake3.as_ref(), o.blake3.as_ref()) && agree(r.sha256.as_ref(), o.sha256.as_ref())
}

/// Asks the server, from `offset`.
fn ask(source: &Source, opts: &Options, point: Option<&(u64, Record)>) -> Result<Offer, FetchError> {
    match source {
        Source::Xfer { target, port } => {
            let offset = point.map_or(0, |p| p.0);
            match native::ask(target, *port, opts, offset) {
                // The partial is longer than the file: another version; start from zero.
                Err(FetchError::Refused { status: Status::BadOffset, .. }) if offset > 0 => {
                    native::ask(target, *port, opts, 0)
                }
                r => r,
            }
        }
        Source::Http { url } => {
            let resume = point.and_then(|(n, r)| validator(r).map(|v| http::Resume { offset: *n, validator: v }));
            match http::ask(url, opts, resume) {
                Err(FetchError::RangeGone) => http::ask(url, opts, None),
                r => r,
            }
        }
    }
}

/// Asks again, from zero, in place of `previous`, whose connection goes first: a server
/// with one slot free must not find it taken by us.
fn ask_from_zero(source: &Source, opts: &Options, previous: Offer) -> Result<Offer, FetchError> {
    drop(previous);
    ask(source, opts, None)
}

/// One attempt: the output, the kept prefix, the offer, the body, the check, the commit.
fn attempt(source: &Source, plan: &Plan, opts: &Options, started: Instant, fresh: bool) -> Result<Summary, FetchError> {
    let key = source.key();
    let resume = opts.resume.then_some(key.as_str());
    let mut out = match plan {
        Plan::Stdout => Some(Output::Stdout),
        Plan::Path(p) => Some(Output::prepare(p, resume)?),
        // The name comes from the server; a partial left in the directory by this same
        // source says which it was last time.
        Plan::Dir(d) => match resume.and_then(|k| partial::find_in(d, k)) {
            Some(target) => Some(Output::prepare(&target, resume)?),
            None => None,
        },
    };
    if fresh && let Some(t) = out.as_mut().and_then(Output::temp) {
        t.discard()?;
    }
    let point = out.as_mut().and_then(Output::temp).and_then(|t| t.resume_point().map(|(n, r)| (n, r.clone())));
    let mut offer = match ask(source, opts, point.as_ref()) {
        Ok(o) => o,
        Err(e) => {
            // Not reaching the server, or losing it before it answered, keeps a kept
            // partial for the next attempt; a refusal that will not change (not allowed,
            // a bad token, 404) ends it.
            if matches!(e, FetchError::Refused { .. } | FetchError::Http { .. })
                && !e.is_transient()
                && let Some(t) = out.as_mut().and_then(Output::temp)
            {
                t.discard()?;
            }
            return Err(e);
        }
    };

    // Is the prefix still a prefix of this file?
    if let Some((n, r)) = &point
        && (offer.start != *n || !same_version(r, &offer))
    {
        if let Some(t) = out.as_mut().and_then(Output::temp) {
            t.discard()?;
        }
        if offer.start > 0 {
            offer = ask_from_zero(source, opts, offer)?;
        }
    }

    // A directory: now the server has said the name.
    if let Plan::Dir(dir) = plan {
        let raw =
            offer.name.clone().filter(|n| !n.is_empty()).or_else(|| source.url_name()).ok_or(FetchError::NoName)?;
        let name = output::safe_name(&raw)
            .map_err(|why| FetchError::BadName { name: printable(&String::from_utf8_lossy(&raw)).into_owned(), why })?;
        let target = dir.join(&name);
        if out.as_ref().is_none_or(|o| o.name() != output_target(&target)) {
            out = Some(Output::prepare(&target, resume)?);
            if offer.start > 0 {
                // The bytes offered continue a partial of another name: ask from zero.
                offer = ask_from_zero(source, opts, offer)?;
            }
        }
    }
    let mut out = out.ok_or(FetchError::NoName)?;
    let target = out.name();

    // What the bytes are part of, so that they can be kept and resumed.
    let record = Record {
        source: key.clone(),
        name: target.file_name().map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec()).unwrap_or_default(),
        size: offer.size,
        blake3: offer.blake3,
        sha256: offer.sha256,
        etag: offer.etag.clone(),
        last_modified: offer.last_modified.clone(),
    };
    let start = offer.start;
    if let Some(t) = out.temp() {
        t.begin(start, opts.resume.then_some(record))?;
    }

    let mut wants: Vec<Want> = Vec::new();
    if let Some(d) = offer.blake3 {
        wants.push(Want { algorithm: Algorithm::Blake3, digest: d, pinned: false });
    }
    if let Some(d) = offer.sha256 {
        wants.push(Want { algorithm: Algorithm::Sha256, digest: d, pinned: false });
    }
    wants.extend(opts.expect.iter().map(|e| Want { algorithm: e.algorithm, digest: e.digest, pinned: true }));

    let bar = (!opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| progress_bar(offer.size));
    let mut progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let attempt_started = Instant::now();
    let prefix = match (start > 0, out.temp()) {
        (true, Some(t)) => {
            Some(File::open(t.path()).map_err(|e| FetchError::Output { path: t.path().into(), source: e })?)
        }
        _ => None,
    };
    let streamed = out.is_stream();
    let job = receive::Job {
        stream: &offer.stream,
        silence: &mut offer.silence,
        framing: offer.framing.clone(),
        leftover: std::mem::take(&mut offer.leftover),
        start,
        prefix,
        writer: out.writer()?,
        sha256: verify::needs_sha256(&wants),
    };
    let result = receive::receive(job, &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let got = match result {
        Ok(g) => g,
        Err(f) => {
            let e = match f {
                Failure::Closed(got) => FetchError::Lost {
                    got,
                    expected: offer.size,
                    cause: "the server closed the connection early".into(),
                },
                Failure::Silent(_) => FetchError::Timeout { target: offer.peer.clone(), timeout: opts.timeout },
                Failure::Lost(got, e) => FetchError::Lost { got, expected: offer.size, cause: e.to_string() },
                Failure::Garbled(got) => FetchError::Lost {
                    got,
                    expected: offer.size,
                    cause: "the body's chunked framing is malformed".into(),
                },
                Failure::Write(e) => FetchError::Output { path: out.name(), source: e },
                Failure::ReaderGone => FetchError::StdoutClosed,
            };
            return Err(keep_if_resumable(&mut out, e));
        }
    };
    if let Some(size) = offer.size
        && got.bytes != size
    {
        return Err(FetchError::Size { got: got.bytes, expected: size });
    }
    let checked = match verify::check(&wants, &verify::Got { blake3: got.blake3, sha256: got.sha256 }) {
        Ok(c) => c,
        Err(_) if start > 0 => {
            if let Some(t) = out.temp() {
                t.discard()?;
            }
            return Err(FetchError::BadPrefix);
        }
        Err(m) => return Err(FetchError::Mismatch(m, streamed)),
    };
    out.commit()?;
    let summary = Summary { bytes: got.bytes, elapsed: started.elapsed(), digest: got.blake3, path: target.clone() };
    if !opts.quiet {
        let secs = attempt_started.elapsed().as_secs_f64();
        let resumed = if start > 0 { format!(", resuming at {start}") } else { String::new() };
        let saved = if matches!(plan, Plan::Dir(_)) { format!(", saved as {}", shown(&target)) } else { String::new() };
        let verdict = if checked.is_empty() {
            format!(
                "not verified (the server gave no digest; pin one with --expect), blake3 {}",
                verify::hex(&got.blake3)
            )
        } else {
            // A digest both the server and --expect gave is one check, said once. (Two
            // checks of one algorithm that both passed name the same digest.)
            let mut list: Vec<Want> = Vec::new();
            for w in &checked {
                match list.iter_mut().find(|seen| seen.algorithm == w.algorithm) {
                    Some(seen) => seen.pinned |= w.pinned,
                    None => list.push(*w),
                }
            }
            let shown: Vec<String> = list
                .iter()
                .map(|w| {
                    let pinned = if w.pinned { " (--expect)" } else { "" };
                    format!("{} {}{pinned}", w.algorithm.name(), verify::hex(&w.digest))
                })
                .collect();
            format!("verified {}", shown.join(" and "))
        };
        crate::say!(
            "fetched {} bytes in {secs:.2} s ({}){resumed}{saved}, {verdict}",
            got.bytes,
            crate::rate(got.bytes - start, secs)
        );
    }
    Ok(summary)
}

use std::fs::File;

/// The path an output for `p` writes (a link's target), to compare with an open output.
fn output_target(p: &Path) -> PathBuf {
    let mut q = p.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&q) {
            Ok(l) => q = if l.is_absolute() { l } else { q.parent().unwrap_or(Path::new(".")).join(l) },
            Err(_) => break,
        }
    }
    q
}

/// After a failure that another attempt could resume from (the connection lost, the
/// timeout), keeps the partial and says so in the error; otherwise it goes.
fn keep_if_resumable(out: &mut Output, e: FetchError) -> FetchError {
    if !matches!(e, FetchError::Lost { .. } | FetchError::Timeout { .. } | FetchError::Closed { .. }) {
        return e;
    }
    let Some(t) = out.temp() else { return e };
    match t.keep() {
        Some(kept) => FetchError::Kept { inner: Box::new(e), kept, path: t.path().to_path_buf() },
        None => e,
    }
}

fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(size, indicatif::ProgressDrawTarget::stderr());
    // Decimal units (MB, MB/s), as in the summary line and the server's log.
    let template = if size.is_some() {
        "{decimal_bytes:>10}/{decimal_total_bytes} {decimal_bytes_per_sec:>12} eta {eta:>4} [{wide_bar}]"
    } else {
        "{decimal_bytes:>10} {decimal_bytes_per_sec:>12} {spinner}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests;
