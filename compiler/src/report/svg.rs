//! The memory report as a picture (`--memory-svg`): steps on x, arena offsets on y, one
//! labelled rectangle per arena buffer, the step of the peak marked. A standalone SVG 1.1.

use super::text::human;
use super::MemoryReport;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 960.0;
const H: f64 = 540.0;
const LEFT: f64 = 110.0;
const TOP: f64 = 50.0;
const PLOT_W: f64 = W - LEFT - 30.0;
const PLOT_H: f64 = H - TOP - 60.0;
const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
];

pub fn render_svg(report: &MemoryReport) -> String {
    let mut s = String::new();
    let steps = report.steps.max(1);
    let arena = report.arena_bytes.max(1) as f64;
    let cw = PLOT_W / steps as f64;
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14">arena {} ({} bytes): planned {}, lower bound {}, eager {}</text>"#,
        human(report.arena_bytes),
        report.arena_bytes,
        human(report.peaks.planned.without_inputs),
        human(report.peaks.lower_bound.without_inputs),
        human(report.peaks.eager.without_inputs)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#888"/>"##
    );
    for step in 0..steps {
        let x = LEFT + (step as f64 + 0.5) * cw;
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{step}</text>"#,
            TOP + PLOT_H + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#,
        LEFT + PLOT_W / 2.0,
        TOP + PLOT_H + 34.0
    );
    for i in 0..=4 {
        let off = report.arena_bytes as f64 * i as f64 / 4.0;
        let y = TOP + PLOT_H * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            esc(&human(off as u64))
        );
    }
    for (i, b) in report
        .buffers
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "arena" | "workspace"))
        .enumerate()
    {
        let x = LEFT + b.first_step as f64 * cw;
        let w = ((b.last_step + 1 - b.first_step.min(b.last_step + 1)) as f64 * cw).max(1.0);
        let y = TOP + b.offset as f64 / arena * PLOT_H;
        let h = (b.bytes as f64 / arena * PLOT_H).max(1.0);
        let title = format!(
            "{} {} {} bytes at offset {}, steps {}..{}",
            b.name,
            b.dtype.name(),
            b.bytes,
            b.offset,
            b.first_step,
            b.last_step
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{}" fill-opacity="0.75" stroke="#222"><title>{}</title></rect>"##,
            COLORS[i % COLORS.len()],
            esc(&title)
        );
        if h >= 12.0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 4.0,
                y + 13.0,
                esc(&b.name)
            );
        }
    }
    let (peak_step, peak) = report
        .live
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (**l, usize::MAX - i))
        .map_or((0, 0), |(i, l)| (i, *l));
    let px = LEFT + (peak_step as f64 + 0.5) * cw;
    let _ = writeln!(
        s,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#d00" stroke-width="2" stroke-dasharray="6 4"/>"##,
        TOP + PLOT_H
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#d00">peak {} at step {peak_step}</text>"##,
        px + 4.0,
        TOP - 6.0,
        esc(&human(peak))
    );
    let _ = writeln!(s, "</svg>");
    s
}
