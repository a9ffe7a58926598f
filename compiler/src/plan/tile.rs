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

use super::prologue::read_back;
use super::split::prune;
use crate::fuse::strides_agree;
use crate::ir::types::contiguous_strides;
use crate::memory::inplace::in_arena;
use crate::memory::liveness;
use crate::schedule::{
    epilogue_pair, Buffer, BufferId, BufferKind, FusedKernel, InstOp, Kernel, KernelKind, Level,
    MatMulKernel, Plan, Store, Target, CPU_GEMM_MC, CPU_GEMM_NC,
};
use std::collections::BTreeSet;

/// `plan` (a CPU plan, its order and kernels final) with its tileable products never stored
/// whole, and with the values only products read computed in them (`plan::prologue`, with
/// the column folds split off the kernels after products so that those run on tiles too),
/// in-place reuse and packing redone, where the arena comes out smaller; else unchanged
/// (the consumer still runs on the product's blocks, `cpu::epilogue`, with the product
/// stored). Done last so that the search over fusions and orders compares plans as they are
/// without tiles, and tiles never raise the arena it found.
pub fn retile(plan: &mut Plan, budget: u64) {
    let outputs: BTreeSet<BufferId> = plan.outputs.iter().map(|o| o.buffer).collect();
    let unplaced = || unplaced(&plan.buffers);
    let mut variants = Vec::new();
    // Products in tiles alone.
    let (mut kernels, mut buffers) = (plan.kernels.clone(), unplaced());
    let notes = tile_products(&mut kernels, &mut buffers, &outputs);
    if !notes.is_empty() {
        variants.push((kernels, buffers, notes, plan.notes.clone()));
    }
    // Values computed in the products that read them, then products in tiles.
    let (mut kernels, mut buffers, mut old_notes) =
        (plan.kernels.clone(), unplaced(), plan.notes.clone());
    let mut notes = split_column_folds(&mut kernels, &mut buffers, &outputs, &mut old_notes);
    let prologues = super::prologue::add_prologues(&mut kernels, &mut buffers, &outputs);
    if !prologues.is_empty() {
        liveness::set_lives(&kernels, &mut buffers, &outputs);
        notes.extend(prologues);
        notes.extend(tile_products(&mut kernels, &mut buffers, &outputs));
        variants.push((kernels, buffers, notes, old_notes));
    }
    for (kernels, mut buffers, notes, old_notes) in variants {
        let arena = super::place(&kernels, &mut buffers, &outputs, plan.options.reuse, budget);
        if arena < plan.arena_bytes {
            plan.kernels = kernels;
            plan.buffers = buffers;
            plan.arena_bytes = arena;
            plan.notes = old_notes;
            plan.notes.extend(notes);
        }
    }
    room_for_epilogues(plan, budget);
    whole_b_where_free(plan, budget);
}

/// Packs all of `B` at once (`MatMulKernel::packs_whole_b`) for each stored product wider
/// than a column block where that leaves the arena no larger: its workspace grows from
/// `k × CPU_GEMM_NC` floats to `k × n`, room the arena often has at the product's step
/// (its peak is elsewhere). tc's GEMM then packs each task's rows of `A` once rather than
/// once a column block, and its threads do not wait for each other between blocks. Product
/// by product, each tried once: memory first, as `room_for_epilogues`.
fn whole_b_where_free(plan: &mut Plan, budget: u64) {
    let outputs: BTreeSet<BufferId> = plan.outputs.iter().map(|o| o.buffer).collect();
    for i in 0..plan.kernels.len() {
        let KernelKind::MatMul(mm) = &plan.kernels[i].kind else {
            continue;
        };
        let Some(w) = mm.workspace else { continue };
        if mm.packs_whole_b || mm.n <= CPU_GEMM_NC || plan.buffer(w).bytes == 0 {
            continue;
        }
        let mut kernels = plan.kernels.clone();
        let KernelKind::MatMul(mm) = &mut kernels[i].kind else {
            unreachable!("a product (matched above)");
        };
        let mut buffers = unplaced(&plan.buffers);
        pack_whole_b(mm, &mut buffers);
        let arena = super::place(&kernels, &mut buffers, &outputs, plan.options.reuse, budget);
        if arena <= plan.arena_bytes {
            plan.kernels = kernels;
            plan.buffers = buffers;
            plan.arena_bytes = arena;
        }
    }
}

