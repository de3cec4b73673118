//! What acb's fuzz targets run, as plain functions over bytes. `fuzz/` (cargo-fuzz, libFuzzer)
//! calls each on generated inputs; this crate's tests call each on every file of the committed
//! corpus (`fuzz/corpus/TARGET/`), so CI replays what the fuzzer found without a fuzzer.
//!
//! A target panics (a crash to libFuzzer, a failed test here) when the code under test panics
//! or breaks a property checked here. Each returns whether the input was accepted as valid, so
//! the replay tests can check that the corpus reaches past the first parse.
//!
//! No target reads a file named by its input, or opens a socket other than one that does not
//! exist: a generated path could name `/dev/zero` or a FIFO and hang the fuzzer.

mod authority;
mod c_abi;
mod requests;
mod settings;
mod trace;

pub use authority::authority;
pub use c_abi::c_abi;
pub use requests::requests;
pub use settings::settings;
pub use trace::trace;

/// A target: runs one input, says whether it was accepted as valid.
pub type Target = fn(&[u8]) -> bool;

/// The targets by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/` are named.
pub const TARGETS: [(&str, Target); 5] =
    [("requests", requests), ("trace", trace), ("settings", settings), ("c_abi", c_abi), ("authority", authority)];
