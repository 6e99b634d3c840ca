//! wget against the server: a plain download, resuming a partial copy with `-c`, and
//! `--content-disposition` naming the copy after the header rather than the URL.

use super::*;

#[test]
fn wget_plain_resumed_and_named_by_content_disposition() {
    let Some(wget_bin) = tool("wget", "wget") else { return };
    let dir = tempdir();
    let name = "two words.bin";
    let data = random_bytes(MIB as usize + 17, 911);
    let path = write_file(dir.path(), name, &data);
    let mut server = Server::settled(&path, &[]);
    let url = banner_url(&server);
    let wget = |sub: &str, args: &[&str]| {
        let out = dir.path().join(sub);
        std::fs::create_dir_all(&out).unwrap();
        let mut all = vec!["--no-config", "-q", "--no-proxy", "--tries=1", "--timeout=30"];
        all.extend_from_slice(args);
        let r = run_in(&out, &wget_bin, &all, 120);
        assert_ok(&r, &format!("wget {args:?}"));
        out
    };

    let plain = wget("plain", &[&url]);
    assert_eq!(dir_names(&plain), vec![name.to_string()], "wget saved under another name");
    assert!(std::fs::read(plain.join(name)).unwrap() == data, "wget: the copy differs");

    // -c: wget asks for the rest of the partial copy.
    let resumed = dir.path().join("resumed");
    std::fs::create_dir(&resumed).unwrap();
    std::fs::write(resumed.join(name), &data[..300_001]).unwrap();
    wget("resumed", &["-c", &url]);
    assert!(std::fs::read(resumed.join(name)).unwrap() == data, "wget -c: the resumed copy differs");
    let rest = data.len() - 300_001;
    expect_logged(&server, 5, "wget -c's request", |l| {
        l.status == 206 && l.rest.starts_with(&format!("bytes 300001-{} complete: {rest} bytes", data.len() - 1))
    });

    // With a query string, wget names a copy after the whole last segment; with
    // --content-disposition, after the header.
    let asked = format!("{url}?download=1");
    let by_url = wget("by-url", &[&asked]);
    assert_eq!(dir_names(&by_url), vec![format!("{name}?download=1")], "test design: wget's own naming");
    let by_header = wget("by-header", &["--content-disposition", &asked]);
    assert_eq!(dir_names(&by_header), vec![name.to_string()], "wget --content-disposition");
    assert!(std::fs::read(by_header.join(name)).unwrap() == data, "wget --content-disposition: the copy differs");
    server.assert_healthy();
}
