//! The host arena: one 16-byte aligned allocation holding every arena buffer at its planned
//! offset (its contents are unspecified: the plan writes every element before reading it, as
//! the CUDA emulation's NaN-filled arena checks), and how outputs leave it. On Linux an arena
//! of 1 MiB or more is its own anonymous mapping advised to use transparent huge pages (one
//! page fault per 2 MiB instead of per 4 KiB); an output's whole pages are moved into its
//! vector (`mremap`) instead of copied, and pages no output still needs go back to the
//! system as soon as possible.
//!
//! Moving pages into a vector: the vector is allocated before the kernels run, and the
//! arena is placed so that the largest output's bytes and its vector's bytes sit at the
//! same offset within a 2 MiB huge page (and the arena otherwise starts on a huge-page
//! boundary, so the plan's buffers share huge pages as little as they can: a touched huge
//! page is resident whole, untouched neighbours included): the output's huge pages then
//! move as whole page-table entries, neither split into 4 KiB ones by the move nor freed
//! 4 KiB at a time when the vector is dropped. After the kernels, the bytes before the output's
//! first whole page and after its last are copied, and the whole pages in between replace
//! the vector's pages, which were never touched: the vector then holds exactly the output's
//! bytes in ordinary private anonymous memory, as if they had been copied. Where the
//! offsets do not line up, or anything fails, the bytes are copied.
//!
//! Kept for the next run: a dropped mapping that no output's pages left is not unmapped
//! but kept (one, process-wide, up to `SPARE_MAX` bytes) for the next arena that fits in
//! it. A plan run repeatedly (`tc bench`, a serving loop) then
//! finds its arena's pages already faulted in: at 4 KiB a page fault costs about 3 µs on
//! this VM, 1.5 ms for each 2 MiB, as much as the attention kernel spends on 15 % of its
//! work. So that the arena stays whole, a run copies small outputs into their vectors
//! rather than moving pages out of it, and a run on a kept arena (`Arena::reused`) does not
//! release its pages (see `cpu::run_observed`).

use super::CpuError;
use rayon::prelude::*;

/// Arenas and outputs at least this large ask for transparent huge pages.
#[cfg(target_os = "linux")]
const HUGE_MIN: usize = 4 << 20;
/// The huge page size on x86-64 and most aarch64 kernels; only a hint either way.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;
#[cfg(target_os = "linux")]
const PAGE: usize = 4096;
/// Outputs at least this large are worth moving rather than copying.
pub(super) const MOVE_MIN: usize = 1 << 20;
/// Arenas at least this large are mappings of their own, kept for the next run.
#[cfg(target_os = "linux")]
const MAP_MIN: usize = 1 << 20;
/// The largest mapping kept for the next run (`SPARE`).
#[cfg(target_os = "linux")]
const SPARE_MAX: usize = 1 << 30;

/// The mapping of the last mapped arena dropped, kept for the next one that fits: whole
/// pages `start .. start + len`.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Spare {
    start: usize,
    len: usize,
}

#[cfg(target_os = "linux")]
static SPARE: std::sync::Mutex<Option<Spare>> = std::sync::Mutex::new(None);

/// The parts of `lo .. hi` outside `ranges` (sorted address ranges), in address order.
#[cfg(target_os = "linux")]
fn gaps(lo: usize, hi: usize, ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut gaps = Vec::new();
    let mut from = lo;
    for &(a, b) in ranges.iter().chain([&(hi, hi)]) {
        let a = a.clamp(lo, hi);
        if from < a {
            gaps.push((from, a));
        }
        from = from.max(b.min(hi));
    }
    gaps
}

/// Unmaps the pages of `lo .. hi` that are not in `holes` (sorted address ranges).
///
/// # Safety
/// `lo .. hi` is whole pages of the caller's own mapping, apart from the holes, and nothing
/// reads them afterwards.
#[cfg(target_os = "linux")]
unsafe fn unmap_except(lo: usize, hi: usize, holes: &[(usize, usize)]) {
    for (a, b) in gaps(lo, hi, holes) {
        // SAFETY: whole pages of our own mapping, not moved out (caller's contract).
        unsafe { libc::munmap(a as *mut libc::c_void, b - a) };
    }
}
/// Copies larger than this are split over the rayon pool.
const COPY_CHUNK: usize = 1 << 20;

