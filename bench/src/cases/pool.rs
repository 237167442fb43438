//! Pools: `Pool::map` over tiny items, `apply_async` per-task overhead, and pool startup,
//! against Python's `Pool`/`ProcessPoolExecutor` (`python/bench_pool.py`) and, for `map`,
//! rayon on threads as the ceiling for in-process work.

use std::time::Instant;

use multiproc::process::Output;
use multiproc::{Pool, ProcessPoolExecutor, StartMethod};
use rayon::prelude::*;

use crate::harness::{Case, Ctx, Row, get, median};

pub fn cases() -> Vec<Case> {
    vec![
        // First, as in bench_pool.py: a fork's cost grows with the parent's memory.
        Case {
            name: "pool_startup",
            run: pool_startup,
        },
        Case {
            name: "pool_map_small",
            run: pool_map_small,
        },
        Case {
            name: "pool_apply_async",
            run: pool_apply_async,
        },
        Case {
            name: "pool_cancel_latency",
            run: pool_cancel_latency,
        },
    ]
}

const WORKERS: usize = 2;

fn square(x: u64) -> u64 {
    x * x
}

/// Both sides use `fork`, Python's default on Linux before 3.14, whatever our default is.
fn python(ctx: &mut Ctx) -> serde_json::Value {
    ctx.python("bench_pool.py", &["--workers", "2", "--method", "fork"])
}

fn pool() -> Pool {
    Pool::builder()
        .processes(WORKERS)
        .start_method(StartMethod::Fork)
        .build()
        .expect("pool")
}

/// `pool.map(x*x, range(n))` with the default chunksize on 2 workers; items per second.
fn pool_map_small(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pool_map_small", "items_per_s");
    let n = ctx.scale(1_000_000, 200_000) as u64;
    let pool = pool();
    pool.map(square, 0..1000).expect("warm-up");
    row.ours = Some(median(ctx.rounds(), || {
        let t = Instant::now();
        let out = pool.map(square, 0..n).expect("map");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(out.len() as u64, n);
        assert_eq!(out[n as usize - 1], (n - 1) * (n - 1));
        rate
    }));
    drop(pool);
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    let rayon_rate = median(ctx.rounds(), || {
        threads.install(|| {
            let t = Instant::now();
            let out: Vec<u64> = (0..n).into_par_iter().map(square).collect();
            let rate = n as f64 / t.elapsed().as_secs_f64();
            assert_eq!(out.len() as u64, n);
            rate
        })
    });
    row.peer.insert("rayon_threads".into(), rayon_rate);
    row.python = get(&python(ctx), "map_items_per_s");
    row
}

/// Submit `n` tiny tasks with `apply_async`, then collect every result; tasks per second.
/// Peers: our executor's `submit` and Python's `ProcessPoolExecutor.submit`.
fn pool_apply_async(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pool_apply_async", "tasks_per_s");
    let n = ctx.scale(20_000, 5_000) as u64;
    let round = |pool: &Pool| {
        let t = Instant::now();
        let results: Vec<_> = (0..n).map(|i| pool.apply_async(square, i)).collect();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.get().expect("task"), (i * i) as u64);
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    // Issue 16's peer `forwarding_on`: the same with the workers' output captured and
    // forwarded (they print nothing here: what is measured is what forwarding adds to every
    // task). The two pools take turns round by round, so that load from elsewhere on the
    // machine falls on both alike.
    let off_pool = pool();
    let on_pool = Pool::builder()
        .processes(WORKERS)
        .start_method(StartMethod::Fork)
        .output(Output::Forward)
        .build()
        .expect("pool");
    off_pool.map(square, 0..1000).expect("warm-up");
    on_pool.map(square, 0..1000).expect("warm-up");
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..ctx.rounds() {
        offs.push(round(&off_pool));
        ons.push(round(&on_pool));
    }
    drop((off_pool, on_pool));
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (middle(offs), middle(ons));
    row.ours = Some(off);
    row.peer.insert("forwarding_on".into(), on);
    row.peer.insert("forwarding_on_vs_off".into(), on / off);
    let ex = ProcessPoolExecutor::builder()
        .max_workers(WORKERS)
        .start_method(StartMethod::Fork)
        .build()
        .expect("executor");
    let ours_ppe = median(ctx.rounds(), || {
        let t = Instant::now();
        let futures: Vec<_> = (0..n).map(|i| ex.submit(square, i)).collect();
        for f in futures {
            f.result().expect("task");
        }
        n as f64 / t.elapsed().as_secs_f64()
    });
    drop(ex);
    let py = python(ctx);
    row.peer.insert("ours_executor_submit".into(), ours_ppe);
    if let Some(ppe) = get(&py, "ppe_submit_tasks_per_s") {
        row.peer.insert("python_executor_submit".into(), ppe);
        row.peer
            .insert("ours_executor_vs_python_executor".into(), ours_ppe / ppe);
    }
    row.python = get(&py, "apply_async_tasks_per_s");
    row
}