/// `mm` packing all of `B` at once (`MatMulKernel::packs_whole_b`), its workspace buffer
/// grown to the size that asks (`tileable` and `whole_b_where_free` take only products
/// with a workspace).
fn pack_whole_b(mm: &mut MatMulKernel, buffers: &mut [Buffer]) {
    mm.packs_whole_b = true;
    if let Some(w) = mm.workspace {
        let bytes = mm.workspace_bytes(&Target::Cpu);
        let b = &mut buffers[w.index()];
        b.bytes = bytes;
        b.shape = vec![bytes.div_ceil(4)];
    }
}

/// Keeps a stored product's operands and workspace live through the next kernel's step
/// where that kernel reads the product and writes over one of them as packed: the executor
/// runs such a consumer on the product's blocks as they are finished (`cpu::epilogue`),
/// and refuses one whose stores meet what the GEMM still reads or writes (a bias
/// gradient's sum packed over the workspace, say), which then makes a pass of its own over
/// the stored product. Pair by pair, each tried once, kept where the arena comes out no
/// larger (memory first: a plan stays at the least peak its order allows, the report's
/// exact best-order bound). (Products in tiles keep them already.)
fn room_for_epilogues(plan: &mut Plan, budget: u64) {
    let outputs: BTreeSet<BufferId> = plan.outputs.iter().map(|o| o.buffer).collect();
    let mut tried = BTreeSet::new();
    // (Each placement may move every buffer, so the pairs are looked at again after one.)
    while let Some((i, short)) = (0..plan.kernels.len())
        .filter(|i| !tried.contains(i))
        .find_map(|i| Some((i, in_the_way(plan, i)?)))
    {
        tried.insert(i);
        let mut buffers = unplaced(&plan.buffers);
        for id in short {
            buffers[id.index()].last_step = i + 1;
        }
        let arena = super::place(
            &plan.kernels,
            &mut buffers,
            &outputs,
            plan.options.reuse,
            budget,
        );
        if arena <= plan.arena_bytes {
            plan.buffers = buffers;
            plan.arena_bytes = arena;
        }
    }
}

/// `buffers` with no placement: to be placed again (`super::place`) after their lives change.
fn unplaced(buffers: &[Buffer]) -> Vec<Buffer> {
    let mut buffers = buffers.to_vec();
    for b in &mut buffers {
        b.in_place_of = None;
        b.offset = 0;
    }
    buffers
}

/// For a stored product at step `i` whose consumer at `i + 1` (`epilogue_pair`) writes
/// over one of the product's operands or its workspace, as the plan places them: those of
/// them live no further than step `i`.
fn in_the_way(plan: &Plan, i: usize) -> Option<Vec<BufferId>> {
    let (KernelKind::MatMul(mm), KernelKind::Fused(f)) =
        (&plan.kernels[i].kind, &plan.kernels.get(i + 1)?.kind)
    else {
        return None;
    };
    if !epilogue_pair(&plan.kernels, i) || plan.buffer(mm.out).kind == BufferKind::Tile {
        return None;
    }
    let range = |id: BufferId| {
        let b = plan.buffer(id);
        in_arena(b).then_some((b.offset, b.offset + b.bytes))
    };
    let out = range(mm.out);
    let short: Vec<BufferId> = gemm_uses(mm)
        .into_iter()
        .filter(|&id| plan.buffer(id).last_step <= i)
        .filter_map(|id| Some((id, range(id)?)))
        // (What shares the output's bytes, an accumulated `C` it replaces, is the output's.)
        .filter(|&(_, r)| Some(r) != out)
        .map(|(id, _)| id)
        .collect();
    let meets = |id: BufferId| {
        let (a, b) = range(id).unwrap_or((0, 0));
        f.stores
            .iter()
            .any(|st| range(st.buffer).is_some_and(|(c, d)| Some((c, d)) != out && c < b && a < d))
    };
    (short.iter().any(|&id| meets(id))).then_some(short)
}

