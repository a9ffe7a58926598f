//! Lowering: each fused kernel of a plan as an explicit kernel IR, the one description of
//! its work that both backends read (the CPU executor interprets it, `codegen` prints it as
//! CUDA C). Computed once per kernel from `schedule::FusedKernel`; checked by `verify`;
//! printed by `text` (what tests snapshot).
//!
//! What lowering writes out, which the schedule leaves implicit:
//! - **Merged axes**: the domain without size-1 axes, neighbours of the same kind (both
//!   reduced or both not) merged where every load walks them as one axis; every load's and
//!   store's strides over them.
//! - **Levels**: a value is `Row` when it is constant along the row (consts, row loads,
//!   reductions, and maths over row values only), computed once per row; else `Element`.
//!   (In a pointwise kernel a `Row` value is one value for the whole kernel.) The planner's
//!   level of an inst may be `Element` for a value that is in fact row-constant; the
//!   lowered level never is, and a value the planner calls `Row` never reads an element
//!   value except through a reduction (checked here: `Error::RowReadsElement`).
//! - **Passes** over each row: pass `q` first computes its row values (those that depend on
//!   the reductions closed by pass `q - 1`), then walks the row computing its element values,
//!   folding its reductions and writing its element stores; row stores are written at the
//!   end of the last pass. An element store that depends on no reduction, of a buffer no
//!   load of the kernel may read, is written in pass 0 (saving a second walk); every other
//!   one in the last pass.
//! - **Split reductions** (`plan::split`): the partials kernel and its fold are marked as
//!   such (`KernelIr::split`).

pub mod text;
pub mod verify;

use crate::ir::{BinaryOp, DType, NodeId, ReduceOp, UnaryOp};
pub use crate::schedule::Level;
use crate::schedule::{BufferId, BufferKind, FusedKernel, InstOp, Kernel, KernelKind, Plan};
use serde::Serialize;
use std::fmt;

pub use verify::{verify, Error};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub struct $name(pub u32);

        impl $name {
            pub fn new(index: usize) -> $name {
                $name(index as u32)
            }

            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

typed_id!(
    /// A value of a kernel: the index of the schedule inst it computes.
    ValueId,
    "v"
);
typed_id!(
    /// A load of a kernel (its index in `FusedKernel::loads`).
    LoadId,
    "l"
);
typed_id!(
    /// A store of a kernel (its index in `FusedKernel::stores`).
    StoreId,
    "s"
);
typed_id!(
    /// A pass over the row.
    PassId,
    "p"
);

/// What a value computes (the schedule's `InstOp` with typed operands).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueOp {
    Load(LoadId),
    Const(f64),
    Unary(UnaryOp, ValueId),
    Binary(BinaryOp, ValueId, ValueId),
    Cast(ValueId),
    /// Folds the operand over the row (the identity in a pointwise kernel).
    Reduce(ReduceOp, ValueId),
    /// The index map `offset + Σ idx[d]·strides[d]` over the merged domain (an `arange`).
    Index {
        offset: i64,
        strides: Vec<i64>,
    },
    /// Load `load` at its position plus `index`'s value times `stride`, the index checked
    /// to lie in `[0, size)` (see `schedule::InstOp::Gather`).
    Gather {
        load: Option<LoadId>,
        index: ValueId,
        stride: i64,
        size: u64,
        what: String,
    },
    /// The running sum of the operand along the row, in row order.
    Scan(ValueId),
    /// `where(c, a, b)`.
    Where(ValueId, ValueId, ValueId),
}

impl ValueOp {
    /// The values this one reads, in operand order.
    pub fn operands(&self) -> Vec<ValueId> {
        match *self {
            ValueOp::Load(_) | ValueOp::Const(_) | ValueOp::Index { .. } => Vec::new(),
            ValueOp::Unary(_, a)
            | ValueOp::Cast(a)
            | ValueOp::Reduce(_, a)
            | ValueOp::Scan(a)
            | ValueOp::Gather { index: a, .. } => vec![a],
            ValueOp::Binary(_, a, b) => vec![a, b],
            ValueOp::Where(c, a, b) => vec![c, a, b],
        }
    }

