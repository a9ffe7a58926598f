//! What must hold for any bytes given to the compiler, shared by the fuzz target
//! (`fuzz/fuzz_targets/compile.rs`) and its CI-sized version in `tests/reliability.rs`:
//! a plan the independent verifier accepts with its peaks in order, or diagnostics whose
//! spans lie inside the source on character boundaries. Never a panic.

use tc_compiler::{compile, CompileOptions};

/// Compiles `bytes` (when UTF-8) with fusion and reuse both on and both off, and panics
/// with the source if anything above does not hold.
pub fn check_one(bytes: &[u8]) {
    let Ok(source) = std::str::from_utf8(bytes) else {
        return;
    };
    for (fuse, reuse) in [(true, true), (false, false)] {
        let mut options = CompileOptions::default();
        options.plan.fuse = fuse;
        options.plan.reuse = reuse;
        match compile(source, &options) {
            Ok(program) => {
                if let Err(e) = tc_compiler::plan::verify::verify(&program.plan) {
                    panic!("plan verifier: {e}\n--- source\n{source}");
                }
                let p = &program.memory.peaks;
                assert!(
                    p.lower_bound.without_inputs <= p.planned.without_inputs,
                    "{source}"
                );
                // With reuse off every buffer has its own region: only `planned <= naive` holds.
                if reuse {
                    assert!(
                        p.planned.without_inputs <= p.eager.without_inputs,
                        "{source}"
                    );
                }
                assert!(
                    p.planned.without_inputs <= p.naive.without_inputs,
                    "{source}"
                );
                assert!(p.eager.without_inputs <= p.naive.without_inputs, "{source}");
                let cuda = tc_compiler::codegen::emit_program(&program.plan);
                assert!(
                    program.plan.kernels.is_empty() || !cuda.is_empty(),
                    "{source}"
                );
            }
            Err(diags) => {
                assert!(
                    !diags.is_empty(),
                    "an error without a diagnostic:\n{source}"
                );
                for d in &diags {
                    for l in &d.labels {
                        assert!(
                            l.span.start <= l.span.end && l.span.end <= source.len(),
                            "{d:?}\n{source}"
                        );
                        assert!(
                            source.is_char_boundary(l.span.start)
                                && source.is_char_boundary(l.span.end),
                            "{d:?}\n{source}"
                        );
                    }
                }
            }
        }
    }
}
