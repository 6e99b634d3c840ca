//! A real browser: headless Chromium (through Selenium, `browser.py` beside this file)
//! opens the landing page, finds the name, size and BLAKE3 there, clicks the download
//! link, and saves a byte-identical copy under the file's name.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::*;

#[test]
fn chromium_reads_the_landing_page_and_downloads_an_exact_copy() {
    let what = "a browser on the landing page";
    let Some(py) = python(what, &["selenium"], "python3-selenium") else { return };
    let (Some(_), Some(_)) = (tool(what, "/usr/bin/chromium"), tool(what, "/usr/bin/chromedriver")) else { return };
    let dir = tempdir();
    let name = "page file.bin";
    let data = random_bytes(3 * MIB as usize + 11, 941);
    let path = write_file(dir.path(), name, &data);
    let mut server = Server::settled(&path, &[]);
    let (downloads, profile) = (dir.path().join("downloads"), dir.path().join("profile"));
    std::fs::create_dir(&downloads).unwrap();
    std::fs::create_dir(&profile).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http/browser.py");
    let mut cmd = client(&py);
    cmd.arg(script).arg(format!("http://{}/", server.addr)).arg(&downloads).arg(&profile);
    // Its own process group, so a browser left behind by a timeout goes with it.
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn browser.py");
    let (out, err) = (Collected::spawn(child.stdout.take().unwrap()), Collected::spawn(child.stderr.take().unwrap()));
    let Some(st) = wait_child_exit(&mut child, Duration::from_secs(150)) else {
        send_signal(0u32.wrapping_sub(child.id()), libc::SIGKILL);
        let _ = child.wait();
        panic!("browser.py still running after 150 s\nstdout:\n{}\nstderr:\n{}", out.text(), err.text());
    };
    out.wait_eof(Duration::from_secs(10));
    let (out, err) = (out.text(), err.text());
    assert!(st.success(), "browser.py: {}\nstdout:\n{out}\nstderr:\n{err}", status_str(&st));
    let field = |key: &str| {
        let line = out.lines().find(|l| l.starts_with(&format!("{key}\t")));
        line.unwrap_or_else(|| panic!("browser.py printed no {key}:\n{out}\n{err}"))[key.len() + 1..].to_string()
    };
    assert_eq!(field("name"), name, "the page's #name");
    assert_eq!(field("size"), data.len().to_string(), "the page's #size");
    assert_eq!(field("blake3"), blake3::hash(&data).to_hex().to_string(), "the page's #blake3");
    assert_eq!(field("files"), name, "what the browser saved (a .crdownload is a download that never finished)");
    assert!(std::fs::read(downloads.join(name)).unwrap() == data, "the browser's copy differs");
    expect_logged(&server, 5, "the browser's download", |l| {
        l.method == "GET" && l.path == "/page%20file.bin" && l.status == 200 && l.rest.starts_with("complete: ")
    });
    server.assert_healthy();
}
