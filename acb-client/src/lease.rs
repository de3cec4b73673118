//! What a GPU phase asks for ([`Request`]) and what it is granted ([`Lease`]).

use std::time::Duration;

/// What a GPU phase asks for. Defaults: 1 whole GPU, priority 0, no timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// GPUs, granted together (at least 1).
    pub gpus: u32,
    /// Memory per GPU in bytes (`None`: whole GPUs). Under `gpu-sharing` this is the fence.
    pub memory_per_gpu: Option<u64>,
    /// Higher is served first.
    pub priority: i32,
    /// How long [`crate::Client::begin`] waits for the grant (`None`: as long as it takes).
    pub timeout: Option<Duration>,
}

impl Default for Request {
    fn default() -> Request {
        Request { gpus: 1, memory_per_gpu: None, priority: 0, timeout: None }
    }
}

/// One granted GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The node-local index (what `CUDA_VISIBLE_DEVICES` uses).
    pub index: u32,
    /// The GPU's UUID (`GPU-...`; `fake-...` for simulated GPUs).
    pub uuid: String,
}

/// The GPUs of a granted GPU phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The assigner's id of the lease.
    pub id: u64,
    /// The granted GPUs.
    pub devices: Vec<Device>,
    /// The memory the lease may use on each GPU, in bytes.
    pub memory_per_gpu: u64,
}
