//! Checks of the kernel IR, and of the schedule rules lowering relies on. Run by `lower` in
//! debug builds and by the tests on every example; an error is a tc bug, never the user's.
//!
//! Before lowering (`check_fused`, on a `schedule::FusedKernel`):
//! 1. reduce axes are distinct axes of the domain; every load has one stride per axis;
//! 2. every operand is an earlier inst; every load and store names one that exists, and
//!    every buffer is one of the plan's;
//! 3. in a row kernel a reduction is a `Row` inst, a `Row` inst reads an `Element` inst only
//!    through a reduction, and a `Row` load does not move along a reduce axis.
//!
//! Of the kernel IR (`verify`):
//! 4. the merged axes cover the domain (same element count), and every access has one
//!    stride per merged axis; a row load, and a row-order store, has stride 0 on every
//!    reduced axis;
//! 5. operands precede their reader; a row value reads only row values, except that a
//!    reduction reads anything; in a row kernel every reduction is a row value;
//! 6. passes: a value is available no earlier than its operands (a reduction one pass
//!    later); every row value (not a const, not a reduction) is computed in exactly the
//!    pass it becomes available, every reduction is folded in the pass before; a pass's
//!    element values read only element values computed earlier in the same pass and row
//!    values available by then, and include the element operands of its reductions and
//!    the element values it stores;
//! 7. a row-order store writes a row value, in the last pass; every store is written in
//!    one pass, no earlier than its value is available;
//! 8. an element store written before the last pass into a buffer a load of the kernel
//!    reads (the same buffer; `lower` also checks buffers that share memory) is in place:
//!    the load reads exactly the stored elements, plainly, and no later pass reads it.

use super::{KernelIr, Level, PassId, ValueId, ValueOp};
use crate::schedule::{FusedKernel, InstOp, Plan};

/// What is wrong with a kernel (see the module doc for the numbered rules).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("kernel {kernel}: reduce axis {axis} is out of range or repeated")]
    ReduceAxis { kernel: String, axis: usize },
    #[error("kernel {kernel}: {access} has {strides} strides for {rank} axes")]
    StrideCount {
        kernel: String,
        access: String,
        strides: usize,
        rank: usize,
    },
    #[error("kernel {kernel}: the merged axes {merged:?} do not cover the domain {domain:?}")]
    MergedAxes {
        kernel: String,
        merged: Vec<u64>,
        domain: Vec<u64>,
    },
    #[error("kernel {kernel}: {value} reads {operand}, which does not precede it")]
    NotEarlier {
        kernel: String,
        value: ValueId,
        operand: ValueId,
    },
    #[error("kernel {kernel}: {what} does not exist")]
    Missing { kernel: String, what: String },
    #[error("kernel {kernel}: row value {value} reads element value {operand}")]
    RowReadsElement {
        kernel: String,
        value: ValueId,
        operand: ValueId,
    },
    #[error("kernel {kernel}: {access} is read or written per row but moves along a reduce axis")]
    RowAccessMoves { kernel: String, access: String },
    #[error("kernel {kernel}: reduction {value} is not a row value")]
    ReduceNotRow { kernel: String, value: ValueId },
    #[error("kernel {kernel}: {value} is available in pass {pass}, before {operand} (pass {operand_pass})")]
    PassOrder {
        kernel: String,
        value: ValueId,
        pass: PassId,
        operand: ValueId,
        operand_pass: PassId,
    },
    #[error("kernel {kernel}: {value} is not computed where it becomes available ({detail})")]
    Misplaced {
        kernel: String,
        value: ValueId,
        detail: String,
    },
    #[error(
        "kernel {kernel}: pass {pass} needs element value {value}, which it does not compute first"
    )]
    NotComputed {
        kernel: String,
        pass: PassId,
        value: ValueId,
    },
    #[error("kernel {kernel}: store {store}: {detail}")]
    BadStore {
        kernel: String,
        store: super::StoreId,
        detail: String,
    },
}

