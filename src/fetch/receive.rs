//! Receiving the body: from the socket into the output while it is hashed, on three stages
//! (this thread reads, one thread hashes, one writes), so that neither hashing nor the disk
//! holds up the socket. A second hasher computes SHA-256 when something wants it.
//!
//! A resumed transfer starts after a prefix already on disk: the hashers first read that
//! prefix back from the partial (BLAKE3 runs at several GB/s, so this costs little next to
//! the network, and it overlaps with the first bytes arriving), and the writer writes at
//! positions after it.
//!
//! Time: `--timeout` is the longest silence allowed, measured from the last byte received.
//! Every receive call waits at most [`TICK`], so the silence is looked at (and the progress
//! bar moved) at least that often, however slow the link; a fast link still fills a 4 MiB
//! buffer per call (MSG_WAITALL), so the ticks cost nothing there.
//!
//! Nothing here is sized from the peer's length field: buffers are fixed, and a size of
//! 2^64-1 costs nothing until bytes actually arrive. It must never know the wire format
//! beyond how the body is framed (a length, the end of the connection, or chunks).

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::output::Writer;
use crate::encoding::Digest;
use crate::encoding::http::Chunked;

/// Size of each receive buffer, and how many are in flight between the stages.
const BUF_SIZE: usize = 4 << 20;
const BUFS: usize = 4;

/// Longest a single receive call waits: how often silence is measured and progress shown.
pub const TICK: Duration = Duration::from_millis(100);

/// A buffer is handed to the writer when full, or once it has waited this long with some
/// bytes in it: on a slow link an interrupted fetch keeps all but the last second or so of
/// what arrived, not up to a whole buffer.
const HAND_OVER_AFTER: Duration = Duration::from_secs(1);

/// Start writeback of the temporary file every this many bytes, so the disk works while
/// the network does and the final fsync only waits for the tail.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// How the body ends.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// When the server closes the connection (HTTP/1.0 style).
    Close,
    /// HTTP chunked transfer coding.
    Chunked(Chunked),
}

/// Why receiving stopped short. Each carries the bytes of the file on disk by then
/// (prefix included).
#[derive(Debug)]
pub enum Failure {
    /// The peer closed early.
    Closed(u64),
    /// No byte for the whole timeout.
    Silent(u64),
    /// A socket error.
    Lost(u64, io::Error),
    /// The body's framing made no sense.
    Garbled(u64),
    /// Writing the output failed.
    Write(io::Error),
    /// The reader of stdout or of the FIFO went away.
    ReaderGone,
}

/// What arrived: the file's bytes in all (prefix included) and their digests.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: u64,
    pub blake3: Digest,
    pub sha256: Option<Digest>,
}

/// The longest silence allowed, measured from the last byte received.
pub struct Silence {
    limit: Duration,
    last: Instant,
}

impl Silence {
    /// Starts the clock and makes each receive call on `stream` wait at most a tick.
    pub fn start(stream: &TcpStream, limit: Duration) -> io::Result<Silence> {
        stream.set_read_timeout(Some(TICK.min(limit)))?;
        Ok(Silence { limit, last: Instant::now() })
    }

