//! Saving under the server's name: a directory output (existing, or given with a trailing
//! `/`, or no output at all: the current directory), resumed like a file; names from the
//! network reduced to a safe base name or refused (`../x`, `a/b`, control characters, too
//! long, empty, hidden), over HTTP (`Content-Disposition`) and the native protocol (a
//! version 2 name); and a version 1 server, which names nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::*;
use crate::util::encoding::xfer::{self as wire, Request, Status};
use crate::util::proxy::{Plan, Proxy};

/// What a hostile name must come to: saved under this name, or refused.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Saved(&'static [u8]),
    Refused,
}

/// Fetches `source` into the empty directory `outdir` and checks the verdict.
fn check_name(source: &str, outdir: &Path, data: &[u8], verdict: Verdict, what: &str) {
    let res = fetch_default(source, outdir, &["--retry", "0"]);
    match verdict {
        Verdict::Saved(name) => {
            let path = outdir.join(OsStr::from_bytes(name));
            assert_fetched(&path, &res, data);
            let names: Vec<Vec<u8>> =
                std::fs::read_dir(outdir).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
            assert_eq!(names, vec![name.to_vec()], "{what}: saved as something else, or more was left");
            assert!(summary(&res).contains("saved as"), "{what}: the summary must say the name: {}", summary(&res));
        }
        Verdict::Refused => {
            assert_failed(&res, &[4], what);
            let line = &error_lines(&res)[0];
            assert!(line.contains("give an output file name"), "{what}: the error must say what to do: {line}");
            assert!(dir_names(outdir).is_empty(), "{what}: a refused name left {:?}", dir_names(outdir));
        }
    }
}

/// A fresh empty directory inside `dir`.
fn fresh(dir: &Path, i: usize) -> PathBuf {
    let d = dir.join(format!("out{i}"));
    std::fs::create_dir(&d).unwrap();
    d
}

#[test]
fn http_names_from_content_disposition_are_made_safe_or_refused() {
    let long = format!("attachment; filename=\"{}\"", "n".repeat(300));
    let cases: Vec<(String, Verdict)> = vec![
        ("attachment; filename=\"../x\"".into(), Verdict::Saved(b"x")),
        ("attachment; filename=\"a/b\"".into(), Verdict::Saved(b"b")),
        ("attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd".into(), Verdict::Saved(b"passwd")),
        ("attachment; filename*=UTF-8''a%1B%5B2Jb".into(), Verdict::Refused),
        ("attachment; filename*=UTF-8''a%0Ab".into(), Verdict::Refused),
        (long, Verdict::Refused),
        // An empty name: the URL's last segment stands in.
        ("attachment; filename=\"\"".into(), Verdict::Saved(b"urlname.bin")),
        ("attachment; filename=\".bashrc\"".into(), Verdict::Refused),
        ("attachment; filename=\"..\"".into(), Verdict::Refused),
    ];
    let data = random_bytes(10_000, 30_001);
    let (body, dispositions) = (data.clone(), cases.iter().map(|c| c.0.clone()).collect::<Vec<_>>());
    let server = Scripted::start(cases.len(), move |_, mut s| {
        let head = read_http_head(&mut s);
        // `/cN/urlname.bin` asks for case N.
        let i: usize =
            request_path(&head).split('/').nth(1).and_then(|c| c.strip_prefix('c')?.parse().ok()).unwrap_or(0);
        let h = [
            format!("Content-Length: {}", body.len()),
            format!("Content-Disposition: {}", dispositions[i]),
            "Connection: close".into(),
        ];
        send_and_close(s, &http_response("200 OK", &h, &body));
    });
    let dir = tempdir();
    for (i, (cd, verdict)) in cases.iter().enumerate() {
        let what = format!("Content-Disposition: {cd}");
        check_name(&server.url(&format!("/c{i}/urlname.bin")), &fresh(dir.path(), i), &data, *verdict, &what);
    }
}

/// A native server that answers one request in version 2 with `name` and `data`.
fn native_named(name: &[u8], data: &[u8]) -> Scripted {
    let (name, data) = (name.to_vec(), data.to_vec());
    Scripted::start(1, move |_, mut s| {
        let mut req = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        let mut head = [0u8; wire::MAX_RESPONSE_HEAD];
        let n = wire::encode_ok_in(wire::VERSION, data.len() as u64, &digest(&data), &name, None, &mut head);
        let mut reply = head[..n].to_vec();
        reply.extend_from_slice(&data);
        send_and_close(s, &reply);
    })
}

