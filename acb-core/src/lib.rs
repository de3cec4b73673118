//! acb-core: the sans-IO heart of acb, the open GPU computing broker.
//!
//! Everything here is a deterministic state machine: no clock (time comes in as `now`), no
//! I/O, no threads, no `unsafe`, no `std`. The assigner daemon and the simulator drive the
//! very same code, so what the simulator predicts is what the daemon decides.
//!
//! - [`GpuPool`]: nodes, GPUs, health.
//! - [`Scheduler`]: the queue, the policies (`simple`, `gpu-sharing`, `gpu-affinity`),
//!   priorities, backfill, reservations, time slices.
//! - [`ClientMachine`]: one job's GPU phases and its lease, with lazy or eager release.
//! - [`SwapRegistry`]: a job's device allocations and what a swap must copy.
//! - [`sim`]: a discrete-event simulator over job traces, with the static baseline.
//! - [`record`]: the assigner's event record (what it decided, when), and [`inventory`]: which
//!   GPUs an assigner owns, as users type it.
//! - [`stats`]: interval unions, GPU-busy fractions and the table that compares runs.
//! - [`units`]: the one grammar of sizes and durations (`512M`, `1.5s`), and their display.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod client;
mod error;
mod id;
pub mod inventory;
mod pool;
pub mod record;
mod request;
pub mod scheduler;
pub mod sim;
pub mod stats;
pub mod swap;
mod time;
pub mod units;

pub use client::{
    Action, ClientConfig, ClientError, ClientMachine, GpuDemand, ReleaseMode, RequestTag, SessionEpoch, State,
};
pub use error::{Error, ErrorKind};
pub use id::{ClientId, GpuId, LeaseId, NodeId, RequestId};
pub use pool::{Gpu, GpuPool, Health, Node};
pub use request::{Affinity, Group, MAX_GROUP_SIZE, Request};
pub use scheduler::{Grant, Output, Policy, Scheduler, SchedulerConfig, UnknownPolicy, YieldReason};
pub use swap::{AllocId, SwapPlan, SwapRegistry};
pub use time::Instant;
pub use units::Bytes;
