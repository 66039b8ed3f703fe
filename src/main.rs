//! The `certguard` command line.
#![forbid(unsafe_code)]

fn main() {}
