//! The numerics of every elementwise op and reduction on the CPU, in f32: fast forms of
//! the meaning `ir::eval` defines (exact-erf `gelu`, NaN-propagating `maximum`/`minimum`/
//! `max`/`min`), each within the accuracy `ir::eval` documents for it (the tests below hold
//! them to it). One scalar function per op, plus block loops the fused interpreter calls
//! (two of them run a folded pair of ops in one loop: `unary_pre_block`, `binary2_block`).

use half::{bf16, f16};
use tc_compiler::ir::{BinaryOp, DType, UnaryOp};

pub use super::halves::{narrow_to_halves, round_block, round_into, widen_halves};

mod in_f64;
pub use in_f64::{cos, expm1, log, log1p, sin, tan};

/// `op(x)` in f32. `exp`, `tanh`, `erf` and the functions built on them use the
/// branch-free polynomial kernels below (the same in scalar and block form, so a value
/// computed per row equals the same value computed per element).
#[inline]
pub fn unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => exp(x),
        // Computed in f64 and rounded once, built for the widest tier (`in_f64_unary`).
        UnaryOp::Log
        | UnaryOp::Log1p
        | UnaryOp::Expm1
        | UnaryOp::Sin
        | UnaryOp::Cos
        | UnaryOp::Tan
        | UnaryOp::Softplus => in_f64_unary(op, x),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => tanh(x),
        UnaryOp::Sigmoid => sigmoid(x),
        // torch.relu propagates NaN.
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => gelu(x),
        UnaryOp::Silu => silu(x),
        UnaryOp::Erf => erf(x),
        UnaryOp::Square => x * x,
        UnaryOp::Not => flag(x == 0.0),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => sign(x),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::GeluTanh => gelu_tanh(x),
    }
}

/// `a·b + c` rounded once (IEEE fused multiply-add): one instruction in the AVX2+FMA
/// build of the block loops, a correctly rounded library call elsewhere, so every build
/// gives the same bits.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `exp`'s constants, shared with the hand-vectorised forms that must give its very bits
/// (`attention::exp_sum_avx2`/`_avx512`).
#[allow(clippy::excessive_precision)] // Cephes coefficients, as published
pub mod exp_parts {
    /// 1.5 · 2^23: adding it rounds to an integer.
    pub const MAGIC: f32 = 12_582_912.0;
    /// The clamp: past both ends of the finite, non-zero results.
    pub const LO: f32 = -104.5;
    pub const HI: f32 = 89.0;
    /// `-ln 2` in two parts (Cody–Waite).
    pub const LN2_HI: f32 = -0.693_359_4;
    pub const LN2_LO: f32 = 2.121_944_4e-4;
    /// The polynomial's coefficients, highest degree first (Horner).
    pub const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// `e^x` in f32, within 1 ulp: Cody–Waite reduction `x = n·ln2 + r` (fused multiply-adds),
/// a degree-6 polynomial for `e^r` (Cephes `expf`), and `2^n` built in the exponent bits as
/// two factors. Branch-free and select-free, so loops over it vectorise tightly: the clamp
/// keeps `n` in [-151, 128], where the two factors are normal and their product with
/// `e^r` rounds once, to +inf above ln(f32::MAX) and to 0 below ln(2^-150), as the exact
/// value would; NaN passes through the arithmetic as NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_parts::*;
    let xc = x.clamp(LO, HI);
    let t = fma(xc, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = fma(n, LN2_HI, xc);
    let r = fma(n, LN2_LO, r);
    let mut p = fma(POLY[0], r, POLY[1]);
    for &c in &POLY[2..] {
        p = fma(p, r, c);
    }
    let er = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of t.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // 2^n as two normal factors (n = 128 overflows only in the last product, n = -151
    // underflows only there), so the result is rounded once.
    let half = ni >> 1;
    let s1 = f32::from_bits((half.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) << 23) as u32);
    er * s1 * s2
}

/// `tanh x` in f32, within 3 ulp (2.31 over every f32 of [1/16, 10) and every third below;
/// `tests::transcendentals_dense_sweep`): `tanh |x| = m / (m + 2)` with `m = e^{±2|x|} - 1`
/// (`expm1_parts`; `m / (m + 2)` is the same value for either sign of the exponent), one
/// exponential and one divide over the whole range. The exponent is negative below
/// ln2/4, where `e^{-2|x|} - 1` needs no reduction (no cancellation, and `m + 2` lies just
/// below 2, where its rounding costs least) and positive above (no `1 - e^{-2|x|}`
/// cancellation near saturation). `|x|` is clamped at 10 (past 9.01 the result rounds to
/// 1) by a compare, so NaN passes; the sign is copied from `x`.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const SWITCH: f32 = 0.1733; // ln2/4 rounded down: 2|x| below it has n = 0
    let a = x.abs();
    let y = 2.0 * if 10.0 < a { 10.0 } else { a };
    let m = expm1_parts(if a < SWITCH { -y } else { y });
    (m / (m + 2.0)).copysign(x)
}

/// `e^y - 1` for `y` in [-20, 20] (or NaN): `exp`'s reduction `y = n·ln2 + r` and polynomial,
/// with `e^r - 1 = r + r²·p(r)` kept apart from the 1, then `2^n·(e^r - 1) + (2^n - 1)` in
/// one fused multiply-add: relatively accurate down to subnormal `y` (where it is `y`).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes coefficients, as published
fn expm1_parts(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let t = fma(y, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = fma(n, -0.693_359_4, y);
    let r = fma(n, 2.121_944_4e-4, r);
    let p = fma(
        fma(
            fma(
                fma(fma(1.987_569_1e-4, r, 1.398_199_9e-3), r, 8.333_452e-3),
                r,
                4.166_579_6e-2,
            ),
            r,
            1.666_666_5e-1,
        ),
        r,
        0.5,
    );
    let q = fma(p * r, r, r);
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let s = f32::from_bits((ni.wrapping_add(127) << 23) as u32);
    fma(s, q, s - 1.0)
}

/// The two parts of `erf` at `a = |x|` (not NaN-checked: NaN in gives NaN in both): below
/// 1 the odd polynomial of Cephes `erff`, relatively accurate near 0; from 1 on a degree-12
/// polynomial in `a - 2.5` fitted to `erf` over [1, 4] (weighted least squares to near
/// minimax, coefficients rounded to f32; 4.4e-8 from `erf` exactly, within 1e-7 evaluated
/// in f32), at `min(a, 4)`, and exactly 1 from 3.92 on (where `erf` rounds to 1). No
/// divide and no `e^{-a²}`: a third of the vector operations of `erfc = poly(t)·e^{-a²}`.
#[inline(always)]
#[allow(clippy::excessive_precision)] // fitted and Cephes coefficients, as f32 prints them
fn erf_parts(a: f32) -> (f32, f32) {
    // `min` written as a compare, so NaN passes through (one `vminps`).
    let c = if 4.0 < a { 4.0 } else { a } - 2.5;
    let mut p = -8.595_768e-6;
    for k in [
        2.129_921_8e-5,
        5.871_366_7e-5,
        -2.802_539_4e-4,
        2.935_914e-4,
        5.729_148e-4,
        -2.825_388_7e-3,
        6.101_186e-3,
        -8.612_042e-3,
        8.353_905e-3,
        -5.447_187e-3,
        2.178_021e-3,
        0.999_593_1,
    ] {
        p = fma(p, c, k);
    }
    let far = if a >= 3.92 { 1.0 } else { p };
    let z = a * a;
    let near = fma(
        fma(
            fma(
                fma(
                    fma(fma(7.853_861_4e-5, z, -8.010_193_6e-4), z, 5.188_327_7e-3),
                    z,
                    -2.685_381_2e-2,
                ),
                z,
                1.128_358_5e-1,
            ),
            z,
            -3.761_262_6e-1,
        ),
        z,
        std::f32::consts::FRAC_2_SQRT_PI,
    ) * a;
    (near, far)
}

/// `erf x` in f32, within 2 ulp (`tests::transcendentals_dense_sweep`): see `erf_parts`;
/// branch-free (both parts computed, one selected), NaN in, NaN out.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let (near, far) = erf_parts(a);
    let y = if a < 1.0 { near } else { far };
    y.copysign(x)
}

