//! Issue 10: fetch keeps what a failed attempt received and the same command resumes it,
//! and retries what can be retried.
//!
//! The parts: `native` (resume and retry against `xfer serve`: cuts, a replaced file,
//! damaged partials, two fetches into one output, a busy or restarted server, signals).
//!
//! Here: the helpers they share. Tools: strace holds one race's window open; when a tool is
//! missing, the tests that need it say `SKIPPED` and pass, unless `XFER_REQUIRE_TOOLS=1`,
//! which makes a missing tool a failure.

mod native;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::util::proxy::{Action, Plan, Proxy};
use crate::util::*;

/// The kept partial and its record beside the output `out` (`.NAME.xfer.part`, `.info`).
pub fn partial_of(out: &Path) -> (PathBuf, PathBuf) {
    let name = out.file_name().expect("an output file name").to_string_lossy();
    let dir = out.parent().expect("an output directory");
    (dir.join(format!(".{name}.xfer.part")), dir.join(format!(".{name}.xfer.part.info")))
}

/// Length of a file, 0 when there is none.
pub fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Bytes before the body in a version 2 answer for a file called `name`: the header, then
/// the name.
pub fn native_head(name: &str) -> u64 {
    48 + name.len() as u64
}

/// The summary line of a successful fetch (`fetched N bytes …`), or the whole stderr.
pub fn summary(o: &Output) -> String {
    let err = stderr_of(o);
    err.lines().find(|l| l.starts_with("fetched ")).map_or(err.clone(), str::to_string)
}

/// Lines of stderr that announce a retry.
pub fn retry_lines(err: &str) -> Vec<String> {
    err.lines().filter(|l| l.contains("; retrying in ")).map(str::to_string).collect()
}

/// Something done to a kept partial and its record (their paths) between two runs.
pub type Damage<'a> = Box<dyn Fn(&Path, &Path) + 'a>;

/// Asserts that a fetch into `out` either succeeded with exactly `expected`, or failed and
/// left nothing at `out`: never a success with other bytes, never bytes left at `out` by a
/// failure. Returns whether it succeeded.
pub fn assert_exact_or_clean_failure(out: &Path, o: &Output, expected: &[u8], what: &str) -> bool {
    if o.status.success() {
        let got = std::fs::read(out).unwrap_or_else(|e| panic!("{what}: exit 0 but {}: {e}", out.display()));
        assert!(
            got == expected,
            "{what}: exit 0 with WRONG bytes at the output ({} bytes, expected {})\n{}",
            got.len(),
            expected.len(),
            describe(o)
        );
        true
    } else {
        assert!(!out.exists(), "{what}: the fetch failed but left {}\n{}", out.display(), describe(o));
        assert!(!stderr_of(o).contains("panicked"), "{what}: panic\n{}", describe(o));
        false
    }
}

/// Spawns a prepared fetch command with stderr collected (stdout discarded).
pub fn spawn_collected(cmd: &mut Command) -> (Child, Collected) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn xfer fetch");
    let err = Collected::spawn(child.stderr.take().unwrap());
    (child, err)
}

/// Waits (up to `secs`) for a spawned fetch to exit; kills it and fails the test if it does
/// not. Returns its exit code (`None`: killed by a signal) once its stderr is complete.
pub fn finish(child: &mut Child, err: &Collected, secs: u64, what: &str) -> Option<i32> {
    let Some(st) = wait_child_exit(child, Duration::from_secs(secs)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: fetch still running after {secs} s; stderr:\n{}", err.text());
    };
    assert!(err.wait_eof(Duration::from_secs(5)), "{what}: stderr still open after the exit");
    st.code()
}

/// A proxy whose every connection is cut (FIN) at stream byte `at`; `fetch --retry 0` through
/// it into `out` must fail with exit 3 and keep exactly the bytes before the cut. Afterwards
/// the proxy forwards cleanly. Returns the kept length.
pub fn cut_once(proxy: &Proxy, source: &str, out: &Path, at: u64, head: u64, extra: &[&str]) -> u64 {
    proxy.set_plan(Plan::down(at, Action::Cut));
    let fired = proxy.fired();
    let mut args = vec!["--retry", "0"];
    args.extend_from_slice(extra);
    let res = fetch_default(source, out, &args);
    proxy.set_plan(Plan::clean());
    assert_eq!(proxy.fired(), fired + 1, "test design: the cut did not happen\n{}", describe(&res));
    assert_failed(&res, &[3], "a transfer cut by the network");
    let line = &error_lines(&res)[0];
    let (part, info) = partial_of(out);
    assert!(
        line.contains("kept") && line.contains("run the same command again to resume"),
        "a cut transfer must say what it kept and how to resume: {line}"
    );
    assert!(!out.exists(), "a cut transfer left something at the output {}", out.display());
    assert!(
        part.exists() && info.exists(),
        "no partial and record kept after a cut: {:?}",
        dir_names(out.parent().unwrap())
    );
    let kept = len_of(&part);
    assert_eq!(kept, at - head, "the partial must hold every byte that arrived before the cut\n{}", describe(&res));
    kept
}

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

/// Whether `tool` (an absolute path) is installed; if not, says `SKIPPED: what` and returns
/// false, or fails the test when `XFER_REQUIRE_TOOLS=1`.
pub fn have_tool(tool: &str, what: &str) -> bool {
    if Path::new(tool).exists() {
        return true;
    }
    let why = format!("{tool} is not installed");
    assert!(std::env::var("XFER_REQUIRE_TOOLS").as_deref() != Ok("1"), "{what}: {why} (XFER_REQUIRE_TOOLS=1)");
    skipped(what, &why);
    false
}
