//! aria2c against the server: one file split over several ranged connections, from one
//! server and from two serving the same file at once, verified by aria2c's own SHA-256
//! check.

use super::*;

/// `aria2c -x4 -s4` into `dir/out.bin` from `urls`, with `--checksum` when given.
fn aria2c(bin: &Path, dir: &Path, urls: &[&str], checksum: Option<&str>) -> Output {
    let mut args = vec![
        "--no-conf",
        "-x4",
        "-s4",
        "--min-split-size=1M",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--download-result=hide",
        "--max-tries=1",
        "--timeout=30",
        "-o",
        "out.bin",
    ];
    let sum = checksum.map(|c| format!("--checksum=sha-256={c}"));
    args.extend(sum.as_deref());
    args.extend_from_slice(urls);
    run_in(dir, bin, &args, 120)
}

#[test]
fn aria2c_splits_over_connections_and_servers_and_checks_the_sha256() {
    let Some(aria2_bin) = tool("aria2c", "aria2c") else { return };
    let dir = tempdir();
    let data = random_bytes(8 * MIB as usize + 5, 921);
    let path = write_file(dir.path(), "a.bin", &data);
    let mut one = Server::settled(&path, &[]);
    let two = Server::start(&path, &[]);
    let (url1, url2) = (banner_url(&one), banner_url(&two));
    let sha = hex(&sha256(&data));
    assert_eq!(wait_sha256(one.addr, "a.bin"), sha, "the server's SHA-256");
    let copy = |sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        d
    };
    let ranged = |server: &Server| {
        http_log(&server.stderr()).into_iter().filter(|l| l.path == "/a.bin" && l.status == 206).count()
    };

    // One server, four connections: exact, and aria2c's SHA-256 check passes.
    let d = copy("one");
    let r = aria2c(&aria2_bin, &d, &[&url1], Some(&sha));
    assert_ok(&r, "aria2c -x4 -s4 --checksum");
    assert!(std::fs::read(d.join("out.bin")).unwrap() == data, "aria2c from one server: the copy differs");
    let split = logged_count(&one, 5, 2, |l| l.path == "/a.bin" && l.status == 206);
    assert!(split >= 2, "aria2c did not split (ranged responses: {split}):\n{}", one.stderr());

    // The check is real: a wrong digest fails.
    let d = copy("wrong");
    let r = aria2c(&aria2_bin, &d, &[&url1], Some(&"0".repeat(64)));
    assert!(!r.status.success(), "aria2c accepted a wrong checksum:\n{}", describe(&r));

    // Two servers at once: each serves part of the file.
    let before = (ranged(&one), ranged(&two));
    let d = copy("two");
    let r = aria2c(&aria2_bin, &d, &[&url1, &url2], Some(&sha));
    assert_ok(&r, "aria2c from two servers");
    assert!(std::fs::read(d.join("out.bin")).unwrap() == data, "aria2c from two servers: the copy differs");
    let asked = logged_count(&two, 5, 1, |l| l.method == "GET" && l.path == "/a.bin");
    assert!(asked >= 1, "the second server was not asked:\n{}", two.stderr());
    let more = wait_until(Duration::from_secs(5), || ranged(&one) + ranged(&two) > before.0 + before.1);
    assert!(more, "no ranged request from two servers");
    one.assert_healthy();
}
