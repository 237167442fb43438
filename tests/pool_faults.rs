//! Fault injection for the pool: hundreds of tasks, with panics, SIGKILL, SIGSEGV, abort,
//! `exit` and stuck tasks at seeded random points, and workers SIGKILLed from outside at random
//! moments. Every task must end with its value or with the error that says what happened,
//! every wait is bounded, and no process of ours is left afterwards.
//!
//! The seed is printed; rerun one with `MULTIPROC_SEED=<seed> cargo nextest run pool_faults`.
//! CPython's `test_concurrent_futures` crash tests (`ExecutorDeadlockTest`) are the model;
//! Python's `Pool` hangs in most of these scenarios.

mod common;

use std::time::{Duration, Instant};

use multiproc::{Pool, pool::TaskError, pool::WorkerExit};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Fault {
    None,
    Panic,
    Kill,
    Segv,
    Abort,
    Exit,
    Stuck,
}

/// Sends `sig` to this process through kill(1) until it ends the process. (Rust's runtime
/// catches the first SIGSEGV to tell stack overflows apart, then restores the default action,
/// as a real segfault that repeats would see.)
fn signal_self(sig: &str) -> ! {
    let me = std::process::id().to_string();
    for _ in 0..100 {
        let _ = std::process::Command::new("kill").args([sig, &me]).status();
        std::thread::sleep(Duration::from_millis(10));
    }
    unreachable!("signal {sig} did not end the worker");
}

fn task((i, fault): (u64, Fault)) -> u64 {
    match fault {
        Fault::None => {
            std::thread::sleep(Duration::from_micros(i % 500));
            i * 2
        }
        Fault::Panic => panic!("injected panic in task {i}"),
        Fault::Kill => signal_self("-KILL"),
        Fault::Segv => signal_self("-SEGV"),
        Fault::Abort => std::process::abort(),
        Fault::Exit => std::process::exit(42),
        Fault::Stuck => {
            std::thread::sleep(Duration::from_secs(60));
            i
        }
    }
}

