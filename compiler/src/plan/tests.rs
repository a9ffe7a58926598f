//! Unit tests of the planner on hand-built graphs: kernels, stores, in-place, packing,
//! the verifier catching broken plans, and the report's figures.

use super::*;
use crate::fuse::{fuse, testgraph::G};
use crate::invariant::Invariant;
use crate::ir::decompose::decompose;
use crate::ir::{BinaryOp as B, DType, ReduceOp as R, UnaryOp as U};
use crate::memory::memory_report;
use crate::schedule::{Level, MatMulKernel};
use crate::search as plan;

fn opts(fuse: bool, reuse: bool) -> PlanOptions {
    PlanOptions {
        fuse,
        reuse,
        target: crate::schedule::Target::Cpu,
    }
}

/// The plan's first matrix product.
fn first_product(plan: &Plan) -> &MatMulKernel {
    plan.kernels
        .iter()
        .find_map(|k| match &k.kind {
            KernelKind::MatMul(mm) => Some(mm),
            _ => None,
        })
        .expect("a product")
}

fn planned(b: &G, o: &PlanOptions) -> Plan {
    let p = decompose(&b.g);
    let groups = fuse(&p, o.fuse);
    let plan = plan(&b.g, &p, &groups, o).expect("plans");
    verify(&plan).unwrap_or_else(|e| panic!("{e}\n{}", print(&plan)));
    plan
}

fn chain() -> G {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[64]);
    let a = b.bin_s(B::Mul, x, 2.0);
    let c = b.bin_s(B::Add, a, 1.0);
    let e = b.un(U::Exp, c);
    b.name(e, "y");
    b.output("y", e);
    b
}

#[test]
fn chain_is_one_kernel_storing_only_the_output() {
    let b = chain();
    let plan = planned(&b, &opts(true, true));
    assert_eq!(plan.kernels.len(), 1);
    assert_eq!(plan.kernels[0].ops, ["mul", "add", "exp"]);
    let KernelKind::Fused(f) = &plan.kernels[0].kind else {
        panic!("fused")
    };
    assert_eq!(f.stores.len(), 1);
    assert_eq!(f.loads.len(), 1);
    assert_eq!(plan.arena_bytes, 256);
    let report = memory_report(&b.g, &decompose(&b.g), &plan);
    // Unfused: three f32[64] results; at most two are live at once.
    assert_eq!(report.peaks.naive.without_inputs, 3 * 256);
    assert_eq!(report.peaks.eager.without_inputs, 2 * 256);
    assert_eq!(report.peaks.planned.without_inputs, 256);
    assert_eq!(report.peaks.planned.with_inputs, 512);
    assert_eq!(report.peaks.lower_bound.without_inputs, 256);
}

#[test]
fn unfused_chain_runs_in_place() {
    let b = chain();
    let plan = planned(&b, &opts(false, true));
    assert_eq!(plan.kernels.len(), 3);
    // Each op overwrites its operand: one 256-byte region suffices.
    assert_eq!(plan.arena_bytes, 256);
    assert!(
        plan.buffers
            .iter()
            .filter(|b| b.in_place_of.is_some())
            .count()
            == 2
    );
    let no_reuse = planned(&b, &opts(false, false));
    assert_eq!(no_reuse.arena_bytes, 3 * 256);
    assert!(no_reuse.buffers.iter().all(|b| b.in_place_of.is_none()));
}

#[test]
fn hand_written_softmax_is_one_row_kernel() {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[4, 8]);
    let m = b.reduce(R::Max, x, &[1], true);
    let s = b.bin(B::Sub, x, m);
    let e = b.un(U::Exp, s);
    let sum = b.reduce(R::Sum, e, &[1], true);
    let p = b.bin(B::Div, e, sum);
    b.output("p", p);
    let plan = planned(&b, &opts(true, true));
    assert_eq!(plan.kernels.len(), 1);
    let KernelKind::Fused(f) = &plan.kernels[0].kind else {
        panic!("fused")
    };
    assert_eq!(f.reduce_axes, vec![1]);
    assert_eq!(f.rows(), 4);
    assert_eq!(plan.arena_bytes, 4 * 8 * 4);
    let levels: Vec<Level> = f.body.iter().map(|i| i.level).collect();
    assert_eq!(levels.iter().filter(|l| **l == Level::Row).count(), 2);
}

