//! One load measurement of one server, and `side_by_side`, the comparison every load phase
//! makes with it: the same file, the same HTTP requests and the same readings against xfer
//! and then its peer (nginx), in the same run, so that the two figures differ by the server
//! and not by the protocol, the hour or what else the machine was doing. When asked, xfer's
//! native protocol is measured under the same load too (a fresh server, between the two),
//! for the "native vs HTTP" rows.
//!
//! It owns the order (xfer over HTTP, xfer native, the peer; a pause between them, each
//! stopped before the next starts), where the servers and the load run, what a failed start
//! means (fatal for xfer with one event loop; an empty column for a missing peer), and the
//! profiler hook. `arms`, below `side_by_side`, runs any list of servers the same way (the
//! auth phase's xfer with and without a token). It must never know what a phase measures
//! or judges (the phase's closure and rows do), nor how a row is laid out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{LoadOpts, Outcome, Target, run_load};
use crate::peers::{Server, pin_self};
use crate::proto::Proto;
use crate::readings::{NOISY_PCT, tcp_counters, tcp_delta, wait_quiet, with_foreign};
use crate::report::{Results, na};
use crate::setup::Bench;

/// What to serve in a side-by-side run.
pub struct Serve<'a> {
    /// A data file (setup.rs); nginx is asked for it by name, xfer serves only it.
    pub file: &'a str,
    pub size: u64,
    /// xfer's `--threads` and nginx's worker count. More than one spreads the servers and the
    /// load over all cores: a second event loop needs a core of its own.
    pub threads: usize,
    /// The HTTP version both servers are asked in.
    pub proto: Proto,
    /// Also measure xfer's native protocol under the same load.
    pub native: bool,
}

/// The same measurement of xfer (over HTTP), of its peer, and of xfer's native protocol;
/// `None` for one that did not run.
pub struct Pair<T> {
    pub xfer: Option<T>,
    pub peer: Option<T>,
    pub native: Option<T>,
}

impl<T> Pair<T> {
    pub fn both(&self) -> Option<(&T, &T)> {
        self.xfer.as_ref().zip(self.peer.as_ref())
    }

    /// xfer's figure ÷ the peer's, when both ran.
    pub fn ratio(&self, figure: impl Fn(&T) -> f64) -> Option<f64> {
        self.both().map(|(x, p)| figure(x) / figure(p))
    }

    /// The xfer and peer cells of a row; a side that did not run says why.
    pub fn cells(&self, cell: impl Fn(&T) -> String) -> (String, String) {
        (
            self.xfer.as_ref().map(&cell).unwrap_or_else(|| na("failed")),
            self.peer.as_ref().map(&cell).unwrap_or_else(|| na("nginx missing")),
        )
    }

    /// A "native vs HTTP" row's cells and ratio (native ÷ HTTP), when native ran: xfer's
    /// native figure where a row has xfer's, and its HTTP figure where it has the peer's.
    pub fn native_vs_http(
        &self,
        figure: impl Fn(&T) -> f64,
        cell: impl Fn(&T) -> String,
    ) -> Option<(String, String, Option<f64>)> {
        let n = self.native.as_ref()?;
        let h = self.xfer.as_ref().map(|h| format!("HTTP {}", cell(h))).unwrap_or_else(|| na("failed"));
        let ratio = self.xfer.as_ref().map(|h| figure(n) / figure(h));
        Some((cell(n), h, ratio))
    }
}

/// One server of a comparison, and how the load asks it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arm {
    /// `xfer serve`, asked in `proto`; with `token`, started with `--token-file` and asked
    /// with the token (Bearer over HTTP, challenge-response natively).
    Xfer { proto: Proto, token: bool },
    /// The peer (nginx), asked over HTTP in `proto`.
    Peer(Proto),
}

impl Arm {
    fn xfer(proto: Proto) -> Arm {
        Arm::Xfer { proto, token: false }
    }
}

