//! The memory models of SPEC §2 side by side: *naive* (every op's result kept) and *eager*
//! (each freed after its last use; with `grad`, PyTorch autograd's saved tensors kept until
//! their backward function runs, SPEC §3.6) over the graph run op by op without fusion, and the
//! *lower bound* of a plan (the most bytes its storage holds live at one step). The planned
//! figure is the arena the packer (`pack`) returns. Sizes and staging come from `sizes`,
//! lifetimes' peaks from `liveness::peak`, storage from `inplace`: the same rules the planner
//! follows, so the figures compare like with like.

use super::inplace::storage_objects;
use super::liveness::peak;
use super::sizes::{align_up, column_staging_bytes, staging_bytes};
use crate::ir::{Graph, NodeId, Op};
use crate::schedule::{Plan, PlanOptions};
use std::collections::BTreeSet;

/// The memory of running a graph op by op, without fusion (see `unfused_model`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unfused {
    /// Sum of every op's result buffer (nothing freed).
    pub naive: u64,
    /// Largest total live at one op when each buffer is freed after its last use.
    pub eager: u64,
    /// Bytes of the inputs and params.
    pub inputs: u64,
}

/// Follows views and checker-inserted promotions (free: PyTorch does them inside the
/// consuming kernel) down to the value that owns memory. A promotion in `kept` (one a
/// matrix product reads: no GEMM converts its operand on the fly) owns memory itself.
fn owner(graph: &Graph, kept: &BTreeSet<NodeId>, mut id: NodeId) -> NodeId {
    loop {
        match &graph.node(id).op {
            Op::View(_, a) => id = *a,
            Op::Cast {
                arg,
                implicit: true,
            } if graph.origin(id).group.unwrap_or(id) == id && !kept.contains(&id) => id = *arg,
            _ => return id,
        }
    }
}

/// The checker-inserted promotions that a matrix product reads or that an output is (through
/// views): they are materialised, in the unfused models as in the plan.
fn promotions_read_by_matmul(graph: &Graph) -> BTreeSet<NodeId> {
    let mut kept = BTreeSet::new();
    for id in graph.ids() {
        if let Op::MatMul(a, b) = graph.node(id).op {
            for mut o in [a, b] {
                while let Op::View(_, inner) = graph.node(o).op {
                    o = inner;
                }
                if matches!(graph.node(o).op, Op::Cast { implicit: true, .. }) {
                    kept.insert(o);
                }
            }
        }
    }
    // An output must be stored in its own dtype: a promotion it is (through views) owns
    // memory, as PyTorch materialises `x.to(dtype)` that a program returns.
    for o in &graph.outputs {
        let mut id = o.node;
        while let Op::View(_, inner) = graph.node(id).op {
            id = inner;
        }
        if matches!(graph.node(id).op, Op::Cast { implicit: true, .. }) {
            kept.insert(id);
        }
    }
    kept
}

