//! Waiting on shared words without futexes: polling with exponential backoff.
//!
//! POSIX has no call that sleeps until a word in shared memory changes (a process-shared
//! condition variable needs a mutex beside the word, which a crash can leave locked). So a
//! waiter re-reads the word, first for [`YIELD_FOR`] (100 µs) giving its CPU away between
//! reads (`sched_yield`), then sleeping between reads for 1 µs, then 2, 4, ... up to
//! [`MAX_SLEEP`] (about 1 ms); a wake is a no-op: the waiter sees the change at its next
//! read. Why the yielding phase: most hand-overs (a lock released, an event set by a peer
//! that is running) come within microseconds, and a sleep, however short it is asked to be,
//! lasts at least the timer slack (50 µs on Linux), so a ping-pong that slept at every turn
//! ran 13x slower than the futex. Yielding lets the peer run on a busy CPU and costs at most
//! 100 µs of CPU per wait. The cost of the rest: a wake-up after the first 100 µs is seen up
//! to ~1 ms late, and a long wait reads the word about a thousand times a second. On macOS `os_sync_wait_on_address` (macOS 14.4+, with
//! `OS_SYNC_WAIT_ON_ADDRESS_SHARED`) could replace this later behind the same four names.
//!
//! # Safety
//! No `unsafe`: the words are read through `&AtomicU32` / `&AtomicU64`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest sleep between two reads of a waited-on word.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// How long a waiter re-reads the word with a yield between reads before it starts sleeping.
const YIELD_FOR: Duration = Duration::from_micros(100);

/// Sleeps, with growing pauses, until `changed()` or until `timeout` passes. `false` if the
/// timeout passed first.
fn backoff_until(mut changed: impl FnMut() -> bool, timeout: Option<Duration>) -> bool {
    if changed() {
        return true;
    }
    let start = Instant::now();
    let deadline = timeout.and_then(|t| start.checked_add(t));
    let yield_until = deadline.map_or(start + YIELD_FOR, |d| d.min(start + YIELD_FOR));
    loop {
        std::thread::yield_now();
        if changed() {
            return true;
        }
        if Instant::now() >= yield_until {
            break;
        }
    }
    let mut pause = Duration::from_micros(1);
    loop {
        if changed() {
            return true;
        }
        let nap = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                pause.min(left)
            }
            None => pause,
        };
        std::thread::sleep(nap);
        pause = (pause * 2).min(MAX_SLEEP);
    }
}

/// Blocks while `*word == expected`, for at most `timeout` (forever if `None`).
///
/// Returns `false` if the timeout passed, `true` otherwise; callers re-check their condition
/// and loop, as with a futex. The change is seen up to [`MAX_SLEEP`] late.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    backoff_until(|| word.load(Ordering::Acquire) != expected, timeout)
}

/// Wakes waiters on `word`: a no-op here, since waiters poll. Returns 0 (none known woken).
pub(crate) fn futex_wake(_word: &AtomicU32, _n: u32) -> usize {
    0
}

/// As [`futex_wait`], on the low 32 bits of a 64-bit word.
pub(crate) fn futex_wait_low(word: &AtomicU64, expected: u32, timeout: Option<Duration>) -> bool {
    backoff_until(|| word.load(Ordering::Acquire) as u32 != expected, timeout)
}

/// As [`futex_wake`], for sleepers of [`futex_wait_low`]: a no-op.
pub(crate) fn futex_wake_low(_word: &AtomicU64, _n: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_on_change_or_timeout() {
        let w = AtomicU32::new(1);
        let zero = Instant::now();
        assert!(!futex_wait(&w, 1, Some(Duration::ZERO)), "a zero timeout");
        assert!(
            zero.elapsed() < Duration::from_secs(5),
            "a zero timeout returns at once"
        );
        assert!(!futex_wait(&w, 1, Some(Duration::from_millis(5))));
        assert!(
            futex_wait(&w, 2, Some(Duration::from_millis(5))),
            "already different"
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                w.store(3, Ordering::Release);
            });
            assert!(futex_wait(&w, 1, Some(Duration::from_secs(30))));
        });
        // A change within the yielding phase, as in a ping-pong.
        std::thread::scope(|s| {
            s.spawn(|| w.store(4, Ordering::Release));
            assert!(futex_wait(&w, 3, Some(Duration::from_secs(30))));
        });
        assert_eq!(w.load(Ordering::Acquire), 4);
        let q = AtomicU64::new(7 | (9 << 32));
        assert!(!futex_wait_low(&q, 7, Some(Duration::from_millis(5))));
        assert!(
            futex_wait_low(&q, 9, Some(Duration::from_millis(5))),
            "only the low half counts"
        );
    }
}
