//! A controller's nodes: executors register their node's GPUs, heartbeat, and are lost when
//! their link ends or their heartbeats stop. The pool grows as nodes register; a node that
//! comes back gets its GPUs (matched by uuid) back under the same ids.

use std::time::Duration;

use acb_core::record::EventKind;
use acb_core::{GpuId, Health, Instant as CoreInstant};
use tokio::time::Instant;

use super::api::{DomainError, NodeSnapshot};
use super::state::SavedGpu;
use super::{Driver, GrantedGpu};
use crate::discovery::FoundGpu;

/// What this daemon is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// One node, its own GPUs (the default).
    Standalone,
    /// The cluster's controller: its own GPUs (if any) and its executors' nodes.
    Controller {
        /// How often executors heartbeat; a node is lost after [`MISSED_HEARTBEATS`] intervals
        /// without one.
        heartbeat: Duration,
    },
}

impl Role {
    /// As status shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Controller { .. } => "controller",
        }
    }
}

/// Heartbeats an executor may miss before its node is lost.
pub const MISSED_HEARTBEATS: u32 = 3;

/// A node an executor serves, as the controller knows it.
#[derive(Debug)]
pub(super) struct RemoteNode {
    /// Its executor is registered and heartbeating.
    up: bool,
    /// When the controller last heard from it.
    last_seen: Instant,
    /// Why it is down.
    reason: String,
    /// The link it registered on (a newer link replaces an older one).
    link: u64,
    /// Restored from saved state and not registered again yet: lost at this instant if it
    /// does not.
    pending_until: Option<Instant>,
}

/// A GPU as an executor reports it.
#[derive(Clone, Debug)]
pub struct ReportedGpu {
    /// What it is.
    pub gpu: FoundGpu,
    /// Usable now.
    pub healthy: bool,
}

impl Driver {
    /// The driver is a controller.
    pub(super) fn is_controller(&self) -> bool {
        matches!(self.role, Role::Controller { .. })
    }

    fn heartbeat_every(&self) -> Duration {
        match self.role {
            Role::Controller { heartbeat } => heartbeat,
            Role::Standalone => Duration::from_secs(1),
        }
    }

    /// The pool ids of `node`'s GPUs (none for a node the pool does not have).
    fn node_gpu_ids(&self, node: &str) -> Vec<GpuId> {
        let pool = self.sched.pool();
        pool.node_by_name(node).and_then(|id| pool.node(id)).map(|n| n.gpus.clone()).unwrap_or_default()
    }

    /// The GPUs clients of `node` may be granted, or why none.
    pub(super) fn gpus_of_node(&self, node: &str) -> Result<Vec<GpuId>, DomainError> {
        if self.sched.pool().node_by_name(node).is_none() {
            return Err(DomainError::Unavailable(format!(
                "node {node:?} has no GPUs in the pool (its executor has not registered with the controller)"
            )));
        }
        let gpus = self.node_gpu_ids(node);
        if gpus.is_empty() {
            return Err(DomainError::Unavailable(format!("node {node:?} has no GPUs")));
        }
        Ok(gpus)
    }