/// The naive and eager models of SPEC §2 over a graph: one op per source-level op (the
/// nodes sharing an `Origin.group`, so a checked and a decomposed graph give the same
/// figures), ops run in order, each op's result a buffer; a matmul also holds its workspace
/// at its step (`Target::matmul_workspace`: cuBLAS's on the GPU, as PyTorch's cuBLAS
/// handle holds one; the packed `B` on the CPU, as PyTorch's MKL/oneDNN sgemm packs `B` in
/// buffers of its own), a large reduction into one value its staged partials,
/// and on the GPU (`PlanOptions::for_gpu`) a column reduction too few columns wide to fill
/// it its partials (`sizes::column_staging_bytes`; PyTorch's reduction kernel stages such a
/// reduction over several blocks per output in global memory). Views and checker-inserted
/// casts are free, except a cast a matmul reads. Every buffer is counted rounded up to 16
/// bytes, the alignment any allocator (and the arena) gives it.
pub fn unfused_model(graph: &Graph, options: &PlanOptions) -> Unfused {
    let key = |n: NodeId| graph.origin(n).group.unwrap_or(n);
    let kept = promotions_read_by_matmul(graph);
    let is_op = |n: NodeId| {
        let op = &graph.node(n).op;
        // (an `arange` is an op of its own in eager execution: a buffer of N integers)
        !op.is_view() && (!op.is_leaf() || *op == Op::Arange) && owner(graph, &kept, n) == n
    };
    // Steps: source-level ops in order of first node.
    let mut step_of_key: std::collections::HashMap<NodeId, usize> = Default::default();
    // Each matmul step's workspace (`Target::matmul_workspace`, the rule the plan's products
    // follow; an eager product's operands are float tensors read in place).
    // Naive holds every product's workspace at once (every buffer its own, as a plan
    // without reuse gives each product its own).
    let mut matmul_steps = std::collections::BTreeMap::new();
    let mut ws_total = 0u64;
    for id in graph.ids() {
        if is_op(id) {
            let n = step_of_key.len();
            let s = *step_of_key.entry(key(id)).or_insert(n);
            if let Op::MatMul(a, b) = graph.node(id).op {
                let sizes = graph.ty(id).sizes();
                let r = sizes.len();
                let k = graph.ty(a).sizes().last().copied().unwrap_or(0);
                // (tc's CPU GEMM takes float operands of any width: `cpu_gemm_operands`)
                let f32s = [a, b, id].iter().all(|&x| graph.dtype(x).is_float());
                let ws = if r >= 2 {
                    let nbatch = sizes[..r - 2].iter().product();
                    options
                        .target
                        .matmul_workspace(nbatch, sizes[r - 2], sizes[r - 1], k, f32s)
                } else {
                    0
                };
                let e = matmul_steps.entry(s).or_insert(0u64);
                *e = (*e).max(align_up(ws));
                ws_total = ws_total.saturating_add(align_up(ws));
            }
        }
    }
    let steps = step_of_key.len();
    let last = steps.saturating_sub(1);
    // A reduction of a large operand into one value stages partials (`sizes::staging_bytes`; PyTorch's
    // reduction kernel also allocates a staging buffer for a grid-wide reduction): an op all
    // of whose nodes are one element, with a reduction of at least `SPLIT_MIN` elements.
    let mut staging = vec![0u64; steps];
    let mut not_scalar = vec![false; steps];
    for id in graph.ids() {
        if !is_op(id) {
            continue;
        }
        let s = step_of_key[&key(id)];
        not_scalar[s] |= graph.ty(id).numel() != Some(1);
        // (argmax and argmin are never split: `plan::split`)
        if let Op::Reduce { arg, op, .. } = graph.node(id).op {
            let n = if op.is_arg() {
                0
            } else {
                graph.ty(arg).numel().unwrap_or(0)
            };
            staging[s] = staging[s].max(staging_bytes(n));
        }
    }
    for (s, bytes) in staging.iter_mut().enumerate() {
        if not_scalar[s] {
            *bytes = 0;
        }
    }
    // Column reductions on the GPU (`plan::split::column_split`'s sizes).
    if options.for_gpu() {
        for id in graph.ids() {
            let Op::Reduce {
                arg, op, ref axes, ..
            } = graph.node(id).op
            else {
                continue;
            };
            if !is_op(id) || op.is_arg() {
                continue;
            }
            let sizes = graph.ty(arg).sizes();
            let inner = (0..sizes.len()).rev().find(|&d| sizes[d] > 1);
            let (Some(inner), Some(n)) = (inner, graph.ty(arg).numel()) else {
                continue;
            };
            if axes.contains(&inner) {
                continue;
            }
            let len: u64 = axes.iter().map(|&a| sizes[a]).product();
            let partial = if graph.dtype(id).is_integral() { 8 } else { 4 };
            let s = step_of_key[&key(id)];
            staging[s] = staging[s].max(column_staging_bytes(n / len.max(1), len, partial));
        }
    }
    // Result buffers: values read by another op or by an output.
    let mut life: std::collections::BTreeMap<NodeId, (usize, usize)> = Default::default();
    let outputs: BTreeSet<NodeId> = graph
        .outputs
        .iter()
        .map(|o| owner(graph, &kept, o.node))
        .collect();
    for id in graph.ids() {
        if !is_op(id) {
            continue;
        }
        let s = step_of_key[&key(id)];
        for o in graph.node(id).op.operands() {
            let r = owner(graph, &kept, o);
            if matches!(graph.node(id).op, Op::MatMul(..))
                && matches!(graph.node(r).op, Op::Scalar(_))
            {
                // A broadcast constant a matrix product reads is materialised (one element).
                life.insert(r, (0, last));
            }
            if is_op(r) && key(r) != key(id) {
                let e = life.entry(r).or_insert((step_of_key[&key(r)], s));
                e.1 = e.1.max(s);
            }
        }
    }
    // PyTorch autograd's saved tensors (`Graph::saved`, from `autodiff`): live until the
    // backward function that saved them runs (the first step at or after its first node).
    let mut firsts: Vec<(NodeId, usize)> = step_of_key.iter().map(|(&k, &s)| (k, s)).collect();
    firsts.sort();
    for saved in &graph.saved {
        let r = owner(graph, &kept, saved.value);
        if !is_op(r) {
            continue;
        }
        let at = firsts.partition_point(|(k, _)| *k < saved.until);
        let until = firsts.get(at).map_or(last, |&(_, s)| s);
        let e = life.entry(r).or_insert((step_of_key[&key(r)], until));
        e.1 = e.1.max(until);
    }
    for &r in &outputs {
        if is_op(r) {
            let e = life.entry(r).or_insert((step_of_key[&key(r)], last));
            e.1 = last;
        } else if matches!(graph.node(r).op, Op::Scalar(_)) {
            life.insert(r, (0, last));
        }
    }
    let bytes = |n: NodeId| align_up(graph.ty(n).bytes().unwrap_or(u64::MAX));
    let naive = life.keys().fold(
        ws_total.saturating_add(staging.iter().sum::<u64>()),
        |acc, &n| acc.saturating_add(bytes(n)),
    );
    // Each step also holds its own workspace and staging (one step long).
    let scratch = (0..steps).map(|s| {
        let ws = matmul_steps.get(&s).copied().unwrap_or(0);
        (s, s, ws.saturating_add(staging[s]))
    });
    let eager = peak(
        life.iter()
            .map(|(&n, &(a, b))| (a, b, bytes(n)))
            .chain(scratch),
    );
    let inputs = graph
        .inputs
        .iter()
        .chain(&graph.params)
        .fold(0u64, |acc, l| {
            acc.saturating_add(l.ty.bytes().unwrap_or(u64::MAX))
        });
    Unfused {
        naive,
        eager,
        inputs,
    }
}

