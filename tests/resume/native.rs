//! Resume and retry against `xfer serve` (the native protocol): a cut transfer is kept and
//! the same command fetches only the rest; the default retries do that within one command;
//! a partial never turns into a wrong file, whatever happened to it or to the server's file;
//! two fetches into one output never mix; a busy or restarted server is waited for; a
//! signal keeps the partial (and `--no-resume` keeps nothing).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::util::proxy::{Plan, Proxy};
use crate::util::raw::{self, stalled_client};

const NAME: &str = "data.bin";

/// A served file of `size` pseudo-random bytes called `data.bin`, an empty output
/// directory, and the server.
struct Setup {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    path: PathBuf,
    server: Server,
    outdir: PathBuf,
}

fn setup(size: u64, seed: u64, extra: &[&str]) -> Setup {
    let dir = tempdir();
    let data = random_bytes(size as usize, seed);
    let path = write_file(dir.path(), NAME, &data);
    let server = Server::start(&path, extra);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    Setup { dir, data, path, server, outdir }
}

/// Stream position 60 % of the way into the body.
fn at_60(size: u64) -> u64 {
    native_head(NAME) + size * 6 / 10
}

/// Replaces the served file by rename with `data`, and waits (10 s at most) until the
/// server answers with the new version.
fn replace_served(s: &Setup, data: &[u8]) {
    let tmp = write_file(s.dir.path(), "next.tmp", data);
    std::fs::rename(&tmp, &s.path).unwrap();
    let want = digest(data);
    let seen = wait_until(Duration::from_secs(10), || {
        ok_digest(&raw::request_header(s.server.addr, None, None).1) == Some(want)
    });
    assert!(seen, "the server did not take up the replaced file within 10 s:\n{}", s.server.stderr());
}

