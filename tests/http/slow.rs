//! Stalled and slow HTTP clients do not hurt the others: with one client that asked for a
//! large file and never reads, and one that reads very slowly, a curl fetch is exact, and
//! both of them are still being served when it ends. (How fast it is beside them is the
//! benchmark's question — benches/e2e, the stall phase — not a test's: this machine is
//! shared.)

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;

/// A client that asked for the file and never reads, and one that reads it slowly.
struct Hinderers {
    stalled: Conn,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    slow: JoinHandle<()>,
}

impl Hinderers {
    fn start(addr: SocketAddr, target: &str) -> Hinderers {
        // A 4 KiB window and no reading: the server's sends to it block at once.
        let mut stalled = Conn::over(raw::connect(addr, None, Some(4096)).expect("connect"));
        stalled.send(&request("GET", target, &[]));
        // 4 KiB every 20 ms (about 200 kB/s) through a 16 KiB window.
        let got = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let slow = std::thread::spawn({
            let (got, stop, target) = (got.clone(), stop.clone(), target.to_string());
            move || {
                let mut c = Conn::over(raw::connect(addr, None, Some(16 * 1024)).expect("connect"));
                c.send(&request("GET", &target, &[]));
                c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 4096];
                // At most 60 s; `stop` ends it sooner.
                for _ in 0..3000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match c.s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.fetch_add(n as u64, Ordering::SeqCst),
                    };
                    // The subject: a client that reads slowly.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let h = Hinderers { stalled, got, stop, slow };
        let going = wait_until(Duration::from_secs(10), || h.got() >= 64 * 1024 && raw::readable_now(&h.stalled.s));
        assert!(going, "the slow client got {} bytes in 10 s, or the stalled one nothing", h.got());
        h
    }

    fn got(&self) -> u64 {
        self.got.load(Ordering::SeqCst)
    }

    /// Ends both; returns what the slow one got meanwhile.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.slow.join().unwrap();
        drop(self.stalled);
        self.got.load(Ordering::SeqCst)
    }
}

#[test]
fn stalled_and_slow_http_clients_do_not_stop_a_curl_fetch() {
    let Some(curl_bin) = tool("curl beside stalled and slow HTTP clients", "curl") else { return };
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "big.bin", 64 * MIB, 961);
    let data = std::fs::read(&path).unwrap();
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    for round in 0..2 {
        let others = Hinderers::start(server.addr, "/big.bin");
        let before = others.got();
        let out = dir.path().join("copy.bin");
        let r = curl(dir.path(), &curl_bin, &["-f", "-o", out.to_str().unwrap(), &url]);
        assert_ok(&r, &format!("round {round}: curl beside a stalled and a slow client"));
        assert!(std::fs::read(&out).unwrap() == data, "round {round}: the copy differs");
        std::fs::remove_file(&out).unwrap();
        // Neither was dropped to make room: the stalled one is still connected, and the
        // slow one kept receiving while curl ran.
        let stalled_port = others.stalled.s.local_addr().unwrap().port();
        assert!(server.wait_log(stalled_port, 0).is_none(), "round {round}: the stalled client was closed");
        let after = others.stop();
        assert!(after > before, "round {round}: the slow client got nothing while the fetch ran");
    }
    server.assert_healthy();
}
