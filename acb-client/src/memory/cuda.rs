//! The CUDA VMM backend: an allocation is a reserved virtual range (`cuMemAddressReserve`)
//! with physical memory created on the granted device (`cuMemCreate`), mapped into it
//! (`cuMemMap`) and made accessible (`cuMemSetAccess`). Swap-out copies it to a pinned host
//! buffer and unmaps and releases the physical memory, keeping the range; swap-in creates
//! physical memory on the newly granted device, maps it at the same address and copies back.
//! Ranges are mapped in chunks (64 MiB, each its own physical allocation), so that a swap-in
//! creates and maps the next chunk while the last one's copy runs. Copies are asynchronous on
//! a stream of the backend's own; a swap waits once, at the end.
//!
//! CUDA is loaded at run time (cudarc's `dynamic-loading`): [`CudaBackend::new`] checks that
//! the driver library is there before any call, since cudarc panics when it is not, and says
//! "no CUDA driver" plainly.
//!
//! NOT YET RUN ON A GPU: no session that built this had one. Its no-driver path is tested, and
//! so is its use of the driver API, against a fake libcuda that checks the driver's rules
//! (`tests/fake_cuda.rs`); its GPU tests are marked and skip without a driver.

use std::collections::BTreeMap;

use cudarc::driver::sys;

use super::host::host_part;
use super::{Backend, HostBuf, MemError};
use crate::Error;

fn check(what: &str, r: sys::CUresult) -> Result<(), MemError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Err(MemError::OutOfMemory(format!("{what}: the GPU has no memory left")))
    } else {
        Err(MemError::Backend(format!("{what} failed: {r:?}")))
    }
}

/// Whether a CUDA driver can be loaded, and why not. Never panics.
pub(crate) fn driver_present() -> Result<(), Error> {
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::NoCuda("no CUDA driver: libcuda.so could not be loaded (is the NVIDIA driver installed?)".into()))
    }
}

/// A CUDA UUID as NVML writes it (what the assigner's leases carry): `gpu-xxxxxxxx-xxxx-...`,
/// lowercase here.
fn nvml_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("gpu-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

/// A device's context and copy stream.
#[derive(Debug)]
struct Device {
    context: sys::CUcontext,
    stream: sys::CUstream,
}

/// Device memory through CUDA VMM.
#[derive(Debug)]
pub(crate) struct CudaBackend {
    granularity: usize,
    devices: BTreeMap<u32, Device>,
    /// The physical memory behind each mapped chunk, by its address: handle, device, size.
    handles: BTreeMap<usize, (sys::CUmemGenericAllocationHandle, u32, usize)>,
    /// CUDA ordinals found by UUID (asked at every swap-in; the answer does not change).
    ordinals: BTreeMap<String, u32>,
}

// SAFETY: CUDA contexts and streams may be used from any thread once made current there; the
// backend is used under the Memory lock, one thread at a time, and pushes its context before
// every call (and pops it after).
unsafe impl Send for CudaBackend {}

fn prop(device: u32) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct; zero is a valid value of every field.
    let mut p: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = i32::try_from(device).unwrap_or(i32::MAX);
    p
}

/// A context pushed on the calling thread's stack by [`CudaBackend::enter`]; dropping it pops
/// it, so the caller's own current context (a framework's, on its thread) is left as it was.
struct Current;