fn ok_digest(r: &encoding::xfer::Response) -> Option<Digest> {
    match r {
        encoding::xfer::Response::Ok { digest, .. } => Some(*digest),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// A cut transfer, resumed by the same command, or by the retries of one command.
// ---------------------------------------------------------------------------------------

#[test]
fn a_cut_transfer_is_kept_and_the_same_command_fetches_only_the_rest() {
    let size = 4 * MIB + 123;
    let s = setup(size, 10_001, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let out = s.outdir.join("copy.bin");
    let head = native_head(NAME);
    let kept = cut_once(&proxy, &proxy.target(), &out, at_60(size), head, &[]);

    let before = proxy.down_bytes();
    let res = fetch_default(&proxy.target(), &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &s.data);
    let passed = proxy.down_bytes() - before;
    assert_eq!(
        passed,
        head + size - kept,
        "the second run must receive only the header and the missing {} bytes ({} passed)",
        size - kept,
        passed
    );
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));
    assert_eq!(dir_names(&s.outdir), vec!["copy.bin"], "the partial and its record must be gone");
}

#[test]
fn default_retries_resume_a_cut_transfer_within_one_command() {
    let size = 4 * MIB + 77;
    let s = setup(size, 10_002, &[]);
    let cut = at_60(size);
    let proxy = Proxy::start(s.server.addr, Plan::down(cut, crate::util::proxy::Action::Cut));
    let out = s.outdir.join("copy.bin");
    let res = fetch_default(&proxy.target(), &out, &[]);
    assert_fetched(&out, &res, &s.data);
    assert_eq!(proxy.fired(), 1, "test design: the cut must happen once (the rest is shorter than the cut)");
    let retries = retry_lines(&stderr_of(&res));
    assert_eq!(retries.len(), 1, "one cut, one retry:\n{}", stderr_of(&res));
    assert!(retries[0].contains("(1 of 5)"), "the retry line counts against the default 5: {}", retries[0]);
    let head = native_head(NAME);
    let got = lost_after(&retries[0]).unwrap_or_else(|| panic!("the retry line must say how much arrived"));
    assert!(summary(&res).contains(&format!("resuming at {got}")), "summary: {}", summary(&res));
    // Everything before the cut once, the rest once, and two headers: not 1.6 times the
    // file. (`got` is `cut - head`, unless the close reached fetch as a reset that lost some.)
    assert_eq!(proxy.down_bytes(), cut + head + size - got, "bytes through the proxy");
    assert_eq!(dir_names(&s.outdir), vec!["copy.bin"]);
}

// ---------------------------------------------------------------------------------------
// The server's file changes between attempts.
// ---------------------------------------------------------------------------------------

#[test]
fn a_file_replaced_between_attempts_is_fetched_new_and_whole() {
    let size = 2 * MIB + 5;
    let s = setup(size, 10_003, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let head = native_head(NAME);
    // The same size (only the digest tells), then a file shorter than what was kept (the
    // resumed offset is past its end).
    for (i, new_size) in [size, MIB / 2].into_iter().enumerate() {
        let what = format!("replaced by {new_size} bytes");
        let out = s.outdir.join(format!("copy{i}.bin"));
        let current = std::fs::read(&s.path).unwrap();
        let kept = cut_once(&proxy, &proxy.target(), &out, head + current.len() as u64 * 6 / 10, head, &[]);
        assert!(kept > new_size || new_size == size, "test design");
        let new = random_bytes(new_size as usize, 10_100 + i as u64);
        replace_served(&s, &new);
        let res = fetch_default(&proxy.target(), &out, &["--retry", "0"]);
        assert_fetched(&out, &res, &new);
        assert!(!summary(&res).contains("resuming"), "{what}: resumed a partial of the old file: {}", summary(&res));
        let (part, info) = partial_of(&out);
        assert!(!part.exists() && !info.exists(), "{what}: the old partial was left: {:?}", dir_names(&s.outdir));
    }
}

// ---------------------------------------------------------------------------------------
// A kept partial that is damaged, or does not belong to this source or version.
// ---------------------------------------------------------------------------------------

/// Makes a partial of `s`'s file for `out` by a cut, damages it with `damage`, and runs the
/// same command again: exactly the file, or a clean failure. Returns the second run.
fn damaged(
    s: &Setup,
    proxy: &Proxy,
    out: &std::path::Path,
    damage: impl FnOnce(&std::path::Path, &std::path::Path),
) -> Output {
    let size = s.data.len() as u64;
    cut_once(proxy, &proxy.target(), out, at_60(size), native_head(NAME), &[]);
    let (part, info) = partial_of(out);
    damage(&part, &info);
    let res = fetch_default(&proxy.target(), out, &["--retry", "0"]);
    let what = format!("damaged partial for {}", out.display());
    assert_exact_or_clean_failure(out, &res, &s.data, &what);
    res
}

#[test]
fn a_flipped_byte_in_the_partial_restarts_from_zero_never_a_wrong_file() {
    let size = 2 * MIB + 9;
    let s = setup(size, 10_004, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let out = s.outdir.join("copy.bin");
    let res = damaged(&s, &proxy, &out, |part, _| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().read(true).write(true).open(part).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 1000).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], 1000).unwrap();
    });
    assert!(res.status.success(), "a bad prefix must be thrown away and the file fetched again:\n{}", describe(&res));
    assert!(
        stderr_of(&res).contains("starting again from zero"),
        "stderr must say the partial was thrown away:\n{}",
        stderr_of(&res)
    );
    assert_eq!(dir_names(&s.outdir), vec!["copy.bin"]);
}

