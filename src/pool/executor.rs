//! [`ProcessPoolExecutor`], Python's `concurrent.futures.ProcessPoolExecutor`, and its
//! [`TaskFuture`], which is also a `std::future::Future`.
//!
//! Unlike Python's executor, a worker that dies does not break the pool: only the task it was
//! running fails ([`TaskError::WorkerDied`]), and the worker is replaced.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::async_result::{ApplySink, Phase, Slot};
use super::progress::Tracker;
use super::supervisor::CancelHandle;
use super::task::{Payload, TaskFn, apply_entry, encode_args, submit_limited};
use super::{Pool, PoolBuilder, TaskError};
use crate::context::StartMethod;
use crate::error::Result;
use crate::process::target;

/// A pool of worker processes with Python's executor interface.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::ProcessPoolExecutor;
///
/// fn cube(x: i64) -> i64 { x * x * x }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let f = ex.submit(cube, 3);
/// assert_eq!(f.result()?, 27);
///
/// let cubes: Vec<i64> = ex
///     .map(cube, 1..=3, Some(Duration::from_secs(10)))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(cubes, vec![1, 8, 27]);
///
/// // Futures are `std::future::Future`s too: `ex.submit(cube, 2).await` in async code.
/// ex.shutdown(true, false);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ProcessPoolExecutor {
    pool: Pool,
}

/// Configures a [`ProcessPoolExecutor`]: Python's `max_workers`, `initializer`, `initargs`,
/// `max_tasks_per_child` and `mp_context`, plus a per-task time limit.
///
/// # Examples
/// ```
/// use multiproc::ProcessPoolExecutor;
///
/// fn id(x: u8) -> u8 { x }
///
/// let ex = ProcessPoolExecutor::builder().max_workers(1).max_tasks_per_child(1).build()?;
/// assert_eq!(ex.submit(id, 1).result()?, 1);
/// assert_eq!(ex.submit(id, 2).result()?, 2); // ran in a fresh worker
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ExecutorBuilder {
    inner: PoolBuilder,
}

impl ExecutorBuilder {
    /// A builder with Python's defaults ([`cpu_count`](crate::cpu_count) workers).
    pub fn new() -> Self {
        ExecutorBuilder::default()
    }

