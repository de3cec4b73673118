//! What outlives a session or a run: the saved leases and their restore after a restart (the
//! orphans held for the reclaim grace period, resumed by their clients or ended after it), the
//! one-off leases' time to live, and who may release what (SO_PEERCRED's uid, the admin uid).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use acb_core::record::EventKind;
use acb_core::scheduler::RestoredLease;
use acb_core::{ClientId, GpuId, Instant as CoreInstant, LeaseId};
use tokio::time::Instant;

use super::Driver;
use super::api::{DomainError, Peer, SessionSender, Welcomed};
use super::state::{SavedClient, SavedLease, SavedState, Store};

/// How long a change that needs no immediate save (a release) waits to be saved with others.
const SAVE_DELAY: Duration = Duration::from_millis(100);

/// What the driver keeps beyond a session: where it saves its leases, how long it holds a
/// restarted run's leases, how long a one-off lease lives unrenewed, who is the admin.
#[derive(Debug)]
pub struct Persistence {
    /// The state directory, locked; `None`: nothing is saved.
    pub store: Option<Store>,
    /// What the previous run saved, to restore.
    pub saved: Option<SavedState>,
    /// How long restored sessions' leases wait for their clients to resume them.
    pub reclaim_grace: Duration,
    /// How long a one-off lease lives without a renewal.
    pub one_off_ttl: Duration,
    /// The uid that may release any lease (with an empty token, over the Unix socket).
    pub admin_uid: u32,
    /// One-off clients at most, waiting or holding.
    pub max_one_off_clients: usize,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence {
            store: None,
            saved: None,
            reclaim_grace: Duration::from_secs(30),
            one_off_ttl: Duration::from_secs(300),
            admin_uid: 0,
            max_one_off_clients: crate::config::DEFAULT_MAX_ONE_OFF_CLIENTS,
        }
    }
}

/// The driver's side of [`Persistence`] while it runs.
#[derive(Debug, Default)]
pub(super) struct Keeping {
    pub(super) store: Option<Store>,
    /// Holders changed since the last save.
    pub(super) dirty: bool,
    /// When the changes since the last save are saved, if no grant saves them first.
    pub(super) save_due: Option<Instant>,
    /// The leases the last save wrote: a grant of one of them needs no new save.
    pub(super) saved: HashSet<LeaseId>,
    pub(super) grace: Duration,
    pub(super) ttl: Duration,
    pub(super) admin_uid: u32,
    /// One-off clients at most, waiting or holding.
    pub(super) max_one_off: usize,
    /// When the orphans not resumed by then are ended.
    pub(super) grace_end: Option<Instant>,
    /// When each one-off lease ends unless renewed.
    pub(super) expiry: HashMap<LeaseId, Instant>,
}

impl Keeping {
    pub(super) fn new(p: &mut Persistence) -> Keeping {
        Keeping {
            store: p.store.take(),
            dirty: false,
            save_due: None,
            saved: HashSet::new(),
            grace: p.reclaim_grace,
            ttl: p.one_off_ttl,
            admin_uid: p.admin_uid,
            max_one_off: p.max_one_off_clients,
            grace_end: None,
            expiry: HashMap::new(),
        }
    }
}

impl Driver {
    /// The earliest of the grace period's end, the one-off leases' expiries and the deferred
    /// save.
    pub(super) fn keeping_deadline(&self) -> Option<Instant> {
        let first_expiry = self.keeping.expiry.values().min().copied();
        [self.keeping.grace_end, first_expiry, self.keeping.save_due].into_iter().flatten().min()
    }

    /// After each command: changes that need no save before a reply (releases, reused leases,
    /// resumes) are saved within [`SAVE_DELAY`], together. A file that still lists a released
    /// lease is safe: after a restart that lease is held until its client resumes without it,
    /// or the grace period ends. It can never miss a lease a client uses: grants save first.
    pub(super) fn schedule_save(&mut self) {
        if self.keeping.dirty && self.keeping.save_due.is_none() && self.keeping.store.is_some() {
            self.keeping.save_due = Some(Instant::now() + SAVE_DELAY);
        }
    }

    /// Before a grant's reply: saves unless the last save already holds `lease` (a lease kept
    /// between phases, or granted in the same batch of changes).
    pub(super) fn save_before_grant(&mut self, lease: LeaseId) {
        if self.keeping.store.is_some() && !self.keeping.saved.contains(&lease) {
            self.save_state();
        }
    }

