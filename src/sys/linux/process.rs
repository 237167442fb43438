//! Linux: pidfd for sentinels, waits and signals; `PR_SET_PDEATHSIG` for daemons.
//!
//! # Safety
//! `fork` is the one operation here with real hazards: the child is a copy of one thread of a
//! possibly multi-threaded parent. [`fork_child`] therefore runs only the closure it is given,
//! which must stay async-signal-safe until it reaches user code, and always ends the child with
//! `_exit`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

// The plain POSIX wrappers every layer shares, re-exported here so that this layer's files
// reach them as `super::NAME` and the crate as `crate::sys::NAME`.
pub(crate) use crate::sys::exit::{AbortOnUnwind, at_exit, exit_now};
pub(crate) use crate::sys::fd::{
    StdStream, read, read_append, redirect_stdio, set_blocking, set_nonblocking, write_all,
};
pub(crate) use crate::sys::signal::Kill;

/// The OS process id type used across the crate.
pub(crate) type RawPid = i32;

/// Forks the calling process.
///
/// In the parent, returns the child's pid. In the child, runs `child` and ends the process with
/// the code it returns; `child` must do only async-signal-safe work until it runs user code,
/// and must not unwind (the caller wraps user code in `catch_unwind`).
///
/// # References
/// fork(2), _exit(2); std's `process::unix::do_fork`.
pub(crate) fn fork_child<F: FnOnce() -> i32>(child: F) -> io::Result<RawPid> {
    // SAFETY: `fork` has no memory-safety preconditions of its own; the hazards are in what the
    // child does next. The child branch below runs only `child` (whose contract is stated above)
    // and leaves by `_exit`, so it never returns into the parent's stack frames, destructors or
    // atexit handlers.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // Unwinding out of here would run the parent's frames in the child: abort instead.
            let guard = AbortOnUnwind;
            let code = child();
            std::mem::forget(guard);
            exit_now(code)
        }
        pid => Ok(pid),
    }
}

/// Asks the kernel to SIGKILL the calling process when its parent dies, then checks that the
/// parent is still `expected_parent` (it may have died before the request took effect).
///
/// Returns `false` if the parent is already gone. Async-signal-safe.
pub(crate) fn die_with_parent(expected_parent: RawPid) -> bool {
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err() {
        return false;
    }
    parent_pid() == expected_parent
}

/// The calling process's id.
pub(crate) fn current_pid() -> RawPid {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The calling process's parent id (0 if it has none).
pub(crate) fn parent_pid() -> RawPid {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// Opens a pidfd for a child of ours that has not been reaped (so the pid cannot be reused).
pub(crate) fn pidfd_open(pid: RawPid) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `sig` to the process behind `pidfd`. Signalling a process that has exited but was
/// not reaped yet is not an error (the signal has no effect), as with Python's `terminate()`.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: Kill) -> io::Result<()> {
    let sig = match sig {
        Kill::Term => Signal::TERM,
        Kill::Kill => Signal::KILL,
        Kill::Int => Signal::INT,
    };
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the child behind `pidfd` if it has exited, returning Python's `exitcode`: the exit
/// status, or `-N` when signal N ended it. Never blocks.
pub(crate) fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    reap(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
}

fn reap(pidfd: BorrowedFd<'_>, options: WaitIdOptions) -> io::Result<Option<i32>> {
    let status = rustix::process::waitid(WaitId::PidFd(pidfd), options)?;
    Ok(status.and_then(|s| {
        if let Some(code) = s.exit_status() {
            Some(code)
        } else {
            s.terminating_signal().map(|sig| -sig)
        }
    }))
}

/// Waits until one of `fds` is readable (or hung up), or `deadline` passes.
///
/// Returns one flag per fd; all `false` means the deadline passed. `None` waits forever.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(duration_to_timespec(left))
            }
        };
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pollfds.iter().map(|p| !p.revents().is_empty()).collect())
}

fn duration_to_timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// A one-way pipe, both ends close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// A one-way pipe, both ends close-on-exec, with the ends asked for non-blocking: one system
/// call (`pipe2`) when both are, two when one is (a new pipe end has no status flag besides its
/// access mode, which `F_SETFL` ignores, so no `F_GETFL` is needed).
pub(crate) fn pipe_nonblocking(read: bool, write: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    let mut flags = PipeFlags::CLOEXEC;
    if read && write {
        flags |= PipeFlags::NONBLOCK;
    }
    let (r, w) = rustix::pipe::pipe_with(flags)?;
    if read != write {
        let end = if read { r.as_fd() } else { w.as_fd() };
        rustix::fs::fcntl_setfl(end, rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok((r, w))
}

/// Fills `buf` from the kernel's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens a pidfd for a child just started; if that fails, kills and reaps the child, so that
/// no process is ever left without a handle to wait for it.
pub(crate) fn pidfd_for_new_child(pid: RawPid) -> io::Result<OwnedFd> {
    pidfd_open(pid).inspect_err(|_| kill_and_reap(pid))
}

/// Kills and reaps a child we hold no pidfd for (only when opening one failed).
pub(crate) fn kill_and_reap(pid: RawPid) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// As [`pidfd_open`], for any process: `Ok(None)` if no process `pid` exists (any more).
/// Async-signal-safe.
pub(crate) fn pidfd_open_if_alive(pid: RawPid) -> io::Result<Option<OwnedFd>> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Waits for the child `pid`, which we hold no pidfd for, to end and reaps it; returns
/// Python's `exitcode` (the exit status, or `-N` when signal N ended it). Interrupted waits
/// are resumed.
pub(crate) fn wait_child(pid: RawPid) -> io::Result<i32> {
    let p = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let status = loop {
        match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let (_, status) = status.ok_or_else(|| io::Error::other("waitpid reported no child"))?;
    Ok(status
        .exit_status()
        .or_else(|| status.terminating_signal().map(|sig| -sig))
        .unwrap_or(-1))
}