    /// The number of worker processes.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.inner = self.inner.processes(n);
        self
    }

    /// A function each worker runs once with `args` before its first task; `args` may hold
    /// handles (a `Lock`, a `Value`, a `Queue`...), the way to share them with the workers.
    /// See [`PoolBuilder::initializer`].
    pub fn initializer<F, A>(mut self, f: F, args: A) -> Self
    where
        F: TaskFn<A, ()>,
        A: Payload,
    {
        self.inner = self.inner.initializer(f, args);
        self
    }

    /// Each worker exits after this many tasks and is replaced.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.inner = self.inner.max_tasks_per_child(n);
        self
    }

    /// The start method for the workers (Python's `mp_context`).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.inner = self.inner.start_method(method);
        self
    }

    /// See [`PoolBuilder::worker_cpu_affinity`].
    pub fn worker_cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.inner = self.inner.worker_cpu_affinity(cpus);
        self
    }

    /// See [`PoolBuilder::pin_workers`].
    pub fn pin_workers(mut self) -> Self {
        self.inner = self.inner.pin_workers();
        self
    }

    /// See [`PoolBuilder::worker_cpu_sets`].
    pub fn worker_cpu_sets(mut self, sets: Vec<Vec<usize>>) -> Self {
        self.inner = self.inner.worker_cpu_sets(sets);
        self
    }

    /// See [`PoolBuilder::worker_nice`].
    pub fn worker_nice(mut self, nice: i32) -> Self {
        self.inner = self.inner.worker_nice(nice);
        self
    }

    /// See [`PoolBuilder::worker_rlimit`].
    pub fn worker_rlimit(
        mut self,
        resource: crate::process::Resource,
        soft: u64,
        hard: u64,
    ) -> Self {
        self.inner = self.inner.worker_rlimit(resource, soft, hard);
        self
    }

    /// See [`PoolBuilder::memory_limit`].
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.inner = self.inner.memory_limit(bytes);
        self
    }

    /// See [`PoolBuilder::max_memory_per_child`].
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.inner = self.inner.max_memory_per_child(bytes);
        self
    }

    /// A time limit for each task; see [`PoolBuilder::task_timeout`].
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.inner = self.inner.task_timeout(limit);
        self
    }

    /// Runs a task again, up to `n` more times, when its worker died; see
    /// [`PoolBuilder::retries`].
    pub fn retries(mut self, n: u32) -> Self {
        self.inner = self.inner.retries(n);
        self
    }

    /// Also retries a task that panicked; see [`PoolBuilder::retry_panics`].
    pub fn retry_panics(mut self, on: bool) -> Self {
        self.inner = self.inner.retry_panics(on);
        self
    }

    /// A task whose runs have killed `n` workers fails for good; see
    /// [`PoolBuilder::max_worker_deaths_per_task`].
    #[doc(alias = "allowed-failures")]
    pub fn max_worker_deaths_per_task(mut self, n: u32) -> Self {
        self.inner = self.inner.max_worker_deaths_per_task(n);
        self
    }

    /// Shows a progress bar on stderr during [`map`](ProcessPoolExecutor::map), as the
    /// values are taken; see [`PoolBuilder::progress`].
    pub fn progress(mut self, show: bool) -> Self {
        self.inner = self.inner.progress(show);
        self
    }

    /// Calls `callback` with a [`Progress`](crate::pool::Progress) as the values of a
    /// [`map`](ProcessPoolExecutor::map) are taken, on the thread taking them; see
    /// [`PoolBuilder::progress_with`].
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use multiproc::{ProcessPoolExecutor, pool::Progress};
    ///
    /// static DONE: AtomicU64 = AtomicU64::new(0);
    /// fn neg(x: i32) -> i32 { -x }
    ///
    /// let ex = ProcessPoolExecutor::builder()
    ///     .max_workers(2)
    ///     .progress_with(|p: Progress| DONE.store(p.done, Ordering::Relaxed))
    ///     .build()?;
    /// let out: Vec<i32> = ex.map(neg, 0..5, None).collect::<Result<_, _>>()?;
    /// assert_eq!(out, vec![0, -1, -2, -3, -4]);
    /// assert_eq!(DONE.load(Ordering::Relaxed), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress_with(
        mut self,
        callback: impl Fn(crate::pool::Progress) + Send + Sync + 'static,
    ) -> Self {
        self.inner = self.inner.progress_with(callback);
        self
    }

    /// What the workers do with their stdout and stderr; see [`PoolBuilder::output`].
    pub fn output(mut self, output: crate::process::Output) -> Self {
        self.inner = self.inner.output(output);
        self
    }

    /// Re-emits the workers' `tracing` events here; see [`PoolBuilder::forward_tracing`].
    pub fn forward_tracing(mut self, on: bool) -> Self {
        self.inner = self.inner.forward_tracing(on);
        self
    }

    /// Starts the workers through `launcher`, on other machines for instance; see
    /// [`PoolBuilder::launcher`].
    pub fn launcher(mut self, launcher: impl super::remote::WorkerLauncher + 'static) -> Self {
        self.inner = self.inner.launcher(launcher);
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn build(self) -> Result<ProcessPoolExecutor> {
        Ok(ProcessPoolExecutor {
            pool: self.inner.name("ProcessPoolExecutor").build()?,
        })
    }
}

