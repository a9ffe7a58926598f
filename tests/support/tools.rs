//! Finding the external tools some tests need, shared by `tests/build.rs` (which reports
//! those tests as ignored when a tool is missing) and the tests themselves.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Whether `program --version` runs and succeeds.
pub fn runs(program: impl AsRef<OsStr>) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `nvdisasm` (the CUDA binary utilities' SASS disassembler, for `tests/cuda/sass.rs`):
/// `$TC_NVDISASM`, then `nvdisasm` on `PATH`, then the pip wheel `nvidia-cuda-nvdisasm`
/// (`nvidia/cu13/bin/nvdisasm`, located through `python3`); the first that runs.
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
    candidates.into_iter().find(|c| runs(c))
}