#[test]
fn matmul_bias_gelu_writes_in_place_of_the_product() {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[4, 8]);
    let w = b.param("w", DType::F32, &[8, 6]);
    let bias = b.param("b", DType::F32, &[6]);
    let mm = b.matmul(x, w);
    let h = b.bin(B::Add, mm, bias);
    let g = b.un(U::Gelu, h);
    b.name(g, "h");
    b.output("h", g);
    let plan = planned(&b, &opts(true, true));
    assert_eq!(plan.kernels.len(), 2);
    let hb = plan.buffers.iter().find(|b| b.name == "h").expect("h");
    let mb = plan
        .buffers
        .iter()
        .find(|b| b.name == "k0.out")
        .expect("k0.out");
    assert_eq!(
        hb.in_place_of.map(|p| plan.buffer(p).name.clone()),
        Some("k0.out".to_string())
    );
    assert_eq!(hb.offset, mb.offset);
    assert_eq!(plan.arena_bytes, 96);
    let KernelKind::MatMul(m) = &plan.kernels[0].kind else {
        panic!("matmul")
    };
    assert_eq!((m.m, m.n, m.k), (4, 6, 8));
    assert_eq!(m.b.strides, vec![6, 1]);
}

#[test]
fn transposed_read_is_never_in_place() {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[8, 8]);
    let e = b.un(U::Exp, x);
    let t = b.transpose(e);
    let y = b.bin(B::Add, t, x);
    b.output("y", y);
    let plan = planned(&b, &opts(true, true));
    assert_eq!(plan.kernels.len(), 2);
    assert!(plan.buffers.iter().all(|b| b.in_place_of.is_none()));
    assert_eq!(plan.arena_bytes, 2 * 256);
    let KernelKind::Fused(f) = &plan.kernels[1].kind else {
        panic!("fused")
    };
    let tl = f
        .loads
        .iter()
        .find(|l| plan.buffer(l.buffer).kind == BufferKind::Arena)
        .expect("load of e");
    assert_eq!(tl.strides, vec![1, 8]);
}

#[test]
fn workspace_lives_only_at_its_matmul() {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[4, 4]);
    let m1 = b.matmul(x, x);
    let e = b.un(U::Exp, m1);
    let m2 = b.matmul(e, x);
    b.output("y", m2);
    let o = PlanOptions {
        fuse: true,
        reuse: true,
        target: crate::schedule::Target::Cuda {
            matmul_workspace: 100,
        },
    };
    let plan = planned(&b, &o);
    let ws: Vec<&Buffer> = plan
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Workspace)
        .collect();
    assert_eq!(ws.len(), 2);
    assert!(ws
        .iter()
        .all(|w| w.first_step == w.last_step && w.bytes == 100));
    // Step 0: k0.out + ws; step 1: exp in place; step 2: e, y, ws.
    assert_eq!(plan.arena_bytes, 64 + 64 + 112);
}

/// `exp(x)` summed over axis 0 of a `[rows, cols]` input, and stored, then doubled.
fn column_sum(rows: u64, cols: u64) -> G {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[rows, cols]);
    let e = b.un(U::Exp, x);
    let s = b.reduce(R::Sum, e, &[0], false);
    let y = b.bin_s(B::Mul, s, 2.0);
    b.output("e", e);
    b.output("y", y);
    b
}

