//! The invariants the scheduler keeps between inputs, for the tests to check (the property
//! tests check them after every input).

use super::Scheduler;
use crate::{GpuId, Health};

impl Scheduler {
    /// Checks the invariants the rest of the crate relies on; for tests. Returns what is
    /// broken, if anything.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        for (i, s) in self.gpus.iter().enumerate() {
            let gpu = GpuId(i as u32);
            let g = self.pool.gpu(gpu).ok_or("gpu state without a gpu")?;
            if s.granted > g.memory {
                return Err(format!("{gpu}: {} granted of {}", s.granted, g.memory));
            }
            if self.config.policy.exclusive() && s.holders.len() > 1 {
                return Err(format!("{gpu}: exclusive but held by {:?}", s.holders));
            }
            let sum: u64 = s
                .holders
                .iter()
                .map(|l| {
                    let l = &self.leases[l];
                    l.gpus.iter().position(|x| *x == gpu).map_or(0, |p| l.memory[p])
                })
                .sum();
            if sum != s.granted {
                return Err(format!("{gpu}: granted {} but holders sum to {sum}", s.granted));
            }
            let idle = s.holders.iter().filter(|l| self.leases[l].idle).count() as u32;
            if s.idle_holders != idle || s.busy_holders as usize + idle as usize != s.holders.len() {
                return Err(format!("{gpu}: holder counters {}/{} disagree", s.busy_holders, s.idle_holders));
            }
            if g.health == Health::Lost && !s.holders.is_empty() {
                return Err(format!("{gpu}: lost but held"));
            }
        }
        for (id, l) in &self.leases {
            if l.gpus.len() != l.memory.len() {
                return Err(format!("{id}: gpus and memory differ in length"));
            }
            for g in &l.gpus {
                if !self.gpus[g.index()].holders.contains(id) {
                    return Err(format!("{id}: not among the holders of {g}"));
                }
            }
            if !self.clients.get(&l.client).is_some_and(|c| c.leases.contains(id)) {
                return Err(format!("{id}: held by a client that does not know it"));
            }
        }
        if self.queued_needs.values().sum::<usize>() != self.requests.len() {
            return Err("queued needs and request table differ".into());
        }
        if self.queue.len() != self.requests.len() {
            return Err("queue and request table differ".into());
        }
        for (c, state) in &self.clients {
            for r in &state.queued {
                if self.requests.get(r).is_none_or(|q| q.request.client != *c) {
                    return Err(format!("{c}: queued {r} is not its own"));
                }
            }
        }
        if let Some(r) = &self.reservation
            && !self.requests.contains_key(&r.request)
        {
            return Err(format!("reservation for {} which is not queued", r.request));
        }
        let reserved = self.gpus.iter().filter(|s| s.reserved).count();
        if reserved != self.reservation.as_ref().map_or(0, |r| r.gpus.len()) {
            return Err("reserved flags and reservation differ".into());
        }
        Ok(())
    }
}
