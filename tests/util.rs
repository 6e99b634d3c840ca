//! The one set of helpers every test file uses: start the real server and read its banner,
//! run the real client, inspect and signal processes, make test files, and wait for events
//! with a bounded deadline.
//!
//! The server under test is in `server`, raw protocol clients in `raw`, the
//! fault-injecting proxy in `proxy`, scripted fake servers in `fake`, a pseudo-terminal
//! in `pty`. Every wait here is
//! bounded in time and in rounds; the caller decides whether a wait that ran out fails the
//! test (it almost always should).

pub mod fake;
pub mod proxy;
pub mod pty;
pub mod raw;
mod server;

pub use server::*;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use xfer::encoding::{self, Digest};

pub const MIB: u64 = 1 << 20;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xfer")
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("xfer-test-").tempdir().expect("tempdir")
}

/// Says clearly that (part of) a test could not run here, instead of passing silently.
pub fn skipped(what: &str, why: &str) {
    eprintln!("SKIPPED: {what}: {why}");
}

// ---------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------

/// xorshift64*: reproducible randomness without a rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// BLAKE3 of `data`.
pub fn digest(data: &[u8]) -> Digest {
    *blake3::hash(data).as_bytes()
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

/// Writes a token file the way a careful user would: readable by its owner only (a token
/// file others can read makes xfer warn on stderr).
pub fn secret_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = write_file(dir, name, data);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod token file");
    p
}

/// Writes a pseudo-random file of `size` bytes in 1 MiB pieces (a large file never sits in
/// memory whole) and returns its path and BLAKE3 digest.
pub fn big_file(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, Digest) {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create big file"));
    let mut h = blake3::Hasher::new();
    let mut left = size;
    for i in 0..size.div_ceil(MIB) {
        let n = left.min(MIB) as usize;
        let piece = random_bytes(n, seed.wrapping_mul(1_000_003).wrapping_add(i));
        h.update(&piece);
        f.write_all(&piece).expect("write big file");
        left -= n as u64;
    }
    f.flush().expect("flush big file");
    (path, *h.finalize().as_bytes())
}

/// Sets a file's mtime an hour back, so that any later write is sure to change it (the
/// server tells versions apart by size and mtime, and the clock that stamps mtime is coarse).
pub fn backdate(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).expect("open to backdate");
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).expect("set mtime");
}

/// Overwrites `path` in place (same inode, same size) with other pseudo-random bytes from
/// byte `from` on, and syncs it.
pub fn overwrite_in_place(path: &Path, from: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::options().write(true).open(path).expect("open to overwrite");
    let size = f.metadata().expect("stat").len();
    let mut at = from;
    for i in 0..size.div_ceil(MIB) {
        if at >= size {
            break;
        }
        let n = (size - at).min(MIB) as usize;
        f.write_all_at(&random_bytes(n, seed.wrapping_add(i)), at).expect("overwrite");
        at += n as u64;
    }
    f.sync_all().expect("sync");
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(5);

/// Polls `cond` until it holds or `limit` has passed (bounded in rounds too); returns
/// whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    let rounds = limit.as_millis() / POLL.as_millis() + 2;
    for _ in 0..rounds {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep(POLL);
    }
    cond()
}

/// Text a child wrote on a pipe (or terminal), collected on a thread until EOF.
#[derive(Clone)]
pub struct Collected {
    text: Arc<Mutex<String>>,
    eof: Arc<AtomicBool>,
}

impl Collected {
    /// Copies everything `r` yields until EOF or an error.
    pub fn spawn(mut r: impl Read + Send + 'static) -> Collected {
        let c = Collected { text: Arc::default(), eof: Arc::default() };
        let (text, eof) = (c.text.clone(), c.eof.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                    Ok(n) => text.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            eof.store(true, Ordering::SeqCst);
        });
        c
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until the writer's end is closed, so the text is complete; returns whether it was.
    pub fn wait_eof(&self, limit: Duration) -> bool {
        wait_until(limit, || self.eof.load(Ordering::SeqCst))
    }
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_child_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut st = None;
    wait_until(limit, || {
        st = child.try_wait().ok().flatten();
        st.is_some()
    });
    st
}

