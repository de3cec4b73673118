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

pub(crate) mod cuda;
pub(crate) mod host;

use std::collections::{BTreeMap, BTreeSet};

use acb_core::swap::Residency;

use acb_core::{AllocId, ClientId, GpuId, SwapRegistry};

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

/// A host buffer, owned by the [`HostPool`]: one the backend made (pinned, on CUDA), or plain
/// pageable memory when the backend could make none.
#[derive(Debug)]
pub(crate) struct HostBuf {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
    /// Plain memory from the kernel ([`HostBuf::plain`]), freed here, not by the backend.
    pub(crate) plain: bool,
}

impl HostBuf {
    /// `len` bytes of plain (pageable) host memory; out of memory when the kernel has none.
    pub(crate) fn plain(len: usize) -> Result<HostBuf, MemError> {
        // SAFETY: a fresh private anonymous mapping; nothing else is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::OutOfMemory(format!(
                "no host memory for {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(HostBuf { ptr: p.cast(), len, plain: true })
    }

    /// Gives the buffer back to whoever made it.
    pub(crate) fn release(self, backend: &mut dyn Backend) {
        if self.plain {
            // SAFETY: a mapping of `len` bytes (at least 1) made by `plain`, unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
        } else {
            backend.free_host(self);
        }
    }
}

/// Says once per process that swaps go through pageable memory.
fn warn_pageable(why: &MemError) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "no pinned host memory for a swap ({why}); swapping through pageable host memory, which is slower"
        );
    }
}

// SAFETY: a HostBuf is owned by one Memory at a time and only used under its lock.
unsafe impl Send for HostBuf {}

/// Moves a range of "device" memory between the device and host memory. Copies may be
/// asynchronous: they are complete when [`Backend::sync`] returns.
pub(crate) trait Backend: Send + std::fmt::Debug {
    /// Ranges are multiples of this.
    fn granularity(&self) -> usize;
    /// Reserves `size` bytes of addresses, with no memory behind them.
    fn reserve(&mut self, size: usize) -> Result<usize, MemError>;
    /// Gives a reserved range back (its memory too, if mapped).
    fn free(&mut self, addr: usize, size: usize);
    /// Puts memory of device `device` behind a chunk of a reserved range (a range is mapped
    /// chunk by chunk: see [`CHUNK`]).
    fn map(&mut self, addr: usize, size: usize, device: u32) -> Result<(), MemError>;
    /// Takes the memory from behind a chunk mapped with [`Backend::map`], keeping its
    /// addresses; touching it then faults.
    fn unmap(&mut self, addr: usize, size: usize) -> Result<(), MemError>;
    /// Host memory for swapped-out bytes.
    fn alloc_host(&mut self, size: usize) -> Result<HostBuf, MemError>;
    /// Whether [`Backend::alloc_host`] gives pinned memory, which plain memory can stand in for
    /// when there is none left (slower copies).
    fn pins_host(&self) -> bool {
        false
    }
    /// Gives a host buffer back.
    fn free_host(&mut self, buf: HostBuf);
    /// Starts copying `len` bytes of the mapped chunk at `addr` into `host` at `offset`.
    fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError>;
    /// Starts copying `len` bytes of `host` at `offset` into the mapped chunk at `addr`.
    fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError>;
    /// Waits for every copy started.
    fn sync(&mut self) -> Result<(), MemError>;
    /// Waits for all work queued on the devices this backend uses, the program's own included
    /// (a GPU phase's end means its kernels are done with its memory).
    fn quiesce(&mut self) -> Result<(), MemError> {
        Ok(())
    }
    /// This backend's number for the GPU the assigner calls `index` (`uuid`): CUDA's ordinal
    /// need not be NVML's index.
    fn device_for(&mut self, index: u32, uuid: &str) -> u32 {
        let _ = uuid;
        index
    }
}

/// Host buffers for swapped-out bytes, kept for reuse by size, up to a bound on what lies idle:
/// a job that swaps the same allocations again and again allocates (and pins) host memory once.
#[derive(Debug, Default)]
pub(crate) struct HostPool {
    idle: BTreeMap<usize, Vec<HostBuf>>,
    idle_bytes: usize,
    /// Bytes of every buffer this pool made that still exists (idle or in use).
    pub(crate) total_bytes: usize,
}