impl ProcessPoolExecutor {
    /// An executor with `max_workers` worker processes.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(max_workers: usize) -> Result<Self> {
        ExecutorBuilder::new().max_workers(max_workers).build()
    }

    /// A builder for the other options.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::new()
    }

    /// Schedules `f(args)` and returns its future. After [`shutdown`](Self::shutdown) the
    /// future has failed with [`TaskError::PoolClosed`].
    pub fn submit<F, A, T>(&self, f: F, args: A) -> TaskFuture<T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
    {
        self.submit_entry(apply_entry::<F, A, T>(&f), &args)
    }

    /// [`submit`](Self::submit) with a time limit for this task alone: past it the task fails
    /// with [`TaskError::TimeLimit`] and its worker is replaced.
    pub fn submit_with_time_limit<F, A, T>(&self, f: F, args: A, limit: Duration) -> TaskFuture<T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
    {
        self.submit_entry_limited(apply_entry::<F, A, T>(&f), &args, Some(limit))
    }

    fn submit_entry<A: Serialize, T: DeserializeOwned + Send + 'static>(
        &self,
        entry: i64,
        args: &A,
    ) -> TaskFuture<T> {
        self.submit_entry_limited(entry, args, None)
    }

    fn submit_entry_limited<A: Serialize, T: DeserializeOwned + Send + 'static>(
        &self,
        entry: i64,
        args: &A,
        limit: Option<Duration>,
    ) -> TaskFuture<T> {
        let slot = Slot::new();
        let sink = Box::new(ApplySink {
            slot: Arc::clone(&slot),
            callbacks: None,
        });
        match encode_args(|| target::encode(args)) {
            Ok(payload) => submit_limited(&self.pool.core, entry, payload, sink, limit),
            Err(e) => super::supervisor::Sink::finish(sink, Err(e.into())),
        }
        TaskFuture {
            slot,
            pool: Some(self.pool.core.cancel_handle()),
        }
    }

    /// Submits `f` for every item at once and returns their values in order, Python's
    /// `Executor.map`. With a `timeout`, an item not ready that long after this call yields
    /// [`TaskError::Timeout`], the remaining tasks are cancelled, and the iterator ends.
    pub fn map<F, A, T, I>(&self, f: F, iterable: I, timeout: Option<Duration>) -> ExecutorMap<T>
    where
        F: TaskFn<A, T>,
        A: Payload,
        T: Payload,
        I: IntoIterator<Item = A>,
    {
        let entry = apply_entry::<F, A, T>(&f);
        let futures: VecDeque<_> = iterable
            .into_iter()
            .map(|a| self.submit_entry(entry, &a))
            .collect();
        ExecutorMap {
            progress: Tracker::new(&self.pool.progress, Some(futures.len() as u64)),
            futures,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// The process ids of the executor's worker processes now; see [`Pool::worker_pids`].
    ///
    /// # Examples
    /// ```
    /// use multiproc::ProcessPoolExecutor;
    ///
    /// let ex = ProcessPoolExecutor::new(2)?;
    /// let pids = ex.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// let ran = ex.submit(|_: ()| std::process::id(), ()).result()?;
    /// assert!(pids.contains(&ran));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.worker_pids()
    }

    /// Stops accepting tasks. With `cancel_futures`, tasks that have not started are
    /// cancelled; with `wait`, returns once every other task has finished and the workers
    /// have exited. Dropping the executor is `shutdown(true, false)`, as leaving Python's
    /// `with` block.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        if cancel_futures {
            self.pool.core.cancel_queued();
        }
        self.pool.close();
        if wait {
            let _ = self.pool.join();
        }
    }
}

impl Drop for ProcessPoolExecutor {
    fn drop(&mut self) {
        self.shutdown(true, false);
    }
}

/// The future value of a task given to [`ProcessPoolExecutor::submit`], Python's
/// `concurrent.futures.Future`. It is a [`std::future::Future`] as well, so async code can
/// `.await` it (no runtime needed: completion wakes the task's waker).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::ProcessPoolExecutor;
///
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// let ex = ProcessPoolExecutor::new(1)?;
/// let first = ex.submit(nap, 200);
/// let second = ex.submit(nap, 1);
/// assert!(second.cancel()); // not started yet: the only worker is busy
/// assert!(second.cancelled());
/// assert_eq!(first.result()?, 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "Future")]
pub struct TaskFuture<T> {
    slot: Arc<Slot<T>>,
    /// How to ask the executor to stop the task while it runs ([`TaskFuture::cancel_running`]).
    pool: Option<CancelHandle>,
}

impl<T> std::fmt::Debug for TaskFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture")
            .field("phase", &self.slot.phase())
            .finish_non_exhaustive()
    }
}

