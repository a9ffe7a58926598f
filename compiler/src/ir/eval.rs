//! The meaning of every elementwise op, reduction and dtype rounding on scalars, defined
//! once: f64 maths with PyTorch's rules for special values (`maximum`, `minimum`, `max`,
//! `min` and `relu` propagate NaN; `gelu` is the exact-erf form; IEEE ±0, ±inf and
//! subnormals throughout), and rounding to each dtype to nearest, ties to even.
//!
//! Integers and `bool` are exact: `i32`/`i64` values are `i64`s that wrap to their width
//! (two's complement) after every `+ - * **` and unary minus; `bool` is 0 or 1, and storing
//! an integer to `bool` gives `v != 0`. `Value` carries a scalar of either kind, and
//! `unary_value`, `binary_value`, `select` and `cast` are the one meaning of each op on
//! it: the executors call the integer functions directly, exactly.
//!
//! The constant folder (`check::expr`) and the f64 reference evaluator (tc-runtime's
//! `reference`, a test-support module) compute with these functions, so a folded literal
//! and the same maths run on a tensor cannot disagree. The executors compute in f32 with
//! their own fast kernels; `accuracy` says how close each op's f32 form must come to the
//! meaning, and the CPU's kernels are tested against it.

use super::graph::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use super::types::DType;
use half::{bf16, f16};

/// `op(x)`.
pub fn unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        // torch.relu propagates NaN (`f64::max` would drop it); relu(-0) is +0.
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Erf => erf(x),
        UnaryOp::Square => x * x,
        UnaryOp::Not => bool_f64(x == 0.0),
        UnaryOp::Log1p => x.ln_1p(),
        UnaryOp::Expm1 => x.exp_m1(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        // torch.sign: (0 < x) - (x < 0), so ±0 and NaN give +0.
        UnaryOp::Sign => bool_f64(0.0 < x) - bool_f64(x < 0.0),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Tan => x.tan(),
        // beta 1, threshold 20 (PyTorch's defaults): x itself above the threshold.
        UnaryOp::Softplus => {
            if x > 20.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        UnaryOp::GeluTanh => {
            let inner = GELU_TANH_BETA * (x + GELU_TANH_KAPPA * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        }
    }
}

/// √(2/π), the scale inside `gelu_tanh` (PyTorch's `kBeta`).
pub const GELU_TANH_BETA: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient inside `gelu_tanh` (PyTorch's `kKappa`).
pub const GELU_TANH_KAPPA: f64 = 0.044715;

fn bool_f64(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// `a op b` for a comparison (IEEE: every comparison with NaN is false except `!=`).
pub fn compare(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
    }
}

/// `a op b` for a comparison of integers.
pub fn compare_int(op: CmpOp, a: i64, b: i64) -> bool {
    match op {
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
    }
}

/// `a op b`.
pub fn binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // C `pow`: a negative base with an integral exponent is fine, with a fractional
        // one NaN; `pow(x, 0)` and `pow(1, y)` are 1 even for NaN.
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => maximum(a, b),
        BinaryOp::Minimum => minimum(a, b),
        BinaryOp::Cmp(c) => bool_f64(compare(c, a, b)),
        BinaryOp::And => bool_f64(a != 0.0 && b != 0.0),
        BinaryOp::Or => bool_f64(a != 0.0 || b != 0.0),
    }
}

/// `v` wrapped to the integral `dtype`: two's complement to 32 bits for `i32`, `v != 0` for
/// `bool` (a float dtype leaves it as it is).
pub fn wrap(dtype: DType, v: i64) -> i64 {
    match dtype {
        DType::I32 => v as i32 as i64,
        DType::Bool => (v != 0) as i64,
        _ => v,
    }
}

/// `op(x)` on an integer or `bool` operand of `dtype` (the result's dtype too), exact and
/// wrapping. Only the ops that keep integer dtypes (`UnaryOp::keeps_int`) and `Not` are
/// given integer operands by the checker; the others are defined as their f64 meaning
/// truncated, so that this function is total.
pub fn unary_int(op: UnaryOp, dtype: DType, x: i64) -> i64 {
    let v = match op {
        UnaryOp::Neg => x.wrapping_neg(),
        UnaryOp::Abs => x.wrapping_abs(),
        UnaryOp::Square => x.wrapping_mul(x),
        UnaryOp::Relu => x.max(0),
        UnaryOp::Not => (x == 0) as i64,
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => x,
        UnaryOp::Sign => x.signum(),
        _ => float_to_int(dtype, unary(op, x as f64)),
    };
    wrap(dtype, v)
}

