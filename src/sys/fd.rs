//! Plain POSIX reads, writes and descriptor flags, shared by every platform layer (each
//! layer's `process.rs` re-exports them, so they are reached as `crate::sys::NAME`).
//!
//! # Safety
//! [`read_append`] sets a vector's length over bytes the kernel has just written;
//! [`redirect_stdio`] `dup2`s onto the standard streams, which no Rust owner holds.

use std::io;
use std::os::fd::BorrowedFd;

/// Makes reads and writes on `fd` return `WouldBlock` instead of blocking.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Undoes [`set_nonblocking`]: reads and writes on `fd` block again.
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Reads what is available without blocking; `Ok(0)` is end of file. `WouldBlock` when empty.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what is available (up to `max` bytes) onto the end of `buf`, into its spare capacity:
/// unlike a zeroed scratch buffer, only the pages the kernel writes are touched, which right
/// after a `fork` means copy-on-write faults for the bytes that came rather than the buffer's
/// size. `Ok(0)` is end of file; `WouldBlock` when empty.
pub(crate) fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    loop {
        let spare = &mut buf.spare_capacity_mut()[..max];
        match rustix::io::read(fd, spare) {
            Ok((filled, _)) => {
                let n = filled.len();
                // SAFETY: the kernel initialized the `n` bytes just past the length.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf`, blocking as needed. Async-signal-safe (no allocation on success).
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Which standard stream [`redirect_stdio`] replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StdStream {
    Stdout,
    Stderr,
}

/// Makes the calling process's stdout or stderr a copy of `fd` (a pipe's write end), without
/// close-on-exec, so that what the process writes there, and what it executes, goes into
/// the pipe. Async-signal-safe (one `dup2`): called in a forked child before user code.
///
/// # References
/// dup2(2).
pub(crate) fn redirect_stdio(fd: BorrowedFd<'_>, stream: StdStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let target = match stream {
        StdStream::Stdout => libc::STDOUT_FILENO,
        StdStream::Stderr => libc::STDERR_FILENO,
    };
    loop {
        // SAFETY: `fd` is an open descriptor for the duration of the borrow; `dup2` onto 1 or 2
        // closes whatever was there and makes it a copy, which no Rust owner holds as an
        // `OwnedFd` (the standard streams are borrowed by std, never closed).
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
