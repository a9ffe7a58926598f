//! Sizes: the one place that says how many bytes a buffer takes in memory. Every region is
//! rounded up to 16 bytes (the arena's alignment, and what any allocator gives), and a large
//! reduction into one value stages a buffer of partials whose size is fixed here. The planner
//! (`plan::split`, the arena packing) and the naive / eager / lower-bound models all read
//! these rules, so the figures cannot drift apart.

/// Arena offsets, and every region's footprint, are multiples of this.
pub const ALIGN: u64 = 16;

/// `x` rounded up to a multiple of `ALIGN` (saturating).
pub fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Fewest elements a whole-domain reduction needs before it is split into partials.
pub const SPLIT_MIN: u64 = 1 << 18;

/// Bytes of one partial (partials are f32, whatever the data's dtype).
pub const PARTIAL_BYTES: u64 = 4;

/// Rows of partials for a reduction of `n` elements into one value: the largest divisor of
/// `n` in 64..=1024 leaving rows of at least 256 elements; `None` below `SPLIT_MIN` or when
/// `n` has no such divisor.
pub fn partial_rows(n: u64) -> Option<u64> {
    if n < SPLIT_MIN {
        return None;
    }
    (64..=1024u64)
        .rev()
        .find(|r| n.is_multiple_of(*r) && n / r >= 256)
}

/// Rows of partials when `count` reductions of `n` elements share one kernel: together their
/// partials take no more than one reduction's staging (what the eager model counts for
/// each), so fusing them never costs memory. One reduction: `partial_rows`. Several: a
/// multiple of 4 (each buffer a whole number of 16-byte units) dividing `n`, rows of at
/// least 256, at least 32 rows, else no split.
pub fn shared_rows(n: u64, count: usize) -> Option<u64> {
    let alone = partial_rows(n)?;
    if count <= 1 {
        return Some(alone);
    }
    (32..=alone / count as u64)
        .rev()
        .find(|&r| r % 4 == 0 && n.is_multiple_of(r) && n / r >= 256)
}

/// Bytes a reduction of `n` elements into one value stages (0: not split), as the arena
/// holds them: `partial_rows` partials, rounded up to `ALIGN`.
pub fn staging_bytes(n: u64) -> u64 {
    partial_rows(n).map_or(0, |r| align_up(r * PARTIAL_BYTES))
}

/// Multiprocessors the GPU launch shapes assume: an H100 SXM's 132 (an H200 has as many).
/// Each keeps 2048 threads resident: two blocks of a column reduction.
pub const GPU_SMS: u64 = 132;

/// Columns a block of a column reduction reads side by side (a warp's lanes), each walked by
/// 32 threads (`codegen::launch`: 32 slices of 1024-thread blocks below 8192 columns).
pub const COLUMN_BLOCK: u64 = 32;

/// Fewest elements of each column one part walks: 8 a thread of the 32 walking it.
pub const COLUMN_PART_MIN: u64 = 256;

/// Most parts a column is split into (each column's fold reads this many partials).
pub const COLUMN_PARTS_MAX: u64 = 64;

/// Parts the reduced axis of a column reduction (`rows` columns of `len` elements, the
/// innermost axis a column's) is split into so that its blocks fill the GPU: the whole of
/// `GPU_SMS` × 2 resident blocks (not more, no second wave) over the `rows / COLUMN_BLOCK`
/// blocks of columns, at most `COLUMN_PARTS_MAX`, each part at least `COLUMN_PART_MIN` long.
/// `None` (not split) below 2 parts, for one column (a reduction into one value is
/// `partial_rows`'s) and below `SPLIT_MIN` elements.
pub fn column_parts(rows: u64, len: u64) -> Option<u64> {
    if rows < 2 || rows.saturating_mul(len) < SPLIT_MIN {
        return None;
    }
    let blocks = rows.div_ceil(COLUMN_BLOCK);
    let parts = (GPU_SMS * 2 / blocks)
        .min(len / COLUMN_PART_MIN)
        .min(COLUMN_PARTS_MAX);
    (parts >= 2).then_some(parts)
}

