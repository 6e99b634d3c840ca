//! The crowd phase: ten thousand clients of a 1 MiB file all start at once, asking over
//! HTTP/1.0 (and xfer natively too), and each one's time from `connect()` to EOF is
//! recorded. The figures are how many got an exact copy and
//! how far the slowest percent trails the median (p99 / p50): a server that is fair to a
//! crowd keeps it small.
//!
//! It owns the percentiles and their judgement; the clients are load.rs's and the servers
//! compare.rs's.

use std::time::Duration;

use crate::compare::{Measured, Serve, measure, side_by_side};
use crate::config::MIB;
use crate::load::LoadOpts;
use crate::proto::Proto;
use crate::report::{Results, info_row, row};
use crate::setup::{Bench, CROWD_FILE};

/// One server's crowd: the load's measurement and its completion-time percentiles, in ms.
struct Crowd {
    m: Measured,
    p50: f64,
    p99: f64,
}

pub fn crowd(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    let n = cfg.crowd_clients;
    println!(
        "## crowd: {n} clients of a {} MiB file, all started at once; time from connect() to EOF",
        cfg.crowd_size / MIB
    );
    let opts = LoadOpts {
        conc: n,
        max_transfers: n as u64,
        window: Duration::from_secs(300),
        deadline: Duration::from_secs(180),
        rcvbuf: None,
        latency: true,
        per_conn: 1,
        copy_reads: cfg.copy_reads,
    };
    let serve = Serve { file: CROWD_FILE, size: cfg.crowd_size, threads: 1, proto: Proto::Http10, native: true };
    let pair = side_by_side(bench, res, &serve, |s, t| {
        let mut m = measure("crowd", s, t, &opts);
        m.out.latencies.sort();
        // Nearest rank: the smallest time that at least a share `p` of clients beat or met.
        let pct = |p: f64| {
            let l = &m.out.latencies;
            if l.is_empty() {
                return f64::NAN;
            }
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
            l[i].as_secs_f64() * 1e3
        };
        let (p50, p99) = (pct(0.50), pct(0.99));
        let max = m.out.latencies.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN);
        println!("  {}\n      completion: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms", m.describe(s));
        Crowd { m, p50, p99 }
    });
    let mib = cfg.crowd_size / MIB;
    let (x, p) = pair.cells(|c| format!("{} of {n} exact", c.m.out.ok));
    let x_all = pair.xfer.as_ref().map(|c| c.m.out.ok == n as u64 && c.m.exact());
    res.push(row(&format!("{n} HTTP clients × {mib} MiB: all exact"), x, p, None, "all", x_all));
    let spread = |c: &Crowd| format!("{:.0} / {:.0} ms (×{:.2})", c.p50, c.p99, c.p99 / c.p50);
    let (x, p) = pair.cells(spread);
    // Judged on xfer's own spread, not against the peer's.
    let x_ratio = pair.xfer.as_ref().map(|c| c.p99 / c.p50);
    let pass = x_ratio.map(|r| r <= 2.0);
    let metric = format!("{n} HTTP clients × {mib} MiB: p50 / p99 completion");
    res.push(row(&metric, x, p, x_ratio, "xfer p99/p50 ≤ 2", pass));
    if let Some((x, h, r)) = pair.native_vs_http(|c| c.p99 / c.p50, spread) {
        let exact = pair.native.as_ref().map_or(0, |c| c.m.out.ok);
        let metric = format!("{n} clients: p50 / p99, xfer native ({exact} of {n} exact) vs HTTP");
        res.push(info_row(&metric, x, h, r));
    }
    println!();
}
