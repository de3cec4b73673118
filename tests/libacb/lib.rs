//! No library: this package holds libacb's integration tests (`tests/`) and its round-trip
//! benchmark (`examples/roundtrip_bench.rs`).
