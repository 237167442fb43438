//! The forkserver without `clone(CLONE_PARENT)`: the server forks its own children, reaps them
//! and reports each one's exit status back to the program that asked for it, as CPython's
//! forkserver does.
//!
//! Each request carries, as its last descriptor, the write end of a *status pipe* whose read
//! end the requesting program keeps as the child's handle (`handle_for_reported_child` in
//! `process.rs`). The server hands that write end to the child, which keeps it open for its
//! whole life as its exit pipe (so the handle also ends if the server dies before the child),
//! and keeps a copy itself. On SIGCHLD (a self-pipe the server's poll loop watches) it reaps
//! with `waitpid`, writes the 4-byte exit code into the child's status pipe and closes its
//! copy. The handle is readable once the status is there, or once both the child and the
//! server are gone (then the code is 255, as in CPython).
//!
//! What differs from the Linux layer: the child's OS parent is the server, so `getppid()` in
//! it is the server's pid (`parent_pid` answers with the owner, through the owner's alive pipe
//! which the server passes on), signals to it go by pid (see `process.rs` for the bound), and
//! glibc's cached thread id is right without help (a plain `fork`). The [`PidSlot`] is written
//! by the server right after `fork` returns and by the child as its first act, not by the
//! kernel; an owner that lost its server waits for a child whose status channel is still open
//! to record itself (`start/forkserver/mod.rs`), so a start is never retried while its child
//! runs.
//!
//! # Safety
//! The SIGCHLD handler only `write`s one byte to a non-blocking pipe and restores `errno`. The
//! child branch of [`SiblingCloner::clone_sibling_reporting`] closes descriptors, resets signal
//! dispositions and stores to atomics before running the child, all async-signal-safe; the
//! server is single-threaded. The pid slot is a `MAP_SHARED` mapping used as one atomic.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::{Mapping, RawPid};

/// A word of memory shared by the forkserver and its owner, into which the pid of each child
/// the server forks is written: by the server right after `fork` returns, and by the child as
/// its first act (so a server killed in between still leaves it there). The owner clears it
/// before each request; once the server has exited and the child it may have made has run,
/// a pid there is that child.
///
/// The word holds a request number above the pid (`seq << 32 | pid`): each write is a
/// compare-and-swap from `seq << 32`, the value the server read when it took the request, so a
/// child of an earlier request that runs late cannot record itself into a later request.
#[derive(Debug)]
pub(crate) struct PidSlot {
    map: Mapping,
}

impl PidSlot {
    const LEN: usize = 4096;

    /// A new slot, and the descriptor to hand to the server ([`PidSlot::attach`]).
    pub(crate) fn create() -> io::Result<(PidSlot, OwnedFd)> {
        let fd = super::memfd(Self::LEN)?;
        let map = Mapping::new(fd.as_fd(), Self::LEN)?;
        Ok((PidSlot { map }, fd))
    }

    /// The server's side: maps the owner's slot.
    pub(crate) fn attach(fd: BorrowedFd<'_>) -> io::Result<PidSlot> {
        let (len, _) = super::fd_len_and_id(fd)?;
        if len != Self::LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "forkserver pid slot of the wrong size",
            ));
        }
        Ok(PidSlot {
            map: Mapping::new(fd, Self::LEN)?,
        })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page aligned, at least 8 bytes long and lives as long as
        // `self`; it is only ever accessed as this one atomic.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>() }
    }

    /// Forgets any earlier child's pid, before a request (and starts the request's number).
    pub(crate) fn clear(&self) {
        let seq = (self.word().load(Ordering::SeqCst) >> 32).wrapping_add(1);
        self.word().store(seq << 32, Ordering::SeqCst);
    }

    /// The pid of the child made since the last [`clear`](PidSlot::clear), if any.
    pub(crate) fn get(&self) -> Option<RawPid> {
        match self.word().load(Ordering::SeqCst) as u32 {
            0 => None,
            pid => Some(pid as RawPid),
        }
    }

    /// The empty value of the request being served, taken before `fork`.
    fn empty(&self) -> u64 {
        self.word().load(Ordering::SeqCst) & !u64::from(u32::MAX)
    }

    /// Records `pid` for the request whose empty value is `empty`. Async-signal-safe.
    fn record(&self, empty: u64, pid: RawPid) {
        let _ = self.word().compare_exchange(
            empty,
            empty | u64::from(pid as u32),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// The write end of the server's SIGCHLD self-pipe, for the handler.
static SIGCHLD_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    // SAFETY: `errno` is thread-local; reading and restoring it, and one `write` of a byte on
    // the stack to a non-blocking pipe, are async-signal-safe. A full pipe already says
    // "something exited".
    unsafe {
        let errno = *errno_location();
        let byte = 0u8;
        libc::write(
            SIGCHLD_W.load(Ordering::Relaxed),
            (&raw const byte).cast(),
            1,
        );
        *errno_location() = errno;
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: the C library's thread-local errno.
    unsafe { libc::__errno_location() }
}

#[cfg(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "dragonfly"
))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: the C library's thread-local errno.
    unsafe { libc::__error() }
}

