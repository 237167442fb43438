//! Managers: every object type used from children, under every start method; `modify` from
//! many processes losing no update; a fork that shares no socket with its parent
//! (cpython#101320); the server SIGKILLed under pending and later calls; wrong authkeys,
//! garbage frames, a dead lock holder. Mirrors CPython's `_TestContainers`,
//! `_TestManagerRestart` and `_TestRemoteManager` where Python has the scenario.
//!
//! Children get proxies as start arguments of non-capturing closures, so every test runs
//! under any start method (the manager's server itself is started by the method under test).

mod common;

use std::time::{Duration, Instant};

use common::{Reaper, WAIT};
use multiproc::connection::{Address, ConnectError};
use multiproc::manager::{
    BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy, Manager,
    ManagerError, QueueProxy, RemoteError, SemaphoreProxy, ValueProxy,
};
use multiproc::process::AuthKey;
use multiproc::{JoinHandle, spawn_with_args};

fn join_all<T: serde::de::DeserializeOwned>(children: Vec<JoinHandle<T>>) -> Vec<T> {
    children
        .into_iter()
        .map(|mut c| c.join_timeout(WAIT).expect("child failed or hung"))
        .collect()
}

fn is_disconnected(e: &ManagerError) -> bool {
    matches!(e, ManagerError::Disconnected { .. })
}

fn bump(v: &mut u64, by: u64) {
    *v += by;
}

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
struct Settings {
    name: String,
    tags: Vec<String>,
    retries: u32,
}

/// A user's type served by the manager (Python's `BaseManager.register`).
#[multiproc::remote]
trait Tally {
    fn add(&mut self, by: u64) -> u64;
    fn total(&self) -> u64;
    fn label(&self) -> String;
    fn fail(&self);
}

struct Counts {
    label: String,
    n: u64,
}

impl Tally for Counts {
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
    fn total(&self) -> u64 {
        self.n
    }
    fn label(&self) -> String {
        self.label.clone()
    }
    fn fail(&self) {
        panic!("failing on purpose")
    }
}

fn new_counts(label: String) -> Counts {
    Counts { label, n: 0 }
}

/// A user's type whose `&self` calls wait for each other and whose `&mut self` calls count
/// how many of them are inside at once: per-object concurrency, as the server sees it.
#[multiproc::remote]
trait Gate {
    /// Waits up to `ms` for `open`; whether it was opened.
    fn wait_open(&self, ms: u64) -> bool;
    /// How many `wait_open` calls have started.
    fn waiters(&self) -> u32;
    fn open(&self);
    /// Stays inside for `ms`.
    fn exclusive(&mut self, ms: u64);
    /// The most `exclusive` calls ever inside at once.
    fn most_inside(&self) -> u32;
}

#[derive(Default)]
struct Turnstile {
    opened: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    waiters: std::sync::atomic::AtomicU32,
    // Atomics, not plain fields: `&mut self` would let the compiler assume no overlap, and
    // overlap is what this counts.
    inside: std::sync::atomic::AtomicU32,
    most: std::sync::atomic::AtomicU32,
}

