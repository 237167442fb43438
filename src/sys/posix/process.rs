//! Processes and child handles without pidfd: a child's end is seen through a pipe whose
//! write end only the child holds, and it is reaped with `waitpid`.
//!
//! # Child handles
//! Every child made by [`fork_child`] or `spawn_self` gets an *exit pipe* ([`exit_pipe`]: a
//! Unix stream socket pair, whose end polls as readable, as a pidfd does), made
//! (close-on-exec) before the fork or spawn. The child keeps the write end for its whole life and never writes
//! to it; the parent keeps the read end, which becomes readable (end of file) when the child
//! exits and the kernel closes its descriptors. That read end is the handle the rest of the
//! crate polls, under the Linux layer's names ([`pidfd_for_new_child`] hands it out, and it is
//! what `Process::sentinel`, the pool and `aio` wait on). A process-wide table maps a handle
//! (its descriptor number and the pipe's device and inode) to the child's pid, so that
//! [`try_reap`] and [`pidfd_signal`] keep the Linux signatures.
//!
//! Forkserver children are not ours (the server forks them): their handle is a pipe the server
//! writes the exit status into after reaping them, whose write end the child holds too (see
//! `clone.rs`); [`handle_for_reported_child`] registers it.
//!
//! What differs from pidfd, and the bounds:
//! - The write end must not outlive the child in another process. The child closes the one it
//!   inherited from its own parent in every child it makes through [`fork_child`] (and the
//!   forkserver's `clone_sibling`); every end is close-on-exec, and `spawn_self` closes every
//!   descriptor above the ones it passes; so only a grandchild made by a raw `fork()` that does
//!   not `exec` (user code calling libc directly) keeps a child's handle unready after the
//!   child exits, until that grandchild exits too. Concurrent starts are serialised by a
//!   process-wide lock so that no child inherits a sibling's write end.
//! - Signals go by pid, and only while the child has not been reaped: the table's lock is held
//!   across the `kill` and across every reap, so a pid we signal cannot have been reused (as
//!   long as nothing else in the program reaps our children, e.g. a `waitpid(-1)` in user
//!   code). For forkserver children the server reaps: a `kill` is skipped once the status
//!   pipe is readable, which leaves the window between the server's `waitpid` and its write of
//!   the status (a few system calls), in which the pid would have to be reused for the signal
//!   to reach another process.
//! - A reaper thread (one per process with children) reaps each child as soon as its exit
//!   pipe closes, so that no dead child lingers as a zombie, which other processes could not
//!   tell from a live one without `/proc`; the code is kept for [`try_reap`].
//! - The exit pipe closes a moment before the kernel turns the child into a zombie;
//!   [`try_reap`] on a readable handle retries `waitpid` for at most about 20 ms, so a caller
//!   that saw the handle ready gets the exit code.
//! - A child that closes its inherited descriptors itself (closing every descriptor, as some
//!   daemonising code does) makes its handle ready early; `try_reap` then says "not yet", as
//!   CPython's pipe sentinels do in that case.
//!
//! # Parent death
//! Each process that starts children holds an *alive pipe*: the write end stays open for its
//! whole life, its children get the read end (inherited through `fork`, at a fixed descriptor
//! through `spawn_self`, passed on by the forkserver to its children). A child sees its parent's
//! death as that read end's end of file: [`die_with_parent`] starts a thread that blocks in
//! `poll` on it and kills the process when it fires (at once: no polling interval), and
//! [`parent_pid`] answers with the parent that started it while the pipe is open. The same
//! caveat as above: a raw `fork()` of the parent that does not `exec` holds the write end and
//! hides the parent's death until it exits.
//!
//! # Safety
//! `fork` is the one operation here with real hazards: the child is a copy of one thread of a
//! possibly multi-threaded parent. [`fork_child`] therefore runs only the closure it is given,
//! which must stay async-signal-safe until it reaches user code, and always ends the child with
//! `_exit`; what it does itself in the child before that is closing descriptors and storing to
//! atomics. The table lives behind [`ForkSafe`], a lock that a child made while another thread
//! held it takes over (leaking, not reading, the parent's contents).

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

