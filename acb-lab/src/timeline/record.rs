//! The record reduced to intervals: which lease held which GPUs when, which client waited
//! when, which GPU was lost when, and (when known) when each GPU computed; and the figures
//! over them (utilisation, the step function of GPUs in use).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use acb_core::record::{Event, EventKind};

use super::{Busy, GpuRow};

/// A lease's hold on its GPUs; times are seconds since the assigner started, clipped to the
/// record.
#[derive(Debug)]
pub(super) struct Hold {
    pub(super) client: u64,
    pub(super) lease: u64,
    pub(super) gpus: Vec<u32>,
    pub(super) from: f64,
    pub(super) to: f64,
}

/// A client's wait for one request.
#[derive(Debug)]
pub(super) struct Wait {
    pub(super) client: u64,
    pub(super) request: u64,
    pub(super) from: f64,
    pub(super) to: f64,
}

/// A time a GPU was reported unhealthy.
#[derive(Debug)]
pub(super) struct Lost {
    pub(super) gpu: u32,
    pub(super) from: f64,
    pub(super) to: f64,
}

/// The record reduced to intervals.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) events: usize,
    pub(super) start: f64,
    pub(super) end: f64,
    /// Client id -> job name, from the first event that names the job.
    pub(super) clients: BTreeMap<u64, String>,
    pub(super) holds: Vec<Hold>,
    pub(super) waits: Vec<Wait>,
    pub(super) lost: Vec<Lost>,
    /// (GPU, from, to) computing, clipped and sorted by start; empty when not known.
    pub(super) busy: Vec<(u32, f64, f64)>,
}

