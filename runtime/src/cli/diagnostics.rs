//! Renders compiler diagnostics for the terminal with ariadne: code, message, labelled
//! spans with carets, notes and help. Spans are byte offsets (`IndexType::Byte`), so carets
//! land right on non-ASCII source. At most `MAX_SHOWN` diagnostics are rendered, then a
//! count of the rest; a line longer than `MAX_LINE` bytes is clipped around its labels.

use ariadne::{Color, Config, IndexType, Label, Report, ReportKind, Source};
use std::ops::Range;
use tc_compiler::diag::Severity;
use tc_compiler::Diagnostic;

/// At most this many diagnostics are rendered; a count of the rest follows.
pub const MAX_SHOWN: usize = 50;

/// Source lines longer than this many bytes are shown clipped around their labels.
pub const MAX_LINE: usize = 160;

/// Bytes shown on each side of a label on a clipped line.
const CONTEXT: usize = 60;

/// The first `MAX_SHOWN` of `diags` rendered against `source` (named `path`), one report
/// after another, then a line counting those not shown. Linear in the size of `source`
/// and the number of diagnostics.
pub fn render(path: &str, source: &str, diags: &[Diagnostic], color: bool) -> String {
    let mut out = Vec::new();
    let whole = Source::from(source);
    let lines = Lines::new(source);
    for d in diags.iter().take(MAX_SHOWN) {
        if d.labels.is_empty() {
            // Not about a place in the source (a `--dim` override, say): no source box.
            out.extend(plain(d).into_bytes());
            continue;
        }
        let written = match Excerpt::of(source, &lines, d) {
            None => report(path, d, |s| clamp(source, s), color).write((path, &whole), &mut out),
            Some(ex) => {
                let mut one = Vec::new();
                let source_of_excerpt = Source::from(ex.text.as_str());
                let r = report(path, d, |s| ex.map(&s), color)
                    .write((path, &source_of_excerpt), &mut one);
                // The header counts columns in the clipped line: put back the true one.
                let text = String::from_utf8_lossy(&one).replace(
                    &format!(" {path}:{}:{} ", ex.at_line + 1, ex.at_col_clipped),
                    &format!(" {path}:{}:{} ", ex.at_line + 1, ex.at_col),
                );
                out.extend(text.into_bytes());
                r
            }
        };
        if let Err(e) = written {
            // Writing to a Vec cannot fail in practice; fall back to the plain message.
            out.extend(format!("error[{}]: {} ({e})\n", d.code(), d.message).into_bytes());
        }
    }
    if diags.len() > MAX_SHOWN {
        let rest = diags.len() - MAX_SHOWN;
        let s = if rest == 1 { "" } else { "s" };
        out.extend(
            format!("… and {rest} more error{s} (only the first {MAX_SHOWN} are shown)\n")
                .into_bytes(),
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where each line of a source starts.
struct Lines {
    starts: Vec<usize>,
    len: usize,
}

impl Lines {
    fn new(source: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Lines {
            starts,
            len: source.len(),
        }
    }

    /// The index of the line holding byte `pos`.
    fn of(&self, pos: usize) -> usize {
        self.starts.partition_point(|&s| s <= pos).saturating_sub(1)
    }

    /// The bytes of line `i`, without its line break.
    fn range(&self, source: &str, i: usize) -> Range<usize> {
        let start = self.starts[i];
        let end = self.starts.get(i + 1).map_or(self.len, |&e| e - 1);
        let end = if source[start..end].ends_with('\r') {
            end - 1
        } else {
            end
        };
        start..end
    }
}

/// The lines a diagnostic's labels cover, with long lines clipped, and an empty line for
/// each line before them: the source ariadne is given when some line is longer than
/// `MAX_LINE`.
struct Excerpt {
    text: String,
    /// For each line shown: its bytes kept in the original (`a..b`), and where they start in
    /// `text`.
    kept: Vec<(Range<usize>, usize)>,
    /// The line and column (1-based, in characters) of the report's location, in the
    /// original and in the excerpt.
    at_line: usize,
    at_col: usize,
    at_col_clipped: usize,
}

impl Excerpt {
    /// `None` when every line the labels cover is short (the whole source is shown as is).
    fn of(source: &str, lines: &Lines, d: &Diagnostic) -> Option<Excerpt> {
        let points: Vec<usize> = d
            .labels
            .iter()
            .flat_map(|l| {
                let s = clamp(source, l.span.clone());
                [s.start, s.end]
            })
            .collect();
        let first = lines.of(*points.iter().min()?);
        let last = lines.of(*points.iter().max()?);
        if (first..=last).all(|i| lines.range(source, i).len() <= MAX_LINE) {
            return None;
        }
        // Empty lines stand for those before the first shown, so that ariadne numbers the
        // lines right (its `display_line_offset` does not reach the margin).
        let mut text = "\n".repeat(first);
        let mut kept = Vec::new();
        for i in first..=last {
            let line = lines.range(source, i);
            let on_line: Vec<usize> = points
                .iter()
                .copied()
                .filter(|&p| line.start <= p && p <= line.end)
                .collect();
            let (mut a, mut b) = if line.len() <= MAX_LINE {
                (line.start, line.end)
            } else if let (Some(&lo), Some(&hi)) = (on_line.iter().min(), on_line.iter().max()) {
                let a = lo.saturating_sub(CONTEXT).max(line.start);
                (a, (hi + CONTEXT).min(line.end).min(a + MAX_LINE))
            } else {
                (line.start, line.start + MAX_LINE)
            };
            while !source.is_char_boundary(a) {
                a -= 1;
            }
            while !source.is_char_boundary(b) {
                b += 1;
            }
            if a > line.start {
                text.push('…');
            }
            kept.push((a..b, text.len()));
            text.push_str(&source[a..b]);
            if b < line.end {
                text.push('…');
            }
            text.push('\n');
        }
        let mut ex = Excerpt {
            text,
            kept,
            at_line: 0,
            at_col: 0,
            at_col_clipped: 0,
        };
        let at = clamp(source, location(d)).start;
        ex.at_line = lines.of(at);
        let line = lines.range(source, ex.at_line);
        ex.at_col = source[line.start..at.clamp(line.start, line.end)]
            .chars()
            .count()
            + 1;
        let mapped = ex.map(&(at..at)).start;
        let k = ex.kept[ex.at_line - first].1;
        let line_start = ex.text[..k].rfind('\n').map_or(0, |i| i + 1);
        ex.at_col_clipped = ex.text[line_start..mapped].chars().count() + 1;
        Some(ex)
    }

    /// A span of the source as a span of the excerpt (clamped to what is kept).
    fn map(&self, span: &Range<usize>) -> Range<usize> {
        let one = |pos: usize| {
            // The kept part of the line holding `pos`, or the nearest one.
            let i = self
                .kept
                .partition_point(|(r, _)| r.start <= pos)
                .saturating_sub(1);
            let (r, at) = &self.kept[i];
            at + pos.clamp(r.start, r.end) - r.start
        };
        let start = one(span.start);
        start..one(span.end).max(start)
    }
}

/// Where the report is: its first primary label, else its first label.
fn location(d: &Diagnostic) -> Range<usize> {
    d.primary_span()
        .or_else(|| d.labels.first().map(|l| l.span.clone()))
        .unwrap_or(0..0)
}

fn plain(d: &Diagnostic) -> String {
    let kind = match d.severity {
        Severity::Error => "Error",
        Severity::Warning => "Warning",
    };
    let mut s = format!("[{}] {kind}: {}\n", d.code(), d.message);
    for n in &d.notes {
        s.push_str(&format!("    Note: {n}\n"));
    }
    if let Some(h) = &d.help {
        s.push_str(&format!("    Help: {h}\n"));
    }
    s
}

/// The ariadne report of `d`, its spans put through `span` (onto the source ariadne is
/// given). Labels are given in source order, so ariadne draws them in one box.
fn report<'a>(
    path: &'a str,
    d: &Diagnostic,
    span: impl Fn(Range<usize>) -> Range<usize>,
    color: bool,
) -> Report<'a, (&'a str, Range<usize>)> {
    let kind = match d.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let mut r = Report::build(kind, (path, span(location(d))))
        .with_config(
            Config::default()
                .with_color(color)
                .with_index_type(IndexType::Byte),
        )
        .with_code(d.code())
        .with_message(&d.message);
    let mut labels: Vec<_> = d.labels.iter().collect();
    labels.sort_by_key(|l| (l.span.start, l.span.end));
    for l in labels {
        let c = if l.primary { Color::Red } else { Color::Blue };
        r = r.with_label(
            Label::new((path, span(l.span.clone())))
                .with_message(&l.message)
                .with_color(c),
        );
    }
    for n in &d.notes {
        r = r.with_note(n);
    }
    if let Some(h) = &d.help {
        r = r.with_help(h);
    }
    r.finish()
}

/// A span inside `source`, on character boundaries (defensive: the compiler already does this).
fn clamp(source: &str, span: Range<usize>) -> Range<usize> {
    let mut start = span.start.min(source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, source.len());
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_compiler::ErrorKind;

    #[test]
    fn caret_lands_under_the_span_after_non_ascii() {
        let src = "# é€\ny = zz\n";
        let start = src.find("zz").expect("zz");
        let d = Diagnostic::error(ErrorKind::UnknownName, "unknown name `zz`")
            .with_primary(start..start + 2, "here");
        let out = render("t.tx", src, &[d], false);
        assert!(out.contains("[unknown-name]"), "{out}");
        // The caret line puts the underline under `zz` (column 5, after `y = `).
        let line = out
            .lines()
            .find(|l| l.contains("y = zz"))
            .expect("source line");
        let under = out
            .lines()
            .skip_while(|l| !l.contains("y = zz"))
            .nth(1)
            .expect("underline");
        let col = line.find("zz").expect("zz in line");
        assert_eq!(
            under.chars().nth(line[..col].chars().count()),
            Some('─'),
            "{out}"
        );
    }
}
