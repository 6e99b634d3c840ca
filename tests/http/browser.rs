//! A real browser: headless Chromium (through Selenium, `browser.py` beside this file)
//! opens the landing page, finds the name, size and BLAKE3 there, clicks the download
//! link, and saves a byte-identical copy under the file's name.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::*;

/// What the browser saw and saved.
struct Browsed {
    server: Server,
    data: Vec<u8>,
    downloads: PathBuf,
    /// `browser.py`'s `KEY<TAB>VALUE` lines.
    out: String,
    err: String,
    _dir: tempfile::TempDir,
}

impl Browsed {
    fn field(&self, key: &str) -> &str {
        let line = self.out.lines().find(|l| l.starts_with(&format!("{key}\t")));
        &line.unwrap_or_else(|| panic!("browser.py printed no {key}:\n{}\n{}", self.out, self.err))[key.len() + 1..]
    }
}

/// Serves a file called `name`, and has Chromium open `/` and click the download link.
/// `None` when the browser or Selenium is not installed (see `missing`).
fn browse(name: &str, size: usize, seed: u64) -> Option<Browsed> {
    let what = "a browser on the landing page";
    let py = python(what, &["selenium"], "python3-selenium")?;
    tool(what, "/usr/bin/chromium")?;
    tool(what, "/usr/bin/chromedriver")?;
    let dir = tempdir();
    let data = random_bytes(size, seed);
    let path = write_file(dir.path(), name, &data);
    let server = Server::settled(&path, &[]);
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
    Some(Browsed { server, data, downloads, out, err, _dir: dir })
}

#[test]
fn chromium_reads_the_landing_page_and_downloads_an_exact_copy() {
    let name = "page file.bin";
    let Some(mut b) = browse(name, 3 * MIB as usize + 11, 941) else { return };
    assert_eq!(b.field("name"), name, "the page's #name");
    assert_eq!(b.field("size"), b.data.len().to_string(), "the page's #size");
    assert_eq!(b.field("blake3"), blake3::hash(&b.data).to_hex().to_string(), "the page's #blake3");
    assert_eq!(b.field("files"), name, "what the browser saved (a .crdownload is a download that never finished)");
    assert!(std::fs::read(b.downloads.join(name)).unwrap() == b.data, "the browser's copy differs");
    expect_logged(&b.server, 5, "the browser's download", |l| {
        l.method == "GET" && l.path == "/page%20file.bin" && l.status == 200 && l.rest.starts_with("complete: ")
    });
    b.server.assert_healthy();
}

/// A `%` followed by two hex digits in `filename="..."` is an escape to browsers
/// (RFC 6266, appendix D): the browser must still save the file under its own name.
#[test]
fn chromium_saves_a_name_with_percent_hex_under_that_name() {
    let name = "report %41 final.txt";
    let Some(b) = browse(name, 1000, 942) else { return };
    assert_eq!(b.field("name"), name, "the page's #name");
    assert_eq!(
        b.field("files"),
        name,
        "the name the browser saved the file under (the server's Content-Disposition: {:?})",
        one(b.server.addr, "HEAD", &format!("/{}", url_segment(name.as_bytes())), &[]).header("Content-Disposition")
    );
    assert!(std::fs::read(b.downloads.join(name)).unwrap() == b.data, "the browser's copy differs");
}
