//! Tests of data in and out: round trips, conversions, errors naming the culprit, seeded
//! random tensors, atomic saves and summaries.

use super::*;
use tc_compiler::ir::Dim;

fn ty(dtype: DType, shape: &[u64]) -> TensorType {
    TensorType::new(dtype, shape.iter().map(|&s| Dim::new(s)).collect())
}

fn tensor(dtype: DType, shape: &[u64]) -> HostTensor {
    let n = shape.iter().product::<u64>() as usize;
    let v: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 1.0).collect();
    HostTensor::from_f32(dtype, shape.to_vec(), &v)
}

#[test]
fn npy_round_trips_every_dtype_and_bf16_as_exact_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    for dtype in DType::ALL {
        let t = tensor(dtype, &[3, 4]);
        let p = dir.path().join(format!("{dtype}.npy"));
        write_npy(&p, &t).expect("writes");
        // bf16 is written as f32; every other dtype as itself.
        let file_dtype = if dtype == DType::BF16 {
            DType::F32
        } else {
            dtype
        };
        let back = read_npy(&p, "x", &ty(file_dtype, &[3, 4])).expect("reads");
        assert_eq!(back.dtype, file_dtype);
        assert_eq!(back.to_f32(), t.to_f32(), "{dtype}");
        // f32 data may feed an f16/bf16 input; the bf16 file read back as bf16 is bit-exact.
        let as_declared = read_npy(&p, "x", &ty(dtype, &[3, 4])).expect("reads");
        assert_eq!(as_declared, t, "{dtype}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("lists")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn npy_mismatches_name_the_input_the_file_and_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("x.npy");
    write_npy(&p, &tensor(DType::F16, &[2, 5])).expect("writes");
    let e = read_npy(&p, "x", &ty(DType::F16, &[5, 2])).expect_err("shape");
    let msg = e.to_string();
    assert!(
        msg.contains("`x`")
            && msg.contains("x.npy")
            && msg.contains("[5, 2]")
            && msg.contains("[2, 5]"),
        "{msg}"
    );
    // f16 data cannot feed an f32 input (only f32 converts down).
    let e = read_npy(&p, "x", &ty(DType::F32, &[2, 5])).expect_err("dtype");
    assert!(
        matches!(&e, DataError::DType { expected: DType::F32, found, .. } if found == "f16"),
        "{e}"
    );
    std::fs::write(&p, b"not a npy file").expect("writes");
    assert!(matches!(
        read_npy(&p, "x", &ty(DType::F32, &[2, 5])),
        Err(DataError::Npy { .. })
    ));
    assert!(matches!(
        read_npy(&dir.path().join("none.npy"), "x", &ty(DType::F32, &[1])),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn fortran_order_npy_is_read_in_row_major_order() {
    use npyz::WriterBuilder;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("f.npy");
    // The 2x3 matrix [[0, 1, 2], [3, 4, 5]] stored column by column.
    let mut file = std::fs::File::create(&p).expect("creates");
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[2, 3])
        .order(npyz::Order::Fortran)
        .writer(&mut file)
        .begin_nd()
        .expect("begins");
    w.extend([0f32, 3.0, 1.0, 4.0, 2.0, 5.0]).expect("writes");
    w.finish().expect("finishes");
    let t = read_npy(&p, "f", &ty(DType::F32, &[2, 3])).expect("reads");
    assert_eq!(t.to_f32(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn safetensors_round_trip_and_unknown_or_corrupt_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.safetensors");
    let tensors = vec![
        ("a".to_string(), tensor(DType::BF16, &[2, 2])),
        ("b".to_string(), tensor(DType::F32, &[3])),
    ];
    write_safetensors(&p, &tensors).expect("writes");
    let (ta, tb) = (ty(DType::BF16, &[2, 2]), ty(DType::F16, &[3]));
    let declared: HashMap<&str, &TensorType> = [("a", &ta), ("b", &tb)].into_iter().collect();
    let back = read_safetensors(&p, &declared).expect("reads");
    assert_eq!(back[0], tensors[0].clone());
    // f32 data feeding an f16 tensor is rounded.
    assert_eq!(
        back[1].1,
        HostTensor::from_f32(DType::F16, vec![3], &tensors[1].1.to_f32())
    );
    let only_a: HashMap<&str, &TensorType> = [("a", &ta)].into_iter().collect();
    let e = read_safetensors(&p, &only_a).expect_err("unknown b");
    assert!(
        matches!(&e, DataError::UnknownName { name, .. } if name == "b"),
        "{e}"
    );
    assert!(e.to_string().contains("w.safetensors"), "{e}");
    std::fs::write(&p, [1u8, 2, 3]).expect("writes");
    assert!(matches!(
        read_safetensors(&p, &declared),
        Err(DataError::Safetensors { .. })
    ));
}

#[test]
fn random_tensors_depend_only_on_seed_and_name() {
    let a = random_tensor(0, "x", DType::F32, &[1000]);
    assert_eq!(a, random_tensor(0, "x", DType::F32, &[1000]));
    assert_ne!(a, random_tensor(1, "x", DType::F32, &[1000]));
    assert_ne!(a, random_tensor(0, "y", DType::F32, &[1000]));
    // A prefix of a larger tensor of the same name is the same stream.
    assert_eq!(
        a.to_f32()[..500],
        random_tensor(0, "x", DType::F32, &[10, 50]).to_f32()[..]
    );
    let v = a.to_f32();
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / 1000.0;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
    assert!(
        mean.abs() < 0.1 && (var - 1.0).abs() < 0.15,
        "mean {mean} var {var}"
    );
    assert_eq!(
        random_tensor(3, "h", DType::BF16, &[4]).to_f32(),
        random_tensor(3, "h", DType::F32, &[4])
            .to_f32()
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect::<Vec<_>>()
    );
}

#[test]
fn save_to_a_folder_a_safetensors_file_or_fail_on_a_missing_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outs = vec![
        ("y".to_string(), tensor(DType::BF16, &[2])),
        ("z".to_string(), tensor(DType::F16, &[1, 2])),
    ];
    let files = save_outputs(dir.path(), &outs).expect("saves");
    assert_eq!(
        files,
        vec![dir.path().join("y.npy"), dir.path().join("z.npy")]
    );
    assert_eq!(
        read_npy(&files[0], "y", &ty(DType::F32, &[2]))
            .expect("reads")
            .to_f32(),
        outs[0].1.to_f32()
    );
    let st = dir.path().join("out.safetensors");
    save_outputs(&st, &outs).expect("saves");
    let (ty_y, ty_z) = (ty(DType::BF16, &[2]), ty(DType::F16, &[1, 2]));
    let declared: HashMap<&str, &TensorType> = [("y", &ty_y), ("z", &ty_z)].into_iter().collect();
    let back = read_safetensors(&st, &declared).expect("reads");
    assert_eq!(back, outs);
    let missing = dir.path().join("nope");
    assert!(
        matches!(save_outputs(&missing, &outs), Err(DataError::BadSavePath(p)) if p == missing)
    );
    assert!(matches!(
        save_outputs(&missing.join("o.safetensors"), &outs),
        Err(DataError::Sink(
            crate::data::sink::SinkError::MissingFolder(_)
        ))
    ));
    // `__metadata__` is the safetensors header's own key.
    let reserved = vec![("__metadata__".to_string(), tensor(DType::F32, &[2]))];
    assert!(matches!(
        save_outputs(&dir.path().join("m.safetensors"), &reserved),
        Err(DataError::ReservedName { .. })
    ));
    assert!(!dir.path().join("m.safetensors").exists());
}

#[test]
fn summaries_show_dtype_shape_statistics_and_non_finite_counts() {
    let t = HostTensor::from_f32(
        DType::F32,
        vec![2, 3],
        &[1.0, -2.0, 0.5, f32::NAN, f32::INFINITY, 3.0],
    );
    let s = summarize(&t);
    assert_eq!(
        s,
        "f32[2, 3]  min -2 max 3 mean 0.625  [1, -2, 0.5, NaN, inf, 3]  1 NaN, 1 Inf"
    );
    let s = summarize(&tensor(DType::F16, &[10]));
    assert!(
        s.starts_with("f16[10]  min -1 max 2  mean") || s.starts_with("f16[10]  min -1 max 2 mean"),
        "{s}"
    );
    assert!(s.ends_with(", …]"), "{s}");
}

#[test]
fn leaves_come_from_npy_then_safetensors_then_seeded_random() {
    let src = "input x : f32[2, 3]\ninput y : f16[3]\nparam w : bf16[3]\nz = x * f32(y) + f32(w)\noutput z\n";
    let graph = tc_compiler::check(src, &[]).expect("checks");
    let dir = tempfile::tempdir().expect("tempdir");
    let xfile = dir.path().join("x.npy");
    write_npy(&xfile, &tensor(DType::F32, &[2, 3])).expect("writes");
    let params = dir.path().join("p.safetensors");
    write_safetensors(&params, &[("w".into(), tensor(DType::BF16, &[3]))]).expect("writes");

    let (inputs, ps) =
        load_leaves(&graph, &[("x".into(), xfile.clone())], Some(&params), 5).expect("loads");
    assert_eq!(inputs[0], tensor(DType::F32, &[2, 3]));
    assert_eq!(inputs[1], random_tensor(5, "y", DType::F16, &[3]));
    assert_eq!(ps[0], tensor(DType::BF16, &[3]));

    // An unknown --input name, and the same name twice, are errors naming it.
    let e = load_leaves(&graph, &[("nope".into(), xfile.clone())], None, 0).expect_err("unknown");
    assert!(
        matches!(&e, DataError::UnknownName { name, .. } if name == "nope"),
        "{e}"
    );
    let twice = [("x".to_string(), xfile.clone()), ("x".to_string(), xfile)];
    assert!(matches!(
        load_leaves(&graph, &twice, None, 0),
        Err(DataError::Duplicate { .. })
    ));
    // Without files everything is seeded random, and the seed matters.
    let (a, _) = load_leaves(&graph, &[], None, 1).expect("loads");
    let (b, _) = load_leaves(&graph, &[], None, 2).expect("loads");
    assert_ne!(a[0], b[0]);
}

#[test]
fn a_set_of_files_is_written_whole_or_not_at_all() {
    use super::sink::{resolve, write_all, Content, SinkError};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.bin");
    let a_sink = resolve(&a).expect("a new file").sink;
    // The second file is a full device: writing it fails after `a` is ready.
    let full = resolve(Path::new("/dev/full")).expect("a device").sink;
    assert!(matches!(full, super::sink::Sink::InPlace { .. }));
    let e = write_all(&[
        (&a_sink, Content::Bytes(b"a")),
        (&full, Content::Bytes(b"b")),
    ])
    .expect_err("the device is full");
    assert_eq!(e.0, 1);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "a file or a temporary was left"
    );
    write_all(&[(&a_sink, Content::Bytes(b"a"))]).expect("writes");
    assert_eq!(std::fs::read(&a).expect("a"), b"a");
    // A file replaced keeps its permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let a_sink = resolve(&a).expect("a regular file").sink;
    write_all(&[(&a_sink, Content::Bytes(b"again"))]).expect("writes");
    assert_eq!(std::fs::read(&a).expect("a"), b"again");
    let mode = std::fs::metadata(&a).expect("a").permissions().mode();
    assert_eq!(mode & 0o777, 0o640);

    // A symlink that points at itself ends nowhere.
    let looped = dir.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).expect("symlink");
    assert!(matches!(resolve(&looped), Err(SinkError::LinkLoop(_))));
    // A character device may be named by any number of destinations; a file may not.
    let null = resolve(Path::new("/dev/null")).expect("null").identity;
    assert!(!null.clashes_with(&null));
    let file = resolve(&a).expect("a").identity;
    assert!(file.clashes_with(&file));
}

#[test]
fn npy_files_cut_short_or_corrupted_are_refused_without_a_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.npy");
    write_npy(&good, &tensor(DType::F32, &[3, 4])).expect("writes");
    let bytes = std::fs::read(&good).expect("reads");
    let want = ty(DType::F32, &[3, 4]);
    let p = dir.path().join("bad.npy");
    // Every prefix: refused, and a prefix that ends in the data says it is truncated.
    for len in 0..bytes.len() {
        std::fs::write(&p, &bytes[..len]).expect("writes");
        let e = read_npy(&p, "x", &want).expect_err("a prefix is not the file");
        if len >= 128 {
            assert!(e.to_string().contains("truncated"), "{len}: {e}");
        }
    }
    // Random bytes changed anywhere: an answer either way, never a panic.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    for _ in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..b.len());
            b[at] = rng.random();
        }
        std::fs::write(&p, &b).expect("writes");
        let _ = read_npy(&p, "x", &want);
    }
}

