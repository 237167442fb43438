//! [`PoolBuilder`]: a pool's options, checked and assembled into the supervisor's [`Config`].

use std::sync::Arc;
use std::time::Duration;

use super::Pool;
use super::progress::{Progress, ProgressSetup};
use super::remote::{RemoteLauncher, WorkerLauncher};
use super::supervisor::{Config, Core, QUEUE_AHEAD};
use super::task::{Payload, TaskFn};
use super::transport::{InitSpec, Launcher, PipeLauncher, WorkerSpec};
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::process::Resource;
use crate::process::placement::{PlacementSpec, cpu_mask};
use crate::process::target;
use crate::sys;

/// Configures a [`Pool`]: Python's `Pool(processes, initializer, initargs, maxtasksperchild)`
/// plus a start method, a per-task time limit and a progress bar.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::Pool;
///
/// fn greet(name: String) { eprintln!("worker {} ready for {name}", std::process::id()); }
/// fn double(x: i32) -> i32 { 2 * x }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(greet, "work".to_string())
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(pool.map(double, vec![1, 2, 3])?, vec![2, 4, 6]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<Result<InitSpec>>,
    max_tasks: Option<usize>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    progress: ProgressSetup,
    name: Option<String>,
    launcher: Option<Box<dyn WorkerLauncher>>,
    retries: u32,
    max_deaths: Option<u32>,
    retry_panics: bool,
    /// Niceness, limits and a common CPU set for every worker.
    placement: PlacementSpec,
    cpu_plan: CpuPlan,
    max_memory: Option<u64>,
    output: crate::process::Output,
    forward_tracing: bool,
}

/// How workers are spread over CPUs.
#[derive(Debug, Default)]
enum CpuPlan {
    /// Anywhere (or the common set in `PlacementSpec::cpus`).
    #[default]
    Inherit,
    /// Worker `i` on the `i mod n`-th of the `n` CPUs this process may use.
    Pin,
    /// Worker `i` on set `i mod len`.
    Sets(Vec<Vec<usize>>),
}

