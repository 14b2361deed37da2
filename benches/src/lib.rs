//! Benchmarks for baton; see `benches/savina.rs` and `BENCHMARKS.md` at the workspace root.
#![warn(missing_docs)]