/// `gelu x = x/2 · (1 + erf(x/√2))` in f32, within 4 ulp or 5e-7: `1 + erf(u)` from
/// `erf_parts`. For `u ≤ -1` that is `1 - erf(|u|)`, whose cancellation leaves `erf`'s
/// absolute error (1e-7), times `|x|/2` (at most 2.8 where `erf` is not yet 1).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = u.abs();
    let (near, far) = erf_parts(a);
    let y = if a < 1.0 { near } else { far };
    0.5 * x * (1.0 + y.copysign(u))
}

/// `1 / (1 + e^-x)` in f32, within 3 ulp or `f32::MIN_POSITIVE` (0 once `e^-x` overflows,
/// below -88.7, where the exact value is under 3e-39): exactly those three operations with
/// `exp`, so a kernel that also computes `1 + exp(-x)` shares it (`cpu::peephole`).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x / (1 + e^-x)` in f32, within 3 ulp (0 once `e^-x` overflows).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `torch.sign` in f32: `(0 < x) - (x < 0)`, so ±0 and NaN give +0.
#[inline(always)]
pub fn sign(x: f32) -> f32 {
    flag(0.0 < x) - flag(x < 0.0)
}

/// `softplus x` (beta 1, threshold 20, PyTorch's defaults) in f32: `x` above 20, else
/// `log1p(e^x)`, within 3 ulp (0 once `e^x` underflows).
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        log1p(exp(x))
    }
}

/// `gelu_tanh x = x/2 · (1 + tanh u)`, `u = √(2/π)(x + 0.044715x³)`, in f32 as
/// `x / (1 + e^(-2u))` (the same value: `1 + tanh u = 2 / (1 + e^(-2u))`), which does not
/// cancel for negative `x` as `1 + tanh u` would; within 8 ulp or 1e-6.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn gelu_tanh(x: f32) -> f32 {
    const BETA: f32 = 0.797_884_560_802_865_4;
    const KAPPA: f32 = 0.044715;
    let u = BETA * fma(KAPPA * x * x, x, x);
    x / (1.0 + exp(-2.0 * u))
}

/// The documented error of each vectorised transcendental function against its meaning
/// (`ir::eval`'s f64 value), as `(op, ulps, abs)`: every f32 input gives a result within
/// `ulps` units in the last place or within `abs` absolutely. Measured by the dense sweep
/// `tests::transcendentals_dense_sweep` (every 997th f32 bit pattern, and every 7th f32 of
/// 0.25 ≤ |x| < 10, where the forms switch: 16.9 million inputs), which asserts these
/// bounds; the measured maxima (2026-11-27) are in the comments.
#[cfg(test)]
const ERROR_BOUNDS: [(UnaryOp, f64, f64); 13] = [
    // 0.983 ulp.
    (UnaryOp::Exp, 1.0, 0.0),
    // 2.19 ulp (at 0.226: `m` and `m + 2` each round where the result's ulp is largest
    // relative to it, just below a power of 2); 2.31 over every f32 of [1/16, 10).
    (UnaryOp::Tanh, 2.5, 0.0),
    // 2.13 ulp (at -16.6); 0 below -88.7, where e^-x overflows and the exact value is
    // subnormal.
    (UnaryOp::Sigmoid, 2.5, f32::MIN_POSITIVE as f64),
    // 1.98 ulp; 0 below -88.7 as for sigmoid (exact value about 1e-37).
    (UnaryOp::Silu, 2.5, 1e-36),
    // 2.43 ulp (at 0.467, in Cephes' polynomial below 1); the fitted polynomial from 1 on
    // is within 1.7 ulp (1e-7).
    (UnaryOp::Erf, 2.5, 0.0),
    // 1.13 ulp outside 5e-7 (at 4.78); the largest absolute error, 5.4e-7 at 4.78, is
    // that ulp. For -5.5 < x ≤ -√2 the result is x/2·(1 - erf(|x|/√2)), within erf's
    // absolute error times |x|/2 (2.8e-7).
    (UnaryOp::Gelu, 4.0, 5e-7),
    // Computed in f64 and rounded once (`in_f64`): 0.5 ulp and a sliver (each 0.500 in
    // the sweep, 2026-11-29).
    (UnaryOp::Log, 0.5 + 1e-6, 0.0),
    (UnaryOp::Log1p, 0.5 + 1e-6, 0.0),
    (UnaryOp::Expm1, 0.5 + 1e-6, 0.0),
    (UnaryOp::Sin, 0.5 + 1e-6, 0.0),
    (UnaryOp::Cos, 0.5 + 1e-6, 0.0),
    (UnaryOp::Tan, 0.5 + 1e-6, 0.0),
    // 1.47 ulp (at -4.16): `exp`'s error (within 1 ulp) carried through `log1p` (0.5); 0
    // once e^x underflows.
    (UnaryOp::Softplus, 2.0, f32::MIN_POSITIVE as f64),
];

/// `a op b` in f32.
#[inline]
pub fn binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => pow_scalar(a, b),
        BinaryOp::Maximum => maximum(a, b),
        BinaryOp::Minimum => minimum(a, b),
        BinaryOp::Cmp(c) => flag(tc_compiler::ir::eval::compare(c, a as f64, b as f64)),
        BinaryOp::And => flag(a != 0.0 && b != 0.0),
        BinaryOp::Or => flag(a != 0.0 || b != 0.0),
    }
}

