//! The memory report as a picture (`--memory-svg`): steps on x, named by their kernel and
//! source lines; arena offsets on y with round tick labels; one shape per storage object (an
//! in-place chain is one shape, its buffers named along it), every buffer at least a few
//! pixels tall however small, each its own colour; the inputs and params, and the products
//! never stored whole (`tile`, CPU plans: no storage, drawn over their steps), in a lane of
//! their own below; the step of the peak marked. A standalone SVG 1.1. `layout` computes every
//! shape and label, so the tests can check the picture's geometry.

use super::text::human;
use super::MemoryReport;
use std::collections::HashMap;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub const W: f64 = 1100.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 56.0;
const PLOT_H: f64 = 380.0;
/// Room under the plot for the step labels (kernel, ops, lines), drawn slanted.
const AXIS_H: f64 = 130.0;
const LANE_GAP: f64 = 24.0;
/// The smallest height a shape is drawn at, so a 4-byte buffer is seen.
pub const MIN_H: f64 = 4.0;
const PLOT_W: f64 = W - LEFT - RIGHT;

/// A distinct colour for the `i`th shape: hues a golden angle apart, three lightnesses.
pub fn colour(i: usize) -> String {
    let hue = (i as f64 * 137.507_764) % 360.0;
    let light = [0.46, 0.62, 0.36][(i / 7) % 3];
    // HSL (saturation 0.62) to RGB, written as hex for every SVG renderer.
    let c = (1.0 - (2.0 * light - 1.0f64).abs()) * 0.62;
    let h = hue / 60.0;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = light - c / 2.0;
    let byte = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    format!("#{:02x}{:02x}{:02x}", byte(r), byte(g), byte(b))
}

/// A byte count for a tick, in the largest unit it reaches, with at most two decimals and
/// no trailing zeros (`64 MiB`, `1.5 MiB`, `4 B`).
pub fn tick_label(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    if bytes == 0 {
        return "0".into();
    }
    let (name, size) = UNITS
        .into_iter()
        .find(|&(_, size)| bytes >= size)
        .unwrap_or(("B", 1));
    let text = format!("{:.2}", bytes as f64 / size as f64);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {name}")
}

/// Offset ticks at a power-of-two step (so each is a whole number of some unit), the fewest
/// such that at most 8 steps cover `0..=top`; the last tick is at or above `top`.
pub fn ticks(top: u64) -> Vec<u64> {
    if top == 0 {
        return vec![0];
    }
    let mut step = 1u64;
    while top / step > 8 {
        step = step.saturating_mul(2);
    }
    (0..=top.div_ceil(step)).map(|i| i * step).collect()
}

/// One drawn shape: a storage object (one buffer, or an in-place chain) or a leaf.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub fill: String,
    /// The buffers it stands for, in chain order.
    pub names: Vec<String>,
    /// `true` for an input or param (drawn in their lane).
    pub leaf: bool,
}

/// Everything the picture draws, positioned.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub height: f64,
    pub shapes: Vec<Shape>,
    /// (x, text) of each step label.
    pub steps: Vec<(f64, String)>,
    /// (y, text) of each offset tick.
    pub ticks: Vec<(f64, String)>,
    pub lane_top: f64,
    pub lane_h: f64,
}

