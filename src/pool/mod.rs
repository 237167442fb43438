//! [`Pool`] (Python's `multiprocessing.Pool`) and [`ProcessPoolExecutor`] (Python's
//! `concurrent.futures.ProcessPoolExecutor`), over one supervisor that never lets a caller
//! hang.
//!
//! A task is a function item or a closure that captures nothing, applied to serializable
//! arguments; its value travels back serialized. That is what lets the same task run in a
//! worker started by any start method, and it is checked at compile time:
//!
//! ```compile_fail
//! let pool = multiproc::Pool::new(1)?;
//! let k = 3u64;
//! pool.apply(move |x: u64| x * k, 2); // captures `k`: pass it as an argument instead
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Layout: `supervisor.rs` (the pool's thread: workers, dispatch, deaths, time limits),
//! `transport.rs` (the link to one worker, behind a trait), `worker.rs` (the worker's loop),
//! `codec.rs` (how chunks of values are laid out), `async_result.rs`, `executor.rs`,
//! `error.rs`, `progress.rs`; `README.md` explains why nothing hangs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::process::target;
use crate::sys;

mod async_result;
mod codec;
mod error;
mod executor;
mod progress;
mod supervisor;
mod transport;
mod worker;

pub(crate) use worker::PoolEntry;

pub use async_result::AsyncResult;
pub use error::{TaskError, WorkerExit};
pub use executor::{
    AsCompleted, ExecutorBuilder, ExecutorMap, ProcessPoolExecutor, TaskFuture, as_completed,
};

use async_result::{ApplySink, Callbacks, Slot, decode_caught};
use progress::Progress;
use supervisor::{Config, Core, Job, Sink};
use transport::{InitSpec, PipeLauncher, WorkerSpec};

/// The entry offset of `f` as a pool task taking `A` and returning `T`.
fn apply_entry<F, A, T>(_f: &F) -> i64
where
    F: Fn(A) -> T + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    const {
        assert!(
            crate::process::target::is_stateless::<F>(),
            "a pool task must be a fn item or a closure that captures nothing (nothing with a destructor either); pass values as arguments"
        )
    };
    // `None` only when this crate lives outside the main executable; the worker then refuses
    // the task with a clear error, as it refuses any offset outside the program's code.
    sys::entry_offset::<PoolEntry>(worker::apply_entry::<F, A, T>).unwrap_or(i64::MIN)
}

/// The entry offset of `f` mapped over a chunk of `A`s.
fn chunk_entry<F, A, T>(_f: &F) -> i64
where
    F: Fn(A) -> T + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    const {
        assert!(
            crate::process::target::is_stateless::<F>(),
            "a pool task must be a fn item or a closure that captures nothing (nothing with a destructor either); pass values as arguments"
        )
    };
    // `None` only when this crate lives outside the main executable; the worker then refuses
    // the task with a clear error, as it refuses any offset outside the program's code.
    sys::entry_offset::<PoolEntry>(worker::chunk_entry::<F, A, T>).unwrap_or(i64::MIN)
}

/// Encodes a task's arguments (`encode`), refusing handles that own a file descriptor: a
/// task travels to a running worker over a pipe, which carries bytes only. Handles reach
/// workers as start arguments, through the initializer.
fn encode_args(encode: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let (bytes, fds) = crate::wire::collect_fds(encode);
    if !fds.is_empty() {
        return Err(Error::with_message(
            ErrorKind::Encode,
            "a pool task's arguments hold a handle that owns a file descriptor (a Lock, \
             Value, Queue, Connection, SharedMemory...), which cannot be sent to a running \
             worker; give it to every worker through the pool's initializer \
             (PoolBuilder::initializer, ExecutorBuilder::initializer) and keep it there, in a \
             static for instance, as Python's pools share locks and values",
        ));
    }
    bytes
}

/// Python's default `chunksize` for `map`: about four chunks per worker.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(processes * 4).max(1)
}