/// A truth value as f32 (1 or 0).
#[inline]
fn flag(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// `torch.pow`: C's `pow` (a negative base with an integral exponent is fine, with a
/// fractional one NaN), computed in f64 and rounded once (`in_f64::pow`); `x ** 2` is
/// exactly `x * x`. `pow(x, ±0)` and `pow(1, y)` are 1 even for a NaN, a signaling one
/// included (glibc's `powf`, used before, gave NaN for a signaling NaN there, where the
/// meaning, in f64, the NaN quieted by the widening, is 1).
#[inline(always)]
pub fn pow(a: f32, b: f32) -> f32 {
    if b == 2.0 {
        a * a
    } else {
        in_f64::pow(a, b)
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

/// Rounds `x` to `dtype` (nearest, ties to even) and widens it back to f32. (Integral
/// dtypes never travel in f32 lanes: the fused interpreter runs kernels with integer or
/// `bool` values exactly, in `cpu::typed`; here they pass unchanged.)
#[inline]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// `dst[i] = op(src[i])`, the match hoisted out of the loop so each arm vectorises.
#[inline(always)]
fn unary_block_impl(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    unary_block_with(op, src, dst, |x| x)
}

/// A cheap unary op folded into the loop of the op that consumes it (`cpu::fused`): one
/// pass over the block instead of two, the same IEEE operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pre {
    Neg,
    Abs,
}

/// `dst[i] = op(pre(src[i]))`.
#[inline(always)]
fn unary_pre_block_impl(op: UnaryOp, pre: Pre, src: &[f32], dst: &mut [f32]) {
    match pre {
        Pre::Neg => unary_block_with(op, src, dst, |x| -x),
        Pre::Abs => unary_block_with(op, src, dst, |x| x.abs()),
    }
}

/// `dst[i] = op(pre(src[i]))` for a pre-op known at compile time.
#[inline(always)]
fn unary_block_with(op: UnaryOp, src: &[f32], dst: &mut [f32], pre: impl Fn(f32) -> f32) {
    macro_rules! each {
        (|$x:ident| $e:expr) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                let $x = pre(s);
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
        UnaryOp::Sigmoid => each!(|x| sigmoid(x)),
        UnaryOp::Silu => each!(|x| silu(x)),
        UnaryOp::Gelu => each!(|x| gelu(x)),
        UnaryOp::Relu => each!(|x| if x > 0.0 || x.is_nan() { x } else { 0.0 }),
        UnaryOp::Log => each!(|x| log(x)),
        // Every lane the fast way, then the rare ones past its range again (the same bits
        // as `sin(x)` element by element).
        UnaryOp::Sin => {
            each!(|x| in_f64::sin_fast(x));
            slow_trig(src, dst, &pre, in_f64::sin_slow);
        }
        UnaryOp::Cos => {
            each!(|x| in_f64::cos_fast(x));
            slow_trig(src, dst, &pre, in_f64::cos_slow);
        }
        UnaryOp::Not => each!(|x| flag(x == 0.0)),
        UnaryOp::Log1p => each!(|x| log1p(x)),
        UnaryOp::Expm1 => each!(|x| expm1(x)),
        UnaryOp::Floor => each!(|x| x.floor()),
        UnaryOp::Ceil => each!(|x| x.ceil()),
        UnaryOp::Round => each!(|x| x.round_ties_even()),
        UnaryOp::Sign => each!(|x| sign(x)),
        UnaryOp::Reciprocal => each!(|x| 1.0 / x),
        UnaryOp::Tan => {
            each!(|x| in_f64::tan_fast(x));
            slow_trig(src, dst, &pre, in_f64::tan_slow);
        }
        UnaryOp::Softplus => each!(|x| softplus(x)),
        UnaryOp::GeluTanh => each!(|x| gelu_tanh(x)),
    }
}

/// `in_f64_unary`'s body: the ops `in_f64` computes, and `softplus`; any other op as
/// `unary`.
#[inline(always)]
fn in_f64_unary_impl(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Log => log(x),
        UnaryOp::Log1p => log1p(x),
        UnaryOp::Expm1 => expm1(x),
        UnaryOp::Sin => sin(x),
        UnaryOp::Cos => cos(x),
        UnaryOp::Tan => tan(x),
        UnaryOp::Softplus => softplus(x),
        _ => unary(op, x),
    }
}

/// `dst[i] = slow(pre(src[i]))` where `pre(src[i])` is past the fast trigonometric forms'
/// range (`in_f64::needs_slow_trig`).
#[inline(always)]
fn slow_trig(src: &[f32], dst: &mut [f32], pre: &impl Fn(f32) -> f32, slow: fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let x = pre(s);
        if in_f64::needs_slow_trig(x) {
            *d = slow(x);
        }
    }
}

/// The largest (`max: true`) or smallest value of a block; NaN if any is.
#[inline(always)]
fn block_extremum_impl(xs: &[f32], max: bool) -> f32 {
    if max {
        extremum::<true>(xs)
    } else {
        extremum::<false>(xs)
    }
}

/// The extremum over 32 interleaved lanes (four vector accumulators, so the compare-select
/// chains overlap), NaN tracked on the side: each lane step is one `maxps`/`minps` and one
/// unordered compare. Lanes fold in a fixed order, so the result depends only on `xs`.
#[inline(always)]
fn extremum<const MAX: bool>(xs: &[f32]) -> f32 {
    const LANES: usize = 32;
    let init = if MAX {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    };
    let pick = |l: f32, x: f32| -> f32 {
        if MAX {
            if x > l {
                x
            } else {
                l
            }
        } else if x < l {
            x
        } else {
            l
        }
    };
    let mut lanes = [init; LANES];
    let mut nan = [0u32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for ((l, n), &x) in lanes.iter_mut().zip(nan.iter_mut()).zip(c) {
            *n |= x.is_nan() as u32;
            *l = pick(*l, x);
        }
    }
    let mut m = init;
    let mut any_nan = nan.iter().any(|&n| n != 0);
    for &x in lanes.iter().chain(rest) {
        any_nan |= x.is_nan();
        m = pick(m, x);
    }
    if any_nan {
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
    // `$e` of `x` and `y` over the block, written into each loop (a closure around a large
    // inlined function, `pow`, would not be inlined, and one not inlined is built outside
    // this tier's instructions: a call an element).
    macro_rules! apply {
        (|$x:ident, $y:ident| $e:expr) => {
            match (a, b) {
                (Operand::Block(a), Operand::Block(b)) => {
                    for ((d, &$x), &$y) in dst.iter_mut().zip(a).zip(b) {
                        *d = $e;
                    }
                }
                (Operand::Block(a), Operand::Scalar($y)) => {
                    for (d, &$x) in dst.iter_mut().zip(a) {
                        *d = $e;
                    }
                }
                (Operand::Scalar($x), Operand::Block(b)) => {
                    for (d, &$y) in dst.iter_mut().zip(b) {
                        *d = $e;
                    }
                }
                (Operand::Scalar($x), Operand::Scalar($y)) => dst.fill($e),
            }
        };
    }
    match op {
        BinaryOp::Add => apply!(|x, y| x + y),
        BinaryOp::Sub => apply!(|x, y| x - y),
        BinaryOp::Mul => apply!(|x, y| x * y),
        BinaryOp::Div => apply!(|x, y| x / y),
        BinaryOp::Pow if matches!(b, Operand::Scalar(2.0)) => apply!(|x, _y| x * x),
        BinaryOp::Pow => apply!(|x, y| pow(x, y)),
        BinaryOp::Maximum => apply!(|x, y| maximum(x, y)),
        BinaryOp::Minimum => apply!(|x, y| minimum(x, y)),
        BinaryOp::Cmp(_) | BinaryOp::And | BinaryOp::Or => apply!(|x, y| binary(op, x, y)),
    }
}

/// Whether `binary2_block` folds `op` (exact IEEE operations, or NaN-propagating
/// selections).
pub fn foldable(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Add
            | BinaryOp::Sub
            | BinaryOp::Mul
            | BinaryOp::Div
            | BinaryOp::Maximum
            | BinaryOp::Minimum
    )
}

