//! Swap bookkeeping: which device allocations a job has, how big, and where each one is.
//!
//! The CUDA memory layer (or the host-memory backend) does the copying; this registry decides
//! what to copy. A read-only allocation (weights, marked so by a binding) keeps its host copy
//! after it is swapped in, so later swap-outs skip its device-to-host copy.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::{ClientId, GpuId};

/// One device allocation, unique for the registry's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocId(pub u64);

/// Where an allocation's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Mapped on this GPU.
    Resident(GpuId),
    /// Only in host memory; its virtual range is kept but unmapped.
    Swapped,
}

/// One device allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The job that owns it.
    pub owner: ClientId,
    /// The job's device ordinal it was made on (0 for the first GPU of its lease, ...): on
    /// swap-in it goes to the lease's GPU of that ordinal.
    pub ordinal: u32,
    /// Bytes.
    pub size: u64,
    /// Where it is.
    pub residency: Residency,
    /// Never written on the device after it was filled: its host copy stays valid.
    pub read_only: bool,
    /// Whether host memory holds a current copy.
    pub host_copy: bool,
}

/// One allocation in a [`SwapPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwapItem {
    /// The allocation.
    pub id: AllocId,
    /// Its bytes.
    pub size: u64,
    /// Whether the bytes must be copied (false: a valid copy is already where they go).
    pub copy: bool,
    /// The GPU it is on (swap-out) or goes to (swap-in).
    pub gpu: GpuId,
}

/// What a swap of one job must do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwapPlan {
    /// The allocations, in id order.
    pub items: Vec<SwapItem>,
}

impl SwapPlan {
    /// Bytes that must be copied.
    pub fn bytes_to_copy(&self) -> u64 {
        self.items.iter().filter(|i| i.copy).map(|i| i.size).sum()
    }

