//! Progress callbacks (issue 16): for every kind of map, the callback set with
//! `progress_with` sees `done` grow with every report up to the total, with the total known,
//! elapsed time that never goes back, and a time left of zero at the end.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiproc::{Pool, ProcessPoolExecutor, pool::Progress};

fn triple(x: u64) -> u64 {
    3 * x
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

type Log = Arc<Mutex<Vec<Progress>>>;

/// Takes the reports logged so far and checks them against a call over `n` items.
fn check(log: &Log, kind: &str, n: u64) {
    let reports = std::mem::take(&mut *log.lock().unwrap());
    assert!(!reports.is_empty(), "{kind}: no report");
    for w in reports.windows(2) {
        assert!(
            w[0].done < w[1].done,
            "{kind}: done went {} -> {}",
            w[0].done,
            w[1].done
        );
        assert!(w[0].elapsed <= w[1].elapsed, "{kind}: elapsed went back");
    }
    for r in &reports {
        assert_eq!(r.total, Some(n), "{kind}");
        assert!(r.done >= 1 && r.done <= n, "{kind}: done {}", r.done);
        assert!(r.eta.is_some(), "{kind}: no time left with a known total");
    }
    let last = reports.last().unwrap();
    assert_eq!(last.done, n, "{kind}: ended before the total");
    assert_eq!(last.eta, Some(Duration::ZERO), "{kind}");
    assert!(last.per_sec() > 0.0, "{kind}");
}

fn logger() -> (Log, impl Fn(Progress) + Send + Sync + 'static) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (log, move |p: Progress| sink.lock().unwrap().push(p))
}

start_method_matrix! {
    #[test]
    fn every_pool_map_kind_reports_progress_up_to_its_total() {
        let _r = common::Reaper::new();
        let (log, callback) = logger();
        let pool = Pool::builder().processes(2).progress_with(callback).build().unwrap();
        let n = 500u64;
        let want: Vec<u64> = (0..n).map(|x| 3 * x).collect();

        assert_eq!(pool.map(triple, 0..n).unwrap(), want);
        check(&log, "map", n);
        assert_eq!(pool.map_chunked(triple, 0..n, 7).unwrap(), want);
        check(&log, "map_chunked", n);
        let pairs: Vec<(u64, u64)> = (0..n).map(|x| (x, 2 * x)).collect();
        assert_eq!(pool.starmap(add, pairs.clone()).unwrap(), want);
        check(&log, "starmap", n);
        let mut r = pool.map_async(triple, 0..n);
        assert_eq!(r.get_timeout(common::WAIT).unwrap(), want);
        check(&log, "map_async", n);
        let mut r = pool.starmap_async(add, pairs);
        assert_eq!(r.get_timeout(common::WAIT).unwrap(), want);
        check(&log, "starmap_async", n);
        let got: Vec<u64> = pool.imap(triple, 0..n).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, want);
        check(&log, "imap", n);
        let got: Vec<u64> = pool.imap_chunked(triple, 0..n, 10).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, want);
        check(&log, "imap_chunked", n);
        let mut got: Vec<u64> = pool.imap_unordered(triple, 0..n).collect::<Result<_, _>>().unwrap();
        got.sort();
        assert_eq!(got, want);
        check(&log, "imap_unordered", n);
        let mut got: Vec<u64> =
            pool.imap_unordered_chunked(triple, 0..n, 9).collect::<Result<_, _>>().unwrap();
        got.sort();
        assert_eq!(got, want);
        check(&log, "imap_unordered_chunked", n);
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn executor_map_reports_progress_up_to_its_total() {
        let _r = common::Reaper::new();
        let (log, callback) = logger();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .progress_with(callback)
            .build()
            .unwrap();
        let n = 200u64;
        let got: Vec<u64> = ex
            .map(triple, 0..n, Some(common::WAIT))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, (0..n).map(|x| 3 * x).collect::<Vec<_>>());
        check(&log, "executor map", n);
        ex.shutdown(true, false);
    }

    #[test]
    fn a_panicking_progress_callback_does_not_stop_the_map() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(1)
            .progress_with(|p: Progress| {
                if p.done == 1 {
                    panic!("callback panics");
                }
            })
            .build()
            .unwrap();
        assert_eq!(pool.map_chunked(triple, 0..4, 1).unwrap(), vec![0, 3, 6, 9]);
        let mut r = pool.map_async(triple, 0..4);
        assert_eq!(r.get_timeout(common::WAIT).unwrap(), vec![0, 3, 6, 9]);
        assert_eq!(pool.apply(triple, 5).unwrap(), 15);
        pool.close();
        pool.join().unwrap();
    }
}
