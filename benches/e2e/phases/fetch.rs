//! The fetch phase: `xfer fetch` of a 1 GiB file (received, verified, written, renamed)
//! against `curl -o` followed by `b3sum`, and against `curl -o /dev/null` from nginx, when
//! those are installed. Outputs go to tmpfs, so the VM's disk is not what is measured; the
//! same on disk, with fsync on both sides, is reported as information.
//!
//! Unlike the load phases this is not a `side_by_side` run: xfer and nginx serve at once,
//! and each round times every command in turn, so that a round's noise lands on both sides.
//! It owns the rounds, the medians and the rows; the commands are peers.rs's.

use std::time::{Duration, Instant};

use crate::config::MIB;
use crate::peers::{curl_b3sum, curl_null, xfer_fetch};
use crate::readings::{NOISY_PCT, wait_quiet, with_foreign};
use crate::report::{Results, info_row, median, na, row};
use crate::setup::{BIG_FILE, Bench, blake3_file, mem_dir};

/// Medians' inputs of the fetch phase, in seconds.
#[derive(Default)]
struct FetchTimes {
    x_main: Vec<f64>,
    x_main_all: Vec<f64>,
    cb_main: Vec<f64>,
    x_null: Vec<f64>,
    x_null_all: Vec<f64>,
    c_null: Vec<f64>,
    x_disk: Vec<f64>,
    cbs_disk: Vec<f64>,
}

