//! tc's own messages on standard output and standard error, written so that a failed write
//! (`tc check p.tx > /dev/full`) is never a panic: the first failure is remembered, later
//! messages to that stream are dropped, and the command ends with exit 1 naming it
//! (`finish`). While a report is bound for standard output (`--memory-json -`), messages
//! meant for it go to standard error instead, so standard output holds the report alone.
//!
//! The `print!`, `println!` and `eprintln!` defined here shadow the standard macros in
//! `cli/mod.rs` (which declares this module first, `#[macro_use]`) and in every module it
//! declares after, so every message of the command line goes through here.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

macro_rules! print {
    ($($arg:tt)*) => { $crate::cli::console::out(format_args!($($arg)*)) };
}

macro_rules! println {
    () => { $crate::cli::console::out(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::console::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::cli::console::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The first failed write to standard output, if any.
static STDOUT_FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);
/// Whether a write to standard error has failed (nothing is written there after).
static STDERR_FAILED: AtomicBool = AtomicBool::new(false);
/// Whether messages for standard output go to standard error (a report holds stdout).
static STDOUT_TAKEN: AtomicBool = AtomicBool::new(false);

/// A message for standard output.
pub fn out(args: fmt::Arguments<'_>) {
    clear_status();
    if STDOUT_TAKEN.load(Ordering::Relaxed) {
        return err(args);
    }
    let mut failed = STDOUT_FAILED.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_some() {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        *failed = Some(e);
    }
}

/// A message for standard error.
pub fn err(args: fmt::Arguments<'_>) {
    if STDERR_FAILED.load(Ordering::Relaxed) {
        return;
    }
    clear_status();
    if std::io::stderr().lock().write_fmt(args).is_err() {
        STDERR_FAILED.store(true, Ordering::Relaxed);
    }
}

/// From now on, messages for standard output go to standard error: a report is written to
/// standard output.
pub fn give_stdout_to_a_report() {
    STDOUT_TAKEN.store(true, Ordering::Relaxed);
}

/// Whether every message so far reached standard output: an error naming the failure if
/// not (exit 1). Flushes what is buffered first.
pub fn check_stdout() -> Result<(), super::CliError> {
    let mut failed = STDOUT_FAILED.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_none() {
        if let Err(e) = std::io::stdout().lock().flush() {
            *failed = Some(e);
        }
    }
    match &*failed {
        None => Ok(()),
        Some(e) => Err(super::CliError::Program(format!(
            "error: cannot write to standard output: {e}"
        ))),
    }
}

/// Whether a status line is showing on standard error (to be cleared before other text).
static STATUS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Progress of long work (`planning`, `compiling kernels`, `running`, `saving`): one status
/// line on standard error, rewritten in place, when standard error is a terminal; nothing
/// otherwise (a log, a pipe, a test). `NO_PROGRESS` in the environment turns it off.
pub fn status(what: &str) {
    if !progress_wanted() {
        return;
    }
    STATUS_SHOWN.store(true, Ordering::Relaxed);
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r\x1b[2K{what}…").and_then(|()| e.flush());
}

/// Clears the status line, if one is showing.
pub fn clear_status() {
    if STATUS_SHOWN.swap(false, Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(b"\r\x1b[2K");
    }
}

/// Progress is shown only on a terminal, and not when `NO_PROGRESS` is set.
pub fn progress_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_PROGRESS").is_none()
}
