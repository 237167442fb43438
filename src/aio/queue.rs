//! `get_async` and `put_async` for [`Queue`], [`SimpleQueue`] and [`JoinableQueue`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::errors::{get_disconnected, get_io, get_would_block, put_disconnected, put_io};
use super::{Watch, errors, on_helper_thread};
use crate::connection::Waitable;
use crate::queue::recheck;
use crate::queue::{GetError, JoinableQueue, PutError, Queue, SimpleQueue};

/// Asks for the queue's event descriptor to be signalled while it holds items, for as long
/// as this lives (the registration [`wait`](crate::connection::wait) makes).
struct Interest<'a, T>(&'a Queue<T>);

impl<'a, T> Interest<'a, T> {
    fn new(q: &'a Queue<T>) -> Self {
        q.ready_now();
        Interest(q)
    }
}

impl<T> Drop for Interest<'_, T> {
    fn drop(&mut self) {
        self.0.done_waiting();
    }
}

async fn get<T: Serialize + DeserializeOwned>(q: &Queue<T>) -> Result<T, GetError> {
    if let Err(done) = get_would_block(q.get_nowait()) {
        return done;
    }
    let _interest = Interest::new(q);
    let fd = q
        .wait_fd()
        .expect("a queue always has its event descriptor");
    let watch = Watch::read(fd).map_err(get_io)?;
    let mut woken = false;
    loop {
        if let Err(done) = get_would_block(q.get_nowait()) {
            return done;
        }
        if woken {
            // Told of the event, yet empty: the put that raised it may not have published
            // yet, and tokio's edge-triggered readiness would not tell us again when it
            // does. Wait for that put, have the event raised afresh if items are there, and
            // look again (see `ShmQueue::resync_event`).
            q.resync_event().map_err(get_io)?;
            if let Err(done) = get_would_block(q.get_nowait()) {
                return done;
            }
        }
        if !q.others_may_put().map_err(get_io)? {
            // As the blocking `get`: an item put just before the last producer left is still
            // there, so look once more before giving up.
            if let Err(done) = get_would_block(q.get_nowait()) {
                return done;
            }
            return Err(get_disconnected());
        }
        // The descriptor is signalled for every item; the timer notices a producer that went
        // away (or one killed between its two signalling steps, see the queue's README).
        woken = watch.readable_within(recheck()).await.map_err(get_io)?;
    }
}

async fn put<T: Serialize + DeserializeOwned>(q: &Queue<T>, item: T) -> Result<(), PutError<T>> {
    let mut item = item;
    loop {
        item = match errors::put_would_block(q.put_nowait(item)) {
            Ok(item) => item,
            Err(done) => return done,
        };
        match q.others_may_get() {
            Ok(true) => {}
            Ok(false) => return Err(put_disconnected(item)),
            Err(e) => return Err(put_io(item, e)),
        }
        // No descriptor signals room: a helper thread sleeps on the queue's futex for it.
        let sleep = q.room_sleeper();
        if let Err(e) = on_helper_thread(move || sleep(recheck())).await {
            return Err(put_io(item, e));
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// As [`get`](Queue::get), as a future: takes the item at the front of the queue, waiting
    /// while it is empty without blocking the thread.
    ///
    /// Waits on the queue's event descriptor through the runtime's reactor (no thread), and
    /// looks again every 50 ms for the last producer having gone away. Bound the wait with
    /// the runtime's timeout (`tokio::time::timeout`, `futures::select!` with a timer...).
    ///
    /// # Cancellation safety
    /// Cancel-safe: the item is taken by one non-blocking call that returns it from the same
    /// poll, so a future dropped while pending has taken nothing, and the item stays for the
    /// next `get`.
    ///
    /// # Errors
    /// As [`get`](Queue::get); [`GetError::Io`] also when no supported runtime is running.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use multiproc::Queue;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let q: Queue<u32> = Queue::new()?;
    /// q.put(7)?;
    /// assert_eq!(rt.block_on(q.get_async())?, 7);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn get_async(&self) -> Result<T, GetError> {
        get(self).await
    }

    /// As [`put`](Queue::put), as a future: waits, without blocking the thread, while a
    /// bounded queue is full.
    ///
    /// A queue with room takes the item at once. A full queue has no descriptor that
    /// signals room, so while it stays full a short-lived helper thread sleeps on the queue's
    /// futex, 50 ms at a time, and wakes the task when a get may have made room.
    ///
    /// # Cancellation safety
    /// Cancel-safe: the item goes in with one non-blocking call. A future dropped while
    /// pending has not put it; the item is dropped with the future.
    ///
    /// # Errors
    /// As [`put`](Queue::put); [`PutError::Io`] also when no supported runtime is running.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use multiproc::Queue;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let q: Queue<u32> = Queue::with_maxsize(1)?;
    /// // A consumer's handle (a put into a full queue that no other handle could ever get
    /// // from is `Disconnected`, as the blocking put).
    /// let consumer = q.clone();
    /// rt.block_on(async {
    ///     q.put_async(1).await?;
    ///     // Full: the second put waits until the get below makes room.
    ///     let (put, got) = tokio::join!(q.put_async(2), consumer.get_async());
    ///     put?;
    ///     assert_eq!(got?, 1);
    ///     assert_eq!(q.get_async().await?, 2);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn put_async(&self, item: T) -> Result<(), PutError<T>> {
        put(self, item).await
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// As [`get`](SimpleQueue::get), as a future; see [`Queue::get_async`].
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Queue::get_async`].
    ///
    /// # Errors
    /// As [`Queue::get_async`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let q: multiproc::SimpleQueue<String> = multiproc::SimpleQueue::new()?;
    /// rt.block_on(async {
    ///     q.put_async("x".to_owned()).await?;
    ///     assert_eq!(q.get_async().await?, "x");
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn get_async(&self) -> Result<T, GetError> {
        get(self.inner()).await
    }

    /// As [`put`](SimpleQueue::put), as a future (a `SimpleQueue` is unbounded: it does not
    /// wait for room).
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Queue::put_async`].
    ///
    /// # Errors
    /// As [`Queue::put_async`].
    pub async fn put_async(&self, item: T) -> Result<(), PutError<T>> {
        put(self.inner(), item).await
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// As [`get`](JoinableQueue::get), as a future; see [`Queue::get_async`]. Call
    /// [`task_done`](JoinableQueue::task_done) for the item as usual.
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Queue::get_async`].
    ///
    /// # Errors
    /// As [`Queue::get_async`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let q: multiproc::JoinableQueue<u8> = multiproc::JoinableQueue::new()?;
    /// rt.block_on(async {
    ///     q.put_async(1).await?;
    ///     assert_eq!(q.get_async().await?, 1);
    ///     q.task_done()?;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// assert_eq!(q.unfinished_tasks(), 0);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn get_async(&self) -> Result<T, GetError> {
        get(self.inner()).await
    }

    /// As [`put`](JoinableQueue::put), as a future; see [`Queue::put_async`].
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Queue::put_async`].
    ///
    /// # Errors
    /// As [`Queue::put_async`].
    pub async fn put_async(&self, item: T) -> Result<(), PutError<T>> {
        put(self.inner(), item).await
    }
}