/// `dst[i] = op2(t[i], c[i])` (or `op2(c[i], t[i])` where `t_left` is false) with
/// `t[i] = op1(a[i], b[i])` kept in a register: two binary ops in one pass over the block,
/// each rounded as on its own. `a` is a block; `b` and `c` blocks or scalars; `op1` and
/// `op2` `foldable` (others fall back to two passes through `dst`).
#[inline(always)]
fn binary2_block_impl(
    op1: BinaryOp,
    a: &[f32],
    b: Operand<'_>,
    op2: BinaryOp,
    c: Operand<'_>,
    t_left: bool,
    dst: &mut [f32],
) {
    #[inline(always)]
    fn pair(
        a: &[f32],
        b: Operand<'_>,
        c: Operand<'_>,
        t_left: bool,
        dst: &mut [f32],
        f: impl Fn(f32, f32) -> f32,
        g: impl Fn(f32, f32) -> f32,
    ) {
        let n = dst.len();
        let a = &a[..n];
        macro_rules! each {
            (|$x:ident, $i:ident| $y:expr, $z:expr) => {
                if t_left {
                    for ($i, (d, &$x)) in dst.iter_mut().zip(a).enumerate() {
                        *d = g(f($x, $y), $z);
                    }
                } else {
                    for ($i, (d, &$x)) in dst.iter_mut().zip(a).enumerate() {
                        *d = g($z, f($x, $y));
                    }
                }
            };
        }
        match (b, c) {
            (Operand::Block(b), Operand::Block(c)) => {
                let (b, c) = (&b[..n], &c[..n]);
                each!(|x, i| b[i], c[i])
            }
            (Operand::Block(b), Operand::Scalar(z)) => {
                let b = &b[..n];
                each!(|x, i| b[i], z)
            }
            (Operand::Scalar(y), Operand::Block(c)) => {
                let c = &c[..n];
                each!(|x, i| y, c[i])
            }
            (Operand::Scalar(y), Operand::Scalar(z)) => each!(|x, _i| y, z),
        }
    }
    macro_rules! ops {
        ($($o1:ident => $f:expr),*) => {
            match op1 {
                $(BinaryOp::$o1 => match op2 {
                    BinaryOp::Add => pair(a, b, c, t_left, dst, $f, |x, y| x + y),
                    BinaryOp::Sub => pair(a, b, c, t_left, dst, $f, |x, y| x - y),
                    BinaryOp::Mul => pair(a, b, c, t_left, dst, $f, |x, y| x * y),
                    BinaryOp::Div => pair(a, b, c, t_left, dst, $f, |x, y| x / y),
                    BinaryOp::Maximum => pair(a, b, c, t_left, dst, $f, maximum),
                    BinaryOp::Minimum => pair(a, b, c, t_left, dst, $f, minimum),
                    _ => two_passes(op1, a, b, op2, c, t_left, dst),
                },)*
                _ => two_passes(op1, a, b, op2, c, t_left, dst),
            }
        };
    }
    ops!(
        Add => |x: f32, y: f32| x + y,
        Sub => |x: f32, y: f32| x - y,
        Mul => |x: f32, y: f32| x * y,
        Div => |x: f32, y: f32| x / y,
        Maximum => maximum,
        Minimum => minimum
    )
}

/// `binary2_block`'s meaning, as two block passes (for ops it does not fold).
#[cold]
fn two_passes(
    op1: BinaryOp,
    a: &[f32],
    b: Operand<'_>,
    op2: BinaryOp,
    c: Operand<'_>,
    t_left: bool,
    dst: &mut [f32],
) {
    binary_block_impl(op1, Operand::Block(a), b, dst);
    let t = dst.to_vec();
    let (x, y) = if t_left {
        (Operand::Block(&t), c)
    } else {
        (c, Operand::Block(&t))
    };
    binary_block_impl(op2, x, y, dst);
}

/// Elements per leaf of the pairwise sum.
const SUM_LEAF: usize = 256;

/// The sum of a block in f32, pairwise: halves down to leaves of at most 256 elements, each
/// summed over 32 interleaved lanes (four 8-lane accumulators), so the error grows with
/// log n and the leaves run at vector speed. The AVX2 build writes its leaf with
/// intrinsics (the auto-vectoriser does not keep four accumulators apart) and both builds
/// do the same additions in the same order, so they agree to the bit.
fn block_sum_leaf(xs: &[f32]) -> f32 {
    let mut acc = [[0f32; 8]; 4];
    let chunks = xs.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, c) in acc.iter_mut().zip(c.chunks_exact(8)) {
            for (l, &x) in a.iter_mut().zip(c) {
                *l += x;
            }
        }
    }
    let mut s = [0f32; 8];
    for (j, s) in s.iter_mut().enumerate() {
        *s = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    }
    fold_leaf(s, rest)
}

/// The end of a leaf: its eight lane sums and the elements after the last whole 32.
#[inline(always)]
fn fold_leaf(s: [f32; 8], rest: &[f32]) -> f32 {
    let mut tail = 0f32;
    for &x in rest {
        tail += x;
    }
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7])) + tail
}

/// `block_sum_leaf` with AVX2 intrinsics: the same lanes, the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_sum_leaf_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::{_mm256_add_ps, _mm256_loadu_ps, _mm256_storeu_ps};
    let chunks = xs.chunks_exact(32);
    let rest = chunks.remainder();
    let zero = [0f32; 8];
    // SAFETY: `zero` has 8 elements (a load, not `_mm256_setzero_ps`, which needs no
    // `unsafe` on newer compilers and does on the oldest one supported).
    let mut acc = [unsafe { _mm256_loadu_ps(zero.as_ptr()) }; 4];
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: c has 32 elements, so 8k .. 8k + 8 is in bounds.
            *a = unsafe { _mm256_add_ps(*a, _mm256_loadu_ps(c.as_ptr().add(8 * k))) };
        }
    }
    let mut s = [0f32; 8];
    // SAFETY: `s` has room for the 8 lanes stored.
    unsafe {
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        _mm256_storeu_ps(s.as_mut_ptr(), v);
    }
    fold_leaf(s, rest)
}

/// The pairwise f32 sum of a block (baseline build).
fn block_sum_base(xs: &[f32]) -> f32 {
    if xs.len() > SUM_LEAF {
        let (a, b) = xs.split_at(xs.len() / 2);
        return block_sum_base(a) + block_sum_base(b);
    }
    block_sum_leaf(xs)
}

/// The pairwise f32 sum of a block (AVX2 build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_sum_avx2(xs: &[f32]) -> f32 {
    if xs.len() > SUM_LEAF {
        let (a, b) = xs.split_at(xs.len() / 2);
        // SAFETY: this very function runs only where AVX2 is present.
        return unsafe { block_sum_avx2(a) + block_sum_avx2(b) };
    }
    // SAFETY: as above.
    unsafe { block_sum_leaf_avx2(xs) }
}

/// The pairwise f32 sum of a block.
pub fn block_sum(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Tier::hardware() >= Tier::Avx2 {
        // SAFETY: the CPU supports AVX2 (`Tier::hardware`).
        return unsafe { block_sum_avx2(xs) };
    }
    block_sum_base(xs)
}

/// `block_sum`'s leaf for `W` columns at once (`cpu::columns`), fed in chunks of at most
/// 32 elements: element `i` of column `w` at `xs[i·W + w]` of a chunk, the leaf at most
/// 256 elements in all; `finish` gives `out[w]`, the very bits `block_sum_leaf` gives
/// column `w` alone. Each lane does the scalar additions in the scalar order (32
/// accumulators from 0 over the whole chunks of 32, the same pairing of them, the tail
/// summed from 0 in order), as `[f32; W]` arrays the compiler turns into vector adds. A
/// leaf fed a chunk at a time need not be held whole: the wide mode computes its values 32
/// elements at a time, in blocks that stay in the second-level cache.
pub struct LaneLeafSums<const W: usize> {
    acc: [[f32; W]; 32],
    tail: [f32; W],
    /// Elements fed so far, and whether the tail (a chunk of fewer than 32) has begun.
    fed: usize,
    tailed: bool,
}

