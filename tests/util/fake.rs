//! Fake servers for the client tests: [`Fake`] takes one connection, reads the 48-byte
//! request, then acts as scripted (lie about the digest, stop short, answer HTTP, refuse,
//! say nothing); [`Scripted`] hands each of several connections to a script, in any
//! protocol; [`send_slowly`] is a slow link's answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::encoding;

pub struct Fake {
    pub addr: SocketAddr,
    /// What the fake saw: `Ok(())` when a valid request arrived, else a description.
    seen: mpsc::Receiver<Result<(), String>>,
    /// Dropping this releases a fake that holds its connection open.
    release: Option<mpsc::Sender<()>>,
}

impl Fake {
    /// Accepts one connection, reads the request, and hands the stream to `act`, with a
    /// receiver that disconnects when the fake is dropped (to hold a connection open until
    /// the test is done).
    pub fn start(act: impl FnOnce(TcpStream, mpsc::Receiver<()>) + Send + 'static) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind fake");
        let addr = l.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
            let mut req = [0u8; encoding::xfer::REQUEST_LEN];
            let verdict = match s.read_exact(&mut req) {
                Err(e) => Err(format!("reading request: {e}")),
                Ok(()) => match encoding::xfer::decode_request(&req) {
                    Ok(encoding::Decoded::Done(r, _)) if r.offset == 0 => Ok(()),
                    other => Err(format!("bad request {other:?}: {req:02x?}")),
                },
            };
            let _ = seen_tx.send(verdict);
            act(s, release_rx);
        });
        Fake { addr, seen, release: Some(release) }
    }

    /// Answers `reply`, then closes (FIN), or with `hold`, keeps the connection open (20 s at
    /// most) until the fake is dropped.
    pub fn reply(reply: Vec<u8>, hold: bool) -> Fake {
        Fake::start(move |mut s, release| {
            let _ = s.write_all(&reply);
            if hold {
                let _ = release.recv_timeout(Duration::from_secs(20));
            }
        })
    }

    /// Answers `reply` and half-closes, then reads until the client closes, so the client
    /// never sees a reset.
    pub fn reply_then_drain(reply: Vec<u8>) -> Fake {
        Fake::start(move |mut s, _| {
            let _ = s.write_all(&reply);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        })
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Asserts the request the fake received was a valid protocol request.
    pub fn assert_request_ok(&self) {
        match self.seen.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake server: {e}"),
            Err(_) => panic!("fake server: never got a connection/request"),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.release.take();
    }
}

/// A loopback server that hands each of its first `max` connections, one at a time, to a
/// script. It stops accepting after `max` connections, after 60 s, or when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    /// `act(index, stream)` runs for each connection (read and write timeouts of 10 s).
    pub fn start(max: usize, mut act: impl FnMut(usize, TcpStream) + Send + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind scripted server");
        l.set_nonblocking(true).expect("nonblocking listener");
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let born = Instant::now();
            let mut n = 0;
            while n < max && !halt.load(Ordering::SeqCst) && born.elapsed() < Duration::from_secs(60) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                        act(n, s);
                        n += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Scripted { addr, stop, thread: Some(thread) }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a version 1 header for `body`, then the body at about 1 kB per 20 ms (a slow
/// link: a progress bar has time to be drawn), until done or the client goes away.
pub fn send_slowly(s: &mut TcpStream, body: &[u8]) {
    if s.write_all(&encoding::xfer::encode_ok(body.len() as u64, &super::digest(body))).is_err() {
        return;
    }
    for chunk in body.chunks(1000) {
        if s.write_all(chunk).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
