//! The memory report: naive, eager, planned and lower-bound peaks, every buffer and every
//! kernel, as data. `text`, `json` and `svg` render it; definitions of the figures are in
//! `docs/memory-planning.md`.

pub mod json;
pub mod svg;
pub mod text;

pub use json::to_json;
pub use svg::render_svg;
pub use text::render_text;

use crate::ir::{DType, Graph, NodeId, Op, ViewOp};
use crate::plan::pack::align_up;
use crate::schedule::{BufferId, BufferKind, Plan, PlanOptions};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// One peak figure, counted with and without the program's inputs and params.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peak {
    pub with_inputs: u64,
    pub without_inputs: u64,
}

/// The peaks of SPEC §2, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    pub naive: Peak,
    pub eager: Peak,
    pub planned: Peak,
    pub lower_bound: Peak,
    /// Device memory tc really took; set by the CUDA runtime, `None` elsewhere.
    pub measured: Option<Peak>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelEntry {
    pub name: String,
    pub ops: Vec<String>,
    pub lines: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BufferEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub first_step: usize,
    pub last_step: usize,
    pub offset: u64,
    pub view_of: Option<String>,
    pub in_place_of: Option<String>,
    /// `input`, `param`, `arena`, `workspace` or `view`.
    pub kind: String,
}

/// Everything `--report-memory`, `--memory-json` and `--memory-svg` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub peaks: Peaks,
    pub kernels: Vec<KernelEntry>,
    pub buffers: Vec<BufferEntry>,
    /// Plain-language remarks (a `reshape` that copies, say).
    pub notes: Vec<String>,
    /// Bytes of the one arena allocation.
    pub arena_bytes: u64,
    /// Number of steps (kernels) of the planned schedule.
    pub steps: usize,
}

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

/// The checker-inserted promotions that a matrix product reads (through views): they are
/// materialised before the product, in the unfused models as in the plan.
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
    kept
}

