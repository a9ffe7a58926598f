//! tc's GEMM for a bf16 `A` times a bf16 `B` (`super::gemm_bf16`): both as bf16 pairs
//! along `k` (`k` padded to even with a zero; `B` packed, `A` packed too unless
//! `vdpbf16ps` can read its rows in place, `Panel`, or computed by a prologue, `AFrom`,
//! packed from its f32 values) and multiplied by AVX512-BF16's
//! `vdpbf16ps`, 32 products into 16 f32 lanes an instruction, or, where the CPU lacks it, by
//! the same steps in f32 (`Mode::Fma`) or by the exact scalar twin (`dot`), so that the
//! result is the same bits on every machine.
//!
//! What `vdpbf16ps` computes, measured on Zen 4 (and as Intel documents it, with the details
//! the documentation leaves open filled in by experiment): for each f32 lane, with the pair
//! `(a0, a1)` of `A` and `(b0, b1)` of `B`, `acc := step(step(acc, a1, b1), a0, b0)` — the
//! odd (high) element first — where `step(c, a, b)` is one fused multiply-add of the widened
//! values, `a·b + c` rounded once to nearest-even, with bf16 and f32 denormal inputs
//! (including `c`) read as zero of their sign, and a result whose magnitude, rounded to 24
//! bits with an unbounded exponent, is below 2⁻¹²⁶ flushed to zero of its sign (tininess
//! after rounding: a sum just below 2⁻¹²⁶ that rounds up to it is kept); a NaN result is the
//! first NaN among `a`, `b`, `c`, quieted, or the default NaN (`0xffc00000`) for `∞·0` and
//! `∞ − ∞`. MXCSR plays no part.
//!
//! Without AVX512-BF16, an AVX2 kernel runs the steps as plain f32 FMAs (high halves, then
//! low; `A` packed widened to f32, `B`'s pairs split in the kernel by a mask and a shift:
//! the f32 kernel's speed, 17–18 ms for a 1024³ product on two Zen 3 cores against 28 with
//! both split in the kernel), which are `step` exactly while no denormal, tiny result or
//! NaN arises: where every
//! nonzero element of the packed blocks is at least 2⁻⁵⁵ in magnitude (`plain`) and the
//! accumulators start at 0 or at least 2⁻¹⁰² (a multiple of 2⁻¹²⁵), every product and so
//! every sum is a multiple of 2⁻¹²⁵, never denormal nor ±2⁻¹²⁶; a NaN stays one to the end.
//! A block with a smaller element goes to the twin, and a tile that ends with a NaN (or
//! starts from a small accumulator) is computed again by the twin.

use super::{with_buffer, AFrom, Operand, A_FROM, A_PACK, KC, MC, MR, NR};
use crate::cpu::halves::bf16_bits;
use tc_compiler::ir::DType;

/// Pairs of `k` a micro-kernel call sums (`KP` u32s a row of a packed panel): a `B` panel of
/// `KP × NR` pairs is 32 KiB, the L1's size, as the f32 kernels' `KC × NR` floats are.
pub(super) const KP: usize = 512;

/// How a bf16 product's tiles are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// `vdpbf16ps` (the CPU has AVX512-BF16).
    Dot,
    /// The steps as f32 FMAs where they are exact, else the twin (AVX2 and FMA).
    Fma,
    /// The scalar twin.
    Twin,
}

/// Whether every nonzero element of these pairs is at least 2⁻⁵⁵ in magnitude (a
/// biased exponent of at least 72; infinities and NaNs count): the products of two such are
/// multiples of 2⁻¹²⁵ (`Mode::Fma`).
fn plain(pairs: &[u32]) -> bool {
    // (Branch-free, so that it vectorises.)
    let small = |h: u32| (h & 0x7fff != 0) & (h & 0x7f80 < 72 << 7);
    !pairs
        .iter()
        .fold(false, |any, &p| any | small(p & 0xffff) | small(p >> 16))
}

