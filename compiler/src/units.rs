//! How tc writes quantities in its reports: byte counts in binary units, counted nouns.
//! Shared by the plan's text (`plan::text`), the memory report's notes and its renderers.

/// Bytes in binary units: `512 B`, `1.5 KiB`, `128.0 MiB`, `2.00 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `1 kernel`, `3 kernels`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
