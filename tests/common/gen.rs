//! A generator of random, valid-by-construction `.tx` programs for the differential tests:
//! DAGs of elementwise ops with NumPy broadcasting, reductions, row ops, views, matmuls and
//! casts over small shapes and mixed dtypes. Shapes and dtypes are tracked while generating;
//! magnitudes are kept bounded (`tanh` where they could grow) so that f32-vs-f64 differences
//! stay at rounding level. Every value nobody reads is an output, except a few left dead.
//!
//! Integer and `bool` values (SPEC §3.1–3.2) come from comparisons, casts and integer leaves,
//! go through wrapping integer arithmetic, logical ops, integer reductions and `any`/`all`,
//! and return to floats through `where`, casts, `/` and mixed arithmetic; the float
//! statements read only float values.
//!
//! The one generator of the tests: `program` (dims 2..5, the differential tests) and
//! `program_with` over other `Sizes` (`Sizes::rows`: the long rows and odd widths the CUDA
//! tests need for their launch strategies).

use tc_compiler::ir::broadcast;

/// SplitMix64: a tiny deterministic source for one program.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The dims of `Sizes::small`: name, size.
const DIMS: [(&str, u64); 4] = [("A", 2), ("B", 3), ("C", 4), ("D", 5)];

/// The sizes a generated program works over.
#[derive(Clone, Debug, PartialEq)]
pub struct Sizes {
    /// The dims the program declares (name, size); sizes are written as these names.
    pub dims: Vec<(&'static str, u64)>,
    /// The axes of the first leaves (other shapes are suffixes of it, some axes set to 1);
    /// three sizes drawn from `dims` when `None`.
    pub base: Option<Vec<u64>>,
    /// Sizes for new axes: a size-1 axis of a new broadcast partner, a leading axis added
    /// by `expand`, the columns of a matrix product.
    pub extra: Vec<u64>,
}

impl Sizes {
    /// Dims 2, 3, 4 and 5, every shape drawn from them.
    pub fn small() -> Sizes {
        Sizes {
            dims: DIMS.to_vec(),
            base: None,
            extra: DIMS.iter().map(|d| d.1).collect(),
        }
    }

    /// Shapes within `[A, R, C]`: up to 4 batches of up to 40 rows of 1 to 4100 columns
    /// (widths below, at and past a warp, a block and a vector), drawn from `seed`.
    pub fn rows(seed: u64) -> Sizes {
        let mut rng = Rng(seed ^ 0x5eed_0f5a_e5e5_0001);
        let a = 1 + rng.below(4) as u64;
        let r = 1 + rng.below(40) as u64;
        let c = *rng.pick(&[1u64, 3, 8, 33, 64, 300, 1100, 4100]);
        Sizes {
            dims: vec![("A", a), ("R", r), ("C", c)],
            base: Some(vec![a, r, c]),
            extra: vec![a, r],
        }
    }
}

#[derive(Clone, Debug)]
struct Var {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    /// A rough bound on |value|.
    bound: f64,
}

struct Gen<'s> {
    rng: Rng,
    sizes: &'s Sizes,
    decls: Vec<String>,
    body: Vec<String>,
    vars: Vec<Var>,
    /// The `i64` index tensors (`arange`, `argmax`, `argmin`), kept apart from `vars`.
    index_vars: Vec<Var>,
    /// Names bound so far that are not in `vars` (see `fresh`).
    extra_names: usize,
    leaves: usize,
    /// Inputs and params are all f32 (`differentiable`: finite differences perturb them).
    f32_leaves: bool,
}

/// Writes a size as a dim name when one has that size (sometimes), else as a literal.
fn size_text(rng: &mut Rng, dims: &[(&str, u64)], s: u64) -> String {
    match dims.iter().find(|(_, v)| *v == s) {
        Some((n, _)) if rng.chance(60) => n.to_string(),
        _ => s.to_string(),
    }
}

