//! Placement: choosing GPUs for a request among those usable now. Exclusive policies
//! (`simple`, `gpu-affinity`) take whole free GPUs; `gpu-sharing` packs by memory, best fit
//! first. Either way the GPUs a client used last come first, and a gang prefers one node. A
//! gang across processes is placed member by member, each beside the ones before it.

use alloc::vec::Vec;

use super::Scheduler;
use super::gang::{Placement, Planned};
use crate::{Affinity, GpuId, Request, RequestId};

impl Scheduler {
    /// Memory `request` takes on `gpu`.
    pub(super) fn need_on(&self, request: &Request, gpu: GpuId) -> u64 {
        let whole = self.pool.gpu(gpu).map_or(0, |g| g.memory);
        if self.config.policy.exclusive() { whole } else { request.memory_per_gpu.unwrap_or(whole) }
    }

    /// Whether `request` can be placed on `gpu` right now.
    pub(super) fn usable_now(&self, request: &Request, gpu: GpuId, may_use_reserved: bool) -> bool {
        if !self.eligible(request, gpu) {
            return false;
        }
        let (Some(g), Some(s)) = (self.pool.gpu(gpu), self.gpus.get(gpu.index())) else {
            return false;
        };
        if s.reserved && !may_use_reserved {
            return false;
        }
        if self.config.policy.exclusive() {
            s.holders.is_empty()
        } else {
            g.memory - s.granted >= self.need_on(request, gpu)
        }
    }

    /// Chooses GPUs for a queue entry among those usable now (for a gang's unit, for every
    /// member), or `None`.
    pub(super) fn place(&self, id: RequestId, is_head: bool) -> Option<Placement> {
        if let Some(members) = self.unit_members(id) {
            return self.place_unit(id, members, is_head);
        }
        let req = &self.requests.get(&id)?.request;
        let gpus = self.place_one(req, is_head, &[], &Planned::new())?;
        Some(alloc::vec![(id, gpus)])
    }

    /// Chooses GPUs for one request among those usable now and beside `planned` (what earlier
    /// members of the same decision take), `first` preferred above all, or `None`.
    pub(super) fn place_one(
        &self,
        req: &Request,
        is_head: bool,
        first: &[GpuId],
        planned: &Planned,
    ) -> Option<Vec<GpuId>> {
        let k = req.gpus as usize;
        let usable = |g: GpuId| {
            self.usable_now(req, g, is_head)
                && (planned.is_empty()
                    || self.fits_beside(req, g, self.gpus.get(g.index()).map_or(0, |s| s.granted), planned))
        };
        let mut chosen: Vec<GpuId> = Vec::with_capacity(k);
        for &g in first.iter().chain(self.preferences(req)) {
            if chosen.len() == k {
                break;
            }
            if !chosen.contains(&g) && usable(g) {
                chosen.push(g);
            }
        }
        if chosen.len() == k {
            return Some(chosen);
        }
        let lo = if self.config.policy.exclusive() {
            req.memory_per_gpu.unwrap_or(0)
        } else {
            req.memory_per_gpu.unwrap_or(1)
        };
        let candidates = self.grantable.range((lo, GpuId(0))..).map(|(_, g)| *g).filter(|g| usable(*g));
        if k == 1 {
            return candidates.take(1).next().map(|g| alloc::vec![g]);
        }
        let all: Vec<GpuId> = candidates.filter(|g| !chosen.contains(g)).collect();
        if chosen.len() + all.len() < k {
            return None;
        }
        // A gang prefers one node: the node that has room for all of it, with most of the
        // preferred GPUs on it.
        let mut best_node: Option<(usize, crate::NodeId)> = None;
        for node in self.pool.nodes() {
            let on_node = |g: &GpuId| self.pool.gpu(*g).is_some_and(|x| x.node == node.id);
            let room = chosen.iter().filter(|g| on_node(g)).count() + all.iter().filter(|g| on_node(g)).count();
            if room >= k {
                let preferred = chosen.iter().filter(|g| on_node(g)).count();
                if best_node.is_none_or(|(p, _)| preferred > p) {
                    best_node = Some((preferred, node.id));
                }
            }
        }
        if let Some((_, node)) = best_node {
            let on_node = |g: &GpuId| self.pool.gpu(*g).is_some_and(|x| x.node == node);
            chosen.retain(on_node);
            chosen.extend(all.iter().copied().filter(on_node).take(k - chosen.len()));
        } else {
            chosen.extend(all.iter().copied().take(k - chosen.len()));
        }
        Some(chosen)
    }

    /// The GPUs `req` would like: the ones its client used last, then its preferred ones.
    pub(super) fn preferences<'a>(&'a self, req: &'a Request) -> impl Iterator<Item = &'a GpuId> + 'a {
        let last = self.clients.get(&req.client).map(|c| c.last_gpus.as_slice()).unwrap_or(&[]);
        let preferred: &[GpuId] = match &req.affinity {
            Affinity::Preferred(ids) | Affinity::Required(ids) => ids,
            Affinity::Any => &[],
        };
        last.iter().chain(preferred.iter())
    }
}
