//! Leaving a process, shared by every platform layer (each layer's `process.rs` re-exports
//! these, so they are reached as `crate::sys::NAME`).
//!
//! # Safety
//! [`exit_now`] is `_exit`, which skips destructors on purpose; [`at_exit`] hands the C
//! library a plain function pointer.

use std::io;

/// Aborts the process if dropped during unwinding (rayon's `AbortIfPanic`).
pub(crate) struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

/// Ends the calling process at once with `code`: no destructors, no atexit handlers, no
/// stdio flush (callers flush what they own first).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns; skipping destructors is the point.
    unsafe { libc::_exit(code) }
}

/// Runs `f` when the process exits normally (returning from `main` or `std::process::exit`),
/// after Rust's own runtime is done with `main`. Not run when a child leaves by [`exit_now`].
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `atexit` only records the function pointer; `f` is a plain `extern "C" fn` with no
    // captured state, valid for the whole life of the program.
    match unsafe { libc::atexit(f) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit registration failed")),
    }
}
