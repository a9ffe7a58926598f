//! The small f32 products of attention's tiles on the CPU (`attention`): `C (+)= A · B` where
//! `A` is `rows × k` (row stride `lda`, read in place), `B` is packed in panels of `NR` = 16
//! columns (`k × 16` each, contiguous: `pack` order), and `C` has row stride `ldc`. A 512-bit
//! micro-kernel computes 12 rows × 32 columns (two panels) in 24 vector registers where the
//! CPU has AVX-512 (106–114 GFLOP/s a core on Zen 4), an AVX2+FMA one 6 rows × 16 columns in
//! twelve (89–102) where it has AVX2 (chosen at run time, `math::Tier`), a scalar loop
//! elsewhere; all give the same bits: every
//! element is `c = fma(a_t, b_t, c)` for `t = 0, 1, …, k - 1` in order, from 0 (or from `C`
//! when accumulating), then the optional `Scale`, so results depend on nothing but the
//! operands (not the threads, not the CPU).

use super::math::Tier;

/// Columns of a packed panel of `B`.
pub const NR: usize = 16;
/// Rows of `A` per micro-kernel call.
const MR: usize = 6;

/// An exact IEEE operation applied to each finished sum before it is stored (a prologue's
/// `score * c` or `score / c` folded into the product).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    None,
    Mul(f32),
    Div(f32),
}

impl Scale {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Scale::None => x,
            Scale::Mul(c) => x * c,
            Scale::Div(c) => x / c,
        }
    }
}

/// One product `C[i][NR·p + j] = Σ_t A[i·lda + t] · B[p][t][j]` (or `+=` when
/// `accumulate`), then `scale`d, for `i < rows`, every panel `p < panels`, `j < NR`.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub rows: usize,
    pub k: usize,
    /// `rows` rows of `k` elements at stride `lda`.
    pub a: *const f32,
    pub lda: usize,
    /// `panels` panels of `k × NR` elements, contiguous.
    pub b: *const f32,
    pub panels: usize,
    /// `rows` rows of `panels · NR` elements at stride `ldc`.
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
    pub scale: Scale,
}

/// Computes `p` with the widest micro-kernel the CPU runs (`Tier::best`).
///
/// # Safety
/// `p.a`, `p.b` and `p.c` cover the elements `Product` says; `c`'s are distinct from
/// `a`'s and `b`'s.
pub unsafe fn product(p: Product) {
    // SAFETY: forwarded.
    unsafe { product_in(Tier::best(), p) }
}