// The plain POSIX wrappers every layer shares, re-exported here so that this layer's files
// reach them as `super::NAME` and the crate as `crate::sys::NAME`.
pub(crate) use crate::sys::exit::{AbortOnUnwind, at_exit, exit_now};
pub(crate) use crate::sys::fd::{
    StdStream, read, read_append, redirect_stdio, set_blocking, set_nonblocking, write_all,
};
pub(crate) use crate::sys::signal::Kill;

/// The OS process id type used across the crate.
pub(crate) type RawPid = i32;

// ---------------------------------------------------------------------------------------------
// Process-wide descriptors, as atomics so that a forked child can read and change them without
// a lock. -1 is "none".

/// The write end of the exit pipe our parent watches: kept open until we exit, closed in every
/// child we make.
static OWN_EXIT_W: AtomicI32 = AtomicI32::new(-1);
/// Our alive pipe (see the module docs), made on the first start, and the pid that made it (a
/// forked child inherits the numbers, not the pipe's role).
static ALIVE_R: AtomicI32 = AtomicI32::new(-1);
static ALIVE_W: AtomicI32 = AtomicI32::new(-1);
static ALIVE_OWNER: AtomicI32 = AtomicI32::new(0);
/// The read end of our parent's alive pipe, and the parent's pid, if a start of ours gave us one.
static PARENT_ALIVE_R: AtomicI32 = AtomicI32::new(-1);
static LOGICAL_PARENT: AtomicI32 = AtomicI32::new(0);

/// The descriptor at which a spawned child finds the write end of its exit pipe.
pub(super) const EXIT_FD: RawFd = 4;
/// The descriptor at which a spawned child finds the read end of its parent's alive pipe.
pub(super) const PARENT_ALIVE_FD: RawFd = 5;

fn getpid_raw() -> RawPid {
    // SAFETY: `getpid` has no preconditions and is async-signal-safe.
    unsafe { libc::getpid() }
}

fn close_raw(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: the callers pass descriptors this process owns through the statics above or
        // the start in progress, which nothing else closes; async-signal-safe.
        unsafe { libc::close(fd) };
    }
}

// ---------------------------------------------------------------------------------------------
// A lock that survives `fork`.

/// A spin lock holding `T`, tagged with the pid that locked it and the pid whose data it
/// holds. A forked child finds it either free or held by its parent's pid (by a thread that
/// does not exist in the child): it takes it over, and it replaces data that belongs to
/// another process with `T::default()`, leaking the old value (which may be half-updated, and
/// describes the parent's children, not its own).
pub(super) struct ForkSafe<T> {
    locked_by: AtomicI32,
    data: UnsafeCell<Option<(RawPid, T)>>,
}

// SAFETY: `data` is only reached through `lock`, which gives one thread of a process access at
// a time (the spin on `locked_by`); a forked child has a single thread.
unsafe impl<T: Send> Sync for ForkSafe<T> {}

pub(super) struct ForkSafeGuard<'a, T> {
    lock: &'a ForkSafe<T>,
    data: &'a mut T,
}

impl<T: Default> ForkSafe<T> {
    pub(super) const fn new() -> Self {
        ForkSafe {
            locked_by: AtomicI32::new(0),
            data: UnsafeCell::new(None),
        }
    }

    pub(super) fn lock(&self) -> ForkSafeGuard<'_, T> {
        let me = getpid_raw();
        let mut spins = 0u32;
        loop {
            match self
                .locked_by
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                // Held by the process we were forked from: no thread of ours holds it.
                Err(holder)
                    if holder != me
                        && self
                            .locked_by
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok() =>
                {
                    break;
                }
                Err(_) => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        // SAFETY: the lock above is held; no other reference to `data` exists until the guard
        // is dropped.
        let slot = unsafe { &mut *self.data.get() };
        match slot {
            Some((owner, _)) if *owner == me => {}
            _ => {
                if let Some(old) = slot.take() {
                    std::mem::forget(old);
                }
                *slot = Some((me, T::default()));
            }
        }
        let data = &mut slot.as_mut().expect("just filled").1;
        ForkSafeGuard { lock: self, data }
    }
}

