//! The planner: turns fused groups into the schedule — buffers, kernels with their loads,
//! insts and stores, liveness, in-place reuse and arena packing (see `docs/memory-planning.md`).
//! `verify` checks a plan independently; `text` prints it for `tc emit --plan`.

pub mod pack;
pub mod split;
pub mod text;
pub mod verify;

pub use text::print;
pub use verify::verify;

use crate::diag::{Diagnostic, ErrorKind};
use crate::fuse::{is_compute, strides_agree, to_domain, Group};
use crate::ir::layout::{layouts, layouts_through, Layout};
use crate::ir::types::contiguous_strides;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, UnaryOp};
use crate::schedule::{
    Buffer, BufferId, BufferKind, FusedKernel, Inst, InstId, InstOp, Kernel, KernelKind, Level,
    Load, MatMulKernel, MatOperand, Plan, PlanOptions, PlanOutput, Store,
};
use std::collections::{BTreeSet, HashMap};

fn internal(msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(ErrorKind::PlannerInternal, msg)
        .with_note("this is a bug in tc's planner, not in your program")
}

fn too_large(graph: &Graph, id: NodeId) -> Diagnostic {
    let o = graph.origin(id);
    Diagnostic::error(
        ErrorKind::TensorTooLarge,
        format!(
            "the tensor {} has more bytes than fit in 64 bits",
            graph.ty(id)
        ),
    )
    .with_primary(o.span.clone(), "this value")
}

/// The source-level key of a primitive node: the checked node it came from.
pub fn source_key(graph: &Graph, id: NodeId) -> NodeId {
    graph.origin(id).group.unwrap_or(id)
}

/// The source-level name of the op a set of primitive nodes (sharing one key) computes:
/// the built-in a decomposition came from, else the node's own op name.
pub fn source_op_name(graph: &Graph, nodes: &[NodeId]) -> &'static str {
    let computing: Vec<&Op> = nodes
        .iter()
        .map(|&n| &graph.node(n).op)
        .filter(|op| is_compute(op))
        .collect();
    let has = |f: &dyn Fn(&Op) -> bool| computing.iter().any(|op| f(op));
    let means = computing
        .iter()
        .filter(|op| {
            matches!(
                op,
                Op::Reduce {
                    op: ReduceOp::Mean,
                    ..
                }
            )
        })
        .count();
    let reduces = computing
        .iter()
        .filter(|op| matches!(op, Op::Reduce { .. }))
        .count();
    if computing.len() > 1 && reduces > 0 {
        if has(&|op| matches!(op, Op::Unary(UnaryOp::Log, _))) {
            return "log_softmax";
        }
        if has(&|op| {
            matches!(
                op,
                Op::Reduce {
                    op: ReduceOp::Max,
                    ..
                }
            )
        }) {
            return "softmax";
        }
        if has(&|op| matches!(op, Op::Unary(UnaryOp::Rsqrt, _))) {
            return if means >= 2 { "layernorm" } else { "rmsnorm" };
        }
    }
    let main = computing
        .iter()
        .rev()
        .find(|op| !matches!(op, Op::Cast { implicit: true, .. }));
    main.or(computing.last()).map_or("fill", |op| op.name())
}

/// Builds the schedule for the fused groups of a primitive graph.
///
/// 1. The groups run in the order given; if the packed arena then exceeds the eager figure
///    (fusion can compute a value earlier than eager would and keep it live longer), they are
///    also tried in an as-late-as-possible order, and the smaller arena is kept.
/// 2. With fusion on, `fuse::siblings` proposes merging kernels that load the same data
///    (horizontal fusion); each merge is planned as in 1 and kept only when its arena is not
///    larger than the best so far, so sibling fusion never raises the planned peak.
/// 3. If the arena still exceeds the eager figure, the unfused groups are tried as a last
///    resort; the smallest arena wins, so `planned <= eager` whenever any of them achieves it.
pub fn plan(graph: &Graph, groups: &[Group], options: &PlanOptions) -> Result<Plan, Diagnostic> {
    let budget = crate::report::eager_budget(graph, options);
    let mut best = plan_ordered(graph, groups, options, budget)?;
    if options.fuse {
        crate::fuse::siblings(graph, groups, |merged| {
            let p = plan_ordered(graph, merged, options, budget)?;
            let keep = p.arena_bytes <= best.arena_bytes;
            if keep {
                best = p;
            }
            Ok::<bool, Diagnostic>(keep)
        })?;
    }
    if options.reuse && options.fuse && best.arena_bytes > budget {
        let unfused = crate::fuse::fuse(graph, false);
        for cand in [late_order(graph, &unfused), unfused] {
            let p = plan_in_order(graph, &cand, options, budget)?;
            if p.arena_bytes < best.arena_bytes {
                best = Plan {
                    unfused_fallback: true,
                    ..p
                };
            }
            if best.arena_bytes <= budget {
                break;
            }
        }
    }
    // The independent verifier runs on every plan in debug builds (and in every test).
    if cfg!(debug_assertions) {
        verify(&best).map_err(|e| internal(format!("the plan fails verification: {e}")))?;
    }
    Ok(best)
}