/// Splits each fused kernel right after a product that also folds columns (a bias
/// gradient's sum beside an activation's backward, `sum(g * gelu'(pre), axis=0)`) into two
/// steps: the element values, stored as before, and then their folds, which read them back
/// (the same values summed in the same order: the same bits). Where the first half can run
/// on the product's blocks (`tileable`) and the second no longer reads the product, the
/// product can be in tiles; a kernel folding rows alone (a layer norm) runs on tiles whole.
/// Kernels after each split are renamed in order, and so are the buffers named after them
/// (`k11.out`) and the `notes` that start with their names. Returns a note for each split.
fn split_column_folds(
    kernels: &mut Vec<Kernel>,
    buffers: &mut [Buffer],
    outputs: &BTreeSet<BufferId>,
    notes: &mut [String],
) -> Vec<String> {
    let mut split = Vec::new();
    let mut i = 0;
    while i + 1 < kernels.len() {
        let (KernelKind::MatMul(mm), KernelKind::Fused(f)) =
            (&kernels[i].kind, &kernels[i + 1].kind)
        else {
            i += 1;
            continue;
        };
        let halves = next_reads_alone(kernels, i, mm, outputs)
            .then(|| fold_halves(mm, f, buffers))
            .flatten();
        let Some((first, second)) = halves else {
            i += 1;
            continue;
        };
        let consumer = &kernels[i + 1];
        let folds: Vec<String> = second
            .body
            .iter()
            .filter_map(|inst| match inst.op {
                InstOp::Reduce(op, _) => Some(op.name().to_string()),
                _ => None,
            })
            .collect();
        let mut ops = consumer.ops.clone();
        for f in &folds {
            if let Some(at) = ops.iter().position(|o| o == f) {
                ops.remove(at);
            }
        }
        let lines = consumer.lines.clone();
        let name = consumer.name.clone();
        kernels[i + 1] = Kernel {
            name: name.clone(),
            kind: KernelKind::Fused(first),
            ops,
            lines: lines.clone(),
        };
        kernels.insert(
            i + 2,
            Kernel {
                name: format!("{name}+"),
                kind: KernelKind::Fused(second),
                ops: folds,
                lines,
            },
        );
        split.push(i + 1);
        i += 2;
    }
    if split.is_empty() {
        return Vec::new();
    }
    // Every kernel named by its step again: `k10+` is the new `k11`, the old `k11` `k12`.
    let renames: Vec<(String, String)> = kernels
        .iter()
        .enumerate()
        .map(|(s, k)| (k.name.clone(), format!("k{s}")))
        .filter(|(old, new)| old != new)
        .collect();
    let map: std::collections::HashMap<&str, &str> = renames
        .iter()
        .filter(|(old, _)| !old.ends_with('+'))
        .map(|(o, n)| (o.as_str(), n.as_str()))
        .collect();
    for b in buffers.iter_mut() {
        b.name = rename(&b.name, '.', &map);
    }
    for n in notes.iter_mut() {
        *n = rename(n, ':', &map);
    }
    for (s, k) in kernels.iter_mut().enumerate() {
        k.name = format!("k{s}");
    }
    split
        .into_iter()
        .map(|s| {
            format!(
                "{}: the column folds of the kernel after {} split off into {}, which reads \
                 back the values {} stores (one more pass over them), so that {} runs on the \
                 product's blocks",
                kernels[s].name,
                kernels[s - 1].name,
                kernels[s + 1].name,
                kernels[s].name,
                kernels[s].name
            )
        })
        .collect()
}

/// `text` with its leading kernel name (the `k3` of a buffer `k3.out` or of a note `k3:
/// attention …`, up to `sep`) renamed where `map` renames it; a name of the program's own
/// (a tensor `k3`) is not followed by `sep` and stays.
fn rename(text: &str, sep: char, map: &std::collections::HashMap<&str, &str>) -> String {
    match text.split_once(sep) {
        Some((name, rest)) if map.contains_key(name) => format!("{}{sep}{rest}", map[name]),
        _ => text.to_string(),
    }
}

/// `f` (the kernel after `mm`, folding along its reduce axes) as two kernels, where that
/// lets the first run on the product's blocks: the first computes and stores the element
/// values (pointwise), the second folds them, read back, with the row maths after. `None`
/// where an element value depends on a fold, an element value the folds read is not
/// stored whole, or the second would still read the product.
fn fold_halves(
    mm: &MatMulKernel,
    f: &FusedKernel,
    buffers: &[Buffer],
) -> Option<(FusedKernel, FusedKernel)> {
    if f.reduce_axes.is_empty() || f.workspace.is_some() {
        return None;
    }
    let (elem, row): (Vec<&Store>, Vec<&Store>) = f
        .stores
        .iter()
        .partition(|s| f.body[s.inst].level == Level::Element);
    if elem.is_empty() || row.is_empty() {
        return None;
    }
    // Insts that depend on a fold: no element value may.
    let mut after = vec![false; f.body.len()];
    for (i, inst) in f.body.iter().enumerate() {
        after[i] =
            matches!(inst.op, InstOp::Reduce(..)) || inst.op.operands().iter().any(|&o| after[o]);
    }
    if elem.iter().any(|s| after[s.inst]) {
        return None;
    }
    let mut body = f.body.clone();
    for inst in &mut body {
        inst.level = Level::Element;
    }
    let first = prune(FusedKernel {
        reduce_axes: Vec::new(),
        body,
        stores: elem.iter().map(|&s| s.clone()).collect(),
        ..f.clone()
    });
    if !tileable(mm, &first, buffers) {
        return None;
    }
    let mut loads = f.loads.clone();
    let mut body = f.body.clone();
    for s in &elem {
        if !read_back(&mut loads, &mut body[s.inst], s, buffers, &f.domain) {
            return None;
        }
    }
    let second = prune(FusedKernel {
        loads,
        body,
        stores: row.iter().map(|&s| s.clone()).collect(),
        ..f.clone()
    });
    if second.loads.iter().any(|l| l.buffer == mm.out) {
        return None;
    }
    Some((first, second))
}

