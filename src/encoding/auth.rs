//! What the shared token proves, as pure functions of bytes: keyed BLAKE3 over fixed,
//! labelled inputs (docs/SECURITY.md, docs/PROTOCOL.md).
//!
//! The token itself is never sent and never stored beyond the keys derived from it. Each
//! use has its own key (`blake3::derive_key` with its own context), and each message its
//! own label, so that no value computed for one purpose is ever accepted for another:
//! - the native protocol's challenge-response: the client proves it knows the token by a
//!   MAC over both sides' fresh nonces (a recorded proof is worthless on the next
//!   connection), and the server proves it too, by a MAC over the response header it sends
//!   (size, digest, name, offset), so the digest the client checks is authenticated;
//! - HTTP's signed links: a MAC over the path and the expiry time.
//!
//! Comparisons of MACs are constant-time (`blake3::Hash` equality).

use super::Digest;

/// A key derived from the token for one use. Its bytes never leave this type: no `Debug`
/// that prints them, no accessor.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Context strings for `derive_key`: globally unique, fixed forever.
const NATIVE_CONTEXT: &str = "xfer 2026-11-30 native protocol v2 challenge-response";
const LINKS_CONTEXT: &str = "xfer 2026-11-30 http signed links v1";

/// A link signature's length: 128 bits, as nginx's secure_link uses.
pub const LINK_SIG_LEN: usize = 16;

impl Key {
    /// The key of the native protocol's challenge-response.
    pub fn native(token: &[u8]) -> Key {
        Key(blake3::derive_key(NATIVE_CONTEXT, token))
    }

    /// The key that signs HTTP links.
    pub fn links(token: &[u8]) -> Key {
        Key(blake3::derive_key(LINKS_CONTEXT, token))
    }

    fn mac(&self, parts: &[&[u8]]) -> Digest {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// The client's proof: it knows the token, for this connection (the server's nonce),
    /// this request (its own nonce, the offset, the version).
    pub fn client_proof(&self, client_nonce: &[u8; 32], server_nonce: &[u8; 32], offset: u64, version: u8) -> Digest {
        self.mac(&[b"client proof\0", client_nonce, server_nonce, &offset.to_be_bytes(), &[version]])
    }

    /// The server's proof over what it answers: the response header (size, digest, status,
    /// flags), the name after it, and the offset the body starts at, bound to both nonces.
    pub fn server_mac(
        &self,
        client_nonce: &[u8; 32],
        server_nonce: &[u8; 32],
        header: &[u8; 48],
        name: &[u8],
        offset: u64,
    ) -> Digest {
        let name_len = (name.len() as u16).to_be_bytes();
        self.mac(&[b"server proof\0", client_nonce, server_nonce, header, &name_len, name, &offset.to_be_bytes()])
    }

    /// A link's signature: the path (as bytes, decoded) and when it expires (seconds since
    /// the Unix epoch).
    pub fn sign_link(&self, path: &[u8], expires: u64) -> [u8; LINK_SIG_LEN] {
        let len = (path.len() as u32).to_be_bytes();
        let full = self.mac(&[b"link\0", &len, path, &expires.to_be_bytes()]);
        let mut sig = [0u8; LINK_SIG_LEN];
        sig.copy_from_slice(&full[..LINK_SIG_LEN]);
        sig
    }
}

/// Constant-time equality of two MACs (or any two byte strings of one length).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut x = [0u8; 32];
    let mut y = [0u8; 32];
    let n = a.len().min(32);
    x[..n].copy_from_slice(&a[..n]);
    y[..n].copy_from_slice(&b[..n]);
    // blake3::Hash's equality is constant-time; padding both the same way keeps it so.
    a.len() <= 32 && blake3::Hash::from_bytes(x) == blake3::Hash::from_bytes(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_macs_are_bound_to_everything() {
        let k = Key::native(b"sesame");
        let (c, s) = ([1u8; 32], [2u8; 32]);
        let p = k.client_proof(&c, &s, 0, 2);
        assert_eq!(p, Key::native(b"sesame").client_proof(&c, &s, 0, 2), "deterministic");
        assert_ne!(p, Key::native(b"Sesame").client_proof(&c, &s, 0, 2), "another token");
        assert_ne!(p, k.client_proof(&c, &[3; 32], 0, 2), "another server nonce: no replay");
        assert_ne!(p, k.client_proof(&c, &s, 1, 2), "another offset");
        let h = [7u8; 48];
        let m = k.server_mac(&c, &s, &h, b"a.bin", 0);
        assert_ne!(m, k.server_mac(&c, &s, &h, b"b.bin", 0), "the name is covered");
        let mut h2 = h;
        h2[20] ^= 1;
        assert_ne!(m, k.server_mac(&c, &s, &h2, b"a.bin", 0), "the digest is covered");
        assert_ne!(m, p, "a client's proof is no server's");
        let l = Key::links(b"sesame");
        assert_ne!(l.sign_link(b"/a", 10)[..], k.sign_link(b"/a", 10)[..], "one key per use");
        assert_ne!(l.sign_link(b"/a", 10), l.sign_link(b"/a", 11));
        assert!(same(&m, &m) && !same(&m, &p) && !same(&m[..16], &m));
        assert_eq!(format!("{k:?}"), "Key(<redacted>)");
    }
}