    /// Bytes moved in total (copied or only remapped).
    pub fn bytes_total(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// No such allocation.
    UnknownAllocation(AllocId),
    /// A swap-in needs a GPU for `ordinal` but the lease has fewer GPUs.
    MissingOrdinal {
        /// The ordinal without a GPU.
        ordinal: u32,
        /// GPUs in the lease.
        gpus: usize,
    },
    /// An allocation of zero bytes.
    ZeroSize,
}

impl fmt::Display for SwapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapError::UnknownAllocation(id) => write!(f, "allocation {} is not registered", id.0),
            SwapError::MissingOrdinal { ordinal, gpus } => {
                write!(f, "memory was made on device {ordinal} but the lease has only {gpus} GPU(s)")
            }
            SwapError::ZeroSize => f.write_str("an allocation of zero bytes"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SwapError {}

/// Totals for one job or one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes mapped on a GPU.
    pub resident: u64,
    /// Bytes only in host memory.
    pub swapped: u64,
    /// Allocations.
    pub count: usize,
}

/// The registry of device allocations of the jobs of one process (or of a simulation).
#[derive(Clone, Debug, Default)]
pub struct SwapRegistry {
    allocs: BTreeMap<AllocId, Allocation>,
    next: u64,
}

impl SwapRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        SwapRegistry { allocs: BTreeMap::new(), next: 1 }
    }

    /// Records a new allocation, resident on `gpu`.
    pub fn insert(
        &mut self,
        owner: ClientId,
        ordinal: u32,
        gpu: GpuId,
        size: u64,
        read_only: bool,
    ) -> Result<AllocId, SwapError> {
        if size == 0 {
            return Err(SwapError::ZeroSize);
        }
        let id = AllocId(self.next.max(1));
        self.next = id.0 + 1;
        self.allocs.insert(
            id,
            Allocation { owner, ordinal, size, residency: Residency::Resident(gpu), read_only, host_copy: false },
        );
        Ok(id)
    }

    /// Forgets an allocation (it was freed).
    pub fn remove(&mut self, id: AllocId) -> Result<Allocation, SwapError> {
        self.allocs.remove(&id).ok_or(SwapError::UnknownAllocation(id))
    }

    /// One allocation.
    pub fn get(&self, id: AllocId) -> Option<&Allocation> {
        self.allocs.get(&id)
    }

    /// Marks an allocation read-only (or not). Marking it writable drops its host copy's
    /// validity while it is resident.
    pub fn set_read_only(&mut self, id: AllocId, read_only: bool) -> Result<(), SwapError> {
        let a = self.allocs.get_mut(&id).ok_or(SwapError::UnknownAllocation(id))?;
        a.read_only = read_only;
        if !read_only && matches!(a.residency, Residency::Resident(_)) {
            a.host_copy = false;
        }
        Ok(())
    }

    /// The device copy was written: a resident allocation's host copy is stale.
    pub fn mark_written(&mut self, id: AllocId) -> Result<(), SwapError> {
        let a = self.allocs.get_mut(&id).ok_or(SwapError::UnknownAllocation(id))?;
        if matches!(a.residency, Residency::Resident(_)) {
            a.host_copy = false;
        }
        Ok(())
    }

    /// What swapping out `owner`'s resident memory must copy.
    pub fn plan_swap_out(&self, owner: ClientId) -> SwapPlan {
        let items = self
            .of(owner)
            .filter_map(|(id, a)| match a.residency {
                Residency::Resident(gpu) => Some(SwapItem { id, size: a.size, copy: !a.host_copy, gpu }),
                Residency::Swapped => None,
            })
            .collect();
        SwapPlan { items }
    }

    /// The swap-out of `plan` is done: those allocations are in host memory now.
    pub fn complete_swap_out(&mut self, plan: &SwapPlan) {
        for item in &plan.items {
            if let Some(a) = self.allocs.get_mut(&item.id) {
                a.residency = Residency::Swapped;
                a.host_copy = true;
            }
        }
    }

    /// What swapping `owner`'s memory in onto the lease's `gpus` (by ordinal) must copy.
    pub fn plan_swap_in(&self, owner: ClientId, gpus: &[GpuId]) -> Result<SwapPlan, SwapError> {
        let mut items = Vec::new();
        for (id, a) in self.of(owner) {
            if a.residency != Residency::Swapped {
                continue;
            }
            let gpu = *gpus
                .get(a.ordinal as usize)
                .ok_or(SwapError::MissingOrdinal { ordinal: a.ordinal, gpus: gpus.len() })?;
            items.push(SwapItem { id, size: a.size, copy: true, gpu });
        }
        Ok(SwapPlan { items })
    }

    /// The swap-in of `plan` is done. Writable allocations' host copies are stale from now on
    /// (the job may write them); read-only ones keep theirs.
    pub fn complete_swap_in(&mut self, plan: &SwapPlan) {
        for item in &plan.items {
            if let Some(a) = self.allocs.get_mut(&item.id) {
                a.residency = Residency::Resident(item.gpu);
                a.host_copy = a.read_only;
            }
        }
    }

    /// Totals for one job.
    pub fn client_totals(&self, owner: ClientId) -> Totals {
        totals(self.of(owner).map(|(_, a)| a))
    }

    /// Resident totals for one GPU (`swapped` is always 0 here).
    pub fn gpu_totals(&self, gpu: GpuId) -> Totals {
        totals(self.allocs.values().filter(|a| a.residency == Residency::Resident(gpu)))
    }

    /// Every allocation of `owner`, in id order.
    pub fn of(&self, owner: ClientId) -> impl Iterator<Item = (AllocId, &Allocation)> {
        self.allocs.iter().filter(move |(_, a)| a.owner == owner).map(|(id, a)| (*id, a))
    }

    /// Number of allocations.
    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }
}

fn totals<'a>(allocs: impl Iterator<Item = &'a Allocation>) -> Totals {
    let mut t = Totals::default();
    for a in allocs {
        t.count += 1;
        match a.residency {
            Residency::Resident(_) => t.resident += a.size,
            Residency::Swapped => t.swapped += a.size,
        }
    }
    t
}