/// An exit status in words, for messages.
pub fn status_str(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Asserts `child` exits with `code` within `limit`, and that its output `log` (complete
/// once the child is gone) shows no panic.
pub fn assert_child_exits(child: &mut Child, log: &Collected, code: i32, limit: Duration, what: &str) {
    match wait_child_exit(child, limit) {
        Some(st) => assert!(
            st.code() == Some(code),
            "{what}: expected exit code {code}, got {}; output:\n{}",
            status_str(&st),
            log.text()
        ),
        None => panic!("{what}: still running after {limit:?}; output:\n{}", log.text()),
    }
    assert!(log.wait_eof(Duration::from_secs(5)), "{what}: output not closed 5 s after the exit:\n{}", log.text());
    let t = log.text();
    assert!(!t.contains("panicked"), "{what}: panicked:\n{t}");
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// Runs `xfer ARGS...` (without `XFER_TOKEN` in the environment), killed after `secs`.
pub fn run_xfer(args: &[&str], secs: u64) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("XFER_TOKEN");
    run_with_timeout(&mut cmd, secs)
}

/// `xfer fetch TARGET OUT --retry 0 --no-resume EXTRA...` (without `XFER_TOKEN`), killed
/// after 60 s: one attempt that keeps nothing, whose every failure the caller sees as it
/// is. Retrying and resuming, fetch's defaults, are tested with [`fetch_default`].
pub fn fetch(target: &str, out: &Path, extra: &[&str]) -> Output {
    run_with_timeout(&mut fetch_command(target, out, extra), 60)
}

/// The command `fetch` runs.
pub fn fetch_command(target: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = fetch_default_command(target, out, &["--retry", "0", "--no-resume"]);
    cmd.args(extra);
    cmd
}

/// `xfer fetch TARGET OUT EXTRA...` with fetch's own defaults (retries, resuming).
pub fn fetch_default(target: &str, out: &Path, extra: &[&str]) -> Output {
    run_with_timeout(&mut fetch_default_command(target, out, extra), 120)
}

/// The command `fetch_default` runs.
pub fn fetch_default_command(target: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("fetch").arg(target).arg(out).args(extra).env_remove("XFER_TOKEN");
    cmd
}

/// Runs `n` fetches of `target` at once into `dir/copyN` and asserts each one got exactly
/// `expected` (the copies are removed once checked).
pub fn assert_concurrent_fetches(target: &str, dir: &Path, n: usize, expected: &Arc<Vec<u8>>) {
    let fetches: Vec<_> = (0..n)
        .map(|i| {
            let out = dir.join(format!("copy{i}"));
            let target = target.to_string();
            std::thread::spawn(move || {
                let res = fetch(&target, &out, &["--quiet"]);
                (out, res)
            })
        })
        .collect();
    for h in fetches {
        let (out, res) = h.join().expect("fetch thread");
        assert_fetched(&out, &res, expected);
        std::fs::remove_file(&out).unwrap();
    }
}

/// Runs a command with a time limit; panics (with the command) if it is exceeded.
pub fn run_with_timeout(cmd: &mut Command, secs: u64) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("command timed out after {secs} s: {desc}");
        }
    }
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Describes a finished command for assertion messages.
pub fn describe(out: &Output) -> String {
    format!("status: {:?}\nstdout: {}\nstderr: {}", out.status, stdout_of(out), stderr_of(out))
}

/// Lines of stderr starting with `xfer:` (a progress bar, if any, is ignored).
pub fn error_lines(o: &Output) -> Vec<String> {
    stderr_of(o).lines().filter(|l| l.trim_start().starts_with("xfer:")).map(str::to_string).collect()
}

/// Asserts a fetch succeeded and wrote exactly `expected` to `out`.
pub fn assert_fetched(out_path: &Path, res: &Output, expected: &[u8]) {
    assert!(res.status.success(), "fetch failed:\n{}", describe(res));
    let got = std::fs::read(out_path).unwrap_or_else(|e| panic!("read {}: {e}\n{}", out_path.display(), describe(res)));
    assert!(got == expected, "fetched {} bytes, expected {} (content differs)", got.len(), expected.len());
}

/// Asserts a command failed with one of `codes`, with exactly one `xfer:` line on stderr
/// (README: errors are one line) and no panic.
pub fn assert_failed(o: &Output, codes: &[i32], what: &str) {
    assert!(
        o.status.code().is_some_and(|c| codes.contains(&c)),
        "{what}: expected exit code in {codes:?}\n{}",
        describe(o)
    );
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "{what}: expected exactly one `xfer:` line on stderr\n{}", describe(o));
    assert!(!stderr_of(o).contains("panicked"), "{what}: panic\n{}", describe(o));
}

/// Lists the names in `dir` (to prove nothing, not even a temporary file, was left behind).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Asserts a failed fetch to `out` left nothing new in `dir`, its only directory entry:
/// no output and no temporary file, or, when there was an older output (`old`), exactly
/// that file with exactly those bytes.
pub fn assert_nothing_left(dir: &Path, out: &Path, old: Option<&[u8]>, what: &str) {
    let names = dir_names(dir);
    match old {
        None => assert!(names.is_empty(), "{what}: left behind in the output directory: {names:?}"),
        Some(old) => {
            let name = out.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(names, vec![name], "{what}: output directory should hold only the older output");
            assert!(std::fs::read(out).unwrap() == old, "{what}: the older output was changed");
        }
    }
}

/// Whether `name` is a temporary file of a fetch to `out_name` (`.NAME.xfer-PID-N.part`).
pub fn is_temp_of(name: &str, out_name: &str) -> bool {
    name.starts_with(&format!(".{out_name}.xfer-")) && name.ends_with(".part")
}
