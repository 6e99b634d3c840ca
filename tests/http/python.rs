//! Python's http.client and raw sockets (`client.py` beside this file): pipelined requests
//! answered in order, HTTP/1.0, HEAD, 404, 405, 416, 431, and junk closed unanswered.

use super::*;

#[test]
fn python_http_client_pipelining_http10_and_errors() {
    let Some(py) = python("Python http.client", &["http.client"], "python3") else { return };
    let dir = tempdir();
    let data = random_bytes(150_000, 931);
    let path = write_file(dir.path(), "p y.bin", &data);
    let mut server = Server::settled(&path, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http/client.py");
    let (host, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    let r = run_in(dir.path(), &py, &[script, &host, &port, "p%20y.bin", path.to_str().unwrap()], 90);
    assert!(r.status.success(), "client.py failed:\n{}\nserver log:\n{}", describe(&r), server.stderr());
    let out = stdout_of(&r);
    let port_of = |what: &str| -> u16 {
        let line = out.lines().find(|l| l.starts_with(&format!("port {what} "))).expect("client.py names its port");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };

    // The log has the pipelined answers from one connection, in the order asked.
    let pipelined = port_of("pipelined");
    expect_logged(&server, 5, "the fifth pipelined answer", |l| {
        l.client.port() == pipelined && l.path == "/p%20y.bin" && l.status == 200 && l.method == "GET"
    });
    let got: Vec<(String, String, u16)> =
        logged_for(&server, pipelined).into_iter().map(|l| (l.method, l.path, l.status)).collect();
    let want: Vec<(String, String, u16)> = [
        ("GET", "/p%20y.bin.b3", 200),
        ("GET", "/p%20y.bin", 206),
        ("HEAD", "/p%20y.bin", 200),
        ("GET", "/nothing-here", 404),
        ("GET", "/p%20y.bin", 200),
    ]
    .iter()
    .map(|&(m, p, s)| (m.to_string(), p.to_string(), s))
    .collect();
    assert_eq!(got, want, "the pipelined requests as logged");
    for i in 0..3 {
        let p = port_of(&format!("junk{i}"));
        let line = server.expect_log(p, 5);
        assert!(line.ends_with("closed: neither an xfer nor an HTTP request"), "junk {i}: {line}");
    }
    server.assert_healthy();
}