#[test]
fn a_column_reduction_too_narrow_for_the_gpu_gets_a_workspace_at_its_step_alone() {
    let gpu = PlanOptions {
        target: crate::schedule::Target::Cuda {
            matmul_workspace: 100,
        },
        ..opts(true, true)
    };
    // 64 columns of 8192: 32 parts (parts of 256) of f32 partials, a workspace of its step.
    let plan = planned(&column_sum(8192, 64), &gpu);
    let (step, f) = plan
        .kernels
        .iter()
        .enumerate()
        .find_map(|(s, k)| match &k.kind {
            KernelKind::Fused(f) if f.workspace.is_some() => Some((s, f)),
            _ => None,
        })
        .expect("a kernel with a workspace");
    let w = plan.buffer(f.workspace.expect("workspace"));
    assert_eq!(w.kind, BufferKind::Workspace);
    assert_eq!((w.first_step, w.last_step), (step, step));
    assert_eq!(w.bytes, 32 * 64 * 4);
    let g = column_sum(8192, 64);
    let report = memory_report(&g.g, &decompose(&g.g), &plan);
    let p = &report.peaks;
    // The eager model stages the same partials at the reduction's step.
    assert_eq!(p.planned.without_inputs, plan.arena_bytes);
    assert!(p.planned.without_inputs <= p.eager.without_inputs, "{p:?}");
    assert!(
        p.eager.without_inputs >= 8192 * 64 * 4 + 32 * 64 * 4,
        "{p:?}"
    );
    let entry = report
        .buffers
        .iter()
        .find(|b| b.kind == "workspace")
        .expect("the workspace in the report");
    assert!(
        entry.label.starts_with("column partials of"),
        "{}",
        entry.label
    );
    // The CPU plan has none; neither has a column reduction wide enough to fill the GPU.
    let cpu = planned(&column_sum(8192, 64), &opts(true, true));
    assert!(cpu.buffers.iter().all(|b| b.kind != BufferKind::Workspace));
    let wide = planned(&column_sum(64, 8192), &gpu);
    assert!(wide.buffers.iter().all(|b| b.kind != BufferKind::Workspace));
    // A workspace live past its step is a broken plan.
    let mut bad = plan.clone();
    let id = f.workspace.expect("workspace").index();
    bad.buffers[id].last_step += 1;
    if bad.buffers[id].last_step < bad.kernels.len() {
        let e = verify(&bad).expect_err("a workspace live past its step passes");
        assert_eq!(e.invariant, Invariant::Lifetimes, "{e}");
    }
    let mut moved = plan.clone();
    moved.buffers[id].first_step = usize::MAX;
    assert!(verify(&moved).is_err());
}

#[test]
fn verify_catches_overlap_misaligned_in_place_and_out_of_bounds() {
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[8, 8]);
    let e = b.un(U::Exp, x);
    let t = b.transpose(e);
    let y = b.bin(B::Add, t, x);
    b.output("y", y);
    let good = planned(&b, &opts(true, true));
    let mut overlap = good.clone();
    for buf in &mut overlap.buffers {
        buf.offset = 0;
    }
    let e = verify(&overlap).expect_err("overlap passes");
    assert_eq!(e.invariant, Invariant::NoOverlap, "{e}");
    assert!(e.message.contains("overlap"), "{e}");
    let mut bad_in_place = good.clone();
    let (ei, yi) = (
        bad_in_place.buffers.len() - 2,
        bad_in_place.buffers.len() - 1,
    );
    bad_in_place.buffers[yi].in_place_of = Some(BufferId(ei as u32));
    bad_in_place.buffers[yi].offset = bad_in_place.buffers[ei].offset;
    let e = verify(&bad_in_place).expect_err("bad_in_place passes");
    assert_eq!(e.invariant, Invariant::InPlaceSafe, "{e}");
    assert!(e.message.contains("another element"), "{e}");
    let mut oob = good.clone();
    if let KernelKind::Fused(f) = &mut oob.kernels[1].kind {
        f.loads[0].offset = 1;
    }
    let e = verify(&oob).expect_err("oob passes");
    assert_eq!(e.invariant, Invariant::InBounds, "{e}");
    assert!(e.message.contains("reads elements"), "{e}");
    let mut writes_input = good.clone();
    let x_buf = writes_input.inputs[0];
    if let KernelKind::Fused(f) = &mut writes_input.kernels[0].kind {
        f.stores[0].buffer = x_buf;
    }
    let e = verify(&writes_input).expect_err("writes_input passes");
    assert_eq!(e.invariant, Invariant::LeavesReadOnly, "{e}");
    let mut forward_read = good.clone();
    if let KernelKind::Fused(f) = &mut forward_read.kernels[0].kind {
        let last = f.body.len() - 1;
        f.body[0].op = InstOp::Unary(U::Exp, last);
    }
    let e = verify(&forward_read).expect_err("forward_read passes");
    assert_eq!(e.invariant, Invariant::KernelBody, "{e}");
    assert!(e
        .to_string()
        .starts_with("invariant 10 (Kernel bodies are well formed)"));
    let mut unaligned = good;
    unaligned.buffers[yi].offset += 4;
    unaligned.arena_bytes += 16;
    let e = verify(&unaligned).expect_err("unaligned passes");
    assert_eq!(e.invariant, Invariant::InBounds, "{e}");
    assert!(e.message.contains("aligned"), "{e}");
}

