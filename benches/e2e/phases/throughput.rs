//! The throughput phases: clients that each open a new connection as soon as their last
//! transfer ends, a fixed number at a time, for a fixed time, asking both servers over
//! HTTP/1.0 (and xfer over its native protocol too, for the "native vs HTTP" rows).
//! `small` (an 80-byte file) measures what a connection costs; `keepalive` the same file
//! asked for again and again on kept-alive HTTP/1.1 connections, what a request costs;
//! `fanout` and `fanout2` (a 10 MiB file) measure what bytes cost, with one event loop
//! against one nginx worker and then two against two.
//!
//! `auth` is small's sibling: the same file and load against xfer with a token and without,
//! natively and over HTTP, for what proving a token costs a transfer.
//!
//! Each says what it loads and how it is judged; starting the servers, the order and the
//! readings are compare.rs's, and none of them is known here.

use std::time::Duration;

use crate::compare::{Arm, Measured, Pair, Serve, arms, measure, side_by_side};
use crate::config::MIB;
use crate::load::{LoadOpts, Target, run_load};
use crate::peers::Server;
use crate::proto::Proto;
use crate::report::{Results, info_row, median, na, row, spread};
use crate::setup::{Bench, FAN_FILE, SMALL_FILE, SMALL_SIZE};

pub fn small(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    println!(
        "## small: {SMALL_SIZE}-byte file, {} concurrent clients, new connection per transfer (HTTP/1.0), {:.1} s",
        cfg.small_conc, cfg.small_secs
    );
    let serve = Serve { file: SMALL_FILE, size: SMALL_SIZE, threads: 1, proto: Proto::Http10, native: true };
    let pair = repeated(bench, res, "small", &serve, &Load::small(bench));
    per_request_rows(res, &pair, "small file (80 B), new connection each", "transfers");
    println!();
}

/// The small phase's file and load against xfer started with `--token-file` and without:
/// natively in version 2 (what `xfer fetch` sends: with a token, a fresh nonce, the
/// server's challenge, the proof, the success head with the server's MAC, checked; without,
/// one request and the head), and over HTTP/1.0 (with `Authorization: Bearer`, and
/// without). `auth_rounds` rounds of the four arms, each protocol's two side by side, the
/// one with the token first in every other round.
pub fn auth(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    println!(
        "## auth: {SMALL_SIZE}-byte file, {} concurrent clients, new connection per transfer, {:.1} s per arm, \
         {} round(s); xfer with a token vs without, native v2 and HTTP/1.0",
        cfg.small_conc, cfg.small_secs, cfg.auth_rounds
    );
    // `proto` and `native` are not read by `arms`: each arm says how it is asked.
    let serve = Serve { file: SMALL_FILE, size: SMALL_SIZE, threads: 1, proto: Proto::Http10, native: false };
    let protos = [(Proto::XferV2, "native v2"), (Proto::Http10, "HTTP/1.0")];
    let load = Load::small(bench);
    // by[protocol][0 = open, 1 = token]: one measurement per round.
    let mut by: Vec<[Vec<Measured>; 2]> = protos.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..cfg.auth_rounds {
        let token_first = round % 2 == 1;
        let list: Vec<Arm> = protos
            .iter()
            .flat_map(|&(proto, _)| {
                let pair = [Arm::Xfer { proto, token: token_first }, Arm::Xfer { proto, token: !token_first }];
                pair.into_iter()
            })
            .collect();
        let got = arms(bench, res, &serve, &list, |s, t| load.run(bench, "auth", s, t));
        for (arm, m) in list.iter().zip(got) {
            let (Arm::Xfer { proto, token }, Some(m)) = (arm, m) else { continue };
            let i = protos.iter().position(|(p, _)| p == proto).unwrap();
            by[i][usize::from(*token)].push(m);
        }
    }
    for ((_, label), [open, with]) in protos.iter().zip(&by) {
        auth_rows(res, &format!("small file (80 B), {label}"), open, with);
    }
    println!();
}

