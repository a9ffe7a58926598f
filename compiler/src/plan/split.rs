//! Two-level reductions. A kernel that folds its whole domain into one value (`sum(x)`,
//! `mean((y - t) ** 2)`) has one row, and a row is one block of threads on a GPU: a large
//! one would be read by a single multiprocessor. Such a kernel runs as two instead: the
//! first reads the domain as `rows × len` and folds each row into a partial (one block per
//! row, every multiprocessor busy), the second folds the partials and computes what the
//! kernel computed after its reductions. Deterministic: the partials and their fold have a
//! fixed order. The partials are one small f32 arena buffer per reduction, live across the
//! two steps. How many rows, and so how many bytes, is `memory::sizes`'s rule, which the eager
//! model counts for the same reduction (PyTorch's reduction kernel allocates one staging
//! buffer for a grid-wide reduction).
//!
//! On the GPU a column reduction (the innermost axis a row axis: `sum(x, axis=0)`) with too
//! few columns to fill the GPU splits too, within one step (`column_split`): its blocks each
//! fold one part of the reduced axis of 32 columns into partials in the kernel's
//! `Workspace`, and a second launch folds each column's partials in part order. The
//! workspace is `memory::sizes::column_parts`'s, which the eager model counts on the GPU
//! (PyTorch's reduction kernel stages a grid-wide column reduction the same way).

use crate::ir::{BinaryOp, DType, ReduceOp};
use crate::memory::sizes::{align_up, shared_column_parts, shared_rows};
use crate::schedule::{BufferId, FusedKernel, Inst, InstId, InstOp, Level, Load, Store};

/// How a kernel splits: the rows of partials and, in body order, its reductions (one
/// partial buffer each).
pub struct Split {
    pub rows: u64,
    pub reduces: Vec<InstId>,
}

/// Whether `k` splits: it folds its whole domain (one row) of at least `sizes::SPLIT_MIN`
/// elements; it has no scan, argmax/argmin, arange or gather; no reduction reads another's result, nor does any element store; and every
/// load reads the domain in order (one stride over the flattened index) or not at all.
pub fn splittable(k: &FusedKernel) -> Option<Split> {
    // A store into a region (a `concat` part) keeps the kernel whole: its strides are over
    // this domain, not the halves'.
    if k.reduce_axes.is_empty() || k.rows() != 1 || k.stores.iter().any(|s| s.region.is_some()) {
        return None;
    }
    // A scan and an argmax/argmin need the row in one order; an arange's or a gather's
    // index map is not the loads' flattened one.
    let whole_row = k.body.iter().any(|i| match i.op {
        InstOp::Scan(_) | InstOp::Index { .. } | InstOp::Gather { .. } => true,
        InstOp::Reduce(op, _) => op.is_arg(),
        _ => false,
    });
    if whole_row {
        return None;
    }
    let n = k.row_len();
    let reduces: Vec<InstId> = (0..k.body.len())
        .filter(|&i| matches!(k.body[i].op, InstOp::Reduce(..)))
        .collect();
    let rows = shared_rows(n, reduces.len())?;
    // Insts that depend on a reduction.
    let mut after = vec![false; k.body.len()];
    for (i, inst) in k.body.iter().enumerate() {
        let ops = inst.op.operands();
        if matches!(inst.op, InstOp::Reduce(..)) && ops.iter().any(|&o| after[o]) {
            return None;
        }
        after[i] = matches!(inst.op, InstOp::Reduce(..)) || ops.iter().any(|&o| after[o]);
    }
    for st in &k.stores {
        if k.body[st.inst].level == Level::Element && after[st.inst] {
            return None;
        }
    }
    for ld in &k.loads {
        flat_stride(&k.domain, &ld.strides)?;
    }
    Some(Split { rows, reduces })
}

/// How a column reduction splits on the GPU: `parts` of the reduced axis, and the byte
/// offset in the workspace of each reduction's partials (in body order: `parts × rows`
/// accumulators, part-major, f32 or, for an integer reduction, i64), `bytes` in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSplit {
    pub parts: u64,
    pub offsets: Vec<u64>,
    pub bytes: u64,
}

/// The workspace layout of `parts` partials for each of `rows` columns, one region per
/// reduction whose accumulator is integral (`true`: 8 bytes) or f32, each 16-byte aligned.
pub fn column_layout(rows: u64, parts: u64, integral: &[bool]) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(integral.len());
    let mut at = 0u64;
    for &int in integral {
        offsets.push(at);
        let size = if int { 8 } else { 4 };
        at = at.saturating_add(align_up(parts.saturating_mul(rows).saturating_mul(size)));
    }
    (offsets, at)
}