/// A pool of worker processes, Python's `multiprocessing.Pool`.
///
/// Tasks are function items (or closures that capture nothing) applied to serializable
/// arguments. Unlike Python's pool, nothing here hangs: a task whose worker dies (killed,
/// crashed, `exit`) fails with [`TaskError::WorkerDied`] saying how, the worker is replaced
/// and the other tasks complete; a panicking task fails with its message; a task over the
/// [time limit](PoolBuilder::task_timeout) fails and its worker is replaced. No task runs
/// twice: a task goes to another worker only if the one it was given never started it.
///
/// A worker that cannot be started (out of descriptors, processes or memory) is retried,
/// with pauses growing from 10 ms to 500 ms: queued tasks wait meanwhile. Only when no worker
/// is alive and every start has failed for 5 seconds do the queued tasks fail, with
/// [`TaskError::Process`] of kind [`ErrorKind::Os`] saying why; the pool keeps trying, and
/// runs tasks again once a worker starts.
///
/// Dropping the pool terminates it, as leaving Python's `with Pool() as p:` block does;
/// [`close`](Pool::close) then [`join`](Pool::join) lets every submitted task finish first.
///
/// # Examples
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
/// assert_eq!(pool.apply(square, 9)?, 81);
///
/// // Tuples for several arguments (Python's `starmap`).
/// let sums = pool.starmap(|(a, b): (u32, u32)| a + b, vec![(1, 2), (3, 4)])?;
/// assert_eq!(sums, vec![3, 7]);
///
/// // Lazy, in order, pulling the input as it goes.
/// let firsts: Vec<u64> = pool.imap(square, 0..).take(3).collect::<Result<_, _>>()?;
/// assert_eq!(firsts, vec![0, 1, 4]);
///
/// pool.close();
/// pool.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pool {
    core: Core,
    processes: usize,
    progress: bool,
}

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
///     .maxtasksperchild(100)
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
    progress: bool,
    name: Option<String>,
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
    /// with [`TaskError::InitializerFailed`] (where Python's pool restarts workers for ever).
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
        F: Fn(A) + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "a pool initializer must be a fn item or a closure that captures nothing; pass values as arguments"
            )
        };
        // Encoded as a start argument is, so that the descriptors of handles among the
        // arguments are collected (and duplicated) beside the bytes.
        let task = target::ArgsTask { f, args };
        let (remote, fds) = crate::wire::collect_fds(|| target::Task::to_remote(&task));
        drop(task);
        self.initializer = Some(remote.map(|remote| InitSpec {
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
    #[doc(alias = "max_tasks_per_child")]
    pub fn maxtasksperchild(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// The start method for the workers.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A time limit for each task (each chunk, for `map`): a task that runs longer fails with
    /// [`TaskError::TimeLimit`], and its worker is killed and replaced.
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

    /// Shows a progress bar on stderr during `map` and `imap` calls. Needs the cargo feature
    /// `progress`; without it the bar is silently absent.
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// The workers' name prefix (`PoolWorker` by default: `PoolWorker-1`, ...).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn config(self) -> Result<(Config, bool)> {
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
                "maxtasksperchild must be at least 1",
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "a task time limit must be longer than zero",
            ));
        }
        let initializer = self.initializer.transpose()?.map(Arc::new);
        Ok((
            Config {
                processes,
                spec: WorkerSpec {
                    name: self.name.unwrap_or_else(|| "PoolWorker".to_owned()),
                    method: self.method,
                    initializer,
                    max_tasks: self.max_tasks,
                },
                task_timeout: self.task_timeout,
            },
            self.progress,
        ))
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for zero processes, a zero `maxtasksperchild` or a zero
    /// time limit; [`ErrorKind::Encode`] if the initializer's arguments cannot be serialized;
    /// [`ErrorKind::Os`] when the workers cannot be started (none is left running).
    pub fn build(self) -> Result<Pool> {
        let (config, progress) = self.config()?;
        let processes = config.processes;
        let core = Core::start(config, Box::new(PipeLauncher))?;
        Ok(Pool {
            core,
            processes,
            progress,
        })
    }
}

