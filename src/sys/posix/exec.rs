//! Starting a fresh copy of the running program: `posix_spawn` of the path it was run from.
//!
//! The portable counterpart of the Linux layer's `exec.rs`, which re-executes
//! `/proc/self/exe`. This one re-executes [`std::env::current_exe`] as it was on first use
//! (taken from the C library's `_NSGetExecutablePath` on macOS, `sysctl` on the BSDs; on Linux
//! std itself reads `/proc/self/exe`, the one `/proc` read left on this layer, done once), made
//! absolute, so a later `chdir` does not change it. What that gives up against the Linux
//! layer: a binary replaced or deleted at that path after the first start is not re-executed
//! as the running inode; the child then runs the new file, or fails to start. The boot
//! message carries the parent's [`exe_identity`] (device, inode, size, mtime of that path when
//! first asked), so a child running a replaced binary refuses to start instead of running
//! code of another build.
//!
//! The child gets three extra descriptors: the boot socket at [`BOOT_FD`], the write end of
//! its exit pipe at `EXIT_FD` and the read end of our alive pipe at `PARENT_ALIVE_FD` (see
//! `process.rs`); every other descriptor above stderr is closed in it (Python's `close_fds=True`), so the child holds
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
//! # Safety
//! The one `unsafe` block borrows this process's alive pipe's read end, which stays open for
//! the process's life.
//!
//! # References
//! posix_spawn(3), fcntl(2) (`F_DUPFD_CLOEXEC`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

use super::RawPid;
use super::process::{EXIT_FD, PARENT_ALIVE_FD};
use crate::sys::spawn::Program;

/// The descriptor number at which a spawned child finds its boot socket.
pub(crate) const BOOT_FD: i32 = 3;

/// The first descriptor number `spawn_self` closes in the child.
const FIRST_CLOSED: i32 = PARENT_ALIVE_FD + 1;

/// The program to re-execute: the path this program was run from, found on first use.
fn self_exe() -> io::Result<&'static CStr> {
    static EXE: OnceLock<Result<CString, String>> = OnceLock::new();
    let found = EXE.get_or_init(|| {
        let path = std::env::current_exe()
            .and_then(|p| {
                if p.is_absolute() {
                    Ok(p)
                } else {
                    std::path::absolute(p)
                }
            })
            .map_err(|e| e.to_string())?;
        CString::new(path.into_os_string().into_vec()).map_err(|e| e.to_string())
    });
    match found {
        Ok(path) => Ok(path.as_c_str()),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot find the path of the running program: {e}"),
        )),
    }
}

/// The descriptor the pre-main hook reads its boot message from, if this program was started
/// by [`spawn_self`]; takes over the exit pipe and the parent's alive pipe too (`process.rs`).
pub(crate) fn take_boot_fd() -> Option<OwnedFd> {
    let boot = super::image::take_boot_fd()?;
    super::process::adopt_in_spawned_child();
    Some(boot)
}

/// Starts a fresh copy of this program with `boot` at [`BOOT_FD`] and `marker` (`NAME=value`)
/// added to the environment, with an exit pipe (its handle is taken by
/// `pidfd_for_new_child`). Returns the child's pid; exec failures are reported here.
pub(crate) fn spawn_self(boot: BorrowedFd<'_>, marker: (&str, &str)) -> io::Result<RawPid> {
    let exe = self_exe()?;
    let program = Program::new(marker)?;

    // Held from the exit pipe's creation until our copy of its write end is closed, so that
    // no child started meanwhile inherits it.
    let start = super::process::START_LOCK.lock();
    let alive_r = super::process::alive_read_end()?;
    let (exit_r, exit_w) = super::process::exit_pipe()?;
    // Sources of the dup2 actions must not sit on a target number another action overwrites
    // first: move them all above the numbers the child uses.
    let above = |fd: BorrowedFd<'_>| rustix::io::fcntl_dupfd_cloexec(fd, FIRST_CLOSED);
    let boot = above(boot)?;
    let exit_w_moved = above(exit_w.as_fd())?;
    drop(exit_w);
    // SAFETY: our alive pipe's read end lives as long as this process.
    let alive = above(unsafe { BorrowedFd::borrow_raw(alive_r) })?;

    let spawned = program.spawn(
        exe,
        &[
            (boot.as_raw_fd(), BOOT_FD),
            (exit_w_moved.as_raw_fd(), EXIT_FD),
            (alive.as_raw_fd(), PARENT_ALIVE_FD),
        ],
        FIRST_CLOSED,
    );
    drop(exit_w_moved);
    drop(start);
    let pid = spawned?;
    super::process::record_started(pid, exit_r);
    Ok(pid)
}

/// Identifies the running program's file, to check that a re-executed child runs the same
/// binary as its parent: (device, inode, size, modification time in ns).
pub(crate) fn exe_identity() -> io::Result<(u64, u64, i64, i64)> {
    let st = rustix::fs::stat(self_exe()?)?;
    // `dev_t` is `u64` on Linux and the BSDs, `i32` on macOS (its bits are what counts).
    #[cfg(target_vendor = "apple")]
    let dev = st.st_dev as u32 as u64;
    #[cfg(not(target_vendor = "apple"))]
    let dev = st.st_dev;
    Ok((
        dev,
        st.st_ino,
        st.st_size,
        st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec as i64,
    ))
}
