//! Signal dispositions and masks, shared by every platform layer: what a pool worker needs,
//! the signals the library sends ([`Kill`]), and the forkserver's SIGINT mask and a
//! re-executed child's Rust defaults.
//!
//! # Safety
//! `sigaction` is called with a zeroed, then filled, `struct sigaction` that lives on the
//! stack for the duration of the call; nothing is installed that could run Rust code.
//! `signal` installs only `SIG_IGN`; `sigprocmask` reads a stack `sigset_t`.

use std::io;

/// Makes SIGINT and SIGTERM end this process again if the program had installed handlers for
/// them (a forked worker inherits its parent's handlers). An ignored signal stays ignored.
///
/// Ctrl-C sends SIGINT to the whole foreground process group, and the exit-time cleanup
/// sends SIGTERM to daemonic children: with this, pool workers die of either at once instead of
/// running the parent's handler and carrying on.
///
/// # References
/// sigaction(2), signal(7).
pub(crate) fn restore_default_stop_signals() -> io::Result<()> {
    restore_default(libc::SIGINT)?;
    restore_default(libc::SIGTERM)
}

fn restore_default(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: `sigaction` is plain C data; all-zero is a valid value (empty mask, no flags,
    // SIG_DFL = 0).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `signal` is SIGINT or SIGTERM, valid signal numbers; a null `act` only queries
    // the disposition, and `old` is a valid, writable `sigaction` for the answer.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if old.sa_sigaction == libc::SIG_IGN || old.sa_sigaction == libc::SIG_DFL {
        return Ok(());
    }
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags, SIG_DFL = 0).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `act` is a fully initialised `sigaction` installing the default disposition,
    // which runs no code in this process.
    if unsafe { libc::sigaction(signal, &act, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signals the library sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Kill::Kill` is SIGKILL, named as `kill()` is
pub(crate) enum Kill {
    /// SIGTERM: the polite request, `terminate()`.
    Term,
    /// SIGKILL: `kill()`.
    Kill,
    /// SIGINT: `interrupt()`, what Ctrl-C sends.
    Int,
}

/// Gives a re-executed child the signal dispositions Rust's runtime gives `main` (which the
/// pre-main hook runs before): SIGPIPE ignored, so writes to a closed pipe fail with `EPIPE`
/// instead of killing the process, as under `fork`, where the child inherits them.
pub(crate) fn rust_signal_defaults() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Whether the calling thread is the process's main thread.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// Whether the calling thread is the process's main thread.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn is_main_thread() -> bool {
    // SAFETY: no preconditions; 1 on the main thread.
    unsafe { libc::pthread_main_np() == 1 }
}

/// Makes the forkserver immune to the terminal's Ctrl-C (SIGINT goes to the whole foreground
/// process group; the program that owns the server decides what happens to its children).
///
/// By blocking SIGINT, not ignoring it: an ignored signal sent to a new child before it
/// restores the default ([`restore_default_signals`]) would be discarded, so a
/// `Process::interrupt` right after `start` would be lost; a blocked one stays pending in the
/// child until it unblocks it. (A child does not inherit the server's pending signals.)
pub(crate) fn ignore_interrupts() {
    set_sigint_blocked(true);
}

/// Undoes [`ignore_interrupts`] in a child of the server. Async-signal-safe.
pub(crate) fn restore_default_signals() {
    set_sigint_blocked(false);
}

fn set_sigint_blocked(blocked: bool) {
    // SAFETY: an all-zero `sigset_t` is a valid value to initialise with `sigemptyset`.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    let how = if blocked {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is a valid, writable `sigset_t` on this stack; SIGINT is a valid signal;
    // `sigprocmask` (async-signal-safe) reads `set` and is given no old-mask pointer. The
    // callers run single-threaded (the server, or its child right after the clone or fork).
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}
