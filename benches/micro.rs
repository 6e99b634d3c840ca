//! Micro benchmarks (`cargo bench --bench micro`): wire encoding, BLAKE3 hashing, and the
//! per-client state machine against a peer that takes k bytes per write and then says
//! WouldBlock. Timed with `Instant`; each figure is the best of several runs.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xfer::encoding;
use xfer::encoding::xfer::Request;
use xfer::reactor::{Service, Step};
use xfer::serve::{Conn, Policy, Server, Snapshot};

/// Runs `f` (which does `units` of work) repeatedly for about `secs`, returns the best
/// units per second.
fn best_rate(secs: f64, units: f64, mut f: impl FnMut()) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut best = 0f64;
    let mut runs = 0;
    while runs < 3 || (Instant::now() < end && runs < 10_000) {
        let t = Instant::now();
        f();
        best = best.max(units / t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// A peer that accepts `k` bytes per write, then says WouldBlock on the next call, and
/// discards what it takes (so the bench measures the server side only).
struct KThenBlock {
    k: usize,
    blocked: bool,
    request: [u8; encoding::xfer::REQUEST_LEN],
    read: bool,
    scratch: Vec<u8>,
    taken: u64,
}

impl KThenBlock {
    fn take(&mut self, n: usize) -> io::Result<usize> {
        if self.blocked {
            self.blocked = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.blocked = true;
        self.taken += n.min(self.k) as u64;
        Ok(n.min(self.k))
    }
}

impl Conn for KThenBlock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.read = true;
        buf[..self.request.len()].copy_from_slice(&self.request);
        Ok(self.request.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum();
        self.take(n)
    }
    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf.len())
    }
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        // A real sendfile touches the page cache; reading the bytes is the closest stand-in.
        let n = len.min(self.k).min(self.scratch.len());
        let got = file.read_at(&mut self.scratch[..n], offset)?;
        if got == 0 {
            return Ok(0);
        }
        self.take(got)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn unacked(&self) -> usize {
        0
    }
}

fn main() {
    let quick = std::env::var("XFER_BENCH_SCALE").map(|v| v == "quick").unwrap_or(false);
    let secs = if quick { 0.3 } else { 1.5 };
    println!("xfer micro benchmarks (best of repeated runs, {secs} s each)");

    // Encoding: requests and headers per second, encode + decode.
    let n = 1_000_000;
    let req = Request::v1(12345, Some([7; 32]));
    let r = best_rate(secs, n as f64, || {
        for i in 0..n {
            let w = encoding::xfer::encode_request(&Request { offset: i, ..req });
            black_box(encoding::xfer::decode_request(black_box(&w)).ok());
        }
    });
    println!("  request encode+decode   {:>10.1} M/s", r / 1e6);
    let r = best_rate(secs, n as f64, || {
        for i in 0..n {
            let w = encoding::xfer::encode_ok(i, &[3; 32]);
            black_box(encoding::xfer::decode_response(black_box(&w)).ok());
        }
    });
    println!("  header encode+decode    {:>10.1} M/s", r / 1e6);

    // Hashing: BLAKE3 over a 64 MiB buffer, the way fetch feeds it (1 MiB updates).
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let r = best_rate(secs, data.len() as f64, || {
        let mut h = blake3::Hasher::new();
        for c in data.chunks(1 << 20) {
            h.update(c);
        }
        black_box(h.finalize());
    });
    println!("  blake3 (1 MiB updates)  {:>10.2} GB/s", r / 1e9);

    // The state machine: one client of a file, the peer taking k bytes per write.
    let dir = std::env::temp_dir().join(format!("xfer-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (label, size) in [("80 B file (memory)", 80usize), ("8 MiB file (descriptor)", 8 << 20)] {
        let path = dir.join(format!("f{size}"));
        std::fs::write(&path, &data[..size]).expect("write bench file");
        let snap = Arc::new(Snapshot::open(&path).expect("snapshot"));
        let policy = Policy {
            max_clients: 1 << 20,
            max_per_ip: 1 << 20,
            allow: vec![],
            token: None,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            quiet: true,
        };
        let mut server = Server::new(snap, policy);
        for k in [4096usize, 65536, 1 << 20] {
            let transfers = if size < 1000 { 200_000 } else { 20 };
            let mut steps = 0u64;
            let r = best_rate(secs, (transfers * size) as f64, || {
                for _ in 0..transfers {
                    let now = Instant::now();
                    let mut s = server.open("127.0.0.1:9".parse().unwrap(), now).expect("admitted");
                    let mut peer = KThenBlock {
                        k,
                        blocked: false,
                        request: encoding::xfer::encode_request(&Request::v1(0, None)),
                        read: false,
                        scratch: vec![0; k.min(size)],
                        taken: 0,
                    };
                    while server.step(&mut s, &mut peer, xfer::serve::BUDGET, now) != Step::Done {
                        steps += 1;
                    }
                    server.close(s, now);
                    black_box(peer.taken);
                }
            });
            if size < 1000 {
                println!("  session {label}, k={k:>7}: {:>8.2} M transfers/s", r / size as f64 / 1e6);
            } else {
                println!("  session {label}, k={k:>7}: {:>8.2} GB/s through the state machine", r / 1e9);
            }
            black_box(steps);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
