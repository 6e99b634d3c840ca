//! The resume phase: what resuming an interrupted `xfer fetch` costs next to a fresh one.
//! Resuming should cost about the re-hash of the prefix already on disk and the transfer of
//! the rest, and nothing more.
//!
//! Each round leaves the state a fetch cut at 90 % leaves, the honest way: a real
//! `xfer fetch ADDR OUT --retry 0` through a proxy (cut.rs) that passes on 90 % of the body
//! and closes, so the fetch exits 3 and keeps `.NAME.xfer.part` and its record. Then the
//! same command, timed, resumes it: it hashes the 90 % back from the partial and receives
//! the last 10 %. A fresh fetch of the whole file into another directory is timed in the
//! same round, the two in alternating order. A partial resumes only from the source it came
//! from (`127.0.0.1:PORT`), so the timed fetches go to a second `xfer serve` started on the
//! proxy's port once the proxy is done with it. The floor is the prefix's re-hash, timed
//! in-process the way fetch does it (1 MiB reads at positions, BLAKE3 on one thread, on
//! the fetch's core), plus 10 % of the fresh fetch's time.
//!
//! Every output's BLAKE3 is compared with the served file's, and the resumed fetch must say
//! it resumed where the cut left it: anything else aborts the bench (a panic), since the
//! figures would then be of something else. It owns the rounds, the medians and the rows;
//! the commands are peers.rs's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::MIB;
use crate::cut::CutProxy;
use crate::peers::{Ran, Server, sync_disks, xfer_fetch_once};
use crate::readings::{NOISY_PCT, wait_quiet, with_foreign};
use crate::report::{Results, info_row, median, spread};
use crate::setup::{BIG_FILE, Bench, blake3_file, mem_dir};

/// What each round measured: seconds, and µs of CPU for the fetch processes.
#[derive(Default)]
struct Times {
    fresh: Vec<f64>,
    fresh_cpu: Vec<f64>,
    resumed: Vec<f64>,
    resumed_cpu: Vec<f64>,
    rehash: Vec<f64>,
    /// Re-hash plus the share of a fresh fetch the resumed one still receives, per round.
    floor: Vec<f64>,
}

