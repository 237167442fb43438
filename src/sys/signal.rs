//! Signal dispositions a pool worker needs.
//!
//! # Safety
//! `sigaction` is called with a zeroed, then filled, `struct sigaction` that lives on the
//! stack for the duration of the call; nothing is installed that could run Rust code.

use std::io;

/// Makes SIGINT end this process again if the program had installed a handler for it (a forked
/// worker inherits its parent's handlers). An ignored SIGINT stays ignored.
///
/// Ctrl-C sends SIGINT to the whole foreground process group: with this, pool workers die at
/// once instead of running the parent's handler and carrying on.
///
/// # References
/// sigaction(2), signal(7).
pub(crate) fn restore_default_sigint() -> io::Result<()> {
    // SAFETY: `old` is a valid out-pointer; passing a null `act` only queries the disposition.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above; SIGINT is a valid signal number.
    if unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) } != 0 {
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
    if unsafe { libc::sigaction(libc::SIGINT, &act, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
