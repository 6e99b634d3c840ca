//! The phases, one function each, run in the order main.rs lists them. A phase prints its
//! section (a heading, a line per server, a blank line) and adds its rows to the report.
//!
//! The load phases (small, keepalive, fanout, fanout2, stall, crowd) measure xfer and nginx through
//! `compare::side_by_side`; fetch times client commands against both servers at once. A
//! phase must never know another exists: what they share lives in setup.rs and compare.rs.

mod crowd;
mod fetch;
mod stall;
mod throughput;

pub use crowd::crowd;
pub use fetch::fetch;
pub use stall::stall;
pub use throughput::{fanout, fanout2, keepalive, small};