impl Pool {
    /// A pool of `processes` workers.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool> {
        PoolBuilder::new().processes(processes).build()
    }

    /// A builder for the other options.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// The number of workers the pool keeps.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The process ids of the pool's worker processes now, oldest first: those it started
    /// and has not yet seen end (a worker that is exiting, or being killed for a time limit,
    /// is listed until it is gone). Workers are replaced as they die or reach
    /// [`maxtasksperchild`](PoolBuilder::maxtasksperchild), so the list is a snapshot; empty
    /// once the pool is joined.
    ///
    /// # Examples
    /// ```
    /// use multiproc::Pool;
    ///
    /// fn my_pid(_: ()) -> u32 { std::process::id() }
    ///
    /// let pool = Pool::new(2)?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// assert!(pids.contains(&pool.apply(my_pid, ())?));
    /// pool.close();
    /// pool.join()?;
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        self.core.worker_pids()
    }

    /// Runs `f(args)` in a worker and waits for its value.
    ///
    /// # Errors
    /// The task's [`TaskError`].
    pub fn apply<F, A, T>(&self, f: F, args: A) -> Result<T, TaskError>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)` and returns at once; the value arrives in the [`AsyncResult`].
    /// Submitting to a closed pool gives a result that failed with [`TaskError::PoolClosed`].
    pub fn apply_async<F, A, T>(&self, f: F, args: A) -> AsyncResult<T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_apply(apply_entry::<F, A, T>(&f), &args, None)
    }

    /// [`apply_async`](Pool::apply_async) with a time limit for this task alone (pebble's
    /// `schedule(..., timeout=)`), over the pool's [`task_timeout`](PoolBuilder::task_timeout):
    /// past it the task fails with [`TaskError::TimeLimit`] and its worker is replaced.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Pool, pool::TaskError};
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = Pool::new(1)?;
    /// let r = pool.apply_async_with_time_limit(nap, 10_000, Duration::from_millis(100));
    /// assert!(matches!(r.get(), Err(TaskError::TimeLimit { .. })));
    /// assert_eq!(pool.apply(nap, 1)?, 1); // a fresh worker took over
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_with_time_limit<F, A, T>(
        &self,
        f: F,
        args: A,
        limit: Duration,
    ) -> AsyncResult<T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let slot = Slot::new();
        let sink = Box::new(ApplySink {
            slot: Arc::clone(&slot),
            callbacks: None,
        });
        match encode_args(|| target::encode(&args)) {
            Ok(payload) => submit_limited(
                &self.core,
                apply_entry::<F, A, T>(&f),
                payload,
                sink,
                Some(limit),
            ),
            Err(e) => sink.finish(Err(e.into())),
        }
        AsyncResult::new(slot)
    }

    /// [`apply_async`](Pool::apply_async) with Python's `callback` and `error_callback`,
    /// which run on the pool's thread before the result becomes ready. Keep them short, and
    /// never wait on the same pool inside one: the pool's thread would wait for itself (as in
    /// Python). A callback that panics is reported (a `tracing` warning), the result completes
    /// all the same and the pool carries on.
    ///
    /// # Examples
    /// ```
    /// use std::sync::mpsc;
    /// use multiproc::Pool;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async_with(square, 5, move |v| tx.send(*v).unwrap(), |e| eprintln!("{e}"));
    /// assert_eq!(r.get()?, 25);
    /// assert_eq!(rx.recv()?, 25);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_with<F, A, T>(
        &self,
        f: F,
        args: A,
        callback: impl FnOnce(&T) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> AsyncResult<T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let callbacks = Callbacks {
            on_value: Box::new(callback),
            on_error: Box::new(error_callback),
        };
        self.submit_apply(apply_entry::<F, A, T>(&f), &args, Some(callbacks))
    }

    fn submit_apply<A: Serialize, T: DeserializeOwned + Send + 'static>(
        &self,
        entry: i64,
        args: &A,
        callbacks: Option<Callbacks<T>>,
    ) -> AsyncResult<T> {
        let slot = Slot::new();
        let sink = ApplySink {
            slot: Arc::clone(&slot),
            callbacks,
        };
        match encode_args(|| target::encode(args)) {
            Ok(payload) => submit(&self.core, entry, payload, Box::new(sink)),
            Err(e) => Box::new(sink).finish(Err(e.into())),
        }
        AsyncResult::new(slot)
    }

    /// Applies `f` to every item and returns the values in order, Python's `map`. The input
    /// is collected first and sent in chunks of Python's default size (about four per worker).
    ///
    /// # Errors
    /// The first [`TaskError`] of any chunk.
    pub fn map<F, A, T, I>(&self, f: F, iterable: I) -> Result<Vec<T>, TaskError>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_sync(chunk_entry::<F, A, T>(&f), iterable, None)
    }

    /// [`map`](Pool::map) with an explicit `chunksize` (items per task).
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn map_chunked<F, A, T, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> Result<Vec<T>, TaskError>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_sync(chunk_entry::<F, A, T>(&f), iterable, Some(chunksize))
    }

    /// Python's `starmap`: [`map`](Pool::map) over tuples of arguments, which the task takes
    /// apart in its pattern (`|(a, b): (u32, u32)| a + b`).
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn starmap<F, A, T, I>(&self, f: F, iterable: I) -> Result<Vec<T>, TaskError>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map(f, iterable)
    }

    /// [`map`](Pool::map) without waiting: one [`AsyncResult`] for the whole list.
    pub fn map_async<F, A, T, I>(&self, f: F, iterable: I) -> AsyncResult<Vec<T>>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.submit_map(chunk_entry::<F, A, T>(&f), iterable, None, None)
    }

    /// [`map_async`](Pool::map_async) with a `chunksize` (`None`: Python's default) and
    /// Python's `callback` (given the whole list) and `error_callback` (given the first
    /// failure), which run on the pool's thread before the result becomes ready, as with
    /// [`apply_async_with`](Pool::apply_async_with). A callback that panics is reported and
    /// the result completes all the same.
    pub fn map_async_with<F, A, T, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: Option<usize>,
        callback: impl FnOnce(&Vec<T>) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> AsyncResult<Vec<T>>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let callbacks = Callbacks {
            on_value: Box::new(callback),
            on_error: Box::new(error_callback),
        };
        self.submit_map(
            chunk_entry::<F, A, T>(&f),
            iterable,
            chunksize,
            Some(callbacks),
        )
    }

    /// Python's `starmap_async`: [`map_async`](Pool::map_async) over tuples of arguments.
    pub fn starmap_async<F, A, T, I>(&self, f: F, iterable: I) -> AsyncResult<Vec<T>>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, iterable)
    }

    /// `map` for a caller who waits: each chunk is submitted as soon as it is encoded, and
    /// the values are decoded on the caller's thread, so the pool's thread only moves bytes
    /// and the caller's encoding and decoding overlap the workers' computing.
    fn map_sync<A, T, I>(
        &self,
        entry: i64,
        iterable: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<T>, TaskError>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = iterable.into_iter().collect();
        let chunksize = match chunksize {
            Some(0) => {
                return Err(TaskError::Process(Error::with_message(
                    ErrorKind::InvalidInput,
                    "chunksize must be at least 1",
                )));
            }
            Some(n) => n,
            None => default_chunksize(items.len(), self.processes),
        };
        let progress = Progress::new(self.progress, Some(items.len() as u64));
        let mut pending = VecDeque::with_capacity(items.len().div_ceil(chunksize));
        for chunk in items.chunks(chunksize) {
            let slot = Slot::new();
            let sink = Box::new(BytesSink {
                slot: Arc::clone(&slot),
            });
            match encode_args(|| codec::encode_chunk(chunk)) {
                Ok(payload) => submit(&self.core, entry, payload, sink),
                Err(e) => return Err(e.into()),
            }
            pending.push_back((chunk.len(), slot));
        }
        let total = items.len();
        drop(items);
        let mut out = Vec::with_capacity(total);
        for (len, slot) in pending {
            let bytes = slot.get(None)?;
            out.extend(decode_chunk::<T>(&bytes, len)?);
            progress.advance(len);
        }
        progress.finish();
        Ok(out)
    }

    fn submit_map<A, T, I>(
        &self,
        entry: i64,
        iterable: I,
        chunksize: Option<usize>,
        callbacks: Option<Callbacks<Vec<T>>>,
    ) -> AsyncResult<Vec<T>>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = iterable.into_iter().collect();
        let slot = Slot::new();
        if items.is_empty() {
            let outcome = Ok(Vec::new());
            if let Some(cb) = callbacks {
                cb.run(&outcome);
            }
            slot.complete(outcome);
            return AsyncResult::new(slot);
        }
        let chunksize = match chunksize {
            Some(0) => {
                let e = TaskError::Process(Error::with_message(
                    ErrorKind::InvalidInput,
                    "chunksize must be at least 1",
                ));
                return AsyncResult::failed(e);
            }
            Some(n) => n,
            None => default_chunksize(items.len(), self.processes),
        };
        let chunks = items.len().div_ceil(chunksize);
        let state = Arc::new(Mutex::new(MapState {
            parts: (0..chunks).map(|_| None).collect(),
            remaining: chunks,
            slot: Arc::clone(&slot),
            callbacks,
            progress: Progress::new(self.progress, Some(items.len() as u64)),
        }));
        let mut jobs = Vec::with_capacity(chunks);
        for (index, chunk) in items.chunks(chunksize).enumerate() {
            let sink = Box::new(ChunkSink {
                index,
                len: chunk.len(),
                state: Arc::clone(&state),
                finished: false,
            });
            match encode_args(|| codec::encode_chunk(chunk))
                .and_then(|p| transport::check_size(p.len()).map(|()| p))
            {
                Ok(payload) => jobs.push(Job {
                    entry,
                    payload,
                    sink,
                    limit: None,
                }),
                Err(e) => {
                    sink.finish(Err(e.into()));
                    return AsyncResult::new(slot);
                }
            }
        }
        if let Err(jobs) = self.core.submit_all(jobs) {
            for job in jobs {
                job.sink.finish(Err(TaskError::PoolClosed));
            }
        }
        AsyncResult::new(slot)
    }

    /// Applies `f` lazily: an iterator of values in input order, Python's `imap`. The input is
    /// pulled only as results are consumed (a bounded number of tasks ahead), so an endless
    /// or huge input runs in bounded memory.
    pub fn imap<'a, F, A, T, I>(&'a self, f: F, iterable: I) -> Imap<'a, T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        self.imap_chunked(f, iterable, 1)
    }

    /// [`imap`](Pool::imap) with `chunksize` items per task (0 is taken as 1).
    pub fn imap_chunked<'a, F, A, T, I>(
        &'a self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> Imap<'a, T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        Imap::new(self, chunk_entry::<F, A, T>(&f), iterable, chunksize, true)
    }

    /// Like [`imap`](Pool::imap), but values come in the order they are ready, Python's
    /// `imap_unordered`.
    pub fn imap_unordered<'a, F, A, T, I>(&'a self, f: F, iterable: I) -> Imap<'a, T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        self.imap_unordered_chunked(f, iterable, 1)
    }

    /// [`imap_unordered`](Pool::imap_unordered) with `chunksize` items per task.
    pub fn imap_unordered_chunked<'a, F, A, T, I>(
        &'a self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> Imap<'a, T>
    where
        F: Fn(A) -> T + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        Imap::new(self, chunk_entry::<F, A, T>(&f), iterable, chunksize, false)
    }

    /// Accepts no more tasks; those submitted still run, and the workers exit when done.
    pub fn close(&self) {
        self.core.close();
    }

    /// Stops at once: kills the workers; unfinished tasks fail with
    /// [`TaskError::Terminated`].
    pub fn terminate(&self) {
        self.core.terminate();
    }

    /// Waits until the workers have exited, after [`close`](Pool::close) (every submitted
    /// task has finished then) or [`terminate`](Pool::terminate).
    ///
    /// # Errors
    /// [`ErrorKind::StillRunning`] if the pool was neither closed nor terminated (Python's
    /// `ValueError`).
    pub fn join(&self) -> Result<()> {
        self.core.join()
    }
}

