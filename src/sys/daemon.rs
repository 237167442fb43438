//! Detaching a freshly forked child into a daemon of its own: the resource tracker's setup.
//! Shared by every platform layer. They differ in how the inherited descriptors are closed:
//! the Linux layer uses `close_range` (closing one by one on kernels before 5.9); the
//! portable layer closes every descriptor above 3 one by one, up to the soft descriptor limit
//! (at most 65,536 numbers; a descriptor above that, possible only in a process that raised
//! its limit and opened that many, stays open in the daemon), and then forgets the exit and
//! alive pipes it inherited (`posix/process.rs`).
//!
//! # Safety
//! [`detach_daemon`] runs in a freshly forked child of a possibly multi-threaded parent: it
//! makes only async-signal-safe system calls on descriptors, signal dispositions and limits of
//! that child, on stack buffers, and allocates nothing.
//!
//! # References
//! setsid(2), signal(2), dup2(2), close_range(2), close(2), getrlimit(2).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The descriptor a daemon's one input is moved to.
const KEPT_FD: i32 = 3;

/// Detaches the calling child (just forked, single-threaded) from the session, so that no
/// terminal signal reaches it, and makes it ignore SIGINT and SIGTERM (as Python's resource
/// tracker does); then writes its pid (4 bytes, little-endian) to `report` and closes it,
/// moves `keep` to descriptor 3, points stdio at `/dev/null` (so no test harness waits on an
/// inherited stdout), closes every other inherited descriptor (so the daemon never holds
/// someone else's pipe open) and raises its descriptor limit to the hard limit.
///
/// Returns `keep`'s new descriptor, or `None` if the pid could not be reported or `keep`
/// could not be moved. Async-signal-safe.
pub(crate) fn detach_daemon(report: BorrowedFd<'_>, keep: BorrowedFd<'_>) -> Option<OwnedFd> {
    let (report, keep) = (report.as_raw_fd(), keep.as_raw_fd());
    // SAFETY: plain system calls on descriptors and signal dispositions of this fresh child;
    // `pid` is a stack buffer of the length passed; closing `report` and every descriptor
    // above 3 is what the caller asks for (this child leaves by `_exit` and never drops the
    // parent's owners of those descriptors).
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        let pid = (libc::getpid() as u32).to_le_bytes();
        if libc::write(report, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
            return None;
        }
        libc::close(report);
        if keep != KEPT_FD && libc::dup2(keep, KEPT_FD) < 0 {
            return None;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        #[cfg(all(target_os = "linux", not(multiproc_portable)))]
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9: close them one by one.
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as i32;
            for fd in 4..max {
                libc::close(fd);
            }
        }
        #[cfg(not(all(target_os = "linux", not(multiproc_portable))))]
        {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 16) as i32;
            for fd in 4..max {
                libc::close(fd);
            }
            // The exit and alive pipes this process inherited are among those just closed.
            super::forget_inherited();
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // SAFETY: descriptor 3 was just made a copy of `keep` (or is `keep`), and nothing else in
    // this process owns it: every other owner's descriptor above 3 is closed.
    Some(unsafe { OwnedFd::from_raw_fd(KEPT_FD) })
}
