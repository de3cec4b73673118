//! Slabs: allocations under [`SMALL_MAX`] are blocks of a power of two of at least
//! [`MIN_BLOCK`] bytes, carved from ranges of [`SLAB`] bytes, as a framework's caching allocator
//! does: a framework asks for many small tensors, and a range of the backend's costs a granule
//! (2 MiB on CUDA) and several driver calls.

use std::collections::BTreeSet;

use super::{Kind, MemError, Memory, Region};

/// Allocations smaller than this share slabs; larger ones get a range of their own.
pub(super) const SMALL_MAX: usize = 1 << 20;
/// The smallest block of a slab.
pub(super) const MIN_BLOCK: usize = 512;
/// A slab's size (rounded up to the backend's granularity).
pub(super) const SLAB: usize = 2 << 20;

/// A range cut into blocks of `block` bytes; `free` are the indexes of those not allocated.
#[derive(Debug)]
pub(super) struct Slab {
    block: usize,
    blocks: usize,
    free: BTreeSet<usize>,
}

impl Slab {
    /// A slab of `span` bytes, every block free.
    fn new(span: usize, block: usize) -> Slab {
        let blocks = span / block;
        Slab { block, blocks, free: (0..blocks).collect() }
    }

    /// The size of its blocks.
    pub(super) fn block(&self) -> usize {
        self.block
    }

    /// The index of the block at `offset`, if a block starts there.
    fn block_index(&self, offset: usize) -> Option<usize> {
        (offset.is_multiple_of(self.block) && offset / self.block < self.blocks).then_some(offset / self.block)
    }

    /// Whether an allocated block starts at `offset`.
    pub(super) fn allocated(&self, offset: usize) -> bool {
        self.block_index(offset).is_some_and(|i| !self.free.contains(&i))
    }

    /// Frees the block at `offset`: false if no allocated block starts there.
    pub(super) fn give(&mut self, offset: usize) -> bool {
        self.block_index(offset).is_some_and(|i| self.free.insert(i))
    }

    /// Whether no block is allocated.
    pub(super) fn is_empty(&self) -> bool {
        self.free.len() == self.blocks
    }

    /// The bytes a swap copies: up to the last allocated block.
    pub(super) fn copy_len(&self) -> usize {
        (0..self.blocks).rev().find(|i| !self.free.contains(i)).map_or(0, |last| (last + 1) * self.block)
    }
}

impl Memory {
    /// A block of at least `size` (under [`SMALL_MAX`]) bytes: from a slab with a free block of
    /// that size, or from a new slab.
    pub(super) fn alloc_block(&mut self, size: usize) -> Result<usize, MemError> {
        let block = size.next_power_of_two().max(MIN_BLOCK);
        let slab = match self.partial.get(&block).and_then(|s| s.first()) {
            Some(&slab) => slab,
            None => {
                let span = SLAB.next_multiple_of(self.backend.granularity());
                let slab = self.new_region(span, Kind::Slab(Slab::new(span, block)))?;
                self.partial.entry(block).or_default().insert(slab);
                slab
            }
        };
        let Some(Region { kind: Kind::Slab(Slab { free, .. }), .. }) = self.regions.get_mut(&slab) else {
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
        Ok(slab + index * block)
    }
}
