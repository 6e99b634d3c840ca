//! `xfer serve`: one file, many clients, each a session in the reactor's slab.
//!
//! The parts, in the order a connection meets them:
//! - [`start`]: options, the listening socket, the first snapshot, the event loops, the
//!   banner;
//! - [`admit`]: who is let in (allow list, limits, pause, token); a refusal is a verdict
//!   of its own, [`Refusal`], which each protocol renders;
//! - [`session`]: a connection's life (read the request, decide the reply, send it,
//!   linger, log) and the [`Server`] the reactor drives;
//! - [`xfer`] and [`http`]: the two protocols, which share the port: a request becomes a
//!   reply (a head to render and a byte range of the snapshot);
//! - [`send`]: the one send path that delivers any reply (writev, sendfile, budget, the
//!   cut of a stale body, the linger after the last byte);
//! - [`snapshot`]: one version of the file; [`reload`] and [`watch`]: the file over time;
//! - [`log`]: the one line per connection.
//!
//! Data flows one way: bytes in → protocol → reply → send path → bytes out. The protocol
//! code never touches a socket, and the send path never parses.

pub mod admit;
pub mod http;
pub mod log;
pub mod reload;
pub mod send;
pub mod session;
pub mod snapshot;
pub mod start;
pub mod watch;
pub mod xfer;

pub use admit::{Cidr, Policy, Refusal};
pub use send::Conn;
pub use session::{Outcome, Server, Session, Shared};
pub use snapshot::{InputError, MEMORY_MAX, Snapshot};
pub use start::{BUDGET, Options, ServeError, run};

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// A path for a message, with anything a terminal would act on escaped.
fn shown(p: &Path) -> String {
    crate::encoding::text::path(p)
}

/// Locks a mutex, carrying on if another loop panicked while holding it: the data is
/// plain counters and a pointer, never left half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
