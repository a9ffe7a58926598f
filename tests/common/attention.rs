//! Attention programs for the fused attention kernel's tests: `softmax(f(q @ kᵀ)) @ v` over
//! seeded random shapes (query and key counts that are not multiples of any tile, head
//! sizes 16 to 128, a value head of its own size), dtypes (f32, f16, bf16) and prologues
//! (scale by `/ sqrt(Dh)` or `*`, an additive mask, a `where` mask of `bool`, a per-head
//! bias of another dtype, a soft cap with `tanh`, none, and masks computed from `arange`:
//! causal by `where`, an additive causal mask, a sliding window with an integer distance
//! penalty), keys shared across heads (a broadcast batch axis), keys
//! stored already transposed, and epilogues the attention kernel computes as it writes its
//! output (the head-merge copy of `permute(att @ v)`, a scale and cast, a residual add).

/// Sizes for one family of programs: CPU-sized (several query and key tiles of the CPU
/// kernel) or emulation-sized (small, but several tiles of the CUDA kernel).
#[derive(Clone, Copy, Debug)]
pub enum Sizes {
    Cpu,
    Emu,
}

/// A tiny deterministic generator (the programs must not change between runs).
struct Lcg(u64);

impl Lcg {
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        xs[((self.0 >> 33) % xs.len() as u64) as usize]
    }
}

/// How many prologues `programs` draws from (the first `PROLOGUES` programs take each once).
pub const PROLOGUES: usize = 9;

/// How many epilogues `programs` draws from (none, the head-merge copy, a scale and cast, a
/// residual add; the first `EPILOGUES` programs take each once).
pub const EPILOGUES: usize = 4;

