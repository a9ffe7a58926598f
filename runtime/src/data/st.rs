//! safetensors files: params and inputs by name, in f32, f16, bf16, int32, int64 or bool.

use super::sink::Content;
use super::{checked_tensor, DataError};
use crate::tensor::HostTensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use tc_compiler::ir::{DType, TensorType};

/// Reads every tensor of the file at `path`; each must be one of `declared` (by name) with
/// its shape, and its dtype or f32 (converted). Returns them in file order.
pub fn read_safetensors(
    path: &Path,
    declared: &HashMap<&str, &TensorType>,
) -> Result<Vec<(String, HostTensor)>, DataError> {
    let bytes = super::read_path(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| DataError::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    for name in names {
        let ty = declared.get(name).ok_or_else(|| DataError::UnknownName {
            name: name.into(),
            from: Some(path.into()),
        })?;
        let view = file.tensor(name).map_err(|e| DataError::Safetensors {
            path: path.into(),
            message: e.to_string(),
        })?;
        let found = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I32 => DType::I32,
            Dtype::I64 => DType::I64,
            Dtype::BOOL => DType::Bool,
            other => {
                return Err(DataError::DType {
                    name: name.into(),
                    path: path.into(),
                    expected: ty.dtype,
                    found: format!("{other:?}"),
                    help: if other == Dtype::F64 {
                        "\n  = help: save the tensor as float32 (`t.float()` in PyTorch)".into()
                    } else {
                        String::new()
                    },
                })
            }
        };
        let shape: Vec<u64> = view.shape().iter().map(|&s| s as u64).collect();
        let mut bytes = view.data().to_vec();
        if found == DType::Bool {
            // A bool byte other than 0 is true.
            bytes.iter_mut().for_each(|b| *b = u8::from(*b != 0));
        }
        let t = HostTensor {
            dtype: found,
            shape: shape.clone(),
            bytes,
        };
        out.push((
            name.to_string(),
            checked_tensor(name, path, ty, found, shape, t)?,
        ));
    }
    Ok(out)
}

/// Writes `tensors` to one safetensors file, each in its own dtype, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<(), DataError> {
    let bytes = encode(path, tensors)?;
    super::sink::write_one(path, Content::Bytes(&bytes)).map_err(DataError::from)
}

/// `tensors` as the bytes of one safetensors file (`path` names it in errors). The format
/// keeps the name `__metadata__` for itself: no tensor may have it.
pub(crate) fn encode(path: &Path, tensors: &[(String, HostTensor)]) -> Result<Vec<u8>, DataError> {
    let bad = |message: String| DataError::Safetensors {
        path: path.into(),
        message,
    };
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if name == METADATA {
            return Err(DataError::ReservedName {
                name: name.clone(),
                path: path.into(),
            });
        }
        let dtype = match t.dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::I32 => Dtype::I32,
            DType::I64 => Dtype::I64,
            DType::Bool => Dtype::BOOL,
        };
        let shape = t.shape.iter().map(|&s| s as usize).collect();
        let view = safetensors::tensor::TensorView::new(dtype, shape, &t.bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))
}

/// The key a safetensors header keeps for its metadata.
pub(crate) const METADATA: &str = "__metadata__";
