//! The error table (exit codes, what is retried, the server's hint, the messages) and
//! the checks that decide whether a kept prefix is resumed.

use super::*;
use std::io;

fn io_err() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionRefused)
}

fn refused(status: Status, retry_after: Option<Duration>) -> FetchError {
    FetchError::Refused { target: "h".into(), status, reason: "r".into(), retry_after }
}

fn http(status: u16, retry_after: Option<Duration>) -> FetchError {
    FetchError::Http { target: "h".into(), status, reason: "r".into(), retry_after }
}

fn kept(inner: FetchError) -> FetchError {
    FetchError::Kept { inner: Box::new(inner), kept: 1, path: "p".into() }
}

fn mismatch() -> FetchError {
    let want = Want { algorithm: Algorithm::Blake3, digest: [1; 32], pinned: false };
    FetchError::Mismatch(verify::Mismatch { want, got: [2; 32] }, false)
}

/// Every error but the refusals and HTTP statuses, with the code README's table gives it.
fn others() -> Vec<(FetchError, i32)> {
    let p = || PathBuf::from("p");
    vec![
        (FetchError::Usage("u".into()), exit::USAGE),
        (FetchError::BadTarget("x".into(), encoding::target::TargetError::Empty), exit::USAGE),
        (FetchError::EmptyOutput, exit::USAGE),
        (FetchError::Resolve { host: "h".into(), source: io_err() }, exit::NETWORK),
        (FetchError::Connect { target: "h".into(), source: io_err() }, exit::NETWORK),
        (FetchError::Timeout { target: "h".into(), timeout: Duration::from_secs(1) }, exit::NETWORK),
        (FetchError::Closed { target: "h".into(), detail: "d".into() }, exit::NETWORK),
        (FetchError::Lost { got: 1, expected: Some(2), cause: "c".into() }, exit::NETWORK),
        (FetchError::Unauthenticated { target: "h".into(), why: "w" }, exit::PROTOCOL),
        (FetchError::Protocol { target: "h".into(), source: DecodeError::BadMagic }, exit::PROTOCOL),
        (FetchError::BadHttp { target: "h".into(), why: "w".into() }, exit::PROTOCOL),
        (mismatch(), exit::PROTOCOL),
        (FetchError::Size { got: 1, expected: 2 }, exit::PROTOCOL),
        (FetchError::BadPrefix, exit::PROTOCOL),
        (FetchError::RangeGone, exit::PROTOCOL),
        (FetchError::BadName { name: "n".into(), why: "w" }, exit::PROTOCOL),
        (FetchError::NoName, exit::PROTOCOL),
        (FetchError::NoOutputDir(p()), exit::LOCAL_IO),
        (FetchError::OutputIsDir(p()), exit::LOCAL_IO),
        (FetchError::BadOutput { path: p(), why: "w" }, exit::LOCAL_IO),
        (FetchError::Output { path: p(), source: io_err() }, exit::LOCAL_IO),
        (FetchError::Locked(p()), exit::LOCAL_IO),
        (FetchError::StdoutClosed, exit::OK),
    ]
}

#[test]
fn exit_codes_are_readmes_table() {
    for (e, code) in others() {
        assert_eq!(e.exit_code(), code, "{e:?}");
        // A kept partial does not change what the failure was.
        assert_eq!(kept(e).exit_code(), code);
    }
    for s in [Status::Forbidden, Status::BadToken, Status::Busy, Status::Unavailable, Status::Other(200)] {
        assert_eq!(refused(s, None).exit_code(), exit::REFUSED, "{s:?}");
    }
    let codes = [
        (300, exit::PROTOCOL),
        (400, exit::PROTOCOL),
        (401, exit::REFUSED),
        (403, exit::REFUSED),
        (404, exit::PROTOCOL),
        (407, exit::REFUSED),
        (408, exit::PROTOCOL),
        (429, exit::REFUSED),
        (499, exit::PROTOCOL),
        (500, exit::NETWORK),
        (503, exit::NETWORK),
        (599, exit::NETWORK),
        (600, exit::PROTOCOL),
    ];
    for (status, code) in codes {
        assert_eq!(http(status, None).exit_code(), code, "HTTP {status}");
        assert_eq!(kept(http(status, None)).exit_code(), code, "HTTP {status}, kept");
    }
}

#[test]
fn only_what_another_attempt_can_change_is_retried() {
    for (e, _) in others() {
        let want = matches!(
            e,
            FetchError::Connect { .. }
                | FetchError::Timeout { .. }
                | FetchError::Closed { .. }
                | FetchError::Lost { .. }
        );
        assert_eq!(e.is_transient(), want, "{e:?}");
        assert_eq!(kept(e).is_transient(), want);
    }
    for (s, want) in [
        (Status::Busy, true),
        (Status::Unavailable, true),
        (Status::Forbidden, false),
        (Status::BadToken, false),
        (Status::BadRequest, false),
        (Status::BadOffset, false),
        (Status::UnsupportedVersion, false),
        (Status::Other(200), false),
    ] {
        assert_eq!(refused(s, None).is_transient(), want, "{s:?}");
        assert_eq!(kept(refused(s, None)).is_transient(), want, "{s:?}, kept");
    }
    for status in [400, 401, 403, 404, 416, 499, 501, 505] {
        assert!(!http(status, None).is_transient(), "HTTP {status}");
    }
    for status in [408, 429, 500, 502, 503, 504] {
        assert!(http(status, None).is_transient(), "HTTP {status}");
        assert!(kept(http(status, None)).is_transient(), "HTTP {status}, kept");
    }
}

