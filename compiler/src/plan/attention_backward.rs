//! The kernel of an attention backward group (`fuse::attention_backward`): the forward's
//! operands and prologue as the forward attention kernel has them (`Builder::attention`),
//! the prologue's backward built as a fused kernel over the scores' shape that loads the
//! gradient of the logits from a stand-in buffer (whose load becomes `GRAD`), the gradient
//! of the output, where each of `dq`, `dk`, `dv` goes, and the row statistics' workspace.

use super::internal;
use super::kernel::{around_stand_in, Builder};
use crate::diag::Diagnostic;
use crate::fuse::attention::Attention;
use crate::fuse::attention_backward::AttentionBackward;
use crate::fuse::Group;
use crate::ir::types::contiguous_strides;
use crate::ir::{DType, NodeId, Op};
use crate::schedule::{
    AttentionBackwardKernel, Buffer, BufferId, BufferKind, GradOut, Inst, InstOp, KernelKind,
    Level, GRAD,
};

impl Builder<'_> {
    /// The `AttentionBackwardKernel` of `ab`, whose stored values `outs` (among `dq`, `dk`,
    /// `dv`) go to `out_bufs`, run at `step`.
    pub(super) fn attention_backward(
        &mut self,
        ab: &AttentionBackward,
        live: &[bool],
        outs: &[NodeId],
        out_bufs: &[BufferId],
        step: usize,
    ) -> Result<KernelKind, Diagnostic> {
        // The forward's products and prologue; its epilogue (if any) is the forward kernel's.
        let forward = Attention {
            epilogue: Vec::new(),
            ..ab.forward.clone()
        };
        let KernelKind::Attention(fw) =
            self.attention(&forward, live, forward.out, BufferId(u32::MAX))?
        else {
            return Err(internal(
                "the forward of an attention backward is no attention",
            ));
        };
        let shape = self.graph.ty(ab.forward.scores).sizes();
        let r = shape.len();
        let nb = r - 2;
        let gx = ab.grad_logits;
        let contiguous = contiguous_strides(&shape);
        let (grad_loads, grad_body, grad_scores) = if ab.tail.is_empty() {
            let inst = Inst {
                op: InstOp::Load(GRAD),
                dtype: DType::F32,
                level: Level::Element,
                node: Some(gx),
            };
            (Vec::new(), vec![inst], 0)
        } else {
            let stand_in = self.push(Buffer {
                name: "grad_logits".into(),
                kind: BufferKind::Arena,
                dtype: self.graph.dtype(gx),
                shape: shape.clone(),
                bytes: 0,
                offset: 0,
                first_step: 0,
                last_step: 0,
                in_place_of: None,
                node: Some(gx),
            });
            // The masks it reads are recomputed with it.
            let mut nodes: Vec<NodeId> = ab.masks.iter().chain(&ab.tail).copied().collect();
            nodes.sort();
            let tail = Group {
                levels: vec![Level::Element; nodes.len()],
                nodes,
                domain: shape.clone(),
                reduce_axes: Vec::new(),
                matmul: false,
                attention: None,
                attention_backward: None,
            };
            let built = self.fused(&tail, live, &[ab.grad_scores], &[stand_in]);
            self.buffers.pop();
            self.buf_of.remove(&gx);
            let k = built?;
            let (loads, body) = around_stand_in(
                &k,
                stand_in,
                (0, &contiguous),
                "the prologue's backward reads the logits' gradient through a view",
                GRAD,
                <[i64]>::to_vec,
            )?;
            (loads, body, k.stores[0].inst)
        };
        let Op::MatMul(d_out, _) = self.graph.node(ab.dprobs).op else {
            return Err(internal("an attention backward without `dO @ vᵀ`"));
        };
        // Where each gradient goes: its product's buffer, contiguous in the product's shape.
        let out_of = |n: Option<NodeId>, transposed: bool| -> Option<GradOut> {
            let n = n?;
            let at = outs.iter().position(|&o| o == n)?;
            let sizes = self.graph.ty(n).sizes();
            let mut strides = contiguous_strides(&sizes);
            if transposed {
                strides.swap(nb, nb + 1);
            }
            Some(GradOut {
                buffer: out_bufs[at],
                dtype: self.graph.dtype(n),
                offset: 0,
                strides,
            })
        };
        let dq = out_of(ab.dq, false);
        let dk = out_of(ab.dk, true);
        let dv_out = out_of(ab.dv, false);
        if outs.len() != [&dq, &dk, &dv_out].iter().filter(|o| o.is_some()).count() {
            return Err(internal(
                "an attention backward stores more than its gradients",
            ));
        }
        let rows: u64 = shape[..r - 1].iter().product();
        let workspace = self.push(Buffer {
            name: format!("k{step}.workspace"),
            kind: BufferKind::Workspace,
            dtype: DType::F32,
            shape: vec![3 * rows],
            bytes: 12 * rows,
            offset: 0,
            first_step: step,
            last_step: step,
            in_place_of: None,
            node: None,
        });
        Ok(KernelKind::AttentionBackward(Box::new(
            AttentionBackwardKernel {
                batch: fw.batch,
                m: fw.m,
                n: fw.n,
                d: fw.d,
                dv: fw.dv,
                q: fw.q,
                k: fw.k,
                v: fw.v,
                score_dtype: fw.score_dtype,
                loads: fw.loads,
                body: fw.body,
                logits: fw.logits,
                d_out: self.operand(d_out)?,
                grad_loads,
                grad_body,
                grad_scores,
                dq,
                dk,
                dv_out,
                workspace,
            },
        )))
    }
}
