//! The file replaced while HTTP clients keep their connections open: the next request on a
//! kept-alive connection is answered from the new version, as on a new connection.

use std::time::Duration;

use super::*;

/// A client (a browser, a cache with kept-alive upstream connections) that asks again on
/// the connection it already has must get the version the server now serves: the new
/// bytes, the new ETag, and 200 (not 304) to `If-None-Match` with the old tag.
#[test]
fn http_kept_alive_connection_gets_the_new_version_after_a_replace() {
    let dir = tempdir();
    let v1 = random_bytes(100_000, 991);
    let path = write_file(dir.path(), "v.bin", &v1);
    let mut server = Server::settled(&path, &[]);
    let old_tag = format!("\"{}\"", blake3::hash(&v1).to_hex());
    let mut kept = Conn::connect(server.addr);
    kept.send(&request("GET", "/v.bin", &[]));
    let r = kept.reply(false);
    assert!(r.status == 200 && r.body == v1 && r.header("ETag") == Some(old_tag.as_str()), "before: {r:?}");

    let v2 = random_bytes(150_000, 992);
    let tmp = write_file(dir.path(), "v.bin.new", &v2);
    std::fs::rename(&tmp, &path).unwrap();
    let new_tag = format!("\"{}\"", blake3::hash(&v2).to_hex());
    let picked_up = wait_until(Duration::from_secs(10), || {
        one(server.addr, "HEAD", "/v.bin", &[]).header("ETag") == Some(new_tag.as_str())
    });
    assert!(picked_up, "a new connection never saw the new version:\n{}", server.stderr());

    kept.send(&request("GET", "/v.bin", &[]));
    let r = kept.reply(false);
    assert_eq!(
        (r.status, r.header("ETag"), r.body.len()),
        (200, Some(new_tag.as_str()), v2.len()),
        "a kept-alive connection's next request after the file was replaced (the old version has ETag {old_tag}):\n{}",
        server.stderr()
    );
    assert!(r.body == v2, "the kept-alive connection got other bytes than the new version");
    kept.send(&request("GET", "/v.bin", &[&format!("If-None-Match: {old_tag}")]));
    let r = kept.reply(false);
    assert_eq!(r.status, 200, "If-None-Match with the old version's tag on a kept-alive connection: {r:?}");
    assert!(r.body == v2, "If-None-Match with the old tag: not the new version");
    drop(kept);
    server.assert_healthy();
}