fn submit(core: &Core, entry: i64, payload: Vec<u8>, sink: Box<dyn Sink>) {
    submit_limited(core, entry, payload, sink, None);
}

fn submit_limited(
    core: &Core,
    entry: i64,
    payload: Vec<u8>,
    sink: Box<dyn Sink>,
    limit: Option<Duration>,
) {
    if let Err(e) = transport::check_size(payload.len()) {
        sink.finish(Err(e.into()));
        return;
    }
    if let Err(job) = core.submit(Job {
        entry,
        payload,
        sink,
        limit,
    }) {
        job.sink.finish(Err(TaskError::PoolClosed));
    }
}

// ---------------------------------------------------------------------------------------------
// map: chunks that complete one list.

/// Keeps a task's encoded value for the waiting caller to decode.
struct BytesSink {
    slot: Arc<Slot<Vec<u8>>>,
}

impl Sink for BytesSink {
    fn finish(self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        self.slot.complete(outcome);
    }
}

impl Drop for BytesSink {
    fn drop(&mut self) {
        // Dropped without an outcome (the pool went away); after `finish` this does nothing.
        self.slot.complete(Err(TaskError::Terminated));
    }
}

struct MapState<T> {
    parts: Vec<Option<Vec<T>>>,
    remaining: usize,
    slot: Arc<Slot<Vec<T>>>,
    callbacks: Option<Callbacks<Vec<T>>>,
    progress: Progress,
}