pub fn resume(bench: &Bench, res: &mut Results) {
    let cfg = &bench.cfg;
    let size = cfg.big_size;
    let mib = size / MIB;
    // The body bytes the cut fetch keeps: 90 % of the file.
    let cut = size / 10 * 9;
    let mem = mem_dir(size);
    let root = mem.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_else(|| bench.out_dir.clone());
    let place = if mem.is_some() { "tmpfs" } else { "disk" };
    println!(
        "## resume: {mib} MiB file, {} round(s), median; `xfer fetch ADDR OUT --retry 0` on core 1 into {place} ({}); \
         fresh vs resumed after a cut at {cut} bytes (90 %)",
        cfg.big_reps,
        root.display()
    );
    let t_hash = Instant::now();
    let digest = blake3_file(&bench.file(BIG_FILE));
    println!("  expected blake3 {digest} ({:.2} s in-process)", t_hash.elapsed().as_secs_f64());
    // The server whose connections the proxy cuts.
    let origin = match bench.start_xfer(BIG_FILE, 1, bench.server_cores(1)) {
        Ok(s) => s,
        Err(e) => {
            println!("  xfer: FAILED TO START: {e}");
            res.fatal(e);
            return;
        }
    };
    let mut t = Times::default();
    let mut foreign_max = 0.0f64;
    for round in 0..cfg.big_reps {
        let dir = root.join(format!("round-{round}"));
        match one_round(bench, &origin, &dir, round, cut, &digest, &mut t) {
            Ok(f) => foreign_max = foreign_max.max(f),
            Err(e) => println!("  error: {e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(origin);
    let noisy = foreign_max > NOISY_PCT;
    if noisy {
        println!("  NOISY: other processes used up to {foreign_max:.0}% of the machine during a timed fetch");
    }
    let flag = if noisy { " (noisy)" } else { "" };
    let secs = |v: &[f64]| format!("{}{flag}", spread(v, |x| format!("{x:.3}"), " s"));
    let cpu = |v: &[f64]| format!("{}{flag}", spread(v, |x| format!("{:.3}", x / 1e6), " s CPU"));
    let ratio = |a: &[f64], b: &[f64]| Some(median(&mut a.to_vec()) / median(&mut b.to_vec()));
    let what = format!("{mib} MiB fetch to {place}");
    res.push(info_row(
        &format!("{what}, resumed after a cut at 90 % vs fresh: wall time"),
        secs(&t.resumed),
        secs(&t.fresh),
        ratio(&t.resumed, &t.fresh),
    ));
    let floor = format!("{}; re-hash {}", secs(&t.floor), spread(&t.rehash, |x| format!("{x:.3}"), " s"));
    res.push(info_row(
        &format!("{what}, resumed vs its floor (re-hash of the 90 % prefix + 10 % of a fresh fetch)"),
        secs(&t.resumed),
        floor,
        ratio(&t.resumed, &t.floor),
    ));
    res.push(info_row(
        &format!("{what}, resumed vs fresh: CPU of the fetch process"),
        cpu(&t.resumed_cpu),
        cpu(&t.fresh_cpu),
        ratio(&t.resumed_cpu, &t.fresh_cpu),
    ));
    println!();
}

/// One round in `dir`: the cut, the re-hash, then the resumed and the fresh fetch (order
/// alternating by round), checked. Returns the share of the machine other processes used
/// while the two fetches ran.
fn one_round(
    bench: &Bench,
    origin: &Server,
    dir: &Path,
    round: usize,
    cut: u64,
    digest: &str,
    t: &mut Times,
) -> Result<f64, String> {
    let limit = Duration::from_secs(600);
    let size = bench.cfg.big_size;
    let (resumed_out, fresh_out) = (dir.join("resumed").join(BIG_FILE), dir.join("fresh").join(BIG_FILE));
    for d in [&resumed_out, &fresh_out] {
        std::fs::create_dir_all(d.parent().unwrap()).map_err(|e| format!("mkdir: {e}"))?;
    }

    // The state a fetch cut at 90 % leaves.
    let proxy = CutProxy::start(origin.addr, cut).map_err(|e| format!("proxy: {e}"))?;
    let addr = proxy.addr.to_string();
    let first = xfer_fetch_once(&bench.bin, &addr, &resumed_out, limit);
    let passed = proxy.finish();
    let first = first?;
    let passed = passed?;
    let part = partial(&resumed_out, "");
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if first.code != Some(3) || kept != cut || !partial(&resumed_out, ".info").is_file() {
        panic!(
            "resume: the cut fetch should exit 3 and keep {cut} bytes and a record; {} kept {kept} bytes \
             (proxy passed {passed} body bytes): {}",
            first.desc,
            first.stderr.trim()
        );
    }

    // The floor's re-hash, as fetch does it.
    let rehash = rehash(&part, cut);

    // The same command, against a server on the proxy's port.
    let server = bench.start_xfer_with(BIG_FILE, 1, bench.server_cores(1), proxy_port(&addr), false)?;
    wait_quiet();
    let ours: Vec<i32> = origin.cpu_pids.iter().chain(&server.cpu_pids).copied().collect();
    let order = if round.is_multiple_of(2) { [true, false] } else { [false, true] };
    let (runs, foreign, _) = with_foreign(&ours, || {
        order.map(|resumed| {
            let out = if resumed { &resumed_out } else { &fresh_out };
            sync_disks();
            (resumed, xfer_fetch_once(&bench.bin, &addr, out, limit))
        })
    });
    drop(server);
    let mut got: [Option<Ran>; 2] = [None, None];
    for (resumed, r) in runs {
        let r = r?;
        if r.code != Some(0) {
            return Err(format!("{} failed: {}", r.desc, r.stderr.trim()));
        }
        let out = if resumed { &resumed_out } else { &fresh_out };
        check(out, digest, &r, resumed.then_some(cut));
        got[usize::from(resumed)] = Some(r);
    }
    let [Some(fresh), Some(resumed)] = got else { unreachable!("both fetches ran") };
    let (f, r) = (fresh.wall.as_secs_f64(), resumed.wall.as_secs_f64());
    let floor = rehash + f * (size - cut) as f64 / size as f64;
    println!(
        "  round {}: fresh {f:.3} s ({:.3} s CPU); resumed {r:.3} s ({:.3} s CPU); re-hash of {cut} bytes {rehash:.3} s \
         ({:.2} GB/s); floor {floor:.3} s; other processes {foreign:.0}% of the machine",
        round + 1,
        fresh.cpu_us / 1e6,
        resumed.cpu_us / 1e6,
        cut as f64 / rehash / 1e9,
    );
    t.fresh.push(f);
    t.fresh_cpu.push(fresh.cpu_us);
    t.resumed.push(r);
    t.resumed_cpu.push(resumed.cpu_us);
    t.rehash.push(rehash);
    t.floor.push(floor);
    Ok(foreign)
}

/// `.NAME.xfer.part` beside `out` (with `suffix` ".info": its record).
fn partial(out: &Path, suffix: &str) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.xfer.part{suffix}"))
}

fn proxy_port(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("proxy address has a port")
}

/// Aborts the bench unless `out` is the served file, byte for byte (its BLAKE3), and a
/// resumed fetch said it resumed at `resumed_at` (a fresh one, that it did not resume).
fn check(out: &Path, digest: &str, r: &Ran, resumed_at: Option<u64>) {
    let got = blake3_file(out);
    if got != digest {
        panic!("resume: {} is not the served file: BLAKE3 {got}, expected {digest} ({})", out.display(), r.desc);
    }
    let said = r.stderr.contains(", resuming at ");
    let right = resumed_at.is_none_or(|at| r.stderr.contains(&format!(", resuming at {at},")));
    if said != resumed_at.is_some() || !right {
        panic!("resume: expected {resumed_at:?} as the point resumed at; the fetch said: {}", r.stderr.trim());
    }
    let _ = std::fs::remove_file(out);
}

/// Reads the first `len` bytes of `part` back and hashes them as `xfer fetch` does when it
/// resumes (src/fetch/receive.rs, `spawn_hasher`: 1 MiB reads at positions, BLAKE3 on one
/// thread); seconds.
fn rehash(part: &Path, len: u64) -> f64 {
    let file = File::open(part).unwrap_or_else(|e| panic!("open {}: {e}", part.display()));
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off).unwrap_or_else(|e| panic!("read {}: {e}", part.display()));
        h.update(&buf[..n]);
        off += n as u64;
    }
    std::hint::black_box(h.finalize());
    t0.elapsed().as_secs_f64()
}