/// The plan of `groups` in their order, or in the as-late-as-possible order when that packs
/// smaller and the first exceeds the eager figure `budget`.
pub(crate) fn plan_ordered(
    graph: &Graph,
    groups: &[Group],
    options: &PlanOptions,
    budget: u64,
) -> Result<Plan, Diagnostic> {
    let best = plan_in_order(graph, groups, options, budget)?;
    if !options.reuse || best.arena_bytes <= budget {
        return Ok(best);
    }
    let late = plan_in_order(graph, &late_order(graph, groups), options, budget)?;
    Ok(if late.arena_bytes < best.arena_bytes {
        late
    } else {
        best
    })
}

/// The groups in a topological order that runs each group as late as its last node
/// (ties by first node), so a value is not computed long before eager would compute it.
fn late_order(graph: &Graph, groups: &[Group]) -> Vec<Group> {
    let lays = layouts(graph);
    let mut group_of = vec![usize::MAX; graph.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n.index()] = g;
        }
    }
    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); groups.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            for o in graph.node(n).op.operands() {
                let h = group_of[lays[o.index()].root.index()];
                if h != usize::MAX && h != g {
                    preds[g].insert(h);
                }
            }
        }
    }
    let key = |g: usize| {
        (
            groups[g].nodes.iter().max().copied(),
            groups[g].nodes.first().copied(),
            g,
        )
    };
    let mut done = vec![false; groups.len()];
    let mut out = Vec::with_capacity(groups.len());
    while out.len() < groups.len() {
        let next = (0..groups.len())
            .filter(|&g| !done[g] && preds[g].iter().all(|&h| done[h]))
            .min_by_key(|&g| key(g));
        let Some(g) = next else {
            return groups.to_vec();
        };
        done[g] = true;
        out.push(groups[g].clone());
    }
    out
}