/// `a op b` on integer or `bool` operands of `dtype`, exact: `+ - * **` wrap to the
/// dtype, comparisons and logical ops give 0 or 1. `x ** n` for `n < 0` is the exact
/// power truncated toward zero (1 for `x = 1`, ±1 for `x = -1`, else 0, and 0 for
/// `x = 0`). `/` is not an integer op (the checker divides in f32); here it truncates, and
/// division by zero gives 0.
pub fn binary_int(op: BinaryOp, dtype: DType, a: i64, b: i64) -> i64 {
    let v = match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div => a.checked_div(b).unwrap_or(0),
        BinaryOp::Pow => pow_int(a, b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::Cmp(c) => return compare_int(c, a, b) as i64,
        BinaryOp::And => return (a != 0 && b != 0) as i64,
        BinaryOp::Or => return (a != 0 || b != 0) as i64,
    };
    wrap(dtype, v)
}

/// `a ** b` on integers, wrapping (see `binary_int`).
fn pow_int(a: i64, b: i64) -> i64 {
    if b < 0 {
        return match a {
            1 => 1,
            -1 if b % 2 == 0 => 1,
            -1 => -1,
            _ => 0,
        };
    }
    let (mut base, mut e, mut acc) = (a, b as u64, 1i64);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    acc
}

/// A float converted to an integer dtype: truncated toward zero, NaN gives 0 and values
/// beyond the dtype's range saturate to its least or greatest value (tc's choice, as
/// Rust's `as` and the CUDA `__float2int_rz` family; PyTorch leaves these undefined).
/// To `bool`: `x != 0` (NaN is true, as PyTorch).
pub fn float_to_int(dtype: DType, x: f64) -> i64 {
    match dtype {
        DType::I32 => x as i32 as i64,
        DType::Bool => (x != 0.0) as i64,
        _ => x as i64,
    }
}

/// An integer converted to a float dtype, rounded once to nearest, ties to even (an i64
/// beyond 2^24 goes straight to f32, not by way of f64, so it is not rounded twice; f16
/// and bf16 go by way of f32, as every float rounding here does).
pub fn int_to_float(dtype: DType, v: i64) -> f64 {
    round(dtype, v as f32 as f64)
}

/// A scalar of any dtype: floats as f64 (already rounded to their dtype), integers and
/// `bool` as exact i64 (already wrapped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
}

impl Value {
    /// The constant `c` (an `Op::Scalar` or `InstOp::Const`) as a value of `dtype`: rounded
    /// for floats, truncated and wrapped for integers.
    pub fn constant(dtype: DType, c: f64) -> Value {
        if dtype.is_float() {
            Value::Float(round(dtype, c))
        } else {
            Value::Int(wrap(dtype, float_to_int(DType::I64, c)))
        }
    }

    /// The value as f64 (exact for floats and for integers up to 2^53).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Float(x) => x,
            Value::Int(i) => i as f64,
        }
    }

    /// The value as an integer (floats truncated, saturating, NaN 0).
    pub fn as_i64(self) -> i64 {
        match self {
            Value::Float(x) => float_to_int(DType::I64, x),
            Value::Int(i) => i,
        }
    }
}

/// `v` converted to `to`: the meaning of `Cast` between any two dtypes.
pub fn cast(to: DType, v: Value) -> Value {
    match (v, to.is_float()) {
        (Value::Float(x), true) => Value::Float(round(to, x)),
        (Value::Float(x), false) => Value::Int(float_to_int(to, x)),
        (Value::Int(i), true) => Value::Float(int_to_float(to, i)),
        (Value::Int(i), false) => Value::Int(wrap(to, i)),
    }
}

/// `op(x)` with operand and result of `dtype`.
pub fn unary_value(op: UnaryOp, dtype: DType, x: Value) -> Value {
    match x {
        Value::Float(x) => Value::Float(round(dtype, unary(op, x))),
        Value::Int(i) => Value::Int(unary_int(op, dtype, i)),
    }
}

