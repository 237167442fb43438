//! Crash safety: processes SIGKILLed at seeded random points while holding locks, waiting on
//! barriers and conditions, or creating named shared memory. The Python failure these guard
//! against: `terminate()` on a process holding a lock deadlocks everyone else (the warning in
//! the `multiprocessing` docs, "Programming guidelines: avoid terminating processes").
//! Every test prints its seed; rerun with `MULTIPROC_SEED=<seed>`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Reaper, Rng, WAIT};
use multiproc::{
    Barrier, Condition, Event, JoinError, RLock, Semaphore, Value, shared::SharedMemory,
};

fn sleep_us(us: u64) {
    std::thread::sleep(Duration::from_micros(us));
}

// Lock holders, barrier parties and notifiers killed under every start method (their
// targets capture nothing: the primitives travel as start arguments).
start_method_matrix! {
    /// Workers increment a two-word record under its lock, with a gap between the words; the
    /// parent kills a random worker at a random moment and starts a new one, hundreds of times.
    /// A clean acquire must always find the record consistent; an acquire after a death must
    /// report `OwnerDied`; nobody may ever hang.
    #[test]
    fn lock_survives_hundreds_of_killed_holders() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("lock_survives_hundreds_of_killed_holders");
        const WORKERS: usize = 3;
        const KILLS: usize = 300;
        let record = Value::new([0u64; 2]).unwrap();
        let recoveries = Value::new(0u64).unwrap();
        let stop = Event::new().unwrap();
        let up = Semaphore::new(0).unwrap();
        let start = || {
            let worker = multiproc::spawn_with_args(
                |(record, recoveries, stop, up): (Value<[u64; 2]>, Value<u64>, Event, Semaphore)| {
                    up.release();
                    while !stop.is_set() {
                        match record.lock() {
                            Ok(mut g) => {
                                assert_eq!(g[0], g[1], "a clean acquire saw a torn record");
                                g[0] += 1;
                                std::hint::black_box(&mut *g);
                                for _ in 0..2000 {
                                    std::hint::spin_loop();
                                }
                                g[1] += 1;
                            }
                            Err(died) => {
                                let mut g = died.into_inner();
                                g[1] = g[0]; // repair
                                drop(g);
                                recoveries.set(recoveries.get() + 1);
                            }
                        }
                    }
                },
                (record.clone(), recoveries.clone(), stop.clone(), up.clone()),
            )
            .unwrap();
            // Kill only running workers: whatever the start method costs, every kill lands in
            // the loop.
            assert!(up.acquire_timeout(WAIT), "a worker did not start");
            worker
        };
        let mut workers: Vec<_> = (0..WORKERS).map(|_| start()).collect();
        let t = Instant::now();
        for _ in 0..KILLS {
            sleep_us(rng.below(2000));
            let i = rng.below(WORKERS as u64) as usize;
            let mut victim = std::mem::replace(&mut workers[i], start());
            victim.kill().unwrap();
            match victim.join_timeout(WAIT) {
                Err(JoinError::Signal(9)) => {}
                other => panic!("worker ended with {other:?}, not by our SIGKILL"),
            }
        }
        stop.set();
        for mut w in workers {
            w.join_timeout(WAIT)
                .expect("a worker hung or saw a torn record");
        }
        let (n, rec) = (record.get(), recoveries.get());
        eprintln!(
            "{KILLS} kills in {:?}: {} increments, {rec} recoveries",
            t.elapsed(),
            n[0]
        );
        assert_eq!(n[0], n[1]);
        assert!(
            rec > 0,
            "no kill ever hit a holder: the test is not testing anything"
        );
        assert!(n[0] > KILLS as u64);
    }
    /// An RLock held (recursively) by a process that is killed passes to the next acquirer.
    #[test]
    fn rlock_killed_owner() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("rlock_killed_owner");
        let lock = RLock::new().unwrap();
        for _ in 0..100 {
            let held = Event::new().unwrap();
            let mut child = multiproc::spawn_with_args(
                |(lock, held): (RLock, Event)| {
                    let _a = lock.acquire().unwrap_or_else(|e| e.into_inner());
                    let _b = lock.acquire().unwrap();
                    held.set();
                    std::thread::sleep(WAIT);
                },
                (lock.clone(), held.clone()),
            )
            .unwrap();
            assert!(held.wait_timeout(WAIT));
            sleep_us(rng.below(1000));
            child.kill().unwrap();
            let _ = child.join_timeout(WAIT);
            let g = match lock.acquire_timeout(Duration::from_secs(2)) {
                Err(multiproc::sync::AcquireError::OwnerDied(e)) => e.into_inner(),
                other => panic!("expected OwnerDied, got {other:?}"),
            };
            assert_eq!(lock.depth(), 1);
            drop(g);
            assert_eq!(lock.depth(), 0);
        }
    }
    /// Three parties loop on a barrier; one is killed at a random point: the other two must get
    /// `BrokenBarrierError` promptly instead of hanging.
    #[test]
    fn barrier_breaks_when_a_party_dies() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("barrier_breaks_when_a_party_dies");
        const KILLS: usize = 100;
        let arrivals = Value::new(0u64).unwrap();
        for _ in 0..KILLS {
            let barrier = Barrier::new(3).unwrap();
            arrivals.set(0);
            let mut parties: Vec<_> = (0..3)
                .map(|_| {
                    multiproc::spawn_with_args(
                        |(barrier, arrivals): (Barrier, Value<u64>)| {
                            let mut rounds = 0u64;
                            loop {
                                *arrivals.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                                if barrier.wait_timeout(WAIT * 2).is_err() {
                                    return rounds;
                                }
                                rounds += 1;
                            }
                        },
                        (barrier.clone(), arrivals.clone()),
                    )
                    .unwrap()
                })
                .collect();
            // Every party has waited once, so each is a known party.
            assert!(common::eventually(WAIT, || arrivals.get() >= 6));
            sleep_us(rng.below(3000));
            let victim = rng.below(3) as usize;
            parties[victim].kill().unwrap();
            let t = Instant::now();
            for (i, p) in parties.iter_mut().enumerate() {
                let r = p.join_timeout(WAIT);
                if i == victim {
                    assert!(matches!(r, Err(JoinError::Signal(9))), "{r:?}");
                } else {
                    assert!(r.is_ok(), "survivor failed: {r:?}");
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "survivors took {:?}",
                t.elapsed()
            );
            assert!(barrier.is_broken());
        }
    }
    /// A notifier that is killed right after notifying, still holding the lock, does not strand
    /// the waiter: it wakes, and takes the lock over with `OwnerDied`.
    #[test]
    fn condition_waiter_survives_killed_notifier() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("condition_waiter_survives_killed_notifier");
        for _ in 0..100 {
            let cond = Condition::new().unwrap();
            let ready = Event::new().unwrap();
            let holding = Event::new().unwrap();
            let mut waiter = multiproc::spawn_with_args(
                |(cond, ready): (Condition, Event)| {
                    let mut g = cond.acquire().unwrap();
                    ready.set();
                    match g.wait_timeout(WAIT) {
                        Ok(notified) => (notified, false),
                        Err(died) => (died.into_inner(), true),
                    }
                },
                (cond.clone(), ready.clone()),
            )
            .unwrap();
            assert!(ready.wait_timeout(WAIT));
            let mut notifier = multiproc::spawn_with_args(
                |(cond, holding): (Condition, Event)| {
                    // Only possible once the waiter sleeps and has released the lock.
                    let g = cond.acquire().unwrap();
                    g.notify_all();
                    holding.set();
                    std::thread::sleep(WAIT);
                },
                (cond.clone(), holding.clone()),
            )
            .unwrap();
            assert!(holding.wait_timeout(WAIT));
            sleep_us(rng.below(500));
            notifier.kill().unwrap();
            let _ = notifier.join_timeout(WAIT);
            let t = Instant::now();
            let (notified, owner_died) = waiter.join_timeout(WAIT).unwrap();
            assert!(notified, "the waiter timed out instead of being notified");
            assert!(
                owner_died,
                "the waiter should learn that the lock's holder died"
            );
            assert!(t.elapsed() < Duration::from_secs(2));
        }
    }
    /// A counter that survives: killing holders in the middle never loses or duplicates an
    /// acquired increment. Checked through an atomic mirror kept beside the locked counter.
    #[test]
    fn shared_counter_is_exact_despite_kills() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("shared_counter_is_exact_despite_kills");
        let counter = Value::new(0u64).unwrap();
        let mirror = SharedMemory::create(64).unwrap();
        mirror.unlink().unwrap();
        for _ in 0..300 {
            let mut c = multiproc::spawn_with_args(
                |(counter, mirror): (Value<u64>, SharedMemory)| {
                    let done = &mirror.atomics::<AtomicU64>()[0];
                    #[allow(clippy::while_immutable_condition)]
                    while done.load(Ordering::Relaxed) != u64::MAX {
                        let mut g = counter.lock().unwrap_or_else(|e| e.into_inner());
                        // Either both or neither: the mirror is bumped inside the lock, after.
                        let v = *g;
                        *g = v + 1;
                        done.store(v + 1, Ordering::SeqCst);
                    }
                },
                (counter.clone(), mirror.clone()),
            )
            .unwrap();
            sleep_us(rng.below(3000));
            c.kill().unwrap();
            let _ = c.join_timeout(WAIT);
            let v = counter.get();
            let m = mirror.atomics::<AtomicU64>()[0].load(Ordering::SeqCst);
            assert!(v == m || v == m + 1, "counter {v}, mirror {m}");
            mirror.atomics::<AtomicU64>()[0].store(v, Ordering::SeqCst);
        }
    }
}

