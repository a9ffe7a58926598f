//! Seeded random N(0, 1) tensors: each tensor's stream depends only on the seed and its
//! name (ChaCha8 keyed by both; Box–Muller), so adding an input never changes the others and
//! the values are the same on every platform and crate version. Integer tensors take each
//! sample `z` as `trunc(4·z)` (small integers of both signs, mostly within ±8); `bool`
//! tensors as `z > 0` (true half the time).

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
    let size = dtype.size() as usize;
    // Written straight into the tensor's bytes: no second full-size copy.
    let mut bytes = Vec::with_capacity(n * size);
    let mut push = |v: f32| match dtype {
        DType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
        DType::F16 => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        DType::BF16 => bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        DType::I32 => bytes.extend_from_slice(&((4.0 * v) as i32).to_le_bytes()),
        DType::I64 => bytes.extend_from_slice(&((4.0 * v) as i64).to_le_bytes()),
        DType::Bool => bytes.push(u8::from(v > 0.0)),
    };
    // Uniform in (0, 1]: 53 random bits, never zero.
    let mut uniform = || ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let mut written = 0;
    while written < n {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        push((r * c) as f32);
        if written + 1 < n {
            push((r * s) as f32);
        }
        written += 2;
    }
    HostTensor {
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}
