//! Data in and out: `.npy` and safetensors files, seeded random tensors for everything not
//! supplied, saving outputs (atomically: temporary name, then rename) and one-line summaries.
//! Every error names the tensor and the file at fault.

mod npy;
mod random;
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
    #[error("`{name}` from {path}: expected dtype {expected}, found {found}")]
    DType {
        name: String,
        path: PathBuf,
        expected: DType,
        found: String,
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
    #[error("`{0}` is not a folder")]
    NotAFolder(PathBuf),
    #[error("the folder {0} does not exist")]
    MissingFolder(PathBuf),
    #[error("cannot save to {0}: give an existing folder or a path ending in .safetensors")]
    BadSavePath(PathBuf),
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
    } else if found == DType::F32 {
        Ok(HostTensor::from_f32(ty.dtype, shape, &values.to_f32()))
    } else {
        Err(DataError::DType {
            name: name.into(),
            path: path.into(),
            expected: ty.dtype,
            found: found.name().into(),
        })
    }
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

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// no reader ever sees a half-written file.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), DataError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(DataError::MissingFolder(dir));
    }
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Whether `--save PATH` can be honoured: a `.safetensors` path needs an existing folder to
/// hold it, any other path must be an existing folder. The command line asks before the
/// program runs, so a long run never ends in a save that cannot happen.
pub fn check_save_path(path: &Path) -> Result<(), DataError> {
    if is_safetensors(path) {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if folder.is_dir() {
            Ok(())
        } else if folder.exists() {
            Err(DataError::NotAFolder(folder.to_path_buf()))
        } else {
            Err(DataError::MissingFolder(folder.to_path_buf()))
        }
    } else if !path.exists() {
        Err(DataError::MissingFolder(path.to_path_buf()))
    } else if !path.is_dir() {
        Err(DataError::BadSavePath(path.to_path_buf()))
    } else {
        Ok(())
    }
}

/// `--save PATH`: an existing folder gets `NAME.npy` per output (bf16 written as f32,
/// exactly); a path ending in `.safetensors` gets one file with every output in its own
/// dtype. Returns the files written.
pub fn save_outputs(
    path: &Path,
    outputs: &[(String, HostTensor)],
) -> Result<Vec<PathBuf>, DataError> {
    check_save_path(path)?;
    if is_safetensors(path) {
        write_safetensors(path, outputs)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut written = Vec::new();
    for (name, t) in outputs {
        let file = path.join(format!("{name}.npy"));
        write_npy(&file, t)?;
        written.push(file);
    }
    Ok(written)
}

/// Writes a whole file (a report, say) through a temporary name and a rename.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    write_atomically(path, |w| std::io::Write::write_all(w, bytes))
}
