//! The throughput phases: clients that each open a new connection as soon as their last
//! transfer ends, a fixed number at a time, for a fixed time, asking both servers over
//! HTTP/1.0 (and xfer over its native protocol too, for the "native vs HTTP" rows).
//! `small` (an 80-byte file) measures what a connection costs; `keepalive` the same file
//! asked for again and again on kept-alive HTTP/1.1 connections, what a request costs;
//! `fanout` and `fanout2` (a 10 MiB file) measure what bytes cost, with one event loop
//! against one nginx worker and then two against two.
//!
//! Each says what it loads and how it is judged; starting the servers, the order and the
//! readings are compare.rs's, and none of them is known here.

use std::time::Duration;

use crate::compare::{Measured, Pair, Serve, measure, side_by_side};
use crate::config::MIB;
use crate::load::{LoadOpts, run_load};
use crate::proto::Proto;
use crate::report::{Results, info_row, row};
use crate::setup::{Bench, FAN_FILE, SMALL_FILE, SMALL_SIZE};

pub fn small(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    println!(
        "## small: {SMALL_SIZE}-byte file, {} concurrent clients, new connection per transfer (HTTP/1.0), {:.1} s",
        cfg.small_conc, cfg.small_secs
    );
    let serve = Serve { file: SMALL_FILE, size: SMALL_SIZE, threads: 1, proto: Proto::Http10, native: true };
    let pair = repeated(bench, res, "small", &serve, cfg.small_conc, cfg.small_secs, 30.0, 1);
    per_request_rows(res, &pair, "small file (80 B), new connection each", "transfers");
    println!();
}

/// The small file again and again on kept-alive HTTP/1.1 connections, `keepalive_per_conn`
/// requests each; there is no native counterpart (the native protocol closes after one).
pub fn keepalive(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    let per = cfg.keepalive_per_conn;
    println!(
        "## keepalive: {SMALL_SIZE}-byte file, {} concurrent HTTP/1.1 connections, {per} requests each, {:.1} s",
        cfg.small_conc, cfg.small_secs
    );
    let serve = Serve { file: SMALL_FILE, size: SMALL_SIZE, threads: 1, proto: Proto::Http11, native: false };
    let pair = repeated(bench, res, "keepalive", &serve, cfg.small_conc, cfg.small_secs, 30.0, per);
    per_request_rows(res, &pair, "keep-alive small requests", "requests");
    println!();
}

/// Rate (≥ 1.0× the peer) and server CPU per request (≤ 1.0×) of a small-file phase, and
/// the native-vs-HTTP rows when native ran.
fn per_request_rows(res: &mut Results, pair: &Pair<Measured>, label: &str, unit: &str) {
    let x_exact = pair.xfer.as_ref().is_some_and(Measured::exact);
    let rate = |m: &Measured| format!("{:.0}/s{}", m.per_sec(), m.flags());
    let cpu = |m: &Measured| format!("{:.1} µs{}", m.cpu_per_transfer_us(), m.flags());
    let (x, n) = pair.cells(rate);
    let r = pair.ratio(Measured::per_sec);
    res.push(row(&format!("{label}: {unit}/s"), x, n, r, "≥ 1.0×", r.map(|r| r >= 1.0 && x_exact)));
    let (x, n) = pair.cells(cpu);
    let r = pair.ratio(Measured::cpu_per_transfer_us);
    let metric = format!("{label}: server CPU per {}", unit.trim_end_matches('s'));
    res.push(row(&metric, x, n, r, "≤ 1.0×", r.map(|r| r <= 1.0 && x_exact)));
    let rig = |m: &Measured| format!("{:.1} µs{}", m.rig_cpu_per_transfer_us(), m.flags());
    let (x, n) = pair.cells(rig);
    let metric = format!("{label}: CPU of server + load generator + softirq per {}", unit.trim_end_matches('s'));
    res.push(info_row(&metric, x, n, pair.ratio(Measured::rig_cpu_per_transfer_us)));
    if let Some((x, h, r)) = pair.native_vs_http(Measured::per_sec, rate) {
        res.push(info_row(&format!("{label}: {unit}/s, xfer native vs HTTP"), x, h, r));
    }
    if let Some((x, h, r)) = pair.native_vs_http(Measured::cpu_per_transfer_us, cpu) {
        res.push(info_row(&format!("{label}: server CPU, xfer native vs HTTP"), x, h, r));
    }
}