fn plan_in_order(
    graph: &Graph,
    groups: &[Group],
    options: &PlanOptions,
    budget: u64,
) -> Result<Plan, Diagnostic> {
    let lays = layouts(graph);
    for id in graph.ids() {
        if graph.node(id).op.is_view() && lays[id.index()].root == id {
            return Err(internal(format!(
                "the view {id} has no strided layout and was not copied"
            )));
        }
    }
    let mut group_of: Vec<Option<usize>> = vec![None; graph.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n.index()] = Some(g);
        }
    }
    // Promotions in no kernel (`fuse` folded them): each consumer loads the operand through
    // the same views and converts; `flays` are the layouts that see through them.
    let folded: Vec<bool> = graph
        .ids()
        .map(|id| {
            matches!(graph.node(id).op, Op::Cast { implicit: true, .. })
                && group_of[id.index()].is_none()
        })
        .collect();
    let flays = layouts_through(graph, &folded);
    // Values the outputs need, and everything they depend on.
    let output_roots: BTreeSet<NodeId> = graph
        .outputs
        .iter()
        .map(|o| lays[o.node.index()].root)
        .collect();
    let live = graph.needed();
    // Stored values: outputs, and values a later kernel reads.
    let mut stored = vec![false; graph.len()];
    for r in &output_roots {
        stored[r.index()] = true;
    }
    for id in graph.ids() {
        if !live[id.index()] || !is_compute(&graph.node(id).op) || folded[id.index()] {
            continue;
        }
        for o in graph.node(id).op.operands() {
            let r = flays[o.index()].root;
            if group_of[r.index()].is_some() && group_of[r.index()] != group_of[id.index()] {
                stored[r.index()] = true;
            }
        }
    }
    for id in graph.ids() {
        if is_compute(&graph.node(id).op)
            && !folded[id.index()]
            && group_of[id.index()].is_none()
            && live[id.index()]
        {
            return Err(internal(format!(
                "the node {id} ({}) is in no kernel",
                graph.node(id).op.name()
            )));
        }
    }

    let mut b = Builder {
        graph,
        lays: &lays,
        folded: &folded,
        flays: &flays,
        buffers: Vec::new(),
        buf_of: HashMap::new(),
    };
    let mut inputs = Vec::new();
    let mut params = Vec::new();
    for (index, leaf) in graph.inputs.iter().enumerate() {
        inputs.push(b.leaf(leaf.node, &leaf.name, BufferKind::Input { index })?);
    }
    for (index, leaf) in graph.params.iter().enumerate() {
        params.push(b.leaf(leaf.node, &leaf.name, BufferKind::Param { index })?);
    }

    let mut kernels: Vec<Kernel> = Vec::new();
    for group in groups {
        let outs: Vec<NodeId> = group
            .nodes
            .iter()
            .copied()
            .filter(|n| stored[n.index()])
            .collect();
        if outs.is_empty() {
            continue; // nothing anyone reads
        }
        let step = kernels.len();
        let name = format!("k{step}");
        let unnamed = outs
            .iter()
            .filter(|n| graph.node(**n).name.is_none())
            .count();
        let mut out_bufs = Vec::new();
        let mut k = 0;
        for &n in &outs {
            let bname = match &graph.node(n).name {
                Some(s) => s.clone(),
                None if unnamed == 1 => format!("{name}.out"),
                None => {
                    k += 1;
                    format!("{name}.out{}", k - 1)
                }
            };
            out_bufs.push(b.arena(n, bname, step)?);
        }
        let kind = if group.matmul {
            b.matmul(group, out_bufs[0], options, step)?
        } else {
            KernelKind::Fused(b.fused(group, &live, &outs, &out_bufs)?)
        };
        let computed: Vec<NodeId> = group
            .nodes
            .iter()
            .copied()
            .filter(|n| live[n.index()])
            .collect();
        let mut keys: Vec<NodeId> = Vec::new();
        for &n in &computed {
            let key = source_key(graph, n);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let ops = keys
            .iter()
            .map(|key| {
                let members: Vec<NodeId> = group
                    .nodes
                    .iter()
                    .copied()
                    .filter(|&n| source_key(graph, n) == *key)
                    .collect();
                source_op_name(graph, &members).to_string()
            })
            .collect();
        let lines: Vec<u32> = computed
            .iter()
            .map(|&n| graph.origin(n).line)
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        // A large reduction into one value: two kernels over a small buffer of partials.
        let halves = match &kind {
            KernelKind::Fused(f) => split::splittable(f).map(|sp| {
                let partials: Vec<BufferId> = (0..sp.reduces.len())
                    .map(|i| {
                        b.push(Buffer {
                            name: format!(
                                "{name}.partials{}",
                                if sp.reduces.len() > 1 {
                                    i.to_string()
                                } else {
                                    String::new()
                                }
                            ),
                            kind: BufferKind::Arena,
                            dtype: crate::ir::DType::F32,
                            shape: vec![sp.rows],
                            bytes: sp.rows * 4,
                            offset: 0,
                            first_step: step,
                            last_step: step + 1,
                            in_place_of: None,
                            node: None,
                        })
                    })
                    .collect();
                split::split(f, &sp, &partials)
            }),
            KernelKind::MatMul(_) => None,
        };
        match halves {
            Some((first, second)) => {
                // The values stored after the fold are written one step later.
                for st in &second.stores {
                    b.buffers[st.buffer.index()].first_step = step + 1;
                }
                let folds: Vec<String> = second
                    .body
                    .iter()
                    .filter_map(|i| match i.op {
                        InstOp::Reduce(op, _) => Some(format!("{} of partials", op.name())),
                        _ => None,
                    })
                    .collect();
                kernels.push(Kernel {
                    name,
                    kind: KernelKind::Fused(first),
                    ops,
                    lines: lines.clone(),
                });
                kernels.push(Kernel {
                    name: format!("k{}", step + 1),
                    kind: KernelKind::Fused(second),
                    ops: folds,
                    lines,
                });
            }
            None => kernels.push(Kernel {
                name,
                kind,
                ops,
                lines,
            }),
        }
    }

    let mut buffers = b.buffers;
    let buf_of = b.buf_of;
    let last = kernels.len().saturating_sub(1);
    // Liveness: the last kernel reading a buffer; outputs live to the end.
    for (step, kernel) in kernels.iter().enumerate() {
        for id in reads(kernel) {
            let buf = &mut buffers[id.index()];
            buf.last_step = buf.last_step.max(step);
        }
    }
    let mut outputs = Vec::new();
    for o in &graph.outputs {
        let lay = &lays[o.node.index()];
        let id = *buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("output {} has no buffer", o.name)))?;
        buffers[id.index()].last_step = last;
        outputs.push(PlanOutput {
            name: o.name.clone(),
            buffer: id,
            dtype: graph.dtype(o.node),
            shape: graph.ty(o.node).sizes(),
            offset: lay.offset,
            strides: lay.strides.clone(),
        });
    }
    let output_bufs: BTreeSet<BufferId> = outputs.iter().map(|o| o.buffer).collect();
    if options.reuse {
        in_place(&kernels, &mut buffers, &output_bufs);
    }
    let arena_bytes = assign_offsets(&mut buffers, options, budget);
    Ok(Plan {
        kernels,
        buffers,
        arena_bytes,
        inputs,
        params,
        outputs,
        options: options.clone(),
        unfused_fallback: false,
    })
}

