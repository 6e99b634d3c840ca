//! What every phase shares, set up once before the first: the configuration, the xfer binary
//! and the peers found, the open-file limit, which cores servers and load run on, the
//! data files (incompressible bytes in a temp directory that nginx serves as its root), and
//! a token file for the servers that require one. It prints the banner that says all of
//! that. Beside those, what phases that write files share: a tmpfs directory for outputs,
//! and the BLAKE3 of a file, to check an output against.
//!
//! It must never measure or judge anything: the phases do, through compare.rs. After
//! `Bench::start` returns it is read-only; the results go to report::Results.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::config::{Cfg, MIB};
use crate::peers::{self, Server, Tools, first_line, pin_self};
use crate::proto::Credential;
use crate::readings::nproc;

/// The data files, by name in the data directory (nginx is asked for `/NAME`).
pub const SMALL_FILE: &str = "small.bin";
/// The small file's size: one request and one response each fit in a packet.
pub const SMALL_SIZE: u64 = 80;
pub const FAN_FILE: &str = "fan.bin";
pub const BIG_FILE: &str = "big.bin";
pub const STALL_FILE: &str = "stall.bin";
pub const CROWD_FILE: &str = "crowd.bin";
/// The token file of servers started with one (mode 600, a fresh random token per run).
const TOKEN_FILE: &str = "token";

pub struct Bench {
    pub cfg: Cfg,
    pub bin: PathBuf,
    pub tools: Tools,
    nofile: u64,
    /// Whether this thread (the load generator, and every command it spawns) is on core 1.
    pub pinned: bool,
    pub all_cores: Vec<usize>,
    /// Core 0 for servers, when pinning.
    server_cores: Option<Vec<usize>>,
    data: tempfile::TempDir,
    /// Where fetches write on disk (tmpfs outputs go elsewhere).
    pub out_dir: PathBuf,
    /// The token in the token file, as clients prove it.
    token: Credential,
}

impl Bench {
    /// Reads the environment, pins this thread, prints the banner and writes the data files.
    pub fn start() -> Bench {
        let priority = own_priority();
        let nofile = raise_nofile();
        let cfg = Cfg::from_env(nofile);
        let bin = peers::xfer_bin();
        let tools = Tools::find(cfg.peers);

        // Server on core 0, load (this thread and every command it spawns) on core 1.
        let server_cores: Option<Vec<usize>> = cfg.pin.then(|| vec![0]);
        let all_cores: Vec<usize> = (0..nproc()).collect();
        let pinned = cfg.pin && pin_self(&[1]);

        print_banner(&cfg, nofile, pinned, &bin, &tools);
        if let Some(p) = priority {
            println!("priority: {p}");
        }

        let data = tempfile::Builder::new().prefix("xfer-bench-").tempdir().expect("tempdir");
        let dd = data.path();
        let out_dir = dd.join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let t_gen = Instant::now();
        make_file(&dd.join(SMALL_FILE), SMALL_SIZE, 1);
        make_file(&dd.join(FAN_FILE), cfg.fan_size, 2);
        if cfg.runs("fetch") || cfg.runs("resume") {
            make_file(&dd.join(BIG_FILE), cfg.big_size, 3);
        }
        make_file(&dd.join(STALL_FILE), cfg.stall_size, 4);
        make_file(&dd.join(CROWD_FILE), cfg.crowd_size, 5);
        let token = make_token(&dd.join(TOKEN_FILE));
        println!("data: {} ({:.1} s to write)", dd.display(), t_gen.elapsed().as_secs_f64());
        println!();

        Bench { cfg, bin, tools, nofile, pinned, all_cores, server_cores, data, out_dir, token }
    }

    /// The path of a data file.
    pub fn file(&self, name: &str) -> PathBuf {
        self.data.path().join(name)
    }

    /// The cores for servers with `threads` event loops (or workers): core 0 for one, all
    /// cores for more (a second loop needs a core of its own); `None` when not pinning.
    pub fn server_cores(&self, threads: usize) -> Option<&[usize]> {
        if threads > 1 { self.cfg.pin.then_some(&self.all_cores[..]) } else { self.server_cores.as_deref() }
    }

    /// `xfer serve` of the data file `name`, on any free port, without a token.
    pub fn start_xfer(&self, name: &str, threads: usize, cores: Option<&[usize]>) -> Result<Server, String> {
        self.start_xfer_with(name, threads, cores, 0, false)
    }

    /// `xfer serve` of the data file `name` on `port` (0: any free one), with
    /// `--token-file` when `token`; the server's targets then carry the token.
    pub fn start_xfer_with(
        &self,
        name: &str,
        threads: usize,
        cores: Option<&[usize]>,
        port: u16,
        token: bool,
    ) -> Result<Server, String> {
        let token_file = self.file(TOKEN_FILE);
        let token = token.then_some((token_file.as_path(), &self.token));
        peers::start_xfer(&self.bin, &self.file(name), threads, cores, port, token)
    }

