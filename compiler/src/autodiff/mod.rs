//! Reverse-mode differentiation on the checked graph: `grad(L, P)` becomes ordinary nodes.
//!
//! `backward` appends to the graph, after the loss, one backward pass of `L` for a set of
//! variables (every `grad` of one loss shares it): the gradient of each node the loss
//! depends on and that depends on a variable, in reverse order, with PyTorch's derivative
//! formulas (`tools/autograd/derivatives.yaml`) and tie rules (`rules.rs`). Everything
//! downstream (decompose, fuse, plan, the executors, the f64 oracle) sees only the ops of
//! the language, so a training step is planned, fused and run like any other program.
//!
//! Gradients are f32 whatever the forward dtype (f16/bf16 values are read through a cast)
//! and the gradient of an f16/bf16 variable is rounded once, at the end. The nodes of one
//! forward op's backward share an `Origin.group` (PyTorch runs each as one backward
//! function), and the forward values PyTorch would save for it are recorded in
//! `Graph::saved`, released at that group: the eager model (`memory::models`) keeps them
//! live until then.

mod build;
mod rules;

use crate::diag::Span;
use crate::ir::{layout, DType, Graph, NodeId};
pub use build::Tape;

/// The gradients of `loss` with respect to each of `wrts` (inputs or params), appended to
/// `graph`. Nodes in `detached` pass no gradient. A variable the loss does not depend on
/// gets zeros (PyTorch's `torch.autograd.grad(..., allow_unused=True,
/// materialize_grads=True)`). `Err` names an op on the path with no derivative.
pub fn backward(
    graph: &mut Graph,
    loss: NodeId,
    wrts: &[NodeId],
    detached: &[NodeId],
    span: Span,
    line: u32,
) -> Result<Vec<NodeId>, String> {
    let layouts = layout::layouts(graph);
    let n = graph.len();
    let start = NodeId(n as u32);
    // Which nodes carry gradient: float values that depend on a variable, not detached.
    let mut req = vec![false; n];
    for &w in wrts {
        req[w.index()] = true;
    }
    for id in graph.ids() {
        if req[id.index()] || detached.contains(&id) || !is_float(graph.dtype(id)) {
            continue;
        }
        req[id.index()] = graph.node(id).op.operands().iter().any(|o| req[o.index()]);
    }
    for &w in wrts {
        req[w.index()] = is_float(graph.dtype(w));
    }
    let mut tape = Tape::new(graph, layouts, span, line);
    let mut grads: Vec<Option<NodeId>> = vec![None; n];
    if req[loss.index()] {
        tape.begin();
        grads[loss.index()] = Some(tape.scalar(1.0, DType::F32));
    }
    for i in (0..=loss.index()).rev() {
        let id = NodeId(i as u32);
        let Some(g) = grads[i] else { continue };
        if tape.graph().node(id).op.is_leaf() {
            continue;
        }
        tape.backward_of(Some(id));
        let contributions = rules::node_backward(&mut tape, id, g, &req)?;
        tape.backward_of(None);
        for (operand, c) in contributions {
            let total = match grads[operand.index()] {
                None => c,
                Some(prev) => {
                    // Accumulation of two paths: its own step, as PyTorch's InputBuffer.
                    tape.begin();
                    tape.add(prev, c)
                }
            };
            grads[operand.index()] = Some(total);
        }
    }
    let mut out = Vec::with_capacity(wrts.len());
    for &w in wrts {
        tape.begin();
        let ty = tape.graph().ty(w).clone();
        let g = match grads[w.index()] {
            Some(g) => g,
            None => tape.zeros(&ty.shape),
        };
        out.push(tape.cast_to(g, ty.dtype));
    }
    drop(tape);
    graph.passes.push((start, NodeId(graph.len() as u32)));
    Ok(out)
}

/// Float dtypes carry gradients; integers and bools do not.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}