/// The buffers a kernel reads.
pub fn reads(kernel: &Kernel) -> Vec<BufferId> {
    match &kernel.kind {
        KernelKind::Fused(f) => f.loads.iter().map(|l| l.buffer).collect(),
        KernelKind::MatMul(m) => vec![m.a.buffer, m.b.buffer],
    }
}

/// The buffers a kernel writes (its workspace included).
pub fn writes(kernel: &Kernel) -> Vec<BufferId> {
    match &kernel.kind {
        KernelKind::Fused(f) => f.stores.iter().map(|s| s.buffer).collect(),
        KernelKind::MatMul(m) => std::iter::once(m.out).chain(m.workspace).collect(),
    }
}

/// Strides, over the domain, of the contiguous store of an inst of `level`.
pub fn store_strides(kernel: &FusedKernel, level: Level) -> Vec<i64> {
    match level {
        Level::Element => contiguous_strides(&kernel.domain),
        Level::Row => {
            let (_, drop) = crate::fuse::row_shapes(&kernel.domain, &kernel.reduce_axes);
            to_domain(
                &contiguous_strides(&drop),
                drop.len(),
                Level::Row,
                &kernel.domain,
                &kernel.reduce_axes,
            )
        }
    }
}

/// In-place reuse: a kernel's store takes over the storage of an arena buffer it reads for
/// the last time, of the same bytes and dtype, when every load of it reads exactly the
/// element the store writes.
fn in_place(kernels: &[Kernel], buffers: &mut [Buffer], outputs: &BTreeSet<BufferId>) {
    for (step, kernel) in kernels.iter().enumerate() {
        let KernelKind::Fused(f) = &kernel.kind else {
            continue;
        };
        let mut taken: BTreeSet<BufferId> = BTreeSet::new();
        for store in &f.stores {
            let out = store.buffer;
            if buffers[out.index()].kind != BufferKind::Arena {
                continue;
            }
            let want = store_strides(f, f.body[store.inst].level);
            let candidates: BTreeSet<BufferId> = f.loads.iter().map(|l| l.buffer).collect();
            for cand in candidates {
                let c = &buffers[cand.index()];
                let o = &buffers[out.index()];
                let ok = c.kind == BufferKind::Arena
                    && c.last_step == step
                    && !outputs.contains(&cand)
                    && !taken.contains(&cand)
                    && c.bytes == o.bytes
                    && c.dtype == o.dtype
                    && f.loads
                        .iter()
                        .filter(|l| l.buffer == cand)
                        .all(|l| l.offset == 0 && strides_agree(&l.strides, &want, &f.domain));
                if ok {
                    taken.insert(cand);
                    buffers[out.index()].in_place_of = Some(cand);
                    break;
                }
            }
        }
    }
}

/// The storage object (first buffer of an in-place chain) of each buffer.
fn storage_root(buffers: &[Buffer], mut id: BufferId) -> BufferId {
    while let Some(prev) = buffers[id.index()].in_place_of {
        id = prev;
    }
    id
}