#[test]
fn layernorm_builtin_is_one_kernel_with_source_op_name() {
    let mut b = G::new();
    let x = b.input("x", DType::F16, &[4, 8]);
    let g = b.param("g", DType::F16, &[8]);
    let y = b.op(
        crate::ir::Op::LayerNorm {
            arg: x,
            axis: 1,
            eps: 1e-5,
        },
        DType::F16,
        &[4, 8],
    );
    let z = b.bin(B::Mul, y, g);
    b.output("z", z);
    let plan = planned(&b, &opts(true, true));
    assert_eq!(plan.kernels.len(), 1);
    assert_eq!(plan.kernels[0].ops, ["layernorm", "mul"]);
    assert_eq!(plan.arena_bytes, 64);
    let unfused = planned(&b, &opts(false, true));
    assert_eq!(unfused.kernels.len(), 2);
    assert_eq!(unfused.kernels[0].ops, ["layernorm"]);
}

#[test]
fn report_renders_text_json_and_svg() {
    let b = chain();
    let plan = planned(&b, &opts(true, true));
    let report = memory_report(&b.g, &decompose(&b.g), &plan);
    let text = crate::report::render_text(&report);
    assert!(text.contains("n/a (not run on CUDA)"));
    assert!(text.contains("256 B (256 bytes)"));
    assert!(text.contains("step   0 |0000"));
    let json: serde_json::Value =
        serde_json::from_str(&crate::report::to_json(&report)).expect("json");
    assert!(json["peaks"]["measured"].is_null());
    assert_eq!(json["peaks"]["planned"]["without_inputs"], 256);
    assert_eq!(json["buffers"][1]["dtype"], "f32");
    for key in [
        "name",
        "dtype",
        "shape",
        "bytes",
        "first_step",
        "last_step",
        "offset",
        "view_of",
        "in_place_of",
    ] {
        assert!(json["buffers"][1].get(key).is_some(), "{key}");
    }
    let svg = crate::report::render_svg(&report);
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    // One shape (with its title) per arena storage object and per input or param.
    let shapes = crate::report::svg::layout(&report).shapes;
    assert_eq!(shapes.iter().filter(|s| !s.leaf).count(), 1);
    assert_eq!(svg.matches("<title>").count(), shapes.len());
    assert!(svg.contains("peak 256 B at step 0"));
}

#[test]
fn implicit_promotion_joins_its_consumer_when_unfused() {
    let mut b = G::new();
    let x = b.input("x", DType::F16, &[16]);
    let y = b.input("y", DType::F32, &[16]);
    b.line(3);
    let xc = b.cast(x, DType::F32, true);
    let s = b.bin(B::Add, xc, y);
    b.line(4);
    let e = b.un(U::Exp, s);
    b.output("e", e);
    let plan = planned(&b, &opts(false, true));
    assert_eq!(plan.kernels.len(), 2);
    // The promotion of an input is a converting load inside the add's kernel.
    assert_eq!(plan.kernels[0].ops, ["add"]);
    assert_eq!(plan.kernels[0].lines, [3]);
    assert_eq!(plan.kernels[1].lines, [4]);
    let report = memory_report(&b.g, &decompose(&b.g), &plan);
    // The promotion is free in the eager model: add and exp results only.
    assert_eq!(report.peaks.naive.without_inputs, 128);
    assert_eq!(report.peaks.planned.without_inputs, 64);
}