impl<T> std::ops::Deref for ForkSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.data
    }
}

impl<T> std::ops::DerefMut for ForkSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.data
    }
}

impl<T> Drop for ForkSafeGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked_by.store(0, Ordering::Release);
    }
}

/// Serialises starts (pipe made, process made, our copy of the write end closed), so that no
/// child inherits a sibling's exit pipe.
pub(super) static START_LOCK: ForkSafe<()> = ForkSafe::new();

// ---------------------------------------------------------------------------------------------
// The table of children.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Our own child: reaped here with `waitpid`.
    Own,
    /// A forkserver child: the server reaps it and writes its status into the handle's pipe.
    Reported,
}

#[derive(Debug)]
struct Handle {
    /// The handle's descriptor number and the pipe's (device, inode): a descriptor number
    /// reused for another pipe does not match.
    key: (RawFd, u64, u64),
    pid: RawPid,
    kind: Kind,
    code: Option<i32>,
}

#[derive(Debug, Default)]
struct Table {
    /// Children started whose handle was not taken yet (by `pidfd_for_new_child`).
    pending: Vec<(RawPid, OwnedFd)>,
    handles: Vec<Handle>,
    /// What the reaper thread watches: each own child's pid and handle key, until the child
    /// is reaped or the handle closed.
    watched: Vec<(RawPid, (RawFd, u64, u64))>,
    /// The reaper's wake-up pipe (its write end), once the thread runs in this process.
    reaper_wake: Option<OwnedFd>,
}

static TABLE: ForkSafe<Table> = ForkSafe::new();

fn key_of(fd: BorrowedFd<'_>) -> io::Result<(RawFd, u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // the types differ between targets
    Ok((fd.as_raw_fd(), st.st_dev as u64, st.st_ino as u64))
}

