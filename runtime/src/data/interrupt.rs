//! Temporary files removed when tc is interrupted: while a `TempGuard` lives, SIGTERM,
//! SIGINT or SIGHUP unlinks the temporary files it names, then ends tc by the same signal as
//! before (its default action, so the exit status still says which signal it was).
//!
//! The handler only reads a list published before it can run and calls `unlink` and
//! `raise`, both async-signal-safe. A signal whose action was not the default when the guard
//! was made (ignored by `nohup`, say) is left alone.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The signals that end a process by default and that a user sends to stop one.
const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The temporary files of the save in progress, or null. Each list is leaked: a handler on
/// another thread may still be reading it when the guard ends (one small list per save).
static TEMPS: AtomicPtr<Vec<CString>> = AtomicPtr::new(std::ptr::null_mut());

/// One guard at a time: saves from several threads (the library's tests) take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// While alive, an interrupting signal removes `paths` before tc ends; when dropped, it
/// removes whichever of them still exist (a save that failed or was abandoned) and restores
/// the signals' default actions.
#[derive(Debug)]
pub struct TempGuard {
    paths: Vec<PathBuf>,
    installed: Vec<libc::c_int>,
    _turn: MutexGuard<'static, ()>,
}

impl TempGuard {
    pub fn new(paths: Vec<PathBuf>) -> TempGuard {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<CString> = paths
            .iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect();
        TEMPS.store(Box::into_raw(Box::new(list)), Ordering::SeqCst);
        let mut installed = Vec::new();
        for sig in SIGNALS {
            // SAFETY: `sigaction` with a zeroed, then filled, struct; the handler is an
            // `extern "C" fn(c_int)` as `sa_sigaction` expects without SA_SIGINFO.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                    installed.push(sig);
                }
            }
        }
        TempGuard {
            paths,
            installed,
            _turn: turn,
        }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        for &sig in &self.installed {
            // SAFETY: restoring the default action, which is always valid.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        TEMPS.store(std::ptr::null_mut(), Ordering::SeqCst);
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let list = TEMPS.load(Ordering::SeqCst);
    if !list.is_null() {
        // SAFETY: a published list is never freed or changed (see `TEMPS`).
        for path in unsafe { &*list } {
            // SAFETY: a NUL-terminated path; unlink is async-signal-safe.
            unsafe {
                libc::unlink(path.as_ptr());
            }
        }
    }
    // SAFETY: back to the default action, then the same signal again: it is delivered when
    // this handler returns and ends the process as it would have without tc's handler.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
