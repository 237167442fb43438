//! `Pool`: Python's `multiprocessing.Pool` surface, and the promise that nothing hangs: a task
//! whose worker dies, panics or runs out of time fails alone, the worker is replaced, and no
//! process of ours is left behind. Mirrors CPython's `_TestPool` scenarios where they apply.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, pool::TaskError, pool::WorkerExit};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// SIGKILL to ourselves without unsafe code: `kill -9 <pid>`, then wait to be killed.
fn rustix_free_kill_self() {
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &me])
        .status();
    std::thread::sleep(Duration::from_secs(30));
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn set_marker(value: u64) {
    MARKER.store(value, std::sync::atomic::Ordering::SeqCst);
}

static MARKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn pool_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pool>();
    send_sync::<multiproc::ProcessPoolExecutor>();
    send_sync::<multiproc::pool::AsyncResult<Vec<u8>>>();
    send_sync::<multiproc::pool::TaskFuture<String>>();
    send_sync::<TaskError>();
}

/// The core promises under every start method this platform has (CPython runs each pool suite
/// per start method the same way).
#[test]
fn every_start_method_runs_tasks_and_survives_crashes() {
    let _r = common::Reaper::new();
    for method in multiproc::get_all_start_methods() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .initializer(set_marker, 7)
            .max_tasks_per_child(50)
            .build()
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let want: Vec<u64> = (0..200).map(|x| x * x).collect();
        assert_eq!(
            pool.map_chunked(square, 0..200, 3).unwrap(),
            want,
            "{method}"
        );
        let crashed = pool.apply(|_: ()| -> u8 { std::process::abort() }, ());
        assert!(
            matches!(
                crashed,
                Err(TaskError::WorkerDied {
                    how: WorkerExit::Signal(6)
                })
            ),
            "{method}: {crashed:?}"
        );
        let marker = pool.apply(|_: ()| MARKER.load(std::sync::atomic::Ordering::SeqCst), ());
        assert_eq!(
            marker.unwrap(),
            7,
            "{method}: the replacement ran the initializer"
        );
        pool.close();
        pool.join().unwrap();
    }
    assert!(multiproc::active_children().is_empty());
}

/// Arguments that serialize but refuse to deserialize (in the worker).
#[derive(Debug)]
struct Undecodable;

impl serde::Serialize for Undecodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for Undecodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this type never decodes"))
    }
}

/// A value that refuses to serialize (in the worker).
#[derive(Debug)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value never encodes"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <() as serde::Deserialize>::deserialize(d).map(|()| Unencodable)
    }
}

/// A value that encodes, but whose decoding panics.
#[derive(Debug)]
struct PanicsOnDecode;

