//! Element types and tensor types: dtypes, named dims and shapes.
//!
//! Shapes are concrete (dims are substituted before checking) but each axis remembers the
//! dim name it came from, so diagnostics can print `f32[B=64, D=1024]`.

use serde::Serialize;
use std::fmt;

/// The element types of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// The floating dtypes.
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element (`bool` is one byte).
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }

    /// `f32`, `f16`, `bf16`.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// `i32`, `i64`.
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    pub fn is_bool(self) -> bool {
        self == DType::Bool
    }

    /// Integers and `bool`: the dtypes whose values are exact integers (held in i64 by
    /// the executors, never in f32 lanes).
    pub fn is_integral(self) -> bool {
        !self.is_float()
    }

    /// The category in PyTorch's promotion order: `bool` < integers < floats.
    pub fn category(self) -> u8 {
        match self {
            DType::Bool => 0,
            DType::I32 | DType::I64 => 1,
            DType::F32 | DType::F16 | DType::BF16 => 2,
        }
    }

    /// The dtype a float-only function (`exp`, `softmax`, `mean`, `/`, …) computes in for
    /// an operand of this dtype: floats stay, integers and `bool` give f32.
    pub fn float_or_f32(self) -> DType {
        if self.is_float() {
            self
        } else {
            DType::F32
        }
    }

    /// The name used in source, in reports and in file formats.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// PyTorch's promotion between two tensors of the same priority (both dimensioned, or
    /// both rank 0): the higher category wins (`bool` < integers < floats; `i64 + f16` is
    /// f16); within integers the wider; within floats equal types stay and anything else
    /// (f16 with bf16, either with f32) gives f32.
    pub fn promote(a: DType, b: DType) -> DType {
        if a == b {
            return a;
        }
        match a.category().cmp(&b.category()) {
            std::cmp::Ordering::Greater => a,
            std::cmp::Ordering::Less => b,
            std::cmp::Ordering::Equal if a.is_int() => DType::I64,
            std::cmp::Ordering::Equal => DType::F32,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One axis of a shape: its size, and the dim name it was written with, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Dim {
    pub size: u64,
    pub name: Option<String>,
}

impl Dim {
    pub fn new(size: u64) -> Dim {
        Dim { size, name: None }
    }

    pub fn named(name: impl Into<String>, size: u64) -> Dim {
        Dim {
            size,
            name: Some(name.into()),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}={}", self.size),
            None => write!(f, "{}", self.size),
        }
    }
}

/// The static type of a tensor value: dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Axis sizes without names.
    pub fn sizes(&self) -> Vec<u64> {
        self.shape.iter().map(|d| d.size).collect()
    }

    /// Number of elements; `None` when it overflows 64 bits.
    pub fn numel(&self) -> Option<u64> {
        numel(&self.sizes())
    }

    /// Bytes of a contiguous buffer of this type; `None` on overflow.
    pub fn bytes(&self) -> Option<u64> {
        self.numel()?.checked_mul(self.dtype.size())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Product of sizes, `None` on 64-bit overflow.
pub fn numel(sizes: &[u64]) -> Option<u64> {
    sizes.iter().try_fold(1u64, |acc, &s| acc.checked_mul(s))
}

/// Row-major (C-order) strides, in elements, of a contiguous tensor of `sizes`.
pub fn contiguous_strides(sizes: &[u64]) -> Vec<i64> {
    let mut strides = vec![0i64; sizes.len()];
    let mut acc: i64 = 1;
    for i in (0..sizes.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(sizes[i].max(1) as i64);
    }
    strides
}

/// NumPy broadcasting, the one rule every part of tc follows: shapes align from the right
/// (a missing axis counts as 1) and two sizes broadcast when equal or when one is 1. Each
/// result axis is the axis of the side whose size wins; where the sizes are equal, `a`'s
/// if `prefer_a(a_axis, b_axis)`, else `b`'s. `None` when the shapes do not broadcast.
pub fn broadcast_axes<T: Clone>(
    a: &[T],
    b: &[T],
    size: impl Fn(&T) -> u64,
    prefer_a: impl Fn(&T, &T) -> bool,
) -> Option<Vec<T>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = (i + a.len()).checked_sub(n).map(|j| &a[j]);
            let y = (i + b.len()).checked_sub(n).map(|j| &b[j]);
            match (x, y) {
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (Some(x), Some(y)) if size(x) == size(y) => {
                    Some(if prefer_a(x, y) { x } else { y }.clone())
                }
                (Some(x), Some(y)) if size(y) == 1 => Some(x.clone()),
                (Some(x), Some(y)) if size(x) == 1 => Some(y.clone()),
                _ => None,
            }
        })
        .collect()
}

/// NumPy broadcasting of two shapes given by their sizes (see `broadcast_axes`).
pub fn broadcast(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    broadcast_axes(a, b, |&s| s, |_, _| true)
}

/// NumPy broadcasting of two shapes with dim names: a result axis keeps the name of the
/// side whose size wins, `a`'s when both sizes are equal and `a`'s axis is named.
pub fn broadcast_dims(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    broadcast_axes(a, b, |d| d.size, |x, _| x.name.is_some())
}

/// The shape of a reduction of `shape` over `axes`: each reduced axis kept as 1 with
/// `keepdim`, else dropped.
pub fn reduced_shape(shape: &[Dim], axes: &[usize], keepdim: bool) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keepdim) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::new(1)),
            (true, false) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_aligns_from_the_right_and_stretches_ones() {
        assert_eq!(broadcast(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast(&[1], &[0]), Some(vec![0]));
        assert_eq!(broadcast(&[2, 3], &[3, 2]), None);
        let a = [Dim::named("B", 4), Dim::new(1)];
        let b = [Dim::new(4), Dim::named("D", 8)];
        let out = broadcast_dims(&a, &b).expect("broadcasts");
        assert_eq!(out, vec![Dim::named("B", 4), Dim::named("D", 8)]);
        let out = broadcast_dims(&[Dim::new(4)], &[Dim::named("N", 4)]).expect("broadcasts");
        assert_eq!(out, vec![Dim::named("N", 4)]);
    }

    #[test]
    fn reduced_shapes_keep_or_drop_their_axes() {
        let s = [Dim::named("B", 2), Dim::new(3), Dim::named("D", 4)];
        assert_eq!(
            reduced_shape(&s, &[1], true),
            vec![Dim::named("B", 2), Dim::new(1), Dim::named("D", 4)]
        );
        assert_eq!(reduced_shape(&s, &[0, 2], false), vec![Dim::new(3)]);
        assert_eq!(reduced_shape(&s, &[], false), s.to_vec());
    }
}