/// The largest block `tune_host_allocator` has glibc's `malloc` serve from its heap (the
/// largest mapping threshold glibc accepts on 64-bit systems), and so the most output bytes
/// a run on a kept arena copies rather than moves (`cpu::run_observed`).
pub(super) const HEAP_BLOCK_MAX: usize = 32 << 20;

/// Sets the C allocator up for a process that runs plans over and over (`tc bench`,
/// `cpubench`, a serving loop); `tc` calls it first thing. Left to itself, glibc's `malloc`
/// maps each block of 128 KiB or more (a little more after the first frees) afresh and
/// unmaps it when it is freed, and trims its heap once 2–4 MiB lie free at its top: a run
/// whose outputs are a few MiB then copies them into fresh pages, one page fault per 4
/// KiB (about 3 µs each on the development VM: 1.7 ms for `train_block`'s 8 MiB of
/// gradients, a tenth of its run). Tuned, blocks up to `HEAP_BLOCK_MAX` come from the heap
/// and up to twice that stays resident at its top when freed (glibc's own ratio between
/// the two): the outputs of one run are freed into the heap and the next run's land on the
/// same, resident pages. A process that keeps every output pays nothing for it; one that
/// frees them keeps at most 64 MiB more resident than it uses. Returns whether the
/// allocator took the settings (glibc on Linux only; elsewhere it does nothing).
pub fn tune_host_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's thresholds; it is safe to call at any time,
        // from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCK_MAX as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * HEAP_BLOCK_MAX as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Where an arena's memory came from.
#[derive(Debug)]
enum Backing {
    /// A zero-byte arena: a dangling, aligned pointer.
    Empty,
    /// The global allocator (small arenas, and systems other than Linux).
    Heap(std::alloc::Layout),
    /// An anonymous mapping of `len` bytes at `start`, page-aligned, huge-page advised;
    /// the arena begins at most one page into it. Moves leave holes in it: `holes` lists
    /// them (absolute address ranges), because the system may hand a hole's addresses to
    /// any other mapping at once (another thread's stack, say), which the arena must then
    /// never advise on nor unmap.
    #[cfg(target_os = "linux")]
    Map {
        start: usize,
        len: usize,
        holes: std::sync::Mutex<Vec<(usize, usize)>>,
    },
}

/// One 16-byte aligned host allocation, freed (or kept for the next run) on drop.
#[derive(Debug)]
pub(super) struct Arena {
    pub(super) ptr: *mut u8,
    size: usize,
    backing: Backing,
    /// Whether the memory is a kept mapping of an earlier run (`reused`).
    reused: bool,
}

