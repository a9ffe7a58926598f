//! f32 blocks to and from the half-width float dtypes (f16, bf16): widening a buffer's
//! halves into f32 lanes, narrowing f32 lanes into a buffer's halves, and rounding f32
//! lanes to a half dtype in place or from another block (the fused interpreter's casts and
//! its rounding after every op). Every function gives, element for element, the bits of
//! the `half` crate's one-value forms (`f16::from_f32`, `bf16::from_f32`, `to_f32`).
//!
//! f16 goes through the hardware's conversions, 16 lanes an instruction with AVX-512
//! (`vcvtps2ph`/`vcvtph2ps` on zmm) or 8 with F16C, round to nearest even — the very
//! instruction `half`'s one-value form uses where the CPU has F16C, so the bits agree by
//! construction (and the tests below check a million patterns); without F16C, `half`'s
//! slice conversions. bf16 is integer arithmetic on the bits (`bf16_bits`, `bf16_value`),
//! which the compiler vectorises in the widest tier. (AVX-512 BF16's `vcvtneps2bf16` is not used: it
//! flushes subnormal inputs to zero, which `bf16::from_f32` does not.)

use super::math::Tier;
use half::f16;
use tc_compiler::ir::DType;

/// f16 or bf16 values (`dtype`), as their bits, to f32, exactly.
pub fn widen_halves(dtype: DType, src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    if dtype == DType::BF16 {
        wide_loop(|| {
            for (d, &h) in dst.iter_mut().zip(src) {
                *d = bf16_value(h);
            }
        });
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match f16_path() {
        // SAFETY: the CPU has AVX-512 F (`f16_path`); the lengths are equal.
        F16Path::Avx512 => return unsafe { x86::widen_avx512(src, dst) },
        // SAFETY: the CPU has AVX and F16C (`f16_path`); the lengths are equal.
        F16Path::F16c => return unsafe { x86::widen_f16c(src, dst) },
        F16Path::Library => {}
    }
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    src.reinterpret_cast::<f16>().convert_to_f32_slice(dst);
}

/// f32 values rounded to f16 or bf16 (`dtype`), as their bits.
pub fn narrow_to_halves(dtype: DType, src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    if dtype == DType::BF16 {
        wide_loop(|| {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = bf16_bits(x);
            }
        });
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match f16_path() {
        // SAFETY: the CPU has AVX-512 F (`f16_path`); the lengths are equal.
        F16Path::Avx512 => return unsafe { x86::narrow_avx512(src, dst) },
        // SAFETY: the CPU has AVX and F16C (`f16_path`); the lengths are equal.
        F16Path::F16c => return unsafe { x86::narrow_f16c(src, dst) },
        F16Path::Library => {}
    }
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    dst.reinterpret_cast_mut::<f16>()
        .convert_from_f32_slice(src);
}

/// Rounds every value of `dst` to `dtype` in place (nothing for f32 and the integral
/// dtypes, which never travel rounded in f32 lanes).
pub fn round_block(dtype: DType, dst: &mut [f32]) {
    match dtype {
        DType::F16 => {
            #[cfg(target_arch = "x86_64")]
            match f16_path() {
                // SAFETY: the CPU has AVX-512 F (`f16_path`); one pointer, read then
                // written lane by lane.
                F16Path::Avx512 => {
                    let (p, n) = (dst.as_mut_ptr(), dst.len());
                    return unsafe { x86::round_avx512(p, p, n) };
                }
                // SAFETY: the CPU has AVX and F16C (`f16_path`); as above.
                F16Path::F16c => {
                    let (p, n) = (dst.as_mut_ptr(), dst.len());
                    return unsafe { x86::round_f16c(p, p, n) };
                }
                F16Path::Library => {}
            }
            for x in dst.iter_mut() {
                *x = f16::from_f32(*x).to_f32();
            }
        }
        DType::BF16 => wide_loop(|| {
            for x in dst.iter_mut() {
                *x = f32::from_bits(u32::from(bf16_bits(*x)) << 16);
            }
        }),
        DType::F32 | DType::I32 | DType::I64 | DType::Bool => {}
    }
}

/// `dst[i] = src[i]` rounded to `dtype`: a cast, in one pass over the block.
pub fn round_into(dtype: DType, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    match dtype {
        DType::F16 => {
            #[cfg(target_arch = "x86_64")]
            match f16_path() {
                // SAFETY: the CPU has AVX-512 F (`f16_path`); `src` and `dst` are distinct
                // slices of one length.
                F16Path::Avx512 => {
                    return unsafe { x86::round_avx512(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
                }
                // SAFETY: the CPU has AVX and F16C (`f16_path`); as above.
                F16Path::F16c => {
                    return unsafe { x86::round_f16c(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
                }
                F16Path::Library => {}
            }
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = f16::from_f32(x).to_f32();
            }
        }
        DType::BF16 => wide_loop(|| {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = f32::from_bits(u32::from(bf16_bits(x)) << 16);
            }
        }),
        DType::F32 | DType::I32 | DType::I64 | DType::Bool => dst.copy_from_slice(src),
    }
}

/// Whether every value of `from` is exactly a value of `to`, so that a cast between them
/// changes no bits: a float dtype to itself, f16 or bf16 to f32.
pub fn widens_exactly(from: DType, to: DType) -> bool {
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    float(from) && (from == to || to == DType::F32)
}

/// `bf16::from_f32(x).to_bits()` without branches (so that a loop of it vectorises): round
/// to nearest, ties to even; a NaN keeps its sign and top mantissa bits, made quiet.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let x = x.to_bits();
    let nan = x & 0x7fff_ffff > 0x7f80_0000;
    let up = (x & 0x8000 != 0) & (x & 0x1_7fff != 0);
    let rounded = (x >> 16) + u32::from(up);
    (if nan { (x >> 16) | 0x40 } else { rounded }) as u16
}

/// `bf16::from_bits(h).to_f32()` without branches: the bits shifted up, a signalling NaN
/// made quiet (as `half` does).
#[inline(always)]
fn bf16_value(h: u16) -> f32 {
    let x = u32::from(h) << 16;
    let quiet = if h & 0x7fff > 0x7f80 { 0x0040_0000 } else { 0 };
    f32::from_bits(x | quiet)
}

/// Runs `body` (a loop the compiler vectorises) compiled for the widest tier.
#[inline(always)]
fn wide_loop(body: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        unsafe fn wide(body: impl FnOnce()) {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow(body: impl FnOnce()) {
            body()
        }
        match Tier::best() {
            // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA (`Tier::best`).
            Tier::Avx512 => return unsafe { wide(body) },
            // SAFETY: the CPU has AVX2 and FMA (`Tier::best`).
            Tier::Avx2 => return unsafe { narrow(body) },
            Tier::Base => {}
        }
    }
    body()
}

/// How this CPU converts f16 blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F16Path {
    /// `half`'s slice conversions (no F16C).
    Library,
    /// F16C, 8 lanes an instruction.
    F16c,
    /// AVX-512 F, 16 lanes an instruction (the widest tier, `Tier::best`).
    Avx512,
}

fn f16_path() -> F16Path {
    static PATH: std::sync::OnceLock<F16Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if Tier::best() == Tier::Avx512 {
                return F16Path::Avx512;
            }
            if std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c") {
                return F16Path::F16c;
            }
        }
        F16Path::Library
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The hardware conversions, whole vectors then a tail one element at a time through
    //! `half` (the same instruction on one lane).

    use half::f16;
    use std::arch::x86_64::*;

    /// Round to nearest even (the rounding `half` asks for); AVX-512's form also
    /// suppresses exceptions, which changes no value.
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
    const NEAREST_512: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// # Safety
    /// AVX-512 F; `src.len() == dst.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen_avx512(src: &[u16], dst: &mut [f32]) {
        let whole = src.len() / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
        }
        for i in whole..src.len() {
            dst[i] = f16::from_bits(src[i]).to_f32();
        }
    }

    /// # Safety
    /// AVX and F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16c(src: &[u16], dst: &mut [f32]) {
        let whole = src.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 <= len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in whole..src.len() {
            dst[i] = f16::from_bits(src[i]).to_f32();
        }
    }

    /// # Safety
    /// AVX-512 F; `src.len() == dst.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn narrow_avx512(src: &[f32], dst: &mut [u16]) {
        let whole = src.len() / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm512_cvtps_ph::<NEAREST_512>(_mm512_loadu_ps(src.as_ptr().add(i)));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), h);
            }
        }
        for i in whole..src.len() {
            dst[i] = f16::from_f32(src[i]).to_bits();
        }
    }

    /// # Safety
    /// AVX and F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow_f16c(src: &[f32], dst: &mut [u16]) {
        let whole = src.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 <= len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(src.as_ptr().add(i)));
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
            }
        }
        for i in whole..src.len() {
            dst[i] = f16::from_f32(src[i]).to_bits();
        }
    }

    /// `dst[i] = f16(src[i])` widened back, for `i < n`; `src` may be `dst` (each lane is
    /// read before it is written).
    ///
    /// # Safety
    /// AVX-512 F; `n` f32 readable at `src` and writable at `dst`, the two the same
    /// pointer or not overlapping.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn round_avx512(src: *const f32, dst: *mut f32, n: usize) {
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= n` (the caller's bounds).
            unsafe {
                let h = _mm512_cvtps_ph::<NEAREST_512>(_mm512_loadu_ps(src.add(i)));
                _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(h));
            }
        }
        for i in whole..n {
            // SAFETY: `i < n` (the caller's bounds).
            unsafe { *dst.add(i) = f16::from_f32(*src.add(i)).to_f32() };
        }
    }

    /// `round_avx512` with F16C, 8 lanes at a time.
    ///
    /// # Safety
    /// AVX and F16C; as `round_avx512`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn round_f16c(src: *const f32, dst: *mut f32, n: usize) {
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 <= n` (the caller's bounds).
            unsafe {
                let h = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(src.add(i)));
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in whole..n {
            // SAFETY: `i < n` (the caller's bounds).
            unsafe { *dst.add(i) = f16::from_f32(*src.add(i)).to_f32() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Every 4099th f32 bit pattern (a million, both signs, subnormals, infinities, NaNs of
    /// many payloads), ties at every exponent, and the edges of each range.
    fn patterns() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .collect();
        for e in 0..255u32 {
            for low in [
                0x8000u32,
                0x1_8000,
                0x7fff,
                0x1000,
                0x1fff,
                0xffff,
                0x1000_0000,
            ] {
                xs.push(f32::from_bits(e << 23 | low));
                xs.push(f32::from_bits(1 << 31 | e << 23 | low));
            }
        }
        xs.extend([
            65504.0,
            65520.0,
            65519.99,
            6.1e-5,
            5.96e-8,
            2.9e-8,
            f32::MAX,
            -0.0,
        ]);
        xs
    }

    fn one_value(dtype: DType, x: f32) -> f32 {
        match dtype {
            DType::F16 => f16::from_f32(x).to_f32(),
            _ => bf16::from_f32(x).to_f32(),
        }
    }

    fn one_value_bits(dtype: DType, x: f32) -> u16 {
        match dtype {
            DType::F16 => f16::from_f32(x).to_bits(),
            _ => bf16::from_f32(x).to_bits(),
        }
    }

    /// `round_block`, `round_into` and `narrow_to_halves` give the `half` crate's
    /// one-value bits over `patterns`, in blocks of odd lengths (vector bodies and tails).
    #[test]
    fn rounding_and_narrowing_are_the_one_value_forms() {
        let xs = patterns();
        for dtype in [DType::F16, DType::BF16] {
            let mut rounded = xs.clone();
            let mut into = vec![0f32; xs.len()];
            let mut bits = vec![0u16; xs.len()];
            let mut at = 0;
            for len in [1021usize, 7, 16, 15, 33].iter().cycle() {
                let end = (at + len).min(xs.len());
                round_block(dtype, &mut rounded[at..end]);
                round_into(dtype, &xs[at..end], &mut into[at..end]);
                narrow_to_halves(dtype, &xs[at..end], &mut bits[at..end]);
                at = end;
                if at == xs.len() {
                    break;
                }
            }
            for (i, &x) in xs.iter().enumerate() {
                let want = one_value(dtype, x).to_bits();
                let ctx = || format!("{dtype} of {:#x}", x.to_bits());
                assert_eq!(rounded[i].to_bits(), want, "round_block {}", ctx());
                assert_eq!(into[i].to_bits(), want, "round_into {}", ctx());
                assert_eq!(bits[i], one_value_bits(dtype, x), "narrow {}", ctx());
            }
        }
        for &x in &xs {
            assert_eq!(
                bf16_bits(x),
                bf16::from_f32(x).to_bits(),
                "{:#x}",
                x.to_bits()
            );
        }
    }

    /// `widen_halves` is exact: every one of the 65536 bit patterns of each half dtype
    /// (NaN payloads included), in blocks of odd lengths.
    #[test]
    fn widening_is_the_one_value_forms_for_every_half() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for dtype in [DType::F16, DType::BF16] {
            let mut got = vec![0f32; all.len()];
            for (src, dst) in all.chunks(1021).zip(got.chunks_mut(1021)) {
                widen_halves(dtype, src, dst);
            }
            for (&h, &g) in all.iter().zip(&got) {
                let want = match dtype {
                    DType::F16 => f16::from_bits(h).to_f32(),
                    _ => bf16::from_bits(h).to_f32(),
                };
                assert_eq!(g.to_bits(), want.to_bits(), "{dtype} {h:#06x}");
            }
        }
    }

    /// The casts the fused interpreter skips change no value: every f16 and bf16 widened
    /// to f32 rounds back to itself, and a value rounded to a dtype stays put.
    #[test]
    fn exact_widening_changes_no_bits() {
        for from in [DType::F16, DType::BF16, DType::F32] {
            for to in [DType::F16, DType::BF16, DType::F32] {
                if !widens_exactly(from, to) {
                    continue;
                }
                for x in patterns() {
                    let v = one_value_or_f32(from, x);
                    let cast = one_value_or_f32(to, v);
                    assert!(
                        cast.to_bits() == v.to_bits(),
                        "{from} -> {to} of {:#x}",
                        v.to_bits()
                    );
                }
            }
        }
        assert!(!widens_exactly(DType::F32, DType::F16));
        assert!(!widens_exactly(DType::F16, DType::BF16));
        assert!(!widens_exactly(DType::BF16, DType::F16));
        assert!(!widens_exactly(DType::I32, DType::F32));
        assert!(!widens_exactly(DType::F32, DType::I64));
    }

    fn one_value_or_f32(dtype: DType, x: f32) -> f32 {
        match dtype {
            DType::F32 => x,
            d => one_value(d, x),
        }
    }
}
