//! The numerics of every elementwise op and reduction on the CPU, in f32, defined as PyTorch
//! defines them (exact-erf `gelu`, NaN-propagating `maximum`/`minimum`/`max`/`min`).
//! One scalar function per op, plus block loops the fused interpreter calls.

use half::{bf16, f16};
use tc_compiler::ir::{BinaryOp, DType, UnaryOp};

/// `op(x)` in f32.
#[inline]
pub fn unary(op: UnaryOp, x: f32) -> f32 {
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
        // torch.relu propagates NaN.
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Erf => libm::erff(x),
        UnaryOp::Square => x * x,
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
pub fn unary_block(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
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
        UnaryOp::Exp => each!(|x| x.exp()),
        UnaryOp::Sigmoid => each!(|x| 1.0 / (1.0 + (-x).exp())),
        UnaryOp::Silu => each!(|x| x / (1.0 + (-x).exp())),
        other => each!(|x| unary(other, x)),
    }
}

/// One operand of a block operation: a value per element, or one value for the block.
#[derive(Clone, Copy)]
pub enum Operand<'a> {
    Block(&'a [f32]),
    Scalar(f32),
}

/// `dst[i] = a[i] op b[i]` with either side possibly a scalar.
pub fn binary_block(op: BinaryOp, a: Operand<'_>, b: Operand<'_>, dst: &mut [f32]) {
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
        BinaryOp::Pow => apply(a, b, dst, pow),
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
pub fn block_sum(xs: &[f32]) -> f32 {
    if xs.len() > 64 {
        let (a, b) = xs.split_at(xs.len() / 2);
        return block_sum(a) + block_sum(b);
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
