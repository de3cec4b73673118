//! Swappable device memory: a job's allocations keep their addresses for their whole life;
//! while the job holds no GPU their bytes live in host memory, and they come back to the same
//! addresses when it holds one again.
//!
//! [`Memory`] keeps the books with `acb-core`'s [`SwapRegistry`] (what is resident, what has a
//! valid host copy) and moves bytes through a [`Backend`]: reserve an address range once, map
//! memory into it, copy to and from host memory, unmap it again. The host copies come from a
//! [`HostPool`] of buffers reused from one swap to the next, so a job that swaps the same
//! allocations over and over allocates host memory once.
//!
//! Backends: [`host::HostBackend`] (anonymous mappings, `PROT_NONE` while swapped out) for
//! tests and machines without a GPU; [`cuda::CudaBackend`] (CUDA VMM: reserved virtual ranges,
//! physical memory created and mapped into them, pinned host buffers, asynchronous copies on a
//! stream of its own, one synchronisation per swap).
//!
//! The fence: while a lease is held, the resident bytes may not pass its memory per GPU; an
//! allocation past it fails as out of memory, in this process only.
//!
//! Files: [`backend`] (what a backend does), [`pool`] (host buffers), [`slab`] (small
//! allocations sharing ranges), [`cache`] (freed ranges kept mapped for reuse); [`host`] and
//! [`cuda`] are the backends. This file is the swap engine.

mod backend;
mod cache;
pub(crate) mod cuda;
pub(crate) mod host;
mod pool;
mod slab;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use acb_core::swap::Residency;

use acb_core::{AllocId, ClientId, GpuId, SwapRegistry};

pub(crate) use backend::Backend;
use cache::RangeCache;
pub(crate) use pool::HostBuf;
use pool::HostPool;
use slab::{SMALL_MAX, Slab};

/// A client's memory figures, in bytes unless said otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Live allocations (a count).
    pub allocations: u64,
    /// Mapped on the device now.
    pub resident_bytes: u64,
    /// In host memory only now.
    pub swapped_bytes: u64,
    /// Copied device -> host since the client was made.
    pub swapped_out_total: u64,
    /// Copied host -> device since the client was made.
    pub swapped_in_total: u64,
    /// Host memory the client holds for swapped-out bytes (kept for reuse).
    pub host_pool_bytes: u64,
}

/// A job's memory, shared by the caller's threads (allocations) and the driver (swaps).
#[derive(Clone, Debug)]
pub(crate) struct SharedMemory(std::sync::Arc<std::sync::Mutex<Memory>>);

impl SharedMemory {
    pub(crate) fn new(memory: Memory) -> SharedMemory {
        SharedMemory(std::sync::Arc::new(std::sync::Mutex::new(memory)))
    }

    /// The memory, even after a thread panicked holding it: a panic in one call (caught at
    /// libacb's boundary) must not wedge every later call of the job.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a memory operation can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemError {
    /// Past the lease's fence, or no memory left.
    OutOfMemory(String),
    /// Allocating while no GPU is held.
    NoLease,
    /// A pointer this layer did not hand out.
    UnknownPointer(usize),
    /// Zero bytes.
    ZeroSize,
    /// The backend failed.
    Backend(String),
}

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemError::OutOfMemory(why) => write!(f, "out of memory: {why}"),
            MemError::NoLease => f.write_str("device memory is allocated in a GPU phase (after acb_on_device_begin)"),
            MemError::UnknownPointer(p) => write!(f, "{p:#x} was not allocated by libacb (or was freed)"),
            MemError::ZeroSize => f.write_str("an allocation needs at least one byte"),
            MemError::Backend(why) => write!(f, "the memory backend failed: {why}"),
        }
    }
}

/// Ranges are mapped, copied and unmapped in chunks of this (rounded up to the backend's
/// granularity): a swap-in creates and maps chunk i+1 while chunk i is being copied.
const CHUNK: usize = 64 << 20;

/// What a range holds.
#[derive(Debug)]
enum Kind {
    /// One allocation of `size` bytes.
    Large { size: usize },
    /// Blocks of a slab.
    Slab(Slab),
}

/// A range of the backend's: the unit that is mapped, swapped and fenced.
#[derive(Debug)]
struct Region {
    id: AllocId,
    /// Bytes reserved and mapped (a multiple of the backend's granularity).
    span: usize,
    kind: Kind,
    /// The host copy, while there is one.
    host: Option<HostBuf>,
}

