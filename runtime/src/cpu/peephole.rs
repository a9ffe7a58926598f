//! Rewrites of a lowered fused kernel that the CPU executor applies before running it,
//! each giving the very bits of what it replaces with less work: one shared exponential
//! for `sigmoid(v)` where the kernel also computes `1 + exp(-v)` (as the peers' programs
//! and `examples/chain.tx` do) — `math::sigmoid` is `1 / (1 + exp(-v))` with the same
//! `exp`, so `sigmoid(v)` becomes `1 / t` on that `t` — and no work for a cast that changes
//! no value (f16 or bf16 to f32, a float dtype to itself: `halves::widens_exactly`), whose
//! users read its operand instead (the f32 lanes hold the same bits either way), nor for a
//! cast whose value is only stored to its own dtype (the store rounds alike), nor for any
//! value no store needs.

use tc_compiler::ir::{BinaryOp, DType, UnaryOp};
use tc_compiler::lower::{KernelIr, Level, ValueId, ValueOp};

/// Applies every rewrite to `ir`, keeping each pass's element values in an order where
/// every value comes after its operands.
pub(super) fn rewrite(ir: &mut KernelIr) {
    skip_exact_casts(ir);
    store_before_narrowing(ir);
    drop_unused(ir);
    if share_sigmoid_exp(ir) {
        for q in 0..ir.passes.len() {
            let order = topological(ir, &ir.passes[q].elements);
            ir.passes[q].elements = order;
        }
    }
}

/// Every use of a cast that changes no value (`halves::widens_exactly` from its operand's
/// dtype), by an op or a store, reads the operand instead (through chains of such casts);
/// the cast is then unused (`drop_unused`). Its operand is in every pass the cast was in (a
/// pass computes the operands of its element values), and the values are the same bits, so
/// every op, reduction and store sees what it saw.
fn skip_exact_casts(ir: &mut KernelIr) {
    let exact = |ir: &KernelIr, id: ValueId| match ir.value(id).op {
        ValueOp::Cast(a) => {
            super::halves::widens_exactly(ir.value(a).dtype, ir.value(id).dtype).then_some(a)
        }
        _ => None,
    };
    let n = ir.values.len();
    let mut to: Vec<ValueId> = (0..n).map(ValueId::new).collect();
    for id in (0..n).map(ValueId::new) {
        let mut at = id;
        while let Some(a) = exact(ir, at) {
            at = a;
        }
        to[id.index()] = at;
    }
    if to.iter().enumerate().all(|(i, t)| t.index() == i) {
        return;
    }
    for v in &mut ir.values {
        v.op = v.op.map_operands(|a| to[a.index()]);
    }
    for st in &mut ir.stores {
        st.value = to[st.value.index()];
    }
}

/// A store of a cast to the store's own float dtype stores the cast's float operand
/// instead: a store rounds to its buffer's dtype anyway, and rounding twice to one dtype is
/// rounding once (`f16(f16(x)) = f16(x)`), so the bits stored are the same.
fn store_before_narrowing(ir: &mut KernelIr) {
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    for s in 0..ir.stores.len() {
        let v = ir.value(ir.stores[s].value);
        if let ValueOp::Cast(a) = v.op {
            if v.dtype == ir.stores[s].dtype && float(v.dtype) && float(ir.value(a).dtype) {
                ir.stores[s].value = a;
            }
        }
    }
}

/// Values no store needs (through the operands of those it does) leave every pass and,
/// loads aside, become unused constants: nothing computes them, and no use of them is
/// counted where the executor looks for single-use values to fold. (A gather stays: it
/// checks its indices.)
fn drop_unused(ir: &mut KernelIr) {
    let mut live = vec![false; ir.values.len()];
    let mut stack: Vec<ValueId> = ir.stores.iter().map(|s| s.value).collect();
    stack.extend(
        (0..ir.values.len())
            .map(ValueId::new)
            .filter(|&v| matches!(ir.value(v).op, ValueOp::Gather { .. })),
    );
    while let Some(v) = stack.pop() {
        if !std::mem::replace(&mut live[v.index()], true) {
            stack.extend(ir.value(v).op.operands());
        }
    }
    for (i, v) in ir.values.iter_mut().enumerate() {
        if !live[i] && !matches!(v.op, ValueOp::Load(_)) {
            v.op = ValueOp::Const(0.0);
            v.level = Level::Row;
        }
    }
    for q in &mut ir.passes {
        q.elements.retain(|e| live[e.index()]);
        q.row.retain(|e| live[e.index()]);
        q.reduces.retain(|e| live[e.index()]);
    }
}

