//! The client: connect, request, receive, verify, and only then put the file in place.
//!
//! The body streams into a temporary file in the output's directory. Three stages overlap:
//! this thread reads the socket into large buffers, one thread hashes them, another writes
//! them, so neither hashing nor the disk holds up the socket. When the byte count and the
//! BLAKE3 digest match the header, the temporary file is synced, renamed over the output,
//! and the directory is synced. On any failure, Ctrl+C included, the temporary file is
//! removed and a pre-existing output file is left exactly as it was.
//!
//! Nothing is ever sized from the header's length field: a header claiming 2^64-1 bytes
//! costs nothing until the bytes actually arrive.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::encoding::{self, DecodeError, Decoded, Digest, HEADER_LEN, MAX_REASON, Response, Status};
use crate::exit;

/// Size of each receive buffer, and how many are in flight between the stages.
const BUF_SIZE: usize = 4 << 20;
const BUFS: usize = 4;

#[derive(Debug, Clone)]
pub struct Options {
    /// `host`, `host:port`, `[v6]:port` or a bare IPv6 literal.
    pub target: String,
    /// Port when the target names none.
    pub port: Option<u16>,
    /// Output path, or `-` for stdout.
    pub output: PathBuf,
    /// Connect timeout, and the longest silence tolerated while receiving.
    pub timeout: Duration,
    pub token: Option<String>,
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
    BadTarget(String, &'static str),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("{target}: no data for {secs} s (timed out)")]
    Timeout { target: String, secs: u64 },
    #[error("{target} {detail}")]
    Closed { target: String, detail: String },
    #[error("connection lost after {got} of {expected} bytes: {cause}")]
    Lost { got: u64, expected: u64, cause: String },
    #[error("refused by {target}: {reason}")]
    Refused { target: String, status: Status, reason: String },
    #[error("{target} is not an xfer server or sent a malformed header: {source}")]
    Protocol { target: String, source: DecodeError },
    #[error("verification failed: received {bytes} bytes with blake3 {got}, server announced {expected}")]
    Mismatch { bytes: u64, got: String, expected: String },
    #[error("output directory {0} does not exist")]
    NoOutputDir(PathBuf),
    #[error("{0} is a directory; give a file name")]
    OutputIsDir(PathBuf),
    #[error("{path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    /// The reader of our stdout went away: not an error worth a message.
    #[error("stdout closed")]
    StdoutClosed,
}

impl FetchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            FetchError::BadTarget(..) => exit::USAGE,
            FetchError::Resolve { .. }
            | FetchError::Connect { .. }
            | FetchError::Timeout { .. }
            | FetchError::Closed { .. }
            | FetchError::Lost { .. } => exit::NETWORK,
            FetchError::Refused { .. } => exit::REFUSED,
            FetchError::Protocol { .. } | FetchError::Mismatch { .. } => exit::PROTOCOL,
            FetchError::NoOutputDir(_) | FetchError::OutputIsDir(_) | FetchError::Output { .. } => exit::LOCAL_IO,
            FetchError::StdoutClosed => exit::OK,
        }
    }
}

/// Splits `host[:port]` / `[v6]:port` / bare IPv6 into host and optional port.
pub fn parse_target(target: &str) -> Result<(String, Option<u16>), FetchError> {
    let bad = |why| FetchError::BadTarget(target.to_string(), why);
    if target.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        return match after {
            "" => Ok((host.to_string(), None)),
            p => {
                let p = p.strip_prefix(':').ok_or_else(|| bad("expected `:port` after `]`"))?;
                Ok((host.to_string(), Some(p.parse().map_err(|_| bad("bad port"))?)))
            }
        };
    }
    match target.matches(':').count() {
        0 => Ok((target.to_string(), None)),
        1 => {
            let (h, p) = target.split_once(':').unwrap_or((target, ""));
            if h.is_empty() {
                return Err(bad("missing host"));
            }
            Ok((h.to_string(), Some(p.parse().map_err(|_| bad("bad port"))?)))
        }
        _ => {
            // Several colons and no brackets: only a bare IPv6 literal makes sense.
            target.parse::<std::net::Ipv6Addr>().map_err(|_| bad("write IPv6 with a port as [addr]:port"))?;
            Ok((target.to_string(), None))
        }
    }
}