impl Drop for Current {
    fn drop(&mut self) {
        let mut popped = std::ptr::null_mut();
        // SAFETY: pops the context this guard's maker pushed on this thread.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Retains `device`'s primary context and makes a copy stream on it.
fn open_device(device: u32) -> Result<Device, MemError> {
    let ordinal = i32::try_from(device).map_err(|_| MemError::Backend(format!("device {device}")))?;
    let mut dev = 0;
    let mut context = std::ptr::null_mut();
    let mut stream = std::ptr::null_mut();
    // SAFETY: out-pointers to locals; the driver was initialised in `CudaBackend::new`.
    unsafe {
        check("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal))?;
        check("cuDevicePrimaryCtxRetain", sys::cuDevicePrimaryCtxRetain(&mut context, dev))?;
        check("cuCtxPushCurrent", sys::cuCtxPushCurrent_v2(context))?;
        let _current = Current;
        check("cuStreamCreate", sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32))?;
    }
    Ok(Device { context, stream })
}

impl CudaBackend {
    /// Loads the driver and initialises it; "no CUDA driver" or "no GPU" otherwise.
    pub(crate) fn new() -> Result<CudaBackend, Error> {
        driver_present()?;
        // SAFETY: the library is present (checked above); cuInit may be called more than once.
        unsafe {
            let r = sys::cuInit(0);
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(Error::NoCuda(format!("the CUDA driver did not initialise: {r:?}")));
            }
            let mut count = 0;
            if sys::cuDeviceGetCount(&mut count) != sys::CUresult::CUDA_SUCCESS || count <= 0 {
                return Err(Error::NoCuda("the CUDA driver sees no GPU".into()));
            }
            let mut granularity = 0usize;
            let p = prop(0);
            let r = sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &p,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            );
            if r != sys::CUresult::CUDA_SUCCESS || granularity == 0 {
                return Err(Error::NoCuda(format!("this GPU does not support CUDA virtual memory management: {r:?}")));
            }
            Ok(CudaBackend {
                granularity,
                devices: BTreeMap::new(),
                handles: BTreeMap::new(),
                ordinals: BTreeMap::new(),
            })
        }
    }

    /// Makes `device`'s primary context current on this thread until the returned guard is
    /// dropped (retaining it and making its stream the first time); gives its copy stream.
    fn enter(&mut self, device: u32) -> Result<(sys::CUstream, Current), MemError> {
        let d = match self.devices.entry(device) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(open_device(device)?),
        };
        // SAFETY: a context this backend retained; the guard pops it.
        check("cuCtxPushCurrent", unsafe { sys::cuCtxPushCurrent_v2(d.context) })?;
        Ok((d.stream, Current))
    }

    /// Any device with a context, to run driver calls that need one.
    fn any_device(&self) -> u32 {
        self.devices.keys().next().copied().unwrap_or(0)
    }

    /// Unmaps and releases the chunk mapped at `addr` (nothing if none is).
    fn unmap_chunk(&mut self, addr: usize) -> Result<(), MemError> {
        let Some(&(handle, device, size)) = self.handles.get(&addr) else { return Ok(()) };
        let _current = self.enter(device)?;
        // SAFETY: a chunk this backend mapped with `handle`; copies from it were synchronised.
        // The handle is forgotten once the mapping is gone, not before.
        unsafe {
            check("cuMemUnmap", sys::cuMemUnmap(addr as sys::CUdeviceptr, size))?;
            self.handles.remove(&addr);
            check("cuMemRelease", sys::cuMemRelease(handle))
        }
    }

    /// The device a mapped range's memory is on: its copies go on that device's stream.
    fn device_of(&self, addr: usize) -> Result<u32, MemError> {
        match self.handles.range(..=addr).next_back() {
            Some((&start, &(_, device, size))) if addr < start + size => Ok(device),
            _ => Err(MemError::Backend(format!("{addr:#x} is not mapped"))),
        }
    }
}

impl Backend for CudaBackend {
    fn granularity(&self) -> usize {
        self.granularity
    }

    fn reserve(&mut self, size: usize) -> Result<usize, MemError> {
        let device = self.any_device();
        let _current = self.enter(device)?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: an out-pointer to a local; size is a multiple of the granularity.
        check("cuMemAddressReserve", unsafe { sys::cuMemAddressReserve(&mut ptr, size, self.granularity, 0, 0) })?;
        usize::try_from(ptr).map_err(|_| MemError::Backend("a device address past usize".into()))
    }

    fn free(&mut self, addr: usize, size: usize) {
        // Every chunk mapped in the range, then the range. A framework frees memory that
        // kernels it queued may still use (stream-ordered, as its caching allocator does): so
        // finish the device's work before its memory goes.
        let chunks: Vec<(usize, u32)> =
            self.handles.range(addr..addr.saturating_add(size)).map(|(&a, h)| (a, h.1)).collect();
        let device = chunks.first().map_or_else(|| self.any_device(), |c| c.1);
        let Ok(_current) = self.enter(device) else { return };
        if !chunks.is_empty() {
            // SAFETY: the device's context is current on this thread.
            let _ = unsafe { sys::cuCtxSynchronize() };
        }
        for (chunk, _) in chunks {
            let _ = self.unmap_chunk(chunk);
        }
        // SAFETY: a range this backend reserved, freed once.
        let _ = unsafe { sys::cuMemAddressFree(addr as sys::CUdeviceptr, size) };
    }

