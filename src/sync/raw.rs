//! The robust futex word every primitive in `sync` is built on, and the `#[repr(C)]` layouts
//! the primitives keep in shared memory. See `README.md` beside this file for the design.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::owner;
use crate::shared::segment::ShmSafe;
use crate::sys;

/// Set in a lock word while someone may be sleeping on it.
const WAITERS: u32 = 1 << 31;

/// How long a waiter sleeps before checking that the barrier's parties are still alive.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(10);

/// A lock waiter first checks its owner's liveness after this long, then after twice as long
/// each time, up to [`OWNER_CHECK_MAX`]; each new owner starts the sequence again.
const OWNER_CHECK_FIRST: Duration = Duration::from_millis(1);
const OWNER_CHECK_MAX: Duration = Duration::from_millis(20);

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Normally.
    Clean,
    /// From an owner process that died holding it: the protected data may be inconsistent.
    OwnerDied,
}

/// The deadline for a timeout; `None` (wait forever) if it does not fit in an `Instant`.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The time left before `deadline` (`None` = forever), or `None` inside `Some` when passed.
fn left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                None
            } else {
                Some(Some(left))
            }
        }
    }
}

/// The longest a waiter on a semaphore, event or condition sleeps before looking at its word
/// again, woken or not: a process killed between changing the word and waking the sleepers
/// (or a sleeper that missed a wake for any reason) costs at most this much, never a hang.
const STRANDED_SLICE: Duration = Duration::from_millis(50);

/// Sleeps while `*word == expected`, until `deadline`. Returns `true` once the word differs,
/// `false` if the deadline passed first. Sleeps on the futex in slices of at most
/// [`STRANDED_SLICE`].
pub(crate) fn wait_while(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    loop {
        if word.load(Ordering::Acquire) != expected {
            return true;
        }
        let slice = match left(deadline) {
            None => return false,
            Some(None) => STRANDED_SLICE,
            Some(Some(d)) => d.min(STRANDED_SLICE),
        };
        sys::futex_wait(word, expected, Some(slice));
    }
}

/// Wake count meaning "all" (the kernel reads the count as a signed int).
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// Wakes up to `n` sleepers on `word`.
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    sys::futex_wake(word, n);
}

/// [`WAITERS`] in the 64-bit lock state.
const WAITERS64: u64 = WAITERS as u64;

/// What this process writes into a lock it takes: its pid in the low half (the futex word)
/// and its start time in the high half (see [`RawLock`]).
#[inline]
fn owner_value() -> u64 {
    owner::process_ident().rotate_left(32)
}

/// A process-robust mutual-exclusion lock: one 64-bit word.
///
/// The low 32 bits are the futex word: 0 when free, else the owner's pid, with [`WAITERS`]
/// set while someone may sleep on it. The high 32 bits are the owner's start time (low bits
/// of clock ticks since boot; 0 if it could not be read), written by the same
/// compare-and-swap that takes the lock, so a waiter always reads an owner's pid and start
/// time together and a reused pid can never pass for the owner that died.
///
/// Uncontended lock and unlock are one atomic read-modify-write each; waiters sleep on the
/// futex in slices (1 ms doubling up to 20 ms) and check between slices whether the owner
/// still runs; if it does not, they take the lock over with one compare-and-swap of the whole
/// word (so two waiters cannot both win, nor win against a new owner) and report
/// [`Acquired::OwnerDied`].
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU64,
}

const _: () = assert!(size_of::<RawLock>() == 8 && align_of::<RawLock>() == 8);

impl RawLock {
    /// Takes the lock if it is free. No system call.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, owner_value(), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock without waiting: if it is free, or if its owner is dead (proven as a
    /// waiter proves it, by reading `/proc`, so a busy lock costs a few system calls here).
    /// `None` when a live owner holds it.
    #[inline]
    pub(crate) fn try_lock_or_take_over(&self) -> Option<Acquired> {
        if self.try_lock() {
            return Some(Acquired::Clean);
        }
        self.take_over_if_dead()
    }

