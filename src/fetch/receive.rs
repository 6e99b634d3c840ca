//! Receiving the body: exactly `size` bytes from the socket, hashed and written on two
//! other threads so that neither hashing nor the disk holds up the socket.
//!
//! Time: `--timeout` is the longest silence allowed, measured from the last byte received.
//! Every receive call waits at most [`TICK`], so the silence is looked at (and the progress
//! bar moved) at least that often, however slow the link; a fast link still fills a 4 MiB
//! buffer per call (MSG_WAITALL), so the ticks cost nothing there.
//!
//! Nothing here is sized from the peer's length field: buffers are fixed, and a size of
//! 2^64-1 costs nothing until bytes actually arrive. It must never know the wire format.

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::output::Writer;
use crate::encoding::Digest;

/// Size of each receive buffer, and how many are in flight between the stages.
const BUF_SIZE: usize = 4 << 20;
const BUFS: usize = 4;

/// Longest a single receive call waits: how often silence is measured and progress shown.
pub const TICK: Duration = Duration::from_millis(100);

/// Start writeback of the temporary file every this many bytes, so the disk works while
/// the network does and the final fsync only waits for the tail.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Why receiving stopped short.
#[derive(Debug)]
pub enum Failure {
    /// The peer closed after this many bytes.
    Closed(u64),
    /// No byte for the whole timeout, after this many bytes.
    Silent(u64),
    /// A socket error after this many bytes.
    Lost(u64, io::Error),
    /// Writing the output failed.
    Write(io::Error),
    /// The reader of stdout or of the FIFO went away.
    ReaderGone,
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
    /// `tick` runs at least every [`TICK`] while waiting, with the bytes so far this call.
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

/// Receives exactly `size` body bytes into `writer`; returns the BLAKE3 digest of what
/// arrived. `progress` is told the byte count at least every tick while bytes arrive.
pub fn receive(
    stream: &TcpStream,
    silence: &mut Silence,
    size: u64,
    writer: Writer,
    progress: &mut dyn FnMut(u64),
) -> Result<Digest, Failure> {
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(BUFS);
    for _ in 0..BUFS {
        let _ = pool_tx.send(vec![0u8; BUF_SIZE]);
    }
    let (hash_tx, hash_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let (write_tx, write_rx) = sync_channel::<Arc<Chunk>>(BUFS);
    let hasher = spawn_hasher(hash_rx);
    let stream_output = !matches!(writer, Writer::Temp(_));
    let writer = spawn_writer(write_rx, writer);

    let mut got = 0u64;
    let mut failure: Option<Failure> = None;
    while got < size {
        let Ok(mut data) = pool_rx.recv() else { break };
        let mut len = 0usize;
        let want = ((size - got) as usize).min(BUF_SIZE);
        while len < want {
            match silence.recv(stream, &mut data[len..want], true, || progress(got + len as u64)) {
                Ok(0) => {
                    failure = Some(Failure::Closed(got + len as u64));
                    break;
                }
                Ok(n) => {
                    len += n;
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
        got += len as u64;
        if len > 0 {
            let chunk = Arc::new(Chunk { data, len, pool: pool_tx.clone() });
            // A closed channel means that stage stopped on an error; it is reported below.
            if hash_tx.send(chunk.clone()).is_err() || write_tx.send(chunk).is_err() {
                break;
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
        if e.kind() == io::ErrorKind::BrokenPipe && stream_output {
            return Err(Failure::ReaderGone);
        }
        return Err(Failure::Write(e));
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(digest),
    }
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

fn spawn_writer(rx: Receiver<Arc<Chunk>>, writer: Writer) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mut written = 0u64;
        for chunk in rx {
            // On error, return at once: dropping the receiver drops (and so recycles) what
            // was queued, and makes the reader's next send fail, which stops it.
            let buf = &chunk.data[..chunk.len];
            match &writer {
                Writer::Stdout => RawStdout.write_all(buf)?,
                Writer::Stream(f) => (&mut &*f).write_all(buf)?,
                Writer::Temp(f) => {
                    (&mut &*f).write_all(buf)?;
                    writeback(f, written, buf.len() as u64);
                }
            }
            written += buf.len() as u64;
        }
        Ok(())
    })
}

/// Starts writeback of each completed WRITEBACK_EVERY block of the temporary file.
fn writeback(f: &File, before: u64, len: u64) {
    let after = before + len;
    if before / WRITEBACK_EVERY != after / WRITEBACK_EVERY {
        let start = (before / WRITEBACK_EVERY) * WRITEBACK_EVERY;
        // SAFETY: plain syscall on a descriptor we own. Advisory: errors are ignored, the
        // final fsync reports any real failure.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                start as libc::off64_t,
                (after - start) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}
