//! Renders compiler diagnostics for the terminal with ariadne: code, message, labelled
//! spans with carets, notes and help. Spans are byte offsets (`IndexType::Byte`), so carets
//! land right on non-ASCII source.

use ariadne::{Color, Config, IndexType, Label, Report, ReportKind, Source};
use tc_compiler::diag::Severity;
use tc_compiler::Diagnostic;

/// All of `diags` rendered against `source` (named `path`), one report after another.
pub fn render(path: &str, source: &str, diags: &[Diagnostic], color: bool) -> String {
    let mut out = Vec::new();
    for d in diags {
        if d.labels.is_empty() {
            // Not about a place in the source (a `--dim` override, say): no source box.
            out.extend(plain(d).into_bytes());
            continue;
        }
        if let Err(e) = report(path, source, d, color).write((path, Source::from(source)), &mut out)
        {
            // Writing to a Vec cannot fail in practice; fall back to the plain message.
            out.extend(format!("error[{}]: {} ({e})\n", d.code(), d.message).into_bytes());
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

fn report<'a>(
    path: &'a str,
    source: &str,
    d: &Diagnostic,
    color: bool,
) -> Report<'a, (&'a str, std::ops::Range<usize>)> {
    let kind = match d.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let at = d
        .primary_span()
        .or_else(|| d.labels.first().map(|l| l.span.clone()))
        .unwrap_or(0..0);
    let at = clamp(source, at);
    let mut r = Report::build(kind, (path, at))
        .with_config(
            Config::default()
                .with_color(color)
                .with_index_type(IndexType::Byte),
        )
        .with_code(d.code())
        .with_message(&d.message);
    for l in &d.labels {
        let c = if l.primary { Color::Red } else { Color::Blue };
        r = r.with_label(
            Label::new((path, clamp(source, l.span.clone())))
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
fn clamp(source: &str, span: std::ops::Range<usize>) -> std::ops::Range<usize> {
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