impl<const W: usize> Default for LaneLeafSums<W> {
    fn default() -> Self {
        LaneLeafSums {
            acc: [[0f32; W]; 32],
            tail: [0f32; W],
            fed: 0,
            tailed: false,
        }
    }
}

#[inline(always)]
fn add_lanes<const W: usize>(a: [f32; W], b: &[f32]) -> [f32; W] {
    std::array::from_fn(|w| a[w] + b[w])
}

impl<const W: usize> LaneLeafSums<W> {
    /// Starts a leaf.
    pub fn reset(&mut self) {
        *self = LaneLeafSums::default();
    }

    /// Adds the next `xs.len() / W` elements (32, or fewer as the leaf's last chunk).
    pub fn feed(&mut self, xs: &[f32]) {
        self.feed_in(Tier::best(), xs)
    }

    /// `feed` compiled for `tier`, or the hardware's widest when that is narrower.
    pub fn feed_in(&mut self, tier: Tier, xs: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
            unsafe fn wide<const W: usize>(s: &mut LaneLeafSums<W>, xs: &[f32]) {
                s.feed_impl(xs)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn narrow<const W: usize>(s: &mut LaneLeafSums<W>, xs: &[f32]) {
                s.feed_impl(xs)
            }
            match tier.min(Tier::hardware()) {
                // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA (`Tier::hardware`).
                Tier::Avx512 => return unsafe { wide(self, xs) },
                // SAFETY: the CPU has AVX2 and FMA (`Tier::hardware`).
                Tier::Avx2 => return unsafe { narrow(self, xs) },
                Tier::Base => {}
            }
        }
        self.feed_impl(xs)
    }

    #[inline(always)]
    fn feed_impl(&mut self, xs: &[f32]) {
        let n = xs.len() / W;
        assert!(
            n <= 32 && !self.tailed,
            "a chunk of at most 32, none after the tail"
        );
        self.fed += n;
        debug_assert!(self.fed <= SUM_LEAF);
        if n == 32 {
            for (a, x) in self.acc.iter_mut().zip(xs.chunks_exact(W)) {
                *a = add_lanes(*a, x);
            }
        } else {
            self.tailed = true;
            for x in xs.chunks_exact(W) {
                self.tail = add_lanes(self.tail, x);
            }
        }
    }

    /// The leaf's sums.
    pub fn finish(&self) -> [f32; W] {
        let acc = &self.acc;
        let pair = |a: [f32; W], b: [f32; W]| add_lanes(a, &b);
        // `block_sum_leaf`'s acc[k][j] is accumulator 8k + j here.
        let s: [[f32; W]; 8] =
            std::array::from_fn(|j| pair(pair(acc[j], acc[8 + j]), pair(acc[16 + j], acc[24 + j])));
        let out = pair(
            pair(pair(s[0], s[4]), pair(s[2], s[6])),
            pair(pair(s[1], s[5]), pair(s[3], s[7])),
        );
        pair(out, self.tail)
    }
}

/// `KahanSum::add` of `xs.len() / W` elements into each of `W` sums at once: element `j`
/// of sum `w` at `xs[j·W + w]`, each lane the very operations of the one-sum loop in its
/// order (the lanes side by side in vector registers instead of one chain of dependent
/// additions), compiled for the widest tier (`Tier::best`).
pub fn kahan_lanes<const W: usize>(xs: &[f32], sums: &mut [KahanSum; W]) {
    kahan_lanes_in(Tier::best(), xs, sums)
}

/// `kahan_lanes` compiled for `tier`, or the hardware's widest when that is narrower.
pub fn kahan_lanes_in<const W: usize>(tier: Tier, xs: &[f32], sums: &mut [KahanSum; W]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        unsafe fn wide<const W: usize>(xs: &[f32], sums: &mut [KahanSum; W]) {
            kahan_lanes_impl(xs, sums)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow<const W: usize>(xs: &[f32], sums: &mut [KahanSum; W]) {
            kahan_lanes_impl(xs, sums)
        }
        match tier.min(Tier::hardware()) {
            // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA (`Tier::hardware`).
            Tier::Avx512 => return unsafe { wide(xs, sums) },
            // SAFETY: the CPU has AVX2 and FMA (`Tier::hardware`).
            Tier::Avx2 => return unsafe { narrow(xs, sums) },
            Tier::Base => {}
        }
    }
    kahan_lanes_impl(xs, sums)
}

