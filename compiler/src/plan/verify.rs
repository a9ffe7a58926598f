//! An independent checker of a `Plan`, written from the schedule contract alone (it shares
//! no code with the planner). It checks these invariants of `docs/architecture.md` and
//! names the one that breaks (`invariant::Violation`):
//! - 4 (inputs and params are read-only): no kernel writes them;
//! - 5 (live buffers do not overlap): two arena buffers live at a common step never overlap
//!   in the arena, except an in-place pair (same offset and bytes, handed over at the step
//!   that writes the second);
//! - 6 (in-place writes are safe): an in-place write hits a buffer no later kernel and no
//!   output still reads, and reads it only at exactly the element it writes;
//! - 7 (aligned and in bounds): arena and workspace offsets are 16-byte aligned and every
//!   such buffer fits in `arena_bytes`; a buffer's bytes are its elements'; a matrix
//!   product's workspace holds what its target asks (`Target::matmul_workspace`); every load,
//!   store, matmul operand and output stays inside its buffer;
//! - 10 (kernel bodies are well formed): insts refer only to earlier insts and existing
//!   loads, a `Reduce` folds an `Element` operand into a `Row` value, reduce axes are
//!   sorted and in range, loads have the domain's rank (the f16 rounding casts are not
//!   checked here);
//! - 13 (buffers are written before they are read): every arena buffer is written once, at
//!   its first step (a buffer written in parts, a concat's, from its first step on, and
//!   read only after its last part), and read only in `first_step + 1 ..= last_step`; outputs live to the
//!   last step; a workspace (a matmul's, or a split column reduction's) lives exactly at its
//!   kernel's step.

use crate::invariant::{Invariant, Violation};
use crate::schedule::{
    BufferId, BufferKind, Inst, InstOp, KernelKind, Level, Load, MatOperand, Plan,
};
use Invariant::{InBounds, InPlaceSafe, KernelBody, LeavesReadOnly, Lifetimes, NoOverlap};

/// Lowest and highest element offset of `offset + Σ i·strides` over `0 ≤ i < sizes`.
fn span(offset: i64, strides: &[i64], sizes: &[u64]) -> (i128, i128) {
    let mut lo = offset as i128;
    let mut hi = offset as i128;
    for (&st, &n) in strides.iter().zip(sizes) {
        let ext = st as i128 * (n as i128 - 1);
        if ext < 0 {
            lo += ext;
        } else {
            hi += ext;
        }
    }
    (lo, hi)
}

fn numel(s: &[u64]) -> i128 {
    s.iter().map(|&d| d as i128).product()
}

fn contiguous(sizes: &[u64]) -> Vec<i64> {
    let mut st = vec![0i64; sizes.len()];
    let mut acc = 1i64;
    for i in (0..sizes.len()).rev() {
        st[i] = acc;
        acc = acc.saturating_mul(sizes[i] as i64);
    }
    st
}

fn bad(invariant: Invariant, message: String) -> Violation {
    Violation::new(invariant, message)
}

/// An elementwise body (an attention kernel's prologue, epilogue or prologue backward, a
/// product's prologue: `what`) over a domain of `rank` axes: every inst elementwise over
/// earlier insts and load ids below `load_ids`, no reductions, gathers or scans, and
/// `result` one of its insts.
fn check_elementwise(
    kernel: &str,
    what: &str,
    body: &[Inst],
    load_ids: usize,
    rank: usize,
    result: usize,
) -> Result<(), Violation> {
    for (i, inst) in body.iter().enumerate() {
        let ok = inst.level == Level::Element
            && match inst.op {
                InstOp::Load(l) => l < load_ids,
                InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => false,
                InstOp::Index { ref strides, .. } => strides.len() == rank,
                ref op => op.operands().iter().all(|&o| o < i),
            };
        if !ok {
            return Err(bad(
                KernelBody,
                format!("{kernel}: {what} inst {i} is not elementwise over earlier insts"),
            ));
        }
    }
    if result >= body.len() {
        return Err(bad(
            KernelBody,
            format!("{kernel}: the {what}'s result is no inst"),
        ));
    }
    Ok(())
}

