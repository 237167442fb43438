//! `clone(CLONE_PARENT)`: the forkserver makes children that are its siblings, so they are
//! direct children of the program that asked for them.
//!
//! That keeps everything the parent does with a child unchanged across start methods: it
//! opens a pidfd, waits and reaps with `waitid(P_PIDFD)`, daemons use `PR_SET_PDEATHSIG`, and
//! `getppid()` in the child is the real parent. See `start/forkserver/README.md` for the
//! alternatives weighed.
//!
//! # Safety
//! A raw `clone` bypasses glibc's `fork`, so glibc's per-thread bookkeeping in the child is
//! the server's: the cached thread id in `struct pthread` is stale (it matters only to
//! `pthread_kill`, and to owner checks of pthread error-checking, recursive and robust
//! mutexes), `pthread_atfork` handlers do not run, and the kernel forgets the robust-futex list,
//! which [`clone_sibling`] registers again. The server is single-threaded, so no lock can be
//! held by a thread that does not exist in the child, and the child may allocate.
//!
//! # References
//! clone(2) (`CLONE_PARENT`), set_robust_list(2), glibc `sysdeps/nptl/_Fork.c`.

use std::io;

use super::RawPid;

/// The calling thread's robust-futex list head as registered with the kernel (by glibc at
/// thread start), to register again in a raw-cloned child.
fn robust_list() -> Option<(usize, usize)> {
    let mut head: usize = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: pid 0 means the calling thread; both out-pointers are valid for writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut libc::size_t,
        )
    };
    (rc == 0 && head != 0).then_some((head, len))
}

/// Creates a child that is this process's sibling (a child of this process's parent) and runs
/// `child` in it, leaving it with the code `child` returns. Returns the child's pid.
///
/// The descriptors in `close_in_child` are closed in the child before `child` runs. Call only
/// from a single-threaded process (the forkserver).
pub(crate) fn clone_sibling<F: FnOnce() -> i32>(
    close_in_child: &[std::os::fd::RawFd],
    child: F,
) -> io::Result<RawPid> {
    let robust = robust_list();
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: without CLONE_VM the child gets a copy of this address space, and with a null
    // stack it continues on its copy of this stack, exactly as after `fork`; the remaining
    // arguments (parent tid, child tid, tls) are unused without the flags that read them. The
    // child branch below never returns into the caller's frames: it runs `child` and `_exit`s.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            if let Some((head, len)) = robust {
                // SAFETY: `head` is the list head glibc registered for this thread in the
                // server; this address space is a copy of the server's, so it is valid here.
                unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) };
            }
            for &fd in close_in_child {
                // SAFETY: the caller names descriptors the child must not keep; nothing in the
                // child uses them after this point.
                unsafe { libc::close(fd) };
            }
            restore_default_signals();
            let guard = super::linux::AbortOnUnwind;
            let code = child();
            std::mem::forget(guard);
            super::exit_now(code)
        }
        pid => Ok(pid as RawPid),
    }
}

/// Gives a re-executed child the signal dispositions Rust's runtime gives `main` (which the
/// pre-main hook runs before): SIGPIPE ignored, so writes to a closed pipe fail with `EPIPE`
/// instead of killing the process, as under `fork`, where the child inherits them.
pub(crate) fn rust_signal_defaults() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// Makes the forkserver immune to the terminal's Ctrl-C (SIGINT goes to the whole foreground
/// process group; the program that owns the server decides what happens to its children).
pub(crate) fn ignore_interrupts() {
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

fn restore_default_signals() {
    // SAFETY: installing SIG_DFL for SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}
