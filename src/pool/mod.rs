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
//! # Large arguments and values
//! Arguments and values are serialized and copied through each worker's pipes, whatever
//! their size: a pool does not send large ones out of band (the pool's thread must never
//! block, and its pipes carry bytes only). Multi-MiB items cross at a fraction of a
//! connection's bandwidth (BENCHMARKS.md, `pool_map_large`: about 0.4 GB/s for 4 MiB
//! `ByteBuf`s). For large arrays, pass a [`SharedSlice`](crate::shared::SharedSlice) (or its
//! [`chunks`](crate::shared::SharedSlice::chunks)) or a
//! [`SharedBuffer`](crate::shared::SharedBuffer): only a handle travels, and the worker reads
//! the caller's memory in place.
//!
//! ```
//! use multiproc::{Pool, shared::SharedSlice};
//!
//! fn sum(part: SharedSlice<u64>) -> u64 {
//!     part.iter().sum()
//! }
//!
//! let pool = Pool::new(2)?;
//! let mut big = SharedSlice::<u64>::new(1 << 16)?;
//! big.get_mut().expect("not shared yet").fill(1);
//! let sums = pool.map(sum, big.chunks(1 << 12)?)?;
//! assert_eq!(sums.iter().sum::<u64>(), 1 << 16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout: `mod.rs` ([`Pool`] and its methods), `builder.rs` ([`PoolBuilder`]), `task.rs` (what a
//! task is, [`TaskFn`] and [`Payload`], and how one is submitted), `map.rs` (`map`'s chunks and
//! their sinks), `imap.rs` ([`Imap`]), `supervisor/` (the pool's thread: workers, dispatch,
//! deaths, time limits; one file each), `transport.rs` (the link to one worker, behind a
//! trait), `worker.rs` (the worker's loop), `remote.rs` (the transport as a public extension
//! point, for workers on other machines), `codec.rs` (how chunks of values are laid out),
//! `async_result.rs`,
//! `executor.rs`, `error.rs`, `progress.rs`; `README.md` explains why nothing hangs.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::process::target;

mod async_result;
mod builder;
mod codec;
mod error;
mod executor;
mod imap;
mod map;
mod progress;
pub mod remote;
mod supervisor;
mod task;
mod transport;
mod worker;

pub(crate) use worker::PoolEntry;

pub use async_result::AsyncResult;
pub use builder::PoolBuilder;
pub use error::{TaskError, WorkerExit};
pub use executor::{
    AsCompleted, ExecutorBuilder, ExecutorMap, ProcessPoolExecutor, TaskFuture, as_completed,
};
pub use imap::Imap;
pub use progress::Progress;
pub use task::{Payload, TaskFn};

use async_result::{ApplySink, Callbacks, Slot};
use supervisor::{Core, Sink};
use task::{apply_entry, chunk_entry, encode_args, submit, submit_limited};

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
/// [`TaskError::Process`] of kind [`ErrorKind::Io`](crate::ErrorKind::Io) saying why; the pool
/// keeps trying, and runs tasks again once a worker starts.
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
    progress: progress::ProgressSetup,
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
    /// [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child), so the list is a snapshot; empty
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
    {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)` and returns at once; the value arrives in the [`AsyncResult`].
    /// Submitting to a closed pool gives a result that failed with [`TaskError::PoolClosed`].
    pub fn apply_async<F, A, T>(&self, f: F, args: A) -> AsyncResult<T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        AsyncResult::cancellable(slot, self.core.cancel_handle())
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        AsyncResult::cancellable(slot, self.core.cancel_handle())
    }

    /// Applies `f` to every item and returns the values in order, Python's `map`. The input
    /// is collected first and sent in chunks of Python's default size (about four per worker).
    ///
    /// # Errors
    /// The first [`TaskError`] of any chunk.
    pub fn map<F, A, T, I>(&self, f: F, iterable: I) -> Result<Vec<T>, TaskError>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
        I: IntoIterator<Item = A>,
    {
        self.map(f, iterable)
    }

    /// [`map`](Pool::map) without waiting: one [`AsyncResult`] for the whole list.
    pub fn map_async<F, A, T, I>(&self, f: F, iterable: I) -> AsyncResult<Vec<T>>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, iterable)
    }

    /// Applies `f` lazily: an iterator of values in input order, Python's `imap`. The input is
    /// pulled only as results are consumed (a bounded number of tasks ahead), so an endless
    /// or huge input runs in bounded memory.
    pub fn imap<'a, F, A, T, I>(&'a self, f: F, iterable: I) -> Imap<'a, T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        Imap::new(self, chunk_entry::<F, A, T>(&f), iterable, chunksize, true)
    }

    /// Like [`imap`](Pool::imap), but values come in the order they are ready, Python's
    /// `imap_unordered`.
    pub fn imap_unordered<'a, F, A, T, I>(&'a self, f: F, iterable: I) -> Imap<'a, T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
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
    /// [`ErrorKind::StillRunning`](crate::ErrorKind::StillRunning) if the pool was neither closed
    /// nor terminated (Python's `ValueError`).
    pub fn join(&self) -> Result<()> {
        self.core.join()
    }
}
