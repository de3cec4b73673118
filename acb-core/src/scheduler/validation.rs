//! Validation: whether a request can ever be served by the healthy part of the pool. A request
//! that cannot is refused at submit, or rejected from the queue when GPUs are lost.

use alloc::vec::Vec;

use super::Scheduler;
use crate::{Affinity, Error, GpuId, Health, Request};

/// What the healthy part of the pool can offer, cached so validation is O(1) for common
/// requests.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HealthySummary {
    count: u32,
    smallest: u64,
    largest: u64,
}

impl Scheduler {
    pub(super) fn validate(&self, request: &Request) -> Result<(), Error> {
        let policy = self.config.policy;
        if request.gpus == 0 {
            return Err(Error::ZeroGpus);
        }
        if request.gpus > policy.max_gpus() {
            return Err(Error::PolicyLimit { policy: policy.name(), requested: request.gpus, max: policy.max_gpus() });
        }
        if request.memory_per_gpu == Some(0) {
            return Err(Error::ZeroMemory);
        }
        let ids: &[GpuId] = match &request.affinity {
            Affinity::Any => &[],
            Affinity::Preferred(ids) | Affinity::Required(ids) => ids,
        };
        if let Some(bad) = ids.iter().find(|g| self.pool.gpu(**g).is_none()) {
            return Err(Error::UnknownGpu(*bad));
        }
        let need = request.memory_per_gpu.unwrap_or(0);
        if need > self.healthy.largest {
            return Err(Error::MemoryTooLarge { requested: need, largest: self.healthy.largest });
        }
        let available = match &request.affinity {
            Affinity::Required(ids) => {
                let mut set: Vec<GpuId> = ids.clone();
                set.sort_unstable();
                set.dedup();
                set.iter().filter(|g| self.eligible(request, **g)).count() as u32
            }
            _ if need <= self.healthy.smallest => self.healthy.count,
            _ => self.pool.gpus().iter().filter(|g| self.eligible(request, g.id)).count() as u32,
        };
        if request.gpus > available {
            return Err(Error::TooManyGpus { requested: request.gpus, available });
        }
        Ok(())
    }

    /// Whether `gpu` could ever serve `request` (healthy, big enough, allowed), regardless of
    /// who holds it now.
    pub(super) fn eligible(&self, request: &Request, gpu: GpuId) -> bool {
        let Some(g) = self.pool.gpu(gpu) else {
            return false;
        };
        g.health == Health::Healthy
            && g.memory > 0
            && g.memory >= request.memory_per_gpu.unwrap_or(0)
            && match &request.affinity {
                Affinity::Required(ids) => ids.contains(&gpu),
                _ => true,
            }
    }

    /// Recomputes the healthy summary; after any change of health.
    pub(super) fn refresh_healthy(&mut self) {
        // A GPU with no memory can serve nobody: it does not count as healthy capacity.
        let healthy = self.pool.gpus().iter().filter(|g| g.health == Health::Healthy && g.memory > 0);
        let mut summary = HealthySummary { count: 0, smallest: u64::MAX, largest: 0 };
        for g in healthy {
            summary.count += 1;
            summary.smallest = summary.smallest.min(g.memory);
            summary.largest = summary.largest.max(g.memory);
        }
        if summary.count == 0 {
            summary.smallest = 0;
        }
        self.healthy = summary;
    }
}