fn creator(prefix: String, count: usize) -> multiproc::JoinHandle<()> {
    multiproc::spawn_with_args(
        |(prefix, count): (String, usize)| {
            let mut keep = Vec::new();
            for j in 0..count {
                keep.push(SharedMemory::create_named(&format!("{prefix}{j}"), 4096).unwrap());
            }
            std::thread::sleep(WAIT);
        },
        (prefix, count),
    )
    .unwrap()
}

fn kill_creators(test: &str, warm_tracker: bool) {
    let _r = Reaper::new();
    let mut rng = Rng::seeded(test);
    let _warm = warm_tracker.then(|| {
        // The tracker now belongs to this process; children share it.
        let s = SharedMemory::create(64).unwrap();
        s.unlink().unwrap();
        s
    });
    let me = std::process::id();
    const KILLS: usize = 100;
    let mut created = 0;
    for k in 0..KILLS {
        let prefix = format!("mpcrash-{me}-{k}-");
        let mut c = creator(prefix.clone(), 4);
        if k % 4 == 0 {
            // A quarter of the kills come after the first name exists, however long a start
            // takes on a loaded machine (each creator may start its own tracker first), so
            // that the check below never finds the test tested nothing.
            common::eventually(WAIT, || !common::shm_names(&prefix).is_empty());
        }
        sleep_us(rng.below(3000));
        created += common::shm_names(&prefix).len();
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        if !warm_tracker {
            // Each creator started its own tracker, which exits once the creator is gone.
            assert!(
                common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
                "leaked: {:?}",
                common::shm_names(&prefix)
            );
        }
    }
    let all = format!("mpcrash-{me}-");
    assert!(
        common::eventually(WAIT, || common::shm_names(&all).is_empty()),
        "leaked after SIGKILL of their creators: {:?}",
        common::shm_names(&all)
    );
    eprintln!("{KILLS} creators killed, {created} names seen before the kill, none left");
    assert!(
        created > 0,
        "no kill came after a creation: the test tests nothing"
    );
}