/// Create a pool of 2, run one task, close and join; milliseconds.
fn pool_startup(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pool_startup", "ms");
    let n = ctx.scale(20, 5);
    row.ours = Some(median(ctx.rounds(), || {
        let t = Instant::now();
        for _ in 0..n {
            let pool = pool();
            assert_eq!(pool.apply(square, 1).expect("task"), 1);
            pool.close();
            pool.join().expect("join");
        }
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    }));
    row.python = get(&python(ctx), "pool_create_close_join_ms");
    row
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine, so a worker's
/// reading and the parent's can be subtracted.
fn monotonic_ns(_: ()) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

/// Milliseconds from cancelling a running task (`AsyncResult::cancel`) on a pool of one
/// worker to the replacement worker having started the next task, which was queued behind
/// it: the task reads the machine's monotonic clock as it starts. Medians over rounds of `n`.
/// Python's pools cannot cancel a running task (there is no Python figure); the peers are
/// `pool_startup` (a pool of 2 created, one task, closed and joined, as in that case),
/// the same cancel latency under forkserver, and how long the `cancel` call itself took.
fn pool_cancel_latency(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pool_cancel_latency", "ms");
    let n = ctx.scale(20, 5);
    let measure = |method: StartMethod, call: &mut Vec<f64>| {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .expect("pool");
        pool.apply(square, 1).expect("warm-up");
        let mut total = 0.0;
        for _ in 0..n {
            let before = pool.worker_pids();
            let long = pool.apply_async(nap_ms, 60_000);
            // Let it start (the worker is idle and ready): a queued task would be cancelled
            // without a kill, which the pid check below would notice.
            std::thread::sleep(std::time::Duration::from_millis(10));
            let next = pool.apply_async(monotonic_ns, ());
            let t0 = monotonic_ns(());
            assert!(long.cancel(), "the long task ran on");
            call.push((monotonic_ns(()) - t0) as f64 / 1e6);
            let started = next.get().expect("next task");
            assert_ne!(
                pool.worker_pids(),
                before,
                "the cancelled task was not running"
            );
            total += started.saturating_sub(t0) as f64 / 1e6;
        }
        pool.close();
        pool.join().expect("join");
        total / n as f64
    };
    let mut call = Vec::new();
    row.ours = Some(median(ctx.rounds(), || {
        measure(StartMethod::Fork, &mut call)
    }));
    let mut ignored = Vec::new();
    let forkserver = median(ctx.rounds(), || {
        measure(StartMethod::ForkServer, &mut ignored)
    });
    call.sort_by(f64::total_cmp);
    row.peer
        .insert("cancel_call_ms".into(), call[call.len() / 2]);
    row.peer.insert("ours_forkserver".into(), forkserver);
    let startup = median(ctx.rounds(), || {
        let t = Instant::now();
        for _ in 0..n {
            let pool = pool();
            assert_eq!(pool.apply(square, 1).expect("task"), 1);
            pool.close();
            pool.join().expect("join");
        }
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    });
    row.peer.insert("pool_startup".into(), startup);
    row
}