#[cfg(any(target_os = "netbsd", target_os = "openbsd"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: the C library's thread-local errno.
    unsafe { libc::__errno() }
}

/// A child the server made and must report on.
#[derive(Debug)]
struct Served {
    pid: RawPid,
    report: OwnedFd,
}

/// The server's state for making and reporting children. Call everything on its one thread.
#[derive(Debug)]
pub(crate) struct SiblingCloner {
    pid_slot: PidSlot,
    /// The SIGCHLD self-pipe's read end (the write end lives in [`SIGCHLD_W`]).
    sigchld: Option<OwnedFd>,
    children: RefCell<Vec<Served>>,
}

impl SiblingCloner {
    /// Call in the server, on its only thread: installs the SIGCHLD handler and its pipe. If
    /// that fails the server still works, reaping at each request and every 100 ms instead.
    pub(crate) fn new(pid_slot: PidSlot) -> SiblingCloner {
        let sigchld = super::pipe_nonblocking(true, true).ok().map(|(r, w)| {
            SIGCHLD_W.store(std::os::fd::IntoRawFd::into_raw_fd(w), Ordering::Release);
            // SAFETY: an all-zero `sigaction` is a valid start; the handler is an `extern "C"
            // fn(c_int)` that only writes a byte (see `on_sigchld`). SA_RESTART keeps the
            // server's blocking reads going; SA_NOCLDSTOP ignores stops.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
            }
            r
        });
        SiblingCloner {
            pid_slot,
            sigchld,
            children: RefCell::new(Vec::new()),
        }
    }

    /// Waits until `sock` is readable (a request, or the owner's end of stream), reporting
    /// the children that exit meanwhile.
    pub(crate) fn wait_for_request(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        loop {
            self.reap();
            let ready = match &self.sigchld {
                Some(sigchld) => super::wait_readable(&[sock, sigchld.as_fd()], None)?,
                None => {
                    let tick = std::time::Instant::now() + std::time::Duration::from_millis(100);
                    super::wait_readable(&[sock], Some(tick))?
                }
            };
            if let Some(sigchld) = &self.sigchld
                && ready[1]
            {
                let mut drain = [0u8; 64];
                while matches!(super::read(sigchld.as_fd(), &mut drain), Ok(n) if n > 0) {}
            }
            if ready[0] {
                self.reap();
                return Ok(());
            }
        }
    }

    /// Reaps every child that has exited and writes its exit code into its status pipe.
    fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer; every child of the server is one it
            // made for a request, so reaping any of them is the server's job.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                -libc::WTERMSIG(status)
            } else {
                -1
            };
            let mut children = self.children.borrow_mut();
            if let Some(i) = children.iter().position(|c| c.pid == pid) {
                let served = children.swap_remove(i);
                // Four bytes into a pipe nobody else writes to: never blocks, never split.
                let _ = super::write_all(served.report.as_fd(), &code.to_le_bytes());
            }
        }
    }

    /// Forks a child of the server that runs `child`, leaving it with the code `child` returns.
    /// `report` (the request's status pipe) becomes the child's exit pipe, and the server
    /// writes the child's exit code into it once reaped. Returns the child's pid, also written
    /// into the pid slot.
    ///
    /// The descriptors in `close_in_child` are closed in the child before `child` runs, and so
    /// are the server's copies of the other children's status pipes. Call only from a
    /// single-threaded process (the forkserver).
    pub(crate) fn clone_sibling_reporting<F: FnOnce() -> i32>(
        &self,
        close_in_child: &[RawFd],
        report: OwnedFd,
        child: F,
    ) -> io::Result<RawPid> {
        let mut close: Vec<RawFd> = close_in_child.to_vec();
        close.extend(self.children.borrow().iter().map(|c| c.report.as_raw_fd()));
        close.extend(self.sigchld.as_ref().map(AsRawFd::as_raw_fd));
        close.push(SIGCHLD_W.load(Ordering::Acquire));
        let report_raw = report.as_raw_fd();
        let empty = self.pid_slot.empty();
        // SAFETY: the server is single-threaded, so the child is a full copy of its only
        // thread. The child branch closes descriptors, resets two signal dispositions, stores
        // to atomics, then runs `child` and `_exit`s: it never returns into the caller's frames.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                let guard = super::process::AbortOnUnwind;
                // SAFETY: `getpid` has no preconditions.
                self.pid_slot.record(empty, unsafe { libc::getpid() });
                // SAFETY: restoring the default SIGCHLD disposition has no preconditions.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                for &fd in &close {
                    if fd >= 0 {
                        // SAFETY: the server's descriptors, which the child must not keep;
                        // nothing in the child uses them after this point.
                        unsafe { libc::close(fd) };
                    }
                }
                SIGCHLD_W.store(-1, Ordering::Relaxed);
                super::process::adopt_in_server_child(report_raw);
                std::mem::forget(report);
                crate::sys::signal::restore_default_signals();
                let code = child();
                std::mem::forget(guard);
                super::exit_now(code)
            }
            pid => {
                self.pid_slot.record(empty, pid);
                self.children.borrow_mut().push(Served { pid, report });
                Ok(pid)
            }
        }
    }
}