impl PoolBuilder {
    /// A builder with Python's defaults: [`cpu_count`](crate::cpu_count) workers, no
    /// initializer, workers live for ever, the default start method, no time limit.
    pub fn new() -> Self {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once with `args` before its first task (Python's
    /// `initializer` and `initargs`). If it panics the pool cannot run tasks, and they fail
    /// with [`TaskError::InitializerFailed`](crate::pool::TaskError::InitializerFailed) (where Python's
    /// pool restarts workers for ever).
    ///
    /// `args` may hold handles that own a file descriptor, such as a [`Lock`](crate::Lock), a
    /// [`Value`](crate::Value), an [`Event`](crate::Event) or a [`Queue`](crate::Queue), under
    /// every start method: each worker, replacements included, receives its own copies. This
    /// is the way to share them with a pool, as in Python: a task's arguments cannot carry
    /// them (the task then fails with [`ErrorKind::Encode`] saying so), so the initializer
    /// keeps them where tasks find them, in a static for instance. The pool holds duplicates
    /// of their descriptors until it is dropped.
    ///
    /// # Examples
    /// ```
    /// use std::sync::OnceLock;
    /// use multiproc::{Pool, Value};
    ///
    /// static COUNTER: OnceLock<Value<u64>> = OnceLock::new();
    ///
    /// fn keep(counter: Value<u64>) { COUNTER.set(counter).ok(); }
    ///
    /// fn count(x: u64) -> u64 {
    ///     let counter = COUNTER.get().expect("set by the initializer");
    ///     *counter.lock().unwrap() += x;
    ///     x
    /// }
    ///
    /// let counter = Value::new(0u64)?;
    /// let pool = Pool::builder().processes(2).initializer(keep, counter.clone()).build()?;
    /// pool.map(count, 1..=10)?;
    /// assert_eq!(counter.get(), 55);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn initializer<F, A>(mut self, f: F, args: A) -> Self
    where
        F: TaskFn<A, ()>,
        A: Payload,
    {
        target::require_stateless::<F>();
        // Encoded as a start argument is, so that the descriptors of handles among the
        // arguments are collected (and duplicated) beside the bytes.
        let task = target::ArgsTask { f, args };
        // Out of descriptors is an OS error saying so, not an encoding failure.
        let collected = crate::wire::collect_fds_checked(|| target::Task::to_remote(&task));
        drop(task);
        self.initializer = Some(collected.map(|(remote, fds)| InitSpec {
            // `None` only when this crate lives outside the main executable; the worker then
            // fails to start with a clear error.
            entry: sys::entry_offset::<target::Entry>(remote.entry).unwrap_or(i64::MIN),
            payload: remote.payload,
            fds,
        }));
        self
    }

    /// Each worker exits after this many tasks and is replaced by a fresh one (Python's
    /// `maxtasksperchild`), to release memory a task leaks.
    #[doc(alias = "maxtasksperchild")]
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Every worker runs on these CPUs (see
    /// [`process::Builder::cpu_affinity`](crate::process::Builder::cpu_affinity)); replaces
    /// [`pin_workers`](PoolBuilder::pin_workers) and
    /// [`worker_cpu_sets`](PoolBuilder::worker_cpu_sets).
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(2).worker_cpu_affinity([0]).build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Where the platform has no per-process CPU affinity (see
    /// [`cpu_affinity`](crate::process::Builder::cpu_affinity)), `build()` or the first
    /// worker's start fails with [`std::io::ErrorKind::Unsupported`]; so does
    /// [`pin_workers`](PoolBuilder::pin_workers).
    #[doc(alias = "sched_setaffinity")]
    pub fn worker_cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.placement.cpus = Some(cpus.into_iter().collect());
        self.cpu_plan = CpuPlan::Inherit;
        self
    }

    /// Pins worker `i` to one CPU: the `i mod n`-th of the `n` CPUs this process may run on
    /// (`os.sched_getaffinity(0)`). A replacement takes the place, and the CPU, of the worker
    /// it replaces.
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(2).pin_workers().build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pin_workers(mut self) -> Self {
        self.placement.cpus = None;
        self.cpu_plan = CpuPlan::Pin;
        self
    }

    /// Worker `i` runs on `sets[i mod sets.len()]` (replacements take the place of the worker
    /// they replace). Each CPU must be one this process may run on; `build` fails with
    /// [`ErrorKind::InvalidInput`] otherwise, or for no sets or an empty one.
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(2).worker_cpu_sets(vec![vec![0], vec![0]]).build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_cpu_sets(mut self, sets: Vec<Vec<usize>>) -> Self {
        self.placement.cpus = None;
        self.cpu_plan = CpuPlan::Sets(sets);
        self
    }

    /// The workers' niceness (see [`process::Builder::nice`](crate::process::Builder::nice)).
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(1).worker_nice(10).build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_nice(mut self, nice: i32) -> Self {
        self.placement.nice = Some(nice);
        self
    }

    /// A resource limit for every worker (see
    /// [`process::Builder::rlimit`](crate::process::Builder::rlimit)).
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Pool, process::Resource};
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(1).worker_rlimit(Resource::Core, 0, 0).build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_rlimit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.placement.limits.push((resource, soft, hard));
        self
    }

    /// A hard cap on each worker's memory, in bytes, as its address space (`RLIMIT_AS`; see
    /// [`process::Builder::memory_limit`](crate::process::Builder::memory_limit) for what it
    /// counts). A task whose allocation fails past it aborts its worker and fails with
    /// [`TaskError::MemoryLimitExceeded`](crate::pool::TaskError::MemoryLimitExceeded); the
    /// worker is replaced and the pool goes on.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Pool, pool::TaskError};
    /// fn hog(_: ()) -> usize { Vec::<u8>::with_capacity(4 << 30).capacity() }
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(1).memory_limit(1 << 30).build()?;
    /// assert!(matches!(pool.apply(hog, ()), Err(TaskError::MemoryLimitExceeded { .. })));
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.placement.memory_limit = Some(bytes);
        self
    }

