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