impl serde::Serialize for PanicsOnDecode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only the pool's side ever decodes it (tasks return it, nobody passes it).
        <() as serde::Deserialize>::deserialize(d)?;
        panic!("decoding panic")
    }
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn apply_map_starmap() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        let want: Vec<u64> = (0..1000).map(|x| x * x).collect();
        assert_eq!(pool.map(square, 0..1000).unwrap(), want);
        assert_eq!(pool.map_chunked(square, 0..1000, 7).unwrap(), want);
        assert_eq!(
            pool.map(square, Vec::<u64>::new()).unwrap(),
            Vec::<u64>::new()
        );
        let sums = pool
            .starmap(
                |(a, b): (String, usize)| a.len() + b,
                vec![("ab".into(), 1), ("".into(), 5)],
            )
            .unwrap();
        assert_eq!(sums, vec![3, 5]);
        assert_eq!(
            pool.starmap_async(|(a, b): (u8, u8)| a * b, vec![(2, 3)])
                .get()
                .unwrap(),
            vec![6]
        );
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn async_result_surface() {
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        let mut r = pool.apply_async(sleep_ms, 300);
        assert!(!r.ready());
        assert_eq!(r.successful(), None);
        assert!(
            r.get_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout()
        );
        assert!(r.wait_timeout(common::WAIT));
        assert!(r.ready());
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get_timeout(common::WAIT).unwrap(), 300);
        assert!(matches!(
            r.get_timeout(common::WAIT),
            Err(TaskError::AlreadyTaken)
        ));
    }

    #[test]
    fn callbacks_run_before_ready() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let ok = pool.apply_async_with(square, 3, move |v| tx.send(Ok(*v)).unwrap(), |_| {});
        let bad = pool.apply_async_with(
            |_: ()| -> u8 { panic!("bad task") },
            (),
            |_| {},
            move |e| tx2.send(Err(e.to_string())).unwrap(),
        );
        assert_eq!(ok.get().unwrap(), 9);
        assert!(bad.get().unwrap_err().is_panic());
        let mut got: Vec<_> = rx.iter().take(2).collect();
        got.sort();
        assert_eq!(got[0], Ok(9));
        assert!(
            matches!(&got[1], Err(m) if m.contains("bad task")),
            "{got:?}"
        );

        let (tx, rx) = mpsc::channel();
        let r = pool.map_async_with(
            square,
            1..=3,
            Some(1),
            move |v| tx.send(v.clone()).unwrap(),
            |_| {},
        );
        assert_eq!(r.get().unwrap(), vec![1, 4, 9]);
        assert_eq!(rx.recv_timeout(common::WAIT).unwrap(), vec![1, 4, 9]);
    }

    #[test]
    fn panics_fail_only_their_task() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let results: Vec<_> = pool
            .imap(
                |x: u32| {
                    if x.is_multiple_of(3) {
                        panic!("multiple of three: {x}")
                    } else {
                        x
                    }
                },
                0..30,
            )
            .collect();
        assert_eq!(results.len(), 30);
        for (x, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(v as usize, x),
                Err(TaskError::Panic { message, location }) => {
                    assert_eq!(x % 3, 0);
                    assert_eq!(message, format!("multiple of three: {x}"));
                    assert!(location.unwrap().contains("pool.rs"));
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // map fails with the first failing chunk.
        let e = pool
            .map(|x: u32| if x == 5 { panic!("five") } else { x }, 0..10)
            .unwrap_err();
        assert!(e.is_panic());
    }

    #[test]
    fn imap_is_lazy_and_ordered() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        // An endless input: only what is consumed (plus a bounded window) is ever pulled.
        let pulled = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let p = pulled.clone();
        let input = (0u64..).inspect(move |_| p.set(p.get() + 1));
        let got: Vec<u64> = pool
            .imap(square, input)
            .take(100)
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, (0..100).map(|x| x * x).collect::<Vec<_>>());
        assert!(pulled.get() < 1000, "pulled {} items", pulled.get());

        // On a fresh pool (the window above left tasks behind), the slow task comes last.
        drop(pool);
        let pool = Pool::new(2).unwrap();
        let mut got: Vec<u64> = pool
            .imap_unordered(sleep_ms, vec![200, 1, 2, 3])
            .map(Result::unwrap)
            .collect();
        assert_eq!(got[got.len() - 1], 200, "the slow one comes last: {got:?}");
        got.sort();
        assert_eq!(got, vec![1, 2, 3, 200]);
        let chunked: Vec<u64> = pool
            .imap_chunked(square, 0..50, 7)
            .map(Result::unwrap)
            .collect();
        assert_eq!(chunked.len(), 50);
    }

    #[test]
    fn close_join_delivers_everything() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let results: Vec<_> = (0..200).map(|i| pool.apply_async(square, i)).collect();
        pool.close();
        assert!(matches!(pool.apply(square, 1), Err(TaskError::PoolClosed)));
        pool.join().unwrap();
        for (i, r) in results.into_iter().enumerate() {
            assert!(r.ready());
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        assert!(common::eventually(common::WAIT, || {
            multiproc::active_children().is_empty()
        }));
    }

    #[test]
    fn join_before_close_is_an_error() {
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.join().unwrap_err().kind(), ErrorKind::StillRunning);
        assert_eq!(Pool::new(0).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(
            Pool::builder()
                .max_tasks_per_child(0)
                .build()
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn terminate_stops_at_once() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let slow: Vec<_> = (0..6).map(|_| pool.apply_async(sleep_ms, 20_000)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        pool.terminate();
        pool.join().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        for r in slow {
            assert!(matches!(r.get(), Err(TaskError::Terminated)));
        }
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn drop_terminates() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let r = pool.apply_async(sleep_ms, 20_000);
        let t0 = Instant::now();
        drop(pool);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(r.get(), Err(TaskError::Terminated)));
        assert!(multiproc::active_children().is_empty());
        assert!(
            common::os_children().is_empty(),
            "{:?}",
            common::os_children()
        );
    }

    #[test]
    fn worker_death_fails_its_task_and_is_replaced() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let killed = pool.apply_async(
            |_: ()| -> u8 {
                rustix_free_kill_self();
                0
            },
            (),
        );
        let others: Vec<_> = (0..50).map(|i| pool.apply_async(square, i)).collect();
        match killed.get() {
            Err(TaskError::WorkerDied { how }) => assert_eq!(how, WorkerExit::Signal(9)),
            other => panic!("unexpected {other:?}"),
        }
        for (i, r) in others.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        let exited = pool.apply(|_: ()| -> u8 { std::process::exit(7) }, ());
        assert!(
            matches!(
                exited,
                Err(TaskError::WorkerDied {
                    how: WorkerExit::Exit(7)
                })
            ),
            "{exited:?}"
        );
        let aborted = pool.apply(|_: ()| -> u8 { std::process::abort() }, ());
        assert!(
            matches!(
                aborted,
                Err(TaskError::WorkerDied {
                    how: WorkerExit::Signal(6)
                })
            ),
            "{aborted:?}"
        );
        let e = pool
            .apply(|_: ()| -> u8 { std::process::exit(7) }, ())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "worker process exited with status 7 while running the task"
        );
        // The pool still has its two workers.
        assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
        assert_eq!(multiproc::active_children().len(), 2);
    }

    #[test]
    fn time_limit_kills_and_replaces() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let stuck = pool.apply_async(sleep_ms, 20_000);
        let quick: Vec<_> = (0..20).map(|i| pool.apply_async(square, i)).collect();
        let t0 = Instant::now();
        match stuck.get() {
            Err(TaskError::TimeLimit { limit }) => assert_eq!(limit, Duration::from_millis(300)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(3));
        for (i, r) in quick.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        assert_eq!(pool.apply(sleep_ms, 10).unwrap(), 10);
    }

    #[test]
    fn maxtasksperchild_replaces_workers() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(1)
            .max_tasks_per_child(2)
            .build()
            .unwrap();
        let pids: Vec<u32> = (0..6).map(|_| pool.apply(pid, ()).unwrap()).collect();
        assert_eq!(pids[0], pids[1]);
        assert_ne!(pids[1], pids[2]);
        assert_eq!(pids[2], pids[3]);
        assert_ne!(pids[3], pids[4]);
    }

    #[test]
    fn initializer_runs_in_each_worker() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(2)
            .initializer(set_marker, 42)
            .build()
            .unwrap();
        let seen = pool
            .map_chunked(
                |_: u8| MARKER.load(std::sync::atomic::Ordering::SeqCst),
                0..8,
                1,
            )
            .unwrap();
        assert!(seen.iter().all(|&m| m == 42), "{seen:?}");
        assert_eq!(
            MARKER.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not in the parent"
        );
    }

    #[test]
    fn failing_initializer_breaks_the_pool_without_hanging() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(2)
            .initializer(|_: ()| panic!("no init for you"), ())
            .build()
            .unwrap();
        match pool.apply(square, 1) {
            Err(TaskError::InitializerFailed { message }) => {
                assert!(message.contains("no init for you"))
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(pool);
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn a_long_initializer_failure_neither_blocks_the_worker_nor_join() {
        let _r = common::Reaper::new();
        // Longer than a pipe's default buffer: the pool reads an idle worker's pipe only once
        // the worker has died, so the worker must never block writing why it failed.
        let build = || {
            Pool::builder()
                .processes(2)
                .initializer(|n: usize| panic!("{}", "x".repeat(n)), 200_000)
                .build()
                .unwrap()
        };
        let pool = build();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            pool.close();
            let _ = tx.send(pool.join());
        });
        let joined = rx.recv_timeout(common::WAIT);
        assert!(matches!(joined, Ok(Ok(()))), "{joined:?}");
        let pool = build();
        match pool.apply(square, 1) {
            Err(TaskError::InitializerFailed { message }) => {
                assert!(message.starts_with("xxxx") && message.len() < 10_000);
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(pool);
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn large_arguments_and_values_cross_whole() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        // Far larger than a pipe's buffer, both ways, several at once.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let results: Vec<_> = (0..4u8)
            .map(|k| {
                pool.apply_async(
                    |(v, k): (Vec<u8>, u8)| v.iter().map(|b| b ^ k).collect::<Vec<u8>>(),
                    (big.clone(), k),
                )
            })
            .collect();
        for (k, r) in results.into_iter().enumerate() {
            let got = r.get().unwrap();
            assert_eq!(got.len(), big.len());
            assert!(got.iter().zip(&big).all(|(g, b)| *g == b ^ k as u8));
        }
        let strings: Vec<String> = pool
            .imap(|n: usize| "x".repeat(n), vec![100_000, 1, 200_000])
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            strings.iter().map(String::len).collect::<Vec<_>>(),
            vec![100_000, 1, 200_000]
        );
    }

    #[test]
    fn a_pool_can_be_shared_between_threads() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let pool = &pool;
                s.spawn(move || {
                    let got = pool.map(square, t * 100..(t + 1) * 100).unwrap();
                    assert_eq!(
                        got,
                        (t * 100..(t + 1) * 100).map(|x| x * x).collect::<Vec<_>>()
                    );
                });
            }
        });
    }

    #[test]
    fn progress_bar_does_not_disturb_results() {
        // With the `progress` feature a bar is drawn on stderr (hidden when it is not a terminal);
        // without it the option does nothing. Either way the values are the same.
        let _r = common::Reaper::new();
        let pool = Pool::builder().processes(2).progress(true).build().unwrap();
        assert_eq!(pool.map(square, 0..1000).unwrap().len(), 1000);
        assert_eq!(pool.imap(square, 0..100).filter(Result::is_ok).count(), 100);
        assert_eq!(pool.imap_unordered(square, 0..100).count(), 100);
    }

    #[test]
    fn imap_on_a_terminated_pool_ends_instead_of_pulling_forever() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let mut it = pool.imap(square, 0u64..);
        assert_eq!(it.next().unwrap().unwrap(), 0);
        pool.terminate();
        let rest: Vec<_> = it.collect(); // an endless input: this must still end
        assert!(
            rest[..rest.len() - 1]
                .iter()
                .all(|r| matches!(r, Ok(_) | Err(TaskError::Terminated)))
        );
        assert!(
            matches!(rest.last(), Some(Err(TaskError::PoolClosed))),
            "{:?}",
            rest.last()
        );
    }

    #[test]
    fn tasks_queued_behind_a_slow_one_move_to_an_idle_worker() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        // Many tiny tasks first: the pool learns to queue several per worker.
        assert_eq!(pool.map_chunked(square, 0..2000, 1).unwrap().len(), 2000);
        let t0 = Instant::now();
        let slow = pool.apply_async(sleep_ms, 1500);
        let quick: Vec<_> = (0..40).map(|i| pool.apply_async(square, i)).collect();
        for (i, r) in quick.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        let quick_done = t0.elapsed();
        assert!(!slow.ready());
        assert!(
            quick_done < Duration::from_millis(1000),
            "the quick tasks waited {quick_done:?}"
        );
        assert_eq!(slow.get().unwrap(), 1500);
    }

    #[test]
    fn serialization_failures_are_errors_not_crashes() {
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        match pool.apply(|_: Undecodable| 1u8, Undecodable) {
            Err(TaskError::Process(e)) => {
                assert_eq!(e.kind(), ErrorKind::Decode);
                assert!(e.to_string().contains("could not deserialize"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        match pool.apply(|_: ()| Unencodable, ()) {
            Err(TaskError::Process(e)) => assert_eq!(e.kind(), ErrorKind::Encode),
            other => panic!("unexpected {other:?}"),
        }
        // Arguments that cannot be encoded fail at submission, in the caller.
        match pool
            .apply(|x: u8| x, 1)
            .and(pool.apply(|_: Unencodable| 0u8, Unencodable))
        {
            Err(TaskError::Process(e)) => assert_eq!(e.kind(), ErrorKind::Encode),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(pool.apply(square, 5).unwrap(), 25, "the worker carried on");
    }

    #[test]
    fn a_time_limit_for_one_task() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let unlimited = pool.apply_async(sleep_ms, 800);
        let limited = pool.apply_async_with_time_limit(sleep_ms, 20_000, Duration::from_millis(200));
        let fine = pool.apply_async_with_time_limit(sleep_ms, 10, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(
            matches!(limited.get(), Err(TaskError::TimeLimit { limit }) if limit == Duration::from_millis(200))
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert_eq!(fine.get().unwrap(), 10);
        assert_eq!(
            unlimited.get().unwrap(),
            800,
            "a task without a limit is never cut short"
        );
    }

    #[test]
    fn panicking_callbacks_never_leave_a_result_waiting() {
        // A callback that panics is reported and its result still completes, for every kind
        // of submission and both callbacks (issue 10, item 4).
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let mut map_ok =
            pool.map_async_with(square, 1..=6, Some(2), |_| panic!("map callback"), |_| {});
        assert_eq!(map_ok.get_timeout(common::WAIT).unwrap(), vec![1, 4, 9, 16, 25, 36]);
        let mut map_err = pool.map_async_with(
            |x: u64| if x == 3 { panic!("task three") } else { x },
            1..=6,
            Some(1),
            |_| {},
            |_| panic!("map error callback"),
        );
        assert!(map_err.get_timeout(common::WAIT).unwrap_err().is_panic());
        let mut map_empty =
            pool.map_async_with(square, Vec::<u64>::new(), None, |_| panic!("empty"), |_| {});
        assert_eq!(map_empty.get_timeout(common::WAIT).unwrap(), Vec::<u64>::new());
        let mut star = pool.map_async_with(
            |(a, b): (u64, u64)| a * b,
            vec![(2, 3), (4, 5)],
            None,
            |_| panic!("starmap callback"),
            |_| {},
        );
        assert_eq!(star.get_timeout(common::WAIT).unwrap(), vec![6, 20]);
        let mut apply_ok = pool.apply_async_with(square, 7, |_| panic!("apply callback"), |_| {});
        assert_eq!(apply_ok.get_timeout(common::WAIT).unwrap(), 49);
        let mut apply_err = pool.apply_async_with(
            |_: ()| -> u8 { panic!("task") },
            (),
            |_| {},
            |_| panic!("apply error callback"),
        );
        assert!(apply_err.get_timeout(common::WAIT).unwrap_err().is_panic());
        // The pool's thread survived all of them.
        assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn a_value_whose_decoding_panics_fails_its_result() {
        // The value's `Deserialize` runs on the pool's thread for `apply_async` and
        // `map_async`: a panic there fails the result instead of leaving it waiting.
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        let mut one = pool.apply_async(|_: ()| PanicsOnDecode, ());
        match one.get_timeout(common::WAIT) {
            Err(TaskError::Process(e)) => {
                assert_eq!(e.kind(), ErrorKind::Decode);
                assert!(e.to_string().contains("decoding panic"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut many = pool.map_async(|_: u8| PanicsOnDecode, 0..4u8);
        match many.get_timeout(common::WAIT) {
            Err(TaskError::Process(e)) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
    }

    #[test]
    fn a_slow_initializer_does_not_count_against_the_time_limit() {
        // Issue 10, item 8: a 1.5 s initializer and a 1 s limit failed every task with
        // `TimeLimit` and replaced workers for ever. The clock starts when the worker is ready.
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(2)
            .initializer(nap, 1500)
            .task_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let workers = pool.worker_pids();
        let got = pool
            .map_chunked(|x: u64| (x * x, std::process::id()), 0..6, 1)
            .unwrap();
        for (x, (v, pid)) in got.into_iter().enumerate() {
            assert_eq!(v, (x * x) as u64);
            assert!(workers.contains(&pid), "{pid} not in {workers:?}");
        }
        assert_eq!(pool.worker_pids(), workers, "no worker was replaced");
        // The limit still holds once a worker is ready.
        let t0 = Instant::now();
        match pool.apply(sleep_ms, 20_000) {
            Err(TaskError::TimeLimit { limit }) => assert_eq!(limit, Duration::from_secs(1)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(t0.elapsed() < common::WAIT, "{:?}", t0.elapsed());
        // Its replacement runs the initializer again, and then tasks.
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
    }

    #[test]
    fn worker_pids_lists_the_pools_workers() {
        let _r = common::Reaper::new();
        let pool = Pool::new(3).unwrap();
        let mut pids = pool.worker_pids();
        assert_eq!(pids.len(), 3, "{pids:?}");
        let mut children: Vec<u32> = multiproc::active_children()
            .iter()
            .map(|p| p.pid())
            .collect();
        pids.sort();
        children.sort();
        assert_eq!(pids, children);
        let ran = pool.map_chunked(pid, vec![(); 30], 1).unwrap();
        assert!(ran.iter().all(|p| pids.contains(p)), "{ran:?} vs {pids:?}");
        // A worker killed from outside is replaced, and the list follows.
        let victim = pids[0];
        multiproc::active_children()
            .into_iter()
            .find(|p| p.pid() == victim)
            .expect("the victim is a child")
            .kill()
            .unwrap();
        assert!(common::eventually(common::WAIT, || {
            let now = pool.worker_pids();
            now.len() == 3 && !now.contains(&victim)
        }));
        assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
        pool.terminate();
        pool.join().unwrap();
        assert!(pool.worker_pids().is_empty());
    }
}
