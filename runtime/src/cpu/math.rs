//! The numerics of every elementwise op and reduction on the CPU, in f32, defined as PyTorch
//! defines them (exact-erf `gelu`, NaN-propagating `maximum`/`minimum`/`max`/`min`).
//! One scalar function per op, plus block loops the fused interpreter calls.

use half::{bf16, f16};
use tc_compiler::ir::{BinaryOp, DType, UnaryOp};

/// `op(x)` in f32. `exp`, `tanh`, `erf` and the functions built on them use the
/// branch-free polynomial kernels below (the same in scalar and block form, so a value
/// computed per row equals the same value computed per element).
#[inline]
pub fn unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => exp(x),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => tanh(x),
        UnaryOp::Sigmoid => 1.0 / (1.0 + exp(-x)),
        // torch.relu propagates NaN.
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::Silu => x / (1.0 + exp(-x)),
        UnaryOp::Erf => erf(x),
        UnaryOp::Square => x * x,
    }
}

/// `e^x` in f32, within 2 ulp: Cody–Waite reduction `x = n·ln2 + r`, a degree-6
/// polynomial for `e^r` (Cephes `expf`), and `2^n` built in the exponent bits. Branch-free,
/// so loops over it vectorise. Overflow gives +inf, underflow 0, NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes coefficients, as published
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.clamp(-103.972_08, 88.72283);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of t.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // Split 2^n in two factors so n = 128 (x near the top of the range) stays finite.
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) << 23) as u32);
    let s2 = f32::from_bits(((ni - half + 127) << 23) as u32);
    let y = er * s1 * s2;
    let y = if x > 88.72283 { f32::INFINITY } else { y };
    let y = if x < -103.972_08 { 0.0 } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh x` in f32: an odd polynomial near 0 (Cephes `tanhf`), else `1 - 2/(e^{2|x|} + 1)`.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes coefficients, as published
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328_2e-1)
            * z
            * x
            + x;
    let e = exp(2.0 * a.min(10.0));
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    if a < 0.625 || x.is_nan() {
        small
    } else {
        large
    }
}

/// `erf x` in f32: below 1 an odd polynomial (Cephes `erff`), above it Abramowitz–Stegun
/// 7.1.26 as PyTorch's vectorised CPU kernel computes it (absolute error near 1.5e-7).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes and A&S coefficients, as published
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    let y = y.copysign(x);
    // Below 1 a Taylor-like polynomial (Cephes `erff`) is more accurate in f32.
    let z = x * x;
    let near = ((((((7.853_861_4e-5 * z - 8.010_193_6e-4) * z + 5.188_327_7e-3) * z
        - 2.685_381_2e-2)
        * z
        + 1.128_358_5e-1)
        * z
        - 3.761_262_6e-1)
        * z
        + std::f32::consts::FRAC_2_SQRT_PI)
        * x;
    let y = if a < 1.0 { near } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `a op b` in f32.
#[inline]
pub fn binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => pow(a, b),
        BinaryOp::Maximum => maximum(a, b),
        BinaryOp::Minimum => minimum(a, b),
    }
}

/// `torch.pow`: C `powf` (a negative base with an integral exponent is fine, with a
/// fractional one NaN); `x ** 2` is exactly `x * x`.
#[inline]
pub fn pow(a: f32, b: f32) -> f32 {
    if b == 2.0 {
        a * a
    } else {
        a.powf(b)
    }
}

/// `torch.maximum`: NaN if either operand is NaN.
#[inline]
pub fn maximum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

/// `torch.minimum`: NaN if either operand is NaN.
#[inline]
pub fn minimum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

/// Rounds `x` to `dtype` (nearest, ties to even) and widens it back to f32.
#[inline]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
    }
}

/// `dst[i] = op(src[i])`, the match hoisted out of the loop so each arm vectorises.
#[inline(always)]
fn unary_block_impl(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    macro_rules! each {
        (|$x:ident| $e:expr) => {
            for (d, &$x) in dst.iter_mut().zip(src) {
                *d = $e;
            }
        };
    }
    match op {
        UnaryOp::Neg => each!(|x| -x),
        UnaryOp::Abs => each!(|x| x.abs()),
        UnaryOp::Square => each!(|x| x * x),
        UnaryOp::Sqrt => each!(|x| x.sqrt()),
        UnaryOp::Rsqrt => each!(|x| 1.0 / x.sqrt()),
        UnaryOp::Exp => each!(|x| exp(x)),
        UnaryOp::Tanh => each!(|x| tanh(x)),
        UnaryOp::Erf => each!(|x| erf(x)),
        UnaryOp::Sigmoid => each!(|x| 1.0 / (1.0 + exp(-x))),
        UnaryOp::Silu => each!(|x| x / (1.0 + exp(-x))),
        UnaryOp::Gelu => each!(|x| 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))),
        UnaryOp::Relu => each!(|x| if x > 0.0 || x.is_nan() { x } else { 0.0 }),
        UnaryOp::Log => each!(|x| x.ln()),
        UnaryOp::Sin => each!(|x| x.sin()),
        UnaryOp::Cos => each!(|x| x.cos()),
    }
}

/// The largest (`max: true`) or smallest value of a block over eight lanes; NaN if any is.
#[inline(always)]
fn block_extremum_impl(xs: &[f32], max: bool) -> f32 {
    let mut lanes = [if max {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    }; 8];
    let mut nan = false;
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            nan |= x.is_nan();
            *l = if (x > *l) == max && x != *l { x } else { *l };
        }
    }
    let mut m = if max {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    };
    for &x in lanes.iter().chain(rest) {
        nan |= x.is_nan();
        m = if max { maximum(m, x) } else { minimum(m, x) };
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// One operand of a block operation: a value per element, or one value for the block.
#[derive(Clone, Copy)]
pub enum Operand<'a> {
    Block(&'a [f32]),
    Scalar(f32),
}

/// `dst[i] = a[i] op b[i]` with either side possibly a scalar.
#[inline(always)]
fn binary_block_impl(op: BinaryOp, a: Operand<'_>, b: Operand<'_>, dst: &mut [f32]) {
    #[inline(always)]
    fn apply(a: Operand<'_>, b: Operand<'_>, dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        match (a, b) {
            (Operand::Block(a), Operand::Block(b)) => {
                for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                    *d = f(x, y);
                }
            }
            (Operand::Block(a), Operand::Scalar(y)) => {
                for (d, &x) in dst.iter_mut().zip(a) {
                    *d = f(x, y);
                }
            }
            (Operand::Scalar(x), Operand::Block(b)) => {
                for (d, &y) in dst.iter_mut().zip(b) {
                    *d = f(x, y);
                }
            }
            (Operand::Scalar(x), Operand::Scalar(y)) => dst.fill(f(x, y)),
        }
    }
    match op {
        BinaryOp::Add => apply(a, b, dst, |x, y| x + y),
        BinaryOp::Sub => apply(a, b, dst, |x, y| x - y),
        BinaryOp::Mul => apply(a, b, dst, |x, y| x * y),
        BinaryOp::Div => apply(a, b, dst, |x, y| x / y),
        BinaryOp::Pow => match b {
            Operand::Scalar(2.0) => apply(a, b, dst, |x, _| x * x),
            _ => apply(a, b, dst, pow),
        },
        BinaryOp::Maximum => apply(a, b, dst, maximum),
        BinaryOp::Minimum => apply(a, b, dst, minimum),
    }
}

/// Rounds every value of `dst` to `dtype` in place.
pub fn round_block(dtype: DType, dst: &mut [f32]) {
    match dtype {
        DType::F32 => {}
        DType::F16 => dst.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
        DType::BF16 => dst
            .iter_mut()
            .for_each(|x| *x = bf16::from_f32(*x).to_f32()),
    }
}

/// The sum of a block in f32, pairwise: halves down to 64-element leaves summed over eight
/// interleaved lanes (error grows with log n, and the leaves vectorise).
#[inline(always)]
fn block_sum_impl(xs: &[f32]) -> f32 {
    if xs.len() > 64 {
        let (a, b) = xs.split_at(xs.len() / 2);
        return block_sum_impl(a) + block_sum_impl(b);
    }
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let mut tail = 0f32;
    for &x in rest {
        tail += x;
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
}

/// A running f32 sum with Kahan compensation, fed block sums.
#[derive(Clone, Copy, Debug, Default)]
pub struct KahanSum {
    sum: f32,
    carry: f32,
}

impl KahanSum {
    #[inline]
    pub fn add(&mut self, x: f32) {
        let y = x - self.carry;
        let t = self.sum + y;
        // Once the sum is infinite or NaN, compensation would only turn it into NaN.
        self.carry = if t.is_finite() {
            (t - self.sum) - y
        } else {
            0.0
        };
        self.sum = t;
    }

    pub fn value(self) -> f32 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values across the interesting range, including exact powers and tiny and huge ones.
    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (-20000..=20000).map(|i| i as f32 / 200.0).collect();
        v.extend([
            1e-30, -1e-30, 1e-8, -1e-8, 0.0, -0.0, 88.0, 88.7, -87.0, -87.3, -100.0, 100.0, 1e30,
            -1e30,
        ]);
        v
    }

    fn check(name: &str, f: impl Fn(f32) -> f32, g: impl Fn(f64) -> f64, rel: f64, abs: f64) {
        for x in samples() {
            let (got, want) = (f(x) as f64, g(x as f64));
            if want.abs() > f32::MAX as f64 {
                assert!(
                    got.is_infinite() && got.signum() == want.signum(),
                    "{name}({x}) = {got}, want {want}"
                );
                continue;
            }
            assert!(
                (got - want).abs() <= rel * want.abs() + abs,
                "{name}({x}) = {got}, want {want}"
            );
        }
        assert!(f(f32::NAN).is_nan(), "{name}(NaN)");
    }

    #[test]
    fn exp_tanh_erf_are_accurate_across_the_range() {
        check("exp", exp, f64::exp, 3e-7, 1e-38);
        check("tanh", tanh, f64::tanh, 4e-7, 1e-38);
        check("erf", erf, libm::erf, 0.0, 3e-7);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(-104.0), 0.0);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn block_extremum_matches_a_fold_and_propagates_nan() {
        let xs: Vec<f32> = (0..77).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        assert_eq!(block_extremum(&xs, true), 50.0);
        assert_eq!(block_extremum(&xs, false), -50.0);
        let mut ys = xs.clone();
        ys[70] = f32::NAN;
        assert!(block_extremum(&ys, true).is_nan() && block_extremum(&ys, false).is_nan());
        assert_eq!(block_extremum(&[-0.5], true), -0.5);
    }
}

/// Declares `pub fn $name` that runs `$imp` compiled for AVX2 when the CPU has it (8 lanes
/// instead of SSE2's 4), else the baseline build. Both compute bit-identical results: the
/// same IEEE operations in the same order (Rust never fuses a multiply-add by itself).
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident / $avx:ident ($($arg:ident : $ty:ty),*) -> $ret:ty = $imp:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { $avx($($arg),*) };
            }
            $imp($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $imp($($arg),*)
        }
    };
}

dispatch! {
    /// `dst[i] = op(src[i])`.
    fn unary_block / unary_block_avx2 (op: UnaryOp, src: &[f32], dst: &mut [f32]) -> () = unary_block_impl
}
dispatch! {
    /// `dst[i] = a[i] op b[i]`, either side possibly a scalar.
    fn binary_block / binary_block_avx2 (op: BinaryOp, a: Operand<'_>, b: Operand<'_>, dst: &mut [f32]) -> () = binary_block_impl
}
dispatch! {
    /// The pairwise f32 sum of a block.
    fn block_sum / block_sum_avx2 (xs: &[f32]) -> f32 = block_sum_impl
}
dispatch! {
    /// The largest (`max: true`) or smallest value of a block; NaN if any is.
    fn block_extremum / block_extremum_avx2 (xs: &[f32], max: bool) -> f32 = block_extremum_impl
}