/// Marks the output of every product whose consumer can run on its blocks as `Tile`,
/// keeps the product's operands and workspace live through the consumer's step, and
/// returns a note for each.
pub fn tile_products(
    kernels: &mut [Kernel],
    buffers: &mut [Buffer],
    outputs: &BTreeSet<BufferId>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for i in 0..kernels.len().saturating_sub(1) {
        let (KernelKind::MatMul(mm), KernelKind::Fused(f)) =
            (&kernels[i].kind, &kernels[i + 1].kind)
        else {
            continue;
        };
        if !next_reads_alone(kernels, i, mm, outputs) || !tileable(mm, f, buffers) {
            continue;
        }
        let whole_b = !f.reduce_axes.is_empty() && mm.n > CPU_GEMM_NC;
        let out = &mut buffers[mm.out.index()];
        out.kind = BufferKind::Tile;
        out.offset = 0;
        let shape: Vec<String> = out.shape.iter().map(u64::to_string).collect();
        notes.push(format!(
            "{}: the product ({} [{}]) never stored whole: {} runs on each block of it as \
             the GEMM finishes it{}",
            kernels[i].name,
            out.dtype,
            shape.join(", "),
            kernels[i + 1].name,
            if whole_b {
                " (its rows whole: all of B packed at once)"
            } else {
                ""
            }
        ));
        let KernelKind::MatMul(mm) = &mut kernels[i].kind else {
            unreachable!("a product (matched above)");
        };
        if whole_b {
            pack_whole_b(mm, buffers);
        }
        let mm = &*mm;
        for id in gemm_uses(mm) {
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
    // Rows wider than a column block go whole where all of `B` packed and a tile of `MC`
    // rows for each of two threads come to less than the product.
    let whole_b_pays = mm.nbatch() == 1 && mm.k.saturating_add(2 * CPU_GEMM_MC) < mm.m;
    let shape_ok = numel(&f.domain) == mm.nbatch().saturating_mul(mm.m).saturating_mul(mm.n)
        && (f.reduce_axes.is_empty()
            || (f.reduce_axes == [rank - 1]
                && f.domain[rank - 1] == mm.n
                && (mm.n <= CPU_GEMM_NC || whole_b_pays)));
    let own = contiguous_strides(&f.domain);
    let in_place: Vec<bool> = f
        .loads
        .iter()
        .filter(|l| l.buffer == mm.out)
        .map(|l| l.offset == 0 && strides_agree(&l.strides, &own, &f.domain))
        .collect();
    let reads_product = !in_place.is_empty() && in_place.iter().all(|&ok| ok);
    let gemm_uses = gemm_uses(mm);
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

/// The buffers a product uses while it runs, its consumer's step too when in tiles: what it
/// reads (`liveness::product_reads`) and its workspace.
fn gemm_uses(mm: &MatMulKernel) -> Vec<BufferId> {
    let mut uses = liveness::product_reads(mm);
    uses.extend(mm.workspace);
    uses
}

/// Whether the product of kernel `i` is read by kernel `i + 1` alone and is no output: the
/// first condition for its consumer to take it in tiles.
fn next_reads_alone(
    kernels: &[Kernel],
    i: usize,
    mm: &MatMulKernel,
    outputs: &BTreeSet<BufferId>,
) -> bool {
    !outputs.contains(&mm.out)
        && !kernels
            .iter()
            .enumerate()
            .any(|(j, k)| j != i + 1 && liveness::reads(k).contains(&mm.out))
}

#[cfg(test)]
mod tests {
    use super::rename;

    #[test]
    fn renaming_after_a_split_touches_kernel_names_alone() {
        let map = [("k10", "k11"), ("k11", "k12")].into_iter().collect();
        assert_eq!(rename("k10.out1", '.', &map), "k11.out1");
        assert_eq!(rename("k11.workspace", '.', &map), "k12.workspace");
        assert_eq!(rename("k1.out", '.', &map), "k1.out");
        // A tensor of the program's own named like a kernel keeps its name.
        assert_eq!(rename("k10", '.', &map), "k10");
        assert_eq!(
            rename("k10: attention (line 3): k10.out", ':', &map),
            "k11: attention (line 3): k10.out"
        );
    }
}