impl Table {
    fn find(&mut self, fd: BorrowedFd<'_>) -> io::Result<&mut Handle> {
        let key = key_of(fd)?;
        self.handles
            .iter_mut()
            .find(|h| h.key == key)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a child handle made by this process",
                )
            })
    }

    /// Forgets handles whose descriptor was closed (or now names another file).
    fn prune(&mut self) {
        self.handles.retain(|h| {
            // SAFETY: `fstat` on a number that may be closed only fails with EBADF.
            let fd = unsafe { BorrowedFd::borrow_raw(h.key.0) };
            key_of(fd).is_ok_and(|k| k == h.key)
        });
    }

    fn add(&mut self, pid: RawPid, fd: &OwnedFd, kind: Kind) -> io::Result<()> {
        self.prune();
        let key = key_of(fd.as_fd())?;
        self.handles.push(Handle {
            key,
            pid,
            kind,
            code: None,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Starting children.

/// A new exit pipe, for a child about to be made: a Unix stream socket pair rather than a
/// pipe, so that its end reads as readable (`POLLIN`, as a pidfd's does) and not only as a
/// hang-up (`POLLHUP`), which is what a pipe gives and what callers polling for input miss.
/// Both ends close-on-exec.
pub(crate) fn exit_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for `socketpair` to fill.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `socketpair` just made these two descriptors; nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    rustix::io::fcntl_setfd(&r, rustix::io::FdFlags::CLOEXEC)?;
    rustix::io::fcntl_setfd(&w, rustix::io::FdFlags::CLOEXEC)?;
    Ok((r, w))
}

/// Makes this process's alive pipe if it has none yet, and returns its read end.
pub(super) fn alive_read_end() -> io::Result<RawFd> {
    let me = getpid_raw();
    if ALIVE_OWNER.load(Ordering::Acquire) == me {
        return Ok(ALIVE_R.load(Ordering::Acquire));
    }
    // Only under START_LOCK, so two threads do not both make one.
    let (r, w) = pipe()?;
    let (r, w) = (into_raw(r), into_raw(w));
    ALIVE_R.store(r, Ordering::Release);
    ALIVE_W.store(w, Ordering::Release);
    ALIVE_OWNER.store(me, Ordering::Release);
    Ok(r)
}

fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

/// What a child made by this process does before anything else: keeps `exit_w` (the write
/// end of its own exit pipe) and closes everything that is its parent's, keeping the parent's
/// alive pipe's read end as its own parent's. Async-signal-safe: closes and atomic stores.
pub(super) fn adopt_in_forked_child(exit_w: RawFd, exit_r: RawFd, parent: RawPid) {
    close_raw(exit_r);
    let inherited = OWN_EXIT_W.swap(exit_w, Ordering::AcqRel);
    if inherited != exit_w {
        close_raw(inherited);
    }
    let alive_r = ALIVE_R.swap(-1, Ordering::AcqRel);
    close_raw(ALIVE_W.swap(-1, Ordering::AcqRel));
    ALIVE_OWNER.store(0, Ordering::Release);
    let grandparent = PARENT_ALIVE_R.swap(alive_r, Ordering::AcqRel);
    if grandparent != alive_r {
        close_raw(grandparent);
    }
    LOGICAL_PARENT.store(parent, Ordering::Release);
}

/// The forkserver's side of [`adopt_in_forked_child`]: a child of the server keeps `exit_w`
/// (the pipe its real parent, the server's owner, waits on) and the server's parent's alive
/// pipe, which the server inherited from its owner.
pub(super) fn adopt_in_server_child(exit_w: RawFd) {
    let inherited = OWN_EXIT_W.swap(exit_w, Ordering::AcqRel);
    if inherited != exit_w {
        close_raw(inherited);
    }
    close_raw(ALIVE_R.swap(-1, Ordering::AcqRel));
    close_raw(ALIVE_W.swap(-1, Ordering::AcqRel));
    ALIVE_OWNER.store(0, Ordering::Release);
}

/// A re-executed child's (or forkserver's) side: takes over the exit pipe's write end and the
/// parent's alive pipe at the descriptors `spawn_self` put them, making them close-on-exec.
/// Called once, before `main`, by `take_boot_fd`.
pub(super) fn adopt_in_spawned_child() {
    let is_pipe = |fd: RawFd| {
        // SAFETY: `fstat` on a number that may be closed only fails with EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::fs::fstat(fd).is_ok_and(|st| {
            use rustix::fs::FileType;
            matches!(
                FileType::from_raw_mode(st.st_mode),
                FileType::Fifo | FileType::Socket
            )
        })
    };
    for (fd, slot) in [(EXIT_FD, &OWN_EXIT_W), (PARENT_ALIVE_FD, &PARENT_ALIVE_R)] {
        if is_pipe(fd) {
            // SAFETY: `spawn_self` put this pipe end here for us; nothing else owns it.
            let _ = rustix::io::fcntl_setfd(
                unsafe { BorrowedFd::borrow_raw(fd) },
                rustix::io::FdFlags::CLOEXEC,
            );
            slot.store(fd, Ordering::Release);
        }
    }
    LOGICAL_PARENT.store(parent_pid_raw(), Ordering::Release);
}

/// Records the read end of the exit pipe of a child just made, until its handle is taken.
pub(super) fn record_started(pid: RawPid, exit_r: OwnedFd) {
    TABLE.lock().pending.push((pid, exit_r));
}

