//! The plan as text (`tc emit --plan`): the schedule with each kernel's loads, insts and
//! stores, then the buffers table with offsets and lifetimes, then the outputs.

use crate::schedule::{BufferKind, InstOp, KernelKind, Level, Plan};
use std::fmt::Write;

fn list<T: std::fmt::Display>(xs: &[T]) -> String {
    let v: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn inst_text(op: &InstOp, load: impl Fn(usize) -> String) -> String {
    match op {
        InstOp::Load(l) => load(*l),
        InstOp::Const(v) => format!("const {v}"),
        InstOp::Unary(u, a) => format!("{} %{a}", u.name()),
        InstOp::Binary(b, x, y) => format!("{} %{x}, %{y}", b.name(),),
        InstOp::Cast(a) => format!("cast %{a}"),
        InstOp::Reduce(r, a) => format!("reduce {} %{a}", r.name()),
        InstOp::Index { offset, strides } => {
            format!("index +{offset} strides {}", list(strides))
        }
        InstOp::Gather {
            load,
            index,
            stride,
            size,
            ..
        } => match load {
            Some(l) => format!("gather l{l} at %{index}*{stride} < {size}"),
            None => format!("checked index %{index}*{stride} < {size}"),
        },
        InstOp::Scan(a) => format!("scan sum %{a}"),
        InstOp::Where(c, a, b) => format!("where %{c}, %{a}, %{b}"),
    }
}

fn inst_type(inst: &crate::schedule::Inst) -> String {
    let level = match inst.level {
        Level::Element => "elem",
        Level::Row => "row",
    };
    format!("{} {level}", inst.dtype)
}

/// The loads and insts of an attention kernel's elementwise body, loads numbered from 1 as
/// `{tag}1…` and insts as `{prefix}%i`; load `special` (the scores, `p @ v`, the logits'
/// gradient: none of the body's loads) reads as `special_text`.
#[allow(clippy::too_many_arguments)]
fn write_elementwise(
    out: &mut String,
    bname: &dyn Fn(crate::schedule::BufferId) -> String,
    loads: &[crate::schedule::Load],
    body: &[crate::schedule::Inst],
    tag: &str,
    prefix: &str,
    special: usize,
    special_text: &str,
) {
    let names = Names {
        tag,
        prefix,
        first: 1,
        special: Some((special, special_text)),
    };
    write_body(out, bname, loads, body, &names);
}

/// A fused kernel's loads and insts (`load l0 = …`, `%0 = …`), or a product's prologue's
/// with `prefix` `p` (`load p0 = …`, `p%0 = …`).
fn write_kernel_body(
    out: &mut String,
    bname: &dyn Fn(crate::schedule::BufferId) -> String,
    loads: &[crate::schedule::Load],
    body: &[crate::schedule::Inst],
    prefix: &str,
) {
    let names = Names {
        tag: if prefix.is_empty() { "l" } else { prefix },
        prefix,
        first: 0,
        special: None,
    };
    write_body(out, bname, loads, body, &names);
}

/// How `write_body` names a body's loads (`load {tag}{first + i}`; `special`'s index reads
/// as its text) and insts (`{prefix}%i`).
struct Names<'a> {
    tag: &'a str,
    prefix: &'a str,
    first: usize,
    special: Option<(usize, &'a str)>,
}

/// One line a load, then one an inst.
fn write_body(
    out: &mut String,
    bname: &dyn Fn(crate::schedule::BufferId) -> String,
    loads: &[crate::schedule::Load],
    body: &[crate::schedule::Inst],
    names: &Names,
) {
    let Names {
        tag,
        prefix,
        first,
        special,
    } = names;
    for (i, l) in loads.iter().enumerate() {
        let _ = writeln!(
            out,
            "  load {tag}{} = {} {} +{} strides {}",
            i + first,
            bname(l.buffer),
            l.dtype,
            l.offset,
            list(&l.strides)
        );
    }
    for (i, inst) in body.iter().enumerate() {
        let rhs = inst_text(&inst.op, |l| match special {
            Some((s, text)) if *s == l => text.to_string(),
            _ => format!("load {tag}{l}"),
        });
        let _ = writeln!(out, "  {prefix}%{i:<3} = {rhs:<22} : {}", inst_type(inst));
    }
}

/// The operand lines of a product kernel (a matmul, an attention or its backward), one a
/// line: `{tag} = buffer dtype +offset strides [...]`.
fn write_operands(
    out: &mut String,
    bname: &dyn Fn(crate::schedule::BufferId) -> String,
    operands: &[(&str, &crate::schedule::MatOperand)],
) {
    for (tag, op) in operands {
        let _ = writeln!(
            out,
            "  {tag} = {} {} +{} strides {}",
            bname(op.buffer),
            op.dtype,
            op.offset,
            list(&op.strides)
        );
    }
}

pub fn print(plan: &Plan) -> String {
    let mut out = String::new();
    let o = &plan.options;
    let _ = writeln!(
        out,
        "plan: {}, {}, arena {} bytes (fuse: {}, reuse: {}, target: {})",
        crate::units::count(plan.kernels.len(), "kernel"),
        crate::units::count(plan.buffers.len(), "buffer"),
        plan.arena_bytes,
        o.fuse,
        o.reuse,
        match o.target {
            crate::schedule::Target::Cpu => "the CPU".to_string(),
            crate::schedule::Target::Cuda { matmul_workspace } =>
                format!("CUDA, matmul workspace {matmul_workspace}"),
        }
    );
    for note in &plan.notes {
        let _ = writeln!(out, "({note})");
    }
    if plan.unfused_fallback {
        let _ = writeln!(
            out,
            "(unfused fallback: every fused plan needed a larger arena than eager execution)"
        );
    }
    let bname = |id: crate::schedule::BufferId| format!("b{}:{}", id.0, plan.buffer(id).name);
    for k in &plan.kernels {
        let _ = writeln!(
            out,
            "\n{}  ops {}  lines {}",
            k.name,
            k.ops.join(", "),
            k.source_lines()
        );
        match &k.kind {
            KernelKind::IndexAdd(ia) => {
                let _ = writeln!(
                    out,
                    "  index add pre {} index {} rows {} post {} -> {} f32 (each row summed in position order)",
                    list(&ia.pre),
                    list(&ia.index_shape),
                    ia.rows,
                    list(&ia.post),
                    bname(ia.out),
                );
                for (tag, l) in [("index", &ia.index), ("grad", &ia.grad)] {
                    let _ = writeln!(
                        out,
                        "  {tag} = {} {} +{} strides {}",
                        bname(l.buffer),
                        l.dtype,
                        l.offset,
                        list(&l.strides)
                    );
                }
            }
            KernelKind::MatMul(m) => {
                let _ = writeln!(
                    out,
                    "  matmul batch {} m {} n {} k {} -> {} {}",
                    list(&m.batch),
                    m.m,
                    m.n,
                    m.k,
                    bname(m.out),
                    m.out_dtype
                );
                write_operands(&mut out, &bname, &[("a", &m.a), ("b", &m.b)]);
                if let Some(p) = &m.prologue {
                    let _ = writeln!(
                        out,
                        "  prologue over {} (a computed as it is packed, never stored)",
                        list(&p.domain)
                    );
                    write_kernel_body(&mut out, &bname, &p.loads, &p.body, "p");
                    for st in &p.stores {
                        let _ = writeln!(out, "  store p%{} -> {}", st.inst, bname(st.buffer));
                    }
                }
                if let Some(x) = m.accumulate {
                    let _ = writeln!(out, "  accumulate into {} (beta = 1)", bname(x));
                }
                if let Some(w) = m.workspace {
                    let whole = if m.packs_whole_b {
                        " (all of B packed)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "  workspace {}{whole}", bname(w));
                }
            }
            KernelKind::Fused(f) => {
                let _ = writeln!(
                    out,
                    "  domain {} reduce {}",
                    list(&f.domain),
                    list(&f.reduce_axes)
                );
                write_kernel_body(&mut out, &bname, &f.loads, &f.body, "");
                for s in &f.stores {
                    let b = plan.buffer(s.buffer);
                    let inplace = b
                        .in_place_of
                        .map(|p| format!(" (in place of {})", bname(p)))
                        .unwrap_or_default();
                    let region = s
                        .region
                        .as_ref()
                        .map(|r| format!(" at +{} strides {:?} (a part)", r.offset, r.strides))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "  store %{} -> {}{region}{inplace}",
                        s.inst,
                        bname(s.buffer)
                    );
                }
                if let Some(w) = f.workspace {
                    let _ = writeln!(out, "  workspace {} (column partials)", bname(w));
                }
            }
            KernelKind::Attention(a) => {
                let _ = writeln!(
                    out,
                    "  attention batch {} m {} n {} d {} dv {} -> {} {} (scores {} never stored)",
                    list(&a.batch),
                    a.m,
                    a.n,
                    a.d,
                    a.dv,
                    bname(a.out),
                    a.out_dtype,
                    a.score_dtype
                );
                write_operands(&mut out, &bname, &[("q", &a.q), ("k", &a.k), ("v", &a.v)]);
                let special = crate::schedule::SCORE;
                write_elementwise(
                    &mut out,
                    &bname,
                    &a.loads,
                    &a.body,
                    "l",
                    "",
                    special,
                    "score q·k",
                );
                let _ = writeln!(
                    out,
                    "  softmax over n of %{}, online (max, sum) by tiles of keys; @ v",
                    a.logits
                );
                if let Some(e) = &a.epilogue {
                    let _ = writeln!(out, "  epilogue over [batch…, m, dv]:");
                    let special = crate::schedule::RESULT;
                    write_elementwise(
                        &mut out, &bname, &e.loads, &e.body, "e", "", special, "p @ v",
                    );
                }
                let default = crate::ir::types::contiguous_strides(
                    &a.batch
                        .iter()
                        .copied()
                        .chain([a.m, a.dv])
                        .collect::<Vec<_>>(),
                );
                let store = match &a.epilogue {
                    Some(e) => format!("%{}", e.result),
                    None => "p @ v".to_string(),
                };
                if a.out_strides == default {
                    if a.epilogue.is_some() {
                        let _ = writeln!(out, "  store {store} -> {}", bname(a.out));
                    }
                } else {
                    let _ = writeln!(
                        out,
                        "  store {store} -> {} strides {} (the output's axes, permuted)",
                        bname(a.out),
                        list(&a.out_strides)
                    );
                }
            }
            KernelKind::AttentionBackward(a) => {
                let grad = |o: &Option<crate::schedule::GradOut>| match o {
                    Some(o) => format!("{} strides {}", bname(o.buffer), list(&o.strides)),
                    None => "-".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  attention backward batch {} m {} n {} d {} dv {} (scores {} never stored; workspace {})",
                    list(&a.batch),
                    a.m,
                    a.n,
                    a.d,
                    a.dv,
                    a.score_dtype,
                    bname(a.workspace)
                );
                let _ = writeln!(out, "  -> dq {}", grad(&a.dq));
                let _ = writeln!(out, "  -> dk {}", grad(&a.dk));
                let _ = writeln!(out, "  -> dv {}", grad(&a.dv_out));
                let operands = [("q", &a.q), ("k", &a.k), ("v", &a.v), ("dO", &a.d_out)];
                write_operands(&mut out, &bname, &operands);
                for (tag, loads, body, first) in [
                    ("l", &a.loads, &a.body, "score q·k"),
                    ("g", &a.grad_loads, &a.grad_body, "grad of logits"),
                ] {
                    write_elementwise(&mut out, &bname, loads, body, tag, tag, 0, first);
                }
                let _ = writeln!(
                    out,
                    "  p = softmax over n of l%{} (recomputed by tiles); gx = p∘(dO·vᵀ − Σ); gs = g%{}",
                    a.logits, a.grad_scores
                );
            }
        }
    }
    let _ = writeln!(out, "\nbuffers");
    for (i, b) in plan.buffers.iter().enumerate() {
        let kind = match b.kind {
            BufferKind::Input { index } => format!("input {index}"),
            BufferKind::Param { index } => format!("param {index}"),
            BufferKind::Arena => "arena".to_string(),
            BufferKind::Workspace => "workspace".to_string(),
            BufferKind::Tile => "tile".to_string(),
        };
        let off = match b.kind {
            BufferKind::Arena | BufferKind::Workspace => format!("@{}", b.offset),
            _ => "-".to_string(),
        };
        let inplace = b
            .in_place_of
            .map(|p| format!("  in place of b{}", p.0))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  b{i:<3} {:<14} {:<9} {} {:<20} {:>12} bytes {:>12} steps {}..{}{inplace}",
            b.name,
            kind,
            b.dtype,
            list(&b.shape),
            b.bytes,
            off,
            b.first_step,
            b.last_step
        );
    }
    let _ = writeln!(out, "\noutputs");
    for o in &plan.outputs {
        let _ = writeln!(
            out,
            "  {} = {} {} {} +{} strides {}",
            o.name,
            bname(o.buffer),
            o.dtype,
            list(&o.shape),
            o.offset,
            list(&o.strides)
        );
    }
    out
}
