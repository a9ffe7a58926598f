//! Masked tiles of an attention kernel: which tiles of its logits (a range of queries by a
//! range of keys) the prologue sets entirely to one constant — a causal or sliding-window
//! mask compared from `arange`s, `where(i >= j, s, -inf)` — found by evaluating the prologue
//! over intervals (each index map's least and greatest value over the tile; comparisons of
//! intervals that always or never hold). Both executors skip such tiles (`key_tiles`): with
//! a mask of `-inf` a masked tile adds nothing to a row's softmax, whatever its position;
//! with a finite constant `c` it adds nothing once every row's running max exceeds `c` by
//! more than `SKIP_MARGIN` (then `exp(c - max)` is 0 in f32 and the rescale is 1), which the
//! executors check as they reach it, computing the tile when the check fails.

use crate::ir::{eval, BinaryOp, CmpOp, DType, UnaryOp};
use crate::schedule::{AttentionKernel, InstOp, SCORE};
use std::ops::Range;

/// How far above a finite mask constant every row's running max must be for a masked tile
/// to be skipped: `exp(-SKIP_MARGIN)` is 0 in f32 (below 2^-149), with room for rounding.
pub const SKIP_MARGIN: f32 = 128.0;

/// A prologue value over a tile: integers between two bounds, one float for the whole tile,
/// or anything.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Iv {
    Int(i128, i128),
    Float(f32),
    Top,
}

/// The constant every logit of the tile `rows × keys` (over every batch index) equals, if
/// the prologue makes them one.
pub fn masked_value(a: &AttentionKernel, rows: Range<u64>, keys: Range<u64>) -> Option<f32> {
    if rows.is_empty() || keys.is_empty() {
        return None;
    }
    let nb = a.batch.len();
    // Each axis's least and greatest index: the batch axes all of theirs.
    let mut ranges: Vec<(i128, i128)> = a
        .batch
        .iter()
        .map(|&b| (0, b.saturating_sub(1) as i128))
        .collect();
    ranges.push((rows.start as i128, rows.end as i128 - 1));
    ranges.push((keys.start as i128, keys.end as i128 - 1));
    let mut vals: Vec<Iv> = Vec::with_capacity(a.body.len());
    for inst in &a.body {
        let dt = inst.dtype;
        let v = match inst.op {
            InstOp::Load(SCORE) | InstOp::Load(_) => Iv::Top,
            InstOp::Const(c) if dt.is_integral() => {
                let i = eval::Value::constant(dt, c).as_i64() as i128;
                Iv::Int(i, i)
            }
            InstOp::Const(c) => Iv::Float(eval::round(dt, c) as f32),
            InstOp::Index {
                offset,
                ref strides,
            } => {
                if strides.len() != nb + 2 {
                    Iv::Top
                } else {
                    let (mut lo, mut hi) = (offset as i128, offset as i128);
                    for (&s, &(a0, a1)) in strides.iter().zip(&ranges) {
                        let (p, q) = (s as i128 * a0, s as i128 * a1);
                        lo += p.min(q);
                        hi += p.max(q);
                    }
                    int(dt, lo, hi)
                }
            }
            InstOp::Unary(u, x) => match (u, vals[x]) {
                (UnaryOp::Neg, Iv::Int(lo, hi)) => int(dt, -hi, -lo),
                (UnaryOp::Not, Iv::Int(lo, hi)) if lo >= 0 && hi <= 1 => Iv::Int(1 - hi, 1 - lo),
                (UnaryOp::Neg, Iv::Float(f)) => Iv::Float(-f),
                _ => Iv::Top,
            },
            InstOp::Binary(b, x, y) => binary(b, dt, vals[x], vals[y]),
            InstOp::Cast(x) => match vals[x] {
                Iv::Int(lo, hi) if dt == DType::Bool => {
                    if lo > 0 || hi < 0 {
                        Iv::Int(1, 1)
                    } else if lo == 0 && hi == 0 {
                        Iv::Int(0, 0)
                    } else {
                        Iv::Int(0, 1)
                    }
                }
                Iv::Int(lo, hi) if dt.is_integral() => int(dt, lo, hi),
                Iv::Int(lo, hi) if lo == hi => Iv::Float(eval::round(dt, lo as f64) as f32),
                Iv::Float(f) if !dt.is_integral() => Iv::Float(eval::round(dt, f as f64) as f32),
                _ => Iv::Top,
            },
            InstOp::Where(c, x, y) => match vals[c] {
                Iv::Int(1, 1) => vals[x],
                Iv::Int(0, 0) => vals[y],
                _ if vals[x] == vals[y] && vals[x] != Iv::Top => vals[x],
                _ => Iv::Top,
            },
            InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => Iv::Top,
        };
        vals.push(v);
    }
    match vals.get(a.logits) {
        Some(Iv::Float(c)) if !c.is_nan() && *c != f32::INFINITY => Some(*c),
        _ => None,
    }
}

