//! `clone(CLONE_PARENT)`: the forkserver makes children that are its siblings, so they are
//! direct children of the program that asked for them.
//!
//! That keeps everything the parent does with a child unchanged across start methods: it
//! opens a pidfd, waits and reaps with `waitid(P_PIDFD)`, daemons use `PR_SET_PDEATHSIG`, and
//! `getppid()` in the child is the real parent. See `start/forkserver/README.md` for the
//! alternatives weighed.
//!
//! Two more flags do what glibc's own `fork` (`_Fork`) does and what the server needs:
//! - `CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID` on glibc's cached thread id in the thread
//!   descriptor (`struct pthread`), as `_Fork` does with `&THREAD_SELF->tid`: without it the
//!   child would carry the server's id, which glibc writes into robust, priority-inheritance
//!   and error-checking mutexes as the owner, so a robust mutex held by a killed child would
//!   never be marked owner-died. glibc publishes where that field lives for `libthread_db`
//!   (`_thread_db_pthread_tid`); [`cached_tid_slot`] finds it and checks it against
//!   `gettid()` before it is used. Where that fails (not glibc, or a glibc without the
//!   descriptor) the child keeps the stale id, a documented limitation.
//! - `CLONE_PARENT_SETTID` on a [`PidSlot`], a word shared with the server's owner: the kernel
//!   writes the new child's pid there before `clone` returns in the server and before the
//!   child runs, so the owner learns of every child the server made even if the server dies
//!   before it can answer.
//!
//! # Safety
//! A raw `clone` bypasses the rest of glibc's `fork`: `pthread_atfork` handlers do not run,
//! and the kernel forgets the robust-futex list, which [`SiblingCloner::clone_sibling`] registers again. The
//! server is single-threaded, so no lock can be held by a thread that does not exist in the
//! child, and the child may allocate. The thread-id slot is a field of glibc's descriptor of
//! the calling thread, located by glibc's own published offset and bounded by its published
//! size; it is written only by the kernel.
//!
//! # References
//! clone(2) (`CLONE_PARENT`, `CLONE_CHILD_SETTID`, `CLONE_PARENT_SETTID`), set_robust_list(2),
//! madvise(2) (`MADV_DONTFORK`), glibc `sysdeps/nptl/_Fork.c`, `nptl/db_info.c`
//! (`DB_STRUCT_FIELD`: size in bits, element count, offset).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::RawPid;
use super::shm::Mapping;

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

/// The address of the calling thread's cached thread id in glibc's `struct pthread`, if glibc
/// publishes where it lives and the value found there is the thread's id.
///
/// The descriptors are glibc's for `libthread_db` (GLIBC_PRIVATE, present since glibc 2.3):
/// `_thread_db_pthread_tid` is `{ size in bits, count, offset }` and
/// `_thread_db_sizeof_pthread` the size of the structure.
#[cfg(target_env = "gnu")]
pub(crate) fn cached_tid_slot() -> Option<usize> {
    fn glibc_private(name: &std::ffi::CStr) -> Option<*const u32> {
        // SAFETY: `dlvsym` only looks the (NUL-terminated) name up in the loaded objects; it
        // returns null when there is no such symbol at that version.
        let sym =
            unsafe { libc::dlvsym(libc::RTLD_DEFAULT, name.as_ptr(), c"GLIBC_PRIVATE".as_ptr()) };
        (!sym.is_null()).then_some(sym.cast::<u32>())
    }
    let desc = glibc_private(c"_thread_db_pthread_tid")?;
    let size = glibc_private(c"_thread_db_sizeof_pthread")?;
    // SAFETY: both symbols are glibc's read-only `uint32_t` arrays (three elements and one),
    // defined in `nptl/db_info.c` for every glibc that exports them.
    let (bits, count, offset, size) = unsafe { (*desc, *desc.add(1), *desc.add(2), *size) };
    let offset = offset as usize;
    if bits != 32 || count != 1 || !offset.is_multiple_of(4) || offset + 4 > size as usize {
        return None;
    }
    // SAFETY: on glibc `pthread_t` is the address of the calling thread's `struct pthread`,
    // which is `size` bytes long and lives as long as the thread; `offset + 4 <= size` was
    // checked above and the field is 4-byte aligned, so the read stays inside the structure.
    let addr = unsafe { libc::pthread_self() } as usize + offset;
    // SAFETY: as above; a volatile read because glibc and the kernel write this field.
    let cached = unsafe { std::ptr::read_volatile(addr as *const i32) };
    (cached == rustix::thread::gettid().as_raw_nonzero().get()).then_some(addr)
}

