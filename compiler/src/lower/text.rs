//! The kernel IR as text (what the tests snapshot): per kernel its merged axes, loads,
//! values with their level and pass, stores, and what each pass computes.

use super::{KernelIr, Level, Lowered, SplitPart, ValueOp};
use std::fmt::{Display, Write};

fn list<T: Display>(xs: &[T]) -> String {
    let v: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn level(l: Level) -> &'static str {
    match l {
        Level::Element => "elem",
        Level::Row => "row",
    }
}

/// Every lowered kernel, in schedule order (a matrix product is named, it has no IR).
pub fn print(lowered: &Lowered) -> String {
    let mut out = String::new();
    for (i, k) in lowered.kernels.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match k {
            Some(k) => out.push_str(&print_kernel(k)),
            None => {
                let _ = writeln!(out, "kernel {i}: matrix product (no kernel IR)");
            }
        }
    }
    out
}

/// One kernel.
pub fn print_kernel(k: &KernelIr) -> String {
    let mut out = String::new();
    let kind = if k.is_pointwise() {
        "pointwise".to_string()
    } else {
        format!("{} rows of {}", k.axes.rows(), k.axes.row_len())
    };
    let _ = writeln!(
        out,
        "{}: {kind}; domain {} reduce {} -> merged {} reduce {}",
        k.name,
        list(&k.domain),
        list(&k.reduce_axes),
        list(&k.axes.sizes),
        list(&k.axes.reduce_axes())
    );
    match &k.split {
        Some(SplitPart::Partials { fold, partials }) => {
            let bs: Vec<String> = partials.iter().map(|b| format!("b{}", b.0)).collect();
            let _ = writeln!(
                out,
                "  split reduction: partials into {}, folded by {fold}",
                list(&bs)
            );
        }
        Some(SplitPart::Fold { of }) => {
            let _ = writeln!(out, "  split reduction: folds the partials of {of}");
        }
        None => {}
    }
    for (i, l) in k.loads.iter().enumerate() {
        let _ = writeln!(
            out,
            "  l{i} = b{} {} +{} strides {}",
            l.buffer.0,
            l.dtype,
            l.offset,
            list(&l.strides)
        );
    }
    for (i, v) in k.values.iter().enumerate() {
        let rhs = match &v.op {
            ValueOp::Load(l) => format!("load {l}"),
            ValueOp::Const(c) => format!("const {c}"),
            ValueOp::Unary(u, a) => format!("{} {a}", u.name()),
            ValueOp::Binary(b, x, y) => format!("{} {x}, {y}", b.name()),
            ValueOp::Cast(a) => format!("cast {a}"),
            ValueOp::Reduce(r, a) => format!("reduce {} {a}", r.name()),
            ValueOp::Where(c, a, b) => format!("where {c}, {a}, {b}"),
        };
        let _ = writeln!(
            out,
            "  v{i:<3} = {rhs:<22} : {} {} {}",
            v.dtype,
            level(v.level),
            v.pass
        );
    }
    for (i, s) in k.stores.iter().enumerate() {
        let _ = writeln!(
            out,
            "  s{i} = store {} -> b{} {} {} order, strides {}, in {}",
            s.value,
            s.buffer.0,
            s.dtype,
            level(s.order),
            list(&s.strides),
            s.pass
        );
    }
    for (q, p) in k.passes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  pass p{q}: row {} elements {} reduces {} stores {}",
            list(&p.row),
            list(&p.elements),
            list(&p.reduces),
            list(&p.stores)
        );
    }
    out
}