/// Rules 1–3 on a kernel of `plan` before it is lowered.
pub fn check_fused(plan: &Plan, name: &str, k: &FusedKernel) -> Result<(), Error> {
    let kernel = || name.to_string();
    let rank = k.domain.len();
    // 1.
    let mut seen = vec![false; rank];
    for &a in &k.reduce_axes {
        if a >= rank || seen[a] {
            return Err(Error::ReduceAxis {
                kernel: kernel(),
                axis: a,
            });
        }
        seen[a] = true;
    }
    for (l, load) in k.loads.iter().enumerate() {
        if load.strides.len() != rank {
            return Err(Error::StrideCount {
                kernel: kernel(),
                access: format!("load l{l}"),
                strides: load.strides.len(),
                rank,
            });
        }
    }
    // 2.
    let buffers = k
        .loads
        .iter()
        .map(|l| l.buffer)
        .chain(k.stores.iter().map(|s| s.buffer));
    for b in buffers {
        if b.index() >= plan.buffers.len() {
            return Err(Error::Missing {
                kernel: kernel(),
                what: format!("buffer b{}", b.0),
            });
        }
    }
    let pointwise = k.reduce_axes.is_empty();
    for (i, inst) in k.body.iter().enumerate() {
        let value = ValueId::new(i);
        for o in inst.op.operands() {
            if o >= i {
                return Err(Error::NotEarlier {
                    kernel: kernel(),
                    value,
                    operand: ValueId::new(o),
                });
            }
        }
        if let InstOp::Load(l) = inst.op {
            let Some(load) = k.loads.get(l) else {
                return Err(Error::Missing {
                    kernel: kernel(),
                    what: format!("load l{l} (read by {value})"),
                });
            };
            // 3.
            let moves = k
                .reduce_axes
                .iter()
                .any(|&a| k.domain[a] > 1 && load.strides[a] != 0);
            if !pointwise && inst.level == Level::Row && moves {
                return Err(Error::RowAccessMoves {
                    kernel: kernel(),
                    access: format!("load l{l} (read by {value})"),
                });
            }
        }
        if pointwise {
            continue;
        }
        // 3.
        match inst.op {
            InstOp::Reduce(..) if inst.level != Level::Row => {
                return Err(Error::ReduceNotRow {
                    kernel: kernel(),
                    value,
                })
            }
            InstOp::Reduce(..) => {}
            _ if inst.level == Level::Row => {
                if let Some(o) = inst
                    .op
                    .operands()
                    .into_iter()
                    .find(|&o| k.body[o].level == Level::Element)
                {
                    return Err(Error::RowReadsElement {
                        kernel: kernel(),
                        value,
                        operand: ValueId::new(o),
                    });
                }
            }
            _ => {}
        }
    }
    for (s, st) in k.stores.iter().enumerate() {
        if st.inst >= k.body.len() {
            return Err(Error::Missing {
                kernel: kernel(),
                what: format!("v{} (stored by s{s})", st.inst),
            });
        }
        if let Some(r) = &st.region {
            if r.strides.len() != rank {
                return Err(Error::StrideCount {
                    kernel: kernel(),
                    access: format!("store s{s} (a region)"),
                    strides: r.strides.len(),
                    rank,
                });
            }
        }
    }
    Ok(())
}