/// Whether the CPU has AVX512-BF16 (with AVX-512 F, for the micro-kernel's loads and stores).
pub fn has_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One multiply-add of `vdpbf16ps` (the module's `step`): `a·b + c` for bf16 bits `a`, `b`
/// and an f32 `c`, denormal inputs read as zero, a tiny result flushed to zero, NaNs as the
/// instruction makes them.
#[inline]
fn step(c: f32, a: u16, b: u16) -> f32 {
    let daz = |x: f32| {
        if x.is_subnormal() {
            f32::from_bits(x.to_bits() & 0x8000_0000)
        } else {
            x
        }
    };
    let (x, y) = (
        daz(f32::from_bits(u32::from(a) << 16)),
        daz(f32::from_bits(u32::from(b) << 16)),
    );
    let c = daz(c);
    if x.is_nan() || y.is_nan() || c.is_nan() {
        let first = if x.is_nan() {
            x
        } else if y.is_nan() {
            y
        } else {
            c
        };
        return f32::from_bits(first.to_bits() | 0x0040_0000);
    }
    let r = x.mul_add(y, c);
    if r.is_nan() {
        return f32::from_bits(0xffc0_0000);
    }
    let mag = r.abs();
    if mag > f32::MIN_POSITIVE {
        return r;
    }
    let zero = f32::from_bits(r.to_bits() & 0x8000_0000);
    if mag < f32::MIN_POSITIVE {
        return zero;
    }
    // `r` is ±2⁻¹²⁶: the exact sum lies within half a denormal step of it and may be below
    // it, tiny unless it rounds up to 2⁻¹²⁶ with 24 bits (at least 2⁻¹²⁶ − 2⁻¹⁵¹; the tie
    // goes to the even 2⁻¹²⁶). The product of two bf16s is exact in f64, and the sum as
    // `s + e` exactly (two-sum).
    let p = f64::from(x) * f64::from(y);
    let c = f64::from(c);
    let s = c + p;
    let bb = s - c;
    let e = (c - (s - bb)) + (p - bb);
    let least = f64::from(f32::MIN_POSITIVE) * (1.0 - 2f64.powi(-25));
    let tiny = s.abs() < least || (s.abs() == least && e != 0.0 && (e < 0.0) == (s > 0.0));
    if tiny {
        zero
    } else {
        r
    }
}

/// `vdpbf16ps` for one lane: `acc` plus the pair `a` (bf16 bits, element `2t` low, `2t + 1`
/// high) times the pair `b`, the high products first — the scalar twin of the micro-kernel.
#[inline]
pub(crate) fn dot(acc: f32, a: u32, b: u32) -> f32 {
    let hi = step(acc, (a >> 16) as u16, (b >> 16) as u16);
    step(hi, a as u16, b as u16)
}

/// `B`'s `k × cols` (bf16, `b` counting 2-byte elements) packed as pairs into `dst`: for
/// each block of `KP` pairs starting at pair `t0`, for each panel `p`, the `kp × NR` block
/// at `t0·NR·panels + p·kp·NR`, pair row by pair row, element `(2t, j)` in the low half and
/// `(2t + 1, j)` (zero past `k`) in the high half, columns past `cols` zero. Returns, with
/// `check`, whether the packed pairs are `plain` (else false).
pub(super) fn pack_b(
    k: usize,
    cols: usize,
    b: Operand,
    dst: &mut [u32],
    parallel: bool,
    check: bool,
) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    let all_plain = AtomicBool::new(check);
    let b_addr = b.ptr as usize;
    super::pack_rows(
        k.div_ceil(2),
        KP,
        cols,
        dst,
        parallel,
        |t, (c0, c1), row| {
            let (k0, src) = (2 * t, b_addr as *const u16);
            if b.cs == 1 {
                // Rows of contiguous columns: two slices interleaved (a loop the compiler
                // vectorises).
                // SAFETY: row `r < k` of B, columns `c0 .. c1` (in range).
                let run = |r: usize| unsafe {
                    std::slice::from_raw_parts(src.offset(r as isize * b.rs + c0 as isize), c1 - c0)
                };
                let lo = run(k0);
                if k0 + 1 < k {
                    let hi = run(k0 + 1);
                    for ((x, &l), &h) in row.iter_mut().zip(lo).zip(hi) {
                        *x = u32::from(l) | u32::from(h) << 16;
                    }
                } else {
                    for (x, &l) in row.iter_mut().zip(lo) {
                        *x = u32::from(l);
                    }
                }
            } else {
                // SAFETY: row `r` of B, column `c` (in range: `r < k`, `c < cols`).
                let at = |r: usize, c: usize| unsafe {
                    u32::from(*src.offset(r as isize * b.rs + c as isize * b.cs))
                };
                for (j, x) in row.iter_mut().enumerate() {
                    let hi = if k0 + 1 < k { at(k0 + 1, c0 + j) } else { 0 };
                    *x = at(k0, c0 + j) | hi << 16;
                }
            }
            // (The zero columns past `cols` are plain.)
            if check && !plain(row) {
                all_plain.store(false, Ordering::Relaxed);
            }
        },
    );
    all_plain.into_inner()
}

