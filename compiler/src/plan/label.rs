//! What a kernel is called in the schedule and the report: the source-level ops it
//! computes (a decomposed built-in by its built-in's name, `softmax`, not its primitives)
//! and the source lines it fuses.

use crate::fuse::{is_compute, Group};
use crate::ir::{Graph, NodeId, Op, ReduceOp, UnaryOp};
use std::collections::{BTreeSet, HashMap};

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
    if let Some(name) = maths_name(graph, &computing, reduces) {
        return name;
    }
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

/// The built-ins of SPEC §3.5 that `decompose` writes as several primitives, recognised
/// by shapes only their decompositions have: `clamp` (`maximum`/`minimum` with the
/// constant first), `leaky_relu` (`0 < x`, `x · slope`, `where`), `logsumexp` (a max, the
/// ±inf guard's `where`, a log), `var`/`std` (a mean, a sum, a division, no `rsqrt`).
fn maths_name(graph: &Graph, computing: &[&Op], reduces: usize) -> Option<&'static str> {
    use crate::ir::{BinaryOp, CmpOp};
    let ops: Vec<&Op> = computing
        .iter()
        .copied()
        .filter(|op| !matches!(op, Op::Cast { implicit: true, .. }))
        .collect();
    let constant = |id: &crate::ir::NodeId| {
        let mut id = *id;
        while let Op::View(_, a) = &graph.node(id).op {
            id = *a;
        }
        matches!(graph.node(id).op, Op::Scalar(_))
    };
    let has = |f: &dyn Fn(&Op) -> bool| ops.iter().any(|op| f(op));
    let reduce = |r: ReduceOp| has(&|op| matches!(op, Op::Reduce { op, .. } if *op == r));
    if reduces == 0 {
        let clamp = !ops.is_empty()
            && ops.iter().all(|op| {
                matches!(op, Op::Binary(BinaryOp::Maximum | BinaryOp::Minimum, c, _) if constant(c))
            });
        if clamp {
            return Some("clamp");
        }
        let leaky = ops.len() == 3
            && has(&|op| matches!(op, Op::Binary(BinaryOp::Cmp(CmpOp::Lt), c, _) if constant(c)))
            && has(&|op| matches!(op, Op::Binary(BinaryOp::Mul, ..)))
            && has(&|op| matches!(op, Op::Where(..)));
        return leaky.then_some("leaky_relu");
    }
    if reduce(ReduceOp::Max)
        && has(&|op| matches!(op, Op::Unary(UnaryOp::Log, _)))
        && has(&|op| matches!(op, Op::Where(..)))
    {
        return Some("logsumexp");
    }
    let var = reduce(ReduceOp::Mean)
        && reduce(ReduceOp::Sum)
        && has(&|op| matches!(op, Op::Binary(BinaryOp::Div, ..)))
        && !has(&|op| {
            matches!(
                op,
                Op::Unary(UnaryOp::Rsqrt | UnaryOp::Log | UnaryOp::Exp, _)
            )
        });
    if var {
        let sqrt = has(&|op| matches!(op, Op::Unary(UnaryOp::Sqrt, _)));
        return Some(if sqrt { "std" } else { "var" });
    }
    None
}

/// The ops (`source_op_name` of each source-level op, in order of first node) and the
/// sorted, distinct source lines of the nodes of `group` marked in `live`.
pub fn kernel_label(graph: &Graph, group: &Group, live: &[bool]) -> (Vec<String>, Vec<u32>) {
    let mut keys: Vec<NodeId> = Vec::new();
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &n in &group.nodes {
        let key = source_key(graph, n);
        if live[n.index()] && !members.contains_key(&key) {
            keys.push(key);
            members.insert(key, Vec::new());
        }
    }
    // Every node of the group sharing a computed node's key names the op, live or not.
    for &n in &group.nodes {
        if let Some(m) = members.get_mut(&source_key(graph, n)) {
            m.push(n);
        }
    }
    let ops = keys
        .iter()
        .map(|key| source_op_name(graph, &members[key]).to_string())
        .collect();
    let lines: BTreeSet<u32> = group
        .nodes
        .iter()
        .filter(|n| live[n.index()])
        .map(|&n| graph.origin(n).line)
        .collect();
    (ops, lines.into_iter().collect())
}
