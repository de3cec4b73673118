//! What the swap engine needs of a backend: address ranges that keep their addresses while the
//! memory behind them comes and goes, host buffers, and copies between the two.

use super::{HostBuf, MemError};

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
    /// chunk by chunk: see [`CHUNK`](super::CHUNK)).
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
