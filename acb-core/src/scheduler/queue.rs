//! The queue: requests waiting for GPUs, served by priority (higher first), then arrival.

use alloc::vec::Vec;
use core::cmp::Reverse;

use super::Scheduler;
use crate::{Instant, LeaseId, Request, RequestId};

/// Queue order: higher priority first, then arrival.
pub(super) type QueueKey = (Reverse<i32>, u64);

/// A request waiting in the queue (or a gang member waiting for its group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedRequest {
    /// Its id.
    pub id: RequestId,
    /// What was asked.
    pub request: Request,
    /// When it was queued.
    pub enqueued_at: Instant,
    /// Its place in the queue; for a complete gang's unit (queued under its first member),
    /// the unit's place.
    pub(super) key: QueueKey,
    /// Leases asked to yield on this request's behalf; no more are asked while one is pending.
    pub(super) reclaiming: Vec<LeaseId>,
}

impl QueuedRequest {
    /// The priority it is served at: its own, or for a complete gang's unit (queued under its
    /// first member's id), the highest of its members'.
    pub fn priority(&self) -> i32 {
        self.key.0.0
    }
}

impl Scheduler {
    /// Queues a request that passed validation, behind those of its priority already queued.
    pub(super) fn enqueue(&mut self, request: Request, now: Instant) -> RequestId {
        self.count_need(super::index::queued_need(&request));
        let (id, key) = self.admit(request, now);
        self.queue.insert(key, id);
        id
    }

    /// A request that passed validation gets its id and its place in arrival order, and waits
    /// (its client counts it); the caller queues it, or holds it as a group's member.
    pub(super) fn admit(&mut self, request: Request, now: Instant) -> (RequestId, QueueKey) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let key = (Reverse(request.priority), self.next_seq);
        self.next_seq += 1;
        if let Some(c) = self.clients.get_mut(&request.client) {
            c.queued.insert(id);
        }
        self.requests.insert(id, QueuedRequest { id, request, enqueued_at: now, key, reclaiming: Vec::new() });
        (id, key)
    }

    /// Takes a request out of the queue (to grant, cancel or reject it), and its reservation
    /// with it. A gang member leaves its group (and the group's unit the queue).
    pub(super) fn dequeue(&mut self, id: RequestId) -> Option<QueuedRequest> {
        if self.requests.get(&id).is_some_and(|q| super::gang_name(&q.request).is_some()) {
            return self.leave_group(id);
        }
        let q = self.requests.remove(&id)?;
        self.queue.remove(&q.key);
        self.uncount_need(super::index::queued_need(&q.request));
        if let Some(c) = self.clients.get_mut(&q.request.client) {
            c.queued.remove(&id);
        }
        if self.reservation.as_ref().is_some_and(|r| r.request == id) {
            self.clear_reservation();
        }
        Some(q)
    }
}
