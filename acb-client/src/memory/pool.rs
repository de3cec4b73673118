//! Host memory for swapped-out bytes: buffers the backend makes (pinned, on CUDA), kept for
//! reuse by size, with plain pageable memory standing in when the backend has none to give.

use std::collections::BTreeMap;

use super::{Backend, MemError};

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
    pub(super) fn take(&mut self, backend: &mut dyn Backend, size: usize) -> Result<HostBuf, MemError> {
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

    pub(super) fn give(&mut self, backend: &mut dyn Backend, buf: HostBuf) {
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

    pub(super) fn drain(&mut self, backend: &mut dyn Backend) {
        for buf in std::mem::take(&mut self.idle).into_values().flatten() {
            self.total_bytes -= buf.len;
            buf.release(backend);
        }
        self.idle_bytes = 0;
    }
}