#[test]
fn a_truncated_or_overlong_partial_never_gives_a_wrong_file() {
    let size = 2 * MIB + 11;
    let s = setup(size, 10_005, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    // Cut to half: still a prefix, so it is resumed from there.
    let out = s.outdir.join("half.bin");
    let mut half = 0;
    let res = damaged(&s, &proxy, &out, |part, _| {
        half = len_of(part) / 2;
        std::fs::File::options().write(true).open(part).unwrap().set_len(half).unwrap();
    });
    assert!(res.status.success(), "a shorter prefix is still a prefix:\n{}", describe(&res));
    assert!(summary(&res).contains(&format!("resuming at {half}")), "summary: {}", summary(&res));
    // Emptied: nothing to resume.
    let out = s.outdir.join("empty.bin");
    let res = damaged(&s, &proxy, &out, |part, _| {
        std::fs::File::options().write(true).open(part).unwrap().set_len(0).unwrap();
    });
    assert!(res.status.success(), "an empty partial:\n{}", describe(&res));
    // Longer than the file, garbage after the real prefix.
    let out = s.outdir.join("long.bin");
    let res = damaged(&s, &proxy, &out, |part, _| {
        let mut f = std::fs::OpenOptions::new().append(true).open(part).unwrap();
        f.write_all(&random_bytes(MIB as usize, 1)).unwrap();
    });
    assert!(res.status.success(), "an overlong partial:\n{}", describe(&res));
    let mut names = dir_names(&s.outdir);
    names.sort();
    assert_eq!(names, vec!["empty.bin", "half.bin", "long.bin"], "partials or records left behind");
}

#[test]
fn a_partial_recorded_for_another_source_or_version_is_not_resumed() {
    let size = 2 * MIB + 13;
    let s = setup(size, 10_006, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let edit = |info: &std::path::Path, from: &str, to: &str| {
        let text = std::fs::read_to_string(info).unwrap();
        assert!(text.contains(from), "test design: the record has no `{from}`:\n{text}");
        std::fs::write(info, text.replacen(from, to, 1)).unwrap();
    };
    let other = blake3::hash(b"another version").to_hex().to_string();
    let mine = blake3::Hash::from_bytes(digest(&s.data)).to_hex().to_string();
    let cases: Vec<(&str, Damage)> = vec![
        (
            "another source",
            Box::new(|_, i| edit(i, &format!("source xfer://{}", proxy.target()), "source xfer://127.0.0.1:9")),
        ),
        ("another version", Box::new(|_, i| edit(i, &format!("blake3 {mine}"), &format!("blake3 {other}")))),
        ("a damaged record", Box::new(|_, i| std::fs::write(i, "xfer partial 1\nsource \nblake3 zz\n").unwrap())),
    ];
    for (i, (what, damage)) in cases.into_iter().enumerate() {
        let out = s.outdir.join(format!("copy{i}.bin"));
        // The partial's bytes are made wrong too: resuming them would surely give a wrong file.
        let res = damaged(&s, &proxy, &out, |part, info| {
            let n = len_of(part);
            std::fs::write(part, random_bytes(n as usize, 77)).unwrap();
            damage(part, info);
        });
        assert!(res.status.success(), "{what}: a fresh fetch must succeed:\n{}", describe(&res));
        // Not resumed, not even once to find out the bytes were wrong: the record said not to.
        let err = stderr_of(&res);
        assert!(
            !summary(&res).contains("resuming") && !err.contains("starting again"),
            "{what}: resumed from a partial it must not trust:\n{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Two fetches into one output.
// ---------------------------------------------------------------------------------------

#[test]
fn two_fetches_into_one_output_never_mix_the_second_is_told_it_is_locked() {
    let size = 8 * MIB;
    let s = setup(size, 10_007, &[]);
    // About 6 MB/s: the first fetch is surely still writing when the second starts.
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(s.server.addr, slow);
    let out = s.outdir.join("copy.bin");
    let (part, _) = partial_of(&out);
    let (mut first, first_err) = spawn_collected(&mut fetch_default_command(&proxy.target(), &out, &[]));
    let writing = wait_until(Duration::from_secs(20), || len_of(&part) >= MIB);
    assert!(writing, "the first fetch did not get going: {:?}\n{}", dir_names(&s.outdir), first_err.text());
    let second = fetch_default(&s.server.target(), &out, &[]);
    assert_failed(&second, &[5], "a second fetch into an output being written");
    assert!(
        error_lines(&second)[0].contains("another xfer fetch is writing"),
        "the second fetch must say why: {}",
        describe(&second)
    );
    proxy.unthrottle();
    assert_eq!(finish(&mut first, &first_err, 60, "the first fetch"), Some(0), "{}", first_err.text());
    assert!(std::fs::read(&out).unwrap() == s.data, "the output is not exactly the file");
    assert_eq!(dir_names(&s.outdir), vec!["copy.bin"]);

    // Started together, several times: each ends exact or locked out, never a mixed output.
    let small = setup(2 * MIB, 10_008, &[]);
    for round in 0..4 {
        let out = small.outdir.join(format!("race{round}.bin"));
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (target, out) = (small.server.target(), out.clone());
                std::thread::spawn(move || fetch_default(&target, &out, &[]))
            })
            .collect();
        let results: Vec<Output> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        for r in &results {
            assert!(matches!(r.status.code(), Some(0 | 5)), "round {round}: neither done nor locked:\n{}", describe(r));
        }
        assert!(results.iter().any(|r| r.status.success()), "round {round}: neither fetch succeeded");
        assert!(std::fs::read(&out).unwrap() == small.data, "round {round}: the output is not exactly the file");
    }
    let left: Vec<String> = dir_names(&small.outdir).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "partials or records left after the races: {left:?}");
}

/// Whether strace can trace here (installed, and ptrace allowed); says SKIPPED if not.
fn strace_works(what: &str) -> bool {
    const STRACE: &str = "/usr/bin/strace";
    if !have_tool(STRACE, what) {
        return false;
    }
    let ok = Command::new(STRACE).args(["-qq", "-e", "trace=none", "true"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("XFER_REQUIRE_TOOLS").as_deref() != Ok("1"), "{what}: strace cannot trace here");
        skipped(what, "strace cannot trace here (ptrace not allowed)");
    }
    ok
}

/// A second fetch that opens the partial just before the first one renames it into place,
/// and takes the lock just after, must not touch the finished output. strace delays the
/// second fetch's flock(2) by 2 s to hold that window open; the second fetch then fails to
/// connect (nothing listens where it asks).
#[test]
fn a_fetch_racing_one_that_finishes_never_truncates_its_output() {
    let what = "a fetch racing one that finishes";
    if !strace_works(what) {
        return;
    }
    let s = setup(8 * MIB, 10_013, &[]);
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(s.server.addr, slow);
    let out = s.outdir.join("copy.bin");
    let (part, _) = partial_of(&out);
    let (mut first, first_err) = spawn_collected(&mut fetch_default_command(&proxy.target(), &out, &[]));
    assert!(
        wait_until(Duration::from_secs(20), || part.exists()),
        "the first fetch did not start:\n{}",
        first_err.text()
    );
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let trace = s.dir.path().join("strace.txt");
    let mut cmd = Command::new("/usr/bin/strace");
    cmd.args(["-f", "-qq", "-e", "trace=openat,flock", "-e", "inject=flock:delay_enter=2000000", "-o"])
        .arg(&trace)
        .args([bin(), "fetch"])
        .arg(nobody.to_string())
        .arg(&out)
        .args(["--retry", "0"])
        .env_remove("XFER_TOKEN");
    let (mut second, second_err) = spawn_collected(&mut cmd);
    let opened = format!("{}\", O_RDWR", part.display());
    let traced = || std::fs::read_to_string(&trace).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(10), || traced().contains(&opened));
    assert!(ready, "test design: the second fetch did not open the partial:\n{}", traced());
    // The first fetch now finishes and renames the partial over the output, while the
    // second waits to lock what it opened.
    proxy.unthrottle();
    assert_eq!(finish(&mut first, &first_err, 30, "the first fetch"), Some(0), "{}", first_err.text());
    assert!(std::fs::read(&out).unwrap() == s.data, "test design: the first fetch did not finish first");
    finish(&mut second, &second_err, 30, "the second fetch");
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == s.data,
        "the output the first fetch finished (exit 0) was changed by the second: now {} bytes of {}\n\
         second fetch:\n{}",
        got.len(),
        s.data.len(),
        second_err.text()
    );
}

