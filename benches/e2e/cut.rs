//! A TCP proxy for one connection that cuts it short: it passes the client's bytes to the
//! server, and the server's native response head and then the first `body` bytes of the
//! body back, and then ends the connection in both directions (a FIN to the client, after
//! every byte passed on). It is how the resume phase leaves the state a fetch that lost its
//! connection leaves: a real `xfer fetch`, a real partial and its record.
//!
//! It knows the native response head only to find where the body starts, and must never
//! time or judge anything, nor know what runs on either side.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xfer::encoding::Decoded;
use xfer::encoding::xfer::{Response, decode_response};

/// The proxy's listening address, and the thread that serves its one connection.
pub struct CutProxy {
    pub addr: SocketAddr,
    worker: JoinHandle<Result<u64, String>>,
}

/// How long the proxy waits for its client, and for any read.
const PATIENCE: Duration = Duration::from_secs(60);

impl CutProxy {
    /// Listens on 127.0.0.1 (a free port) for one client, whose connection goes on to
    /// `upstream` and is cut after `body` bytes of the response's body.
    pub fn start(upstream: SocketAddr, body: u64) -> io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let worker = std::thread::spawn(move || serve_one(listener, upstream, body));
        Ok(CutProxy { addr, worker })
    }

    /// Waits until the connection is over; the body bytes passed on.
    pub fn finish(self) -> Result<u64, String> {
        self.worker.join().unwrap_or_else(|_| Err("the proxy thread panicked".into()))
    }
}

fn serve_one(listener: TcpListener, upstream: SocketAddr, body: u64) -> Result<u64, String> {
    let e = |what: &'static str| move |err: io::Error| format!("proxy: {what}: {err}");
    listener.set_nonblocking(true).map_err(e("listener"))?;
    let t0 = Instant::now();
    let client = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock && t0.elapsed() < PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(format!("proxy: accept: {err}")),
        }
    };
    // The port is free again once the client is in: the next server may take it.
    drop(listener);
    client.set_nonblocking(false).map_err(e("client"))?;
    let server = TcpStream::connect_timeout(&upstream, PATIENCE).map_err(e("connect upstream"))?;
    server.set_read_timeout(Some(PATIENCE)).map_err(e("upstream"))?;
    client.set_read_timeout(Some(PATIENCE)).map_err(e("client"))?;
    // Client to server: the request (and a proof, were there one), until the client closes.
    let (mut c_in, mut s_out) = (client.try_clone().map_err(e("clone"))?, server.try_clone().map_err(e("clone"))?);
    let requests = std::thread::spawn(move || {
        let _ = io::copy(&mut c_in, &mut s_out);
    });
    let passed = pass_back(&server, &client, body);
    // Everything passed on is queued ahead of this FIN; nothing unread is left on the
    // client's socket, so the close sends no reset that could drop it.
    let _ = client.shutdown(Shutdown::Write);
    let _ = server.shutdown(Shutdown::Both);
    let _ = requests.join();
    passed
}

/// Server to client: the head, then `body` bytes of the body; the body bytes passed on.
fn pass_back(mut server: &TcpStream, mut client: &TcpStream, body: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut head: Vec<u8> = Vec::new();
    // Bytes to pass on in all, once the head's length is known.
    let mut limit: Option<u64> = None;
    let mut passed = 0u64;
    loop {
        let want = match limit {
            Some(l) if passed >= l => break,
            Some(l) => ((l - passed) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = server.read(&mut buf[..want]).map_err(|e| format!("proxy: read upstream: {e}"))?;
        if n == 0 {
            return Err(format!("proxy: upstream closed after {passed} bytes"));
        }
        let mut take = n;
        if limit.is_none() {
            head.extend_from_slice(&buf[..n]);
            match decode_response(&head) {
                Ok(Decoded::NeedMore(_)) => {}
                Ok(Decoded::Done(Response::Ok { .. }, used)) => {
                    let l = used as u64 + body;
                    take = take.min((l - passed) as usize);
                    limit = Some(l);
                }
                Ok(Decoded::Done(r, _)) => return Err(format!("proxy: upstream answered {r:?}")),
                Err(err) => return Err(format!("proxy: upstream head: {err}")),
            }
        }
        client.write_all(&buf[..take]).map_err(|e| format!("proxy: write to client: {e}"))?;
        passed += take as u64;
    }
    // The loop ends only once the limit, head and `body` bytes, is reached.
    Ok(body)
}
