//! Strided layouts: how a view indexes the storage of the value it views.
//!
//! Every materialised value is contiguous (row-major). A view is an index map onto its
//! root's storage: element `[i0, i1, …]` lives at `offset + Σ ik·strides[k]` (in elements).
//! Broadcast axes have stride 0. A slice (`x[2:, ::2]`) moves the offset and multiplies
//! strides by its steps; an integer index moves the offset and drops the axis. A `reshape` gets strides when they exist (the rule of
//! `torch.Tensor.view`); when none exist the checker materialises the operand first.

use super::graph::{Graph, NodeId, Op, ViewOp};
use super::types::contiguous_strides;
use serde::Serialize;

/// Where a node's elements live: in the storage of `root`, at `offset + Σ i·strides`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Layout {
    /// The non-view node whose buffer holds the elements.
    pub root: NodeId,
    /// Element offset into the root's storage.
    pub offset: i64,
    /// Element stride per axis of the viewed shape (0 on broadcast axes).
    pub strides: Vec<i64>,
}

impl Layout {
    /// The layout of a materialised value: itself, contiguous.
    pub fn contiguous(root: NodeId, sizes: &[u64]) -> Layout {
        Layout {
            root,
            offset: 0,
            strides: contiguous_strides(sizes),
        }
    }

    /// True when the layout reads the root's storage in plain row-major order.
    pub fn is_contiguous(&self, sizes: &[u64]) -> bool {
        self.offset == 0 && strides_match(&self.strides, &contiguous_strides(sizes), sizes)
    }
}

