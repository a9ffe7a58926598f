//! `log`, `log1p`, `expm1`, `sin`, `cos`, `tan` and `pow` of f32s, computed in f64 and rounded
//! once to f32: branch-free f64 polynomials (fdlibm's kernels and reductions) whose error,
//! around 1e-15 relative, vanishes in that one rounding, so each result is the correctly
//! rounded value but where the exact one lies within about 1e-15 of a midpoint between two
//! f32s (0.5 ulp, plus that sliver). They are plain arithmetic and bit operations on f64
//! lanes with no table and no call, so the block loops (`unary_block_with`) vectorise them
//! four doubles a 256-bit vector, where the platform's `logf`/`sinf`… are one call an
//! element (5–18 ns on Zen 3 against 2–4 here, `exp` being 0.6). `sin`, `cos` and `tan`
//! reduce by π/2 in three parts (exact for |x| < 2^20·π/2); larger arguments (and the
//! infinities) take the platform's f64 function, which reduces exactly (`TRIG_FAST_MAX`):
//! the block loops compute every lane the fast way, then redo those few
//! (`needs_slow_trig`), so a block gives the very bits of the scalar form.

// fdlibm's constants and coefficients, as published.
#![allow(clippy::excessive_precision)]

/// `a·b + c` rounded once: one instruction in the builds with FMA (the block loops, and
/// the scalar forms through `math::in_f64_unary`/`math::pow_scalar`, which are built for
/// the widest tier), a library call in the baseline build, the same bits everywhere.
#[inline(always)]
fn madd(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}

/// 1.5 · 2^52: adding it rounds an f64 of magnitude below 2^51 to an integer, which then
/// sits in the low bits of the sum.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// `ln 2` in two parts (fdlibm): `k · LN2_HI` is exact for |k| < 2^20.
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;

/// `log(1 + f) = f - (hfsq - s·(hfsq + R(s²)))`, `s = f / (2 + f)`, for `f` in
/// [√½ - 1, √2 - 1): fdlibm's `__kernel_log` polynomial (error below 2^-58).
#[inline(always)]
fn log1p_kernel(f: f64) -> f64 {
    const LG: [f64; 7] = [
        6.666_666_666_666_735_130e-01,
        3.999_999_999_940_941_908e-01,
        2.857_142_874_366_239_149e-01,
        2.222_219_843_214_978_396e-01,
        1.818_357_216_161_805_012e-01,
        1.531_383_769_920_937_332e-01,
        1.479_819_860_511_658_591e-01,
    ];
    let s = f / (2.0 + f);
    let z = s * s;
    let mut r = LG[6];
    for &c in LG[..6].iter().rev() {
        r = madd(r, z, c);
    }
    let r = r * z;
    let hfsq = 0.5 * f * f;
    f - (hfsq - s * (hfsq + r))
}

/// A positive normal `u` as `2^k · (1 + f)` with `1 + f` in [√½, √2): `(k, f)`, `k` as an
/// f64 (exact), by integer operations on the bits (no branch, no conversion AVX2 lacks).
#[inline(always)]
fn split(u: f64) -> (f64, f64) {
    // The bits of √½ rounded down (`1 + f` below it moves to the next binade down).
    const OFF: u64 = 0x3fe6_a09e_0000_0000;
    // Keeps `bits - OFF` positive for every normal `u`, so a logical shift finds `k`.
    const BIAS: u64 = 1024 << 52;
    let bits = u.to_bits();
    let e = (bits.wrapping_sub(OFF).wrapping_add(BIAS) >> 52) as i64 - 1024;
    let m = f64::from_bits(bits.wrapping_sub((e as u64) << 52));
    // `k` as an f64: the integer in the low bits of 2^52 + 2^51 + k.
    let k = f64::from_bits(MAGIC.to_bits().wrapping_add(e as u64)) - MAGIC;
    (k, m - 1.0)
}

