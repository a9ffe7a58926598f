//! Seeded random N(0, 1) tensors: each tensor's stream depends only on the seed and its
//! name (ChaCha8 keyed by both; Box–Muller), so adding an input never changes the others and
//! the values are the same on every platform and crate version.

use crate::tensor::HostTensor;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tc_compiler::ir::DType;

/// FNV-1a, 64 bits: a stable hash of the tensor name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A tensor of `dtype` and `shape` filled with N(0, 1) values (rounded to the dtype).
pub fn random_tensor(seed: u64, name: &str, dtype: DType, shape: &[u64]) -> HostTensor {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a(name).to_le_bytes());
    key[16..24].copy_from_slice(b"tc-randn");
    key[24..32].copy_from_slice(&(name.len() as u64).to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let n = shape.iter().product::<u64>() as usize;
    let mut values = Vec::with_capacity(n + 1);
    // Uniform in (0, 1]: 53 random bits, never zero.
    let mut uniform = || ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    while values.len() < n {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        values.push((r * c) as f32);
        values.push((r * s) as f32);
    }
    values.truncate(n);
    HostTensor::from_f32(dtype, shape.to_vec(), &values)
}
