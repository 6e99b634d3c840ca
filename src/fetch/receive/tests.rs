//! `receive` over a loopback pair: each framing, a leftover, a resumed prefix, early
//! closes, resets, silence, signals, a reader that went away; and the writeback range.

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
    let (r, disk, seen) = run(Framing::Length(rest.len() as u64), &[], prefix, vec![rest.to_vec()], Then::Close, SEC);
    assert_received(r, &data);
    assert!(disk == data, "the rest was not written after the prefix");
    assert!(seen.iter().all(|&n| n >= prefix.len() as u64), "progress counts the prefix: {seen:?}");
}

#[test]
fn a_resumed_prefix_that_cannot_be_read_back_is_a_failure_not_a_digest() {
    // The partial is shorter than the prefix the offer starts after (it is empty). The
    // body goes to another file: written after the prefix into the same one, it could
    // fill the gap (with a hole's zeros) before the hasher reads it.
    let (addr, peer) = send_once(bytes(1000, 4));
    let stream = TcpStream::connect(addr).unwrap();
    let empty = tempfile::tempfile().unwrap();
    let r = receive_on(&stream, 1000, 500, Some(empty), Writer::Temp(tempfile::tempfile().unwrap()));
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
    let (r, _, _) = run(Framing::Length(2000), &[], &data[..1000], vec![data[1000..2500].to_vec()], Then::Close, SEC);
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

/// A peer that sends `data` to the first to connect, then closes.
fn send_once(data: Vec<u8>) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = s.write_all(&data);
    });
    (addr, peer)
}

/// Receives a body of `len` bytes from `stream`, after `start` bytes read back from
/// `prefix`, into `writer`.
fn receive_on(
    stream: &TcpStream,
    len: u64,
    start: u64,
    prefix: Option<File>,
    writer: Writer,
) -> Result<Received, Failure> {
    let mut silence = Silence::start(stream, SEC).unwrap();
    let job = Job {
        stream,
        silence: &mut silence,
        framing: Framing::Length(len),
        leftover: Vec::new(),
        start,
        prefix,
        writer,
        sha256: true,
    };
    receive(job, &mut |_| {})
}

/// Receives `data` (then a close) into `writer`.
fn receive_into(writer: Writer, data: Vec<u8>) -> Result<Received, Failure> {
    let n = data.len() as u64;
    let (addr, peer) = send_once(data);
    let r = receive_on(&TcpStream::connect(addr).unwrap(), n, 0, None, writer);
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
        receive_on(&stream, 40_000, 0, None, Writer::Temp(tempfile::tempfile().unwrap()))
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
    let (r, _, _) = run(Framing::Chunked(Chunked::default()), &[], &[], vec![wire[..5000].to_vec()], Then::Close, SEC);
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