    /// Ends what is due: the orphans after the grace period, the one-off leases not renewed;
    /// and saves the changes whose save was deferred.
    pub(super) fn keeping_timers(&mut self) {
        let now_t = Instant::now();
        let now = self.now();
        if self.keeping.save_due.is_some_and(|due| due <= now_t) {
            self.save_state();
        }
        if self.keeping.grace_end.is_some_and(|end| end <= now_t) {
            self.keeping.grace_end = None;
            for client in self.sessions.orphans() {
                let leases: Vec<LeaseId> = self.sched.leases_of(client).collect();
                for lease in leases {
                    let reason = format!(
                        "restored after a restart and not reclaimed within the grace period ({} s)",
                        self.keeping.grace.as_secs_f64()
                    );
                    tracing::info!(client = client.0, lease = lease.0, "lease taken back: {reason}");
                    self.record(EventKind::TakenBack { client: client.0, lease: lease.0, reason });
                }
                self.disconnect(client, now);
            }
        }
        let due: Vec<LeaseId> = self.keeping.expiry.iter().filter(|(_, at)| **at <= now_t).map(|(l, _)| *l).collect();
        for lease in due {
            self.keeping.expiry.remove(&lease);
            let Some(client) = self.sched.lease(lease).map(|l| l.client) else { continue };
            let reason =
                format!("a one-off lease not renewed within its time to live ({} s)", self.keeping.ttl.as_secs_f64());
            tracing::info!(client = client.0, lease = lease.0, "lease taken back: {reason}");
            self.record(EventKind::TakenBack { client: client.0, lease: lease.0, reason });
            if self.sched.release(client, lease, now).is_ok() {
                self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: true });
            }
            self.end_one_off_if_idle(client, now);
        }
    }

    /// A one-off client's new lease gets its time to live; returns it (`None` for a session's).
    pub(super) fn start_ttl(&mut self, client: ClientId, lease: LeaseId) -> Option<Duration> {
        if !self.sessions.is_one_off(client) {
            return None;
        }
        self.keeping.expiry.insert(lease, Instant::now() + self.keeping.ttl);
        Some(self.keeping.ttl)
    }

    /// Renews a one-off lease: its time to live starts again.
    pub(super) fn renew(
        &mut self,
        token: &str,
        lease: LeaseId,
        uid: Option<u32>,
        node: &str,
    ) -> Result<Option<Duration>, DomainError> {
        let client = self.sessions.by_token(token).ok_or(DomainError::UnknownToken)?;
        self.check_uid(client, uid, node, "renew")?;
        let owner = self.sched.lease(lease).map(|l| l.client);
        if owner != Some(client) {
            return Err(DomainError::Core(self.lease_error(lease)));
        }
        if !self.sessions.is_one_off(client) {
            return Ok(None);
        }
        self.keeping.expiry.insert(lease, Instant::now() + self.keeping.ttl);
        Ok(Some(self.keeping.ttl))
    }

    /// Why a lease the caller named is not one it holds, in the scheduler's words.
    fn lease_error(&self, lease: LeaseId) -> acb_core::Error {
        if self.sched.lease(lease).is_some() {
            acb_core::Error::NotOwner(lease)
        } else if lease.0 > 0 && lease < self.sched.next_lease_id() {
            acb_core::Error::AlreadyReleased(lease)
        } else {
            acb_core::Error::UnknownLease(lease)
        }
    }

    /// A uid (SO_PEERCRED) other than the client's own and the admin's may not touch its leases.
    pub(super) fn check_uid(
        &self,
        client: ClientId,
        uid: Option<u32>,
        node: &str,
        what: &str,
    ) -> Result<(), DomainError> {
        // A uid means something on its own node only: uid 1000 on one node is not uid 1000 on
        // another. A call with credentials from another node than the holder's (a token carried
        // there) is refused. (Without credentials, over TCP, the token alone is the identity.)
        let owner_node = self.sessions.node(client);
        if uid.is_some() && !owner_node.is_empty() && owner_node != node {
            return Err(DomainError::PermissionDenied(format!(
                "the lease's holder runs on node {owner_node:?}; this call came from node {node:?}"
            )));
        }
        let owner = self.sessions.info(client).and_then(|i| i.uid);
        match (uid, owner) {
            (Some(caller), Some(owner)) if caller != owner && caller != self.keeping.admin_uid => {
                Err(DomainError::PermissionDenied(format!(
                    "uid {caller} may not {what} a lease of uid {owner}'s (only its own, or any as the admin uid {})",
                    self.keeping.admin_uid
                )))
            }
            _ => Ok(()),
        }
    }

    /// The admin releases any lease (empty token): allowed only to the admin uid over the Unix
    /// socket.
    pub(super) fn admin_release(
        &mut self,
        lease: LeaseId,
        uid: Option<u32>,
        node: &str,
        now: CoreInstant,
    ) -> Result<(), DomainError> {
        let admin = self.keeping.admin_uid;
        // The admin uid of a node takes back that node's leases; the controller's node's, any.
        if let Some(holder) = self.sched.lease(lease).map(|l| l.client)
            && uid == Some(admin)
            && node != self.node
            && self.sessions.node(holder) != node
        {
            return Err(DomainError::PermissionDenied(format!(
                "the admin uid {admin} of node {node:?} may take back only that node's leases (this one's holder runs on \
                 {:?}); on the controller's node it may take back any",
                self.sessions.node(holder)
            )));
        }
        if uid != Some(admin) {
            let who = uid.map_or_else(|| "a caller without credentials (TCP)".to_string(), |u| format!("uid {u}"));
            return Err(DomainError::PermissionDenied(format!(
                "{who} may not release a lease without its client token: only the admin uid {admin} may, over the Unix socket"
            )));
        }
        let Some(client) = self.sched.lease(lease).map(|l| l.client) else {
            return Err(DomainError::Core(self.lease_error(lease)));
        };
        let reason = format!("released by the admin (uid {admin})");
        tracing::info!(client = client.0, lease = lease.0, "lease taken back: {reason}");
        let gpu = self.sched.lease(lease).and_then(|l| l.gpus.first()).map_or(0, |g| g.0);
        self.record(EventKind::TakenBack { client: client.0, lease: lease.0, reason: reason.clone() });
        self.sched.release(client, lease, now).map_err(DomainError::Core)?;
        self.keeping.expiry.remove(&lease);
        self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: true });
        self.sessions.tell(client, super::ToClient::Revoked { lease: lease.0, gpu, why: Some(reason) });
        self.end_one_off_if_idle(client, now);
        Ok(())
    }

    /// Opens a session: resumes the orphan `resume_token` names (keeping the leases in `held`,
    /// releasing its others), or connects a new client.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_session(
        &mut self,
        job: String,
        peer: Peer,
        node: &str,
        resume_token: &str,
        held: &[u64],
        session: (SessionSender, bool),
        now: CoreInstant,
    ) -> Result<Welcomed, DomainError> {
        let orphan = if resume_token.is_empty() { None } else { self.sessions.orphan_by_token(resume_token, peer.uid) };
        // A session resumes only on the node it ran on (a token carried elsewhere opens a new one).
        let orphan = orphan.filter(|c| {
            let was = self.sessions.node(*c);
            was.is_empty() || was == node
        });
        let Some(client) = orphan else {
            let (client, token) = self.connect(job, peer.pid, false, Some(session), now)?;
            self.sessions.set_peer(client, peer.uid, peer.pid);
            self.sessions.set_node(client, node.to_string());
            return Ok(Welcomed { client: client.0, token, resumed: false, kept: Vec::new() });
        };
        self.sessions.attach(client, session, peer.uid, peer.pid);
        let mut kept = Vec::new();
        let leases: Vec<LeaseId> = self.sched.leases_of(client).collect();
        for lease in leases {
            if held.contains(&lease.0) {
                kept.push(lease.0);
            } else if self.sched.release(client, lease, now).is_ok() {
                self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
            }
        }
        tracing::info!(client = client.0, kept = ?kept, "session resumed after a restart");
        self.keeping.dirty = true;
        Ok(Welcomed { client: client.0, token: self.sessions.token(client), resumed: true, kept })
    }

    /// Saves the leases now, if there is a state directory; a failure is logged (the daemon
    /// goes on: losing the file only loses the protection across a restart).
    pub(super) fn save_state(&mut self) {
        self.keeping.dirty = false;
        self.keeping.save_due = None;
        let Some(store) = &self.keeping.store else { return };
        let mut by_client: HashMap<ClientId, Vec<SavedLease>> = HashMap::new();
        for (id, l) in self.sched.leases() {
            by_client.entry(l.client).or_default().push(SavedLease {
                id: id.0,
                gpus: l.gpus.iter().map(|g| g.0).collect(),
                memory: l.memory.clone(),
                priority: l.priority,
                idle: l.idle,
            });
        }
        let mut clients: Vec<SavedClient> = by_client
            .into_iter()
            .filter_map(|(c, leases)| {
                let info = self.sessions.info(c)?;
                Some(SavedClient {
                    id: c.0,
                    token: info.token.clone(),
                    job: info.job.clone(),
                    pid: info.pid,
                    uid: info.uid,
                    one_off: info.one_off,
                    node: (!info.node.is_empty() && info.node != self.node).then(|| info.node.clone()),
                    leases,
                })
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        let state = SavedState {
            format: 0,
            next_client: self.sessions.peek_next_id(),
            next_lease: self.sched.next_lease_id().0,
            clients,
            pool: self.saved_pool(),
            gangs: self.saved_gangs(),
        };
        match store.save(&state) {
            Ok(()) => {
                let saved = state.clients.iter().flat_map(|c| c.leases.iter().map(|l| LeaseId(l.id)));
                self.keeping.saved = saved.collect();
            }
            Err(e) => {
                // Nothing counts as saved: the next grant tries again.
                self.keeping.saved.clear();
                tracing::error!("cannot save the leases: {e}");
            }
        }
    }

    /// The gangs of the leases held, each once.
    fn saved_gangs(&self) -> Vec<super::state::SavedGang> {
        let mut out: Vec<super::state::SavedGang> = Vec::new();
        for (id, _) in self.sched.leases() {
            if let Some((group, leases)) = self.sched.gang_of(id)
                && leases.first() == Some(&id)
            {
                out.push(super::state::SavedGang {
                    group: group.to_string(),
                    leases: leases.iter().map(|l| l.0).collect(),
                });
            }
        }
        out
    }

    /// Puts back what the previous run saved: its clients with their ids and tokens (sessions
    /// as orphans, held for the grace period), their leases on the same GPUs. A lease that no
    /// longer fits (the inventory changed) is dropped with a warning.
    pub(super) fn restore_state(&mut self, saved: SavedState) {
        let now = self.now();
        self.sessions.skip_ids_to(saved.next_client);
        self.sched.skip_lease_ids_to(LeaseId(saved.next_lease));
        let mut orphans = 0usize;
        for c in saved.clients {
            let client = ClientId(c.id);
            if self.sched.connect(client, now).is_err() {
                tracing::warn!(client = c.id, "saved state: a client twice; skipped");
                continue;
            }
            self.sessions.restore(client, &c);
            self.record(EventKind::Connected { client: c.id, job: c.job.clone() });
            for l in &c.leases {
                let restored = RestoredLease {
                    lease: LeaseId(l.id),
                    client,
                    gpus: l.gpus.iter().map(|g| GpuId(*g)).collect(),
                    memory: l.memory.clone(),
                    priority: l.priority,
                    idle: l.idle,
                };
                match self.sched.restore_lease(restored, now) {
                    Ok(()) => {
                        // A restored lease is recorded as a grant of request 0 (no request).
                        self.record(EventKind::Granted {
                            client: c.id,
                            job: c.job.clone(),
                            request: 0,
                            lease: l.id,
                            gpus: l.gpus.clone(),
                            memory_per_gpu: l.memory.iter().copied().min().unwrap_or(0),
                            waited: Duration::ZERO,
                        });
                        if c.one_off {
                            self.keeping.expiry.insert(LeaseId(l.id), Instant::now() + self.keeping.ttl);
                        }
                    }
                    Err(e) => tracing::warn!(client = c.id, lease = l.id, "saved lease not restored: {e}"),
                }
            }
            if self.sched.leases_of(client).next().is_none() {
                self.disconnect(client, now);
            } else if !c.one_off {
                orphans += 1;
            }
        }
        for g in &saved.gangs {
            let leases: Vec<LeaseId> = g.leases.iter().map(|l| LeaseId(*l)).collect();
            if let Err(e) = self.sched.restore_gang(&g.group, &leases) {
                tracing::warn!(group = %g.group, "saved gang not linked again: {e}");
            }
        }
        if orphans > 0 {
            self.keeping.grace_end = Some(Instant::now() + self.keeping.grace);
        }
        tracing::info!(
            orphans,
            leases = self.sched.leases().count(),
            "restored the previous run's leases; sessions have {} s to resume",
            self.keeping.grace.as_secs_f64()
        );
        self.keeping.dirty = true;
    }
}
