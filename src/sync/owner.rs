//! Who owns a lock, and whether that owner still runs.
//!
//! A lock word names its owner by process identity: the pid, plus the process's start time so
//! that a pid reused by a later process is not mistaken for the owner that died. A waiter
//! takes a lock over only on proof that its owner is dead (see `README.md` beside this file,
//! "Owner death"). The kernel's answers this is built on (`/proc/<pid>/stat`, `kill(pid, 0)`)
//! are thin wrappers in `sys/linux/proc.rs`.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// This process's identity, `pid << 32 | start_time_low32`; 0 until first computed and again
/// in a freshly forked child.
static IDENT: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

/// Forgets the cached identity, in a new child: run after every libc `fork` (registered on
/// first use), and called by the forkserver's children, which libc's fork handlers never see.
/// Async-signal-safe: one atomic store.
pub(crate) extern "C" fn forget_ident_in_child() {
    IDENT.store(0, Ordering::Relaxed);
}

/// The calling process's identity: its pid in the high 32 bits and the low 32 bits of its
/// start time (clock ticks since boot) in the low ones. Cached; no system call once known.
///
/// The start time is 0 ("unknown") when `/proc` cannot tell it; then the identity is cached
/// only if `/proc` is not mounted at all, so that a process that first asks while out of
/// descriptors learns its start time on a later call.
#[inline]
pub(crate) fn process_ident() -> u64 {
    let id = IDENT.load(Ordering::Relaxed);
    if id != 0 {
        return id;
    }
    compute_ident()
}

#[cold]
fn compute_ident() -> u64 {
    ATFORK.call_once(|| sys::on_fork_child(forget_ident_in_child));
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let start = match sys::proc_stat(pid) {
        Ok(Some((_, start))) => Some(start),
        _ => None,
    };
    let id = (u64::from(pid) << 32) | u64::from(start.unwrap_or(0));
    if start.is_some() || !sys::proc_mounted() {
        IDENT.store(id, Ordering::Relaxed);
    }
    id
}

/// The pid part of an identity.
#[inline]
pub(crate) fn ident_pid(ident: u64) -> u32 {
    (ident >> 32) as u32
}

/// The start-time part of an identity (0: unknown).
#[inline]
pub(crate) fn ident_start(ident: u64) -> u32 {
    ident as u32
}

/// What can be proven about a process, for deciding whether a lock's owner died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// No process runs under this pid: the kernel said there is none (`ESRCH`), or it is a
    /// zombie (killed but not reaped yet, which `kill(pid, 0)` would still call alive).
    Dead,
    /// A process runs under this pid and started at this time (low 32 bits of clock ticks
    /// since boot): comparing it with a recorded start time tells a reused pid from its
    /// previous owner.
    Running(u32),
    /// A process may run under this pid, and its start time could not be read (`/proc`
    /// hidden, not mounted, or unreadable for now: out of descriptors or memory).
    Alive,
}

/// Whether process `pid` runs. Only proof means [`Liveness::Dead`]: a zombie state in
/// `/proc/<pid>/stat`, or `kill(pid, 0)` failing with `ESRCH`. Any failure to read `/proc`
/// (a missing entry under `hidepid`, `EMFILE`, `ENFILE`, `ENOMEM`, `EACCES`) is answered by
/// `kill(pid, 0)`, which needs no descriptor, and is otherwise [`Liveness::Alive`].
///
/// Reads `/proc`; meant for slow paths only.
pub(crate) fn liveness(pid: u32) -> Liveness {
    match sys::proc_stat(pid) {
        Ok(Some((b'Z' | b'X' | b'x', _))) => Liveness::Dead,
        Ok(Some((_, start))) => Liveness::Running(start),
        Ok(None) | Err(_) => kill_probe(pid),
    }
}

/// `kill(pid, 0)`: [`Liveness::Dead`] only when the kernel says no such process exists.
fn kill_probe(pid: u32) -> Liveness {
    if sys::pid_exists(pid) {
        Liveness::Alive
    } else {
        Liveness::Dead
    }
}

/// Whether the process behind an identity from [`process_ident`] may still be running:
/// `false` only if its pid is dead, or now belongs to a process with another start time.
pub(crate) fn ident_alive(ident: u64) -> bool {
    match liveness(ident_pid(ident)) {
        Liveness::Dead => false,
        Liveness::Running(start) => ident_start(ident) == 0 || ident_start(ident) == start,
        Liveness::Alive => true,
    }
}

thread_local! {
    static THREAD_TAG: Cell<u8> = const { Cell::new(0) };
}

/// A number unique among the live threads of this process (the address of a thread-local),
/// never 0. Free: no system call.
#[inline]
pub(crate) fn thread_tag() -> u64 {
    THREAD_TAG.with(|c| c as *const Cell<u8> as usize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_self_zombie_and_reaped() {
        let me = process_ident();
        assert_ne!(ident_start(me), 0, "/proc is readable here");
        assert!(ident_alive(me));
        assert_eq!(liveness(ident_pid(me)), Liveness::Running(ident_start(me)));
        assert!(
            !ident_alive(me ^ 1),
            "another start time is another process"
        );
        let pid = sys::fork_child(|| {
            // The portable layer knows a process's end through the life lock it takes with
            // its identity (`sys/posix/proc.rs`; async-signal-safe there), as a lock owner
            // does; `/proc` needs nothing from the child.
            if cfg!(multiproc_portable) {
                let _ = process_ident();
            }
            0
        })
        .unwrap() as u32;
        // A child that exited but was not reaped is a zombie: dead for us.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while liveness(pid) != Liveness::Dead {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "zombie, not reaped"
        );
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()).unwrap();
        assert_eq!(liveness(pid), Liveness::Dead);
    }

    #[test]
    fn numbers_that_cannot_be_pids_are_dead_and_unreadable_live_ones_are_alive() {
        assert_eq!(liveness(0x3FFF_FFFF), Liveness::Dead, "above any pid_max");
        assert_eq!(liveness(u32::MAX), Liveness::Dead);
        // What a waiter falls back on when `/proc` cannot be read: the kernel's word.
        assert_eq!(kill_probe(std::process::id()), Liveness::Alive);
        assert_eq!(kill_probe(1), Liveness::Alive, "EPERM or not, pid 1 exists");
        assert_eq!(kill_probe(0x3FFF_FFFF), Liveness::Dead);
    }
}
