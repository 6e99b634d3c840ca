//! A kept partial download: `.NAME.xfer.part` beside the output, and its record
//! `.NAME.xfer.part.info`, which says what the bytes are a prefix of.
//!
//! The record names the source (so that only the same command resumes it), the name the
//! file will have, and what identifies the version of the file: its size and digest (the
//! native protocol; HTTP when the server sends them) and HTTP's validators (ETag,
//! Last-Modified), which a resumed HTTP request sends as `If-Range`. Bytes without a record
//! are never trusted. The partial is locked (flock) while a fetch uses it, so two fetches
//! into one output cannot mix their bytes.
//!
//! Owns the naming, the record's format, the lock and finding a partial again. Must never
//! know the network, nor decide when to keep or drop a partial (the output does).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::encoding::Digest;
use crate::encoding::http::parse_hex32;

/// The first line of a record, and its version.
const MAGIC: &str = "xfer partial 1";
/// A record is small; a larger file is not one of ours.
const MAX_RECORD: u64 = 16 * 1024;

/// What a partial's bytes are a prefix of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The source, as `Source::key` names it.
    pub source: String,
    /// The output's file name (bytes).
    pub name: Vec<u8>,
    pub size: Option<u64>,
    pub blake3: Option<Digest>,
    pub sha256: Option<Digest>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Record {
    /// Whether a later attempt can tell that the server still has this version: a digest
    /// (native), or a validator HTTP's `If-Range` can carry (a strong ETag, a date).
    pub fn resumable(&self) -> bool {
        self.blake3.is_some()
            || self.sha256.is_some() && self.size.is_some()
            || self.etag.as_deref().is_some_and(|e| e.starts_with('"'))
            || self.last_modified.is_some()
    }

    fn encode(&self) -> String {
        let mut s = format!("{MAGIC}\nsource {}\nname {}\n", one_line(&self.source), hex(&self.name));
        if let Some(n) = self.size {
            s.push_str(&format!("size {n}\n"));
        }
        if let Some(d) = &self.blake3 {
            s.push_str(&format!("blake3 {}\n", hex(d)));
        }
        if let Some(d) = &self.sha256 {
            s.push_str(&format!("sha256 {}\n", hex(d)));
        }
        if let Some(e) = &self.etag {
            s.push_str(&format!("etag {}\n", one_line(e)));
        }
        if let Some(l) = &self.last_modified {
            s.push_str(&format!("last-modified {}\n", one_line(l)));
        }
        s
    }

    fn decode(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut r = Record::default();
        for line in lines {
            let (k, v) = line.split_once(' ')?;
            match k {
                "source" => r.source = v.to_string(),
                "name" => r.name = unhex(v)?,
                "size" => r.size = Some(v.parse().ok()?),
                "blake3" => r.blake3 = Some(parse_hex32(v)?),
                "sha256" => r.sha256 = Some(parse_hex32(v)?),
                "etag" => r.etag = Some(v.to_string()),
                "last-modified" => r.last_modified = Some(v.to_string()),
                _ => {}
            }
        }
        (!r.source.is_empty()).then_some(r)
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The partial's path and its record's, beside `target`. Names too long to prefix are cut,
/// with a digest of the whole name so that two long names never share a partial.
pub fn paths(target: &Path) -> (PathBuf, PathBuf) {
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().map_or(&b""[..], |n| n.as_bytes());
    let stem = if name.len() > 200 {
        format!("{}-{}", String::from_utf8_lossy(&name[..180]), &blake3::hash(name).to_hex()[..16])
    } else {
        String::from_utf8_lossy(name).into_owned()
    };
    (dir.join(format!(".{stem}.xfer.part")), dir.join(format!(".{stem}.xfer.part.info")))
}

/// Reads a record; `None` for a missing, foreign or damaged one.
pub fn read_record(info: &Path) -> Option<Record> {
    let f = File::open(info).ok()?;
    if f.metadata().ok()?.len() > MAX_RECORD {
        return None;
    }
    Record::decode(&std::fs::read_to_string(info).ok()?)
}

/// Writes a record whole (a temporary file renamed over it), so a reader never sees half.
pub fn write_record(info: &Path, r: &Record) -> io::Result<()> {
    let mut tmp = info.as_os_str().to_owned();
    tmp.push(".new");
    std::fs::write(&tmp, r.encode())?;
    std::fs::rename(&tmp, info)
}

/// Takes the partial's lock, without waiting: `false` if another fetch holds it.
pub fn lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) }
}