/// `sigmoid(v)` → `1 / t` where `t = 1 + exp(-v)` is an element value of the kernel, all
/// of them f32 and computed in the same passes. Returns whether anything changed.
fn share_sigmoid_exp(ir: &mut KernelIr) -> bool {
    let f32_elem = |ir: &KernelIr, id: ValueId| {
        let v = ir.value(id);
        v.dtype == DType::F32 && v.level == Level::Element
    };
    let is_one = |ir: &KernelIr, id: ValueId| {
        let v = ir.value(id);
        matches!(v.op, ValueOp::Const(c) if c as f32 == 1.0) && v.dtype == DType::F32
    };
    // `1 + exp(-v)` by `v`: (`t`, the constant 1).
    let mut by_operand: Vec<Option<(ValueId, ValueId)>> = vec![None; ir.values.len()];
    for t in (0..ir.values.len()).map(ValueId::new) {
        let ValueOp::Binary(BinaryOp::Add, a, b) = ir.value(t).op else {
            continue;
        };
        let (one, e) = if is_one(ir, a) { (a, b) } else { (b, a) };
        if !is_one(ir, one) || !f32_elem(ir, t) || !f32_elem(ir, e) {
            continue;
        }
        let ValueOp::Unary(UnaryOp::Exp, n) = ir.value(e).op else {
            continue;
        };
        let ValueOp::Unary(UnaryOp::Neg, v) = ir.value(n).op else {
            continue;
        };
        if f32_elem(ir, n) {
            by_operand[v.index()].get_or_insert((t, one));
        }
    }
    let mut changed = false;
    for s in (0..ir.values.len()).map(ValueId::new) {
        let ValueOp::Unary(UnaryOp::Sigmoid, v) = ir.value(s).op else {
            continue;
        };
        let Some((t, one)) = by_operand[v.index()] else {
            continue;
        };
        // Wherever `s` is computed, `t` must be too (a pass computes its own blocks).
        let same_passes = ir
            .passes
            .iter()
            .all(|q| !q.elements.contains(&s) || q.elements.contains(&t));
        if f32_elem(ir, s) && same_passes {
            ir.values[s.index()].op = ValueOp::Binary(BinaryOp::Div, one, t);
            changed = true;
        }
    }
    changed
}

/// `elements` reordered so that each comes after those of its operands that are in the
/// list, otherwise in the given order (unchanged when it already is so).
fn topological(ir: &KernelIr, elements: &[ValueId]) -> Vec<ValueId> {
    let mut member = vec![false; ir.values.len()];
    for &e in elements {
        member[e.index()] = true;
    }
    let mut done = vec![false; ir.values.len()];
    let mut out = Vec::with_capacity(elements.len());
    // Depth-first, operands first; the kernel IR is acyclic, so the stack stays bounded by
    // the longest chain.
    fn visit(
        ir: &KernelIr,
        id: ValueId,
        member: &[bool],
        done: &mut [bool],
        out: &mut Vec<ValueId>,
    ) {
        if !member[id.index()] || done[id.index()] {
            return;
        }
        done[id.index()] = true;
        for o in ir.value(id).op.operands() {
            visit(ir, o, member, done, out);
        }
        out.push(id);
    }
    for &e in elements {
        visit(ir, e, &member, &mut done, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::math;

    /// The rewrite's premise: `sigmoid(v)` is, bit for bit, `1 / (1 + exp(-v))` as the
    /// block ops compute it (every 101st f32 bit pattern, both signs, and the specials).
    #[test]
    fn sigmoid_is_one_over_one_plus_exp_of_minus_v() {
        let mut xs: Vec<f32> = (0..u32::MAX).step_by(101).map(f32::from_bits).collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            88.72,
            -88.73,
        ]);
        for x in xs {
            let shared = 1.0 / (1.0 + math::exp(-x));
            let s = math::sigmoid(x);
            assert!(
                s.to_bits() == shared.to_bits() || s.is_nan() && shared.is_nan(),
                "sigmoid({x:e}) = {s:e}, 1 / (1 + exp(-x)) = {shared:e}"
            );
        }
    }
}