#[inline(always)]
fn kahan_lanes_impl<const W: usize>(xs: &[f32], sums: &mut [KahanSum; W]) {
    let mut sum: [f32; W] = std::array::from_fn(|w| sums[w].sum);
    let mut carry: [f32; W] = std::array::from_fn(|w| sums[w].carry);
    for x in xs.chunks_exact(W) {
        for w in 0..W {
            let y = x[w] - carry[w];
            let t = sum[w] + y;
            // (`is_finite` as a compare of the bits, which vectorises as a select.)
            let finite = t.to_bits() & 0x7fff_ffff < 0x7f80_0000;
            carry[w] = if finite { (t - sum[w]) - y } else { 0.0 };
            sum[w] = t;
        }
    }
    for (w, s) in sums.iter_mut().enumerate() {
        *s = KahanSum {
            sum: sum[w],
            carry: carry[w],
        };
    }
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
    use tc_compiler::ir::{eval, ReduceOp};

    /// The binary ops with a block loop of their own.
    const BINARY_OPS: [BinaryOp; 7] = BinaryOp::ARITHMETIC;

    /// Whether two blocks hold the same bits, any NaN matching any NaN.
    fn same(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan())
    }

    /// Values across the interesting range, including exact powers and tiny and huge ones.
    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (-20000..=20000).map(|i| i as f32 / 200.0).collect();
        v.extend([
            1e-30, -1e-30, 1e-8, -1e-8, 0.0, -0.0, 88.0, 88.7, -87.0, -87.3, -100.0, 100.0, 1e30,
            -1e30,
        ]);
        v
    }

    /// The samples, and the special values: ±0, ±inf, NaN, subnormals, the f32 extremes.
    fn samples_and_specials() -> Vec<f32> {
        let mut v = samples();
        v.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            // A signaling NaN (quiet bit clear), which C's `powf` treats apart.
            f32::from_bits(0xff95_a158),
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            -88.8,
            -90.0,
            -103.0,
            -1e10,
        ]);
        v
    }

    /// Every unary op, scalar and block form, against its meaning (`ir::eval`) within the
    /// accuracy `ir::eval::unary_accuracy` documents; the two forms agree bit for bit.
    #[test]
    fn every_unary_op_is_within_its_accuracy_of_the_meaning() {
        let xs = samples_and_specials();
        let mut block = vec![0f32; xs.len()];
        let mut failures = Vec::new();
        for op in UnaryOp::ALL {
            let acc = eval::unary_accuracy(op);
            unary_block(op, &xs, &mut block);
            let mut worst = (0f64, 0f32);
            for (&x, &b) in xs.iter().zip(&block) {
                let got = unary(op, x);
                if !(got.to_bits() == b.to_bits() || got.is_nan() && b.is_nan()) {
                    failures.push(format!("{}({x:e}): scalar {got:e}, block {b:e}", op.name()));
                }
                let want = eval::unary(op, x as f64);
                if !acc.admits(got, want) {
                    failures.push(format!("{}({x:e}) = {got:e}, meaning {want:e}", op.name()));
                } else if want.is_finite() && got.is_finite() {
                    let u = (got as f64 - want).abs() / eval::ulp_f32(want);
                    if u > worst.0 {
                        worst = (u, x);
                    }
                }
            }
            eprintln!("{}: worst {:.2} ulp at {:e}", op.name(), worst.0, worst.1);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every binary op, scalar and block forms (block with block, with a scalar on either
    /// side), against its meaning within `ir::eval::binary_accuracy`.
    #[test]
    fn every_binary_op_is_within_its_accuracy_of_the_meaning() {
        let all = samples_and_specials();
        // Every 97th sample against every special and a spread of the samples.
        let xs: Vec<f32> = all
            .iter()
            .copied()
            .step_by(97)
            .chain(all[40_001..].iter().copied())
            .collect();
        let mut failures = Vec::new();
        let mut out = vec![0f32; xs.len()];
        for op in BINARY_OPS {
            let acc = eval::binary_accuracy(op);
            for &y in &xs {
                let ys = vec![y; xs.len()];
                binary_block(op, Operand::Block(&xs), Operand::Scalar(y), &mut out);
                let mut blocks = vec![out.clone()];
                binary_block(op, Operand::Block(&xs), Operand::Block(&ys), &mut out);
                blocks.push(out.clone());
                for (i, &x) in xs.iter().enumerate() {
                    let got = binary(op, x, y);
                    for b in &blocks {
                        if !(got.to_bits() == b[i].to_bits() || got.is_nan() && b[i].is_nan()) {
                            failures.push(format!(
                                "{}({x:e}, {y:e}): scalar {got:e}, block {:e}",
                                op.name(),
                                b[i]
                            ));
                        }
                    }
                    let want = eval::binary(op, x as f64, y as f64);
                    if !acc.admits(got, want) {
                        failures.push(format!(
                            "{}({x:e}, {y:e}) = {got:e}, meaning {want:e}",
                            op.name()
                        ));
                    }
                }
                binary_block(op, Operand::Scalar(y), Operand::Block(&xs), &mut out);
                for (i, &x) in xs.iter().enumerate() {
                    let got = binary(op, y, x);
                    if !(got.to_bits() == out[i].to_bits() || got.is_nan() && out[i].is_nan()) {
                        failures.push(format!(
                            "{}({y:e}, {x:e}): scalar {got:e}, block {:e}",
                            op.name(),
                            out[i]
                        ));
                    }
                }
            }
        }
        let n = failures.len();
        failures.truncate(20);
        assert!(n == 0, "{n} failures, first:\n{}", failures.join("\n"));
    }

    /// The dense sweep behind `ERROR_BOUNDS`: every 997th f32 bit pattern (all exponents,
    /// both signs) and every 7th f32 of 0.25 ≤ |x| < 10, each function's block form against
    /// `ir::eval`'s f64 meaning; every result within the documented ulps or absolute error.
    #[test]
    fn transcendentals_dense_sweep() {
        let mut xs: Vec<f32> = (0..=u32::MAX)
            .step_by(997)
            .map(f32::from_bits)
            .filter(|x| x.is_finite())
            .collect();
        for sign in [0u32, 0x8000_0000] {
            xs.extend(
                (0x3e80_0000u32..0x4120_0000)
                    .step_by(7)
                    .map(|b| f32::from_bits(b | sign)),
            );
        }
        let mut out = vec![0f32; xs.len()];
        let mut failures = Vec::new();
        for (op, max_ulps, max_abs) in ERROR_BOUNDS {
            unary_block(op, &xs, &mut out);
            // The largest error in ulps among results outside the absolute bound, and the
            // largest absolute error.
            let (mut worst_ulp, mut worst_abs) = ((0f64, 0f32), (0f64, 0f32));
            for (&x, &got) in xs.iter().zip(&out) {
                let want = eval::unary(op, x as f64);
                if want.abs() > f32::MAX as f64 * (1.0 + f32::EPSILON as f64 / 2.0) {
                    if got != want as f32 {
                        failures.push(format!("{}({x:e}) = {got:e}, meaning {want:e}", op.name()));
                    }
                    continue;
                }
                let abs = (got as f64 - want).abs();
                let u = ulps(got, want);
                if abs > worst_abs.0 {
                    worst_abs = (abs, x);
                }
                if abs > max_abs && u > worst_ulp.0 {
                    worst_ulp = (u, x);
                }
            }
            eprintln!(
                "{}: {:.3} ulp at {:e} (outside {max_abs:e}), max abs {:e} at {:e}",
                op.name(),
                worst_ulp.0,
                worst_ulp.1,
                worst_abs.0,
                worst_abs.1
            );
            if worst_ulp.0 > max_ulps {
                failures.push(format!(
                    "{}: {:.3} ulp at x = {:e}, documented {max_ulps} ulp or {max_abs:e}",
                    op.name(),
                    worst_ulp.0,
                    worst_ulp.1
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every tier this CPU runs (`Tier::available`) gives the baseline build's bits for every
    /// block loop: each unary op over the samples and specials, each binary op with block
    /// and scalar operands, the folded pairs, the extremum.
    #[test]
    fn every_tier_gives_the_same_bits() {
        let tiers = Tier::available();
        eprintln!("tiers compared with the baseline: {tiers:?}");
        let xs = samples_and_specials();
        let ys: Vec<f32> = xs.iter().rev().copied().collect();
        let n = xs.len();
        let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
        for &tier in &tiers {
            for op in UnaryOp::ALL {
                unary_block_in(Tier::Base, op, &xs, &mut want);
                unary_block_in(tier, op, &xs, &mut got);
                assert!(same(&got, &want), "{tier:?}: {}", op.name());
                for pre in [Pre::Neg, Pre::Abs] {
                    unary_pre_block_in(Tier::Base, op, pre, &xs, &mut want);
                    unary_pre_block_in(tier, op, pre, &xs, &mut got);
                    assert!(same(&got, &want), "{tier:?}: {pre:?} then {}", op.name());
                }
            }
            for op in BINARY_OPS {
                for (a, b) in [
                    (Operand::Block(&xs), Operand::Block(&ys)),
                    (Operand::Block(&xs), Operand::Scalar(-0.0)),
                    (Operand::Scalar(2.5), Operand::Block(&ys)),
                    (Operand::Block(&xs), Operand::Scalar(f32::NAN)),
                ] {
                    binary_block_in(Tier::Base, op, a, b, &mut want);
                    binary_block_in(tier, op, a, b, &mut got);
                    assert!(same(&got, &want), "{tier:?}: {op:?}");
                }
                for op2 in [BinaryOp::Add, BinaryOp::Div, BinaryOp::Maximum] {
                    for t_left in [true, false] {
                        let (b, c) = (Operand::Block(&ys), Operand::Scalar(-1.5));
                        binary2_block_in(Tier::Base, op, &xs, b, op2, c, t_left, &mut want);
                        binary2_block_in(tier, op, &xs, b, op2, c, t_left, &mut got);
                        assert!(same(&got, &want), "{tier:?}: {op:?} then {op2:?}");
                    }
                }
            }
            for max in [true, false] {
                for len in [0, 1, 7, 16, 17, 100, n] {
                    let w = block_extremum_in(Tier::Base, &ys[..len], max);
                    let g = block_extremum_in(tier, &ys[..len], max);
                    assert!(same(&[g], &[w]), "{tier:?}: extremum {max} of {len}");
                }
            }
        }
    }

    /// `binary2_block` and `unary_pre_block` give the bits of their ops one pass at a time,
    /// for every foldable pair of ops, both sides of the outer op, block and scalar
    /// operands, and values with NaN, ±inf, ±0 (where `maximum`/`minimum` ties matter).
    #[test]
    fn folded_block_ops_give_the_bits_of_one_op_at_a_time() {
        let mut xs = mixed(61, 3);
        xs.extend([
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0,
            -1.0,
        ]);
        let ys: Vec<f32> = xs.iter().rev().copied().collect();
        let zs: Vec<f32> = xs.iter().map(|x| -x).rev().chain([0.0, -0.0]).collect();
        let n = xs.len();
        let zs = &zs[zs.len() - n..];
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Maximum,
            BinaryOp::Minimum,
        ];
        let (mut t, mut want, mut got) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for op1 in ops {
            for op2 in ops {
                for b in [
                    Operand::Block(&ys),
                    Operand::Scalar(-0.0),
                    Operand::Scalar(2.5),
                ] {
                    for c in [
                        Operand::Block(zs),
                        Operand::Scalar(0.0),
                        Operand::Scalar(-1.0),
                    ] {
                        for t_left in [true, false] {
                            binary_block(op1, Operand::Block(&xs), b, &mut t);
                            let (l, r) = if t_left {
                                (Operand::Block(&t), c)
                            } else {
                                (c, Operand::Block(&t))
                            };
                            binary_block(op2, l, r, &mut want);
                            binary2_block(op1, &xs, b, op2, c, t_left, &mut got);
                            assert!(same(&got, &want), "{op1:?} then {op2:?}, {t_left}");
                        }
                    }
                }
            }
        }
        for op in UnaryOp::ALL {
            for (pre, f) in [(Pre::Neg, UnaryOp::Neg), (Pre::Abs, UnaryOp::Abs)] {
                unary_block(f, &xs, &mut t);
                unary_block(op, &t, &mut want);
                unary_pre_block(op, pre, &xs, &mut got);
                assert!(same(&got, &want), "{pre:?} then {}", op.name());
            }
        }
    }

    #[test]
    fn exp_tanh_erf_special_values() {
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(-104.0), 0.0);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        // Both ends of `tanh`'s range and its switch between exponent signs.
        assert_eq!(tanh(9.1), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        for x in [1e-30f32, -1e-12, f32::from_bits(1), -f32::MIN_POSITIVE] {
            assert_eq!(tanh(x), x, "tanh({x:e})");
        }
        let below = 0.1733f32;
        let above = f32::from_bits(below.to_bits() + 1);
        assert!(
            tanh(below) <= tanh(above),
            "tanh across its switch: {:e} then {:e}",
            tanh(below),
            tanh(above)
        );
    }

    /// `got`'s distance from `want` in units of the last place of the f32 nearest `want`
    /// (2^-149 for subnormal results).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let exp2 = if w == 0.0 || !w.is_normal() {
            -149
        } else {
            ((w.abs().to_bits() >> 23) as i32) - 127 - 23
        };
        (got as f64 - want).abs() / 2f64.powi(exp2)
    }

    #[test]
    fn exp_is_within_one_ulp_and_the_same_in_blocks() {
        // Every 61st f32 from -110 to 90 (both signs, so tiny inputs too): normal, subnormal
        // and zero results, the overflow boundary, against f64 `exp`; the block form must
        // give the same bits as the scalar one.
        let mut xs: Vec<f32> = Vec::new();
        for sign in [0u32, 0x8000_0000] {
            let top = if sign == 0 { 90f32 } else { 110f32 }.to_bits();
            xs.extend((0..top).step_by(61).map(|b| f32::from_bits(b | sign)));
        }
        let ln_max = (f32::MAX as f64).ln();
        xs.extend([
            88.72283,
            88.722_84,
            ln_max as f32,
            f32::from_bits((ln_max as f32).to_bits() + 1),
            -87.336_55,
            -103.278_93,
            -103.972_08,
            -103.972_09,
            -104.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            0.0,
            -0.0,
        ]);
        let mut block = vec![0f32; xs.len()];
        unary_block(UnaryOp::Exp, &xs, &mut block);
        let mut worst = (0f64, 0f32);
        for (&x, &b) in xs.iter().zip(&block) {
            let got = exp(x);
            assert_eq!(
                got.to_bits(),
                b.to_bits(),
                "exp({x}): scalar {got}, block {b}"
            );
            let want = eval::unary(UnaryOp::Exp, x as f64);
            if want > f32::MAX as f64 * (1.0 + f32::EPSILON as f64 / 2.0) {
                assert_eq!(got, f32::INFINITY, "exp({x})");
                continue;
            }
            let u = ulps(got, want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        eprintln!("exp: worst {} ulp at {}", worst.0, worst.1);
        assert!(worst.0 <= 1.0, "exp: {} ulp at x = {}", worst.0, worst.1);
        for (x, want) in [
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (1000.0, f32::INFINITY),
            (-1000.0, 0.0),
            (0.0, 1.0),
            (-0.0, 1.0),
        ] {
            assert_eq!(exp(x), want, "exp({x})");
        }
        for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)] {
            assert!(exp(nan).is_nan(), "exp({nan})");
            let mut out = [0f32; 9];
            unary_block(UnaryOp::Exp, &[nan; 9], &mut out);
            assert!(out.iter().all(|v| v.is_nan()));
        }
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

    /// Deterministic values of mixed sign and magnitude (a small LCG).
    fn mixed(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (state >> 8) as f32 / (1u32 << 24) as f32;
                (u - 0.3) * 10f32.powi((state % 7) as i32 - 3)
            })
            .collect()
    }

    #[test]
    fn block_extremum_finds_the_extremum_at_every_length_and_position() {
        // Lengths around the 32-lane width and its tail; the extremum and a NaN put in
        // every lane position of the vector part and the scalar tail.
        for n in [1usize, 7, 31, 32, 33, 64, 95, 257] {
            let xs = mixed(n, n as u32);
            let fold = |max: bool| {
                xs.iter().copied().fold(
                    if max {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    },
                    |m, x| if max { m.max(x) } else { m.min(x) },
                )
            };
            assert_eq!(block_extremum(&xs, true), fold(true), "max, n = {n}");
            assert_eq!(block_extremum(&xs, false), fold(false), "min, n = {n}");
            let meaning = |op| eval::reduce(op, xs.iter().map(|&x| x as f64)) as f32;
            assert_eq!(
                block_extremum(&xs, true),
                meaning(ReduceOp::Max),
                "max, n = {n}"
            );
            assert_eq!(
                block_extremum(&xs, false),
                meaning(ReduceOp::Min),
                "min, n = {n}"
            );
            for at in 0..n {
                let mut ys = xs.clone();
                ys[at] = 1e30;
                assert_eq!(block_extremum(&ys, true), 1e30, "n = {n}, at = {at}");
                ys[at] = -1e30;
                assert_eq!(block_extremum(&ys, false), -1e30, "n = {n}, at = {at}");
                ys[at] = f32::NAN;
                assert!(block_extremum(&ys, true).is_nan(), "n = {n}, at = {at}");
                assert!(block_extremum(&ys, false).is_nan(), "n = {n}, at = {at}");
            }
        }
        let infs = [f32::NEG_INFINITY, f32::INFINITY, 0.0];
        assert_eq!(block_extremum(&infs, true), f32::INFINITY);
        assert_eq!(block_extremum(&infs, false), f32::NEG_INFINITY);
        assert_eq!(
            block_extremum(&[f32::NEG_INFINITY; 40], true),
            f32::NEG_INFINITY
        );
    }

    /// The cost of each block loop, for tuning (not a check: timings say nothing on a
    /// loaded machine). `cargo test --release -p tc-runtime --lib block_costs -- --ignored
    /// --nocapture` prints nanoseconds per element over a 1024-element block (the fused
    /// interpreter's), the best of five runs in the thread's own CPU time.
    #[test]
    #[ignore = "a timing, not a check: run by hand"]
    fn block_costs() {
        fn cpu_now() -> f64 {
            crate::cpu::cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
        }
        const N: usize = 1024;
        let src: Vec<f32> = (0..N)
            .map(|i| (i * 7919 % 1000) as f32 / 125.0 - 4.0)
            .collect();
        let mut dst = vec![0f32; N];
        let reps = (1 << 24) / N;
        let time = |f: &mut dyn FnMut()| -> f64 {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = cpu_now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(cpu_now() - t);
            }
            best / (reps * N) as f64 * 1e9
        };
        for op in UnaryOp::ALL {
            let ns = time(&mut || unary_block(op, std::hint::black_box(&src), &mut dst));
            eprintln!("{:>10}: {ns:.3} ns/element", op.name());
        }
        for op in [BinaryOp::Add, BinaryOp::Div, BinaryOp::Maximum] {
            let ns = time(&mut || {
                binary_block(
                    op,
                    Operand::Block(std::hint::black_box(&src)),
                    Operand::Scalar(0.5),
                    &mut dst,
                )
            });
            eprintln!("{:>10}: {ns:.3} ns/element", op.name());
        }
    }

    #[test]
    fn block_sum_is_accurate_and_the_same_in_every_build() {
        for n in [0usize, 1, 5, 31, 32, 33, 255, 256, 257, 1000, 4096, 10_001] {
            let xs = mixed(n, 7 + n as u32);
            let got = block_sum(&xs);
            assert_eq!(got.to_bits(), block_sum_base(&xs).to_bits(), "n = {n}");
            let exact = eval::reduce(ReduceOp::Sum, xs.iter().map(|&x| x as f64));
            let mag: f64 = xs.iter().map(|&x| (x as f64).abs()).sum();
            // Pairwise summation: error within a few ulps of the sum of magnitudes.
            assert!(
                (got as f64 - exact).abs() <= 4.0 * f32::EPSILON as f64 * mag,
                "n = {n}: {got} vs {exact}"
            );
        }
        assert!(block_sum(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(block_sum(&[f32::INFINITY; 300]), f32::INFINITY);
        assert!(block_sum(&[f32::INFINITY, f32::NEG_INFINITY]).is_nan());
    }
}

/// The instruction sets a block loop is compiled for, narrowest first. Every tier computes
/// bit-identical results (the same IEEE operations in the same order: Rust never fuses a
/// multiply-add by itself, and the explicit `mul_add`s are correctly rounded in every tier,
/// by a library call in the baseline one); a wider tier only does more lanes an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// The build's baseline (SSE2 on x86-64).
    Base,
    /// AVX2 and FMA: 8 lanes, a fused multiply-add in one instruction.
    Avx2,
    /// AVX-512 F/VL/DQ/BW besides AVX2 and FMA: 16 lanes, half the instructions of AVX2 for
    /// the same elements, which is what an issue-bound chain of polynomials is limited by.
    Avx512,
}

impl Tier {
    /// The widest tier this CPU runs.
    pub fn hardware() -> Tier {
        static HW: std::sync::OnceLock<Tier> = std::sync::OnceLock::new();
        *HW.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") {
                        return Tier::Avx512;
                    }
                    return Tier::Avx2;
                }
            }
            Tier::Base
        })
    }

    /// The tier the block loops run: the hardware's, but AVX2 when `TC_CPU_NO_AVX512` is set
    /// (to compare the tiers' speed on one machine; their results are the same).
    pub fn best() -> Tier {
        static BEST: std::sync::OnceLock<Tier> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let off =
                std::env::var_os("TC_CPU_NO_AVX512").is_some_and(|v| !v.is_empty() && v != "0");
            match Tier::hardware() {
                Tier::Avx512 if off => Tier::Avx2,
                t => t,
            }
        })
    }

    /// Every tier this CPU runs, narrowest first.
    #[cfg(test)]
    pub fn available() -> Vec<Tier> {
        [Tier::Base, Tier::Avx2, Tier::Avx512]
            .into_iter()
            .filter(|&t| t <= Tier::hardware())
            .collect()
    }
}