impl<T> TaskFuture<T> {
    /// Waits for the task and returns its value.
    ///
    /// # Errors
    /// The task's [`TaskError`], [`TaskError::Cancelled`] if it was cancelled.
    pub fn result(self) -> Result<T, TaskError> {
        self.slot.get(None)
    }

    /// Waits at most `timeout`; on [`TaskError::Timeout`] the task goes on.
    ///
    /// # Errors
    /// As [`result`](TaskFuture::result), plus [`TaskError::Timeout`].
    pub fn result_timeout(&mut self, timeout: Duration) -> Result<T, TaskError> {
        self.slot.get(Some(Instant::now() + timeout))
    }

    /// Cancels the task if it has not started; returns whether it is cancelled. A running
    /// task goes on (and this returns `false`), as in Python: code written for
    /// `concurrent.futures` calls `cancel` freely (on every future after a first failure,
    /// say) and expects it never to stop work under way. To stop a running task too, use
    /// [`cancel_running`](TaskFuture::cancel_running).
    pub fn cancel(&self) -> bool {
        self.slot.cancel()
    }

    /// Cancels the task whether it is queued or running; returns whether it took effect,
    /// that is whether its outcome is now [`TaskError::Cancelled`].
    ///
    /// A queued task never runs. A running task's worker is killed (SIGKILL) and replaced;
    /// the task fails with `Cancelled`, is not retried, and its worker's death is not counted
    /// against [`max_worker_deaths_per_task`](ExecutorBuilder::max_worker_deaths_per_task).
    /// The executor's thread decides, so there is no race: a task that finished before the
    /// cancel keeps its value (and this returns `false`), and no other task is harmed. It is
    /// a separate method, not [`cancel`](TaskFuture::cancel), because Python's `cancel` never
    /// stops a running task and code ported from Python relies on that; this is pebble's
    /// `ProcessFuture.cancel`. See [`AsyncResult::cancel`](crate::pool::AsyncResult::cancel)
    /// for the details, which are the same.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{ProcessPoolExecutor, pool::TaskError};
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let ex = ProcessPoolExecutor::new(1)?;
    /// let long = ex.submit(nap, 60_000);
    /// std::thread::sleep(Duration::from_millis(50));
    /// assert!(!long.cancel() || long.cancelled()); // Python's cancel: only if not started
    /// assert!(long.cancel_running());
    /// assert!(matches!(long.result(), Err(TaskError::Cancelled)));
    /// assert_eq!(ex.submit(nap, 1).result()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "terminate")]
    pub fn cancel_running(&self) -> bool {
        self.slot.cancel_via(self.pool.as_ref())
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.slot.cancelled()
    }

    /// Whether a worker has the task and it has not finished.
    pub fn running(&self) -> bool {
        self.slot.phase() == Phase::Running
    }

    /// Whether the task finished, failed or was cancelled.
    pub fn done(&self) -> bool {
        self.slot.phase() == Phase::Done
    }

    /// Runs `callback` once the future is done, with its value or its error (Python's
    /// `Future.add_done_callback`): the task returned, failed, or was cancelled.
    ///
    /// It runs on the thread that completes the future: the pool's own thread for a task that
    /// ran, or the thread that cancels it; or at once, on this thread, if the future is
    /// already done. Callbacks run in the order they were added, before any `result` or
    /// `.await` returns the value. Keep them short: on the pool's thread a slow callback holds
    /// up every task, and one that waits for another task of the same executor waits for
    /// itself (as in Python). A callback that panics is reported (a `tracing` warning) and changes
    /// nothing else: the other callbacks run and the future keeps its outcome. Once the value
    /// was taken (by [`result_timeout`](TaskFuture::result_timeout) or an `.await`), a callback
    /// added afterwards gets [`TaskError::AlreadyTaken`].
    ///
    /// # Examples
    /// ```
    /// use std::sync::mpsc;
    /// use multiproc::ProcessPoolExecutor;
    ///
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// let ex = ProcessPoolExecutor::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let f = ex.submit(double, 21);
    /// f.add_done_callback(move |outcome| tx.send(outcome.ok().copied()).unwrap());
    /// assert_eq!(rx.recv()?, Some(42));
    /// assert_eq!(f.result()?, 42); // the callback only looked at the value
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_done_callback(
        &self,
        callback: impl FnOnce(Result<&T, &TaskError>) + Send + 'static,
    ) {
        self.slot.add_done_callback(Box::new(callback));
    }
}