    /// After each task, a worker whose resident memory (RSS, `/proc/<pid>/statm`) is above
    /// `bytes` is replaced before its next task (billiard's `max_memory_per_child`, in bytes
    /// rather than KiB). Tasks queued on it go back to the pool's queue unstarted.
    ///
    /// The size is read with `proc_pidinfo` on macOS and `sysctl` on FreeBSD; where no
    /// process's resident size can be read (OpenBSD, NetBSD) the limit is not enforced.
    ///
    /// A worker that is already above the limit when it starts (under `fork`, a copy of a
    /// parent that is itself larger: celery#4125) is measured against its size at start
    /// instead, so that it is not replaced after every task; under spawn and forkserver a
    /// worker starts from a fresh program and never inherits the parent's heap.
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    /// fn one(_: ()) -> u8 { 1 }
    /// let pool = Pool::builder().processes(1).max_memory_per_child(512 << 20).build()?;
    /// assert_eq!(pool.apply(one, ())?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// The start method for the workers.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A time limit for each task (each chunk, for `map`): a task that runs longer fails with
    /// [`TaskError::TimeLimit`](crate::pool::TaskError::TimeLimit), and its worker is killed and
    /// replaced.
    ///
    /// A task's clock starts when its worker can start it: when the worker's initializer has
    /// finished (its time does not count) and the task before it on that worker has replied.
    /// So the limit bounds tasks, not the [initializer](PoolBuilder::initializer): one that
    /// never returns holds its worker's tasks as long (as in Python, which has no limit).
    /// A task that replies just as its worker is killed keeps its value.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Runs a task again, up to `n` more times, when its worker died while running it
    /// (a segfault, an abort, `exit`, the OOM killer: anything that ends the worker process),
    /// and, with [`retry_panics`](PoolBuilder::retry_panics), when it panicked. Dask's
    /// `retries`; Python's `Pool` has none. The default, 0, fails a task at its first failure.
    ///
    /// - **What is retried**: a worker's death, always; a panic, only if you opt in (a panic
    ///   is usually a bug that fails the same way every time). A task returning `Err(..)` is
    ///   a value to the pool, which cannot look inside it: make the task panic (`unwrap`) and
    ///   opt in to have it retried. Not retried: a [time limit](PoolBuilder::task_timeout)
    ///   (the pool killed the worker on purpose), a task whose worker the pool killed for the
    ///   time limit of the task before it, a worker ended by SIGINT (Ctrl-C terminates the
    ///   pool), a failed initializer, and tasks failed by `terminate`.
    /// - **Where**: the task goes back to the front of the queue and runs on the next worker
    ///   free to take it, often the replacement of the worker it killed, maybe another; on an
    ///   MPI pool maybe on the same rank (no attempt is made to avoid a host).
    /// - **Results**: a task that succeeds on a retry delivers its value as if it had
    ///   succeeded at once: `map` returns every value in input order, `imap` yields in input
    ///   order (waiting for the retried task), `imap_unordered` yields it when it finishes. For
    ///   `map` and `imap`, a task is a chunk: the whole chunk runs again, its items before
    ///   the one that crashed included.
    /// - **At least once**: a retried task may have run in part (written a file, sent a
    ///   message) before its worker died: with retries, tasks should be idempotent.
    /// - **When retries run out**: a task that ran more than once and still failed gets
    ///   [`TaskError::RetriesExhausted`](crate::pool::TaskError::RetriesExhausted) with how
    ///   many times it ran and the last cause (`WorkerDied { how }`, `Panic { .. }`); one that
    ///   ran once gets the cause itself, as without retries.
    /// - [`max_worker_deaths_per_task`](PoolBuilder::max_worker_deaths_per_task) caps the
    ///   workers one task may kill, below its retries.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Pool, pool::TaskError};
    ///
    /// // Crashes its worker on its first two runs (counted in a file), then succeeds.
    /// fn flaky(counter: std::path::PathBuf) -> u32 {
    ///     let runs = std::fs::read(&counter).map_or(0, |b| b.len()) + 1;
    ///     std::fs::write(&counter, vec![0u8; runs]).unwrap();
    ///     if runs <= 2 {
    ///         std::process::abort();
    ///     }
    ///     runs as u32
    /// }
    /// fn always_crashes(_: ()) -> u32 { std::process::exit(3) }
    ///
    /// let counter = std::env::temp_dir().join(format!("flaky-doc-{}", std::process::id()));
    /// let _ = std::fs::remove_file(&counter);
    /// let pool = Pool::builder().processes(2).retries(2).build()?;
    /// assert_eq!(pool.apply(flaky, counter.clone())?, 3); // the third run succeeds
    /// match pool.apply(always_crashes, ()) {
    ///     Err(TaskError::RetriesExhausted { attempts, last }) => {
    ///         assert_eq!(attempts, 3);
    ///         assert!(matches!(*last, TaskError::WorkerDied { .. }));
    ///     }
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// std::fs::remove_file(counter)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "allowed-failures")]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Also retries a task that panicked (see [`retries`](PoolBuilder::retries)); off by
    /// default.
    pub fn retry_panics(mut self, on: bool) -> Self {
        self.retry_panics = on;
        self
    }

