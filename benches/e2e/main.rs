//! End-to-end benchmark: the real `xfer serve` against nginx, on loopback, in one run.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench e2e                          # full
//! XFER_BENCH_SCALE=quick CARGO_TARGET_DIR=/work/target-bench cargo bench --bench e2e   # < 1 min
//! ```
//!
//! A raw mio load generator of its own (one thread, pinned to core 1 when there are two
//! or more cores) drives `xfer serve` (pinned to core 0) and, when it is installed, nginx
//! (1 worker, sendfile on, access_log off, pinned to core 0) serving the same files, and
//! asks both the same way: over HTTP. xfer speaks its native protocol and HTTP on one
//! port, so each load phase also measures xfer native under the same load (a fresh server)
//! for the "xfer native vs HTTP" rows. A transfer is, per client:
//! - HTTP/1.0 (small, fanout, fanout2, stall, crowd): connect (non-blocking), send
//!   `GET /NAME HTTP/1.0\r\n\r\n` at once, read the head and body to EOF (the server
//!   closes first), check the status is 200 and the body has the file's size, close;
//! - native: the same with the 48-byte request, checking the decoded header's size;
//! - HTTP/1.1 keep-alive (keepalive): connect, send `GET /NAME HTTP/1.1\r\nHost: bench\r\n\r\n`,
//!   read the head, check Content-Length, read exactly that many body bytes, send the next
//!   request on the same connection; after 100 requests the client closes first.
//!
//! Body bytes are discarded with `recv(MSG_TRUNC)` (no copy into user space), so the
//! load generator costs as little as possible and both servers see the same client;
//! `XFER_BENCH_COPY_READS=1` copies them instead. As soon as a client's connection ends
//! another one starts, keeping the concurrency constant.
//!
//! Phases (each bounded in count and time; traffic only to 127.0.0.1):
//! - small: 80-byte file, 100 concurrent clients, a new connection per transfer.
//! - auth: the same file and load against xfer started with `--token-file` and without,
//!   natively (version 2: with the token, request with a fresh nonce, challenge, proof,
//!   head with the server's MAC, checked) and over HTTP/1.0 (with `Authorization: Bearer`);
//!   3 rounds (1 at quick scale) of the four arms.
//! - keepalive: the same file, 100 concurrent HTTP/1.1 connections of 100 requests each.
//! - fanout: 10 MiB file, 100 concurrent clients, repeated; 1 reactor vs 1 worker, then
//!   `--threads 2` vs 2 workers (fanout2: both unpinned over cores 0-1, the load too).
//! - fetch: 1 GiB `xfer fetch` (verify + atomic write) vs `curl -o` + `b3sum` and vs
//!   `curl -o /dev/null` (against nginx), when those are installed. Outputs on tmpfs
//!   (/dev/shm) so the VM's disk is not what is measured; on disk (fsync on both sides) too,
//!   as information.
//! - resume: 1 GiB `xfer fetch` to tmpfs, fresh, against the same command resuming the
//!   partial a fetch cut at 90 % left (the cut made by a proxy in the bench, with
//!   `--retry 0`); wall and CPU time of each, and the floor: re-hashing the 90 % prefix
//!   (timed in-process) plus 10 % of a fresh fetch. Every output's BLAKE3 is checked, and
//!   a wrong one aborts the bench.
//! - stall: 5,000 clients that send the request and never read a 64 MiB file; server RSS
//!   growth per client once it settles (and the kernel's TCP memory, as information).
//! - crowd: 10,000 clients of a 1 MiB file started at once; completion-time p50/p99.
//!
//! Each load phase also reports the server's CPU (/proc/PID/stat), the load generator's,
//! the kernel softirq threads', other processes' (a measurement taken while something
//! else used more than 5% of the machine is marked "noisy"; before each one the bench
//! waits up to `XFER_BENCH_QUIET_WAIT` seconds, default 120, for the machine to be idle),
//! and the kernel TCP counters that moved (listen overflows, resets on memory pressure).
//!
//! Environment:
//! - `XFER_BENCH_SCALE`: `quick` (= 0.1), `full` (= 1, the default) or a number; scales
//!   durations, the fetch size and the client counts.
//! - `XFER_BENCH_ONLY`: comma list of phases to run
//!   (small,auth,keepalive,fanout,fanout2,fetch,resume,stall,crowd).
//! - `XFER_BENCH_NO_PEERS=1`: do not run nginx/curl/b3sum even when installed.
//! - `XFER_BENCH_COPY_READS=1`: the load generator copies body bytes instead of MSG_TRUNC.
//! - `XFER_BENCH_FETCH_DISK=1`: fetch outputs on disk only (no tmpfs).
//! - `XFER_BENCH_QUIET_WAIT=SECS`: how long to wait for an idle machine before a measurement.
//! - `XFER_BENCH_AUTOGROUP_NICE=N`: run the bench and its servers in a session of their own
//!   whose scheduler autogroup has nice N (say -15), so that other sessions' jobs, niced or
//!   not, take less of the pinned cores (setup.rs says why nice alone does not do it).
//! - `XFER_BENCH_PROFILE='perf record -g -p {pids} -o /tmp/{name}.data'`: a command run
//!   during each measured load phase, stopped with SIGINT at its end.
//! - `XFER_BIN`: path of the xfer binary to test (default: the one cargo built beside us).
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it does nothing.
//!
//! Layout: this file only lists the phases. `phases/` holds them, one function each; they
//! share `setup.rs` (what `config.rs` reads from the environment, the binaries and the data
//! files) and `compare.rs` (`side_by_side`: xfer and nginx under the same load, in the same
//! run). Below those, `load.rs` is the mio load generator and `proto.rs` the request and
//! response framing it speaks; `peers.rs` starts xfer, nginx, curl and b3sum; `readings.rs`
//! reads /proc; `report.rs` prints the table; `cut.rs` is the resume phase's proxy that cuts
//! a connection short.

mod compare;
mod config;
mod cut;
mod load;
mod peers;
mod phases;
mod proto;
mod readings;
mod report;
mod setup;

use report::Results;
use setup::Bench;

/// A phase prints its section and adds its rows.
type Phase = fn(&Bench, &mut Results);

/// Every phase, in the order they run; `XFER_BENCH_ONLY` picks some by these names.
const PHASES: [(&str, Phase); 9] = [
    ("small", phases::small),
    ("auth", phases::auth),
    ("keepalive", phases::keepalive),
    ("fanout", phases::fanout),
    ("fanout2", phases::fanout2),
    ("fetch", phases::fetch),
    ("resume", phases::resume),
    ("stall", phases::stall),
    ("crowd", phases::crowd),
];

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and a test run should not start a minutes-long benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: not run (no --bench argument); use `cargo bench --bench e2e`");
        return;
    }
    let bench = Bench::start();
    let mut results = Results::new();
    for (name, phase) in PHASES {
        if bench.cfg.runs(name) {
            phase(&bench, &mut results);
        }
    }
    results.finish(&bench.cfg.scale_label);
}
