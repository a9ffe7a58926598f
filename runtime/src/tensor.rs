//! Host tensors: a dtype, a shape and little-endian bytes, the currency between data files,
//! executors and the command line.

use half::{bf16, f16};
use tc_compiler::ir::DType;

/// A dense, contiguous (row-major) tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// `numel · dtype size` bytes, little-endian.
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// Builds a tensor of `dtype` from f32 values, rounding to nearest, ties to even.
    pub fn from_f32(dtype: DType, shape: Vec<u64>, values: &[f32]) -> HostTensor {
        let mut bytes = Vec::with_capacity(values.len() * dtype.size() as usize);
        match dtype {
            DType::F32 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            DType::F16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            DType::BF16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
        HostTensor {
            dtype,
            shape,
            bytes,
        }
    }

    /// The values widened to f32 (exact for every dtype), one at a time: no copy of the
    /// tensor is made, so a summary of a 4 GiB output costs no memory.
    pub fn iter_f32(&self) -> impl Iterator<Item = f32> + '_ {
        let dtype = self.dtype;
        self.bytes
            .chunks_exact(dtype.size() as usize)
            .map(move |c| match dtype {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
                DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            })
    }

    /// The values widened to f32 (exact for every dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        self.iter_f32().collect()
    }
}

/// Element offsets `offset + Σ idx[d]·strides[d]` of a strided view of `shape`, in row-major
/// order of `idx`: how an executor gathers a view (an output that is a transpose, say) into
/// a contiguous tensor.
pub fn strided_offsets<'a>(
    offset: i64,
    strides: &'a [i64],
    shape: &'a [u64],
) -> impl Iterator<Item = i64> + 'a {
    let numel: u64 = shape.iter().product();
    let mut idx = vec![0u64; shape.len()];
    (0..numel).map(move |_| {
        let at = offset
            + idx
                .iter()
                .zip(strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>();
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
        at
    })
}