impl Gate for Turnstile {
    fn wait_open(&self, ms: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiters.fetch_add(1, SeqCst);
        let opened = self.opened.lock().unwrap();
        let (opened, _) = self
            .cv
            .wait_timeout_while(opened, Duration::from_millis(ms), |o| !*o)
            .unwrap();
        *opened
    }
    fn waiters(&self) -> u32 {
        self.waiters.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn open(&self) {
        *self.opened.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn exclusive(&mut self, ms: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        self.inside.fetch_sub(1, SeqCst);
    }
    fn most_inside(&self) -> u32 {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn new_turnstile(_: ()) -> Turnstile {
    Turnstile::default()
}

start_method_matrix! {
    #[test]
    fn remote_shared_methods_overlap_and_mut_ones_do_not() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let g = GateProxy::new(&m, new_turnstile, ()).unwrap();
        // A child's `wait_open` blocks in the server until `open`: with `&self` calls
        // serialized, `waiters` and `open` would wait behind it and it would time out (false).
        let waiter = spawn_with_args(|g: GateProxy| g.wait_open(20_000).unwrap(), g.clone())
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while g.waiters().unwrap() == 0 {
            assert!(Instant::now() < deadline, "wait_open never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        g.open().unwrap();
        assert_eq!(join_all(vec![waiter]), vec![true], "a &self call waited behind another");

        // `&mut self` calls from several processes at once never overlap on the object.
        let children = (0..4)
            .map(|_| {
                spawn_with_args(
                    |g: GateProxy| {
                        for _ in 0..10 {
                            g.exclusive(3).unwrap();
                        }
                    },
                    g.clone(),
                )
                .unwrap()
            })
            .collect();
        join_all(children);
        assert_eq!(g.most_inside().unwrap(), 1, "two &mut self calls overlapped");
    }

    #[test]
    fn remote_trait_objects_from_children() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let t = TallyProxy::new(&m, new_counts, "visits".to_string()).unwrap();
        assert_eq!(t.label().unwrap(), "visits");
        const PROCS: u64 = 4;
        const ITERS: u64 = 200;
        let children = (0..PROCS)
            .map(|_| {
                spawn_with_args(
                    |t: TallyProxy| {
                        for _ in 0..ITERS {
                            t.add(1).unwrap();
                        }
                    },
                    t.clone(),
                )
                .unwrap()
            })
            .collect();
        join_all(children);
        assert_eq!(t.total().unwrap(), PROCS * ITERS);
        let err = t.fail().unwrap_err();
        assert!(
            matches!(&err, ManagerError::Remote(RemoteError::Panicked(m)) if m == "failing on purpose"),
            "{err}"
        );
        assert_eq!(t.total().unwrap(), PROCS * ITERS);
    }

    #[test]
    fn dict_every_method_and_from_children() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        assert!(d.is_empty().unwrap());
        assert_eq!(d.insert(&"a".into(), &1).unwrap(), None);
        assert_eq!(d.insert(&"a".into(), &2).unwrap(), Some(1));
        assert_eq!(d.get(&"a".into()).unwrap(), Some(2));
        assert_eq!(d.get(&"zz".into()).unwrap(), None);
        assert!(d.contains(&"a".into()).unwrap());
        assert!(!d.contains(&"zz".into()).unwrap());
        d.update([(&"b".to_string(), &3), (&"c".to_string(), &4)]).unwrap();
        assert_eq!(d.setdefault(&"c".into(), &99).unwrap(), 4);
        assert_eq!(d.setdefault(&"d".into(), &5).unwrap(), 5);
        assert_eq!(d.len().unwrap(), 4);
        // Insertion order, as Python's dict; re-inserting "a" kept its place.
        assert_eq!(d.keys().unwrap(), ["a", "b", "c", "d"]);
        assert_eq!(d.values().unwrap(), [2, 3, 4, 5]);
        assert_eq!(d.pop(&"b".into()).unwrap(), Some(3));
        assert_eq!(d.remove(&"b".into()).unwrap(), None);

        let children = (0..3u64)
            .map(|i| {
                spawn_with_args(
                    |(d, i): (DictProxy<String, u64>, u64)| {
                        d.insert(&format!("child-{i}"), &(i * 10)).unwrap();
                        d.get(&"a".into()).unwrap()
                    },
                    (d.clone(), i),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(join_all(children), [Some(2), Some(2), Some(2)]);
        for i in 0..3u64 {
            assert_eq!(d.get(&format!("child-{i}")).unwrap(), Some(i * 10));
        }
        d.clear().unwrap();
        assert_eq!(d.items().unwrap(), []);
    }

    #[test]
    fn list_every_method_and_from_children() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let l = m.list::<i32>().unwrap();
        assert_eq!(l.pop().unwrap(), None);
        l.extend(&[1, 2, 3]).unwrap();
        l.push(&4).unwrap();
        assert_eq!(l.get(0).unwrap(), 1);
        assert_eq!(l.get(-1).unwrap(), 4);
        l.set(1, &20).unwrap();
        l.insert(0, &0).unwrap();
        l.insert(100, &5).unwrap(); // clamped, as Python's insert
        assert_eq!(l.to_vec().unwrap(), [0, 1, 20, 3, 4, 5]);
        l.remove(&20).unwrap();
        assert!(matches!(l.remove(&77), Err(ManagerError::Remote(RemoteError::NotFound))));
        assert!(matches!(
            l.get(10),
            Err(ManagerError::Remote(RemoteError::IndexOutOfRange { index: 10, len: 5 }))
        ));
        assert_eq!(l.pop().unwrap(), Some(5));
        assert_eq!(l.iter().unwrap().sum::<i32>(), 8);
        let child = spawn_with_args(
            |l: ListProxy<i32>| {
                l.push(&100).unwrap();
                l.len().unwrap()
            },
            l.clone(),
        )
        .unwrap();
        assert_eq!(join_all(vec![child]), [5]);
        assert_eq!(l.get(-1).unwrap(), 100);
        l.clear().unwrap();
        assert!(l.is_empty().unwrap());
    }

    #[test]
    fn value_and_namespace_change_in_place_from_children() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let v = m.value(1.5f64).unwrap();
        v.set(&2.5).unwrap();
        assert_eq!(v.get().unwrap(), 2.5);
        let ns = m.namespace(Settings::default()).unwrap();
        let child = spawn_with_args(
            |ns: ValueProxy<Settings>| {
                // A nested change, which Python's proxies silently drop.
                ns.modify(|s: &mut Settings, tag: String| s.tags.push(tag), "x".into())
                    .unwrap();
                ns.modify(|s: &mut Settings, n: u32| s.retries = n, 3).unwrap();
            },
            ns.clone(),
        )
        .unwrap();
        join_all(vec![child]);
        assert_eq!(
            ns.get().unwrap(),
            Settings { name: String::new(), tags: vec!["x".into()], retries: 3 }
        );
    }

    #[test]
    fn modify_from_many_processes_loses_no_update() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        let l = m.list::<u64>().unwrap();
        l.push(&0).unwrap();
        let v = m.value(0u64).unwrap();
        const PROCS: u64 = 8;
        const ITERS: u64 = 300;
        let children = (0..PROCS)
            .map(|_| {
                spawn_with_args(
                    |(d, l, v): (DictProxy<String, u64>, ListProxy<u64>, ValueProxy<u64>)| {
                        for _ in 0..ITERS {
                            d.modify(&"k".into(), bump, 1).unwrap();
                            l.modify(0, bump, 1).unwrap();
                            v.modify(|x: &mut u64, by: u64| { *x += by; *x }, 1).unwrap();
                        }
                    },
                    (d.clone(), l.clone(), v.clone()),
                )
                .unwrap()
            })
            .collect();
        join_all(children);
        assert_eq!(d.get(&"k".into()).unwrap(), Some(PROCS * ITERS));
        assert_eq!(l.get(0).unwrap(), PROCS * ITERS);
        assert_eq!(v.get().unwrap(), PROCS * ITERS);
    }

    #[test]
    fn modify_from_a_hundred_processes_is_exact() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        const PROCS: u64 = 100;
        const ITERS: u64 = 50;
        // All started before any joins, so the server has a hundred clients at once.
        let children: Vec<_> = (0..PROCS)
            .map(|_| {
                spawn_with_args(
                    |d: DictProxy<String, u64>| {
                        for _ in 0..ITERS {
                            d.modify(&"k".into(), bump, 1).unwrap();
                        }
                    },
                    d.clone(),
                )
                .unwrap()
            })
            .collect();
        join_all(children);
        assert_eq!(d.get(&"k".into()).unwrap(), Some(PROCS * ITERS));
    }

    #[test]
    fn modify_panic_leaves_value_and_server_intact() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let v = m.value(7u32).unwrap();
        let err = v
            .modify(|x: &mut u32, limit: u32| {
                *x = 0;
                assert!(limit > 100, "boom");
            }, 1)
            .unwrap_err();
        assert!(matches!(&err, ManagerError::Remote(RemoteError::Panicked(m)) if m == "boom"), "{err}");
        assert_eq!(v.get().unwrap(), 7);
    }

    #[test]
    fn fork_while_connected_shares_no_socket() {
        // cpython#101320: a child forked after its parent used a proxy shares the parent's
        // socket and reads its replies. Here the child connects afresh; parent and children
        // then hammer the same dict at once and every reply is the right one.
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<u64, u64>().unwrap();
        d.insert(&0, &0).unwrap(); // the parent's connection is open before the children start
        let children = (1..=3u64)
            .map(|i| {
                spawn_with_args(
                    |(d, i): (DictProxy<u64, u64>, u64)| {
                        for n in 0..300 {
                            d.insert(&i, &n).unwrap();
                            assert_eq!(d.get(&i).unwrap(), Some(n));
                        }
                    },
                    (d.clone(), i),
                )
                .unwrap()
            })
            .collect();
        for n in 0..300 {
            d.insert(&0, &n).unwrap();
            assert_eq!(d.get(&0).unwrap(), Some(n));
        }
        join_all(children);
        assert_eq!(d.values().unwrap(), [299, 299, 299, 299]);
    }

    #[test]
    fn queue_lock_event_across_processes() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let q = m.queue::<String>(Some(2)).unwrap();
        let lock = m.lock().unwrap();
        let event = m.event().unwrap();
        let guard = lock.lock().unwrap();
        let filled = m.event().unwrap();
        let child = spawn_with_args(
            |(q, lock, event, filled): (QueueProxy<String>, LockProxy, EventProxy, EventProxy)| {
                q.put(&"one".into()).unwrap();
                q.put(&"two".into()).unwrap();
                // Full: a bounded put times out.
                let third = q.put_timeout(&"three".into(), Duration::from_millis(50)).unwrap();
                filled.set().unwrap();
                // The parent holds the lock until it has seen both items.
                let got = lock.acquire_timeout(Duration::from_secs(10)).unwrap();
                lock.release().unwrap();
                event.set().unwrap();
                (third, got)
            },
            (q.clone(), lock.clone(), event.clone(), filled.clone()),
        )
        .unwrap();
        assert!(filled.wait_timeout(WAIT).unwrap());
        assert_eq!(q.qsize().unwrap(), 2);
        assert_eq!(q.get_timeout(WAIT).unwrap().as_deref(), Some("one"));
        assert_eq!(q.get().unwrap(), "two");
        assert_eq!(q.get_nowait().unwrap(), None);
        assert!(!event.is_set().unwrap());
        drop(guard);
        assert!(event.wait_timeout(WAIT).unwrap());
        assert_eq!(join_all(vec![child]), [(false, true)]);
        assert!(q.empty().unwrap());
        assert!(matches!(lock.release(), Err(ManagerError::Remote(RemoteError::NotHeld))));
        event.clear().unwrap();
        assert!(!event.wait_timeout(Duration::from_millis(20)).unwrap());
    }

