//! The one send path: delivers any reply, of any protocol, to a socket.
//!
//! A reply is a head, rendered by its protocol on the stack each time it is (re)sent (it is
//! never stored per client, so a stalled client costs a few hundred bytes), followed by a
//! byte range of the snapshot. Head and an in-memory body leave in one `writev`; a body
//! from the descriptor leaves by `sendfile(2)` (the head first, with MSG_MORE, so they
//! share a segment), with a read+write fallback where sendfile cannot be used. Each call
//! moves at most the turn's budget. A body whose snapshot went stale is cut, never
//! finished. After the last byte of a reply that ends the connection, the connection
//! lingers until the peer has everything (see [`after_last_byte`]).
//!
//! Must never parse anything, nor know which protocol a head belongs to. Protocol code, in
//! turn, never touches a socket.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::snapshot::Snapshot;

/// `sendfile(2)` moves at most this many bytes per call on Linux.
const SENDFILE_MAX: usize = 0x7fff_f000;
/// Unsent bytes a socket may hold while sending a large body (TCP_NOTSENT_LOWAT).
///
/// Without a limit, sendfile queues up to the whole send buffer (autotuned to megabytes),
/// and the kernel transmits that backlog later, whenever the peer's acknowledgements open
/// the window: in the receive path of those acknowledgements, on whatever core they arrive,
/// not in our sendfile. A small backlog keeps the transmitting in our own calls (the socket
/// reports writable again as soon as it drops below this), and a stalled client pins at
/// most this much unsent data in kernel memory instead of megabytes. On loopback with
/// clients that copy what they read, this about doubled 100 × 10 MiB fan-out, at the same
/// CPU per transfer (BENCHMARKS.md). It does not limit what is in flight, so a long fat
/// link still fills its window.
pub const UNSENT_MAX: u32 = 256 * 1024;
/// Bodies smaller than this go out before a limit would matter; they skip its system call.
const LIMIT_UNSENT_FROM: u64 = 1 << 20;
/// Largest head a protocol may render (a native header and reason, an HTTP head, or a
/// small generated page such as HTTP's landing page).
pub const HEAD_MAX: usize = 16 * 1024;

/// After the last byte, how long we keep discarding what the peer sends before closing.
const LINGER: Duration = Duration::from_secs(2);
/// ... and how much of it we are willing to read.
const LINGER_MAX_BYTES: u32 = 256 * 1024;
/// While lingering, how often we look whether the peer has acknowledged everything.
pub const LINGER_POLL: Duration = Duration::from_millis(100);

/// The socket operations the send path needs. Implemented by mio's `TcpStream`; unit tests
/// and benches implement it with a peer that takes k bytes and then says WouldBlock.
pub trait Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Writes a small prefix that more data will follow soon (MSG_MORE on a socket), so the
    /// head and the first body bytes share a segment.
    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sends up to `len` bytes of `file` from `offset` without copying through user space.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Bytes sent but not yet acknowledged by the peer.
    fn unacked(&self) -> usize;
    /// Caps the bytes queued in the socket but not yet sent ([`UNSENT_MAX`]). Best effort:
    /// a socket that cannot do it sends as before.
    fn limit_unsent(&mut self, _bytes: u32) {}
}