impl Arena {
    /// An arena of `bytes`. With `line_up = Some((offset, address))`, a mapped arena is
    /// placed so that arena byte `offset` and `address` have the same offset within a huge
    /// page (when that keeps the arena 16-byte aligned), so the output at `offset` can move
    /// into the vector at `address`.
    pub(super) fn new(bytes: u64, line_up: Option<(usize, usize)>) -> Result<Arena, CpuError> {
        let too_large = || CpuError::ArenaTooLarge(bytes);
        let size = usize::try_from(bytes).map_err(|_| too_large())?;
        if size == 0 {
            return Ok(Arena {
                ptr: std::ptr::NonNull::<u128>::dangling().as_ptr().cast(),
                size,
                backing: Backing::Empty,
                reused: false,
            });
        }
        #[cfg(target_os = "linux")]
        if size >= MAP_MIN {
            let residue = line_up
                .map(|(offset, address)| address.wrapping_sub(offset) % HUGE)
                .filter(|r| r % 16 == 0)
                .unwrap_or(0);
            return reuse(size, residue)
                .or_else(|| map_huge(size, residue))
                .ok_or_else(too_large);
        }
        let _ = line_up;
        let layout = std::alloc::Layout::from_size_align(size, 16).map_err(|_| too_large())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(too_large());
        }
        Ok(Arena {
            ptr,
            size,
            backing: Backing::Heap(layout),
            reused: false,
        })
    }

    /// True when the arena is a mapping kept from an earlier run: its pages are (mostly)
    /// resident already, so refilling a hole left by moving an output out costs more than
    /// copying the output.
    pub(super) fn reused(&self) -> bool {
        self.reused
    }

    /// The address ranges moves have taken out of the mapping, in address order.
    #[cfg(target_os = "linux")]
    fn holes(&self) -> Vec<(usize, usize)> {
        let mut holes = match &self.backing {
            Backing::Map { holes, .. } => holes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            _ => Vec::new(),
        };
        holes.sort_unstable();
        holes
    }

    /// Gives the pages of the arena outside `keep` (absolute address ranges) back to the
    /// system; they read as zero afterwards. Only whole pages inside the allocation.
    pub(super) fn release_except(&self, keep: &[(usize, usize)]) {
        #[cfg(target_os = "linux")]
        {
            const MIN_ARENA: usize = 1 << 20;
            if self.size < MIN_ARENA {
                return;
            }
            let (start, end) = (self.ptr as usize, self.ptr as usize + self.size);
            let mut keep: Vec<(usize, usize)> =
                keep.iter().copied().filter(|(a, b)| a < b).collect();
            // Holes are no longer ours: skipped like the ranges to keep.
            keep.extend(self.holes());
            keep.sort_unstable();
            for (a, b) in gaps(start, end, &keep) {
                let (lo, hi) = (a.next_multiple_of(PAGE), b / PAGE * PAGE);
                if lo < hi {
                    // SAFETY: [lo, hi) is whole pages inside our own allocation that no
                    // output still needs and that no move has taken (holes are skipped
                    // above); MADV_DONTNEED on private anonymous memory only drops their
                    // contents.
                    unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = keep;
    }

    /// Arena bytes `lo .. lo + len` as a vector: `dst` (empty, capacity at least `len`,
    /// allocated by the caller) filled by moving whole pages where the arena is a mapping
    /// and the two line up, else by copying. The moved pages leave the arena (reading them afterwards would
    /// fault), so the caller moves each byte range at most once and reads no output that
    /// shares its pages after moving it.
    ///
    /// # Safety
    /// `lo + len <= size`, and the kernels have finished.
    pub(super) unsafe fn take(&self, lo: usize, len: usize, mut dst: Vec<u8>) -> Vec<u8> {
        // SAFETY: in bounds by the caller's contract.
        let src = unsafe { std::slice::from_raw_parts(self.ptr.add(lo), len) };
        #[cfg(target_os = "linux")]
        // SAFETY: forwarded from the caller.
        match unsafe { self.move_out(src, &mut dst) } {
            Moved::Done(_) => return dst,
            Moved::Not => {}
            Moved::Lost => {
                // The vector's middle could neither be replaced nor restored: never
                // hand its memory back to the allocator.
                std::mem::forget(dst);
                return copy_out(src);
            }
        }
        copy_into(src, &mut dst);
        dst
    }

    /// Moves `src`'s whole pages into `dst` (`move_pages`) when the arena is a mapping, and
    /// records the hole they leave. Every move goes through here: a hole left unrecorded
    /// would be unmapped again by the drop even after the system has handed its addresses
    /// to another mapping (a SIGSEGV in whichever thread's stack landed there; seen when a
    /// test called `move_pages` directly).
    ///
    /// # Safety
    /// As `move_pages`: `src` lies in this arena; nothing reads its whole pages afterwards.
    #[cfg(target_os = "linux")]
    unsafe fn move_out(&self, src: &[u8], dst: &mut Vec<u8>) -> Moved {
        let Backing::Map { holes, .. } = &self.backing else {
            return Moved::Not;
        };
        // SAFETY: forwarded from the caller.
        let moved = unsafe { move_pages(src, dst) };
        if let Moved::Done(hole) = moved {
            holes.lock().unwrap_or_else(|e| e.into_inner()).push(hole);
        }
        moved
    }
}

/// How a move went.
#[cfg(target_os = "linux")]
enum Moved {
    /// `dst` holds the bytes; the source's whole pages `(from, to)` left the arena.
    Done((usize, usize)),
    /// Nothing was changed; copy instead.
    Not,
    /// Part of `dst`'s memory is unmapped (never seen in practice).
    Lost,
}

/// Moves `src`'s whole pages into `dst` (empty, capacity `src.len()`), copying the partial
/// pages at either end. Called only by `Arena::move_out`, which records the hole.
///
/// # Safety
/// `src` lies in the arena's mapping; nothing reads its whole pages afterwards.
#[cfg(target_os = "linux")]
unsafe fn move_pages(src: &[u8], dst: &mut Vec<u8>) -> Moved {
    let len = src.len();
    let (s, d) = (src.as_ptr() as usize, dst.as_mut_ptr() as usize);
    if len < MOVE_MIN || len > dst.capacity() || !s.wrapping_sub(d).is_multiple_of(PAGE) {
        return Moved::Not;
    }
    let head = s.next_multiple_of(PAGE) - s;
    let mid = (len - head) / PAGE * PAGE;
    if mid == 0 {
        return Moved::Not;
    }
    // SAFETY: [d + head, d + head + mid) is whole pages strictly inside `dst`'s allocation,
    // which we own and have not written: replacing them touches no allocator metadata
    // (that lives outside [d, d + len)). [s + head, ..) is whole pages of our own mapping,
    // one VMA (the arena's is never split except by earlier moves of other outputs, whose
    // pages do not overlap these).
    let moved = unsafe {
        libc::mremap(
            (s + head) as *mut libc::c_void,
            mid,
            mid,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            (d + head) as *mut libc::c_void,
        )
    };
    if moved != (d + head) as *mut libc::c_void {
        // Some kernels unmap the destination before they find the move impossible: put
        // fresh pages back there (still our allocation) and copy instead.
        // SAFETY: as above, whole pages inside our own allocation.
        let back = unsafe {
            libc::mmap(
                (d + head) as *mut libc::c_void,
                mid,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        return if back == (d + head) as *mut libc::c_void {
            Moved::Not
        } else {
            Moved::Lost
        };
    }
    // SAFETY: the partial pages at either end are still mapped in both; `dst` has room.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), head);
        std::ptr::copy_nonoverlapping(
            src.as_ptr().add(head + mid),
            dst.as_mut_ptr().add(head + mid),
            len - head - mid,
        );
        dst.set_len(len);
    }
    Moved::Done((s + head, s + head + mid))
}

/// A fresh anonymous mapping holding `size` bytes from an address `residue` (< 2 MiB) past
/// a 2 MiB boundary, advised to use transparent huge pages. Only the pages the arena covers stay
/// mapped, so a huge page never reaches past the arena's ends: the resident set is what
/// the plan says, rounded to 4 KiB.
#[cfg(target_os = "linux")]
fn map_huge(size: usize, residue: usize) -> Option<Arena> {
    let over = size.checked_add(residue)?.checked_add(HUGE + PAGE)?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let raw = raw as usize;
    let ptr = raw.next_multiple_of(HUGE) + residue;
    let (start, end) = (ptr / PAGE * PAGE, (ptr + size).next_multiple_of(PAGE));
    // SAFETY: [raw, start) and [end, raw + over) are whole pages of the mapping just made,
    // outside the part kept; unmapping them touches nothing else.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        if raw + over > end {
            libc::munmap(end as *mut libc::c_void, raw + over - end);
        }
        // Advice on our own mapping (all of it, so it stays one VMA); failure (no THP
        // support) is harmless.
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
    Some(Arena {
        ptr: ptr as *mut u8,
        size,
        backing: Backing::Map {
            start,
            len: end - start,
            holes: Default::default(),
        },
        reused: false,
    })
}

/// The kept mapping (`SPARE`) as an arena of `size` bytes at an address `residue` (< 2 MiB)
/// past a 2 MiB boundary, as `map_huge` places it, or failing that at the same offset
/// within a 4 KiB page, when it fits; its pages before and after the arena unmapped.
/// `None`, and the mapping unmapped, when it does not fit.
#[cfg(target_os = "linux")]
fn reuse(size: usize, residue: usize) -> Option<Arena> {
    let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let (start, end) = (spare.start, spare.start + spare.len);
    let fits = |ptr: usize| {
        let (lo, hi) = (
            ptr / PAGE * PAGE,
            ptr.checked_add(size)?.next_multiple_of(PAGE),
        );
        (lo >= start && hi <= end).then_some((ptr, lo, hi))
    };
    let mut huge = start / HUGE * HUGE + residue % HUGE;
    if huge / PAGE * PAGE < start {
        huge += HUGE;
    }
    let Some((ptr, lo, hi)) = fits(huge).or_else(|| fits(start + residue % PAGE)) else {
        // SAFETY: the kept mapping is ours (whole: only mappings without holes are kept),
        // and nothing uses it.
        unsafe { libc::munmap(start as *mut libc::c_void, spare.len) };
        return None;
    };
    // SAFETY: as above; only the pages before and after the new arena.
    unsafe {
        if lo > start {
            libc::munmap(start as *mut libc::c_void, lo - start);
        }
        if end > hi {
            libc::munmap(hi as *mut libc::c_void, end - hi);
        }
    }
    Some(Arena {
        ptr: ptr as *mut u8,
        size,
        backing: Backing::Map {
            start: lo,
            len: hi - lo,
            holes: Default::default(),
        },
        reused: true,
    })
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.backing {
            Backing::Empty => {}
            // SAFETY: allocated in `new` with this very layout, freed once.
            Backing::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr, layout) },
            // The mapping made in `map_huge`, whole (no output moved out of it), is kept
            // for the next run, the one kept before unmapped. One with holes (moved-out
            // outputs: large ones, whose refilled holes would fault in as much as a fresh
            // mapping) or too large to keep is unmapped, less the holes (their addresses
            // may belong to another mapping by now).
            #[cfg(target_os = "linux")]
            Backing::Map { start, len, .. } => {
                let holes = self.holes();
                if len <= SPARE_MAX && holes.is_empty() {
                    let old = SPARE
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .replace(Spare { start, len });
                    if let Some(old) = old {
                        // SAFETY: the mapping kept before, ours and whole, unused.
                        unsafe { libc::munmap(old.start as *mut libc::c_void, old.len) };
                    }
                } else {
                    // SAFETY: our own mapping less its holes; the kernels are done.
                    unsafe { unmap_except(start, start + len, &holes) };
                }
            }
        }
    }
}