/// Where one tile of `A` (`MR` rows of pairs, bf16 bits as u32) lies: pair `t` of row `r`
/// at `at + r·rs + t·ts` (u32s, perhaps 2-byte aligned only), packed (`rs` 1, `ts` `MR`;
/// a second tile `kp·MR` further) or in `A` itself (`ts` 1; a second tile `MR` rows
/// further); or, `wide`, packed widened for the f32 steps (`pack_a`'s `wide`: the pair's
/// high halves as f32 bits at `at + 2t·MR + r`, its low halves `MR` further). Every pair
/// of the tile's `kp` is readable.
#[derive(Clone, Copy, Debug)]
pub(super) struct Panel {
    pub(super) at: *const u32,
    pub(super) rs: usize,
    pub(super) ts: usize,
    pub(super) wide: bool,
}

impl Panel {
    /// The tile `MR` rows further down.
    fn next(self, kp: usize) -> *const u32 {
        let step = if self.ts == 1 { MR * self.rs } else { kp * MR };
        self.at.wrapping_add(step)
    }

    /// Pair `t` of row `r` (bf16 bits, element `2t` low).
    ///
    /// # Safety
    /// `r < MR`, `t` below the tile's `kp`.
    unsafe fn pair(self, r: usize, t: usize) -> u32 {
        // SAFETY: inside the tile (the caller's promise).
        unsafe {
            if self.wide {
                let hi = *self.at.add(2 * t * MR + r);
                let lo = *self.at.add((2 * t + 1) * MR + r);
                (hi & 0xffff_0000) | lo >> 16
            } else {
                self.at.add(r * self.rs + t * self.ts).read_unaligned()
            }
        }
    }
}

/// `rows` rows of `A`, pairs `t0 .. t0 + kp` (elements `2·t0 ..`, zero at `k` and past it)
/// packed into `dst`: panel `q` at `q·kp·MR`, the pair `(r, t)` at `t·MR + r`, rows past
/// `rows` zero; `fill(i, run)` puts row `i`'s elements `2·t0 ..` (bf16 bits, as many as
/// `run` holds: up to `k`) into `run`. With `wide`, each pair as two f32s for the f32 steps
/// (`Panel::wide`): panel `q` at `2q·kp·MR`, the high half of `(r, t)` at `2t·MR + r` and
/// its low half `MR` further, each the f32 of the same value. Returns, with `check`,
/// whether the packed pairs are `plain` (else false).
fn pack_a(
    k: usize,
    rows: usize,
    (t0, kp): (usize, usize),
    (dst, wide): (&mut [u32], bool),
    check: bool,
    fill: impl Fn(usize, &mut [u16]),
) -> bool {
    let per = if wide { 2 * kp * MR } else { kp * MR };
    let given = (2 * kp).min(k - 2 * t0);
    let mut run = [0u16; 2 * KP];
    let run = &mut run[..2 * kp];
    for q in 0..rows.div_ceil(MR) {
        let h = MR.min(rows - q * MR);
        let out = &mut dst[q * per..(q + 1) * per];
        for r in 0..h {
            fill(q * MR + r, &mut run[..given]);
            // (The high half of the last pair of an odd `k`.)
            run[given..].fill(0);
            let pairs = run.chunks_exact(2);
            if wide {
                for (o, p) in out.chunks_exact_mut(2 * MR).zip(pairs) {
                    o[r] = u32::from(p[1]) << 16;
                    o[MR + r] = u32::from(p[0]) << 16;
                }
            } else {
                for (o, p) in out.chunks_exact_mut(MR).zip(pairs) {
                    o[r] = u32::from(p[0]) | u32::from(p[1]) << 16;
                }
            }
        }
        if h < MR {
            for row in out.chunks_exact_mut(MR) {
                row[h..].fill(0);
            }
        }
    }
    // (A widened pair's halves are the pair's, each shifted into the high half.)
    check && plain(&dst[..rows.div_ceil(MR) * per])
}

