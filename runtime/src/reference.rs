//! The reference evaluator: every node of the checked graph materialised in f64 and rounded
//! to its dtype as it is stored, built-ins (softmax, layernorm, …) evaluated directly.
//! Written for clarity, not speed: the oracle the differential tests compare against.
//! Scalar maths, reductions and rounding are `ir::eval`'s, the meaning the constant folder
//! uses too; shapes broadcast by `ir::broadcast`. Test support only (the `test-support`
//! feature): the `tc` binary does not contain it.

use crate::tensor::HostTensor;
use tc_compiler::ir::eval::{self, Value};
use tc_compiler::ir::{DType, Graph, Op, ReduceOp, ViewOp};

/// A materialised value: row-major f64 values, each exactly representable in `dtype`; for
/// an integer or `bool` dtype also `ints`, the exact values (`values` then holds them as
/// f64, exact up to 2^53).
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor {
    pub shape: Vec<u64>,
    pub values: Vec<f64>,
    /// The exact values of an integral dtype; empty for a float dtype.
    pub ints: Vec<i64>,
    pub dtype: DType,
}

impl RefTensor {
    /// Element `i` as a scalar of its dtype.
    fn at(&self, i: usize) -> Value {
        if self.dtype.is_integral() {
            Value::Int(self.ints[i])
        } else {
            Value::Float(self.values[i])
        }
    }

    /// Every element as a scalar of its dtype.
    fn vals(&self) -> Vec<Value> {
        (0..self.values.len()).map(|i| self.at(i)).collect()
    }
}

