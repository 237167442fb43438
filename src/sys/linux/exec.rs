//! Starting a fresh copy of the running program: `posix_spawn` of `/proc/self/exe`.
//!
//! The child gets one extra descriptor, the boot socket, at [`BOOT_FD`]; every other
//! descriptor above stderr is closed in it (Python's `close_fds=True`), so the child holds
//! exactly what it is sent, and so does the forkserver, whose children inherit what it holds.
//! Descriptors with close-on-exec go at the `exec`; the others are closed by a file action
//! (`posix_spawn_file_actions_addclosefrom_np`, or one `addclose` each): the set-up both
//! layers share is `sys/spawn.rs`.
//!
//! Closing them in the re-executed program instead (its pre-main hook) would not have the
//! fallback's window, but it runs after the C library and every constructor that precedes the hook
//! (`LD_PRELOAD` libraries, C++ static initialisers) and could not tell their descriptors from
//! inherited ones: it would close a descriptor a library still uses, whose number the next
//! `open` (our boot socket's copies, a result pipe) would then reuse.
//!
//! # References
//! posix_spawn(3), proc(5) (`/proc/self/exe`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::RawPid;
use crate::sys::spawn::Program;

/// The descriptor number at which a spawned child finds its boot socket.
pub(crate) const BOOT_FD: i32 = 3;

/// The program to re-execute: the running binary's inode, even if its path was replaced or
/// deleted since it started.
const SELF_EXE: &std::ffi::CStr = c"/proc/self/exe";

/// Starts a fresh copy of this program with `boot` at [`BOOT_FD`] and `marker` (`NAME=value`)
/// added to the environment. Returns the child's pid; exec failures are reported here.
pub(crate) fn spawn_self(boot: BorrowedFd<'_>, marker: (&str, &str)) -> io::Result<RawPid> {
    // A dup2 onto itself would leave close-on-exec set; move a descriptor that already sits at
    // BOOT_FD out of the way first.
    let moved;
    let boot = if boot.as_raw_fd() == BOOT_FD {
        moved = rustix::io::fcntl_dupfd_cloexec(boot, BOOT_FD + 1)?;
        moved.as_fd()
    } else {
        boot
    };

    let program = Program::new(marker)?;
    program.spawn(SELF_EXE, &[(boot.as_raw_fd(), BOOT_FD)], BOOT_FD + 1)
}

/// Identifies the running program's file, to check that a re-executed child runs the same
/// binary as its parent: (device, inode, size, modification time in ns).
pub(crate) fn exe_identity() -> io::Result<(u64, u64, i64, i64)> {
    let st = rustix::fs::stat(SELF_EXE)?;
    Ok((
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec as i64,
    ))
}