/// Strides equal up to axes of size 1 (whose stride never matters).
fn strides_match(a: &[i64], b: &[i64], sizes: &[u64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .zip(sizes)
            .all(|((x, y), &s)| s == 1 || x == y)
}

/// Applies a view to its operand's layout. `None` only for a `Reshape` that no strides can
/// express over `input` (the caller must materialise the operand first).
pub fn apply_view(
    view: &ViewOp,
    input: &Layout,
    in_sizes: &[u64],
    out_sizes: &[u64],
) -> Option<Layout> {
    let mut offset = input.offset;
    let strides = match view {
        ViewOp::Transpose => {
            let mut s = input.strides.clone();
            let n = s.len();
            if n >= 2 {
                s.swap(n - 1, n - 2);
            }
            s
        }
        ViewOp::Permute(perm) => perm.iter().map(|&p| input.strides[p]).collect(),
        ViewOp::Expand { .. } => {
            let lead = out_sizes.len() - in_sizes.len();
            (0..out_sizes.len())
                .map(|i| {
                    if i < lead {
                        0
                    } else {
                        let j = i - lead;
                        if in_sizes[j] == 1 && out_sizes[i] != 1 {
                            0
                        } else {
                            input.strides[j]
                        }
                    }
                })
                .collect()
        }
        ViewOp::Reshape => reshape_strides(in_sizes, &input.strides, out_sizes)?,
        ViewOp::Slice(axes) => {
            let mut s = Vec::with_capacity(out_sizes.len());
            for (a, &st) in axes.iter().zip(&input.strides) {
                offset += a.start as i64 * st;
                if a.keep {
                    s.push(st * a.step as i64);
                }
            }
            s
        }
    };
    Some(Layout {
        root: input.root,
        offset,
        strides,
    })
}

/// Strides for viewing (`old_sizes`, `old_strides`) as `new_sizes`, if any exist.
/// Same element count is the caller's invariant. This is PyTorch's `computeStride`:
/// split the old shape into chunks that are contiguous among themselves and match each
/// chunk to a run of new axes of the same element count.
pub fn reshape_strides(
    old_sizes: &[u64],
    old_strides: &[i64],
    new_sizes: &[u64],
) -> Option<Vec<i64>> {
    let numel: u64 = old_sizes.iter().product();
    // A scalar's one element is every new axis's (all of size 1): PyTorch's `computeStride`
    // gives them stride 1.
    if old_sizes.is_empty() {
        return Some(vec![1; new_sizes.len()]);
    }
    if numel == 0 {
        return Some(contiguous_strides(new_sizes));
    }
    let mut new_strides = vec![0i64; new_sizes.len()];
    let mut view_d = new_sizes.len() as isize - 1;
    // Stride of the innermost element of the current chunk.
    let mut chunk_base_stride = old_strides.last().copied().unwrap_or(1);
    let mut tensor_numel: u64 = 1;
    let mut view_numel: u64 = 1;
    for tensor_d in (0..old_sizes.len()).rev() {
        tensor_numel *= old_sizes[tensor_d];
        // A chunk ends at the outermost axis, or where the next-outer axis is not
        // contiguous with this one.
        let chunk_ends = tensor_d == 0
            || (old_sizes[tensor_d - 1] != 1
                && old_strides[tensor_d - 1] != (tensor_numel as i64) * chunk_base_stride);
        if chunk_ends {
            while view_d >= 0 && (view_numel < tensor_numel || new_sizes[view_d as usize] == 1) {
                new_strides[view_d as usize] = (view_numel as i64) * chunk_base_stride;
                view_numel *= new_sizes[view_d as usize];
                view_d -= 1;
            }
            if view_numel != tensor_numel {
                return None;
            }
            if tensor_d > 0 {
                chunk_base_stride = old_strides[tensor_d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    if view_d != -1 {
        return None;
    }
    Some(new_strides)
}

/// The layout of every node of `graph`: views resolve to their root; everything else is
/// its own contiguous root. A `Reshape` that cannot be expressed (the checker prevents
/// this) is reported as its own root.
pub fn layouts(graph: &Graph) -> Vec<Layout> {
    layouts_through(graph, &[])
}

/// `layouts`, but a node marked in `through` (an elementwise node such as a folded
/// promotion, whose shape is its operand's) takes its operand's layout, like a view: the
/// views above it then index the operand's storage directly.
pub fn layouts_through(graph: &Graph, through: &[bool]) -> Vec<Layout> {
    let mut out: Vec<Layout> = Vec::with_capacity(graph.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let sizes = node.ty.sizes();
        let layout = match &node.op {
            Op::View(view, arg) => {
                let in_sizes = graph.ty(*arg).sizes();
                apply_view(view, &out[arg.index()], &in_sizes, &sizes)
                    .unwrap_or_else(|| Layout::contiguous(id, &sizes))
            }
            Op::Cast { arg, .. } if through.get(id.index()).copied().unwrap_or(false) => {
                out[arg.index()].clone()
            }
            _ => Layout::contiguous(id, &sizes),
        };
        out.push(layout);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_of_contiguous_is_contiguous() {
        let s = reshape_strides(&[4, 6], &[6, 1], &[2, 2, 6]).expect("expressible");
        assert_eq!(s, vec![12, 6, 1]);
    }

    #[test]
    fn reshape_after_transpose_needs_copy() {
        // [4, 6] transposed is [6, 4] with strides [1, 6]; flattening it cannot be a view.
        assert_eq!(reshape_strides(&[6, 4], &[1, 6], &[24]), None);
    }

    #[test]
    fn reshape_splitting_a_transposed_axis_is_a_view() {
        // [6, 4] with strides [1, 6]: splitting the first axis into [2, 3] is fine.
        let s = reshape_strides(&[6, 4], &[1, 6], &[2, 3, 4]).expect("expressible");
        assert_eq!(s, vec![3, 1, 6]);
    }

    #[test]
    fn slices_move_the_offset_and_scale_strides() {
        use crate::ir::SliceAxis;
        // x: [4, 6]; x[1, 2::2] is [2] at offset 1·6 + 2 = 8, stride 2.
        let x = Layout::contiguous(NodeId(0), &[4, 6]);
        let view = ViewOp::Slice(vec![
            SliceAxis {
                start: 1,
                step: 1,
                keep: false,
            },
            SliceAxis {
                start: 2,
                step: 2,
                keep: true,
            },
        ]);
        let l = apply_view(&view, &x, &[4, 6], &[2]).expect("a view");
        assert_eq!((l.offset, l.strides.clone()), (8, vec![2]));
        // A slice of a transposed slice composes: offsets add, strides multiply.
        let t = apply_view(&ViewOp::Transpose, &x, &[4, 6], &[6, 4]).expect("a view");
        let view = ViewOp::Slice(vec![
            SliceAxis {
                start: 3,
                step: 1,
                keep: true,
            },
            SliceAxis {
                start: 1,
                step: 2,
                keep: true,
            },
        ]);
        let l = apply_view(&view, &t, &[6, 4], &[3, 2]).expect("a view");
        assert_eq!((l.offset, l.strides), (3 + 6, vec![1, 12]));
    }

    #[test]
    fn reshape_with_broadcast_axis() {
        // An expanded [3, 4] (stride 0 on the first axis) reshaped to [3, 2, 2].
        let s = reshape_strides(&[3, 4], &[0, 1], &[3, 2, 2]).expect("expressible");
        assert_eq!(s, vec![0, 2, 1]);
        assert_eq!(reshape_strides(&[3, 4], &[0, 1], &[12]), None);
    }
}