/// `ln u + extra` for a positive normal `u` (`extra` a correction far below `ln u`'s last
/// bits, or 0): `k·ln2 + log(1 + f)` from `split`, `ln2` in two parts.
#[inline(always)]
fn ln_plus(u: f64, extra: f64) -> f64 {
    let (k, f) = split(u);
    madd(k, LN2_LO, log1p_kernel(f) + extra) + k * LN2_HI
}

/// `ln x`, correctly rounded but within about 1e-15 of a midpoint (see the module doc); NaN
/// below 0, -inf at ±0, +inf at +inf.
#[inline(always)]
pub fn log(x: f32) -> f32 {
    // Every positive f32, subnormals included, is a normal f64; the other lanes compute 1
    // (no subnormal or infinite f64 through the arithmetic: on Zen 3 a subnormal operand
    // costs as much as a vector of results). The lane tests stay in f32.
    let ok = x > 0.0 && x < f32::INFINITY;
    let y = ln_plus(if ok { x } else { 1.0 } as f64, 0.0) as f32;
    special(x, ok, y, 0.0)
}

/// `y` where `ok`, else what `log` (`at = 0`) or `log1p` (`at = -1`) gives past its
/// domain: ±0 itself (only `log1p` has it in the domain, where the sum would make -0 into
/// +0), -inf at `at`, +inf at +inf, NaN below `at` and for NaN.
#[inline(always)]
fn special(x: f32, ok: bool, y: f32, at: f32) -> f32 {
    if x == 0.0 && at != 0.0 {
        x
    } else if ok {
        y
    } else if x == at {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        x
    } else {
        f32::NAN
    }
}

/// `ln(1 + x)` (see `log`): `ln u` of `u = 1 + x` rounded to f64, plus what that rounding
/// dropped, `x - (u - 1)` (exact): the correction is below 2^-53·|x|, so the sum keeps the
/// relative accuracy of `ln` near `x = 0` where `ln u` alone would lose `x`'s low bits.
/// -inf at -1, NaN below.
#[inline(always)]
pub fn log1p(x: f32) -> f32 {
    // (0 for the lanes past the domain, as in `log`.)
    let ok = x > -1.0 && x < f32::INFINITY;
    let xd = if ok { x } else { 0.0 } as f64;
    let u = 1.0 + xd;
    let dropped = xd - (u - 1.0);
    let y = ln_plus(u, dropped) as f32;
    special(x, ok, y, -1.0)
}

/// `(2^n, e^r - 1)` with `y = n·ln2 + r`, |r| ≤ ln2/2, for |y| ≤ 2^10: `e^r - 1` as its
/// Taylor polynomial to `r^12/12!` (truncation below 2e-14 relative), `2^n` from the
/// integer in the rounding sum's low bits.
#[inline(always)]
fn exp_parts(y: f64) -> (f64, f64) {
    const INV_LN2: f64 = std::f64::consts::LOG2_E;
    let t = madd(y, INV_LN2, MAGIC);
    let n = t - MAGIC;
    let r = madd(n, -LN2_LO, madd(n, -LN2_HI, y));
    // e^r - 1 = r + r²·(1/2! + r/3! + … + r^10/12!).
    let mut p: f64 = 1.0 / 479_001_600.0;
    for c in [
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ] {
        p = madd(p, r, c);
    }
    let em1 = madd(p * r, r, r);
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
    (f64::from_bits(ni.wrapping_add(1023) << 52), em1)
}

/// `e^x - 1` (see the module doc): `2^n·(e^r - 1) + (2^n - 1)` from `exp_parts` in one
/// fused multiply-add, with no cancellation near 0 (`n` = 0 there). The argument is
/// clamped to [-104, 89] (NaN passes); -1 and +inf come from the arithmetic at the ends.
#[inline(always)]
pub fn expm1(x: f32) -> f32 {
    // (`clamp` keeps NaN.)
    let (scale, em1) = exp_parts((x as f64).clamp(-104.0, 89.0));
    let y = madd(scale, em1, scale - 1.0) as f32;
    // ±0 itself (the polynomial makes -0 into +0).
    if x == 0.0 {
        x
    } else {
        y
    }
}

