//! Programs and data for `take`'s gradient (`schedule::IndexAddKernel`), shared by
//! `tests/index_add.rs` (CPU, plan) and `tests/cuda/index_add.rs` (NVRTC, emulation): a
//! large table with heavily repeated indices, takes along a middle axis with a
//! two-dimensional (and a transposed) index, and a GPT block's training step.

use tc_compiler::ir::DType;
use tc_runtime::HostTensor;

/// A 5 000-row table read at 2 000 positions, most of them repeats: its gradient is one
/// index add of `w` (every position's row of the loss's gradient).
pub const LARGE: &str = "dim V = 5000\ndim N = 2000\ndim D = 8\n\
    input tokens : i64[N]\ninput w : f32[N, D]\nparam table : f32[V, D]\n\
    e = take(table, tokens, axis=0)\nloss = sum(e * w)\ng = grad(loss, table)\noutput loss, g\n";

/// `LARGE`'s index: position `p` reads row `(p · p) mod 97 · 51` for `p < 1500` (97 rows,
/// each read about 15 times, in no order), then `4999 - p mod 500`.
pub fn large_tokens() -> Vec<i64> {
    (0..2000i64)
        .map(|p| {
            if p < 1500 {
                (p * p) % 97 * 51
            } else {
                4999 - p % 500
            }
        })
        .collect()
}

/// `LARGE`'s data: the tokens, `w` and the table (seeded).
pub fn large_data(tokens: &[i64]) -> (Vec<HostTensor>, Vec<HostTensor>) {
    let w = tc_runtime::data::random_tensor(7, "w", DType::F32, &[2000, 8]);
    let table = tc_runtime::data::random_tensor(8, "table", DType::F32, &[5000, 8]);
    (
        vec![HostTensor::from_i64(DType::I64, vec![2000], tokens), w],
        vec![table],
    )
}

/// Takes along the middle axis of `x` by a `[5, 7]` index and by its transpose (a strided
/// view), with a broadcast gradient for one of them (`sum`).
pub const MIDDLE_AXIS: &str = "dim V = 11\n\
    input idx : i64[5, 7]\nparam x : f32[3, V, 4]\n\
    a = take(x, idx, axis=1)\nb = take(x * 2, transpose(idx), axis=1)\n\
    loss = sum(a * a) + sum(b)\ng = grad(loss, x)\noutput loss, g\n";

/// `examples/gpt_block.tx` as a training step: the gradients of both embedding tables
/// (and of the output projection, which shares `wte`).
pub fn gpt_training_step() -> String {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gpt_block.tx"),
    )
    .expect("examples/gpt_block.tx");
    let body = src.replace("output loss", "");
    format!("{body}g_wte = grad(loss, wte)\ng_wpe = grad(loss, wpe)\noutput loss, g_wte, g_wpe\n")
}

/// Small dims for running `gpt_training_step` (the plan test compiles it at full size).
pub fn gpt_small_dims() -> Vec<(String, u64)> {
    [
        ("B", 2),
        ("S", 16),
        ("P", 32),
        ("V", 300),
        ("D", 32),
        ("H", 2),
        ("Dh", 16),
        ("F", 64),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect()
}
