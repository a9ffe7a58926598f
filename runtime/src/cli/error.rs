//! The command line's one error type, and the exit code of each kind (SPEC §2).

use crate::backend::BackendError;
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
    /// tc broke its own contract (exit 3): a plan the executor rejects, a planner-internal
    /// diagnostic. The message says it is a bug in tc, not in the program.
    Internal(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Program(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Device(_) | CliError::Internal(_) => 3,
        }
    }
}

impl From<BackendError> for CliError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Data(m) => CliError::Program(format!("error: {m}")),
            BackendError::OutOfMemory(m) | BackendError::Device(m) => CliError::Device(m),
            BackendError::Internal(m) => CliError::Internal(m),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "error: {m}"),
            CliError::Program(m) => f.write_str(m.trim_end()),
            CliError::Device(m) => write!(f, "error: {m}"),
            CliError::Internal(m) => {
                // Rendered diagnostics already start with `error[...]`.
                let m = m.trim_end();
                if m.starts_with("error") {
                    f.write_str(m)?;
                } else {
                    write!(f, "error: {m}")?;
                }
                write!(
                    f,
                    "\n  = note: this is an internal error, a bug in tc rather than in the program \
                     or its data (exit 3); please report it"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_error_keeps_its_exit_code() {
        for e in [
            BackendError::Data("d".into()),
            BackendError::OutOfMemory("o".into()),
            BackendError::Device("v".into()),
            BackendError::Internal("i".into()),
        ] {
            let code = e.exit_code();
            assert_eq!(CliError::from(e).exit_code(), code);
        }
        let internal = CliError::from(BackendError::Internal("invalid plan: x".into()));
        assert_eq!(internal.exit_code(), 3);
        assert!(internal.to_string().contains("bug in tc"), "{internal}");
    }
}
