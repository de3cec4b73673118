//! The GPU pool: nodes, their GPUs, and GPU health.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{GpuId, NodeId};

/// Whether a GPU can be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Usable.
    Healthy,
    /// Gone (the node's executor disconnected, NVML reported an Xid error, ...). Leases on it
    /// are revoked and it is never granted until it is healthy again.
    Lost,
}

/// One GPU as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its id in the pool.
    pub id: GpuId,
    /// The node it is on.
    pub node: NodeId,
    /// Its index on that node (what `CUDA_VISIBLE_DEVICES` would say).
    pub index: u32,
    /// Its stable identity (`GPU-...` from NVML, or a `fake-...` label).
    pub uuid: String,
    /// Total memory in bytes.
    pub memory: u64,
    /// Current health.
    pub health: Health,
}

/// One node (host) of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its id in the pool.
    pub id: NodeId,
    /// Its name (host name, or the executor's name).
    pub name: String,
    /// Its GPUs, in index order.
    pub gpus: Vec<GpuId>,
}

/// The GPUs a scheduler owns: one node as a node daemon, many as the cluster controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuPool {
    nodes: Vec<Node>,
    gpus: Vec<Gpu>,
}

impl GpuPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool of one node named `node` with `count` healthy GPUs of `memory` bytes each. Handy
    /// for tests and simulations; the uuids say `fake`.
    pub fn uniform(node: &str, count: u32, memory: u64) -> Self {
        let mut pool = Self::new();
        let n = pool.add_node(node);
        for i in 0..count {
            pool.add_gpu(n, alloc::format!("fake-{node}-{i}"), memory);
        }
        pool
    }

    /// Adds a node and returns its id.
    pub fn add_node(&mut self, name: &str) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node { id, name: name.into(), gpus: Vec::new() });
        id
    }

    /// Adds a healthy GPU to `node` and returns its id.
    ///
    /// # Panics
    /// If `node` was not returned by [`add_node`](Self::add_node) on this pool (a programming
    /// error of the caller building the pool, not something a client can cause).
    #[allow(clippy::panic)]
    pub fn add_gpu(&mut self, node: NodeId, uuid: String, memory: u64) -> GpuId {
        let id = GpuId(self.gpus.len() as u32);
        let Some(n) = self.nodes.get_mut(node.0 as usize) else {
            panic!("add_gpu: {node} is not a node of this pool");
        };
        let index = n.gpus.len() as u32;
        n.gpus.push(id);
        self.gpus.push(Gpu { id, node, index, uuid, memory, health: Health::Healthy });
        id
    }

    /// The node named `name`, if there is one.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().find(|n| n.name == name).map(|n| n.id)
    }

    /// One node, if it exists.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize)
    }

    /// All GPUs, in id order.
    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// All nodes, in id order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One GPU, if it exists.
    pub fn gpu(&self, id: GpuId) -> Option<&Gpu> {
        self.gpus.get(id.index())
    }

    pub(crate) fn gpu_mut(&mut self, id: GpuId) -> Option<&mut Gpu> {
        self.gpus.get_mut(id.index())
    }

    /// Number of GPUs, healthy or not.
    pub fn len(&self) -> usize {
        self.gpus.len()
    }

    /// Whether the pool has no GPU.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// The largest memory of any GPU (healthy or not), 0 for an empty pool.
    pub fn largest_memory(&self) -> u64 {
        self.gpus.iter().map(|g| g.memory).max().unwrap_or(0)
    }
}
