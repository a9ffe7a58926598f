//! The memory report as text (`tc run --report-memory`): kernels, buffers, the five peaks
//! in human units and bytes, what is recomputed in the backward pass and its cost, notes, and an ASCII chart of the arena over the steps in the
//! manner of TensorFlow Lite Micro's memory-plan printout.

use super::{MemoryReport, Peak};
use std::fmt::Write;

pub use crate::units::{count, human};

fn shape(s: &[u64]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

fn cell(p: Option<u64>) -> String {
    match p {
        Some(b) => format!("{} ({b} bytes)", human(b)),
        None => "n/a (not run on CUDA)".to_string(),
    }
}

/// Symbols for buffers in the chart: 0-9, a-z, A-Z, then `*`.
fn symbol(i: usize) -> char {
    const S: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    S.get(i).map_or('*', |&c| c as char)
}

/// Width of the arena in the chart, in characters.
const CHART_WIDTH: u64 = 64;

/// `n` and `noun`, plural unless `n` is 1: "1 kernel", "3 kernels".
pub fn render_text(report: &MemoryReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memory report: {}, arena {} ({} bytes)",
        count(report.kernels.len(), "kernel"),
        human(report.arena_bytes),
        report.arena_bytes
    );
    let _ = writeln!(out, "\nkernels");
    for k in &report.kernels {
        let lines: Vec<String> = k.lines.iter().map(|l| l.to_string()).collect();
        let _ = writeln!(
            out,
            "  {:<5} {:<40} lines {}",
            k.name,
            k.ops.join(", "),
            lines.join(", ")
        );
    }
    let _ = writeln!(out, "\nbuffers");
    // The name column fits the longest name (`broadcast(rowscale)`), 14 at the least.
    let w = report
        .buffers
        .iter()
        .map(|b| b.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(14);
    let n = report
        .buffers
        .iter()
        .map(|b| note_of(b).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "  {:<w$} {:<9} {:<5} {:<22} {:>22} {:>7} {:>12}  {:<n$}  label",
        "name", "kind", "dtype", "shape", "bytes", "steps", "offset", "note"
    );
    for b in &report.buffers {
        // Inputs and params (and views of them) live outside the arena, and a product in
        // tiles nowhere.
        let outside = |kind: &str| kind == "input" || kind == "param" || kind == "tile";
        let root_outside = b.view_of.as_ref().is_some_and(|v| {
            report
                .buffers
                .iter()
                .any(|r| &r.name == v && outside(&r.kind))
        });
        let offset = if outside(&b.kind) || root_outside {
            "-".to_string()
        } else {
            b.offset.to_string()
        };
        let note = note_of(b);
        let _ = writeln!(
            out,
            "  {:<w$} {:<9} {:<5} {:<22} {:>22} {:>7} {:>12}  {:<n$}  {}",
            b.name,
            b.kind,
            b.dtype.name(),
            shape(&b.shape),
            format!("{} ({})", human(b.bytes), b.bytes),
            format!("{}..{}", b.first_step, b.last_step),
            offset,
            note,
            b.label
        );
    }
    let p = &report.peaks;
    let _ = writeln!(
        out,
        "\npeaks                {:<36} with inputs and params",
        "without inputs and params"
    );
    let rows: [(&str, Option<Peak>); 5] = [
        ("naive", Some(p.naive)),
        ("eager", Some(p.eager)),
        ("planned", Some(p.planned)),
        ("lower bound", Some(p.lower_bound)),
        ("measured", p.measured),
    ];
    for (name, peak) in rows {
        let _ = writeln!(
            out,
            "  {:<18} {:<36} {}",
            name,
            cell(peak.map(|x| x.without_inputs)),
            cell(peak.map(|x| x.with_inputs))
        );
    }
    let b = &p.best_order_bound;
    let _ = writeln!(
        out,
        "  {:<18} {:<36} {}  ({})",
        "best order bound",
        cell(Some(b.without_inputs)),
        cell(Some(b.with_inputs)),
        if b.exact {
            "exact: the least peak of any order of these kernels"
        } else {
            "a bound: no order of these kernels peaks lower"
        }
    );
    if let Some(r) = report.recompute.as_ref().filter(|r| !r.values.is_empty()) {
        let _ = writeln!(out, "\nrecomputed in the backward pass");
        let _ = writeln!(out, "  values  {}", r.values.join(", "));
        let share = if r.forward_flops > 0 {
            format!(
                " ({:.2}% of the forward pass's {})",
                r.flops as f64 * 100.0 / r.forward_flops as f64,
                r.forward_flops
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  cost    {} more, {} ({} bytes) read and written, {} FLOPs{share}",
            count(r.kernels as usize, "kernel"),
            human(r.bytes),
            r.bytes,
            r.flops
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out, "\nnotes");
        for n in &report.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out.push_str(&chart(report));
    out
}

/// A buffer's note: `view of X` or `in place of X`.
fn note_of(b: &super::BufferEntry) -> String {
    match (&b.view_of, &b.in_place_of, &b.part_of) {
        (Some(v), _, _) => format!("view of {v}"),
        (_, Some(p), _) => format!("in place of {p}"),
        (_, _, Some(c)) => match &b.copied_from {
            Some(src) => format!("part of {c} (copied from {src})"),
            None => format!("part of {c} (written in place by its kernel)"),
        },
        _ => String::new(),
    }
}

/// One row per step, the arena drawn `CHART_WIDTH` characters wide; each live arena buffer
/// fills its offset range with its symbol, `.` is free.
fn chart(report: &MemoryReport) -> String {
    let mut out = String::new();
    let arena: Vec<(usize, &super::BufferEntry)> = report
        .buffers
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "arena" | "workspace"))
        .enumerate()
        .collect();
    if arena.is_empty() || report.arena_bytes == 0 {
        return out;
    }
    let total = report.arena_bytes;
    let _ = writeln!(
        out,
        "\narena over steps ({} per character)",
        human(total.div_ceil(CHART_WIDTH))
    );
    for (i, b) in &arena {
        let _ = writeln!(
            out,
            "  {} = {} ({}, offset {})",
            symbol(*i),
            b.name,
            human(b.bytes),
            b.offset
        );
    }
    for step in 0..report.steps.max(1) {
        let mut row = vec!['.'; CHART_WIDTH as usize];
        for (i, b) in &arena {
            if b.first_step <= step && step <= b.last_step {
                let lo = (b.offset as u128 * CHART_WIDTH as u128 / total as u128) as usize;
                let hi = ((b.offset as u128 + b.bytes as u128) * CHART_WIDTH as u128)
                    .div_ceil(total as u128) as usize;
                for c in row.iter_mut().take(hi.min(CHART_WIDTH as usize)).skip(lo) {
                    *c = symbol(*i);
                }
            }
        }
        let row: String = row.into_iter().collect();
        let live = report.live.get(step).copied().unwrap_or(0);
        let _ = writeln!(out, "  step {step:>3} |{row}| {}", human(live));
    }
    out
}