/// An attention kernel's loads (its prologue's, epilogue's, `what`) over `dom`: of their
/// buffer's dtype and inside it. The buffers must exist (checked by the caller).
fn check_loads(
    plan: &Plan,
    kernel: &str,
    what: &str,
    loads: &[Load],
    dom: &[u64],
) -> Result<(), Violation> {
    for l in loads {
        let b = plan.buffer(l.buffer);
        let (lo, hi) = span(l.offset, &l.strides, dom);
        if l.dtype != b.dtype || l.strides.len() != dom.len() || lo < 0 || hi >= numel(&b.shape) {
            return Err(bad(
                InBounds,
                format!("{kernel}: {what} load of {} is out of bounds", b.name),
            ));
        }
    }
    Ok(())
}

/// An attention kernel's matrix operand `[batch…, rows, cols]`: inside its buffer, which
/// must exist (checked by the caller).
fn check_operand(
    plan: &Plan,
    kernel: &str,
    op: &MatOperand,
    batch: &[u64],
    rows: u64,
    cols: u64,
) -> Result<(), Violation> {
    let b = plan.buffer(op.buffer);
    let mut sizes = batch.to_vec();
    sizes.extend([rows, cols]);
    let (lo, hi) = span(op.offset, &op.strides, &sizes);
    if op.strides.len() != sizes.len() || lo < 0 || hi >= numel(&b.shape) {
        return Err(bad(
            InBounds,
            format!("{kernel}: operand {} is out of bounds", b.name),
        ));
    }
    Ok(())
}

