//! Front end: every example checks, every error kind has a snapshot of its rendered diagnostic, parsing never panics.
//!
//! Inputs are files (`examples/*.tx`, `tests/in/bad/*.tx`); outputs are insta snapshots.

use std::path::{Path, PathBuf};
use tc_compiler::ir::{text, verify::verify};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tx_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tx"))
        .collect();
    files.sort();
    files
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// Every example checks with its own dims, verifies, and its IR text is snapshotted.
#[test]
fn examples_check_verify_and_print() {
    let files = tx_files("examples");
    assert!(files.len() >= 8, "examples are missing");
    for path in files {
        let source = std::fs::read_to_string(&path).expect("readable example");
        let graph = match tc_compiler::check(&source, &[]) {
            Ok(g) => g,
            Err(d) => panic!("{} does not check: {d:#?}", path.display()),
        };
        if let Err(e) = verify(&graph) {
            panic!("{}: {e}", path.display());
        }
        assert!(!graph.outputs.is_empty());
        insta::assert_snapshot!(format!("ir_{}", stem(&path)), text::print(&graph));
    }
}

/// `--dim` overrides written in a bad program's first line: `# dims: N=0, M=8`.
fn header_dims(source: &str) -> Vec<(String, u64)> {
    let Some(rest) = source
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# dims:"))
    else {
        return Vec::new();
    };
    rest.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Every bad program fails to check, every diagnostic has a code and (unless it is about a
/// `--dim` override) a primary span, and the rendered diagnostics are snapshotted.
#[test]
fn bad_programs_render_their_diagnostics() {
    let files = tx_files("tests/in/bad");
    assert!(files.len() >= 30, "only {} bad programs", files.len());
    for path in files {
        let source = std::fs::read_to_string(&path).expect("readable bad program");
        let name = format!("{}.tx", stem(&path));
        let diags = match tc_compiler::check(&source, &header_dims(&source)) {
            Ok(_) => panic!("{name} checked without errors"),
            Err(d) => d,
        };
        assert!(!diags.is_empty(), "{name}: empty error list");
        for d in &diags {
            assert!(!d.code.is_empty(), "{name}: a diagnostic without a code");
            if !d.code.starts_with("unknown-dim-override") {
                assert!(
                    d.primary_span().is_some(),
                    "{name}: {} has no primary span",
                    d.code
                );
            }
            spans_ok(&source, d);
        }
        let rendered = tc_runtime::cli::diagnostics::render(&name, &source, &diags, false);
        insta::assert_snapshot!(format!("bad_{}", stem(&path)), rendered);
    }
}

fn spans_ok(source: &str, d: &tc_compiler::Diagnostic) {
    for l in &d.labels {
        assert!(
            l.span.start <= l.span.end
                && l.span.end <= source.len()
                && source.is_char_boundary(l.span.start)
                && source.is_char_boundary(l.span.end),
            "{}: span {:?} outside the source or off a char boundary",
            d.code,
            l.span
        );
    }
}