/// `a op b` with operands of `dtype` (the result's dtype, or `bool` for a comparison).
pub fn binary_value(op: BinaryOp, dtype: DType, a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(binary_int(op, dtype, x, y)),
        (a, b) => {
            let r = binary(op, a.as_f64(), b.as_f64());
            if op.is_cmp() || matches!(op, BinaryOp::And | BinaryOp::Or) {
                Value::Int(r as i64)
            } else {
                Value::Float(round(dtype, r))
            }
        }
    }
}

/// `where(c, a, b)` for one element.
pub fn select(c: Value, a: Value, b: Value) -> Value {
    if c.as_f64() != 0.0 {
        a
    } else {
        b
    }
}

/// The value an integer reduction starts from: 0 for sums, the dtype's least value for
/// `max` (false for `bool`: `any`), its greatest for `min` (true for `bool`: `all`).
pub fn reduce_init_int(op: ReduceOp, dtype: DType) -> i64 {
    let (lo, hi) = match dtype {
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::Bool => (0, 1),
        _ => (i64::MIN, i64::MAX),
    };
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 0,
        ReduceOp::Max | ReduceOp::ArgMax => lo,
        ReduceOp::Min | ReduceOp::ArgMin => hi,
    }
}

/// One integer element folded into the running value (sums wrap to `dtype`).
pub fn reduce_step_int(op: ReduceOp, dtype: DType, acc: i64, x: i64) -> i64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => wrap(dtype, acc.wrapping_add(x)),
        ReduceOp::Max | ReduceOp::ArgMax => acc.max(x),
        ReduceOp::Min | ReduceOp::ArgMin => acc.min(x),
    }
}

/// The error function (`libm`'s, within 1 ulp in f64).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// `torch.maximum`: NaN if either operand is NaN (unlike `f64::max`, which drops it); of
/// two equal values (`-0` and `+0`) the second, as a vector `max` instruction gives.
pub fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

/// `torch.minimum`: NaN if either operand is NaN; of two equal values the second.
pub fn minimum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

/// The value a reduction starts from: 0 for sums and means, -inf for `max`, +inf for `min`
/// (so the max of nothing is -inf, as an empty fold gives).
pub fn reduce_init(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max | ReduceOp::ArgMax => f64::NEG_INFINITY,
        ReduceOp::Min | ReduceOp::ArgMin => f64::INFINITY,
    }
}

/// One element `x` folded into the running value `acc`. (Which zero the `max` of `-0` and
/// `+0` is depends on the order a reduction folds in, which executors choose freely.)
pub fn reduce_step(op: ReduceOp, acc: f64, x: f64) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => acc + x,
        ReduceOp::Max | ReduceOp::ArgMax => maximum(acc, x),
        ReduceOp::Min | ReduceOp::ArgMin => minimum(acc, x),
    }
}

/// The result of a reduction of `count` elements whose fold is `acc`. (For `argmax` and
/// `argmin` the fold and this are of the extreme value; `reduce` gives the position.)
pub fn reduce_finish(op: ReduceOp, acc: f64, count: u64) -> f64 {
    match op {
        ReduceOp::Mean => acc / count as f64,
        ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min | ReduceOp::ArgMax | ReduceOp::ArgMin => acc,
    }
}

/// Whether the candidate `(x, j)` replaces the best so far `(best, i)` of an `argmax`
/// (`max`) or `argmin`: NaN beats every number (PyTorch), and of equal values (or two
/// NaNs) the first position wins. Order-free: any fold of pairs by this rule picks the
/// same element.
pub fn arg_better(max: bool, x: f64, j: u64, best: f64, i: u64) -> bool {
    match (x.is_nan(), best.is_nan()) {
        (true, true) => j < i,
        (true, false) => true,
        (false, true) => false,
        _ if x == best => j < i,
        _ => (x > best) == max,
    }
}

/// The position of the first largest (`max`) or smallest element of `xs`, NaN counting
/// as both (0 for no elements).
pub fn arg_reduce(max: bool, xs: impl IntoIterator<Item = f64>) -> u64 {
    let mut best: Option<(f64, u64)> = None;
    for (j, x) in xs.into_iter().enumerate() {
        let j = j as u64;
        match best {
            Some((b, i)) if !arg_better(max, x, j, b, i) => {}
            _ => best = Some((x, j)),
        }
    }
    best.map_or(0, |(_, i)| i)
}

