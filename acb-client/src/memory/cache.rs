//! The range cache: ranges freed while resident are kept mapped, up to [`CACHE_LIMIT`], for
//! the next allocation of the same span. So a training loop that frees and allocates the same
//! activations each step makes no driver call once warm.

use std::collections::BTreeMap;

use super::Backend;

/// Freed ranges kept mapped for reuse, at most (they are given back at every swap-out, and
/// before an allocation would pass the fence).
pub(super) const CACHE_LIMIT: usize = 1 << 30;

/// Freed ranges still mapped, for reuse while the lease is held.
#[derive(Debug, Default)]
pub(super) struct RangeCache {
    /// Span -> the ranges' starts.
    ranges: BTreeMap<usize, Vec<usize>>,
    bytes: usize,
}

impl RangeCache {
    /// The bytes of every range kept.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// A kept range of `span` bytes, if there is one; it leaves the cache.
    pub(super) fn take(&mut self, span: usize) -> Option<usize> {
        let addr = self.ranges.get_mut(&span).and_then(Vec::pop)?;
        self.bytes -= span;
        Some(addr)
    }

    /// Keeps the range at `addr` of `span` bytes, if the cache has room: false if it has not
    /// (the caller gives it back to the backend).
    pub(super) fn keep(&mut self, addr: usize, span: usize) -> bool {
        if self.bytes + span > CACHE_LIMIT {
            return false;
        }
        self.bytes += span;
        self.ranges.entry(span).or_default().push(addr);
        true
    }

    /// Gives every kept range back to the backend.
    pub(super) fn drain(&mut self, backend: &mut dyn Backend) {
        for (span, addrs) in std::mem::take(&mut self.ranges) {
            for addr in addrs {
                backend.free(addr, span);
            }
        }
        self.bytes = 0;
    }
}
