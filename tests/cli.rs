//! End-to-end command-line tests: exit codes, data in and out.