/// The rows of one protocol in the auth phase: transfers/s and CPU per transfer, with the
/// token against without (ratio with ÷ without, of the medians over the rounds), and the
/// server CPU the token adds per transfer (the median of each round's difference).
fn auth_rows(res: &mut Results, label: &str, open: &[Measured], with: &[Measured]) {
    // A cell is flagged as its worst measurement is.
    let flags_of = |v: &[&[Measured]]| {
        let all = || v.iter().flat_map(|s| s.iter());
        if all().any(|m| !m.exact()) {
            " (errors!)"
        } else if all().any(|m| !m.flags().is_empty()) {
            " (noisy)"
        } else {
            ""
        }
    };
    let flags = |v: &[Measured]| flags_of(&[v]);
    let figure = |v: &[Measured], f: fn(&Measured) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let cells = |f: fn(&Measured) -> f64, fmt: fn(f64) -> String, unit: &str| {
        let cell = |v: &[Measured]| {
            if v.is_empty() { na("failed") } else { format!("{}{}", spread(&figure(v, f), fmt, unit), flags(v)) }
        };
        let ratio = median(&mut figure(with, f)) / median(&mut figure(open, f));
        (cell(with), cell(open), Some(ratio))
    };
    let (w, o, r) = cells(Measured::per_sec, |x| format!("{x:.0}"), "/s");
    res.push(info_row(&format!("{label}: transfers/s, with token vs open"), w, o, r));
    let (w, o, r) = cells(Measured::cpu_per_transfer_us, |x| format!("{x:.1}"), " µs");
    res.push(info_row(&format!("{label}: server CPU per transfer, with token vs open"), w, o, r));
    // Rounds pair up: the two arms of a round ran back to back.
    let diffs: Vec<f64> =
        with.iter().zip(open).map(|(w, o)| w.cpu_per_transfer_us() - o.cpu_per_transfer_us()).collect();
    let diff = if diffs.is_empty() {
        na("failed")
    } else {
        // "+19.8 µs (17.8–24.4)": the sign on the median only, so that the range reads.
        let sign = if median(&mut diffs.clone()) > 0.0 { "+" } else { "" };
        format!("{sign}{}{}", spread(&diffs, |x| format!("{x:.1}"), " µs"), flags_of(&[with, open]))
    };
    res.push(info_row(&format!("{label}: server CPU a token adds per transfer"), diff, "–".into(), None));
    let (w, o, r) = cells(Measured::rig_cpu_per_transfer_us, |x| format!("{x:.1}"), " µs");
    let metric = format!("{label}: CPU of server + load generator + softirq per transfer, with token vs open");
    res.push(info_row(&metric, w, o, r));
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
    let load = Load { conc: cfg.small_conc, secs: cfg.small_secs, grace: 30.0, per_conn: per };
    let pair = repeated(bench, res, "keepalive", &serve, &load);
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
    let load = Load { conc: cfg.fan_conc, secs: cfg.fan_secs, grace: 60.0, per_conn: 1 };
    let pair = repeated(bench, res, phase, &serve, &load);
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

/// How a throughput phase loads a server: `conc` clients, each starting a new connection
/// when its last one ends (after `per_conn` requests on a keep-alive protocol, else one),
/// for `secs` (those still open then get `grace` seconds more).
struct Load {
    conc: usize,
    secs: f64,
    grace: f64,
    per_conn: u32,
}

impl Load {
    /// The small and auth phases' load.
    fn small(bench: &Bench) -> Load {
        Load { conc: bench.cfg.small_conc, secs: bench.cfg.small_secs, grace: 30.0, per_conn: 1 }
    }

    fn opts(&self, bench: &Bench, secs: f64) -> LoadOpts {
        LoadOpts {
            conc: self.conc,
            max_transfers: u64::MAX,
            window: Duration::from_secs_f64(secs),
            deadline: Duration::from_secs_f64(secs + self.grace),
            rcvbuf: None,
            latency: false,
            per_conn: self.per_conn,
            copy_reads: bench.cfg.copy_reads,
        }
    }

    /// A 0.3 s warm-up first, so that the measurement does not include the first
    /// connections' set-up; then the load, measured; prints the server's line.
    fn run(&self, bench: &Bench, phase: &str, s: &Server, t: &Target) -> Measured {
        let _ = run_load(t, &self.opts(bench, 0.3)); // warm-up
        std::thread::sleep(Duration::from_millis(200));
        let m = measure(phase, s, t, &self.opts(bench, self.secs));
        println!("  {}", m.describe(s));
        m
    }
}

/// `load` against xfer and then nginx (and xfer native, when `serve` says so).
fn repeated(bench: &Bench, res: &mut Results, phase: &str, serve: &Serve, load: &Load) -> Pair<Measured> {
    side_by_side(bench, res, serve, |s, t| load.run(bench, phase, s, t))
}
