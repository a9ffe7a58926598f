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
