//! `ProcessPoolExecutor`: Python's `concurrent.futures` surface (submit, map with a timeout,
//! as_completed, cancel, shutdown), futures awaited without a runtime, and a dead worker that
//! does not break the executor (where Python raises `BrokenProcessPool`).

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use multiproc::{ProcessPoolExecutor, pool::TaskError, pool::WorkerExit, pool::as_completed};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A minimal executor for one future: parks the thread until woken, with a deadline.
fn block_on<F: Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn submit_and_result() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let futures: Vec<_> = (0..100).map(|i| ex.submit(square, i)).collect();
        for (i, f) in futures.into_iter().enumerate() {
            assert_eq!(f.result().unwrap(), (i * i) as u64);
        }
        let mut slow = ex.submit(sleep_ms, 300);
        assert!(
            slow.result_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout()
        );
        assert!(!slow.done());
        assert_eq!(slow.result_timeout(common::WAIT).unwrap(), 300);
    }

    #[test]
    fn futures_can_be_awaited() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let a = ex.submit(sleep_ms, 100);
        let b = ex.submit(square, 12);
        let both = async { (a.await, b.await) };
        let (a, b) = block_on(both, common::WAIT).expect("the futures completed");
        assert_eq!(a.unwrap(), 100);
        assert_eq!(b.unwrap(), 144);
    }

    #[test]
    fn cancel_only_before_start() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let running = ex.submit(sleep_ms, 300);
        let queued = ex.submit(sleep_ms, 1);
        assert!(common::eventually(common::WAIT, || running.running()));
        assert!(!running.cancel());
        assert!(queued.cancel());
        assert!(queued.cancelled() && queued.done());
        assert!(matches!(queued.result(), Err(TaskError::Cancelled)));
        assert_eq!(running.result().unwrap(), 300);
    }

    #[test]
    fn map_with_timeout() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let got: Vec<u64> = ex
            .map(square, 0..20, Some(common::WAIT))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, (0..20).map(|x| x * x).collect::<Vec<_>>());
        let t0 = Instant::now();
        let mut it = ex.map(
            sleep_ms,
            vec![1, 2_000, 1],
            Some(Duration::from_millis(700)),
        );
        assert_eq!(it.next().unwrap().unwrap(), 1);
        assert!(it.next().unwrap().unwrap_err().is_timeout());
        assert!(it.next().is_none());
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn as_completed_in_finishing_order() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let futures = vec![
            ex.submit(sleep_ms, 400),
            ex.submit(sleep_ms, 1),
            ex.submit(sleep_ms, 2),
        ];
        let order: Vec<u64> = as_completed(futures, Some(common::WAIT))
            .map(|f| f.unwrap().result().unwrap())
            .collect();
        assert_eq!(order.last(), Some(&400), "{order:?}");
        assert_eq!(order.len(), 3);

        let futures = vec![ex.submit(sleep_ms, 1_000)];
        let mut it = as_completed(futures, Some(Duration::from_millis(100)));
        assert!(it.next().unwrap().unwrap_err().is_timeout());
        assert!(it.next().is_none());
    }

    #[test]
    fn a_dead_worker_does_not_break_the_executor() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let dead = ex.submit(|code: i32| -> u8 { std::process::exit(code) }, 3);
        let fine: Vec<_> = (0..20).map(|i| ex.submit(square, i)).collect();
        assert!(matches!(
            dead.result(),
            Err(TaskError::WorkerDied {
                how: WorkerExit::Exit(3)
            })
        ));
        for (i, f) in fine.into_iter().enumerate() {
            assert_eq!(f.result().unwrap(), (i * i) as u64);
        }
        assert_eq!(ex.submit(square, 3).result().unwrap(), 9);
    }

    #[test]
    fn shutdown_waits_or_cancels() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let running = ex.submit(sleep_ms, 200);
        assert!(common::eventually(common::WAIT, || running.running()));
        let queued: Vec<_> = (0..5).map(|_| ex.submit(sleep_ms, 200)).collect();
        let t0 = Instant::now();
        ex.shutdown(true, true);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(running.result().unwrap(), 200);
        for f in queued {
            assert!(matches!(f.result(), Err(TaskError::Cancelled)));
        }
        assert!(matches!(
            ex.submit(square, 1).result(),
            Err(TaskError::PoolClosed)
        ));
        assert!(multiproc::active_children().is_empty());

        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .build()
            .unwrap();
        let all: Vec<_> = (0..10).map(|i| ex.submit(square, i)).collect();
        drop(ex); // shutdown(wait=true): every task finishes
        for (i, f) in all.into_iter().enumerate() {
            assert_eq!(f.result().unwrap(), (i * i) as u64);
        }
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn submit_with_time_limit() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let stuck = ex.submit_with_time_limit(sleep_ms, 20_000, Duration::from_millis(150));
        let next = ex.submit(square, 4);
        assert!(matches!(stuck.result(), Err(TaskError::TimeLimit { .. })));
        assert_eq!(next.result().unwrap(), 16);
    }

    #[test]
    fn shutdown_cancel_futures_marks_them_cancelled() {
        // Issue 10: futures failed by `shutdown(cancel_futures)` said `cancelled() == false`.
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let running = ex.submit(sleep_ms, 300);
        assert!(common::eventually(common::WAIT, || running.running()));
        let queued: Vec<_> = (0..4).map(|_| ex.submit(sleep_ms, 1)).collect();
        ex.shutdown(false, true);
        for f in &queued {
            assert!(common::eventually(common::WAIT, || f.done()));
            assert!(f.cancelled(), "{f:?}");
            assert!(!f.running());
        }
        for f in queued {
            assert!(matches!(f.result(), Err(TaskError::Cancelled)));
        }
        assert!(!running.cancelled());
        assert_eq!(running.result().unwrap(), 300);
    }

    #[test]
    fn done_callbacks_run_once_whatever_the_outcome() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let (tx, rx) = mpsc::channel::<(&str, String)>();
        let report = |name: &'static str| {
            let tx = tx.clone();
            move |r: Result<&u64, &TaskError>| {
                tx.send((name, format!("{r:?}"))).unwrap();
            }
        };
        let ok = ex.submit(sleep_ms, 300);
        // A panicking callback breaks neither the ones after it nor the future.
        ok.add_done_callback(|_| panic!("a done callback panicked"));
        ok.add_done_callback(report("ok"));
        let queued = ex.submit(sleep_ms, 1);
        queued.add_done_callback(report("cancelled"));
        assert!(queued.cancel());
        // Cancelling completes the future at once, on the cancelling thread.
        assert_eq!(
            rx.try_recv().unwrap(),
            ("cancelled", "Err(Cancelled)".to_owned())
        );
        let failed = ex.submit(|_: u64| -> u64 { panic!("task failed") }, 0);
        failed.add_done_callback(report("failed"));
        let mut got: Vec<_> = (0..2)
            .map(|_| rx.recv_timeout(common::WAIT).unwrap())
            .collect();
        got.sort();
        assert_eq!(got[0].0, "failed");
        assert!(got[0].1.contains("task failed"), "{got:?}");
        assert_eq!(got[1], ("ok", "Ok(300)".to_owned()));
        assert_eq!(ok.result().unwrap(), 300, "the value is still there");
        assert!(failed.result().unwrap_err().is_panic());

        // Already done: the callback runs at once, on the caller's thread.
        let mut done = ex.submit(square, 5);
        assert!(common::eventually(common::WAIT, || done.done()));
        let me = std::thread::current().id();
        let (ttx, trx) = mpsc::channel();
        done.add_done_callback(move |r| {
            ttx.send((std::thread::current().id(), r.ok().copied())).unwrap()
        });
        assert_eq!(trx.try_recv().unwrap(), (me, Some(25)));
        // Once the value was taken, a late callback is told so.
        assert_eq!(done.result_timeout(common::WAIT).unwrap(), 25);
        done.add_done_callback(report("late"));
        assert_eq!(
            rx.try_recv().unwrap(),
            ("late", "Err(AlreadyTaken)".to_owned())
        );
        // Each callback ran exactly once.
        drop(tx);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_panicking_waker_does_not_strand_other_waiters() {
        struct PanickingWaker;
        impl Wake for PanickingWaker {
            fn wake(self: Arc<Self>) {
                panic!("this waker panics");
            }
        }
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let mut f = ex.submit(sleep_ms, 200);
        let waker = Waker::from(Arc::new(PanickingWaker));
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut f).poll(&mut cx).is_pending());
        // as_completed registers its own waker after the panicking one.
        let mut it = as_completed(vec![f], Some(common::WAIT));
        let f = it.next().unwrap().expect("woken despite the panicking waker");
        assert_eq!(f.result().unwrap(), 200);
        assert_eq!(ex.submit(square, 2).result().unwrap(), 4);
    }

    #[test]
    fn worker_pids_lists_the_executors_workers() {
        let _r = common::Reaper::new();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let before = ex.worker_pids();
        assert_eq!(before.len(), 2, "{before:?}");
        let ran = ex.submit(|_: ()| std::process::id(), ()).result().unwrap();
        assert!(before.contains(&ran), "{ran} not in {before:?}");
        // That worker exits after its one task and is replaced.
        assert!(common::eventually(common::WAIT, || {
            let now = ex.worker_pids();
            now.len() == 2 && !now.contains(&ran)
        }));
        ex.shutdown(true, false);
        assert!(ex.worker_pids().is_empty());
    }
}