/// An integer interval of `dtype`, or `Top` when it leaves the dtype's range (the executors
/// wrap there).
fn int(dtype: DType, lo: i128, hi: i128) -> Iv {
    let (min, max) = match dtype {
        DType::I32 => (i32::MIN as i128, i32::MAX as i128),
        DType::I64 => (i64::MIN as i128, i64::MAX as i128),
        DType::Bool => (0, 1),
        _ => return Iv::Top,
    };
    if lo < min || hi > max {
        Iv::Top
    } else {
        Iv::Int(lo, hi)
    }
}

fn binary(b: BinaryOp, dt: DType, x: Iv, y: Iv) -> Iv {
    match (x, y) {
        (Iv::Int(a0, a1), Iv::Int(b0, b1)) => match b {
            BinaryOp::Add => int(dt, a0 + b0, a1 + b1),
            BinaryOp::Sub => int(dt, a0 - b1, a1 - b0),
            BinaryOp::Mul => {
                let ps = [a0 * b0, a0 * b1, a1 * b0, a1 * b1];
                int(
                    dt,
                    *ps.iter().min().unwrap_or(&0),
                    *ps.iter().max().unwrap_or(&0),
                )
            }
            BinaryOp::Maximum => int(dt, a0.max(b0), a1.max(b1)),
            BinaryOp::Minimum => int(dt, a0.min(b0), a1.min(b1)),
            BinaryOp::And => Iv::Int(a0.min(b0).clamp(0, 1), a1.min(b1).clamp(0, 1)),
            BinaryOp::Or => Iv::Int(a0.max(b0).clamp(0, 1), a1.max(b1).clamp(0, 1)),
            BinaryOp::Cmp(c) => {
                // Always true, always false, or either.
                let (always, never) = match c {
                    CmpOp::Lt => (a1 < b0, a0 >= b1),
                    CmpOp::Le => (a1 <= b0, a0 > b1),
                    CmpOp::Gt => (a0 > b1, a1 <= b0),
                    CmpOp::Ge => (a0 >= b1, a1 < b0),
                    CmpOp::Eq => (a0 == a1 && b0 == b1 && a0 == b0, a1 < b0 || b1 < a0),
                    CmpOp::Ne => (a1 < b0 || b1 < a0, a0 == a1 && b0 == b1 && a0 == b0),
                };
                if always {
                    Iv::Int(1, 1)
                } else if never {
                    Iv::Int(0, 0)
                } else {
                    Iv::Int(0, 1)
                }
            }
            BinaryOp::Div | BinaryOp::Pow => Iv::Top,
        },
        // One float for the whole tile on both sides: f32 arithmetic, rounded to the dtype,
        // as the executors compute it (IEEE `+ - * /` are exact in f32).
        (Iv::Float(p), Iv::Float(q)) if !dt.is_integral() => {
            let v = match b {
                BinaryOp::Add => p + q,
                BinaryOp::Sub => p - q,
                BinaryOp::Mul => p * q,
                BinaryOp::Div => p / q,
                _ => return Iv::Top,
            };
            Iv::Float(eval::round(dt, v as f64) as f32)
        }
        _ => Iv::Top,
    }
}

/// Which key tiles each query tile computes.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyTiles {
    /// For query tile `t` (queries `t·bq ..`), the key tiles `[first, end)` (in tiles of
    /// `bk` keys) outside which every tile is masked to `masked`; `[0, all)` without a mask.
    pub ranges: Vec<(u64, u64)>,
    /// The masked logits' constant (`-inf`, or a finite value: see the module doc); `None`
    /// when no tile is masked.
    pub masked: Option<f32>,
}

impl KeyTiles {
    /// Tiles (query tile, key tile) inside the ranges: the ones computed for certain.
    pub fn computed(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b - a).sum()
    }
}

/// The key tiles of `bk` keys each tile of `bq` queries must compute: every tile outside
/// the range is masked to one constant (the first masked tile's; a tile masked to another
/// counts as computed).
pub fn key_tiles(a: &AttentionKernel, bq: u64, bk: u64) -> KeyTiles {
    let qt = a.m.div_ceil(bq);
    let kt = a.n.div_ceil(bk);
    let mut masked: Option<f32> = None;
    let mut ranges = Vec::with_capacity(qt as usize);
    for t in 0..qt {
        let rows = t * bq..((t + 1) * bq).min(a.m);
        let is_masked = |j: u64| {
            let keys = j * bk..((j + 1) * bk).min(a.n);
            masked_value(a, rows.clone(), keys)
        };
        let mut first = 0;
        while first < kt {
            match (is_masked(first), masked) {
                (Some(c), None) => masked = Some(c),
                (Some(c), Some(m)) if c.to_bits() == m.to_bits() => {}
                _ => break,
            }
            first += 1;
        }
        let mut end = kt;
        while end > first {
            match (is_masked(end - 1), masked) {
                (Some(c), None) => masked = Some(c),
                (Some(c), Some(m)) if c.to_bits() == m.to_bits() => {}
                _ => break,
            }
            end -= 1;
        }
        ranges.push((first, end));
    }
    KeyTiles { ranges, masked }
}