#[test]
fn promoted_broadcast_param_costs_no_kernel_and_no_buffer() {
    // f32 activations plus an f16 bias: PyTorch converts inside the add; so does tc.
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[4, 8]);
    let bias = b.param("bias", DType::F16, &[8]);
    let bc = b.cast(bias, DType::F32, true);
    let s = b.bin(B::Add, x, bc);
    b.output("s", s);
    for fuse in [true, false] {
        let plan = planned(&b, &opts(fuse, true));
        assert_eq!(plan.kernels.len(), 1, "fuse={fuse}");
        assert_eq!(
            plan.buffers
                .iter()
                .filter(|b| b.kind == BufferKind::Arena)
                .count(),
            1
        );
        let crate::schedule::KernelKind::Fused(k) = &plan.kernels[0].kind else {
            panic!("a fused kernel")
        };
        let bias_load = k
            .loads
            .iter()
            .find(|l| l.dtype == DType::F16)
            .expect("the f16 bias is loaded");
        assert_eq!(bias_load.strides, vec![0, 1], "read through the broadcast");
    }
}

/// A stored product wider than a column block packs all of `B` at once where the arena has
/// room for the larger workspace at its step (`plan::tile`), and keeps `CPU_GEMM_NC`
/// columns at a time where it has none: the arena is never larger for it.
#[test]
fn a_product_packs_all_of_b_where_the_arena_has_room() {
    use crate::schedule::{CPU_GEMM_NC, CPU_GEMM_NR};
    let product = |room: bool| {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[64, 40]);
        let w = b.param("w", DType::F32, &[40, 1000]);
        let y = b.matmul(x, w); // 64 × 40 × 1000
        let e = b.un(U::Exp, y);
        b.output("y", e);
        if room {
            // Two 2 MiB values live at once elsewhere: the arena's peak.
            let g = b.input("g", DType::F32, &[512, 1024]);
            let a1 = b.un(U::Exp, g);
            let a2 = b.un(U::Tanh, g);
            let s = b.bin(B::Add, a1, a2);
            let t = b.bin(B::Mul, s, a1);
            b.output("t", t);
            b.output("a2", a2);
        }
        let plan = planned(&b, &opts(true, true));
        let mm = first_product(&plan);
        let ws = plan.buffer(mm.workspace.expect("packs B")).bytes;
        (mm.packs_whole_b, ws, plan.arena_bytes, print(&plan))
    };
    let (whole, ws, _, text) = product(true);
    assert!(whole, "{text}");
    assert_eq!(ws, 4 * 40 * 1000u64.next_multiple_of(CPU_GEMM_NR), "{text}");
    assert!(text.contains("(all of B packed)"), "{text}");
    let (whole, ws, arena, text) = product(false);
    assert!(!whole, "{text}");
    assert_eq!(ws, 4 * 40 * CPU_GEMM_NC, "{text}");
    // The product's step is the peak: its output and its workspace in blocks.
    assert!(arena <= 4 * 64 * 1000 + ws + 16, "{text}");
}