    #[test]
    fn semaphore_counts_across_processes() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let sem = m.semaphore(0).unwrap();
        let bounded = m.bounded_semaphore(2).unwrap();
        let child = spawn_with_args(
            |(sem, bounded): (SemaphoreProxy, SemaphoreProxy)| {
                bounded.acquire().unwrap();
                bounded.acquire().unwrap();
                let third = bounded.acquire_timeout(Duration::from_millis(20)).unwrap();
                sem.release().unwrap();
                sem.release().unwrap();
                third
            },
            (sem.clone(), bounded.clone()),
        )
        .unwrap();
        assert!(sem.acquire_timeout(WAIT).unwrap());
        assert!(sem.acquire_timeout(WAIT).unwrap());
        assert_eq!(join_all(vec![child]), [false]);
        assert_eq!(sem.value().unwrap(), 0);
        assert_eq!(bounded.value().unwrap(), 0);
        bounded.release().unwrap();
        bounded.release().unwrap();
        assert!(matches!(
            bounded.release(),
            Err(ManagerError::Remote(RemoteError::TooManyReleases))
        ));
        assert_eq!(bounded.value().unwrap(), 2);
    }

    #[test]
    fn rlock_is_reentrant_and_owned() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let r = m.rlock().unwrap();
        r.acquire().unwrap();
        r.acquire().unwrap();
        let child = spawn_with_args(
            |r: LockProxy| {
                let not_owner = matches!(r.release(), Err(ManagerError::Remote(RemoteError::NotHeld)));
                (not_owner, r.acquire_timeout(Duration::from_millis(20)).unwrap())
            },
            r.clone(),
        )
        .unwrap();
        assert_eq!(join_all(vec![child]), [(true, false)]);
        r.release().unwrap();
        r.release().unwrap();
        assert!(r.release().is_err());
    }

    #[test]
    fn lock_of_a_killed_holder_is_released() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let lock = m.lock().unwrap();
        let holding = m.event().unwrap();
        let mut child = spawn_with_args(
            |(lock, holding): (LockProxy, EventProxy)| {
                lock.acquire().unwrap();
                holding.set().unwrap();
                std::thread::sleep(Duration::from_secs(60));
            },
            (lock.clone(), holding.clone()),
        )
        .unwrap();
        assert!(holding.wait_timeout(WAIT).unwrap());
        assert!(!lock.acquire_timeout(Duration::from_millis(20)).unwrap());
        child.kill().unwrap();
        assert!(child.join_timeout(WAIT).is_err());
        assert!(lock.acquire_timeout(WAIT).unwrap(), "the dead holder's lock was not released");
    }

    #[test]
    fn server_killed_fails_pending_and_later_calls() {
        let _r = Reaper::new();
        let mut m = Manager::start().unwrap();
        let q = m.queue::<u32>(None).unwrap();
        let waiting = m.event().unwrap();
        let child = spawn_with_args(
            |(q, waiting): (QueueProxy<u32>, EventProxy)| {
                waiting.set().unwrap();
                // Blocks: nothing is ever put. The server dies under it.
                match q.get() {
                    Err(ManagerError::Disconnected { .. }) => "disconnected".to_string(),
                    other => format!("{other:?}"),
                }
            },
            (q.clone(), waiting.clone()),
        )
        .unwrap();
        assert!(waiting.wait_timeout(WAIT).unwrap());
        std::thread::sleep(Duration::from_millis(50)); // let the child's get reach the server
        let started = Instant::now();
        m.server_process().unwrap().kill().unwrap();
        assert_eq!(join_all(vec![child]), ["disconnected"]);
        let err = q.qsize().unwrap_err();
        assert!(is_disconnected(&err), "{err:?}");
        assert!(err.to_string().contains("start a new manager"), "{err}");
        let err = m.dict::<u8, u8>().unwrap_err();
        assert!(is_disconnected(&err), "{err:?}");
        assert!(started.elapsed() < WAIT);
        // Reaps the dead server; a second call does nothing.
        m.shutdown().unwrap();
        m.shutdown().unwrap();
    }

    #[test]
    fn barrier_across_processes_breaks_and_resets() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let b = m.barrier(3).unwrap();
        assert_eq!(b.parties().unwrap(), 3);
        const ROUNDS: usize = 5;
        let children = (0..2)
            .map(|_| {
                spawn_with_args(
                    |b: BarrierProxy| (0..ROUNDS).map(|_| b.wait_timeout(WAIT).unwrap()).sum::<usize>(),
                    b.clone(),
                )
                .unwrap()
            })
            .collect();
        let mine: usize = (0..ROUNDS).map(|_| b.wait_timeout(WAIT).unwrap()).sum();
        // Each round hands out the arrival indices 0, 1 and 2 once.
        let theirs: usize = join_all(children).into_iter().sum();
        assert_eq!(mine + theirs, ROUNDS * 3);
        assert_eq!(b.n_waiting().unwrap(), 0);
        assert!(!b.broken().unwrap());

        // A wait that times out breaks the barrier, for later waits too, until a reset.
        let err = b.wait_timeout(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, ManagerError::Remote(RemoteError::BrokenBarrier)), "{err:?}");
        assert!(b.broken().unwrap());
        let err = b.wait_timeout(WAIT).unwrap_err();
        assert!(matches!(err, ManagerError::Remote(RemoteError::BrokenBarrier)), "{err:?}");
        b.reset().unwrap();
        assert!(!b.broken().unwrap());

        // A reset fails the waits under way.
        let waiter = spawn_with_args(
            |b: BarrierProxy| matches!(b.wait_timeout(WAIT), Err(ManagerError::Remote(RemoteError::BrokenBarrier))),
            b.clone(),
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        while b.n_waiting().unwrap() == 0 {
            assert!(Instant::now() < deadline, "the child never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        b.reset().unwrap();
        assert_eq!(join_all(vec![waiter]), [true]);
        assert!(matches!(m.barrier(0), Err(ManagerError::Remote(RemoteError::BadRequest(_)))));
    }

    #[test]
    fn condition_wait_releases_the_lock_and_notify_wakes() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let (cond, ready) = (m.condition().unwrap(), m.value(0u32).unwrap());
        // Not held: wait and notify fail, as Python's RuntimeError.
        let err = cond.wait_timeout(Duration::ZERO).unwrap_err();
        assert!(matches!(err, ManagerError::Remote(RemoteError::NotHeld)), "{err:?}");
        assert!(matches!(cond.notify(1), Err(ManagerError::Remote(RemoteError::NotHeld))));
        // Held twice (reentrant): the wait must release both, or the children never get in.
        cond.acquire().unwrap();
        cond.acquire().unwrap();
        let children = (0..2)
            .map(|_| {
                spawn_with_args(
                    |(cond, ready): (ConditionProxy, ValueProxy<u32>)| {
                        assert!(cond.acquire_timeout(WAIT).unwrap());
                        ready.modify(|n: &mut u32, by: u32| *n += by, 1).unwrap();
                        cond.notify(1).unwrap();
                        cond.release().unwrap();
                    },
                    (cond.clone(), ready.clone()),
                )
                .unwrap()
            })
            .collect();
        while ready.get().unwrap() < 2 {
            assert!(cond.wait_timeout(WAIT).unwrap(), "no notify came");
        }
        join_all(children);
        // The wait took the lock back twice: two releases, then it is free.
        cond.release().unwrap();
        cond.release().unwrap();
        assert!(matches!(cond.release(), Err(ManagerError::Remote(RemoteError::NotHeld))));
        // A timed-out wait reports false and still holds the lock.
        cond.acquire().unwrap();
        assert!(!cond.wait_timeout(Duration::from_millis(20)).unwrap());
        cond.release().unwrap();
    }

    #[test]
    fn server_killed_releases_condition_waiters() {
        let _r = Reaper::new();
        let mut m = Manager::start().unwrap();
        let (cond, waiting) = (m.condition().unwrap(), m.event().unwrap());
        let child = spawn_with_args(
            |(cond, waiting): (ConditionProxy, EventProxy)| {
                cond.acquire().unwrap();
                waiting.set().unwrap();
                match cond.wait() {
                    Err(ManagerError::Disconnected { .. }) => "disconnected".to_string(),
                    other => format!("{other:?}"),
                }
            },
            (cond.clone(), waiting.clone()),
        )
        .unwrap();
        assert!(waiting.wait_timeout(WAIT).unwrap());
        // Free only once the child's wait released it: the child is waiting now.
        assert!(cond.acquire_timeout(WAIT).unwrap());
        cond.release().unwrap();
        m.server_process().unwrap().kill().unwrap();
        assert_eq!(join_all(vec![child]), ["disconnected"]);
        m.shutdown().unwrap();
    }

    #[test]
    fn server_killed_releases_barrier_waiters() {
        let _r = Reaper::new();
        let mut m = Manager::start().unwrap();
        let b = m.barrier(2).unwrap();
        let child = spawn_with_args(
            |b: BarrierProxy| match b.wait() {
                Err(ManagerError::Disconnected { .. }) => "disconnected".to_string(),
                other => format!("{other:?}"),
            },
            b.clone(),
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        while b.n_waiting().unwrap() == 0 {
            assert!(Instant::now() < deadline, "the child never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        m.server_process().unwrap().kill().unwrap();
        assert_eq!(join_all(vec![child]), ["disconnected"]);
        assert!(is_disconnected(&b.wait().unwrap_err()));
        m.shutdown().unwrap();
    }

    #[test]
    fn shutdown_and_drop_stop_the_server() {
        let _r = Reaper::new();
        let mut m = Manager::start().unwrap();
        let pid = m.server_process().unwrap().pid().unwrap();
        let d = m.dict::<u8, u8>().unwrap();
        let path = match m.address() {
            Address::Unix(p) => p.clone(),
            other => panic!("default address is a Unix socket, got {other:?}"),
        };
        assert!(path.exists());
        m.shutdown().unwrap();
        assert!(m.server_process().is_none());
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!path.exists(), "the socket file was left behind");
        assert!(is_disconnected(&d.len().unwrap_err()));

        let m = Manager::start().unwrap();
        let pid = m.server_process().unwrap().pid().unwrap();
        drop(m);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn wrong_authkey_is_refused() {
        let _r = Reaper::new();
        let key = AuthKey::from(b"right".to_vec());
        let m = Manager::builder()
            .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .authkey(key.clone())
            .start()
            .unwrap();
        let address = m.address().clone();
        let child = spawn_with_args(
            |(port, wrong): (u16, AuthKey)| {
                let address = Address::Tcp(([127, 0, 0, 1], port).into());
                matches!(
                    Manager::connect(&address, wrong),
                    Err(ManagerError::Connect(ConnectError::Refused))
                )
            },
            (tcp_port(&address), AuthKey::from(b"wrong".to_vec())),
        )
        .unwrap();
        assert_eq!(join_all(vec![child]), [true]);
        // The right key works from an unrelated connection (remote manager, loopback TCP).
        let remote = Manager::connect(&address, key).unwrap();
        let d = remote.dict::<String, String>().unwrap();
        d.insert(&"k".into(), &"v".into()).unwrap();
        assert_eq!(d.get(&"k".into()).unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn garbage_frames_do_not_stop_the_server() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<u8, u8>().unwrap();
        d.insert(&1, &1).unwrap();
        let connect = || {
            multiproc::connection::client_with_authkey(m.address(), Some(m.authkey())).unwrap()
        };
        // An authenticated client whose greeting is garbage is hung up on...
        let conn = connect();
        conn.send_bytes(&[0xff; 40]).unwrap();
        assert!(conn.recv_bytes().is_err());
        // ... one that greets properly (postcard's `None` build: [0]) and then sends garbage
        // requests gets an error reply for each and stays served...
        let conn = connect();
        conn.send_bytes(&[0]).unwrap();
        assert!(conn.recv_bytes().is_ok(), "no welcome");
        for _ in 0..2 {
            conn.send_bytes(&[0xff; 40]).unwrap();
            assert!(conn.recv_bytes().is_ok(), "no error reply");
        }
        // ... and one that hangs up with a request unsent is dropped alone.
        let conn = connect();
        conn.send_bytes(&[0]).unwrap();
        drop(conn);
        // An unauthenticated peer is turned away.
        if let Address::Unix(path) = m.address() {
            use std::io::Write;
            let mut raw = std::os::unix::net::UnixStream::connect(path).unwrap();
            let _ = raw.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
        assert_eq!(d.get(&1).unwrap(), Some(1));
        let child = spawn_with_args(|d: DictProxy<u8, u8>| d.get(&1).unwrap(), d.clone()).unwrap();
        assert_eq!(join_all(vec![child]), [Some(1)]);
    }

    /// A client holding the authkey and claiming the server's build sends `modify` requests
    /// whose function offsets are arbitrary (the anchor itself, a byte into it, far away):
    /// every one is refused with an error reply, nothing is called, and the server keeps
    /// serving with the value unchanged.
    #[test]
    fn forged_function_offsets_are_refused() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let v = m.value(7u64).unwrap(); // the server's first object: id 1
        let conn =
            multiproc::connection::client_with_authkey(m.address(), Some(m.authkey())).unwrap();
        conn.send_bytes(&forged_hello()).unwrap();
        assert!(conn.recv_bytes().is_ok(), "no welcome");
        // `Request::Call { id: 1, op: Op::Load }` first: it succeeds (Ok is variant 0), which
        // shows the hand-made frames are well formed and name the value.
        let mut load = Vec::new();
        for n in [1, 1, OP_LOAD] {
            varint(&mut load, n);
        }
        conn.send_bytes(&load).unwrap();
        assert_eq!(conn.recv_bytes().unwrap().first(), Some(&0), "Load failed");
        for offset in [0i64, 1, 2, 64, -64, 4096, -4096, 1 << 20, i64::MAX, i64::MIN] {
            // `Request::Call { id: 1, op: Op::Modify(Func { entry: offset, arg: [1] }) }`.
            let mut frame = Vec::new();
            for n in [1, 1, OP_MODIFY] {
                varint(&mut frame, n);
            }
            varint(&mut frame, ((offset << 1) ^ (offset >> 63)) as u64); // zigzag
            frame.extend([1, 1]); // one byte of argument
            conn.send_bytes(&frame).unwrap();
            let reply = conn.recv_bytes().expect("the server died on a forged offset");
            assert_eq!(reply.first(), Some(&1), "offset {offset} was not refused");
            let text = String::from_utf8_lossy(&reply);
            assert!(text.contains("refused"), "offset {offset}: {text}");
        }
        assert_eq!(v.get().unwrap(), 7);
        v.modify(|v: &mut u64, by: u64| *v += by, 1).unwrap();
        assert_eq!(v.get().unwrap(), 8);
        let child = spawn_with_args(|v: ValueProxy<u64>| v.get().unwrap(), v.clone()).unwrap();
        assert_eq!(join_all(vec![child]), [8]);
    }

    /// Python's `register`: the parent names a dict; children that know only the server's
    /// address and authkey `connect`, look it up by name and update it, losing no update;
    /// an unknown name and a wrong proxy type are errors, in the child as in the parent.
    #[test]
    fn registered_dict_by_name_from_children() {
        let _r = Reaper::new();
        let m = Manager::start().unwrap();
        let d = m.dict::<String, i64>().unwrap();
        d.insert(&"seed".into(), &1).unwrap();
        m.register("counts", &d).unwrap();
        const PROCS: i64 = 3;
        const ITERS: i64 = 50;
        let children = (0..PROCS)
            .map(|_| {
                spawn_with_args(
                    |(path, key): (std::path::PathBuf, AuthKey)| {
                        let m = Manager::connect(&Address::Unix(path), key).unwrap();
                        let d: DictProxy<String, i64> = m.get("counts").unwrap();
                        for _ in 0..ITERS {
                            d.modify(&"hits".into(), |v: &mut i64, by: i64| *v += by, 1)
                                .unwrap();
                        }
                        let unknown = m.get::<DictProxy<String, i64>>("count");
                        let wrong = m.get::<DictProxy<String, u64>>("counts");
                        (
                            d.get(&"seed".into()).unwrap(),
                            matches!(unknown, Err(ManagerError::Remote(RemoteError::NotRegistered(n))) if n == "count"),
                            matches!(wrong, Err(ManagerError::Remote(RemoteError::WrongType { .. }))),
                        )
                    },
                    (unix_path(m.address()), m.authkey().clone()),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(join_all(children), vec![(Some(1), true, true); PROCS as usize]);
        assert_eq!(d.get(&"hits".into()).unwrap(), Some(PROCS * ITERS));
        // The looked-up proxy is the registered object, not a copy.
        let again: DictProxy<String, i64> = m.get("counts").unwrap();
        assert_eq!(again, d);

        let err = m.get::<ListProxy<i64>>("counts").unwrap_err();
        match &err {
            ManagerError::Remote(RemoteError::WrongType {
                name,
                registered,
                requested,
            }) => {
                assert_eq!(name, "counts");
                assert!(registered.contains("DictProxy<alloc::string::String, i64>"), "{err}");
                assert!(requested.contains("ListProxy<i64>"), "{err}");
            }
            other => panic!("expected WrongType, got {other:?}"),
        }
        // A name is registered once: a second registration fails and keeps the first.
        let other = m.dict::<String, i64>().unwrap();
        assert!(matches!(
            m.register("counts", &other),
            Err(ManagerError::Remote(RemoteError::NameTaken(n))) if n == "counts"
        ));
        assert_eq!(m.get::<DictProxy<String, i64>>("counts").unwrap(), d);
        // A proxy of another manager's server cannot be registered here.
        let m2 = Manager::start().unwrap();
        let foreign = m2.dict::<String, i64>().unwrap();
        assert!(matches!(
            m.register("foreign", &foreign),
            Err(ManagerError::Remote(RemoteError::BadRequest(_)))
        ));
        assert!(matches!(
            m.get::<DictProxy<String, i64>>("foreign"),
            Err(ManagerError::Remote(RemoteError::NotRegistered(_)))
        ));
    }

    /// A server on loopback TCP with a dict and a user's object registered by name; a child
    /// that knows only the port and the key connects over TCP, finds both and updates them,
    /// and registers an object of its own that the parent then finds.
    #[test]
    fn registered_by_name_over_tcp() {
        let _r = Reaper::new();
        let key = AuthKey::from(b"by-name".to_vec());
        let m = Manager::builder()
            .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .authkey(key.clone())
            .start()
            .unwrap();
        let d = m.dict::<String, String>().unwrap();
        m.register("config", &d).unwrap();
        let t = TallyProxy::new(&m, new_counts, "by name".to_string()).unwrap();
        m.register("tally", &t).unwrap();
        let child = spawn_with_args(
            |(port, key): (u16, AuthKey)| {
                let address = Address::Tcp(([127, 0, 0, 1], port).into());
                let m = Manager::connect(&address, key).unwrap();
                let d: DictProxy<String, String> = m.get("config").unwrap();
                d.insert(&"mode".into(), &"fast".into()).unwrap();
                let t: TallyProxy = m.get("tally").unwrap();
                t.add(5).unwrap();
                let q = m.queue::<u32>(None).unwrap();
                q.put(&42).unwrap();
                m.register("from-child", &q).unwrap();
                (
                    t.label().unwrap(),
                    matches!(
                        m.get::<GateProxy>("tally"),
                        Err(ManagerError::Remote(RemoteError::WrongType { .. }))
                    ),
                    matches!(
                        m.get::<TallyProxy>("nobody"),
                        Err(ManagerError::Remote(RemoteError::NotRegistered(_)))
                    ),
                )
            },
            (tcp_port(m.address()), key.clone()),
        )
        .unwrap();
        assert_eq!(join_all(vec![child]), [("by name".to_string(), true, true)]);
        assert_eq!(d.get(&"mode".into()).unwrap().as_deref(), Some("fast"));
        assert_eq!(t.total().unwrap(), 5);
        // An unrelated client over TCP finds what the child registered.
        let remote = Manager::connect(m.address(), key).unwrap();
        let q: QueueProxy<u32> = remote.get("from-child").unwrap();
        assert_eq!(q.get_timeout(WAIT).unwrap(), Some(42));
        assert!(matches!(
            remote.get::<QueueProxy<i32>>("from-child"),
            Err(ManagerError::Remote(RemoteError::WrongType { .. }))
        ));
    }
}

/// Variant indices of `Op` (`src/manager/protocol.rs`) the forged frames use.
const OP_LOAD: u64 = 21;
const OP_MODIFY: u64 = 23;

/// Postcard's unsigned varint.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A `Hello` naming this test binary, as a client of the server's own build sends it.
fn forged_hello() -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata("/proc/self/exe").unwrap();
    let mut out = vec![1]; // Some
    varint(&mut out, st.dev());
    varint(&mut out, st.ino());
    for signed in [
        st.size() as i64,
        st.mtime() * 1_000_000_000 + st.mtime_nsec(),
    ] {
        varint(&mut out, ((signed << 1) ^ (signed >> 63)) as u64);
    }
    out
}

fn unix_path(address: &Address) -> std::path::PathBuf {
    match address {
        Address::Unix(p) => p.clone(),
        other => panic!("expected a Unix socket address, got {other:?}"),
    }
}

fn tcp_port(address: &Address) -> u16 {
    match address {
        Address::Tcp(a) => a.port(),
        other => panic!("expected a TCP address, got {other:?}"),
    }
}