    #[cold]
    fn take_over_if_dead(&self) -> Option<Acquired> {
        let s = self.state.load(Ordering::Relaxed);
        if s == 0 {
            // Released since the first look: one more try, no waiting.
            return self.try_lock().then_some(Acquired::Clean);
        }
        if owner_alive(s, &mut None) {
            return None;
        }
        // One compare-and-swap of the whole state, as `lock_slow` takes over: if another
        // process took over first, or the owner was replaced, this fails. The waiters bit
        // stays, as others may sleep.
        self.state
            .compare_exchange(
                s,
                owner_value() | (s & WAITERS64),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
            .then_some(Acquired::OwnerDied)
    }

    /// Takes the lock, waiting until `deadline` (`None`: forever). `Err(())` on timeout.
    #[inline]
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> Result<Acquired, ()> {
        if self.try_lock() {
            return Ok(Acquired::Clean);
        }
        self.lock_slow(deadline)
    }

    #[cold]
    fn lock_slow(&self, deadline: Option<Instant>) -> Result<Acquired, ()> {
        let me = owner_value();
        // A short spin: critical sections are often shorter than a sleep.
        for _ in 0..100 {
            if self.state.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return Ok(Acquired::Clean);
            }
            std::hint::spin_loop();
        }
        let mut slice = OWNER_CHECK_FIRST;
        // The owner being watched (the state without the waiters bit).
        let mut owner = 0;
        // For an owner that could not record its start time: the one a check saw it run
        // with (a later check that sees another start time saw the pid reused).
        let mut learnt = None;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & !WAITERS64 != owner {
                owner = s & !WAITERS64;
                learnt = None;
                slice = OWNER_CHECK_FIRST;
            }
            if s == 0 {
                // Having waited, take it marked contended: others may still sleep.
                if self
                    .state
                    .compare_exchange(0, me | WAITERS64, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Acquired::Clean);
                }
                continue;
            }
            if s & WAITERS64 == 0
                && self
                    .state
                    .compare_exchange(s, s | WAITERS64, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let s = s | WAITERS64;
            let slept = match left(deadline) {
                None => None,
                Some(None) => Some(sys::futex_wait_low(&self.state, s as u32, Some(slice))),
                Some(Some(d)) => Some(sys::futex_wait_low(
                    &self.state,
                    s as u32,
                    Some(d.min(slice)),
                )),
            };
            if slept == Some(true) {
                // Woken, or the word changed: look again. An owner that recorded no start
                // time may have been replaced by a process that reused its pid: learn anew.
                learnt = None;
                continue;
            }
            // A slice (or the whole timeout) passed with the word unchanged: is the owner alive?
            slice = (slice * 2).min(OWNER_CHECK_MAX);
            if self.state.load(Ordering::Relaxed) == s && !owner_alive(s, &mut learnt) {
                // One compare-and-swap of the whole state: if another waiter took over first,
                // or the owner was replaced, this fails and we look again.
                if self
                    .state
                    .compare_exchange(s, me | WAITERS64, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Acquired::OwnerDied);
                }
                continue;
            }
            if slept.is_none() {
                return Err(());
            }
        }
    }

    /// Takes the lock if it is free, marked contended (so that its release wakes a sleeper):
    /// for a waiter that was woken by a release without taking the lock there (an async
    /// acquire, whose helper thread consumed that wake), so the chain of wakes goes on.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn try_lock_contended(&self) -> Option<Acquired> {
        if self
            .state
            .compare_exchange(
                0,
                owner_value() | WAITERS64,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return Some(Acquired::Clean);
        }
        self.take_over_if_dead()
    }

    /// Waits until the lock looks takeable, free or held by an owner proven dead, or until
    /// `deadline`; takes nothing. `true` if it looked takeable, `false` if the deadline came
    /// first.
    ///
    /// For an acquire that must take the lock elsewhere: an async acquire waits here on a
    /// helper thread, then takes the lock in its task with a non-blocking call, so that a
    /// dropped future can never have taken it. Sleeps as [`lock`](RawLock::lock) does
    /// (marking the word contended, so a release wakes it), and checks the owner's liveness
    /// between slices in the same way; a release that wakes this waiter is not passed on, so
    /// the taker should use [`try_lock_contended`](RawLock::try_lock_contended).
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn wait_until_takeable(&self, deadline: Option<Instant>) -> bool {
        let mut slice = OWNER_CHECK_FIRST;
        let mut owner = 0;
        let mut learnt = None;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s == 0 {
                return true;
            }
            if s & !WAITERS64 != owner {
                owner = s & !WAITERS64;
                learnt = None;
                slice = OWNER_CHECK_FIRST;
            }
            if s & WAITERS64 == 0
                && self
                    .state
                    .compare_exchange(s, s | WAITERS64, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let s = s | WAITERS64;
            let nap = match left(deadline) {
                None => return false,
                Some(None) => slice,
                Some(Some(d)) => d.min(slice),
            };
            if sys::futex_wait_low(&self.state, s as u32, Some(nap)) {
                learnt = None;
                continue;
            }
            slice = (slice * 2).min(OWNER_CHECK_MAX);
            if self.state.load(Ordering::Relaxed) == s && !owner_alive(s, &mut learnt) {
                return true;
            }
        }
    }

    /// Releases the lock; wakes one sleeper if there may be one.
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) & WAITERS64 != 0 {
            sys::futex_wake_low(&self.state, 1);
        }
    }

    /// Whether this process holds the lock (some thread of it).
    #[inline]
    pub(crate) fn held_by_me(&self) -> bool {
        // By pid alone: a process that could not read its start time when it took the lock
        // may know it now.
        (self.state.load(Ordering::Relaxed) as u32) & !WAITERS
            == owner::ident_pid(owner::process_ident())
    }

    /// Whether anyone holds the lock.
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }
}

