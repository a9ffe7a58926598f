//! Kernel lowering (`tc_compiler::lower`): the kernel IR of every example as text
//! (snapshots), the verifier run on every example and large reduction under all four
//! fuse/reuse combinations and both targets, and the verifier catching what it must:
//! a planned kernel that breaks the row/element rule, and kernel IR bent out of shape.

use tc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use tc_compiler::lower::{self, Error, KernelIr, Level, PassId, SplitPart, ValueId};
use tc_compiler::schedule::*;
use tc_compiler::{CompileOptions, PlanOptions, Program};

use tc_tests::examples;

fn compile(label: &str, source: &str, plan: PlanOptions) -> Program {
    let options = CompileOptions {
        dims: Vec::new(),
        plan,
    };
    tc_compiler::compile(source, &options)
        .unwrap_or_else(|d| panic!("{label} does not compile: {d:?}"))
}

#[test]
fn examples_kernel_ir_snapshot() {
    for (name, source) in examples() {
        let program = compile(&name, &source, PlanOptions::default());
        insta::assert_snapshot!(
            format!("kernel_ir_{name}"),
            lower::text::print(&program.kernels)
        );
    }
}

#[test]
fn split_reductions_are_written_out() {
    // `mean((x - t) ** 2)` over 2^19 elements: partials, then their fold.
    let program = compile(
        "large mean",
        tc_tests::LARGE_REDUCTIONS[1],
        PlanOptions::default(),
    );
    insta::assert_snapshot!("kernel_ir_split_mean", lower::text::print(&program.kernels));
    let parts: Vec<&SplitPart> = program
        .kernels
        .kernels
        .iter()
        .flatten()
        .filter_map(|k| k.split.as_ref())
        .collect();
    assert!(
        matches!(parts.as_slice(), [SplitPart::Partials { fold, .. }, SplitPart::Fold { of }]
            if fold == "k1" && of == "k0"),
        "{parts:?}"
    );
}