/// Starts xfer serving `serve`, runs `how` against it over HTTP, stops it; then the same
/// over xfer's native protocol (when `serve.native`), then with nginx over HTTP. `how` gets
/// the server and a target for the file in the protocol of that arm, and does the loading,
/// the reading and the printing of its line. A start that fails is printed; xfer's is fatal
/// unless it was asked for `--threads`.
pub fn side_by_side<T>(
    bench: &Bench,
    res: &mut Results,
    serve: &Serve,
    how: impl Fn(&Server, &Target) -> T,
) -> Pair<T> {
    let mut list = vec![Arm::xfer(serve.proto)];
    if serve.native {
        list.push(Arm::xfer(Proto::Xfer));
    }
    list.push(Arm::Peer(serve.proto));
    let mut got = arms(bench, res, serve, &list, how).into_iter();
    let xfer = got.next().flatten();
    let native = if serve.native { got.next().flatten() } else { None };
    let peer = got.next().flatten();
    Pair { xfer, peer, native }
}

/// The servers of `list` one after another, each serving `serve.file` (`serve.proto` and
/// `serve.native` are not read: each arm says how it is asked), `how` run against each;
/// `None` for one that did not start. Each is stopped before the next starts, half a
/// second apart. A failed start is printed; xfer's is fatal unless it was asked for
/// `--threads`.
pub fn arms<T>(
    bench: &Bench,
    res: &mut Results,
    serve: &Serve,
    list: &[Arm],
    how: impl Fn(&Server, &Target) -> T,
) -> Vec<Option<T>> {
    let spread = serve.threads > 1;
    let cores = bench.server_cores(serve.threads);
    if spread && bench.pinned {
        pin_self(&bench.all_cores);
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, arm) in list.iter().enumerate() {
        if i > 0 {
            // Let the kernel tear down the last server's connections (thousands, in the
            // stall and crowd phases) before the next one is measured.
            std::thread::sleep(Duration::from_millis(500));
        }
        // Each server is dropped (stopped) at the end of its arm, before the next one starts.
        out.push(match *arm {
            Arm::Xfer { proto, token } => match bench.start_xfer_with(serve.file, serve.threads, cores, 0, token) {
                Ok(mut s) => {
                    let how_asked = match proto {
                        Proto::Xfer => "native",
                        Proto::XferV2 => "native v2",
                        Proto::Http10 | Proto::Http11 => "HTTP",
                    };
                    let with = if token { ", token" } else { "" };
                    s.name = format!("{} ({how_asked}{with})", s.name);
                    Some(how(&s, &s.target(proto, serve.file, serve.size)))
                }
                Err(e) => {
                    println!("  xfer: FAILED TO START: {e}");
                    if !spread {
                        res.fatal(e);
                    }
                    None
                }
            },
            Arm::Peer(proto) => match bench.start_nginx(serve.threads, cores) {
                Ok(s) => Some(how(&s, &s.target(proto, serve.file, serve.size))),
                Err(e) => {
                    println!("  nginx: skipped: {e}");
                    None
                }
            },
        });
    }
    if spread && bench.pinned {
        pin_self(&[1]);
    }
    out
}

/// A load phase against one server: the outcome and the server's CPU time for it.
pub struct Measured {
    pub out: Outcome,
    server_cpu_us: f64,
    /// CPU used by processes other than the server and this bench, as % of all cores.
    foreign_pct: f64,
    /// Kernel TCP counters that moved during the phase.
    kernel: String,
    /// CPU of the kernel's softirq threads (network processing deferred there), % of a core.
    softirqd_pct: f64,
}