    /// An executor registered `node` with `gpus` on link `link`: the pool ids of its GPUs, in
    /// the order given.
    pub(super) fn register_node(
        &mut self,
        node: &str,
        gpus: Vec<ReportedGpu>,
        link: u64,
        now: CoreInstant,
    ) -> Result<Vec<u32>, DomainError> {
        if !self.is_controller() {
            return Err(DomainError::Invalid("this assigner is not a controller".into()));
        }
        if let Err(e) = crate::peer::check_node_name(node) {
            return Err(DomainError::Invalid(e));
        }
        if node == self.node {
            return Err(DomainError::Invalid(format!(
                "node {node:?} is the controller's own node; give each executor its own --node name"
            )));
        }
        let mut uuids = std::collections::HashSet::new();
        let mut indexes = std::collections::HashSet::new();
        if gpus.iter().any(|g| !uuids.insert(g.gpu.uuid.clone())) {
            return Err(DomainError::Invalid("a GPU uuid twice in one registration".into()));
        }
        if gpus.iter().any(|g| !indexes.insert(g.gpu.index)) {
            return Err(DomainError::Invalid("a GPU index twice in one registration".into()));
        }
        // The node's GPUs as the pool knows them, by uuid. GPUs are never removed from the pool
        // (ids stay stable): a node may not grow it past MAX_NODE_GPUS with ever new uuids.
        let known: std::collections::HashMap<String, GpuId> = self
            .node_gpu_ids(node)
            .into_iter()
            .filter_map(|g| self.sched.pool().gpu(g).map(|x| (x.uuid.clone(), g)))
            .collect();
        let new = gpus.iter().filter(|g| !known.contains_key(&g.gpu.uuid)).count();
        if known.len() + new > crate::cluster::join::MAX_NODE_GPUS {
            return Err(DomainError::Invalid(format!(
                "node {node:?} would have {} GPUs (it had {} and reports {new} new ones): at most {}",
                known.len() + new,
                known.len(),
                crate::cluster::join::MAX_NODE_GPUS
            )));
        }
        let nid = self.sched.add_node(node);
        let mut ids = Vec::with_capacity(gpus.len());
        for g in gpus {
            let existing = known.get(&g.gpu.uuid).copied();
            let id = match existing {
                Some(id) => {
                    if let Some(slot) = self.gpus.get_mut(id.0 as usize) {
                        *slot = g.gpu.clone();
                    }
                    id
                }
                None => {
                    let id =
                        self.sched.add_gpu(nid, g.gpu.uuid.clone(), g.gpu.memory, now).map_err(DomainError::Core)?;
                    self.gpus.push(g.gpu.clone());
                    self.metrics.add_gpu(node, &g.gpu);
                    id
                }
            };
            self.set_gpu_health(id, g.healthy, now);
            ids.push(id);
        }
        // GPUs the node had and no longer reports are gone.
        for id in known.into_values() {
            if !ids.contains(&id) {
                self.set_gpu_health(id, false, now);
            }
        }
        let at = Instant::now();
        self.nodes.insert(
            node.to_string(),
            RemoteNode { up: true, last_seen: at, reason: String::new(), link, pending_until: None },
        );
        self.record(EventKind::NodeUp { node: node.to_string(), gpus: ids.iter().map(|g| g.0).collect() });
        self.metrics.node(node, true);
        self.keeping.dirty = true;
        Ok(ids.into_iter().map(|g| g.0).collect())
    }

    /// A heartbeat from `node`'s executor on `link`, with its GPUs' health by index.
    pub(super) fn heartbeat(
        &mut self,
        node: &str,
        link: u64,
        health: &[(u32, bool, Option<u64>)],
        now: CoreInstant,
    ) -> bool {
        let Some(n) = self.nodes.get_mut(node) else { return false };
        if n.link != link || !n.up {
            return false; // an old link, or a node lost meanwhile: it must register again
        }
        n.last_seen = Instant::now();
        let gpus = self.node_gpu_ids(node);
        for &(index, healthy, used) in health {
            if let Some(id) =
                gpus.iter().copied().find(|g| self.gpus.get(g.0 as usize).is_some_and(|x| x.index == index))
            {
                self.set_gpu_health(id, healthy, now);
                match used {
                    Some(u) => self.memory_used.insert(id, u),
                    None => self.memory_used.remove(&id),
                };
            }
        }
        true
    }

    /// `node`'s link `link` ended (or, with `link` None, its heartbeats stopped): its GPUs are
    /// lost, their leases revoked.
    pub(super) fn node_lost(&mut self, node: &str, link: Option<u64>, reason: String, now: CoreInstant) {
        let Some(n) = self.nodes.get_mut(node) else { return };
        if link.is_some_and(|l| l != n.link) || !n.up && n.pending_until.is_none() {
            return; // a link replaced by a newer one, or already down
        }
        n.up = false;
        n.pending_until = None;
        n.reason.clone_from(&reason);
        tracing::warn!(node, "node lost: {reason}");
        self.record(EventKind::NodeDown { node: node.to_string(), reason });
        self.metrics.node(node, false);
        for g in self.node_gpu_ids(node) {
            self.set_gpu_health(g, false, now);
        }
    }

    fn set_gpu_health(&mut self, gpu: GpuId, healthy: bool, now: CoreInstant) {
        let health = if healthy { Health::Healthy } else { Health::Lost };
        if self.sched.pool().gpu(gpu).is_some_and(|g| g.health != health)
            && self.sched.set_health(gpu, health, now).is_ok()
        {
            self.record(EventKind::GpuHealth { gpu: gpu.0, healthy });
        }
    }

    /// When the next node may be found silent.
    pub(super) fn nodes_deadline(&self) -> Option<Instant> {
        let limit = self.heartbeat_every() * MISSED_HEARTBEATS;
        self.nodes
            .values()
            .filter_map(|n| match n.pending_until {
                Some(t) => Some(t),
                None if n.up => Some(n.last_seen + limit),
                None => None,
            })
            .min()
    }