/// `product` built for `tier` (or the hardware's widest, when that is narrower): every
/// tier gives the same bits.
///
/// # Safety
/// As `product`.
pub unsafe fn product_in(tier: Tier, p: Product) {
    #[cfg(target_arch = "x86_64")]
    match tier.min(Tier::hardware()) {
        Tier::Avx512 => {
            // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA; the rest is forwarded.
            unsafe { avx512::product(p) };
            return;
        }
        Tier::Avx2 => {
            // SAFETY: the CPU has AVX2 and FMA; the rest is forwarded.
            unsafe { avx2::product(p) };
            return;
        }
        Tier::Base => {}
    }
    let Product {
        rows,
        k,
        a,
        lda,
        b,
        panels,
        c,
        ldc,
        accumulate,
        scale,
    } = p;
    for p in 0..panels {
        // SAFETY: forwarded (panel `p` and its columns of `C` are inside the ranges).
        let (bp, cp) = unsafe { (b.add(p * k * NR), c.add(p * NR)) };
        for i in 0..rows {
            for j in 0..NR {
                // SAFETY: as above.
                unsafe {
                    let ci = cp.add(i * ldc + j);
                    let mut s = if accumulate { *ci } else { 0.0 };
                    for t in 0..k {
                        s = (*a.add(i * lda + t)).mul_add(*bp.add(t * NR + j), s);
                    }
                    *ci = scale.apply(s);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Product, Scale, MR, NR};
    use std::arch::x86_64::*;

    /// `super::product` with the micro-kernel: for each panel of `B` (4 KiB at `k = 64`, kept
    /// in L1), the rows of `A` six at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product(p: Product) {
        let Product {
            rows,
            k,
            a,
            lda,
            b,
            panels,
            c,
            ldc,
            accumulate,
            scale,
        } = p;
        for p in 0..panels {
            // SAFETY: inside the caller's ranges.
            let (bp, cp) = unsafe { (b.add(p * k * NR), c.add(p * NR)) };
            let mut i = 0;
            while i < rows {
                // Six rows at a time; the last 7 to 11 as two tiles of about half each
                // (4 + 4 rather than 6 + 2: a tile of 2 rows runs at a third of the rate).
                let left = rows - i;
                let n = if left > MR && left < 2 * MR {
                    left.div_ceil(2)
                } else {
                    left.min(MR)
                };
                // SAFETY: rows i .. i + n of A and C are inside the caller's ranges.
                let (ai, ci) = unsafe { (a.add(i * lda), cp.add(i * ldc)) };
                // SAFETY: as above; AVX2 and FMA are present (this function's contract).
                unsafe {
                    match n {
                        6 => tile::<6>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                        5 => tile::<5>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                        4 => tile::<4>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                        3 => tile::<3>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                        2 => tile::<2>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                        _ => tile::<1>(k, ai, lda, bp, ci, ldc, accumulate, scale),
                    }
                }
                i += n;
            }
        }
    }

    /// `R` rows × 16 columns: two vectors a row, one broadcast of `A` per row and step.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        scale: Scale,
    ) {
        // SAFETY (whole body): every pointer stays inside the ranges of `product`'s contract.
        unsafe {
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            if accumulate {
                for r in 0..R {
                    lo[r] = _mm256_loadu_ps(c.add(r * ldc));
                    hi[r] = _mm256_loadu_ps(c.add(r * ldc + 8));
                }
            }
            for t in 0..k {
                let b0 = _mm256_loadu_ps(b.add(t * NR));
                let b1 = _mm256_loadu_ps(b.add(t * NR + 8));
                for r in 0..R {
                    let x = _mm256_broadcast_ss(&*a.add(r * lda + t));
                    lo[r] = _mm256_fmadd_ps(x, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(x, b1, hi[r]);
                }
            }
            match scale {
                Scale::None => {}
                Scale::Mul(s) => {
                    let s = _mm256_set1_ps(s);
                    for r in 0..R {
                        lo[r] = _mm256_mul_ps(lo[r], s);
                        hi[r] = _mm256_mul_ps(hi[r], s);
                    }
                }
                Scale::Div(s) => {
                    let s = _mm256_set1_ps(s);
                    for r in 0..R {
                        lo[r] = _mm256_div_ps(lo[r], s);
                        hi[r] = _mm256_div_ps(hi[r], s);
                    }
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(c.add(r * ldc), lo[r]);
                _mm256_storeu_ps(c.add(r * ldc + 8), hi[r]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Product, Scale, NR};
    use std::arch::x86_64::*;

    /// Rows of `A` per micro-kernel call: two panels of `B` (32 columns) by twelve rows are 24
    /// of the 32 vector registers, each broadcast of `A` feeding two multiply-adds.
    const MR: usize = 12;

    /// `super::product` with 512-bit micro-kernels: the panels of `B` two at a time (a last
    /// odd one alone), the rows of `A` twelve at a time.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    pub(super) unsafe fn product(p: Product) {
        let Product {
            rows,
            k,
            a,
            lda,
            b,
            panels,
            c,
            ldc,
            accumulate,
            scale,
        } = p;
        let mut p = 0;
        while p < panels {
            let two = p + 1 < panels;
            // SAFETY: inside the caller's ranges.
            let (bp, cp) = unsafe { (b.add(p * k * NR), c.add(p * NR)) };
            let mut i = 0;
            while i < rows {
                let n = MR.min(rows - i);
                // SAFETY: rows i .. i + n of A and C, panels p (and p + 1) are inside the
                // caller's ranges; AVX-512 is present (this function's contract).
                unsafe {
                    let (ai, ci) = (a.add(i * lda), cp.add(i * ldc));
                    macro_rules! rows {
                        ($($r:literal)*) => {
                            match n {
                                $($r => if two {
                                    tile::<$r, 2>(k, ai, lda, bp, ci, ldc, accumulate, scale)
                                } else {
                                    tile::<$r, 1>(k, ai, lda, bp, ci, ldc, accumulate, scale)
                                },)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    rows!(1 2 3 4 5 6 7 8 9 10 11 12);
                }
                i += n;
            }
            p += if two { 2 } else { 1 };
        }
    }

    /// `R` rows × `P` panels of 16 columns: one vector a row and panel, one broadcast of `A`
    /// per row and step (folded into the multiply-add).
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const P: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        scale: Scale,
    ) {
        // SAFETY (whole body): every pointer stays inside the ranges of `product`'s contract
        // (panel `q` of `B` at `b + q·k·NR`, its columns of `C` at `c + q·NR`).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (q, x) in row.iter_mut().enumerate() {
                        *x = _mm512_loadu_ps(c.add(r * ldc + q * NR));
                    }
                }
            }
            for t in 0..k {
                let mut bv = [_mm512_setzero_ps(); P];
                for (q, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(b.add(q * k * NR + t * NR));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + t));
                    for q in 0..P {
                        row[q] = _mm512_fmadd_ps(x, bv[q], row[q]);
                    }
                }
            }
            let s = match scale {
                Scale::None => None,
                Scale::Mul(s) | Scale::Div(s) => Some(_mm512_set1_ps(s)),
            };
            for (r, row) in acc.iter_mut().enumerate() {
                for (q, x) in row.iter_mut().enumerate() {
                    match (scale, s) {
                        (Scale::Mul(_), Some(s)) => *x = _mm512_mul_ps(*x, s),
                        (Scale::Div(_), Some(s)) => *x = _mm512_div_ps(*x, s),
                        _ => {}
                    }
                    _mm512_storeu_ps(c.add(r * ldc + q * NR), *x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel against the plain fused-multiply-add loop, bit for bit: every row count
    /// (the micro-kernel's remainders), several panels, both modes and scales.
    #[test]
    fn product_is_the_ordered_fma_sum() {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (rows, k, panels) in [
            (1, 1, 1),
            (5, 7, 2),
            (6, 64, 3),
            (13, 33, 2),
            (128, 64, 1),
            (12, 64, 4),
            (25, 17, 5),
            (11, 512, 4),
        ] {
            let lda = k + 3;
            let ldc = panels * NR + 5;
            let a: Vec<f32> = (0..rows * lda).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..panels * k * NR).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..rows * ldc).map(|_| rnd()).collect();
            for (accumulate, scale) in [
                (false, Scale::None),
                (true, Scale::None),
                (false, Scale::Div(3.0)),
                (false, Scale::Mul(0.125)),
            ] {
                for tier in Tier::available() {
                    let mut c = c0.clone();
                    // SAFETY: the sizes above cover the contract.
                    unsafe {
                        product_in(
                            tier,
                            Product {
                                rows,
                                k,
                                a: a.as_ptr(),
                                lda,
                                b: b.as_ptr(),
                                panels,
                                c: c.as_mut_ptr(),
                                ldc,
                                accumulate,
                                scale,
                            },
                        )
                    };
                    for i in 0..rows {
                        for col in 0..panels * NR {
                            let (p, j) = (col / NR, col % NR);
                            let mut s = if accumulate { c0[i * ldc + col] } else { 0.0 };
                            for t in 0..k {
                                s = a[i * lda + t].mul_add(b[(p * k + t) * NR + j], s);
                            }
                            let want = scale.apply(s);
                            assert_eq!(
                                c[i * ldc + col].to_bits(),
                                want.to_bits(),
                                "{tier:?} rows {rows} k {k} ({i}, {col}) {accumulate} {scale:?}"
                            );
                        }
                        // Columns past the panels are untouched.
                        for col in panels * NR..ldc {
                            assert_eq!(c[i * ldc + col].to_bits(), c0[i * ldc + col].to_bits());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    fn cpu_now() -> f64 {
        crate::cpu::cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
    }

    /// Attention's two tile products at BQ = 128, BK = 512, d = dv = 64: GFLOP/s on this
    /// thread (`cargo test --release -p tc-runtime --lib tile_products -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore]
    fn tile_products() {
        let (rows, k, cols, dv) = (128, 64, 512, 64);
        let a = vec![0.5f32; rows * k];
        let kp = vec![0.25f32; k * cols];
        let mut s = vec![0f32; rows * 512];
        let vp = vec![0.125f32; cols * dv];
        let mut acc = vec![0f32; rows * dv];
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..200 {
                let t = cpu_now();
                f();
                best = best.min(cpu_now() - t);
            }
            best
        };
        // SAFETY (both): the buffers above cover the products' ranges.
        let qk = time(&mut || unsafe {
            product(Product {
                rows,
                k,
                a: a.as_ptr(),
                lda: k,
                b: kp.as_ptr(),
                panels: cols / NR,
                c: s.as_mut_ptr(),
                ldc: 512,
                accumulate: false,
                scale: Scale::None,
            })
        });
        let pv = time(&mut || unsafe {
            product(Product {
                rows,
                k: cols,
                a: s.as_ptr(),
                lda: 512,
                b: vp.as_ptr(),
                panels: dv / NR,
                c: acc.as_mut_ptr(),
                ldc: dv,
                accumulate: true,
                scale: Scale::None,
            })
        });
        let flops = 2.0 * (rows * k * cols) as f64;
        for (what, t) in [("q k", qk), ("p v", pv)] {
            println!("{what}: {:.1} us, {:.1} GFLOP/s", t * 1e6, flops / t * 1e-9);
        }
    }
}