/// Whether the owner recorded in lock state `s` may still run. Dead only on proof: its pid is
/// dead, or runs a process that started at another time than the owner recorded (or, for an
/// owner that recorded none, than a previous check saw, kept in `learnt`).
fn owner_alive(s: u64, learnt: &mut Option<u32>) -> bool {
    let pid = (s as u32) & !WAITERS;
    let recorded = (s >> 32) as u32;
    match owner::liveness(pid) {
        owner::Liveness::Dead => false,
        owner::Liveness::Alive => true,
        owner::Liveness::Running(start) if recorded != 0 => start == recorded,
        owner::Liveness::Running(start) => *learnt.get_or_insert(start) == start,
    }
}

#[cfg(test)]
impl RawLock {
    /// Overwrites the lock's state, as a process that died holding it would leave it.
    pub(crate) fn force_state(&self, state: u64) {
        self.state.store(state, Ordering::Relaxed);
    }
}

/// Lock states for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    /// A lock state whose owner's pid is above any `pid_max`: no such process.
    pub(crate) fn held_by_dead_owner() -> u64 {
        (5u64 << 32) | 0x3FFF_FFFF
    }
}

// SAFETY: atomics only; all zeros is the unlocked state and every bit pattern is a valid value
// (a garbage owner is a process whose liveness is checked like any other).
unsafe impl ShmSafe for RawLock {}

/// `RLock`: a robust lock plus the owning thread and the recursion depth.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RLockState {
    pub(crate) lock: RawLock,
    /// `owner::thread_tag()` of the owning thread, 0 when free.
    pub(crate) thread: AtomicU64,
    pub(crate) count: AtomicU32,
    _pad: u32,
}
const _: () = assert!(size_of::<RLockState>() == 24 && align_of::<RLockState>() == 8);
// SAFETY: atomics only; zero is the free state.
unsafe impl ShmSafe for RLockState {}

/// `Semaphore` and `BoundedSemaphore`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SemState {
    /// The counter; the futex word.
    pub(crate) value: AtomicU32,
    /// How many may be sleeping on `value`.
    pub(crate) sleepers: AtomicU32,
    /// The bound for `BoundedSemaphore`, 0 for none.
    pub(crate) max: AtomicU32,
    _pad: u32,
}
const _: () = assert!(size_of::<SemState>() == 16 && align_of::<SemState>() == 4);
// SAFETY: atomics only; any value is a valid count.
unsafe impl ShmSafe for SemState {}

/// `Event`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct EventState {
    /// 0 or 1; the futex word.
    pub(crate) flag: AtomicU32,
    pub(crate) sleepers: AtomicU32,
}
const _: () = assert!(size_of::<EventState>() == 8 && align_of::<EventState>() == 4);
// SAFETY: atomics only; any nonzero flag reads as set.
unsafe impl ShmSafe for EventState {}

/// `Condition` (its lock lives in its own segment so that it can be shared with a `Value`).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct CondState {
    /// Bumped by every notify; the futex word.
    pub(crate) seq: AtomicU32,
    /// Waiters between their `wait` and re-taking the lock (changed under the lock).
    pub(crate) sleepers: AtomicU32,
    /// Notifications not yet taken by a waiter, at most `sleepers`: a waiter returns as
    /// notified only by taking one, so `notify(n)` wakes `n` waiters, not all.
    pub(crate) tokens: AtomicU32,
    _pad: u32,
}
const _: () = assert!(size_of::<CondState>() == 16 && align_of::<CondState>() == 4);
// SAFETY: atomics only.
unsafe impl ShmSafe for CondState {}