impl Region {
    /// The bytes a swap copies: an allocation's own; a slab's up to its last allocated block.
    fn copy_len(&self) -> usize {
        match &self.kind {
            Kind::Large { size } => *size,
            Kind::Slab(slab) => slab.copy_len(),
        }
    }
}

/// One client's swappable memory.
///
/// Allocations under [`SMALL_MAX`] are blocks of slabs (a power of two of at least
/// [`MIN_BLOCK`](slab::MIN_BLOCK) bytes, in slabs of [`SLAB`](slab::SLAB)), as a framework's
/// caching allocator does: a framework asks for many small tensors, and a range of the
/// backend's costs a granule (2 MiB on CUDA) and several driver calls. Ranges freed while
/// resident are kept mapped, up to [`CACHE_LIMIT`](cache::CACHE_LIMIT), for the next
/// allocation of the same span. So a training loop that frees
/// and allocates the same activations each step makes no driver call once warm.
#[derive(Debug)]
pub(crate) struct Memory {
    backend: Box<dyn Backend>,
    registry: SwapRegistry,
    /// By start address.
    regions: BTreeMap<usize, Region>,
    by_id: BTreeMap<AllocId, usize>,
    /// Block size -> slabs with a free block.
    partial: BTreeMap<usize, BTreeSet<usize>>,
    /// Freed ranges still mapped, for reuse while the lease is held.
    cache: RangeCache,
    /// Live allocations.
    live: u64,
    pool: HostPool,
    /// The held lease's GPU (id, device index) and fence, between swap-in and swap-out.
    held: Option<(GpuId, u32, u64)>,
    /// The GPU (id, device index) of the last swap-in, kept after the swap-out.
    last: Option<(GpuId, u32)>,
    swapped_out_total: u64,
    swapped_in_total: u64,
    /// Bytes swapped since the last [`Memory::take_unreported`].
    unreported: (u64, u64),
    /// Whether writable ranges may keep `bytes` of host buffers while resident.
    keep_host: fn(u64) -> bool,
}

/// Host buffers are kept while the machine would still have a quarter of its memory available.
fn plenty_of_host_memory(bytes: u64) -> bool {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> Option<u64> {
        info.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
    };
    match (kib("MemTotal:"), kib("MemAvailable:")) {
        (Some(total), Some(available)) => available.saturating_mul(1024).saturating_sub(bytes) >= total * 1024 / 4,
        _ => true,
    }
}

/// The registry is per client; every allocation here has this owner.
const OWNER: ClientId = ClientId(1);

impl Memory {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Memory {
        Memory {
            backend,
            registry: SwapRegistry::new(),
            regions: BTreeMap::new(),
            by_id: BTreeMap::new(),
            partial: BTreeMap::new(),
            cache: RangeCache::default(),
            live: 0,
            pool: HostPool::default(),
            held: None,
            last: None,
            swapped_out_total: 0,
            swapped_in_total: 0,
            unreported: (0, 0),
            keep_host: plenty_of_host_memory,
        }
    }

