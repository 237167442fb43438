//! Pool results as futures, `imap`/`imap_unordered` as `Stream`s, and executor futures as a
//! `Stream` in completion order. The pool's result slots already wake `Waker`s (its result
//! thread completes them), so no descriptor, thread or timer is involved.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use serde::de::DeserializeOwned;

use crate::pool::{AsyncResult, Imap, TaskError, TaskFuture};

/// [`Pool::imap`](crate::Pool::imap), [`imap_unordered`](crate::Pool::imap_unordered) and
/// their `_chunked` forms as a [`Stream`]: the same items as the iterator, in the same order,
/// awaited instead of blocked on. Woken by the pool's result thread: no thread or timer per
/// wait. Pulling the input (to keep the window of tasks full) happens in the poll, so a slow
/// input iterator slows the task that polls. The stream is not `Send` (nor is the iterator):
/// poll it from the task that made it, on a current-thread runtime, in `block_on`, or a
/// `LocalSet`.
///
/// # Cancellation safety
/// Dropping a pending `next()` loses nothing: an item is taken only in the poll that yields
/// it, and the next `next()` (or `Iterator::next`) yields it. Dropping the stream is dropping
/// the iterator: its tasks no worker has started are cancelled.
///
/// # Examples
/// ```
/// # #[cfg(feature = "tokio")] {
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let pool = multiproc::Pool::new(2)?;
/// let mut squares = pool.imap(square, 1..=4);
/// let got = rt.block_on(async {
///     let mut got = Vec::new();
///     while let Some(v) = poll_fn(|cx| Pin::new(&mut squares).poll_next(cx)).await {
///         got.push(v?);
///     }
///     Ok::<_, multiproc::pool::TaskError>(got)
/// })?;
/// assert_eq!(got, vec![1, 4, 9, 16]);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: DeserializeOwned + Send + 'static> Stream for Imap<'_, T> {
    type Item = Result<T, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_item(cx)
    }
}

impl<T> AsyncResult<T> {
    /// As [`get`](AsyncResult::get), as a future: waits for the task and takes its value.
    ///
    /// Woken by the pool's result thread when the task completes: no thread or timer per
    /// wait. (An executor's [`TaskFuture`] is a `Future` already.)
    ///
    /// # Cancellation safety
    /// Cancel-safe: the value is taken in the poll that returns it; after a dropped future
    /// it is still there for the next `get` (async or not).
    ///
    /// # Errors
    /// As [`get_timeout`](AsyncResult::get_timeout), without `Timeout`.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut r = pool.apply_async(square, 9);
    /// assert_eq!(rt.block_on(r.get_async())?, 81);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn get_async(&mut self) -> Result<T, TaskError> {
        poll_fn(|cx| self.poll_outcome(cx)).await
    }
}

/// The executor's [`as_completed`](crate::pool::as_completed) as a [`Stream`]: each task's
/// index (its place in `futures`) and outcome, in the order they complete.
///
/// # Cancellation safety
/// Dropping a pending `next()` loses nothing: an outcome is taken only in the poll that
/// yields it. Dropping the stream drops the futures not yet yielded (their tasks go on, as
/// when a [`TaskFuture`] is dropped).
///
/// # Examples
/// ```
/// # #[cfg(feature = "tokio")] {
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let ex = multiproc::ProcessPoolExecutor::new(2)?;
/// let mut done = multiproc::aio::as_completed(vec![ex.submit(nap, 300), ex.submit(nap, 1)]);
/// let order = rt.block_on(async {
///     let mut order = Vec::new();
///     while let Some((index, outcome)) = poll_fn(|cx| Pin::new(&mut done).poll_next(cx)).await {
///         order.push((index, outcome?));
///     }
///     Ok::<_, multiproc::pool::TaskError>(order)
/// })?;
/// assert_eq!(order, vec![(1, 1), (0, 300)]);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn as_completed<T, I>(futures: I) -> AsCompleted<T>
where
    I: IntoIterator<Item = TaskFuture<T>>,
{
    let waiting: Vec<Option<TaskFuture<T>>> = futures.into_iter().map(Some).collect();
    AsCompleted {
        left: waiting.len(),
        waiting,
    }
}

/// The stream of [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<T> {
    waiting: Vec<Option<TaskFuture<T>>>,
    left: usize,
}

impl<T> Stream for AsCompleted<T> {
    type Item = (usize, Result<T, TaskError>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use std::future::Future;
        if self.left == 0 {
            return Poll::Ready(None);
        }
        // Every pending future registers this task's waker (once: the slot keeps one per
        // task); whichever completes wakes it, and the next poll finds it here.
        for index in 0..self.waiting.len() {
            let Some(f) = self.waiting[index].as_mut() else {
                continue;
            };
            if let Poll::Ready(outcome) = Pin::new(f).poll(cx) {
                self.waiting[index] = None;
                self.left -= 1;
                return Poll::Ready(Some((index, outcome)));
            }
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
