//! Static figures of the generated CUDA kernels, measured without a GPU: for every example
//! (default dims) and every kernel, ptxas's report through NVRTC for sm_90 (registers, spill
//! bytes, shared memory, `--ptxas-options=-v`) and the SASS instruction count of the
//! kernel's code (its CUBIN section `.text.<kernel>`: 16 bytes an instruction on sm_70 and
//! later), kept in a snapshot (`tests/cuda/snapshots/cuda__static_figures__cuda_static_figures.snap`)
//! so that a change of code generation that costs registers, spills or instructions shows in
//! review. docs/benchmarks.md quotes the figures before and after each codegen change.

use super::{compile_example, require_nvrtc};
use std::collections::BTreeMap;
use std::fmt::Write;
use tc_compiler::codegen::{emit_kernels, translation_unit};
use tc_runtime::cuda;
use tc_tests::examples;

/// ptxas's figures for one function.
#[derive(Debug, Default, Clone, PartialEq)]
struct Ptxas {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
    smem: u32,
}

/// Parses ptxas's verbose report (`ptxas info    : Function properties for NAME`, then
/// `N bytes stack frame, N bytes spill stores, N bytes spill loads`, then `Used N registers,
/// ... N bytes smem ...`) into per-function figures.
fn parse_ptxas(log: &str) -> BTreeMap<String, Ptxas> {
    let mut out: BTreeMap<String, Ptxas> = BTreeMap::new();
    let mut current: Option<String> = None;
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(at) = line.find("Function properties for ") {
            current = Some(line[at + 24..].trim().to_string());
        } else if let Some(at) = line.find("Compiling entry function '") {
            let rest = &line[at + 26..];
            current = rest.split('\'').next().map(str::to_string);
        }
        let Some(name) = current.clone() else {
            continue;
        };
        let f = out.entry(name).or_default();
        if line.contains("spill stores") {
            f.stack = num_before(line, "bytes stack frame").unwrap_or(0);
            f.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
            f.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("registers") {
            f.registers = num_before(line, "registers").unwrap_or(0);
            f.smem = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The sizes of a 64-bit little-endian ELF's sections named `.text.<function>`, by function.
fn text_sections(elf: &[u8]) -> BTreeMap<String, u64> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes"));
    assert_eq!(&elf[..4], b"\x7fELF", "a CUBIN is an ELF file");
    assert_eq!(elf[4], 2, "a 64-bit ELF");
    let shoff = u64_at(0x28) as usize;
    let (shentsize, shnum, shstrndx) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24) as usize;
    let name_at = |off: usize| {
        let s = &elf[strtab + off..];
        String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())])
            .into_owned()
    };
    let mut out = BTreeMap::new();
    for i in 0..shnum {
        let h = header(i);
        let name = name_at(u32_at(h) as usize);
        if let Some(f) = name.strip_prefix(".text.") {
            out.insert(f.to_string(), u64_at(h + 32));
        }
    }
    out
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn cuda_static_figures() {
    require_nvrtc();
    let mut table = String::from(
        "example kernel: registers, spill stores/loads (bytes), stack, smem (bytes), SASS instructions (sm_90)\n",
    );
    for (name, source) in examples() {
        let program = compile_example(&name, &source, &[]);
        let kernels = emit_kernels(&program.plan).expect("the plan lowers");
        let unit = translation_unit(&kernels);
        let compiled = cuda::compile(
            &unit,
            "sm_90",
            cuda::Maths::Exact,
            &["--ptxas-options=-v".to_string()],
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ptxas = parse_ptxas(&compiled.log);
        let text = text_sections(&compiled.cubin);
        assert!(
            !text.is_empty(),
            "{name}: no kernel code in the CUBIN (log: {})",
            compiled.log
        );
        for (function, bytes) in &text {
            let f = ptxas.get(function).unwrap_or_else(|| {
                panic!("{name}: no ptxas report for {function}:\n{}", compiled.log)
            });
            assert_eq!(bytes % 16, 0, "{name} {function}: 16-byte instructions");
            writeln!(
                table,
                "{name} {function}: {} registers, spill {}/{}, stack {}, smem {}, {} SASS",
                f.registers,
                f.spill_stores,
                f.spill_loads,
                f.stack,
                f.smem,
                bytes / 16
            )
            .expect("writing to a String");
        }
    }
    print!("{table}");
    insta::assert_snapshot!("cuda_static_figures", table);
}