    /// nginx serving the data directory, or why not.
    pub fn start_nginx(&self, workers: usize, cores: Option<&[usize]>) -> Result<Server, String> {
        match &self.tools.nginx {
            None => Err("nginx not installed".into()),
            Some(p) => peers::start_nginx(p, self.data.path(), workers, cores, self.nofile),
        }
    }
}

fn print_banner(cfg: &Cfg, nofile: u64, pinned: bool, bin: &Path, tools: &Tools) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("# xfer end-to-end benchmark");
    println!("machine: {} cores, {model}, kernel {}", nproc(), kernel.trim());
    println!("scale: {} (XFER_BENCH_SCALE; factor {}); open-file limit {nofile}", cfg.scale_label, cfg.scale);
    println!(
        "pinning: {}",
        if pinned { "servers on core 0, load generator and clients on core 1" } else { "none (fewer than 2 cores)" }
    );
    println!(
        "load generator: one mio thread; body bytes {}",
        if cfg.copy_reads { "copied (read)" } else { "discarded with recv(MSG_TRUNC), no copy" }
    );
    let git = |args: &[&str]| first_line(Command::new("git").arg("-C").arg(env!("CARGO_MANIFEST_DIR")).args(args));
    let dirty = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    println!(
        "xfer: {} (source: commit {}{})",
        bin.display(),
        git(&["rev-parse", "--short", "HEAD"]),
        if dirty { " + uncommitted changes" } else { "" }
    );
    match &tools.nginx {
        Some(p) => println!("nginx: {} ({})", p.display(), first_line(Command::new(p).arg("-v"))),
        None => println!("nginx: not installed (or XFER_BENCH_NO_PEERS) — peer columns skipped"),
    }
    match &tools.curl {
        Some(p) => println!("curl: {}", first_line(Command::new(p).arg("--version"))),
        None => println!("curl: not installed — fetch comparison skipped"),
    }
    match &tools.b3sum {
        Some(p) => println!("b3sum: {}", first_line(Command::new(p).arg("--version"))),
        None => println!("b3sum: not installed — curl -o + b3sum comparison skipped"),
    }
}

/// `XFER_BENCH_AUTOGROUP_NICE=N` (say -15): the bench and every process it starts get a
/// session of their own, and so a scheduler autogroup of their own, whose nice is set to N.
/// With autogroups (`kernel.sched_autogroup_enabled`), a process's nice counts only within
/// its session: a job another user started at nice 19 in its own session still takes an
/// equal share of a core, and its time slices delay every wake-up of a server or client
/// that shares the core. This weighs the bench's group against theirs instead; nothing
/// else is touched. Returns what was done, for the banner.
fn own_priority() -> Option<String> {
    let nice = std::env::var("XFER_BENCH_AUTOGROUP_NICE").ok()?;
    let nice: i32 = match nice.trim().parse() {
        Ok(n) if (-20..=19).contains(&n) => n,
        _ => return Some(format!("XFER_BENCH_AUTOGROUP_NICE={nice:?} is not a nice value; unchanged")),
    };
    // SAFETY: setsid takes no arguments; it fails only for a process-group leader.
    if unsafe { libc::setsid() } < 0 {
        return Some(format!("setsid: {}; priority unchanged", std::io::Error::last_os_error()));
    }
    match std::fs::write("/proc/self/autogroup", nice.to_string()) {
        Ok(()) => Some(format!("a session and autogroup of its own, at nice {nice} (XFER_BENCH_AUTOGROUP_NICE)")),
        Err(e) => Some(format!("/proc/self/autogroup: {e}; a session of its own, priority unchanged")),
    }
}

/// Raises the soft open-file limit to the hard one (every client is a file descriptor, here
/// and in the servers, which inherit the limit); returns the new soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit and setrlimit read and write only the structs they are given.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

/// A fresh random 256-bit token, as hex on the file's first line, mode 600 (xfer warns
/// about a token file others can read).
fn make_token(path: &Path) -> Credential {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("getrandom");
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, format!("{text}\n")).expect("write token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600 token file");
    Credential::new(&text)
}

/// A temporary directory on tmpfs (/dev/shm) with room for two copies of `size`, if any
/// (none with `XFER_BENCH_FETCH_DISK=1`).
pub fn mem_dir(size: u64) -> Option<tempfile::TempDir> {
    if std::env::var("XFER_BENCH_FETCH_DISK").is_ok_and(|v| v == "1") {
        return None;
    }
    let shm = Path::new("/dev/shm");
    // SAFETY: statvfs is a struct of integers, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new("/dev/shm").unwrap();
    // SAFETY: `c` is NUL-terminated and `st` is ours to fill; statvfs keeps neither.
    if !shm.is_dir() || unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < 2 * size + 256 * MIB {
        return None;
    }
    tempfile::Builder::new().prefix("xfer-bench-").tempdir_in(shm).ok()
}

/// The BLAKE3 of a file, as `b3sum` prints it (computed in-process).
pub fn blake3_file(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Deterministic incompressible bytes (xorshift64*), so no layer can shrink the transfer.
fn make_file(path: &Path, size: u64, seed: u64) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).expect("create data file"));
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).expect("write data file");
        left -= n as u64;
    }
    w.flush().expect("flush data file");
}
