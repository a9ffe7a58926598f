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

    /// The values widened to f32 (exact for every dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}
