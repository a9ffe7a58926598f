//! The kernel of an `index_add` group (`take`'s gradient, `ir::Op::IndexAdd`): the index
//! and the gradient as strided loads over their own shapes (seen through folded
//! promotions) and the f32 result; no scratch memory on either device.

use super::internal;
use super::kernel::Builder;
use crate::diag::Diagnostic;
use crate::fuse::Group;
use crate::ir::{DType, NodeId, Op};
use crate::schedule::{BufferId, IndexAddKernel, KernelKind, Load};

impl Builder<'_> {
    /// The `IndexAddKernel` of `group` (one `IndexAdd` node) writing `out`.
    pub(super) fn index_add(
        &mut self,
        group: &Group,
        out: BufferId,
    ) -> Result<KernelKind, Diagnostic> {
        let n = group.nodes[0];
        let Op::IndexAdd {
            grad,
            index,
            axis,
            size,
        } = self.graph.node(n).op
        else {
            return Err(internal("an index_add group without an index_add"));
        };
        if group.nodes.len() != 1 || self.graph.dtype(n) != DType::F32 {
            return Err(internal(format!(
                "the index_add {n} is not one f32 node in its kernel"
            )));
        }
        let g_shape = self.graph.ty(grad).sizes();
        let index_shape = self.graph.ty(index).sizes();
        let pre = g_shape[..axis].to_vec();
        let post = g_shape[axis + index_shape.len()..].to_vec();
        let index_load = self.strided(index, "index")?;
        let grad_load = self.strided(grad, "gradient")?;
        let what = self.index_add_what(n, index);
        Ok(KernelKind::IndexAdd(IndexAddKernel {
            pre,
            index_shape,
            rows: size,
            post,
            index: index_load,
            grad: grad_load,
            out,
            what,
        }))
    }

    /// A load of node `o` over its own shape, through its views (and a promotion folded
    /// into its readers, converted by the kernel's own f32 arithmetic).
    fn strided(&self, o: NodeId, role: &str) -> Result<Load, Diagnostic> {
        let lay = &self.flays[o.index()];
        let buffer = *self
            .buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("the index_add's {role} {o} is not in memory")))?;
        Ok(Load {
            buffer,
            dtype: self.buffers[buffer.index()].dtype,
            offset: lay.offset,
            strides: lay.strides.clone(),
        })
    }

    /// The index error's context: the `take` this gradient belongs to, as its forward says
    /// it.
    fn index_add_what(&self, n: NodeId, index: NodeId) -> String {
        let g = self.graph;
        let root = self.lays[index.index()].root;
        let named = match &g.node(root).name {
            Some(name) => format!("the index tensor `{name}`"),
            None => "the index tensor".to_string(),
        };
        let line = g
            .origin(n)
            .backward_of
            .as_ref()
            .map_or(g.origin(n).line, |(_, l)| *l);
        format!(
            "{named} (line {line}) adding the gradient into the rows of {}",
            g.ty(n)
        )
    }
}