impl Conn for mio::net::TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }

    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; the fd is ours for the call.
        let n = unsafe { libc::send(self.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_MORE) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut off = offset as libc::off_t;
        // SAFETY: both descriptors are open for the call; `off` is a valid in/out pointer.
        let n = unsafe { libc::sendfile(self.as_raw_fd(), file.as_raw_fd(), &mut off, len.min(SENDFILE_MAX)) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        mio::net::TcpStream::shutdown(self, std::net::Shutdown::Write)
    }

    fn unacked(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the valid pointer.
        let r = unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        // If the kernel cannot say, assume data is outstanding: lingering is the safe side.
        if r == 0 { n.max(0) as usize } else { 1 }
    }

    fn limit_unsent(&mut self, bytes: u32) {
        let v = bytes as libc::c_int;
        // SAFETY: the option value is a c_int that outlives the call, and its size is given.
        unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// How far one reply has gone: `pos` bytes of head-then-body are out. The head is
/// `head_len` bytes; the body is bytes `body_start..body_end` of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub head_len: u32,
    pub body_start: u64,
    pub body_end: u64,
    pub pos: u64,
}

impl Delivery {
    pub fn new(head_len: usize, body: std::ops::Range<u64>) -> Delivery {
        debug_assert!(head_len <= HEAD_MAX && body.start <= body.end);
        Delivery { head_len: head_len as u32, body_start: body.start, body_end: body.end, pos: 0 }
    }

    fn total(&self) -> u64 {
        self.head_len as u64 + (self.body_end - self.body_start)
    }

    /// Body bytes out so far.
    pub fn body_sent(&self) -> u64 {
        self.pos.saturating_sub(self.head_len as u64)
    }

    pub fn is_done(&self) -> bool {
        self.pos == self.total()
    }
}

/// What a call to [`send`] ended with.
#[derive(Debug)]
pub enum Sent {
    /// Every byte of the reply is out.
    Done,
    /// The socket said WouldBlock: wait for it.
    Blocked,
    /// Out of budget for this turn; more to do at once.
    Yield,
    /// Stopped on purpose: the snapshot changed or shrank under the body.
    Cut(&'static str),
    /// The peer went away (reset, broken pipe).
    Closed,
    Failed(io::Error),
}

/// Sends as much of the reply as the socket and `budget` take. `head` renders the head
/// into the buffer it is given and returns its length, which must be `d.head_len` every
/// time; it is called only while part of the head is still to go.
pub fn send<C: Conn>(
    conn: &mut C,
    d: &mut Delivery,
    head: &dyn Fn(&mut [u8]) -> usize,
    snap: &Snapshot,
    budget: &mut usize,
    scratch: &mut Vec<u8>,
) -> Sent {
    let head_len = d.head_len as u64;
    let mut rendered = [0u8; HEAD_MAX];
    let mut have_head = false;
    loop {
        if d.is_done() {
            return Sent::Done;
        }
        if *budget == 0 {
            return Sent::Yield;
        }
        let has_body = d.body_end > d.body_start;
        if has_body && snap.is_stale() {
            return Sent::Cut("file changed");
        }
        if d.pos < head_len && !have_head {
            let n = head(&mut rendered);
            debug_assert_eq!(n as u64, head_len, "a head rendered to a different length");
            have_head = true;
        }
        let body_pos = d.body_start + d.pos.saturating_sub(head_len);
        let want = ((d.total() - d.pos) as usize).min(*budget);
        let res = if let Some(mem) = snap.memory() {
            let body = &mem[body_pos as usize..d.body_end as usize];
            if d.pos < head_len {
                let h = &rendered[d.pos as usize..head_len as usize];
                conn.write_vectored(&[IoSlice::new(h), IoSlice::new(&body[..body.len().min(want)])])
            } else {
                conn.write_vectored(&[IoSlice::new(&body[..want])])
            }
        } else if d.pos < head_len {
            let h = &rendered[d.pos as usize..head_len as usize];
            if has_body { conn.write_more(h) } else { conn.write_vectored(&[IoSlice::new(h)]) }
        } else {
            if body_pos == d.body_start && d.body_end - d.body_start >= LIMIT_UNSENT_FROM {
                // The body's first bytes: from here on the socket holds little unsent.
                conn.limit_unsent(UNSENT_MAX);
            }
            match conn.send_file(snap.file(), body_pos, want) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    copy_through(scratch, conn, snap.file(), body_pos, want)
                }
                r => r,
            }
        };
        match res {
            // Writing to a socket never takes 0 bytes of a non-empty buffer; a 0 here is the
            // file ending before our size (sendfile or its fallback): it was truncated under
            // us. Not "done", not "again".
            Ok(0) => {
                snap.mark_changed();
                return Sent::Cut("file shrank");
            }
            Ok(n) => {
                debug_assert!(d.pos + n as u64 <= d.total(), "wrote past the end of the reply");
                d.pos += n as u64;
                *budget = budget.saturating_sub(n);
            }
            Err(e) => match classify(e) {
                Io::Again => return Sent::Blocked,
                Io::Retry => {}
                Io::Closed => return Sent::Closed,
                Io::Failed(e) => return Sent::Failed(e),
            },
        }
    }
}

