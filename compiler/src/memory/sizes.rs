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
    fn align_rounds_up_and_saturates() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 16);
        assert_eq!(align_up(16), 16);
        assert_eq!(align_up(17), 32);
        assert_eq!(align_up(u64::MAX), u64::MAX);
    }
}