/// `Ok` when `plan` keeps every invariant above, else the first violation, naming it.
pub fn verify(plan: &Plan) -> Result<(), Violation> {
    // 10.
    for kernel in &plan.kernels {
        let KernelKind::Fused(k) = &kernel.kind else {
            continue;
        };
        for (i, inst) in k.body.iter().enumerate() {
            let loaded = match inst.op {
                InstOp::Load(l) | InstOp::Gather { load: Some(l), .. } => Some(l),
                _ => None,
            };
            if let Some(l) = loaded {
                if l >= k.loads.len() {
                    return Err(bad(
                        KernelBody,
                        format!("{}: inst {i} loads l{l}, which does not exist", kernel.name),
                    ));
                }
            }
            let operands = inst.op.operands();
            if let Some(a) = operands.iter().find(|&&a| a >= i) {
                return Err(bad(
                    KernelBody,
                    format!(
                        "{}: inst {i} reads inst {a}, which is not earlier",
                        kernel.name
                    ),
                ));
            }
            if let InstOp::Reduce(_, a) = inst.op {
                if k.body[a].level != Level::Element || inst.level != Level::Row {
                    return Err(bad(
                        KernelBody,
                        format!(
                            "{}: inst {i} reduces a {:?} operand into a {:?} value",
                            kernel.name, k.body[a].level, inst.level
                        ),
                    ));
                }
            }
        }
    }
    let nb = plan.buffers.len();
    let in_arena = |id: usize| {
        matches!(
            plan.buffers[id].kind,
            BufferKind::Arena | BufferKind::Workspace
        )
    };
    let last_step = plan.kernels.len().saturating_sub(1);
    // 7 (and 13: lifetimes in order).
    for (i, b) in plan.buffers.iter().enumerate() {
        if in_arena(i) {
            if b.offset % 16 != 0 {
                return Err(bad(
                    InBounds,
                    format!(
                        "buffer {} at offset {} is not 16-byte aligned",
                        b.name, b.offset
                    ),
                ));
            }
            if b.offset
                .checked_add(b.bytes)
                .is_none_or(|e| e > plan.arena_bytes)
            {
                return Err(bad(
                    InBounds,
                    format!(
                        "buffer {} ends past the arena ({} bytes)",
                        b.name, plan.arena_bytes
                    ),
                ));
            }
        }
        if b.first_step > b.last_step {
            return Err(bad(
                Lifetimes,
                format!(
                    "buffer {} is live from step {} to {}",
                    b.name, b.first_step, b.last_step
                ),
            ));
        }
        if let BufferKind::Arena | BufferKind::Input { .. } | BufferKind::Param { .. } = b.kind {
            let want = numel(&b.shape) * b.dtype.size() as i128;
            if want != b.bytes as i128 {
                return Err(bad(
                    InBounds,
                    format!(
                        "buffer {} has {} bytes for {} elements",
                        b.name,
                        b.bytes,
                        numel(&b.shape)
                    ),
                ));
            }
        }
    }
    // Writers and readers (4, 7, 10, 13).
    let mut written_at: Vec<Vec<usize>> = vec![Vec::new(); nb];
    // Buffers written in parts (a concat's): by several stores, at one or more steps.
    let mut parts = vec![false; nb];
    let mut read_at: Vec<Vec<usize>> = vec![Vec::new(); nb];
    let check_id = |id: BufferId| {
        if id.index() < nb {
            Ok(())
        } else {
            Err(bad(InBounds, format!("buffer {} does not exist", id.0)))
        }
    };
    for (s, k) in plan.kernels.iter().enumerate() {
        match &k.kind {
            KernelKind::Fused(f) => {
                if f.reduce_axes.iter().any(|&a| a >= f.domain.len())
                    || f.reduce_axes.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(bad(
                        KernelBody,
                        format!("{}: bad reduce axes {:?}", k.name, f.reduce_axes),
                    ));
                }
                // A split column reduction's partials: scratch of this step alone, of a
                // reduction kernel.
                if let Some(w) = f.workspace {
                    check_id(w)?;
                    let b = plan.buffer(w);
                    if b.kind != BufferKind::Workspace
                        || b.first_step != s
                        || b.last_step != s
                        || f.reduce_axes.is_empty()
                    {
                        return Err(bad(
                            Lifetimes,
                            format!(
                                "{}: workspace {} is not a reduction's scratch live exactly at its step",
                                k.name, b.name
                            ),
                        ));
                    }
                    written_at[w.index()].push(s);
                }
                for (li, l) in f.loads.iter().enumerate() {
                    check_id(l.buffer)?;
                    let b = plan.buffer(l.buffer);
                    if l.dtype != b.dtype || l.strides.len() != f.domain.len() {
                        return Err(bad(
                            KernelBody,
                            format!("{}: load of {} has the wrong dtype or rank", k.name, b.name),
                        ));
                    }
                    // A gathered read also reaches every in-range index along its axis.
                    let (mut strides, mut sizes) = (l.strides.clone(), f.domain.clone());
                    for inst in &f.body {
                        if let InstOp::Gather {
                            load, stride, size, ..
                        } = inst.op
                        {
                            if load == Some(li) {
                                strides.push(stride);
                                sizes.push(size);
                            }
                        }
                    }
                    let (lo, hi) = span(l.offset, &strides, &sizes);
                    if lo < 0 || hi >= numel(&b.shape) {
                        return Err(bad(
                            InBounds,
                            format!(
                                "{}: load of {} reads elements {lo}..={hi} of {}",
                                k.name,
                                b.name,
                                numel(&b.shape)
                            ),
                        ));
                    }
                    read_at[l.buffer.index()].push(s);
                }
                for st in &f.stores {
                    check_id(st.buffer)?;
                    let b = plan.buffer(st.buffer);
                    let inst = f.body.get(st.inst).ok_or_else(|| {
                        bad(KernelBody, format!("{}: store of a missing inst", k.name))
                    })?;
                    if let Some(r) = &st.region {
                        // A part of a larger buffer (a concat operand): inside it.
                        let (lo, hi) = span(r.offset, &r.strides, &f.domain);
                        if r.strides.len() != f.domain.len()
                            || lo < 0
                            || hi >= numel(&b.shape)
                            || inst.dtype != b.dtype
                        {
                            return Err(bad(
                                InBounds,
                                format!(
                                    "{}: store into a region {lo}..={hi} of {} of {} {}",
                                    k.name,
                                    b.name,
                                    numel(&b.shape),
                                    b.dtype
                                ),
                            ));
                        }
                        written_at[st.buffer.index()].push(s);
                        parts[st.buffer.index()] = true;
                        continue;
                    }
                    let n = match inst.level {
                        Level::Element => numel(&f.domain),
                        Level::Row => f.rows() as i128,
                    };
                    if n != numel(&b.shape) || inst.dtype != b.dtype {
                        return Err(bad(
                            InBounds,
                            format!(
                                "{}: store of {n} elements into {} of {} {}",
                                k.name,
                                b.name,
                                numel(&b.shape),
                                b.dtype
                            ),
                        ));
                    }
                    written_at[st.buffer.index()].push(s);
                }
            }
            KernelKind::Attention(a) => {
                let mut dom = a.batch.clone();
                dom.extend([a.m, a.n]);
                check_elementwise(
                    &k.name,
                    "prologue",
                    &a.body,
                    a.loads.len() + 1,
                    dom.len(),
                    a.logits,
                )?;
                for l in &a.loads {
                    check_id(l.buffer)?;
                    read_at[l.buffer.index()].push(s);
                }
                check_loads(plan, &k.name, "prologue", &a.loads, &dom)?;
                for (op, rows, cols) in [(&a.q, a.m, a.d), (&a.k, a.d, a.n), (&a.v, a.n, a.dv)] {
                    check_id(op.buffer)?;
                    check_operand(plan, &k.name, op, &a.batch, rows, cols)?;
                    read_at[op.buffer.index()].push(s);
                }
                check_id(a.out)?;
                let mut sizes = a.batch.clone();
                sizes.extend([a.m, a.dv]);
                if let Some(e) = &a.epilogue {
                    let rank = sizes.len();
                    check_elementwise(
                        &k.name,
                        "epilogue",
                        &e.body,
                        e.loads.len() + 1,
                        rank,
                        e.result,
                    )?;
                    for l in &e.loads {
                        check_id(l.buffer)?;
                        read_at[l.buffer.index()].push(s);
                    }
                    check_loads(plan, &k.name, "epilogue", &e.loads, &sizes)?;
                }
                let b = plan.buffer(a.out);
                // The output's strides write each element of the buffer once: sorted by
                // stride, the axes longer than 1 tile it contiguously.
                let mut axes: Vec<(i64, u64)> = a
                    .out_strides
                    .iter()
                    .zip(&sizes)
                    .filter(|(_, &n)| n > 1)
                    .map(|(&st, &n)| (st, n))
                    .collect();
                axes.sort();
                let mut next = 1i64;
                let tiles = axes.iter().all(|&(st, n)| {
                    let ok = st == next;
                    next = next.saturating_mul(n as i64);
                    ok
                });
                if numel(&sizes) != numel(&b.shape)
                    || b.dtype != a.out_dtype
                    || a.out_strides.len() != sizes.len()
                    || a.out_offset != 0
                    || !tiles
                {
                    return Err(bad(
                        InBounds,
                        format!(
                            "{}: output {} has the wrong size or strides",
                            k.name, b.name
                        ),
                    ));
                }
                written_at[a.out.index()].push(s);
            }
            KernelKind::AttentionBackward(a) => {
                let mut dom = a.batch.clone();
                dom.extend([a.m, a.n]);
                check_elementwise(
                    &k.name,
                    "prologue",
                    &a.body,
                    a.loads.len() + 1,
                    dom.len(),
                    a.logits,
                )?;
                let (grad_loads, rank) = (a.grad_loads.len(), dom.len());
                check_elementwise(
                    &k.name,
                    "prologue backward",
                    &a.grad_body,
                    grad_loads + 1,
                    rank,
                    a.grad_scores,
                )?;
                if a.body[a.logits].dtype.is_integral()
                    || a.grad_body[a.grad_scores].dtype.is_integral()
                {
                    return Err(bad(
                        KernelBody,
                        format!("{}: the logits or their gradient are no float inst", k.name),
                    ));
                }
                for l in a.loads.iter().chain(&a.grad_loads) {
                    check_id(l.buffer)?;
                    read_at[l.buffer.index()].push(s);
                }
                check_loads(plan, &k.name, "prologue", &a.loads, &dom)?;
                check_loads(plan, &k.name, "prologue backward", &a.grad_loads, &dom)?;
                for (op, rows, cols) in [
                    (&a.q, a.m, a.d),
                    (&a.k, a.d, a.n),
                    (&a.v, a.n, a.dv),
                    (&a.d_out, a.m, a.dv),
                ] {
                    check_id(op.buffer)?;
                    check_operand(plan, &k.name, op, &a.batch, rows, cols)?;
                    read_at[op.buffer.index()].push(s);
                }
                if a.dq.is_none() && a.dk.is_none() && a.dv_out.is_none() {
                    return Err(bad(
                        KernelBody,
                        format!("{}: an attention backward writes no gradient", k.name),
                    ));
                }
                for (o, rows, cols) in
                    [(&a.dq, a.m, a.d), (&a.dk, a.n, a.d), (&a.dv_out, a.n, a.dv)]
                {
                    let Some(o) = o else { continue };
                    check_id(o.buffer)?;
                    let b = plan.buffer(o.buffer);
                    let mut sizes = a.batch.clone();
                    sizes.extend([rows, cols]);
                    let (lo, hi) = span(o.offset, &o.strides, &sizes);
                    if o.strides.len() != sizes.len()
                        || lo < 0
                        || hi >= numel(&b.shape)
                        || numel(&sizes) != numel(&b.shape)
                        || b.dtype != o.dtype
                    {
                        return Err(bad(
                            InBounds,
                            format!("{}: gradient {} is out of bounds", k.name, b.name),
                        ));
                    }
                    written_at[o.buffer.index()].push(s);
                }
                check_id(a.workspace)?;
                let w = plan.buffer(a.workspace);
                let rows = numel(&a.batch) * a.m as i128;
                if w.kind != BufferKind::Workspace
                    || w.first_step != s
                    || w.last_step != s
                    || numel(&w.shape) < 3 * rows
                    || w.dtype != crate::ir::DType::F32
                {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "{}: workspace {} is not 3 floats a row live exactly at its step",
                            k.name, w.name
                        ),
                    ));
                }
                written_at[a.workspace.index()].push(s);
            }
            KernelKind::IndexAdd(ia) => {
                // The index and the gradient inside their buffers over their own shapes,
                // the index an integer, the gradient a float; the result f32 of
                // `pre ++ [rows] ++ post`, written whole.
                let mut g_shape = ia.pre.clone();
                g_shape.extend(&ia.index_shape);
                g_shape.extend(&ia.post);
                for (what, l, sizes) in [
                    ("index", &ia.index, &ia.index_shape),
                    ("gradient", &ia.grad, &g_shape),
                ] {
                    check_id(l.buffer)?;
                    check_loads(plan, &k.name, what, std::slice::from_ref(l), sizes)?;
                    read_at[l.buffer.index()].push(s);
                }
                if !ia.index.dtype.is_integral() || !ia.grad.dtype.is_float() {
                    return Err(bad(
                        KernelBody,
                        format!(
                            "{}: index add of a {} gradient by a {} index",
                            k.name, ia.grad.dtype, ia.index.dtype
                        ),
                    ));
                }
                check_id(ia.out)?;
                let b = plan.buffer(ia.out);
                let mut out_shape = ia.pre.clone();
                out_shape.push(ia.rows);
                out_shape.extend(&ia.post);
                if numel(&b.shape) != numel(&out_shape) || b.dtype != crate::ir::DType::F32 {
                    return Err(bad(
                        InBounds,
                        format!(
                            "{}: index add of {} elements into {} of {} {}",
                            k.name,
                            numel(&out_shape),
                            b.name,
                            numel(&b.shape),
                            b.dtype
                        ),
                    ));
                }
                written_at[ia.out.index()].push(s);
            }
            KernelKind::MatMul(m) => {
                for (op, rows, cols) in [(&m.a, m.m, m.k), (&m.b, m.k, m.n)] {
                    check_id(op.buffer)?;
                    let b = plan.buffer(op.buffer);
                    let mut sizes = m.batch.clone();
                    sizes.extend([rows, cols]);
                    if op.strides.len() != sizes.len() {
                        return Err(bad(
                            InBounds,
                            format!(
                                "{}: operand {} has {} strides for rank {}",
                                k.name,
                                b.name,
                                op.strides.len(),
                                sizes.len()
                            ),
                        ));
                    }
                    let (lo, hi) = span(op.offset, &op.strides, &sizes);
                    if lo < 0 || hi >= numel(&b.shape) {
                        return Err(bad(
                            InBounds,
                            format!(
                                "{}: operand {} reads elements {lo}..={hi} of {}",
                                k.name,
                                b.name,
                                numel(&b.shape)
                            ),
                        ));
                    }
                    read_at[op.buffer.index()].push(s);
                }
                // A prologue (`plan::prologue`): a pointwise kernel over `a`'s buffer, in
                // bounds, whose one store is that buffer, whole; its loads read at this step.
                if let Some(p) = &m.prologue {
                    let a = plan.buffer(m.a.buffer);
                    let one_store = matches!(
                        p.stores[..],
                        [ref st] if st.buffer == m.a.buffer && st.region.is_none() && st.inst < p.body.len()
                    );
                    // Its loads are numbered from 0 (no stand-in load as an attention
                    // body's), and an index map is not the interpreter's to run.
                    check_elementwise(
                        &k.name,
                        "prologue",
                        &p.body,
                        p.loads.len(),
                        p.domain.len(),
                        p.stores.first().map_or(usize::MAX, |st| st.inst),
                    )?;
                    if !one_store
                        || p.body.iter().any(|i| matches!(i.op, InstOp::Index { .. }))
                        || !p.reduce_axes.is_empty()
                        || p.workspace.is_some()
                        || p.domain != a.shape
                        || a.kind != BufferKind::Tile
                    {
                        return Err(bad(
                            KernelBody,
                            format!(
                                "{}: the prologue is not a pointwise kernel writing the whole of {}, never stored",
                                k.name, a.name
                            ),
                        ));
                    }
                    for l in &p.loads {
                        check_id(l.buffer)?;
                    }
                    check_loads(plan, &k.name, "prologue", &p.loads, &p.domain)?;
                    for l in &p.loads {
                        read_at[l.buffer.index()].push(s);
                    }
                }
                check_id(m.out)?;
                let mut sizes = m.batch.clone();
                sizes.extend([m.m, m.n]);
                if numel(&sizes) != numel(&plan.buffer(m.out).shape) {
                    return Err(bad(
                        InBounds,
                        format!(
                            "{}: output {} has the wrong size",
                            k.name,
                            plan.buffer(m.out).name
                        ),
                    ));
                }
                written_at[m.out.index()].push(s);
                if let Some(x) = m.accumulate {
                    check_id(x)?;
                    let (xb, ob) = (plan.buffer(x), plan.buffer(m.out));
                    if xb.shape != ob.shape || xb.dtype != ob.dtype || ob.dtype != m.out_dtype {
                        return Err(bad(
                            InBounds,
                            format!(
                                "{}: the residual {} is not of the output's shape and dtype",
                                k.name, xb.name
                            ),
                        ));
                    }
                    if ob.in_place_of == Some(x) && (x == m.a.buffer || x == m.b.buffer) {
                        return Err(bad(
                            InPlaceSafe,
                            format!("{}: {} is an operand it overwrites", k.name, xb.name),
                        ));
                    }
                    read_at[x.index()].push(s);
                }
                let want = m.workspace_bytes(&plan.options.target);
                let have = m.workspace.map_or(0, |w| plan.buffer(w).bytes);
                if have < want {
                    return Err(bad(
                        InBounds,
                        format!(
                            "{}: a workspace of {have} bytes for a product that needs {want}",
                            k.name
                        ),
                    ));
                }
                if let Some(w) = m.workspace {
                    check_id(w)?;
                    let b = plan.buffer(w);
                    // A product never stored whole keeps it through its consumer's step,
                    // and one whose consumer may run as its epilogue may (`plan::tile`).
                    let lasts = if plan.buffer(m.out).kind == BufferKind::Tile {
                        s + 1..=s + 1
                    } else if crate::schedule::epilogue_pair(&plan.kernels, s) {
                        s..=s + 1
                    } else {
                        s..=s
                    };
                    if b.kind != BufferKind::Workspace
                        || b.first_step != s
                        || !lasts.contains(&b.last_step)
                    {
                        return Err(bad(
                            Lifetimes,
                            format!(
                                "{}: workspace {} is not live exactly at its step",
                                k.name, b.name
                            ),
                        ));
                    }
                    written_at[w.index()].push(s);
                }
            }
        }
    }
    let mut output_bufs = vec![false; nb];
    for o in &plan.outputs {
        check_id(o.buffer)?;
        let b = plan.buffer(o.buffer);
        let (lo, hi) = span(o.offset, &o.strides, &o.shape);
        if lo < 0 || hi >= numel(&b.shape) {
            return Err(bad(
                InBounds,
                format!("output {} reads outside {}", o.name, b.name),
            ));
        }
        if b.last_step != last_step {
            return Err(bad(
                Lifetimes,
                format!(
                    "output {} ({}) is freed at step {} before the end",
                    o.name, b.name, b.last_step
                ),
            ));
        }
        output_bufs[o.buffer.index()] = true;
    }
    for (i, b) in plan.buffers.iter().enumerate() {
        match b.kind {
            BufferKind::Input { .. } | BufferKind::Param { .. } => {
                if !written_at[i].is_empty() {
                    return Err(bad(
                        LeavesReadOnly,
                        format!("input/param {} is written", b.name),
                    ));
                }
            }
            BufferKind::Tile if written_at[i].is_empty() => {
                // A product's `A` its prologue computes (`plan::prologue`): a CPU plan's,
                // read only as that by products, live from the first to the last, no output.
                let computed = |r: &usize| {
                    matches!(
                        plan.kernels.get(*r).map(|k| &k.kind),
                        Some(KernelKind::MatMul(m)) if m.a.buffer.index() == i
                            && m.b.buffer.index() != i
                            && m.prologue.is_some()
                    )
                };
                if plan.options.for_gpu()
                    || read_at[i].is_empty()
                    || !read_at[i].iter().all(computed)
                    || read_at[i].iter().min() != Some(&b.first_step)
                    || read_at[i].iter().max() != Some(&b.last_step)
                    || output_bufs[i]
                {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is never stored but is not a CPU product's A its prologue computes",
                            b.name
                        ),
                    ));
                }
            }
            BufferKind::Tile => {
                // A product never stored whole (`plan::tile`): a CPU plan's, written by one
                // product and read by the fused kernel right after it alone, no output.
                let s = b.first_step;
                let by_product = matches!(
                    plan.kernels.get(s).map(|k| &k.kind),
                    Some(KernelKind::MatMul(m)) if m.out.index() == i && m.accumulate.is_none()
                );
                let next_fused = matches!(
                    plan.kernels.get(s + 1).map(|k| &k.kind),
                    Some(KernelKind::Fused(_))
                );
                if plan.options.for_gpu()
                    || !by_product
                    || !next_fused
                    || written_at[i] != [s]
                    || read_at[i].iter().any(|&r| r != s + 1)
                    || output_bufs[i]
                {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is never stored whole but is not a CPU product read by the fused kernel after it alone",
                            b.name
                        ),
                    ));
                }
            }
            _ if parts[i] => {
                // Written part by part from its first step on, read only once complete.
                let last_write = written_at[i].iter().max().copied().unwrap_or(0);
                if written_at[i].iter().min() != Some(&b.first_step) {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is written in parts at steps {:?}, first not at {}",
                            b.name, written_at[i], b.first_step
                        ),
                    ));
                }
                if let Some(&r) = read_at[i]
                    .iter()
                    .find(|&&r| r <= last_write || r > b.last_step)
                {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is read at step {r}, before its last part is written ({last_write}) or after {}",
                            b.name, b.last_step
                        ),
                    ));
                }
            }
            _ => {
                if written_at[i] != [b.first_step] {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is written at steps {:?}, not once at {}",
                            b.name, written_at[i], b.first_step
                        ),
                    ));
                }
                if let Some(&r) = read_at[i]
                    .iter()
                    .find(|&&r| r <= b.first_step || r > b.last_step)
                {
                    return Err(bad(
                        Lifetimes,
                        format!(
                            "buffer {} is read at step {r} outside its life {}..{}",
                            b.name, b.first_step, b.last_step
                        ),
                    ));
                }
            }
        }
        if in_arena(i) && read_at[i].iter().max().is_some_and(|&r| r > b.last_step) {
            return Err(bad(
                Lifetimes,
                format!("buffer {} is read after its last step", b.name),
            ));
        }
    }
    // 6. in-place pairs.
    for (i, b) in plan.buffers.iter().enumerate() {
        let Some(prev) = b.in_place_of else { continue };
        check_id(prev)?;
        let p = plan.buffer(prev);
        let s = b.first_step;
        if p.kind != BufferKind::Arena || b.kind != BufferKind::Arena {
            return Err(bad(
                InPlaceSafe,
                format!(
                    "{} is in place of {}, which is not an arena buffer",
                    b.name, p.name
                ),
            ));
        }
        if p.offset != b.offset || p.bytes != b.bytes || p.dtype != b.dtype {
            return Err(bad(
                InPlaceSafe,
                format!("{} in place of {} with different storage", b.name, p.name),
            ));
        }
        if output_bufs[prev.index()]
            || read_at[prev.index()].iter().any(|&r| r > s)
            || p.last_step != s
        {
            return Err(bad(
                InPlaceSafe,
                format!(
                    "{} overwrites {}, which is still read after step {s}",
                    b.name, p.name
                ),
            ));
        }
        let f = match &plan.kernels[s].kind {
            KernelKind::Fused(f) => f,
            // A GEMM accumulating into the buffer it takes over reads each element it writes
            // (an operand it also reads is refused above).
            KernelKind::MatMul(m) if m.out.index() == i && m.accumulate == Some(prev) => continue,
            _ => {
                return Err(bad(
                    InPlaceSafe,
                    format!("{} is in place of {} in a matmul", b.name, p.name),
                ))
            }
        };
        for st in f.stores.iter().filter(|st| st.buffer.index() == i) {
            let want = match f.body[st.inst].level {
                Level::Element => contiguous(&f.domain),
                Level::Row => {
                    let rows: Vec<u64> = (0..f.domain.len())
                        .map(|a| {
                            if f.reduce_axes.contains(&a) {
                                1
                            } else {
                                f.domain[a]
                            }
                        })
                        .collect();
                    let mut c = contiguous(&rows);
                    for &a in &f.reduce_axes {
                        c[a] = 0;
                    }
                    c
                }
            };
            for l in f.loads.iter().filter(|l| l.buffer == prev) {
                let aligned = l.offset == 0
                    && l.strides
                        .iter()
                        .zip(&want)
                        .zip(&f.domain)
                        .all(|((a, b), &n)| n == 1 || a == b);
                if !aligned {
                    return Err(bad(
                        InPlaceSafe,
                        format!(
                            "{}: in-place store to {} reads {} at another element",
                            plan.kernels[s].name, b.name, p.name
                        ),
                    ));
                }
            }
        }
    }
    // 5. no overlap of live arena buffers.
    for i in 0..nb {
        for j in 0..i {
            if !(in_arena(i) && in_arena(j)) {
                continue;
            }
            let (a, b) = (&plan.buffers[i], &plan.buffers[j]);
            let time = a.first_step <= b.last_step && b.first_step <= a.last_step;
            let space = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
            if time && space {
                let handover = (a.in_place_of == Some(BufferId(j as u32))
                    && b.last_step == a.first_step)
                    || (b.in_place_of == Some(BufferId(i as u32)) && a.last_step == b.first_step);
                if !handover {
                    return Err(bad(
                        NoOverlap,
                        format!(
                            "{} [{}, {}) and {} [{}, {}) overlap while both live",
                            a.name,
                            a.offset,
                            a.offset + a.bytes,
                            b.name,
                            b.offset,
                            b.offset + b.bytes
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
