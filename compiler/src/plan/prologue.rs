//! Products that compute their `A` (CPU plans): where a pointwise kernel stores a value
//! `h` that only matrix products read, as their `A` (straight or transposed), and `h` can
//! be computed from what that kernel stores anyway, the products compute `h` themselves as
//! tc's GEMM packs each block of `A` (`MatMulKernel::prologue`, run by `tc_runtime`'s
//! `cpu::prologue`), and `h` is never stored (`BufferKind::Tile`).
//!
//! The training step's case: `h = gelu(pre)` is read by `h @ w2` in the forward and by
//! `grad w2 = hᵀ · g` in the backward, and `pre` is kept for `gelu`'s backward. Stored, `h`
//! (16 MiB in `train_mlp`) is live from the forward to the weight gradient, beside `pre`,
//! `g` and `grad w2`: the step's peak, in any order, and the 52 MiB `torch.compile` holds.
//! Computed in the products, it costs `gelu` once more per element and column block of the
//! product (a few per cent of the products' time) and no memory.
//!
//! The prologue is the writer's own maths for `h`, with every value the writer also stores
//! read back from its buffer instead of computed again (`pre` rather than `x @ w1 + b1`):
//! the same bits, as a stored f32 is read back exactly. Its other loads stay live through
//! the products' steps. The writer keeps its other stores and drops `h`'s.
//!
//! Taken only as part of `tile::retile`'s search: the plan with prologues (and with the
//! column sums split off the kernels after products, `tile::split_column_folds`, so those
//! run on the product's tiles) is kept only where its arena comes out smaller.

use super::split::prune;
use crate::ir::types::contiguous_strides;
use crate::memory::liveness;
use crate::schedule::{
    Buffer, BufferId, BufferKind, FusedKernel, Inst, InstId, InstOp, Kernel, KernelKind, Level,
    Load, Store,
};
use std::collections::BTreeSet;

/// Gives every value that qualifies (the module doc) to its products as their prologue:
/// the writer loses its store, each product gets the prologue, the value becomes a
/// `Tile`. Returns a note for each; lives are not updated (the caller recomputes them).
pub fn add_prologues(
    kernels: &mut [Kernel],
    buffers: &mut [Buffer],
    outputs: &BTreeSet<BufferId>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for h in 0..buffers.len() {
        let id = BufferId(h as u32);
        let Some((writer, prologue)) = candidate(kernels, buffers, outputs, id) else {
            continue;
        };
        let KernelKind::Fused(f) = &mut kernels[writer].kind else {
            continue;
        };
        let kept = FusedKernel {
            stores: f
                .stores
                .iter()
                .filter(|s| s.buffer != id)
                .cloned()
                .collect(),
            ..f.clone()
        };
        *f = prune(kept);
        let mut readers = Vec::new();
        for k in kernels.iter_mut() {
            if let KernelKind::MatMul(mm) = &mut k.kind {
                if mm.a.buffer == id {
                    mm.prologue = Some(Box::new(prologue.clone()));
                    readers.push(k.name.clone());
                }
            }
        }
        let sources = sources(&prologue, buffers);
        let b = &mut buffers[h];
        b.kind = BufferKind::Tile;
        b.offset = 0;
        let shape: Vec<String> = b.shape.iter().map(u64::to_string).collect();
        notes.push(format!(
            "{}: {} ({} [{}]) never stored: {} compute it from {} as they pack it",
            readers.join(", "),
            b.name,
            b.dtype,
            shape.join(", "),
            readers.join(" and "),
            sources,
        ));
    }
    notes
}