#[test]
fn npy_headers_of_nested_brackets_or_too_long_are_refused_at_once() {
    // Found by fuzzing (the `data` target): 138 bytes whose header opens 61 `{` took npyz's
    // literal parser longer than libFuzzer's 10 s limit. Refused before it is parsed now.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut header = b"{'descr': '<f4', ".to_vec();
    header.extend(std::iter::repeat_n(b'{', 60));
    header.extend_from_slice(b"'fortran_order': False, 'shape': (), }");
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&1.5f32.to_le_bytes());
    let p = dir.path().join("deep.npy");
    std::fs::write(&p, &file).expect("write");
    let started = std::time::Instant::now();
    let e = read_npy(&p, "x", &ty(DType::F32, &[])).expect_err("refused");
    assert!(e.to_string().contains("nests brackets 62 deep"), "{e}");
    // Not a timing test: the refusal needs no parse at all, so even a loaded machine gives
    // it in far less than the minutes the parse took.
    assert!(started.elapsed().as_secs() < 5);
    // A header longer than NumPy's 10 000-byte limit.
    let mut file = b"\x93NUMPY\x02\x00".to_vec();
    file.extend_from_slice(&20_000u32.to_le_bytes());
    file.extend(std::iter::repeat_n(b' ', 20_004));
    let p = dir.path().join("long.npy");
    std::fs::write(&p, &file).expect("write");
    let e = read_npy(&p, "x", &ty(DType::F32, &[])).expect_err("refused");
    assert!(e.to_string().contains("NumPy writes at most 10000"), "{e}");
}