/// The reduction of `xs` in order (for `argmax`/`argmin`, the position, see `arg_reduce`).
pub fn reduce(op: ReduceOp, xs: impl IntoIterator<Item = f64>) -> f64 {
    if op.is_arg() {
        return arg_reduce(op == ReduceOp::ArgMax, xs) as f64;
    }
    let mut count = 0u64;
    let acc = xs.into_iter().fold(reduce_init(op), |acc, x| {
        count += 1;
        reduce_step(op, acc, x)
    });
    reduce_finish(op, acc, count)
}

/// `v` rounded to the nearest value of `dtype` (ties to even; overflow to ±inf, NaN stays
/// NaN), as f64: what storing a value, or casting it, does. f16 and bf16 round by way of
/// f32, as PyTorch's `Half`/`BFloat16` do from a double and as the executors do (they compute
/// in f32); written out, not `f16::from_f64`, whose result depends on whether the CPU has
/// F16C (with it, via f32; without, directly).
pub fn round(dtype: DType, v: f64) -> f64 {
    let v32 = v as f32;
    match dtype {
        DType::F16 => f16::from_f32(v32).to_f64(),
        DType::BF16 => bf16::from_f32(v32).to_f64(),
        // Integral dtypes hold their values exactly (see `Value`); as f64, f32's rounding.
        _ => v32 as f64,
    }
}

/// How close an f32 implementation of an op must come to its meaning, where both are
/// finite: `|got - exact| <= ulps · ulp + abs`, `ulp` the unit in the last place of the f32
/// nearest `exact` (2^-149 below the normal range). Where the meaning is NaN or ±inf the
/// implementation must give NaN or the same infinity. `ulps: 0.5` is correct rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    pub ulps: f64,
    pub abs: f64,
}

impl Accuracy {
    /// Correctly rounded: IEEE `+ - * /`, `sqrt`, and the ops that only move bits.
    pub const EXACT: Accuracy = Accuracy {
        ulps: 0.5,
        abs: 0.0,
    };

    /// Whether `got` (an f32 result) is within this accuracy of `want` (the meaning in
    /// f64, exact or already rounded to f32). `EXACT` asks for the very bits of `want`
    /// rounded to f32, the sign of a zero included.
    pub fn admits(self, got: f32, want: f64) -> bool {
        if want.is_nan() || got.is_nan() {
            return want.is_nan() && got.is_nan();
        }
        if self == Accuracy::EXACT {
            return got.to_bits() == (want as f32).to_bits();
        }
        let w = want as f32;
        if w.is_infinite() || got.is_infinite() {
            // Past f32's range: only the same infinity will do (a finite `want` that rounds
            // to infinity admits infinity).
            return got == w || (got as f64 - want).abs() <= self.abs;
        }
        (got as f64 - want).abs() <= self.ulps * ulp_f32(want) + self.abs
    }
}

/// The unit in the last place of the f32 nearest `x` (2^-149 for zero and subnormals).
pub fn ulp_f32(x: f64) -> f64 {
    let w = (x as f32).abs();
    if !w.is_normal() {
        return 2f64.powi(-149);
    }
    let e = ((w.to_bits() >> 23) as i32) - 127;
    2f64.powi(e - 23)
}

/// The smallest normal f32: f32 formulas whose intermediate overflows (`1 / (1 + e^-x)`
/// once `e^-x` is infinite) give 0 where the exact result is below it.
const FLUSH: f64 = f32::MIN_POSITIVE as f64;

