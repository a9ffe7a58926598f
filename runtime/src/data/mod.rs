//! Data in and out: `.npy` and safetensors files (`-` reads standard input), seeded random
//! tensors for everything not supplied, saving outputs (all or nothing, through `sink`) and
//! one-line summaries. Every error names the tensor and the file at fault.

mod interrupt;
mod npy;
mod random;
pub mod sink;
mod st;
mod summary;
#[cfg(test)]
mod tests;

pub use npy::{read_npy, write_npy};
pub use random::random_tensor;
pub use st::{read_safetensors, write_safetensors};
pub use summary::summarize;

use crate::tensor::HostTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tc_compiler::ir::{DType, Graph, TensorType};
use thiserror::Error;

/// Why data could not be read or written.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid .npy file: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("`{name}` from {path}: expected dtype {expected}, found {found}{help}")]
    DType {
        name: String,
        path: PathBuf,
        expected: DType,
        found: String,
        /// A `\n  = help: …` line, or nothing.
        help: String,
    },
    #[error("`{name}` from {path}: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        path: PathBuf,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("`{name}` is not an input or param of the program{}", from.as_ref().map(|p| format!(" (found in {})", p.display())).unwrap_or_default())]
    UnknownName { name: String, from: Option<PathBuf> },
    #[error("`{name}` is given twice with --input")]
    Duplicate { name: String },
    #[error("param `{name}` is not in {path} (with --params, every param must come from the file or from --input; nothing is silently made up)")]
    MissingParam { name: String, path: PathBuf },
    #[error("{}: --save takes an existing folder (one NAME.npy per output) or a path ending in .safetensors (one file)", if .0.exists() { format!("{} is not a folder", .0.display()) } else { format!("there is no folder {}", .0.display()) })]
    BadSavePath(PathBuf),
    #[error("the output `{name}` cannot be saved to {path}: safetensors keeps the name `{name}` for the file's metadata\n  = help: rename the output, or save into a folder (one .npy per output)")]
    ReservedName { name: String, path: PathBuf },
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DataError + 'a {
    move |source| DataError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Converts `values` read from a file of dtype `found` into a tensor of `ty` for `name`:
/// the dtypes must match, except that f32 data may feed an f16/bf16 tensor (rounded to
/// nearest, ties to even).
/// The whole of the file at `path`, or of standard input for `-`.
pub fn read_path(path: &Path) -> Result<Vec<u8>, DataError> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(io_err("read", Path::new("standard input")))?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(io_err("read", path))
}

fn checked_tensor(
    name: &str,
    path: &Path,
    ty: &TensorType,
    found: DType,
    shape: Vec<u64>,
    values: HostTensor,
) -> Result<HostTensor, DataError> {
    let expected = ty.sizes();
    if shape != expected {
        return Err(DataError::Shape {
            name: name.into(),
            path: path.into(),
            expected,
            found: shape,
        });
    }
    if found == ty.dtype {
        Ok(values)
    } else if found == DType::F32 && ty.dtype.is_float() {
        Ok(HostTensor::from_f32(ty.dtype, shape, &values.to_f32()))
    } else {
        Err(DataError::DType {
            name: name.into(),
            path: path.into(),
            expected: ty.dtype,
            found: found.name().into(),
            help: kind_help(ty.dtype, found),
        })
    }
}

/// The fix for data of the wrong kind (float data for an integer tensor, or the reverse):
/// tc never converts between kinds silently.
pub(crate) fn kind_help(expected: DType, found: DType) -> String {
    if expected.category() == found.category() {
        return String::new();
    }
    let np = match expected {
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::Bool => "bool",
        DType::F16 => "float16",
        _ => "float32",
    };
    format!(
        "\n  = help: tc does not convert {} data to {expected}; save `a.astype(np.{np})` instead",
        found.name()
    )
}