/// Forks the calling process.
///
/// In the parent, returns the child's pid. In the child, runs `child` and ends the process with
/// the code it returns; `child` must do only async-signal-safe work until it runs user code,
/// and must not unwind (the caller wraps user code in `catch_unwind`). The child gets an exit
/// pipe (see the module docs), taken as its handle by [`pidfd_for_new_child`].
///
/// # References
/// fork(2), _exit(2); std's `process::unix::do_fork`.
pub(crate) fn fork_child<F: FnOnce() -> i32>(child: F) -> io::Result<RawPid> {
    let start = START_LOCK.lock();
    alive_read_end()?;
    let (exit_r, exit_w) = exit_pipe()?;
    let (raw_r, raw_w) = (exit_r.as_raw_fd(), exit_w.as_raw_fd());
    let parent = getpid_raw();
    // SAFETY: `fork` has no memory-safety preconditions of its own; the hazards are in what the
    // child does next. The child branch below closes descriptors, stores to atomics, runs only
    // `child` (whose contract is stated above) and leaves by `_exit`, so it never returns into
    // the parent's stack frames, destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // Unwinding out of here would run the parent's frames in the child: abort instead.
            let guard = AbortOnUnwind;
            // The guard and the pipe's owners are the parent's: forget, never drop, them.
            std::mem::forget(start);
            std::mem::forget(exit_r);
            std::mem::forget(exit_w);
            adopt_in_forked_child(raw_w, raw_r, parent);
            let code = child();
            std::mem::forget(guard);
            exit_now(code)
        }
        pid => {
            drop(exit_w);
            drop(start);
            record_started(pid, exit_r);
            Ok(pid)
        }
    }
}

/// Makes the calling process end when its parent dies: starts a thread that waits for the end
/// of the parent's alive pipe and then sends this process SIGKILL (as Linux's parent-death
/// signal would). The parent's death is seen as soon as its last descriptor closes (see the
/// module docs for what could keep it open). Returns `false` if the parent is already gone, or
/// if this process was not started with an alive pipe (not by this crate).
///
/// Unlike the Linux layer's `prctl`, this creates a thread: `pthread_create` is not on POSIX's
/// async-signal-safe list, but the C libraries this layer targets reset their thread-creation
/// state in a forked child, and the callers run it right before user code, which allocates and
/// starts threads freely. The thread itself only polls and signals.
pub(crate) fn die_with_parent(expected_parent: RawPid) -> bool {
    let fd = PARENT_ALIVE_R.load(Ordering::Acquire);
    if fd < 0 || LOGICAL_PARENT.load(Ordering::Acquire) != expected_parent {
        return false;
    }
    if !pipe_open(fd, 0) {
        return false;
    }
    extern "C" fn watch(_: *mut libc::c_void) -> *mut libc::c_void {
        let fd = PARENT_ALIVE_R.load(Ordering::Acquire);
        while pipe_open(fd, -1) {
            // Only after a failed `poll` (no such error is expected): do not spin.
            // SAFETY: `usleep` has no preconditions.
            unsafe { libc::usleep(10_000) };
        }
        // SAFETY: `kill` of this process with SIGKILL: the parent-death signal's effect.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::ptr::null_mut()
    }
    // SAFETY: `thread` is a valid out-pointer; a null attribute pointer asks for the defaults;
    // `watch` is a plain `extern "C" fn` that ignores its argument and touches only atomics and
    // system calls. The thread is detached at once, so nothing joins it.
    unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        if libc::pthread_create(&mut thread, std::ptr::null(), watch, std::ptr::null_mut()) != 0 {
            return false;
        }
        libc::pthread_detach(thread);
    }
    true
}

