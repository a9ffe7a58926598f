//! Decides, when the test binaries are built, which tests cannot run on this machine, so
//! that the test harness reports them as *ignored* (with the reason) instead of as passed:
//! the NVRTC tests (`tests/cuda.rs`) need `libnvrtc`, the CUDA emulation tests
//! (`tests/cuda/emu.rs`) a host C++ compiler, the per-element SASS test (`tests/cuda/sass.rs`)
//! also `nvdisasm`. It sets `cfg(tc_no_nvrtc)` / `cfg(tc_no_emu)` / `cfg(tc_no_nvdisasm)`,
//! which the tests turn into `#[ignore = "…"]`.
//!
//! `TC_REQUIRE_NVRTC=1` / `TC_REQUIRE_EMU=1` / `TC_REQUIRE_NVDISASM=1` never set them: the tests then run and fail
//! when what they need is missing; so does `cargo test -- --include-ignored`. The probe
//! runs again when the variables that steer it change, when the library it found changes,
//! or when a file is added to the folders it searched (see `watch`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/tools.rs"]
mod tools;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for v in [
        "TC_REQUIRE_NVRTC",
        "TC_REQUIRE_EMU",
        "TC_REQUIRE_NVDISASM",
        "TC_NVRTC_LIB",
        "TC_NVDISASM",
        "TC_EMU_CXX",
        "LD_LIBRARY_PATH",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    println!("cargo::rustc-check-cfg=cfg(tc_no_nvrtc)");
    println!("cargo::rustc-check-cfg=cfg(tc_no_emu)");
    println!("cargo::rustc-check-cfg=cfg(tc_no_nvdisasm)");

    let required = |v: &str| std::env::var(v).as_deref() == Ok("1");
    if !required("TC_REQUIRE_NVRTC") {
        if let Err(searched) = find_nvrtc() {
            println!("cargo::rustc-cfg=tc_no_nvrtc");
            println!(
                "cargo::warning=NVRTC not found: the NVRTC tests will be reported as ignored \
                 (TC_REQUIRE_NVRTC=1 makes them fail instead)"
            );
            for dir in searched {
                watch(&dir);
            }
        }
    }
    if !required("TC_REQUIRE_EMU") && find_cxx().is_none() {
        println!("cargo::rustc-cfg=tc_no_emu");
        println!(
            "cargo::warning=no host C++ compiler: the CUDA emulation tests will be reported as \
             ignored (TC_REQUIRE_EMU=1 makes them fail instead)"
        );
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            watch(&dir);
        }
    }
    if !required("TC_REQUIRE_NVDISASM") && tools::find_nvdisasm().is_none() {
        println!("cargo::rustc-cfg=tc_no_nvdisasm");
        println!(
            "cargo::warning=nvdisasm not found: the per-element SASS test will be reported as \
             ignored (TC_REQUIRE_NVDISASM=1 makes it fail instead)"
        );
    }
}

/// Reruns this script when `path` changes (a folder changes when a file is added to it).
/// Only existing paths are watched: cargo reruns on every build for a missing one.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// Finds NVRTC where the tests look for it (`tc_runtime::cuda::nvrtc_available` and the pip
/// wheel through `python3`); on failure, the folders searched.
fn find_nvrtc() -> Result<(), Vec<PathBuf>> {
    let names = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];
    for name in names {
        // SAFETY: loads NVRTC by its usual name and unloads it; its initialisers only set up
        // the library itself.
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(());
        }
    }
    // Watched when nothing is found: the loader's folders and CUDA's. (Not the python
    // package folders nor /usr/lib, which cargo would scan whole on every build: after
    // `pip install nvidia-cuda-nvrtc`, set LD_LIBRARY_PATH or TC_NVRTC_LIB as CI does, or
    // touch tests/build.rs.)
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default()).collect();
    let mut files: Vec<PathBuf> = std::env::var_os("TC_NVRTC_LIB")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    for dir in dirs.iter().map(PathBuf::as_path).chain([
        Path::new("/usr/local/cuda/targets/x86_64-linux/lib"),
        Path::new("/usr/lib/x86_64-linux-gnu"),
    ]) {
        files.extend(names.iter().map(|n| dir.join(n)));
    }
    // The pip wheels (`nvidia-cuda-nvrtc`), wherever python keeps its packages.
    let out = Command::new("python3")
        .args(["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"])
        .output();
    if let Ok(out) = out {
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            let dir = PathBuf::from(dir.trim());
            for sub in [
                "cu13/lib/libnvrtc.so.13",
                "cuda_nvrtc/lib/libnvrtc.so.12",
                "cu12/lib/libnvrtc.so.12",
            ] {
                files.push(dir.join(sub));
            }
        }
    }
    for f in &files {
        if f.is_file() {
            println!("cargo::rerun-if-changed={}", f.display());
            return Ok(());
        }
    }
    Err(dirs)
}

/// The host C++ compiler the emulation would use (`tc_runtime::cuda::emu::compiler`).
fn find_cxx() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("TC_EMU_CXX") {
        Ok(c) if !c.is_empty() => vec![c],
        _ => ["g++", "c++", "clang++"].map(String::from).to_vec(),
    };
    candidates.into_iter().find(|c| tools::runs(c))
}
