//! The memory report's data: the naive, eager, planned and lower-bound peaks (from
//! `models` and the plan), every buffer and view with its lifetime and offset, every
//! kernel, and plain-language notes. `crate::report` renders it (text, JSON, SVG) and
//! computes nothing; definitions of the figures are in `docs/memory-planning.md`.

use super::models::{lower_bound, unfused_model};
use crate::ir::{DType, Graph, NodeId, Op, ViewOp};
use crate::schedule::{BufferKind, Plan};
use crate::units::human;
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
    /// What the plan recomputes in the backward pass (programs with `grad`, or a budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recompute: Option<super::remat::Recompute>,
    /// Bytes of arena and workspace buffers live at each step (at least one step), a region
    /// handed over in place counted once: what the text chart and the SVG draw. Not part of
    /// the JSON (SPEC §2 fixes its keys).
    #[serde(skip)]
    pub live: Vec<u64>,
}

/// `MemoryReport::live`: each arena or workspace buffer counts its bytes from its first to
/// its last step, except at its first step when it takes over there the storage of its
/// in-place predecessor, whose last step that is (one region, counted under the predecessor).
fn live_per_step(buffers: &[BufferEntry], steps: usize) -> Vec<u64> {
    let steps = steps.max(1);
    // (name, last step) of every buffer a successor may take over.
    let ends: BTreeSet<(&str, usize)> = buffers
        .iter()
        .filter(|q| q.view_of.is_none())
        .map(|q| (q.name.as_str(), q.last_step))
        .collect();
    let mut delta = vec![0i128; steps + 1];
    for b in buffers
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "arena" | "workspace"))
    {
        let (first, last) = (b.first_step, b.last_step.min(steps - 1));
        if first > last {
            continue;
        }
        let handed = b
            .in_place_of
            .as_deref()
            .is_some_and(|p| ends.contains(&(p, first)));
        let from = if handed { first + 1 } else { first };
        if from <= last {
            delta[from] += b.bytes as i128;
            delta[last + 1] -= b.bytes as i128;
        }
    }
    let mut live = 0i128;
    delta[..steps]
        .iter()
        .map(|d| {
            live += d;
            live.clamp(0, u64::MAX as i128) as u64
        })
        .collect()
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
    let mut buffer_of: HashMap<NodeId, usize> = HashMap::new();
    for (i, b) in plan.buffers.iter().enumerate() {
        if let Some(n) = b.node {
            buffer_of.entry(n).or_insert(i);
        }
    }
    for id in primitive.ids() {
        let node = primitive.node(id);
        if !node.op.is_view() {
            continue;
        }
        let name = &view_name(primitive, id, &stored);
        let root = lays[id.index()].root;
        let Some(rb) = buffer_of.get(&root).map(|&i| &plan.buffers[i]) else {
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
                human(bytes),
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
    let live = live_per_step(&buffers, plan.kernels.len());
    MemoryReport {
        peaks,
        kernels,
        buffers,
        notes,
        arena_bytes: plan.arena_bytes,
        steps: plan.kernels.len(),
        recompute: None,
        live,
    }
}
