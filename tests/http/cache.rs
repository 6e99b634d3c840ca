//! A cache tier in front: nginx with `proxy_cache` (its own configuration in a temporary
//! directory, on loopback). Fifty clients at once through it cost the server one or two
//! full bodies; after the file is replaced and the short max-age has passed, the cache
//! revalidates and clients get the new version.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Long enough after a cache stored a copy with `max-age=1` for it to be stale.
const MAX_AGE_PASSED: Duration = Duration::from_millis(2200);

/// nginx in the foreground, killed (with its workers) on drop.
struct Nginx {
    child: Child,
    port: u16,
    stderr: Collected,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx as a caching proxy for `upstream`, everything it writes inside `dir`.
    /// `keepalive`: nginx keeps its connections to the server open between requests (an
    /// `upstream` block with `keepalive`), as busy caches are usually set up.
    fn start(nginx: &Path, dir: &Path, upstream: SocketAddr, keepalive: bool) -> Nginx {
        // A free port, found by binding port 0; if another process takes it before nginx
        // binds it, try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let d = dir.display();
            // As root, nginx's workers would switch to `nobody`, who cannot write here.
            // SAFETY: geteuid has no preconditions.
            let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
            let (upstream_block, pass, connection) = if keepalive {
                (
                    format!("upstream xfer {{ server {upstream}; keepalive 4; }}"),
                    "xfer".to_string(),
                    "proxy_set_header Connection \"\";",
                )
            } else {
                (String::new(), upstream.to_string(), "")
            };
            let conf = format!(
                "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=xfer:1m max_size=256m inactive=10m use_temp_path=off;
    {upstream_block}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{pass};
            proxy_cache xfer;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_revalidate on;
            proxy_http_version 1.1;
            {connection}
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = client(nginx)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"])
                // Its own process group: its workers go with it.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn nginx");
            let stderr = Collected::spawn(child.stderr.take().unwrap());
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(addr).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Nginx { child, port, stderr, dir: dir.to_path_buf() };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            assert!(log.contains("Address already in use"), "nginx did not start:\n{}\n{log}", stderr.text());
        }
        panic!("nginx found no free port in 5 tries");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What nginx said, for failure messages.
    fn said(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        format!("nginx stderr:\n{}\nnginx error.log:\n{log}", self.stderr.text())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a fast shutdown that takes the workers along; SIGKILL to the group after.
        send_signal(self.child.id(), libc::SIGTERM);
        if wait_child_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            send_signal(0u32.wrapping_sub(self.child.id()), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// `n` curl clients at once through the cache: each copy must be `want`. Returns each
/// response's X-Cache-Status.
fn fetch_through(curl_bin: &Path, dir: &Path, url: &str, n: usize, want: &Arc<Vec<u8>>, what: &str) -> Vec<String> {
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let (curl_bin, dir, url) = (curl_bin.to_path_buf(), dir.to_path_buf(), url.to_string());
            std::thread::spawn(move || {
                let (out, head) = (format!("{i}.copy"), format!("{i}.head"));
                let r = curl(&dir, &curl_bin, &["-f", "-D", &head, "-o", &out, &url]);
                (i, r, std::fs::read(dir.join(&out)), std::fs::read(dir.join(&head)))
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in runs {
        let (i, r, body, head) = t.join().expect("curl thread");
        assert_ok(&r, &format!("{what}: curl {i} through nginx"));
        let (body, head) = (body.unwrap(), head.unwrap());
        assert!(
            body == **want,
            "{what}: client {i} got {} bytes (BLAKE3 {}) where {} were expected (BLAKE3 {}); its head:\n{}",
            body.len(),
            blake3::hash(&body).to_hex(),
            want.len(),
            blake3::hash(want).to_hex(),
            String::from_utf8_lossy(&head)
        );
        let (reply, _) = parse_reply(&head, true).unwrap().expect("a whole head");
        statuses.push(reply.header("X-Cache-Status").unwrap_or("-").to_string());
        std::fs::remove_file(dir.join(format!("{i}.copy"))).unwrap();
        std::fs::remove_file(dir.join(format!("{i}.head"))).unwrap();
    }
    statuses
}

#[test]
fn nginx_cache_in_front_serves_fifty_from_one_fetch_and_revalidates_by_etag() {
    let what = "nginx as a cache in front";
    let (Some(nginx_bin), Some(curl_bin)) = (tool(what, "/usr/sbin/nginx"), tool(what, "curl")) else { return };
    let dir = tempdir();
    let (files, nginx_dir, copies) = (dir.path().join("files"), dir.path().join("nginx"), dir.path().join("copies"));
    for d in [&files, &nginx_dir, &copies] {
        std::fs::create_dir(d).unwrap();
    }
    let v1 = Arc::new(random_bytes(4 * MIB as usize, 981));
    let path = write_file(&files, "c.bin", &v1);
    backdate(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut server = Server::settled(&path, &["--max-age", "1"]);
    let nginx = Nginx::start(&nginx_bin, &nginx_dir, server.addr, false);
    let url = nginx.url("/c.bin");
    // Responses with the whole file of `size` bytes, once there is at least one.
    let full_bodies = |size: usize| {
        let want = format!("complete: {size} bytes");
        logged_count(&server, 5, 1, |l| {
            l.method == "GET" && l.path == "/c.bin" && l.status == 200 && l.rest.starts_with(&want)
        })
    };

    // Fifty at once: the cache lock lets one request through; the rest wait for the copy.
    fetch_through(&curl_bin, &copies, &url, 50, &v1, "fifty at once");
    let n = full_bodies(v1.len());
    assert!(
        (1..=3).contains(&n),
        "the server sent the whole file {n} times for 50 clients behind the cache:\n{}\n{}",
        server.stderr(),
        nginx.said()
    );

    // Past the max-age, the cache asks again with its validators; unchanged, xfer says 304.
    // The subject: waiting out a one-second max-age (nginx counts it in whole seconds, so a
    // copy stored at T is fresh until T+2).
    std::thread::sleep(MAX_AGE_PASSED);
    let status = fetch_through(&curl_bin, &copies, &url, 1, &v1, "revalidated");
    expect_logged(&server, 5, "a 304 to the cache's revalidation", |l| l.path == "/c.bin" && l.status == 304);
    assert_eq!(status, ["REVALIDATED"], "{}", nginx.said());

    // Replaced by rename, with the same mtime: a date alone would call it unchanged, so
    // the new version can only come through the ETag (If-None-Match wins over
    // If-Modified-Since, and nginx sends both).
    let v2 = Arc::new(random_bytes(3 * MIB as usize + 1, 982));
    let tmp = write_file(&files, "c.bin.new", &v2);
    std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let new_tag = format!("\"{}\"", blake3::hash(&v2).to_hex());
    let picked_up = wait_until(Duration::from_secs(10), || {
        one(server.addr, "HEAD", "/c.bin", &[]).header("ETag") == Some(new_tag.as_str())
    });
    assert!(picked_up, "the server did not pick up the replaced file within 10 s:\n{}", server.stderr());
    // The subject: waiting out the max-age of the copy the cache holds.
    std::thread::sleep(MAX_AGE_PASSED);
    let status = fetch_through(&curl_bin, &copies, &url, 1, &v2, "after the replacement");
    assert_eq!(status, ["EXPIRED"], "{}", nginx.said());
    assert_eq!(full_bodies(v2.len()), 1, "the new version's full body to the cache:\n{}", server.stderr());
    fetch_through(&curl_bin, &copies, &url, 10, &v2, "ten after the replacement");
    let n = full_bodies(v2.len());
    assert!(n <= 3, "the server sent the new version {n} times for 11 clients behind the cache:\n{}", server.stderr());
    drop(nginx);
    server.assert_healthy();
}

/// The same cache keeping its connections to the server open: after the file is replaced
/// and the max-age has passed, it revalidates over the connection it already has, and must
/// get the new version there too.
#[test]
fn nginx_cache_with_kept_alive_upstream_connections_gets_the_new_version() {
    let what = "nginx as a cache with kept-alive upstream connections";
    let (Some(nginx_bin), Some(curl_bin)) = (tool(what, "/usr/sbin/nginx"), tool(what, "curl")) else { return };
    let dir = tempdir();
    let (files, nginx_dir, copies) = (dir.path().join("files"), dir.path().join("nginx"), dir.path().join("copies"));
    for d in [&files, &nginx_dir, &copies] {
        std::fs::create_dir(d).unwrap();
    }
    let v1 = Arc::new(random_bytes(MIB as usize, 983));
    let path = write_file(&files, "k.bin", &v1);
    let mut server = Server::settled(&path, &["--max-age", "1"]);
    let nginx = Nginx::start(&nginx_bin, &nginx_dir, server.addr, true);
    let url = nginx.url("/k.bin");
    assert_eq!(fetch_through(&curl_bin, &copies, &url, 1, &v1, "first"), ["MISS"], "{}", nginx.said());

    let v2 = Arc::new(random_bytes(MIB as usize + 1, 984));
    let tmp = write_file(&files, "k.bin.new", &v2);
    std::fs::rename(&tmp, &path).unwrap();
    let new_tag = format!("\"{}\"", blake3::hash(&v2).to_hex());
    let picked_up = wait_until(Duration::from_secs(10), || {
        one(server.addr, "HEAD", "/k.bin", &[]).header("ETag") == Some(new_tag.as_str())
    });
    assert!(picked_up, "the server did not pick up the replaced file within 10 s:\n{}", server.stderr());
    // The subject: waiting out the max-age of the copy the cache holds.
    std::thread::sleep(MAX_AGE_PASSED);
    let got = std::panic::catch_unwind(|| fetch_through(&curl_bin, &copies, &url, 1, &v2, "after the replacement"));
    assert!(got.is_ok(), "the cache kept the old version past its max-age; the server's log:\n{}", server.stderr());
    drop(nginx);
    server.assert_healthy();
}
