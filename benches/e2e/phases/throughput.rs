//! The throughput phases: clients that each open a new connection as soon as their last
//! transfer ends, a fixed number at a time, for a fixed time. `small` (an 80-byte file)
//! measures what a connection costs; `fanout` and `fanout2` (a 10 MiB file) measure what
//! bytes cost, with one event loop against one nginx worker and then two against two.
//!
//! Each says what it loads and how it is judged; starting the servers, the order and the
//! readings are compare.rs's, and none of them is known here.

use std::time::Duration;

use crate::compare::{Measured, Pair, Serve, measure, side_by_side};
use crate::config::MIB;
use crate::load::{LoadOpts, run_load};
use crate::report::{Results, row};
use crate::setup::{Bench, FAN_FILE, SMALL_FILE, SMALL_SIZE};

pub fn small(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    println!(
        "## small: {SMALL_SIZE}-byte file, {} concurrent clients, new connection per transfer, {:.1} s",
        cfg.small_conc, cfg.small_secs
    );
    let serve = Serve { file: SMALL_FILE, size: SMALL_SIZE, threads: 1 };
    let pair = repeated(bench, res, "small", &serve, cfg.small_conc, cfg.small_secs, 30.0);
    let x_exact = pair.xfer.as_ref().is_some_and(Measured::exact);
    let (x, n) = pair.cells(|m| format!("{:.0}/s{}", m.per_sec(), m.flags()));
    let r = pair.ratio(Measured::per_sec);
    res.push(row("small file: transfers/s", x, n, r, "≥ 1.0×", r.map(|r| r >= 1.0 && x_exact)));
    let (x, n) = pair.cells(|m| format!("{:.1} µs{}", m.cpu_per_transfer_us(), m.flags()));
    let r = pair.ratio(Measured::cpu_per_transfer_us);
    res.push(row("small file: server CPU per transfer", x, n, r, "≤ 0.9×", r.map(|r| r <= 0.9 && x_exact)));
    println!();
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
    let serve = Serve { file: FAN_FILE, size: cfg.fan_size, threads };
    let pair = repeated(bench, res, phase, &serve, cfg.fan_conc, cfg.fan_secs, 60.0);
    let label = if threads > 1 { "fan-out (2 threads vs 2 workers)" } else { "fan-out (1 reactor vs 1 worker)" };
    let x_exact = pair.xfer.as_ref().is_some_and(Measured::exact);
    let (x, n) = pair.cells(|m| format!("{:.2} GB/s{}", m.gb_per_sec(), m.flags()));
    let r = pair.ratio(Measured::gb_per_sec);
    res.push(row(&format!("{label}: aggregate"), x, n, r, "≥ 1.5×", r.map(|r| r >= 1.5 && x_exact)));
    let (x, n) = pair.cells(|m| format!("{:.0} µs{}", m.cpu_per_transfer_us(), m.flags()));
    let r = pair.ratio(Measured::cpu_per_transfer_us);
    res.push(row(&format!("{label}: server CPU per transfer"), x, n, r, "≤ 1.0×", r.map(|r| r <= 1.0 && x_exact)));
    println!();
}

/// `conc` clients, each starting a new transfer when its last one ends, for `secs` (those
/// still open then get `grace` seconds more), against xfer and then nginx. A 0.3 s warm-up
/// first, so that the measurement does not include the first connections' set-up.
fn repeated(
    bench: &Bench,
    res: &mut Results,
    phase: &str,
    serve: &Serve,
    conc: usize,
    secs: f64,
    grace: f64,
) -> Pair<Measured> {
    let opts = |secs: f64| LoadOpts {
        conc,
        max_transfers: u64::MAX,
        window: Duration::from_secs_f64(secs),
        deadline: Duration::from_secs_f64(secs + grace),
        rcvbuf: None,
        latency: false,
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
