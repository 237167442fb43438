//! Signal dispositions a pool worker needs.
//!
//! # Safety
//! `sigaction` is called with a zeroed, then filled, `struct sigaction` that lives on the
//! stack for the duration of the call; nothing is installed that could run Rust code.

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