/// One task of a bf16 product: rows `r0 .. r0 + rows` of `C` and its panels `p0 .. p1` (of
/// a column block `cols` wide), over the whole `k`, `B` packed in `bp` (`pack_b`, `plain`
/// or not), its tiles as `mode` says.
///
/// # Safety
/// As `super::block`, `a` a bf16 operand; `mode` runs on this CPU.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    (r0, rows): (usize, usize),
    (p0, p1, cols): (usize, usize, usize),
    k: usize,
    (a, a_from): (Operand, Option<AFrom<'_>>),
    (bp, b_plain): (&[u32], bool),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    mode: Mode,
) {
    let panels = cols.div_ceil(NR);
    let pairs = k.div_ceil(2);
    let tiles = rows.div_ceil(MR);
    let full_q = rows / MR;
    // `vdpbf16ps` reads `A`'s whole tiles where they lie when its rows are runs of whole
    // pairs (unit column stride, `k` even, a row stride of whole pairs): a pair of `A` is
    // then one u32 of its row, and only a last tile of fewer than `MR` rows is packed.
    let direct =
        mode == Mode::Dot && a_from.is_none() && a.cs == 1 && k.is_multiple_of(2) && a.rs % 2 == 0;
    // The f32 steps take `A` widened (twice the u32s a pair) in blocks of half the pairs:
    // the same buffer, and `KP / 2` rows of a `B` panel (16 KiB) stay in L1 beside the
    // tile's `A`.
    let wide = mode == Mode::Fma;
    let step = if wide { KP / 2 } else { KP };
    with_buffer(&A_PACK, MC * KP, |ap| {
        // SAFETY: the thread's own buffer, read as bits.
        let ap = unsafe { std::slice::from_raw_parts_mut(ap.as_mut_ptr().cast::<u32>(), ap.len()) };
        for t0 in (0..pairs).step_by(step) {
            let kp = step.min(pairs - t0);
            // `B`'s block of `KP` pairs that holds these (`pack_b`): its first pair and size.
            let tb = t0 / KP * KP;
            let kpb = KP.min(pairs - tb);
            // The packed rows: all of them, or (direct) those of the last, partial tile.
            let packed = if direct { full_q * MR } else { 0 };
            let check = mode == Mode::Fma;
            // (`vdpbf16ps` on a computed block: its rows as bf16 bits in `ap`, `kp` pairs
            // apart, padded with zeros to whole pairs and whole tiles, read in place.)
            let rows_of_bits = mode == Mode::Dot && a_from.is_some();
            let a_plain = match a_from {
                Some(from) if rows_of_bits => with_buffer(&A_FROM, rows * KC, |src| {
                    let kc = (2 * kp).min(k - 2 * t0);
                    // SAFETY: the thread's own buffer (`MC·KP` u32s), as bf16s: at most
                    // `MC` rows (a task's, `row_tasks`) of `2·kp ≤ 2·KP`.
                    let bits = unsafe {
                        std::slice::from_raw_parts_mut(ap.as_mut_ptr().cast::<u16>(), 2 * ap.len())
                    };
                    let bits = &mut bits[..tiles * MR * 2 * kp];
                    // Computed `KC` columns at a time (the thread's buffer as for f32).
                    for c0 in (0..kc).step_by(KC) {
                        let w = KC.min(kc - c0);
                        let op = (from.f)((r0, rows), (2 * t0 + c0, w), src);
                        for (i, row) in bits.chunks_exact_mut(2 * kp).take(rows).enumerate() {
                            let row = &mut row[c0..c0 + w];
                            // SAFETY: `f` put the block's `rows × w` values where `op` says.
                            let at = |c: usize| unsafe {
                                *op.ptr.offset(i as isize * op.rs + c as isize * op.cs)
                            };
                            if op.cs == 1 {
                                // SAFETY: as above, row `i`'s `w` values in a run.
                                let vals = unsafe {
                                    std::slice::from_raw_parts(op.ptr.offset(i as isize * op.rs), w)
                                };
                                crate::cpu::halves::narrow_to_halves(DType::BF16, vals, row);
                            } else {
                                for (c, h) in row.iter_mut().enumerate() {
                                    *h = bf16_bits(at(c));
                                }
                            }
                        }
                    }
                    // Zeros past `k` and in the rows past the task's.
                    for (i, row) in bits.chunks_exact_mut(2 * kp).enumerate() {
                        if i >= rows {
                            row.fill(0);
                        } else {
                            row[kc..].fill(0);
                        }
                    }
                    false
                }),
                // The block computed into this thread's buffer (f32 values of bf16s), then
                // packed from there.
                Some(from) => with_buffer(&A_FROM, rows * 2 * kp, |src| {
                    let kc = (2 * kp).min(k - 2 * t0);
                    let op = (from.f)((r0, rows), (2 * t0, kc), src);
                    let fill = |i: usize, run: &mut [u16]| {
                        let row = op.ptr.wrapping_offset(i as isize * op.rs);
                        if op.cs == 1 {
                            // SAFETY: `f` put the block's `rows × kc` values where `op`
                            // says (`run` holds at most `kc`), row `i`'s in a run.
                            let vals = unsafe { std::slice::from_raw_parts(row, run.len()) };
                            crate::cpu::halves::narrow_to_halves(DType::BF16, vals, run);
                        } else {
                            for (c, x) in run.iter_mut().enumerate() {
                                // SAFETY: as above, column `c` of row `i`.
                                *x = bf16_bits(unsafe { *row.offset(c as isize * op.cs) });
                            }
                        }
                    };
                    pack_a(k, rows, (t0, kp), (ap, wide), check, fill)
                }),
                None => {
                    let src = a.ptr.cast::<u16>();
                    let fill = |i: usize, run: &mut [u16]| {
                        let at = (r0 + packed + i) as isize * a.rs + 2 * t0 as isize * a.cs;
                        let row = src.wrapping_offset(at);
                        if a.cs == 1 {
                            // SAFETY: row `r0 + packed + i` of A, columns `2·t0 ..` up to
                            // `k` at most (in range).
                            run.copy_from_slice(unsafe {
                                std::slice::from_raw_parts(row, run.len())
                            });
                        } else {
                            for (c, x) in run.iter_mut().enumerate() {
                                // SAFETY: as above, column `2·t0 + c < k`.
                                *x = unsafe { *row.offset(c as isize * a.cs) };
                            }
                        }
                    };
                    pack_a(k, rows - packed, (t0, kp), (ap, wide), check, fill)
                }
            };
            // Tile `q` of `A`: in place (direct, whole), rows of bits, or packed.
            let apanel = |q: usize| -> Panel {
                if rows_of_bits {
                    Panel {
                        at: ap[q * MR * kp..].as_ptr(),
                        rs: kp,
                        ts: 1,
                        wide: false,
                    }
                } else if q * MR < packed {
                    // SAFETY: row r0 + q·MR, pair t0 of A (in range; as u32, the pair).
                    let at = unsafe { a.ptr.cast::<u16>().offset((r0 + q * MR) as isize * a.rs) };
                    Panel {
                        // SAFETY: as above.
                        at: unsafe { at.cast::<u32>().add(t0) },
                        rs: a.rs as usize / 2,
                        ts: 1,
                        wide: false,
                    }
                } else {
                    let per = if wide { 2 * kp * MR } else { kp * MR };
                    Panel {
                        at: ap[(q - packed / MR) * per..].as_ptr(),
                        rs: 1,
                        ts: MR,
                        wide,
                    }
                }
            };
            // (The f32 steps are exact only on `plain` operands.)
            let mode = match mode {
                Mode::Fma if !(a_plain && b_plain) => Mode::Twin,
                m => m,
            };
            let load = accumulate || t0 > 0;
            // Panel `p`'s rows of these pairs.
            let bpanel = |p: usize| &bp[tb * NR * panels + p * kpb * NR + (t0 - tb) * NR..];
            let full_p = p0.max(p1.min(cols / NR));
            #[cfg(target_arch = "x86_64")]
            if mode == Mode::Dot {
                // The whole tiles two panels of `B` by two of `A` at a time, as the f32
                // 512-bit kernel goes.
                let mut p = p0;
                while p < full_p {
                    let np = if p + 1 < full_p { 2 } else { 1 };
                    // (`kp` is `kpb` here: the two panels' blocks lie `kp·NR` apart.)
                    let bpan = &bpanel(p)[..np * kp * NR];
                    let mut q = 0;
                    while q < full_q {
                        let nq = if q + 1 < full_q { 2 } else { 1 };
                        // (Two packed tiles lie `kp·MR` apart, two in place `MR` rows.)
                        let apan = apanel(q);
                        // SAFETY: the tiles are whole and in C; the CPU has AVX512-BF16
                        // (`Mode::Dot`).
                        unsafe {
                            let ct = c.add(q * MR * ldc + (p - p0) * NR);
                            let args = (kp, apan, bpan.as_ptr(), ct, ldc, load);
                            match (nq, np) {
                                (2, 2) => avx512bf16::micro::<2, 2>(args),
                                (2, _) => avx512bf16::micro::<2, 1>(args),
                                (_, 2) => avx512bf16::micro::<1, 2>(args),
                                _ => avx512bf16::micro::<1, 1>(args),
                            }
                        }
                        q += nq;
                    }
                    p += np;
                }
            }
            // The rest (all of it for the other modes): tile by tile.
            for p in p0..p1 {
                let bpan = &bpanel(p)[..kp * NR];
                let w = NR.min(cols - p * NR);
                let first = if mode == Mode::Dot && p < full_p {
                    full_q
                } else {
                    0
                };
                for q in first..tiles {
                    let apan = apanel(q);
                    let h = MR.min(rows - q * MR);
                    // SAFETY: the tile's `h × w` corner is in C.
                    unsafe {
                        let ct = c.add(q * MR * ldc + (p - p0) * NR);
                        tile(kp, apan, bpan, (ct, ldc), (h, w), load, mode)
                    };
                }
            }
        }
    });
}

