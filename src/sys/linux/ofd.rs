//! Open file descriptions: making a new one of a file (through `/proc/self/fd`), marking one
//! as a holder with an OFD lock, and the eventfd a `Queue` raises for `wait()`.
//!
//! # Safety
//! The OFD-lock calls go through `libc::fcntl` with a zeroed `flock` (plain data) that lives
//! across the call; everything else goes through rustix's safe wrappers.
//!
//! # References
//! fcntl(2) "Open file description locks", proc(5) `/proc/self/fd`, eventfd(2).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

/// A new open file description for the file behind `fd`, through `/proc/self/fd`: OFD locks
/// taken on it are its own.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn ofd_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_int,
    byte: i64,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = byte as _;
    fl.l_len = 1;
    loop {
        // SAFETY: `fl` is a valid `flock` that lives across the call; OFD lock commands
        // require `l_pid` to be 0, which it is.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
        if r == 0 {
            return Ok(fl);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Marks the open file description `fd` as a holder of `role` (a byte of the lock file).
/// Held until [`ofd_release`] or until every descriptor of it is closed (exit included).
pub(crate) fn ofd_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    ofd_lock(fd, libc::F_OFD_SETLKW, libc::F_RDLCK, role).map(drop)
}

/// Stops `fd` being a holder of `role`.
pub(crate) fn ofd_release(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    ofd_lock(fd, libc::F_OFD_SETLK, libc::F_UNLCK, role).map(drop)
}

/// Whether any open file description other than `fd`'s holds `role`.
pub(crate) fn ofd_others_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<bool> {
    let fl = ofd_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK, role)?;
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

/// A new eventfd (counter 0, close-on-exec, non-blocking): readable while its counter is
/// non-zero.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

/// Makes the eventfd `fd` readable (adds one to its counter). Errors are ignored: the only
/// possible one, a counter at its maximum, leaves it readable anyway.
pub(crate) fn eventfd_raise(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Makes the non-blocking eventfd `fd` unreadable (reads its counter back to 0). Errors are
/// ignored: `WouldBlock` means it already was.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut drain = [0u8; 8];
    let _ = rustix::io::read(fd, &mut drain);
}