/// `src` copied into a fresh vector (see `copy_into`).
pub(super) fn copy_out(src: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(src.len());
    copy_into(src, &mut v);
    v
}

/// Advises the whole huge pages of `dst`'s first `n` bytes of capacity to be huge pages,
/// when `n` is large (fresh memory then faults in 2 MiB at a time, not 4 KiB).
pub(super) fn advise_huge(dst: &Vec<u8>, n: usize) {
    #[cfg(target_os = "linux")]
    if n >= HUGE_MIN && n <= dst.capacity() {
        let (lo, hi) = (
            (dst.as_ptr() as usize).next_multiple_of(HUGE),
            (dst.as_ptr() as usize + n) / HUGE * HUGE,
        );
        if lo < hi {
            // SAFETY: advice on whole huge pages inside the caller's own allocation (its
            // capacity covers `n` bytes); it changes no contents, and failure is harmless.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (dst, n);
}

/// `src` copied into `dst` (empty, capacity at least `src.len()`): when large, advised to
/// use huge pages and filled by the rayon pool in 1 MiB chunks (the page faults of fresh
/// memory are most of the cost, and they run in parallel too).
pub(super) fn copy_into(src: &[u8], dst: &mut Vec<u8>) {
    let n = src.len();
    dst.clear();
    if n < 2 * COPY_CHUNK {
        dst.extend_from_slice(src);
        return;
    }
    dst.reserve(n);
    advise_huge(dst, n);
    dst.spare_capacity_mut()[..n]
        .par_chunks_mut(COPY_CHUNK)
        .zip(src.par_chunks(COPY_CHUNK))
        .for_each(|(d, s)| {
            // SAFETY: `d` and `s` have the same length, and `d` is uninitialised spare
            // capacity of a different allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr().cast::<u8>(), s.len())
            };
        });
    // SAFETY: the first n bytes were all written just above.
    unsafe { dst.set_len(n) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arena of `size` bytes holding byte `i % 251` at offset `i`.
    fn filled(size: usize, line_up: Option<(usize, usize)>) -> Arena {
        let arena = Arena::new(size as u64, line_up).expect("arena");
        // SAFETY: the arena has `size` writable bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(arena.ptr, size) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        arena
    }

    fn expected(lo: usize, len: usize) -> Vec<u8> {
        (lo..lo + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn outputs_come_out_whole_whether_moved_or_copied() {
        // Output a lines up with its vector (moved, partial pages at both ends); b starts
        // 16 bytes after a page offset that matches (copied unless it happens to line up);
        // c is too small to move. Each comes out byte for byte, and the arena's remaining
        // bytes stay readable.
        let size = 12 << 20;
        let (a_lo, a_len) = (48, (5 << 20) + 100);
        let (b_lo, b_len) = (6 << 20, (3 << 20) + 16);
        let (c_lo, c_len) = ((10 << 20) + 32, 4000);
        let (va, vb, vc) = (
            Vec::with_capacity(a_len),
            Vec::with_capacity(b_len),
            Vec::with_capacity(c_len),
        );
        let arena = filled(size, Some((a_lo, va.as_ptr() as usize)));
        #[cfg(target_os = "linux")]
        {
            let (s, d) = (arena.ptr as usize + a_lo, va.as_ptr() as usize);
            assert_eq!(
                s.wrapping_sub(d) % HUGE,
                0,
                "the arena lines up with a's vector within a huge page"
            );
        }
        // SAFETY: every range is inside the arena and taken once; the kernels are done.
        unsafe {
            assert_eq!(arena.take(a_lo, a_len, va), expected(a_lo, a_len));
            assert_eq!(arena.take(b_lo, b_len, vb), expected(b_lo, b_len));
            assert_eq!(arena.take(c_lo, c_len, vc), expected(c_lo, c_len));
        }
        // Bytes outside the moved whole pages of a are still there.
        // SAFETY: in bounds; not moved (before a's first whole page, after b's last).
        unsafe {
            assert_eq!(*arena.ptr.add(a_lo), (a_lo % 251) as u8);
            assert_eq!(*arena.ptr.add(size - 1), ((size - 1) % 251) as u8);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pages_move_only_when_they_line_up() {
        let size = 8 << 20;
        let len = 3 << 20;
        let mut v: Vec<u8> = Vec::with_capacity(len);
        let arena = filled(size, Some((0, v.as_ptr() as usize)));
        // SAFETY: both ranges are inside the arena; only the first is moved.
        unsafe {
            let off = std::slice::from_raw_parts(arena.ptr.add(16), len);
            assert!(matches!(arena.move_out(off, &mut v), Moved::Not));
            assert!(v.is_empty());
            assert!(arena.holes().is_empty(), "nothing moved, no hole");
            let src = std::slice::from_raw_parts(arena.ptr, len);
            let Moved::Done(hole) = arena.move_out(src, &mut v) else {
                panic!("lined-up pages move");
            };
            // The hole is the arena's record: its drop must not unmap those addresses,
            // which the system may already have given to another thread's stack.
            assert_eq!(arena.holes(), vec![hole]);
        }
        assert_eq!(v, expected(0, len));
        // The vector is ordinary memory: it can be written, grown and freed.
        v[len / 2] = 7;
        v.extend_from_slice(&[1, 2, 3]);
        assert_eq!(v[len / 2], 7);
        assert_eq!(v.len(), len + 3);
    }

    #[test]
    fn small_and_empty_arenas_work() {
        for size in [0usize, 16, 4096, 1 << 20] {
            let arena = filled(size, None);
            let len = size.min(100);
            // SAFETY: in bounds.
            let got = unsafe { arena.take(0, len, Vec::with_capacity(len)) };
            assert_eq!(got, expected(0, len));
        }
    }

    /// A dropped mapping no output left is kept and handed to the next arena that fits,
    /// all of it writable and readable. Other tests running beside this one may take the
    /// kept mapping first: then try again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_kept_mapping_is_reused() {
        for _ in 0..20 {
            let size = 8 << 20;
            let arena = filled(size, None);
            // SAFETY: in the arena; a copy (no move without a lined-up vector of 1 MiB).
            let out = unsafe { arena.take(100, 5000, Vec::with_capacity(5000)) };
            assert_eq!(out, expected(100, 5000));
            let start = arena.ptr as usize;
            drop(arena);
            let again = Arena::new((6 << 20) + 5, None).expect("arena");
            if !again.reused() {
                continue;
            }
            assert_eq!(
                again.ptr as usize, start,
                "the kept mapping, from its start"
            );
            // SAFETY: the arena's bytes, all writable.
            let bytes = unsafe { std::slice::from_raw_parts_mut(again.ptr, (6 << 20) + 5) };
            bytes.fill(0x3c);
            assert!(bytes.iter().all(|&b| b == 0x3c));
            return;
        }
        panic!("in 20 tries, another test always took the kept mapping first");
    }

    /// A hole a move leaves may at once become another mapping's (a thread's stack, say):
    /// releasing the arena's other pages and dropping the arena must leave that mapping
    /// alone. Seen to fail (the mapping zeroed by `release_except`, then unmapped by the
    /// drop: a SIGSEGV reading it) before the arena kept its holes.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapping_placed_in_a_moved_out_hole_survives_the_arena() {
        // Other tests running beside this one may take the hole first (the very race the
        // arena guards against): then try again with a fresh arena, up to 20 times.
        for _ in 0..20 {
            let size = 8 << 20;
            let len = 3 << 20;
            let v: Vec<u8> = Vec::with_capacity(len);
            let arena = filled(size, Some((0, v.as_ptr() as usize)));
            // SAFETY: in the arena, taken once.
            let out = unsafe { arena.take(0, len, v) };
            assert_eq!(out, expected(0, len));
            let hole = arena.holes();
            assert_eq!(hole.len(), 1, "the output's whole pages moved");
            let (a, b) = hole[0];
            // Another mapping, asked for exactly at the hole.
            // SAFETY: a fresh private anonymous mapping; MAP_FIXED_NOREPLACE never replaces.
            let other = unsafe {
                libc::mmap(
                    a as *mut libc::c_void,
                    b - a,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if other == libc::MAP_FAILED {
                continue;
            }
            assert_eq!(other as usize, a, "the mapping is at the hole");
            // SAFETY: the mapping just made, b - a bytes.
            let theirs = unsafe { std::slice::from_raw_parts_mut(other as *mut u8, b - a) };
            theirs.fill(0x5a);
            arena.release_except(&[]);
            assert!(
                theirs.iter().all(|&x| x == 0x5a),
                "release_except spared the hole"
            );
            drop(arena);
            assert!(theirs.iter().all(|&x| x == 0x5a), "the drop left it mapped");
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(other, b - a) };
            return;
        }
        panic!("in 20 tries, another mapping always took the hole before the test could");
    }
}
