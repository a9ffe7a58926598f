//! The memory report's data: the naive, eager, planned and lower-bound peaks (from
//! `models` and the plan), every buffer and view with its lifetime and offset, every
//! kernel, and plain-language notes. `crate::report` renders it (text, JSON, SVG) and
//! computes nothing; definitions of the figures are in `docs/memory-planning.md`.

use super::models::{lower_bound, split_op_intermediates, unfused_model};
use super::order::OrderModel;
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

/// `best_order_bound`: a peak figure, and whether it is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BoundPeak {
    pub with_inputs: u64,
    pub without_inputs: u64,
    pub exact: bool,
}

/// The peaks of SPEC §2, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    pub naive: Peak,
    pub eager: Peak,
    pub planned: Peak,
    pub lower_bound: Peak,
    /// No order of the same kernels can hold fewer bytes live at its peak
    /// (`memory::order`, SPEC §3.8); `exact` when it is the least peak over every order
    /// (never where the plan has a product never stored whole, which the order model counts
    /// as free in every order, though only orders keeping it beside its consumer make it so).
    pub best_order_bound: BoundPeak,
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
    /// What the buffer holds, for people: the source expression and its line
    /// (`x @ w1 (line 14)`), from the graph node's origin (`label`).
    pub label: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub first_step: usize,
    pub last_step: usize,
    pub offset: u64,
    pub view_of: Option<String>,
    pub in_place_of: Option<String>,
    /// For a `concat` operand (kind `part`): the concat whose buffer holds it, at `offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_of: Option<String>,
    /// For a `part`: whether its own kernel wrote it straight into place (else a copy
    /// kernel copied it there from `copied_from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    /// `input`, `param`, `arena`, `workspace`, `view` or `part`.
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

/// A plan buffer's label: its value's (`label`), or for scratch what it serves.
fn buffer_label(plan: &Plan, primitive: &Graph, i: usize, source: Option<&str>) -> String {
    let b = &plan.buffers[i];
    if let Some(n) = b.node {
        let l = label(primitive, n, source);
        return match &b.kind {
            BufferKind::Input { .. } => {
                format!("input {} (line {})", b.name, primitive.origin(n).line)
            }
            BufferKind::Param { .. } => {
                format!("param {} (line {})", b.name, primitive.origin(n).line)
            }
            _ => l,
        };
    }
    // Scratch: the kernel that writes it, named by the label of what that kernel stores.
    let id = crate::schedule::BufferId(i as u32);
    let writer = plan
        .kernels
        .iter()
        .find(|k| super::liveness::writes(k).contains(&id));
    let stored = writer.and_then(|k| {
        super::liveness::writes(k)
            .into_iter()
            .chain(
                plan.kernels
                    .iter()
                    .skip_while(|j| j.name != k.name)
                    .nth(1)
                    .map(super::liveness::writes)
                    .unwrap_or_default(),
            )
            .find_map(|w| plan.buffer(w).node)
    });
    let of = stored.map_or_else(|| "a kernel".to_string(), |n| label(primitive, n, source));
    match b.kind {
        BufferKind::Workspace
            if writer.is_some_and(|k| matches!(k.kind, crate::schedule::KernelKind::Fused(_))) =>
        {
            format!("column partials of {of}")
        }
        BufferKind::Workspace => format!("matmul workspace of {of}"),
        _ => format!("partial results of {of}"),
    }
}

