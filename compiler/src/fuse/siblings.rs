//! Horizontal (sibling) fusion: after the producer→consumer merging, kernels that load the
//! same data over the same domain and reduce axes, with no path between them, are merged so
//! the data is read once. The caller judges each merge (`crate::search` keeps it only when the
//! planned arena does not grow); `analyze` and the cycle check are the vertical fusion's own.

use super::{order, to_domain, Fuser, Group};
use crate::ir::layout::layouts_through;
use crate::ir::{Graph, NodeId, Op};
use crate::schedule::Level;
use std::collections::{BTreeMap, BTreeSet};

/// Most merges `siblings` proposes to its judge (each costs the planner a plan), so a
/// program with hundreds of sibling kernels still compiles in bounded time.
pub const MAX_SIBLING_TRIALS: usize = 64;

/// A load as the planner will make it: the stored node (an input, a param or a kernel's
/// value; promotions in no kernel are seen through), element offset, strides over the domain.
type LoadKey = (NodeId, i64, Vec<i64>);

/// Merges sibling groups of `groups` (a fusion's result, in a runnable order) where `keep`
/// accepts the merged groups, and returns the groups in a runnable order.
///
/// Two groups are siblings when neither is a matmul, they have the same domain and reduce
/// axes, some load of one is a load of the other that reads a distinct element at every
/// domain index (no broadcast axis: sharing a broadcast bias saves too little to merge), no
/// path of kernels leads from one to the other (directly or through others), and their union
/// passes `analyze`. Pairs are tried in order, each group absorbing its later siblings; at
/// most `MAX_SIBLING_TRIALS` merges are proposed.
pub fn siblings<E>(
    graph: &Graph,
    groups: &[Group],
    mut keep: impl FnMut(&[Group]) -> Result<bool, E>,
) -> Result<Vec<Group>, E> {
    let folded: Vec<bool> = {
        let mut grouped = vec![false; graph.len()];
        for n in groups.iter().flat_map(|g| &g.nodes) {
            grouped[n.index()] = true;
        }
        graph
            .ids()
            .map(|id| {
                matches!(graph.node(id).op, Op::Cast { implicit: true, .. }) && !grouped[id.index()]
            })
            .collect()
    };
    let flays = layouts_through(graph, &folded);
    let mut f = Fuser::from_groups(graph, groups, &flays);
    let needed = graph.needed();
    let mut loads: Vec<BTreeSet<LoadKey>> = (0..groups.len())
        .map(|g| full_loads(&f, &flays, &needed, g, &groups[g]))
        .collect();
    // The groups making each load, so only groups that share one are ever compared.
    let mut readers: BTreeMap<LoadKey, Vec<usize>> = BTreeMap::new();
    for (g, keys) in loads.iter().enumerate() {
        for key in keys {
            readers.entry(key.clone()).or_default().push(g);
        }
    }
    let mut trials = 0;
    for a in 0..groups.len() {
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        // The next later group sharing a load with `a` (whose loads grow as it absorbs).
        while let Some(b) = loads[a]
            .iter()
            .flat_map(|k| readers.get(k).into_iter().flatten())
            .copied()
            .filter(|&b| b > a && !seen.contains(&b))
            .min()
        {
            seen.insert(b);
            if trials == MAX_SIBLING_TRIALS {
                return Ok(order(&f));
            }
            let (ga, gb) = (&groups[a], &groups[b]);
            let candidate = !f.members[a].is_empty()
                && !f.members[b].is_empty()
                && !ga.matmul
                && !gb.matmul
                && ![ga, gb].iter().any(|g| {
                    g.nodes.iter().any(|&n| {
                        matches!(
                            graph.node(n).op,
                            crate::ir::Op::Concat { .. } | crate::ir::Op::IndexAdd { .. }
                        )
                    })
                })
                && ga.attention.is_none()
                && gb.attention.is_none()
                && ga.attention_backward.is_none()
                && gb.attention_backward.is_none()
                && ga.domain == gb.domain
                && ga.reduce_axes == gb.reduce_axes
                && !f.successors(a).contains(&b)
                && !f.successors(b).contains(&a);
            if !candidate {
                continue;
            }
            let (old_a, old_b) = (f.members[a].clone(), f.members[b].clone());
            // `merge_into` runs `analyze` on the union and refuses a path through a third group.
            if !f.merge_into(a, b) {
                continue;
            }
            trials += 1;
            if keep(&order(&f))? {
                let absorbed = std::mem::take(&mut loads[b]);
                loads[a].extend(absorbed);
            } else {
                f.unmerge(a, b, old_a, old_b);
            }
        }
    }
    Ok(order(&f))
}