/// `count` attention programs as (label, source); every one is the pattern the planner
/// fuses (`tests/attention.rs` checks that it does).
pub fn programs(sizes: Sizes, count: usize) -> Vec<(String, String)> {
    let mut g = Lcg(0x5eed);
    let mut out = Vec::new();
    for i in 0..count {
        let (b, h) = match sizes {
            Sizes::Cpu => (g.pick(&[1, 2]), g.pick(&[1, 3])),
            Sizes::Emu => (1, g.pick(&[1, 2])),
        };
        let (s, t) = match sizes {
            Sizes::Cpu => (g.pick(&[1, 5, 70, 130]), g.pick(&[3, 77, 300])),
            Sizes::Emu => (g.pick(&[1, 5, 33, 40]), g.pick(&[3, 17, 40])),
        };
        // Every head size once early on, then at random.
        let dh = if i < 4 {
            [16, 32, 64, 128][i]
        } else {
            g.pick(&[16, 32, 64, 128])
        };
        let dv = g.pick(&[dh, 24]);
        let dt = if i < 3 {
            ["f32", "f16", "bf16"][i]
        } else {
            g.pick(&["f32", "f32", "f16", "bf16"])
        };
        let shared_k = g.pick(&[false, false, true]);
        let k_transposed = g.pick(&[false, false, true]);
        let prologue = if i < PROLOGUES {
            i
        } else {
            g.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8])
        };
        let kh = if shared_k { "1" } else { "H" };
        let mut src = format!(
            "dim B = {b}\ndim H = {h}\ndim S = {s}\ndim T = {t}\ndim Dh = {dh}\ndim Dv = {dv}\n\
             input q : {dt}[B, H, S, Dh]\n"
        );
        let kt = if k_transposed {
            src += &format!("input k : {dt}[B, {kh}, Dh, T]\n");
            "k"
        } else {
            src += &format!("input k : {dt}[B, {kh}, T, Dh]\n");
            "transpose(k)"
        };
        src += &format!("input v : {dt}[B, {kh}, T, Dv]\n");
        let logits = match prologue {
            0 => format!("q @ {kt} / sqrt(Dh)"),
            1 => {
                src += &format!("input mask : {dt}[S, T]\n");
                format!("q @ {kt} * 0.125 + mask")
            }
            2 => {
                src += "param bias : f32[H, 1, T]\n";
                format!("tanh(q @ {kt} / 8) * 4 + bias")
            }
            3 => format!("q @ {kt}"),
            5 => {
                src += "input keep : bool[S, T]\n";
                format!("where(keep, q @ {kt} / sqrt(Dh), -10000)")
            }
            4 => {
                src += "input rowbias : f32[S, 1]\n";
                format!("maximum(q @ {kt} / sqrt(Dh), -2) - rowbias * 2")
            }
            // Causal, compared from the query and key positions (no mask in memory).
            6 => {
                src += "qi = reshape(arange(S), [S, 1])\n";
                format!("where(qi >= arange(T), q @ {kt} / sqrt(Dh), -1e30)")
            }
            // An additive causal mask built from the positions.
            7 => {
                src += "mask = where(arange(T) > reshape(arange(S), [S, 1]), -1e9, 0)\n";
                format!("q @ {kt} * 0.125 + mask")
            }
            // A causal sliding window of 8 keys with a linear distance penalty (ALiBi-like):
            // integer maths on the positions, cast to f32.
            _ => {
                src += "qi = reshape(arange(S), [S, 1])\nkj = arange(T)\n";
                format!(
                    "where(logical_and(qi >= kj, qi - kj < 8), \
                     q @ {kt} / sqrt(Dh) - f32(qi - kj) * 0.25, -1e30)"
                )
            }
        };
        // The epilogue, drawn last (the draws above stay those of the programs without one).
        let epilogue = if i < EPILOGUES {
            i % EPILOGUES
        } else {
            g.pick(&[0, 0, 1, 2, 3])
        };
        let att = format!("softmax({logits}, axis=-1) @ v");
        let line = match epilogue {
            0 => format!("out = {att}\n"),
            // The head-merge copy: written by the attention kernel in `[B, S, H, Dv]` order.
            1 => format!("out = reshape(permute({att}, [0, 2, 1, 3]), [B, S, H * Dv])\n"),
            // A scale and a cast to another dtype.
            2 => format!("out = f16({att} * 2)\n"),
            // A residual of another dtype added to the merged heads.
            _ => {
                src += "input r : f32[B, S, H, Dv]\n";
                format!("out = permute({att}, [0, 2, 1, 3]) + r\n")
            }
        };
        src += &line;
        src += "output out\n";
        let label = format!(
            "attention {i}: B={b} H={h} S={s} T={t} Dh={dh} Dv={dv} {dt} prologue {prologue} epilogue {epilogue}{}{}",
            if shared_k { " shared k" } else { "" },
            if k_transposed { " k stored transposed" } else { "" }
        );
        out.push((label, src));
    }
    out
}

/// The training step of an attention program: a weighted sum of its output as the loss,
/// and the gradient of each of `wrt` (`q`, `k`, `v`).
pub fn training_step(src: &str, wrt: &[&str]) -> String {
    let body = src
        .strip_suffix("output out\n")
        .expect("an attention program ends with `output out`");
    // The weight has the output's shape, which the epilogue (`programs`) may permute or
    // merge; the output may be f16 (the scale-and-cast epilogue).
    let shape = if body.contains("reshape(permute(") {
        "[B, S, H * Dv]"
    } else if body.contains("out = permute(") {
        "[B, S, H, Dv]"
    } else {
        "[B, H, S, Dv]"
    };
    let mut out = format!("{body}input w : f32{shape}\nloss = sum(f32(out) * w)\n");
    for x in wrt {
        out += &format!("g{x} = grad(loss, {x})\n");
    }
    let names: Vec<String> = wrt.iter().map(|x| format!("g{x}")).collect();
    out += &format!("output loss, {}\n", names.join(", "));
    out
}

/// Whether the training step of the program `label` names fuses its backward: any dtype
/// (f16/bf16 steps read `p`, `q`, `k`, `v` through f32 promotions, which the matcher
/// follows), with a prologue whose derivative reads no value computed from the scores (not
/// `tanh`, not `maximum`: prologues 2 and 4).
pub fn backward_fuses(label: &str) -> bool {
    !label.contains("prologue 2") && !label.contains("prologue 4")
}