/// Not glibc: no published location; children keep the server's cached thread id.
#[cfg(not(target_env = "gnu"))]
pub(crate) fn cached_tid_slot() -> Option<usize> {
    None
}

/// A word of memory shared by the forkserver and its owner, into which the kernel writes the
/// pid of each child the server clones (`CLONE_PARENT_SETTID`). The owner clears it before each
/// request; once the server has exited, a non-zero value is a child the server made.
#[derive(Debug)]
pub(crate) struct PidSlot {
    map: Mapping,
}

impl PidSlot {
    const LEN: usize = 4096;

    /// A new slot, and the descriptor to hand to the server ([`PidSlot::attach`]).
    pub(crate) fn create() -> io::Result<(PidSlot, OwnedFd)> {
        let fd = super::memfd(Self::LEN)?;
        let map = Mapping::new(std::os::fd::AsFd::as_fd(&fd), Self::LEN)?;
        Ok((PidSlot { map }, fd))
    }

    /// The server's side: maps the owner's slot, kept out of the children it clones
    /// (`MADV_DONTFORK`), so that no child ever holds a view of it.
    pub(crate) fn attach(fd: BorrowedFd<'_>) -> io::Result<PidSlot> {
        let (len, _) = super::fd_len_and_id(fd)?;
        if len != Self::LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "forkserver pid slot of the wrong size",
            ));
        }
        let map = Mapping::new(fd, Self::LEN)?;
        // SAFETY: the range is exactly the mapping just made and owned by `map`; the advice
        // changes only whether a child created without CLONE_VM gets a copy of it.
        unsafe {
            rustix::mm::madvise(
                map.as_ptr().cast(),
                Self::LEN,
                rustix::mm::Advice::LinuxDontFork,
            )?
        };
        Ok(PidSlot { map })
    }

    fn word(&self) -> &AtomicI32 {
        // SAFETY: the mapping is page aligned, at least 4 bytes long and lives as long as
        // `self`; it is only ever accessed as this one atomic (and written by the kernel).
        unsafe { &*self.map.as_ptr().cast::<AtomicI32>() }
    }

    /// Forgets any earlier child's pid, before a request.
    pub(crate) fn clear(&self) {
        self.word().store(0, Ordering::SeqCst);
    }

    /// The pid of the child made since the last [`clear`](PidSlot::clear), if any.
    pub(crate) fn get(&self) -> Option<RawPid> {
        match self.word().load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn address(&self) -> usize {
        self.map.as_ptr() as usize
    }
}

/// What the forkserver uses for every [`clone_sibling`](SiblingCloner::clone_sibling): computed once, since the server is
/// single-threaded and its thread's descriptor never moves.
#[derive(Debug)]
pub(crate) struct SiblingCloner {
    robust: Option<(usize, usize)>,
    cached_tid: Option<usize>,
    pid_slot: PidSlot,
}

impl SiblingCloner {
    /// Call in the server, on its only thread.
    pub(crate) fn new(pid_slot: PidSlot) -> SiblingCloner {
        SiblingCloner {
            robust: robust_list(),
            cached_tid: cached_tid_slot(),
            pid_slot,
        }
    }

