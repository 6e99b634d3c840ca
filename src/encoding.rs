//! Everything that crosses a wire or a terminal, as pure functions: no I/O, no allocation
//! sized by what a peer sent, no panics on any input. Decoders take the bytes received so
//! far and answer "need more", a value, or a typed error.
//!
//! The parts:
//! - [`sniff`]: which of the two protocols a connection speaks, from its first bytes;
//! - [`xfer`]: the native protocol (docs/PROTOCOL.md), a 48-byte request and header;
//! - [`http`]: HTTP/1.1 request heads and the pieces of response heads;
//! - [`auth`]: what the shared token proves (keyed BLAKE3 MACs);
//! - [`text`]: text from outside made safe for one terminal line or a shell;
//! - [`target`]: `host[:port]` as users write it.
//!
//! Servers and clients own the sockets and decide what to answer; this module only says
//! what bytes mean and what bytes to send.

pub mod auth;
pub mod http;
pub mod sniff;
pub mod target;
pub mod text;
pub mod xfer;

/// A BLAKE3 digest as it crosses the wire. Compare and print it as a [`blake3::Hash`]
/// (constant-time equality, lower-case hex as `b3sum` prints it).
pub type Digest = [u8; 32];

/// Result of feeding a decoder the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Not enough bytes yet; at least this many more are needed.
    NeedMore(usize),
    /// A complete value, and how many input bytes it used.
    Done(T, usize),
}