/// Packs arena and workspace buffers (or lays them end to end without reuse).
fn assign_offsets(buffers: &mut [Buffer], options: &PlanOptions, budget: u64) -> u64 {
    let in_arena = |b: &Buffer| matches!(b.kind, BufferKind::Arena | BufferKind::Workspace);
    let roots: Vec<usize> = (0..buffers.len())
        .filter(|&i| in_arena(&buffers[i]) && buffers[i].in_place_of.is_none())
        .collect();
    let mut items: Vec<pack::Item> = roots
        .iter()
        .map(|&i| pack::Item {
            size: buffers[i].bytes,
            first: buffers[i].first_step,
            last: buffers[i].last_step,
        })
        .collect();
    let index_of: HashMap<usize, usize> = roots.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    for i in 0..buffers.len() {
        if in_arena(&buffers[i]) && buffers[i].in_place_of.is_some() {
            let r = storage_root(buffers, BufferId(i as u32)).index();
            if let Some(&k) = index_of.get(&r) {
                items[k].last = items[k].last.max(buffers[i].last_step);
            }
        }
    }
    let (offsets, arena) = if options.reuse {
        pack::pack(&items, budget)
    } else {
        let mut acc = 0u64;
        let offs = items
            .iter()
            .map(|it| {
                let o = acc;
                acc = acc.saturating_add(pack::align_up(it.size));
                o
            })
            .collect();
        (offs, acc)
    };
    for i in 0..buffers.len() {
        if in_arena(&buffers[i]) {
            let r = storage_root(buffers, BufferId(i as u32)).index();
            if let Some(&k) = index_of.get(&r) {
                buffers[i].offset = offsets[k];
            }
        }
    }
    arena
}

struct Builder<'a> {
    graph: &'a Graph,
    lays: &'a [Layout],
    /// Promotions read through converting loads (`fuse::folded_casts`), and the layouts
    /// that see through them.
    folded: &'a [bool],
    flays: &'a [Layout],
    buffers: Vec<Buffer>,
    buf_of: HashMap<NodeId, BufferId>,
}