    /// A task whose runs have killed `n` workers fails for good, even with
    /// [`retries`](PoolBuilder::retries) left: a task that crashes every worker it meets
    /// should not take down a worker per retry (Dask's `allowed-failures`, which counts
    /// the deaths allowed before the last: Dask's 3 is `n = 4` here). Without it, only
    /// `retries` bounds the deaths. A panic does not count (its worker survives).
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Pool, pool::TaskError};
    ///
    /// fn always_crashes(_: ()) -> u32 { std::process::abort() }
    ///
    /// let pool = Pool::builder().processes(1).retries(10).max_worker_deaths_per_task(2).build()?;
    /// match pool.apply(always_crashes, ()) {
    ///     Err(TaskError::RetriesExhausted { attempts, .. }) => assert_eq!(attempts, 2),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "allowed-failures")]
    pub fn max_worker_deaths_per_task(mut self, n: u32) -> Self {
        self.max_deaths = Some(n);
        self
    }

    /// Shows a progress bar on stderr, with throughput and time left, during `map`,
    /// `starmap`, `imap`, `imap_unordered` (and their `_async` and `_chunked` forms) and the
    /// executor's `map`. Needs the cargo feature `progress`; without it the bar is silently
    /// absent (a callback, [`progress_with`](PoolBuilder::progress_with), needs no feature).
    pub fn progress(mut self, show: bool) -> Self {
        self.progress.bar = show;
        self
    }

    /// Calls `callback` with a [`Progress`](crate::pool::Progress) (items done, total,
    /// elapsed, time left) each time items of a map are done, for programs that draw their
    /// own progress: the same calls as [`progress`](PoolBuilder::progress), with or without
    /// the bar. Within a call, `done` grows with every report and the last report's `done`
    /// is the total. It runs on the thread that takes the values (the caller's), except for
    /// `map_async` and `starmap_async`, where it runs on the pool's thread: keep it short
    /// there. A callback that panics is reported (a `tracing` warning) and the map goes on.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Pool, pool::Progress};
    ///
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// let pool = Pool::builder()
    ///     .progress_with(|p: Progress| {
    ///         if let (Some(total), Some(eta)) = (p.total, p.eta) {
    ///             eprint!("\r{}/{total}, {:.0}/s, {eta:.1?} left", p.done, p.per_sec());
    ///         }
    ///     })
    ///     .build()?;
    /// let out: Vec<u32> = pool.imap_unordered(double, 0..10).collect::<Result<_, _>>()?;
    /// assert_eq!(out.len(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress_with(mut self, callback: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress.callback = Some(Arc::new(callback));
        self
    }

    /// What the workers do with their stdout and stderr (see
    /// [`process::Builder::output`](crate::process::Builder::output)):
    /// [`Output::Forward`](crate::process::Output::Forward) prints each line a worker writes
    /// on this process's stdout or stderr as `[PoolWorker-3] text`, whole, even when workers
    /// write long lines at once, and including what a worker wrote just before it was killed;
    /// [`Output::Callback`](crate::process::Output::Callback) hands the lines to a function.
    /// [`Pool::join`] returns once the workers' output has been delivered.
    ///
    /// The default is [`Output::Inherit`](crate::process::Output::Inherit): workers write to
    /// this process's stdout and stderr themselves, as Python's pool workers do. Forwarding is
    /// not the default because it changes what a worker's output is: a pipe instead of the
    /// terminal, so libraries that colour their output or draw progress bars when they see a
    /// terminal stop doing so, and C code's `printf` becomes block-buffered (and its buffer
    /// is lost when the worker exits by `_exit`). Interleaving, the other reason to forward,
    /// is rarer here than in Python: Rust's `println!` writes each line with one `write`,
    /// which a pipe keeps whole up to 4 KiB. Forwarding costs two pipes per worker and one
    /// thread per process, and a copy of each line; nothing per task (the `forwarding_on`
    /// peer of the `pool_apply_async` benchmark, in `BENCHMARKS.md`).
    ///
    /// # Examples
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use multiproc::{Pool, process::Output};
    ///
    /// fn shout(x: u32) -> u32 { println!("got {x}"); x }
    ///
    /// let lines = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&lines);
    /// let pool = Pool::builder()
    ///     .processes(2)
    ///     .output(Output::callback(move |l| seen.lock().unwrap().push(l.text().into_owned())))
    ///     .build()?;
    /// pool.map(shout, 0..3)?;
    /// pool.close();
    /// pool.join()?;
    /// let mut got = lines.lock().unwrap().clone();
    /// got.sort();
    /// assert_eq!(got, ["got 0", "got 1", "got 2"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn output(mut self, output: crate::process::Output) -> Self {
        self.output = output;
        self
    }

    /// Re-emits the workers' `tracing` events in this process with the fields `process.name`
    /// and `process.pid` (see
    /// [`process::Builder::forward_tracing`](crate::process::Builder::forward_tracing) for
    /// the details and limits). Off by default.
    pub fn forward_tracing(mut self, on: bool) -> Self {
        self.forward_tracing = on;
        self
    }

    /// The workers' name prefix (`PoolWorker` by default: `PoolWorker-1`, ...).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts the workers through `launcher` instead of as local child processes: on other
    /// machines, for instance (`multiproc-mpi` runs them on the ranks of an MPI job). The pool
    /// is otherwise the same. Its initializer's arguments cannot hold handles that own a file
    /// descriptor then (`build` fails with [`ErrorKind::InvalidInput`]). See
    /// [`remote`](crate::pool::remote) for an example.
    pub fn launcher(mut self, launcher: impl WorkerLauncher + 'static) -> Self {
        self.launcher = Some(Box::new(launcher));
        self
    }

    fn config(self) -> Result<(Config, ProgressSetup)> {
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "a pool needs at least one process",
            ));
        }
        if self.max_tasks == Some(0) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "max_tasks_per_child (maxtasksperchild) must be at least 1",
            ));
        }
        if self.max_deaths == Some(0) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "max_worker_deaths_per_task must be at least 1",
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "a task time limit must be longer than zero",
            ));
        }
        let placements = self.placements()?;
        let initializer = self.initializer.transpose()?.map(Arc::new);
        if self.max_memory == Some(0) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "max_memory_per_child must be above 0",
            ));
        }
        let memory_limit = self.placement.memory_limit;
        Ok((
            Config {
                processes,
                spec: WorkerSpec {
                    name: self.name.unwrap_or_else(|| "PoolWorker".to_owned()),
                    method: self.method,
                    initializer,
                    max_tasks: self.max_tasks,
                    placements,
                    slot: 0,
                    output: self.output,
                    forward_tracing: self.forward_tracing,
                },
                max_memory: self.max_memory,
                memory_limit,
                task_timeout: self.task_timeout,
                queue_ahead: QUEUE_AHEAD,
                retries: self.retries,
                max_deaths: self.max_deaths,
                retry_panics: self.retry_panics,
            },
            self.progress,
        ))
    }

    /// The workers' placements, one per slot pattern (empty: nothing to apply).
    fn placements(&self) -> Result<Vec<crate::process::placement::Placement>> {
        let cpu_sets: Vec<Option<Vec<usize>>> = match &self.cpu_plan {
            CpuPlan::Inherit => vec![self.placement.cpus.clone()],
            CpuPlan::Pin => sys::allowed_cpus()?
                .into_iter()
                .map(|cpu| Some(vec![cpu]))
                .collect(),
            CpuPlan::Sets(sets) => {
                if sets.is_empty() {
                    return Err(Error::with_message(
                        ErrorKind::InvalidInput,
                        "worker_cpu_sets needs at least one set",
                    ));
                }
                for set in sets {
                    cpu_mask(set)?;
                }
                sets.iter().cloned().map(Some).collect()
            }
        };
        if cpu_sets.len() == 1 && cpu_sets[0].is_none() && self.placement.is_empty() {
            return Ok(Vec::new());
        }
        cpu_sets
            .into_iter()
            .map(|cpus| {
                PlacementSpec {
                    cpus,
                    ..self.placement.clone()
                }
                .resolve()
            })
            .collect()
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for zero processes, a zero `maxtasksperchild`, a zero
    /// time limit, a zero `max_worker_deaths_per_task`, or handles among a [`launcher`](PoolBuilder::launcher)'s initializer arguments; [`ErrorKind::Encode`] if the initializer's arguments cannot be serialized;
    /// [`ErrorKind::Io`] when the workers cannot be started (none is left running).
    pub fn build(mut self) -> Result<Pool> {
        let remote = self.launcher.take();
        let (mut config, progress) = self.config()?;
        let processes = config.processes;
        let launcher: Box<dyn Launcher> = match remote {
            Some(launcher) => {
                RemoteLauncher::check(&config.spec)?;
                if config.max_memory.is_some() {
                    // Resident sizes are read from this machine's /proc.
                    return Err(Error::with_message(
                        ErrorKind::InvalidInput,
                        "max_memory_per_child applies to local workers only",
                    ));
                }
                config.queue_ahead += launcher.round_trip();
                Box::new(RemoteLauncher(launcher))
            }
            None => Box::new(PipeLauncher),
        };
        let core = Core::start(config, launcher)?;
        Ok(Pool {
            core,
            processes,
            progress,
        })
    }
}