/// Idle host buffers beyond this are given back to the system.
const POOL_IDLE_LIMIT: usize = 1 << 30;

impl HostPool {
    fn take(&mut self, backend: &mut dyn Backend, size: usize) -> Result<HostBuf, MemError> {
        if let Some(list) = self.idle.get_mut(&size)
            && let Some(buf) = list.pop()
        {
            self.idle_bytes -= size;
            return Ok(buf);
        }
        // Short of pinned memory, plain memory still saves the bytes (its copies are slower).
        let buf = match backend.alloc_host(size) {
            Ok(buf) => buf,
            Err(e) if backend.pins_host() => {
                let buf = HostBuf::plain(size).map_err(|plain| {
                    MemError::OutOfMemory(format!("{e}; and no plain host memory either ({plain})"))
                })?;
                warn_pageable(&e);
                buf
            }
            Err(e) => return Err(e),
        };
        self.total_bytes += size;
        Ok(buf)
    }

    fn give(&mut self, backend: &mut dyn Backend, buf: HostBuf) {
        let size = buf.len;
        // Plain memory standing in for pinned goes back at once: the next swap tries to pin.
        if self.idle_bytes + size > POOL_IDLE_LIMIT || (buf.plain && backend.pins_host()) {
            self.total_bytes -= size;
            buf.release(backend);
            return;
        }
        self.idle_bytes += size;
        self.idle.entry(size).or_default().push(buf);
    }

    fn drain(&mut self, backend: &mut dyn Backend) {
        for buf in std::mem::take(&mut self.idle).into_values().flatten() {
            self.total_bytes -= buf.len;
            buf.release(backend);
        }
        self.idle_bytes = 0;
    }
}

/// Allocations smaller than this share slabs; larger ones get a range of their own.
const SMALL_MAX: usize = 1 << 20;
/// The smallest block of a slab.
const MIN_BLOCK: usize = 512;
/// A slab's size (rounded up to the backend's granularity).
const SLAB: usize = 2 << 20;
/// Ranges are mapped, copied and unmapped in chunks of this (rounded up to the backend's
/// granularity): a swap-in creates and maps chunk i+1 while chunk i is being copied.
const CHUNK: usize = 64 << 20;
/// Freed ranges kept mapped for reuse, at most (they are given back at every swap-out, and
/// before an allocation would pass the fence).
const CACHE_LIMIT: usize = 1 << 30;

/// What a range holds.
#[derive(Debug)]
enum Kind {
    /// One allocation of `size` bytes.
    Large { size: usize },
    /// Blocks of `block` bytes; `free` are the indexes of those not allocated.
    Slab { block: usize, blocks: usize, free: BTreeSet<usize> },
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
            Kind::Slab { block, blocks, free } => {
                (0..*blocks).rev().find(|i| !free.contains(i)).map_or(0, |last| (last + 1) * block)
            }
        }
    }
}