// ---------------------------------------------------------------------------------------
// A busy server; a server that goes away and comes back.
// ---------------------------------------------------------------------------------------

#[test]
fn a_busy_server_is_retried_after_its_hint_until_a_slot_frees() {
    let s = setup(8 * MIB, 10_009, &["--max-clients", "1"]);
    let held = stalled_client(s.server.addr, None);
    let out = s.outdir.join("copy.bin");
    let started = Instant::now();
    let (mut child, err) = spawn_collected(&mut fetch_default_command(&s.server.target(), &out, &[]));
    let refused = wait_until(Duration::from_secs(10), || !retry_lines(&err.text()).is_empty());
    assert!(refused, "no retry line while the only slot is held:\n{}", err.text());
    // The subject: the slot stays taken for about 3 s.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed()));
    raw::reset(held);
    let code = finish(&mut child, &err, 30, "fetch from a busy server");
    let text = err.text();
    assert_eq!(code, Some(0), "the fetch must succeed once the slot is free:\n{text}");
    assert!(std::fs::read(&out).unwrap() == s.data, "not exactly the file");
    let retries = retry_lines(&text);
    assert!(retries.len() >= 2, "expected retries for about 2.5 s of busy:\n{text}");
    for l in &retries {
        assert!(l.contains("busy"), "the retry line should say why: {l}");
        // The server's hint is 1 s; the first backoff alone would be 0.4-0.6 s.
        assert!(l.contains("retrying in 1.0 s"), "the server's 1 s hint was not honoured: {l}");
    }
}

