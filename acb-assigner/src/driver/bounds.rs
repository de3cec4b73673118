//! What the driver does when a client passes one of the assigner's bounds: a session that left
//! too many events unread is ended, as if it had disconnected, with its reason logged and
//! counted (`acb_sessions_ended_behind_total`).

use acb_core::ClientId;

use super::Driver;
use super::api::SESSION_EVENTS;

impl Driver {
    /// Ends every session that fell [`SESSION_EVENTS`] events behind: its leases are released
    /// and its requests dropped, as at a disconnect, and its stream ends with LIMIT_REACHED.
    /// Ending one can grant others and so leave another behind: repeated until none is; each
    /// round removes at least one client, so it ends.
    pub(super) fn end_sessions_behind(&mut self) {
        loop {
            let behind: Vec<ClientId> = self.sessions.take_behind();
            if behind.is_empty() {
                return;
            }
            for client in behind {
                tracing::warn!(
                    client = client.0,
                    job = %self.sessions.job(client),
                    "session ended: it left {SESSION_EVENTS} events unread; its leases are released"
                );
                self.metrics.session_ended_behind();
                let now = self.now();
                self.disconnect(client, now);
            }
            self.drain_outputs();
        }
    }
}
