//! Readings of the machine, from /proc and a few system calls: CPU time of processes, of this
//! thread and of the whole machine; resident memory; the kernel's TCP counters and TCP socket
//! memory; the softirq threads; and the wait for a quiet machine before a measurement.
//!
//! Everything here only reads. It must never know what is being benchmarked, nor start a
//! process, open a connection or format a report: callers pass process ids and closures and
//! get plain numbers back. The one thing it prints is the quiet-wait notice, because that
//! explains a late or noisy measurement at the moment it happens.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Above this share of the machine used by other processes, a measurement is flagged.
pub const NOISY_PCT: f64 = 5.0;

/// Online CPUs (not the affinity mask: this thread is pinned to one of them).
pub fn nproc() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of one process, in clock ticks.
fn proc_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; the fields after it do not.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Summed CPU time (µs) of `pids`, from /proc/PID/stat.
pub fn cpu_us(pids: &[i32]) -> f64 {
    pids.iter().filter_map(|&p| proc_ticks(p)).sum::<u64>() as f64 * 1e6 / clk_tck()
}

/// CPU time (µs) of the calling thread.
pub fn thread_cpu_us() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given and keeps no pointer to it.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        (ru.ru_utime.tv_sec as f64 + ru.ru_stime.tv_sec as f64) * 1e6
            + (ru.ru_utime.tv_usec as f64 + ru.ru_stime.tv_usec as f64)
    }
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Children of `pid` (from /proc/*/stat).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// (busy, total) ticks of all CPUs, from /proc/stat (busy includes irq and softirq).
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    (total - get(3) - get(4), total)
}

/// CPU ticks of this process and its waited-for children (curl, b3sum, xfer fetch).
fn self_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().skip(11).take(4).filter_map(|x| x.parse::<u64>().ok()).sum()
}

/// Kernel TCP counters that explain failed or slow transfers: accept-queue overflows (SYNs
/// dropped, clients retry after 1 s), resets on memory pressure, SYN retransmits.
const TCP_WATCH: &[&str] = &[
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
    "TCPSynRetrans",
    "TCPMemoryPressures",
    "TCPAbortOnMemory",
    "TCPAbortOnData",
    "TCPAbortOnTimeout",
    "EstabResets",
    "OutRsts",
];

/// TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters by name.
pub fn tcp_counters() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Each group is a line of names followed by a line of values, both with the same prefix.
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else { continue };
            if p1 != p2 || !(p1 == "TcpExt" || p1 == "Tcp") {
                continue;
            }
            for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
                if let Ok(x) = val.parse::<i64>() {
                    m.insert(k.to_string(), x.max(0) as u64);
                }
            }
        }
    }
    m
}

/// The watched counters that moved since `before`, e.g. "ListenOverflows +12".
pub fn tcp_delta(before: &BTreeMap<String, u64>) -> String {
    let now = tcp_counters();
    let v: Vec<String> = TCP_WATCH
        .iter()
        .filter_map(|k| {
            let d = now.get(*k)?.saturating_sub(*before.get(*k).unwrap_or(&0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Pages of memory all TCP sockets hold in the kernel (/proc/net/sockstat "TCP: ... mem N").
pub fn tcp_mem_pages() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("TCP:")) else { return 0 };
    let f: Vec<&str> = line.split_whitespace().collect();
    f.iter().position(|w| *w == "mem").and_then(|i| f.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The kernel's per-CPU softirq threads. Loopback traffic is partly processed there under
/// load: that is work of the benchmark itself, not of another job.
fn softirqd_pids() -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return v };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            v.push(p);
        }
    }
    v
}

/// CPU use while `f` runs: (value, % of the machine used by processes other than ours and
/// the softirq threads, % of one core used by the softirq threads).
pub fn with_foreign<T>(ours: &[i32], f: impl FnOnce() -> T) -> (T, f64, f64) {
    let sirq = softirqd_pids();
    let ticks = |pids: &[i32]| pids.iter().filter_map(|&p| proc_ticks(p)).sum::<u64>();
    let (b0, t0) = machine_ticks();
    let o0 = ticks(ours) + self_ticks();
    let s0 = ticks(&sirq);
    let v = f();
    let (b1, t1) = machine_ticks();
    let o1 = ticks(ours) + self_ticks();
    let s1 = ticks(&sirq);
    let foreign = (b1 - b0).saturating_sub(o1 - o0).saturating_sub(s1 - s0) as f64;
    let total = (t1 - t0).max(1) as f64;
    (v, 100.0 * foreign / total, 100.0 * (s1 - s0) as f64 / total * nproc() as f64)
}

/// Waits (up to `XFER_BENCH_QUIET_WAIT` seconds, default 120) until the machine is idle
/// (< 5% busy over 300 ms), so that a build or test run of someone else's does not land in a
/// measurement. Returns whether it was.
pub fn wait_quiet() -> bool {
    let max = quiet_wait();
    let t0 = Instant::now();
    let mut warned = false;
    loop {
        let (b0, a0) = machine_ticks();
        std::thread::sleep(Duration::from_millis(300));
        let (b1, a1) = machine_ticks();
        let pct = 100.0 * (b1 - b0) as f64 / (a1 - a0).max(1) as f64;
        if pct < NOISY_PCT {
            return true;
        }
        if t0.elapsed() > max {
            println!("  (machine still {pct:.0}% busy with other work after {} s; measuring anyway)", max.as_secs());
            return false;
        }
        if !warned {
            println!("  (machine {pct:.0}% busy with other work; waiting up to {} s for it to settle)", max.as_secs());
            warned = true;
        }
    }
}

/// How long to wait for other work on the machine to finish before each measurement.
fn quiet_wait() -> Duration {
    let secs = std::env::var("XFER_BENCH_QUIET_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    Duration::from_secs(secs)
}