    /// Nodes silent past their deadline are lost.
    pub(super) fn nodes_timers(&mut self) {
        let limit = self.heartbeat_every() * MISSED_HEARTBEATS;
        let at = Instant::now();
        let silent: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter_map(|(name, n)| match n.pending_until {
                Some(t) if at >= t => {
                    Some((name.clone(), "its executor did not register again after the controller restarted".into()))
                }
                None if n.up && at >= n.last_seen + limit => Some((
                    name.clone(),
                    format!(
                        "no heartbeat for {:.1} s ({MISSED_HEARTBEATS} intervals)",
                        (at - n.last_seen).as_secs_f64()
                    ),
                )),
                _ => None,
            })
            .collect();
        let now = self.now();
        for (name, reason) in silent {
            self.node_lost(&name, None, reason, now);
        }
    }

    /// The pool's nodes for status, then the nodes the cluster file lists that never
    /// registered.
    pub(super) fn node_snapshots(&self) -> Vec<NodeSnapshot> {
        let at = Instant::now();
        let pool = self.sched.pool();
        let mut out: Vec<NodeSnapshot> = pool
            .nodes()
            .iter()
            .map(|n| {
                let remote = self.nodes.get(&n.name);
                NodeSnapshot {
                    name: n.name.clone(),
                    up: remote.is_none_or(|r| r.up),
                    last_seen: remote.map_or(Duration::ZERO, |r| at.saturating_duration_since(r.last_seen)),
                    gpus: n.gpus.len() as u32,
                    reason: remote.map(|r| r.reason.clone()).unwrap_or_default(),
                }
            })
            .collect();
        out.extend(self.expected.iter().filter(|n| pool.node_by_name(n).is_none()).map(|n| NodeSnapshot {
            name: n.clone(),
            up: false,
            last_seen: Duration::ZERO,
            gpus: 0,
            reason: "listed in the cluster file; its executor never registered".into(),
        }));
        out
    }

    /// The nodes the cluster file lists.
    pub(super) fn expect_nodes(&mut self, nodes: Vec<String>) {
        for n in nodes {
            self.metrics.node(&n, self.sched.pool().node_by_name(&n).is_some());
            if !self.expected.contains(&n) {
                self.expected.push(n);
            }
        }
    }

    /// The node a GPU is on.
    pub(super) fn node_of(&self, gpu: GpuId) -> String {
        let pool = self.sched.pool();
        pool.gpu(gpu).and_then(|g| pool.node(g.node)).map(|n| n.name.clone()).unwrap_or_default()
    }

    /// A GPU as a grant names it.
    pub(super) fn granted_gpu(&self, id: GpuId) -> GrantedGpu {
        let found = self.gpus.get(id.0 as usize);
        GrantedGpu {
            id: id.0,
            node: self.node_of(id),
            index: found.map_or(id.0, |g| g.index),
            uuid: found.map(|g| g.uuid.clone()).unwrap_or_default(),
            memory: found.map_or(0, |g| g.memory),
        }
    }

    /// A controller's pool as saved (empty for a standalone daemon, whose GPUs are discovered
    /// again at start).
    pub(super) fn saved_pool(&self) -> Vec<SavedGpu> {
        if !self.is_controller() {
            return Vec::new();
        }
        self.sched
            .pool()
            .gpus()
            .iter()
            .map(|g| {
                let found = self.gpus.get(g.id.0 as usize);
                SavedGpu {
                    node: self.node_of(g.id),
                    index: found.map_or(g.index, |f| f.index),
                    uuid: g.uuid.clone(),
                    name: found.map(|f| f.name.clone()).unwrap_or_default(),
                    memory: g.memory,
                    fake: found.is_some_and(|f| f.fake),
                }
            })
            .collect()
    }

    /// A restarted controller puts back its executors' nodes (after its own GPUs, which come
    /// first as before), so that restored leases find their GPUs; each node has `grace` to
    /// register again before its GPUs are lost.
    pub(super) fn restore_pool(&mut self, saved: &[SavedGpu], grace: Duration) {
        let now = self.now();
        let own = self.gpus.len();
        if saved.len() < own || saved.iter().take(own).zip(&self.gpus).any(|(s, g)| s.uuid != g.uuid) {
            if saved.len() > own {
                tracing::warn!("saved pool does not start with this node's GPUs: executors' GPUs get new ids");
            }
            return;
        }
        let until = Instant::now() + grace;
        for s in &saved[own..] {
            let nid = self.sched.add_node(&s.node);
            if self.sched.add_gpu(nid, s.uuid.clone(), s.memory, now).is_err() {
                continue;
            }
            let found =
                FoundGpu { index: s.index, uuid: s.uuid.clone(), name: s.name.clone(), memory: s.memory, fake: s.fake };
            self.metrics.add_gpu(&s.node, &found);
            self.gpus.push(found);
            self.metrics.node(&s.node, false);
            self.nodes.entry(s.node.clone()).or_insert_with(|| RemoteNode {
                up: false,
                last_seen: Instant::now(),
                reason: "waiting for its executor to register again".into(),
                link: 0,
                pending_until: Some(until),
            });
        }
    }
}
