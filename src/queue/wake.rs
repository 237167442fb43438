//! How a blocked `put` or `get` waits, and how the other side wakes it: watch briefly, then
//! sleep on a futex word of the ring's header in slices of at most [`RECHECK`], counted as a
//! sleeper so that the other side makes a wake-up call only when someone sleeps, and woken
//! one at a time with a baton passed on by whoever was woken (see `README.md`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::ring::{ShmQueue, Words};

/// The longest a blocked call sleeps before checking again whether the other handles are
/// still there (how quickly a dead peer is noticed).
const RECHECK: Duration = Duration::from_millis(50);

/// The name of the internal knob read by [`recheck`]. Not public API: it exists for
/// `tests/aio.rs` and may change or go without notice.
const RECHECK_VAR: &str = "MULTIPROC_TEST_RECHECK_MS";

/// The most [`RECHECK_VAR`] may set: a minute, twice what its test uses.
const RECHECK_MAX_MS: u64 = 60_000;

/// [`RECHECK`], unless the internal knob `MULTIPROC_TEST_RECHECK_MS` (read once per process)
/// sets a whole number of milliseconds from 1 to [`RECHECK_MAX_MS`]; any other value is
/// ignored. For tests only: with a recheck of many seconds, a wake-up that the futex or the
/// event descriptor loses shows as a wait of that long instead of hiding inside a 50 ms slice
/// (`tests/aio.rs`, `round_trips_never_wait_for_the_recheck`). Also used by `crate::aio`'s
/// queue futures.
///
/// It stays an environment variable, not `#[cfg(test)]` or a feature, because the test that
/// needs it is an integration test and the processes it checks are children running the
/// ordinary build of the library; a feature would have to be switched on for every test
/// build through a self dev-dependency. What it can change is only how soon a blocked call
/// notices a dead peer (never what a call returns), and the bounds keep a stray value from
/// making that a busy loop (0) or practically never (hours).
pub(crate) fn recheck() -> Duration {
    static RECHECK_NOW: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *RECHECK_NOW.get_or_init(|| recheck_from(std::env::var(RECHECK_VAR).ok().as_deref()))
}

/// The recheck that a value of [`RECHECK_VAR`] asks for, [`RECHECK`] if it asks for none
/// within bounds.
fn recheck_from(var: Option<&str>) -> Duration {
    var.and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| (1..=RECHECK_MAX_MS).contains(ms))
        .map_or(RECHECK, Duration::from_millis)
}

/// The processes sleeping for one thing (an item, or room): the futex word they sleep on,
/// how many sleep, and whether one was woken and has not run yet.
pub(super) struct Sleepers<'a> {
    word: &'a AtomicU32,
    count: &'a AtomicU32,
    pending: &'a AtomicU32,
}

impl<'a> Sleepers<'a> {
    /// Getters waiting for an item.
    pub(super) fn for_items(words: &'a Words) -> Self {
        Sleepers {
            word: &words.not_empty,
            count: &words.not_empty_sleepers,
            pending: &words.not_empty_pending,
        }
    }

    /// Putters waiting for room.
    pub(super) fn for_room(words: &'a Words) -> Self {
        Sleepers {
            word: &words.not_full,
            count: &words.not_full_sleepers,
            pending: &words.not_full_pending,
        }
    }

    /// Counts the caller as a sleeper, before it looks a last time and sleeps; undone by
    /// [`leave`](Self::leave).
    ///
    /// Also takes back a turn left claimed: a waker that saw the count of an earlier sleeper
    /// which then found its item without sleeping (and left, clearing the flag) can claim
    /// the turn *after* that clearing, and its wake-up reached no one. Left set, the flag
    /// would make every later waker skip its wake-up, and the next sleeper would sleep a
    /// whole [`recheck`] slice. Clearing it here, once counted and before the last look,
    /// keeps no wake-up from being lost: a waker that claims the turn after this bumps the
    /// word after the caller read it, so the caller's sleep returns at once. (At worst two
    /// sleepers are woken where one was due.)
    pub(super) fn enter(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.pending.store(0, Ordering::SeqCst);
    }

    /// Uncounts the caller, after its sleep (or its last look found what it waits for).
    pub(super) fn leave(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.pending.store(0, Ordering::Release);
    }

    /// Wakes one of these sleepers if one sleeps, `also` holds, and no process woken before has yet to
    /// run (it passes the baton on itself). A woken process that dies before running leaves
    /// the turn taken; sleepers then look again within [`RECHECK`].
    pub(super) fn wake_one(&self, q: &ShmQueue, also: impl FnOnce() -> bool) {
        // Producers and consumers both wake sleepers, under different locks: the turn is
        // claimed with one atomic operation. Whether anyone sleeps is looked at first, as
        // `also` may read the line the other side writes.
        if self.count.load(Ordering::SeqCst) > 0
            && also()
            && self
                .pending
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            self.word.fetch_add(1, Ordering::Release);
            q.wake(self.word, 1);
        }
    }
}

/// How long a blocked `get` or `put` watches the queue before it sleeps: a producer and a
/// consumer that keep pace hand items over in well under this, and a sleep costs a system
/// call on each side and a wake-up that can take far longer on a busy machine.
const AWAIT_BRIEFLY: Duration = Duration::from_micros(50);

/// Watches for `ready` for up to [`AWAIT_BRIEFLY`], first spinning, then yielding the CPU (to
/// the other side, if it shares this CPU). Whether it became true.
pub(super) fn await_briefly(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    for step in 0u32.. {
        if ready() {
            return true;
        }
        // Look seldom: each look pulls the other side's line away from it, while a producer
        // left alone for a moment publishes a run of items at full speed. (Looking sooner
        // at first, with growing gaps, measured as slow as not waiting at all.)
        for _ in 0..1u32 << GAP_LOG2 {
            std::hint::spin_loop();
        }
        if step % 4 == 3 {
            let spent = start.elapsed();
            if spent >= AWAIT_BRIEFLY {
                return false;
            }
            if spent >= AWAIT_BRIEFLY / 2 {
                std::thread::yield_now();
            }
        }
    }
    false
}

/// The gap between two looks of [`await_briefly`]: 2^7 spin hints (about 4 µs on
/// the machine of BENCHMARKS.md).
const GAP_LOG2: u32 = 7;

/// How long a blocking call may wait.
pub(super) enum Wait {
    No,
    Forever,
    Until(Instant),
}

impl Wait {
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Wait::Until(d) => Some(*d),
            // Even a non-blocking call may wait for the lock, which is only ever held for a
            // copy; a dead holder's lock is taken over within milliseconds.
            Wait::No | Wait::Forever => None,
        }
    }

    /// How long to sleep before looking again; `None` when no more waiting is allowed.
    pub(super) fn nap(&self) -> Option<Duration> {
        match self {
            Wait::No => None,
            Wait::Forever => Some(recheck()),
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(recheck()))
            }
        }
    }
}

pub(super) fn deadline_after(timeout: Duration) -> Instant {
    Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recheck_knob_is_bounded() {
        assert_eq!(recheck_from(None), RECHECK);
        assert_eq!(recheck_from(Some("30000")), Duration::from_secs(30));
        assert_eq!(recheck_from(Some("1")), Duration::from_millis(1));
        assert_eq!(recheck_from(Some("60000")), Duration::from_secs(60));
        for out_of_bounds in ["0", "60001", "3600000", "-5", "fast", ""] {
            assert_eq!(
                recheck_from(Some(out_of_bounds)),
                RECHECK,
                "{out_of_bounds:?}"
            );
        }
    }
}