fn shape_text(rng: &mut Rng, dims: &[(&str, u64)], shape: &[u64]) -> String {
    let parts: Vec<String> = shape.iter().map(|&s| size_text(rng, dims, s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Whether a dtype name is a float dtype.
fn is_float(d: &str) -> bool {
    matches!(d, "f32" | "f16" | "bf16")
}

/// The rank of an integral dtype in promotion (bool < i32 < i64).
fn int_rank(d: &str) -> u8 {
    match d {
        "bool" => 0,
        "i32" => 1,
        _ => 2,
    }
}

/// PyTorch promotion of two integral values (rank-0 values promoting like scalars within
/// a category).
fn promote_int(a: &Var, b: &Var) -> &'static str {
    let (ca, cb) = (a.dtype != "bool", b.dtype != "bool");
    if ca != cb {
        return if ca { a.dtype } else { b.dtype };
    }
    if a.shape.is_empty() != b.shape.is_empty() {
        return if a.shape.is_empty() { b.dtype } else { a.dtype };
    }
    if int_rank(a.dtype) >= int_rank(b.dtype) {
        a.dtype
    } else {
        b.dtype
    }
}

/// PyTorch promotion with rank-0 tensors promoting like scalars.
fn promote(a: &Var, b: &Var) -> &'static str {
    if a.dtype == b.dtype {
        a.dtype
    } else if a.shape.is_empty() && !b.shape.is_empty() {
        b.dtype
    } else if b.shape.is_empty() && !a.shape.is_empty() {
        a.dtype
    } else {
        "f32"
    }
}

impl Gen<'_> {
    fn fresh(&mut self) -> String {
        // (index tensors and gathers' indices are bound too, outside `vars`)
        self.extra_names += 1;
        format!("v{}", self.vars.len() + self.extra_names - 1)
    }

    /// A random shape over the dims, rank 0..=3, sometimes with size-1 axes.
    fn shape(&mut self, base: &[u64]) -> Vec<u64> {
        // Suffixes of `base` with random axes set to 1: these broadcast against each other.
        let rank = self.rng.below(base.len() + 1);
        base[base.len() - rank..]
            .iter()
            .map(|&s| if self.rng.chance(20) { 1 } else { s })
            .collect()
    }

    fn dtype(&mut self) -> &'static str {
        const DTYPES: [&str; 6] = ["f32", "f32", "f32", "f32", "f16", "bf16"];
        DTYPES[self.rng.below(DTYPES.len())]
    }

    fn leaf(&mut self, dtype: &'static str, shape: Vec<u64>) -> Var {
        let dtype = if self.f32_leaves && matches!(dtype, "f16" | "bf16") {
            "f32"
        } else {
            dtype
        };
        let kind = if self.rng.chance(60) {
            "input"
        } else {
            "param"
        };
        let name = format!("{}{}", if kind == "input" { "x" } else { "w" }, self.leaves);
        self.leaves += 1;
        let st = shape_text(&mut self.rng, &self.sizes.dims, &shape);
        self.decls.push(format!("{kind} {name} : {dtype}{st}"));
        let v = Var {
            name,
            dtype,
            shape,
            bound: 4.5,
        };
        self.vars.push(v.clone());
        v
    }

    /// Binds `expr` to a new name, wrapping it in `tanh` when it could grow too large.
    fn bind(&mut self, expr: String, dtype: &'static str, shape: Vec<u64>, bound: f64) -> Var {
        let name = self.fresh();
        let (expr, bound) = if bound > 8.0 {
            (format!("tanh({expr})"), 1.0)
        } else {
            (expr, bound)
        };
        self.body.push(format!("{name} = {expr}"));
        let v = Var {
            name,
            dtype,
            shape,
            bound,
        };
        self.vars.push(v.clone());
        v
    }

    fn any_var(&mut self) -> Var {
        self.pick_var(true)
    }

    /// A float value (`float`) or an integral one, preferring recent values so programs
    /// are deep rather than wide. `None` only for an integral value when there is none.
    fn pick_of(&mut self, float: bool) -> Option<Var> {
        let pool: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| is_float(v.dtype) == float)
            .cloned()
            .collect();
        let n = pool.len();
        if n == 0 {
            return None;
        }
        let i = if self.rng.chance(60) {
            n - 1 - self.rng.below(n.min(3))
        } else {
            self.rng.below(n)
        };
        Some(pool[i].clone())
    }

    fn pick_var(&mut self, float: bool) -> Var {
        match self.pick_of(float) {
            Some(v) => v,
            None => {
                let dt = *self.rng.pick(&["i32", "i64", "bool"]);
                let shape = self.vars[self.vars.len() - 1].shape.clone();
                self.leaf(dt, shape)
            }
        }
    }

    /// A value that broadcasts with `x`, of the given kind, or a new leaf of `dtype`.
    fn partner(&mut self, x: &Var, float: bool, dtype: &'static str) -> Var {
        let candidates: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| is_float(v.dtype) == float && broadcast(&x.shape, &v.shape).is_some())
            .cloned()
            .collect();
        if candidates.is_empty() || self.rng.chance(30) {
            let shape = self.shape(&x.shape.clone());
            self.leaf(dtype, shape)
        } else {
            self.rng.pick(&candidates).clone()
        }
    }

    /// A statement of the integer and `bool` world (SPEC §3.1–3.2).
    fn dtype_statement(&mut self) {
        let cmp = ["<", "<=", ">", ">=", "==", "!="];
        match self.rng.below(9) {
            // A comparison of floats (or of a float with a literal): a bool.
            0 | 1 => {
                let x = self.any_var();
                let op = *self.rng.pick(&cmp);
                let (rhs, shape) = if self.rng.chance(30) {
                    (
                        self.rng.pick(&["0", "0.5", "-1", "B"]).to_string(),
                        x.shape.clone(),
                    )
                } else {
                    let dt = self.dtype();
                    let y = self.partner(&x, true, dt);
                    let s = broadcast(&x.shape, &y.shape).unwrap_or_default();
                    (y.name, s)
                };
                let rhs = if rhs == "B" && !self.sizes.dims.iter().any(|d| d.0 == "B") {
                    "2".to_string()
                } else {
                    rhs
                };
                self.bind(format!("{} {op} {rhs}", x.name), "bool", shape, 1.0);
            }
            // A float cast to an integer (truncating) or to bool.
            2 => {
                let x = self.any_var();
                let to = *self.rng.pick(&["i32", "i64", "bool"]);
                let scale = self.rng.pick(&["", " * 4"]).to_string();
                let bound = if scale.is_empty() {
                    x.bound
                } else {
                    4.0 * x.bound
                };
                // Integral: exact, never wrapped in `tanh`.
                let name = self.fresh();
                self.body.push(format!("{name} = {to}({}{scale})", x.name));
                self.vars.push(Var {
                    name,
                    dtype: to,
                    shape: x.shape.clone(),
                    bound,
                });
            }
            // Integer arithmetic, wrapping, with integers, bools and integer literals.
            3 => {
                let k = self.pick_var(false);
                let dt = if k.dtype == "bool" { "i64" } else { k.dtype };
                let j = self.partner(&k, false, dt);
                let shape = broadcast(&k.shape, &j.shape).unwrap_or_default();
                let (kn, jn) = (&k.name, &j.name);
                let pd = promote_int(&k, &j);
                let (expr, dtype, bound) = match self.rng.below(10) {
                    0 => (format!("{kn} + {jn}"), pd, k.bound + j.bound),
                    1 => (format!("{kn} - {jn}"), pd, k.bound + j.bound),
                    2 => (format!("{kn} * {jn}"), pd, k.bound * j.bound),
                    3 => (format!("maximum({kn}, {jn})"), pd, k.bound.max(j.bound)),
                    4 => (format!("minimum({kn}, -{jn})"), pd, k.bound.max(j.bound)),
                    5 => (
                        format!("{kn} * 3 - 7"),
                        if k.dtype == "bool" { "i64" } else { k.dtype },
                        3.0 * k.bound + 7.0,
                    ),
                    6 => (
                        format!("abs({kn}) + square({jn})"),
                        pd,
                        k.bound + j.bound * j.bound,
                    ),
                    7 => (
                        format!("{kn} * 1000003 * 1000003"),
                        if k.dtype == "bool" { "i64" } else { k.dtype },
                        1e12 * k.bound,
                    ),
                    // SPEC §3.5 on integers: clamp keeps the dtype (bool meets an integer
                    // literal: i64), floor/ceil/round/sign are exact and keep it too.
                    8 => (
                        format!("clamp({kn}, min=-3, max=5)"),
                        if k.dtype == "bool" { "i64" } else { k.dtype },
                        5.0,
                    ),
                    _ => {
                        let op = *self.rng.pick(&["floor", "ceil", "round"]);
                        (format!("sign({kn}) * {op}({jn})"), pd, j.bound)
                    }
                };
                let shape = if expr.contains(jn.as_str()) {
                    shape
                } else {
                    k.shape.clone()
                };
                // Integers are exact: no tanh; the bound only guides later float uses.
                let name = self.fresh();
                self.body.push(format!("{name} = {expr}"));
                self.vars.push(Var {
                    name,
                    dtype,
                    shape,
                    bound,
                });
            }
            // Logical ops and comparisons of integers: bools.
            4 => {
                let k = self.pick_var(false);
                let j = self.partner(&k, false, "bool");
                let shape = broadcast(&k.shape, &j.shape).unwrap_or_default();
                let expr = match self.rng.below(4) {
                    0 => format!("logical_and({}, {})", k.name, j.name),
                    1 => format!("logical_or({}, logical_not({}))", k.name, j.name),
                    2 => format!("{} {} {}", k.name, self.rng.pick(&cmp), j.name),
                    _ => {
                        return {
                            self.bind(
                                format!("logical_not({})", k.name),
                                "bool",
                                k.shape.clone(),
                                1.0,
                            );
                        }
                    }
                };
                self.bind(expr, "bool", shape, 1.0);
            }
            // Reductions of integers and bools.
            5 => {
                let k = self.pick_var(false);
                let r = k.shape.len();
                let op = *self.rng.pick(&["sum", "max", "min", "any", "all"]);
                let (args, shape) = if r == 0 || self.rng.chance(30) {
                    (String::new(), vec![])
                } else {
                    let a = self.rng.below(r);
                    let keep = self.rng.chance(50);
                    let mut s = k.shape.clone();
                    if keep {
                        s[a] = 1;
                    } else {
                        s.remove(a);
                    }
                    (
                        format!(", axis={}, keepdim={keep}", self.axis_text(a, r)),
                        s,
                    )
                };
                let (dtype, bound) = match op {
                    "sum" => ("i64", k.bound * k.shape.iter().product::<u64>() as f64),
                    "any" | "all" => ("bool", 1.0),
                    _ => (k.dtype, k.bound),
                };
                let name = self.fresh();
                self.body.push(format!("{name} = {op}({}{args})", k.name));
                self.vars.push(Var {
                    name,
                    dtype,
                    shape,
                    bound,
                });
            }
            // Back to floats: where, casts, division and mixed arithmetic, mean.
            6 | 7 => {
                let m = self.pick_var(false);
                let x = self.any_var();
                match self.rng.below(5) {
                    0 | 1 if m.dtype == "bool" => {
                        let y = self.partner(&x, true, x.dtype);
                        let s = broadcast(&x.shape, &y.shape).and_then(|s| broadcast(&m.shape, &s));
                        match s {
                            Some(s) => {
                                let dtype = promote(&x, &y);
                                let b = x.bound.max(y.bound);
                                let (xn, yn) = (x.name.clone(), y.name.clone());
                                self.bind(format!("where({}, {xn}, {yn})", m.name), dtype, s, b);
                            }
                            None => {
                                self.bind(
                                    format!("where({}, 1.5, -0.5)", m.name),
                                    "f32",
                                    m.shape.clone(),
                                    1.5,
                                );
                            }
                        }
                    }
                    0 | 1 => {
                        let to = *self.rng.pick(&["f32", "f16", "bf16"]);
                        self.bind(format!("{to}({})", m.name), to, m.shape.clone(), m.bound);
                    }
                    2 => {
                        self.bind(format!("{} / 3", m.name), "f32", m.shape.clone(), m.bound);
                    }
                    3 => match broadcast(&m.shape, &x.shape) {
                        Some(s) => {
                            // An integer meeting a float takes the float's dtype.
                            self.bind(
                                format!("{} * {}", m.name, x.name),
                                x.dtype,
                                s,
                                m.bound * x.bound,
                            );
                        }
                        None => {
                            self.bind(format!("{} + 0.5", m.name), "f32", m.shape.clone(), m.bound);
                        }
                    },
                    _ => {
                        self.bind(format!("mean({})", m.name), "f32", vec![], m.bound);
                    }
                }
            }
            // An integer or bool leaf, sometimes cast to another integral dtype.
            _ => {
                let x = self.any_var();
                let dt = *self.rng.pick(&["i32", "i64", "bool"]);
                let shape = self.shape(&x.shape.clone());
                let k = self.leaf(dt, shape);
                if self.rng.chance(40) {
                    let to = *self.rng.pick(&["i32", "i64", "bool"]);
                    let name = self.fresh();
                    self.body.push(format!("{name} = {to}({})", k.name));
                    self.vars.push(Var {
                        name,
                        dtype: to,
                        shape: k.shape.clone(),
                        bound: k.bound,
                    });
                }
            }
        }
    }

    fn unary(&mut self, x: &Var) -> Var {
        let n = &x.name;
        let (expr, bound) = match self.rng.below(16) {
            0 => (format!("abs({n})"), x.bound),
            1 => (format!("exp({n})"), x.bound.exp()),
            2 => (
                format!("log(abs({n}) + 0.5)"),
                (x.bound + 0.5).ln().abs().max(0.7),
            ),
            3 => (format!("sqrt(abs({n}) + 0.25)"), (x.bound + 0.25).sqrt()),
            4 => (format!("rsqrt(abs({n}) + 0.25)"), 2.0),
            5 => (format!("sin({n})"), 1.0),
            6 => (format!("cos({n})"), 1.0),
            7 => (format!("tanh({n})"), 1.0),
            8 => (format!("sigmoid({n})"), 1.0),
            9 => (format!("relu({n})"), x.bound),
            10 => (format!("gelu({n})"), x.bound),
            11 => (format!("silu({n})"), x.bound),
            12 => (format!("erf({n})"), 1.0),
            13 => (format!("square({n})"), x.bound * x.bound),
            14 => (format!("-{n}"), x.bound),
            _ => (format!("-{n} ** 2"), x.bound * x.bound),
        };
        self.bind(expr, x.dtype, x.shape.clone(), bound)
    }

    fn binary(&mut self) -> Var {
        let x = self.any_var();
        // A partner that broadcasts with x: an existing value, a new leaf, or a weak scalar.
        let candidates: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| is_float(v.dtype) && broadcast(&x.shape, &v.shape).is_some())
            .cloned()
            .collect();
        let y = if self.rng.chance(15) {
            let lit = if self.rng.chance(50) {
                self.rng.pick(&["0.5", "2", "1.5", "3", "0.25"]).to_string()
            } else {
                // A dim as a value, if one is small enough to keep magnitudes bounded.
                let small: Vec<&str> = self
                    .sizes
                    .dims
                    .iter()
                    .filter(|d| d.1 <= 5)
                    .map(|d| d.0)
                    .collect();
                if small.is_empty() {
                    self.rng.pick(&["2", "3"]).to_string()
                } else {
                    self.rng.pick(&small).to_string()
                }
            };
            Var {
                name: lit,
                dtype: x.dtype,
                shape: vec![],
                bound: 5.0,
            }
        } else if candidates.is_empty() || self.rng.chance(25) {
            let base: Vec<u64> = x
                .shape
                .iter()
                .map(|&s| {
                    if s == 1 {
                        *self.rng.pick(&self.sizes.extra)
                    } else {
                        s
                    }
                })
                .collect();
            let mut shape = self.shape(&base);
            if shape.len() == x.shape.len() && x.shape.len() < 3 && self.rng.chance(20) {
                shape.insert(0, *self.rng.pick(&self.sizes.extra));
            }
            let dt = self.dtype();
            self.leaf(dt, shape)
        } else {
            self.rng.pick(&candidates).clone()
        };
        let shape = broadcast(&x.shape, &y.shape).unwrap_or_default();
        let dtype = if y
            .name
            .starts_with(|c: char| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            x.dtype
        } else {
            promote(&x, &y)
        };
        let (a, b) = if self.rng.chance(50) {
            (&x, &y)
        } else {
            (&y, &x)
        };
        let (an, bn) = (&a.name, &b.name);
        let (expr, bound) = match self.rng.below(8) {
            0 => (format!("{an} + {bn}"), a.bound + b.bound),
            1 => (format!("{an} - {bn}"), a.bound + b.bound),
            2 => (format!("{an} * {bn}"), a.bound * b.bound),
            3 => (format!("{an} / (1 + abs({bn}))"), a.bound),
            4 => (format!("maximum({an}, {bn})"), a.bound.max(b.bound)),
            5 => (format!("minimum({an}, {bn})"), a.bound.max(b.bound)),
            6 => (
                format!(
                    "(abs({an}) + 0.5) ** {} * {bn}",
                    self.rng.pick(&["1.5", "0.5", "-1", "2"])
                ),
                (a.bound + 0.5).powi(2).max(2.0) * b.bound,
            ),
            _ => (
                format!("{an} ** {} + {bn}", self.rng.pick(&["2", "3"])),
                a.bound.powi(3) + b.bound,
            ),
        };
        self.bind(expr, dtype, shape, bound)
    }

    fn axis_text(&mut self, axis: usize, rank: usize) -> String {
        if self.rng.chance(40) {
            format!("-{}", rank - axis)
        } else {
            axis.to_string()
        }
    }

    fn reduction(&mut self, x: &Var) -> Var {
        let op = *self.rng.pick(&[
            "sum",
            "mean",
            "max",
            "min",
            "sum",
            "mean",
            "max",
            "min",
            "var",
            "std",
            "logsumexp",
        ]);
        // (`std`'s gradient divides by the result, which rounding makes 1e-8 in f32 where
        // it is 1e-17 in f64 when the row's values are all equal: not in training steps)
        let op = if op == "std" && self.f32_leaves {
            "var"
        } else {
            op
        };
        let r = x.shape.len();
        let count: u64;
        let (expr, shape) = if r == 0 || self.rng.chance(15) {
            count = x.shape.iter().product();
            (
                format!("{op}({}{})", x.name, self.correction(op, count)),
                vec![],
            )
        } else {
            let mut axes: Vec<usize> = (0..r).filter(|_| self.rng.chance(40)).collect();
            if axes.is_empty() {
                axes.push(self.rng.below(r));
            }
            count = axes.iter().map(|&a| x.shape[a]).product();
            let keep = self.rng.chance(50);
            let mut texts: Vec<String> = axes.iter().map(|&a| self.axis_text(a, r)).collect();
            if self.rng.chance(30) {
                texts.reverse();
            }
            let axis = if texts.len() == 1 && self.rng.chance(50) {
                texts[0].clone()
            } else {
                format!("[{}]", texts.join(", "))
            };
            let shape = (0..r)
                .filter_map(|d| {
                    if axes.contains(&d) {
                        keep.then_some(1)
                    } else {
                        Some(x.shape[d])
                    }
                })
                .collect();
            let correction = self.correction(op, count);
            (
                format!("{op}({}, axis={axis}, keepdim={keep}{correction})", x.name),
                shape,
            )
        };
        let bound = match op {
            "sum" => x.bound * count as f64,
            "var" => 2.0 * x.bound * x.bound,
            "std" => 1.5 * x.bound,
            "logsumexp" => x.bound + (count as f64).ln(),
            _ => x.bound,
        };
        self.bind(expr, x.dtype, shape, bound)
    }

    /// `var`/`std`'s `correction` argument: 0 for a row of one element (whose corrected
    /// variance divides by 0), else the default or an explicit 0 or 1.
    fn correction(&mut self, op: &str, count: u64) -> String {
        if !matches!(op, "var" | "std") {
            return String::new();
        }
        if count <= 1 {
            return ", correction=0".into();
        }
        self.rng
            .pick(&["", "", ", correction=0", ", correction=1"])
            .to_string()
    }

    /// The maths of SPEC §3.5 on a float value: `clamp`, `leaky_relu`, `log1p`, `expm1`,
    /// `tan`, `reciprocal`, `softplus`, `gelu_tanh` (arguments kept where they are well
    /// conditioned), and `floor`/`ceil`/`round`/`sign` of a leaf (doubled: exact on every
    /// path, so no rounding difference moves a value across a step).
    fn maths(&mut self, x: &Var) -> Var {
        let n = &x.name;
        let b = x.bound;
        let (expr, bound) = match self.rng.below(11) {
            0 => (format!("clamp({n}, min=-1, max=1.5)"), 1.5),
            1 => {
                let bounds =
                    *self
                        .rng
                        .pick(&["min=0.25", "max=-0.5", "min=-2, max=-3", "max=2, min=0"]);
                (format!("clamp({n}, {bounds})"), b.max(3.0))
            }
            2 => {
                let slope = *self.rng.pick(&["", ", slope=0.2", ", slope=-0.5"]);
                (format!("leaky_relu({n}{slope})"), b)
            }
            3 => (format!("log1p(abs({n}))"), (1.0 + b).ln().max(1.0)),
            4 => (format!("expm1(tanh({n}))"), 2.0),
            5 => (format!("tan(tanh({n}))"), 1.6),
            6 => (format!("reciprocal(abs({n}) + 0.5)"), 2.0),
            7 => (format!("softplus({n})"), b + 1.0),
            8 => (format!("gelu_tanh({n})"), b),
            _ => {
                let leaves: Vec<Var> = self
                    .vars
                    .iter()
                    .filter(|v| !v.name.starts_with('v') && is_float(v.dtype))
                    .cloned()
                    .collect();
                if leaves.is_empty() {
                    return self.bind(format!("softplus({n})"), x.dtype, x.shape.clone(), b + 1.0);
                }
                let l = self.rng.pick(&leaves).clone();
                let op = *self.rng.pick(&["floor", "ceil", "round", "sign"]);
                let e = format!("{op}({} * 2)", l.name);
                return self.bind(e, l.dtype, l.shape.clone(), 2.0 * l.bound + 1.0);
            }
        };
        self.bind(expr, x.dtype, x.shape.clone(), bound)
    }

    fn row_op(&mut self, x: &Var) -> Var {
        let r = x.shape.len();
        let axis = self.rng.below(r);
        let at = self.axis_text(axis, r);
        let axis_arg = if axis == r - 1 && self.rng.chance(30) {
            String::new()
        } else {
            format!(", axis={at}")
        };
        let (expr, bound) = match self.rng.below(4) {
            0 => (format!("softmax({}{axis_arg})", x.name), 1.0),
            1 => (
                format!("log_softmax({}{axis_arg})", x.name),
                2.0 * x.bound + 3.0,
            ),
            2 => {
                let eps = if self.rng.chance(50) {
                    ", eps=0.001".to_string()
                } else {
                    String::new()
                };
                (
                    format!("layernorm({}{axis_arg}{eps})", x.name),
                    (x.shape[axis] as f64).sqrt() + 1.0,
                )
            }
            _ => (
                format!("rmsnorm({}{axis_arg})", x.name),
                (x.shape[axis] as f64).sqrt() + 1.0,
            ),
        };
        self.bind(expr, x.dtype, x.shape.clone(), bound)
    }

    fn view(&mut self, x: &Var) -> Var {
        let r = x.shape.len();
        let n = &x.name;
        match self.rng.below(7) {
            4 if r >= 1 => self.slice(x),
            5 if r >= 1 && self.rng.chance(50) => {
                // squeeze: every size-1 axis, or one axis (a no-op when its size is not 1).
                let (arg, s) = if self.rng.chance(40) {
                    (
                        String::new(),
                        x.shape.iter().copied().filter(|&v| v != 1).collect(),
                    )
                } else {
                    let a = self.rng.below(r);
                    let at = self.axis_text(a, r);
                    let mut s = x.shape.clone();
                    if s[a] == 1 {
                        s.remove(a);
                    }
                    (format!(", axis={at}"), s)
                };
                self.bind(format!("squeeze({n}{arg})"), x.dtype, s, x.bound)
            }
            5 if r < 4 => {
                let a = self.rng.below(r + 1);
                let at = self.axis_text(a, r + 1);
                let mut s = x.shape.clone();
                s.insert(a, 1);
                self.bind(format!("unsqueeze({n}, axis={at})"), x.dtype, s, x.bound)
            }
            6 if r >= 2 => {
                let (a, b) = (self.rng.below(r), self.rng.below(r));
                let (at, bt) = (self.axis_text(a, r), self.axis_text(b, r));
                let mut s = x.shape.clone();
                s.swap(a, b);
                self.bind(format!("transpose({n}, {at}, {bt})"), x.dtype, s, x.bound)
            }
            0 if r >= 2 => {
                let mut s = x.shape.clone();
                s.swap(r - 1, r - 2);
                self.bind(format!("transpose({n})"), x.dtype, s, x.bound)
            }
            1 if r >= 2 => {
                let mut perm: Vec<usize> = (0..r).collect();
                for i in (1..r).rev() {
                    let j = self.rng.below(i + 1);
                    perm.swap(i, j);
                }
                let s = perm.iter().map(|&p| x.shape[p]).collect();
                let pt: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
                self.bind(
                    format!("permute({n}, [{}])", pt.join(", ")),
                    x.dtype,
                    s,
                    x.bound,
                )
            }
            2 if r >= 1 => {
                // Merge two adjacent axes, split an axis into a known factorisation, or flatten.
                let mut s = x.shape.clone();
                let choice = self.rng.below(3);
                if choice == 0 && r >= 2 {
                    let i = self.rng.below(r - 1);
                    let m = s[i] * s[i + 1];
                    s.splice(i..i + 2, [m]);
                } else if choice == 1 && s.iter().any(|&v| v == 4 || v == 6 || v == 2) {
                    let i = s
                        .iter()
                        .position(|&v| v == 4 || v == 6 || v == 2)
                        .unwrap_or(0);
                    let parts: &[u64] = match s[i] {
                        4 => &[2, 2],
                        6 => &[2, 3],
                        _ => &[1, 2],
                    };
                    s.splice(i..=i, parts.iter().copied());
                } else {
                    s = vec![s.iter().product()];
                }
                let mut text = shape_text(&mut self.rng, &self.sizes.dims, &s);
                if s.len() > 1 && self.rng.chance(30) {
                    // One -1 entry is inferred.
                    let j = self.rng.below(s.len());
                    let mut parts: Vec<String> = s.iter().map(|&v| v.to_string()).collect();
                    parts[j] = "-1".into();
                    text = format!("[{}]", parts.join(", "));
                }
                self.bind(format!("reshape({n}, {text})"), x.dtype, s, x.bound)
            }
            _ => {
                // expand: fill size-1 axes, sometimes add a leading axis.
                let mut s: Vec<u64> = x
                    .shape
                    .iter()
                    .map(|&v| {
                        if v == 1 && self.rng.chance(70) {
                            *self.rng.pick(&self.sizes.extra)
                        } else {
                            v
                        }
                    })
                    .collect();
                if r < 3 && (s == x.shape || self.rng.chance(50)) {
                    s.insert(0, *self.rng.pick(&self.sizes.extra));
                }
                let text = shape_text(&mut self.rng, &self.sizes.dims, &s);
                self.bind(format!("expand({n}, {text})"), x.dtype, s, x.bound)
            }
        }
    }

    /// `x[…]`: per axis an integer (sometimes negative), or a slice with optional bounds
    /// (literals or dims, sometimes past the end or negative, clamped as Python) and step;
    /// trailing entries sometimes left out. The result shape is computed here, apart from
    /// the checker, by Python's rules.
    fn slice(&mut self, x: &Var) -> Var {
        let r = x.shape.len();
        let written = if self.rng.chance(30) {
            1 + self.rng.below(r)
        } else {
            r
        };
        let mut parts = Vec::new();
        let mut shape = Vec::new();
        for (k, &n) in x.shape.iter().enumerate() {
            if k >= written {
                shape.push(n);
                continue;
            }
            let ni = n as i64;
            if self.rng.chance(25) {
                let i = self.rng.below(n as usize) as i64;
                let text = if self.rng.chance(40) {
                    (i - ni).to_string()
                } else {
                    i.to_string()
                };
                parts.push(text);
                continue;
            }
            // A slice selecting at least one element: start in range, stop after it.
            let start = self.rng.below(n as usize) as i64;
            let stop = start + 1 + self.rng.below((ni - start) as usize) as i64;
            let step = if self.rng.chance(30) {
                1 + self.rng.below(3) as i64
            } else {
                1
            };
            let start_text = match self.rng.below(4) {
                0 if start == 0 => String::new(),
                1 if start > 0 => (start - ni).to_string(),
                _ => size_text(&mut self.rng, &self.sizes.dims, start as u64),
            };
            let stop_text = match self.rng.below(5) {
                0 if stop == ni => String::new(),
                1 if stop == ni => (ni + 1 + self.rng.below(3) as i64).to_string(),
                2 if stop < ni => (stop - ni).to_string(),
                _ => size_text(&mut self.rng, &self.sizes.dims, stop as u64),
            };
            let text = if step > 1 || self.rng.chance(10) {
                format!("{start_text}:{stop_text}:{step}")
            } else {
                format!("{start_text}:{stop_text}")
            };
            parts.push(text);
            shape.push(((stop - start + step - 1) / step) as u64);
        }
        let expr = format!("{}[{}]", x.name, parts.join(", "));
        self.bind(expr, x.dtype, shape, x.bound)
    }

    /// `concat([x, …], axis=A)` with partners of fitting shape (existing values, slices of
    /// `x`, or new leaves), or `stack([x, …])` of values of `x`'s shape; dtypes promote.
    fn join(&mut self, x: &Var) -> Var {
        let r = x.shape.len();
        let stack = self.rng.chance(45);
        let axis = self.rng.below(if stack { r + 1 } else { r });
        let mut parts = vec![x.clone()];
        for _ in 0..1 + self.rng.below(2) {
            let fits: Vec<Var> = self
                .vars
                .iter()
                .filter(|v| {
                    v.shape.len() == r
                        && (0..r).all(|d| (!stack && d == axis) || v.shape[d] == x.shape[d])
                })
                .cloned()
                .collect();
            let p = if !fits.is_empty() && self.rng.chance(60) {
                self.rng.pick(&fits).clone()
            } else {
                let mut s = x.shape.clone();
                if !stack {
                    s[axis] = *self.rng.pick(&self.sizes.extra);
                }
                let dt = self.dtype();
                self.leaf(dt, s)
            };
            parts.push(p);
        }
        if self.rng.chance(50) {
            parts.reverse();
        }
        let mut dtype = parts[0].dtype;
        for p in &parts[1..] {
            if p.dtype != dtype {
                dtype = "f32";
            }
        }
        let mut shape = x.shape.clone();
        if stack {
            shape.insert(axis, parts.len() as u64);
        } else {
            shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        }
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        let at = self.axis_text(axis, shape.len());
        let arg = if axis == 0 && self.rng.chance(30) {
            String::new()
        } else {
            format!(", axis={at}")
        };
        let f = if stack { "stack" } else { "concat" };
        let bound = parts.iter().map(|p| p.bound).fold(0.0, f64::max);
        self.bind(
            format!("{f}([{}]{arg})", names.join(", ")),
            dtype,
            shape,
            bound,
        )
    }

    fn matmul(&mut self, x: &Var) -> Var {
        let (y, shape, k) = self.right_operand(x);
        self.bind(
            format!("{} @ {}", x.name, y.name),
            x.dtype,
            shape,
            x.bound * y.bound * k as f64,
        )
    }

    /// A residual add of a product, `r + x @ (y * s)` or `x @ (y * s) + r` (the GEMM
    /// accumulates into `r`: `fuse::gemm`), the product scaled to at most 1 so that no `tanh`
    /// comes between it and the add. `r` is a value of the product's shape and dtype, a new
    /// leaf (copied by the GEMM) or a new value a kernel stores (written in place).
    fn residual(&mut self, x: &Var) -> Var {
        let r = x.shape.len();
        if self.rng.chance(50) {
            // Pre-norm style, `x + tanh(x) @ (w * s)` with a new square `w`: the product
            // depends on `x`, so the GEMM writes in place of `x` when nothing reads it later.
            let k = x.shape[r - 1];
            // A leaf is copied (never written); a computed value mostly is not.
            let x = if !x.name.starts_with('v') && self.rng.chance(70) {
                self.bind(
                    format!("{} * 0.5", x.name),
                    x.dtype,
                    x.shape.clone(),
                    x.bound / 2.0,
                )
            } else {
                x.clone()
            };
            let w = self.leaf(x.dtype, vec![k, k]);
            let scale = 1.0 / (w.bound * k as f64).max(1.0);
            let expr = format!("{0} + tanh({0}) @ ({1} * {scale:.6})", x.name, w.name);
            return self.bind(expr, x.dtype, x.shape.clone(), x.bound + 1.0);
        }
        let (y, shape, k) = self.right_operand(x);
        let scale = 1.0 / (x.bound * y.bound * k as f64).max(1.0);
        let prod = format!("{} @ ({} * {scale:.6})", x.name, y.name);
        let fits: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| v.shape == shape && v.dtype == x.dtype && v.bound <= 7.0)
            .cloned()
            .collect();
        let r = if !fits.is_empty() && self.rng.chance(50) {
            self.rng.pick(&fits).clone()
        } else {
            let leaf = self.leaf(x.dtype, shape.clone());
            if leaf.dtype != x.dtype {
                // (`f32_leaves`: an f32 leaf for a half product)
                let cast = format!("{}({})", x.dtype, leaf.name);
                self.bind(cast, x.dtype, shape.clone(), leaf.bound)
            } else if self.rng.chance(50) {
                self.bind(format!("tanh({})", leaf.name), x.dtype, shape.clone(), 1.0)
            } else {
                leaf
            }
        };
        let expr = if self.rng.chance(50) {
            format!("{} + {prod}", r.name)
        } else {
            format!("{prod} + {}", r.name)
        };
        self.bind(expr, x.dtype, shape, r.bound + 1.0)
    }

    /// The right operand of `x @ …` (an existing value of a fitting shape, else a new leaf
    /// `[.., K, N]`), the product's shape and its `K`.
    fn right_operand(&mut self, x: &Var) -> (Var, Vec<u64>, u64) {
        let r = x.shape.len();
        let k = x.shape[r - 1];
        let n = *self.rng.pick(&self.sizes.extra);
        // The right operand: an existing value of a fitting shape, else a new leaf [.., K, N].
        let fits: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| {
                v.shape.len() >= 2
                    && v.dtype == x.dtype
                    && is_float(v.dtype)
                    && v.shape[v.shape.len() - 2] == k
                    && broadcast(&x.shape[..r - 2], &v.shape[..v.shape.len() - 2]).is_some()
            })
            .cloned()
            .collect();
        let y = if !fits.is_empty() && self.rng.chance(50) {
            self.rng.pick(&fits).clone()
        } else {
            let mut s = vec![k, n];
            if r > 2 && self.rng.chance(50) {
                s.insert(0, x.shape[r - 3]);
            }
            self.leaf(x.dtype, s)
        };
        let yr = y.shape.len();
        let mut shape = broadcast(&x.shape[..r - 2], &y.shape[..yr - 2]).unwrap_or_default();
        shape.extend([x.shape[r - 2], y.shape[yr - 1]]);
        (y, shape, k)
    }

    /// An index tensor (`i64`) whose values are known to lie in `[0, range)`: the `argmax`
    /// or `argmin` of a leaf (its data is exact on every executor, so the position cannot
    /// differ by a rounding) along an axis, or an `arange`. `None` when no leaf fits.
    fn index(&mut self, keepdim: bool) -> Option<(Var, u64)> {
        let leaves: Vec<Var> = self
            .vars
            .iter()
            .filter(|v| !v.name.starts_with('v') && !v.shape.is_empty())
            .cloned()
            .collect();
        if leaves.is_empty() || self.rng.chance(20) {
            let (d, n) = *self.rng.pick(&self.sizes.dims);
            let name = self.fresh();
            self.body.push(format!("{name} = arange({d})"));
            let v = Var {
                name,
                dtype: "i64",
                shape: vec![n],
                bound: n as f64,
            };
            self.index_vars.push(v.clone());
            return Some((v, n));
        }
        let l = self.rng.pick(&leaves).clone();
        let r = l.shape.len();
        let axis = self.rng.below(r);
        let op = *self.rng.pick(&["argmax", "argmin"]);
        let at = self.axis_text(axis, r);
        let shape: Vec<u64> = (0..r)
            .filter_map(|d| match (d == axis, keepdim) {
                (false, _) => Some(l.shape[d]),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        let name = self.fresh();
        let keep = if keepdim { ", keepdim=true" } else { "" };
        self.body
            .push(format!("{name} = {op}({}, axis={at}{keep})", l.name));
        let v = Var {
            name,
            dtype: "i64",
            shape,
            bound: l.shape[axis] as f64,
        };
        self.index_vars.push(v.clone());
        Some((v, l.shape[axis]))
    }

    /// One of SPEC §3.3's ops over `x`: `take`, `gather`, `one_hot`, `cumsum`, or an
    /// `arange` as a value; indices are always in range.
    fn index_op(&mut self, x: &Var) -> Option<Var> {
        let r = x.shape.len();
        match self.rng.below(5) {
            0 if r >= 1 => {
                // take(x, idx, axis): an index whose range fits the axis.
                let keep = self.rng.chance(30);
                let (idx, range) = self.index(keep)?;
                let axes: Vec<usize> = (0..r).filter(|&a| x.shape[a] >= range).collect();
                if axes.is_empty() || r - 1 + idx.shape.len() > 4 {
                    return None;
                }
                let axis = *self.rng.pick(&axes);
                let at = self.axis_text(axis, r);
                let mut shape = x.shape[..axis].to_vec();
                shape.extend_from_slice(&idx.shape);
                shape.extend_from_slice(&x.shape[axis + 1..]);
                let arg = if axis == 0 && self.rng.chance(40) {
                    String::new()
                } else {
                    format!(", axis={at}")
                };
                Some(self.bind(
                    format!("take({}, {}{arg})", x.name, idx.name),
                    x.dtype,
                    shape,
                    x.bound,
                ))
            }
            1 if r >= 1 => {
                // gather(x, argmax(leaf of x's shape, axis=a, keepdim=true), axis=a).
                let axis = self.rng.below(r);
                let mut ls = x.shape.clone();
                for (d, s) in ls.iter_mut().enumerate() {
                    if d != axis && self.rng.chance(20) {
                        *s = 1;
                    }
                }
                let l = self.leaf("f32", ls);
                let op = *self.rng.pick(&["argmax", "argmin"]);
                let at = self.axis_text(axis, r);
                let name = self.fresh();
                self.body.push(format!(
                    "{name} = {op}({}, axis={at}, keepdim=true)",
                    l.name
                ));
                let mut shape = x.shape.clone();
                shape[axis] = 1;
                Some(self.bind(
                    format!("gather({}, {name}, axis={at})", x.name),
                    x.dtype,
                    shape,
                    x.bound,
                ))
            }
            2 => {
                // one_hot of an index, as f32 maths.
                let (idx, range) = self.index(false)?;
                if idx.shape.len() >= 3 {
                    return None;
                }
                let n = range + self.rng.below(2) as u64;
                let mut shape = idx.shape.clone();
                shape.push(n);
                Some(self.bind(
                    format!("f32(one_hot({}, {n}))", idx.name),
                    "f32",
                    shape,
                    1.0,
                ))
            }
            3 if r >= 1 => {
                let axis = self.rng.below(r);
                let at = self.axis_text(axis, r);
                Some(self.bind(
                    format!("cumsum({}, axis={at})", x.name),
                    x.dtype,
                    x.shape.clone(),
                    x.bound * x.shape[axis] as f64,
                ))
            }
            _ if r >= 1 => {
                // An arange read through a broadcast, as maths: x * f32(arange(N)).
                let n = x.shape[r - 1];
                let d = size_text(&mut self.rng, &self.sizes.dims, n);
                Some(self.bind(
                    format!("{} * f32(arange({d}))", x.name),
                    x.dtype,
                    x.shape.clone(),
                    x.bound * n as f64,
                ))
            }
            _ => None,
        }
    }

    fn cast(&mut self, x: &Var) -> Var {
        let to = *self.rng.pick(&["f32", "f16", "bf16"]);
        self.bind(format!("{to}({})", x.name), to, x.shape.clone(), x.bound)
    }

    fn statement(&mut self) {
        if self.rng.chance(30) {
            self.dtype_statement();
            return;
        }
        let x = self.any_var();
        match self.rng.below(12) {
            0..=2 if self.rng.chance(35) => {
                self.maths(&x);
            }
            0..=2 => {
                self.unary(&x);
            }
            3..=5 => {
                self.binary();
            }
            6 => {
                self.reduction(&x);
            }
            7 if !x.shape.is_empty() => {
                self.row_op(&x);
            }
            8 => {
                self.view(&x);
            }
            9 if x.shape.len() >= 2 => {
                self.matmul(&x);
            }
            9 if x.shape.len() == 1 => {
                // Lift to a matrix first, then multiply.
                let s = vec![1, x.shape[0]];
                let m = self.bind(
                    format!("reshape({}, [1, {}])", x.name, x.shape[0]),
                    x.dtype,
                    s,
                    x.bound,
                );
                self.matmul(&m);
            }
            10 if !x.shape.is_empty() && self.rng.chance(40) => {
                self.join(&x);
            }
            10 => {
                self.cast(&x);
            }
            11 if self.rng.chance(60) => {
                if self.index_op(&x).is_none() {
                    self.unary(&x);
                }
            }
            _ => {
                self.unary(&x);
            }
        }
    }
}

/// A random valid program over `Sizes::small`, fully determined by `seed`.
pub fn program(seed: u64) -> String {
    program_with(seed, &Sizes::small())
}

/// A random valid program over `sizes`, fully determined by `seed` and `sizes`.
pub fn program_with(seed: u64, sizes: &Sizes) -> String {
    generate(seed, sizes, false)
}

/// A random training step over `Sizes::small`: a program of `program`'s kind with f32 (or
/// integer and bool) inputs and params, a loss over its outputs (`sum(tanh(out))` each, so every gradient
/// is non-uniform) and the gradient of the loss with respect to every f32 input and param.
pub fn differentiable(seed: u64) -> String {
    // Every op of the generator has a gradient (take/gather/cumsum/concat/stack and slices
    // included), so the first program drawn is used.
    let text = generate(seed, &Sizes::small(), true);
    let mut leaves = Vec::new();
    let mut body = String::new();
    let mut outs: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("input") | Some("param") => {
                let name = words.next().unwrap_or_default().to_string();
                // Integer and bool leaves carry no gradient.
                if line.contains(": f32") {
                    leaves.push(name);
                }
            }
            Some("output") => {
                outs = line["output".len()..]
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .collect();
                continue;
            }
            _ => {}
        }
        body.push_str(line);
        body.push('\n');
    }
    // One program in three also runs attention over leaves of its own (drawn from a stream
    // of its own, so the rest of the program is the one `generate` drew), with the
    // prologues whose backward fuses (`fuse::attention_backward`).
    let mut r = Rng(seed ^ 0xa77e_2710_b0d5);
    if r.below(3) == 0 {
        let h = [1, 2][r.below(2)];
        let s = [3, 5, 9][r.below(3)];
        let t = [4, 7, 12][r.below(3)];
        let d = [4, 8][r.below(2)];
        body.push_str(&format!(
            "input aq_ : f32[{h}, {s}, {d}]\ninput ak_ : f32[{h}, {t}, {d}]\ninput av_ : f32[{h}, {t}, {d}]\n"
        ));
        leaves.extend(["aq_", "ak_", "av_"].map(String::from));
        let scores = "aq_ @ transpose(ak_)";
        let logits = match r.below(4) {
            0 => format!("{scores} * 0.5"),
            1 => scores.to_string(),
            2 => {
                format!("where(reshape(arange({s}), [{s}, 1]) >= arange({t}), {scores} / 3, -1e30)")
            }
            _ => format!(
                "{scores} * 0.25 + where(arange({t}) > reshape(arange({s}), [{s}, 1]), -1e9, 0)"
            ),
        };
        body.push_str(&format!("att_ = softmax({logits}, axis=-1) @ av_\n"));
        outs.push("att_".into());
    }
    let terms: Vec<String> = outs.iter().map(|o| format!("sum(tanh({o}))")).collect();
    body.push_str(&format!("loss_ = {}\n", terms.join(" + ")));
    let mut results = outs;
    results.push("loss_".into());
    for l in &leaves {
        body.push_str(&format!("g_{l} = grad(loss_, {l})\n"));
        results.push(format!("g_{l}"));
    }
    body.push_str(&format!("output {}\n", results.join(", ")));
    body
}