#[test]
fn the_servers_hint_is_passed_on_through_a_kept_partial() {
    let d = Some(Duration::from_millis(1500));
    assert_eq!(refused(Status::Busy, d).retry_hint(), d);
    assert_eq!(http(503, d).retry_hint(), d);
    assert_eq!(kept(http(503, d)).retry_hint(), d);
    assert_eq!(kept(refused(Status::Unavailable, d)).retry_hint(), d);
    assert_eq!(refused(Status::Busy, None).retry_hint(), None);
    for (e, _) in others() {
        assert_eq!(e.retry_hint(), None, "{e:?}");
    }
}

#[test]
fn messages_say_what_is_known_and_who_said_it() {
    let lost = FetchError::Lost { got: 5, expected: None, cause: "reset".into() };
    assert_eq!(lost.to_string(), "connection lost after 5 of an unknown number of bytes: reset");
    let lost = FetchError::Lost { got: 5, expected: Some(2_000_000), cause: "reset".into() };
    assert_eq!(lost.to_string(), "connection lost after 5 of 2000000 bytes: reset");
    let k = FetchError::Kept { inner: Box::new(lost), kept: 1_500_000, path: "d/.f.xfer.part".into() };
    assert_eq!(
        k.to_string(),
        "connection lost after 5 of 2000000 bytes: reset; kept 1.5 MB in d/.f.xfer.part: \
         run the same command again to resume"
    );
    let t = FetchError::Timeout { target: "h:1".into(), timeout: Duration::from_millis(250) };
    assert_eq!(t.to_string(), "h:1: no data for 0.25 s (timed out)");

    let (got, want) = ([0xab; 32], [0xcd; 32]);
    let m = |pinned, streamed| {
        let want = Want { algorithm: Algorithm::Sha256, digest: want, pinned };
        FetchError::Mismatch(verify::Mismatch { want, got }, streamed).to_string()
    };
    let (ab, cd) = ("ab".repeat(32), "cd".repeat(32));
    assert_eq!(m(false, false), format!("verification failed: sha-256 of what arrived is {ab}, the server says {cd}"));
    assert_eq!(
        m(true, true),
        format!(
            "verification failed: sha-256 of what arrived is {ab}, --expect says {cd} \
             (the bytes were already written out)"
        )
    );
}

fn record(etag: Option<&str>, last_modified: Option<&str>) -> Record {
    Record {
        source: "s".into(),
        name: b"n".to_vec(),
        size: Some(10),
        blake3: Some([1; 32]),
        sha256: Some([2; 32]),
        etag: etag.map(Into::into),
        last_modified: last_modified.map(Into::into),
    }
}

#[test]
fn if_range_takes_a_strong_etag_else_the_date() {
    let date = "Mon, 30 Nov 2026 12:00:00 GMT";
    assert_eq!(validator(&record(Some("\"abc\""), Some(date))), Some("\"abc\""));
    // A weak ETag cannot be used in If-Range (RFC 9110 13.1.5).
    assert_eq!(validator(&record(Some("W/\"abc\""), Some(date))), Some(date));
    assert_eq!(validator(&record(None, Some(date))), Some(date));
    assert_eq!(validator(&record(Some("W/\"abc\""), None)), None);
    assert_eq!(validator(&record(None, None)), None);
}

fn offer(size: Option<u64>, blake3: Option<Digest>, sha256: Option<Digest>) -> Offer {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let silence = Silence::start(&stream, Duration::from_secs(1)).unwrap();
    Offer {
        size,
        start: 0,
        framing: Framing::Close,
        blake3,
        sha256,
        name: None,
        etag: None,
        last_modified: None,
        leftover: Vec::new(),
        stream,
        silence,
        peer: "p".into(),
    }
}

#[test]
fn a_prefix_belongs_to_the_offer_unless_a_size_or_digest_both_know_differs() {
    let r = record(None, None);
    assert!(same_version(&r, &offer(Some(10), Some([1; 32]), Some([2; 32]))));
    // What one side does not know cannot disagree.
    assert!(same_version(&r, &offer(None, None, None)));
    let mut unknown = r.clone();
    (unknown.size, unknown.blake3, unknown.sha256) = (None, None, None);
    assert!(same_version(&unknown, &offer(Some(11), Some([3; 32]), Some([4; 32]))));
    // Any one that differs is another version.
    assert!(!same_version(&r, &offer(Some(11), Some([1; 32]), Some([2; 32]))));
    assert!(!same_version(&r, &offer(Some(10), Some([3; 32]), Some([2; 32]))));
    assert!(!same_version(&r, &offer(Some(10), Some([1; 32]), Some([4; 32]))));
    assert!(!same_version(&r, &offer(None, None, Some([4; 32]))));
    assert!(!same_version(&r, &offer(None, Some([3; 32]), None)));
}
