//! The stall phase: thousands of clients request a 64 MiB file over HTTP/1.0 (and from
//! xfer natively too) and never read, and the server's resident memory growth per stalled
//! client is the figure (with the kernel's TCP memory beside it, as information). It is
//! what a server pays for a client that does nothing.
//!
//! It owns when memory is read (after every client is mid-transfer and RSS has settled) and
//! how the figure is judged; the clients are load.rs's and the servers compare.rs's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::compare::{Serve, side_by_side};
use crate::config::MIB;
use crate::load::{Stalled, Target};
use crate::peers::{Server, probe};
use crate::proto::Proto;
use crate::readings::{rss_bytes, tcp_counters, tcp_delta, tcp_mem_pages, wait_quiet};
use crate::report::{Results, fmt_bytes, info_row, row};
use crate::setup::{Bench, STALL_FILE};

pub fn stall(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    let n = cfg.stall_clients;
    println!("## stall: {n} clients request a {} MiB file and never read (SO_RCVBUF 16 KiB)", cfg.stall_size / MIB);
    let serve = Serve { file: STALL_FILE, size: cfg.stall_size, threads: 1, proto: Proto::Http10, native: true };
    let pair = side_by_side(bench, res, &serve, |s, t| {
        let _ = probe(s, t);
        let k0 = tcp_counters();
        let r = stall_clients(s, t, n);
        let kernel = tcp_delta(&k0);
        println!(
            "  {}: {} of {} mid-transfer; RSS {} → {} ({} per client) after {:.1} s{}",
            s.name,
            r.mid_transfer,
            r.clients,
            fmt_bytes(r.rss_before as f64),
            fmt_bytes(r.rss_after as f64),
            fmt_bytes(r.per_client()),
            r.settle.as_secs_f64(),
            if r.errors.is_empty() { String::new() } else { format!("; errors: {:?}", r.errors) }
        );
        println!(
            "      kernel TCP socket memory +{} ({} per client, both ends); kernel TCP counters: {kernel}",
            fmt_bytes(r.kmem as f64),
            fmt_bytes(r.kmem as f64 / n as f64)
        );
        r
    });
    let cell = |r: &Stall| {
        format!("{}{}", fmt_bytes(r.per_client()), if r.ok() { "" } else { " (not all stalled mid-transfer!)" })
    };
    let (x, p) = pair.cells(cell);
    let x_ok = pair.xfer.as_ref().map(|x| x.ok() && x.per_client() <= 512.0);
    let ratio = pair.ratio(Stall::per_client);
    res.push(row(&format!("RSS growth per stalled HTTP client ({n} clients)"), x, p, ratio, "≤ 512 B", x_ok));
    if let Some((x, h, r)) = pair.native_vs_http(Stall::per_client, cell) {
        res.push(info_row("RSS growth per stalled client, xfer native vs HTTP", x, h, r));
    }
    let (x, p) = pair.cells(|r| fmt_bytes(r.kmem as f64 / r.clients.max(1) as f64));
    // A peer whose sockets held nothing would divide by zero; count it as one byte.
    let kratio = pair.both().map(|(x, p)| x.kmem as f64 / (p.kmem as f64).max(1.0));
    res.push(info_row("kernel TCP memory per stalled HTTP client (both ends)", x, p, kratio));
    println!();
}

struct Stall {
    clients: usize,
    mid_transfer: usize,
    rss_before: u64,
    rss_after: u64,
    /// Growth of the kernel's TCP socket memory (both ends: server send queues and the
    /// clients' 16 KiB receive buffers).
    kmem: u64,
    settle: Duration,
    errors: BTreeMap<String, u64>,
}

impl Stall {
    fn per_client(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.clients.max(1) as f64
    }
    fn ok(&self) -> bool {
        self.mid_transfer == self.clients
    }
}

/// Opens `n` clients that send the request and never read; measures server RSS growth.
fn stall_clients(s: &Server, t: &Target, n: usize) -> Stall {
    wait_quiet();
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_bytes(s.rss_pid).unwrap_or(0);
    let kmem_before = tcp_mem_pages() * 4096;
    let clients = Stalled::open(t, n);
    let mut mid = clients.mid_transfer();
    let t1 = Instant::now();
    while mid < n && t1.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        mid = clients.mid_transfer();
    }
    // Let the RSS settle: five samples 250 ms apart within 16 KiB of each other (≤ 15 s).
    let mut samples: Vec<u64> = Vec::new();
    let t2 = Instant::now();
    loop {
        samples.push(rss_bytes(s.rss_pid).unwrap_or(0));
        let last = &samples[samples.len().saturating_sub(5)..];
        if last.len() == 5 && last.iter().max().unwrap() - last.iter().min().unwrap() <= 16 * 1024 {
            break;
        }
        if t2.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rss_after = *samples.last().unwrap();
    let kmem_after = tcp_mem_pages() * 4096;
    let mid_end = clients.mid_transfer();
    let errors = clients.close();
    Stall {
        clients: n,
        mid_transfer: mid.min(mid_end),
        rss_before,
        rss_after,
        kmem: kmem_after.saturating_sub(kmem_before),
        settle: t1.elapsed(),
        errors,
    }
}
