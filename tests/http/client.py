"""Python's http.client, and raw sockets for what it will not send, against `xfer serve`.

Usage: client.py HOST PORT SEGMENT FILE
  SEGMENT is the file's name as the URL writes it; FILE is a copy of the served bytes.

Every check is an assert that says what it expected; the script exits 0 only when all
hold. It prints `port WHAT N` for the connections whose log lines the Rust side checks.
Every socket has a timeout, so nothing here can wait forever.
"""

import http.client
import socket
import sys

HOST, PORT, SEG, PATH = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
DATA = open(PATH, "rb").read()
SIZE = len(DATA)
LIMIT = 10  # seconds any one read may wait


def request(method, target, *fields):
    head = f"{method} {target} HTTP/1.1\r\nHost: xfer.test\r\n"
    return (head + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


def connect():
    return socket.create_connection((HOST, PORT), timeout=LIMIT)


def read_response(fp, method="GET"):
    """One response from a buffered socket file: (status, {lower-case name: value}, body)."""
    line = fp.readline(65536)
    assert line.startswith(b"HTTP/1.1 ") and line.endswith(b"\r\n"), f"status line {line!r}"
    status = int(line.split()[1])
    fields = {}
    while True:
        line = fp.readline(65536)
        assert line.endswith(b"\r\n"), f"field line {line!r}"
        if line == b"\r\n":
            break
        name, _, value = line.decode("ascii").partition(":")
        fields[name.strip().lower()] = value.strip()
    n = 0 if method == "HEAD" or status == 304 else int(fields["content-length"])
    body = fp.read(n)
    assert len(body) == n, f"{len(body)} of {n} body bytes"
    return status, fields, body


def until_closed(sock, reset_is_close=False):
    """Everything the server sends until it closes (a timeout fails)."""
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"still open after {LIMIT} s; got {got[:200]!r}")
        except ConnectionResetError:
            if reset_is_close:
                return got
            raise
        if not chunk:
            return got
        got += chunk


def pipelined():
    """Five requests in one write; the answers come in order, the last one closes."""
    s = connect()
    print("port pipelined", s.getsockname()[1])
    s.sendall(
        request("GET", f"/{SEG}.b3")
        + request("GET", f"/{SEG}", "Range: bytes=0-9")
        + request("HEAD", f"/{SEG}")
        + request("GET", "/nothing-here")
        + request("GET", f"/{SEG}", "Connection: close")
    )
    fp = s.makefile("rb")
    status, _, body = read_response(fp)
    assert status == 200 and body.endswith(b"\n") and len(body.split()[0]) == 64, f"1st: {status} {body!r}"
    status, f, body = read_response(fp)
    assert (status, body, f.get("content-range")) == (206, DATA[:10], f"bytes 0-9/{SIZE}"), f"2nd: {status} {f}"
    status, f, body = read_response(fp, "HEAD")
    assert (status, f.get("content-length")) == (200, str(SIZE)), f"3rd (HEAD): {status} {f}"
    status, _, body = read_response(fp)
    assert status == 404, f"4th: {status}"
    status, f, body = read_response(fp)
    assert status == 200 and body == DATA, f"5th: {status}, {len(body)} bytes"
    assert f.get("connection") == "close", f"5th: {f}"
    rest = fp.read()
    assert rest == b"", f"bytes after the last answer: {rest[:100]!r}"
    s.close()


def http10():
    """HTTP/1.0: the answer, then the close; with keep-alive asked, the connection stays."""
    s = connect()
    s.sendall(f"GET /{SEG} HTTP/1.0\r\n\r\n".encode())
    got = until_closed(s)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == DATA, f"HTTP/1.0: {head!r}, {len(body)} bytes"
    s.close()
    s = connect()
    s.sendall(f"HEAD /{SEG} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
    fp = s.makefile("rb")
    status, f, _ = read_response(fp, "HEAD")
    assert (status, f.get("connection")) == (200, "keep-alive"), f"HTTP/1.0 keep-alive: {status} {f}"
    s.sendall(f"GET /{SEG}.b3 HTTP/1.0\r\n\r\n".encode())
    status, f, _ = read_response(fp)
    assert (status, f.get("connection")) == (200, "close"), f"HTTP/1.0, second request: {status} {f}"
    assert fp.read() == b"", "HTTP/1.0 without keep-alive: not closed after the answer"
    s.close()


def with_http_client():
    """HEAD, GET, 404 and 416 on one kept-alive http.client connection; 405 ends it."""
    c = http.client.HTTPConnection(HOST, PORT, timeout=LIMIT)
    c.request("HEAD", f"/{SEG}")
    r = c.getresponse()
    head_fields = dict(r.getheaders())
    assert (r.status, r.read()) == (200, b""), f"HEAD: {r.status}"
    assert head_fields["Content-Length"] == str(SIZE), f"HEAD: {head_fields}"
    c.request("GET", f"/{SEG}")
    r = c.getresponse()
    get_fields = dict(r.getheaders())
    assert (r.status, r.read()) == (200, DATA), f"GET: {r.status}"
    for same in ["Content-Length", "Content-Type", "ETag", "Last-Modified", "Content-Disposition"]:
        assert head_fields.get(same) == get_fields.get(same), f"HEAD and GET differ in {same}"
    c.request("GET", "/nothing-here")
    r = c.getresponse()
    body = r.read().decode()
    assert r.status == 404 and f"/{SEG}" in body, f"404: {r.status} {body!r}"
    c.request("GET", f"/{SEG}", headers={"Range": f"bytes={SIZE}-"})
    r = c.getresponse()
    r.read()
    assert (r.status, r.getheader("Content-Range")) == (416, f"bytes */{SIZE}"), f"416: {r.status} {r.getheaders()}"
    c.request("DELETE", f"/{SEG}")
    r = c.getresponse()
    r.read()
    assert (r.status, r.getheader("Allow")) == (405, "GET, HEAD"), f"405: {r.status} {r.getheaders()}"
    assert r.getheader("Connection") == "close", f"405: {r.getheaders()}"
    c.close()


def too_large():
    """A head over 8 KiB in three fields (each line well under the line limit): 431, close."""
    s = connect()
    fields = [f"X-Filler-{i}: " + "a" * 3000 for i in range(3)]
    s.sendall(request("GET", f"/{SEG}", *fields))
    got = until_closed(s)
    assert got.startswith(b"HTTP/1.1 431 "), f"431: {got[:100]!r}"
    s.close()


def junk():
    """Bytes that are no request: closed without a byte of answer."""
    for i, payload in enumerate([b"\x00\x01junk\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01"]):
        s = connect()
        print(f"port junk{i}", s.getsockname()[1])
        s.sendall(payload)
        got = until_closed(s, reset_is_close=True)
        assert got == b"", f"junk {payload!r} was answered: {got[:100]!r}"
        s.close()


for check in [pipelined, http10, with_http_client, too_large, junk]:
    check()
    print("ok", check.__name__)
