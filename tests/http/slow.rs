//! Stalled and slow HTTP clients do not hurt the others: with one client that asked for a
//! large file and never reads, and one that reads very slowly, a curl fetch is exact and
//! about as fast as without them.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
fn stalled_and_slow_http_clients_do_not_slow_a_curl_fetch() {
    let Some(curl_bin) = tool("curl beside stalled and slow HTTP clients", "curl") else { return };
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "big.bin", 64 * MIB, 961);
    let data = std::fs::read(&path).unwrap();
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    let timed_fetch = |what: &str| -> Duration {
        let out = dir.path().join("copy.bin");
        let start = Instant::now();
        let r = curl(dir.path(), &curl_bin, &["-f", "-o", out.to_str().unwrap(), &url]);
        let took = start.elapsed();
        assert_ok(&r, &format!("curl fetch {what}"));
        assert!(std::fs::read(&out).unwrap() == data, "curl fetch {what}: the copy differs");
        std::fs::remove_file(&out).unwrap();
        took
    };
    // Alone and beside the others in turn, three times: the best of each is the least noisy
    // comparison on a shared machine, and turns spread any burst of load over both.
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for round in 0..3 {
        alone.push(timed_fetch(&format!("{round} alone")));
        let others = Hinderers::start(server.addr, "/big.bin");
        let before = others.got();
        beside.push(timed_fetch(&format!("{round} beside a stalled and a slow client")));
        let after = others.stop();
        assert!(after > before, "round {round}: the slow client got nothing while the fetch ran");
    }
    let (alone, beside) = (alone.iter().min().unwrap(), beside.iter().min().unwrap());
    eprintln!("64 MiB by curl: {alone:?} alone, {beside:?} beside a stalled and a slow client (best of three)");
    assert!(
        *beside <= *alone * 3,
        "a fetch beside a stalled and a slow client took {beside:?}, alone {alone:?} (best of three each)"
    );
    server.assert_healthy();
}
