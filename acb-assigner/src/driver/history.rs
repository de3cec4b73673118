//! The event record: every event numbered in order, the last [`HISTORY`] kept for
//! `watch --replay` and sent live to every watcher.

use std::collections::VecDeque;
use std::time::Duration;

use acb_core::record::{Event, EventKind};
use tokio::sync::broadcast;

/// How many events the record keeps (the oldest go first).
const HISTORY: usize = 200_000;

/// The record, and the channel its events go out on as they happen.
pub(super) struct History {
    kept: VecDeque<Event>,
    seq: u64,
    live: broadcast::Sender<Event>,
}

impl History {
    pub(super) fn new() -> History {
        let (live, _) = broadcast::channel(16_384);
        History { kept: VecDeque::new(), seq: 0, live }
    }

    /// Numbers the event, keeps it and sends it to the watchers; `at`: since the start.
    pub(super) fn record(&mut self, at: Duration, kind: EventKind) {
        self.seq += 1;
        let event = Event { seq: self.seq, at, kind };
        if self.kept.len() == HISTORY {
            self.kept.pop_front();
        }
        self.kept.push_back(event.clone());
        let _ = self.live.send(event);
    }

    /// A new watcher: the record so far when it asks for a `replay`, and the live events.
    pub(super) fn watch(&self, replay: bool) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let kept = if replay { self.kept.iter().cloned().collect() } else { Vec::new() };
        (kept, self.live.subscribe())
    }
}
