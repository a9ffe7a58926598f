//! A value's block of scratch floats in the interpreters (`fused`, `columns`), placed in
//! memory so that one kernel's blocks do not alias each other modulo 4 KiB.
//!
//! A block loop reads one block and writes another; its loads run ahead of its stores, and
//! a load whose address matches an earlier store's in the low 12 bits waits for that store
//! (the processor compares only those bits before the whole address is known: "4K
//! aliasing"). Blocks of 4 or 8 KiB from the allocator lie one header (16 bytes) further
//! apart than their size, so a value's block started 16·d bytes after the block of the value
//! d places before it, modulo 4 KiB: a load of an operation on the two could match a store
//! a few iterations back. Here value `j`'s block starts at `−64·j` modulo 4 KiB (on a cache
//! line), so a block lies 64·d bytes *below* its operands' modulo 4 KiB: a load then matches
//! only a later store, which it does not wait for, for any `d` up to 56. (Measured: a column
//! kernel of erf and exp, one thread, 10–15 % faster; row kernels within the noise.)

use std::ops::{Deref, DerefMut};

/// Bytes between the starts of consecutive values' blocks, downwards modulo 4 KiB.
const STAGGER: usize = 64;
const PAGE: usize = 4096;

/// `len` floats, starting at a chosen offset modulo 4 KiB (`Block::new`).
#[derive(Default)]
pub(super) struct Block {
    buf: Vec<f32>,
    at: usize,
    len: usize,
}

impl Block {
    /// A zeroed block of `len` floats for value `j` of a kernel: its first float at
    /// `−64·j` modulo 4 KiB.
    pub(super) fn new(len: usize, j: usize) -> Block {
        let buf = vec![0f32; len + PAGE / 4];
        let phase = (PAGE - STAGGER * (j % (PAGE / STAGGER))) % PAGE;
        // The allocation is at least 4-byte aligned, so the distance is a whole number of
        // floats.
        let addr = buf.as_ptr() as usize % PAGE;
        let at = (phase + PAGE - addr) % PAGE / 4;
        Block { buf, at, len }
    }
}

impl Deref for Block {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl DerefMut for Block {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_start_staggered_down_by_a_cache_line() {
        for j in [0usize, 1, 2, 63, 64, 100] {
            let b = Block::new(1024, j);
            assert_eq!(b.len(), 1024);
            let addr = b.as_ptr() as usize % PAGE;
            assert_eq!((addr + STAGGER * (j % 64)) % PAGE, 0, "value {j} at {addr}");
        }
        assert!(Block::default().is_empty());
    }
}