#[test]
fn native_names_are_made_safe_or_refused() {
    let longest = [b'n'; 255];
    let cases: Vec<(&[u8], Verdict)> = vec![
        (b"../x", Verdict::Saved(b"x")),
        (b"a/b", Verdict::Saved(b"b")),
        (b"a\x1b[2Jb", Verdict::Refused),
        (b"a\nb", Verdict::Refused),
        // The longest a version 2 header can say, and a name that is not UTF-8: both fine.
        (&longest, Verdict::Saved(&[b'n'; 255])),
        (b"caf\xe9.bin", Verdict::Saved(b"caf\xe9.bin")),
        (b"", Verdict::Refused),
        (b".bashrc", Verdict::Refused),
        (b"..", Verdict::Refused),
    ];
    let data = random_bytes(10_000, 30_002);
    let dir = tempdir();
    for (i, (name, verdict)) in cases.into_iter().enumerate() {
        let what = format!("native name {:?}", String::from_utf8_lossy(name));
        let server = native_named(name, &data);
        check_name(&server.target(), &fresh(dir.path(), i), &data, verdict, &what);
    }
    // The real server names its file by its base name: a dotfile or a name with control
    // characters is refused on the fetching side.
    for (i, name) in [".bashrc", "evil\x1b]0;owned\x07.txt"].into_iter().enumerate() {
        let src = fresh(dir.path(), 100 + i);
        let path = write_file(&src, name, &data);
        let server = Server::start(&path, &[]);
        check_name(
            &server.target(),
            &fresh(dir.path(), 200 + i),
            &data,
            Verdict::Refused,
            &format!("serving {name:?}"),
        );
    }
}

#[test]
fn a_directory_output_saves_under_the_servers_name_and_resumes() {
    let dir = tempdir();
    let size = 2 * MIB + 31;
    let data = random_bytes(size as usize, 30_003);
    let path = write_file(dir.path(), "data.bin", &data);
    let server = Server::start(&path, &[]);
    // An existing directory, and one given with a trailing `/`.
    let plain = fresh(dir.path(), 0);
    check_name(&server.target(), &plain, &data, Verdict::Saved(b"data.bin"), "an existing directory");
    let slash = fresh(dir.path(), 1);
    let with_slash = PathBuf::from(format!("{}/", slash.display()));
    check_name(&server.target(), &with_slash, &data, Verdict::Saved(b"data.bin"), "a directory given with `/`");
    let missing = PathBuf::from(format!("{}/", dir.path().join("missing").display()));
    let res = fetch_default(&server.target(), &missing, &[]);
    assert_failed(&res, &[5], "a missing directory given with `/`");
    assert!(!dir.path().join("missing").exists());

    // Cut, then the same command: the record says which name the partial was for.
    let outdir = fresh(dir.path(), 2);
    let proxy = Proxy::start(server.addr, Plan::clean());
    let head = native_head("data.bin");
    let kept = cut_once(&proxy, &proxy.target(), &outdir.join("data.bin"), head + size * 6 / 10, head, &[]);
    let before = proxy.down_bytes();
    let res = fetch_default(&proxy.target(), &outdir, &["--retry", "0"]);
    assert_fetched(&outdir.join("data.bin"), &res, &data);
    assert!(summary(&res).contains(&format!("resuming at {kept}")), "summary: {}", summary(&res));
    assert_eq!(proxy.down_bytes() - before, head + size - kept, "only the rest must be fetched");
    assert_eq!(dir_names(&outdir), vec!["data.bin"]);
}