/// Whether fused kernel `k` runs as a split column reduction on the GPU: it reduces with the
/// innermost axis (of more than one element) a row axis, over more than one row; it has no
/// scan, argmax/argmin or store into a region; no reduction reads another's result and no
/// element store one (so every reduction is folded in one walk, which the parts share, and
/// nothing per element waits for the fold); and its sizes call for parts
/// (`sizes::shared_column_parts`).
pub fn column_split(k: &FusedKernel) -> Option<ColumnSplit> {
    if k.reduce_axes.is_empty() || k.stores.iter().any(|s| s.region.is_some()) {
        return None;
    }
    let inner = (0..k.domain.len()).rev().find(|&d| k.domain[d] > 1)?;
    if k.reduce_axes.contains(&inner) {
        return None;
    }
    let whole_row = k.body.iter().any(|i| match i.op {
        InstOp::Scan(_) => true,
        InstOp::Reduce(op, _) => op.is_arg(),
        _ => false,
    });
    if whole_row {
        return None;
    }
    let mut after = vec![false; k.body.len()];
    let mut integral = Vec::new();
    for (i, inst) in k.body.iter().enumerate() {
        let ops = inst.op.operands();
        let reduce = matches!(inst.op, InstOp::Reduce(..));
        if reduce && ops.iter().any(|&o| after[o]) {
            return None;
        }
        if reduce {
            integral.push(inst.dtype.is_integral());
        }
        after[i] = reduce || ops.iter().any(|&o| after[o]);
    }
    if k.stores
        .iter()
        .any(|st| k.body[st.inst].level == Level::Element && after[st.inst])
    {
        return None;
    }
    let parts = shared_column_parts(k.rows(), k.row_len(), integral.len())?;
    let (offsets, bytes) = column_layout(k.rows(), parts, &integral);
    Some(ColumnSplit {
        parts,
        offsets,
        bytes,
    })
}

/// The one stride that reads a domain in its own (row-major) order: `strides[d]` is it
/// times the elements after axis `d`, on every axis longer than 1.
fn flat_stride(domain: &[u64], strides: &[i64]) -> Option<i64> {
    let last = (0..domain.len())
        .rev()
        .find(|&d| domain[d] > 1)
        .map_or(0, |d| strides[d]);
    let mut after: i64 = 1;
    for d in (0..domain.len()).rev() {
        if domain[d] > 1 && strides[d] != last.checked_mul(after)? {
            return None;
        }
        after = after.checked_mul(i64::try_from(domain[d]).ok()?)?;
    }
    Some(last)
}