/// Every input and param of `graph`: from `--input NAME=FILE.npy` (inputs or params), else
/// from the `--params` safetensors file (by name; a name in the file that the program does
/// not declare is an error, and so is a param the file lacks), else seeded random N(0, 1)
/// from `seed` and the tensor's name.
/// Returns (inputs, params) in declaration order.
pub fn load_leaves(
    graph: &Graph,
    npy_files: &[(String, PathBuf)],
    params_file: Option<&Path>,
    seed: u64,
) -> Result<(Vec<HostTensor>, Vec<HostTensor>), DataError> {
    let declared: HashMap<&str, &TensorType> = graph
        .inputs
        .iter()
        .chain(&graph.params)
        .map(|l| (l.name.as_str(), &l.ty))
        .collect();
    let mut supplied: HashMap<String, HostTensor> = HashMap::new();
    if let Some(path) = params_file {
        for (name, t) in read_safetensors(path, &declared)? {
            supplied.insert(name, t);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (name, path) in npy_files {
        let ty = declared
            .get(name.as_str())
            .ok_or_else(|| DataError::UnknownName {
                name: name.clone(),
                from: None,
            })?;
        if !seen.insert(name.as_str()) {
            return Err(DataError::Duplicate { name: name.clone() });
        }
        supplied.insert(name.clone(), read_npy(path, name, ty)?);
    }
    if let Some(path) = params_file {
        if let Some(missing) = graph
            .params
            .iter()
            .find(|l| !supplied.contains_key(&l.name))
        {
            return Err(DataError::MissingParam {
                name: missing.name.clone(),
                path: path.to_path_buf(),
            });
        }
    }
    let mut take = |leaves: &[tc_compiler::ir::Leaf]| -> Vec<HostTensor> {
        leaves
            .iter()
            .map(|l| {
                supplied
                    .remove(&l.name)
                    .unwrap_or_else(|| random_tensor(seed, &l.name, l.ty.dtype, &l.ty.sizes()))
            })
            .collect()
    };
    let inputs = take(&graph.inputs);
    let params = take(&graph.params);
    Ok((inputs, params))
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// The files `--save PATH` writes for outputs named `names`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveLayout {
    /// `PATH/NAME.npy`, one per output.
    Folder(Vec<PathBuf>),
    /// One safetensors file holding every output.
    Safetensors(PathBuf),
}

/// What `--save PATH` writes: a path ending in `.safetensors` is one file (whose folder the
/// destination check asks about; no output may be named `__metadata__`), any other path must
/// be an existing folder and gets `NAME.npy` per output. Asked before the program runs.
pub fn save_layout(path: &Path, names: &[&str]) -> Result<SaveLayout, DataError> {
    if is_safetensors(path) {
        if let Some(name) = names.iter().find(|n| **n == st::METADATA) {
            return Err(DataError::ReservedName {
                name: name.to_string(),
                path: path.into(),
            });
        }
        return Ok(SaveLayout::Safetensors(path.to_path_buf()));
    }
    if !path.is_dir() {
        return Err(DataError::BadSavePath(path.to_path_buf()));
    }
    Ok(SaveLayout::Folder(
        names
            .iter()
            .map(|n| path.join(format!("{n}.npy")))
            .collect(),
    ))
}

/// The bytes of one safetensors file holding `outputs`, each in its own dtype.
pub fn safetensors_bytes(
    path: &Path,
    outputs: &[(String, HostTensor)],
) -> Result<Vec<u8>, DataError> {
    st::encode(path, outputs)
}

/// `--save PATH` (see `save_layout`), all or nothing: every file is resolved first, then
/// written by `sink::write_all`. Returns the files written.
pub fn save_outputs(
    path: &Path,
    outputs: &[(String, HostTensor)],
) -> Result<Vec<PathBuf>, DataError> {
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    match save_layout(path, &names)? {
        SaveLayout::Safetensors(file) => {
            write_safetensors(&file, outputs)?;
            Ok(vec![file])
        }
        SaveLayout::Folder(files) => {
            let sinks = files
                .iter()
                .map(|f| sink::resolve(f).map(|r| r.sink))
                .collect::<Result<Vec<_>, _>>()?;
            let set: Vec<(&sink::Sink, sink::Content<'_>)> = sinks
                .iter()
                .zip(outputs)
                .map(|(s, (_, t))| (s, sink::Content::Npy(t)))
                .collect();
            sink::write_all(&set).map_err(|(i, source)| DataError::Io {
                action: "write",
                path: files[i].clone(),
                source,
            })?;
            Ok(files)
        }
    }
}