#[test]
fn a_server_killed_mid_transfer_and_restarted_is_resumed_by_the_retries() {
    // Large enough that what the dead server's socket still held does not finish it.
    let size = 16 * MIB;
    let mut s = setup(size, 10_010, &[]);
    let port = s.server.addr.port().to_string();
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(s.server.addr, slow);
    let out = s.outdir.join("copy.bin");
    let (part, _) = partial_of(&out);
    let (mut child, err) = spawn_collected(&mut fetch_default_command(&proxy.target(), &out, &["--timeout", "5"]));
    let going = wait_until(Duration::from_secs(20), || len_of(&part) >= 2 * MIB);
    assert!(going, "the transfer did not get going:\n{}", err.text());
    s.server.child.kill().unwrap();
    s.server.wait_exit(10).expect("the killed server is gone");
    // The server stays away for two attempts: the lost transfer's and one that finds nobody.
    let waited = wait_until(Duration::from_secs(10), || retry_lines(&err.text()).len() >= 2);
    assert!(waited, "fetch did not retry while the server was down:\n{}", err.text());
    proxy.set_plan(Plan::clean());
    proxy.unthrottle();
    let before = proxy.down_bytes();
    let _back = Server::start(&s.path, &["--port", &port]);
    let code = finish(&mut child, &err, 60, "fetch across a server restart");
    let text = err.text();
    assert_eq!(code, Some(0), "the retries must outlast the restart:\n{text}");
    assert!(std::fs::read(&out).unwrap() == s.data, "not exactly the file");
    let fetched = text.lines().find(|l| l.starts_with("fetched ")).unwrap_or_default();
    assert!(
        fetched.contains("resuming at"),
        "what arrived before the server died must be resumed, not fetched again ({} bytes after the restart):\n{text}",
        proxy.down_bytes() - before
    );
}

/// A run that resumes a kept partial and fails before the first byte (the server not
/// there, or silent) must keep the partial for the next run, as the first failure did.
#[test]
fn a_resumed_fetch_that_fails_before_any_byte_keeps_the_partial() {
    let size = 2 * MIB + 17;
    let s = setup(size, 10_014, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let out = s.outdir.join("copy.bin");
    let kept = cut_once(&proxy, &proxy.target(), &out, at_60(size), native_head(NAME), &[]);
    // The connection is reset before any answer.
    proxy.set_plan(Plan::down(0, crate::util::proxy::Action::Reset));
    let res = fetch_default(&proxy.target(), &out, &["--retry", "0"]);
    assert_eq!(res.status.code(), Some(3), "a reset before the answer:\n{}", describe(&res));
    let (part, info) = partial_of(&out);
    assert!(
        len_of(&part) == kept && info.exists(),
        "the partial of the first run ({kept} bytes) must survive a run that received nothing; \
         left: {:?} ({} bytes)\n{}",
        dir_names(&s.outdir),
        len_of(&part),
        describe(&res)
    );
    proxy.set_plan(Plan::clean());
    let res = fetch_default(&proxy.target(), &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &s.data);
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));
}

