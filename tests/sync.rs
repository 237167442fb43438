//! The synchronization primitives under contention from several processes, with their
//! invariants checked, and every blocking call's timeout. Mirrors the scenarios of CPython's
//! `_test_multiprocessing.py` (`_TestLock`, `_TestSemaphore`, `_TestCondition`, `_TestEvent`,
//! `_TestBarrier`).
//!
//! Children get the primitives as start arguments of non-capturing closures, so every test
//! runs under any start method (under spawn and forkserver the primitives travel as
//! descriptors).

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Reaper, WAIT};
use multiproc::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, Value,
    shared::SharedMemory,
    spawn_with_args,
    sync::{AcquireError, TryAcquireError},
};

/// Scratch shared atomics for invariant checks; the name is unlinked at once, the segment
/// travels to children as a start argument.
fn scratch() -> SharedMemory {
    let shm = SharedMemory::create(4096).unwrap();
    shm.unlink().unwrap();
    shm
}

fn join_all<T: serde::de::DeserializeOwned>(children: Vec<multiproc::JoinHandle<T>>) -> Vec<T> {
    children
        .into_iter()
        .map(|mut c| c.join_timeout(WAIT).expect("child failed or hung"))
        .collect()
}

#[test]
fn lock_excludes_across_processes() {
    let _r = Reaper::new();
    let lock = Lock::new().unwrap();
    let counter = Value::with_lock(0u64, lock.clone()).unwrap();
    let shm = scratch();
    const PROCS: u64 = 4;
    const ITERS: u64 = 2000;
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            spawn_with_args(
                |(lock, counter, shm): (Lock, Value<u64>, SharedMemory)| {
                    let inside = &shm.atomics::<AtomicU32>()[0];
                    let overlaps = &shm.atomics::<AtomicU32>()[1];
                    for i in 0..ITERS {
                        let mut g = lock.acquire().unwrap();
                        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        // A read-modify-write with a gap: loses updates unless excluded.
                        let v = counter.get_with(&g).unwrap();
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                        counter.set_with(&mut g, v + 1).unwrap();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                },
                (lock.clone(), counter.clone(), shm.clone()),
            )
            .unwrap()
        })
        .collect();
    join_all(children);
    assert_eq!(
        shm.atomics::<AtomicU32>()[1].load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    assert_eq!(counter.get(), PROCS * ITERS, "lost increments");
    assert!(!lock.is_locked());
}

#[test]
fn lock_timeout_and_try() {
    let _r = Reaper::new();
    let lock = Lock::new().unwrap();
    let held = Event::new().unwrap();
    let release = Event::new().unwrap();
    let mut child = spawn_with_args(
        |(lock, held, release): (Lock, Event, Event)| {
            let _g = lock.acquire().unwrap();
            held.set();
            assert!(release.wait_timeout(WAIT));
        },
        (lock.clone(), held.clone(), release.clone()),
    )
    .unwrap();
    assert!(held.wait_timeout(WAIT));
    assert!(matches!(
        lock.try_acquire(),
        Err(TryAcquireError::WouldBlock)
    ));
    let t = Instant::now();
    assert!(
        lock.acquire_timeout(Duration::from_millis(100))
            .unwrap_err()
            .is_timeout()
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    release.set();
    let g = lock
        .acquire_timeout(WAIT)
        .expect("free once the child releases");
    drop(g);
    child.join_timeout(WAIT).unwrap();
}

#[test]
fn lock_is_not_recursive_but_rlock_is() {
    let lock = Lock::new().unwrap();
    let _g = lock.acquire().unwrap();
    assert!(lock.try_acquire().is_err());
    assert!(lock.acquire_timeout(Duration::from_millis(20)).is_err());

    let r = RLock::new().unwrap();
    let a = r.acquire().unwrap();
    let b = r.try_acquire().unwrap();
    let c = r.acquire_timeout(Duration::from_millis(1)).unwrap();
    assert_eq!(r.depth(), 3);
    drop(c);
    drop(b);
    assert_eq!(r.depth(), 1);
    drop(a);
    assert_eq!(r.depth(), 0);
}

#[test]
fn rlock_excludes_other_processes_and_threads() {
    let _r = Reaper::new();
    let r = RLock::new().unwrap();
    let outer = r.acquire().unwrap();
    let inner = r.acquire().unwrap();
    let mut child = spawn_with_args(
        |r: RLock| r.acquire_timeout(Duration::from_millis(50)).is_err(),
        r.clone(),
    )
    .unwrap();
    assert!(
        child.join_timeout(WAIT).unwrap(),
        "another process took a held RLock"
    );
    std::thread::scope(|s| {
        s.spawn(|| assert!(r.acquire_timeout(Duration::from_millis(50)).is_err()));
    });
    drop(outer);
    drop(inner);
    let mut child = spawn_with_args(|r: RLock| r.acquire_timeout(WAIT).is_ok(), r.clone()).unwrap();
    assert!(child.join_timeout(WAIT).unwrap());
}

#[test]
fn rlock_excludes_under_contention() {
    let _r = Reaper::new();
    let r = RLock::new().unwrap();
    let shm = scratch();
    const PROCS: u64 = 3;
    const ITERS: u64 = 2000;
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            spawn_with_args(
                |(r, shm): (RLock, SharedMemory)| {
                    let n = &shm.atomics::<AtomicU64>()[0];
                    for i in 0..ITERS {
                        let _outer = r.acquire().unwrap();
                        let _inner = r.acquire().unwrap();
                        // Load and store, not an atomic add: loses updates unless excluded.
                        let v = n.load(Ordering::Relaxed);
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                        n.store(v + 1, Ordering::Relaxed);
                    }
                },
                (r.clone(), shm.clone()),
            )
            .unwrap()
        })
        .collect();
    join_all(children);
    assert_eq!(
        shm.atomics::<AtomicU64>()[0].load(Ordering::SeqCst),
        PROCS * ITERS
    );
}

