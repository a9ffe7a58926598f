//! The host arena: one zeroed, 16-byte aligned allocation holding every arena buffer at its
//! planned offset, and the copy of outputs out of it. On Linux a large arena is its own
//! anonymous mapping backed by transparent huge pages (one page fault per 2 MiB instead of
//! per 4 KiB), and pages no output still needs go back to the system as soon as possible.

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
/// Copies larger than this are split over the rayon pool.
const COPY_CHUNK: usize = 1 << 20;

/// Where an arena's memory came from.
#[derive(Debug)]
enum Backing {
    /// A zero-byte arena: a dangling, aligned pointer.
    Empty,
    /// The global allocator (small arenas, and systems other than Linux).
    Heap(std::alloc::Layout),
    /// An anonymous mapping of `len` bytes at `ptr`, page-aligned, huge-page advised.
    #[cfg(target_os = "linux")]
    Map { len: usize },
}

/// One zeroed, 16-byte aligned host allocation, freed on drop.
#[derive(Debug)]
pub(super) struct Arena {
    pub(super) ptr: *mut u8,
    size: usize,
    backing: Backing,
}

impl Arena {
    pub(super) fn new(bytes: u64) -> Result<Arena, CpuError> {
        let too_large = || CpuError::ArenaTooLarge(bytes);
        let size = usize::try_from(bytes).map_err(|_| too_large())?;
        if size == 0 {
            return Ok(Arena {
                ptr: std::ptr::NonNull::<u128>::dangling().as_ptr().cast(),
                size,
                backing: Backing::Empty,
            });
        }
        #[cfg(target_os = "linux")]
        if size >= HUGE_MIN {
            return map_huge(size).ok_or_else(too_large);
        }
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
        })
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
            keep.sort_unstable();
            let mut from = start;
            for (a, b) in keep.into_iter().chain([(end, end)]) {
                let (lo, hi) = (from.next_multiple_of(PAGE), a.min(end) / PAGE * PAGE);
                if lo < hi {
                    // SAFETY: [lo, hi) is whole pages inside our own allocation that no
                    // output still needs; MADV_DONTNEED on private anonymous memory only
                    // drops their contents.
                    unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
                }
                from = from.max(b);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = keep;
    }
}

/// A fresh anonymous mapping of `size` bytes whose start is 2 MiB aligned, advised to use
/// transparent huge pages over its whole 2 MiB stretches (so a touched huge page never
/// reaches past the arena's end: the resident set is what the plan says, rounded to 4 KiB).
#[cfg(target_os = "linux")]
fn map_huge(size: usize) -> Option<Arena> {
    let len = size.checked_next_multiple_of(PAGE)?;
    let over = len.checked_add(HUGE)?;
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
    let ptr = raw.next_multiple_of(HUGE);
    // SAFETY: the head [raw, ptr) and the tail [ptr + len, raw + over) are whole pages of
    // the mapping just made, outside the part kept; unmapping them touches nothing else.
    unsafe {
        if ptr > raw {
            libc::munmap(raw as *mut libc::c_void, ptr - raw);
        }
        if raw + over > ptr + len {
            libc::munmap((ptr + len) as *mut libc::c_void, raw + over - ptr - len);
        }
    }
    let huge = size / HUGE * HUGE;
    if huge > 0 {
        // SAFETY: advice on our own mapping; failure (no THP support) is harmless.
        unsafe { libc::madvise(ptr as *mut libc::c_void, huge, libc::MADV_HUGEPAGE) };
    }
    Some(Arena {
        ptr: ptr as *mut u8,
        size,
        backing: Backing::Map { len },
    })
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.backing {
            Backing::Empty => {}
            // SAFETY: allocated in `new` with this very layout, freed once.
            Backing::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr, layout) },
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping made in `map_huge`, unmapped once.
            Backing::Map { len } => unsafe {
                libc::munmap(self.ptr.cast(), len);
            },
        }
    }
}

/// `src` copied into a fresh vector: a large one advised to use huge pages and filled by
/// the rayon pool in 1 MiB chunks (the page faults of the fresh memory are most of the
/// cost, and they run in parallel too).
pub(super) fn copy_out(src: &[u8]) -> Vec<u8> {
    let n = src.len();
    if n < 2 * COPY_CHUNK {
        return src.to_vec();
    }
    let mut v: Vec<u8> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    if n >= HUGE_MIN {
        let (lo, hi) = (
            (v.as_ptr() as usize).next_multiple_of(HUGE),
            (v.as_ptr() as usize + n) / HUGE * HUGE,
        );
        if lo < hi {
            // SAFETY: advice on whole huge pages inside our own allocation; it changes no
            // contents, and failure is harmless.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    v.spare_capacity_mut()[..n]
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
    unsafe { v.set_len(n) };
    v
}
