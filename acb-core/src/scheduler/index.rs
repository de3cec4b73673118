//! The lookup structures that keep a pass cheap, each kept in step with the state in one
//! place: the grantable index (GPUs that can take a new grant now, by free memory) and the
//! multiset of what queued requests need per GPU.

use super::Scheduler;
use crate::{GpuId, Health, Request};

/// What `request` needs on each GPU, as the queued-needs multiset counts it: at least a byte.
pub(super) fn queued_need(request: &Request) -> u64 {
    request.memory_per_gpu.unwrap_or(1)
}

impl Scheduler {
    /// Puts `gpu` in the grantable index under its current free memory, or takes it out.
    pub(super) fn reindex(&mut self, gpu: GpuId) {
        let (Some(g), Some(s)) = (self.pool.gpu(gpu), self.gpus.get_mut(gpu.index())) else {
            return;
        };
        if let Some(k) = s.index_key.take() {
            self.grantable.remove(&(k, gpu));
        }
        let free = g.memory - s.granted;
        let grantable =
            g.health == Health::Healthy && free > 0 && (!self.config.policy.exclusive() || s.holders.is_empty());
        if grantable {
            self.grantable.insert((free, gpu));
            s.index_key = Some(free);
        }
    }

    /// The most free memory on any grantable GPU outside the reservation (0: none).
    pub(super) fn largest_unreserved_room(&self) -> u64 {
        self.grantable.iter().rev().find(|(_, g)| !self.gpus[g.index()].reserved).map_or(0, |(free, _)| *free)
    }

    /// Counts a queue entry that needs `need` per GPU (a request, or a gang's unit: the least
    /// its members need) as it joins the queue.
    pub(super) fn count_need(&mut self, need: u64) {
        *self.queued_needs.entry(need).or_insert(0) += 1;
    }

    /// Uncounts a queue entry as it leaves the queue.
    pub(super) fn uncount_need(&mut self, need: u64) {
        if let Some(n) = self.queued_needs.get_mut(&need) {
            *n -= 1;
            if *n == 0 {
                self.queued_needs.remove(&need);
            }
        }
    }

    /// The least any queued request needs per GPU (`u64::MAX`: the queue is empty).
    pub(super) fn smallest_queued_need(&self) -> u64 {
        self.queued_needs.keys().next().copied().unwrap_or(u64::MAX)
    }
}
