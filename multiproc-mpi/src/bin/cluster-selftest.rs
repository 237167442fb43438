//! The checks that `tests/mpirun.rs` and `.ci/run` launch under `mpirun`: a pool on the serving
//! ranks runs `map`, `imap`, `apply_async`, the executor and time limits correctly, and tasks
//! that crash their worker (SIGSEGV, abort, `exit`) fail alone while every other task
//! completes; with `retries(2)`, a task that crashes its worker twice succeeds and one that
//! always crashes fails after the cap.
//!
//! `mpirun -n 3 cluster-selftest [fork|spawn|forkserver] [--tasks N] [--spawn N]`: the workers'
//! start method on the serving ranks (default: forkserver), the number of tasks in the fault
//! injection run (default 300), `--busy-marker PATH` (keep the workers busy, write rank 0's pid
//! to PATH, and wait to be killed: for the lost-rank tests), and dynamic mode (started without `mpirun`, spawn N servers). Prints `cluster-selftest: ok ...` and exits 0 when every check
//! passed; any failed check is an error naming it.

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::StartMethod;
use multiproc::pool::{TaskError, WorkerExit, as_completed};
use multiproc_mpi::Cluster;

fn square(x: u64) -> u64 {
    x * x
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

/// Which process ran the task, and under which serving rank (a worker is its rank's child
/// under every start method allowed there).
fn whoami(_: ()) -> (u32, u32, String) {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    (
        std::process::id(),
        std::os::unix::process::parent_id(),
        host,
    )
}

/// Ends the worker as `how` says, or returns `x`.
fn crash(how: (u8, u64)) -> u64 {
    match how.0 {
        // The signal a segfault raises (a real invalid access would need `unsafe`). Rust's
        // runtime catches the first SIGSEGV (to tell stack overflows apart) and restores the
        // default action, so it is sent until it ends the worker.
        1 => {
            for _ in 0..100 {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::SEGV,
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            unreachable!("SIGSEGV did not end the worker")
        }
        2 => std::process::abort(),
        3 => std::process::exit(3),
        4 => panic!("task {} panicked", how.1),
        _ => how.1,
    }
}

/// Counts a run in `path` (one byte per run; the serving ranks' hosts must share the
/// directory, as localhost and the namespace hosts do) and returns which run this is, from 1.
fn count_run(path: &std::path::Path) -> usize {
    let runs = std::fs::read(path).map_or(0, |b| b.len()) + 1;
    std::fs::write(path, vec![0u8; runs]).expect("write the run counter");
    runs
}

/// Ends its worker with `exit(3)` on its first `crashes` runs, then returns which run it was.
fn crashes_then_succeeds((path, crashes): (std::path::PathBuf, usize)) -> usize {
    let run = count_run(&path);
    if run <= crashes {
        std::process::exit(3);
    }
    run
}

/// Ends its worker by SIGABRT on every run.
fn always_crashes(path: std::path::PathBuf) -> usize {
    count_run(&path);
    std::process::abort();
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut method = StartMethod::ForkServer;
    let mut tasks = 300u64;
    let mut spawn = None;
    let mut busy_marker: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tasks" => tasks = args.next().ok_or("--tasks needs a number")?.parse()?,
            "--spawn" => spawn = Some(args.next().ok_or("--spawn needs a number")?.parse()?),
            "--busy-marker" => {
                busy_marker = Some(args.next().ok_or("--busy-marker needs a path")?.into())
            }
            m => method = m.parse()?,
        }
    }
    let cluster = match spawn {
        Some(n) => Cluster::spawn(n)?,
        None => Cluster::init()?,
    };
    let servers = cluster.servers();
    let workers = servers.max(2);
    let pool = cluster
        .pool_builder()
        .processes(workers)
        .start_method(method)
        .build()?;
    check(pool.processes() == workers, "pool size")?;
    if let Some(marker) = busy_marker {
        // For the lost-rank tests: keep every worker busy, say so (with this process's pid),
        // and wait to be killed; finishing is a failure.
        let naps: Vec<_> = (0..600).map(|_| pool.apply_async(nap, 200)).collect();
        for r in naps.iter().take(workers) {
            r.wait();
        }
        std::fs::write(&marker, std::process::id().to_string())?;
        for r in naps {
            r.get()?;
        }
        return Err("the busy run finished: no rank was lost".into());
    }

    // Where tasks run: not in rank 0's process nor in its children, and under every serving rank.
    let me = std::process::id();
    let here = whoami(()).2;
    let mut ranks = BTreeSet::new();
    for r in (0..40)
        .map(|_| pool.apply_async(whoami, ()))
        .collect::<Vec<_>>()
    {
        let (pid, parent, host) = r.get()?;
        check(
            host != here || (pid != me && parent != me),
            "a task ran on rank 0",
        )?;
        ranks.insert((host, parent));
    }
    check(ranks.len() == servers, "tasks ran under every serving rank")?;

    // map, map_chunked, starmap, imap, imap_unordered.
    let expect: Vec<u64> = (0..1000).map(square).collect();
    check(pool.map(square, 0..1000)? == expect, "map")?;
    check(
        pool.map_chunked(square, 0..1000, 7)? == expect,
        "map_chunked",
    )?;
    check(
        pool.starmap(add, (0..100).map(|i| (i, 2 * i)))?
            == (0..100).map(|i| 3 * i).collect::<Vec<_>>(),
        "starmap",
    )?;
    let got: Vec<u64> = pool.imap(square, 0..300).collect::<Result<_, _>>()?;
    check(got == expect[..300], "imap")?;
    let mut got: Vec<u64> = pool
        .imap_unordered_chunked(square, 0..300, 10)
        .collect::<Result<_, _>>()?;
    got.sort_unstable();
    check(got == expect[..300], "imap_unordered")?;
    // Large arguments and values, several in flight (above every eager limit).
    let big: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 4 << 20]).collect();
    let lens = pool.map_chunked(|v: Vec<u8>| v.len() as u64 + u64::from(v[0]), big, 1)?;
    check(
        lens == (0..6).map(|i| (4 << 20) + i).collect::<Vec<u64>>(),
        "4 MiB payloads",
    )?;

    // apply and apply_async.
    let results: Vec<_> = (0..200).map(|i| pool.apply_async(square, i)).collect();
    for (i, r) in results.into_iter().enumerate() {
        check(r.get()? == square(i as u64), "apply_async")?;
    }
    check(pool.apply(square, 12)? == 144, "apply")?;

    // A panic, and the time limit.
    check(
        matches!(pool.apply(crash, (4, 7)), Err(TaskError::Panic { message, .. }) if message == "task 7 panicked"),
        "a panicking task fails with its message",
    )?;
    let slow = pool.apply_async_with_time_limit(nap, 20_000, Duration::from_millis(300));
    check(
        matches!(slow.get(), Err(TaskError::TimeLimit { .. })),
        "time limit",
    )?;

    // Crash isolation: each kind of death fails its task alone; the others complete.
    let kinds = [
        (1, WorkerExit::Signal(11)),
        (2, WorkerExit::Signal(6)),
        (3, WorkerExit::Exit(3)),
    ];
    let results: Vec<_> = (0..tasks)
        .map(|i| {
            let kind = if i % 10 == 5 {
                (i / 10 % 3) as u8 + 1
            } else {
                0
            };
            (kind, pool.apply_async(crash, (kind, i)))
        })
        .collect();
    let mut died = 0;
    for (i, (kind, r)) in results.into_iter().enumerate() {
        match (kind, r.get()) {
            (0, Ok(v)) => check(v == i as u64, "a surviving task's value")?,
            (k, Err(TaskError::WorkerDied { how })) if k != 0 => {
                let want = kinds[usize::from(k) - 1].1;
                check(
                    how == want,
                    &format!("task {i} died of {how}, expected {want}"),
                )?;
                died += 1;
            }
            (k, other) => return Err(format!("task {i} (crash kind {k}): {other:?}").into()),
        }
    }
    check(
        pool.map(square, 0..1000)? == expect,
        "map after the crashes",
    )?;

    // Retries: a task that crashes its worker twice succeeds on its third run; one that always
    // crashes fails after the cap with its cause; the others are unaffected.
    let dir = std::env::temp_dir().join(format!("cluster-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let retrying = cluster
        .pool_builder()
        .processes(workers)
        .start_method(method)
        .retries(2)
        .max_worker_deaths_per_task(3)
        .build()?;
    let flaky = retrying.apply_async(crashes_then_succeeds, (dir.join("flaky"), 2));
    let doomed = retrying.apply_async(always_crashes, dir.join("doomed"));
    let others: Vec<_> = (0..100).map(|i| retrying.apply_async(square, i)).collect();
    let flaky = flaky.get();
    let doomed = doomed.get();
    let doomed_runs = std::fs::read(dir.join("doomed")).map_or(0, |b| b.len());
    std::fs::remove_dir_all(&dir).ok();
    check(
        matches!(flaky, Ok(3)),
        &format!("a task crashing twice succeeds with retries(2): {flaky:?}"),
    )?;
    match doomed {
        Err(TaskError::RetriesExhausted { attempts: 3, last })
            if matches!(
                *last,
                TaskError::WorkerDied {
                    how: WorkerExit::Signal(6)
                }
            ) => {}
        other => return Err(format!("a task that always crashes: {other:?}").into()),
    }
    check(doomed_runs == 3, "a task that always crashes ran 3 times")?;
    for (i, r) in others.into_iter().enumerate() {
        check(
            r.get()? == square(i as u64),
            "tasks beside the retried ones",
        )?;
    }
    retrying.close();
    retrying.join()?;

    // The executor face.
    let ex = cluster.executor_builder().max_workers(workers).build()?;
    let futures: Vec<_> = (0..50u64).map(|i| ex.submit(square, i)).collect();
    let mut sum = 0;
    for f in as_completed(futures, Some(Duration::from_secs(60))) {
        sum += f?.result()?;
    }
    check(sum == (0..50u64).map(square).sum::<u64>(), "executor")?;
    ex.shutdown(true, false);

    pool.close();
    pool.join()?;
    check(pool.worker_pids().is_empty(), "no worker left after join")?;
    println!(
        "cluster-selftest: ok ({method}, {servers} serving ranks, hosts {:?}, {tasks} tasks of which {died} killed their worker, retries ok)",
        cluster.hosts()
    );
    Ok(())
}
