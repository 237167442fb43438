//! A pool whose workers come from a [`WorkerLauncher`] (`PoolBuilder::launcher`, issue 13):
//! the extension point a cluster backend (multiproc-mpi) uses. Here the launcher sends the
//! worker's start through bytes and starts it with `launch_local`, as a serving MPI rank
//! does, so everything but MPI is exercised: frames over the byte-level link, deaths told
//! through the link, replacements, refusals.

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use multiproc::pool::remote::{self, WorkerLauncher, WorkerLink, WorkerStart};
use multiproc::pool::{TaskError, WorkerExit};
use multiproc::{ErrorKind, Pool};

/// Starts local workers from the bytes of their start, counting launches.
#[derive(Debug)]
struct Relay {
    launched: &'static AtomicUsize,
}

impl WorkerLauncher for Relay {
    fn launch(&self, start: &WorkerStart) -> multiproc::Result<Box<dyn WorkerLink>> {
        self.launched.fetch_add(1, Ordering::Relaxed);
        remote::launch_local(&WorkerStart::from_bytes(&start.to_bytes())?)
    }
}

/// A launcher that cannot start anything.
#[derive(Debug)]
struct Broken;

impl WorkerLauncher for Broken {
    fn launch(&self, _: &WorkerStart) -> multiproc::Result<Box<dyn WorkerLink>> {
        Err(std::io::Error::other("no machine answers").into())
    }
}

fn relay() -> Relay {
    static LAUNCHED: AtomicUsize = AtomicUsize::new(0);
    Relay {
        launched: &LAUNCHED,
    }
}

static GREETING: OnceLock<String> = OnceLock::new();

fn greet(s: String) {
    GREETING.set(s).ok();
}

fn greeting(x: u64) -> String {
    format!("{} {x}", GREETING.get().map_or("none", String::as_str))
}

fn square(x: u64) -> u64 {
    x * x
}

fn end((how, x): (u8, u64)) -> u64 {
    match how {
        1 => std::process::abort(),
        2 => std::process::exit(7),
        _ => x,
    }
}

start_method_matrix! {
    #[test]
    fn a_launchers_pool_runs_every_kind_of_call() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(2)
            .initializer(greet, "hello".to_string())
            .launcher(relay())
            .build()
            .unwrap();
        assert_eq!(pool.worker_pids().len(), 2);
        let expect: Vec<u64> = (0..500).map(square).collect();
        assert_eq!(pool.map(square, 0..500).unwrap(), expect);
        assert_eq!(pool.map_chunked(square, 0..500, 3).unwrap(), expect);
        let lazy: Vec<u64> = pool.imap(square, 0..50).collect::<Result<_, _>>().unwrap();
        assert_eq!(lazy, expect[..50]);
        assert_eq!(pool.apply(greeting, 3).unwrap(), "hello 3");
        let rs: Vec<_> = (0..50).map(|i| pool.apply_async(square, i)).collect();
        for (i, r) in rs.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), square(i as u64));
        }
        // Larger than a pipe's buffer each way.
        let big = pool.apply(|v: Vec<u8>| v.iter().rev().copied().collect::<Vec<u8>>(), vec![7u8; 3 << 20]);
        assert_eq!(big.unwrap().len(), 3 << 20);
        pool.close();
        pool.join().unwrap();
        assert!(pool.worker_pids().is_empty());
    }

    #[test]
    fn a_launchers_worker_that_dies_fails_its_task_alone_and_is_replaced() {
        let _r = common::Reaper::new();
        let launcher = relay();
        let launched = launcher.launched;
        let before = launched.load(Ordering::Relaxed);
        let pool = Pool::builder().processes(2).launcher(launcher).build().unwrap();
        let rs: Vec<_> = (0..60u64)
            .map(|i| pool.apply_async(end, (if i % 20 == 10 { (i / 20 % 2) as u8 + 1 } else { 0 }, i)))
            .collect();
        let mut died = Vec::new();
        for (i, r) in rs.into_iter().enumerate() {
            match r.get() {
                Ok(v) => assert_eq!(v, i as u64),
                Err(TaskError::WorkerDied { how }) => died.push((i, how)),
                Err(e) => panic!("task {i}: {e:?}"),
            }
        }
        assert_eq!(
            died,
            vec![(10, WorkerExit::Signal(6)), (30, WorkerExit::Exit(7)), (50, WorkerExit::Signal(6))]
        );
        assert_eq!(pool.map(square, 0..100).unwrap(), (0..100).map(square).collect::<Vec<_>>());
        // Two at the start and one replacement per death.
        assert!(launched.load(Ordering::Relaxed) - before >= 5);
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn a_launchers_pool_refuses_handles_in_the_initializer() {
        let _r = common::Reaper::new();
        fn keep(_: multiproc::Lock) {}
        let lock = multiproc::Lock::new().unwrap();
        let err = Pool::builder().processes(1).initializer(keep, lock).launcher(relay()).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("cannot reach workers on other machines"), "{err}");
    }

    #[test]
    fn a_launcher_that_cannot_start_workers_fails_build_with_its_error() {
        let _r = common::Reaper::new();
        let err = Pool::builder().processes(1).launcher(Broken).build().unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
        assert!(text.contains("no machine answers"), "{text}");
    }
}
