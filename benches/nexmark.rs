//! Nexmark benchmarks (written next).
fn main() {}
