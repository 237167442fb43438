//! `Event::wait_async`, semaphore acquisition and `JoinableQueue::join_async`: none of these
//! has a descriptor (each waits on a futex word in shared memory), so each waits on a
//! short-lived helper thread, 50 ms per round, and a dropped future gives back what a round
//! took (see `take_on_helper_thread`).

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RECHECK, on_helper_thread, take_on_helper_thread};
use crate::queue::JoinableQueue;
use crate::sync::{BoundedSemaphore, Event, Semaphore};

impl Event {
    /// As [`wait`](Event::wait), as a future: waits until the flag is set.
    ///
    /// An event has no descriptor: while the flag is clear, a short-lived helper thread
    /// waits on it, 50 ms per round (one thread per waiting future, never more).
    ///
    /// # Cancellation safety
    /// Cancel-safe: it only waits, and changes nothing.
    ///
    /// # Errors
    /// When a helper thread cannot be started.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let ev = multiproc::Event::new()?;
    /// let setter = ev.clone();
    /// let mut child = multiproc::spawn_with_args(|ev: multiproc::Event| ev.set(), setter)?;
    /// rt.block_on(async {
    ///     ev.wait_async().await?;
    ///     child.join_async().await?;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn wait_async(&self) -> io::Result<()> {
        while !self.is_set() {
            let ev = self.clone();
            on_helper_thread(move || {
                ev.wait_timeout(RECHECK);
            })
            .await?;
        }
        Ok(())
    }
}

impl Semaphore {
    /// As [`acquire`](Semaphore::acquire), as a future: takes one unit.
    ///
    /// A semaphore has no descriptor: a unit available now is taken at once; otherwise a
    /// short-lived helper thread waits for one, 50 ms per round.
    ///
    /// # Cancellation safety
    /// Cancel-safe: a unit the helper thread takes after the future was dropped is released
    /// again there, so a dropped acquire never keeps a unit.
    ///
    /// # Errors
    /// When a helper thread cannot be started.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let sem = multiproc::Semaphore::new(1)?;
    /// rt.block_on(async {
    ///     sem.acquire_async().await?;
    ///     assert_eq!(sem.value(), 0);
    ///     sem.release();
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn acquire_async(&self) -> io::Result<()> {
        loop {
            if self.try_acquire() {
                return Ok(());
            }
            let (sem, back) = (self.clone(), self.clone());
            if take_on_helper_thread(move || sem.acquire_timeout(RECHECK), move || back.release())
                .await?
            {
                return Ok(());
            }
        }
    }
}

impl BoundedSemaphore {
    /// As [`acquire`](BoundedSemaphore::acquire), as a future; see
    /// [`Semaphore::acquire_async`].
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Semaphore::acquire_async`].
    ///
    /// # Errors
    /// When a helper thread cannot be started.
    pub async fn acquire_async(&self) -> io::Result<()> {
        loop {
            if self.try_acquire() {
                return Ok(());
            }
            let (sem, back) = (self.clone(), self.clone());
            let undo = move || {
                // The unit was taken by this round, so giving it back stays within the bound.
                let _ = back.release();
            };
            if take_on_helper_thread(move || sem.acquire_timeout(RECHECK), undo).await? {
                return Ok(());
            }
        }
    }
}

impl<T: Serialize + DeserializeOwned + 'static> JoinableQueue<T> {
    /// As [`join`](JoinableQueue::join), as a future: waits until every item put was marked
    /// done.
    ///
    /// The count of unfinished tasks has no descriptor: while items are unfinished, a
    /// short-lived helper thread waits on it, 50 ms per round.
    ///
    /// # Cancellation safety
    /// Cancel-safe: it only waits.
    ///
    /// # Errors
    /// When a helper thread cannot be started.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let q: multiproc::JoinableQueue<u8> = multiproc::JoinableQueue::new()?;
    /// rt.block_on(async {
    ///     q.put_async(1).await?;
    ///     let worker = async {
    ///         q.get_async().await?;
    ///         q.task_done()?;
    ///         Ok::<(), Box<dyn std::error::Error>>(())
    ///     };
    ///     let (joined, worked) = tokio::join!(q.join_async(), worker);
    ///     joined?;
    ///     worked?;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn join_async(&self) -> io::Result<()> {
        while self.unfinished_tasks() > 0 {
            let q = self.clone();
            on_helper_thread(move || {
                q.join_timeout(RECHECK);
            })
            .await?;
        }
        Ok(())
    }
}
