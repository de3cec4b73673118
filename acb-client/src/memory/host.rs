//! The host-memory backend: device memory stood in for by anonymous mappings, for tests and
//! for machines without a GPU. A swapped-out range keeps its addresses but has no memory and no
//! access (`PROT_NONE`): touching it faults, as touching unmapped device memory does.

use super::{Backend, HostBuf, MemError};

/// Anonymous mappings as device memory.
#[derive(Debug)]
pub(crate) struct HostBackend {
    page: usize,
}

impl HostBackend {
    pub(crate) fn new() -> HostBackend {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        HostBackend { page: usize::try_from(page).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096) }
    }
}

fn os_error(what: &str) -> MemError {
    MemError::Backend(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// `len`, if `host` has that many bytes past `offset`.
pub(crate) fn host_part(host: &HostBuf, offset: usize, len: usize) -> Result<usize, MemError> {
    match offset.checked_add(len) {
        Some(end) if end <= host.len => Ok(len),
        _ => Err(MemError::Backend(format!("{len} bytes at {offset} of a {}-byte host buffer", host.len))),
    }
}

impl Backend for HostBackend {
    fn granularity(&self) -> usize {
        self.page
    }

    fn reserve(&mut self, size: usize) -> Result<usize, MemError> {
        // SAFETY: a fresh private anonymous mapping, aliasing nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::OutOfMemory(format!(
                "cannot reserve {size} bytes of address space: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(p as usize)
    }

    fn free(&mut self, addr: usize, size: usize) {
        // SAFETY: a range this backend reserved, unmapped once (the caller forgets it).
        unsafe { libc::munmap(addr as *mut libc::c_void, size) };
    }

    fn map(&mut self, addr: usize, size: usize, _device: u32) -> Result<(), MemError> {
        // SAFETY: a range this backend reserved.
        if unsafe { libc::mprotect(addr as *mut libc::c_void, size, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            return Err(os_error("mprotect"));
        }
        Ok(())
    }

    fn unmap(&mut self, addr: usize, size: usize) -> Result<(), MemError> {
        // SAFETY: a range this backend reserved; its contents were copied out when needed.
        unsafe {
            if libc::mprotect(addr as *mut libc::c_void, size, libc::PROT_NONE) != 0 {
                return Err(os_error("mprotect"));
            }
            // Give the pages back: the range keeps its addresses, not its memory.
            if libc::madvise(addr as *mut libc::c_void, size, libc::MADV_DONTNEED) != 0 {
                return Err(os_error("madvise"));
            }
        }
        Ok(())
    }

    fn alloc_host(&mut self, size: usize) -> Result<HostBuf, MemError> {
        // Plain memory, which the pool frees itself; "out of memory" when there is none.
        HostBuf::plain(size)
    }

    fn free_host(&mut self, buf: HostBuf) {
        // Its buffers are plain, which the pool frees itself (HostBuf::release).
        debug_assert!(buf.plain, "a host buffer the host backend did not make");
        if buf.plain {
            buf.release(self);
        }
    }

    fn copy_to_host(&mut self, addr: usize, host: &HostBuf, offset: usize, len: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        // SAFETY: the chunk is mapped readable and at least `len` long; `host` has `len` bytes
        // past `offset` (checked); they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, host.ptr.add(offset), len) };
        Ok(())
    }

    fn copy_from_host(&mut self, host: &HostBuf, offset: usize, len: usize, addr: usize) -> Result<(), MemError> {
        let len = host_part(host, offset, len)?;
        // SAFETY: as above, the other way.
        unsafe { std::ptr::copy_nonoverlapping(host.ptr.add(offset), addr as *mut u8, len) };
        Ok(())
    }

    fn sync(&mut self) -> Result<(), MemError> {
        Ok(())
    }
}
