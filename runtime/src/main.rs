//! The tc command line.
fn main() {}