fn kind_name(kind: &BufferKind) -> &'static str {
    match kind {
        BufferKind::Input { .. } => "input",
        BufferKind::Param { .. } => "param",
        BufferKind::Arena => "arena",
        BufferKind::Workspace => "workspace",
        BufferKind::Tile => "tile",
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

/// The source text of a node's expression, on one line and at most 48 characters.
fn expression(graph: &Graph, id: NodeId, source: Option<&str>) -> Option<String> {
    span_text(graph.origin(id).span.clone(), source)
}

/// The source text of `span`, on one line and at most 48 characters.
fn span_text(span: crate::diag::Span, source: Option<&str>) -> Option<String> {
    let text = source?.get(span)?;
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    Some(if text.chars().count() > 48 {
        format!("{}…", text.chars().take(47).collect::<String>())
    } else {
        text
    })
}

/// The label of the value of node `id`: its source expression and line, derived from the
/// node's origin alone (so values other stages make — a gradient — are labelled by what
/// their origin says). Without the source, the bound name or node and the line.
pub fn label(graph: &Graph, id: NodeId, source: Option<&str>) -> String {
    let origin = graph.origin(id);
    if let Some((names, line)) = &origin.grad_of {
        // What a `grad` call returns: named by its variable, as SPEC §3.8 writes it.
        return format!("grad of {names} (line {line})");
    }
    if let Some((span, line)) = &origin.backward_of {
        // A gradient: named by the forward expression whose backward function made it.
        return match span_text(span.clone(), source) {
            Some(t) => format!("backward of {t} (line {line})"),
            None => format!("backward of line {line}"),
        };
    }
    let line = origin.line;
    let what = match expression(graph, id, source) {
        Some(e) => e,
        None => graph.display_name(id),
    };
    format!("{what} (line {line})")
}

/// Builds the report of a plan (labels without source text: `memory_report_for`).
pub fn memory_report(checked: &Graph, primitive: &Graph, plan: &Plan) -> MemoryReport {
    memory_report_for(checked, primitive, plan, None)
}

/// Builds the report of a plan of `source`'s program.
pub fn memory_report_for(
    checked: &Graph,
    primitive: &Graph,
    plan: &Plan,
    source: Option<&str>,
) -> MemoryReport {
    let unfused = unfused_model(checked, &plan.options);
    let with = |x: u64| Peak {
        with_inputs: x.saturating_add(unfused.inputs),
        without_inputs: x,
    };
    let lb = lower_bound(plan);
    let (bound, _) = OrderModel::of_plan(plan).bound();
    // The model counts a product never stored whole (`plan::tile`) as free in any order,
    // which only orders keeping it beside its consumer achieve: a bound, not the least peak.
    let tiles = plan.buffers.iter().any(|b| b.kind == BufferKind::Tile);
    let peaks = Peaks {
        naive: with(
            unfused
                .naive
                .saturating_add(split_op_intermediates(checked)),
        ),
        eager: with(unfused.eager),
        planned: with(plan.arena_bytes),
        lower_bound: with(lb),
        best_order_bound: BoundPeak {
            with_inputs: bound.bytes.saturating_add(unfused.inputs),
            without_inputs: bound.bytes,
            exact: bound.exact && !tiles,
        },
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
        .enumerate()
        .map(|(i, b)| BufferEntry {
            name: b.name.clone(),
            label: buffer_label(plan, primitive, i, source),
            dtype: b.dtype,
            shape: b.shape.clone(),
            bytes: b.bytes,
            first_step: b.first_step,
            last_step: b.last_step,
            offset: b.offset,
            view_of: None,
            in_place_of: b.in_place_of.map(|p| plan.buffer(p).name.clone()),
            part_of: None,
            copied_from: None,
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
            label: label(primitive, id, source),
            dtype: node.ty.dtype,
            shape: node.ty.sizes(),
            bytes: 0,
            first_step: rb.first_step,
            last_step: rb.last_step,
            offset: rb.offset,
            view_of: Some(rb.name.clone()),
            in_place_of: None,
            part_of: None,
            copied_from: None,
            kind: "view".to_string(),
        });
    }
    // The operands of each concat: 0 bytes of their own, at their place in its buffer;
    // written there by the kernel computing them, or copied there from where they live.
    for id in primitive.ids() {
        let Op::Concat { args, axis } = &primitive.node(id).op else {
            continue;
        };
        let Some(cb) = buffer_of.get(&id).map(|&i| &plan.buffers[i]) else {
            continue;
        };
        let inner: u64 = primitive.ty(id).sizes()[*axis..].iter().skip(1).product();
        let mut at = 0u64;
        for (i, &part) in args.iter().enumerate() {
            let size = primitive.ty(part).sizes()[*axis];
            let Op::Copy(src) = primitive.node(part).op else {
                continue;
            };
            let root = lays[src.index()].root;
            let copied_from = buffer_of
                .contains_key(&root)
                .then(|| view_name(primitive, src, &stored));
            let name = match &primitive.node(src).name {
                Some(n) => format!("{n} (part {i} of {})", cb.name),
                None => format!("part {i} of {}", cb.name),
            };
            buffers.push(BufferEntry {
                name,
                label: label(primitive, src, source),
                dtype: primitive.ty(part).dtype,
                shape: primitive.ty(part).sizes(),
                bytes: 0,
                first_step: cb.first_step,
                last_step: cb.last_step,
                offset: cb.offset + at * inner * cb.dtype.size(),
                view_of: None,
                in_place_of: None,
                part_of: Some(cb.name.clone()),
                copied_from,
                kind: "part".to_string(),
            });
            at += size;
        }
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
    for k in &plan.kernels {
        if let crate::schedule::KernelKind::Attention(a) = &k.kind {
            let elems: u64 = a.batch.iter().product::<u64>() * a.m * a.n;
            let bytes = elems.saturating_mul(a.score_dtype.size());
            notes.push(format!(
                "{} (attention, lines {}): the scores and the probabilities ({} {:?}, {} ({} bytes) each) are never materialised: one kernel walks the keys in tiles with an online softmax; naive and eager count them as PyTorch eager stores them",
                k.name,
                k.source_lines(),
                a.score_dtype,
                a.batch.iter().chain([&a.m, &a.n]).collect::<Vec<_>>(),
                human(bytes),
                bytes
            ));
        }
    }
    for k in &plan.kernels {
        if let crate::schedule::KernelKind::AttentionBackward(a) = &k.kind {
            let elems: u64 = a.batch.iter().product::<u64>() * a.m * a.n;
            let bytes = elems.saturating_mul(4);
            notes.push(format!(
                "{} (attention backward, lines {}): the scores, the probabilities and their gradients ({} {:?}, {} ({} bytes) each in f32) are never materialised: the probabilities are recomputed by tiles from q, k and each query's max and sum (a {}-byte workspace), as PyTorch's flash attention backward does; eager counts the probabilities as saved for the backward",
                k.name,
                k.source_lines(),
                a.score_dtype,
                a.batch.iter().chain([&a.m, &a.n]).collect::<Vec<_>>(),
                human(bytes),
                bytes,
                12 * a.batch.iter().product::<u64>() * a.m
            ));
        }
    }
    for (s, k) in plan.kernels.iter().enumerate() {
        if let crate::schedule::KernelKind::MatMul(m) = &k.kind {
            let a = plan.buffer(m.a.buffer);
            if let Some(p) = m.prologue.as_ref().filter(|_| a.first_step == s) {
                let readers: Vec<&str> = plan
                    .kernels
                    .iter()
                    .filter(|r| {
                        matches!(&r.kind, crate::schedule::KernelKind::MatMul(rm)
                            if rm.a.buffer == m.a.buffer && rm.prologue.is_some())
                    })
                    .map(|r| r.name.as_str())
                    .collect();
                notes.push(format!(
                    "{} (matmul, lines {}): {} ({} {:?}, {} ({} bytes)) is never stored: {} it from {} as {} GEMM packs each block of it (its maths once more per element and column block of the product); naive and eager count it as PyTorch stores it",
                    readers.join(", "),
                    k.source_lines(),
                    a.name,
                    a.dtype,
                    a.shape,
                    human(a.bytes),
                    a.bytes,
                    if readers.len() > 1 {
                        "the products compute"
                    } else {
                        "the product computes"
                    },
                    crate::plan::prologue::sources(p, &plan.buffers),
                    if readers.len() > 1 { "their" } else { "its" },
                ));
            }
            let b = plan.buffer(m.out);
            if b.kind == BufferKind::Tile {
                // (The thread's block: at most `MC` rows of a column block.)
                let width = m.n.next_multiple_of(crate::schedule::CPU_GEMM_NR);
                let block = 4 * crate::schedule::CPU_GEMM_MC * m.column_block().min(width);
                notes.push(format!(
                    "{} (matmul, lines {}): the product ({} {:?}, {} ({} bytes)) is never stored whole: {} runs on each block of it as the GEMM finishes it, the block in a buffer of the computing thread's own (up to {} a thread, outside the plan){}; naive and eager count it as PyTorch stores it",
                    k.name,
                    k.source_lines(),
                    b.dtype,
                    b.shape,
                    human(b.bytes),
                    b.bytes,
                    plan.kernels.get(s + 1).map_or("?", |n| n.name.as_str()),
                    human(block),
                    if m.packs_whole_b {
                        ", its rows whole with all of B packed in the workspace"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    // Kernels after products split so that they run on the products' tiles.
    notes.extend(
        plan.notes
            .iter()
            .filter(|n| n.contains("the column folds of the kernel after"))
            .cloned(),
    );
    // Attention candidates that keep their stored scores, and why.
    notes.extend(
        plan.notes
            .iter()
            .filter(|n| n.starts_with("attention at"))
            .cloned(),
    );
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