/// The naive and eager models of SPEC §2 over a graph: one op per source-level op (the
/// nodes sharing an `Origin.group`, so a checked and a decomposed graph give the same
/// figures), ops run in order, each op's result a buffer; a matmul also holds a
/// `workspace` at its step, a large reduction into one value its staged partials. Views
/// and checker-inserted casts are free, except a cast a matmul reads. Every buffer is
/// counted rounded up to 16 bytes, the alignment any allocator (and the arena) gives it.
pub fn unfused_model(graph: &Graph, workspace: u64) -> Unfused {
    let key = |n: NodeId| graph.origin(n).group.unwrap_or(n);
    let kept = promotions_read_by_matmul(graph);
    let is_op = |n: NodeId| {
        let op = &graph.node(n).op;
        !op.is_view() && !op.is_leaf() && owner(graph, &kept, n) == n
    };
    // Steps: source-level ops in order of first node.
    let mut step_of_key: std::collections::HashMap<NodeId, usize> = Default::default();
    let mut matmul_steps = BTreeSet::new();
    for id in graph.ids() {
        if is_op(id) {
            let n = step_of_key.len();
            let s = *step_of_key.entry(key(id)).or_insert(n);
            if matches!(graph.node(id).op, Op::MatMul(..)) {
                matmul_steps.insert(s);
            }
        }
    }
    let steps = step_of_key.len();
    let last = steps.saturating_sub(1);
    // A reduction of a large operand into one value stages partials (`plan::split`; PyTorch's
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
        if let Op::Reduce { arg, .. } = graph.node(id).op {
            let n = graph.ty(arg).numel().unwrap_or(0);
            staging[s] = staging[s].max(crate::plan::split::staging_bytes(n));
        }
    }
    for (s, bytes) in staging.iter_mut().enumerate() {
        if not_scalar[s] {
            *bytes = 0;
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
    for &r in &outputs {
        if is_op(r) {
            let e = life.entry(r).or_insert((step_of_key[&key(r)], last));
            e.1 = last;
        } else if matches!(graph.node(r).op, Op::Scalar(_)) {
            life.insert(r, (0, last));
        }
    }
    let bytes = |n: NodeId| align_up(graph.ty(n).bytes().unwrap_or(u64::MAX));
    let workspace = align_up(workspace);
    let ws_total = workspace.saturating_mul(matmul_steps.len() as u64);
    let naive = life.keys().fold(
        ws_total.saturating_add(staging.iter().sum::<u64>()),
        |acc, &n| acc.saturating_add(bytes(n)),
    );
    let eager = (0..steps.max(1))
        .map(|s| {
            let live = life
                .iter()
                .filter(|(_, (a, b))| *a <= s && s <= *b)
                .fold(0u64, |acc, (&n, _)| acc.saturating_add(bytes(n)));
            live.saturating_add(if matmul_steps.contains(&s) {
                workspace
            } else {
                0
            })
            .saturating_add(staging.get(s).copied().unwrap_or(0))
        })
        .max()
        .unwrap_or(0);
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

/// The eager figure (without inputs) the planner must not exceed.
pub fn eager_budget(graph: &Graph, options: &PlanOptions) -> u64 {
    unfused_model(graph, options.matmul_workspace).eager
}

/// The storage object of a buffer (first of its in-place chain).
fn storage(plan: &Plan, mut id: BufferId) -> BufferId {
    while let Some(p) = plan.buffer(id).in_place_of {
        id = p;
    }
    id
}

/// The largest total of arena bytes (each rounded up to 16) live at one step of the plan,
/// storage shared in place counted once.
pub fn lower_bound(plan: &Plan) -> u64 {
    (0..plan.kernels.len().max(1))
        .map(|s| {
            let roots: BTreeSet<BufferId> = (0..plan.buffers.len() as u32)
                .map(BufferId)
                .filter(|&id| {
                    let b = plan.buffer(id);
                    matches!(b.kind, BufferKind::Arena | BufferKind::Workspace)
                        && b.first_step <= s
                        && s <= b.last_step
                })
                .map(|id| storage(plan, id))
                .collect();
            roots.iter().map(|&r| align_up(plan.buffer(r).bytes)).sum()
        })
        .max()
        .unwrap_or(0)
}

/// True when `b` takes over its in-place predecessor's storage at `step`, which is then
/// still counted under the predecessor (one region, not two).
pub fn handed_over_at(report: &MemoryReport, b: &BufferEntry, step: usize) -> bool {
    b.first_step == step
        && b.in_place_of.as_ref().is_some_and(|p| {
            report
                .buffers
                .iter()
                .any(|q| &q.name == p && q.view_of.is_none() && q.last_step == step)
        })
}

fn kind_name(kind: &BufferKind) -> &'static str {
    match kind {
        BufferKind::Input { .. } => "input",
        BufferKind::Param { .. } => "param",
        BufferKind::Arena => "arena",
        BufferKind::Workspace => "workspace",
    }
}

/// A view's name in the report: its bound name, else what it does to what
/// (`transpose(k)`, `broadcast(b1)`, `reshape(k1.out)`); `stored` names the buffers of
/// unnamed values.
fn view_name(graph: &Graph, id: NodeId, stored: &HashMap<NodeId, String>) -> String {
    let node = graph.node(id);
    if let Some(n) = &node.name {
        return n.clone();
    }
    match &node.op {
        Op::View(ViewOp::Expand { implicit: true }, a) => {
            format!("broadcast({})", view_name(graph, *a, stored))
        }
        Op::View(_, a) => format!("{}({})", node.op.name(), view_name(graph, *a, stored)),
        _ => stored
            .get(&id)
            .cloned()
            .unwrap_or_else(|| graph.display_name(id)),
    }
}

/// Builds the report of a plan.
pub fn memory_report(checked: &Graph, primitive: &Graph, plan: &Plan) -> MemoryReport {
    let unfused = unfused_model(checked, plan.options.matmul_workspace);
    let with = |x: u64| Peak {
        with_inputs: x.saturating_add(unfused.inputs),
        without_inputs: x,
    };
    let lb = lower_bound(plan);
    let peaks = Peaks {
        naive: with(unfused.naive),
        eager: with(unfused.eager),
        planned: with(plan.arena_bytes),
        lower_bound: with(lb),
        measured: None,
    };
    let kernels = plan
        .kernels
        .iter()
        .map(|k| KernelEntry {
            name: k.name.clone(),
            ops: k.ops.clone(),
            lines: k.lines.clone(),
        })
        .collect();
    let mut buffers: Vec<BufferEntry> = plan
        .buffers
        .iter()
        .map(|b| BufferEntry {
            name: b.name.clone(),
            dtype: b.dtype,
            shape: b.shape.clone(),
            bytes: b.bytes,
            first_step: b.first_step,
            last_step: b.last_step,
            offset: b.offset,
            view_of: None,
            in_place_of: b.in_place_of.map(|p| plan.buffer(p).name.clone()),
            kind: kind_name(&b.kind).to_string(),
        })
        .collect();
    // Views, named or written inline (`transpose(k)`, a broadcast of `b1`): 0 bytes, over
    // their root's storage. Views of constants have no storage and are not listed.
    let lays = crate::ir::layout::layouts(primitive);
    let mut seen: BTreeSet<String> = buffers.iter().map(|b| b.name.clone()).collect();
    let stored: HashMap<NodeId, String> = plan
        .buffers
        .iter()
        .filter_map(|b| Some((b.node?, b.name.clone())))
        .collect();
    for id in primitive.ids() {
        let node = primitive.node(id);
        if !node.op.is_view() {
            continue;
        }
        let name = &view_name(primitive, id, &stored);
        let root = lays[id.index()].root;
        let Some(rb) = plan.buffers.iter().find(|b| b.node == Some(root)) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        buffers.push(BufferEntry {
            name: name.clone(),
            dtype: node.ty.dtype,
            shape: node.ty.sizes(),
            bytes: 0,
            first_step: rb.first_step,
            last_step: rb.last_step,
            offset: rb.offset,
            view_of: Some(rb.name.clone()),
            in_place_of: None,
            kind: "view".to_string(),
        });
    }
    let mut notes = Vec::new();
    for id in checked.ids() {
        if let Op::Copy(a) = checked.node(id).op {
            let bytes = checked.ty(id).bytes().unwrap_or(u64::MAX);
            notes.push(format!(
                "line {}: this `reshape` of {} cannot be expressed with strides, so it copies {} ({} bytes), as torch.reshape does",
                checked.origin(id).line,
                match &checked.node(a).name {
                    Some(n) => format!("`{n}`"),
                    None => format!("a `{}` view", checked.node(a).op.name()),
                },
                text::human(bytes),
                bytes
            ));
        }
    }
    if plan.unfused_fallback {
        notes.push(format!(
            "fused, this program needed a larger arena than eager execution ({} bytes), so its kernels are the unfused ones (one per op, as with --no-fuse), which fit: memory comes first",
            unfused.eager
        ));
    }
    if plan.options.reuse && plan.arena_bytes > unfused.eager {
        notes.push(format!(
            "the planned arena ({} bytes) exceeds the eager figure ({} bytes): no packing order found fits",
            plan.arena_bytes, unfused.eager
        ));
    }
    MemoryReport {
        peaks,
        kernels,
        buffers,
        notes,
        arena_bytes: plan.arena_bytes,
        steps: plan.kernels.len(),
    }
}
