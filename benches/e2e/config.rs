//! The bench's configuration: the scale, the phases to run and the switches, read once from
//! the environment (`XFER_BENCH_SCALE`, `XFER_BENCH_ONLY`, `XFER_BENCH_NO_PEERS`,
//! `XFER_BENCH_COPY_READS`), and the sizes, counts and durations of every phase derived
//! from the scale.
//!
//! It must never start anything or measure anything; it only turns the environment and the
//! machine's limits into numbers. The few knobs read where they act (`XFER_BENCH_QUIET_WAIT`,
//! `XFER_BENCH_PROFILE`, `XFER_BENCH_FETCH_DISK`, `XFER_BENCH_AUTOGROUP_NICE`, `XFER_BIN`) are listed in
//! main.rs.

use crate::readings::nproc;

pub const MIB: u64 = 1 << 20;

pub struct Cfg {
    pub scale: f64,
    pub scale_label: String,
    /// Servers on core 0 and the load on core 1; only with two cores or more.
    pub pin: bool,
    pub copy_reads: bool,
    pub peers: bool,
    only: Option<Vec<String>>,
    pub small_secs: f64,
    pub small_conc: usize,
    /// Requests per kept-alive connection in the keepalive phase (both servers allow 1000).
    pub keepalive_per_conn: u32,
    pub fan_secs: f64,
    pub fan_conc: usize,
    pub fan_size: u64,
    pub big_size: u64,
    /// Rounds of the fetch and resume phases.
    pub big_reps: usize,
    /// Rounds of the auth phase's four arms.
    pub auth_rounds: usize,
    pub stall_clients: usize,
    pub stall_size: u64,
    pub crowd_clients: usize,
    pub crowd_size: u64,
}

impl Cfg {
    pub fn from_env(nofile: u64) -> Cfg {
        let raw = std::env::var("XFER_BENCH_SCALE").unwrap_or_default();
        let (scale, label) = match raw.trim() {
            "" | "full" => (1.0, "full (1.0)".to_string()),
            "quick" => (0.1, "quick (0.1)".to_string()),
            s => match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => (v.min(10.0), format!("{}", v.min(10.0))),
                _ => {
                    eprintln!("XFER_BENCH_SCALE={s:?} is not `quick`, `full` or a positive number; using 1.0");
                    (1.0, "full (1.0)".to_string())
                }
            },
        };
        let flag = |k: &str| std::env::var(k).map(|v| v == "1" || v == "true").unwrap_or(false);
        let only = std::env::var("XFER_BENCH_ONLY")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        // Each client holds one fd here; keep 200 spare for everything else.
        let fd_room = nofile.saturating_sub(200) as usize;
        let big_mib = ((1024.0 * scale).round() as u64).clamp(64, 4096);
        Cfg {
            scale,
            scale_label: label,
            pin: nproc() >= 2,
            copy_reads: flag("XFER_BENCH_COPY_READS"),
            peers: !flag("XFER_BENCH_NO_PEERS"),
            only,
            small_secs: (5.0 * scale).clamp(0.5, 60.0),
            small_conc: 100,
            keepalive_per_conn: 100,
            fan_secs: (5.0 * scale).clamp(1.0, 60.0),
            fan_conc: 100,
            fan_size: 10 * MIB,
            big_size: big_mib * MIB,
            big_reps: if scale >= 0.5 { 3 } else { 1 },
            auth_rounds: if scale >= 0.5 { 3 } else { 1 },
            stall_clients: ((5000.0 * scale).round() as usize).clamp(500, 5000 * 10).min(fd_room),
            stall_size: 64 * MIB,
            crowd_clients: ((10000.0 * scale).round() as usize).clamp(1000, 10000 * 10).min(fd_room),
            crowd_size: MIB,
        }
    }

    /// Whether `phase` is to run (all of them unless `XFER_BENCH_ONLY` names some).
    pub fn runs(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|v| v.iter().any(|p| p == phase))
    }
}
