//! A seeded, randomized soak: many transfers of random-sized files, each through its own
//! fault proxy with a random fault (none, delay, reset / cut / flip / stall at a random
//! byte), some by `xfer fetch`, some by raw clients with random receive buffers and pace.
//!
//! The rules checked are the product's promises:
//! - `xfer fetch`: a transfer whose fault hit fails with the exit code that fault calls for
//!   and leaves nothing at its output path (no temporary file either); every fetch that
//!   exits 0 produced an exact copy, and every transfer without a hit does exit 0.
//! - raw clients (which verify nothing themselves) check the server: what they got is the
//!   exact response, damaged only where and as the proxy damaged it.
//!
//! A transfer that breaks a rule is "lost"; there must be none. The seed is printed;
//! `XFER_SOAK_SEED=S` replays a run, `XFER_SOAK_N=N` sets the number of transfers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::proxy::Dir;
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    None,
    Delay,
    Reset,
    Cut,
    Flip,
    Stall,
}

#[derive(Clone, Debug)]
struct Job {
    id: usize,
    file: usize,
    kind: Kind,
    plan: Plan,
    /// Whether the fault's byte exists in its stream (so it must make the transfer fail).
    hits: bool,
    /// A raw client with this receive buffer and pace instead of `xfer fetch`.
    raw: Option<(usize, Pace)>,
}

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<String, usize>,
    hits: usize,
    /// `xfer fetch` with a hit: failed with the right code, nothing left.
    failed_as_expected: usize,
    /// `xfer fetch` without a hit: exit 0, exact copy.
    clean_ok: usize,
    /// Raw clients: exactly the response, damaged only as injected.
    raw_as_injected: usize,
    raw: usize,
    codes: BTreeMap<i32, usize>,
    lost: Vec<String>,
}