/// How many processes a `Barrier` tracks for liveness.
pub(crate) const BARRIER_MEMBERS: usize = 64;

/// `Barrier`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct BarrierState {
    /// Guards `count` and `members`.
    pub(crate) lock: RawLock,
    /// Generation number << 1 | broken bit; the futex word.
    pub(crate) generation: AtomicU32,
    /// Arrivals in the current generation.
    pub(crate) count: AtomicU32,
    pub(crate) parties: AtomicU32,
    /// The last generation that ended by `reset` or `abort` rather than by filling up.
    pub(crate) aborted: AtomicU32,
    /// Identities (`owner::process_ident`) of processes that have waited on the barrier.
    pub(crate) members: [AtomicU64; BARRIER_MEMBERS],
}
const _: () = assert!(
    size_of::<BarrierState>() == 24 + 8 * BARRIER_MEMBERS && align_of::<BarrierState>() == 8
);
// SAFETY: atomics only; zero is an unbroken generation 0 with no arrivals and no members.
unsafe impl ShmSafe for BarrierState {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::segment::Shm;

    /// A lock state naming `pid` as owner, started at `start`.
    fn held_by(pid: u32, start: u32) -> u64 {
        (u64::from(start) << 32) | u64::from(pid)
    }

    fn start_time_of(pid: u32) -> u32 {
        match owner::liveness(pid) {
            owner::Liveness::Running(start) => start,
            other => panic!("process {pid} is not visibly running: {other:?}"),
        }
    }

    /// Takes `lock` over within `within`, or fails the test.
    fn taken_over(lock: &RawLock, within: Duration) {
        let t = Instant::now();
        assert_eq!(
            lock.lock(deadline(Duration::from_secs(5))),
            Ok(Acquired::OwnerDied)
        );
        assert!(t.elapsed() < within, "{:?}", t.elapsed());
        assert!(lock.held_by_me());
        assert_eq!(
            lock.state.load(Ordering::Relaxed) & !WAITERS64,
            owner_value()
        );
        lock.unlock();
        assert!(!lock.is_locked());
    }

    /// Waits 60 ms for `lock`, which must time out with the state left as it was.
    fn never_robbed(lock: &RawLock) {
        let before = lock.state.load(Ordering::Relaxed) & !WAITERS64;
        let t = Instant::now();
        assert_eq!(lock.lock(deadline(Duration::from_millis(60))), Err(()));
        assert!(t.elapsed() >= Duration::from_millis(60));
        assert_eq!(lock.state.load(Ordering::Relaxed) & !WAITERS64, before);
    }

    #[test]
    fn a_dead_owner_is_taken_over_and_a_live_one_is_not() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        // A pid above any pid_max: no such process.
        lock.state.store(held_by(0x3FFF_FFFF, 5), Ordering::Relaxed);
        assert!(!lock.try_lock(), "try never steals");
        taken_over(&lock, Duration::from_secs(1));