/// Finds, in `dir`, the output a partial from `source` was for (for a directory output,
/// whose name the server gives only once asked).
pub fn find_in(dir: &Path, source: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.take(100_000).flatten() {
        let name = e.file_name();
        let n = name.as_bytes();
        if !(n.starts_with(b".") && n.ends_with(b".xfer.part.info")) {
            continue;
        }
        if let Some(r) = read_record(&e.path())
            && r.source == source
            && !r.name.is_empty()
        {
            return Some(dir.join(std::ffi::OsStr::from_bytes(&r.name)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let r = Record {
            source: "http://h/x?a=1".into(),
            name: b"my\nfile\xff".to_vec(),
            size: Some(1 << 40),
            blake3: Some([7; 32]),
            sha256: None,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        assert!(r.resumable());
        assert_eq!(Record::decode("something else\nsource x\n"), None);
        assert_eq!(Record::decode(&r.encode().replace("blake3 07", "blake3 zz")), None);
        let weak = Record { etag: Some("W/\"x\"".into()), ..Record::default() };
        assert!(!weak.resumable(), "a weak ETag cannot be used in If-Range");
        // Each way of recognising the server's version again, alone, is enough; a SHA-256
        // needs the size beside it (the digest arrives only with the whole file).
        let base = Record { source: "s".into(), ..Record::default() };
        assert!(!base.resumable());
        for (r, want) in [
            (Record { blake3: Some([1; 32]), ..base.clone() }, true),
            (Record { sha256: Some([1; 32]), size: Some(9), ..base.clone() }, true),
            (Record { sha256: Some([1; 32]), ..base.clone() }, false),
            (Record { size: Some(9), ..base.clone() }, false),
            (Record { etag: Some("\"e\"".into()), ..base.clone() }, true),
            (Record { last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()), ..base.clone() }, true),
        ] {
            assert_eq!(r.resumable(), want, "{r:?}");
            assert_eq!(Record::decode(&r.encode()), Some(r), "round trip");
        }
    }

    #[test]
    fn paths_and_finding() {
        let dir = tempfile::tempdir().unwrap();
        let (p, i) = paths(&dir.path().join("data.bin"));
        assert_eq!(p.file_name().unwrap(), ".data.bin.xfer.part");
        assert_eq!(i.file_name().unwrap(), ".data.bin.xfer.part.info");
        let long = "x".repeat(250);
        let (a, _) = paths(&dir.path().join(format!("{long}1")));
        let (b, _) = paths(&dir.path().join(format!("{long}2")));
        assert_ne!(a, b);
        // Up to 200 bytes a name is kept whole; past that it is cut and told apart by a digest.
        let (whole, _) = paths(&dir.path().join("y".repeat(200)));
        assert_eq!(whole.file_name().unwrap().len(), 1 + 200 + ".xfer.part".len());
        let (cut, _) = paths(&dir.path().join("y".repeat(201)));
        assert_eq!(cut.file_name().unwrap().len(), 1 + 180 + 1 + 16 + ".xfer.part".len());
        assert!(a.file_name().unwrap().len() <= 255);
        let r = Record { source: "xfer://h:1".into(), name: b"data.bin".to_vec(), ..Record::default() };
        write_record(&i, &r).unwrap();
        assert_eq!(find_in(dir.path(), "xfer://h:1"), Some(dir.path().join("data.bin")));
        assert_eq!(find_in(dir.path(), "xfer://h:2"), None);
        // A record that names no file leads nowhere (it would point at the directory).
        let (_, nameless) = paths(&dir.path().join("other"));
        write_record(&nameless, &Record { source: "xfer://h:3".into(), ..Record::default() }).unwrap();
        assert_eq!(find_in(dir.path(), "xfer://h:3"), None);
        // A long URL is still a record; a file past 16 KiB is none of ours.
        let long_url = Record { source: format!("http://h/{}", "u".repeat(8000)), ..r.clone() };
        write_record(&i, &long_url).unwrap();
        assert_eq!(read_record(&i), Some(long_url));
        let huge = Record { source: format!("http://h/{}", "u".repeat(16 * 1024)), ..r.clone() };
        write_record(&i, &huge).unwrap();
        assert_eq!(read_record(&i), None);
        write_record(&i, &r).unwrap();
        let f = File::create(&p).unwrap();
        assert!(lock(&f).unwrap());
        let g = File::open(&p).unwrap();
        assert!(!lock(&g).unwrap(), "a second lock on the same partial must fail");
    }
}
