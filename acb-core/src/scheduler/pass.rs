//! The scheduling pass: grant the head if it fits, else reserve for it and ask for yields,
//! then backfill behind it.

use super::{QueueKey, Scheduler};
use crate::Instant;

impl Scheduler {
    /// Grants what can be granted, reserves for a blocked head, asks for yields.
    pub(super) fn schedule(&mut self, now: Instant) {
        let mut depth = 0usize;
        let mut cursor: Option<QueueKey> = None;
        let mut head = true;
        // Free memory on the roomiest GPU outside the reservation; recomputed after a grant.
        let mut room: Option<u64> = None;
        loop {
            let next = match cursor {
                None => self.queue.iter().next(),
                Some(k) => self.queue.range((core::ops::Bound::Excluded(k), core::ops::Bound::Unbounded)).next(),
            };
            let Some((&key, &id)) = next else { break };
            if head {
                if self.reservation.as_ref().is_some_and(|r| r.request != id) {
                    self.clear_reservation();
                }
                if let Some(placement) = self.place(id, true) {
                    self.grant(id, placement, now);
                    continue; // the next request is the new head
                }
                if !self.reserve_for_head(id) {
                    continue; // the head was rejected; try the new head
                }
                self.ask_yields_for_head(id, now);
                if !self.config.policy.backfill() {
                    break;
                }
                head = false;
                cursor = Some(key);
                continue;
            }
            depth += 1;
            let space = *room.get_or_insert_with(|| self.largest_unreserved_room());
            let smallest_need = self.smallest_queued_need();
            if depth > self.config.backfill_depth || (smallest_need > space && self.idle_unasked.is_empty()) {
                break;
            }
            cursor = Some(key);
            // Cheap skip: a request that fits on no grantable GPU needs no placement attempt.
            let need = self.entry_need(id);
            if need <= space
                && let Some(placement) = self.place(id, false)
            {
                self.grant(id, placement, now);
                room = None;
                continue;
            }
            self.reclaim_idle_for(id);
        }
    }
}
