//! Linux futexes on shared memory, and the identity and liveness of processes that own them.
//!
//! # Safety
//! The futex calls go through rustix's safe wrappers, which take `&AtomicU32`: the word is
//! valid for the whole call. The only `unsafe` here is `pthread_atfork`, which registers a
//! plain `extern "C" fn` that touches one atomic.

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

// ---------------------------------------------------------------------------------------------
// Process identity: pid plus start time, so that a reused pid is not mistaken for its
// previous owner.

/// This process's identity, `pid << 32 | start_time_low32`; 0 until first computed and again
/// in a freshly forked child.
static IDENT: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_ident_in_child() {
    IDENT.store(0, Ordering::Relaxed);
}

/// The calling process's identity: its pid in the high 32 bits and the low 32 bits of its
/// start time (clock ticks since boot) in the low ones. Cached; no system call once known.
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
    let start = start_time(pid).unwrap_or(0);
    let id = (u64::from(pid) << 32) | u64::from(start);
    IDENT.store(id, Ordering::Relaxed);
    id
}

/// The pid part of an identity.
#[inline]
pub(crate) fn ident_pid(ident: u64) -> u32 {
    (ident >> 32) as u32
}

/// The state letter and the low 32 bits of the start time of process `pid`, from
/// `/proc/<pid>/stat`; `None` if there is no such process.
fn stat(pid: u32) -> Option<(u8, u32)> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may itself contain ')').
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.as_bytes().first().copied()?;
    // starttime is field 22 of stat; `state` was field 3.
    let start: u64 = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start as u32))
}

fn start_time(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, start)| start)
}

/// The start time (low 32 bits) of process `pid` if it is running; `None` if there is no
/// such process or it is a zombie (killed but not reaped yet, which `kill(pid, 0)` would still
/// call alive). Comparing start times tells a reused pid from its previous owner.
///
/// Reads `/proc`; meant for slow paths only.
pub(crate) fn running_since(pid: u32) -> Option<u32> {
    match stat(pid) {
        Some((b'Z' | b'X' | b'x', _)) => None,
        Some((_, start)) => Some(start),
        None if proc_mounted() => None,
        // Without /proc, fall back to asking the kernel whether the pid exists (a zombie
        // counts as alive then, and start times are unknown).
        None => {
            let alive = rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| {
                !matches!(
                    rustix::process::test_kill_process(p),
                    Err(rustix::io::Errno::SRCH)
                )
            });
            alive.then_some(0)
        }
    }
}

/// Whether `/proc` is available (a sandbox may hide it); without it, a missing entry says
/// nothing about a process.
fn proc_mounted() -> bool {
    static MOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MOUNTED.get_or_init(|| std::path::Path::new("/proc/self/stat").exists())
}

/// Whether the process behind an identity from [`process_ident`] is still running.
pub(crate) fn ident_alive(ident: u64) -> bool {
    running_since(ident_pid(ident)) == Some(ident as u32)
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
        assert!(ident_alive(me));
        assert_eq!(running_since(ident_pid(me)), Some(me as u32));
        assert!(
            !ident_alive(me ^ 1),
            "another start time is another process"
        );
        let pid = super::super::fork_child(|| 0).unwrap() as u32;
        // A child that exited but was not reaped is a zombie: dead for us.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running_since(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "zombie, not reaped"
        );
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()).unwrap();
        assert_eq!(running_since(pid), None);
    }
}