/// Path of the temporary file being written, for the interrupt handler to remove. Holding
/// the lock across the final rename makes "removed" and "renamed" mutually exclusive.
static PENDING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Removes the temporary file on Ctrl+C or SIGTERM and exits 130.
fn install_interrupt_cleanup() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_ref() {
                Some(p) => {
                    let _ = std::fs::remove_file(p);
                    eprintln!("\nxfer: interrupted; nothing written");
                }
                // Already renamed into place (or writing to stdout).
                None => eprintln!("\nxfer: interrupted"),
            }
            std::process::exit(exit::INTERRUPTED);
        }
    });
}

/// The directory a path is in (`.` for a bare name): where the temporary file goes, and
/// what is synced after the rename.
fn parent_dir(out: &Path) -> &Path {
    out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The temporary file; removed on drop unless committed.
struct Temp {
    path: PathBuf,
    committed: bool,
}

impl Temp {
    fn create(out: &Path) -> Result<(Temp, File), FetchError> {
        let dir = parent_dir(out);
        let name = out.file_name().ok_or_else(|| FetchError::OutputIsDir(out.to_path_buf()))?;
        if !dir.is_dir() {
            return Err(FetchError::NoOutputDir(dir.to_path_buf()));
        }
        if out.is_dir() {
            return Err(FetchError::OutputIsDir(out.to_path_buf()));
        }
        let pid = std::process::id();
        // Keep the temporary name within NAME_MAX (255) however long the output name is.
        let mut stem = name.to_string_lossy().into_owned();
        if stem.len() > 200 {
            let mut cut = 200;
            while !stem.is_char_boundary(cut) {
                cut -= 1;
            }
            stem.truncate(cut);
        }
        for n in 0..100u32 {
            let path = dir.join(format!(".{stem}.xfer-{pid}-{n}.part"));
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    *pending = Some(path.clone());
                    return Ok((Temp { path, committed: false }, f));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FetchError::Output { path, source: e }),
            }
        }
        Err(FetchError::Output { path: dir.to_path_buf(), source: io::Error::other("no free temporary name") })
    }

    /// Syncs, renames over `out`, syncs the directory.
    fn commit(mut self, file: File, out: &Path) -> Result<(), FetchError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Output { path, source }
        };
        file.sync_all().map_err(io_err(&self.path))?;
        drop(file);
        {
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
            *pending = None;
            self.committed = true;
        }
        let dir = parent_dir(out);
        // The rename is only durable once the directory is; a failure here is reported
        // although the file is already in place.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
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

/// Fetches as `opts` says. Prints the summary line (unless quiet) and returns it.
pub fn run(opts: &Options) -> Result<Summary, FetchError> {
    let (host, port) = parse_target(&opts.target)?;
    let port = port.or(opts.port).unwrap_or(crate::DEFAULT_PORT);
    let to_stdout = opts.output.as_os_str() == "-";
    // Check the output side before touching the network: a typo in the path should not
    // cost a transfer.
    let temp = if to_stdout {
        None
    } else {
        install_interrupt_cleanup();
        Some(Temp::create(&opts.output)?)
    };
    let start = Instant::now();
    let (mut stream, peer) = connect(&host, port, opts.timeout)?;
    let target = peer.to_string();
    let (size, digest) = handshake(&mut stream, &target, opts)?;

    let sink = match &temp {
        Some((t, f)) => {
            Sink::File(f.try_clone().map_err(|e| FetchError::Output { path: t.path.clone(), source: e })?, 0)
        }
        None => Sink::Stdout,
    };
    let progress = (!opts.quiet && is_terminal_stderr()).then(|| progress_bar(size));
    let got =
        receive(&mut stream, size, sink, &target, opts.timeout, progress.as_ref(), temp.as_ref().map(|t| &t.0.path))?;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    if !encoding::digest_eq(&got, &digest) {
        return Err(FetchError::Mismatch { bytes: size, got: encoding::hex(&got), expected: encoding::hex(&digest) });
    }
    if let Some((t, f)) = temp {
        t.commit(f, &opts.output)?;
    }
    let summary = Summary { bytes: size, elapsed: start.elapsed(), digest };
    if !opts.quiet {
        let secs = summary.elapsed.as_secs_f64();
        eprintln!(
            "fetched {} bytes in {secs:.2} s ({}), verified blake3 {}",
            size,
            crate::rate(size, secs),
            encoding::hex(&digest)
        );
    }
    Ok(summary)
}