#[test]
fn semaphore_bounds_concurrency() {
    let _r = Reaper::new();
    let sem = Semaphore::new(2).unwrap();
    let shm = scratch();
    let children: Vec<_> = (0..5)
        .map(|_| {
            spawn_with_args(
                |(sem, shm): (Semaphore, SharedMemory)| {
                    let inside = &shm.atomics::<AtomicU32>()[0];
                    let most = &shm.atomics::<AtomicU32>()[1];
                    for _ in 0..300 {
                        assert!(sem.acquire_timeout(WAIT));
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        sem.release();
                    }
                },
                (sem.clone(), shm.clone()),
            )
            .unwrap()
        })
        .collect();
    join_all(children);
    let most = shm.atomics::<AtomicU32>()[1].load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} holders at once");
    assert_eq!(sem.value(), 2);
}

#[test]
fn semaphore_timeouts_and_wakeup() {
    let _r = Reaper::new();
    let sem = Semaphore::new(0).unwrap();
    assert!(!sem.try_acquire());
    let t = Instant::now();
    assert!(!sem.acquire_timeout(Duration::from_millis(50)));
    assert!(t.elapsed() >= Duration::from_millis(50));
    let mut child =
        spawn_with_args(|sem: Semaphore| sem.acquire_timeout(WAIT), sem.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    sem.release();
    assert!(
        child.join_timeout(WAIT).unwrap(),
        "the waiting child was not woken"
    );
    assert_eq!(sem.value(), 0);
}

#[test]
fn bounded_semaphore_refuses_over_release() {
    let sem = BoundedSemaphore::new(2).unwrap();
    assert!(sem.release().is_err());
    sem.acquire();
    assert!(sem.try_acquire());
    assert!(!sem.acquire_timeout(Duration::from_millis(10)));
    sem.release().unwrap();
    sem.release().unwrap();
    assert_eq!(
        sem.release().unwrap_err().to_string(),
        "semaphore released too many times"
    );
    assert_eq!(sem.value(), 2);
}

#[test]
fn event_wakes_every_waiter() {
    let _r = Reaper::new();
    let ev = Event::new().unwrap();
    assert!(!ev.is_set());
    let t = Instant::now();
    assert!(!ev.wait_timeout(Duration::from_millis(50)));
    assert!(t.elapsed() >= Duration::from_millis(50));
    let children: Vec<_> = (0..4)
        .map(|_| spawn_with_args(|ev: Event| ev.wait_timeout(WAIT), ev.clone()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    ev.set();
    assert_eq!(join_all(children), [true; 4]);
    assert!(ev.is_set());
    ev.wait(); // set: returns at once
    ev.clear();
    assert!(!ev.wait_timeout(Duration::from_millis(10)));
}

#[test]
fn condition_producer_consumer() {
    let _r = Reaper::new();
    let items = Value::new(0u32).unwrap();
    let cond = Condition::with_lock(items.get_lock().clone()).unwrap();
    const N: u32 = 200;
    let mut consumer = spawn_with_args(
        |(items, cond): (Value<u32>, Condition)| {
            let mut taken = 0;
            while taken < N {
                let mut g = cond.acquire().unwrap();
                let ok = g
                    .wait_for(|h| items.get_with(h).unwrap() > 0, Some(WAIT))
                    .unwrap();
                assert!(ok, "consumer starved");
                let n = items.get_with(g.lock_guard()).unwrap();
                items.set_with(g.lock_guard_mut(), n - 1).unwrap();
                taken += 1;
            }
            taken
        },
        (items.clone(), cond.clone()),
    )
    .unwrap();
    for _ in 0..N {
        let mut g = cond.acquire().unwrap();
        let n = items.get_with(g.lock_guard()).unwrap();
        items.set_with(g.lock_guard_mut(), n + 1).unwrap();
        g.notify();
    }
    assert_eq!(consumer.join_timeout(WAIT).unwrap(), N);
    assert_eq!(items.get(), 0);
}

/// A waiter that acquires, says it waits, and reports whether it was notified.
fn waiter(cond: &Condition, waiting: &Semaphore, woke: &Semaphore) -> multiproc::JoinHandle<bool> {
    spawn_with_args(
        |(cond, waiting, woke): (Condition, Semaphore, Semaphore)| {
            let mut g = cond.acquire().unwrap();
            waiting.release();
            let notified = g.wait_timeout(WAIT).unwrap();
            woke.release();
            notified
        },
        (cond.clone(), waiting.clone(), woke.clone()),
    )
    .unwrap()
}

#[test]
fn condition_timeout_and_notify_all() {
    let _r = Reaper::new();
    let cond = Condition::new().unwrap();
    {
        let mut g = cond.acquire().unwrap();
        let t = Instant::now();
        assert!(!g.wait_timeout(Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(50));
        // The lock is held again after the wait.
        assert!(cond.lock().is_locked());
    }
    assert!(!cond.lock().is_locked());
    let (waiting, woke) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
    let children: Vec<_> = (0..3).map(|_| waiter(&cond, &waiting, &woke)).collect();
    for _ in 0..3 {
        assert!(waiting.acquire_timeout(WAIT));
    }
    // Every child released `waiting` with the lock held and then waited, releasing it: once we
    // hold the lock, all three are asleep.
    cond.acquire().unwrap().notify_all();
    assert_eq!(
        join_all(children),
        [true; 3],
        "a waiter timed out instead of being notified"
    );
}

/// CPython's `_TestCondition.test_notify`: `notify()` wakes one waiter, `notify_n(2)` two,
/// and the rest keep sleeping (longer than any internal sleep slice).
#[test]
fn condition_notify_wakes_exactly_n() {
    let _r = Reaper::new();
    let cond = Condition::new().unwrap();
    let (waiting, woke) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
    let children: Vec<_> = (0..4).map(|_| waiter(&cond, &waiting, &woke)).collect();
    for _ in 0..4 {
        assert!(waiting.acquire_timeout(WAIT));
    }
    cond.acquire().unwrap().notify();
    assert!(woke.acquire_timeout(WAIT));
    assert!(
        !woke.acquire_timeout(Duration::from_millis(200)),
        "notify() woke more than one"
    );
    cond.acquire().unwrap().notify_n(2);
    assert!(woke.acquire_timeout(WAIT) && woke.acquire_timeout(WAIT));
    assert!(
        !woke.acquire_timeout(Duration::from_millis(200)),
        "notify_n(2) woke more than two"
    );
    cond.acquire().unwrap().notify_all();
    assert!(woke.acquire_timeout(WAIT));
    assert_eq!(
        join_all(children),
        [true; 4],
        "every waiter was notified, none timed out"
    );
}

#[test]
fn barrier_generations() {
    let _r = Reaper::new();
    const PARTIES: usize = 3;
    const ROUNDS: u64 = 100;
    let shm = scratch();
    let barrier = Barrier::new(PARTIES).unwrap().with_timeout(WAIT);
    let children: Vec<_> = (0..PARTIES)
        .map(|_| {
            spawn_with_args(
                |(barrier, shm): (Barrier, SharedMemory)| {
                    // A capturing action does not travel: each process sets its own.
                    let counts = shm.clone();
                    let barrier = barrier.with_action(move || {
                        counts.atomics::<AtomicU64>()[1].fetch_add(1, Ordering::SeqCst);
                    });
                    let arrivals = &shm.atomics::<AtomicU64>()[0];
                    let mut indexes = 0u64;
                    for round in 0..ROUNDS {
                        arrivals.fetch_add(1, Ordering::SeqCst);
                        let i = barrier.wait().unwrap();
                        assert!(i < PARTIES);
                        indexes += i as u64;
                        // Everyone of this round has arrived, nobody two rounds ahead.
                        let seen = arrivals.load(Ordering::SeqCst);
                        assert!(
                            seen >= (round + 1) * PARTIES as u64,
                            "released early: {seen}"
                        );
                        assert!(
                            seen <= (round + 2) * PARTIES as u64,
                            "generations mixed: {seen}"
                        );
                    }
                    indexes
                },
                (barrier.clone(), shm.clone()),
            )
            .unwrap()
        })
        .collect();
    let sum: u64 = join_all(children).into_iter().sum();
    // Each round hands out the indexes 0, 1, 2 once.
    assert_eq!(sum, ROUNDS * 3);
    assert_eq!(
        shm.atomics::<AtomicU64>()[1].load(Ordering::SeqCst),
        ROUNDS,
        "one action per round"
    );
    assert!(!barrier.is_broken());
}

fn barrier_waiter(b: &Barrier) -> multiproc::JoinHandle<bool> {
    spawn_with_args(|b: Barrier| b.wait_timeout(WAIT).is_ok(), b.clone()).unwrap()
}

#[test]
fn barrier_timeout_abort_reset() {
    let _r = Reaper::new();
    let b = Barrier::new(2).unwrap();
    assert_eq!(b.parties(), 2);
    let t = Instant::now();
    assert!(b.wait_timeout(Duration::from_millis(50)).is_err());
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(b.is_broken(), "a timeout breaks the barrier");
    assert!(b.wait_timeout(WAIT).is_err(), "broken until reset");
    b.reset();
    assert!(!b.is_broken());

    // A waiter in another process is released by abort with an error.
    let mut child = barrier_waiter(&b);
    assert!(common::eventually(WAIT, || b.n_waiting() == 1));
    b.abort();
    assert!(!child.join_timeout(WAIT).unwrap());
    b.reset();

    // ... and by reset.
    let mut child = barrier_waiter(&b);
    assert!(common::eventually(WAIT, || b.n_waiting() == 1));
    b.reset();
    assert!(!child.join_timeout(WAIT).unwrap());
    assert!(!b.is_broken());

    // After all that it still works.
    let mut child = barrier_waiter(&b);
    b.wait_timeout(WAIT).unwrap();
    assert!(child.join_timeout(WAIT).unwrap());
}

#[test]
fn barrier_rejects_zero_parties() {
    let e = Barrier::new(0).unwrap_err();
    assert_eq!(e.kind(), multiproc::ErrorKind::InvalidInput);
}

/// CPython's `_TestBarrier.test_action` with a failing action: the party that ran it sees the
/// panic, the others a broken barrier.
#[test]
fn barrier_action_panic_breaks_it() {
    let b = Barrier::new(2)
        .unwrap()
        .with_action(|| panic!("action failed"));
    let mut outcomes: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        b.wait_timeout(WAIT)
                    })) {
                        Err(_) => "panicked".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(i)) => format!("passed {i}"),
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    outcomes.sort();
    assert_eq!(outcomes, ["barrier is broken", "panicked"]);
    assert!(b.is_broken());
}

#[test]
fn every_guard_is_released_on_drop() {
    let lock = Lock::new().unwrap();
    drop(lock.acquire().unwrap());
    assert!(!lock.is_locked());
    let v = Value::new(5i32).unwrap();
    *v.lock().unwrap() += 1;
    assert!(!v.get_lock().is_locked());
    assert_eq!(v.get(), 6);
}

/// Primitives are start arguments like any other, also for `Process`.
#[test]
fn primitives_as_start_arguments() {
    let _r = Reaper::new();
    let lock = Lock::new().unwrap();
    let v = Value::new(0u64).unwrap();
    let done = Event::new().unwrap();
    let mut p = multiproc::Process::with_args(
        |(lock, v, done): (Lock, Value<u64>, Event)| {
            let g = lock.acquire().unwrap();
            drop(g);
            v.set(42);
            done.set();
        },
        (lock.clone(), v.clone(), done.clone()),
    );
    p.start().unwrap();
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    assert!(done.is_set());
    assert_eq!(v.get(), 42);
}

/// Every primitive owns one descriptor per segment and gives it back when the last clone goes.
#[test]
fn dropping_primitives_leaks_no_descriptors() {
    // The first primitive takes this process's identity; on the portable layer that opens
    // the life-lock file, whose descriptor stays open for the process's life
    // (`src/sys/posix/proc.rs`): not a leak, so it is opened before counting.
    drop(Lock::new().unwrap());
    let before = common::open_fds();
    for _ in 0..50 {
        let lock = Lock::new().unwrap();
        let v = Value::with_lock(1u8, lock.clone()).unwrap();
        let all = (
            v.clone(),
            RLock::new().unwrap(),
            Semaphore::new(1).unwrap(),
            BoundedSemaphore::new(1).unwrap(),
            Event::new().unwrap(),
            Condition::with_lock(lock).unwrap(),
            Barrier::new(2).unwrap(),
            Array::<u32>::new(10).unwrap(),
        );
        drop(all);
        drop(v);
    }
    assert_eq!(common::open_fds(), before);
}

// ---------------------------------------------------------------------------------------------
// Regressions of issue 10, under every start method.

fn barrier_party(b: Barrier) -> bool {
    b.wait_timeout(WAIT).is_ok()
}

/// Waits on the barrier once, then stays (holding its handle) until killed.
fn barrier_party_that_stays(b: Barrier) {
    b.wait_timeout(WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Fills the descriptor table (under a lowered limit), checks that `/proc/<owner>/stat` can no
/// longer be read, then waits 300 ms for `lock`: what happened, as text.
fn acquire_out_of_descriptors((lock, owner): (Lock, u32)) -> String {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let saved = getrlimit(Resource::Nofile);
    let mut low = saved;
    low.current = Some(256.min(saved.maximum.unwrap_or(256)));
    setrlimit(Resource::Nofile, low).unwrap();
    let mut filler = Vec::new();
    let setup = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) if filler.len() < 100_000 => filler.push(f),
            Ok(_) => break Err("no EMFILE".to_owned()),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    let outcome = match setup {
        Err(e) => format!("setup failed: {e}"),
        Ok(()) => match std::fs::read(format!("/proc/{owner}/stat")) {
            Ok(_) => "setup failed: /proc still readable".to_owned(),
            Err(e) if e.raw_os_error() != Some(libc::EMFILE) => format!("setup failed: {e}"),
            Err(_) => match lock.acquire_timeout(Duration::from_millis(300)) {
                Err(AcquireError::Timeout) => "timed out".to_owned(),
                Err(AcquireError::OwnerDied(_)) => "took a live owner's lock as dead".to_owned(),
                Ok(_) => "acquired a held lock".to_owned(),
            },
        },
    };
    drop(filler);
    setrlimit(Resource::Nofile, saved).unwrap();
    outcome
}

const ACTION_PARTIES: usize = 3;
const ACTION_ROUNDS: usize = 20;

/// The shared log of `log_action`: `[actions run, the pid that ran each round's action..,
/// the pid that arrived last in each round..]`, reached through a static in each process.
static ACTION_LOG: std::sync::OnceLock<Array<u32>> = std::sync::OnceLock::new();

/// A barrier action with no captures: it travels with the barrier to any start method.
fn log_action() {
    let log = ACTION_LOG
        .get()
        .expect("each party sets the log before waiting");
    let mut g = log.lock().unwrap();
    g[0] += 1;
    let round = g[0] as usize;
    g[round] = std::process::id();
}

/// A party of `barrier_action_travels_and_runs_once_per_round_in_the_last_party`: it does not
/// set the action; it records its pid for the rounds in which it arrived last.
fn action_party((barrier, log): (Barrier, Array<u32>)) {
    let log = ACTION_LOG.get_or_init(|| log);
    for round in 0..ACTION_ROUNDS {
        if barrier.wait().unwrap() == ACTION_PARTIES - 1 {
            log.set(1 + ACTION_ROUNDS + round, std::process::id())
                .unwrap();
        }
    }
}

/// Holds `r` (twice, recursively) until `release` is set, after setting `held`.
fn hold_rlock((r, held, release): (RLock, Event, Event)) -> bool {
    let _outer = r.acquire().unwrap();
    let _inner = r.acquire().unwrap();
    held.set();
    release.wait_timeout(WAIT)
}

/// Takes the lock (and the recursive one), says so, and waits to be killed.
fn hold_both_until_killed((lock, rlock, holding): (Lock, RLock, Event)) {
    let _g = lock.acquire().unwrap();
    let _r = rlock.acquire().unwrap();
    holding.set();
    std::thread::sleep(Duration::from_secs(60));
}

start_method_matrix! {
    /// CPython's `_TestBarrier.test_action`, in children of every start method: the action
    /// set in the parent (a fn item) travels with the barrier, runs once per round, and in the
    /// party that arrived last.
    #[test]
    fn barrier_action_travels_and_runs_once_per_round_in_the_last_party() {
        let _r = Reaper::new();
        let log = Array::<u32>::new(1 + 2 * ACTION_ROUNDS).unwrap();
        let barrier = Barrier::new(ACTION_PARTIES)
            .unwrap()
            .with_action(log_action)
            .with_timeout(WAIT);
        let parties: Vec<_> = (0..ACTION_PARTIES)
            .map(|_| spawn_with_args(action_party, (barrier.clone(), log.clone())).unwrap())
            .collect();
        let pids: Vec<u32> = parties.iter().map(|p| p.pid()).collect();
        join_all(parties);
        let log = log.to_vec();
        assert_eq!(log[0] as usize, ACTION_ROUNDS, "one action per round");
        let (ran, last) = log[1..].split_at(ACTION_ROUNDS);
        assert_eq!(ran, last, "each round's action ran in the party that arrived last");
        assert!(ran.iter().all(|pid| pids.contains(pid)), "{ran:?} not among {pids:?}");
        assert!(!barrier.is_broken());
    }

    /// Python 3.14's `RLock.locked()`: held by anyone, here another process, whatever this
    /// thread's own depth; a holder that died leaves it locked until the next acquirer.
    #[test]
    fn rlock_is_locked_by_anyone() {
        let _r = Reaper::new();
        let r = RLock::new().unwrap();
        let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
        assert!(!r.is_locked());
        let mut child =
            spawn_with_args(hold_rlock, (r.clone(), held.clone(), release.clone())).unwrap();
        assert!(held.wait_timeout(WAIT));
        assert!(r.is_locked(), "held by the child");
        assert_eq!(r.depth(), 0, "but not by this thread");
        release.set();
        assert!(child.join_timeout(WAIT).unwrap());
        assert!(!r.is_locked(), "released by the child's return");

        held.clear();
        release.clear();
        let mut child =
            spawn_with_args(hold_rlock, (r.clone(), held.clone(), release.clone())).unwrap();
        assert!(held.wait_timeout(WAIT));
        child.kill().unwrap();
        assert!(child.join_timeout(WAIT).is_err());
        assert!(r.is_locked(), "a dead holder's lock reads as locked");
        assert!(matches!(
            r.acquire_timeout(WAIT),
            Err(AcquireError::OwnerDied(_))
        ));
        assert!(!r.is_locked());
    }

    /// Issue 10 item 6: parties of an earlier round that exited normally counted as dead, and
    /// broke the barrier for the next round's new processes.
    #[test]
    fn barrier_is_reused_by_new_processes_across_rounds() {
        let _r = Reaper::new();
        let barrier = Barrier::new(2).unwrap();
        for round in 0..3 {
            let mut first = spawn_with_args(barrier_party, barrier.clone()).unwrap();
            assert!(common::eventually(WAIT, || barrier.n_waiting() == 1));
            // Long enough for the waiting party to look for dead members several times.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !barrier.is_broken(),
                "round {round}: broken while the second party was on its way"
            );
            let mut second = spawn_with_args(barrier_party, barrier.clone()).unwrap();
            assert!(first.join_timeout(WAIT).unwrap(), "round {round}");
            assert!(second.join_timeout(WAIT).unwrap(), "round {round}");
        }
        assert!(!barrier.is_broken());
    }

    /// The converse: a party killed between two rounds (it still holds the handle it waited
    /// with) is seen dead by the one waiting for it, which fails promptly; the round's other
    /// party, which returned (dropping its handle), does not count.
    #[test]
    fn a_party_killed_between_rounds_breaks_the_barrier() {
        let _r = Reaper::new();
        let barrier = Barrier::new(2).unwrap();
        let mut stays = spawn_with_args(barrier_party_that_stays, barrier.clone()).unwrap();
        let mut once = spawn_with_args(barrier_party, barrier.clone()).unwrap();
        assert!(once.join_timeout(WAIT).unwrap(), "round 1");
        let mut waiter = spawn_with_args(barrier_party, barrier.clone()).unwrap();
        assert!(common::eventually(WAIT, || barrier.n_waiting() == 1));
        assert!(!barrier.is_broken(), "the party that stays is alive");
        stays.kill().unwrap();
        assert!(matches!(
            stays.join_timeout(WAIT),
            Err(multiproc::JoinError::Signal(9))
        ));
        let t = Instant::now();
        assert!(!waiter.join_timeout(WAIT).unwrap(), "the waiter was not told");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(barrier.is_broken());
    }

    /// Issue 11: a busy `try_acquire` says `WouldBlock` while the holder lives, and takes the
    /// lock of a holder that was killed over at once, with the guard in `OwnerDied` (it was
    /// reported as a timeout, and a dead holder's lock stayed busy for `try_acquire` for ever).
    #[test]
    fn try_acquire_tells_a_live_holder_from_a_dead_one() {
        let _r = Reaper::new();
        let lock = Lock::new().unwrap();
        let rlock = RLock::new().unwrap();
        let holding = Event::new().unwrap();
        let mut holder = multiproc::Process::with_args(
            hold_both_until_killed,
            (lock.clone(), rlock.clone(), holding.clone()),
        );
        holder.start().unwrap();
        assert!(holding.wait_timeout(WAIT));
        assert!(matches!(lock.try_acquire(), Err(TryAcquireError::WouldBlock)));
        assert!(rlock.try_acquire().unwrap_err().is_would_block());
        holder.kill().unwrap();
        holder.join_timeout(WAIT).unwrap();
        match lock.try_acquire() {
            Err(TryAcquireError::OwnerDied(died)) => drop(died.into_inner()),
            other => panic!("expected OwnerDied, got {other:?}"),
        }
        match rlock.try_acquire() {
            Err(TryAcquireError::OwnerDied(died)) => {
                assert_eq!(rlock.depth(), 1);
                drop(died.into_inner());
            }
            other => panic!("expected OwnerDied, got {other:?}"),
        }
        // Usable again, with nothing special to report.
        assert!(lock.try_acquire().is_ok());
        assert!(rlock.try_acquire().is_ok());
    }

    /// Issue 10 item 2: a waiter that cannot read `/proc` (here: out of descriptors) took the
    /// lock of a live owner as dead's.
    #[test]
    fn a_waiter_out_of_descriptors_does_not_steal_a_live_owners_lock() {
        let _r = Reaper::new();
        let lock = Lock::new().unwrap();
        let held = lock.acquire().unwrap();
        let mut child = spawn_with_args(
            acquire_out_of_descriptors,
            (lock.clone(), std::process::id()),
        )
        .unwrap();
        assert_eq!(child.join_timeout(WAIT).unwrap(), "timed out");
        assert!(lock.is_locked());
        drop(held);
        assert!(!lock.is_locked());
    }
}
