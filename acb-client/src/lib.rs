//! The acb client in Rust: a job's GPU phases and swappable device memory, with no C in
//! between. libacb (`acb-ffi`) is a thin C shell over this crate; the assigner's CLI uses its
//! connection.
//!
//! ```no_run
//! use acb_client::{Client, Config, Request};
//! let client = Client::new(Config::from_env()?)?;
//! let lease = client.begin(&Request::default())?; // waits for a GPU; the job's memory comes back
//! // ... compute on lease.devices[0].index ...
//! client.end()?; // the GPU may go to another job; the job's memory moves to host memory
//! # Ok::<(), acb_client::Error>(())
//! ```
//!
//! Layers: [`connection`] (gRPC to the assigner), `driver` (the one task that drives
//! [`acb_core::ClientMachine`] and does the I/O), `memory` (the swap engine and its host and CUDA
//! VMM backends), [`Client`] (the safe API over them).
//!
//! Must never depend on daemon code: no NVML, Prometheus, axum, clap, reflection or health
//! crates (`cargo tree -p acb-client` shows none).

mod client;
pub mod config;
pub mod connection;
mod driver;
mod error;
pub mod events;
pub mod group;
pub mod internal;
mod lease;
mod memory;
mod profile;
mod sigpipe;
pub mod socket_owner;
mod status;
pub mod tls;

pub use acb_core::ReleaseMode;
pub use acb_proto::Address;
pub use client::Client;
pub use config::{Config, MemoryBackend, check_job, read_token};
pub use error::Error;
pub use group::Group;
pub use lease::{Device, Lease, Request};
pub use memory::MemoryStats;
pub use status::status_json;