/// The `h × w` corner at `ct` of a 6 × 16 tile `:=` (or, with `load`, `+=`) the packed pair
/// panels' product, by `mode`'s micro-kernel (an edge tile through a whole one in a
/// buffer; a tile the f32 steps cannot give exactly again by the twin), or by the twin.
///
/// # Safety
/// The corner is in C at row stride `ldc`; `mode` runs on this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kp: usize,
    a: Panel,
    b: &[u32],
    (ct, ldc): (*mut f32, usize),
    (h, w): (usize, usize),
    load: bool,
    mode: Mode,
) {
    #[cfg(target_arch = "x86_64")]
    if mode != Mode::Twin {
        let whole = h == MR && w == NR;
        let mut tmp = [0f32; MR * NR];
        let (at, ld) = if whole {
            (ct, ldc)
        } else {
            for i in 0..h {
                for j in 0..w {
                    if load {
                        // SAFETY: (i, j) is in the corner.
                        tmp[i * NR + j] = unsafe { *ct.add(i * ldc + j) };
                    }
                }
            }
            (tmp.as_mut_ptr(), NR)
        };
        // SAFETY: `at` holds a whole tile at stride `ld`; the CPU runs `mode`.
        let done = unsafe {
            match mode {
                Mode::Dot => {
                    avx512bf16::micro::<1, 1>((kp, a, b.as_ptr(), at, ld, load));
                    true
                }
                _ => {
                    assert!(a.wide, "the f32 steps read widened tiles");
                    avx2::micro((kp, a.at.cast(), b.as_ptr(), at, ld, load))
                }
            }
        };
        if done {
            if !whole {
                for i in 0..h {
                    for j in 0..w {
                        // SAFETY: as above.
                        unsafe { *ct.add(i * ldc + j) = tmp[i * NR + j] };
                    }
                }
            }
            return;
        }
        // (Not stored: `C` still holds what the twin starts from.)
    }
    for i in 0..h {
        for j in 0..w {
            // SAFETY: (i, j) is in the corner.
            let ci = unsafe { ct.add(i * ldc + j) };
            let mut s = if load { unsafe { *ci } } else { 0.0 };
            for t in 0..kp {
                // SAFETY: pair `t` of the tile's row `i` (`i < h ≤ MR`, `t < kp`).
                let x = unsafe { a.pair(i, t) };
                s = dot(s, x, b[t * NR + j]);
            }
            // SAFETY: as above.
            unsafe { *ci = s };
        }
    }
}