/// On the CPU every product tc's GEMM takes (f32, or bf16 widened as it packs) gets its
/// packed `B` as a workspace live at its step alone (`k` rows of at most `CPU_GEMM_NC`
/// columns, whole panels), and products the `gemm` crate takes (too few rows, too few
/// columns) none; `verify`
/// rejects a workspace smaller than the rule's, and a product left without one.
#[test]
fn cpu_products_get_their_packed_b_at_their_step_alone() {
    use crate::schedule::{cpu_packing_floats, CPU_GEMM_NC, CPU_GEMM_NR};
    let mut b = G::new();
    let x = b.input("x", DType::F32, &[64, 40]);
    let w = b.param("w", DType::F32, &[40, 1000]);
    let y = b.matmul(x, w); // 64 × 40 × 1000: packed in blocks of CPU_GEMM_NC columns
    let small = b.input("s", DType::F32, &[8, 40]);
    let z = b.matmul(small, w); // 8 rows: the gemm crate's
    let narrow = b.param("v", DType::F32, &[40, 10]);
    let u = b.matmul(x, narrow); // 10 columns: the gemm crate's
    let h = b.input("h", DType::BF16, &[64, 40]);
    let hw = b.param("hw", DType::BF16, &[40, 32]);
    let q = b.matmul(h, hw); // bf16: tc's GEMM, B widened as it is packed
    let e = b.un(U::Exp, y);
    let t = b.transpose(x);
    let r = b.matmul(t, x); // A transposed (positive strides): 40 × 64 × 40
    for (name, n) in [("y", e), ("z", z), ("u", u), ("q", q), ("r", r)] {
        b.output(name, n);
    }
    let plan = planned(&b, &opts(true, true));
    let mut with = 0;
    for (s, k) in plan.kernels.iter().enumerate() {
        let KernelKind::MatMul(mm) = &k.kind else {
            continue;
        };
        let want = if mm.m >= 24 && mm.n >= 16 && mm.cpu_gemm_operands() {
            4 * mm.k * mm.n.next_multiple_of(CPU_GEMM_NR).min(CPU_GEMM_NC)
        } else {
            0
        };
        assert_eq!(
            want,
            4 * cpu_packing_floats(mm.n, mm.k) * u64::from(want > 0)
        );
        match mm.workspace {
            Some(ws) => {
                let buf = plan.buffer(ws);
                assert_eq!(buf.kind, BufferKind::Workspace);
                assert_eq!((buf.first_step, buf.last_step), (s, s));
                assert_eq!(buf.bytes, want, "{}", print(&plan));
                with += 1;
            }
            None => assert_eq!(want, 0, "{}: no workspace\n{}", k.name, print(&plan)),
        }
    }
    assert_eq!(with, 3, "{}", print(&plan));
    // The 1000-column product: one block of CPU_GEMM_NC columns over the whole k.
    assert!(plan
        .buffers
        .iter()
        .any(|b| b.kind == BufferKind::Workspace && b.bytes == 4 * 40 * CPU_GEMM_NC));
    // A workspace a float short, or none, is a wrong plan.
    let ws = plan
        .buffers
        .iter()
        .position(|b| b.kind == BufferKind::Workspace)
        .expect("a workspace");
    let mut short = plan.clone();
    short.buffers[ws].bytes -= 4;
    short.buffers[ws].shape[0] -= 1;
    let e = verify(&short).expect_err("a short workspace passes");
    assert_eq!(e.invariant, Invariant::InBounds, "{e}");
    assert!(e.message.contains("needs"), "{e}");
    let mut none = plan.clone();
    for k in &mut none.kernels {
        if let KernelKind::MatMul(mm) = &mut k.kind {
            mm.workspace = None;
        }
    }
    verify(&none).expect_err("a product without its workspace passes");
    // The same program planned for CUDA: cuBLAS's bytes for every product.
    let gpu = PlanOptions {
        target: crate::schedule::Target::Cuda {
            matmul_workspace: 96,
        },
        ..opts(true, true)
    };
    let plan = planned(&b, &gpu);
    let mut products = 0;
    for k in &plan.kernels {
        if let KernelKind::MatMul(mm) = &k.kind {
            products += 1;
            assert_eq!(plan.buffer(mm.workspace.expect("cuBLAS's")).bytes, 96);
        }
    }
    assert_eq!(products, 5);
}

/// The rule (`cpu_packs_b`) by shape: a batched f32 product goes to tc's GEMM (a packed-`B`
/// workspace) only when each matrix has at least `CPU_BATCH_MIN_MACS` multiply-adds, enough
/// to share among threads; a batched product of smaller matrices goes to the gemm crate
/// (which spreads the batch over the threads) and gets no workspace, in the plan and in the
/// eager model alike. One matrix keeps tc's GEMM at any size.
#[test]
fn batched_cpu_products_of_small_matrices_get_no_packed_b() {
    use crate::schedule::{cpu_packing_floats, cpu_packs_b, CPU_BATCH_MIN_MACS};
    // (batch, m, k, n, packs)
    let cases: [(&[u64], u64, u64, u64, bool); 10] = [
        (&[64], 128, 64, 128, false), // 2^20 a matrix
        (&[8, 8], 128, 64, 128, false),
        (&[256], 32, 64, 32, false),
        (&[2], 128, 128, 128, false),  // 2^21
        (&[16], 128, 64, 1024, false), // 2^23
        (&[2], 255, 256, 256, false),  // one row short of 2^24
        (&[2], 256, 256, 256, true),   // 2^24 exactly
        (&[4], 512, 64, 512, true),
        (&[1], 128, 64, 128, true), // one matrix: no batch to spread
        (&[], 24, 8, 16, true),
    ];
    for (batch, m, k, n, packs) in cases {
        let nbatch: u64 = batch.iter().product();
        assert_eq!(
            cpu_packs_b(nbatch, m, n, k, true),
            packs,
            "{batch:?} {m}×{k}×{n}"
        );
        assert_eq!(
            !packs,
            nbatch > 1 && m * n * k < CPU_BATCH_MIN_MACS,
            "{batch:?} {m}×{k}×{n}"
        );
        let mut b = G::new();
        let sa: Vec<u64> = batch.iter().copied().chain([m, k]).collect();
        let sb: Vec<u64> = batch.iter().copied().chain([k, n]).collect();
        let x = b.input("x", DType::F32, &sa);
        let w = b.input("w", DType::F32, &sb);
        let y = b.matmul(x, w);
        b.output("y", y);
        let plan = planned(&b, &opts(true, true));
        let mm = first_product(&plan);
        assert_eq!(mm.nbatch(), nbatch);
        let ws = 4 * cpu_packing_floats(n, k) * u64::from(packs);
        assert_eq!(mm.workspace.map_or(0, |w| plan.buffer(w).bytes), ws);
        // The eager model holds the product's result and the same workspace (the product
        // of each is a multiple of 16 bytes here).
        let report = memory_report(&b.g, &decompose(&b.g), &plan);
        let out = 4 * nbatch * m * n;
        assert_eq!(report.peaks.eager.without_inputs, out + ws, "{batch:?}");
        assert_eq!(report.peaks.planned.without_inputs, out + ws, "{batch:?}");
    }
}

