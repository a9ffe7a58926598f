//! Repeated runs of one plan on the CPU (`tc bench`, a serving loop). With the host
//! allocator tuned (`tc_runtime::cpu::tune_host_allocator`, which `tc` calls first thing),
//! a run whose outputs come to several MiB faults in no page once the first runs are done:
//! its arena is the mapping the last run kept, and its outputs are copied onto the pages
//! the last run's freed outputs left in the heap. One test in its own process, so the
//! fault count is the run's alone.

use tc_compiler::{CompileOptions, PlanOptions};

/// Three 4 MiB outputs (12 MiB in all) and a 4 MiB input.
const PROGRAM: &str = "dim N = 1024\ndim D = 1024\ninput x : f32[N, D]\n\
    a = x * 2 + 1\nb = tanh(x)\nc = a * b\noutput a, b, c\n";

/// This process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    rest.split_whitespace()
        .nth(10 - 3)
        .and_then(|f| f.parse().ok())
        .expect("a fault count")
}

#[test]
fn repeated_runs_fault_in_no_pages() {
    let options = CompileOptions {
        dims: Vec::new(),
        plan: PlanOptions {
            fuse: true,
            reuse: true,
            target: tc_compiler::Target::Cpu,
        },
    };
    let program = tc_compiler::compile(PROGRAM, &options).expect("compiles");
    let x = tc_runtime::data::random_tensor(0, "x", tc_compiler::ir::DType::F32, &[1024, 1024]);
    let run = || {
        let before = minor_faults();
        let outs =
            tc_runtime::cpu::run(&program.plan, std::slice::from_ref(&x), &[]).expect("runs");
        let bytes: Vec<u64> = outs.iter().map(|o| o.bytes.len() as u64).collect();
        let sum: f64 = outs.iter().flat_map(|o| o.to_f32()).map(f64::from).sum();
        drop(outs);
        (minor_faults() - before, bytes, sum)
    };
    // Untuned, for the record: glibc maps each output afresh, or trims them off its heap.
    let untuned: Vec<u64> = (0..3).map(|_| run().0).collect();
    eprintln!("page faults per run, allocator untuned: {untuned:?}");

    assert!(
        tc_runtime::cpu::tune_host_allocator(),
        "glibc took the settings"
    );
    let (_, want_bytes, want_sum) = run();
    assert_eq!(want_bytes, vec![4 << 20; 3]);
    let _ = run();
    for _ in 0..3 {
        let (faults, bytes, sum) = run();
        assert_eq!(
            (bytes, sum.to_bits()),
            (want_bytes.clone(), want_sum.to_bits())
        );
        // 3072 pages of outputs; a handful of faults (a thread's stack growing) is allowed.
        assert!(
            faults <= 32,
            "a run faulted in {faults} pages (untuned: {untuned:?})"
        );
    }
}