    /// `size` bytes on the held GPU, within its fence.
    pub(crate) fn alloc(&mut self, size: usize) -> Result<usize, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize);
        }
        // Checked here, under the lock, for slabs too: a swapped-out slab may have free blocks.
        self.held.ok_or(MemError::NoLease)?;
        if size < SMALL_MAX {
            return self.alloc_block(size);
        }
        let g = self.backend.granularity();
        let span = size.checked_next_multiple_of(g).ok_or_else(|| MemError::OutOfMemory(format!("{size} bytes")))?;
        let addr = self.new_region(span, Kind::Large { size })?;
        self.live += 1;
        Ok(addr)
    }

    /// A resident range of `span` bytes on the held GPU: a cached one, or a new one if the
    /// fence allows (after giving the cache back, if it must).
    fn new_region(&mut self, span: usize, kind: Kind) -> Result<usize, MemError> {
        let (gpu, device, fence) = self.held.ok_or(MemError::NoLease)?;
        let addr = match self.cache.take(span) {
            Some(addr) => addr,
            None => {
                let resident = self.registry.client_totals(OWNER).resident;
                if resident.saturating_add((self.cache.bytes() + span) as u64) > fence {
                    self.cache.drain(&mut *self.backend);
                }
                if resident.saturating_add(span as u64) > fence {
                    return Err(MemError::OutOfMemory(format!(
                        "{span} more bytes would pass this lease's {fence} bytes ({resident} in use)"
                    )));
                }
                let addr = self.backend.reserve(span)?;
                let mut mapped = Vec::new();
                for (offset, len) in self.chunks(span) {
                    if let Err(e) = self.backend.map(addr + offset, len, device) {
                        self.unmap_all(&mapped);
                        self.backend.free(addr, span);
                        return Err(e);
                    }
                    mapped.push((addr + offset, len));
                }
                addr
            }
        };
        let id = match self.registry.insert(OWNER, 0, gpu, span as u64, false) {
            Ok(id) => id,
            Err(e) => {
                self.backend.free(addr, span);
                return Err(MemError::Backend(e.to_string()));
            }
        };
        self.regions.insert(addr, Region { id, span, kind, host: None });
        self.by_id.insert(id, addr);
        Ok(addr)
    }

    /// Whether the registry has the range mapped on a GPU now.
    fn resident(&self, id: AllocId) -> bool {
        matches!(self.registry.get(id).map(|a| a.residency), Some(Residency::Resident(_)))
    }

    /// The range holding `addr`, by its start.
    fn region_of(&self, addr: usize) -> Result<usize, MemError> {
        match self.regions.range(..=addr).next_back() {
            Some((&start, r)) if addr < start + r.span => Ok(start),
            _ => Err(MemError::UnknownPointer(addr)),
        }
    }

    /// Frees an allocation, resident or swapped out.
    pub(crate) fn free(&mut self, addr: usize) -> Result<(), MemError> {
        let start = self.region_of(addr)?;
        let Some(region) = self.regions.get_mut(&start) else { return Err(MemError::UnknownPointer(addr)) };
        let empty = match &mut region.kind {
            Kind::Large { .. } => {
                if addr != start {
                    return Err(MemError::UnknownPointer(addr));
                }
                true
            }
            Kind::Slab(slab) => {
                // A block that starts there and was allocated (not yet free).
                if !slab.give(addr - start) {
                    return Err(MemError::UnknownPointer(addr));
                }
                self.partial.entry(slab.block()).or_default().insert(start);
                slab.is_empty()
            }
        };
        self.live -= 1;
        if empty {
            self.remove_region(start);
        }
        Ok(())
    }

    /// Gives a range back: to the cache if it is mapped and the cache has room, else to the
    /// backend.
    fn remove_region(&mut self, start: usize) {
        let Some(region) = self.regions.remove(&start) else { return };
        if let Kind::Slab(slab) = &region.kind
            && let Some(set) = self.partial.get_mut(&slab.block())
        {
            set.remove(&start);
        }
        self.by_id.remove(&region.id);
        let resident = self.resident(region.id);
        let _ = self.registry.remove(region.id);
        if let Some(buf) = region.host {
            self.pool.give(&mut *self.backend, buf);
        }
        if !(resident && self.held.is_some() && self.cache.keep(start, region.span)) {
            self.backend.free(start, region.span);
        }
    }

    /// Marks an allocation read-only: its host copy, once made, is kept, and later swap-outs
    /// skip its copy. Allocations under 1 MiB share slabs with others: marking them is
    /// accepted and changes nothing (their slab is copied whenever it is swapped out).
    pub(crate) fn set_read_only(&mut self, addr: usize, read_only: bool) -> Result<(), MemError> {
        let start = self.region_of(addr)?;
        let Some(region) = self.regions.get_mut(&start) else { return Err(MemError::UnknownPointer(addr)) };
        match &region.kind {
            Kind::Large { .. } if addr == start => {}
            Kind::Slab(slab) if slab.allocated(addr - start) => return Ok(()),
            _ => return Err(MemError::UnknownPointer(addr)),
        }
        let id = region.id;
        self.registry.set_read_only(id, read_only).map_err(|e| MemError::Backend(e.to_string()))?;
        if !read_only
            && self.resident(id)
            && let Some(buf) = self.regions.get_mut(&start).and_then(|r| r.host.take())
        {
            self.pool.give(&mut *self.backend, buf);
        }
        Ok(())
    }

    /// Copies every resident range to host memory (but read-only ones whose host copy is
    /// current) and unmaps it; cached ranges are given back. Returns the bytes copied.
    pub(crate) fn swap_out(&mut self) -> Result<u64, MemError> {
        self.backend.quiesce()?;
        self.cache.drain(&mut *self.backend);
        let plan = self.registry.plan_swap_out(OWNER);
        let addrs: Vec<(usize, bool)> =
            plan.items.iter().filter_map(|item| Some((*self.by_id.get(&item.id)?, item.copy))).collect();
        // Start every copy, chunk by chunk, wait once, then unmap: the copies run back to back.
        let mut copied = 0u64;
        let mut started = Ok(());
        for &(addr, copy) in &addrs {
            if !copy {
                continue;
            }
            if let Err(e) = self.start_copy_out(addr).map(|n| copied += n as u64) {
                started = Err(e);
                break;
            }
        }
        // Wait for what was started even after a failure: no copy may outlive its buffer.
        let synced = self.backend.sync();
        started?;
        synced?;
        // Every range is unmapped, even after a failure, and the books say so; the bytes are
        // safe in host memory.
        let mut unmapped = Ok(());
        for &(addr, _) in &addrs {
            let span = self.regions.get(&addr).map_or(0, |r| r.span);
            for (offset, len) in self.chunks(span) {
                if let Err(e) = self.backend.unmap(addr + offset, len)
                    && unmapped.is_ok()
                {
                    unmapped = Err(e);
                }
            }
        }
        self.registry.complete_swap_out(&plan);
        self.held = None;
        self.swapped_out_total += copied;
        self.unreported.1 += copied;
        unmapped.map(|()| copied)
    }

    /// Starts copying a range out into its host buffer (the one it kept from its last swap,
    /// or one from the pool): returns the bytes.
    fn start_copy_out(&mut self, addr: usize) -> Result<usize, MemError> {
        let Some(region) = self.regions.get_mut(&addr) else { return Ok(0) };
        let (span, len) = (region.span, region.copy_len());
        let buf = match region.host.take() {
            Some(b) => b,
            None => self.pool.take(&mut *self.backend, span)?,
        };
        let mut result = Ok(len);
        for (offset, chunk) in self.chunks(span) {
            let n = copy_part(len, offset, chunk);
            if n == 0 {
                break; // the chunks past the last copied byte
            }
            if let Err(e) = self.backend.copy_to_host(addr + offset, &buf, offset, n) {
                result = Err(e);
                break;
            }
        }
        if let Some(region) = self.regions.get_mut(&addr) {
            region.host = Some(buf);
        }
        result
    }

    /// Maps every swapped-out range back at its address on `device` and copies its bytes
    /// back. Nothing is lost on failure: what could not come back stays swapped out.
    pub(crate) fn swap_in(&mut self, gpu: GpuId, device: u32, fence: u64) -> Result<u64, MemError> {
        let plan = self.registry.plan_swap_in(OWNER, &[gpu]).map_err(|e| MemError::Backend(e.to_string()))?;
        let needed: u64 = plan.bytes_total() + self.registry.client_totals(OWNER).resident;
        if needed > fence {
            return Err(MemError::OutOfMemory(format!(
                "this job's {needed} bytes do not fit the lease's {fence} bytes"
            )));
        }
        // Chunk by chunk: map, then start its copy, so that the next chunk's memory is created
        // and mapped while this one's bytes are on their way. Wait once, at the end.
        let mut mapped = Vec::new();
        let mut copied = 0u64;
        let mut result = Ok(());
        'regions: for item in &plan.items {
            let Some(&addr) = self.by_id.get(&item.id) else { continue };
            let Some(region) = self.regions.get(&addr) else { continue };
            // Blocks freed while swapped out need not come back: up to the last live one.
            let (len, chunks) = (region.copy_len(), self.chunks(region.span));
            for (offset, chunk) in chunks {
                if let Err(e) = self.backend.map(addr + offset, chunk, device) {
                    result = Err(e);
                    break 'regions;
                }
                mapped.push((addr + offset, chunk));
                let n = copy_part(len, offset, chunk);
                let Some(buf) = region.host.as_ref().filter(|_| n > 0) else { continue };
                if let Err(e) = self.backend.copy_from_host(buf, offset, n, addr + offset) {
                    result = Err(e);
                    break 'regions;
                }
                copied += n as u64;
            }
        }
        // Wait for what was started even after a failure: no copy may outlive its mapping.
        let synced = self.backend.sync();
        if let Err(e) = result.and(synced) {
            // Still swapped out, as the registry says: unmap again; the host copies are kept.
            self.unmap_all(&mapped);
            return Err(e);
        }
        // Each range keeps its host buffer (stale, for a writable one) for its next swap-out, so
        // a job swaps with no allocation or pinning of host memory after its first swap; unless
        // keeping them would leave the machine short of memory (several large jobs swapped out
        // at once need it), then writable ones go back (to the pool, up to its limit).
        let writable: Vec<(usize, usize)> = plan
            .items
            .iter()
            .filter(|item| !self.registry.get(item.id).is_some_and(|a| a.read_only))
            .filter_map(|item| {
                let addr = *self.by_id.get(&item.id)?;
                Some((addr, self.regions.get(&addr)?.host.as_ref()?.len))
            })
            .collect();
        let kept: usize = writable.iter().map(|w| w.1).sum();
        if kept > 0 && !(self.keep_host)(kept as u64) {
            for (addr, _) in writable {
                if let Some(buf) = self.regions.get_mut(&addr).and_then(|r| r.host.take()) {
                    self.pool.give(&mut *self.backend, buf);
                }
            }
        }
        self.registry.complete_swap_in(&plan);
        self.held = Some((gpu, device, fence));
        self.last = Some((gpu, device));
        self.swapped_in_total += copied;
        self.unreported.0 += copied;
        Ok(copied)
    }

    /// Brings every swapped-out range back onto the GPU of the last swap-in, with no lease: for
    /// a process that goes on unbrokered (no assigner to grant one). Nothing to do if nothing
    /// is swapped out, or nothing was ever on a GPU.
    pub(crate) fn swap_in_unbrokered(&mut self) -> Result<u64, MemError> {
        match self.last {
            Some((gpu, device)) if self.held.is_none() => self.swap_in(gpu, device, u64::MAX),
            _ => Ok(0),
        }
    }

    /// A range of `span` bytes as (offset, length) chunks.
    fn chunks(&self, span: usize) -> Vec<(usize, usize)> {
        let chunk = CHUNK.next_multiple_of(self.backend.granularity());
        (0..span).step_by(chunk).map(|offset| (offset, chunk.min(span - offset))).collect()
    }

    /// Undoes the mappings of a swap-in that failed.
    fn unmap_all(&mut self, ranges: &[(usize, usize)]) {
        for &(addr, span) in ranges {
            let _ = self.backend.unmap(addr, span);
        }
    }

    /// A lease is held and nothing is swapped out (what a swap-in of nothing does).
    #[cfg(test)]
    pub(crate) fn hold(&mut self, gpu: GpuId, device: u32, fence: u64) {
        self.held = Some((gpu, device, fence));
    }

    /// The backend's number for the GPU the assigner calls `index` (`uuid`).
    pub(crate) fn device_for(&mut self, index: u32, uuid: &str) -> u32 {
        self.backend.device_for(index, uuid)
    }

    /// Bytes swapped (in, out) since the last call.
    pub(crate) fn take_unreported(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.unreported)
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        let t = self.registry.client_totals(OWNER);
        MemoryStats {
            allocations: self.live,
            resident_bytes: t.resident,
            swapped_bytes: t.swapped,
            swapped_out_total: self.swapped_out_total,
            swapped_in_total: self.swapped_in_total,
            host_pool_bytes: self.pool.total_bytes as u64,
        }
    }

    /// Frees everything, host buffers included (the client is going away).
    pub(crate) fn clear(&mut self) {
        self.held = None; // nothing goes to the cache now
        let starts: Vec<usize> = self.regions.keys().copied().collect();
        for start in starts {
            self.remove_region(start);
        }
        self.cache.drain(&mut *self.backend);
        self.live = 0;
        self.pool.drain(&mut *self.backend);
    }
}

/// The bytes of the chunk at `offset` (of `chunk` bytes) that a copy of a range's first `len`
/// bytes takes.
fn copy_part(len: usize, offset: usize, chunk: usize) -> usize {
    len.saturating_sub(offset).min(chunk)
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.clear();
    }
}