    /// The same op reading `f(v)` wherever it reads `v`.
    pub fn map_operands(&self, f: impl Fn(ValueId) -> ValueId) -> ValueOp {
        match self.clone() {
            ValueOp::Unary(op, a) => ValueOp::Unary(op, f(a)),
            ValueOp::Binary(op, a, b) => ValueOp::Binary(op, f(a), f(b)),
            ValueOp::Cast(a) => ValueOp::Cast(f(a)),
            ValueOp::Reduce(op, a) => ValueOp::Reduce(op, f(a)),
            ValueOp::Scan(a) => ValueOp::Scan(f(a)),
            ValueOp::Where(c, a, b) => ValueOp::Where(f(c), f(a), f(b)),
            ValueOp::Gather {
                load,
                index,
                stride,
                size,
                what,
            } => ValueOp::Gather {
                load,
                index: f(index),
                stride,
                size,
                what,
            },
            op @ (ValueOp::Load(_) | ValueOp::Const(_) | ValueOp::Index { .. }) => op,
        }
    }

    /// `of`, with an `Index`'s strides over the merged axes (`merged` maps domain strides).
    fn lowered(op: &InstOp, merged: &dyn Fn(&[i64]) -> Vec<i64>) -> ValueOp {
        match op {
            InstOp::Index { offset, strides } => ValueOp::Index {
                offset: *offset,
                strides: merged(strides),
            },
            InstOp::Gather {
                load,
                index,
                stride,
                size,
                what,
            } => ValueOp::Gather {
                load: load.map(LoadId::new),
                index: ValueId::new(*index),
                stride: *stride,
                size: *size,
                what: what.clone(),
            },
            InstOp::Scan(a) => ValueOp::Scan(ValueId::new(*a)),
            other => ValueOp::of(other),
        }
    }