#[test]
fn soak_random_faults() {
    let seed: u64 = std::env::var("XFER_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let n: usize = std::env::var("XFER_SOAK_N").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    eprintln!("soak: seed {seed} (replay with XFER_SOAK_SEED={seed}), {n} transfers");
    let started = Instant::now();
    let mut rng = Rng::new(seed);

    // A handful of servers with random-sized files, including the empty and tiny cases.
    let dir = tempdir();
    let sizes = [
        0usize,
        1 + rng.below(100) as usize,
        rng.below(70_000) as usize,
        rng.below(4 * MIB) as usize,
        rng.below(4 * MIB) as usize,
        (4 * MIB - rng.below(1000)) as usize,
    ];
    let files: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &s)| random_bytes(s, seed ^ (i as u64 + 1))).collect();
    let mut servers: Vec<Server> = files
        .iter()
        .enumerate()
        .map(|(i, d)| Server::settled(&write_file(dir.path(), &format!("in-{i}.bin"), d), &[]))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();

    let kinds = [Kind::None, Kind::Delay, Kind::Reset, Kind::Cut, Kind::Flip, Kind::Stall];
    let jobs: Vec<Job> = (0..n)
        .map(|id| {
            let file = rng.below(files.len() as u64) as usize;
            let raw = (rng.below(4) == 0).then(|| {
                let rcvbuf = [4096usize, 8192, 65536, 262_144][rng.below(4) as usize];
                let read = [1024usize, 4096, 65536][rng.below(3) as usize];
                let pace = if rng.below(2) == 0 {
                    Pace::bursts(read, 64 * 1024 + rng.below(512 * 1024) as usize, Duration::from_millis(rng.below(5)))
                } else {
                    Pace::bursts(read, 0, Duration::ZERO)
                };
                (rcvbuf, pace)
            });
            // Raw clients speak version 1 (a 48-byte header); fetch speaks version 2, whose
            // header is followed by the file's name ("in-N.bin"), which a fetch into a named
            // output does not use: a flip there damages nothing.
            let name = if raw.is_some() { 0 } else { format!("in-{file}.bin").len() as u64 };
            let total = 48 + name + files[file].len() as u64;
            let harmless = |at: u64| (48..48 + name).contains(&at);
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            // Faults land anywhere in the stream, and sometimes past its end (no fault).
            let down_at = |rng: &mut Rng| rng.below(total + total / 8 + 2);
            let upstream = matches!(kind, Kind::Reset | Kind::Cut | Kind::Stall) && rng.below(5) == 0;
            let (plan, hits) = match kind {
                Kind::None => (Plan::clean(), false),
                Kind::Delay => {
                    let plan = Plan {
                        up: Dir { delay: Duration::from_millis(rng.below(100)), ..Dir::default() },
                        down: Dir {
                            delay: Duration::from_millis(rng.below(300)),
                            chunk: 16 * 1024 + rng.below(112 * 1024) as usize,
                            pause: Duration::from_micros(rng.below(5000)),
                            fault: None,
                        },
                        server_rcvbuf: (rng.below(2) == 0).then(|| 4096 << rng.below(6)),
                    };
                    (plan, false)
                }
                Kind::Flip => {
                    let at = down_at(&mut rng);
                    (Plan::down(at, Action::Flip(rng.below(8) as u8)), at < total && !harmless(at))
                }
                Kind::Reset | Kind::Cut | Kind::Stall => {
                    let action = match kind {
                        Kind::Reset => Action::Reset,
                        Kind::Cut => Action::Cut,
                        _ => Action::Stall,
                    };
                    if upstream {
                        let at = rng.below(48);
                        (Plan::up(at, action), true)
                    } else {
                        let at = down_at(&mut rng);
                        (Plan::down(at, action), at < total)
                    }
                }
            };
            Job { id, file, kind, plan, hits, raw }
        })
        .collect();

    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let tally = Mutex::new(Tally::default());
    let next = AtomicUsize::new(0);
    let files = &files;
    let addrs = &addrs;
    let jobs = &jobs;
    let outdir_ref = &outdir;
    let tally_ref = &tally;
    let next_ref = &next;
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(move || {
                loop {
                    let i = next_ref.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else { break };
                    run_job(job, &files[job.file], addrs[job.file], outdir_ref, tally_ref);
                }
            });
        }
    });

    let t = tally.into_inner().unwrap();
    let kinds_s: Vec<String> = t.by_kind.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let codes_s: Vec<String> = t.codes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    eprintln!(
        "soak summary: seed={seed} transfers={n} (raw {}) faults[{}] hit={} fetch-failed-as-expected={} \
         fetch-clean-ok={} raw-as-injected={} fetch-exit-codes[{}] lost={} in {:?}",
        t.raw,
        kinds_s.join(" "),
        t.hits,
        t.failed_as_expected,
        t.clean_ok,
        t.raw_as_injected,
        codes_s.join(" "),
        t.lost.len(),
        started.elapsed()
    );
    assert!(t.lost.is_empty(), "soak seed {seed}: {} transfers broke the rule:\n{}", t.lost.len(), t.lost.join("\n"));

    // Nothing but the finished outputs may remain (no temp files from the failures).
    let mut want: Vec<String> = Vec::new();
    for j in jobs.iter().filter(|j| j.raw.is_none() && !j.hits) {
        want.push(format!("job-{}.bin", j.id));
    }
    want.sort();
    assert_eq!(dir_names(&outdir), want, "soak seed {seed}: output directory holds more or less than the good copies");

    for server in servers.iter_mut() {
        server.assert_healthy();
    }
}

/// The exit codes `xfer fetch` must give for a fault that hit: a flipped bit in a length
/// (the name's, byte 6 of a version 2 header, or the size field) makes the stream end short
/// of what the header announces (3) or the digest wrong (4); a flipped bit in the status
/// (byte 5) turns the success into a refusal, which docs/PROTOCOL.md has a client take as
/// one, showing the name's bytes as its reason (6), unless the result is malformed (4); any
/// other flip is a protocol or verification error (4); a reset, cut or stall is a network
/// error (3). Whatever the code, nothing may be left at the output.
fn expected_codes(job: &Job) -> &'static [i32] {
    match (job.plan.up.fault, job.plan.down.fault) {
        (None, Some((5, Action::Flip(_)))) => &[4, 6],
        (None, Some((at, Action::Flip(_)))) if at == 6 || (8..16).contains(&at) => &[3, 4],
        (None, Some((_, Action::Flip(_)))) => &[4],
        _ => &[3],
    }
}