impl Record {
    /// The record from `start` (its first event when `None`) to `end` (its last event).
    pub(super) fn read(events: &[Event], start: Option<Duration>, end: Option<Duration>) -> Self {
        let start = start.or_else(|| events.iter().map(|e| e.at).min()).unwrap_or_default();
        let end = end.or_else(|| events.iter().map(|e| e.at).max()).unwrap_or(start).max(start);
        let (start, end) = (start.as_secs_f64(), end.as_secs_f64());

        let mut clients = BTreeMap::new();
        let (mut holds, mut waits, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        let mut open_holds: BTreeMap<u64, Hold> = BTreeMap::new();
        let mut open_waits: BTreeMap<(u64, u64), f64> = BTreeMap::new();
        let mut open_lost: BTreeMap<u32, f64> = BTreeMap::new();
        let mut name = |client: u64, job: &str| {
            clients.entry(client).or_insert_with(|| job.to_owned());
        };

        for event in events {
            let at = event.at.as_secs_f64();
            match &event.kind {
                EventKind::Connected { client, job } => name(*client, job),
                EventKind::Requested { client, job, request, .. } => {
                    name(*client, job);
                    open_waits.entry((*client, *request)).or_insert(at);
                }
                EventKind::Granted { client, job, request, lease, gpus, waited, .. } => {
                    name(*client, job);
                    let asked = open_waits.remove(&(*client, *request)).unwrap_or(at - waited.as_secs_f64());
                    if asked < at {
                        waits.push(Wait { client: *client, request: *request, from: asked, to: at });
                    }
                    let hold = Hold { client: *client, lease: *lease, gpus: gpus.clone(), from: at, to: end };
                    // A lease id granted twice: the first grant ended when the second began.
                    if let Some(previous) = open_holds.insert(*lease, hold) {
                        holds.push(Hold { to: at, ..previous });
                    }
                }
                EventKind::Released { lease, .. } => {
                    if let Some(hold) = open_holds.remove(lease) {
                        holds.push(Hold { to: at, ..hold });
                    }
                }
                EventKind::Cancelled { client, request } | EventKind::Rejected { client, request, .. } => {
                    if let Some(from) = open_waits.remove(&(*client, *request)) {
                        waits.push(Wait { client: *client, request: *request, from, to: at });
                    }
                }
                EventKind::ClientGone { client } => {
                    let gone: Vec<u64> =
                        open_waits.range((*client, 0)..=(*client, u64::MAX)).map(|(k, _)| k.1).collect();
                    for request in gone {
                        if let Some(from) = open_waits.remove(&(*client, request)) {
                            waits.push(Wait { client: *client, request, from, to: at });
                        }
                    }
                }
                EventKind::GpuHealth { gpu, healthy: false } => {
                    open_lost.entry(*gpu).or_insert(at);
                }
                EventKind::GpuHealth { gpu, healthy: true } => {
                    if let Some(from) = open_lost.remove(gpu) {
                        lost.push(Lost { gpu: *gpu, from, to: at });
                    }
                }
                // A Released event follows, which ends the hold; a node's GPUs each get a
                // GpuHealth event of their own.
                EventKind::YieldAsked { .. }
                | EventKind::TakenBack { .. }
                | EventKind::NodeUp { .. }
                | EventKind::NodeDown { .. } => {}
            }
        }
        holds.extend(open_holds.into_values());
        waits.extend(open_waits.into_iter().map(|((client, request), from)| Wait { client, request, from, to: end }));
        lost.extend(open_lost.into_iter().map(|(gpu, from)| Lost { gpu, from, to: end }));

        let clip = |t: f64| t.max(start).min(end);
        for h in &mut holds {
            (h.from, h.to) = (clip(h.from), clip(h.to).max(clip(h.from)));
        }
        for w in &mut waits {
            (w.from, w.to) = (clip(w.from), clip(w.to).max(clip(w.from)));
        }
        for l in &mut lost {
            (l.from, l.to) = (clip(l.from), clip(l.to).max(clip(l.from)));
        }
        holds.sort_by(|a, b| a.from.total_cmp(&b.from).then(a.to.total_cmp(&b.to)).then(a.lease.cmp(&b.lease)));
        waits.sort_by(|a, b| a.from.total_cmp(&b.from).then(a.client.cmp(&b.client)));
        Record { events: events.len(), start, end, clients, holds, waits, lost, busy: Vec::new() }
    }

    pub(super) fn set_busy(&mut self, busy: &[Busy]) {
        let (start, end) = (self.start, self.end);
        let clip = |t: Duration| t.as_secs_f64().max(start).min(end);
        self.busy = busy.iter().map(|b| (b.gpu, clip(b.from), clip(b.to))).filter(|b| b.2 > b.1).collect();
        self.busy.sort_by(|a, b| a.1.total_cmp(&b.1));
    }

    /// The hold on `gpu` that covers time `at`, if any.
    pub(super) fn holder(&self, gpu: u32, at: f64) -> Option<&Hold> {
        self.holds.iter().find(|h| h.gpus.contains(&gpu) && h.from <= at && at <= h.to)
    }

    pub(super) fn span(&self) -> f64 {
        self.end - self.start
    }

    /// The times GPU `gpu` was in use, merged, in order: computing when that is known, else
    /// held by some lease.
    fn in_use(&self, gpu: u32) -> Vec<(f64, f64)> {
        if self.busy.is_empty() { self.held(gpu) } else { self.computing(gpu) }
    }

    /// The times GPU `gpu` was held by some lease, merged, in order.
    fn held(&self, gpu: u32) -> Vec<(f64, f64)> {
        acb_core::stats::union(self.holds.iter().filter(|h| h.gpus.contains(&gpu)).map(|h| (h.from, h.to)))
    }

    /// The times GPU `gpu` computed, merged, in order (none when not known).
    fn computing(&self, gpu: u32) -> Vec<(f64, f64)> {
        acb_core::stats::union(self.busy.iter().filter(|b| b.0 == gpu).map(|b| (b.1, b.2)))
    }

    /// The fraction of the GPUs' time in `intervals` (per GPU), over all of `gpus` and the span.
    fn fraction(&self, gpus: &[GpuRow], intervals: impl Fn(u32) -> Vec<(f64, f64)>) -> f64 {
        let ids = distinct_ids(gpus);
        if ids.is_empty() || self.span() <= 0.0 {
            return 0.0;
        }
        let used: f64 = ids.iter().flat_map(|&id| intervals(id)).map(|(from, to)| to - from).sum();
        (used / (ids.len() as f64 * self.span())).clamp(0.0, 1.0)
    }

    /// Utilisation: the fraction of GPU time computing when that is known, else held.
    pub(super) fn utilisation(&self, gpus: &[GpuRow]) -> f64 {
        self.fraction(gpus, |id| self.in_use(id))
    }

    /// The fraction of GPU time held by some lease, computing or not.
    pub(super) fn held_fraction(&self, gpus: &[GpuRow]) -> f64 {
        self.fraction(gpus, |id| self.held(id))
    }

    /// The fraction of GPU time computing (zero when not known).
    pub(super) fn computing_fraction(&self, gpus: &[GpuRow]) -> f64 {
        self.fraction(gpus, |id| self.computing(id))
    }

    /// How many of `ids` are in use from each time on: a step function starting at `start`.
    pub(super) fn steps(&self, ids: &BTreeSet<u32>) -> Vec<(f64, i64)> {
        let mut changes: Vec<(f64, i64)> =
            ids.iter().flat_map(|&id| self.in_use(id)).flat_map(|(from, to)| [(from, 1), (to, -1)]).collect();
        changes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut steps = vec![(self.start, 0)];
        let mut level = 0;
        for (at, change) in changes {
            level += change;
            match steps.last_mut() {
                Some(last) if last.0 == at => last.1 = level,
                _ => steps.push((at, level)),
            }
        }
        steps
    }
}

/// The GPU ids of `gpus`, each once.
pub(super) fn distinct_ids(gpus: &[GpuRow]) -> BTreeSet<u32> {
    gpus.iter().map(|g| g.id).collect()
}