fn is_terminal_stderr() -> bool {
    use std::io::IsTerminal;
    io::stderr().is_terminal()
}

fn progress_bar(size: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes:>10}/{total_bytes} {bytes_per_sec:>12} eta {eta:>4} [{wide_bar}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Tries every resolved address in turn; the error names the last failure.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<(TcpStream, SocketAddr), FetchError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| FetchError::Resolve { host: host.to_string(), source })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok((s, *addr)),
            Err(e) => last = e,
        }
    }
    let target = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => format!("{host}:{port}"),
    };
    Err(FetchError::Connect { target, source: last })
}

/// Sends the request and reads the header (and a refusal's reason). Reads no further than
/// the header, so every body byte goes through `receive`.
fn handshake(stream: &mut TcpStream, target: &str, opts: &Options) -> Result<(u64, Digest), FetchError> {
    let lost = |e: io::Error| FetchError::Closed { target: target.to_string(), detail: format!("failed: {e}") };
    stream.set_read_timeout(Some(opts.timeout)).map_err(&lost)?;
    stream.set_write_timeout(Some(opts.timeout)).map_err(&lost)?;
    let token = opts.token.as_ref().map(|t| *blake3::hash(t.as_bytes()).as_bytes());
    let req = encoding::encode_request(&encoding::Request { offset: 0, token });
    if let Err(e) = stream.write_all(&req) {
        // A server that refuses before reading may close first; its answer may still be there.
        if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
            return Err(timeout_or(e, target, opts.timeout, lost));
        }
    }
    let mut buf = [0u8; HEADER_LEN + MAX_REASON];
    let mut have = 0usize;
    loop {
        let need = match encoding::decode_response(&buf[..have]) {
            Ok(Decoded::NeedMore(n)) => n,
            Ok(Decoded::Done(Response::Ok { size, digest }, _)) => return Ok((size, digest)),
            Ok(Decoded::Done(Response::Refused { status, reason }, _)) => {
                return Err(FetchError::Refused { target: target.to_string(), status, reason });
            }
            Err(source) => return Err(FetchError::Protocol { target: target.to_string(), source }),
        };
        match stream.read(&mut buf[have..have + need]) {
            Ok(0) => {
                let detail = if have == 0 {
                    "closed the connection without answering".to_string()
                } else {
                    format!("closed the connection after {have} header bytes")
                };
                return Err(FetchError::Closed { target: target.to_string(), detail });
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timeout_or(e, target, opts.timeout, lost)),
        }
    }
}

fn timeout_or(
    e: io::Error,
    target: &str,
    timeout: Duration,
    other: impl FnOnce(io::Error) -> FetchError,
) -> FetchError {
    // SO_RCVTIMEO expiry surfaces as EAGAIN (WouldBlock) on Linux.
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        FetchError::Timeout { target: target.to_string(), secs: timeout.as_secs().max(1) }
    } else {
        other(e)
    }
}

/// Our stdout as a plain descriptor: the body is binary, so std's line buffering would
/// only add a scan and a copy.
struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; fd 1 stays open for the process.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A filled receive buffer, shared by the hasher and the writer. Whoever drops the last
/// reference gives the buffer back to the pool, on every path, errors included: a buffer
/// that never came back would leave the reader waiting for one forever.
struct Chunk {
    data: Vec<u8>,
    len: usize,
    pool: SyncSender<Vec<u8>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let _ = self.pool.try_send(std::mem::take(&mut self.data));
    }
}

