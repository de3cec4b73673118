//! Draws the assigner's event record as one SVG picture, in the manner of Figure 1 of the
//! "AI Computing Broker" white paper: a row per GPU showing which job held it when, a row per
//! client showing when it held a GPU and when it waited for one, and a footer row with the
//! aggregate GPU utilisation over time.
//!
//! Pure and dependency-free: events in, a `String` out. Any record draws, however odd (empty,
//! zero-length, unknown GPU ids, a release without its grant, events out of order): what
//! cannot be placed is left out rather than guessed, and nothing here panics.
//!
//! How the record is read:
//! - it spans from its first event to `end` (its last event when `end` is not given);
//! - a lease holds its GPUs from its `Granted` to its `Released`, or to the end;
//! - a client waits from a `Requested` to the `Granted`, `Cancelled` or `Rejected` of the same
//!   request, or to its `ClientGone`, or to the end; a grant whose request came before the
//!   record began (a truncated record) is drawn as having waited its `waited`;
//! - a GPU held by two leases at once (memory fences let jobs share one) counts once towards
//!   utilisation, and the two leases are drawn in two lanes of the GPU's row;
//! - colours go by the rank of the client id in the record, so they are distinct for up to
//!   twelve clients and the same for one client everywhere in the picture;
//! - when the caller also knows when each GPU computed ([`Busy`], e.g. from the jobs' own
//!   phase reports), holds are drawn pale and the computing inside them solid, and the
//!   utilisation is the time computing: a GPU held through a CPU phase shows as held but idle.
//!
//! Files: [`record`] reads the events into intervals (holds, waits, lost GPUs, computing) and
//! the figures over them; [`svg`] lays the picture out and draws it.

mod record;
mod svg;
#[cfg(test)]
mod tests;

use std::time::Duration;

use acb_core::record::Event;

use record::Record;

/// What the picture shows about each GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuRow {
    /// The id that `Granted` events name.
    pub id: u32,
    /// The row's label, e.g. "gpu0 (simulated, 80 GiB)".
    pub label: String,
}

/// A time GPU `gpu` computed, in the record's time (since the assigner started).
pub use acb_core::stats::Busy;

/// Renders `events` over GPUs `gpus` as a standalone SVG document (~1200 px wide).
///
/// `title` goes on top as given (it is where a caller says "simulated"). `end` is the time the
/// record ends; the last event's time if `None`.
pub fn render_svg(title: &str, gpus: &[GpuRow], events: &[Event], end: Option<Duration>) -> String {
    let record = Record::read(events, None, end);
    svg::draw(title, gpus, &record)
}

/// [`render_svg`] over the times `from..to`, with the times the GPUs computed drawn solid
/// inside the holds (which are drawn pale), and utilisation counted as time computing.
pub fn render_svg_with_busy(
    title: &str,
    gpus: &[GpuRow],
    events: &[Event],
    (from, to): (Duration, Duration),
    busy: &[Busy],
) -> String {
    let mut record = Record::read(events, Some(from), Some(to));
    record.set_busy(busy);
    svg::draw(title, gpus, &record)
}

/// Aggregate utilisation: the fraction of GPU-time held over all GPUs in `gpus` from the first
/// event to `end`, in `0.0..=1.0`. Zero for no GPUs or a zero-length record.
pub fn utilisation(gpus: &[GpuRow], events: &[Event], end: Duration) -> f64 {
    Record::read(events, None, Some(end)).utilisation(gpus)
}