/// Declares `pub fn $name`, which runs `$imp` compiled for the widest tier (`Tier::best`),
/// and `pub fn $in`, which runs it compiled for a given tier (at most the hardware's: a
/// wider one runs the hardware's), so tests can hold the tiers to the same bits.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident / $in:ident ($($arg:ident : $ty:ty),*) -> $ret:ty = $imp:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            $in(Tier::best(), $($arg),*)
        }

        $(#[$doc])*
        /// Compiled for `tier`, or the hardware's widest when that is narrower.
        pub fn $in(tier: Tier, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                match tier.min(Tier::hardware()) {
                    // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA (`Tier::hardware`).
                    Tier::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: the CPU has AVX2 and FMA (`Tier::hardware`).
                    Tier::Avx2 => return unsafe { narrow($($arg),*) },
                    Tier::Base => {}
                }
            }
            $imp($($arg),*)
        }
    };
}

dispatch! {
    /// `dst[i] = op(src[i])`.
    fn unary_block / unary_block_in (op: UnaryOp, src: &[f32], dst: &mut [f32]) -> () = unary_block_impl
}
dispatch! {
    /// `op(x)` for an op computed in f64 (`in_f64`; and `softplus`, through its `log1p`),
    /// one value: `unary`'s form, built for the widest tier, so that its multiply-adds are
    /// instructions rather than library calls.
    fn in_f64_unary / in_f64_unary_in (op: UnaryOp, x: f32) -> f32 = in_f64_unary_impl
}
dispatch! {
    /// `pow(a, b)`, one value (`binary`'s form), built for the widest tier (see `in_f64_unary`).
    fn pow_scalar / pow_scalar_in (a: f32, b: f32) -> f32 = pow
}
dispatch! {
    /// `dst[i] = a[i] op b[i]`, either side possibly a scalar.
    fn binary_block / binary_block_in (op: BinaryOp, a: Operand<'_>, b: Operand<'_>, dst: &mut [f32]) -> () = binary_block_impl
}
dispatch! {
    /// `dst[i] = op(pre(src[i]))`.
    fn unary_pre_block / unary_pre_block_in (op: UnaryOp, pre: Pre, src: &[f32], dst: &mut [f32]) -> () = unary_pre_block_impl
}
dispatch! {
    /// `dst[i] = op2(op1(a[i], b[i]), c[i])`, or `op2(c[i], op1(a[i], b[i]))` where `t_left`
    /// is false: two binary ops in one pass.
    fn binary2_block / binary2_block_in (op1: BinaryOp, a: &[f32], b: Operand<'_>, op2: BinaryOp, c: Operand<'_>, t_left: bool, dst: &mut [f32]) -> () = binary2_block_impl
}
dispatch! {
    /// The largest (`max: true`) or smallest value of a block; NaN if any is.
    fn block_extremum / block_extremum_in (xs: &[f32], max: bool) -> f32 = block_extremum_impl
}