struct ChunkSink<T> {
    index: usize,
    len: usize,
    state: Arc<Mutex<MapState<T>>>,
    finished: bool,
}

impl<T: DeserializeOwned + Send + 'static> Sink for ChunkSink<T> {
    fn finish(mut self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        let decoded =
            outcome.and_then(|bytes| decode_caught(|| decode_chunk::<T>(&bytes, self.len)));
        // From here nothing unwinds (callbacks are caught), so this chunk's outcome is
        // delivered below and the drop must not deliver another.
        self.finished = true;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.parts.is_empty() {
            return; // already failed
        }
        let outcome = match decoded {
            Ok(values) => {
                state.parts[self.index] = Some(values);
                state.remaining -= 1;
                state.progress.advance(self.len);
                if state.remaining > 0 {
                    return;
                }
                let parts = std::mem::take(&mut state.parts);
                Ok(parts.into_iter().flatten().flatten().collect())
            }
            Err(e) => {
                // Python's map fails as soon as one chunk fails.
                state.parts = Vec::new();
                Err(e)
            }
        };
        state.progress.finish();
        let callbacks = state.callbacks.take();
        let slot = Arc::clone(&state.slot);
        drop(state);
        if let Some(cb) = callbacks {
            cb.run(&outcome);
        }
        slot.complete(outcome);
    }
}