/// `a ** b` as C's `pow` (the meaning `ir::eval` gives it; see the module doc for the
/// rounding): `|a|^b = e^(b·ln|a|)` in f64 (`ln|a|` within 2^-52 relative, so that `b·ln|a|`,
/// at most about 104 in size where the result is neither 0 nor infinite, is within 4e-14
/// and `e^` of it within that relatively), negative where `a` is and `b` is an odd integer,
/// NaN for a negative `a` and a finite non-integral `b`; C99's special values (`pow(x, ±0)`
/// and `pow(1, y)` are 1 even for NaN; ±0 and ±inf bases; ±inf exponents) by selects.
#[inline(always)]
pub fn pow(a: f32, b: f32) -> f32 {
    let ax = a.abs();
    let finite_a = ax > 0.0 && ax < f32::INFINITY;
    let ln = ln_plus(if finite_a { ax } else { 1.0 } as f64, 0.0);
    // Past ±160 the f32 result is 0 or infinite either way (and `exp_parts` needs |y| ≤
    // 2^10); `b` infinite is a special value below.
    let y = (b as f64 * ln).clamp(-160.0, 160.0);
    let (scale, em1) = exp_parts(if y.is_nan() { 0.0 } else { y });
    let mag = madd(scale, em1, scale) as f32;
    // Integral and odd by a truncating conversion (no `trunc`, a library call in the
    // baseline build): every f32 from 2^23 on is an integer, from 2^24 on an even one.
    let bi = b as i32;
    let integral = b.abs() >= 8_388_608.0 || bi as f32 == b;
    let odd = integral && b.abs() < 16_777_216.0 && bi & 1 == 1;
    let negative = a.is_sign_negative() && odd;
    // ±0 and ±inf bases: 0 or inf by whether the result grows, signed as the general case.
    let edge = if (ax == 0.0) == (b < 0.0) {
        f32::INFINITY
    } else {
        0.0
    };
    let signed = |m: f32| if negative { -m } else { m };
    if b == 0.0 || a == 1.0 {
        1.0
    } else if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b.is_infinite() {
        if ax == 1.0 {
            1.0
        } else if (ax < 1.0) == (b < 0.0) {
            f32::INFINITY
        } else {
            0.0
        }
    } else if !finite_a {
        signed(edge)
    } else if a < 0.0 && !integral {
        f32::NAN
    } else {
        signed(mag)
    }
}

/// The largest |x| `sin`, `cos` and `tan` reduce here (2^20·π/2, below which `q·P1` and
/// `q·P2` are exact); beyond it, and for the infinities and NaN, the platform's f64
/// function.
pub const TRIG_FAST_MAX: f32 = 1_647_099.0;

/// `x = q·π/2 + r`, |r| ≤ π/4 (about): `(q mod 4, r)` for |x| ≤ `TRIG_FAST_MAX`, π/2 in
/// three parts of 33, 33 and 53 bits (fdlibm's `pio2_1`, `pio2_2`, `pio2_3`).
#[inline(always)]
fn reduce(x: f32) -> (u64, f64) {
    const INV_PIO2: f64 = std::f64::consts::FRAC_2_PI;
    const P1: f64 = 1.570_796_326_734_125_614_17e+00;
    const P2: f64 = 6.077_100_506_303_965_976_6e-11;
    const P3: f64 = 2.022_266_248_711_166_455_8e-21;
    let xd = x as f64;
    let t = madd(xd, INV_PIO2, MAGIC);
    let q = t - MAGIC;
    let r = madd(q, -P3, madd(q, -P2, madd(q, -P1, xd)));
    (t.to_bits() & 3, r)
}