/// A product read only by the kernel after it, element for element, whose result takes
/// another buffer's place (`tanh(x @ w) * (a @ w)`, in place of `a @ w`): on the CPU it is
/// never stored whole (`tile`), the arena holding the other product and the workspace; the verifier refuses the tile in a GPU
/// plan and once the consumer is not right after the product.
#[test]
fn a_product_consumed_on_its_tiles_is_never_stored() {
    let mut b = G::new();
    let a = b.input("a", DType::F32, &[128, 256]);
    let x = b.input("x", DType::F32, &[128, 256]);
    let w = b.param("w", DType::F32, &[256, 256]);
    let r = b.matmul(a, w);
    let p = b.matmul(x, w);
    let t = b.un(U::Tanh, p);
    let y = b.bin(B::Mul, t, r);
    b.name(y, "y");
    b.output("y", y);
    let plan = planned(&b, &opts(true, true));
    let tiles: Vec<&Buffer> = plan
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Tile)
        .collect();
    assert_eq!(tiles.len(), 1, "{}", print(&plan));
    assert_eq!(tiles[0].shape, vec![128, 256]);
    assert!(plan.notes.iter().any(|n| n.contains("never stored whole")));
    // `a @ w` (then `y` in its place) and one packing workspace at a time: no room for
    // `x @ w`.
    let workspace = plan
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Workspace)
        .map(|b| b.bytes)
        .max()
        .expect("a workspace");
    assert_eq!(
        plan.arena_bytes,
        128 * 256 * 4 + workspace,
        "{}",
        print(&plan)
    );
    let s = tiles[0].first_step;
    let mut gpu = plan.clone();
    gpu.options.target = crate::schedule::Target::Cuda {
        matmul_workspace: 0,
    };
    assert!(verify(&gpu).is_err(), "a tile in a GPU plan passes");
    let mut apart = plan.clone();
    apart.buffers.iter_mut().for_each(|b| {
        if b.kind == BufferKind::Tile {
            b.first_step = s + 1;
        }
    });
    assert!(
        verify(&apart).is_err(),
        "a tile not written by its product passes"
    );
}

/// One SGD step of a two-layer perceptron, at the example's dims (B = 1024, D = 1024, H =
/// 4096, C = 1024), where the activations, not the packing workspaces, set the peak.
const TRAIN_MLP: &str = include_str!("../../../examples/train_mlp.tx");