/// Evaluates `graph` and returns its outputs in `graph.outputs` order.
pub fn evaluate(
    graph: &Graph,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<Vec<RefTensor>, String> {
    evaluate_with(graph, inputs, params, true)
}

/// `evaluate` in exact f64: no value is rounded to its dtype (casts included), so the
/// program is a smooth function of its inputs wherever its maths is; what the gradient
/// tests take finite differences of.
pub fn evaluate_exact(
    graph: &Graph,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<Vec<RefTensor>, String> {
    evaluate_with(graph, inputs, params, false)
}

fn evaluate_with(
    graph: &Graph,
    inputs: &[HostTensor],
    params: &[HostTensor],
    rounding: bool,
) -> Result<Vec<RefTensor>, String> {
    let mut vals: Vec<RefTensor> = Vec::with_capacity(graph.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let shape = node.ty.sizes();
        let dtype = node.ty.dtype;
        let get = |o: tc_compiler::ir::NodeId| &vals[o.index()];
        let floats = |(s, v): (Vec<u64>, Vec<f64>)| (s, v.into_iter().map(Value::Float).collect());
        let (out_shape, values): (Vec<u64>, Vec<Value>) = match &node.op {
            Op::Input { index } | Op::Param { index } => {
                let (what, list) = if matches!(node.op, Op::Input { .. }) {
                    ("input", inputs)
                } else {
                    ("param", params)
                };
                let t = list
                    .get(*index)
                    .ok_or_else(|| format!("{what} {index} was not supplied"))?;
                if t.dtype != dtype || t.shape != shape {
                    return Err(format!(
                        "{what} {} is {}{:?} but was given {}{:?}",
                        graph.display_name(id),
                        dtype,
                        shape,
                        t.dtype,
                        t.shape
                    ));
                }
                let v = if dtype.is_integral() {
                    t.to_i64().into_iter().map(Value::Int).collect()
                } else {
                    t.to_f32()
                        .into_iter()
                        .map(|x| Value::Float(f64::from(x)))
                        .collect()
                };
                (shape.clone(), v)
            }
            Op::Scalar(v) => (vec![], vec![Value::constant(dtype, *v)]),
            Op::Concat { args, axis } => {
                // Row-major: for each index of the axes before `axis`, every operand's run.
                let outer: u64 = shape[..*axis].iter().product();
                let mut v = Vec::with_capacity(numel(&shape));
                for o in 0..outer as usize {
                    for a in args {
                        let t = get(*a);
                        let run = t.shape[*axis..].iter().product::<u64>() as usize;
                        v.extend((o * run..(o + 1) * run).map(|i| t.at(i)));
                    }
                }
                (shape.clone(), v)
            }
            Op::Unary(op, a) => {
                let a = get(*a);
                (
                    a.shape.clone(),
                    a.vals()
                        .into_iter()
                        .map(|x| match x {
                            Value::Float(f) if !rounding => Value::Float(eval::unary(*op, f)),
                            x => eval::unary_value(*op, a.dtype, x),
                        })
                        .collect(),
                )
            }
            Op::Binary(op, a, b) => {
                let (a, b) = (get(*a), get(*b));
                let s = broadcast_shape(&a.shape, &b.shape)?;
                let n = numel(&s);
                let v = (0..n)
                    .map(|i| {
                        let idx = unravel(i, &s);
                        let (x, y) = (
                            a.at(broadcast_index(&idx, &a.shape)),
                            b.at(broadcast_index(&idx, &b.shape)),
                        );
                        match (x, y) {
                            (Value::Float(p), Value::Float(q)) if !rounding && !op.is_cmp() => {
                                Value::Float(eval::binary(*op, p, q))
                            }
                            (x, y) => eval::binary_value(*op, a.dtype, x, y),
                        }
                    })
                    .collect();
                (s, v)
            }
            Op::Where(c, a, b) => {
                let (c, a, b) = (get(*c), get(*a), get(*b));
                let s = broadcast_shape(&c.shape, &broadcast_shape(&a.shape, &b.shape)?)?;
                let v = (0..numel(&s))
                    .map(|i| {
                        let idx = unravel(i, &s);
                        eval::select(
                            c.at(broadcast_index(&idx, &c.shape)),
                            a.at(broadcast_index(&idx, &a.shape)),
                            b.at(broadcast_index(&idx, &b.shape)),
                        )
                    })
                    .collect();
                (s, v)
            }
            Op::Reduce {
                op,
                arg,
                axes,
                keepdim,
            } if op.is_arg() => arg_reduce(get(*arg), *op, axes, *keepdim)?,
            Op::Reduce {
                op,
                arg,
                axes,
                keepdim,
            } => reduce(get(*arg), *op, axes, *keepdim)?,
            Op::Arange => (
                shape.clone(),
                (0..shape[0]).map(|i| Value::Int(i as i64)).collect(),
            ),
            Op::Take { arg, index, axis } => {
                take(get(*arg), get(*index), *axis, &index_name(graph, *index))?
            }
            Op::Gather { arg, index, axis } => {
                gather_along(get(*arg), get(*index), *axis, &index_name(graph, *index))?
            }
            Op::OneHot { arg, classes } => one_hot(get(*arg), *classes, &index_name(graph, *arg))?,
            Op::Cumsum { arg, axis } => cumsum(get(*arg), *axis)?,
            Op::IndexAdd {
                grad,
                index,
                axis,
                size,
            } => floats(index_add(
                get(*grad),
                get(*index),
                *axis,
                *size,
                &index_name(graph, *index),
            )?),
            Op::Softmax { arg, axis, log } => {
                let log = *log;
                floats(along_axis(get(*arg), *axis, |line| {
                    let m = eval::reduce(ReduceOp::Max, line.iter().copied());
                    let s: f64 = line.iter().map(|&x| (x - m).exp()).sum();
                    line.iter()
                        .map(|&x| {
                            if log {
                                x - m - s.ln()
                            } else {
                                (x - m).exp() / s
                            }
                        })
                        .collect()
                })?)
            }
            Op::LayerNorm { arg, axis, eps } => floats(along_axis(get(*arg), *axis, |line| {
                let n = line.len() as f64;
                let mean = line.iter().sum::<f64>() / n;
                let var = line.iter().map(|&x| (x - mean) * (x - mean)).sum::<f64>() / n;
                line.iter()
                    .map(|&x| (x - mean) / (var + eps).sqrt())
                    .collect()
            })?),
            Op::RmsNorm { arg, axis, eps } => floats(along_axis(get(*arg), *axis, |line| {
                let ms = line.iter().map(|&x| x * x).sum::<f64>() / line.len() as f64;
                line.iter().map(|&x| x / (ms + eps).sqrt()).collect()
            })?),
            Op::Clamp { arg, min, max } => {
                let a = get(*arg);
                let bound = |b: &Option<f64>| b.map(|v| Value::constant(a.dtype, v));
                let (lo, hi) = (bound(min), bound(max));
                (
                    a.shape.clone(),
                    a.vals()
                        .into_iter()
                        .map(|x| clamp(a.dtype, x, lo, hi, rounding))
                        .collect(),
                )
            }
            Op::LeakyRelu { arg, slope } => {
                let a = get(*arg);
                (
                    a.shape.clone(),
                    a.values
                        .iter()
                        .map(|&x| Value::Float(if x > 0.0 { x } else { x * slope }))
                        .collect(),
                )
            }
            Op::Var {
                arg,
                axes,
                keepdim,
                correction,
                sqrt,
            } => {
                let (correction, sqrt) = (*correction, *sqrt);
                floats(over_lines(get(*arg), axes, *keepdim, |line| {
                    let n = line.len() as f64;
                    let mean = line.iter().sum::<f64>() / n;
                    let m2: f64 = line.iter().map(|&x| (x - mean) * (x - mean)).sum();
                    let var = m2 / (n - correction).max(0.0);
                    if sqrt {
                        var.sqrt()
                    } else {
                        var
                    }
                })?)
            }
            Op::LogSumExp { arg, axes, keepdim } => {
                floats(over_lines(get(*arg), axes, *keepdim, |line| {
                    let m = eval::reduce(ReduceOp::Max, line.iter().copied());
                    let m = if m.is_infinite() { 0.0 } else { m };
                    line.iter().map(|&x| (x - m).exp()).sum::<f64>().ln() + m
                })?)
            }
            Op::MatMul(a, b) => floats(matmul(get(*a), get(*b))?),
            Op::Cast { arg, .. } => {
                let a = get(*arg);
                (
                    a.shape.clone(),
                    a.vals()
                        .into_iter()
                        .map(|x| match x {
                            Value::Float(f) if !rounding && dtype.is_float() => Value::Float(f),
                            x => eval::cast(dtype, x),
                        })
                        .collect(),
                )
            }
            Op::Copy(a) => {
                let a = get(*a);
                (a.shape.clone(), a.vals())
            }
            Op::View(view, a) => {
                let a = get(*a);
                let (s, pos) = view_positions(view, a, &shape)?;
                (s, pos.into_iter().map(|p| a.at(p)).collect())
            }
        };
        if out_shape != shape {
            return Err(format!(
                "node {} ({}) computes shape {:?} but its type says {:?}",
                graph.display_name(id),
                node.op.name(),
                out_shape,
                shape
            ));
        }
        // Stored: rounded (or wrapped) to the node's dtype; exact floats stay as computed.
        let stored: Vec<Value> = values
            .into_iter()
            .map(|v| {
                if rounding || dtype.is_integral() {
                    eval::cast(dtype, v)
                } else {
                    Value::Float(v.as_f64())
                }
            })
            .collect();
        let ints = if dtype.is_integral() {
            stored.iter().map(|v| v.as_i64()).collect()
        } else {
            Vec::new()
        };
        vals.push(RefTensor {
            shape,
            values: stored.iter().map(|v| v.as_f64()).collect(),
            ints,
            dtype,
        });
    }
    graph
        .outputs
        .iter()
        .map(|o| {
            vals.get(o.node.index())
                .cloned()
                .ok_or_else(|| format!("output {} has no node", o.name))
        })
        .collect()
}

/// Rounds an f64 to the nearest value of `dtype` (ties to even), as f64.
pub fn round(dtype: DType, v: f64) -> f64 {
    eval::round(dtype, v)
}

fn numel(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

/// The multi-index of row-major position `i` in `shape`.
fn unravel(mut i: usize, shape: &[u64]) -> Vec<usize> {
    let mut idx = vec![0usize; shape.len()];
    for d in (0..shape.len()).rev() {
        let s = shape[d] as usize;
        idx[d] = i % s;
        i /= s;
    }
    idx
}

/// The row-major position of `idx` in `shape`.
fn ravel(idx: &[usize], shape: &[u64]) -> usize {
    idx.iter()
        .zip(shape)
        .fold(0, |acc, (&i, &s)| acc * s as usize + i)
}

/// NumPy's broadcast of two shapes (`ir::broadcast`), as an error when they do not.
fn broadcast_shape(a: &[u64], b: &[u64]) -> Result<Vec<u64>, String> {
    tc_compiler::ir::broadcast(a, b)
        .ok_or_else(|| format!("shapes {a:?} and {b:?} do not broadcast"))
}

/// The position in a tensor of `shape` that broadcast index `idx` (of a larger rank) reads.
fn broadcast_index(idx: &[usize], shape: &[u64]) -> usize {
    let lead = idx.len() - shape.len();
    let own: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(k, &s)| if s == 1 { 0 } else { idx[lead + k] })
        .collect();
    ravel(&own, shape)
}

fn reduce(
    a: &RefTensor,
    op: ReduceOp,
    axes: &[usize],
    keepdim: bool,
) -> Result<(Vec<u64>, Vec<Value>), String> {
    if axes.iter().any(|&x| x >= a.shape.len()) {
        return Err(format!(
            "reduce axes {axes:?} out of range for {:?}",
            a.shape
        ));
    }
    let kept: Vec<u64> = a
        .shape
        .iter()
        .enumerate()
        .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
        .collect();
    let count: usize = axes.iter().map(|&d| a.shape[d] as usize).product();
    let n = numel(&kept);
    let target = |i: usize| {
        let mut idx = unravel(i, &a.shape);
        for &d in axes {
            idx[d] = 0;
        }
        ravel(&idx, &kept)
    };
    let acc: Vec<Value> = if a.dtype.is_integral() {
        let mut acc = vec![eval::reduce_init_int(op, a.dtype); n];
        for (i, &x) in a.ints.iter().enumerate() {
            let j = target(i);
            acc[j] = eval::reduce_step_int(op, a.dtype, acc[j], x);
        }
        acc.into_iter().map(Value::Int).collect()
    } else {
        let mut acc = vec![eval::reduce_init(op); n];
        for (i, &x) in a.values.iter().enumerate() {
            let j = target(i);
            acc[j] = eval::reduce_step(op, acc[j], x);
        }
        acc.into_iter()
            .map(|v| Value::Float(eval::reduce_finish(op, v, count as u64)))
            .collect()
    };
    let shape = if keepdim {
        kept
    } else {
        a.shape
            .iter()
            .enumerate()
            .filter(|(d, _)| !axes.contains(d))
            .map(|(_, &s)| s)
            .collect()
    };
    Ok((shape, acc))
}

/// `clamp(x, lo, hi)`: `minimum(hi, maximum(lo, x))` in `dtype` (NaN stays NaN); floats
/// are not rounded unless `rounding` (`evaluate_exact` keeps them as computed).
fn clamp(dtype: DType, x: Value, lo: Option<Value>, hi: Option<Value>, rounding: bool) -> Value {
    use tc_compiler::ir::BinaryOp;
    let op = |op: BinaryOp, c: Value, x: Value| match (c, x) {
        (Value::Float(c), Value::Float(x)) if !rounding => Value::Float(eval::binary(op, c, x)),
        (c, x) => eval::binary_value(op, dtype, c, x),
    };
    let x = match lo {
        Some(lo) => op(BinaryOp::Maximum, lo, x),
        None => x,
    };
    match hi {
        Some(hi) => op(BinaryOp::Minimum, hi, x),
        None => x,
    }
}

/// `f` of each line over `axes` (its elements in row-major order over the reduced axes),
/// as a reduction's result (`keepdim` as for `reduce`); no axes: `f` of each element.
fn over_lines<T>(
    a: &RefTensor,
    axes: &[usize],
    keepdim: bool,
    f: impl Fn(&[f64]) -> T,
) -> Result<(Vec<u64>, Vec<T>), String> {
    if axes.iter().any(|&x| x >= a.shape.len()) {
        return Err(format!("axes {axes:?} out of range for {:?}", a.shape));
    }
    let kept: Vec<u64> = a
        .shape
        .iter()
        .enumerate()
        .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
        .collect();
    let mut lines: Vec<Vec<f64>> = vec![Vec::new(); numel(&kept)];
    for (i, &x) in a.values.iter().enumerate() {
        let mut idx = unravel(i, &a.shape);
        for &d in axes {
            idx[d] = 0;
        }
        lines[ravel(&idx, &kept)].push(x);
    }
    let shape = if keepdim {
        kept
    } else {
        a.shape
            .iter()
            .enumerate()
            .filter(|(d, _)| !axes.contains(d))
            .map(|(_, &s)| s)
            .collect()
    };
    Ok((shape, lines.iter().map(|l| f(l)).collect()))
}

/// `argmax`/`argmin` over `axes`: the row-major position within the reduced axes of
/// the first extreme element (`eval::arg_reduce`: NaN counts as the extreme).
fn arg_reduce(
    a: &RefTensor,
    op: ReduceOp,
    axes: &[usize],
    keepdim: bool,
) -> Result<(Vec<u64>, Vec<Value>), String> {
    over_lines(a, axes, keepdim, |line| {
        Value::Int(eval::arg_reduce(op == ReduceOp::ArgMax, line.iter().copied()) as i64)
    })
}

/// `cumsum` along `axis`: floats in f64 (rounded to the dtype when stored), integers
/// exactly, wrapping in 64 bits.
fn cumsum(a: &RefTensor, axis: usize) -> Result<(Vec<u64>, Vec<Value>), String> {
    if axis >= a.shape.len() {
        return Err(format!("cumsum axis {axis} out of range for {:?}", a.shape));
    }
    let mut out = vec![Value::Int(0); a.values.len()];
    let mut outer = a.shape.clone();
    outer[axis] = 1;
    for o in 0..numel(&outer) {
        let mut idx = unravel(o, &outer);
        let (mut f, mut n) = (0.0f64, 0i64);
        for k in 0..a.shape[axis] as usize {
            idx[axis] = k;
            let p = ravel(&idx, &a.shape);
            out[p] = match a.at(p) {
                Value::Float(x) => {
                    f += x;
                    Value::Float(f)
                }
                Value::Int(x) => {
                    n = n.wrapping_add(x);
                    Value::Int(n)
                }
            };
        }
    }
    Ok((a.shape.clone(), out))
}

/// The name an out-of-range index is reported under.
fn index_name(graph: &Graph, id: tc_compiler::ir::NodeId) -> String {
    graph.display_name(id)
}

/// An index value checked against `size`, as a position.
fn checked_index(v: Value, size: u64, what: &str) -> Result<usize, String> {
    let v = v.as_i64();
    if v >= 0 && (v as u64) < size {
        Ok(v as usize)
    } else {
        Err(format!("index {v} of {what} is out of range [0, {size})"))
    }
}

/// `take`'s gradient: `grad` (`pre ++ idx.shape ++ post`) added into `size` rows along
/// `axis` at the rows `idx` names, each sum in ascending position order.
fn index_add(
    g: &RefTensor,
    idx: &RefTensor,
    axis: usize,
    size: u64,
    what: &str,
) -> Result<(Vec<u64>, Vec<f64>), String> {
    let ni = idx.shape.len();
    let pre = &g.shape[..axis];
    let post = &g.shape[axis + ni..];
    let mut shape = pre.to_vec();
    shape.push(size);
    shape.extend_from_slice(post);
    let (a_n, c_n, n) = (numel(pre), numel(post), numel(&idx.shape));
    let mut out = vec![0.0f64; numel(&shape)];
    for p in 0..n {
        let v = checked_index(idx.at(p), size, what)?;
        for a in 0..a_n {
            for c in 0..c_n {
                out[(a * size as usize + v) * c_n + c] += g.values[(a * n + p) * c_n + c];
            }
        }
    }
    Ok((shape, out))
}

/// `numpy.take(x, idx, axis)`.
fn take(
    x: &RefTensor,
    idx: &RefTensor,
    axis: usize,
    what: &str,
) -> Result<(Vec<u64>, Vec<Value>), String> {
    let pre = &x.shape[..axis];
    let post = &x.shape[axis + 1..];
    let mut shape = pre.to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(post);
    let (np, ni) = (pre.len(), idx.shape.len());
    let mut values = Vec::with_capacity(numel(&shape));
    for i in 0..numel(&shape) {
        let o = unravel(i, &shape);
        let k = checked_index(
            idx.at(ravel(&o[np..np + ni], &idx.shape)),
            x.shape[axis],
            what,
        )?;
        let mut src: Vec<usize> = o[..np].to_vec();
        src.push(k);
        src.extend_from_slice(&o[np + ni..]);
        values.push(x.at(ravel(&src, &x.shape)));
    }
    Ok((shape, values))
}

/// `numpy.take_along_axis(x, idx, axis)` with the other axes broadcast.
fn gather_along(
    x: &RefTensor,
    idx: &RefTensor,
    axis: usize,
    what: &str,
) -> Result<(Vec<u64>, Vec<Value>), String> {
    if x.shape.len() != idx.shape.len() || axis >= x.shape.len() {
        return Err(format!("gather of {:?} by {:?}", x.shape, idx.shape));
    }
    let shape: Vec<u64> = (0..x.shape.len())
        .map(|d| {
            if d == axis {
                idx.shape[d]
            } else {
                x.shape[d].max(idx.shape[d])
            }
        })
        .collect();
    let mut values = Vec::with_capacity(numel(&shape));
    for i in 0..numel(&shape) {
        let o = unravel(i, &shape);
        let k = checked_index(idx.at(broadcast_index(&o, &idx.shape)), x.shape[axis], what)?;
        let mut src = o.clone();
        src[axis] = k;
        values.push(x.at(broadcast_index(&src, &x.shape)));
    }
    Ok((shape, values))
}

/// `torch.nn.functional.one_hot(idx, classes)`.
fn one_hot(idx: &RefTensor, classes: u64, what: &str) -> Result<(Vec<u64>, Vec<Value>), String> {
    let mut shape = idx.shape.clone();
    shape.push(classes);
    let mut values = Vec::with_capacity(numel(&shape));
    for i in 0..idx.values.len() {
        let k = checked_index(idx.at(i), classes, what)?;
        values.extend((0..classes as usize).map(|c| Value::Int(i64::from(c == k))));
    }
    Ok((shape, values))
}

/// Applies `f` to every line of `a` along `axis`.
fn along_axis(
    a: &RefTensor,
    axis: usize,
    f: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<(Vec<u64>, Vec<f64>), String> {
    if axis >= a.shape.len() {
        return Err(format!("axis {axis} out of range for {:?}", a.shape));
    }
    let len = a.shape[axis] as usize;
    let mut out = vec![0.0; a.values.len()];
    let mut outer = a.shape.clone();
    outer[axis] = 1;
    for o in 0..numel(&outer) {
        let mut idx = unravel(o, &outer);
        let positions: Vec<usize> = (0..len)
            .map(|k| {
                idx[axis] = k;
                ravel(&idx, &a.shape)
            })
            .collect();
        let line: Vec<f64> = positions.iter().map(|&p| a.values[p]).collect();
        for (p, v) in positions.iter().zip(f(&line)) {
            out[*p] = v;
        }
    }
    Ok((a.shape.clone(), out))
}

fn matmul(a: &RefTensor, b: &RefTensor) -> Result<(Vec<u64>, Vec<f64>), String> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 || a.shape[ra - 1] != b.shape[rb - 2] {
        return Err(format!("matmul of {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = Vec::with_capacity(numel(&shape));
    for bi in 0..numel(&batch) {
        let bidx = unravel(bi, &batch);
        let a0 = broadcast_index(&bidx, &a.shape[..ra - 2]) * (m * k) as usize;
        let b0 = broadcast_index(&bidx, &b.shape[..rb - 2]) * (k * n) as usize;
        for i in 0..m as usize {
            for j in 0..n as usize {
                let s: f64 = (0..k as usize)
                    .map(|l| a.values[a0 + i * k as usize + l] * b.values[b0 + l * n as usize + j])
                    .sum();
                out.push(s);
            }
        }
    }
    Ok((shape, out))
}

/// The shape of a view of `a` and, per element of it, the position in `a` it reads.
fn view_positions(
    view: &ViewOp,
    a: &RefTensor,
    shape: &[u64],
) -> Result<(Vec<u64>, Vec<usize>), String> {
    let r = a.shape.len();
    let gather = |out_shape: Vec<u64>, src: &dyn Fn(&[usize]) -> usize| {
        let v = (0..numel(&out_shape))
            .map(|i| src(&unravel(i, &out_shape)))
            .collect();
        (out_shape, v)
    };
    match view {
        ViewOp::Transpose => {
            if r < 2 {
                return Err(format!("transpose of rank {r}"));
            }
            let mut s = a.shape.clone();
            s.swap(r - 1, r - 2);
            Ok(gather(s, &|idx| {
                let mut i = idx.to_vec();
                i.swap(r - 1, r - 2);
                ravel(&i, &a.shape)
            }))
        }
        ViewOp::Permute(perm) => {
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..r).collect::<Vec<_>>() {
                return Err(format!("permutation {perm:?} of rank {r}"));
            }
            let s: Vec<u64> = perm.iter().map(|&p| a.shape[p]).collect();
            Ok(gather(s, &|idx| {
                // Result axis i is operand axis perm[i].
                let mut i = vec![0usize; r];
                for (k, &p) in perm.iter().enumerate() {
                    i[p] = idx[k];
                }
                ravel(&i, &a.shape)
            }))
        }
        ViewOp::Reshape => {
            if numel(shape) != a.values.len() {
                return Err(format!("reshape of {:?} to {shape:?}", a.shape));
            }
            Ok((shape.to_vec(), (0..a.values.len()).collect()))
        }
        ViewOp::Slice(axes) => {
            if axes.len() != r {
                return Err(format!("slice of {} axes of rank {r}", axes.len()));
            }
            Ok(gather(shape.to_vec(), &|idx| {
                let mut kept = idx.iter();
                let i: Vec<usize> = axes
                    .iter()
                    .map(|ax| {
                        let k = if ax.keep {
                            *kept.next().unwrap_or(&0)
                        } else {
                            0
                        };
                        (ax.start + k as u64 * ax.step) as usize
                    })
                    .collect();
                ravel(&i, &a.shape)
            }))
        }
        ViewOp::Expand { .. } => {
            broadcast_shape(&a.shape, shape)?;
            Ok(gather(shape.to_vec(), &|idx| {
                broadcast_index(idx, &a.shape)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use tc_compiler::ir::{BinaryOp, Dim, Leaf, Node, NodeId, Origin, Output, TensorType, UnaryOp};

    struct G(Graph);

    impl G {
        fn push(&mut self, op: Op, dtype: DType, shape: &[u64]) -> NodeId {
            let ty = TensorType::new(dtype, shape.iter().map(|&s| Dim::new(s)).collect());
            self.0.push(
                Node { op, ty, name: None },
                Origin {
                    span: 0..0,
                    line: 1,
                    group: None,
                    backward_of: None,
                    grad_of: None,
                },
            )
        }
        fn input(&mut self, name: &str, dtype: DType, shape: &[u64]) -> NodeId {
            let index = self.0.inputs.len();
            let id = self.push(Op::Input { index }, dtype, shape);
            let ty = self.0.ty(id).clone();
            self.0.inputs.push(Leaf {
                name: name.into(),
                node: id,
                ty,
            });
            id
        }
        fn output(&mut self, name: &str, node: NodeId) {
            self.0.outputs.push(Output {
                name: name.into(),
                node,
                span: 0..0,
            });
        }
    }

    fn t(dtype: DType, shape: &[u64], v: &[f32]) -> HostTensor {
        HostTensor::from_f32(dtype, shape.to_vec(), v)
    }

    #[test]
    fn softmax_layernorm_and_reductions_by_hand() {
        let mut g = G(Graph::new());
        let x = g.input("x", DType::F32, &[2, 3]);
        let sm = g.push(
            Op::Softmax {
                arg: x,
                axis: 1,
                log: false,
            },
            DType::F32,
            &[2, 3],
        );
        let ls = g.push(
            Op::Softmax {
                arg: x,
                axis: 0,
                log: true,
            },
            DType::F32,
            &[2, 3],
        );
        let ln = g.push(
            Op::LayerNorm {
                arg: x,
                axis: 1,
                eps: 0.0,
            },
            DType::F32,
            &[2, 3],
        );
        let s = g.push(
            Op::Reduce {
                op: ReduceOp::Sum,
                arg: x,
                axes: vec![0],
                keepdim: false,
            },
            DType::F32,
            &[3],
        );
        let m = g.push(
            Op::Reduce {
                op: ReduceOp::Max,
                arg: x,
                axes: vec![0, 1],
                keepdim: true,
            },
            DType::F32,
            &[1, 1],
        );
        for (n, id) in [("sm", sm), ("ls", ls), ("ln", ln), ("s", s), ("m", m)] {
            g.output(n, id);
        }
        let out = evaluate(
            &g.0,
            &[t(DType::F32, &[2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0])],
            &[],
        )
        .expect("evaluates");
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let z: f64 = e.iter().sum();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            close(out[0].values[0], e[0] / z) && close(out[0].values[4], 1.0 / 3.0),
            "{:?}",
            out[0]
        );
        // log_softmax over axis 0 of column [1, 0].
        assert!(
            close(out[1].values[0], 1.0 - (1f64.exp() + 1.0).ln()),
            "{:?}",
            out[1]
        );
        // layernorm of [1, 2, 3]: (x - 2) / sqrt(2/3).
        assert!(
            close(out[2].values[2], 1.0 / (2.0f64 / 3.0).sqrt()),
            "{:?}",
            out[2]
        );
        assert_eq!(out[3].values, vec![1.0, 2.0, 3.0]);
        assert_eq!(
            (out[4].shape.clone(), out[4].values.clone()),
            (vec![1, 1], vec![3.0])
        );
    }

    #[test]
    fn views_and_batched_matmul_by_index() {
        let mut g = G(Graph::new());
        let a = g.input("a", DType::F32, &[2, 2, 3]);
        let b = g.input("b", DType::F32, &[3, 2]);
        let tr = g.push(Op::View(ViewOp::Transpose, a), DType::F32, &[2, 3, 2]);
        let pm = g.push(
            Op::View(ViewOp::Permute(vec![2, 0, 1]), a),
            DType::F32,
            &[3, 2, 2],
        );
        let bx = g.push(
            Op::View(ViewOp::Expand { implicit: false }, b),
            DType::F32,
            &[2, 3, 2],
        );
        let mm = g.push(Op::MatMul(a, bx), DType::F32, &[2, 2, 2]);
        let rs = g.push(Op::View(ViewOp::Reshape, mm), DType::F32, &[4, 2]);
        for (n, id) in [("tr", tr), ("pm", pm), ("mm", mm), ("rs", rs)] {
            g.output(n, id);
        }
        let av: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let bv = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let out = evaluate(
            &g.0,
            &[t(DType::F32, &[2, 2, 3], &av), t(DType::F32, &[3, 2], &bv)],
            &[],
        )
        .expect("evaluates");
        assert_eq!(
            out[0].values[..6].to_vec(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        // pm[i, j, k] = a[j, k, i]
        assert_eq!(out[1].values[..4].to_vec(), vec![0.0, 3.0, 6.0, 9.0]);
        // [0 1 2] @ b = [0 + 2, 1 + 2]
        assert_eq!(out[2].values[..2].to_vec(), vec![2.0, 3.0]);
        assert_eq!(out[3].shape, vec![4, 2]);
    }

    #[test]
    fn every_node_is_rounded_to_its_dtype_and_bad_inputs_are_errors() {
        let mut g = G(Graph::new());
        let x = g.input("x", DType::F16, &[1]);
        let third = g.push(Op::Scalar(3.0), DType::F16, &[]);
        let e = g.push(
            Op::View(ViewOp::Expand { implicit: true }, third),
            DType::F16,
            &[1],
        );
        let d = g.push(Op::Binary(BinaryOp::Div, x, e), DType::F16, &[1]);
        let c = g.push(
            Op::Cast {
                arg: d,
                implicit: false,
            },
            DType::F32,
            &[1],
        );
        let u = g.push(Op::Unary(UnaryOp::Gelu, c), DType::F32, &[1]);
        g.output("c", c);
        g.output("u", u);
        let out = evaluate(&g.0, &[t(DType::F16, &[1], &[1.0])], &[]).expect("evaluates");
        assert_eq!(out[0].values, vec![f16::from_f64(1.0 / 3.0).to_f64()]);
        assert_eq!(out[0].dtype, DType::F32);
        let v = out[0].values[0];
        assert_eq!(
            out[1].values,
            vec![(0.5 * v * (1.0 + eval::erf(v / 2f64.sqrt()))) as f32 as f64]
        );
        assert!(evaluate(&g.0, &[t(DType::F32, &[1], &[1.0])], &[]).is_err());
        assert!(evaluate(&g.0, &[], &[]).is_err());
    }
}