/// `sin r` for |r| ≤ π/4 (fdlibm's `__kernel_sin`: error below 2^-58).
#[inline(always)]
fn sin_kernel(r: f64) -> f64 {
    const S: [f64; 6] = [
        -1.666_666_666_666_663_243_48e-01,
        8.333_333_333_322_489_461_38e-03,
        -1.984_126_982_985_794_931_17e-04,
        2.755_731_370_707_006_767_89e-06,
        -2.505_076_025_340_686_341_33e-08,
        1.589_690_995_211_550_102_21e-10,
    ];
    let z = r * r;
    let mut p = S[5];
    for &c in S[..5].iter().rev() {
        p = madd(p, z, c);
    }
    madd(r * z, p, r)
}

/// `cos r` for |r| ≤ π/4 (fdlibm's `__kernel_cos` polynomial: error below 2^-58).
#[inline(always)]
fn cos_kernel(r: f64) -> f64 {
    const C: [f64; 6] = [
        4.166_666_666_666_660_190_37e-02,
        -1.388_888_888_887_410_957_49e-03,
        2.480_158_728_947_672_941_42e-05,
        -2.755_731_435_139_066_330_35e-07,
        2.087_572_321_298_174_827_90e-09,
        -1.135_964_755_778_819_482_65e-11,
    ];
    let z = r * r;
    let mut p = C[5];
    for &c in C[..5].iter().rev() {
        p = madd(p, z, c);
    }
    // 1 - z/2 + z²·p: the half taken first keeps the sum accurate near r = 0.
    madd(z * z, p, 1.0 - 0.5 * z)
}

/// Whether `sin`, `cos` or `tan` of `x` is the platform's (see `TRIG_FAST_MAX`): the block
/// loops redo these lanes.
#[inline(always)]
pub fn needs_slow_trig(x: f32) -> bool {
    x.is_nan() || x.abs() > TRIG_FAST_MAX
}

/// `sin x` (see the module doc).
#[inline(always)]
pub fn sin(x: f32) -> f32 {
    if needs_slow_trig(x) {
        sin_slow(x)
    } else {
        sin_fast(x)
    }
}

/// `cos x` (see the module doc).
#[inline(always)]
pub fn cos(x: f32) -> f32 {
    if needs_slow_trig(x) {
        cos_slow(x)
    } else {
        cos_fast(x)
    }
}

/// `tan x` (see the module doc): the quotient of the two kernels in f64.
#[inline(always)]
pub fn tan(x: f32) -> f32 {
    if needs_slow_trig(x) {
        tan_slow(x)
    } else {
        tan_fast(x)
    }
}

/// `sin x` for |x| ≤ `TRIG_FAST_MAX` (any value elsewhere).
#[inline(always)]
pub fn sin_fast(x: f32) -> f32 {
    let (q, r) = reduce(x);
    let (s, c) = (sin_kernel(r), cos_kernel(r));
    let y = if q & 1 == 0 { s } else { c };
    let y = (if q & 2 == 0 { y } else { -y }) as f32;
    // ±0 itself (the kernel makes -0 into +0).
    if x == 0.0 {
        x
    } else {
        y
    }
}

/// `cos x` for |x| ≤ `TRIG_FAST_MAX` (any value elsewhere).
#[inline(always)]
pub fn cos_fast(x: f32) -> f32 {
    let (q, r) = reduce(x);
    let (s, c) = (sin_kernel(r), cos_kernel(r));
    let y = if q & 1 == 0 { c } else { s };
    (if (q + 1) & 2 == 0 { y } else { -y }) as f32
}

/// `tan x` for |x| ≤ `TRIG_FAST_MAX` (any value elsewhere).
#[inline(always)]
pub fn tan_fast(x: f32) -> f32 {
    let (q, r) = reduce(x);
    let (s, c) = (sin_kernel(r), cos_kernel(r));
    let y = (if q & 1 == 0 { s / c } else { -c / s }) as f32;
    if x == 0.0 {
        x
    } else {
        y
    }
}

/// The platform's f64 `sin` of `x`, rounded to f32 (NaN for the infinities).
#[cold]
pub fn sin_slow(x: f32) -> f32 {
    (x as f64).sin() as f32
}