    pub(crate) fn of(op: &InstOp) -> ValueOp {
        let v = ValueId::new;
        match *op {
            InstOp::Index { .. } | InstOp::Gather { .. } | InstOp::Scan(_) => {
                ValueOp::lowered(op, &|s| s.to_vec())
            }
            InstOp::Load(l) => ValueOp::Load(LoadId::new(l)),
            InstOp::Const(c) => ValueOp::Const(c),
            InstOp::Unary(u, a) => ValueOp::Unary(u, v(a)),
            InstOp::Binary(b, x, y) => ValueOp::Binary(b, v(x), v(y)),
            InstOp::Cast(a) => ValueOp::Cast(v(a)),
            InstOp::Reduce(r, a) => ValueOp::Reduce(r, v(a)),
            InstOp::Where(c, a, b) => ValueOp::Where(v(c), v(a), v(b)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Value {
    pub op: ValueOp,
    /// Rounded to it as computed; arithmetic is in f32.
    pub dtype: DType,
    /// Where it is computed: once per row (`Row`) or per element.
    pub level: Level,
    /// The first pass in which it is available: the pass after the one that closes the
    /// last reduction it depends on (a reduction itself is available in the pass after the
    /// one that folds it).
    pub pass: PassId,
    pub node: Option<NodeId>,
}

/// The kernel's domain after merging (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergedAxes {
    pub sizes: Vec<u64>,
    /// Whether each merged axis is reduced.
    pub reduce: Vec<bool>,
}

impl MergedAxes {
    /// The merged axes of the row index, in order.
    pub fn row_axes(&self) -> Vec<usize> {
        (0..self.sizes.len()).filter(|&d| !self.reduce[d]).collect()
    }

    /// The merged reduced axes, in order.
    pub fn reduce_axes(&self) -> Vec<usize> {
        (0..self.sizes.len()).filter(|&d| self.reduce[d]).collect()
    }

    pub fn row_sizes(&self) -> Vec<u64> {
        self.row_axes().iter().map(|&d| self.sizes[d]).collect()
    }

    pub fn reduce_sizes(&self) -> Vec<u64> {
        self.reduce_axes().iter().map(|&d| self.sizes[d]).collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> u64 {
        self.row_sizes().iter().product()
    }

    /// Elements per row.
    pub fn row_len(&self) -> u64 {
        self.reduce_sizes().iter().product()
    }
}

/// A strided read, indexed by the merged domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadIr {
    pub buffer: BufferId,
    pub dtype: DType,
    /// Element offset.
    pub offset: i64,
    /// Element stride per axis of the kernel's (unmerged) domain, as planned.
    pub domain_strides: Vec<i64>,
    /// Element stride per merged axis.
    pub strides: Vec<i64>,
}

/// A write of a value: contiguous in domain order (`order` = `Element`) or row order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreIr {
    pub value: ValueId,
    pub buffer: BufferId,
    /// The buffer's dtype: the value is rounded to it.
    pub dtype: DType,
    pub order: Level,
    /// Element offset (0 unless the store writes a region: a part of a concat).
    pub offset: i64,
    /// Element stride per merged axis (0 on reduced axes for a row-order store).
    pub strides: Vec<i64>,
    /// The pass that writes it.
    pub pass: PassId,
}

impl StoreIr {
    /// Whether the store writes its buffer whole, contiguously in its order (no region).
    pub fn is_plain(&self, axes: &MergedAxes) -> bool {
        let want = match self.order {
            Level::Element => crate::ir::types::contiguous_strides(&axes.sizes),
            Level::Row => {
                let rs = crate::ir::types::contiguous_strides(&axes.row_sizes());
                let mut s = vec![0i64; axes.sizes.len()];
                for (j, d) in axes.row_axes().into_iter().enumerate() {
                    s[d] = rs[j];
                }
                s
            }
        };
        self.offset == 0
            && self.strides.len() == want.len()
            && self
                .strides
                .iter()
                .zip(&want)
                .zip(&axes.sizes)
                .all(|((a, b), &n)| n == 1 || a == b)
    }
}

/// What one pass over a row computes, in this order: `row`, then a walk of the row
/// computing `elements`, folding `reduces` and writing the element stores of `stores`;
/// the row stores of `stores` (last pass only) once the walk is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pass {
    /// Row values (not consts, not reductions) available from this pass, in value order.
    pub row: Vec<ValueId>,
    /// Element values computed per element, in value order: what `reduces` and the
    /// element stores of this pass need.
    pub elements: Vec<ValueId>,
    /// Reductions folded in this pass's walk (available from the next pass).
    pub reduces: Vec<ValueId>,
    pub stores: Vec<StoreId>,
}

/// The role of a kernel in a split reduction (`plan::split`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitPart {
    /// Folds each of its rows into partials, one buffer per reduction; `fold` finishes.
    Partials {
        fold: String,
        partials: Vec<BufferId>,
    },
    /// Folds the partials `of` wrote, then computes what follows the reductions.
    Fold { of: String },
}

/// One fused kernel, lowered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelIr {
    /// The plan's kernel name (`k3`).
    pub name: String,
    /// As planned (before merging).
    pub domain: Vec<u64>,
    pub reduce_axes: Vec<usize>,
    pub axes: MergedAxes,
    pub values: Vec<Value>,
    pub loads: Vec<LoadIr>,
    pub stores: Vec<StoreIr>,
    /// One pass for a pointwise kernel; for a row kernel one more than the longest chain
    /// of dependent reductions.
    pub passes: Vec<Pass>,
    pub split: Option<SplitPart>,
}

