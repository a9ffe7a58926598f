//! A readable text form of a `Graph`, one line per node, for snapshots and `tc emit`:
//! `%7 = add %5, %6 : f32[B=8, H=16]  # line 13 (h)`.

use super::graph::{Graph, Op, ViewOp};
use std::fmt::Write as _;

/// The graph as text: dims, then one line per node, then the outputs.
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    if !graph.dims.is_empty() {
        let dims: Vec<String> = graph.dims.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let _ = writeln!(out, "dims {}", dims.join(", "));
    }
    for id in graph.ids() {
        let node = graph.node(id);
        let origin = graph.origin(id);
        let _ = write!(
            out,
            "{id} = {} : {}  # line {}",
            op_text(&node.op),
            node.ty,
            origin.line
        );
        if let Some(name) = &node.name {
            let _ = write!(out, " ({name})");
        }
        out.push('\n');
    }
    let outputs: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| {
            if graph.node(o.node).name.as_deref() == Some(o.name.as_str()) {
                format!("{}", o.node)
            } else {
                format!("{} as {}", o.node, o.name)
            }
        })
        .collect();
    let _ = writeln!(out, "output {}", outputs.join(", "));
    out
}

/// One op with its operands and attributes: `sum %3 axes=[1] keepdim`.
pub fn op_text(op: &Op) -> String {
    let args: Vec<String> = op.operands().iter().map(|o| o.to_string()).collect();
    let args = args.join(", ");
    match op {
        Op::Input { index } | Op::Param { index } => format!("{} {index}", op.name()),
        Op::Scalar(v) => format!("scalar {v:?}"),
        Op::Reduce { axes, keepdim, .. } => {
            let axes: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
            let keep = if *keepdim { " keepdim" } else { "" };
            format!("{} {args} axes=[{}]{keep}", op.name(), axes.join(", "))
        }
        Op::Softmax { axis, .. } => format!("{} {args} axis={axis}", op.name()),
        Op::LayerNorm { axis, eps, .. } | Op::RmsNorm { axis, eps, .. } => {
            format!("{} {args} axis={axis} eps={eps:?}", op.name())
        }
        Op::Cast { implicit: true, .. } | Op::View(ViewOp::Expand { implicit: true }, _) => {
            format!("{} {args} implicit", op.name())
        }
        Op::View(ViewOp::Permute(perm), _) => {
            let perm: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
            format!("permute {args} [{}]", perm.join(", "))
        }
        Op::View(ViewOp::Slice(axes), _) => {
            let axes: Vec<String> = axes
                .iter()
                .map(|a| match (a.keep, a.step) {
                    (false, _) => a.start.to_string(),
                    (true, 1) => format!("{}:", a.start),
                    (true, s) => format!("{}::{s}", a.start),
                })
                .collect();
            format!("slice {args} [{}]", axes.join(", "))
        }
        Op::Concat { axis, .. } => format!("concat {args} axis={axis}"),
        Op::Take { axis, .. } | Op::Gather { axis, .. } | Op::Cumsum { axis, .. } => {
            format!("{} {args} axis={axis}", op.name())
        }
        Op::OneHot { classes, .. } => format!("one_hot {args} classes={classes}"),
        Op::IndexAdd { axis, size, .. } => format!("index_add {args} axis={axis} size={size}"),
        Op::Clamp { min, max, .. } => {
            let b = |k: &str, v: &Option<f64>| v.map(|v| format!(" {k}={v:?}")).unwrap_or_default();
            format!("clamp {args}{}{}", b("min", min), b("max", max))
        }
        Op::LeakyRelu { slope, .. } => format!("leaky_relu {args} slope={slope:?}"),
        Op::Var {
            axes,
            keepdim,
            correction,
            ..
        } => {
            let axes: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
            let keep = if *keepdim { " keepdim" } else { "" };
            format!(
                "{} {args} axes=[{}]{keep} correction={correction:?}",
                op.name(),
                axes.join(", ")
            )
        }
        Op::LogSumExp { axes, keepdim, .. } => {
            let axes: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
            let keep = if *keepdim { " keepdim" } else { "" };
            format!("logsumexp {args} axes=[{}]{keep}", axes.join(", "))
        }
        _ => format!("{} {args}", op.name()),
    }
}