fn generate(seed: u64, sizes: &Sizes, f32_leaves: bool) -> String {
    let mut g = Gen {
        rng: Rng(seed),
        sizes,
        decls: Vec::new(),
        body: Vec::new(),
        vars: Vec::new(),
        index_vars: Vec::new(),
        extra_names: 0,
        leaves: 0,
        f32_leaves,
    };
    let base: Vec<u64> = match &sizes.base {
        Some(b) => b.clone(),
        None => (0..3).map(|_| g.rng.pick(&sizes.dims).1).collect(),
    };
    for _ in 0..1 + g.rng.below(2) {
        let mut shape = g.shape(&base);
        if shape.is_empty() && g.rng.chance(70) {
            shape = base.clone();
        }
        let dt = g.dtype();
        g.leaf(dt, shape);
    }
    for _ in 0..2 + g.rng.below(7) {
        g.statement();
    }
    // Outputs: every computed value nothing else reads (so no statement is dead code), and
    // sometimes others (an input, a view, an intermediate).
    let read: std::collections::HashSet<&str> = g
        .body
        .iter()
        .flat_map(|l| {
            l.split_once('=')
                .map(|(_, rhs)| rhs)
                .unwrap_or("")
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        })
        .collect();
    // A few are left dead on purpose: the planner must cope with values nobody reads.
    let sinks: Vec<String> = g
        .vars
        .iter()
        .filter(|v| v.name.starts_with('v') && !read.contains(v.name.as_str()))
        .map(|v| v.name.clone())
        .collect();
    let mut outs: Vec<String> = sinks.into_iter().filter(|_| g.rng.chance(85)).collect();
    // Index tensors are outputs too, sometimes (compared exactly).
    for v in &g.index_vars {
        if !read.contains(v.name.as_str()) || g.rng.chance(20) {
            outs.push(v.name.clone());
        }
    }
    if outs.is_empty() {
        outs.push(g.vars[g.vars.len() - 1].name.clone());
    }
    for _ in 0..g.rng.below(3) {
        let v = g.rng.pick(&g.vars).name.clone();
        if !outs.contains(&v) {
            outs.push(v);
        }
    }
    // Residual products, appended from a stream of their own so that the program above is
    // the one this seed always drew: each is an output.
    g.rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
    for _ in 0..2 {
        if !g.rng.chance(45) {
            continue;
        }
        let matrices: Vec<Var> = g
            .vars
            .iter()
            .filter(|v| is_float(v.dtype) && v.shape.len() >= 2)
            .cloned()
            .collect();
        if matrices.is_empty() {
            break;
        }
        let x = g.rng.pick(&matrices).clone();
        let v = g.residual(&x);
        outs.push(v.name);
    }
    let mut text = String::new();
    for (n, v) in &sizes.dims {
        text.push_str(&format!("dim {n} = {v}\n"));
    }
    for l in g.decls.iter().chain(&g.body) {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&format!("output {}\n", outs.join(", ")));
    text
}