pub fn layout(report: &MemoryReport) -> Layout {
    let steps = report.steps.max(1);
    let cw = PLOT_W / steps as f64;
    let tick_values = ticks(report.arena_bytes);
    let top_bytes = (*tick_values.last().unwrap_or(&0))
        .max(report.arena_bytes)
        .max(1) as f64;
    let y_of = |off: u64| TOP + off as f64 / top_bytes * PLOT_H;
    // Storage objects: each arena buffer joins the chain of the buffer it took over.
    let arena: Vec<&super::BufferEntry> = report
        .buffers
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "arena" | "workspace"))
        .collect();
    let index: HashMap<&str, usize> = arena
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    let root = |mut i: usize| {
        let mut hops = 0;
        while let Some(p) = arena[i].in_place_of.as_deref().and_then(|p| index.get(p)) {
            i = *p;
            hops += 1;
            if hops > arena.len() {
                break;
            }
        }
        i
    };
    let mut chains: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut chain_of: HashMap<usize, usize> = HashMap::new();
    for i in 0..arena.len() {
        let r = root(i);
        let c = *chain_of.entry(r).or_insert_with(|| {
            chains.push((r, Vec::new()));
            chains.len() - 1
        });
        chains[c].1.push(i);
    }
    let mut shapes = Vec::new();
    for (ci, (r, members)) in chains.iter().enumerate() {
        let rb = arena[*r];
        let first = members
            .iter()
            .map(|&m| arena[m].first_step)
            .min()
            .unwrap_or(0);
        let last = members
            .iter()
            .map(|&m| arena[m].last_step)
            .max()
            .unwrap_or(0)
            .min(steps - 1);
        let bytes = members.iter().map(|&m| arena[m].bytes).max().unwrap_or(0);
        let y = y_of(rb.offset);
        let h = (bytes as f64 / top_bytes * PLOT_H).max(MIN_H);
        shapes.push(Shape {
            x: LEFT + first as f64 * cw,
            y: y.min(TOP + PLOT_H - MIN_H),
            w: ((last + 1).saturating_sub(first).max(1) as f64 * cw).max(2.0),
            h,
            fill: colour(ci),
            names: members.iter().map(|&m| arena[m].name.clone()).collect(),
            leaf: false,
        });
    }
    // The lane of inputs and params (and products in tiles, outside the arena too): each its
    // share of the lane's height (at least MIN_H).
    let leaves: Vec<&super::BufferEntry> = report
        .buffers
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "input" | "param" | "tile"))
        .collect();
    let lane_top = TOP + PLOT_H + AXIS_H + LANE_GAP;
    let lane_h = (leaves.len() as f64 * (MIN_H + 1.0)).max(80.0);
    let total: f64 = leaves.iter().map(|b| b.bytes as f64).sum::<f64>().max(1.0);
    let spare = lane_h - leaves.len() as f64 * MIN_H;
    let mut y = lane_top;
    for (i, b) in leaves.iter().enumerate() {
        let h = MIN_H + spare * b.bytes as f64 / total;
        let last = b.last_step.min(steps - 1);
        let first = if b.kind == "tile" {
            b.first_step.min(last)
        } else {
            0
        };
        shapes.push(Shape {
            x: LEFT + first as f64 * cw,
            y,
            w: ((last + 1 - first) as f64 * cw).max(2.0),
            h,
            fill: colour(chains.len() + i),
            names: vec![b.name.clone()],
            leaf: true,
        });
        y += h;
    }
    let steps_labels = (0..steps)
        .map(|s| {
            let x = LEFT + (s as f64 + 0.5) * cw;
            let text = match report.kernels.get(s) {
                Some(k) => {
                    let lines: Vec<String> = k.lines.iter().map(|l| l.to_string()).collect();
                    let ops = k.ops.join(", ");
                    let ops = if ops.chars().count() > 18 {
                        format!("{}…", ops.chars().take(17).collect::<String>())
                    } else {
                        ops
                    };
                    format!("{} {ops} · line {}", k.name, lines.join(","))
                }
                None => s.to_string(),
            };
            (x, text)
        })
        .collect();
    let ticks = tick_values
        .iter()
        .map(|&t| (y_of(t), tick_label(t)))
        .collect();
    Layout {
        height: lane_top + lane_h + 30.0,
        shapes,
        steps: steps_labels,
        ticks,
        lane_top,
        lane_h,
    }
}

pub fn render_svg(report: &MemoryReport) -> String {
    let l = layout(report);
    let h = l.height;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{h}" fill="white"/>"#
    );
    let p = &report.peaks;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14">arena {} ({} bytes): planned {}, lower bound {}, best order {}{}, eager {}</text>"#,
        human(report.arena_bytes),
        report.arena_bytes,
        human(p.planned.without_inputs),
        human(p.lower_bound.without_inputs),
        human(p.best_order_bound.without_inputs),
        if p.best_order_bound.exact {
            " (exact)"
        } else {
            " (bound)"
        },
        human(p.eager.without_inputs)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="40" fill="#555">arena offset (y) over the steps of the schedule (x); inputs and params, outside the arena, below</text>"##
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#888"/>"##
    );
    for (y, text) in &l.ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            LEFT - 6.0,
            y + 4.0,
            esc(text)
        );
    }
    for (x, text) in &l.steps {
        let y = TOP + PLOT_H + 12.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{y:.1}" text-anchor="end" transform="rotate(-40 {x:.1} {y:.1})">{}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 4.0,
            esc(text)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">inputs, params, tiles</text>"##,
        LEFT - 6.0,
        l.lane_top + 12.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{:.1}" width="{PLOT_W}" height="{:.1}" fill="none" stroke="#bbb"/>"##,
        l.lane_top, l.lane_h
    );
    for sh in &l.shapes {
        let names = sh.names.join(" → ");
        let title = match report.buffers.iter().find(|b| b.name == sh.names[0]) {
            Some(b) => format!(
                "{names}: {} {} bytes at offset {}, {}",
                b.dtype.name(),
                b.bytes,
                b.offset,
                b.label
            ),
            None => names.clone(),
        };
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.8" stroke="#222" stroke-width="0.6"><title>{}</title></rect>"##,
            sh.x,
            sh.y,
            sh.w,
            sh.h,
            sh.fill,
            esc(&title)
        );
        if sh.h >= 12.0 && sh.w >= 30.0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                sh.x + 4.0,
                sh.y + 12.0,
                esc(&names)
            );
        } else if !sh.leaf {
            // Too thin to hold its name: the name beside it, small.
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#333">{}</text>"##,
                sh.x + 3.0,
                (sh.y - 1.0).max(TOP + 8.0),
                esc(&names)
            );
        }
    }
    let (peak_step, peak) = report
        .live
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (**l, usize::MAX - i))
        .map_or((0, 0), |(i, l)| (i, *l));
    let px = l.steps.get(peak_step).map_or(LEFT, |s| s.0);
    let _ = writeln!(
        s,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#d00" stroke-width="2" stroke-dasharray="6 4"/>"##,
        TOP + PLOT_H
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#d00">peak {} at step {peak_step}</text>"##,
        px + 4.0,
        TOP - 4.0,
        esc(&human(peak))
    );
    let _ = writeln!(s, "</svg>");
    s
}