/// Whether what a raw client received is the response `want`, damaged exactly as the job's
/// fault damages it (and not at all without a hit). `timed_out`: the read ended by its
/// timeout rather than EOF or an error.
fn raw_as_injected(job: &Job, want: &[u8], got: &[u8], err: Option<&std::io::Error>) -> Result<(), String> {
    let timed_out =
        err.is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    let prefix_of = |n: usize| got.len() <= n && got == &want[..got.len()];
    if !job.hits {
        return if err.is_none() && got == want { Ok(()) } else { Err("not the exact response".into()) };
    }
    match (job.plan.up.fault, job.plan.down.fault) {
        // The request never got through whole: no answer at all.
        (Some(_), _) if got.is_empty() => Ok(()),
        (Some(_), _) => Err(format!("{} bytes answered to a request that never arrived whole", got.len())),
        (None, Some((at, Action::Flip(bit)))) => {
            let mut damaged = want.to_vec();
            damaged[at as usize] ^= 1 << (bit & 7);
            if err.is_none() && got == damaged {
                Ok(())
            } else {
                Err("not the response with that one bit flipped".into())
            }
        }
        (None, Some((at, Action::Cut))) if err.is_none() && got == &want[..at as usize] => Ok(()),
        (None, Some((at, Action::Stall))) if timed_out && got == &want[..at as usize] => Ok(()),
        // A reset may destroy what was in flight: a prefix of the bytes before the fault.
        (None, Some((at, Action::Reset))) if prefix_of(at as usize) => Ok(()),
        _ => Err("not the response cut where the fault was".into()),
    }
}

fn run_job(job: &Job, data: &[u8], server: SocketAddr, outdir: &Path, tally: &Mutex<Tally>) {
    let proxy = Proxy::start(server, job.plan);
    let desc = format!(
        "job {} {:?} size {} plan {:?} hits {} raw {:?}",
        job.id,
        job.kind,
        data.len(),
        job.plan,
        job.hits,
        job.raw
    );
    let (verdict, exit) = match job.raw {
        None => {
            let name = format!("job-{}.bin", job.id);
            let out = outdir.join(&name);
            let timeout = if job.kind == Kind::Stall { "1" } else { "10" };
            let r = fetch(&proxy.target(), &out, &["--quiet", "--timeout", timeout]);
            let temps: Vec<String> = dir_names(outdir).into_iter().filter(|n| is_temp_of(n, &name)).collect();
            let exact = std::fs::read(&out).is_ok_and(|v| v == data);
            let codes = expected_codes(job);
            let verdict = if !temps.is_empty() {
                Err(format!("temporary file left behind: {temps:?}"))
            } else if r.status.success() && !exact {
                Err("exit 0 without an exact copy at the output path".to_string())
            } else if job.hits && r.status.success() {
                Err("exit 0 although the fault hit".to_string())
            } else if job.hits && out.exists() {
                Err("failed, but left a file at the output path".to_string())
            } else if job.hits && !r.status.code().is_some_and(|c| codes.contains(&c)) {
                Err(format!("failed with the wrong exit code (expected one of {codes:?})"))
            } else if !job.hits && !r.status.success() {
                Err("failed without a fault".to_string())
            } else {
                Ok(())
            };
            (verdict.map_err(|e| format!("{e}\n{}", describe(&r))), r.status.code())
        }
        Some((rcvbuf, pace)) => {
            let want = expected_response(data);
            let res = (|| -> std::io::Result<Drained> {
                let mut s = connect(proxy.addr, None, Some(rcvbuf))?;
                let secs = if job.kind == Kind::Stall { 1 } else { 10 };
                s.set_read_timeout(Some(Duration::from_secs(secs)))?;
                s.write_all(&request(None))?;
                // The whole stream, header included: a damaged header must be seen as bytes.
                Ok(drain(&mut s, pace, None, true))
            })();
            let verdict = match &res {
                Ok(d) => raw_as_injected(job, &want, &d.data, d.err.as_ref())
                    .map_err(|e| format!("{e}: got {} of {} bytes, ended by {:?}", d.data.len(), want.len(), d.err)),
                Err(e) => Err(format!("could not even send the request: {e}")),
            };
            (verdict, None)
        }
    };
    let fired = proxy.fired();
    drop(proxy);
    let mut t = tally.lock().unwrap();
    *t.by_kind.entry(format!("{:?}", job.kind).to_lowercase()).or_default() += 1;
    if job.raw.is_some() {
        t.raw += 1;
    }
    if let Some(c) = exit {
        *t.codes.entry(c).or_default() += 1;
    }
    if job.hits {
        t.hits += 1;
        if fired == 0 {
            t.lost.push(format!("{desc}: fault should have fired but the proxy never saw byte N"));
        }
    }
    match verdict {
        Err(e) => t.lost.push(format!("{desc}: {e}")),
        Ok(()) if job.raw.is_some() => t.raw_as_injected += 1,
        Ok(()) if job.hits => t.failed_as_expected += 1,
        Ok(()) => t.clean_ok += 1,
    }
}
