//! Integration tests: every test runs the real `xfer` binary on port 0, reads the bound
//! address from its first line of output, and compares bytes.
//!
//! One test binary with submodules (as ripgrep does), so cargo links it once.

mod util;

mod basic;
mod defects;
mod faults;
mod http;
mod promises;
mod regressions;
mod resume;
mod security;
mod signals;