impl<T> std::future::Future for TaskFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slot.register(cx.waker()) {
            Poll::Ready(self.slot.take().unwrap_or(Err(TaskError::AlreadyTaken)))
        } else {
            Poll::Pending
        }
    }
}

/// The iterator of [`ProcessPoolExecutor::map`].
pub struct ExecutorMap<T> {
    futures: VecDeque<TaskFuture<T>>,
    deadline: Option<Instant>,
    progress: Tracker,
}

impl<T> std::fmt::Debug for ExecutorMap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorMap")
            .field("futures", &self.futures)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<T> Iterator for ExecutorMap<T> {
    type Item = Result<T, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(f) = self.futures.pop_front() else {
            self.progress.finish();
            return None;
        };
        let out = f.slot.get(self.deadline);
        if matches!(out, Err(TaskError::Timeout)) {
            f.cancel();
            for rest in self.futures.drain(..) {
                rest.cancel();
            }
        } else {
            self.progress.advance(1);
        }
        Some(out)
    }
}

impl<T> Drop for ExecutorMap<T> {
    fn drop(&mut self) {
        // As Python's map generator: futures nobody will read are cancelled if not started.
        for f in &self.futures {
            f.cancel();
        }
    }
}

/// Yields the futures as they finish, Python's `concurrent.futures.as_completed`. With a
/// `timeout`, yields [`TaskError::Timeout`] once when it passes, then ends.
///
/// # Examples
/// ```
/// use multiproc::{ProcessPoolExecutor, pool::as_completed};
///
/// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let futures = vec![ex.submit(nap, 300), ex.submit(nap, 1)];
/// let order: Vec<u64> = as_completed(futures, None)
///     .map(|f| f?.result())
///     .collect::<Result<_, _>>()?;
/// assert_eq!(order, vec![1, 300]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn as_completed<T, I>(futures: I, timeout: Option<Duration>) -> AsCompleted<T>
where
    I: IntoIterator<Item = TaskFuture<T>>,
{
    let queue = Arc::new(DoneQueue {
        done: Mutex::new(Vec::new()),
        cond: Condvar::new(),
    });
    let mut waiting: Vec<Option<TaskFuture<T>>> = Vec::new();
    for (index, f) in futures.into_iter().enumerate() {
        let waker = Waker::from(Arc::new(IndexWaker {
            index,
            queue: Arc::clone(&queue),
        }));
        if f.slot.register(&waker) {
            queue.push(index);
        }
        waiting.push(Some(f));
    }
    AsCompleted {
        left: waiting.len(),
        waiting,
        queue,
        deadline: timeout.map(|t| Instant::now() + t),
        timed_out: false,
    }
}

struct DoneQueue {
    done: Mutex<Vec<usize>>,
    cond: Condvar,
}

impl DoneQueue {
    fn push(&self, index: usize) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
        self.cond.notify_one();
    }
}

struct IndexWaker {
    index: usize,
    queue: Arc<DoneQueue>,
}

impl Wake for IndexWaker {
    fn wake(self: Arc<Self>) {
        self.queue.push(self.index);
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<T> {
    waiting: Vec<Option<TaskFuture<T>>>,
    left: usize,
    queue: Arc<DoneQueue>,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<T> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = Result<TaskFuture<T>, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.timed_out {
            return None;
        }
        let mut done = self.queue.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            while let Some(index) = done.pop() {
                if let Some(f) = self.waiting.get_mut(index).and_then(Option::take) {
                    self.left -= 1;
                    return Some(Ok(f));
                }
            }
            match self.deadline {
                None => {
                    done = self
                        .queue
                        .cond
                        .wait(done)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.timed_out = true;
                        return Some(Err(TaskError::Timeout));
                    }
                    done = self
                        .queue
                        .cond
                        .wait_timeout(done, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}
