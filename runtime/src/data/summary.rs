//! One-line summaries of a tensor for `tc run`: dtype, shape, min/max/mean of the finite
//! values, the first few values, and how many are NaN or infinite.

use crate::tensor::HostTensor;
use std::fmt::Write;

/// `f32[2, 3]  min -1.5 max 2 mean 0.25  [0.1, -1.5, 2, …]` (+ `  2 NaN, 1 Inf` if any).
pub fn summarize(t: &HostTensor) -> String {
    let shape: Vec<String> = t.shape.iter().map(|s| s.to_string()).collect();
    let mut out = format!("{}[{}]", t.dtype, shape.join(", "));
    let (mut lo, mut hi, mut sum, mut finite, mut nan, mut inf) = (
        f32::INFINITY,
        f32::NEG_INFINITY,
        0f64,
        0usize,
        0usize,
        0usize,
    );
    for v in t.iter_f32() {
        if v.is_nan() {
            nan += 1;
        } else if v.is_infinite() {
            inf += 1;
        } else {
            lo = lo.min(v);
            hi = hi.max(v);
            sum += v as f64;
            finite += 1;
        }
    }
    if finite > 0 {
        let _ = write!(
            out,
            "  min {} max {} mean {}",
            fmt(lo),
            fmt(hi),
            fmt((sum / finite as f64) as f32)
        );
    }
    let head: Vec<String> = t.iter_f32().take(6).map(fmt).collect();
    let more = if t.numel() > 6 { ", …" } else { "" };
    let _ = write!(out, "  [{}{more}]", head.join(", "));
    if nan + inf > 0 {
        let _ = write!(out, "  {nan} NaN, {inf} Inf");
    }
    out
}

/// Up to 6 significant digits, no trailing zeros.
fn fmt(v: f32) -> String {
    if v.is_nan() || v.is_infinite() || v == 0.0 {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-4..1e6).contains(&a) {
        return format!("{v:.5e}");
    }
    let digits = (5 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}