/// The micro-kernel on packed pair panels, for the tests: `c` (a whole 6 × 16 tile at row
/// stride `NR`) `:=` or `+=` the product of `kp` pairs, as `mode` computes it (`Mode::Fma`
/// where the pairs are `plain`, as `block` does).
#[cfg(test)]
pub(super) fn micro_tile(
    kp: usize,
    a: &[u32],
    b: &[u32],
    c: &mut [f32; MR * NR],
    load: bool,
    mode: Mode,
) {
    assert!(a.len() >= kp * MR && b.len() >= kp * NR && mode.runs());
    let mode = match mode {
        Mode::Fma if !(plain(&a[..kp * MR]) && plain(&b[..kp * NR])) => Mode::Twin,
        m => m,
    };
    // The f32 steps read the tile widened, as `block` packs it for them.
    let wide: Vec<u32> = a[..kp * MR]
        .chunks_exact(MR)
        .flat_map(|t| {
            let hi = t.iter().map(|&p| p & 0xffff_0000);
            hi.chain(t.iter().map(|&p| p << 16)).collect::<Vec<_>>()
        })
        .collect();
    let a = Panel {
        at: if mode == Mode::Fma {
            wide.as_ptr()
        } else {
            a.as_ptr()
        },
        rs: 1,
        ts: MR,
        wide: mode == Mode::Fma,
    };
    // SAFETY: `c` is a whole tile at stride NR; the CPU runs `mode` (asserted).
    unsafe { tile(kp, a, b, (c.as_mut_ptr(), NR), (MR, NR), load, mode) }
}