/// Bytes the ops of `graph` (checked) store between kernels of their own when run unfused:
/// an op whose primitives cannot be one kernel (`fuse::fuse` without fusion splits it: a
/// backward formula that reduces over a leading axis and broadcasts the result back,
/// `cumsum`'s backward through its reversals) hands values from one of its kernels to the
/// next, as PyTorch eager allocates the temporaries of such a formula. `unfused_model`
/// counts one buffer per op, its result; the naive figure adds these (each rounded up to
/// 16 bytes), so that the unfused plan without reuse, one buffer per kernel output, is
/// never above it. A value counts when some kernel other than its own reads it and every
/// reader is a primitive of the same op (promotions in no kernel seen through).
pub fn split_op_intermediates(graph: &Graph) -> u64 {
    let primitive = crate::ir::decompose::decompose(graph);
    let groups = crate::fuse::fuse(&primitive, false);
    let mut gid: Vec<Option<usize>> = vec![None; primitive.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            gid[n.index()] = Some(g);
        }
    }
    let folded: Vec<bool> = primitive
        .ids()
        .map(|id| {
            matches!(primitive.node(id).op, Op::Cast { implicit: true, .. })
                && gid[id.index()].is_none()
        })
        .collect();
    let lays = crate::ir::layout::layouts_through(&primitive, &folded);
    let key = |n: NodeId| primitive.origin(n).group.unwrap_or(n);
    // Per stored value: read from another kernel, and read only within its own op.
    let mut crossed = vec![false; primitive.len()];
    let mut own_op = vec![true; primitive.len()];
    for id in primitive.ids() {
        let Some(g) = gid[id.index()] else { continue };
        for o in primitive.node(id).op.operands() {
            let r = lays[o.index()].root;
            let Some(h) = gid[r.index()] else { continue };
            crossed[r.index()] |= h != g;
            own_op[r.index()] &= key(r) == key(id);
        }
    }
    for o in &primitive.outputs {
        own_op[lays[o.node.index()].root.index()] = false;
    }
    // Backward formulas only (a forward op's parts, such as a concat's, are ops of their
    // own, already counted).
    primitive
        .ids()
        .filter(|r| crossed[r.index()] && own_op[r.index()])
        .filter(|&r| primitive.origin(r).backward_of.is_some())
        .fold(0u64, |acc, r| {
            acc.saturating_add(align_up(primitive.ty(r).bytes().unwrap_or(u64::MAX)))
        })
}

/// The eager figure (without inputs) the planner must not exceed.
pub fn eager_budget(graph: &Graph, options: &PlanOptions) -> u64 {
    unfused_model(graph, options).eager
}

/// The largest total of arena bytes (each rounded up to 16) live at one step of the plan,
/// storage shared in place counted once.
pub fn lower_bound(plan: &Plan) -> u64 {
    let (objects, _) = storage_objects(&plan.buffers);
    peak(objects.iter().map(|o| (o.first, o.last, align_up(o.bytes))))
}