/// Rules 4–7 on a lowered kernel.
pub fn verify(k: &KernelIr) -> Result<(), Error> {
    let kernel = || k.name.clone();
    let pointwise = k.is_pointwise();
    // 4.
    let merged = &k.axes.sizes;
    if merged.len() != k.axes.reduce.len()
        || merged.iter().product::<u64>() != k.domain.iter().product::<u64>()
    {
        return Err(Error::MergedAxes {
            kernel: kernel(),
            merged: merged.clone(),
            domain: k.domain.clone(),
        });
    }
    let reduced = k.axes.reduce_axes();
    let accesses = k
        .loads
        .iter()
        .enumerate()
        .map(|(l, ld)| (format!("load l{l}"), &ld.strides))
        .chain(
            k.stores
                .iter()
                .enumerate()
                .map(|(s, st)| (format!("store s{s}"), &st.strides)),
        );
    for (access, strides) in accesses {
        if strides.len() != merged.len() {
            return Err(Error::StrideCount {
                kernel: kernel(),
                access,
                strides: strides.len(),
                rank: merged.len(),
            });
        }
    }
    let row_moves = |strides: &[i64]| reduced.iter().any(|&d| strides[d] != 0);
    // 5.
    let n = k.values.len();
    for (i, v) in k.values.iter().enumerate() {
        let value = ValueId::new(i);
        let is_reduce = matches!(v.op, ValueOp::Reduce(..));
        // A reduction over a row (not the identity of a pointwise kernel).
        let folds = is_reduce && !pointwise;
        if let ValueOp::Load(l) = v.op {
            let Some(load) = k.loads.get(l.index()) else {
                return Err(Error::Missing {
                    kernel: kernel(),
                    what: format!("load {l} (read by {value})"),
                });
            };
            if v.level == Level::Row && !pointwise && row_moves(&load.strides) {
                return Err(Error::RowAccessMoves {
                    kernel: kernel(),
                    access: format!("load {l} (read by {value})"),
                });
            }
        }
        if folds && v.level != Level::Row {
            return Err(Error::ReduceNotRow {
                kernel: kernel(),
                value,
            });
        }
        for o in v.op.operands() {
            if o.index() >= i {
                return Err(Error::NotEarlier {
                    kernel: kernel(),
                    value,
                    operand: o,
                });
            }
            let ov = k.value(o);
            if v.level == Level::Row && ov.level == Level::Element && !folds {
                return Err(Error::RowReadsElement {
                    kernel: kernel(),
                    value,
                    operand: o,
                });
            }
            // 6.
            let need = ov.pass.0 + u32::from(folds);
            if v.pass.0 < need {
                return Err(Error::PassOrder {
                    kernel: kernel(),
                    value,
                    pass: v.pass,
                    operand: o,
                    operand_pass: ov.pass,
                });
            }
        }
    }
    // 6.
    let misplaced = |value: ValueId, detail: String| Error::Misplaced {
        kernel: kernel(),
        value,
        detail,
    };
    let mut row_in = vec![Vec::new(); n];
    let mut reduce_in = vec![Vec::new(); n];
    for (q, pass) in k.passes.iter().enumerate() {
        for (values, passes_of) in [(&pass.row, &mut row_in), (&pass.reduces, &mut reduce_in)] {
            for &v in values {
                passes_of
                    .get_mut(v.index())
                    .map(|x| x.push(q))
                    .ok_or_else(|| Error::Missing {
                        kernel: kernel(),
                        what: format!("{v} (in pass p{q})"),
                    })?;
            }
        }
    }
    for (i, v) in k.values.iter().enumerate() {
        let value = ValueId::new(i);
        let (want_row, want_reduce): (Vec<usize>, Vec<usize>) = match v.op {
            ValueOp::Const(_) => (vec![], vec![]),
            ValueOp::Reduce(..) if !pointwise => (vec![], vec![v.pass.index().wrapping_sub(1)]),
            _ if v.level == Level::Row => (vec![v.pass.index()], vec![]),
            _ => (vec![], vec![]),
        };
        if row_in[i] != want_row || reduce_in[i] != want_reduce {
            return Err(misplaced(
                value,
                format!(
                    "row value in passes {:?}, folded in passes {:?}",
                    row_in[i], reduce_in[i]
                ),
            ));
        }
        if v.pass.index() >= k.passes.len() {
            return Err(misplaced(value, format!("there is no pass {}", v.pass)));
        }
    }
    for (q, pass) in k.passes.iter().enumerate() {
        let pass_id = PassId::new(q);
        let mut done = vec![false; n];
        for &e in &pass.elements {
            let v = k.values.get(e.index()).ok_or_else(|| Error::Missing {
                kernel: kernel(),
                what: format!("{e} (in pass p{q})"),
            })?;
            if v.level != Level::Element {
                return Err(misplaced(
                    e,
                    format!("a row value among p{q}'s element values"),
                ));
            }
            for o in v.op.operands() {
                let ov = k.value(o);
                let ready = match ov.level {
                    Level::Element => done[o.index()],
                    Level::Row => ov.pass.index() <= q,
                };
                if !ready {
                    return Err(Error::NotComputed {
                        kernel: kernel(),
                        pass: pass_id,
                        value: o,
                    });
                }
            }
            done[e.index()] = true;
        }
        let ready = |v: ValueId| {
            let val = k.value(v);
            match val.level {
                Level::Element => done[v.index()],
                Level::Row => val.pass.index() <= q,
            }
        };
        for &r in &pass.reduces {
            for o in k.value(r).op.operands() {
                if !ready(o) {
                    return Err(Error::NotComputed {
                        kernel: kernel(),
                        pass: pass_id,
                        value: o,
                    });
                }
            }
        }
        for &s in &pass.stores {
            let st = k.stores.get(s.index()).ok_or_else(|| Error::Missing {
                kernel: kernel(),
                what: format!("store {s} (in pass p{q})"),
            })?;
            if st.pass != pass_id {
                return Err(Error::BadStore {
                    kernel: kernel(),
                    store: s,
                    detail: format!("listed in p{q} but written in {}", st.pass),
                });
            }
            if st.order == Level::Element && !ready(st.value) {
                return Err(Error::NotComputed {
                    kernel: kernel(),
                    pass: pass_id,
                    value: st.value,
                });
            }
        }
    }
    // 7.
    for (s, st) in k.stores.iter().enumerate() {
        let store = super::StoreId::new(s);
        let bad = |detail: String| Error::BadStore {
            kernel: kernel(),
            store,
            detail,
        };
        let Some(v) = k.values.get(st.value.index()) else {
            return Err(bad(format!("{} does not exist", st.value)));
        };
        let listed = k
            .passes
            .get(st.pass.index())
            .is_some_and(|p| p.stores.contains(&store));
        if !listed {
            return Err(bad(format!("not listed in its pass {}", st.pass)));
        }
        if st.pass < v.pass {
            return Err(bad(format!(
                "written in {} before {} is available ({})",
                st.pass, st.value, v.pass
            )));
        }
        if st.order == Level::Row {
            if v.level != Level::Row {
                return Err(bad(format!(
                    "a row-order store of element value {}",
                    st.value
                )));
            }
            if st.pass != k.last_pass() {
                return Err(bad(format!("a row store written in {}", st.pass)));
            }
            if row_moves(&st.strides) {
                return Err(Error::RowAccessMoves {
                    kernel: kernel(),
                    access: format!("store {store}"),
                });
            }
        }
        // 8.
        if st.order == Level::Element && st.pass != k.last_pass() {
            for (l, ld) in k.loads.iter().enumerate() {
                let l = super::LoadId::new(l);
                if ld.buffer != st.buffer {
                    continue;
                }
                let same =
                    ld.dtype == st.dtype && ld.offset == st.offset && ld.strides == st.strides;
                let later = k.passes[st.pass.index() + 1..].iter().any(|p| {
                    p.elements
                        .iter()
                        .any(|v| k.values[v.index()].op == ValueOp::Load(l))
                });
                if !same || k.load_is_gathered(l) || later {
                    return Err(bad(format!(
                        "written in {} over load {l}, which {}",
                        st.pass,
                        if later {
                            "a later pass reads"
                        } else {
                            "reads other elements"
                        }
                    )));
                }
            }
        }
    }
    Ok(())
}
