//! Fuzz target: any bytes through the whole compiler — parse, check, decompose, fuse, plan,
//! report, CUDA C — must give a plan that passes the independent verifier, or diagnostics
//! whose spans lie inside the source. Never a panic, a hang or an overflow.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tc_compiler::{compile, CompileOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    for (fuse, reuse) in [(true, true), (false, false)] {
        let mut options = CompileOptions::default();
        options.plan.fuse = fuse;
        options.plan.reuse = reuse;
        match compile(source, &options) {
            Ok(program) => {
                if let Err(e) = tc_compiler::plan::verify::verify(&program.plan) {
                    panic!("plan verifier rejected a plan: {e}\n--- source\n{source}");
                }
                let p = &program.memory.peaks;
                assert!(p.lower_bound.without_inputs <= p.planned.without_inputs);
                // With reuse off every buffer has its own region: only `planned <= naive` holds.
                if reuse {
                    assert!(p.planned.without_inputs <= p.eager.without_inputs);
                }
                assert!(p.planned.without_inputs <= p.naive.without_inputs);
                assert!(p.eager.without_inputs <= p.naive.without_inputs);
                let _ = tc_compiler::codegen::emit_program(&program.plan);
            }
            Err(diags) => {
                assert!(!diags.is_empty(), "an error without a diagnostic");
                for d in &diags {
                    for l in &d.labels {
                        assert!(l.span.start <= l.span.end && l.span.end <= source.len(), "span out of the source: {d:?}");
                        assert!(source.is_char_boundary(l.span.start) && source.is_char_boundary(l.span.end), "span off a char boundary: {d:?}");
                    }
                }
            }
        }
    }
});