pub fn fetch(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    let size = cfg.big_size;
    let mib = size / MIB;
    let gb = size as f64 / 1e9;
    // Outputs go to tmpfs: the disk of this VM is not under test, and how fast it takes
    // a GiB depends on whether its blocks were written before (0.65 s to 2.6 s for the
    // same fetch). The same on disk, with fsync on both sides, is reported as info.
    let mem = mem_dir(size);
    let disk_out = bench.out_dir.join("big.out");
    let main_out = mem.as_ref().map(|d| d.path().join("big.out")).unwrap_or_else(|| disk_out.clone());
    let main_where = if mem.is_some() { "tmpfs" } else { "disk" };
    println!(
        "## fetch: {mib} MiB file, {} run(s) each, median; clients on core 1; outputs on {main_where} ({}) and disk ({})",
        cfg.big_reps,
        main_out.parent().unwrap().display(),
        bench.out_dir.display()
    );
    let t_hash = Instant::now();
    let digest = blake3_file(&bench.file(BIG_FILE));
    println!("  expected blake3 {digest} ({:.2} s in-process)", t_hash.elapsed().as_secs_f64());
    let sc = bench.server_cores(1);
    let xs = bench.start_xfer(BIG_FILE, 1, sc);
    if let Err(e) = &xs {
        println!("  xfer: FAILED TO START: {e}");
        res.fatal(e.clone());
    }
    let ns = if bench.tools.curl.is_some() { bench.start_nginx(1, sc) } else { Err("curl not installed".into()) };
    if let Err(e) = &ns {
        println!("  curl/nginx: skipped: {e}");
    }
    let limit = Duration::from_secs(600);
    let mut t = FetchTimes::default();
    let mut errs: Vec<String> = Vec::new();
    let ours: Vec<i32> = xs.iter().chain(ns.iter()).flat_map(|s| s.cpu_pids.clone()).collect();
    let mut foreign_max = 0.0f64;
    // With the bench pinned to core 1, "unpinned" clients get every core.
    let unpinned = bench.pinned.then_some(&bench.all_cores[..]);
    for _ in 0..cfg.big_reps {
        wait_quiet();
        let ((), f, _) = with_foreign(&ours, || {
            let mut keep = |r: Result<f64, String>, v: &mut Vec<f64>| match r {
                Ok(d) => v.push(d),
                Err(e) => errs.push(e),
            };
            if let Ok(s) = &xs {
                let a = s.addr.to_string();
                let bin = &bench.bin;
                keep(xfer_fetch(bin, &a, Some(&main_out), size, None, limit), &mut t.x_main);
                if mem.is_some() {
                    keep(xfer_fetch(bin, &a, Some(&disk_out), size, None, limit), &mut t.x_disk);
                }
                if let Some(all) = unpinned {
                    keep(xfer_fetch(bin, &a, Some(&main_out), size, Some(all), limit), &mut t.x_main_all);
                }
                keep(xfer_fetch(bin, &a, None, size, None, limit), &mut t.x_null);
                if let Some(all) = unpinned {
                    keep(xfer_fetch(bin, &a, None, size, Some(all), limit), &mut t.x_null_all);
                }
            }
            if let (Ok(n), Some(curl)) = (&ns, &bench.tools.curl) {
                let url = format!("http://{}/{BIG_FILE}", n.addr);
                if let Some(b3) = &bench.tools.b3sum {
                    keep(curl_b3sum(curl, b3, &url, &main_out, false, &digest, limit), &mut t.cb_main);
                    keep(curl_b3sum(curl, b3, &url, &disk_out, true, &digest, limit), &mut t.cbs_disk);
                }
                keep(curl_null(curl, &url, limit), &mut t.c_null);
            }
        });
        foreign_max = foreign_max.max(f);
    }
    if foreign_max > NOISY_PCT {
        println!("  NOISY: other processes used up to {foreign_max:.0}% of the machine during a fetch round");
    }
    for e in &errs {
        println!("  error: {e}");
    }
    let show = |v: &[f64]| v.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(", ");
    println!("  xfer fetch OUT ({main_where}; verify, fsync, rename): [{}] s", show(&t.x_main));
    println!("  xfer fetch OUT ({main_where}), client on all cores: [{}] s", show(&t.x_main_all));
    println!("  curl -o OUT + b3sum OUT ({main_where}): [{}] s", show(&t.cb_main));
    println!("  xfer fetch - > /dev/null (verify, no file): [{}] s", show(&t.x_null));
    println!("  xfer fetch - > /dev/null, client on all cores: [{}] s", show(&t.x_null_all));
    println!("  curl -o /dev/null: [{}] s", show(&t.c_null));
    println!("  xfer fetch OUT (disk; verify, fsync, rename): [{}] s", show(&t.x_disk));
    println!("  curl -o OUT + b3sum OUT + fsync OUT (disk): [{}] s", show(&t.cbs_disk));

    let noisy = if foreign_max > NOISY_PCT { " (noisy)" } else { "" };
    let (x_main, x_main_all, cb_main) = (median(&mut t.x_main), median(&mut t.x_main_all), median(&mut t.cb_main));
    let (x_null, x_null_all, c_null) = (median(&mut t.x_null), median(&mut t.x_null_all), median(&mut t.c_null));
    let (x_disk, cbs_disk) = (median(&mut t.x_disk), median(&mut t.cbs_disk));
    let secs = |t: f64| if t.is_finite() { format!("{t:.3} s{noisy}") } else { na("failed or skipped") };
    let rate = |t: f64| {
        if t.is_finite() { format!("{t:.3} s ({:.2} GB/s){noisy}", gb / t) } else { na("failed or skipped") }
    };
    let b3 = |t: f64| if bench.tools.b3sum.is_none() { na("b3sum missing") } else { secs(t) };
    let both = |a: f64, b: f64| (a.is_finite() && b.is_finite()).then_some((a, b));
    // Against curl + b3sum the ratio is a speed-up (curl's time ÷ xfer's); against
    // curl -o /dev/null it is xfer's time ÷ curl's, as the table's heading says.
    let speedup = |x: f64, c: f64| both(x, c).map(|(x, c)| c / x);
    let slower = |x: f64, c: f64| both(x, c).map(|(x, c)| x / c);
    let r = speedup(x_main, cb_main);
    let metric = format!("{mib} MiB fetch+verify to {main_where} vs curl -o + b3sum");
    res.push(row(&metric, secs(x_main), b3(cb_main), r, "≥ 1.5× faster", r.map(|r| r >= 1.5)));
    if x_main_all.is_finite() {
        let metric = format!("{mib} MiB fetch+verify to {main_where}, client unpinned, vs curl -o + b3sum");
        res.push(info_row(&metric, secs(x_main_all), b3(cb_main), speedup(x_main_all, cb_main)));
    }
    let r = slower(x_main, c_null);
    let metric = format!("{mib} MiB fetch+verify to {main_where} vs curl -o /dev/null");
    res.push(row(&metric, secs(x_main), secs(c_null), r, "≤ 1.2× the time", r.map(|r| r <= 1.2)));
    let metric = format!("{mib} MiB xfer fetch - >/dev/null vs curl -o /dev/null");
    res.push(info_row(&metric, rate(x_null), rate(c_null), slower(x_null, c_null)));
    if x_null_all.is_finite() {
        let metric = format!("{mib} MiB xfer fetch - >/dev/null, client unpinned, vs curl -o /dev/null");
        res.push(info_row(&metric, rate(x_null_all), rate(c_null), slower(x_null_all, c_null)));
    }
    if mem.is_some() {
        let metric = format!("{mib} MiB fetch+verify to disk vs curl -o + b3sum + fsync");
        res.push(info_row(&metric, secs(x_disk), b3(cbs_disk), speedup(x_disk, cbs_disk)));
    }
    drop(xs);
    drop(ns);
    let _ = std::fs::remove_file(&disk_out);
    let _ = std::fs::remove_file(&main_out);
    println!();
}
