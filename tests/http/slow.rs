//! Stalled and slow HTTP clients do not hurt the others: with one client that asked for a
//! large file and never reads, and one that reads very slowly, a curl fetch is exact and
//! about as fast as without them.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

#[test]
fn stalled_and_slow_http_clients_do_not_slow_a_curl_fetch() {
    let Some(curl_bin) = tool("curl beside stalled and slow HTTP clients", "curl") else { return };
    let dir = tempdir();
    let (path, _) = big_file(dir.path(), "big.bin", 64 * MIB, 961);
    let data = std::fs::read(&path).unwrap();
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    let timed_fetch = |i: usize| -> Duration {
        let out = dir.path().join(format!("copy{i}.bin"));
        let start = Instant::now();
        let r = curl(dir.path(), &curl_bin, &["-f", "-o", out.to_str().unwrap(), &url]);
        let took = start.elapsed();
        assert_ok(&r, &format!("curl fetch {i}"));
        assert!(std::fs::read(&out).unwrap() == data, "curl fetch {i}: the copy differs");
        std::fs::remove_file(&out).unwrap();
        took
    };
    // The best of three, alone and then beside the others: the least noisy comparison on a
    // shared machine.
    let alone = (0..3).map(timed_fetch).min().unwrap();

    // Asked for 64 MiB with a 4 KiB window, and never reads: the server's sends to it block.
    let mut stalled = Conn::over(raw::connect(server.addr, None, Some(4096)).expect("connect"));
    stalled.send(&request("GET", "/big.bin", &[]));
    // Reads 4 KiB every 20 ms (about 200 kB/s) through a 16 KiB window.
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let slow = std::thread::spawn({
        let (got, stop, addr) = (got.clone(), stop.clone(), server.addr);
        move || {
            let mut c = Conn::over(raw::connect(addr, None, Some(16 * 1024)).expect("connect"));
            c.send(&request("GET", "/big.bin", &[]));
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
    assert!(
        wait_until(Duration::from_secs(10), || got.load(Ordering::SeqCst) >= 64 * 1024),
        "the slow client got only {} bytes in 10 s",
        got.load(Ordering::SeqCst)
    );
    let slow_before = got.load(Ordering::SeqCst);
    let beside = (3..6).map(timed_fetch).min().unwrap();
    let slow_during = got.load(Ordering::SeqCst) - slow_before;
    stop.store(true, Ordering::SeqCst);
    slow.join().unwrap();
    eprintln!("64 MiB by curl: {alone:?} alone, {beside:?} beside a stalled and a slow client (best of three)");
    assert!(
        beside <= alone * 3,
        "a fetch beside a stalled and a slow client took {beside:?}, alone {alone:?} (best of three each)"
    );
    assert!(slow_during > 0, "the slow client got nothing while the fetches ran");
    assert!(raw::readable_now(&stalled.s), "test design: the stalled client was sent nothing");
    drop(stalled);
    server.assert_healthy();
}