#[test]
fn data_fuzz_finds_stay_fixed() {
    // Each file in tests/in/regress_data is an input of the `data` fuzz target: its first
    // byte picks the reader (even: .npy) and the declared type, the rest is the file. Each
    // must be read or refused, promptly and without a panic.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/in/regress_data");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut n = 0;
    for e in std::fs::read_dir(&dir)
        .expect("tests/in/regress_data")
        .flatten()
    {
        let bytes = std::fs::read(e.path()).expect("read");
        let Some((&which, rest)) = bytes.split_first() else {
            continue;
        };
        let p = tmp.path().join("case");
        std::fs::write(&p, rest).expect("write");
        if which % 2 == 0 {
            let _ = read_npy(&p, "x", &ty(DType::F32, &[]));
        } else {
            let declared: std::collections::HashMap<&str, &TensorType> =
                std::collections::HashMap::new();
            let _ = super::read_safetensors(&p, &declared);
        }
        n += 1;
    }
    assert!(n >= 1, "no inputs in {}", dir.display());
}

/// Integers past f32's exact range and both bools survive `.npy` and safetensors exactly;
/// integer data never feeds a float tensor, nor float data an integer one (exit 1 naming
/// both dtypes and the fix).
#[test]
fn integer_and_bool_data_round_trip_exactly_and_kinds_never_convert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = [i64::MIN, -3, 0, 1, (1 << 53) + 1, i64::MAX];
    let cases = [
        HostTensor::from_i64(DType::I64, vec![2, 3], &big),
        HostTensor::from_i64(
            DType::I32,
            vec![2, 3],
            &[i32::MIN as i64, -1, 0, 7, 1 << 30, i32::MAX as i64],
        ),
        HostTensor::from_i64(DType::Bool, vec![2, 3], &[1, 0, 0, 1, 1, 0]),
    ];
    let mut named = Vec::new();
    for t in &cases {
        let p = dir.path().join(format!("{}.npy", t.dtype));
        write_npy(&p, t).expect("writes");
        let back = read_npy(&p, "x", &ty(t.dtype, &[2, 3])).expect("reads");
        assert_eq!(&back, t, "{}", t.dtype);
        // An integer file for an f32 input, and an f32 file for this input: refused.
        let e = read_npy(&p, "x", &ty(DType::F32, &[2, 3])).expect_err("kind");
        assert!(e.to_string().contains("expected dtype f32"), "{e}");
        named.push((format!("t_{}", t.dtype), t.clone()));
    }
    assert_eq!(cases[0].to_i64(), big);
    let f = dir.path().join("f32.npy");
    write_npy(&f, &tensor(DType::F32, &[2, 3])).expect("writes");
    let e = read_npy(&f, "idx", &ty(DType::I64, &[2, 3])).expect_err("kind");
    let msg = e.to_string();
    assert!(
        msg.contains("`idx`")
            && msg.contains("expected dtype i64, found f32")
            && msg.contains("astype(np.int64)"),
        "{msg}"
    );
    let st = dir.path().join("all.safetensors");
    write_safetensors(&st, &named).expect("writes");
    let types: Vec<TensorType> = cases.iter().map(|t| ty(t.dtype, &[2, 3])).collect();
    let declared: HashMap<&str, &TensorType> = named
        .iter()
        .map(|(n, _)| n.as_str())
        .zip(types.iter())
        .collect();
    let back = read_safetensors(&st, &declared).expect("reads");
    for (name, t) in &named {
        let got = back.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        assert_eq!(got, Some(t), "{name}");
    }
    let wrong: HashMap<&str, &TensorType> = [("t_i64", &types[1])].into_iter().collect();
    let st1 = dir.path().join("one.safetensors");
    write_safetensors(&st1, &named[..1]).expect("writes");
    let e = read_safetensors(&st1, &wrong).expect_err("i64 data for an i32 tensor");
    assert!(
        e.to_string().contains("expected dtype i32, found i64"),
        "{e}"
    );
}