/// Creators of named segments SIGKILLed at random points leave nothing in /dev/shm: the
/// tracker (shared with the parent) unlinks each dead creator's names.
#[test]
fn shm_names_of_killed_creators_are_unlinked() {
    kill_creators("shm_names_of_killed_creators_are_unlinked", true);
}

/// The same when each creator started its own tracker (no segment in the parent).
#[test]
fn shm_names_are_unlinked_when_the_whole_tree_dies() {
    kill_creators("shm_names_are_unlinked_when_the_whole_tree_dies", false);
}

/// A failed create of an existing name withdraws only its own registration: the first
/// creator's name is still unlinked when that creator is killed.
#[test]
fn failed_duplicate_create_keeps_the_first_creator_tracked() {
    let _r = Reaper::new();
    let warm = SharedMemory::create(64).unwrap(); // shared tracker from here on
    warm.unlink().unwrap();
    let name = format!("mpcrash-{}-dup-", std::process::id());
    let mut c = creator(name.clone(), 1);
    let full = format!("{name}0");
    assert!(common::eventually(WAIT, || common::shm_names(&name).len() == 1));
    let e = SharedMemory::create_named(&full, 64).unwrap_err();
    assert_eq!(e.kind(), multiproc::ErrorKind::Io);
    c.kill().unwrap();
    let _ = c.join_timeout(WAIT);
    assert!(
        common::eventually(WAIT, || common::shm_names(&name).is_empty()),
        "the first creator's name leaked: {:?}",
        common::shm_names(&name)
    );
}
