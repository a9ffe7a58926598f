//! Gradients against finite differences: every `grad` output of a program, evaluated by
//! the f64 oracle in exact arithmetic (`reference::evaluate_exact`), against central
//! differences of the same oracle's loss with each variable element nudged; and the
//! executors' gradients against the oracle's (`differential`, the emulation's tests).

use tc_compiler::ir::{Op, Output};
use tc_runtime::reference;
use tc_runtime::HostTensor;

/// At most this many elements of each variable are nudged (spread over the tensor).
const MAX_PROBES: usize = 16;

/// Checks every `grad` output of `source` (f32 variables) against central differences
/// of the exact oracle. Returns how many gradient elements were compared.
pub fn gradcheck(source: &str, dims: &[(String, u64)], seed: u64) -> Result<usize, String> {
    let checked = tc_compiler::check(source, dims).map_err(|d| {
        d.iter()
            .map(|d| format!("{}: {}", d.code(), d.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    // (an integer leaf used as an index gets values in range)
    let leaf = |l: &tc_compiler::ir::Leaf| tc_runtime::data::random_leaf(&checked, l, seed);
    let inputs: Vec<HostTensor> = checked.inputs.iter().map(leaf).collect();
    let params: Vec<HostTensor> = checked.params.iter().map(leaf).collect();
    let exact = reference::evaluate_exact(&checked, &inputs, &params)?;
    let mut compared = 0;
    for (k, out) in checked.outputs.iter().enumerate() {
        let Some(gof) = checked.grads.iter().find(|g| g.grad == out.node) else {
            continue;
        };
        let analytic = &exact[k].values;
        let mut loss_only = checked.clone();
        loss_only.outputs = vec![Output {
            name: "loss".into(),
            node: gof.loss,
            span: out.span.clone(),
        }];
        let (is_input, index) = match checked.node(gof.wrt).op {
            Op::Input { index } => (true, index),
            Op::Param { index } => (false, index),
            _ => return Err(format!("{}: not a variable", out.name)),
        };
        let base = if is_input {
            &inputs[index]
        } else {
            &params[index]
        };
        let values = base.to_f32();
        let n = values.len();
        let scale = analytic
            .iter()
            .filter(|v| v.is_finite())
            .fold(1e-3f64, |m, v| m.max(v.abs()));
        let step = n.div_ceil(MAX_PROBES).max(1);
        for i in (0..n).step_by(step) {
            let x = values[i];
            let h = 1e-6f32 * x.abs().max(1.0);
            let loss_at = |v: f32| -> Result<f64, String> {
                let mut vals = values.clone();
                vals[i] = v;
                let t = HostTensor::from_f32(base.dtype, base.shape.clone(), &vals);
                let (mut ins, mut ps) = (inputs.clone(), params.clone());
                if is_input {
                    ins[index] = t;
                } else {
                    ps[index] = t;
                }
                Ok(reference::evaluate_exact(&loss_only, &ins, &ps)?[0].values[0])
            };
            let (xp, xm) = (x + h, x - h);
            let fd = (loss_at(xp)? - loss_at(xm)?) / (f64::from(xp) - f64::from(xm));
            let an = analytic[i];
            let ok = (fd - an).abs() <= 1e-5 * scale + 1e-4 * an.abs();
            if !ok {
                return Err(format!(
                    "{} element {i}: analytic {an}, finite difference {fd} (scale {scale:.3e})",
                    out.name
                ));
            }
            compared += 1;
        }
    }
    Ok(compared)
}

/// One op per entry: (label, declarations, the expression `v` of `x`, `y`, …). The loss is
/// `sum(tanh(v) * 1.5)`, differentiated against every declared leaf.
pub const OPS: &[(&str, &str, &str)] = &[
    ("neg", "", "-x"),
    ("abs", "", "abs(x)"),
    ("exp", "", "exp(x)"),
    ("log", "", "log(x * x + 0.5)"),
    ("sqrt", "", "sqrt(x * x + 0.5)"),
    ("rsqrt", "", "rsqrt(x * x + 0.5)"),
    ("sin", "", "sin(x)"),
    ("cos", "", "cos(x)"),
    ("tanh", "", "tanh(x)"),
    ("sigmoid", "", "sigmoid(x)"),
    ("relu", "", "relu(x)"),
    ("gelu", "", "gelu(x)"),
    ("silu", "", "silu(x)"),
    ("erf", "", "erf(x)"),
    ("square", "", "square(x)"),
    ("add", "input y : f32[3, 4]", "x + y"),
    ("sub", "input y : f32[3, 4]", "x - y"),
    ("mul", "input y : f32[3, 4]", "x * y"),
    ("div", "input y : f32[3, 4]", "x / (y * y + 0.5)"),
    ("pow_const", "", "(x * x + 0.5) ** 1.5"),
    ("pow_int", "", "x ** 3"),
    ("pow_zero", "", "x ** 0 + x"),
    ("pow_tensor", "input y : f32[3, 4]", "(x * x + 0.5) ** y"),
    ("maximum", "input y : f32[3, 4]", "maximum(x, y)"),
    ("minimum", "input y : f32[3, 4]", "minimum(x, y)"),
    ("broadcast_row", "param b : f32[4]", "x + b"),
    ("broadcast_col", "param c : f32[3, 1]", "x * c"),
    ("broadcast_scalar", "param s : f32[]", "x * s - s"),
    ("sum_axis", "", "sum(x, axis=0)"),
    ("sum_keepdim", "", "x * sum(x, axis=1, keepdim=true)"),
    ("sum_all", "", "sum(x) * x"),
    ("mean", "", "mean(x, axis=-1)"),
    ("mean_all", "", "x - mean(x)"),
    ("max_axis", "", "max(x, axis=1)"),
    ("min_axis", "", "min(x, axis=0, keepdim=true) * x"),
    ("max_all", "", "max(x)"),
    ("softmax", "", "softmax(x, axis=-1)"),
    ("softmax_axis0", "", "softmax(x, axis=0)"),
    ("log_softmax", "", "log_softmax(x, axis=-1)"),
    ("layernorm", "", "layernorm(x, axis=-1)"),
    ("layernorm_axis0", "", "layernorm(x, axis=0, eps=0.1)"),
    ("rmsnorm", "", "rmsnorm(x, axis=-1)"),
    ("matmul", "param w : f32[4, 5]", "x @ w"),
    (
        "matmul_batched",
        "input a : f32[2, 3, 4]\nparam w : f32[4, 5]",
        "a @ w + sum(x)",
    ),
    ("transpose", "input y : f32[4, 3]", "transpose(x) * y"),
    (
        "permute",
        "input a : f32[2, 3, 4]",
        "permute(a, [2, 0, 1]) * sum(x)",
    ),
    ("reshape", "", "reshape(x, [2, 6]) * reshape(x, [2, 6])"),
    (
        "reshape_copy",
        "",
        "reshape(transpose(x), [12]) * reshape(x, [12])",
    ),
    ("expand", "param b : f32[4]", "expand(b, [2, 3, 4]) * x"),
    ("cast_f16", "", "f32(f16(x)) * x"),
    ("cast_bf16", "", "bf16(x * 2)"),
    ("log1p", "", "log1p(x * x)"),
    ("expm1", "", "expm1(x)"),
    ("floor", "", "floor(x * 3) * x"),
    ("ceil", "", "ceil(x) + x"),
    ("round", "", "round(x * 2) * x"),
    ("sign", "", "sign(x) * x"),
    ("reciprocal", "", "reciprocal(x * x + 0.5)"),
    ("tan", "", "tan(tanh(x))"),
    ("softplus", "", "softplus(x * 12)"),
    ("gelu_tanh", "", "gelu_tanh(x * 2)"),
    ("leaky_relu", "", "leaky_relu(x, slope=0.2)"),
    ("leaky_relu_default", "", "leaky_relu(x * 2)"),
    ("clamp", "", "clamp(x, min=-0.5, max=0.7)"),
    ("clamp_min", "", "clamp(x, min=0.1) * x"),
    ("clamp_max", "", "clamp(x * 2, max=-0.3)"),
    ("var", "", "var(x, axis=-1)"),
    ("var_all", "", "var(x, correction=0) * x"),
    ("std", "", "std(x, axis=0, keepdim=true) * x"),
    (
        "std_list",
        "input a : f32[2, 3, 4]",
        "std(a, axis=[0, 2]) + sum(x)",
    ),
    ("logsumexp", "", "logsumexp(x, axis=-1)"),
    (
        "logsumexp_keepdim",
        "",
        "x - logsumexp(x, axis=0, keepdim=true)",
    ),
    ("logsumexp_all", "", "logsumexp(x * 3) - x"),
    // take/gather: the gradient added back into the rows read (indices repeat: 6 or 8
    // reads of 3 or 4 rows).
    ("take_rows", "input i : i64[2, 3]", "take(x, i, axis=0) * 2"),
    ("take_cols", "input j : i32[5]", "take(x, j, axis=1)"),
    ("take_scalar", "input k : i64[]", "take(x, k, axis=0) + x"),
    (
        "gather_labels",
        "input l : i64[3, 1]",
        "gather(log_softmax(x, axis=-1), l, axis=-1) + x",
    ),
    (
        "gather_rows",
        "input m : i64[5, 4]",
        "reshape(gather(x, m, axis=0), [4, 5]) * 3",
    ),
    (
        "gather_broadcast",
        "param b : f32[1, 4]\ninput n : i64[3, 2]",
        "gather(b, n, axis=1) + sum(x)",
    ),
    // cumsum: the reversed cumulative sum; concat/stack: slices of the gradient; slices:
    // the gradient padded with zeros (steps, integer indices, several axes).
    ("cumsum", "", "cumsum(x, axis=1) * x"),
    ("cumsum_axis0", "", "cumsum(x * x, axis=0)"),
    (
        "concat",
        "param y : f32[2, 4]",
        "concat([x, y, x * 2], axis=0)",
    ),
    (
        "concat_last",
        "input y : f32[3, 2]",
        "concat([y, x], axis=-1)",
    ),
    ("stack", "input y : f32[3, 4]", "stack([x, y], axis=1)"),
    ("slice_rows", "", "x[1:] * 2"),
    ("slice_step", "", "x[:, 1::2] + x[:, ::3]"),
    ("slice_index", "", "x[1, 0:2] * x[-1, 1:3]"),
    ("slice_both", "", "x[0:2, 1:3] * 3"),
    (
        "squeeze",
        "param s : f32[3, 1]",
        "x * unsqueeze(squeeze(s, axis=1), axis=1)",
    ),
    (
        "transpose_axes",
        "input a : f32[4, 2, 3]",
        "transpose(a, 0, 2) + sum(x)",
    ),
];

/// The training step of one `OPS` entry.
pub fn op_program(decls: &str, expr: &str) -> String {
    let mut leaves = vec!["x".to_string()];
    for line in decls.lines() {
        // (integer leaves, indices, carry no gradient)
        let float = line.contains(": f");
        if let Some(name) = line.split_whitespace().nth(1).filter(|_| float) {
            leaves.push(name.to_string());
        }
    }
    let mut s = format!("input x : f32[3, 4]\n{decls}\nv = {expr}\nloss = sum(tanh(v) * 1.5)\n");
    let mut outs = vec!["loss".to_string()];
    for l in &leaves {
        s.push_str(&format!("g_{l} = grad(loss, {l})\n"));
        outs.push(format!("g_{l}"));
    }
    s.push_str(&format!("output {}\n", outs.join(", ")));
    s
}