/// Receives exactly `size` body bytes, hashing and writing them on two other threads.
/// Returns the digest of what arrived.
fn receive(
    stream: &mut TcpStream,
    size: u64,
    sink: Sink,
    target: &str,
    timeout: Duration,
    progress: Option<&indicatif::ProgressBar>,
    temp_path: Option<&PathBuf>,
) -> Result<Digest, FetchError> {
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(BUFS);
    for _ in 0..BUFS {
        let _ = pool_tx.send(vec![0u8; BUF_SIZE]);
    }
    let (hash_tx, hash_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let (write_tx, write_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let hasher = spawn_hasher(hash_rx);
    let writer = spawn_writer(write_rx, sink);

    let mut got = 0u64;
    let mut failure: Option<FetchError> = None;
    'outer: while got < size {
        let Ok(mut data) = pool_rx.recv() else { break };
        let mut len = 0usize;
        let want = ((size - got) as usize).min(BUF_SIZE);
        while len < want {
            match recv_all(stream, &mut data[len..want]) {
                Ok(0) => {
                    failure = Some(FetchError::Lost {
                        got: got + len as u64,
                        expected: size,
                        cause: "server closed the connection early".into(),
                    });
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(timeout_or(e, target, timeout, |e| FetchError::Lost {
                        got: got + len as u64,
                        expected: size,
                        cause: e.to_string(),
                    }));
                    break;
                }
            }
        }
        got += len as u64;
        if let Some(p) = progress {
            p.set_position(got);
        }
        if len > 0 {
            let chunk = Arc::new(Chunk { data, len, pool: pool_tx.clone() });
            // A closed channel means that stage stopped on an error; it is reported below.
            if hash_tx.send(chunk.clone()).is_err() || write_tx.send(chunk).is_err() {
                break 'outer;
            }
        }
        if failure.is_some() {
            break;
        }
    }
    drop(hash_tx);
    drop(write_tx);
    let digest = hasher.join().unwrap_or([0; 32]);
    let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")));
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe && temp_path.is_none() {
            return Err(FetchError::StdoutClosed);
        }
        let path = temp_path.cloned().unwrap_or_else(|| PathBuf::from("<stdout>"));
        return Err(FetchError::Output { path, source: e });
    }
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(digest)
}

/// One `recv` that waits for the whole buffer (MSG_WAITALL): one syscall and one wake-up
/// per chunk instead of one per segment burst. It still returns early on EOF, an error,
/// a signal or the receive timeout, with what it has; the caller loops.
fn recv_all(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes; the descriptor is open for the call.
    let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_WAITALL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn spawn_hasher(rx: Receiver<Arc<Chunk>>) -> JoinHandle<Digest> {
    std::thread::spawn(move || {
        let mut h = blake3::Hasher::new();
        for chunk in rx {
            h.update(&chunk.data[..chunk.len]);
        }
        *h.finalize().as_bytes()
    })
}

/// Where the body goes: the temporary file (with the offset written so far), or stdout.
enum Sink {
    File(File, u64),
    Stdout,
}

/// Start writeback of the temporary file every this many bytes, so the disk works while
/// the network does and the final fsync only waits for the tail.
const WRITEBACK_EVERY: u64 = 16 << 20;

impl Sink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => RawStdout.write_all(buf),
            Sink::File(f, written) => {
                f.write_all(buf)?;
                let before = *written;
                *written += buf.len() as u64;
                if before / WRITEBACK_EVERY != *written / WRITEBACK_EVERY {
                    let start = (before / WRITEBACK_EVERY) * WRITEBACK_EVERY;
                    // SAFETY: plain syscall on a descriptor we own. Advisory: errors are
                    // ignored, the final fsync reports any real failure.
                    unsafe {
                        libc::sync_file_range(
                            f.as_raw_fd(),
                            start as libc::off64_t,
                            (*written - start) as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

fn spawn_writer(rx: Receiver<Arc<Chunk>>, mut sink: Sink) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        for chunk in rx {
            // On error, return at once: dropping the receiver drops (and so recycles) what
            // was queued, and makes the reader's next send fail, which stops it.
            sink.write_all(&chunk.data[..chunk.len])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("host").unwrap(), ("host".into(), None));
        assert_eq!(parse_target("host:80").unwrap(), ("host".into(), Some(80)));
        assert_eq!(parse_target("10.0.0.1:7").unwrap(), ("10.0.0.1".into(), Some(7)));
        assert_eq!(parse_target("[::1]:4747").unwrap(), ("::1".into(), Some(4747)));
        assert_eq!(parse_target("[::1]").unwrap(), ("::1".into(), None));
        assert_eq!(parse_target("::1").unwrap(), ("::1".into(), None));
        assert_eq!(parse_target("fe80::1").unwrap(), ("fe80::1".into(), None));
        for bad in ["", "host:", "host:x", ":80", "[::1", "[::1]x", "[nope]:1", "a:b:c", "host:70000"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
