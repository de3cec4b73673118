//! acb's lab: what shows and measures the broker, as a client of it.
//!
//! - [`demo`]: `acb-assigner demo`, the same pipeline jobs static and brokered, side by side.
//! - [`bench`]: `acb-assigner bench`, grant+release cycles against bare gRPC calls.
//! - [`timeline`]: an event record as an SVG timeline (`timeline`, `simulate --svg`, the demo).
//! - [`trace`]: job traces for `acb-assigner simulate` (`agarun --profile` writes them).
//!
//! The `acb-assigner` CLI keeps these subcommands and hands this crate what only the daemon has:
//! GPU discovery and an in-process assigner. Must never depend on the daemon (`acb-assigner`),
//! NVML, Prometheus or axum.

pub mod bench;
pub mod demo;
mod error;
pub mod timeline;
pub mod trace;

pub use error::Error;
