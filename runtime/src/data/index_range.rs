//! Seeded random data for integer leaves the program uses as indices: an input or param
//! read (through views) as the index of `take`, `gather` or `one_hot` gets values in range,
//! `[0, n)` for the smallest size `n` it indexes, so a program such as
//! `examples/gpt_block.tx` runs without data files, as a float program does. (Seeded
//! integers are otherwise small and of both signs: `random::random_tensor`.) The values are
//! `random_tensor`'s, taken modulo `n`: the same seed and name give the same tensor.

use super::random::random_tensor;
use crate::tensor::HostTensor;
use tc_compiler::ir::{DType, Graph, Leaf, NodeId, Op};

/// The smallest size that leaf node `leaf` is used to index, if it is an index.
pub fn index_range(graph: &Graph, leaf: NodeId) -> Option<u64> {
    let root = |mut n: NodeId| {
        while let Op::View(_, a) = graph.node(n).op {
            n = a;
        }
        n
    };
    graph
        .ids()
        .filter_map(|id| match graph.node(id).op {
            Op::Take { arg, index, axis } | Op::Gather { arg, index, axis } => {
                (root(index) == leaf).then(|| graph.ty(arg).shape[axis].size)
            }
            Op::OneHot { arg, classes } => (root(arg) == leaf).then_some(classes),
            _ => None,
        })
        .min()
}

/// The seeded random tensor for `leaf` of `graph`: `random_tensor`'s, with an integer
/// index leaf's values brought into its range (see the module doc).
pub fn random_leaf(graph: &Graph, leaf: &Leaf, seed: u64) -> HostTensor {
    let t = random_tensor(seed, &leaf.name, leaf.ty.dtype, &leaf.ty.sizes());
    let Some(n) = index_range(graph, leaf.node).filter(|_| leaf.ty.dtype.is_int()) else {
        return t;
    };
    let n = n as i64;
    let bytes = match leaf.ty.dtype {
        DType::I32 => t
            .bytes
            .chunks_exact(4)
            .flat_map(|c| {
                let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64;
                (v.rem_euclid(n) as i32).to_le_bytes()
            })
            .collect(),
        _ => t
            .bytes
            .chunks_exact(8)
            .flat_map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b).rem_euclid(n).to_le_bytes()
            })
            .collect(),
    };
    HostTensor { bytes, ..t }
}