/// The accuracy an executor's f32 `op` must reach (see `Accuracy`). Measured on the CPU
/// kernels (`cpu::math`, whose tests hold them to it); both executors are held to it over a
/// dense sweep of f32 inputs by tc-tests' `accuracy` (the CPU in CI, CUDA on a GPU:
/// `gpu_elementwise_ops_meet_their_accuracy`).
pub fn unary_accuracy(op: UnaryOp) -> Accuracy {
    let a = |ulps: f64, abs: f64| Accuracy { ulps, abs };
    match op {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt | UnaryOp::Square | UnaryOp::Relu => {
            Accuracy::EXACT
        }
        // 1 / sqrt(x): two correctly rounded operations.
        UnaryOp::Rsqrt => a(1.5, 0.0),
        // The CPU: polynomial `e^x` within 1 ulp; `log`, `sin`, `cos` computed in f64 and
        // rounded once (0.5 ulp and a sliver). CUDA: libdevice's `logf` (1 ulp), `expf`,
        // `sinf`, `cosf` (2: `cuda_unary_accuracy`).
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sin | UnaryOp::Cos => a(1.0, 0.0),
        // m / (m + 2), m = e^{±2|x|} - 1: three roundings near 1 ulp each at worst.
        UnaryOp::Tanh => a(3.0, 0.0),
        UnaryOp::Sigmoid => a(3.0, FLUSH),
        // x / (1 + e^-x): 0 once e^-x overflows, where the exact value is still ~1e-37; on
        // CUDA also 0 where 1 / (1 + e^-x) is below 2^-126 (the refined approximate
        // reciprocal flushes it, `tc_recip_ge1`): there |x| < 88.8, so |silu x| < 1.05e-36.
        UnaryOp::Silu => a(3.0, 2e-36),
        // The CPU: Cephes' polynomial below 1 (2.43 ulp at 0.467, admitted by the absolute
        // term: 1.3e-7 there), a fitted polynomial from 1 on (within 1e-7); CUDA: libdevice's
        // `erff` (2 ulp documented). Both measured by the elementwise sweep.
        UnaryOp::Erf => a(2.0, 3e-7),
        UnaryOp::Not => Accuracy::EXACT,
        // 0.5·x·(1 + erf(x/√2)): erf's absolute error, scaled by x/2 where 1 + erf cancels.
        UnaryOp::Gelu => a(4.0, 1e-6),
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round | UnaryOp::Sign | UnaryOp::Reciprocal => {
            Accuracy::EXACT
        }
        // The CPU computes `log1p`, `expm1` and `tan` in f64 and rounds once (0.5 ulp and a
        // sliver: `cpu::math::in_f64`); the bounds are CUDA's libdevice's (`log1pf`, `expm1f`
        // 1 ulp, `tanf` 4: `cuda_unary_accuracy`) and, for `log1p`, glibc's `log1pf`, which
        // the CPU used before (1.29 ulp at 0.41421396, where it switches forms at √2 - 1).
        UnaryOp::Log1p => a(1.5, 0.0),
        UnaryOp::Expm1 => a(1.0, 0.0),
        UnaryOp::Tan => a(2.0, 0.0),
        // log1p(e^x): e^x's ulp, then log1p's; 0 once e^x underflows (exact ~1e-45).
        UnaryOp::Softplus => a(3.0, FLUSH),
        // x / (1 + e^(-2u)), u = √(2/π)(x + 0.044715x³): the exponential's error, amplified
        // by u's rounding (2·u·ulp relative) where |u| is large and the result tiny.
        UnaryOp::GeluTanh => a(8.0, 1e-6),
    }
}

/// The accuracy an executor's f32 `op` must reach (see `Accuracy`).
pub fn binary_accuracy(op: BinaryOp) -> Accuracy {
    match op {
        BinaryOp::Add
        | BinaryOp::Sub
        | BinaryOp::Mul
        | BinaryOp::Div
        | BinaryOp::Maximum
        | BinaryOp::Minimum
        | BinaryOp::Cmp(_)
        | BinaryOp::And
        | BinaryOp::Or => Accuracy::EXACT,
        // The CPU computes it in f64 and rounds once (0.5 ulp and a sliver:
        // `cpu::math::in_f64::pow`); 1 ulp was glibc's `powf`, which it used before (CUDA's
        // `powf`: 4, `cuda_binary_accuracy`).
        BinaryOp::Pow => Accuracy {
            ulps: 1.0,
            abs: 0.0,
        },
    }
}