/// The names of the buffers a prologue reads, for its notes (here and the report's).
pub fn sources(p: &FusedKernel, buffers: &[Buffer]) -> String {
    let names: BTreeSet<&str> = p
        .loads
        .iter()
        .map(|l| buffers[l.buffer.index()].name.as_str())
        .collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// The kernel that writes `h` and the prologue that computes it, where `h` qualifies: a
/// 2-D f32 arena buffer, no output, written whole by one pointwise kernel that stores
/// something else too, read only as the `A` of products that pack it (CPU GEMM, one matrix,
/// `h` read straight or transposed from its start), its maths floats alone.
fn candidate(
    kernels: &[Kernel],
    buffers: &[Buffer],
    outputs: &BTreeSet<BufferId>,
    h: BufferId,
) -> Option<(usize, FusedKernel)> {
    let b = &buffers[h.index()];
    if b.kind != BufferKind::Arena
        || b.dtype != crate::ir::DType::F32
        || b.shape.len() != 2
        || outputs.contains(&h)
    {
        return None;
    }
    let cols = b.shape[1] as i64;
    let mut writer = None;
    let mut products = 0;
    for (s, k) in kernels.iter().enumerate() {
        let writes = liveness::writes(k).contains(&h);
        let reads = liveness::reads(k).contains(&h);
        match &k.kind {
            KernelKind::Fused(f) if writes && !reads => {
                let second_writer = writer.replace(s).is_some();
                if second_writer || f.workspace.is_some() {
                    return None;
                }
            }
            KernelKind::MatMul(mm) if reads && !writes => {
                let straight = mm.a.strides == [cols, 1];
                let transposed = mm.a.strides == [1, cols];
                let ok = mm.a.buffer == h
                    && mm.b.buffer != h
                    && mm.accumulate != Some(h)
                    && mm.prologue.is_none()
                    && mm.batch.is_empty()
                    && mm.a.offset == 0
                    && (straight || transposed)
                    && mm.workspace.is_some()
                    && mm.in_place_f32();
                if !ok {
                    return None;
                }
                products += 1;
            }
            _ if writes || reads => return None,
            _ => {}
        }
    }
    let w = writer?;
    if products == 0 {
        return None;
    }
    let KernelKind::Fused(f) = &kernels[w].kind else {
        return None;
    };
    let store = f.stores.iter().find(|s| s.buffer == h)?;
    let whole = f.reduce_axes.is_empty()
        && f.domain == b.shape
        && store.region.is_none()
        && f.stores.len() >= 2;
    if !whole {
        return None;
    }
    let p = prologue_of(f, store, buffers)?;
    Some((w, p))
}

/// `inst`, which `store` writes whole into its buffer, read back from there instead of
/// computed: a load of the buffer, contiguous over the kernel's `domain`, added to `loads`.
/// Nothing where the buffer holds another dtype than the value (returns whether it was).
pub(super) fn read_back(
    loads: &mut Vec<Load>,
    inst: &mut Inst,
    store: &Store,
    buffers: &[Buffer],
    domain: &[u64],
) -> bool {
    let buf = &buffers[store.buffer.index()];
    if store.region.is_some() || buf.dtype != inst.dtype {
        return false;
    }
    loads.push(Load {
        buffer: store.buffer,
        dtype: buf.dtype,
        offset: 0,
        strides: contiguous_strides(domain),
    });
    inst.op = InstOp::Load(loads.len() - 1);
    true
}

/// The maths `f` computes `store`'s value by, alone, with each value `f` stores elsewhere
/// (whole, contiguously) read back from its buffer; `None` where it needs more than float
/// maths (the runtime's f32 interpreter runs it).
fn prologue_of(f: &FusedKernel, store: &Store, buffers: &[Buffer]) -> Option<FusedKernel> {
    // Insts stored elsewhere (whole): read back rather than computed.
    let stored_at = |i: InstId| {
        f.stores
            .iter()
            .find(|s| s.inst == i && s.buffer != store.buffer && s.region.is_none())
    };
    let mut loads = f.loads.clone();
    let mut body = f.body.clone();
    for (i, inst) in body.iter_mut().enumerate() {
        if i == store.inst {
            continue;
        }
        if let Some(s) = stored_at(i) {
            if buffers[s.buffer.index()].kind == BufferKind::Arena {
                read_back(&mut loads, inst, s, buffers, &f.domain);
            }
        }
    }
    for inst in &mut body {
        inst.level = Level::Element;
    }
    let p = prune(FusedKernel {
        domain: f.domain.clone(),
        reduce_axes: Vec::new(),
        loads,
        body,
        stores: vec![store.clone()],
        workspace: None,
    });
    let floats = p.body.iter().all(|inst| {
        !inst.dtype.is_integral()
            && matches!(
                inst.op,
                InstOp::Load(_)
                    | InstOp::Const(_)
                    | InstOp::Unary(..)
                    | InstOp::Binary(..)
                    | InstOp::Cast(_)
            )
    }) && p
        .loads
        .iter()
        .all(|l| !l.dtype.is_integral() && buffers[l.buffer.index()].kind != BufferKind::Tile);
    floats.then_some(p)
}