impl<T> Drop for ChunkSink<T> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped without an outcome (the pool went away): never leave a waiter waiting.
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.slot.complete(Err(TaskError::Terminated));
        }
    }
}

fn decode_chunk<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    len: usize,
) -> Result<Vec<T>, TaskError> {
    let values: Vec<T> = codec::decode_chunk(bytes)?;
    if values.len() != len {
        return Err(TaskError::Process(Error::with_message(
            ErrorKind::Decode,
            format!("a chunk of {len} tasks returned {} values", values.len()),
        )));
    }
    Ok(values)
}

// ---------------------------------------------------------------------------------------------
// imap: a window of chunks in flight, fed from the input as results are taken.

type Feed<'a> = Box<dyn FnMut() -> Option<(usize, Result<Vec<u8>>)> + 'a>;
type ChunkOutcome<T> = (usize, std::result::Result<Vec<T>, TaskError>);
/// A chunk's length and its encoded values.
type RawChunk = (usize, std::result::Result<Vec<u8>, TaskError>);
/// A chunk in flight: its length and where its encoded values land.
type PendingChunk = (usize, Arc<Slot<Vec<u8>>>);

/// The lazy iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one
/// `Result<T, TaskError>` per input item.
///
/// A bounded number of tasks is in flight; the next input items are pulled and submitted as
/// values are taken. A failed chunk yields one error per item in it.
pub struct Imap<'a, T> {
    pool: &'a Pool,
    entry: i64,
    feed: Feed<'a>,
    input_done: bool,
    window: usize,
    /// In order: each chunk's length and slot.
    ordered: Option<VecDeque<PendingChunk>>,
    /// Out of order: outcomes as they come.
    unordered: (mpsc::Sender<RawChunk>, mpsc::Receiver<RawChunk>),
    in_flight: usize,
    ready: VecDeque<Result<T, TaskError>>,
    /// The pool stopped accepting tasks before the input ended.
    refused: bool,
    progress: Progress,
}

