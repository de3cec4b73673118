#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::slab::SLAB;
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
    let backend = Counting { inner: host::HostBackend::new(), calls: calls.clone(), host_allocs: host_allocs.clone() };
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
