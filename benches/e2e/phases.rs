//! The phases, one function each, run in the order main.rs lists them. A phase prints its
//! section (a heading, a line per server, a blank line) and adds its rows to the report.
//!
//! The load phases (small, keepalive, fanout, fanout2, stall, crowd) measure xfer and nginx through
//! `compare::side_by_side`, and auth xfer with a token and without through `compare::arms`;
//! fetch times client commands against both servers at once, and resume a fresh fetch
//! against a resumed one. A phase must never know another exists: what they share lives
//! in setup.rs and compare.rs.

mod crowd;
mod fetch;
mod resume;
mod stall;
mod throughput;

pub use crowd::crowd;
pub use fetch::fetch;
pub use resume::resume;
pub use stall::stall;
pub use throughput::{auth, fanout, fanout2, keepalive, small};