/// Whether the pipe read end `fd` is still open at its other end: `poll` for up to
/// `timeout_ms` (-1: for ever) and `false` once it hangs up or becomes readable.
/// Async-signal-safe.
fn pipe_open(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid `pollfd` on this stack.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n >= 0 {
            return n == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// The calling process's id.
pub(crate) fn current_pid() -> RawPid {
    getpid_raw()
}

fn parent_pid_raw() -> RawPid {
    // SAFETY: `getppid` has no preconditions and is async-signal-safe.
    unsafe { libc::getppid() }
}

/// In a process started through this layer: the process that started it while that runs
/// (told by its alive pipe; for a forkserver child that is the server's owner, not the server,
/// which is the OS parent), and 0 once it has ended. (Not the OS parent then: the alive pipe
/// closes a moment before the kernel reparents the orphan, so `getppid()` could still name
/// the dead parent.) In any other process, the OS parent (0 if it has none).
pub(crate) fn parent_pid() -> RawPid {
    let fd = PARENT_ALIVE_R.load(Ordering::Acquire);
    if fd >= 0 {
        return if pipe_open(fd, 0) {
            LOGICAL_PARENT.load(Ordering::Acquire)
        } else {
            0
        };
    }
    parent_pid_raw()
}

/// A handle that becomes readable when process `pid` exits. On this layer only for the
/// process that started this one (a dup of its alive pipe's read end); any other pid is
/// `Unsupported` (no pidfd, no `/proc`).
pub(crate) fn pidfd_open(pid: RawPid) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let fd = PARENT_ALIVE_R.load(Ordering::Acquire);
    if fd >= 0 && LOGICAL_PARENT.load(Ordering::Acquire) == pid {
        // SAFETY: the parent's alive pipe end is ours for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        return Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?);
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the portable layer can wait only for its own children and its parent",
    ))
}

/// Sends `sig` to the child behind the handle `pidfd`, unless it was reaped (or, for a
/// forkserver child, its status arrived). See the module docs for the bound on pid reuse.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: Kill) -> io::Result<()> {
    let sig = match sig {
        Kill::Term => libc::SIGTERM,
        Kill::Kill => libc::SIGKILL,
        Kill::Int => libc::SIGINT,
    };
    let mut table = TABLE.lock();
    let h = table.find(pidfd)?;
    if h.code.is_some() || (h.kind == Kind::Reported && !pipe_open(pidfd.as_raw_fd(), 0)) {
        return Ok(());
    }
    // SAFETY: `kill` with a pid of a child not reaped yet (the table's lock is held, and only
    // this table reaps it) and a valid signal number.
    if unsafe { libc::kill(h.pid, sig) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Reaps the child behind the handle `pidfd` if it has exited, returning Python's `exitcode`:
/// the exit status, or `-N` when signal N ended it. Does not block, except for at most about
/// 20 ms when the handle is ready but the kernel has not made the child a zombie yet. A
/// forkserver child whose server died before reporting its status ends with 255, as in CPython.
pub(crate) fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut table = TABLE.lock();
    let h = table.find(pidfd)?;
    if let Some(code) = h.code {
        return Ok(Some(code));
    }
    let ended = !pipe_open(pidfd.as_raw_fd(), 0);
    let code = match h.kind {
        Kind::Own => reap_exited(h.pid, ended)?,
        Kind::Reported if ended => {
            let mut status = [0u8; 4];
            Some(match read(pidfd, &mut status) {
                Ok(4) => i32::from_le_bytes(status),
                _ => 255,
            })
        }
        Kind::Reported => None,
    };
    h.code = code;
    Ok(code)
}

/// `waitpid(pid, WNOHANG)`, retried for at most about 20 ms when `ended` says its exit pipe
/// has closed (the kernel closes it a moment before the child becomes a zombie).
fn reap_exited(pid: RawPid, ended: bool) -> io::Result<Option<i32>> {
    let mut code = waitpid_nohang(pid)?;
    let mut pause = Duration::from_micros(50);
    let until = Instant::now() + Duration::from_millis(20);
    while code.is_none() && ended && Instant::now() < until {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
        code = waitpid_nohang(pid)?;
    }
    Ok(code)
}