// Generous: a panicking task prints a backtrace first, which takes a while in a debug build.
const LIMIT: Duration = Duration::from_secs(4);

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn injected_faults_fail_only_their_tasks() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("injected_faults_fail_only_their_tasks");
        let mut stuck = 0;
        let faults: Vec<Fault> = (0..400)
            .map(|_| match rng.below(100) {
                0..=2 => Fault::Panic,
                3..=4 => Fault::Kill,
                5 => Fault::Segv,
                6 => Fault::Abort,
                7 => Fault::Exit,
                // Each stuck task costs the time limit: at most two.
                8 if rng.below(3) == 0 && stuck < 2 => {
                    stuck += 1;
                    Fault::Stuck
                }
                _ => Fault::None,
            })
            .collect();
        let t0 = Instant::now();
        let pool = Pool::builder()
            .processes(3)
            .task_timeout(LIMIT)
            .build()
            .unwrap();
        let results: Vec<_> = faults
            .iter()
            .enumerate()
            .map(|(i, &f)| pool.apply_async(task, (i as u64, f)))
            .collect();
        for (i, (r, fault)) in results.into_iter().zip(&faults).enumerate() {
            let got = r.get();
            let ok = match (fault, &got) {
                (Fault::None, Ok(v)) => *v == 2 * i as u64,
                (Fault::Panic, Err(TaskError::Panic { message, .. })) => {
                    *message == format!("injected panic in task {i}")
                }
                (Fault::Kill, Err(TaskError::WorkerDied { how })) => *how == WorkerExit::Signal(9),
                (Fault::Segv, Err(TaskError::WorkerDied { how })) => *how == WorkerExit::Signal(11),
                (Fault::Abort, Err(TaskError::WorkerDied { how })) => *how == WorkerExit::Signal(6),
                (Fault::Exit, Err(TaskError::WorkerDied { how })) => *how == WorkerExit::Exit(42),
                (Fault::Stuck, Err(TaskError::TimeLimit { limit })) => *limit == LIMIT,
                _ => false,
            };
            assert!(ok, "task {i} with {fault:?} ended as {got:?}");
        }
        eprintln!("400 tasks in {:?}", t0.elapsed());
        pool.close();
        pool.join().unwrap();
        assert!(multiproc::active_children().is_empty());
        assert!(common::eventually(common::WAIT, || common::os_children().is_empty()));
    }

    #[test]
    fn workers_killed_from_outside_at_random_moments() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("workers_killed_from_outside_at_random_moments");
        let pool = Pool::new(3).unwrap();
        let n = 300u64;
        let results: Vec<_> = (0..n)
            .map(|i| pool.apply_async(task, (i, Fault::None)))
            .collect();
        let mut kills = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while results.iter().any(|r| !r.ready()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            let children = multiproc::active_children();
            if children.is_empty() {
                continue;
            }
            let victim = &children[rng.below(children.len() as u64) as usize];
            if victim.kill().is_ok() {
                kills += 1;
            }
        }
        let mut died = 0;
        for (i, r) in results.into_iter().enumerate() {
            match r.get() {
                Ok(v) => assert_eq!(v, 2 * i as u64),
                Err(TaskError::WorkerDied {
                    how: WorkerExit::Signal(9),
                }) => died += 1,
                Err(e) => panic!("task {i}: unexpected {e}"),
            }
        }
        eprintln!("{kills} kills, {died} tasks lost to them");
        // Let the pool notice the last kill before using it again.
        std::thread::sleep(Duration::from_millis(200));
        assert!(died <= kills, "{died} tasks died but only {kills} kills");
        // The pool recovered its size and still works.
        assert_eq!(pool.map(|x: u64| x + 1, 0..100).unwrap().len(), 100);
        drop(pool);
        assert!(multiproc::active_children().is_empty());
        assert!(common::eventually(common::WAIT, || common::os_children().is_empty()));
    }

    #[test]
    fn terminate_during_faults_returns_every_caller() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("terminate_during_faults_returns_every_caller");
        let pool = Pool::new(2).unwrap();
        let results: Vec<_> = (0..200u64)
            .map(|i| {
                let f = if rng.below(20) == 0 {
                    Fault::Kill
                } else {
                    Fault::None
                };
                pool.apply_async(task, (i, f))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.below(50)));
        pool.terminate();
        pool.join().unwrap();
        for r in results {
            assert!(r.ready(), "terminate left a task unfinished");
            match r.get() {
                Ok(_) | Err(TaskError::Terminated) | Err(TaskError::WorkerDied { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn close_and_join_deliver_every_result_despite_crashes() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("close_and_join_deliver_every_result_despite_crashes");
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(25)
            .build()
            .unwrap();
        let faults: Vec<Fault> = (0..200)
            .map(|_| match rng.below(20) {
                0 => Fault::Kill,
                1 => Fault::Exit,
                2 => Fault::Panic,
                _ => Fault::None,
            })
            .collect();
        let results: Vec<_> = faults
            .iter()
            .enumerate()
            .map(|(i, &f)| pool.apply_async(task, (i as u64, f)))
            .collect();
        pool.close();
        pool.join().unwrap();
        for (i, (r, fault)) in results.into_iter().zip(&faults).enumerate() {
            assert!(r.ready(), "task {i} not finished after join");
            match (fault, r.get()) {
                (Fault::None, Ok(v)) => assert_eq!(v, 2 * i as u64),
                (Fault::Kill | Fault::Exit, Err(TaskError::WorkerDied { .. })) => {}
                (Fault::Panic, Err(TaskError::Panic { .. })) => {}
                (f, got) => panic!("task {i} with {f:?} ended as {got:?}"),
            }
        }
        assert!(multiproc::active_children().is_empty());
    }
}