#[cfg(test)]
impl Mode {
    /// Whether this CPU runs the mode.
    pub(super) fn runs(self) -> bool {
        match self {
            Mode::Dot => has_dot(),
            Mode::Fma => super::Kernel::Avx2.simd(),
            Mode::Twin => true,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The steps of a 6 × 16 tile as f32 FMAs, each pair's high halves then its low ones:
    /// 12 accumulators, per pair two loads of `B`, its halves split by a mask and a shift,
    /// and per row and half one broadcast of `A` (widened when packed: `Panel::wide`), as
    /// the f32 kernel has it. Stores the tile and returns true unless an accumulator starts
    /// nonzero below 2⁻¹⁰² or ends a NaN, where the twin must compute it (`C` is then
    /// untouched).
    ///
    /// # Safety
    /// AVX2 and FMA are present; `a` holds `2·kp·MR` floats, `b` `kp·NR` pairs, `c` a whole
    /// tile at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro(
        (kp, a, b, c, ldc, load): (usize, *const f32, *const u32, *mut f32, usize, bool),
    ) -> bool {
        // SAFETY (whole body): within the ranges of the contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            if load {
                // Nonzero magnitudes below 2⁻¹⁰² (biased exponent 25), NaNs aside.
                let (least, abs) = (_mm256_set1_epi32(25 << 23), _mm256_set1_epi32(0x7fff_ffff));
                let mut small = _mm256_setzero_si256();
                for (r, row) in acc.iter_mut().enumerate() {
                    for (h, x) in row.iter_mut().enumerate() {
                        *x = _mm256_loadu_ps(c.add(r * ldc + 8 * h));
                        let m = _mm256_and_si256(_mm256_castps_si256(*x), abs);
                        let tiny = _mm256_andnot_si256(
                            _mm256_cmpeq_epi32(m, _mm256_setzero_si256()),
                            _mm256_cmpgt_epi32(least, m),
                        );
                        small = _mm256_or_si256(small, tiny);
                    }
                }
                if _mm256_testz_si256(small, small) == 0 {
                    return false;
                }
            }
            let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
            let (mut a, mut b) = (a, b);
            // `B`'s row as two vectors, loaded where they are used.
            let row = |b: *const u32| [0, 8].map(|o| _mm256_loadu_si256(b.add(o).cast()));
            for _ in 0..kp {
                let bh = row(b).map(|v| _mm256_castsi256_ps(_mm256_and_si256(v, high)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r));
                    row[0] = _mm256_fmadd_ps(x, bh[0], row[0]);
                    row[1] = _mm256_fmadd_ps(x, bh[1], row[1]);
                }
                // A compiler barrier that may write memory, so that the row is loaded
                // again rather than kept from the high halves (with them, 18 vector
                // registers live: a spill and a reload a step, 23 → 18 ms on a 1024³
                // product, Zen 3).
                std::arch::asm!("", options(nostack, preserves_flags));
                let bl = row(b).map(|v| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(MR + r));
                    row[0] = _mm256_fmadd_ps(x, bl[0], row[0]);
                    row[1] = _mm256_fmadd_ps(x, bl[1], row[1]);
                }
                a = a.add(2 * MR);
                b = b.add(NR);
            }
            let mut nan = _mm256_setzero_ps();
            for row in &acc {
                for &x in row {
                    nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                }
            }
            if _mm256_movemask_ps(nan) != 0 {
                return false;
            }
            for (r, row) in acc.iter().enumerate() {
                for (h, &x) in row.iter().enumerate() {
                    _mm256_storeu_ps(c.add(r * ldc + 8 * h), x);
                }
            }
            true
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::{Panel, MR, NR};
    use std::arch::x86_64::*;

    /// `QA` tiles of `A` (6 rows each, packed or in place: `Panel`) by `PB` packed pair
    /// panels of `B` (16 columns each, `kp·NR` apart), one accumulator a row and panel,
    /// each broadcast pair of `A` feeding `PB` `vdpbf16ps` (`A` its first operand, `B` its
    /// second: the order of the NaN it picks, `super::step`).
    ///
    /// # Safety
    /// AVX-512 F and BF16 are present; `a` and the tile after it (`QA` 2) hold `kp` pairs a
    /// row, `b` `PB·kp·NR`, `c` a whole `QA·6 × PB·16` tile at stride `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::needless_range_loop)] // rows and panels index the accumulators alike
    pub(super) unsafe fn micro<const QA: usize, const PB: usize>(
        (kp, a, b, c, ldc, load): (usize, Panel, *const u32, *mut f32, usize, bool),
    ) {
        // SAFETY (whole body): within the ranges of the contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; 2 * MR];
            if load {
                for r in 0..QA * MR {
                    for q in 0..PB {
                        acc[r][q] = _mm512_loadu_ps(c.add(r * ldc + q * NR));
                    }
                }
            }
            let bstride = kp * NR;
            // Each row's pairs, walked `ts` at a time.
            let mut rows = [a.at; 2 * MR];
            for qa in 0..QA {
                let at = if qa == 0 { a.at } else { a.next(kp) };
                for r in 0..MR {
                    rows[qa * MR + r] = at.wrapping_add(r * a.rs);
                }
            }
            let mut b = b;
            for t in 0..kp {
                let mut bv = [_mm512_setzero_si512(); 2];
                for (q, x) in bv.iter_mut().enumerate().take(PB) {
                    *x = _mm512_loadu_si512(b.add(q * bstride).cast());
                }
                for (i, row) in rows.iter().enumerate().take(QA * MR) {
                    let pair = row.add(t * a.ts).read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                    for q in 0..PB {
                        let y: __m512bh = std::mem::transmute(bv[q]);
                        acc[i][q] = _mm512_dpbf16_ps(acc[i][q], x, y);
                    }
                }
                b = b.add(NR);
            }
            for r in 0..QA * MR {
                for q in 0..PB {
                    _mm512_storeu_ps(c.add(r * ldc + q * NR), acc[r][q]);
                }
            }
        }
    }
}