/// One client's swappable memory.
///
/// Allocations under [`SMALL_MAX`] are blocks of slabs (a power of two of at least
/// [`MIN_BLOCK`] bytes, in slabs of [`SLAB`]), as a framework's caching allocator does: a
/// framework asks for many small tensors, and a range of the backend's costs a granule (2 MiB
/// on CUDA) and several driver calls. Ranges freed while resident are kept mapped, up to
/// [`CACHE_LIMIT`], for the next allocation of the same span. So a training loop that frees
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
    /// Span -> freed ranges still mapped, for reuse while the lease is held.
    cache: BTreeMap<usize, Vec<usize>>,
    cache_bytes: usize,
    /// Live allocations.
    live: u64,
    pool: HostPool,
    /// The held lease's GPU (id, device index) and fence, between swap-in and swap-out.
    held: Option<(GpuId, u32, u64)>,
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
            cache: BTreeMap::new(),
            cache_bytes: 0,
            live: 0,
            pool: HostPool::default(),
            held: None,
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
            let block = size.next_power_of_two().max(MIN_BLOCK);
            let slab = match self.partial.get(&block).and_then(|s| s.first()) {
                Some(&slab) => slab,
                None => {
                    let span = SLAB.next_multiple_of(self.backend.granularity());
                    let blocks = span / block;
                    let slab = self.new_region(span, Kind::Slab { block, blocks, free: (0..blocks).collect() })?;
                    self.partial.entry(block).or_default().insert(slab);
                    slab
                }
            };
            let Some(Region { kind: Kind::Slab { free, .. }, .. }) = self.regions.get_mut(&slab) else {
                return Err(MemError::Backend(format!("slab {slab:#x} is missing")));
            };
            let Some(index) = free.pop_first() else {
                return Err(MemError::Backend(format!("slab {slab:#x} has no free block")));
            };
            if free.is_empty()
                && let Some(set) = self.partial.get_mut(&block)
            {
                set.remove(&slab);
            }
            self.live += 1;
            return Ok(slab + index * block);
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
        let cached = self.cache.get_mut(&span).and_then(Vec::pop);
        let addr = match cached {
            Some(addr) => {
                self.cache_bytes -= span;
                addr
            }
            None => {
                let resident = self.registry.client_totals(OWNER).resident;
                if resident.saturating_add((self.cache_bytes + span) as u64) > fence {
                    self.drop_cache();
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
            Kind::Slab { block, blocks, free } => {
                // A block that starts there and was allocated (not yet in the free set).
                if !block_index(addr - start, *block, *blocks).is_some_and(|i| free.insert(i)) {
                    return Err(MemError::UnknownPointer(addr));
                }
                self.partial.entry(*block).or_default().insert(start);
                free.len() == *blocks
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
        if let Kind::Slab { block, .. } = region.kind
            && let Some(set) = self.partial.get_mut(&block)
        {
            set.remove(&start);
        }
        self.by_id.remove(&region.id);
        let resident = self.resident(region.id);
        let _ = self.registry.remove(region.id);
        if let Some(buf) = region.host {
            self.pool.give(&mut *self.backend, buf);
        }
        if resident && self.held.is_some() && self.cache_bytes + region.span <= CACHE_LIMIT {
            self.cache_bytes += region.span;
            self.cache.entry(region.span).or_default().push(start);
        } else {
            self.backend.free(start, region.span);
        }
    }

    /// Gives every cached range back to the backend.
    fn drop_cache(&mut self) {
        for (span, addrs) in std::mem::take(&mut self.cache) {
            for addr in addrs {
                self.backend.free(addr, span);
            }
        }
        self.cache_bytes = 0;
    }

    /// Marks an allocation read-only: its host copy, once made, is kept, and later swap-outs
    /// skip its copy. Allocations under 1 MiB share slabs with others: marking them is
    /// accepted and changes nothing (their slab is copied whenever it is swapped out).
    pub(crate) fn set_read_only(&mut self, addr: usize, read_only: bool) -> Result<(), MemError> {
        let start = self.region_of(addr)?;
        let Some(region) = self.regions.get_mut(&start) else { return Err(MemError::UnknownPointer(addr)) };
        match &region.kind {
            Kind::Large { .. } if addr == start => {}
            Kind::Slab { block, blocks, free }
                if block_index(addr - start, *block, *blocks).is_some_and(|i| !free.contains(&i)) =>
            {
                return Ok(());
            }
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
        self.drop_cache();
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
        self.swapped_in_total += copied;
        self.unreported.0 += copied;
        Ok(copied)
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
        self.drop_cache();
        self.live = 0;
        self.pool.drain(&mut *self.backend);
    }
}

/// The index of the block at `offset` in a slab of `blocks` blocks of `block` bytes, if a block
/// starts there.
fn block_index(offset: usize, block: usize, blocks: usize) -> Option<usize> {
    (offset.is_multiple_of(block) && offset / block < blocks).then_some(offset / block)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const GPU: GpuId = GpuId(0);

    fn memory(fence: u64) -> Memory {
        let mut m = Memory::new(Box::new(host::HostBackend::new()));
        m.hold(GPU, 0, fence);
        m
    }

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn fill(addr: usize, size: usize, seed: u64) {
        let mut r = Rng(seed | 1);
        // SAFETY: a resident allocation of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, size) };
        for b in bytes {
            *b = r.next() as u8;
        }
    }

    fn checksum(addr: usize, size: usize) -> u64 {
        // SAFETY: a resident allocation of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, size) };
        bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
    }

    #[test]
    fn a_thousand_random_allocations_come_back_byte_exact_at_the_same_addresses() {
        let mut m = memory(u64::MAX);
        let mut r = Rng(0x5eed);
        let mut allocs = Vec::new();
        for i in 0..1000u64 {
            // Mostly small, some of several pages, a few of a MiB or more.
            let size = match r.next() % 10 {
                0 => (r.next() % (3 << 20)) as usize + 1,
                1..=3 => (r.next() % 65_536) as usize + 1,
                _ => (r.next() % 4096) as usize + 1,
            };
            let addr = m.alloc(size).unwrap();
            fill(addr, size, i + 1);
            allocs.push((addr, size, checksum(addr, size)));
        }
        let total: u64 = allocs.iter().map(|a| a.1 as u64).sum();
        let resident = m.stats().resident_bytes;
        for round in 0..3u32 {
            // Every allocated byte is copied out (a slab's up to its last block): no more than
            // what is mapped.
            let out = m.swap_out().unwrap();
            assert!((total..=resident).contains(&out), "round {round}: {out} bytes copied out of {total}");
            assert_eq!(m.stats().resident_bytes, 0);
            assert_eq!(m.swap_in(GpuId(round % 2), round % 2, u64::MAX).unwrap(), out);
            for &(addr, size, sum) in &allocs {
                assert_eq!(checksum(addr, size), sum, "round {round}: {size} bytes at {addr:#x}");
            }
        }
        // Free half, swap again: the rest still comes back exact.
        for (addr, ..) in allocs.drain(..500) {
            m.free(addr).unwrap();
        }
        m.swap_out().unwrap();
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        for &(addr, size, sum) in &allocs {
            assert_eq!(checksum(addr, size), sum);
        }
        assert_eq!(m.stats().allocations, 500);
    }

    #[test]
    fn read_only_allocations_are_copied_out_once() {
        let mut m = memory(u64::MAX);
        let weights = m.alloc(1 << 20).unwrap();
        let scratch = m.alloc(4096).unwrap();
        fill(weights, 1 << 20, 7);
        let sum = checksum(weights, 1 << 20);
        m.set_read_only(weights, true).unwrap();
        assert_eq!(m.swap_out().unwrap(), (1 << 20) + 4096, "the first swap-out makes the host copy");
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        assert_eq!(m.swap_out().unwrap(), 4096, "then only the writable allocation is copied");
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        assert_eq!(checksum(weights, 1 << 20), sum);
        m.free(scratch).unwrap();
        m.free(weights).unwrap();
    }

    #[test]
    fn the_fence_refuses_allocations_past_the_lease() {
        let mut m = memory(4 << 20);
        let a = m.alloc(3 << 20).unwrap();
        match m.alloc(2 << 20) {
            Err(MemError::OutOfMemory(why)) => assert!(why.contains("4194304"), "{why}"),
            other => panic!("expected out of memory, got {other:?}"),
        }
        // A small allocation needs a slab (2 MiB of device memory), past the fence too.
        assert!(matches!(m.alloc(100), Err(MemError::OutOfMemory(_))));
        m.free(a).unwrap();
        // The freed range is cached, mapped; a larger allocation gives the cache back first.
        let b = m.alloc(4 << 20).unwrap();
        assert_eq!(m.stats().resident_bytes, 4 << 20);
        // A swap-in onto a lease too small for the job is refused, and nothing is lost.
        fill(b, 4 << 20, 9);
        let sum = checksum(b, 4 << 20);
        m.swap_out().unwrap();
        assert!(matches!(m.swap_in(GPU, 0, 1 << 20), Err(MemError::OutOfMemory(_))));
        assert_eq!(m.stats().swapped_bytes, 4 << 20);
        assert!(m.swap_in(GPU, 0, 4 << 20).is_ok());
        assert_eq!(checksum(b, 4 << 20), sum);
    }

    /// Counts the backend calls that cost a driver round trip on CUDA.
    #[derive(Debug)]
    struct Counting {
        inner: host::HostBackend,
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        host_allocs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Backend for Counting {
        fn granularity(&self) -> usize {
            self.inner.granularity()
        }
        fn reserve(&mut self, size: usize) -> Result<usize, MemError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.reserve(size)
        }
        fn free(&mut self, addr: usize, size: usize) {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.free(addr, size);
        }
        fn map(&mut self, addr: usize, size: usize, device: u32) -> Result<(), MemError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.map(addr, size, device)
        }
        fn unmap(&mut self, addr: usize, size: usize) -> Result<(), MemError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.unmap(addr, size)
        }
        fn alloc_host(&mut self, size: usize) -> Result<HostBuf, MemError> {
            self.host_allocs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.alloc_host(size)
        }
        fn free_host(&mut self, buf: HostBuf) {
            self.inner.free_host(buf);
        }
        fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError> {
            self.inner.copy_to_host(addr, host, offset, len)
        }
        fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError> {
            self.inner.copy_from_host(host, offset, len, addr)
        }
        fn sync(&mut self) -> Result<(), MemError> {
            self.inner.sync()
        }
    }

    fn counting() -> (Memory, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let (m, calls, _) = counting_host();
        (m, calls)
    }

    /// A memory over a counting backend: (it, backend calls, host buffers allocated).
    fn counting_host() -> (Memory, Counter, Counter) {
        let calls = Counter::default();
        let host_allocs = Counter::default();
        let backend =
            Counting { inner: host::HostBackend::new(), calls: calls.clone(), host_allocs: host_allocs.clone() };
        let mut m = Memory::new(Box::new(backend));
        m.hold(GPU, 0, u64::MAX);
        (m, calls, host_allocs)
    }

    type Counter = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    #[test]
    fn host_buffers_are_allocated_once_even_past_the_pool_limit() {
        // 1.2 GiB: more than the pool keeps idle. Each range keeps its buffer across swaps.
        let (mut m, _, host_allocs) = counting_host();
        let addrs: Vec<usize> = (0..3).map(|_| m.alloc(400 << 20).unwrap()).collect();
        for round in 0..3 {
            m.swap_out().unwrap();
            m.swap_in(GPU, 0, u64::MAX).unwrap();
            assert_eq!(host_allocs.load(std::sync::atomic::Ordering::Relaxed), 3, "round {round}");
        }
        assert_eq!(m.stats().host_pool_bytes, 3 * (400 << 20));
        for a in addrs {
            m.free(a).unwrap();
        }
    }

    /// A backend that cannot pin host memory (CUDA's, with none left).
    #[derive(Debug)]
    struct NoPinned(host::HostBackend);

    impl Backend for NoPinned {
        fn granularity(&self) -> usize {
            self.0.granularity()
        }
        fn reserve(&mut self, size: usize) -> Result<usize, MemError> {
            self.0.reserve(size)
        }
        fn free(&mut self, addr: usize, size: usize) {
            self.0.free(addr, size);
        }
        fn map(&mut self, addr: usize, size: usize, device: u32) -> Result<(), MemError> {
            self.0.map(addr, size, device)
        }
        fn unmap(&mut self, addr: usize, size: usize) -> Result<(), MemError> {
            self.0.unmap(addr, size)
        }
        fn alloc_host(&mut self, _size: usize) -> Result<HostBuf, MemError> {
            Err(MemError::OutOfMemory("cuMemHostAlloc: no pinned memory left".into()))
        }
        fn pins_host(&self) -> bool {
            true
        }
        fn free_host(&mut self, _buf: HostBuf) {
            panic!("the pool freed a plain buffer through the backend");
        }
        fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError> {
            assert!(host.plain);
            self.0.copy_to_host(addr, host, offset, len)
        }
        fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError> {
            self.0.copy_from_host(host, offset, len, addr)
        }
        fn sync(&mut self) -> Result<(), MemError> {
            self.0.sync()
        }
    }

    #[test]
    fn without_pinned_memory_swaps_go_through_plain_memory_and_lose_nothing() {
        let mut m = Memory::new(Box::new(NoPinned(host::HostBackend::new())));
        m.hold(GPU, 0, u64::MAX);
        let sizes = [100usize, 3 << 20, 70 << 20];
        let addrs: Vec<usize> = sizes.iter().map(|&s| m.alloc(s).unwrap()).collect();
        for (i, (&a, &s)) in addrs.iter().zip(&sizes).enumerate() {
            fill(a, s, i as u64);
        }
        let sums: Vec<u64> = addrs.iter().zip(&sizes).map(|(&a, &s)| checksum(a, s)).collect();
        for _ in 0..3 {
            m.swap_out().unwrap();
            m.swap_in(GPU, 0, u64::MAX).unwrap();
        }
        for ((&a, &s), sum) in addrs.iter().zip(&sizes).zip(sums) {
            assert_eq!(checksum(a, s), sum);
        }
        for a in addrs {
            m.free(a).unwrap();
        }
        m.clear(); // the plain buffers are freed by the pool, never by the backend
    }

    #[test]
    fn short_of_host_memory_writable_ranges_give_their_buffers_back() {
        let (mut m, _, host_allocs) = counting_host();
        m.keep_host = |_| false;
        let a = m.alloc(4 << 20).unwrap();
        let w = m.alloc(2 << 20).unwrap();
        m.set_read_only(w, true).unwrap();
        for _ in 0..3 {
            m.swap_out().unwrap();
            m.swap_in(GPU, 0, u64::MAX).unwrap();
        }
        // Both buffers were made once: the writable one goes to the pool and comes back from it;
        // the read-only one keeps its copy.
        assert_eq!(host_allocs.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(plenty_of_host_memory(0), "this machine has memory to spare");
        m.free(a).unwrap();
        m.free(w).unwrap();
    }

    #[test]
    fn nothing_is_allocated_in_a_swapped_out_slab() {
        let mut m = memory(u64::MAX);
        let a = m.alloc(100).unwrap();
        m.swap_out().unwrap();
        assert_eq!(m.alloc(100), Err(MemError::NoLease), "the slab has free blocks, but no GPU is held");
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        assert!(m.alloc(100).is_ok());
        m.free(a).unwrap();
    }

    #[test]
    fn large_ranges_move_chunk_by_chunk_and_come_back_exact() {
        let (mut m, calls) = counting();
        let n = || calls.load(std::sync::atomic::Ordering::Relaxed);
        let size = (130 << 20) + 123; // three chunks, the last one partly used
        let a = m.alloc(size).unwrap();
        assert_eq!(n(), 1 + 3, "one reserve, three chunks mapped");
        fill(a, size, 42);
        let sum = checksum(a, size);
        assert_eq!(m.swap_out().unwrap(), size as u64, "the allocation's bytes, not the span's");
        assert_eq!(n(), 4 + 3, "three chunks unmapped");
        assert_eq!(m.swap_in(GPU, 0, u64::MAX).unwrap(), size as u64);
        assert_eq!(n(), 7 + 3, "three chunks mapped again");
        assert_eq!(checksum(a, size), sum);
        m.free(a).unwrap();
    }

    #[test]
    fn small_allocations_share_slabs_and_never_overlap() {
        let (mut m, calls) = counting();
        let mut addrs: Vec<(usize, usize)> = Vec::new();
        for i in 0..1000usize {
            let size = 1 + i % 500; // 512-byte blocks: 4,096 to a slab
            let a = m.alloc(size).unwrap();
            fill(a, size, i as u64);
            addrs.push((a, size));
        }
        assert_eq!(m.stats().allocations, 1000);
        assert_eq!(m.stats().resident_bytes, SLAB as u64, "one slab holds them all");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2, "one reserve and one map");
        let mut sorted = addrs.clone();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "blocks overlap");
        let sums: Vec<u64> = addrs.iter().map(|&(a, s)| checksum(a, s)).collect();
        m.swap_out().unwrap();
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        assert!(addrs.iter().zip(&sums).all(|(&(a, s), &sum)| checksum(a, s) == sum));
        // Pointers inside a block, and blocks freed twice, are refused.
        assert_eq!(m.free(addrs[0].0 + 8), Err(MemError::UnknownPointer(addrs[0].0 + 8)));
        m.free(addrs[0].0).unwrap();
        assert_eq!(m.free(addrs[0].0), Err(MemError::UnknownPointer(addrs[0].0)));
        assert!(m.set_read_only(addrs[0].0, true).is_err(), "a freed block");
        m.set_read_only(addrs[1].0, true).unwrap();
        // A freed block is reused; an emptied slab leaves the books.
        assert_eq!(m.alloc(10).unwrap(), addrs[0].0);
        for &(a, _) in &addrs {
            m.free(a).unwrap();
        }
        assert_eq!((m.stats().allocations, m.stats().resident_bytes), (0, 0));
    }

    #[test]
    fn freed_ranges_are_reused_without_driver_calls_until_the_next_swap_out() {
        let (mut m, calls) = counting();
        let n = || calls.load(std::sync::atomic::Ordering::Relaxed);
        let a = m.alloc(8 << 20).unwrap();
        let small = m.alloc(64).unwrap();
        m.free(small).unwrap();
        let warm = n();
        for _ in 0..100 {
            m.free(a).unwrap();
            assert_eq!(m.alloc(8 << 20).unwrap(), a, "the same range again");
            let s = m.alloc(64).unwrap();
            m.free(s).unwrap();
        }
        assert_eq!(n(), warm, "a warm loop makes no backend call");
        assert_eq!(m.stats().resident_bytes, 8 << 20, "cached ranges are not the job's memory");
        // A swap-out gives the cache back (the slab, here) and copies only what is allocated.
        assert_eq!(m.swap_out().unwrap(), 8 << 20);
        assert_eq!(n(), warm + 2, "the cached slab freed, the range unmapped");
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        m.free(a).unwrap();
    }

    #[test]
    fn bad_input_gets_errors_not_panics() {
        let mut m = Memory::new(Box::new(host::HostBackend::new()));
        assert_eq!(m.alloc(16), Err(MemError::NoLease));
        m.hold(GPU, 0, u64::MAX);
        assert_eq!(m.alloc(0), Err(MemError::ZeroSize));
        assert_eq!(m.free(0x1000), Err(MemError::UnknownPointer(0x1000)));
        let a = m.alloc(16).unwrap();
        m.free(a).unwrap();
        assert_eq!(m.free(a), Err(MemError::UnknownPointer(a)), "a double free is refused");
        assert!(matches!(m.alloc(usize::MAX), Err(MemError::OutOfMemory(_))));
    }

    #[test]
    fn ten_thousand_swap_cycles_leak_nothing() {
        let mut m = memory(u64::MAX);
        let sizes = [1usize, 4096, 70_000, 1 << 20];
        let allocs: Vec<usize> = sizes.iter().map(|&s| m.alloc(s).unwrap()).collect();
        for (i, (&a, &s)) in allocs.iter().zip(&sizes).enumerate() {
            fill(a, s, i as u64 + 3);
        }
        let sums: Vec<u64> = allocs.iter().zip(&sizes).map(|(&a, &s)| checksum(a, s)).collect();
        m.swap_out().unwrap();
        m.swap_in(GPU, 0, u64::MAX).unwrap();
        let settled = m.stats().host_pool_bytes;
        let rss_before = rss_kib();
        for _ in 0..10_000 {
            m.swap_out().unwrap();
            m.swap_in(GPU, 0, u64::MAX).unwrap();
        }
        let s = m.stats();
        assert_eq!(s.host_pool_bytes, settled, "the host pool did not grow");
        assert_eq!(s.allocations, 4);
        // Three slabs (512 B, 4 KiB and 128 KiB blocks) and the 1 MiB allocation's own range.
        assert_eq!(s.resident_bytes, (3 * SLAB + (1 << 20)) as u64);
        for ((&a, &s), sum) in allocs.iter().zip(&sizes).zip(sums) {
            assert_eq!(checksum(a, s), sum);
        }
        // 10,000 cycles of ~1.1 MiB each: a leak of any of it would show as gigabytes.
        let grown = rss_kib().saturating_sub(rss_before);
        assert!(grown < 64 << 10, "resident set grew by {grown} KiB");
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The child's half of the test below: touch swapped-out memory (and die of it).
    #[test]
    fn child_touches_swapped_out_memory() {
        if std::env::var_os("ACB_TOUCH_SWAPPED_OUT").is_none() {
            return;
        }
        let mut m = memory(u64::MAX);
        let a = m.alloc(4096).unwrap();
        m.swap_out().unwrap();
        // SAFETY: none: this read must fault, which is what the parent checks.
        let byte = unsafe { std::ptr::read_volatile(a as *const u8) };
        println!("read {byte} from swapped-out memory: no fault");
    }

    #[test]
    fn touching_swapped_out_memory_faults() {
        use std::os::unix::process::ExitStatusExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "memory::tests::child_touches_swapped_out_memory", "--nocapture", "--test-threads=1"])
            .env("ACB_TOUCH_SWAPPED_OUT", "1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSEGV),
            "the child should die of SIGSEGV: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
