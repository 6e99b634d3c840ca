//! What a fetched file is checked against, and the check.
//!
//! Digests come from the server (the native header's BLAKE3; HTTP's `Repr-Digest`/`Digest`
//! SHA-256 or `Xfer-Blake3`) and from the user (`--expect blake3:HEX` or `sha256:HEX`, an
//! end-to-end pin no server can fake). Every one given is checked; a file matched by none
//! is reported "not verified", never "verified". Owns the comparison (constant-time, as
//! `blake3::Hash` does it); must never know where the bytes came from.

use crate::encoding::Digest;

/// A digest algorithm xfer checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Blake3,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha-256",
        }
    }
}

/// `--expect ALGO:HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub algorithm: Algorithm,
    pub digest: Digest,
}

impl std::str::FromStr for Expect {
    type Err = String;

    fn from_str(s: &str) -> Result<Expect, String> {
        let (algo, hex) = s.split_once(':').ok_or("expected ALGORITHM:HEX, e.g. blake3:af13… or sha256:9f86…")?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "blake3" | "b3" => Algorithm::Blake3,
            "sha256" | "sha-256" => Algorithm::Sha256,
            _ => return Err(format!("unknown algorithm `{algo}`: use blake3 or sha256")),
        };
        let digest = crate::encoding::http::parse_hex32(hex).ok_or("the digest must be 64 hex digits")?;
        Ok(Expect { algorithm, digest })
    }
}

/// A digest to check, and who gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub algorithm: Algorithm,
    pub digest: Digest,
    /// `true`: from `--expect`; `false`: from the server.
    pub pinned: bool,
}

/// The digests of what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub blake3: Digest,
    pub sha256: Option<Digest>,
}

/// A check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub want: Want,
    pub got: Digest,
}

fn same(a: &Digest, b: &Digest) -> bool {
    // blake3::Hash compares in constant time; any 32 bytes will do.
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
}

pub fn hex(d: &Digest) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

/// Checks every wanted digest; `Ok(checked)` lists those that matched (none: unverified).
pub fn check(wants: &[Want], got: &Got) -> Result<Vec<Want>, Mismatch> {
    let mut ok = Vec::new();
    for w in wants {
        let have = match w.algorithm {
            Algorithm::Blake3 => Some(got.blake3),
            Algorithm::Sha256 => got.sha256,
        };
        match have {
            Some(h) if same(&h, &w.digest) => ok.push(*w),
            Some(h) => return Err(Mismatch { want: *w, got: h }),
            // Never computed: cannot happen when the receiver was told what to compute.
            None => return Err(Mismatch { want: *w, got: [0; 32] }),
        }
    }
    Ok(ok)
}

/// Whether any wanted digest needs SHA-256 computed.
pub fn needs_sha256(wants: &[Want]) -> bool {
    wants.iter().any(|w| w.algorithm == Algorithm::Sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        let h = blake3::hash(b"x").to_hex().to_string();
        let e: Expect = format!("blake3:{h}").parse().unwrap();
        assert_eq!(e.algorithm, Algorithm::Blake3);
        assert!(format!("SHA256:{h}").parse::<Expect>().is_ok());
        for bad in ["blake3", "md5:00", "blake3:zz", &format!("sha256:{}", &h[..63])] {
            assert!(bad.parse::<Expect>().is_err(), "{bad}");
        }
        let got = Got { blake3: *blake3::hash(b"x").as_bytes(), sha256: None };
        let want = Want { algorithm: Algorithm::Blake3, digest: e.digest, pinned: true };
        assert_eq!(check(&[want], &got), Ok(vec![want]));
        assert_eq!(check(&[], &got), Ok(vec![]), "nothing to check: unverified, not an error");
        let wrong = Want { digest: [1; 32], ..want };
        assert_eq!(check(&[want, wrong], &got), Err(Mismatch { want: wrong, got: got.blake3 }));
        // SHA-256 is computed only when some wanted digest is one; a wanted SHA-256 that
        // was never computed is a failure, not a pass.
        let sha = Want { algorithm: Algorithm::Sha256, digest: [2; 32], pinned: false };
        assert!(!needs_sha256(&[want]) && needs_sha256(&[want, sha]));
        assert_eq!(check(&[sha], &got), Err(Mismatch { want: sha, got: [0; 32] }));
        let both = Got { sha256: Some([2; 32]), ..got };
        assert_eq!(check(&[want, sha], &both), Ok(vec![want, sha]));
        // What messages show.
        assert_eq!((Algorithm::Blake3.name(), Algorithm::Sha256.name()), ("blake3", "sha-256"));
        assert_eq!(hex(&[0xab; 32]), "ab".repeat(32));
    }
}