/// The two kernels of a split `k`: the first folds `rows` rows into `partials` (one per
/// reduction of `split.reduces`, f32, `rows` long) and makes `k`'s element stores; the
/// second folds the partials and makes `k`'s row stores.
pub fn split(k: &FusedKernel, split: &Split, partials: &[BufferId]) -> (FusedKernel, FusedKernel) {
    let n = k.row_len();
    let rows = split.rows;
    let len = n / rows;
    let len_i = len as i64;
    // First: the domain as [rows, len]; a mean's partial is a sum.
    let loads = k
        .loads
        .iter()
        .map(|ld| {
            let s = flat_stride(&k.domain, &ld.strides).unwrap_or(0);
            Load {
                strides: vec![s * len_i, s],
                ..ld.clone()
            }
        })
        .collect();
    let mut body = k.body.clone();
    for inst in &mut body {
        if let InstOp::Reduce(op, _) = &mut inst.op {
            if *op == ReduceOp::Mean {
                *op = ReduceOp::Sum;
            }
            // A partial is stored as the f32 it accumulates; the fold rounds, as before.
            inst.dtype = DType::F32;
        }
    }
    let mut stores: Vec<Store> = k
        .stores
        .iter()
        .filter(|s| k.body[s.inst].level == Level::Element)
        .cloned()
        .collect();
    for (&r, &buffer) in split.reduces.iter().zip(partials) {
        stores.push(Store {
            inst: r,
            buffer,
            region: None,
        });
    }
    let first = FusedKernel {
        domain: vec![rows, len],
        reduce_axes: vec![1],
        loads,
        body,
        stores,
        workspace: None,
    };

    // Second: fold the partials, then the row-level insts of `k` after its reductions.
    let mut second = FusedKernel {
        domain: vec![rows],
        reduce_axes: vec![0],
        loads: Vec::new(),
        body: Vec::new(),
        stores: Vec::new(),
        workspace: None,
    };
    let mut map: Vec<Option<InstId>> = vec![None; k.body.len()];
    let push = |kern: &mut FusedKernel, op: InstOp, dtype: DType, level: Level, inst: &Inst| {
        kern.body.push(Inst {
            op,
            dtype,
            level,
            node: inst.node,
        });
        kern.body.len() - 1
    };
    for (i, inst) in k.body.iter().enumerate() {
        let m = |o: InstId| map[o].unwrap_or(0);
        let new = match inst.op {
            InstOp::Reduce(op, _) => {
                let which = split.reduces.iter().position(|&r| r == i).unwrap_or(0);
                second.loads.push(Load {
                    buffer: partials[which],
                    dtype: DType::F32,
                    offset: 0,
                    strides: vec![1],
                });
                let l = second.loads.len() - 1;
                let load = push(
                    &mut second,
                    InstOp::Load(l),
                    DType::F32,
                    Level::Element,
                    inst,
                );
                let fold = match op {
                    ReduceOp::Mean => ReduceOp::Sum,
                    other => other,
                };
                let red = push(
                    &mut second,
                    InstOp::Reduce(fold, load),
                    inst.dtype,
                    Level::Row,
                    inst,
                );
                Some(if op == ReduceOp::Mean {
                    let c = push(
                        &mut second,
                        InstOp::Const(n as f64),
                        DType::F32,
                        Level::Row,
                        inst,
                    );
                    push(
                        &mut second,
                        InstOp::Binary(BinaryOp::Div, red, c),
                        inst.dtype,
                        Level::Row,
                        inst,
                    )
                } else {
                    red
                })
            }
            _ if inst.level == Level::Element => None,
            InstOp::Load(l) => {
                second.loads.push(Load {
                    strides: vec![0],
                    ..k.loads[l].clone()
                });
                let l = second.loads.len() - 1;
                Some(push(
                    &mut second,
                    InstOp::Load(l),
                    inst.dtype,
                    Level::Row,
                    inst,
                ))
            }
            // A row-level constant or computation after the reductions.
            _ => Some(push(
                &mut second,
                inst.op.map_operands(m),
                inst.dtype,
                Level::Row,
                inst,
            )),
        };
        map[i] = new;
    }
    for st in k
        .stores
        .iter()
        .filter(|s| k.body[s.inst].level == Level::Row)
    {
        second.stores.push(Store {
            inst: map[st.inst].unwrap_or(0),
            buffer: st.buffer,
            region: None,
        });
    }
    (prune(first), prune(second))
}

/// `k` without the insts no store needs and the loads no inst reads.
pub(super) fn prune(k: FusedKernel) -> FusedKernel {
    let mut need = vec![false; k.body.len()];
    let mut stack: Vec<InstId> = k.stores.iter().map(|s| s.inst).collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut need[i], true) {
            stack.extend(k.body[i].op.operands());
        }
    }
    let mut load_map: Vec<Option<usize>> = vec![None; k.loads.len()];
    let mut loads = Vec::new();
    let mut inst_map: Vec<InstId> = vec![0; k.body.len()];
    let mut body = Vec::new();
    for (i, inst) in k.body.iter().enumerate() {
        if !need[i] {
            continue;
        }
        let op = match inst.op {
            InstOp::Load(l) => InstOp::Load(*load_map[l].get_or_insert_with(|| {
                loads.push(k.loads[l].clone());
                loads.len() - 1
            })),
            _ => inst.op.map_operands(|o| inst_map[o]),
        };
        body.push(Inst { op, ..inst.clone() });
        inst_map[i] = body.len() - 1;
    }
    let stores = k
        .stores
        .iter()
        .map(|s| Store {
            inst: inst_map[s.inst],
            ..s.clone()
        })
        .collect();
    FusedKernel {
        loads,
        body,
        stores,
        ..k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_strides_read_the_domain_in_order() {
        assert_eq!(flat_stride(&[4, 8], &[8, 1]), Some(1));
        assert_eq!(flat_stride(&[4, 1, 8], &[8, 99, 1]), Some(1));
        assert_eq!(flat_stride(&[4, 8], &[0, 0]), Some(0));
        assert_eq!(flat_stride(&[4, 8], &[16, 2]), Some(2));
        // Transposed, or broadcast along one axis only: not one stride.
        assert_eq!(flat_stride(&[4, 8], &[1, 4]), None);
        assert_eq!(flat_stride(&[4, 8], &[0, 1]), None);
    }
}
