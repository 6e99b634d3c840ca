//! What README.md and docs/RELIABILITY.md promise and no other test checked: one test per
//! promise, named after it, each able to fail when the promised behaviour breaks.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::util::proxy::{Action, Plan, Proxy};
use crate::util::*;

// ---------------------------------------------------------------------------------------
// README: "A failed or interrupted fetch leaves nothing behind. An older file at OUT stays
// as it was." Exit code 130: interrupted. A signal's exit code is 128 + its number.
// ---------------------------------------------------------------------------------------

/// Sends `sig` to `xfer fetch` while it is writing its temporary file (through a slow link,
/// so the transfer is surely in progress), without and then with an older output. The
/// fetch must exit with one of `codes`, and the directory must hold exactly what it held
/// before: nothing, or the older output unchanged.
fn interrupted_fetch_leaves_nothing(sig: i32, codes: &[i32], seed: u64) {
    let dir = tempdir();
    let size = 32 * MIB;
    let (path, _) = big_file(dir.path(), "big.bin", size, seed);
    let server = Server::start(&path, &[]);
    // About 6 MB/s, with a small window toward the server: 32 MiB take seconds.
    let slow = Plan::slow_down(64 * 1024, Duration::from_millis(10)).server_rcvbuf(64 * 1024);
    let proxy = Proxy::start(server.addr, slow);
    for old in [None, Some(&b"an older output\n"[..])] {
        let what = format!("signal {sig} to fetch (older output: {})", old.is_some());
        let outdir = dir.path().join(format!("out-{}", old.is_some()));
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("out.bin");
        if let Some(old) = old {
            std::fs::write(&out, old).unwrap();
        }
        let mut child = fetch_command(&proxy.target(), &out, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetch");
        let stderr = Collected::spawn(child.stderr.take().unwrap());
        let from = proxy.down_bytes();
        let writing = wait_until(Duration::from_secs(20), || {
            dir_names(&outdir).iter().any(|n| is_temp_of(n, "out.bin")) && proxy.down_bytes() - from >= 48 + MIB
        });
        assert!(writing, "{what}: the transfer did not get going: {:?}\n{}", dir_names(&outdir), stderr.text());
        send_signal(child.id(), sig);
        let st = wait_child_exit(&mut child, Duration::from_secs(10));
        let Some(st) = st else {
            let _ = child.kill();
            panic!("{what}: fetch still running 10 s after the signal\n{}", stderr.text());
        };
        assert!(proxy.down_bytes() - from < size, "test design: {what}: the whole file got through first");
        assert!(stderr.wait_eof(Duration::from_secs(5)), "{what}: stderr not closed after the exit");
        let left = dir_names(&outdir);
        assert!(
            st.code().is_some_and(|c| codes.contains(&c)),
            "{what}: expected exit code in {codes:?}, got {}; left in the output directory: {left:?}\nstderr:\n{}",
            status_str(&st),
            stderr.text()
        );
        assert_nothing_left(&outdir, &out, old, &what);
    }
}

#[test]
fn fetch_interrupted_by_sigint_exits_130_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGINT, &[130], 2001);
}

#[test]
fn fetch_interrupted_by_sigterm_exits_non_zero_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGTERM, &[130, 143], 2002);
}

#[test]
fn fetch_interrupted_by_sighup_exits_non_zero_and_leaves_nothing() {
    interrupted_fetch_leaves_nothing(libc::SIGHUP, &[129, 130], 2003);
}

// ---------------------------------------------------------------------------------------
// README: "`-` as output writes to stdout, still verified: a mismatch exits 4, though the
// bytes have already gone out."
// ---------------------------------------------------------------------------------------

/// `xfer fetch TARGET - EXTRA...` run in `cwd`.
fn fetch_to_stdout(target: &str, cwd: &Path, extra: &[&str]) -> std::process::Output {
    run_with_timeout(fetch_command(target, Path::new("-"), extra).current_dir(cwd), 60)
}

#[test]
fn fetch_to_stdout_writes_exactly_the_file() {
    let dir = tempdir();
    let data = random_bytes((3 * MIB + 17) as usize, 2010);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &[]);
    let cwd = tempdir();
    let res = fetch_to_stdout(&server.target(), cwd.path(), &[]);
    assert!(res.status.success(), "fetch to stdout failed:\n{}", stderr_of(&res));
    assert!(
        res.stdout == data,
        "stdout: {} bytes, expected exactly the {} bytes of the file",
        res.stdout.len(),
        data.len()
    );
    assert!(error_lines(&res).is_empty(), "success printed an error line:\n{}", stderr_of(&res));
    assert!(dir_names(cwd.path()).is_empty(), "fetch to stdout wrote files: {:?}", dir_names(cwd.path()));
}

#[test]
fn fetch_to_stdout_still_verifies_a_flipped_bit_exits_4() {
    let dir = tempdir();
    let data = random_bytes((4 * MIB) as usize, 2011);
    let path = write_file(dir.path(), "f.bin", &data);
    let server = Server::start(&path, &[]);
    let at = 2 * MIB as usize + 5;
    let proxy = Proxy::start(server.addr, Plan::down(48 + at as u64, Action::Flip(3)));
    let cwd = tempdir();
    let res = fetch_to_stdout(&proxy.target(), cwd.path(), &["--timeout", "5"]);
    assert_eq!(proxy.fired(), 1, "the bit was not flipped");
    assert_failed(&res, &[4], "flipped bit, output to stdout");
    assert!(error_lines(&res)[0].to_lowercase().contains("verif"), "not a verification error:\n{}", describe(&res));
    // The bytes went out, exactly as they arrived: the file with that one bit flipped.
    let mut flipped = data.clone();
    flipped[at] ^= 1 << 3;
    assert!(res.stdout == flipped, "stdout: {} bytes, not the received stream", res.stdout.len());
    assert!(dir_names(cwd.path()).is_empty(), "fetch to stdout wrote files: {:?}", dir_names(cwd.path()));
}