    /// Receives into `buf`, waiting for the whole of it when `all` (MSG_WAITALL), until the
    /// peer sends something, closes (0), or stays silent past the limit (`TimedOut`).
    /// `tick` runs at least every [`TICK`] while waiting.
    pub fn recv(&mut self, stream: &TcpStream, buf: &mut [u8], all: bool, mut tick: impl FnMut()) -> io::Result<usize> {
        let flags = if all { libc::MSG_WAITALL } else { 0 };
        loop {
            // SAFETY: buf is valid for buf.len() bytes; the descriptor is open for the call.
            let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n > 0 {
                // With MSG_WAITALL a partial result means the tick ran out with bytes in
                // hand: the last of them came at most a tick ago.
                self.last = Instant::now();
                return Ok(n as usize);
            }
            if n == 0 {
                return Ok(0);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                // SO_RCVTIMEO expiry surfaces as EAGAIN.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    if self.last.elapsed() >= self.limit {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    tick();
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
    }
}

/// A filled receive buffer, shared by the hashers and the writer. Whoever drops the last
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

/// What to receive, and into what.
pub struct Job<'a> {
    pub stream: &'a TcpStream,
    pub silence: &'a mut Silence,
    pub framing: Framing,
    /// Body bytes already read with the head.
    pub leftover: Vec<u8>,
    /// Bytes of the file already on disk (a resumed partial): hashed back from `prefix`,
    /// and the body is written after them.
    pub start: u64,
    pub prefix: Option<File>,
    pub writer: Writer,
    pub sha256: bool,
}

/// Receives the body; `progress` is told the file's byte count at least every tick while
/// bytes arrive.
pub fn receive(job: Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<Received, Failure> {
    let Job { stream, silence, mut framing, leftover, start, prefix, writer, sha256 } = job;
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(BUFS);
    for _ in 0..BUFS {
        let _ = pool_tx.send(vec![0u8; BUF_SIZE]);
    }
    let prefix = prefix.map(Arc::new);
    let (b3_tx, b3_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let blake = spawn_hasher(b3_rx, prefix.clone(), start, Box::new(Blake3(blake3::Hasher::new())));
    let sha = sha256.then(|| {
        let (tx, rx) = sync_channel::<Arc<Chunk>>(BUFS);
        (tx, spawn_hasher(rx, prefix.clone(), start, Box::new(Sha256(<sha2::Sha256 as sha2::Digest>::new()))))
    });
    let (write_tx, write_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let stream_output = !matches!(writer, Writer::Temp(_));
    let writer = spawn_writer(write_rx, writer, start);

    let mut got = start;
    let mut left = leftover;
    let mut failure: Option<Failure> = None;
    loop {
        let want = match &framing {
            Framing::Length(n) if got - start >= *n => break,
            Framing::Chunked(c) if c.is_done() => break,
            Framing::Length(n) => ((start + n - got) as usize).min(BUF_SIZE),
            _ => BUF_SIZE,
        };
        let Ok(mut data) = pool_rx.recv() else { break };
        let since = Instant::now();
        let mut len = 0usize;
        let mut ended = false;
        // Bytes that came with the head go first.
        if !left.is_empty() {
            let n = left.len().min(want);
            data[..n].copy_from_slice(&left[..n]);
            left.drain(..n);
            len = n;
        }
        while len < want && left.is_empty() {
            let all = matches!(framing, Framing::Length(_));
            match silence.recv(stream, &mut data[len..want], all, || progress(got + len as u64)) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    len += n;
                    if !all || since.elapsed() >= HAND_OVER_AFTER {
                        break;
                    }
                    progress(got + len as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    failure = Some(Failure::Silent(got + len as u64));
                    break;
                }
                Err(e) => {
                    failure = Some(Failure::Lost(got + len as u64, e));
                    break;
                }
            }
        }
        if let Framing::Chunked(c) = &mut framing {
            match c.decode(&mut data[..len]) {
                Ok(n) => len = n,
                Err(_) => failure = failure.or(Some(Failure::Garbled(got))),
            }
        }
        got += len as u64;
        progress(got);
        if len > 0 {
            let chunk = Arc::new(Chunk { data, len, pool: pool_tx.clone() });
            // A closed channel means that stage stopped on an error; it is reported below.
            let hashed =
                b3_tx.send(chunk.clone()).is_ok() && sha.as_ref().is_none_or(|(tx, _)| tx.send(chunk.clone()).is_ok());
            if !hashed || write_tx.send(chunk).is_err() {
                break;
            }
        }
        if failure.is_some() {
            break;
        }
        if ended {
            let complete = match &framing {
                Framing::Close => true,
                Framing::Length(n) => got - start >= *n,
                Framing::Chunked(c) => c.is_done(),
            };
            if !complete {
                failure = Some(Failure::Closed(got));
            }
            break;
        }
    }
    drop(b3_tx);
    drop(write_tx);
    let blake3 = blake.join().unwrap_or(None);
    let sha256 = match sha {
        Some((tx, h)) => {
            drop(tx);
            h.join().unwrap_or(None)
        }
        None => None,
    };
    let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")));
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe && stream_output {
            return Err(Failure::ReaderGone);
        }
        return Err(Failure::Write(e));
    }
    if let Some(f) = failure {
        return Err(f);
    }
    let Some(blake3) = blake3 else {
        return Err(Failure::Write(io::Error::other("the resumed prefix could not be read back")));
    };
    Ok(Received { bytes: got, blake3, sha256 })
}

/// A hash function the hasher thread feeds.
trait Hash: Send {
    fn update(&mut self, data: &[u8]);
    fn finish(self: Box<Self>) -> Digest;
}

struct Blake3(blake3::Hasher);

impl Hash for Blake3 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self: Box<Self>) -> Digest {
        *self.0.finalize().as_bytes()
    }
}

struct Sha256(sha2::Sha256);

impl Hash for Sha256 {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.0, data);
    }
    fn finish(self: Box<Self>) -> Digest {
        let mut d = [0u8; 32];
        d.copy_from_slice(&sha2::Digest::finalize(self.0));
        d
    }
}

/// Hashes the resumed prefix (read back from the partial), then every chunk. `None` when
/// the prefix could not be read.
fn spawn_hasher(
    rx: Receiver<Arc<Chunk>>,
    prefix: Option<Arc<File>>,
    start: u64,
    mut h: Box<dyn Hash>,
) -> JoinHandle<Option<Digest>> {
    std::thread::spawn(move || {
        if start > 0 {
            let file = prefix?;
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < start {
                let n = ((start - off) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], off).ok()?;
                h.update(&buf[..n]);
                off += n as u64;
            }
        }
        for chunk in rx {
            h.update(&chunk.data[..chunk.len]);
        }
        Some(h.finish())
    })
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

fn spawn_writer(rx: Receiver<Arc<Chunk>>, writer: Writer, start: u64) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mut at = start;
        for chunk in rx {
            // On error, return at once: dropping the receiver drops (and so recycles) what
            // was queued, and makes the reader's next send fail, which stops it.
            let buf = &chunk.data[..chunk.len];
            match &writer {
                Writer::Stdout => RawStdout.write_all(buf)?,
                Writer::Stream(f) => (&mut &*f).write_all(buf)?,
                Writer::Temp(f) => {
                    f.write_all_at(buf, at)?;
                    writeback(f, at, buf.len() as u64);
                }
            }
            at += buf.len() as u64;
        }
        Ok(())
    })
}

/// Starts writeback of each completed WRITEBACK_EVERY block of the temporary file.
fn writeback(f: &File, before: u64, len: u64) {
    if let Some((start, len)) = writeback_range(before, len) {
        // SAFETY: plain syscall on a descriptor we own. Advisory: errors are ignored, the
        // final fsync reports any real failure.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                start as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

/// What to write back once `len` bytes were written at `before`: from the start of the
/// block that write began in to its end, when it crossed into another block; else nothing.
fn writeback_range(before: u64, len: u64) -> Option<(u64, u64)> {
    let after = before + len;
    let start = before / WRITEBACK_EVERY * WRITEBACK_EVERY;
    (after / WRITEBACK_EVERY != before / WRITEBACK_EVERY).then_some((start, after - start))
}

#[cfg(test)]
mod tests;