/// Parts when `count` reductions share one column kernel: together their partials take no
/// more than one reduction's staging (what the eager model counts for each), as
/// `shared_rows` does.
pub fn shared_column_parts(rows: u64, len: u64, count: usize) -> Option<u64> {
    let parts = column_parts(rows, len)? / (count.max(1) as u64);
    (parts >= 2).then_some(parts)
}

/// Bytes a column reduction stages (0: not split): `column_parts` partials of
/// `partial_bytes` (4 for a float accumulator, 8 for an integer one) per column, rounded up
/// to `ALIGN`.
pub fn column_staging_bytes(rows: u64, len: u64, partial_bytes: u64) -> u64 {
    column_parts(rows, len).map_or(0, |p| {
        align_up(p.saturating_mul(rows).saturating_mul(partial_bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_rows_divide_large_counts_only() {
        // 2^26 + 1 = 5 · 53 · 157 · 1613: 785 rows, partials rounded up as the arena does.
        assert_eq!(partial_rows((1 << 26) + 1), Some(785));
        assert_eq!(staging_bytes((1 << 26) + 1), 3152);
        assert_eq!(partial_rows(SPLIT_MIN - 1), None);
        assert_eq!(partial_rows(1 << 26), Some(1024));
        assert_eq!(partial_rows(3 * (1 << 18)), Some(1024));
        // A prime count has no divisor: not split.
        assert_eq!(partial_rows(1_000_003), None);
        let r = partial_rows(50257 * 64).expect("splits");
        assert!((50257 * 64u64).is_multiple_of(r));
        assert!(50257 * 64 / r >= 256);
    }

    #[test]
    fn reductions_sharing_a_kernel_share_one_staging() {
        let n = 1u64 << 20;
        assert_eq!(shared_rows(n, 1), Some(1024));
        assert_eq!(shared_rows(n, 2), Some(512));
        assert_eq!(shared_rows(n, 3), Some(256));
        // 785 rows alone; shared, a multiple of 4 dividing 2^26 + 1 does not exist.
        assert_eq!(shared_rows((1 << 26) + 1, 1), Some(785));
        assert_eq!(shared_rows((1 << 26) + 1, 2), None);
        for count in 1..6 {
            if let Some(r) = shared_rows(n, count) {
                assert!(align_up(r * PARTIAL_BYTES) * count as u64 <= staging_bytes(n));
            }
        }
    }

    #[test]
    fn column_reductions_split_until_the_gpu_is_full() {
        // broadcast.tx: 4096 columns of 4096, 128 blocks of columns: 2 parts, 256 blocks.
        assert_eq!(column_parts(4096, 4096), Some(2));
        assert_eq!(column_staging_bytes(4096, 4096, 4), 2 * 4096 * 4);
        // 64 columns: 2 blocks; parts of at least 256 elements limit it to 16.
        assert_eq!(column_parts(64, 4096), Some(16));
        assert_eq!(column_parts(64, 1 << 20), Some(COLUMN_PARTS_MAX));
        // Enough columns to fill the GPU alone, too few elements, or one column: no split.
        assert_eq!(column_parts(8192, 4096), None);
        assert_eq!(column_parts(4097 + 128, 4096), None);
        assert_eq!(column_parts(64, 1024), None);
        assert_eq!(column_parts(1, 1 << 20), None);
        // An odd count of odd columns: parts need not divide anything.
        assert_eq!(column_parts(1001, 3001), Some(8));
        // Shared: two reductions halve the parts; below 2 none.
        assert_eq!(shared_column_parts(4096, 4096, 2), None);
        assert_eq!(shared_column_parts(64, 4096, 2), Some(8));
        for count in 1..5 {
            if let Some(p) = shared_column_parts(64, 4096, count) {
                assert!(align_up(p * 64 * 4) * count as u64 <= column_staging_bytes(64, 4096, 4));
            }
        }
    }

    #[test]
    fn align_rounds_up_and_saturates() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 16);
        assert_eq!(align_up(16), 16);
        assert_eq!(align_up(17), 32);
        assert_eq!(align_up(u64::MAX), u64::MAX);
    }
}
