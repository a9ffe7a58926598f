//! The command line's one error type, and the exit code of each kind (SPEC §2).

use std::fmt;

/// Why a `tc` command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage (exit 2): a missing file, a malformed option.
    Usage(String),
    /// An error in the program or its data (exit 1). For programs, the rendered diagnostics.
    Program(String),
    /// A device or compiler failure (exit 3), with the driver's or NVRTC's message.
    Device(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Program(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Device(_) => 3,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "error: {m}"),
            CliError::Program(m) => f.write_str(m.trim_end()),
            CliError::Device(m) => write!(f, "error: {m}"),
        }
    }
}
