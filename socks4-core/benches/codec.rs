//! Criterion benchmarks of the codec (placeholder).
fn main() {}
