//! Cancelling pool tasks (issue 16): `AsyncResult::cancel`, `TaskFuture::cancel_running`,
//! `Imap::cancel` and dropping an `Imap`. A queued task never runs; a running task's worker
//! is killed and replaced and the task fails with `Cancelled`; a task that finished first
//! keeps its value; no other task is harmed and no worker is leaked. Marker files tell which
//! tasks started, since a cancelled task's worker is gone.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multiproc::{Pool, ProcessPoolExecutor, pool::TaskError};

/// A directory of marker files for one test under one start method, removed on drop.
struct Marks(PathBuf);

impl Marks {
    fn new(test: &str) -> Self {
        let method = format!("{:?}", multiproc::get_start_method());
        let dir = std::env::temp_dir().join(format!(
            "multiproc-cancel-{test}-{method}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the markers' directory");
        Marks(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.0).map_or(0, |d| d.count())
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Appends a byte to `path` (one per run), then sleeps `ms`; returns `ms`.
fn mark_then_sleep((path, ms): (PathBuf, u64)) -> u64 {
    let mut runs = std::fs::read(&path).unwrap_or_default();
    runs.push(0);
    std::fs::write(&path, runs).expect("write the marker");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn runs(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// `3 * x`, after a short sleep: tens of microseconds for most, 20 ms for one in 40, so that
/// cancels meet queued, running and finished tasks.
fn triple(x: u64) -> u64 {
    let us = if x.is_multiple_of(40) {
        20_000
    } else {
        (x % 5) * 20
    };
    std::thread::sleep(Duration::from_micros(us));
    3 * x
}

/// After `close` and `join`: no worker left, not even a zombie.
fn assert_no_worker_left(pool: &Pool) {
    pool.close();
    pool.join().unwrap();
    assert!(pool.worker_pids().is_empty());
    assert!(multiproc::active_children().is_empty());
    assert!(
        common::eventually(common::WAIT, || common::os_children().is_empty()),
        "children left: {:?}",
        common::os_children()
    );
}

start_method_matrix! {
    #[test]
    fn a_queued_task_cancelled_never_runs() {
        let _r = common::Reaper::new();
        let m = Marks::new("queued");
        let pool = Pool::new(1).unwrap();
        let long = pool.apply_async(mark_then_sleep, (m.file("long"), 500));
        let queued = pool.apply_async(mark_then_sleep, (m.file("queued"), 0));
        assert!(queued.cancel());
        assert!(queued.cancelled());
        assert!(queued.cancel(), "cancelling twice still says cancelled");
        assert_eq!(long.get().unwrap(), 500);
        assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        assert!(matches!(queued.get(), Err(TaskError::Cancelled)));
        assert_eq!(runs(&m.file("queued")), 0, "the cancelled task ran");
        assert_no_worker_left(&pool);
    }

    #[test]
    fn a_running_task_cancelled_kills_only_its_worker_and_is_not_retried() {
        let _r = common::Reaper::new();
        let m = Marks::new("running");
        // Retries and a death cap: a cancel must neither be retried nor count as a death.
        let pool = Pool::builder()
            .processes(2)
            .retries(3)
            .max_worker_deaths_per_task(1)
            .build()
            .unwrap();
        let before = pool.worker_pids();
        let long = pool.apply_async(mark_then_sleep, (m.file("long"), 60_000));
        let other = pool.apply_async(mark_then_sleep, (m.file("other"), 1_000));
        assert!(common::eventually(common::WAIT, || runs(&m.file("long")) == 1
            && runs(&m.file("other")) == 1));
        let t0 = Instant::now();
        assert!(long.cancel());
        assert!(t0.elapsed() < Duration::from_secs(30), "cancel waited for the task");
        assert!(long.cancelled());
        assert!(matches!(long.get(), Err(TaskError::Cancelled)));
        // The other task, on the other worker, is unharmed.
        assert_eq!(other.get().unwrap(), 1_000);
        assert_eq!(runs(&m.file("long")), 1, "a cancelled task was run again");
        // One worker was replaced; the pool has its size and goes on.
        let after = pool.worker_pids();
        assert_eq!(after.len(), 2);
        assert_eq!(after.iter().filter(|p| before.contains(p)).count(), 1, "{before:?} {after:?}");
        assert_eq!(pool.apply(nap, 2).unwrap(), 2);
        assert_no_worker_left(&pool);
    }

    #[test]
    fn a_finished_task_keeps_its_value() {
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        let pids = pool.worker_pids();
        let done = pool.apply_async(nap, 1);
        assert!(done.wait_timeout(common::WAIT));
        assert!(!done.cancel());
        assert!(!done.cancelled());
        assert_eq!(done.get().unwrap(), 1);
        assert_eq!(pool.worker_pids(), pids, "no worker was killed");
        assert_no_worker_left(&pool);
    }

    #[test]
    fn a_map_async_result_cancels_its_chunks() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        let r = pool.map_async(nap, vec![60_000u64; 8]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(TaskError::Cancelled)));
        assert_eq!(pool.map(nap, [1, 2]).unwrap(), vec![1, 2]);
        assert_no_worker_left(&pool);
    }

    /// Thousands of short tasks, with cancels at random moments: every task ends once, with
    /// its value or `Cancelled`, as its cancel said; no other error (no task harmed by
    /// another's cancel); no worker left over.
    #[test]
    fn random_cancels_lose_and_double_nothing() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("random_cancels_lose_and_double_nothing");
        let pool = Pool::new(2).unwrap();
        const N: u64 = 2000;
        let mut results = Vec::new();
        let mut said = vec![None; N as usize];
        let mut pids: std::collections::HashSet<u32> = pool.worker_pids().into_iter().collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        // In batches of 20: submit, then cancel two of them at a random moment, when they may
        // be queued in the pool, queued on a worker, running or done.
        for batch in 0..N / 20 {
            for x in batch * 20..(batch + 1) * 20 {
                results.push(pool.apply_async(triple, x));
            }
            // Wait for a random task of the batch, then cancel around it: tasks before it
            // are mostly done, those just after it running or queued on a worker.
            let j = (batch * 20 + rng.below(20)) as usize;
            if said[j].is_none() && rng.below(3) > 0 {
                assert!(results[j].wait_timeout(common::WAIT));
            }
            std::thread::sleep(Duration::from_micros(rng.below(100)));
            for _ in 0..2 {
                let i = (j + rng.below(4) as usize).saturating_sub(1).min(results.len() - 1);
                if said[i].is_none() {
                    said[i] = Some(results[i].cancel());
                    pids.extend(pool.worker_pids());
                }
            }
            assert!(Instant::now() < deadline, "submitting took too long");
        }
        let (mut values, mut cancelled) = (0, 0);
        for (i, mut r) in results.into_iter().enumerate() {
            match r.get_timeout(common::WAIT) {
                Ok(v) => {
                    assert_eq!(v, 3 * i as u64);
                    assert_ne!(said[i], Some(true), "task {i}: cancel said yes, value came");
                    values += 1;
                }
                Err(TaskError::Cancelled) => {
                    assert_eq!(said[i], Some(true), "task {i}: cancelled, cancel said no");
                    cancelled += 1;
                }
                Err(e) => panic!("task {i}: {e:?}"),
            }
        }
        assert_eq!(values + cancelled, N as usize);
        assert!(cancelled > 0, "no cancel took effect");
        // Each worker beyond the first two replaced one killed by a cancel.
        eprintln!("{values} values, {cancelled} cancelled, {} workers", pids.len());
        assert_eq!(pool.worker_pids().len(), 2);
        assert_no_worker_left(&pool);
    }

    #[test]
    fn executor_cancel_running_and_random_cancels() {
        let _r = common::Reaper::new();
        let mut rng = common::Rng::seeded("executor_cancel_running_and_random_cancels");
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let long = ex.submit(nap, 60_000);
        let pids = ex.worker_pids();
        assert!(common::eventually(common::WAIT, || long.running()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!long.cancel(), "Python's cancel leaves a running task alone");
        assert!(long.cancel_running());
        assert!(matches!(long.result(), Err(TaskError::Cancelled)));
        assert_ne!(ex.worker_pids(), pids);

        let futures: Vec<_> = (0..500u64).map(|x| ex.submit(triple, x)).collect();
        let mut said = vec![None; futures.len()];
        for _ in 0..60 {
            let i = rng.below(futures.len() as u64) as usize;
            if said[i].is_none() {
                said[i] = Some(futures[i].cancel_running());
            }
            std::thread::sleep(Duration::from_micros(rng.below(500)));
        }
        for (i, mut f) in futures.into_iter().enumerate() {
            match f.result_timeout(common::WAIT) {
                Ok(v) => {
                    assert_eq!(v, 3 * i as u64);
                    assert_ne!(said[i], Some(true), "task {i}");
                }
                Err(TaskError::Cancelled) => assert_eq!(said[i], Some(true), "task {i}"),
                Err(e) => panic!("task {i}: {e:?}"),
            }
        }
        ex.shutdown(true, false);
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn imap_cancel_ends_each_item_once() {
        let _r = common::Reaper::new();
        let pool = Pool::new(2).unwrap();
        for ordered in [true, false] {
            let input: Vec<u64> = (0..300).collect();
            let mut it = if ordered {
                pool.imap(triple, input)
            } else {
                pool.imap_unordered(triple, input)
            };
            let mut seen = Vec::new();
            for _ in 0..20 {
                seen.push(it.next().unwrap().unwrap());
            }
            it.cancel();
            let mut cancelled = 0;
            for r in it {
                match r {
                    Ok(v) => seen.push(v),
                    Err(TaskError::Cancelled) => cancelled += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            if ordered {
                // In order, values first, then some cancelled in between: each at its place.
                assert!(seen.iter().enumerate().take(20).all(|(i, v)| *v == 3 * i as u64));
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), seen.len(), "a value came twice");
            assert!(seen.iter().all(|v| v % 3 == 0 && *v < 900));
            assert!(seen.len() + cancelled < 300, "the input was pulled after the cancel");
            assert!(seen.len() + cancelled >= 20);
        }
        assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        assert_no_worker_left(&pool);
    }

    #[test]
    fn dropping_an_imap_cancels_its_queued_tasks() {
        let _r = common::Reaper::new();
        let m = Marks::new("drop");
        let pool = Pool::new(1).unwrap();
        let items: Vec<(PathBuf, u64)> = (0..20)
            .map(|i| (m.file(&format!("t{i}")), if i == 0 { 200 } else { 30 }))
            .collect();
        let mut it = pool.imap(mark_then_sleep, items);
        assert_eq!(it.next().unwrap().unwrap(), 200);
        drop(it);
        // Let whatever was not cancelled run (one task may have started just before).
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        assert!(m.count() <= 3, "{} of 20 tasks ran", m.count());
        assert_no_worker_left(&pool);
    }
}