impl<T> std::fmt::Debug for Imap<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.in_flight)
            .field("input_done", &self.input_done)
            .finish_non_exhaustive()
    }
}

struct ChannelSink {
    len: usize,
    tx: Option<mpsc::Sender<RawChunk>>,
}

impl Sink for ChannelSink {
    fn finish(mut self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.len, outcome));
        }
    }
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.len, Err(TaskError::Terminated)));
        }
    }
}

impl<'a, T: DeserializeOwned + Send + 'static> Imap<'a, T> {
    fn new<A, I>(pool: &'a Pool, entry: i64, iterable: I, chunksize: usize, ordered: bool) -> Self
    where
        A: Serialize + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        let chunksize = chunksize.max(1);
        let mut input = iterable.into_iter();
        let (lower, upper) = input.size_hint();
        let total = (upper == Some(lower)).then_some(lower as u64);
        let feed: Feed<'a> = Box::new(move || {
            let chunk: Vec<A> = input.by_ref().take(chunksize).collect();
            if chunk.is_empty() {
                return None;
            }
            Some((chunk.len(), encode_args(|| codec::encode_chunk(&chunk))))
        });
        Imap {
            pool,
            entry,
            feed,
            input_done: false,
            window: (pool.processes * 32).max(64),
            ordered: ordered.then(VecDeque::new),
            unordered: mpsc::channel(),
            in_flight: 0,
            ready: VecDeque::new(),
            refused: false,
            progress: Progress::new(pool.progress, total),
        }
    }

    fn refill(&mut self) {
        if !self.input_done && !self.pool.core.is_running() {
            // Closed or terminated: stop pulling the input (it may be endless); after the
            // chunks in flight, the iterator says so once and ends.
            self.input_done = true;
            self.refused = true;
            return;
        }
        while !self.input_done && self.in_flight < self.window {
            let Some((len, payload)) = (self.feed)() else {
                self.input_done = true;
                break;
            };
            self.in_flight += 1;
            let sink: Box<dyn Sink> = match &mut self.ordered {
                Some(queue) => {
                    let slot = Slot::new();
                    queue.push_back((len, Arc::clone(&slot)));
                    Box::new(BytesSink { slot })
                }
                None => Box::new(ChannelSink {
                    len,
                    tx: Some(self.unordered.0.clone()),
                }),
            };
            match payload {
                Ok(payload) => submit(&self.pool.core, self.entry, payload, sink),
                Err(e) => sink.finish(Err(e.into())),
            }
        }
    }

    fn next_chunk(&mut self) -> Option<ChunkOutcome<T>> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        match &mut self.ordered {
            Some(queue) => {
                let (len, slot) = queue.pop_front()?;
                let values = slot
                    .get(None)
                    .and_then(|bytes| decode_chunk::<T>(&bytes, len));
                Some((len, values))
            }
            // Every submitted chunk sends exactly one outcome (on finish or on drop).
            None => {
                let (len, raw) = self.unordered.1.recv().ok()?;
                Some((len, raw.and_then(|bytes| decode_chunk::<T>(&bytes, len))))
            }
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Iterator for Imap<'_, T> {
    type Item = Result<T, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.progress.advance(1);
                return Some(item);
            }
            self.refill();
            let Some((len, outcome)) = self.next_chunk() else {
                self.progress.finish();
                if std::mem::take(&mut self.refused) {
                    return Some(Err(TaskError::PoolClosed));
                }
                return None;
            };
            match outcome {
                Ok(values) => self.ready.extend(values.into_iter().map(Ok)),
                Err(e) => {
                    for _ in 1..len {
                        self.ready.push_back(Err(e.duplicate()));
                    }
                    self.ready.push_back(Err(e));
                }
            }
        }
    }
}
