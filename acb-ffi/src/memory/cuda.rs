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
//! NOT YET RUN ON A GPU: no session that built this had one. It builds and its no-driver path
//! is tested; its GPU tests are marked and skip without a driver.

use std::collections::BTreeMap;

use cudarc::driver::sys;

use super::host::host_part;
use super::{Backend, HostBuf, MemError};

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
pub(crate) fn driver_present() -> Result<(), String> {
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("no CUDA driver: libcuda.so could not be loaded (is the NVIDIA driver installed?)".into())
    }
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
}

// SAFETY: CUDA contexts and streams may be used from any thread once made current there; the
// backend is used under the Memory lock, one thread at a time, and makes its context current
// before every call.
unsafe impl Send for CudaBackend {}

fn prop(device: u32) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct; zero is a valid value of every field.
    let mut p: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = i32::try_from(device).unwrap_or(i32::MAX);
    p
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
        check("cuCtxSetCurrent", sys::cuCtxSetCurrent(context))?;
        check("cuStreamCreate", sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32))?;
    }
    Ok(Device { context, stream })
}

impl CudaBackend {
    /// Loads the driver and initialises it; "no CUDA driver" or "no GPU" otherwise.
    pub(crate) fn new() -> Result<CudaBackend, String> {
        driver_present()?;
        // SAFETY: the library is present (checked above); cuInit may be called more than once.
        unsafe {
            let r = sys::cuInit(0);
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(format!("the CUDA driver did not initialise: {r:?}"));
            }
            let mut count = 0;
            if sys::cuDeviceGetCount(&mut count) != sys::CUresult::CUDA_SUCCESS || count <= 0 {
                return Err("the CUDA driver sees no GPU".into());
            }
            let mut granularity = 0usize;
            let p = prop(0);
            let r = sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &p,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            );
            if r != sys::CUresult::CUDA_SUCCESS || granularity == 0 {
                return Err(format!("this GPU does not support CUDA virtual memory management: {r:?}"));
            }
            Ok(CudaBackend { granularity, devices: BTreeMap::new(), handles: BTreeMap::new() })
        }
    }

    /// Makes `device`'s primary context current on this thread (retaining it and making its
    /// stream the first time).
    fn enter(&mut self, device: u32) -> Result<&Device, MemError> {
        let d = match self.devices.entry(device) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(open_device(device)?),
        };
        // SAFETY: a context this backend retained.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(d.context) })?;
        Ok(d)
    }

    /// Any device with a context, to run driver calls that need one.
    fn any_device(&self) -> u32 {
        self.devices.keys().next().copied().unwrap_or(0)
    }

    /// Unmaps and releases the chunk mapped at `addr` (nothing if none is).
    fn unmap_chunk(&mut self, addr: usize) -> Result<(), MemError> {
        let Some((handle, _, size)) = self.handles.remove(&addr) else { return Ok(()) };
        // SAFETY: a chunk this backend mapped with `handle`; copies from it were synchronised.
        unsafe {
            check("cuMemUnmap", sys::cuMemUnmap(addr as sys::CUdeviceptr, size))?;
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
        self.enter(device)?;
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
        if let Some(&(_, device)) = chunks.first()
            && self.enter(device).is_ok()
        {
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
        self.enter(device)?;
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
        self.enter(device)?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: an out-pointer to a local. Portable: usable with every context.
        check("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut ptr, size, sys::CU_MEMHOSTALLOC_PORTABLE) })?;
        Ok(HostBuf { ptr: ptr.cast(), len: size })
    }

    fn free_host(&mut self, buf: HostBuf) {
        // SAFETY: made by cuMemHostAlloc, freed once.
        let _ = unsafe { sys::cuMemFreeHost(buf.ptr.cast()) };
    }

    fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        let device = self.device_of(addr)?;
        let stream = self.enter(device)?.stream;
        // SAFETY: a mapped chunk of at least `len` bytes into a pinned buffer with `len` bytes
        // past `offset` (checked).
        check("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(host.ptr.add(offset).cast(), addr as sys::CUdeviceptr, len, stream)
        })
    }

    fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        let device = self.device_of(addr)?;
        let stream = self.enter(device)?.stream;
        // SAFETY: as above, the other way.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(addr as sys::CUdeviceptr, host.ptr.add(offset).cast(), len, stream)
        })
    }

    fn sync(&mut self) -> Result<(), MemError> {
        let devices: Vec<u32> = self.devices.keys().copied().collect();
        for device in devices {
            let stream = self.enter(device)?.stream;
            // SAFETY: a stream this backend made.
            check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(stream) })?;
        }
        Ok(())
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        for (device, d) in std::mem::take(&mut self.devices) {
            // SAFETY: the stream and the retained context are this backend's, released once.
            unsafe {
                let _ = sys::cuCtxSetCurrent(d.context);
                let _ = sys::cuStreamDestroy_v2(d.stream);
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

    /// Without a driver the backend says so, and nothing panics (cudarc would, if asked).
    #[test]
    fn without_a_driver_it_says_no_cuda_driver() {
        match CudaBackend::new() {
            Ok(_) => eprintln!("a CUDA driver and GPU are present: the GPU tier runs the backend"),
            Err(e) => {
                if driver_present().is_err() {
                    assert!(e.starts_with("no CUDA driver"), "{e}");
                } else {
                    assert!(!e.is_empty());
                }
            }
        }
    }
}