/// Hands an own child's handle to the reaper thread, starting it on first use in this
/// process.
///
/// Why a thread: a child that was killed but not reaped is a zombie, and other processes
/// cannot tell a zombie from a live process without `/proc` (`kill(pid, 0)` succeeds on it),
/// so a lock or barrier party that dies would count alive until its parent happens to join
/// it. The reaper reaps each child as soon as its exit channel closes and keeps the code for
/// [`try_reap`]; then `kill(pid, 0)` in any process says it is gone. The table's lock is held
/// across each reap, so a signal never goes to a pid reaped meanwhile.
fn watch(table: &mut Table, pid: RawPid, handle: BorrowedFd<'_>) {
    let Ok(key) = key_of(handle) else {
        return;
    };
    if table.reaper_wake.is_none() {
        let Ok((wake_r, wake_w)) = pipe_nonblocking(true, true) else {
            return;
        };
        let started = std::thread::Builder::new()
            .name("multiproc-reaper".to_owned())
            .spawn(move || reaper(wake_r));
        if started.is_err() {
            return;
        }
        table.reaper_wake = Some(wake_w);
    }
    table.watched.push((pid, key));
    if let Some(wake) = &table.reaper_wake {
        let _ = rustix::io::write(wake, &[0]);
    }
}

/// The reaper thread's body: polls the watched handles and reaps each child whose handle
/// ends. Lives as long as the process (a forked child starts its own).
///
/// It polls the handles' descriptor numbers, not copies (a copy would be one more descriptor
/// in every forked child, and outlive the handle). Their owners may close them at any time: a
/// closed number polls as invalid, a reused one as whatever it names now, so a ready entry is
/// trusted only if the number still names the same socket (its key), checked under the
/// table's lock; otherwise the entry is dropped and the child is reaped when it is joined.
fn reaper(wake: OwnedFd) {
    let me = getpid_raw();
    loop {
        let watched: Vec<(RawPid, (RawFd, u64, u64))> = TABLE.lock().watched.clone();
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(watched.len() + 1);
        for fd in std::iter::once(wake.as_raw_fd()).chain(watched.iter().map(|w| w.1.0)) {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` entries; a number closed meanwhile
        // polls as POLLNVAL, handled below like any other readiness.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut drain = [0u8; 64];
            while matches!(read(wake.as_fd(), &mut drain), Ok(n) if n > 0) {}
        }
        let ended: Vec<(RawPid, (RawFd, u64, u64))> = watched
            .iter()
            .zip(&fds[1..])
            .filter(|(_, p)| p.revents != 0)
            .map(|(w, _)| *w)
            .collect();
        if ended.is_empty() {
            continue;
        }
        let mut table = TABLE.lock();
        if getpid_raw() != me {
            return;
        }
        for (pid, key) in ended {
            // SAFETY: `fstat` on a number that may be closed only fails with EBADF.
            let same = key_of(unsafe { BorrowedFd::borrow_raw(key.0) }).is_ok_and(|k| k == key);
            if same
                && let Ok(Some(code)) = reap_exited(pid, true)
                && let Some(h) = table
                    .handles
                    .iter_mut()
                    .find(|h| h.pid == pid && h.kind == Kind::Own && h.code.is_none())
            {
                h.code = Some(code);
            }
            // Reaped, gone to someone else's `waitpid`, a child that closed its end itself,
            // or a handle closed by its owner: stop watching (a join still reaps it).
            table.watched.retain(|(p, _)| *p != pid);
        }
    }
}

fn decode_status(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        -1
    }
}

fn waitpid_nohang(pid: RawPid) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is a child of ours not reaped yet.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(Some(decode_status(status))),
        }
    }
}

/// Waits until one of `fds` is readable (or hung up), or `deadline` passes.
///
/// Returns one flag per fd; all `false` means the deadline passed. `None` waits forever.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Rounded up, so that a wait never ends before the deadline.
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pollfds.iter().map(|p| p.revents != 0).collect())
}

/// A one-way pipe, both ends close-on-exec (`pipe` then `fcntl`; this layer's starts hold a
/// lock across it, and every other descriptor the crate makes is close-on-exec at creation).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for `pipe` to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pipe` just made these two descriptors; nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    rustix::io::fcntl_setfd(&r, rustix::io::FdFlags::CLOEXEC)?;
    rustix::io::fcntl_setfd(&w, rustix::io::FdFlags::CLOEXEC)?;
    Ok((r, w))
}

/// A one-way pipe, both ends close-on-exec, with the ends asked for non-blocking.
pub(crate) fn pipe_nonblocking(read: bool, write: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    if read {
        set_nonblocking(r.as_fd())?;
    }
    if write {
        set_nonblocking(w.as_fd())?;
    }
    Ok((r, w))
}

/// Fills `buf` from the kernel's random source (`getentropy`, at most 256 bytes a call).
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    for chunk in buf.chunks_mut(256) {
        // SAFETY: `chunk` is a valid writable buffer of at most 256 bytes, getentropy's limit.
        if unsafe { libc::getentropy(chunk.as_mut_ptr().cast(), chunk.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The handle of a child just started by [`fork_child`] or `spawn_self`: the read end of its
/// exit pipe. If the child has none (it was not made through this layer), kills and reaps it,
/// so that no process is ever left without a handle to wait for it.
pub(crate) fn pidfd_for_new_child(pid: RawPid) -> io::Result<OwnedFd> {
    let mut table = TABLE.lock();
    let Some(i) = table.pending.iter().position(|(p, _)| *p == pid) else {
        drop(table);
        kill_and_reap(pid);
        return Err(io::Error::other(format!(
            "process {pid} was not started through multiproc's platform layer"
        )));
    };
    let (_, fd) = table.pending.swap_remove(i);
    table.add(pid, &fd, Kind::Own)?;
    watch(&mut table, pid, fd.as_fd());
    Ok(fd)
}

/// Registers the handle of a forkserver child: `status`, the read end of the pipe the server
/// writes its exit status into (see `clone.rs`).
pub(crate) fn handle_for_reported_child(pid: RawPid, status: OwnedFd) -> io::Result<OwnedFd> {
    TABLE.lock().add(pid, &status, Kind::Reported)?;
    Ok(status)
}

fn forget_pending(pid: RawPid) {
    TABLE.lock().pending.retain(|(p, _)| *p != pid);
}

/// Kills and reaps a child we hold no handle for (only when taking one failed).
pub(crate) fn kill_and_reap(pid: RawPid) {
    if pid > 0 {
        // SAFETY: `kill` and a blocking `waitpid` on a child of ours that nothing else reaps.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) == -1
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
        forget_pending(pid);
    }
}

/// As [`pidfd_open`], for any process: `Ok(None)` if no process `pid` exists (any more).
/// On this layer, `Unsupported` for any process but our parent (see [`pidfd_open`]).
pub(crate) fn pidfd_open_if_alive(pid: RawPid) -> io::Result<Option<OwnedFd>> {
    if !super::pid_exists(pid as u32) {
        return Ok(None);
    }
    pidfd_open(pid).map(Some)
}

/// Waits for the child `pid`, which we hold no handle for, to end and reaps it; returns
/// Python's `exitcode` (the exit status, or `-N` when signal N ended it). Interrupted waits
/// are resumed.
pub(crate) fn wait_child(pid: RawPid) -> io::Result<i32> {
    if pid <= 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != -1 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    forget_pending(pid);
    Ok(decode_status(status))
}

/// Forgets (without closing) the descriptors this file tracks: `detach_daemon` closes every
/// inherited descriptor, and numbers reused later must not be closed by a later start.
pub(crate) fn forget_inherited() {
    OWN_EXIT_W.store(-1, Ordering::Release);
    PARENT_ALIVE_R.store(-1, Ordering::Release);
    ALIVE_R.store(-1, Ordering::Release);
    ALIVE_W.store(-1, Ordering::Release);
    ALIVE_OWNER.store(0, Ordering::Release);
}
