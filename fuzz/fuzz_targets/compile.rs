//! Fuzz target: any bytes through the whole compiler — parse, check, decompose, fuse, plan,
//! report, CUDA C — must give a plan that passes the independent verifier, or diagnostics
//! whose spans lie inside the source. Never a panic, a hang or an overflow. The checks are
//! shared with the CI-sized version in `tests/reliability.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_one(data));
