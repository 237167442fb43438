//! [`JoinableQueue`]: Python's `JoinableQueue`, a [`Queue`] that counts unfinished tasks. The
//! count needs no state of its own beside the ring's: it is the number of puts (counted by
//! the store that publishes each item) minus the `tasks_done` word of the ring's header.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Queue;
use super::ring::ShmQueue;
use super::wake::{deadline_after, recheck};
use crate::error::{
    GetError, GetTimeoutError, PutError, PutTimeoutError, TryGetError, TryPutError,
};

/// A [`Queue`] that counts unfinished tasks, Python's `JoinableQueue`: each `put` adds one,
/// each [`task_done`](JoinableQueue::task_done) removes one, and
/// [`join`](JoinableQueue::join) waits for zero.
///
/// # Examples
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// let q: JoinableQueue<u64> = JoinableQueue::new()?;
/// let worker_q = q.clone();
/// let mut worker = Process::new(move || {
///     while let Ok(n) = worker_q.get() {
///         let _ = n * n; // the work
///         worker_q.task_done().unwrap();
///     }
/// });
/// worker.set_daemon(true)?;
/// worker.start()?;
/// for n in 0..10 {
///     q.put(n)?;
/// }
/// q.join(); // every item was processed
/// assert!(q.empty());
/// worker.kill()?;
/// worker.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T>(Queue<T>);

/// [`JoinableQueue::task_done`] was called more times than items were put (Python's
/// `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than items were put")]
pub struct TaskDoneError;

impl<T> JoinableQueue<T> {
    /// The queue inside, for `crate::aio`.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn inner(&self) -> &Queue<T> {
        &self.0
    }

    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// The OS error if shared memory cannot be created.
    pub fn new() -> crate::Result<JoinableQueue<T>> {
        Queue::new().map(JoinableQueue)
    }

    /// A joinable queue holding at most `maxsize` items (`0`: no limit).
    ///
    /// # Errors
    /// As [`new`](JoinableQueue::new).
    pub fn with_maxsize(maxsize: usize) -> crate::Result<JoinableQueue<T>> {
        Queue::with_maxsize(maxsize).map(JoinableQueue)
    }

    /// Marks one item taken with `get` as processed.
    ///
    /// # Errors
    /// [`TaskDoneError`] if there is no unfinished item.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        mark_done(&self.0.shm)
    }

    /// Blocks until every item put was marked done with
    /// [`task_done`](JoinableQueue::task_done).
    ///
    /// A consumer that dies between `get` and `task_done` leaves its item unfinished for
    /// good, as in Python: use [`join_timeout`](JoinableQueue::join_timeout) where that can
    /// happen. A producer killed inside `put` leaves nothing to wait for: an item is counted
    /// by the same store that puts it in the queue.
    pub fn join(&self) {
        while !self.join_until(None) {}
    }

    /// As [`join`](JoinableQueue::join), waiting at most `timeout`; `true` if every item was
    /// done in time.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Some(deadline_after(timeout)))
    }

    fn join_until(&self, deadline: Option<Instant>) -> bool {
        let shm = &self.0.shm;
        let words = shm.words();
        loop {
            let seen = words.tasks_done.load(Ordering::SeqCst);
            if shm.puts() == seen {
                return true;
            }
            let nap = match deadline {
                None => recheck(),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    left.min(recheck())
                }
            };
            words.tasks_done_sleepers.fetch_add(1, Ordering::SeqCst);
            shm.sleep(&words.tasks_done, seen, nap);
            words.tasks_done_sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The number of items put and not yet marked done.
    pub fn unfinished_tasks(&self) -> usize {
        // Done first: puts read after it can only be as many or more.
        let done = self.0.shm.words().tasks_done.load(Ordering::SeqCst);
        self.0.shm.puts().wrapping_sub(done) as usize
    }

    /// See [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.0.qsize()
    }

    /// See [`Queue::empty`].
    pub fn empty(&self) -> bool {
        self.0.empty()
    }

    /// See [`Queue::full`].
    pub fn full(&self) -> bool {
        self.0.full()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.0.close();
    }

    /// Shuts the queue down (see [`Queue::shutdown`]). With `immediate`, the items left are
    /// dropped undecoded and no longer counted as unfinished, so [`join`](Self::join)
    /// returns once the items already taken are marked done.
    ///
    /// # Errors
    /// As [`Queue::shutdown`].
    ///
    /// # Examples
    /// ```
    /// let q: multiproc::JoinableQueue<u8> = multiproc::JoinableQueue::new()?;
    /// q.put(1)?;
    /// q.put(2)?;
    /// q.shutdown(true)?; // both dropped: nothing left to wait for
    /// assert!(q.join_timeout(std::time::Duration::from_secs(5)));
    /// assert!(q.get().unwrap_err().is_shut_down());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self, immediate: bool) -> crate::Result<()> {
        self.0.shutdown(immediate)
    }

    /// See [`Queue::is_shut_down`].
    pub fn is_shut_down(&self) -> bool {
        self.0.is_shut_down()
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// Puts `item` and counts it as an unfinished task (see [`Queue::put`]).
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }

    /// As [`put`](JoinableQueue::put), waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`Queue::put_timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.0.put_timeout(item, timeout)
    }

    /// As [`put`](JoinableQueue::put), only if there is room now.
    ///
    /// # Errors
    /// As [`Queue::put_nowait`].
    pub fn put_nowait(&self, item: T) -> Result<(), TryPutError<T>> {
        self.0.put_nowait(item)
    }

    /// See [`Queue::get`].
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// See [`Queue::get_timeout`].
    ///
    /// # Errors
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.0.get_timeout(timeout)
    }

    /// See [`Queue::get_nowait`].
    ///
    /// # Errors
    /// As [`Queue::get_nowait`].
    pub fn get_nowait(&self) -> Result<T, TryGetError> {
        self.0.get_nowait()
    }
}

/// Counts one unfinished task of the queue behind `shm` as done, waking `join` callers if it
/// was the last.
pub(super) fn mark_done(shm: &ShmQueue) -> Result<(), TaskDoneError> {
    let words = shm.words();
    let mut done = words.tasks_done.load(Ordering::SeqCst);
    loop {
        // Puts only grow: one seen now stays counted.
        if shm.puts() == done {
            return Err(TaskDoneError);
        }
        match words.tasks_done.compare_exchange_weak(
            done,
            done.wrapping_add(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => break,
            Err(now) => done = now,
        }
    }
    // Either a `join` that registered as a sleeper before our increment is seen here, or
    // it sees the increment (its futex wait fails at once).
    if words.tasks_done_sleepers.load(Ordering::SeqCst) > 0 && shm.puts() == done.wrapping_add(1) {
        shm.wake(&words.tasks_done, u32::MAX);
    }
    Ok(())
}

handle_around_a_queue!(JoinableQueue);
