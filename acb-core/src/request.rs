//! What a client asks for.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{ClientId, GpuId};

/// Which GPUs a request may or should use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Affinity {
    /// Any GPU will do (the scheduler still prefers the ones the client used last).
    #[default]
    Any,
    /// Prefer these GPUs when they are free, otherwise take any.
    Preferred(Vec<GpuId>),
    /// Only these GPUs.
    Required(Vec<GpuId>),
}

/// A gang across processes: requests naming the same group are granted together, in one
/// decision, once `size` of them wait, or none is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's name, shared by its members (e.g. a torchrun run id).
    pub name: String,
    /// How many members it has (all must agree).
    pub size: u32,
}

/// The largest group a request may name.
pub const MAX_GROUP_SIZE: u32 = 4096;

/// One request for GPUs: "give me `gpus` GPUs with `memory_per_gpu` bytes on each".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client asking. It must be connected.
    pub client: ClientId,
    /// The job the client belongs to (for people and for the event record).
    pub job: String,
    /// How many GPUs, granted all together or not at all (a gang).
    pub gpus: u32,
    /// Memory needed on each GPU, in bytes; `None` asks for whole GPUs. Under `gpu-sharing`
    /// this is the fence: the client's allocations past it fail.
    pub memory_per_gpu: Option<u64>,
    /// Higher goes first; equal priorities are served in arrival order.
    pub priority: i32,
    /// GPU placement wishes.
    pub affinity: Affinity,
    /// The gang across processes this request is one member of, if any.
    pub group: Option<Group>,
}

impl Request {
    /// A request for `gpus` whole GPUs at priority 0, any placement.
    pub fn new(client: ClientId, job: impl Into<String>, gpus: u32) -> Self {
        Request {
            client,
            job: job.into(),
            gpus,
            memory_per_gpu: None,
            priority: 0,
            affinity: Affinity::Any,
            group: None,
        }
    }

    /// The same request with `bytes` of memory per GPU.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory_per_gpu = Some(bytes);
        self
    }

    /// The same request at `priority`.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The same request as one member of the group `name` of `size` members.
    pub fn with_group(mut self, name: impl Into<String>, size: u32) -> Self {
        self.group = Some(Group { name: name.into(), size });
        self
    }

    /// The same request with `affinity`.
    pub fn with_affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = affinity;
        self
    }
}