    fn map(&mut self, addr: usize, size: usize, device: u32) -> Result<(), MemError> {
        let _current = self.enter(device)?;
        let p = prop(device);
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: out-pointer to a local, a valid property struct; the range is reserved and
        // unmapped.
        unsafe {
            check("cuMemCreate", sys::cuMemCreate(&mut handle, size, &p, 0))?;
            if let Err(e) = check("cuMemMap", sys::cuMemMap(addr as sys::CUdeviceptr, size, 0, handle, 0)) {
                let _ = sys::cuMemRelease(handle);
                return Err(e);
            }
            let access = sys::CUmemAccessDesc {
                location: p.location,
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            if let Err(e) = check("cuMemSetAccess", sys::cuMemSetAccess(addr as sys::CUdeviceptr, size, &access, 1)) {
                let _ = sys::cuMemUnmap(addr as sys::CUdeviceptr, size);
                let _ = sys::cuMemRelease(handle);
                return Err(e);
            }
        }
        self.handles.insert(addr, (handle, device, size));
        Ok(())
    }

    fn unmap(&mut self, addr: usize, _size: usize) -> Result<(), MemError> {
        self.unmap_chunk(addr)
    }

    fn alloc_host(&mut self, size: usize) -> Result<HostBuf, MemError> {
        let device = self.any_device();
        let _current = self.enter(device)?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: an out-pointer to a local. Portable: usable with every context.
        let r = unsafe { sys::cuMemHostAlloc(&mut ptr, size, sys::CU_MEMHOSTALLOC_PORTABLE) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Err(MemError::OutOfMemory(format!("cuMemHostAlloc: no pinned host memory for {size} bytes")));
        }
        check("cuMemHostAlloc", r)?;
        Ok(HostBuf { ptr: ptr.cast(), len: size, plain: false })
    }

    fn pins_host(&self) -> bool {
        true
    }

    fn free_host(&mut self, buf: HostBuf) {
        debug_assert!(!buf.plain, "plain buffers are freed by HostBuf::release");
        let device = self.any_device();
        let Ok(_current) = self.enter(device) else { return };
        // SAFETY: made by cuMemHostAlloc, freed once.
        let _ = unsafe { sys::cuMemFreeHost(buf.ptr.cast()) };
    }

    fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        let device = self.device_of(addr)?;
        let (stream, _current) = self.enter(device)?;
        // SAFETY: a mapped chunk of at least `len` bytes into a pinned buffer with `len` bytes
        // past `offset` (checked).
        check("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(host.ptr.add(offset).cast(), addr as sys::CUdeviceptr, len, stream)
        })
    }

    fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        let device = self.device_of(addr)?;
        let (stream, _current) = self.enter(device)?;
        // SAFETY: as above, the other way.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(addr as sys::CUdeviceptr, host.ptr.add(offset).cast(), len, stream)
        })
    }

    fn sync(&mut self) -> Result<(), MemError> {
        let devices: Vec<u32> = self.devices.keys().copied().collect();
        for device in devices {
            let (stream, _current) = self.enter(device)?;
            // SAFETY: a stream this backend made.
            check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(stream) })?;
        }
        Ok(())
    }

    fn quiesce(&mut self) -> Result<(), MemError> {
        let devices: Vec<u32> = self.devices.keys().copied().collect();
        for device in devices {
            let _current = self.enter(device)?;
            // SAFETY: the device's primary context is current: waits for all its streams.
            check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })?;
        }
        Ok(())
    }

    fn device_for(&mut self, index: u32, uuid: &str) -> u32 {
        let want = uuid.trim().to_ascii_lowercase();
        if let Some(&ordinal) = self.ordinals.get(&want) {
            return ordinal;
        }
        let mut count = 0;
        // SAFETY: out-pointers to locals; the driver is initialised.
        if unsafe { sys::cuDeviceGetCount(&mut count) } != sys::CUresult::CUDA_SUCCESS {
            return index;
        }
        for ordinal in 0..count {
            let mut dev = 0;
            // SAFETY: a plain C struct; zero is a valid value.
            let mut id: sys::CUuuid = unsafe { std::mem::zeroed() };
            // SAFETY: out-pointers to locals.
            let ok = unsafe {
                sys::cuDeviceGet(&mut dev, ordinal) == sys::CUresult::CUDA_SUCCESS
                    && sys::cuDeviceGetUuid_v2(&mut id, dev) == sys::CUresult::CUDA_SUCCESS
            };
            if ok && nvml_uuid(&id.bytes) == want {
                let ordinal = u32::try_from(ordinal).unwrap_or(index);
                self.ordinals.insert(want, ordinal);
                return ordinal;
            }
        }
        index // no match (a simulated GPU's uuid): the assigner's index
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        for (device, d) in std::mem::take(&mut self.devices) {
            // SAFETY: the stream and the retained context are this backend's, released once.
            unsafe {
                if sys::cuCtxPushCurrent_v2(d.context) == sys::CUresult::CUDA_SUCCESS {
                    let _current = Current;
                    let _ = sys::cuStreamDestroy_v2(d.stream);
                }
                let mut dev = 0;
                if sys::cuDeviceGet(&mut dev, i32::try_from(device).unwrap_or(0)) == sys::CUresult::CUDA_SUCCESS {
                    let _ = sys::cuDevicePrimaryCtxRelease_v2(dev);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::memory::Memory;
    use acb_core::GpuId;

    /// GPU tier: allocations on GPU 0 swap out to pinned host memory and back byte-exact, at the
    /// same addresses. Skips, saying so, without a CUDA driver and GPU.
    #[test]
    fn gpu_memory_swaps_out_and_back_exact() {
        let backend = match CudaBackend::new() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped (GPU tier): {e}");
                return;
            }
        };
        let mut m = Memory::new(Box::new(backend));
        m.hold(GpuId(0), 0, u64::MAX);
        // A slab's block, ranges of one chunk, and one of two chunks (100 MiB).
        let sizes = [1usize, 1 << 20, 3 << 20, 100 << 20];
        let addrs: Vec<usize> = sizes.iter().map(|&s| m.alloc(s).unwrap()).collect();
        // Device memory cannot be touched from here: fill and read it through the backend's copies.
        let mut host = CudaBackend::new().unwrap();
        for (&a, &s) in addrs.iter().zip(&sizes) {
            let buf = host.alloc_host(s).unwrap();
            // SAFETY: a pinned buffer of `s` bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(buf.ptr, s) };
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(7) ^ (s as u8);
            }
            m.backend.copy_from_host(&buf, 0, s, a).unwrap();
            m.backend.sync().unwrap();
            host.free_host(buf);
        }
        for _ in 0..3 {
            m.swap_out().unwrap();
            m.swap_in(GpuId(0), 0, u64::MAX).unwrap();
        }
        for (&a, &s) in addrs.iter().zip(&sizes) {
            let buf = host.alloc_host(s).unwrap();
            m.backend.copy_to_host(a, &buf, 0, s).unwrap();
            m.backend.sync().unwrap();
            // SAFETY: as above.
            let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, s) };
            assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ (s as u8)), "{s} bytes");
            host.free_host(buf);
        }
    }

    #[test]
    fn cuda_uuids_are_written_as_nvml_writes_them() {
        let bytes: [u8; 16] = [0x5c, 0x2a, 0x4f, 0x3e, 0x01, 0x02, 0xab, 0xcd, 0xef, 0x00, 1, 2, 3, 4, 5, 0xff];
        let c = bytes.map(|b| b as std::ffi::c_char);
        assert_eq!(nvml_uuid(&c), "gpu-5c2a4f3e-0102-abcd-ef00-0102030405ff");
    }

    /// Without a driver the backend says so, and nothing panics (cudarc would, if asked).
    #[test]
    fn without_a_driver_it_says_no_cuda_driver() {
        match CudaBackend::new() {
            Ok(_) => eprintln!("a CUDA driver and GPU are present: the GPU tier runs the backend"),
            Err(e) => {
                assert!(matches!(e, Error::NoCuda(_)), "{e:?}");
                let e = e.to_string();
                if driver_present().is_err() {
                    assert!(e.starts_with("no CUDA driver"), "{e}");
                } else {
                    assert!(!e.is_empty());
                }
            }
        }
    }
}
