//! Products never stored whole (CPU plans): where a matrix product's only reader is the fused
//! kernel right after it, reading each element of the product in its own place, the CPU
//! executor runs that kernel on each block of the product as tc's GEMM finishes the block
//! (`tc_runtime`'s `cpu::epilogue`), the block held in a buffer of the computing thread's
//! own (at most `MC × CPU_GEMM_NC` floats, like its packed `A`). The product's buffer then
//! needs no storage: it becomes `BufferKind::Tile`, and the arena does not hold it.
//!
//! That is memory `torch.compile` cannot give back: its products are library calls whose
//! outputs exist whole. In the transformer block `gelu(…) @ w2` is consumed by `+ b2 + x1`,
//! whose result takes `x1`'s place: in tiles, the product needs no storage at all. (A
//! consumer that also folds a column, as a bias gradient's sum fused into an activation's
//! backward does, needs every row first and cannot run on tiles.)
//!
//! Tiles are applied to the finished plan (`retile`, after the search over fusions and
//! orders) and kept only where the arena comes out smaller. The pair must stay one step for
//! the GEMM: the product's operands and workspace stay
//! live through the consumer's step (so nothing the consumer writes is placed over them,
//! in place or packed), and the consumer may not read them (it would then be free to take
//! one over). The consumer must be one the executor can run on blocks: the product's
//! output domain (a pointwise kernel, or a row kernel of whole rows no wider than one column
//! block, `CPU_GEMM_NC`), every read of the product the element in its own place, only
//! float values, no gathers, indices or scans.

use crate::fuse::strides_agree;
use crate::ir::types::contiguous_strides;
use crate::memory::inplace::in_arena;
use crate::memory::liveness;
use crate::schedule::{
    Buffer, BufferId, BufferKind, FusedKernel, InstOp, Kernel, KernelKind, MatMulKernel, Plan,
    CPU_GEMM_NC,
};
use std::collections::BTreeSet;

/// `plan` (a CPU plan, its order and kernels final) with its tileable products never stored
/// whole, in-place reuse and packing redone, where the arena comes out smaller; else
/// unchanged (the consumer still runs on the product's blocks, `cpu::epilogue`, with the
/// product stored). Done last so that the search over fusions and orders compares plans as
/// they are without tiles, and tiles never raise the arena it found.
pub fn retile(plan: &mut Plan, budget: u64) {
    let mut buffers = plan.buffers.clone();
    for b in &mut buffers {
        b.in_place_of = None;
        b.offset = 0;
    }
    let outputs: BTreeSet<BufferId> = plan.outputs.iter().map(|o| o.buffer).collect();
    let notes = tile_products(&plan.kernels, &mut buffers, &outputs);
    if notes.is_empty() {
        return;
    }
    let arena = super::place(
        &plan.kernels,
        &mut buffers,
        &outputs,
        plan.options.reuse,
        budget,
    );
    if arena < plan.arena_bytes {
        plan.buffers = buffers;
        plan.arena_bytes = arena;
        plan.notes.extend(notes);
    }
}

/// Marks the output of every product whose consumer can run on its blocks as `Tile`,
/// keeps the product's operands and workspace live through the consumer's step, and
/// returns a note for each.
pub fn tile_products(
    kernels: &[Kernel],
    buffers: &mut [Buffer],
    outputs: &BTreeSet<BufferId>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, pair) in kernels.windows(2).enumerate() {
        let (KernelKind::MatMul(mm), KernelKind::Fused(f)) = (&pair[0].kind, &pair[1].kind) else {
            continue;
        };
        let read_elsewhere = kernels
            .iter()
            .enumerate()
            .any(|(j, k)| j != i + 1 && liveness::reads(k).contains(&mm.out));
        if read_elsewhere || outputs.contains(&mm.out) || !tileable(mm, f, buffers) {
            continue;
        }
        let out = &mut buffers[mm.out.index()];
        out.kind = BufferKind::Tile;
        out.offset = 0;
        let shape: Vec<String> = out.shape.iter().map(u64::to_string).collect();
        notes.push(format!(
            "{}: the product ({} [{}]) never stored whole: {} runs on each block of it as \
             the GEMM finishes it",
            pair[0].name,
            out.dtype,
            shape.join(", "),
            pair[1].name
        ));
        for id in [mm.a.buffer, mm.b.buffer].into_iter().chain(mm.workspace) {
            let b = &mut buffers[id.index()];
            if in_arena(b) {
                b.last_step = b.last_step.max(i + 1);
            }
        }
    }
    notes
}

/// Whether `f`, the kernel right after `mm`, can run on the product's blocks (the module
/// doc's conditions, less the product's other readers).
fn tileable(mm: &MatMulKernel, f: &FusedKernel, buffers: &[Buffer]) -> bool {
    let product_ok = mm.accumulate.is_none()
        && mm.in_place_f32()
        && mm.workspace.is_some()
        && buffers[mm.out.index()].kind == BufferKind::Arena;
    let numel = |d: &[u64]| d.iter().fold(1u64, |p, &s| p.saturating_mul(s));
    let rank = f.domain.len();
    let shape_ok = numel(&f.domain) == mm.nbatch().saturating_mul(mm.m).saturating_mul(mm.n)
        && (f.reduce_axes.is_empty()
            || (f.reduce_axes == [rank - 1] && f.domain[rank - 1] == mm.n && mm.n <= CPU_GEMM_NC));
    let own = contiguous_strides(&f.domain);
    let in_place: Vec<bool> = f
        .loads
        .iter()
        .filter(|l| l.buffer == mm.out)
        .map(|l| l.offset == 0 && strides_agree(&l.strides, &own, &f.domain))
        .collect();
    let reads_product = !in_place.is_empty() && in_place.iter().all(|&ok| ok);
    let gemm_uses: Vec<BufferId> = [mm.a.buffer, mm.b.buffer]
        .into_iter()
        .chain(mm.workspace)
        .collect();
    let apart = f.loads.iter().all(|l| !gemm_uses.contains(&l.buffer))
        && f.stores.iter().all(|s| !gemm_uses.contains(&s.buffer))
        && f.workspace.is_none();
    let floats = f.body.iter().all(|inst| {
        !inst.dtype.is_integral()
            && match &inst.op {
                InstOp::Load(_) | InstOp::Const(_) | InstOp::Unary(..) | InstOp::Binary(..) => true,
                InstOp::Cast(_) => true,
                InstOp::Reduce(op, _) => !op.is_arg(),
                InstOp::Where(..)
                | InstOp::Index { .. }
                | InstOp::Gather { .. }
                | InstOp::Scan(_) => false,
            }
    }) && f.loads.iter().all(|l| !l.dtype.is_integral());
    product_ok && shape_ok && reads_product && apart && floats
}
