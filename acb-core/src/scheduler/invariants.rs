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
        if self.queued_needs.values().sum::<usize>() != self.queue.len() {
            return Err("queued needs and queue differ".into());
        }
        // Every queue entry is a plain request or a complete gang's unit (under its first
        // member); every waiting request is a plain queued one or a member of its group.
        for (key, id) in &self.queue {
            let q = self.requests.get(id).ok_or_else(|| format!("queued {id} is not in the request table"))?;
            if q.key != *key {
                return Err(format!("{id}: queued under another key"));
            }
            if let Some(name) = super::gang_name(&q.request) {
                let w = self.groups.get(name).ok_or_else(|| format!("{id}: its group {name:?} is unknown"))?;
                if w.unit_key != Some(*key) || w.members.first() != Some(id) {
                    return Err(format!("{id}: queued but not as its group's unit"));
                }
            }
        }
        let mut members = 0usize;
        for (name, w) in &self.groups {
            if w.members.is_empty() || w.members.len() > w.size as usize {
                return Err(format!("group {name:?}: {} members of {}", w.members.len(), w.size));
            }
            if w.unit_key.is_some() != (w.members.len() == w.size as usize) {
                return Err(format!("group {name:?}: queued as a unit iff complete, broken"));
            }
            if w.unit_key.is_some_and(|k| !self.queue.contains_key(&k)) {
                return Err(format!("group {name:?}: complete but not queued"));
            }
            for m in &w.members {
                let ok = self.requests.get(m).is_some_and(|q| super::gang_name(&q.request) == Some(name.as_str()));
                if !ok {
                    return Err(format!("group {name:?}: member {m} is not waiting in it"));
                }
            }
            members += w.members.len();
        }
        let plain = self.requests.values().filter(|q| super::gang_name(&q.request).is_none()).count();
        if plain + members != self.requests.len() {
            return Err("the request table holds requests neither queued nor in a group".into());
        }
        for (l, gang) in &self.lease_gang {
            if !self.leases.contains_key(l) || !self.gangs.get(gang).is_some_and(|g| g.leases.contains(l)) {
                return Err(format!("{l}: linked to gang {gang} but gone, or not in it"));
            }
        }
        if self.gangs.values().map(|g| g.leases.len()).sum::<usize>() != self.lease_gang.len() {
            return Err("gang records and lease links differ".into());
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
