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
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8).collect()
    }

    /// What the far end of the connection does.
    enum Then {
        /// Closes after sending.
        Close,
        /// Keeps the connection open, silent, until the receiver closes it (or this long).
        Hold(Duration),
        /// Resets the connection (RST) once the receiver has shown all it was sent.
        Reset,
    }

    /// Receives what a peer sends as `parts` (pausing between them), into a temporary file
    /// holding `prefix` already, with `leftover` as the bytes read with the head.
    fn run(
        framing: Framing,
        leftover: &[u8],
        prefix: &[u8],
        parts: Vec<Vec<u8>>,
        then: Then,
        limit: Duration,
    ) -> (Result<Received, Failure>, Vec<u8>, Vec<u64>) {
        run_paced(framing, leftover, prefix, parts, Duration::from_millis(20), then, limit)
    }

    /// `run`, with `gap` between the parts.
    fn run_paced(
        framing: Framing,
        leftover: &[u8],
        prefix: &[u8],
        parts: Vec<Vec<u8>>,
        gap: Duration,
        then: Then,
        limit: Duration,
    ) -> (Result<Received, Failure>, Vec<u8>, Vec<u64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let total = (prefix.len() + leftover.len() + parts.iter().map(Vec::len).sum::<usize>()) as u64;
        let (shown_tx, shown) = std::sync::mpsc::channel::<u64>();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            for p in parts {
                let _ = s.write_all(&p);
                std::thread::sleep(gap);
            }
            match then {
                Then::Close => {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = s.read_to_end(&mut Vec::new());
                }
                Then::Hold(d) => {
                    let _ = s.set_read_timeout(Some(d));
                    let _ = s.read_to_end(&mut Vec::new());
                }
                Then::Reset => {
                    // A reset may discard what the receiver has not read yet: wait until
                    // it has shown all of it (10 s at most).
                    let end = Instant::now() + SEC;
                    while let Ok(n) = shown.recv_timeout(end.saturating_duration_since(Instant::now())) {
                        if n >= total {
                            break;
                        }
                    }
                    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                    // SAFETY: a valid option value for this descriptor, which is open.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&raw const linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
            }
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(prefix).unwrap();
        let prefix_file = (!prefix.is_empty()).then(|| file.try_clone().unwrap());
        let mut silence = Silence::start(&stream, limit).unwrap();
        let job = Job {
            stream: &stream,
            silence: &mut silence,
            framing,
            leftover: leftover.to_vec(),
            start: prefix.len() as u64,
            prefix: prefix_file,
            writer: Writer::Temp(file.try_clone().unwrap()),
            sha256: true,
        };
        let mut seen = Vec::new();
        let result = receive(job, &mut |n| {
            seen.push(n);
            let _ = shown_tx.send(n);
        });
        drop(stream);
        peer.join().unwrap();
        let mut on_disk = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        (result, on_disk, seen)
    }

    fn sha256(data: &[u8]) -> Digest {
        let mut d = [0u8; 32];
        d.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(data));
        d
    }

    fn assert_received(r: Result<Received, Failure>, want: &[u8]) {
        let r = r.unwrap_or_else(|f| panic!("failed: {f:?}"));
        assert_eq!(r.bytes, want.len() as u64);
        assert_eq!(r.blake3, *blake3::hash(want).as_bytes(), "blake3");
        assert_eq!(r.sha256, Some(sha256(want)), "sha-256");
    }

    const SEC: Duration = Duration::from_secs(10);

    #[test]
    fn a_length_framed_body_is_taken_exactly_across_buffers_after_the_leftover() {
        // Over two 4 MiB buffers, a leftover first, and a peer that sends more than asked.
        let data = bytes(BUF_SIZE * 2 + 12_345, 1);
        let (lead, rest) = data.split_at(1000);
        let mut extra = rest.to_vec();
        extra.extend_from_slice(b"not part of the body");
        let (r, disk, seen) = run(Framing::Length(data.len() as u64), lead, &[], vec![extra], Then::Close, SEC);
        assert_received(r, &data);
        assert!(disk == data, "the bytes on disk differ");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went back: {seen:?}");
        assert_eq!(seen.last(), Some(&(data.len() as u64)), "the last progress is the whole");
    }

    #[test]
    fn a_body_ended_by_close_is_all_that_came() {
        let data = bytes(300_001, 2);
        let parts = vec![data[..100_000].to_vec(), data[100_000..].to_vec()];
        let (r, disk, _) = run(Framing::Close, &[], &[], parts, Then::Close, SEC);
        assert_received(r, &data);
        assert!(disk == data);
    }

    #[test]
    fn a_resumed_body_is_hashed_after_its_prefix_and_written_after_it() {
        let data = bytes(3 << 20, 3);
        let (prefix, rest) = data.split_at(1_234_567);
        let (r, disk, seen) =
            run(Framing::Length(rest.len() as u64), &[], prefix, vec![rest.to_vec()], Then::Close, SEC);
        assert_received(r, &data);
        assert!(disk == data, "the rest was not written after the prefix");
        assert!(seen.iter().all(|&n| n >= prefix.len() as u64), "progress counts the prefix: {seen:?}");
    }

    #[test]
    fn a_resumed_prefix_that_cannot_be_read_back_is_a_failure_not_a_digest() {
        let data = bytes(1000, 4);
        // The partial is shorter than the prefix the offer starts after (it is empty). The
        // body goes to another file: written after the prefix into the same one, it could
        // fill the gap (with a hole's zeros) before the hasher reads it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(&data);
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut silence = Silence::start(&stream, SEC).unwrap();
        let job = Job {
            stream: &stream,
            silence: &mut silence,
            framing: Framing::Length(1000),
            leftover: Vec::new(),
            start: 500,
            prefix: Some(tempfile::tempfile().unwrap()),
            writer: Writer::Temp(tempfile::tempfile().unwrap()),
            sha256: false,
        };
        let r = receive(job, &mut |_| {});
        peer.join().unwrap();
        assert!(matches!(r, Err(Failure::Write(_))), "{r:?}");
    }

    #[test]
    fn a_peer_that_closes_early_is_reported_with_what_arrived() {
        let data = bytes(50_000, 5);
        let (r, _, _) = run(Framing::Length(80_000), &data[..10], &[], vec![data[10..].to_vec()], Then::Close, SEC);
        assert!(matches!(r, Err(Failure::Closed(50_000))), "{r:?}");
        // After a resumed prefix, the count is the file's.
        let (r, _, _) = run(Framing::Length(80_000), &[], &data[..7], vec![data[7..].to_vec()], Then::Close, SEC);
        assert!(matches!(r, Err(Failure::Closed(50_000))), "{r:?}");
        // The file's count passes the body's length, but the body is short.
        let (r, _, _) =
            run(Framing::Length(2000), &[], &data[..1000], vec![data[1000..2500].to_vec()], Then::Close, SEC);
        assert!(matches!(r, Err(Failure::Closed(2500))), "{r:?}");
    }

    #[test]
    fn pauses_shorter_than_the_limit_are_waited_out_and_shown() {
        // Each pause spans several ticks, with part of a buffer in hand.
        let data = bytes(30_000, 9);
        let parts: Vec<Vec<u8>> = data.chunks(10_000).map(<[u8]>::to_vec).collect();
        let pause = Duration::from_millis(350);
        let (r, disk, seen) =
            run_paced(Framing::Length(30_000), &[], &[], parts, pause, Then::Close, Duration::from_secs(5));
        assert_received(r, &data);
        assert!(disk == data);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went back: {seen:?}");
        assert!(seen.contains(&10_000) && seen.contains(&20_000), "progress during the pauses: {seen:?}");
    }

    /// Receives `data` (then a close) into `writer`.
    fn receive_into(writer: Writer, data: Vec<u8>) -> Result<Received, Failure> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let n = data.len() as u64;
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(&data);
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut silence = Silence::start(&stream, SEC).unwrap();
        let job = Job {
            stream: &stream,
            silence: &mut silence,
            framing: Framing::Length(n),
            leftover: Vec::new(),
            start: 0,
            prefix: None,
            writer,
            sha256: false,
        };
        let r = receive(job, &mut |_| {});
        peer.join().unwrap();
        r
    }

    #[test]
    fn a_stream_whose_reader_left_is_told_apart_from_a_failed_write() {
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe; both ends are owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: each descriptor is owned once.
        let (read_end, write_end) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        drop(read_end);
        let r = receive_into(Writer::Stream(write_end), bytes(100_000, 10));
        assert!(matches!(r, Err(Failure::ReaderGone)), "{r:?}");
        // Any other failure to write is one.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let read_only = File::open(dir.path().join("f")).unwrap();
        let r = receive_into(Writer::Stream(read_only), bytes(100_000, 11));
        assert!(matches!(&r, Err(Failure::Write(e)) if e.kind() != io::ErrorKind::BrokenPipe), "{r:?}");
    }

    extern "C" fn nothing(_: libc::c_int) {}

    #[test]
    fn a_signal_during_a_receive_is_not_a_lost_connection() {
        // A handled signal interrupts a receive that has a timeout (EINTR, SA_RESTART or
        // not: see signal(7)); a terminal's SIGWINCH is the everyday case.
        // SAFETY: installs a handler that does nothing, for a signal nothing else uses.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
        let data = bytes(40_000, 12);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            let stream = TcpStream::connect(addr).unwrap();
            let mut silence = Silence::start(&stream, SEC).unwrap();
            let file = tempfile::tempfile().unwrap();
            let job = Job {
                stream: &stream,
                silence: &mut silence,
                framing: Framing::Length(40_000),
                leftover: Vec::new(),
                start: 0,
                prefix: None,
                writer: Writer::Temp(file),
                sha256: true,
            };
            receive(job, &mut |_| {})
        });
        let thread = rx.recv().unwrap() as libc::pthread_t;
        let (mut s, _) = l.accept().unwrap();
        for part in data.chunks(10_000) {
            // Signals land while the receiver waits inside recv.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(30));
                // A finished thread's id may be another test's by now.
                if receiver.is_finished() {
                    break;
                }
                // SAFETY: the thread is alive (not joined, not finished) here.
                unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
            }
            s.write_all(part).unwrap();
        }
        assert_received(receiver.join().unwrap(), &data);
    }

    #[test]
    fn a_reset_is_a_lost_connection_with_what_arrived_not_silence() {
        let data = bytes(20_000, 13);
        let (r, _, _) = run(Framing::Length(80_000), &data[..100], &[], vec![data[100..].to_vec()], Then::Reset, SEC);
        assert!(matches!(&r, Err(Failure::Lost(20_000, e)) if e.kind() == io::ErrorKind::ConnectionReset), "{r:?}");
    }

    #[test]
    fn a_peer_that_goes_silent_is_reported_with_what_arrived() {
        let data = bytes(20_000, 6);
        let hold = Then::Hold(Duration::from_secs(3));
        let (r, _, _) = run(Framing::Length(80_000), &[], &[], vec![data], hold, Duration::from_millis(300));
        assert!(matches!(r, Err(Failure::Silent(20_000))), "{r:?}");
    }

    fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut at = 0;
        for &n in sizes.iter().chain(std::iter::repeat(&7777)) {
            if at == data.len() {
                break;
            }
            let n = n.min(data.len() - at);
            wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            wire.extend_from_slice(&data[at..at + n]);
            wire.extend_from_slice(b"\r\n");
            at += n;
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    #[test]
    fn a_chunked_body_is_decoded_and_ends_at_its_last_chunk() {
        let data = bytes(100_000, 7);
        let mut wire = chunked(&data, &[1, 4096, 65_536]);
        let lead = wire.drain(..50).collect::<Vec<u8>>();
        // Held open after the last chunk: the framing, not the close, ends it.
        let hold = Then::Hold(Duration::from_secs(20));
        let (r, disk, _) = run(Framing::Chunked(Chunked::default()), &lead, &[], vec![wire], hold, SEC);
        assert_received(r, &data);
        assert!(disk == data);
    }

    #[test]
    fn a_chunked_body_cut_or_garbled_fails() {
        let data = bytes(10_000, 8);
        let wire = chunked(&data, &[3000]);
        let (r, _, _) =
            run(Framing::Chunked(Chunked::default()), &[], &[], vec![wire[..5000].to_vec()], Then::Close, SEC);
        assert!(matches!(r, Err(Failure::Closed(_))), "cut: {r:?}");
        let mut bad = wire.clone();
        bad[0] = b'z';
        let (r, _, _) = run(Framing::Chunked(Chunked::default()), &[], &[], vec![bad], Then::Close, SEC);
        assert!(matches!(r, Err(Failure::Garbled(0))), "garbled: {r:?}");
    }

    #[test]
    fn writeback_starts_once_a_block_is_complete() {
        const W: u64 = WRITEBACK_EVERY;
        assert_eq!(writeback_range(0, 1), None);
        assert_eq!(writeback_range(0, W - 1), None);
        assert_eq!(writeback_range(W - 1, 1), Some((0, W)));
        assert_eq!(writeback_range(W, 1), None);
        assert_eq!(writeback_range(W - 10, 20), Some((0, W + 10)));
        assert_eq!(writeback_range(3 * W + 5, W), Some((3 * W, W + 5)));
        assert_eq!(writeback_range(5, 0), None);
    }
}