/// With a token: a cut authenticated transfer resumes (the offset is part of what both
/// sides prove); a refusal that will not change (a wrong token) ends the kept partial,
/// where a failure to reach the server keeps it.
#[test]
fn an_authenticated_transfer_resumes_and_a_refusal_ends_the_partial() {
    let size = 2 * MIB + 29;
    let tokens = tempdir();
    let right = secret_file(tokens.path(), "right", b"sesame\n");
    let wrong = secret_file(tokens.path(), "wrong", b"open sesame\n");
    let s = setup(size, 10_015, &["--token-file", right.to_str().unwrap()]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let out = s.outdir.join("copy.bin");
    let with = |f: &std::path::Path| vec!["--token-file".to_string(), f.to_str().unwrap().to_string()];
    let right_args = with(&right);
    let right_args: Vec<&str> = right_args.iter().map(String::as_str).collect();
    // The stream: a challenge, then the header, the name and the server's MAC, then the body.
    let head = 48 + native_head(NAME) + 32;
    let kept = cut_once(&proxy, &proxy.target(), &out, head + size * 6 / 10, head, &right_args);
    let mut args = vec!["--retry", "0"];
    args.extend_from_slice(&right_args);
    let res = fetch_default(&proxy.target(), &out, &args);
    assert_fetched(&out, &res, &s.data);
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));

    std::fs::remove_file(&out).unwrap();
    cut_once(&proxy, &proxy.target(), &out, head + size / 2, head, &right_args);
    let wrong_args = with(&wrong);
    let mut args = vec!["--retry", "0"];
    args.extend(wrong_args.iter().map(String::as_str));
    let res = fetch_default(&proxy.target(), &out, &args);
    assert_failed(&res, &[6], "a wrong token");
    assert!(dir_names(&s.outdir).is_empty(), "a refusal must end the partial: {:?}", dir_names(&s.outdir));
}

// ---------------------------------------------------------------------------------------
// Signals.
// ---------------------------------------------------------------------------------------

/// Starts a default fetch (plus `extra`) of `s` through a slow proxy, interrupts it with
/// SIGINT once 1 MiB is written to its temporary file, and asserts exit 130. Returns the proxy and stderr.
fn interrupt(s: &Setup, out: &std::path::Path, extra: &[&str]) -> (Proxy, String) {
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(s.server.addr, slow);
    let (mut child, err) = spawn_collected(&mut fetch_default_command(&proxy.target(), out, extra));
    // Bytes are handed to the writer a receive buffer (4 MiB) at a time: wait for the first.
    let written = || {
        let names = dir_names(out.parent().unwrap());
        names.iter().any(|n| n.ends_with(".part") && len_of(&out.parent().unwrap().join(n)) >= MIB)
    };
    let going = wait_until(Duration::from_secs(20), written);
    assert!(going, "the transfer did not get going:\n{}", err.text());
    send_signal(child.id(), libc::SIGINT);
    let code = finish(&mut child, &err, 10, "fetch interrupted by SIGINT");
    assert!(proxy.down_bytes() < s.data.len() as u64, "test design: the whole file got through first");
    assert_eq!(code, Some(130), "SIGINT exits 130:\n{}", err.text());
    assert!(!out.exists(), "an interrupted fetch left something at the output");
    // The interrupted connection's last bytes must be counted before the caller counts more.
    assert!(wait_until(Duration::from_secs(5), || proxy.live() == 0), "the interrupted connection lingers");
    (proxy, err.text())
}

