//! `.npy` files: f32, f16, int32, int64 and bool natively (either byte order, C or Fortran
//! order when reading); bf16 has no NumPy dtype and is written as f32, exactly. Read from a file or from
//! standard input (`-`); every size a file states is checked against what it holds.

use super::sink::Content;
use super::{checked_tensor, io_err, DataError};
use crate::tensor::HostTensor;
use npyz::WriterBuilder;
use std::io::{Read, Write};
use std::path::Path;
use tc_compiler::ir::{DType, TensorType};

/// Reads the `.npy` file at `path` (`-`: standard input) as the tensor `name` of type `ty`.
/// Every size the file states — its header's length, its data's — is checked against the
/// bytes it holds before anything that size is allocated.
pub fn read_npy(path: &Path, name: &str, ty: &TensorType) -> Result<HostTensor, DataError> {
    let bad = |message: String| DataError::Npy {
        path: path.to_path_buf(),
        message,
    };
    // A regular file is streamed: its bytes are never all in memory next to the values.
    // Anything else (standard input, a pipe) has no length until it is read whole.
    let (mut reader, file_len): (Box<dyn Read>, u64) = match open_regular(path)? {
        Some((file, len)) => (Box::new(std::io::BufReader::new(file)), len),
        None => {
            let bytes = super::read_path(path)?;
            let len = bytes.len() as u64;
            (Box::new(std::io::Cursor::new(bytes)), len)
        }
    };
    // The preamble: magic, version, and the header's length, which must fit in the file.
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut reader, &mut pre[..8]).map_err(io_err("read", path))?;
    if got < 8 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad(
            "it does not start with the .npy magic bytes (\\x93NUMPY)".into(),
        ));
    }
    let size_bytes = match pre[6] {
        1 => 2,
        2 | 3 => 4,
        v => {
            return Err(bad(format!(
                "format version {v}.{} is not one tc reads",
                pre[7]
            )))
        }
    };
    let got = read_up_to(&mut reader, &mut pre[8..8 + size_bytes]).map_err(io_err("read", path))?;
    if got < size_bytes {
        return Err(bad(format!(
            "it is truncated: {file_len} bytes, not even the header's length"
        )));
    }
    let header_len = if size_bytes == 2 {
        u16::from_le_bytes([pre[8], pre[9]]) as u64
    } else {
        u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64
    };
    let data_start = 8 + size_bytes as u64 + header_len;
    if data_start > file_len {
        return Err(bad(format!(
            "it is truncated or corrupt: its header claims {header_len} bytes but the whole \
             file has {file_len} bytes"
        )));
    }
    // The header is a Python literal, which npyz parses with a backtracking grammar: a
    // header of nested brackets (fuzzing found 61 `{` in 138 bytes) takes time exponential
    // in their depth. NumPy itself refuses headers over 10 000 bytes for the same reason;
    // a real header nests three deep at most (a dict, a shape tuple, a structured descr).
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "its header claims {header_len} bytes; NumPy writes at most {MAX_HEADER_BYTES} \
             (it is not an .npy file tc reads)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    let got = read_up_to(&mut reader, &mut header).map_err(io_err("read", path))?;
    if got < header.len() {
        return Err(bad(format!(
            "it is truncated: {file_len} bytes, in the middle of its header"
        )));
    }
    if let Some(depth) = bracket_depth_over(&header, MAX_HEADER_DEPTH) {
        return Err(bad(format!(
            "its header nests brackets {depth} deep, where a NumPy header nests \
             {MAX_HEADER_DEPTH} at most (it is not an .npy header)"
        )));
    }
    let mut head = pre[..8 + size_bytes].to_vec();
    head.extend_from_slice(&header);
    let npy = npyz::NpyFile::new(std::io::Cursor::new(head).chain(reader))
        .map_err(|e| bad(e.to_string()))?;
    let shape = npy.shape().to_vec();
    let fortran = npy.order() == npyz::Order::Fortran;
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => return Err(wrong_dtype(name, path, ty, other.descr())),
    };
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &s| a.checked_mul(s))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let (item, dtype_name) = match &descr[1..] {
        "f4" => (4u64, "f32"),
        "f2" => (2, "f16"),
        "i4" => (4, "i32"),
        "i8" => (8, "i64"),
        "b1" => (1, "bool"),
        _ => return Err(wrong_dtype(name, path, ty, descr)),
    };
    let found = DType::from_name(dtype_name).unwrap_or(DType::F32);
    // The data must be all there before room for it is made.
    let needed = numel.checked_mul(item);
    let held = file_len - data_start;
    if needed.is_none_or(|n| n > held) {
        let needed = needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return Err(bad(format!(
            "it is truncated: shape {shape:?} of {dtype_name} needs {needed} bytes of data, \
             the file holds {held}"
        )));
    }
    // Nor is room made for data of the wrong shape.
    if shape != ty.sizes() {
        return Err(DataError::Shape {
            name: name.into(),
            path: path.into(),
            expected: ty.sizes(),
            found: shape,
        });
    }
    if found.is_integral() {
        let mut ints: Vec<i64> = match found {
            DType::I32 => npy
                .into_vec::<i32>()
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I64 => npy.into_vec::<i64>().map_err(|e| bad(e.to_string()))?,
            _ => npy
                .into_vec::<bool>()
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .map(i64::from)
                .collect(),
        };
        if ints.len() as u64 != numel {
            return Err(bad(format!("{} values for shape {shape:?}", ints.len())));
        }
        if fortran && shape.len() > 1 {
            ints = fortran_to_c(&ints, &shape);
        }
        let t = HostTensor::from_i64(found, shape.clone(), &ints);
        return checked_tensor(name, path, ty, found, shape, t);
    }
    let mut values: Vec<f32> = if item == 4 {
        npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?
    } else {
        npy.into_vec::<half::f16>()
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .map(|v| v.to_f32())
            .collect()
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

/// The longest header tc reads (NumPy's own `max_header_size`).
const MAX_HEADER_BYTES: u64 = 10_000;
/// The deepest bracket nesting of a header tc reads.
const MAX_HEADER_DEPTH: usize = 3;

/// The depth of bracket nesting in `header` when it exceeds `max`, else `None`.
fn bracket_depth_over(header: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in header {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    (deepest > max).then_some(deepest)
}

/// A regular file, open, and its length; `None` for anything else (`-`, a pipe, a device).
fn open_regular(path: &Path) -> Result<Option<(std::fs::File, u64)>, DataError> {
    if path.as_os_str() == "-" {
        return Ok(None);
    }
    let file = std::fs::File::open(path).map_err(io_err("read", path))?;
    let meta = file.metadata().map_err(io_err("read", path))?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A dtype tc does not take for this tensor; float64, NumPy's default, gets the fix.
fn wrong_dtype(name: &str, path: &Path, ty: &TensorType, found: String) -> DataError {
    let help = if found.ends_with("f8") {
        let to = if ty.dtype == DType::F16 {
            "float16"
        } else {
            "float32"
        };
        format!("\n  = help: NumPy makes float64 by default; save `a.astype(np.{to})` instead")
    } else {
        String::new()
    };
    DataError::DType {
        name: name.into(),
        path: path.into(),
        expected: ty.dtype,
        found,
        help,
    }
}

/// Reorders column-major values into row-major.
fn fortran_to_c<T: Copy + Default>(values: &[T], shape: &[u64]) -> Vec<T> {
    let n = values.len();
    let mut out = vec![T::default(); n];
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

/// Writes `t` to `path` as `.npy` (f32, f16, int32, int64, bool; bf16 as f32, exactly),
/// atomically.
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), DataError> {
    super::sink::write_one(path, Content::Npy(t)).map_err(DataError::from)
}

/// `t` as `.npy` bytes into `w`: f32 and f16 as themselves, bf16 as f32 (exactly).
pub(crate) fn encode(w: &mut dyn Write, t: &HostTensor) -> std::io::Result<()> {
    let shape = t.shape.clone();
    match t.dtype {
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
        DType::I32 => {
            let mut out = npyz::WriteOptions::<i32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(t.iter_i64().map(|v| v as i32))?;
            out.finish()
        }
        DType::I64 => {
            let mut out = npyz::WriteOptions::<i64>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(t.iter_i64())?;
            out.finish()
        }
        DType::Bool => {
            let mut out = npyz::WriteOptions::<bool>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(t.iter_i64().map(|v| v != 0))?;
            out.finish()
        }
    }
}