impl Measured {
    pub fn per_sec(&self) -> f64 {
        self.out.ok as f64 / self.out.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn gb_per_sec(&self) -> f64 {
        self.out.body_bytes as f64 / self.out.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
    pub fn cpu_per_transfer_us(&self) -> f64 {
        self.server_cpu_us / (self.out.ok as f64).max(1.0)
    }
    /// CPU per transfer of the server, the load generator and the softirq threads together.
    /// On loopback the kernel runs much of one side's TCP work in the other side's context
    /// (the receiver's processing of what the server sends runs in the server's call; what
    /// the acknowledgements release is sent from the load generator's), so this sum is the
    /// figure that does not depend on who the work was charged to (BENCHMARKS.md).
    pub fn rig_cpu_per_transfer_us(&self) -> f64 {
        let softirqd_us = self.softirqd_pct / 100.0 * self.out.elapsed.as_secs_f64() * 1e6;
        (self.server_cpu_us + self.out.load_cpu_us + softirqd_us) / (self.out.ok as f64).max(1.0)
    }
    pub fn exact(&self) -> bool {
        self.out.bad == 0 && self.out.timed_out == 0 && self.out.ok > 0
    }
    fn noisy(&self) -> bool {
        self.foreign_pct > NOISY_PCT
    }
    /// Suffix for a table cell: errors or other load on the machine.
    pub fn flags(&self) -> &'static str {
        match (self.exact(), self.noisy()) {
            (false, _) => " (errors!)",
            (true, true) => " (noisy)",
            _ => "",
        }
    }
    /// The phase's line for one server, with every reading behind its figures.
    pub fn describe(&self, s: &Server) -> String {
        let secs = self.out.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{}: {}; {:.0}/s, {:.3} GB/s; server CPU {:.3} s ({:.0}% of a core, {:.1} µs/transfer); \
             load-gen CPU {:.0}%; ksoftirqd {:.0}% of a core; all three {:.1} µs/transfer; \
             other processes {:.0}% of the machine{}",
            s.name,
            self.out.summary(),
            self.per_sec(),
            self.gb_per_sec(),
            self.server_cpu_us / 1e6,
            self.server_cpu_us / 1e4 / secs,
            self.cpu_per_transfer_us(),
            self.out.load_cpu_us / 1e4 / secs,
            self.softirqd_pct,
            self.rig_cpu_per_transfer_us(),
            self.foreign_pct,
            if self.noisy() { " — NOISY, another job was using the CPU" } else { "" },
        ) + &format!("\n      kernel TCP counters: {}", self.kernel)
    }
}

/// Runs the load `o` against `s` once the machine is quiet, with the readings around it.
pub fn measure(phase: &str, s: &Server, t: &Target, o: &LoadOpts) -> Measured {
    wait_quiet();
    let profiler = start_profiler(phase, s);
    let k0 = tcp_counters();
    let c0 = s.cpu_us();
    let (out, foreign_pct, softirqd_pct) = with_foreign(&s.cpu_pids, || run_load(t, o));
    let server_cpu_us = s.cpu_us() - c0;
    stop_profiler(profiler);
    Measured { out, server_cpu_us, foreign_pct, softirqd_pct, kernel: tcp_delta(&k0) }
}

/// `XFER_BENCH_PROFILE='perf record -g -p {pids} -o /tmp/{name}.data'` runs that shell
/// command during each measured load phase ({pids}: the server's processes, comma-separated;
/// {name}: phase and server), and stops it with SIGINT when the phase ends.
fn start_profiler(phase: &str, s: &Server) -> Option<Child> {
    let tmpl = std::env::var("XFER_BENCH_PROFILE").ok().filter(|t| !t.trim().is_empty())?;
    let pids: Vec<String> = s.cpu_pids.iter().map(|p| p.to_string()).collect();
    let name: String =
        format!("{phase}-{}", s.name).chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let cmd = tmpl.replace("{pids}", &pids.join(",")).replace("{name}", &name);
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("exec {cmd}")).stdin(Stdio::null());
    let child = c.spawn().map_err(|e| println!("  (profiler {cmd:?} failed to start: {e})")).ok()?;
    std::thread::sleep(Duration::from_millis(300)); // let it attach
    Some(child)
}

fn stop_profiler(p: Option<Child>) {
    if let Some(mut c) = p {
        // SIGINT, not SIGKILL: perf writes its data file on the way out.
        // SAFETY: kill(2) takes plain integers; the profiler is our child, not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