#[test]
fn sigint_keeps_the_partial_and_the_same_command_resumes() {
    let size = 8 * MIB;
    let s = setup(size, 10_011, &[]);
    let out = s.outdir.join("copy.bin");
    let (proxy, text) = interrupt(&s, &out, &[]);
    let (part, info) = partial_of(&out);
    let kept = len_of(&part);
    assert!(
        kept > 0 && info.exists(),
        "SIGINT must keep the partial and its record: {:?}\n{text}",
        dir_names(&s.outdir)
    );
    assert!(text.contains("interrupted (SIGINT); kept"), "stderr must say what was kept:\n{text}");
    proxy.set_plan(Plan::clean());
    proxy.unthrottle();
    let before = proxy.down_bytes();
    let res = fetch_default(&proxy.target(), &out, &[]);
    assert_fetched(&out, &res, &s.data);
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));
    assert_eq!(proxy.down_bytes() - before, native_head(NAME) + size - kept, "only the rest must be fetched");
    assert_eq!(dir_names(&s.outdir), vec!["copy.bin"]);
}

#[test]
fn sigint_with_no_resume_keeps_nothing() {
    let s = setup(8 * MIB, 10_012, &[]);
    let out = s.outdir.join("copy.bin");
    let (_proxy, text) = interrupt(&s, &out, &["--no-resume"]);
    assert!(dir_names(&s.outdir).is_empty(), "--no-resume kept {:?}\n{text}", dir_names(&s.outdir));
    assert!(text.contains("nothing written"), "stderr:\n{text}");
}

#[test]
fn sigint_while_a_resumed_fetch_waits_for_the_server_keeps_the_partial() {
    let size = 2 * MIB + 19;
    let s = setup(size, 10_015, &[]);
    let proxy = Proxy::start(s.server.addr, Plan::clean());
    let out = s.outdir.join("copy.bin");
    let kept = cut_once(&proxy, &proxy.target(), &out, at_60(size), native_head(NAME), &[]);
    // The server's answer is held back for 10 s: the fetch waits for its header.
    let held = crate::util::proxy::Dir { delay: Duration::from_secs(10), ..Default::default() };
    proxy.set_plan(Plan { down: held, ..Plan::default() });
    let up = proxy.up_bytes();
    let (mut child, err) = spawn_collected(&mut fetch_default_command(&proxy.target(), &out, &[]));
    let asked = wait_until(Duration::from_secs(10), || proxy.up_bytes() >= up + 48);
    assert!(asked, "the fetch did not send its request:\n{}", err.text());
    send_signal(child.id(), libc::SIGINT);
    assert_eq!(finish(&mut child, &err, 10, "SIGINT while waiting"), Some(130), "{}", err.text());
    let (part, info) = partial_of(&out);
    assert!(
        len_of(&part) == kept && info.exists(),
        "SIGINT must keep the partial ({kept} bytes) it was about to resume; left: {:?} ({} bytes)\n{}",
        dir_names(&s.outdir),
        len_of(&part),
        err.text()
    );
}

#[test]
fn sigint_after_the_header_but_before_any_body_byte_keeps_nothing() {
    // A server that answers its header, then sends nothing: the fetch has recorded what
    // it is fetching but holds no byte of it, so there is nothing worth keeping.
    let digest = [7u8; 32];
    let fake = crate::util::fake::Fake::start(move |mut s, stop| {
        use std::io::Write;
        let mut head = [0u8; encoding::xfer::MAX_RESPONSE_HEAD];
        let n = encoding::xfer::encode_ok_in(encoding::xfer::VERSION, 1000, &digest, b"f.bin", None, &mut head);
        let _ = s.write_all(&head[..n]);
        let _ = stop.recv_timeout(Duration::from_secs(20));
    });
    let dir = tempdir();
    let out = dir.path().join("copy.bin");
    let (mut child, err) = spawn_collected(&mut fetch_default_command(&fake.target(), &out, &[]));
    let (part, info) = partial_of(&out);
    let recorded = wait_until(Duration::from_secs(10), || info.exists());
    assert!(recorded, "the fetch never recorded its partial: {:?}\n{}", dir_names(dir.path()), err.text());
    send_signal(child.id(), libc::SIGINT);
    assert_eq!(finish(&mut child, &err, 10, "SIGINT before any byte"), Some(130), "{}", err.text());
    assert!(err.text().contains("interrupted (SIGINT); nothing written"), "stderr:\n{}", err.text());
    assert!(!part.exists() && !info.exists(), "left behind: {:?}", dir_names(dir.path()));
    fake.assert_request_ok();
}
