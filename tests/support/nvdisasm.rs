//! Where the tests find `nvdisasm` (the CUDA binary utilities' SASS disassembler): shared by
//! `tests/build.rs` (which reports the per-element SASS test as ignored without it) and that
//! test (`tests/cuda/sass.rs`). `$TC_NVDISASM`, then `nvdisasm` on `PATH`, then the pip
//! wheel `nvidia-cuda-nvdisasm` (`nvidia/cu13/bin/nvdisasm`, located through `python3`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The first `nvdisasm` that runs (`--version` succeeds), if any.
pub fn find_nvdisasm() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TC_NVDISASM").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("nvdisasm"));
    if let Ok(out) = Command::new("python3")
        .args(["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"])
        .stderr(Stdio::null())
        .output()
    {
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            candidates.push(PathBuf::from(dir.trim()).join("cu13/bin/nvdisasm"));
        }
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