    /// Creates a child that is this process's sibling (a child of this process's parent) and
    /// runs `child` in it, leaving it with the code `child` returns. Returns the child's pid,
    /// which the kernel also wrote into the pid slot before the child could run.
    ///
    /// The descriptors in `close_in_child` are closed in the child before `child` runs. Call
    /// only from a single-threaded process (the forkserver).
    pub(crate) fn clone_sibling<F: FnOnce() -> i32>(
        &self,
        close_in_child: &[std::os::fd::RawFd],
        child: F,
    ) -> io::Result<RawPid> {
        let mut flags = libc::CLONE_PARENT | libc::CLONE_PARENT_SETTID | libc::SIGCHLD;
        let child_tid = match self.cached_tid {
            Some(addr) => {
                flags |= libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
                addr
            }
            None => 0,
        };
        let parent_tid = self.pid_slot.address();
        // SAFETY: without CLONE_VM the child gets a copy of this address space, and with a null
        // stack it continues on its copy of this stack, exactly as after `fork`. The kernel
        // writes the child's pid to `parent_tid` (a live shared mapping owned by `pid_slot`)
        // and, in the child's copy, to `child_tid` (glibc's cached-id field, validated by
        // `cached_tid_slot`), and zeroes that field at the child's exit, as after glibc's
        // `fork`. CLONE_SETTLS is not set, so the argument order's difference between
        // architectures is covered by passing `child_tid` in both the fourth and fifth
        // positions (see `raw_clone`). The child branch below never returns into the caller's
        // frames: it runs `child` and `_exit`s.
        let pid = unsafe { raw_clone(flags as libc::c_ulong, parent_tid, child_tid) };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                if let Some((head, len)) = self.robust {
                    // SAFETY: `head` is the list head glibc registered for this thread in the
                    // server; this address space is a copy of the server's, so it is valid here.
                    unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) };
                }
                for &fd in close_in_child {
                    // SAFETY: the caller names descriptors the child must not keep; nothing in
                    // the child uses them after this point.
                    unsafe { libc::close(fd) };
                }
                crate::sys::signal::restore_default_signals();
                let guard = super::process::AbortOnUnwind;
                let code = child();
                std::mem::forget(guard);
                super::exit_now(code)
            }
            pid => Ok(pid as RawPid),
        }
    }
}

/// `clone(flags, NULL, parent_tid, child_tid)` with the architecture's argument order.
///
/// # Safety
/// As `clone` with a null stack: see the caller. Without `CLONE_SETTLS` the `tls` argument is
/// ignored, which lets `child_tid` go in both the fourth and fifth positions and so serve the
/// common order (`flags, stack, ptid, ctid, tls`) and `CONFIG_CLONE_BACKWARDS`'s (`flags,
/// stack, ptid, tls, ctid`: 32-bit x86 and ARM, PowerPC) alike; s390 swaps the first two.
unsafe fn raw_clone(flags: libc::c_ulong, parent_tid: usize, child_tid: usize) -> libc::c_long {
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: see the function's contract.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            parent_tid,
            child_tid,
            child_tid,
        )
    };
    #[cfg(target_arch = "s390x")]
    // SAFETY: see the function's contract.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            0usize,
            flags,
            parent_tid,
            child_tid,
            child_tid,
        )
    };
    rc
}

#[cfg(test)]
mod tests {
    /// glibc's published offset of the cached thread id is found and right, on any thread
    /// (each has its own descriptor); the forkserver relies on it for every child.
    #[cfg(target_env = "gnu")]
    #[test]
    fn cached_tid_slot_holds_the_calling_threads_id() {
        let here = super::cached_tid_slot().expect("glibc publishes _thread_db_pthread_tid");
        let there = std::thread::spawn(|| {
            let slot = super::cached_tid_slot().expect("on another thread too");
            // SAFETY: the slot was just validated as this live thread's cached id.
            let tid = unsafe { std::ptr::read_volatile(slot as *const i32) };
            (slot, tid, rustix::thread::gettid().as_raw_nonzero().get())
        })
        .join()
        .unwrap();
        assert_ne!(here, there.0);
        assert_eq!(there.1, there.2);
    }
}