/// The maximum ulp errors NVIDIA documents for the CUDA maths library's f32 functions that
/// CUDA kernels call (CUDA C++ Programming Guide, "Mathematical Functions", Table
/// "Single-Precision Mathematical Standard Library Functions with Maximum ULP Error",
/// compute capability 5.2 on, without fast maths). Where a figure is above
/// `unary_accuracy`'s, the CUDA contract (`cuda_unary_accuracy`) takes NVIDIA's: tc's kernels
/// on the GPU give what PyTorch's own CUDA kernels give, which call the same functions.
/// `codegen`'s tests check that every library function a kernel calls is listed here.
pub const CUDA_LIBRARY_ULPS: &[(&str, f64)] = &[
    ("expf", 2.0),
    ("logf", 1.0),
    ("sinf", 2.0),
    ("cosf", 2.0),
    ("tanf", 4.0),
    ("tanhf", 2.0),
    ("erff", 2.0),
    ("log1pf", 1.0),
    ("expm1f", 1.0),
    ("powf", 4.0),
    // Correctly rounded without fast maths (and exact: these only move bits).
    ("sqrtf", 0.5),
    ("fabsf", 0.5),
    ("floorf", 0.5),
    ("ceilf", 0.5),
    ("rintf", 0.5),
    ("fmaf", 0.5),
];

/// NVIDIA's documented bound for `function` (`CUDA_LIBRARY_ULPS`).
pub fn cuda_library_ulps(function: &str) -> Option<f64> {
    CUDA_LIBRARY_ULPS
        .iter()
        .find(|(name, _)| *name == function)
        .map(|&(_, ulps)| ulps)
}

/// The accuracy of f32 `op` in CUDA kernels (compiled as `tc run` compiles them): the ops
/// whose CUDA code is one call of the maths library at NVIDIA's documented bound where it is
/// above `unary_accuracy`'s (`exp`, `sin`, `cos` 2 ulp, `tan` 4), and the ones built on
/// `expf` (sigmoid, silu, softplus, gelu_tanh: `1 / (1 + e^-x)` passes the exponential's
/// relative error on with a factor below 1) one ulp wider than on the CPU, the extra ulp of
/// NVIDIA's `expf` over tc's. Every other op keeps `unary_accuracy`'s bound. The GPU's
/// sweep checks all of this (`gpu_elementwise_ops_meet_their_accuracy`).
pub fn cuda_unary_accuracy(op: UnaryOp) -> Accuracy {
    let cpu = unary_accuracy(op);
    let widen = |ulps: f64| Accuracy {
        ulps: cpu.ulps.max(ulps),
        abs: cpu.abs,
    };
    match op {
        UnaryOp::Exp => widen(cuda_library_ulps("expf").unwrap_or(cpu.ulps)),
        UnaryOp::Sin => widen(cuda_library_ulps("sinf").unwrap_or(cpu.ulps)),
        UnaryOp::Cos => widen(cuda_library_ulps("cosf").unwrap_or(cpu.ulps)),
        UnaryOp::Tan => widen(cuda_library_ulps("tanf").unwrap_or(cpu.ulps)),
        UnaryOp::Sigmoid | UnaryOp::Silu | UnaryOp::Softplus | UnaryOp::GeluTanh => {
            widen(cpu.ulps + 1.0)
        }
        _ => cpu,
    }
}

/// `binary_accuracy` in CUDA kernels (see `cuda_unary_accuracy`): `powf` at NVIDIA's 4 ulp.
pub fn cuda_binary_accuracy(op: BinaryOp) -> Accuracy {
    let cpu = binary_accuracy(op);
    match op {
        BinaryOp::Pow => Accuracy {
            ulps: cpu.ulps.max(cuda_library_ulps("powf").unwrap_or(cpu.ulps)),
            abs: cpu.abs,
        },
        _ => cpu,
    }
}

/// The accuracy of f32 `op` in CUDA kernels compiled with fast maths (`tc run --fast-math`:
/// FMA contraction, `div.full.f32`, `sqrt.approx.f32`; `nvrtc::FAST_MATH_OPTIONS`): the
/// ops whose code those options approximate get NVIDIA's documented bounds (CUDA C++
/// Programming Guide, "Mathematical Functions": `x/y` 2 ulp over the full range, `1/x` 1
/// ulp, `sqrtf` 1 ulp from compute capability 5.2); `rsqrt` is an approximate square root
/// and reciprocal, each within 1 ulp, and a rounding. Every other op keeps
/// `cuda_unary_accuracy`'s bound: its code has no `/` or `sqrt`, and contraction only leaves
/// a product unrounded before the add it feeds. The GPU's sweep checks all of this
/// (`gpu_elementwise_ops_meet_their_fast_math_accuracy`).
pub fn fast_math_unary_accuracy(op: UnaryOp) -> Accuracy {
    match op {
        UnaryOp::Sqrt | UnaryOp::Reciprocal => Accuracy {
            ulps: 1.0,
            abs: 0.0,
        },
        UnaryOp::Rsqrt => Accuracy {
            ulps: 2.5,
            abs: 0.0,
        },
        _ => cuda_unary_accuracy(op),
    }
}

