//! Confab benchmarks: criterion microbenchmarks live in `benches/`, results in `RESULTS.md`.
