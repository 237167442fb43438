//! Linux futexes on shared memory.
//!
//! # Safety
//! The futex calls on 32-bit words go through rustix's safe wrappers, which take
//! `&AtomicU32`: the word is valid for the whole call. [`futex_wait_low`] and
//! [`futex_wake_low`] wait on the low half of a 64-bit atomic (a lock word that carries its
//! owner's identity in the high half) through the raw system call: the kernel reads those
//! four bytes itself, and no Rust code accesses them at a different size.

use std::sync::atomic::{AtomicU32, AtomicU64};
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