impl KernelIr {
    /// No reduce axes: every element is its own row, computed in one pass.
    pub fn is_pointwise(&self) -> bool {
        self.reduce_axes.is_empty()
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    pub fn load(&self, id: LoadId) -> &LoadIr {
        &self.loads[id.index()]
    }

    pub fn store(&self, id: StoreId) -> &StoreIr {
        &self.stores[id.index()]
    }

    /// The last pass.
    pub fn last_pass(&self) -> PassId {
        PassId::new(self.passes.len() - 1)
    }

    /// Whether some value reads load `l` (plainly or gathered).
    pub fn load_is_read(&self, l: LoadId) -> bool {
        self.values
            .iter()
            .any(|v| v.op == ValueOp::Load(l) || self.gathers_from(v, l))
    }

    /// Whether some element value reads load `l` plainly (it is read along the row, at
    /// positions known before the kernel runs).
    pub fn load_is_read_per_element(&self, l: LoadId) -> bool {
        self.values
            .iter()
            .any(|v| v.op == ValueOp::Load(l) && v.level == Level::Element)
    }

    /// Whether value `v` is a gathered read of load `l`.
    pub fn gathers_from(&self, v: &Value, l: LoadId) -> bool {
        matches!(v.op, ValueOp::Gather { load: Some(load), .. } if load == l)
    }

    /// Whether load `l` is read at gathered positions (its index comes from a value).
    pub fn load_is_gathered(&self, l: LoadId) -> bool {
        self.values.iter().any(|v| self.gathers_from(v, l))
    }

    /// Whether the kernel has a scan (which walks each row in order, in one thread).
    pub fn has_scan(&self) -> bool {
        self.values.iter().any(|v| matches!(v.op, ValueOp::Scan(_)))
    }

    /// Whether the kernel gathers (and so checks indices).
    pub fn has_gather(&self) -> bool {
        self.values
            .iter()
            .any(|v| matches!(v.op, ValueOp::Gather { .. }))
    }

    /// Largest element index any access of the kernel reaches (and the domain size).
    pub fn max_index(&self) -> u64 {
        let numel: u64 = self.domain.iter().product();
        let mut m = numel;
        for st in &self.stores {
            let reach: i128 = st.offset as i128
                + self
                    .axes
                    .sizes
                    .iter()
                    .zip(&st.strides)
                    .map(|(&s, &t)| (s as i128 - 1) * (t as i128).abs())
                    .sum::<i128>();
            m = m.max(reach.clamp(0, u64::MAX as i128) as u64);
        }
        for (li, l) in self.loads.iter().enumerate() {
            // A gathered read also reaches the last index of its axis.
            let gathered: i128 = self
                .values
                .iter()
                .filter_map(|v| match v.op {
                    ValueOp::Gather {
                        load: Some(load),
                        stride,
                        size,
                        ..
                    } if load.index() == li => Some((size as i128 - 1) * (stride as i128).abs()),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let reach: i128 = l.offset as i128
                + gathered
                + self
                    .domain
                    .iter()
                    .zip(&l.domain_strides)
                    .map(|(&s, &st)| (s as i128 - 1) * (st as i128).abs())
                    .sum::<i128>();
            m = m.max(reach.clamp(0, u64::MAX as i128) as u64);
        }
        for v in &self.values {
            // An arange's largest value.
            if let ValueOp::Index { offset, strides } = &v.op {
                let reach: i128 = *offset as i128
                    + self
                        .axes
                        .sizes
                        .iter()
                        .zip(strides)
                        .map(|(&s, &st)| (s as i128 - 1) * (st as i128).abs())
                        .sum::<i128>();
                m = m.max(reach.clamp(0, u64::MAX as i128) as u64);
            }
        }
        m
    }
}

/// Every kernel of a plan, lowered: `kernels[i]` is plan kernel `i` (`None` for a matrix
/// product or an attention kernel, which have no kernel IR: their executors read the
/// schedule's kernel as it is).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lowered {
    pub kernels: Vec<Option<KernelIr>>,
}

/// Lowers every fused kernel of `plan` (and marks split reductions), verifying each in
/// debug builds.
pub fn lower(plan: &Plan) -> Result<Lowered, Error> {
    let mut kernels = Vec::with_capacity(plan.kernels.len());
    for kernel in &plan.kernels {
        kernels.push(match &kernel.kind {
            KernelKind::Fused(f) => Some(lower_fused(plan, &kernel.name, f)?),
            KernelKind::MatMul(_)
            | KernelKind::Attention(_)
            | KernelKind::AttentionBackward(_)
            | KernelKind::IndexAdd(_) => None,
        });
    }
    for i in 0..plan.kernels.len().saturating_sub(1) {
        if let (Some(first), Some(second)) = (&kernels[i], &kernels[i + 1]) {
            if let Some(partials) = split_partials(plan, first, second) {
                let (fold, of) = (second.name.clone(), first.name.clone());
                if let Some(k) = kernels[i].as_mut() {
                    k.split = Some(SplitPart::Partials { fold, partials });
                }
                if let Some(k) = kernels[i + 1].as_mut() {
                    k.split = Some(SplitPart::Fold { of });
                }
            }
        }
    }
    Ok(Lowered { kernels })
}

/// A lowering error as a diagnostic: a plan that breaks the schedule's rules, or kernel IR
/// that fails its verifier, is a bug in tc (`planner-internal`, exit 3), not in the program.
pub fn internal(e: &Error) -> crate::Diagnostic {
    crate::Diagnostic::error(crate::diag::ErrorKind::PlannerInternal, e.to_string())
        .with_note("this is a bug in tc's planner or kernel lowering, not in your program")
}

/// Lowers one plan kernel (no split marks: those need its neighbours, see `lower`).
pub fn lower_kernel(plan: &Plan, kernel: &Kernel) -> Result<Option<KernelIr>, Error> {
    match &kernel.kind {
        KernelKind::Fused(f) => lower_fused(plan, &kernel.name, f).map(Some),
        KernelKind::MatMul(_)
        | KernelKind::Attention(_)
        | KernelKind::AttentionBackward(_)
        | KernelKind::IndexAdd(_) => Ok(None),
    }
}

/// The partials of a split reduction, when `first` and `second` are its two kernels: the
/// first folds rows into f32 arena buffers `*.partials*` (row stores), and every element
/// load of the second reads one of them.
fn split_partials(plan: &Plan, first: &KernelIr, second: &KernelIr) -> Option<Vec<BufferId>> {
    let is_partials = |b: BufferId| {
        let buf = plan.buffer(b);
        buf.kind == BufferKind::Arena && buf.dtype == DType::F32 && buf.name.contains(".partials")
    };
    let partials: Vec<BufferId> = first
        .stores
        .iter()
        .filter(|s| s.order == Level::Row && is_partials(s.buffer))
        .map(|s| s.buffer)
        .collect();
    let folds: Vec<BufferId> = second
        .values
        .iter()
        .filter_map(|v| match v.op {
            ValueOp::Load(l) if v.level == Level::Element => Some(second.load(l).buffer),
            _ => None,
        })
        .collect();
    let shaped = first.domain.len() == 2
        && first.reduce_axes == [1]
        && second.domain == [first.domain[0]]
        && second.reduce_axes == [0];
    (shaped && !partials.is_empty() && folds.iter().all(|b| partials.contains(b)))
        .then_some(partials)
}

/// Whether two buffers can share memory (the same buffer, the same input or param, or
/// overlapping arena ranges).
pub fn may_overlap(plan: &Plan, a: BufferId, b: BufferId) -> bool {
    if a == b {
        return true;
    }
    let (x, y) = (plan.buffer(a), plan.buffer(b));
    match (&x.kind, &y.kind) {
        (BufferKind::Arena | BufferKind::Workspace, BufferKind::Arena | BufferKind::Workspace) => {
            x.offset < y.offset + y.bytes && y.offset < x.offset + x.bytes
        }
        (BufferKind::Input { index: i }, BufferKind::Input { index: j })
        | (BufferKind::Param { index: i }, BufferKind::Param { index: j }) => i == j,
        _ => false,
    }
}

/// Lowers one fused kernel of `plan` named `name`: checks the schedule's rules first
/// (`verify::check_fused`), then verifies the result in debug builds.
pub fn lower_fused(plan: &Plan, name: &str, k: &FusedKernel) -> Result<KernelIr, Error> {
    verify::check_fused(plan, name, k)?;
    let pointwise = k.reduce_axes.is_empty();
    let (axes, inner) = merge_axes(k);
    let merged = |strides: &[i64]| -> Vec<i64> {
        inner
            .iter()
            .map(|&d| strides.get(d).copied().unwrap_or(0))
            .collect()
    };

    // Levels and passes.
    let n = k.body.len();
    let mut values: Vec<Value> = Vec::with_capacity(n);
    let along_row = |strides: &[i64]| {
        k.reduce_axes
            .iter()
            .any(|&a| strides.get(a).copied().unwrap_or(0) != 0 && k.domain[a] != 1)
    };
    for inst in &k.body {
        let op = ValueOp::lowered(&inst.op, &merged);
        let operands = op.operands();
        let row = |vs: &[Value]| operands.iter().all(|o| vs[o.index()].level == Level::Row);
        let level = match &op {
            ValueOp::Const(_) => Level::Row,
            ValueOp::Load(_) | ValueOp::Index { .. } | ValueOp::Scan(_) if pointwise => {
                Level::Element
            }
            ValueOp::Load(_) => inst.level,
            ValueOp::Index { .. } => match &inst.op {
                InstOp::Index { strides, .. } if !along_row(strides) => Level::Row,
                _ => Level::Element,
            },
            ValueOp::Scan(_) => Level::Element,
            ValueOp::Gather { load, .. }
                if !pointwise
                    && load.is_none_or(|l| !along_row(&k.loads[l.index()].strides))
                    && row(&values) =>
            {
                Level::Row
            }
            ValueOp::Gather { .. } => Level::Element,
            ValueOp::Reduce(..) if !pointwise => Level::Row,
            _ if row(&values) => Level::Row,
            _ => Level::Element,
        };
        let after = operands
            .iter()
            .map(|o| values[o.index()].pass.0)
            .max()
            .unwrap_or(0);
        let pass = match &op {
            ValueOp::Reduce(..) if !pointwise => after + 1,
            _ => after,
        };
        values.push(Value {
            op,
            dtype: inst.dtype,
            level,
            pass: PassId(pass),
            node: inst.node,
        });
    }
    let last = values.iter().map(|v| v.pass.index()).max().unwrap_or(0);

    let loads: Vec<LoadIr> = k
        .loads
        .iter()
        .map(|l| LoadIr {
            buffer: l.buffer,
            dtype: l.dtype,
            offset: l.offset,
            domain_strides: l.strides.clone(),
            strides: merged(&l.strides),
        })
        .collect();

    // Stores: element order contiguous over the merged domain, row order over its rows.
    let contiguous = crate::ir::types::contiguous_strides(&axes.sizes);
    let row_contiguous = {
        let rs = crate::ir::types::contiguous_strides(&axes.row_sizes());
        let mut s = vec![0i64; axes.sizes.len()];
        for (j, d) in axes.row_axes().into_iter().enumerate() {
            s[d] = rs[j];
        }
        s
    };
    let mut stores: Vec<StoreIr> = k
        .stores
        .iter()
        .map(|st| {
            let value = ValueId::new(st.inst);
            let order = if pointwise {
                Level::Element
            } else {
                k.body[st.inst].level
            };
            let early = order == Level::Element && last >= 1 && values[st.inst].pass.0 == 0;
            StoreIr {
                value,
                buffer: st.buffer,
                dtype: plan.buffer(st.buffer).dtype,
                order,
                offset: st.region.as_ref().map_or(0, |r| r.offset),
                strides: match (&st.region, order) {
                    (Some(r), _) => merged(&r.strides),
                    (None, Level::Element) => contiguous.clone(),
                    (None, Level::Row) => row_contiguous.clone(),
                },
                pass: PassId::new(if early { 0 } else { last }),
            }
        })
        .collect();

    place_early_stores(plan, &loads, &values, &mut stores, last);

    let mut passes = vec![Pass::default(); last + 1];
    for (i, v) in values.iter().enumerate() {
        let id = ValueId::new(i);
        match v.op {
            ValueOp::Reduce(..) if !pointwise => passes[v.pass.index() - 1].reduces.push(id),
            ValueOp::Const(_) => {}
            _ if v.level == Level::Row => passes[v.pass.index()].row.push(id),
            _ => {}
        }
    }
    for (s, st) in stores.iter().enumerate() {
        passes[st.pass.index()].stores.push(StoreId::new(s));
    }
    for pass in &mut passes {
        let mut targets: Vec<ValueId> = pass
            .reduces
            .iter()
            .flat_map(|&r| values[r.index()].op.operands())
            .collect();
        targets.extend(
            pass.stores
                .iter()
                .filter(|&&s| stores[s.index()].order == Level::Element)
                .map(|&s| stores[s.index()].value),
        );
        pass.elements = element_closure(&values, &targets);
    }

    let ir = KernelIr {
        name: name.to_string(),
        domain: k.domain.clone(),
        reduce_axes: k.reduce_axes.clone(),
        axes,
        values,
        loads,
        stores,
        passes,
        split: None,
    };
    if cfg!(debug_assertions) {
        verify(&ir)?;
    }
    Ok(ir)
}

/// Which element stores of pass-0 values are written in pass 0 (`stores` come with
/// `pass` 0 where that is a candidate, else the last pass; a candidate that may not be
/// early is moved to the last pass). A store into a buffer no load of the kernel may read
/// is early. A store into a buffer a load may read is early too when every such load reads
/// exactly the elements the store writes (the kernel computes its output in place of its
/// input, element for element: each element read before it is written, by the same walk)
/// and no later pass reads it, so that what pass 0 overwrites is never read again; else
/// it waits for the last pass, which then walks the row once more to compute it. (Without
/// that, a column sum with its elements stored in place of its input computed every
/// element twice: `train_block`'s GELU backward, 1.6 ms instead of 0.7.)
fn place_early_stores(
    plan: &Plan,
    loads: &[LoadIr],
    values: &[Value],
    stores: &mut [StoreIr],
    last: usize,
) {
    // Same memory at the same start: one buffer, or one computed in place of the other.
    let same_start = |a: BufferId, b: BufferId| {
        let (x, y) = (plan.buffer(a), plan.buffer(b));
        a == b
            || (matches!(x.kind, BufferKind::Arena)
                && matches!(y.kind, BufferKind::Arena)
                && x.offset == y.offset)
    };
    let overlapping = |st: &StoreIr| -> Vec<usize> {
        (0..loads.len())
            .filter(|&l| may_overlap(plan, loads[l].buffer, st.buffer))
            .collect()
    };
    for st in stores.iter_mut() {
        if st.pass.0 != 0 {
            continue;
        }
        let in_place = overlapping(st).into_iter().all(|l| {
            let ld = &loads[l];
            same_start(ld.buffer, st.buffer)
                && ld.dtype == st.dtype
                && ld.offset == st.offset
                && ld.strides == st.strides
                && values.iter().all(|v| match v.op {
                    ValueOp::Load(id) if id.index() == l => v.level == Level::Element,
                    ValueOp::Gather { load: Some(id), .. } => id.index() != l,
                    _ => true,
                })
        });
        if !in_place {
            st.pass = PassId::new(last);
        }
    }
    // What the later passes read: their reductions' operands and the element values they
    // store. A load an early store overwrites must not be among them; moving such a store
    // to the last pass adds to them, so repeat until nothing moves.
    loop {
        let mut targets: Vec<ValueId> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v.op, ValueOp::Reduce(..)) && v.pass.index() >= 2)
            .flat_map(|(_, v)| v.op.operands())
            .collect();
        targets.extend(
            stores
                .iter()
                .filter(|st| st.pass.0 != 0 && st.order == Level::Element)
                .map(|st| st.value),
        );
        let later = element_closure(values, &targets);
        let read_later = |l: usize| {
            later
                .iter()
                .any(|v| matches!(values[v.index()].op, ValueOp::Load(id) if id.index() == l))
        };
        let mut moved = false;
        for st in stores.iter_mut() {
            if st.pass.0 == 0 && overlapping(st).into_iter().any(read_later) {
                st.pass = PassId::new(last);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

/// The element values `targets` need, in value order.
fn element_closure(values: &[Value], targets: &[ValueId]) -> Vec<ValueId> {
    let element = |v: &ValueId| values[v.index()].level == Level::Element;
    let mut need = vec![false; values.len()];
    let mut stack: Vec<ValueId> = targets.iter().copied().filter(element).collect();
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut need[v.index()], true) {
            continue;
        }
        // (a reduction is a row value, so never on the stack: only element values are walked)
        stack.extend(
            values[v.index()]
                .op
                .operands()
                .iter()
                .filter(|o| element(o)),
        );
    }
    (0..values.len())
        .filter(|&i| need[i])
        .map(ValueId::new)
        .collect()
}

/// The merged axes (see the module doc), and for each the innermost domain axis it stands
/// for (whose strides are its strides). Size-1 axes are dropped; neighbours of the same kind
/// merge where every load, and every store into a region, walks them as one axis (other
/// stores are contiguous in domain or row order, so they always do).
fn merge_axes(k: &FusedKernel) -> (MergedAxes, Vec<usize>) {
    let keep: Vec<usize> = (0..k.domain.len()).filter(|&d| k.domain[d] != 1).collect();
    let mut sizes: Vec<u64> = keep.iter().map(|&d| k.domain[d]).collect();
    let mut reduce: Vec<bool> = keep.iter().map(|d| k.reduce_axes.contains(d)).collect();
    let mut inner = keep;
    // Every access walks the merged axes: the loads, and the index maps of aranges.
    let maps: Vec<&[i64]> = k
        .loads
        .iter()
        .map(|l| &l.strides[..])
        .chain(k.body.iter().filter_map(|i| match &i.op {
            InstOp::Index { strides, .. } => Some(&strides[..]),
            _ => None,
        }))
        .collect();
    let stride = |l: usize, d: usize| maps[l].get(d).copied().unwrap_or(0);
    let regions: Vec<&Vec<i64>> = k
        .stores
        .iter()
        .filter_map(|s| s.region.as_ref().map(|r| &r.strides))
        .collect();
    let rstride = |r: &Vec<i64>, d: usize| r.get(d).copied().unwrap_or(0);
    let mut d = 0;
    while d + 1 < sizes.len() {
        let next = sizes[d + 1] as i64;
        let mergeable = reduce[d] == reduce[d + 1]
            && (0..maps.len())
                .all(|l| stride(l, inner[d]) == stride(l, inner[d + 1]).saturating_mul(next))
            && regions
                .iter()
                .all(|r| rstride(r, inner[d]) == rstride(r, inner[d + 1]).saturating_mul(next));
        if mergeable {
            sizes[d] *= sizes[d + 1];
            sizes.remove(d + 1);
            reduce.remove(d);
            inner.remove(d);
        } else {
            d += 1;
        }
    }
    (MergedAxes { sizes, reduce }, inner)
}