#[test]
fn a_partial_whose_file_the_server_renamed_is_not_continued_under_the_new_name() {
    let data = random_bytes(200_000, 30_005);
    let cut = 120_000u64;
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let (body, asked) = (data.clone(), offsets.clone());
    // The same bytes, named a.bin in the first answer (cut short) and b.bin after.
    let server = Scripted::start(3, move |n, mut s| {
        let mut req = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        let Ok(encoding::Decoded::Done(r, _)) = wire::decode_request(&req) else { return };
        asked.lock().unwrap().push(r.offset);
        let name: &[u8] = if n == 0 { b"a.bin" } else { b"b.bin" };
        let mut head = [0u8; wire::MAX_RESPONSE_HEAD];
        let k = wire::encode_ok_in(wire::VERSION, body.len() as u64, &digest(&body), name, None, &mut head);
        let end = if n == 0 { cut as usize } else { body.len() };
        let mut reply = head[..k].to_vec();
        reply.extend_from_slice(&body[(r.offset as usize).min(end)..end]);
        send_and_close(s, &reply);
    });
    let dir = tempdir();
    let outdir = fresh(dir.path(), 0);
    let res = fetch_default(&server.target(), &outdir, &["--retry", "0"]);
    assert_failed(&res, &[3], "the first answer cut short");
    assert_eq!(len_of(&partial_of(&outdir.join("a.bin")).0), cut, "a.bin's partial kept");

    // The same command: the partial's offset is asked for, the server names another file,
    // and that file is asked for from zero: never a.bin's bytes continued under b.bin.
    let res = fetch_default(&server.target(), &outdir, &["--retry", "0"]);
    assert_fetched(&outdir.join("b.bin"), &res, &data);
    assert_eq!(*offsets.lock().unwrap(), vec![0, cut, 0], "the offsets asked for");
    assert!(!summary(&res).contains("resuming"), "summary: {}", summary(&res));
    // Asked again at once, not caught later as a prefix that did not match.
    assert!(!stderr_of(&res).contains("did not match"), "{}", describe(&res));
}

#[test]
fn no_output_saves_into_the_current_directory() {
    let dir = tempdir();
    let data = random_bytes(300_007, 30_004);
    let path = write_file(dir.path(), "data.bin", &data);
    let server = Server::start(&path, &[]);
    for (i, source) in [server.target(), format!("http://{}/data.bin", server.target())].into_iter().enumerate() {
        let cwd = fresh(dir.path(), i);
        let mut cmd = Command::new(bin());
        cmd.args(["fetch", &source]).current_dir(&cwd).env_remove("XFER_TOKEN");
        let res = run_with_timeout(&mut cmd, 60);
        assert_fetched(&cwd.join("data.bin"), &res, &data);
        assert_eq!(dir_names(&cwd), vec!["data.bin"], "{source}: more than the file was left");
    }
}

/// An xfer from before version 2, as it answers: a version 2 request is refused with
/// "unsupported version" in a version 1 header; a version 1 request is served. Records the
/// version of each request.
fn old_server(data: &[u8]) -> (Scripted, Seen) {
    let seen = Seen::default();
    let (log, data) = (seen.clone(), data.to_vec());
    let server = Scripted::start(2, move |_, mut s| {
        let mut req = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        log.lock().unwrap().push(req[4].to_string());
        let reply = match wire::decode_request(&req) {
            Ok(encoding::Decoded::Done(Request { version: wire::V1, .. }, _)) => {
                let mut r = wire::encode_ok(data.len() as u64, &digest(&data)).to_vec();
                r.extend_from_slice(&data);
                r
            }
            _ => {
                let mut head = [0u8; wire::MAX_RESPONSE_HEAD];
                let n = wire::encode_refusal(Status::UnsupportedVersion, "unsupported protocol version", &mut head);
                head[..n].to_vec()
            }
        };
        send_and_close(s, &reply);
    });
    (server, seen)
}

#[test]
fn a_version_1_server_is_asked_again_in_version_1_and_cannot_name_the_file() {
    let data = random_bytes(200_003, 30_005);
    let dir = tempdir();
    let (server, seen) = old_server(&data);
    let out = dir.path().join("copy.bin");
    let res = fetch_default(&server.target(), &out, &["--retry", "0"]);
    assert_fetched(&out, &res, &data);
    assert!(summary(&res).contains("verified blake3"), "summary: {}", summary(&res));
    assert_eq!(*seen.lock().unwrap(), vec!["2", "1"], "versions asked");

    let (server, _) = old_server(&data);
    let outdir = fresh(dir.path(), 0);
    let res = fetch_default(&server.target(), &outdir, &["--retry", "0"]);
    assert_failed(&res, &[4], "a version 1 server into a directory");
    assert!(
        error_lines(&res)[0].contains("does not say the file's name"),
        "the error must say why: {}",
        describe(&res)
    );
    assert!(dir_names(&outdir).is_empty(), "left {:?}", dir_names(&outdir));
}
