//! `retries`, `retry_panics` and `max_worker_deaths_per_task`: a task whose worker dies is
//! run again; one that keeps killing workers fails with how many times it ran and its last
//! cause; the other tasks are unaffected. Runs are counted in files, since each run of a
//! crashing task is in a fresh worker process.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use multiproc::{Pool, ProcessPoolExecutor, pool::TaskError, pool::WorkerExit};

/// A directory of run counters for one test under one start method, removed on drop.
struct Counters(PathBuf);

impl Counters {
    fn new(test: &str) -> Self {
        let method = format!("{:?}", multiproc::get_start_method());
        let dir = std::env::temp_dir().join(format!(
            "multiproc-retries-{test}-{method}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the counters' directory");
        Counters(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counts a run in `path` (one byte per run) and returns which run this is, from 1.
fn count_run(path: &Path) -> usize {
    let runs = std::fs::read(path).map_or(0, |b| b.len()) + 1;
    std::fs::write(path, vec![0u8; runs]).expect("write the run counter");
    runs
}

/// Ends its worker with `exit(3)` on its first `crashes` runs, then returns which run it was.
fn crashes_then_succeeds((path, crashes): (PathBuf, usize)) -> usize {
    let run = count_run(&path);
    if run <= crashes {
        std::process::exit(3);
    }
    run
}

/// Ends its worker by SIGABRT every time, counting its runs.
fn always_crashes(path: PathBuf) -> usize {
    count_run(&path);
    std::process::abort();
}

/// Panics on its first `panics` runs, then returns which run it was.
fn panics_then_succeeds((path, panics): (PathBuf, usize)) -> usize {
    let run = count_run(&path);
    if run <= panics {
        panic!("injected panic on run {run}");
    }
    run
}

/// `x * x`; crashes its worker on its first run when `x % 7 == 3`.
fn square_crashing_once((dir, x): (PathBuf, u64)) -> u64 {
    if x % 7 == 3 && count_run(&dir.join(format!("item-{x}"))) == 1 {
        std::process::exit(3);
    }
    x * x
}

fn double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(x % 3));
    2 * x
}

fn runs(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn a_task_crashing_twice_succeeds_with_two_retries_and_others_are_unaffected() {
        let _r = common::Reaper::new();
        let c = Counters::new("twice");
        let pool = Pool::builder().processes(2).retries(2).build().unwrap();
        let mut flaky = pool.apply_async(crashes_then_succeeds, (c.file("flaky"), 2));
        let mut doomed = pool.apply_async(always_crashes, c.file("doomed"));
        let others: Vec<_> = (0..40u64).map(|i| pool.apply_async(double, i)).collect();
        assert_eq!(flaky.get_timeout(Duration::from_secs(60)).unwrap(), 3);
        match doomed.get_timeout(Duration::from_secs(60)) {
            Err(TaskError::RetriesExhausted { attempts, last }) => {
                assert_eq!(attempts, 3);
                assert!(
                    matches!(*last, TaskError::WorkerDied { how: WorkerExit::Signal(6) }),
                    "last cause {last:?}"
                );
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        assert_eq!(runs(&c.file("doomed")), 3);
        for (i, mut r) in others.into_iter().enumerate() {
            assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap(), 2 * i as u64);
        }
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn the_death_cap_fails_a_task_before_its_retries_run_out() {
        let _r = common::Reaper::new();
        let c = Counters::new("cap");
        let pool = Pool::builder()
            .processes(2)
            .retries(10)
            .max_worker_deaths_per_task(2)
            .build()
            .unwrap();
        let mut doomed = pool.apply_async(always_crashes, c.file("doomed"));
        let mut once = pool.apply_async(crashes_then_succeeds, (c.file("once"), 1));
        match doomed.get_timeout(Duration::from_secs(60)) {
            Err(e @ TaskError::RetriesExhausted { attempts: 2, .. }) => {
                assert!(e.is_worker_died(), "{e:?}");
                assert!(e.to_string().contains("failed 2 times"), "{e}");
            }
            other => panic!("expected RetriesExhausted after 2 runs, got {other:?}"),
        }
        assert_eq!(runs(&c.file("doomed")), 2);
        assert_eq!(once.get_timeout(Duration::from_secs(60)).unwrap(), 2);
        assert_eq!(pool.map(double, 0..20u64).unwrap(), (0..20).map(|x| 2 * x).collect::<Vec<_>>());
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn without_retries_a_crash_fails_at_once_with_its_cause() {
        let _r = common::Reaper::new();
        let c = Counters::new("none");
        let pool = Pool::builder().processes(1).build().unwrap();
        match pool.apply(crashes_then_succeeds, (c.file("flaky"), 1)) {
            Err(TaskError::WorkerDied { how: WorkerExit::Exit(3) }) => {}
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert_eq!(runs(&c.file("flaky")), 1);
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn map_and_imap_keep_their_order_through_retries() {
        let _r = common::Reaper::new();
        let c = Counters::new("order");
        let pool = Pool::builder().processes(2).retries(1).build().unwrap();
        let expected: Vec<u64> = (0..60u64).map(|x| x * x).collect();
        let items = |tag: &str| {
            let dir = c.file(tag);
            std::fs::create_dir_all(&dir).unwrap();
            (0..60u64).map(move |x| (dir.clone(), x))
        };
        assert_eq!(pool.map_chunked(square_crashing_once, items("map"), 4).unwrap(), expected);
        let got: Vec<u64> = pool
            .imap(square_crashing_once, items("imap"))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, expected);
        let mut got: Vec<u64> = pool
            .imap_unordered(square_crashing_once, items("unordered"))
            .collect::<Result<_, _>>()
            .unwrap();
        got.sort_unstable();
        assert_eq!(got, expected);
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn panics_are_retried_only_when_asked() {
        let _r = common::Reaper::new();
        let c = Counters::new("panics");
        let pool = Pool::builder().processes(1).retries(2).build().unwrap();
        match pool.apply(panics_then_succeeds, (c.file("plain"), 1)) {
            Err(TaskError::Panic { message, .. }) => assert!(message.contains("run 1"), "{message}"),
            other => panic!("expected Panic, got {other:?}"),
        }
        pool.close();
        pool.join().unwrap();

        let pool = Pool::builder().processes(1).retries(2).retry_panics(true).build().unwrap();
        assert_eq!(pool.apply(panics_then_succeeds, (c.file("opted"), 2)).unwrap(), 3);
        match pool.apply(panics_then_succeeds, (c.file("too-many"), 5)) {
            Err(e @ TaskError::RetriesExhausted { attempts: 3, .. }) => {
                assert!(e.is_panic(), "{e:?}");
                assert!(matches!(e.last_cause(), TaskError::Panic { message, .. } if message.contains("run 3")));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn the_executor_retries_too() {
        let _r = common::Reaper::new();
        let c = Counters::new("executor");
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .retries(2)
            .max_worker_deaths_per_task(3)
            .build()
            .unwrap();
        let flaky = ex.submit(crashes_then_succeeds, (c.file("flaky"), 2));
        let fine = ex.submit(double, 21);
        assert_eq!(flaky.result().unwrap(), 3);
        assert_eq!(fine.result().unwrap(), 42);
        ex.shutdown(true, false);
    }
}

#[test]
fn a_zero_death_cap_is_refused() {
    match Pool::builder()
        .processes(1)
        .max_worker_deaths_per_task(0)
        .build()
    {
        Err(e) => assert!(e.to_string().contains("max_worker_deaths_per_task"), "{e}"),
        Ok(_) => panic!("a zero cap was accepted"),
    }
}