/// `cuda_binary_accuracy` under fast maths (see `fast_math_unary_accuracy`): `/` within 2
/// ulp.
pub fn fast_math_binary_accuracy(op: BinaryOp) -> Accuracy {
    match op {
        BinaryOp::Div => Accuracy {
            ulps: 2.0,
            abs: 0.0,
        },
        _ => cuda_binary_accuracy(op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_minimum_max_min_and_relu_propagate_nan() {
        let nan = f64::NAN;
        assert!(binary(BinaryOp::Maximum, (-1f64).ln(), 0.0).is_nan());
        assert!(binary(BinaryOp::Minimum, 0.0, nan).is_nan());
        assert!(unary(UnaryOp::Relu, nan).is_nan());
        assert!(reduce(ReduceOp::Max, [1.0, nan, 2.0]).is_nan());
        assert!(reduce(ReduceOp::Min, [nan, 1.0]).is_nan());
        assert_eq!(reduce(ReduceOp::Max, []), f64::NEG_INFINITY);
        assert_eq!(reduce(ReduceOp::Mean, [1.0, 2.0, 6.0]), 3.0);
    }

    #[test]
    fn signed_zeros_infinities_and_subnormals() {
        assert!(unary(UnaryOp::Neg, 0.0).is_sign_negative());
        assert!(unary(UnaryOp::Relu, -0.0).is_sign_positive());
        assert!(maximum(0.0, -0.0).is_sign_negative() && maximum(-0.0, 0.0).is_sign_positive());
        assert!(minimum(-0.0, 0.0).is_sign_positive() && minimum(0.0, -0.0).is_sign_negative());
        assert_eq!(unary(UnaryOp::Rsqrt, -0.0), f64::NEG_INFINITY);
        assert_eq!(unary(UnaryOp::Exp, f64::NEG_INFINITY), 0.0);
        assert_eq!(unary(UnaryOp::Sigmoid, f64::NEG_INFINITY), 0.0);
        assert!(unary(UnaryOp::Silu, f64::NEG_INFINITY).is_nan());
        assert_eq!(binary(BinaryOp::Pow, f64::NAN, 0.0), 1.0);
        assert_eq!(binary(BinaryOp::Div, 1.0, -0.0), f64::NEG_INFINITY);
        let sub = 2f64.powi(-149);
        assert_eq!(round(DType::F32, sub), sub);
        assert_eq!(round(DType::F32, sub * 0.49), 0.0);
        assert_eq!(round(DType::F16, 2f64.powi(-24)), 2f64.powi(-24));
        assert_eq!(round(DType::F16, 65520.0), f64::INFINITY);
        assert_eq!(round(DType::BF16, 1.0 + 2f64.powi(-8)), 1.0);
        assert!(round(DType::BF16, f64::NAN).is_nan());
        // Just above the f16 tie 1 + 2^-11: f32 drops the 2^-40, and the tie goes to even.
        let above_tie = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(round(DType::F16, above_tie), 1.0);
        assert_eq!(
            round(DType::BF16, 1.0 + 2f64.powi(-8) + 2f64.powi(-40)),
            1.0
        );
    }

    #[test]
    fn accuracy_is_in_ulps_of_the_result() {
        assert_eq!(ulp_f32(1.0), 2f64.powi(-23));
        assert_eq!(ulp_f32(0.0), 2f64.powi(-149));
        let one_up = f32::from_bits(1f32.to_bits() + 1);
        assert!(Accuracy {
            ulps: 1.0,
            abs: 0.0
        }
        .admits(one_up, 1.0));
        assert!(!Accuracy::EXACT.admits(one_up, 1.0));
        assert!(Accuracy::EXACT.admits(f32::INFINITY, 1e300));
        assert!(!Accuracy::EXACT.admits(f32::MAX, f64::INFINITY));
        assert!(!Accuracy::EXACT.admits(0.0, f64::NAN));
        assert!(!Accuracy::EXACT.admits(-0.0, 0.0));
        assert!(Accuracy {
            ulps: 1.0,
            abs: 0.0
        }
        .admits(-0.0, 0.0));
    }

    #[test]
    fn integers_wrap_and_bools_are_nonzero() {
        assert_eq!(
            binary_int(BinaryOp::Add, DType::I32, i32::MAX as i64, 1),
            i32::MIN as i64
        );
        assert_eq!(binary_int(BinaryOp::Mul, DType::I64, i64::MAX, 2), -2);
        assert_eq!(binary_int(BinaryOp::Sub, DType::I64, i64::MIN, 1), i64::MAX);
        assert_eq!(
            unary_int(UnaryOp::Neg, DType::I32, i32::MIN as i64),
            i32::MIN as i64
        );
        assert_eq!(unary_int(UnaryOp::Abs, DType::I64, i64::MIN), i64::MIN);
        assert_eq!(
            binary_int(BinaryOp::Pow, DType::I32, 3, 21),
            3i32.wrapping_pow(21) as i64
        );
        assert_eq!(binary_int(BinaryOp::Pow, DType::I64, -1, -3), -1);
        assert_eq!(binary_int(BinaryOp::Pow, DType::I64, 2, -1), 0);
        assert_eq!(binary_int(BinaryOp::Add, DType::Bool, 1, 1), 1);
        assert_eq!(binary_int(BinaryOp::Sub, DType::Bool, 1, 1), 0);
        assert_eq!(binary_int(BinaryOp::Cmp(CmpOp::Lt), DType::I64, -5, 3), 1);
        assert_eq!(binary_int(BinaryOp::And, DType::Bool, 1, 0), 0);
        assert_eq!(unary_int(UnaryOp::Not, DType::Bool, 0), 1);
        assert_eq!(reduce_init_int(ReduceOp::Max, DType::Bool), 0);
        assert_eq!(reduce_init_int(ReduceOp::Min, DType::Bool), 1);
        assert_eq!(
            reduce_step_int(ReduceOp::Sum, DType::I64, i64::MAX, 1),
            i64::MIN
        );
    }

    #[test]
    fn casts_truncate_saturate_and_read_nan_as_zero() {
        assert_eq!(float_to_int(DType::I32, 2.9), 2);
        assert_eq!(float_to_int(DType::I32, -2.9), -2);
        assert_eq!(float_to_int(DType::I32, f64::NAN), 0);
        assert_eq!(float_to_int(DType::I32, 1e10), i32::MAX as i64);
        assert_eq!(float_to_int(DType::I64, f64::NEG_INFINITY), i64::MIN);
        assert_eq!(float_to_int(DType::Bool, f64::NAN), 1);
        assert_eq!(float_to_int(DType::Bool, -0.0), 0);
        // i64 to f32 rounds once: 2^53 + 1 goes to 2^53 in f32 directly.
        assert_eq!(int_to_float(DType::F32, (1 << 53) + 1), 2f64.powi(53));
        assert_eq!(int_to_float(DType::F32, (1 << 24) + 1), 2f64.powi(24));
        assert_eq!(cast(DType::Bool, Value::Float(0.25)), Value::Int(1));
        assert_eq!(cast(DType::I32, Value::Int(1 << 32)), Value::Int(0));
        assert_eq!(Value::constant(DType::I64, -3.0), Value::Int(-3));
    }

    #[test]
    fn comparisons_follow_ieee_nan_and_signed_zero() {
        let nan = f64::NAN;
        for op in CmpOp::ALL {
            assert_eq!(compare(op, nan, 1.0), op == CmpOp::Ne, "{op:?}");
            assert_eq!(compare(op, nan, nan), op == CmpOp::Ne, "{op:?}");
        }
        assert!(compare(CmpOp::Eq, 0.0, -0.0));
        assert!(compare(CmpOp::Lt, f64::NEG_INFINITY, -f64::MAX));
        assert_eq!(
            binary_value(
                BinaryOp::Cmp(CmpOp::Ge),
                DType::F32,
                Value::Float(1.0),
                Value::Float(1.0)
            ),
            Value::Int(1)
        );
        assert_eq!(
            select(
                Value::Int(0),
                Value::Float(1.0),
                Value::Float(f64::INFINITY)
            ),
            Value::Float(f64::INFINITY)
        );
    }
}
