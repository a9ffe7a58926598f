//! `.npy` files: f32 and f16 natively (either byte order, C or Fortran order when reading);
//! bf16 has no NumPy dtype and is written as f32, exactly.

use super::{checked_tensor, io_err, write_atomically, DataError};
use crate::tensor::HostTensor;
use npyz::WriterBuilder;
use std::path::Path;
use tc_compiler::ir::{DType, TensorType};

/// Reads the `.npy` file at `path` as the tensor `name` of type `ty`.
pub fn read_npy(path: &Path, name: &str, ty: &TensorType) -> Result<HostTensor, DataError> {
    // Streamed: the file's bytes are never all in memory next to the values.
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err("read", path))?);
    let bad = |message: String| DataError::Npy {
        path: path.to_path_buf(),
        message,
    };
    let npy = npyz::NpyFile::new(file).map_err(|e| bad(e.to_string()))?;
    let shape = npy.shape().to_vec();
    let fortran = npy.order() == npyz::Order::Fortran;
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => {
            return Err(DataError::DType {
                name: name.into(),
                path: path.into(),
                expected: ty.dtype,
                found: other.descr(),
            })
        }
    };
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &s| a.checked_mul(s))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let (found, mut values): (DType, Vec<f32>) = match &descr[1..] {
        "f4" => (
            DType::F32,
            npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?,
        ),
        "f2" => (
            DType::F16,
            npy.into_vec::<half::f16>()
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .map(|v| v.to_f32())
                .collect(),
        ),
        _ => {
            return Err(DataError::DType {
                name: name.into(),
                path: path.into(),
                expected: ty.dtype,
                found: descr,
            })
        }
    };
    if values.len() as u64 != numel {
        return Err(bad(format!("{} values for shape {shape:?}", values.len())));
    }
    if fortran && shape.len() > 1 {
        values = fortran_to_c(&values, &shape);
    }
    let t = HostTensor::from_f32(found, shape.clone(), &values);
    checked_tensor(name, path, ty, found, shape, t)
}

/// Reorders column-major values into row-major.
fn fortran_to_c(values: &[f32], shape: &[u64]) -> Vec<f32> {
    let n = values.len();
    let mut out = vec![0f32; n];
    let mut idx = vec![0u64; shape.len()];
    for o in out.iter_mut() {
        // Column-major position of the row-major index `idx`.
        let mut pos = 0u64;
        for d in (0..shape.len()).rev() {
            pos = pos * shape[d] + idx[d];
        }
        *o = values[pos as usize];
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Writes `t` to `path` as `.npy` (f32 or f16; bf16 as f32, exactly), atomically.
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), DataError> {
    let shape = t.shape.clone();
    write_atomically(path, |w| match t.dtype {
        DType::F16 => {
            let mut out = npyz::WriteOptions::<half::f16>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(
                t.bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]])),
            )?;
            out.finish()
        }
        DType::F32 | DType::BF16 => {
            let mut out = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(t.to_f32())?;
            out.finish()
        }
    })
}
