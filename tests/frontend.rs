//! Front end: every example checks, every error kind has a snapshot of its rendered diagnostic, parsing never panics.
//!
//! Inputs are files (`examples/*.tx`, `tests/in/bad/*.tx`); outputs are insta snapshots.

use std::path::{Path, PathBuf};
use tc_compiler::ir::{text, verify::verify};
use tc_compiler::ErrorKind;

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

/// A bad program's diagnostics: those of `check`, or, for a program that checks, those of the
/// whole pipeline (errors only the planner can see, such as `tensor-too-large`).
fn bad_diagnostics(path: &Path) -> (String, Vec<tc_compiler::Diagnostic>) {
    let source = std::fs::read_to_string(path).expect("readable bad program");
    let name = format!("{}.tx", stem(path));
    let dims = header_dims(&source);
    let diags = match tc_compiler::check(&source, &dims) {
        Err(d) => d,
        Ok(_) => {
            let options = tc_compiler::CompileOptions {
                dims,
                ..Default::default()
            };
            match tc_compiler::compile(&source, &options) {
                Ok(_) => panic!("{name} checked and compiled without errors"),
                Err(d) => d,
            }
        }
    };
    (source, diags)
}

/// Every bad program fails to check (or to compile), every diagnostic has (unless it is about
/// a `--dim` override) a primary span, and the rendered diagnostics are snapshotted.
#[test]
fn bad_programs_render_their_diagnostics() {
    let files = tx_files("tests/in/bad");
    assert!(files.len() >= 30, "only {} bad programs", files.len());
    for path in files {
        let name = format!("{}.tx", stem(&path));
        let (source, diags) = bad_diagnostics(&path);
        assert!(!diags.is_empty(), "{name}: empty error list");
        for d in &diags {
            if d.kind != ErrorKind::UnknownDimOverride {
                assert!(
                    d.primary_span().is_some(),
                    "{name}: {} has no primary span",
                    d.kind
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
            d.kind,
            l.span
        );
    }
}

fn check_ok(source: &str) -> tc_compiler::ir::Graph {
    let g = match tc_compiler::check(source, &[]) {
        Ok(g) => g,
        Err(d) => panic!(
            "{source}\n{}",
            tc_runtime::cli::diagnostics::render("t.tx", source, &d, false)
        ),
    };
    if let Err(e) = verify(&g) {
        panic!("{source}\n{e}\n{}", text::print(&g));
    }
    g
}

fn codes(source: &str, dims: &[(String, u64)]) -> Vec<&'static str> {
    match tc_compiler::check(source, dims) {
        Ok(_) => Vec::new(),
        Err(d) => d.iter().map(|d| d.code()).collect(),
    }
}

fn output_type(g: &tc_compiler::ir::Graph, i: usize) -> String {
    g.ty(g.outputs[i].node).to_string()
}

#[test]
fn promotion_follows_pytorch() {
    let g = check_ok(
        "dim N = 4\ninput a : f16[N]\ninput s : f32[]\ninput b : bf16[N]\ninput h : f16[]\n\
         x = a * s\ny = a + b\nz = h * 2\nw = s * h\nv = 3 * 4\noutput x, y, z, w, v",
    );
    assert_eq!(
        output_type(&g, 0),
        "f16[N=4]",
        "rank-0 f32 promotes like a scalar"
    );
    assert_eq!(output_type(&g, 1), "f32[N=4]", "f16 with bf16 gives f32");
    assert_eq!(
        output_type(&g, 2),
        "f16[]",
        "a literal takes the tensor's dtype"
    );
    assert_eq!(
        output_type(&g, 3),
        "f32[]",
        "two rank-0 tensors promote normally"
    );
    assert_eq!(output_type(&g, 4), "f32[]", "weak scalars alone are f32");
    let v = g.outputs[4].node;
    assert_eq!(g.node(v).op, tc_compiler::ir::Op::Scalar(12.0));
}

#[test]
fn matmul_batch_dims_are_expanded() {
    let g = check_ok("input a : f32[2, 3, 4, 5]\ninput w : f32[5, 6]\ny = a @ w\noutput y");
    let text = text::print(&g);
    assert!(
        text.contains("expand %1 implicit : f32[2, 3, 5, 6]"),
        "{text}"
    );
    assert_eq!(output_type(&g, 0), "f32[2, 3, 4, 6]");
}

#[test]
fn reshape_copies_only_when_strides_cannot_express_it() {
    let g = check_ok("input x : f32[4, 6]\na = reshape(x, [2, 2, -1])\nb = reshape(transpose(x), [24])\noutput a, b");
    let ops: Vec<&str> = g.ids().map(|id| g.node(id).op.name()).collect();
    assert_eq!(ops, ["input", "reshape", "transpose", "copy", "reshape"]);
    assert_eq!(output_type(&g, 0), "f32[2, 2, 6]");
}

#[test]
fn reductions_axes_and_keepdim() {
    let g = check_ok(
        "input x : f32[2, 3, 4]\na = sum(x, axis=[-1, 0])\nb = max(x, axis=1, keepdim=true)\nc = mean(x)\noutput a, b, c",
    );
    assert_eq!(output_type(&g, 0), "f32[3]");
    assert_eq!(output_type(&g, 1), "f32[2, 1, 4]");
    assert_eq!(output_type(&g, 2), "f32[]");
    match &g.node(g.outputs[0].node).op {
        tc_compiler::ir::Op::Reduce { axes, .. } => assert_eq!(axes, &[0, 2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dims_overrides_and_errors() {
    let src = "dim N = 4\ninput x : f32[N]\noutput x";
    let g = tc_compiler::check(src, &[("N".into(), 9)]).expect("override applies");
    assert_eq!(g.dims, vec![("N".to_string(), 9)]);
    assert_eq!(codes(src, &[("M".into(), 9)]), ["unknown-dim-override"]);
    assert_eq!(codes(src, &[("N".into(), 0)]), ["bad-dim"]);
}

#[test]
fn ordinary_identifiers_that_look_special() {
    let g = check_ok("dim int = 4\ninput float : f32[int]\nmain = float * 2\n__global__ = exp(main)\nsum = __global__\noutput sum");
    assert_eq!(output_type(&g, 0), "f32[int=4]");
}

#[test]
fn dims_are_weak_scalars_and_names_are_recorded() {
    let g = check_ok("dim D = 64\ninput x : f16[D]\ny = x / sqrt(D)\noutput y");
    let text = text::print(&g);
    assert!(text.contains("scalar 8.0 : f16[]"), "{text}");
    assert_eq!(g.display_name(g.outputs[0].node), "y");
}

#[test]
fn line_breaks_inside_brackets_are_ignored() {
    // SPEC §1: inside ( ) and [ ] line breaks are ignored, whatever the indentation.
    let g = check_ok(
        "dim N = 4\ninput x : f32[\nN,\nN]\ny = softmax(x,\naxis=-1)\nz = sum(x,\naxis=[0,\n1],\nkeepdim=true\n)\noutput y, z\n",
    );
    assert_eq!(output_type(&g, 0), "f32[N=4, N=4]");
    assert_eq!(output_type(&g, 1), "f32[1, 1]");
    // An unclosed bracket still does not swallow the following statements.
    let c = codes(
        "dim N = 4\ninput x : f32[N]\ny = exp((x + 1)\nz = q * 2\noutput y\n",
        &[],
    );
    assert!(
        c.contains(&"syntax") && c.contains(&"unknown-name"),
        "{c:?}"
    );
}

#[test]
fn errors_in_several_statements_are_all_reported() {
    let c = codes(
        "input x : f32[4]\na = x + * 2\nb = nope + 1\nc = sum(x, axis=5)\nd = (x\noutput x",
        &[],
    );
    assert_eq!(c, ["syntax", "unknown-name", "bad-axis", "syntax"]);
}

#[test]
fn deep_nesting_and_long_expressions_do_not_overflow() {
    let n = 100_000;
    let parens = format!(
        "input x : f32[4]\ny = {}x{}\noutput y",
        "(".repeat(n),
        ")".repeat(n)
    );
    assert_eq!(codes(&parens, &[]), ["too-deep"]);
    let d = tc_compiler::check(&parens, &[]).expect_err("too deep");
    assert!(tc_runtime::cli::diagnostics::render("t.tx", &parens, &d, false).contains("too-deep"));
    let negs = format!("input x : f32[4]\ny = {}x\noutput y", "-".repeat(n));
    assert_eq!(codes(&negs, &[]), ["too-deep"]);
    let pows = format!("input x : f32[4]\ny = x{}\noutput y", " ** x".repeat(n));
    assert_eq!(codes(&pows, &[]), ["too-deep"]);
    let calls = format!(
        "input x : f32[4]\ny = {}x{}\noutput y",
        "exp(".repeat(n),
        ")".repeat(n)
    );
    assert_eq!(codes(&calls, &[]), ["too-deep"]);
    // 63 levels is fine.
    let ok = format!(
        "input x : f32[4]\ny = {}x{}\noutput y",
        "exp(".repeat(63),
        ")".repeat(63)
    );
    check_ok(&ok);
    // A 100 000-term sum checks (the checker walks left-associative chains in a loop).
    let sum = format!("input x : f32[4]\ny = x{}\noutput y", " + x * 2".repeat(n));
    let g = check_ok(&sum);
    assert!(g.len() > 3 * n);
}

mod never_panics {
    use proptest::prelude::*;

    const VOCAB: &[&str] = &[
        "dim",
        "input",
        "param",
        "output",
        "true",
        "false",
        "x",
        "y",
        "N",
        "D",
        "f32",
        "f16",
        "bf16",
        "sum",
        "softmax",
        "reshape",
        "permute",
        "expand",
        "transpose",
        "layernorm",
        "maximum",
        "axis",
        "keepdim",
        "eps",
        "0",
        "1",
        "-1",
        "4",
        "2.5",
        "1e-5",
        "99999999999999999999999",
        "+",
        "-",
        "*",
        "**",
        "/",
        "@",
        "=",
        ":",
        ",",
        "(",
        ")",
        "[",
        "]",
        ";",
        "\n",
        "\n",
        "# c\n",
        "é",
        "$",
    ];
    const PRELUDE: &str = "dim N = 4\ndim D = 8\ninput x : f32[N, D]\nparam y : f16[D]\n";

    fn check_one(source: &str) {
        if let Err(diags) = tc_compiler::check(source, &[]) {
            assert!(!diags.is_empty());
            for d in &diags {
                super::spans_ok(source, d);
            }
            let _ = tc_runtime::cli::diagnostics::render("p.tx", source, &diags, false);
        } else if let Ok(g) = tc_compiler::check(source, &[]) {
            if let Err(e) = tc_compiler::ir::verify::verify(&g) {
                panic!("{source}\n{e}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_one(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn random_tokens(toks in proptest::collection::vec(proptest::sample::select(VOCAB), 0..40)) {
            check_one(&format!("{PRELUDE}{}", toks.join(" ")));
        }

        #[test]
        fn random_statements(toks in proptest::collection::vec(proptest::sample::select(VOCAB), 0..12)) {
            check_one(&format!("{PRELUDE}z = {}\noutput z", toks.join(" ")));
        }
    }
}

// ---- Error kinds (issue 11) and front-end defects (issue 12) ----

/// The rows of the error-kind table in `docs/reliability.md`: code, meaning, exit, case.
fn error_kind_table() -> Vec<[String; 4]> {
    let doc = std::fs::read_to_string(root().join("docs/reliability.md")).expect("the doc");
    let section = doc
        .split("\n## Error kinds\n")
        .nth(1)
        .expect("docs/reliability.md has an `## Error kinds` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            assert_eq!(cells.len(), 4, "a row of four cells: {l}");
            [
                cells[0].trim_matches('`').to_string(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            ]
        })
        .collect()
}

/// Every `ErrorKind` has one row in `docs/reliability.md` with its exit code, and each error
/// case the row names is a file in `tests/in/bad/` that gives that kind; a kind with no case
/// says why it cannot come from a program.
#[test]
fn every_error_kind_is_documented_and_has_a_case() {
    let rows = error_kind_table();
    let documented: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
    assert_eq!(
        documented, kinds,
        "the table lists every kind once, in enum order"
    );
    for [code, meaning, exit, case] in &rows {
        let kind = ErrorKind::from_code(code).expect("a known code");
        assert!(!meaning.is_empty(), "{code}: no meaning");
        assert_eq!(exit, &kind.exit_code().to_string(), "{code}: exit code");
        if let Some(reason) = case.strip_prefix("none:") {
            assert!(reason.trim().len() > 10, "{code}: say why there is no case");
            continue;
        }
        let files: Vec<&str> = case
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|f| f.ends_with(".tx"))
            .collect();
        assert!(!files.is_empty(), "{code}: no error case named in `{case}`");
        for f in files {
            let path = root().join("tests/in/bad").join(f);
            assert!(path.exists(), "{code}: {f} is not in tests/in/bad");
            let (_, diags) = bad_diagnostics(&path);
            assert!(
                diags.iter().any(|d| d.kind == kind),
                "{code}: {f} gives {:?}",
                diags.iter().map(|d| d.code()).collect::<Vec<_>>()
            );
        }
    }
}

/// The invariants listed in `docs/architecture.md` are `Invariant::ALL`: same numbers, same
/// titles, in order.
#[test]
fn invariants_are_numbered_once() {
    use tc_compiler::invariant::Invariant;
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).expect("the doc");
    let section = doc
        .split("\n## Invariants\n")
        .nth(1)
        .expect("an Invariants section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let items: Vec<(u32, String)> = section
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.split_once(". **")?;
            let n: u32 = n.parse().ok()?;
            let title = rest.split_once(".**")?.0;
            Some((n, title.to_string()))
        })
        .collect();
    let want: Vec<(u32, String)> = Invariant::ALL
        .iter()
        .map(|i| (i.number(), i.title().to_string()))
        .collect();
    assert_eq!(items, want);
}

fn render(source: &str, diags: &[tc_compiler::Diagnostic]) -> String {
    tc_runtime::cli::diagnostics::render("t.tx", source, diags, false)
}

fn help_of(source: &str) -> Vec<Option<String>> {
    match tc_compiler::check(source, &[]) {
        Ok(_) => panic!("{source} checks"),
        Err(d) => d.into_iter().map(|d| d.help).collect(),
    }
}

/// Issue 12 item 10: SPEC §1 ignores line breaks anywhere inside `( )` and `[ ]`, not only
/// next to `(`, `,` and `)`.
#[test]
fn line_breaks_anywhere_inside_brackets_are_ignored() {
    let pre = "dim N = 6\ninput x : f32[N, N]\n";
    for body in [
        "y = (x * 2 +\n x)",
        "y = (x\n + 1)",
        "y = reshape(x, [3 *\n 2, 6])",
        "y = sum(x\n * 2, axis=0)",
        "y = (x *\n\n 2)",
        "y = exp(\n-\nx)",
        "y = x[\n]",
        "y = maximum(x, 0\n)\n",
    ] {
        let src = format!("{pre}{body}\noutput y\n");
        if body == "y = x[\n]" {
            // Not an expression at all: the break does not hide that (one syntax error).
            assert_eq!(codes(&src, &[]), ["syntax"], "{src}");
            continue;
        }
        check_ok(&src);
    }
    let g = check_ok(&format!("{pre}y = reshape(x, [3 *\n 2, 6])\noutput y\n"));
    assert_eq!(output_type(&g, 0), "f32[6, 6]");
}

/// Issue 12 item 17: the second label of `duplicate-name` is in the same box, under its own
/// line, not under a header naming the later line.
#[test]
fn duplicate_name_labels_share_one_box() {
    let src = "dim N = 4\ninput x : f32[N]\ny = x + 1\ny = x * 2\noutput y\n";
    let d = tc_compiler::check(src, &[]).expect_err("bound twice");
    let out = render(src, &d);
    assert_eq!(out.matches("─[ ").count(), 1, "{out}");
    assert!(out.contains("─[ t.tx:4:1 ]"), "{out}");
    let first = out.find("first bound here").expect("label");
    let second = out.find("bound a second time here").expect("label");
    assert!(first < second, "labels in source order:\n{out}");
}

/// Issue 12 item 18: when the element count fits but the byte count does not, the message
/// says bytes.
#[test]
fn size_overflow_blames_the_bytes() {
    // 2^62 f32 elements: the count fits in 64 bits, the 2^64 bytes do not.
    for src in [
        "dim N = 4611686018427387904\ninput x : f32[N]\noutput x\n",
        "dim N = 4611686018427387904\ninput x : f16[N]\ninput s : f32[1]\ny = x + s\noutput y\n",
    ] {
        let d = tc_compiler::check(src, &[]).expect_err("too many bytes");
        assert_eq!(d[0].kind, ErrorKind::SizeOverflow, "{src}");
        assert!(d[0].message.contains("bytes"), "{}", d[0].message);
        assert!(!d[0].message.contains("elements than"), "{}", d[0].message);
    }
    // A count that does not fit still says elements.
    let src = "dim N = 4294967296\ninput x : f32[N, N, N]\noutput x\n";
    let d = tc_compiler::check(src, &[]).expect_err("too many elements");
    assert!(d[0].message.contains("elements"), "{}", d[0].message);
}

/// Issue 12 item 19: a UTF-8 byte order mark at the start of a file is accepted.
#[test]
fn a_byte_order_mark_is_accepted() {
    let g = check_ok("\u{FEFF}dim N = 4\ninput x : f32[N]\ny = x * 2\noutput y\n");
    assert_eq!(output_type(&g, 0), "f32[N=4]");
    // Elsewhere it is still a stray character.
    assert_eq!(
        codes(
            "dim N = 4\ninput x : f32[N]\ny = x \u{FEFF}* 2\noutput y\n",
            &[]
        ),
        ["bad-token"]
    );
}

/// Issue 12 item 19: an error at the end of a 4 MB line prints a clipped line, not 12 MB;
/// the header still names the true line and column.
#[test]
fn long_lines_are_clipped_in_messages() {
    let n = 4 << 20;
    let src = format!(
        "dim N = 4\ninput x : f32[N]\ny = x{} + zz\noutput y\n",
        " ".repeat(n)
    );
    let d = tc_compiler::check(&src, &[]).expect_err("unknown name");
    let out = render(&src, &d);
    assert!(out.len() < 4000, "{} bytes", out.len());
    let col = n + "y = x + ".len() + 1;
    assert!(out.contains(&format!("─[ t.tx:3:{col} ]")), "{out}");
    assert!(out.contains("zz"), "{out}");
    assert!(out.contains("…"), "{out}");
    // A long line far from the error is not shown at all; a short one is shown whole.
    let src = format!(
        "dim N = 4\ninput x : f32[N]\ny = x{}\nz = zz\noutput y\n",
        " ".repeat(n)
    );
    let d = tc_compiler::check(&src, &[]).expect_err("unknown name");
    let out = render(&src, &d);
    assert!(out.len() < 4000, "{} bytes", out.len());
    assert!(out.contains(" 4 │ z = zz"), "{out}");
}

/// Issue 12 item 12: many errors print the first ones and a count, and checking and
/// rendering take time linear in their number.
#[test]
fn many_errors_are_capped_and_linear() {
    fn program(n: usize) -> String {
        let mut s = String::from("dim N = 4\ninput x : f32[N]\n");
        for i in 0..n {
            s.push_str(&format!("y{i} = x + zz{i}\n"));
        }
        s.push_str("output y0\n");
        s
    }
    let time = |n: usize| {
        let src = program(n);
        let t = std::time::Instant::now();
        let d = tc_compiler::check(&src, &[]).expect_err("unknown names");
        assert_eq!(d.len(), n);
        let out = render(&src, &d);
        (t.elapsed().as_secs_f64(), out)
    };
    let (small, _) = time(2_000);
    let (large, out) = time(16_000);
    let shown = tc_runtime::cli::diagnostics::MAX_SHOWN;
    assert_eq!(out.matches("[unknown-name]").count(), shown, "{out}");
    assert!(
        out.contains(&format!("and {} more errors", 16_000 - shown)),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    // 8 times the errors: linear is about 8 times the time, quadratic 64.
    assert!(
        large < 20.0 * small + 0.5,
        "2 000 errors: {small:.3} s, 16 000: {large:.3} s"
    );
}

/// Issue 12 item 21: near-miss hints offer names of the kind the place needs: tensors (and
/// weak scalars) in expressions, dims in shapes.
#[test]
fn hints_offer_names_of_the_right_kind() {
    let pre = "dim B = 2\ndim Dh = 8\ninput x : f32[B, Dh]\n";
    let no_dim = |body: &str| {
        let src = format!("{pre}{body}\noutput x\n");
        let h = help_of(&src);
        assert!(
            h.iter()
                .flatten()
                .all(|h| !h.contains("`B`") && !h.contains("`Dh`")),
            "{src}: {h:?}"
        );
    };
    no_dim("y = q * 2");
    no_dim("y = hh + x");
    // A tensor is offered in an expression …
    let h = help_of(&format!("{pre}hx = x * 2\ny = hh + 1\noutput x\n"));
    assert_eq!(h, [Some("did you mean `hx`?".to_string())]);
    // … and a dim in a shape, never a tensor.
    let h = help_of(&format!(
        "{pre}input Dx : f32[B]\ninput z : f32[Dd]\noutput x\n"
    ));
    assert_eq!(h, [Some("did you mean `Dh`?".to_string())]);
    let h = help_of(&format!("{pre}xs = x * 2\ninput z : f32[xx]\noutput x\n"));
    assert_eq!(h, [None]);
}

/// A shape error in a two-operand function names the function, as the `where` message does
/// (`maximum(f32[2, 3], f32[2])`), not a stray comma between the two types.
#[test]
fn broadcast_errors_of_functions_name_the_function() {
    for (call, want) in [
        ("maximum(a, b)", "maximum(f32[2, 3], f32[2])"),
        ("minimum(a, b)", "minimum(f32[2, 3], f32[2])"),
        (
            "logical_and(a > 0, b > 0)",
            "logical_and(bool[2, 3], bool[2])",
        ),
        (
            "logical_or(a > 0, b > 0)",
            "logical_or(bool[2, 3], bool[2])",
        ),
        ("a + b", "f32[2, 3] + f32[2]"),
    ] {
        let src = format!("input a : f32[2, 3]\ninput b : f32[2]\ny = {call}\noutput y\n");
        let d = tc_compiler::check(&src, &[]).expect_err("does not broadcast");
        assert_eq!(d[0].kind, ErrorKind::ShapeMismatch, "{src}");
        assert_eq!(
            d[0].message,
            format!("shapes do not broadcast: {want}"),
            "{src}"
        );
    }
}

/// Integer arithmetic on weak scalars is Python's, exact: a result beyond 64 bits is a
/// `bad-number` error, never a value wrapped to 64 bits (`x * 2 ** 70` was `x * 0`, where
/// Python and SPEC §1's floating point give `x * 1.18e21`). A float operand computes in
/// floating point, and results that fit still fold exactly.
#[test]
fn integer_folds_of_numbers_that_overflow_are_errors() {
    for body in [
        "y = x * 2 ** 70",
        "y = x + (4611686018427387904 * 4)",
        "y = x + (2 ** 62 + 2 ** 62)",
        "y = x - (-9223372036854775807 - 2)",
        "y = x * -(-9223372036854775807 - 1)",
        "y = x * square(4294967296)",
        "y = x * 3 ** 40",
        "y = x * (N * N)",
    ] {
        let src = format!("dim N = 4294967296\ninput x : f32[2]\n{body}\noutput y\n");
        assert_eq!(codes(&src, &[]), ["bad-number"], "{src}");
        let d = tc_compiler::check(&src, &[]).expect_err("overflows");
        assert!(
            d[0].message.contains("does not fit in 64 bits"),
            "{}",
            d[0].message
        );
        assert!(d[0].help.is_some(), "{src}");
    }
    for body in [
        "y = x * 2.0 ** 70",
        "y = x * 3 ** 39",
        "y = x * 1 ** 100000000000",
        "y = x * (-1) ** 100000000001",
        "y = x * (2 ** 62 + (2 ** 62 - 1))",
        "y = x * (-9223372036854775807 - 1)",
    ] {
        check_ok(&format!("input x : f32[2]\n{body}\noutput y\n"));
    }
}