#[test]
fn every_example_and_large_reduction_verifies() {
    let sources = examples().into_iter().chain(
        tc_tests::LARGE_REDUCTIONS
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("large reduction {i}"), s.to_string())),
    );
    let mut checked = 0;
    for (name, source) in sources {
        for (fuse, reuse) in [(true, true), (true, false), (false, true), (false, false)] {
            for target in [
                tc_compiler::Target::Cpu,
                tc_compiler::Target::Cuda {
                    matmul_workspace: tc_compiler::codegen::CUBLAS_WORKSPACE_BYTES,
                },
            ] {
                let label = format!("{name} (fuse {fuse}, reuse {reuse}, {target:?})");
                let program = compile(
                    &label,
                    &source,
                    PlanOptions {
                        fuse,
                        reuse,
                        target,
                    },
                );
                assert_eq!(program.kernels.kernels.len(), program.plan.kernels.len());
                for (kernel, ir) in program.plan.kernels.iter().zip(&program.kernels.kernels) {
                    match (&kernel.kind, ir) {
                        (KernelKind::Fused(_), Some(ir)) => {
                            lower::verify(ir).unwrap_or_else(|e| panic!("{label}: {e}"));
                            checked += 1;
                        }
                        (
                            KernelKind::MatMul(_)
                            | KernelKind::Attention(_)
                            | KernelKind::AttentionBackward(_),
                            None,
                        ) => {}
                        _ => panic!("{label}: {} lowered as the wrong kind", kernel.name),
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} kernels checked");
}

// ------------------------------------------------------------------ hand-built plans

fn buffer(name: &str, kind: BufferKind, dtype: DType, shape: &[u64]) -> Buffer {
    let numel: u64 = shape.iter().product();
    Buffer {
        name: name.into(),
        kind,
        dtype,
        shape: shape.to_vec(),
        bytes: numel * dtype.size(),
        offset: 0,
        first_step: 0,
        last_step: 0,
        in_place_of: None,
        node: None,
    }
}

fn inst(op: InstOp, level: Level) -> Inst {
    Inst {
        op,
        dtype: DType::F32,
        level,
        node: None,
    }
}

/// `y[r] = sum(x[r, :]) ; z[r, c] = x[r, c] - y[r]` over `rows × cols`, with `body` as given.
fn row_plan(body: Vec<Inst>, stores: Vec<Store>) -> Plan {
    let (rows, cols) = (8u64, 64u64);
    let buffers = vec![
        buffer(
            "x",
            BufferKind::Input { index: 0 },
            DType::F32,
            &[rows, cols],
        ),
        buffer("y", BufferKind::Arena, DType::F32, &[rows]),
        {
            let mut b = buffer("z", BufferKind::Arena, DType::F32, &[rows, cols]);
            b.offset = 64;
            b
        },
    ];
    let kernel = FusedKernel {
        domain: vec![rows, cols],
        reduce_axes: vec![1],
        loads: vec![Load {
            buffer: BufferId(0),
            dtype: DType::F32,
            offset: 0,
            strides: vec![cols as i64, 1],
        }],
        body,
        stores,
        workspace: None,
    };
    Plan {
        kernels: vec![Kernel {
            name: "k0".into(),
            kind: KernelKind::Fused(kernel),
            ops: vec!["sum".into()],
            lines: vec![1],
        }],
        buffers,
        arena_bytes: 64 + rows * cols * 4,
        inputs: vec![BufferId(0)],
        params: Vec::new(),
        outputs: Vec::new(),
        options: PlanOptions::default(),
        unfused_fallback: false,
        notes: Vec::new(),
    }
}

fn good_body() -> (Vec<Inst>, Vec<Store>) {
    (
        vec![
            inst(InstOp::Load(0), Level::Element),
            inst(InstOp::Reduce(ReduceOp::Sum, 0), Level::Row),
            inst(InstOp::Binary(BinaryOp::Sub, 0, 1), Level::Element),
            inst(InstOp::Unary(UnaryOp::Exp, 1), Level::Row),
        ],
        vec![
            Store {
                inst: 3,
                buffer: BufferId(1),
                region: None,
            },
            Store {
                inst: 2,
                buffer: BufferId(2),
                region: None,
            },
        ],
    )
}

fn lowered(plan: &Plan) -> Result<KernelIr, Error> {
    let KernelKind::Fused(f) = &plan.kernels[0].kind else {
        unreachable!("a fused kernel")
    };
    lower::lower_fused(plan, "k0", f)
}

#[test]
fn a_well_formed_row_kernel_lowers_into_two_passes() {
    let (body, stores) = good_body();
    let ir = lowered(&row_plan(body, stores)).expect("lowers");
    lower::verify(&ir).expect("verifies");
    assert_eq!(ir.passes.len(), 2);
    assert_eq!(ir.passes[0].reduces, [ValueId(1)]);
    assert_eq!(ir.passes[0].elements, [ValueId(0)]);
    assert_eq!(ir.passes[1].row, [ValueId(3)]);
    assert_eq!(ir.passes[1].elements, [ValueId(0), ValueId(2)]);
    assert_eq!(ir.stores[0].order, Level::Row);
    assert_eq!(ir.stores[0].strides, [1, 0]);
    assert_eq!(ir.stores[1].strides, [64, 1]);
}

#[test]
fn a_row_inst_reading_an_element_inst_is_refused() {
    // exp of the element value x, called a row value: the row/element rule.
    let (mut body, stores) = good_body();
    body[3] = inst(InstOp::Unary(UnaryOp::Exp, 0), Level::Row);
    assert_eq!(
        lowered(&row_plan(body, stores)),
        Err(Error::RowReadsElement {
            kernel: "k0".into(),
            value: ValueId(3),
            operand: ValueId(0),
        })
    );
}

#[test]
fn schedule_errors_are_typed() {
    let (mut body, stores) = good_body();
    body[2] = inst(InstOp::Binary(BinaryOp::Sub, 0, 3), Level::Element);
    assert!(matches!(
        lowered(&row_plan(body, stores)),
        Err(Error::NotEarlier {
            value: ValueId(2),
            operand: ValueId(3),
            ..
        })
    ));
    let (mut body, stores) = good_body();
    body[1] = inst(InstOp::Reduce(ReduceOp::Sum, 0), Level::Element);
    assert!(matches!(
        lowered(&row_plan(body, stores)),
        Err(Error::ReduceNotRow {
            value: ValueId(1),
            ..
        })
    ));
    let (body, mut stores) = good_body();
    stores[0].inst = 9;
    assert!(matches!(
        lowered(&row_plan(body, stores)),
        Err(Error::Missing { .. })
    ));
}

#[test]
fn the_verifier_catches_bent_kernel_ir() {
    let (body, stores) = good_body();
    let ir = lowered(&row_plan(body, stores)).expect("lowers");
    let bent = |f: &dyn Fn(&mut KernelIr)| {
        let mut k = ir.clone();
        f(&mut k);
        lower::verify(&k)
    };
    // A row value reading an element value.
    assert!(matches!(
        bent(&|k| k.values[2].level = Level::Row),
        Err(Error::RowReadsElement { .. }) | Err(Error::Misplaced { .. })
    ));
    // The reduction's operand no longer computed in its pass.
    assert!(matches!(
        bent(&|k| k.passes[0].elements.clear()),
        Err(Error::NotComputed {
            pass: PassId(0),
            value: ValueId(0),
            ..
        })
    ));
    // A value available before the reduction it reads.
    assert!(matches!(
        bent(&|k| k.values[3].pass = PassId(0)),
        Err(Error::PassOrder {
            value: ValueId(3),
            ..
        })
    ));
    // A row store in pass 0, before its row value exists.
    assert!(matches!(
        bent(&|k| {
            k.stores[0].pass = PassId(0);
            k.passes[1].stores.retain(|s| s.0 != 0);
            k.passes[0].stores.push(lower::StoreId(0));
        }),
        Err(Error::BadStore { .. })
    ));
    // Merged axes that lose elements.
    assert!(matches!(
        bent(&|k| k.axes.sizes[0] = 4),
        Err(Error::MergedAxes { .. })
    ));
    // A row load moving along the row.
    assert!(matches!(
        bent(&|k| k.values[0].level = Level::Row),
        Err(Error::RowAccessMoves { .. })
    ));
}

/// `row_plan` with `x` in the arena and a store of `exp(x)` into `w`, computed in place of
/// `x` (the same bytes); with `also_z`, `z = x - sum(x)` is stored too (a second pass that
/// reads `x`). With `into_x`, the store writes `x` itself.
fn in_place_plan(also_z: bool, into_x: bool) -> Plan {
    let (mut body, mut stores) = good_body();
    body.push(inst(InstOp::Unary(UnaryOp::Exp, 0), Level::Element));
    let mut plan = row_plan(body, Vec::new());
    let bytes = plan.buffers[0].bytes;
    plan.buffers[0].kind = BufferKind::Arena;
    plan.buffers[0].offset = 4096;
    plan.inputs.clear();
    let mut w = buffer(
        "w",
        BufferKind::Arena,
        DType::F32,
        &plan.buffers[0].shape.clone(),
    );
    w.offset = 4096;
    w.in_place_of = Some(BufferId(0));
    plan.buffers.push(w);
    plan.arena_bytes = 4096 + bytes;
    if !also_z {
        stores.truncate(1);
    }
    stores.push(Store {
        inst: 4,
        buffer: BufferId(if into_x { 0 } else { 3 }),
        region: None,
    });
    let KernelKind::Fused(f) = &mut plan.kernels[0].kind else {
        unreachable!("a fused kernel")
    };
    f.stores = stores;
    plan
}

#[test]
fn an_element_store_in_place_of_its_input_is_written_in_the_first_pass_unless_a_later_pass_reads_it(
) {
    // Alone beside a row sum (a column sum's shape): written as the sum is taken, so the
    // elements are computed once (in the last pass, the walk would compute them again).
    // The verified kernel IR, and the pass of the store into buffer `b`.
    let pass_of = |also_z, into_x, b: u32| {
        let ir = lowered(&in_place_plan(also_z, into_x)).expect("lowers");
        lower::verify(&ir).expect("verifies");
        let s = ir.stores.iter().position(|s| s.buffer == BufferId(b));
        let pass = ir.stores[s.expect("the store")].pass;
        (ir, pass)
    };
    let (ir, pass) = pass_of(false, false, 3);
    assert_eq!(pass, PassId(0));
    assert!(ir.passes[1].elements.is_empty(), "{:?}", ir.passes[1]);
    // Beside `z = x - sum(x)`, whose pass reads `x` again: `w` over `x` in pass 0 would
    // change what pass 1 reads, so it waits for the last pass.
    assert_eq!(pass_of(true, false, 3).1, PassId(1));
    // The same into `x` itself: the last pass, and the verifier refuses it in pass 0.
    let (ir, pass) = pass_of(true, true, 0);
    assert_eq!(pass, PassId(1));
    let s = ir
        .stores
        .iter()
        .position(|s| s.buffer == BufferId(0))
        .expect("into x");
    let mut bent = ir.clone();
    let id = lower::StoreId::new(s);
    bent.passes[1].stores.retain(|&t| t != id);
    bent.passes[0].stores.push(id);
    bent.stores[s].pass = PassId(0);
    let v = bent.stores[s].value;
    bent.passes[0].elements.push(v);
    assert!(
        matches!(lower::verify(&bent), Err(Error::BadStore { .. })),
        "{:?}",
        lower::verify(&bent)
    );
}
