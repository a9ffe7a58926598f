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
            // As a cast (`ir::eval::float_to_int`): truncated, saturating, NaN 0; bool x != 0.
            DType::I32 | DType::I64 | DType::Bool => {
                let ints: Vec<i64> = values
                    .iter()
                    .map(|&v| tc_compiler::ir::eval::float_to_int(dtype, v as f64))
                    .collect();
                return HostTensor::from_i64(dtype, shape, &ints);
            }
        }
        HostTensor {
            dtype,
            shape,
            bytes,
        }
    }

    /// Builds a tensor of an integral `dtype` from integers (wrapped to the dtype: i32 to
    /// 32 bits, bool to `v != 0`). A float `dtype` gets the values rounded.
    pub fn from_i64(dtype: DType, shape: Vec<u64>, values: &[i64]) -> HostTensor {
        let mut bytes = Vec::with_capacity(values.len() * dtype.size() as usize);
        match dtype {
            DType::I32 => values
                .iter()
                .for_each(|&v| bytes.extend_from_slice(&(v as i32).to_le_bytes())),
            DType::I64 => values
                .iter()
                .for_each(|&v| bytes.extend_from_slice(&v.to_le_bytes())),
            DType::Bool => values.iter().for_each(|&v| bytes.push(u8::from(v != 0))),
            _ => {
                let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                return HostTensor::from_f32(dtype, shape, &f);
            }
        }
        HostTensor {
            dtype,
            shape,
            bytes,
        }
    }

    /// The values as exact integers (floats truncated as a cast would, NaN 0).
    pub fn iter_i64(&self) -> impl Iterator<Item = i64> + '_ {
        let dtype = self.dtype;
        self.bytes
            .chunks_exact(dtype.size() as usize)
            .map(move |c| match dtype {
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                DType::I64 => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                DType::Bool => i64::from(c[0] != 0),
                _ => tc_compiler::ir::eval::float_to_int(DType::I64, decode_f32(dtype, c) as f64),
            })
    }

    /// The values as exact integers.
    pub fn to_i64(&self) -> Vec<i64> {
        self.iter_i64().collect()
    }

    /// The values widened to f32 (exact for the float dtypes and `bool`, and for integers
    /// up to 2^24), one at a time: no copy of the tensor is made, so a summary of a 4 GiB
    /// output costs no memory.
    pub fn iter_f32(&self) -> impl Iterator<Item = f32> + '_ {
        let dtype = self.dtype;
        self.bytes
            .chunks_exact(dtype.size() as usize)
            .map(move |c| decode_f32(dtype, c))
    }

    /// The values widened to f32 (exact for the float dtypes).
    pub fn to_f32(&self) -> Vec<f32> {
        self.iter_f32().collect()
    }
}

/// One element's bytes as f32.
fn decode_f32(dtype: DType, c: &[u8]) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
        DType::I64 => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
        DType::Bool => f32::from(c[0] != 0),
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
