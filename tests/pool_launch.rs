//! A pool whose workers cannot be started for a while (issue 21, item 2): a brief shortage
//! must fail no task, a lasting one must fail the queued tasks with a clear error in bounded
//! time, and the pool must recover once workers can start again.
//!
//! The shortage is real: the test lowers its own process's descriptor limit (`RLIMIT_NOFILE`)
//! below its lowest free descriptor, so the pipes of a new worker cannot be created under any
//! start method. That needs a process per test: cargo nextest gives each test its own, and
//! under `cargo test` the matrix re-runs each test alone.

mod common;

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, pool::TaskError};

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim
}

fn set_nofile(lim: libc::rlimit) {
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Lowers the soft descriptor limit to the lowest free descriptor, so that no new descriptor
/// can be made; returns the limit to restore.
fn starve_descriptors() -> libc::rlimit {
    use std::os::fd::AsRawFd;
    let saved = nofile();
    // A new descriptor takes the lowest free number.
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd();
    set_nofile(libc::rlimit {
        rlim_cur: lowest_free as libc::rlim_t,
        rlim_max: saved.rlim_max,
    });
    saved
}

/// A one-worker pool whose worker exits after each task, with the next worker already started
/// (so that from then on every task needs a new worker).
fn one_task_per_worker_pool() -> Pool {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let first = pool.apply(pid, ()).unwrap();
    assert!(common::eventually(common::WAIT, || {
        let children = multiproc::active_children();
        children.len() == 1 && children[0].pid() != first
    }));
    pool
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn a_brief_descriptor_shortage_fails_no_task() {
        let _r = common::Reaper::new();
        let pool = one_task_per_worker_pool();
        let saved = starve_descriptors();
        let restorer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            set_nofile(saved);
        });
        // The live worker takes one task and exits; the others wait while no worker can be
        // started, with none alive.
        let results: Vec<_> = (0..100u64).map(|i| pool.apply_async(square, i)).collect();
        restorer.join().unwrap();
        for (i, mut r) in results.into_iter().enumerate() {
            match r.get_timeout(common::WAIT) {
                Ok(v) => assert_eq!(v, (i * i) as u64),
                Err(e) => panic!("task {i} failed: {e}"),
            }
        }
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn a_lasting_shortage_fails_queued_tasks_in_bounded_time() {
        let _r = common::Reaper::new();
        let pool = one_task_per_worker_pool();
        let saved = starve_descriptors();
        let t0 = Instant::now();
        let mut results: Vec<_> = (0..20u64).map(|i| pool.apply_async(square, i)).collect();
        // The live worker runs the first task.
        let first = results.remove(0).get_timeout(common::WAIT);
        let mut failures = Vec::new();
        for mut r in results {
            failures.push(r.get_timeout(common::WAIT));
        }
        let waited = t0.elapsed();
        set_nofile(saved);
        assert_eq!(first.unwrap(), 0);
        for got in failures {
            match got {
                Err(TaskError::Process(e)) => {
                    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
                    let text = e.to_string();
                    assert!(text.contains("no pool worker could be started"), "{text}");
                    assert!(text.contains("Too many open files"), "{text}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(waited < common::WAIT, "{waited:?}");
        // Not broken for good: once workers can start, tasks run again.
        let mut again = pool.apply_async(square, 3);
        assert_eq!(again.get_timeout(common::WAIT).unwrap(), 9);
    }
}
