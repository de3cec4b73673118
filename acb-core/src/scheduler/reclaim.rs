//! Reclaiming GPUs: asking holders to yield, for the head's reservation (idle holders at
//! once, busy ones when their time slice is up) and for requests behind it (idle holders only).

use alloc::vec::Vec;

use super::{Output, Scheduler, YieldReason};
use crate::{GpuId, Instant, LeaseId, RequestId};

impl Scheduler {
    /// Asks the holders of the head's reserved GPUs to yield: idle ones at once, busy ones when
    /// their quantum is up.
    pub(super) fn ask_yields_for_head(&mut self, id: RequestId, now: Instant) {
        let Some(r) = &self.reservation else { return };
        let Some(head) = self.requests.get(&id) else { return };
        if head.reclaiming.iter().any(|l| self.leases.contains_key(l)) {
            // Holders asked earlier on this request's behalf (perhaps while it was behind the
            // head) have not let go yet: asking more would swap jobs out for nothing.
            return;
        }
        let head_priority = head.priority();
        let mut asks: Vec<(LeaseId, YieldReason)> = Vec::new();
        for g in &r.gpus {
            for l in &self.gpus[g.index()].holders {
                let Some(lease) = self.leases.get(l) else {
                    continue;
                };
                if lease.yield_asked || asks.iter().any(|(a, _)| a == l) {
                    continue;
                }
                if lease.idle {
                    asks.push((*l, YieldReason::Contended));
                } else if lease.priority <= head_priority
                    && self.config.quantum.is_some_and(|q| now >= lease.granted_at + q)
                {
                    asks.push((*l, YieldReason::QuantumExpired));
                }
            }
        }
        for (l, reason) in asks {
            let asked = self.ask_yield(l, reason);
            if let Some(q) = self.requests.get_mut(&id) {
                q.reclaiming.extend(asked);
            }
        }
        let leases = &self.leases;
        if let Some(q) = self.requests.get_mut(&id) {
            q.reclaiming.retain(|l| leases.contains_key(l));
        }
    }

    /// A request behind the head that does not fit now: if idle leases outside the
    /// reservation would make room for it, ask them to yield (one batch at a time).
    pub(super) fn reclaim_idle_for(&mut self, id: RequestId) {
        if self.idle_unasked.is_empty() {
            return; // no kept GPU to reclaim
        }
        if self.unit_members(id).is_some() {
            // A gang's unit behind the head waits for free GPUs, or its turn at the head (where
            // its reservation reclaims for all its members).
            return;
        }
        let Some(q) = self.requests.get(&id) else {
            return;
        };
        if q.reclaiming.iter().any(|l| self.leases.contains_key(l)) {
            return; // yields already asked for this request are still pending
        }
        let req = &q.request;
        let k = req.gpus as usize;
        let mut gpus: Vec<GpuId> = Vec::with_capacity(k);
        let mut leases: Vec<LeaseId> = Vec::new();
        let lo = req.memory_per_gpu.unwrap_or(0);
        for g in self.grantable.range((lo, GpuId(0))..).map(|(_, g)| *g) {
            if gpus.len() == k {
                break;
            }
            if self.usable_now(req, g, false) {
                gpus.push(g);
            }
        }
        for &l in &self.idle_unasked {
            if gpus.len() == k {
                break;
            }
            let Some(lease) = self.leases.get(&l) else {
                continue;
            };
            for &g in &lease.gpus {
                if gpus.len() == k || gpus.contains(&g) || self.gpus[g.index()].reserved || !self.eligible(req, g) {
                    continue;
                }
                // Room on g once this lease (and any other idle-unasked holder) lets go.
                let s = &self.gpus[g.index()];
                let freed: u64 = s
                    .holders
                    .iter()
                    .filter(|h| self.idle_unasked.contains(h))
                    .filter_map(|h| self.leases.get(h))
                    .map(|h| h.gpus.iter().position(|x| *x == g).map_or(0, |i| h.memory[i]))
                    .sum();
                let all_idle = s.holders.iter().all(|h| self.idle_unasked.contains(h));
                let capacity = self.pool.gpu(g).map_or(0, |x| x.memory);
                let fits = if self.config.policy.exclusive() {
                    all_idle
                } else {
                    capacity - s.granted + freed >= self.need_on(req, g)
                };
                if fits {
                    gpus.push(g);
                    for h in &s.holders {
                        if self.idle_unasked.contains(h) && !leases.contains(h) {
                            leases.push(*h);
                        }
                    }
                }
            }
        }
        if gpus.len() < k || leases.is_empty() {
            return;
        }
        let mut asked = Vec::with_capacity(leases.len());
        for &l in &leases {
            asked.extend(self.ask_yield(l, YieldReason::Contended));
        }
        if let Some(q) = self.requests.get_mut(&id) {
            q.reclaiming = asked;
        }
    }

    /// Asks the holder of `lease` to yield it, and, if it was granted as a member of a gang,
    /// the holders of the others of its grant still held, at once: a gang runs whole or not
    /// at all. Returns the leases asked now.
    pub(super) fn ask_yield(&mut self, lease: LeaseId, reason: YieldReason) -> Vec<LeaseId> {
        let mut all = alloc::vec![lease];
        if let Some((_, peers)) = self.gang_peers(lease) {
            all.extend(peers);
        }
        all.retain(|l| self.ask_yield_one(*l, reason));
        all
    }

    /// Asks the holder of `lease` alone to yield it; returns whether it was asked now.
    pub(super) fn ask_yield_one(&mut self, lease: LeaseId, reason: YieldReason) -> bool {
        let Some(l) = self.leases.get_mut(&lease) else {
            return false;
        };
        if l.yield_asked {
            return false;
        }
        l.yield_asked = true;
        self.idle_unasked.remove(&lease);
        self.outputs.push_back(Output::YieldAsked { client: l.client, lease, reason });
        true
    }
}