/// `h = gelu(pre)` in a training step is read only by `h @ w2` and `hᵀ · g`, and `pre` is
/// stored for gelu's backward: on the CPU both products compute `h` from `pre` as they
/// pack it (`prologue`), `h` is never stored, the gelu backward's column sum (`b1`'s
/// gradient) is split off so that it runs on `grad h`'s tiles, and the arena is below
/// what any order holds with `h` stored. The verifier refuses the prologue's tile
/// in a GPU plan, read by a kernel other than its products, or without its prologue.
#[test]
fn a_value_only_products_read_is_computed_in_them() {
    let compile = |cpu: bool| {
        let options = crate::CompileOptions {
            dims: Vec::new(),
            plan: PlanOptions {
                target: if cpu {
                    crate::schedule::Target::Cpu
                } else {
                    crate::schedule::Target::Cuda {
                        matmul_workspace: 0,
                    }
                },
                ..opts(true, true)
            },
        };
        crate::compile(TRAIN_MLP, &options)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .plan
    };
    let plan = compile(true);
    verify(&plan).unwrap_or_else(|e| panic!("{e}\n{}", print(&plan)));
    let text = print(&plan);
    let h = plan
        .buffers
        .iter()
        .position(|b| b.name == "h")
        .expect("h has a buffer");
    assert_eq!(plan.buffers[h].kind, BufferKind::Tile, "{text}");
    let computing: Vec<&crate::schedule::MatMulKernel> = plan
        .kernels
        .iter()
        .filter_map(|k| match &k.kind {
            KernelKind::MatMul(mm) if mm.a.buffer.index() == h => Some(mm),
            _ => None,
        })
        .collect();
    assert_eq!(computing.len(), 2, "{text}");
    for mm in &computing {
        let p = mm.prologue.as_ref().expect("a prologue");
        let ops: Vec<String> = p.body.iter().map(|i| format!("{:?}", i.op)).collect();
        assert!(ops.iter().any(|o| o.contains("Gelu")), "{ops:?}");
        assert!(
            p.body
                .iter()
                .all(|i| !matches!(i.op, InstOp::Binary(..) | InstOp::Reduce(..))),
            "the prologue recomputes more than gelu: {ops:?}"
        );
    }
    // No kernel stores h; one folds the gelu backward's values apart.
    for k in &plan.kernels {
        if let KernelKind::Fused(f) = &k.kind {
            assert!(f.stores.iter().all(|s| s.buffer.index() != h), "{text}");
        }
    }
    assert!(
        plan.notes.iter().any(|n| n.contains("column folds")),
        "{text}"
    );
    // Stored, h is live at `grad w2 = hᵀ · g` with pre, g, grad w2 and the product's
    // packing workspace, in any order: 52 MiB and the workspace. Computed, less.
    let transposed = computing
        .iter()
        .find(|mm| mm.a.strides == [1, 4096])
        .and_then(|mm| mm.workspace)
        .expect("grad w2 = hᵀ · g packs");
    let floor: u64 =
        (2 * 1024 * 4096 + 1024 * 1024 + 4096 * 1024) * 4 + plan.buffer(transposed).bytes;
    assert!(
        plan.arena_bytes < floor,
        "{} >= {floor}\n{text}",
        plan.arena_bytes
    );
    let gpu = compile(false);
    assert!(gpu.buffers.iter().all(|b| b.kind != BufferKind::Tile));
    let without = {
        let mut p = plan.clone();
        p.kernels.iter_mut().for_each(|k| {
            if let KernelKind::MatMul(mm) = &mut k.kind {
                mm.prologue = None;
            }
        });
        p
    };
    assert!(
        verify(&without).is_err(),
        "a tile no prologue computes passes"
    );
    let mut on_gpu = plan.clone();
    on_gpu.options.target = crate::schedule::Target::Cuda {
        matmul_workspace: 0,
    };
    assert!(
        verify(&on_gpu).is_err(),
        "a prologue's tile in a GPU plan passes"
    );
    let mut other_reader = plan.clone();
    if let Some(KernelKind::Fused(f)) = other_reader
        .kernels
        .iter_mut()
        .map(|k| &mut k.kind)
        .find(|k| matches!(k, KernelKind::Fused(f) if !f.loads.is_empty()))
    {
        f.loads[0].buffer = BufferId(h as u32);
        f.loads[0].dtype = DType::F32;
        f.loads[0].strides = contiguous_strides(&[1024, 4096])[..f.loads[0].strides.len()].to_vec();
    }
    assert!(
        verify(&other_reader).is_err(),
        "a fused kernel reading the tile passes"
    );
}