        // Process 1 is alive: waiting for it times out, it is never robbed, whether its
        // start time was recorded or not (the portable layer cannot read pid 1's).
        if !cfg!(multiproc_portable) {
            lock.state
                .store(held_by(1, start_time_of(1)), Ordering::Relaxed);
            never_robbed(&lock);
        }
        lock.state.store(held_by(1, 0), Ordering::Relaxed);
        never_robbed(&lock);
    }

    /// The non-blocking acquire takes a dead owner's lock over at once (keeping the waiters
    /// bit, as others may sleep) and leaves a live owner's alone.
    #[test]
    fn a_try_takes_a_dead_owners_lock_over_and_leaves_a_live_ones() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        assert_eq!(lock.try_lock_or_take_over(), Some(Acquired::Clean));
        assert_eq!(
            lock.try_lock_or_take_over(),
            None,
            "held by this live process"
        );
        lock.unlock();
        lock.state
            .store(held_by(0x3FFF_FFFF, 5) | WAITERS64, Ordering::Relaxed);
        assert_eq!(lock.try_lock_or_take_over(), Some(Acquired::OwnerDied));
        assert!(lock.held_by_me());
        assert_ne!(lock.state.load(Ordering::Relaxed) & WAITERS64, 0);
        if !cfg!(multiproc_portable) {
            lock.state
                .store(held_by(1, start_time_of(1)), Ordering::Relaxed);
            assert_eq!(lock.try_lock_or_take_over(), None, "pid 1 runs");
        }
        lock.state.store(held_by(1, 0), Ordering::Relaxed);
        assert_eq!(lock.try_lock_or_take_over(), None, "no start time: alive");
    }

    /// Pid reuse, made deterministic: the lock names a pid that a live process has now, with
    /// the start time of the process that held it before (as after `pid_max` process
    /// creations). The waiter must see the owner as dead, however long ago the pid was reused;
    /// and a live owner with its own start time is never robbed. (The portable layer knows
    /// the "start time", its life-lock token, only of processes that registered: not pid 1.)
    #[test]
    fn a_reused_pid_does_not_keep_a_dead_owners_lock() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        let pids: &[u32] = if cfg!(multiproc_portable) {
            &[std::process::id()]
        } else {
            &[std::process::id(), 1]
        };
        for &pid in pids {
            let start = start_time_of(pid);
            lock.state.store(
                held_by(pid, start.wrapping_add(1).max(1)),
                Ordering::Relaxed,
            );
            taken_over(&lock, Duration::from_secs(1));
            lock.state
                .store(held_by(pid, start) | WAITERS64, Ordering::Relaxed);
            never_robbed(&lock);
            lock.state.store(0, Ordering::Relaxed);
        }
    }

    /// An owner that could not record its start time is checked as before: the start time
    /// seen at the first check is kept, so a pid reused later (during the wait) counts as dead.
    #[test]
    fn an_owner_without_a_start_time_is_watched_by_the_first_one_seen() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        let pid = std::process::id();
        let real = start_time_of(pid);
        let mut learnt = None;
        let s = held_by(pid, 0);
        assert!(owner_alive(s, &mut learnt));
        assert_eq!(learnt, Some(real));
        assert!(owner_alive(s, &mut learnt), "same process, same start");
        let mut earlier = Some(real.wrapping_sub(1));
        assert!(!owner_alive(s, &mut earlier), "another start: reused pid");
        // And a live owner without a start time keeps its lock.
        lock.state.store(s, Ordering::Relaxed);
        never_robbed(&lock);
    }

    #[test]
    fn the_owner_records_its_pid_and_start_time_in_one_word() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        assert!(lock.try_lock());
        let s = lock.state.load(Ordering::Relaxed);
        let me = owner::process_ident();
        assert_eq!(s as u32, owner::ident_pid(me));
        assert_eq!((s >> 32) as u32, owner::ident_start(me));
        assert_ne!((s >> 32) as u32, 0, "/proc is readable here");
        assert!(lock.held_by_me());
        lock.unlock();
        assert_eq!(lock.state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_missed_wake_costs_a_slice_not_a_hang() {
        let word = AtomicU32::new(0);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let t = Instant::now();
                (
                    wait_while(&word, 0, deadline(Duration::from_secs(5))),
                    t.elapsed(),
                )
            });
            std::thread::sleep(Duration::from_millis(10));
            word.store(1, Ordering::Release); // as if the waker died before FUTEX_WAKE
            let (changed, waited) = h.join().unwrap();
            assert!(changed);
            assert!(waited < Duration::from_secs(1), "{waited:?}");
        });
        let t = Instant::now();
        assert!(!wait_while(&word, 1, deadline(Duration::from_millis(30))));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    /// Many threads hammering one word (the waiters bit, sleeps and wakes all exercised):
    /// no lost updates and nobody stuck.
    #[test]
    fn threads_contend_without_lost_updates() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        let count = std::sync::atomic::AtomicU64::new(0);
        const THREADS: u64 = 8;
        const ITERS: u64 = 20_000;
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for i in 0..ITERS {
                        assert_eq!(
                            lock.lock(deadline(Duration::from_secs(10))),
                            Ok(Acquired::Clean)
                        );
                        let v = count.load(Ordering::Relaxed);
                        if i % 128 == 0 {
                            std::thread::yield_now();
                        }
                        count.store(v + 1, Ordering::Relaxed);
                        lock.unlock();
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), THREADS * ITERS);
        assert!(!lock.is_locked());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn unlock_wakes_a_sleeper_in_another_thread() {
        let lock: Shm<RawLock> = Shm::zeroed().unwrap();
        assert!(lock.try_lock());
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let t = Instant::now();
                let r = lock.lock(deadline(Duration::from_secs(5)));
                (r, t.elapsed())
            });
            std::thread::sleep(Duration::from_millis(30));
            lock.unlock();
            let (r, waited) = h.join().unwrap();
            assert_eq!(r, Ok(Acquired::Clean));
            assert!(waited < Duration::from_secs(1));
        });
        lock.unlock();
    }
}