/// The loads of group `g` that read a distinct element at every domain index, for the nodes
/// an output needs.
fn full_loads(
    f: &Fuser<'_>,
    flays: &[crate::ir::layout::Layout],
    needed: &[bool],
    g: usize,
    group: &Group,
) -> BTreeSet<LoadKey> {
    let graph = f.graph;
    let mut keys = BTreeSet::new();
    for (i, &n) in group.nodes.iter().enumerate() {
        if !needed[n.index()] {
            continue;
        }
        let op = &graph.node(n).op;
        let consumer = match op {
            Op::Reduce { .. } | Op::Cumsum { .. } => Level::Element,
            _ => group.levels.get(i).copied().unwrap_or(Level::Element),
        };
        for o in op.operands() {
            let lay = &flays[o.index()];
            let r = lay.root;
            if f.gid[r.index()] == Some(g) || graph.node(r).op.is_synthesized() {
                continue;
            }
            let strides = to_domain(
                &lay.strides,
                graph.ty(o).rank(),
                consumer,
                &group.domain,
                &group.reduce_axes,
            );
            let broadcast = strides.len() != group.domain.len()
                || strides
                    .iter()
                    .zip(&group.domain)
                    .any(|(&s, &d)| s == 0 && d > 1);
            if !broadcast {
                keys.insert((r, lay.offset, strides));
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::fuse;
    use crate::fuse::testgraph::G;
    use crate::ir::decompose::decompose;
    use crate::ir::{BinaryOp as B, DType, ReduceOp as R, UnaryOp as U};
    use crate::plan::{plan_ordered, print};
    use crate::schedule::{KernelKind, Plan, PlanOptions};
    use crate::search as plan;

    /// The groups after sibling fusion when every merge is accepted.
    fn merged(graph: &Graph) -> Vec<Group> {
        let groups = fuse(graph, true);
        siblings(graph, &groups, |_| Ok::<bool, ()>(true)).expect("no judge error")
    }

    fn planned(graph: &Graph) -> Plan {
        let groups = fuse(graph, true);
        let p = plan(graph, graph, &groups, &PlanOptions::default()).expect("plans");
        crate::plan::verify(&p).unwrap_or_else(|e| panic!("{e}\n{}", print(&p)));
        p
    }

    /// Loads and stores of a fused kernel, by buffer name.
    fn accesses(p: &Plan, k: usize) -> (Vec<&str>, Vec<&str>) {
        let KernelKind::Fused(f) = &p.kernels[k].kind else {
            panic!("k{k} is not fused")
        };
        let name = |b: crate::schedule::BufferId| p.buffer(b).name.as_str();
        (
            f.loads.iter().map(|l| name(l.buffer)).collect(),
            f.stores.iter().map(|s| name(s.buffer)).collect(),
        )
    }

    #[test]
    fn pointwise_siblings_merge_and_load_x_once() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let y1 = b.un(U::Exp, x);
        let y2 = b.un(U::Sin, x);
        b.output("y1", y1);
        b.output("y2", y2);
        assert_eq!(fuse(&b.g, true).len(), 2);
        let groups = merged(&b.g);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].nodes, vec![y1, y2]);
        assert_eq!(groups[0].domain, vec![4, 8]);
        let p = planned(&b.g);
        assert_eq!(p.kernels.len(), 1);
        assert_eq!(accesses(&p, 0), (vec!["x"], vec!["k0.out0", "k0.out1"]));
    }

    #[test]
    fn row_siblings_merge_with_both_sets_of_reductions() {
        // The hand-written layernorm beside the built-in, as in examples/layernorm.tx.
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let y = b.op(
            Op::LayerNorm {
                arg: x,
                axis: 1,
                eps: 1e-5,
            },
            DType::F32,
            &[4, 8],
        );
        let mu = b.reduce(R::Mean, x, &[1], true);
        let xc = b.bin(B::Sub, x, mu);
        let sq = b.bin(B::Mul, xc, xc);
        let var = b.reduce(R::Mean, sq, &[1], true);
        let ve = b.bin_s(B::Add, var, 1e-5);
        let sd = b.un(U::Sqrt, ve);
        let manual = b.bin(B::Div, xc, sd);
        b.output("y", y);
        b.output("manual", manual);
        let p = decompose(&b.g);
        assert_eq!(fuse(&p, true).len(), 2);
        let groups = merged(&p);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].reduce_axes, vec![1]);
        let plan = planned(&p);
        assert_eq!(plan.kernels.len(), 1);
        assert_eq!(accesses(&plan, 0), (vec!["x"], vec!["k0.out0", "k0.out1"]));
        let KernelKind::Fused(f) = &plan.kernels[0].kind else {
            panic!("fused")
        };
        let reduces = f
            .body
            .iter()
            .filter(|i| matches!(i.op, crate::schedule::InstOp::Reduce(..)))
            .count();
        // Both forms fold mean(x) and mean(xc²): the planner computes each once.
        assert_eq!(reduces, 2);
    }

    #[test]
    fn siblings_with_a_path_between_them_do_not_merge() {
        // Directly: `b` reads `a` transposed (a kernel boundary) and also reads `x`.
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[8, 8]);
        let a = g.un(U::Exp, x);
        let t = g.transpose(a);
        let c = g.bin(B::Add, t, x);
        g.output("a", a);
        g.output("c", c);
        assert_eq!(merged(&g.g).len(), 2);
        // Through a third kernel: `a` feeds a matmul whose result `d` multiplies `x` (a
        // product, not an add the matmul would absorb: `fuse::gemm`).
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[8, 8]);
        let w = g.param("w", DType::F32, &[8, 8]);
        let a = g.un(U::Exp, x);
        let m = g.matmul(a, w);
        let d = g.bin(B::Mul, m, x);
        g.output("a", a);
        g.output("d", d);
        let groups = merged(&g.g);
        assert_eq!(groups.len(), 3, "{groups:?}");
    }

    #[test]
    fn different_domains_reduce_axes_or_matmuls_do_not_merge() {
        // A pointwise kernel and a row kernel over the same x.
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[4, 8]);
        let e = g.un(U::Exp, x);
        let s = g.reduce(R::Sum, x, &[1], false);
        g.output("e", e);
        g.output("s", s);
        assert_eq!(merged(&g.g).len(), 2);
        // Row kernels folding different axes of the same domain.
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[4, 8]);
        let s = g.reduce(R::Sum, x, &[1], false);
        let t = g.reduce(R::Max, x, &[0], false);
        g.output("s", s);
        g.output("t", t);
        assert_eq!(merged(&g.g).len(), 2);
        // Pointwise kernels over different domains (x broadcast into the second).
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[4, 8]);
        let z = g.input("z", DType::F32, &[2, 4, 8]);
        let e = g.un(U::Exp, x);
        let y = g.bin(B::Add, z, x);
        g.output("e", e);
        g.output("y", y);
        assert_eq!(merged(&g.g).len(), 2);
        // Two matmuls reading the same x.
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[4, 8]);
        let w1 = g.param("w1", DType::F32, &[8, 8]);
        let w2 = g.param("w2", DType::F32, &[8, 8]);
        let m1 = g.matmul(x, w1);
        let m2 = g.matmul(x, w2);
        g.output("m1", m1);
        g.output("m2", m2);
        assert_eq!(merged(&g.g).len(), 2);
    }

    #[test]
    fn sharing_only_a_broadcast_read_does_not_merge() {
        let mut g = G::new();
        let x1 = g.input("x1", DType::F32, &[4, 8]);
        let x2 = g.input("x2", DType::F32, &[4, 8]);
        let bias = g.param("bias", DType::F32, &[8]);
        let y1 = g.bin(B::Add, x1, bias);
        let y2 = g.bin(B::Add, x2, bias);
        g.output("y1", y1);
        g.output("y2", y2);
        assert_eq!(merged(&g.g).len(), 2);
    }

    /// Two big intermediates read once each through a transpose (a kernel boundary) into a
    /// small row sum: apart, one intermediate is live at a time; merged, both are.
    fn arena_raising() -> G {
        let mut g = G::new();
        let x = g.input("x", DType::F32, &[64, 64]);
        let a = g.un(U::Exp, x);
        let ta = g.transpose(a);
        let c = g.reduce(R::Sum, ta, &[1], false);
        let b = g.un(U::Sin, x);
        let tb = g.transpose(b);
        let d = g.reduce(R::Sum, tb, &[1], false);
        g.output("c", c);
        g.output("d", d);
        g
    }

    #[test]
    fn a_merge_that_would_raise_the_arena_is_not_kept() {
        let g = arena_raising();
        let options = PlanOptions::default();
        let budget = crate::memory::eager_budget(&g.g, &options);
        let groups = fuse(&g.g, true);
        assert_eq!(groups.len(), 4);
        let apart = plan_ordered(&g.g, &groups, &options, budget, true).expect("plans");
        let all_merged = merged(&g.g);
        assert_eq!(all_merged.len(), 3);
        let together = plan_ordered(&g.g, &all_merged, &options, budget, true).expect("plans");
        // One 16 KiB intermediate live at a time, against both at once.
        assert_eq!(apart.arena_bytes, 16384 + 2 * 256);
        assert!(together.arena_bytes > apart.arena_bytes);
        let p = planned(&g.g);
        assert_eq!(p.kernels.len(), 4, "{}", print(&p));
        assert_eq!(p.arena_bytes, apart.arena_bytes);
    }
}
