//! Linux futexes on shared memory, and the identity and liveness of processes that own them.
//!
//! # Safety
//! The futex calls on 32-bit words go through rustix's safe wrappers, which take
//! `&AtomicU32`: the word is valid for the whole call. [`futex_wait_low`] and
//! [`futex_wake_low`] wait on the low half of a 64-bit atomic (a lock word that carries its
//! owner's identity in the high half) through the raw system call: the kernel reads those
//! four bytes itself, and no Rust code accesses them at a different size. The remaining
//! `unsafe` is `pthread_atfork`, which registers a plain `extern "C" fn` that touches one
//! atomic.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::thread::futex;

/// Blocks while `*word == expected`, for at most `timeout` (forever if `None`).
///
/// Returns `false` if the timeout passed, `true` otherwise (woken, value already changed, or
/// interrupted by a signal: callers re-check their condition and loop). The futex is not
/// process-private, so waiters and wakers may be in different processes that map the word at
/// different addresses.
///
/// # References
/// futex(2), `FUTEX_WAIT`.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Err(rustix::io::Errno::TIMEDOUT) => false,
        // Woken, EAGAIN (value changed) or EINTR: the caller re-checks.
        _ => true,
    }
}

/// Wakes up to `n` waiters blocked on `word` (in any process). Returns how many were woken.
///
/// # References
/// futex(2), `FUTEX_WAKE`.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}

/// The address of the 32 bits of `word` that hold its low half (its first four bytes on a
/// little-endian machine, its last four on a big-endian one).
fn low_half(word: &AtomicU64) -> *const u32 {
    let base = word.as_ptr().cast::<u32>().cast_const();
    if cfg!(target_endian = "little") {
        base
    } else {
        base.wrapping_add(1)
    }
}

/// As [`futex_wait`], on the low 32 bits of a 64-bit word: blocks while they equal
/// `expected`, for at most `timeout`. `false` if the timeout passed.
///
/// # References
/// futex(2), `FUTEX_WAIT` (the kernel compares one aligned 32-bit word, wherever it lies).
pub(crate) fn futex_wait_low(word: &AtomicU64, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `low_half` points at four bytes inside `word`, aligned to 4 (the word is
    // aligned to 8), which `&word` keeps alive and mapped for the whole call; the kernel only
    // reads them. `ts_ptr` is null or points at a live timespec. FUTEX_WAIT ignores the last
    // two arguments. Not FUTEX_PRIVATE_FLAG: waiters and wakers are in different processes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            low_half(word),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    // Woken, EAGAIN (value changed) or EINTR: the caller re-checks.
    !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// As [`futex_wake`], for sleepers of [`futex_wait_low`] on `word`.
pub(crate) fn futex_wake_low(word: &AtomicU64, n: u32) {
    // SAFETY: as in `futex_wait_low`; FUTEX_WAKE reads nothing at the address (it only names
    // the wait queue) and ignores the arguments after the count.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            low_half(word),
            libc::FUTEX_WAKE,
            n.min(i32::MAX as u32),
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Process identity: pid plus start time, so that a reused pid is not mistaken for its
// previous owner.

/// This process's identity, `pid << 32 | start_time_low32`; 0 until first computed and again
/// in a freshly forked child.
static IDENT: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

/// Forgets the cached identity, in a new child (glibc runs it after `fork`; `clone_sibling`
/// calls it in the forkserver's children, which glibc's fork handlers never see).
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
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only stores to an atomic (async-signal-safe);
        // the function lives for the whole program.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_ident_in_child));
        }
    });
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let start = match stat(pid) {
        Ok(Some((_, start))) => Some(start),
        _ => None,
    };
    let id = (u64::from(pid) << 32) | u64::from(start.unwrap_or(0));
    if start.is_some() || !proc_mounted() {
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

/// The state letter and the low 32 bits of the start time of process `pid`, from
/// `/proc/<pid>/stat`: `Err` if the file could not be read, `Ok(None)` if it could but did not
/// parse.
fn stat(pid: u32) -> std::io::Result<Option<(u8, u32)>> {
    let text = std::fs::read(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&text))
}

fn parse_stat(text: &[u8]) -> Option<(u8, u32)> {
    // Fields after the parenthesised command name (which may itself contain ')').
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.as_bytes().first().copied()?;
    // starttime is field 22 of stat; `state` was field 3.
    let start: u64 = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start as u32))
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
    match stat(pid) {
        Ok(Some((b'Z' | b'X' | b'x', _))) => Liveness::Dead,
        Ok(Some((_, start))) => Liveness::Running(start),
        Ok(None) | Err(_) => kill_probe(pid),
    }
}

/// `kill(pid, 0)`: [`Liveness::Dead`] only on `ESRCH` (or for a number that cannot be a pid),
/// [`Liveness::Alive`] otherwise (`EPERM` means the process exists).
fn kill_probe(pid: u32) -> Liveness {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Liveness::Dead;
    };
    match rustix::process::test_kill_process(p) {
        Err(rustix::io::Errno::SRCH) => Liveness::Dead,
        _ => Liveness::Alive,
    }
}

/// Whether `/proc` is mounted (a sandbox may hide it).
fn proc_mounted() -> bool {
    static MOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MOUNTED.get_or_init(|| std::path::Path::new("/proc/self/stat").exists())
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
        let pid = super::super::fork_child(|| 0).unwrap() as u32;
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

    #[test]
    fn stat_parses_names_with_parentheses_and_spaces() {
        let line = b"42 (a) (b c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                     123456789012 0 0";
        assert_eq!(parse_stat(line), Some((b'S', 123456789012u64 as u32)));
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 (x) S 1"), None);
    }
}