/// Fallback when sendfile cannot be used on this file: positional read into the shared
/// scratch buffer, then write. Bytes read but not written are simply read again next time.
fn copy_through<C: Conn>(scratch: &mut Vec<u8>, conn: &mut C, file: &File, off: u64, want: usize) -> io::Result<usize> {
    if scratch.is_empty() {
        scratch.resize(256 * 1024, 0);
    }
    let n = want.min(scratch.len());
    let got = file.read_at(&mut scratch[..n], off)?;
    if got == 0 {
        // Past the end: the file shrank. Report it as sendfile would.
        return Ok(0);
    }
    conn.write_vectored(&[IoSlice::new(&scratch[..got])])
}

/// What to do once the last byte of a connection's last reply is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLast {
    /// Safe to close now.
    Close,
    /// Our side is shut down; discard what the peer sends until it closes, acknowledges
    /// everything, or `until`.
    Linger { until: Instant, discarded: u32 },
}

/// The last byte is out. Closing now is right only when the peer has acknowledged
/// everything and sent nothing we have not read. Otherwise the socket must stay ours for
/// a while:
/// - Unread input makes close() answer with a reset, which can destroy the tail of what we
///   sent in the peer's buffers.
/// - A closed socket with unacknowledged data becomes an orphan. Under TCP memory pressure
///   the kernel resets orphans instead of delivering their data.
///
/// So shut down our side (the peer sees EOF after the last byte) and discard what it sends
/// until it closes. Wait up to the send timeout while data is unacknowledged (a slow
/// reader may need it), otherwise just long enough to drain its stray bytes.
pub fn after_last_byte<C: Conn>(conn: &mut C, send_timeout: Duration, now: Instant) -> AfterLast {
    let mut probe = [0u8; 1024];
    let extra = loop {
        match conn.read(&mut probe) {
            // The peer is done sending; it has read what it wanted.
            Ok(0) => return AfterLast::Close,
            Ok(n) => break n as u32,
            Err(e) => match classify(e) {
                Io::Again => break 0,
                Io::Retry => continue,
                Io::Closed | Io::Failed(_) => return AfterLast::Close,
            },
        }
    };
    let unacked = conn.unacked();
    if extra == 0 && unacked == 0 {
        return AfterLast::Close;
    }
    let _ = conn.shutdown_write();
    let wait = if unacked > 0 { send_timeout.max(LINGER) } else { LINGER };
    AfterLast::Linger { until: now + wait, discarded: extra }
}

/// Discards what a lingering peer sends, until WouldBlock (readiness is edge-triggered).
/// True when the connection can be closed: the peer closed, failed, or sent too much.
pub fn linger<C: Conn>(conn: &mut C, discarded: &mut u32) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match conn.read(&mut sink) {
            Ok(0) => return true,
            Ok(n) => {
                *discarded = discarded.saturating_add(n as u32);
                if *discarded > LINGER_MAX_BYTES {
                    return true;
                }
            }
            Err(e) => match classify(e) {
                Io::Again => return false,
                Io::Retry => {}
                Io::Closed | Io::Failed(_) => return true,
            },
        }
    }
}

/// What a failed read or write means.
pub enum Io {
    /// WouldBlock: wait for readiness.
    Again,
    /// Interrupted: try again now.
    Retry,
    /// The peer went away (reset, broken pipe): a quiet close, not an error.
    Closed,
    Failed(io::Error),
}

pub fn classify(e: io::Error) -> Io {
    use io::ErrorKind::*;
    match e.kind() {
        WouldBlock => Io::Again,
        Interrupted => Io::Retry,
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof => Io::Closed,
        _ => Io::Failed(e),
    }
}