/// The platform's f64 `cos` of `x`, rounded to f32.
#[cold]
pub fn cos_slow(x: f32) -> f32 {
    (x as f64).cos() as f32
}

/// The platform's f64 `tan` of `x`, rounded to f32.
#[cold]
pub fn tan_slow(x: f32) -> f32 {
    (x as f64).tan() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error in ulps of `got` against the f64 `want` (the f32 ulp at `want`).
    fn ulps(got: f32, want: f64) -> f64 {
        (got as f64 - want).abs() / tc_compiler::ir::eval::ulp_f32(want)
    }

    #[test]
    fn split_gives_the_binade_and_the_fraction() {
        for u in [
            1.0f64, 2.0, 0.75, 0.7, 1.4, 1.5, 3.0, 1e-300, 1e300, 2.3e-308,
        ] {
            let (k, f) = split(u);
            assert_eq!(k, k.round(), "{u}");
            let m = 1.0 + f;
            assert!(
                (std::f64::consts::FRAC_1_SQRT_2 - 1e-9..std::f64::consts::SQRT_2).contains(&m),
                "{u}: {m}"
            );
            assert_eq!(m * 2f64.powi(k as i32), u, "{u}");
        }
    }

    /// The specials of each function, and a few values against the platform's f64 forms.
    #[test]
    fn specials_and_values() {
        let inf = f32::INFINITY;
        assert_eq!(log(0.0), -inf);
        assert_eq!(log(-0.0), -inf);
        assert_eq!(log(inf), inf);
        assert_eq!(log(1.0).to_bits(), 0);
        assert!(log(-1.0).is_nan() && log(f32::NAN).is_nan() && log(-inf).is_nan());
        assert_eq!(log(f32::from_bits(1)), (2f64.powi(-149).ln()) as f32);
        assert_eq!(log1p(-1.0), -inf);
        assert_eq!(log1p(inf), inf);
        assert_eq!(log1p(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(log1p(-2.0).is_nan() && log1p(f32::NAN).is_nan());
        assert_eq!(log1p(1e-30), 1e-30);
        assert_eq!(expm1(-inf), -1.0);
        assert_eq!(expm1(inf), inf);
        assert_eq!(expm1(100.0), inf);
        assert_eq!(expm1(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(expm1(1e-30), 1e-30);
        assert!(expm1(f32::NAN).is_nan());
        for f in [sin, cos, tan] {
            assert!(f(inf).is_nan() && f(-inf).is_nan() && f(f32::NAN).is_nan());
        }
        let nan = f32::NAN;
        for (a, b, want) in [
            (nan, 0.0, 1.0),
            (1.0, nan, 1.0),
            (-1.0, inf, 1.0),
            (-1.0, -inf, 1.0),
            (0.5, inf, 0.0),
            (0.5, -inf, inf),
            (2.0, inf, inf),
            (-2.0, -inf, 0.0),
            (0.0, -3.0, inf),
            (-0.0, -3.0, -inf),
            (-0.0, -2.0, inf),
            (-0.0, 3.0, -0.0),
            (-0.0, 2.5, 0.0),
            (-inf, 3.0, -inf),
            (-inf, -3.0, -0.0),
            (-inf, 2.0, inf),
            (inf, -0.5, 0.0),
            (-2.0, 3.0, -8.0),
            (-2.0, -1.0, -0.5),
            (2.0, 10.0, 1024.0),
            (3.0, 2.0, 9.0),
            (4.0, 0.5, 2.0),
            (-8.0, 1e30, inf),
            (-0.5, 1e30, 0.0),
            (10.0, 39.0, inf),
            (10.0, -46.0, 0.0),
        ] {
            let got = pow(a, b);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "pow({a}, {b}) = {got}, not {want}"
            );
        }
        assert!(pow(-2.0, 0.5).is_nan() && pow(nan, 1.0).is_nan() && pow(2.0, nan).is_nan());
        assert_eq!(sin(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos(0.0), 1.0);
        for x in [0.5f32, 1.0, 3.0, -7.25, 1e3, 1e6, 2e6, 1e20, 3e38] {
            assert!(ulps(sin(x), (x as f64).sin()) <= 0.5 + 1e-6, "sin {x}");
            assert!(ulps(cos(x), (x as f64).cos()) <= 0.5 + 1e-6, "cos {x}");
            assert!(ulps(tan(x), (x as f64).tan()) <= 0.5 + 1e-6, "tan {x}");
        }
    }

    /// Every 7th f32 of ±[2^-4, 2^4) (and every 61st elsewhere) within 0.5 ulp and a sliver of
    /// the platform's f64 function, and the fast trigonometric forms against the slow ones
    /// up to `TRIG_FAST_MAX`.
    #[test]
    fn correctly_rounded_but_for_a_sliver() {
        let dense = (0x3d80_0000u32..0x4180_0000)
            .step_by(7)
            .flat_map(|b| [b, b | 0x8000_0000]);
        let sparse = (0..=u32::MAX).step_by(61);
        let xs: Vec<f32> = dense
            .chain(sparse)
            .map(f32::from_bits)
            .filter(|x| x.is_finite())
            .collect();
        use rayon::prelude::*;
        type Check = (&'static str, fn(f32) -> f32, fn(f64) -> f64);
        let checks: [Check; 6] = [
            ("log", log, f64::ln),
            ("log1p", log1p, f64::ln_1p),
            ("expm1", expm1, f64::exp_m1),
            ("sin", sin, f64::sin),
            ("cos", cos, f64::cos),
            ("tan", tan, f64::tan),
        ];
        for (name, f, want) in checks {
            let worst = xs
                .par_iter()
                .map(|&x| {
                    let w = want(x as f64);
                    let got = f(x);
                    if w.is_nan() {
                        return if got.is_nan() { 0.0 } else { f64::INFINITY };
                    }
                    if w.abs() > f32::MAX as f64 {
                        return if got.is_infinite() || w.abs() < 3.41e38 {
                            0.0
                        } else {
                            f64::INFINITY
                        };
                    }
                    ulps(got, w)
                })
                .reduce(|| 0.0, f64::max);
            eprintln!("{name}: {worst:.6} ulp");
            assert!(worst <= 0.5 + 1e-6, "{name}: {worst} ulp");
        }
        // `pow` on a grid: every 65537th f32 bit pattern as the base against exponents of
        // every kind (integers, halves, small and large, every 99991st f32 of ±[2^-8, 2^8)).
        let bases: Vec<f32> = (0..=u32::MAX)
            .step_by(65537)
            .map(f32::from_bits)
            .filter(|x| x.is_finite())
            .collect();
        let mut exps: Vec<f32> = vec![2.0, 3.0, -1.0, 0.5, -0.5, 1.5, 7.0, -3.0, 1e-3, 40.0];
        exps.extend(
            (0x3b80_0000u32..0x4380_0000)
                .step_by(99991)
                .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]),
        );
        let worst = exps
            .par_iter()
            .map(|&b| {
                let mut worst = 0f64;
                for &a in &bases {
                    let w = (a as f64).powf(b as f64);
                    let got = pow(a, b);
                    let e = if w.is_nan() {
                        if got.is_nan() {
                            0.0
                        } else {
                            f64::INFINITY
                        }
                    } else if w.abs() > f32::MAX as f64 {
                        if got.is_infinite() || w.abs() < 3.41e38 {
                            0.0
                        } else {
                            f64::INFINITY
                        }
                    } else {
                        ulps(got, w)
                    };
                    if e > worst {
                        worst = e;
                    }
                }
                worst
            })
            .reduce(|| 0.0, f64::max);
        eprintln!("pow: {worst:.6} ulp");
        assert!(worst <= 0.5 + 1e-6, "pow: {worst} ulp");
    }
}
