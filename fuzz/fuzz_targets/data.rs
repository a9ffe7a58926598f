//! Fuzz target: any bytes as a `.npy` or a safetensors file given to `--input`/`--params`.
//! Reading must give a tensor of the declared type or a data error; never a panic, a hang,
//! or an allocation the file's length does not justify (libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb` catch those).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::io::Write;
use tc_compiler::ir::{DType, Dim, TensorType};
use tc_runtime::data::{read_npy, read_safetensors};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    // The declared type varies with the first byte: dtype and a small shape.
    let dtype = [DType::F32, DType::F16, DType::BF16][(which as usize / 2) % 3];
    let shape: Vec<Dim> = match (which as usize / 6) % 4 {
        0 => vec![],
        1 => vec![Dim::new(3)],
        2 => vec![Dim::new(2), Dim::new(3)],
        _ => vec![Dim::new(1), Dim::new(4), Dim::new(2)],
    };
    let ty = TensorType::new(dtype, shape);
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write");
    if which % 2 == 0 {
        if let Ok(t) = read_npy(file.path(), "x", &ty) {
            let numel: u64 = ty.shape.iter().map(|d| d.size).product();
            assert_eq!(t.bytes.len() as u64, numel * ty.dtype.size());
        }
    } else {
        let declared: HashMap<&str, &TensorType> = [("x", &ty), ("y", &ty)].into_iter().collect();
        if let Ok(ts) = read_safetensors(file.path(), &declared) {
            for (_, t) in ts {
                let numel: u64 = ty.shape.iter().map(|d| d.size).product();
                assert_eq!(t.bytes.len() as u64, numel * t.dtype.size());
            }
        }
    }
});