/// One xfer event loop against one nginx worker, both on core 0.
pub fn fanout(bench: &Bench, res: &mut Results) {
    fan(bench, res, "fanout", 1);
}

/// `--threads 2` against two nginx workers, servers and load spread over all cores.
pub fn fanout2(bench: &Bench, res: &mut Results) {
    fan(bench, res, "fanout2", 2);
}

fn fan(bench: &Bench, res: &mut Results, phase: &str, threads: usize) {
    let cfg = &bench.cfg;
    println!(
        "## {phase}: {} MiB file, {} concurrent clients, repeated for {:.1} s; xfer {} vs nginx {} worker(s){}",
        cfg.fan_size / MIB,
        cfg.fan_conc,
        cfg.fan_secs,
        if threads > 1 { format!("--threads {threads}") } else { "1 reactor".into() },
        threads,
        if threads > 1 { "; servers and load unpinned over all cores" } else { "" }
    );
    let serve = Serve { file: FAN_FILE, size: cfg.fan_size, threads, proto: Proto::Http10, native: true };
    let pair = repeated(bench, res, phase, &serve, cfg.fan_conc, cfg.fan_secs, 60.0, 1);
    let label = if threads > 1 { "fan-out (2 threads vs 2 workers)" } else { "fan-out (1 reactor vs 1 worker)" };
    let x_exact = pair.xfer.as_ref().is_some_and(Measured::exact);
    let rate = |m: &Measured| format!("{:.2} GB/s{}", m.gb_per_sec(), m.flags());
    let cpu = |m: &Measured| format!("{:.0} µs{}", m.cpu_per_transfer_us(), m.flags());
    let (x, n) = pair.cells(rate);
    let r = pair.ratio(Measured::gb_per_sec);
    res.push(row(&format!("{label}: aggregate"), x, n, r, "≥ 1.5×", r.map(|r| r >= 1.5 && x_exact)));
    let (x, n) = pair.cells(cpu);
    let r = pair.ratio(Measured::cpu_per_transfer_us);
    res.push(row(&format!("{label}: server CPU per transfer"), x, n, r, "≤ 1.0×", r.map(|r| r <= 1.0 && x_exact)));
    let (x, n) = pair.cells(|m| format!("{:.0} µs{}", m.rig_cpu_per_transfer_us(), m.flags()));
    let metric = format!("{label}: CPU of server + load generator + softirq per transfer");
    res.push(info_row(&metric, x, n, pair.ratio(Measured::rig_cpu_per_transfer_us)));
    if let Some((x, h, r)) = pair.native_vs_http(Measured::gb_per_sec, rate) {
        res.push(info_row(&format!("{label}: aggregate, xfer native vs HTTP"), x, h, r));
    }
    if let Some((x, h, r)) = pair.native_vs_http(Measured::cpu_per_transfer_us, cpu) {
        res.push(info_row(&format!("{label}: server CPU, xfer native vs HTTP"), x, h, r));
    }
    println!();
}

/// `conc` clients, each starting a new connection when its last one ends (after
/// `per_conn` requests on a keep-alive protocol, else one), for `secs` (those still open
/// then get `grace` seconds more), against xfer and then nginx. A 0.3 s warm-up first, so
/// that the measurement does not include the first connections' set-up.
#[allow(clippy::too_many_arguments)]
fn repeated(
    bench: &Bench,
    res: &mut Results,
    phase: &str,
    serve: &Serve,
    conc: usize,
    secs: f64,
    grace: f64,
    per_conn: u32,
) -> Pair<Measured> {
    let opts = |secs: f64| LoadOpts {
        conc,
        max_transfers: u64::MAX,
        window: Duration::from_secs_f64(secs),
        deadline: Duration::from_secs_f64(secs + grace),
        rcvbuf: None,
        latency: false,
        per_conn,
        copy_reads: bench.cfg.copy_reads,
    };
    side_by_side(bench, res, serve, |s, t| {
        let _ = run_load(t, &opts(0.3)); // warm-up
        std::thread::sleep(Duration::from_millis(200));
        let m = measure(phase, s, t, &opts(secs));
        println!("  {}", m.describe(s));
        m
    })
}