impl Builder<'_> {
    fn push(&mut self, buf: Buffer) -> BufferId {
        let id = BufferId(self.buffers.len() as u32);
        if let Some(n) = buf.node {
            self.buf_of.insert(n, id);
        }
        self.buffers.push(buf);
        id
    }

    fn leaf(&mut self, node: NodeId, name: &str, kind: BufferKind) -> Result<BufferId, Diagnostic> {
        let ty = self.graph.ty(node);
        let bytes = ty.bytes().ok_or_else(|| too_large(self.graph, node))?;
        Ok(self.push(Buffer {
            name: name.to_string(),
            kind,
            dtype: ty.dtype,
            shape: ty.sizes(),
            bytes,
            offset: 0,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: Some(node),
        }))
    }

    fn arena(&mut self, node: NodeId, name: String, step: usize) -> Result<BufferId, Diagnostic> {
        let ty = self.graph.ty(node);
        let bytes = ty.bytes().ok_or_else(|| too_large(self.graph, node))?;
        Ok(self.push(Buffer {
            name,
            kind: BufferKind::Arena,
            dtype: ty.dtype,
            shape: ty.sizes(),
            bytes,
            offset: 0,
            first_step: step,
            last_step: step,
            in_place_of: None,
            node: Some(node),
        }))
    }

    fn operand(&self, o: NodeId) -> Result<MatOperand, Diagnostic> {
        let lay = &self.lays[o.index()];
        let buffer = *self
            .buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("matmul operand {o} is not in memory")))?;
        Ok(MatOperand {
            buffer,
            dtype: self.buffers[buffer.index()].dtype,
            offset: lay.offset,
            strides: lay.strides.clone(),
        })
    }

    fn matmul(
        &mut self,
        group: &Group,
        out: BufferId,
        options: &PlanOptions,
        step: usize,
    ) -> Result<KernelKind, Diagnostic> {
        let n = group.nodes[0];
        let Op::MatMul(a, bn) = self.graph.node(n).op else {
            return Err(internal("a matmul group without a matmul"));
        };
        let shape = self.graph.ty(n).sizes();
        let a_shape = self.graph.ty(a).sizes();
        let r = shape.len();
        if r < 2 || a_shape.len() != r || self.graph.ty(bn).rank() != r {
            return Err(internal(format!(
                "matmul {n} operands are not of equal rank ≥ 2"
            )));
        }
        let workspace = if options.matmul_workspace > 0 {
            Some(self.push(Buffer {
                name: format!("k{step}.workspace"),
                kind: BufferKind::Workspace,
                dtype: crate::ir::DType::F32,
                shape: vec![options.matmul_workspace.div_ceil(4)],
                bytes: options.matmul_workspace,
                offset: 0,
                first_step: step,
                last_step: step,
                in_place_of: None,
                node: None,
            }))
        } else {
            None
        };
        Ok(KernelKind::MatMul(MatMulKernel {
            batch: shape[..r - 2].to_vec(),
            m: shape[r - 2],
            n: shape[r - 1],
            k: a_shape[r - 1],
            a: self.operand(a)?,
            b: self.operand(bn)?,
            out,
            out_dtype: self.graph.dtype(n),
            workspace,
        }))
    }

    fn fused(
        &self,
        group: &Group,
        live: &[bool],
        outs: &[NodeId],
        out_bufs: &[BufferId],
    ) -> Result<FusedKernel, Diagnostic> {
        let mut k = FusedKernel {
            domain: group.domain.clone(),
            reduce_axes: group.reduce_axes.clone(),
            loads: Vec::new(),
            body: Vec::new(),
            stores: Vec::new(),
        };
        let mut inst_of: HashMap<NodeId, InstId> = HashMap::new();
        let mut loads: HashMap<(BufferId, i64, Vec<i64>), InstId> = HashMap::new();
        let mut consts: HashMap<(u64, crate::ir::DType), InstId> = HashMap::new();
        // Value numbering: the same op on the same insts is computed once (a folded promotion
        // read twice converts once; sibling kernels merged by `fuse` often share their row
        // statistics, softmax's max and sum, say).
        let mut computed: HashMap<(Computed, crate::ir::DType, Level), InstId> = HashMap::new();
        let row_level = if k.reduce_axes.is_empty() {
            Level::Element
        } else {
            Level::Row
        };
        for (i, &n) in group.nodes.iter().enumerate() {
            if !live[n.index()] {
                continue; // computed for nobody
            }
            let level = group.levels.get(i).copied().unwrap_or(Level::Element);
            let node = self.graph.node(n);
            let dtype = node.ty.dtype;
            let consumer = if matches!(node.op, Op::Reduce { .. }) {
                Level::Element
            } else {
                level
            };
            let mut value = |o: NodeId, k: &mut FusedKernel| -> Result<InstId, Diagnostic> {
                let lay = &self.lays[o.index()];
                if let Some(&i) = inst_of.get(&lay.root) {
                    return Ok(i);
                }
                if let Op::Scalar(v) = self.graph.node(lay.root).op {
                    let dt = self.graph.dtype(lay.root);
                    let id = *consts.entry((v.to_bits(), dt)).or_insert_with(|| {
                        k.body.push(Inst {
                            op: InstOp::Const(v),
                            dtype: dt,
                            level: row_level,
                            node: Some(lay.root),
                        });
                        k.body.len() - 1
                    });
                    return Ok(id);
                }
                // A folded promotion: load its input or param through the same views,
                // then round to the promoted dtype.
                let (lay, cast_to) = if self.folded[lay.root.index()] {
                    (&self.flays[o.index()], Some(self.graph.dtype(lay.root)))
                } else {
                    (lay, None)
                };
                let buffer = *self
                    .buf_of
                    .get(&lay.root)
                    .ok_or_else(|| internal(format!("{} is read before it is stored", lay.root)))?;
                let strides = to_domain(
                    &lay.strides,
                    self.graph.ty(o).rank(),
                    consumer,
                    &k.domain,
                    &k.reduce_axes,
                );
                if strides.len() != k.domain.len() {
                    return Err(internal(format!(
                        "load of {o} does not match the kernel domain"
                    )));
                }
                let key = (buffer, lay.offset, strides.clone());
                let loaded = match loads.get(&key) {
                    Some(&i) => i,
                    None => {
                        let is_row = !k.reduce_axes.is_empty()
                            && k.reduce_axes
                                .iter()
                                .all(|&a| strides[a] == 0 || k.domain[a] == 1);
                        let bdt = self.buffers[buffer.index()].dtype;
                        k.loads.push(Load {
                            buffer,
                            dtype: bdt,
                            offset: lay.offset,
                            strides,
                        });
                        k.body.push(Inst {
                            op: InstOp::Load(k.loads.len() - 1),
                            dtype: bdt,
                            level: if is_row { row_level } else { Level::Element },
                            node: None,
                        });
                        loads.insert(key, k.body.len() - 1);
                        k.body.len() - 1
                    }
                };
                match cast_to {
                    Some(dt) if dt != k.body[loaded].dtype => {
                        let level = k.body[loaded].level;
                        let key = (Computed::Cast(loaded), dt, level);
                        Ok(*computed.entry(key).or_insert_with(|| {
                            k.body.push(Inst {
                                op: InstOp::Cast(loaded),
                                dtype: dt,
                                level,
                                node: None,
                            });
                            k.body.len() - 1
                        }))
                    }
                    _ => Ok(loaded),
                }
            };
            let op = match &node.op {
                Op::Unary(u, a) => InstOp::Unary(*u, value(*a, &mut k)?),
                Op::Binary(bop, a, c) => {
                    let a = value(*a, &mut k)?;
                    InstOp::Binary(*bop, a, value(*c, &mut k)?)
                }
                Op::Cast { arg, .. } => InstOp::Cast(value(*arg, &mut k)?),
                Op::Reduce { op, arg, .. } => {
                    let a = value(*arg, &mut k)?;
                    if k.body[a].level == Level::Element || k.reduce_axes.is_empty() {
                        InstOp::Reduce(*op, a)
                    } else {
                        // A row-constant operand (a broadcast read): the fold is closed-form,
                        // so every executor computes the same exact figure.
                        match op {
                            ReduceOp::Sum => {
                                k.body.push(Inst {
                                    op: InstOp::Const(k.row_len() as f64),
                                    dtype: crate::ir::DType::F32,
                                    level: row_level,
                                    node: None,
                                });
                                InstOp::Binary(BinaryOp::Mul, a, k.body.len() - 1)
                            }
                            ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min => InstOp::Cast(a),
                        }
                    }
                }
                Op::Scalar(v) => InstOp::Const(*v),
                // A copy rounds to its own dtype: the identity on a loaded value.
                Op::Copy(a) => InstOp::Cast(value(*a, &mut k)?),
                other => {
                    return Err(internal(format!(
                        "{} cannot be part of a fused kernel",
                        other.name()
                    )))
                }
            };
            let key = Computed::of(&op).map(|c| (c, dtype, level));
            if let Some(&same) = key.as_ref().and_then(|key| computed.get(key)) {
                inst_of.insert(n, same);
                continue;
            }
            // Arithmetic is in f32; a half-precision result is rounded right away, so the
            // fused kernel rounds exactly where the unfused program stores.
            let rounds = dtype != crate::ir::DType::F32
                && matches!(
                    op,
                    InstOp::Unary(..) | InstOp::Binary(..) | InstOp::Reduce(..)
                );
            k.body.push(Inst {
                op,
                dtype,
                level,
                node: Some(n),
            });
            if rounds {
                let v = k.body.len() - 1;
                k.body.push(Inst {
                    op: InstOp::Cast(v),
                    dtype,
                    level,
                    node: Some(n),
                });
            }
            inst_of.insert(n, k.body.len() - 1);
            if let Some(key) = key {
                computed.insert(key, k.body.len() - 1);
            }
        }
        for (&n, &buffer) in outs.iter().zip(out_bufs) {
            let inst = *inst_of
                .get(&n)
                .ok_or_else(|| internal(format!("stored value {n} was not computed")))?;
            k.stores.push(Store { inst, buffer });
        }
        Ok(k)
    }
}

/// A computing inst's op, hashable (no `Const`: constants are numbered by their bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Computed {
    Unary(crate::ir::UnaryOp, InstId),
    Binary(BinaryOp, InstId, InstId),
    Cast(InstId),
    Reduce(ReduceOp, InstId),
}

impl Computed {
    fn of(op: &InstOp) -> Option<Computed> {
        match *op {
            InstOp::Unary(u, a) => Some(Computed::Unary(u, a)),
            InstOp::Binary(b, x, y) => Some(Computed::Binary(b, x, y)),
            InstOp::Cast(a) => Some(Computed::Cast(a)),
            InstOp::Reduce(r, a) => Some(Computed::Reduce(r, a)),
            InstOp::Load(_) | InstOp::Const(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
