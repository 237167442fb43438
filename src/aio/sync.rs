//! `Event::wait_async`, lock and semaphore acquisition, `JoinableQueue::join_async`: none of
//! these has a descriptor (each waits on a futex word in shared memory), so each waits on a
//! short-lived helper thread, 50 ms per round. A lock's helper only waits until the lock
//! looks free (`RawLock::wait_until_takeable`) and the task takes it, so a dropped future
//! never took it; a semaphore's helper takes a unit and a dropped future gives it back (see
//! `take_on_helper_thread`).

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RECHECK, on_helper_thread, take_on_helper_thread};
use crate::queue::JoinableQueue;
use crate::sync::barrier::Arrival;
use crate::sync::raw;
use crate::sync::{
    Barrier, BoundedSemaphore, BrokenBarrierError, Condition, ConditionGuard, Event, Lock,
    LockGuard, OwnerDied, RLock, RLockGuard, Semaphore, TryAcquireError,
};

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

impl Lock {
    /// As [`acquire`](Lock::acquire), as a future: takes the lock.
    ///
    /// A lock has no descriptor: a free lock is taken at once; otherwise a short-lived
    /// helper thread waits, 50 ms per round, until the lock *looks* free (or its holder
    /// died), and the task then tries to take it without blocking, waiting another round if
    /// someone else was quicker. The helper never takes the lock itself.
    ///
    /// A `Lock` belongs to a process, not a thread, so the guard may be held across
    /// `.await`s and the task may move between threads. It is not recursive: awaiting it in
    /// the task (or another task of this process) that holds it waits for ever, as
    /// [`acquire`](Lock::acquire) would.
    ///
    /// # Cancellation safety
    /// Cancel-safe: the lock is taken only in the poll that returns its guard, so a dropped
    /// future never holds it (and never swallows the [`OwnerDied`] notice of a dead holder,
    /// which stays for the next acquirer). A dropped future's helper thread ends its round
    /// (at most 50 ms) having changed nothing but the word's "someone may sleep" bit.
    ///
    /// # Errors
    /// The outer `Err` when a helper thread cannot be started. The inner one as
    /// [`acquire`](Lock::acquire): [`OwnerDied`] (holding the guard) if the previous holder
    /// died holding the lock; a holder killed while this future waits is such a holder.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use std::time::Duration;
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let lock = multiproc::Lock::new()?;
    /// let child = multiproc::spawn_with_args(
    ///     |lock: multiproc::Lock| {
    ///         let _held = lock.acquire().unwrap();
    ///         std::thread::sleep(Duration::from_millis(50));
    ///     },
    ///     lock.clone(),
    /// )?;
    /// rt.block_on(async {
    ///     let guard = lock.acquire_async().await?.map_err(|e| e.to_string())?;
    ///     assert!(lock.is_locked());
    ///     drop(guard);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// child.join()?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub async fn acquire_async(
        &self,
    ) -> io::Result<Result<LockGuard<'_>, OwnerDied<LockGuard<'_>>>> {
        acquire_after_helper_waits(self).await
    }
}

impl RLock {
    /// As [`acquire`](RLock::acquire), as a future: takes the lock, or one more level of it.
    ///
    /// Waits as [`Lock::acquire_async`] does: a helper thread waits until the lock looks
    /// free, 50 ms per round, and the task takes it without blocking.
    ///
    /// An `RLock` belongs to a *thread*: the one that polls this future to completion. Every
    /// task that runs on that thread counts as the same owner (a second task's acquire
    /// returns at once, one level deeper), and the guard is not `Send`, so it cannot be held
    /// across an `.await` in a task that may move between threads. Between tasks, use a
    /// [`Lock`].
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Lock::acquire_async`]: the lock is taken only in the poll that
    /// returns the guard.
    ///
    /// # Errors
    /// The outer `Err` when a helper thread cannot be started; the inner one as
    /// [`acquire`](RLock::acquire) ([`OwnerDied`]).
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let lock = multiproc::RLock::new()?;
    /// rt.block_on(async {
    ///     let outer = lock.acquire_async().await?.map_err(|e| e.to_string())?;
    ///     let inner = lock.acquire_async().await?.map_err(|e| e.to_string())?;
    ///     assert_eq!(lock.depth(), 2);
    ///     drop((inner, outer));
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// assert!(!lock.is_locked());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub async fn acquire_async(
        &self,
    ) -> io::Result<Result<RLockGuard<'_>, OwnerDied<RLockGuard<'_>>>> {
        acquire_after_helper_waits(self).await
    }
}

/// What [`acquire_after_helper_waits`] needs of a lock: a try without blocking, the raw word
/// a helper thread waits on, and the take after the helper's wait.
trait TakeAfterWait: Clone + Send + 'static {
    type Guard<'a>;
    fn try_take(&self) -> Result<Self::Guard<'_>, TryAcquireError<Self::Guard<'_>>>;
    fn raw_lock(&self) -> &raw::RawLock;
    fn take_after_wait(&self) -> Option<Result<Self::Guard<'_>, OwnerDied<Self::Guard<'_>>>>;
}

impl TakeAfterWait for Lock {
    type Guard<'a> = LockGuard<'a>;
    fn try_take(&self) -> Result<LockGuard<'_>, TryAcquireError<LockGuard<'_>>> {
        self.try_acquire()
    }
    fn raw_lock(&self) -> &raw::RawLock {
        &self.raw
    }
    fn take_after_wait(&self) -> Option<Result<LockGuard<'_>, OwnerDied<LockGuard<'_>>>> {
        self.try_acquire_after_wait()
    }
}

impl TakeAfterWait for RLock {
    type Guard<'a> = RLockGuard<'a>;
    fn try_take(&self) -> Result<RLockGuard<'_>, TryAcquireError<RLockGuard<'_>>> {
        self.try_acquire()
    }
    fn raw_lock(&self) -> &raw::RawLock {
        self.raw()
    }
    fn take_after_wait(&self) -> Option<Result<RLockGuard<'_>, OwnerDied<RLockGuard<'_>>>> {
        self.try_acquire_after_wait()
    }
}

/// `Lock::acquire_async` and `RLock::acquire_async`: a free lock is taken at once; otherwise
/// a helper thread waits (one round of [`RECHECK`]) until the lock looks takeable, and the
/// task then tries to take it without blocking, waiting another round if someone else was
/// quicker. The lock is taken only in the poll that returns its guard.
#[allow(clippy::type_complexity)]
async fn acquire_after_helper_waits<L: TakeAfterWait>(
    lock: &L,
) -> io::Result<Result<L::Guard<'_>, OwnerDied<L::Guard<'_>>>> {
    match lock.try_take() {
        Ok(g) => return Ok(Ok(g)),
        Err(TryAcquireError::OwnerDied(died)) => return Ok(Err(died)),
        Err(TryAcquireError::WouldBlock) => {}
    }
    loop {
        let helper = lock.clone();
        on_helper_thread(move || {
            helper
                .raw_lock()
                .wait_until_takeable(raw::deadline(RECHECK));
        })
        .await?;
        if let Some(r) = lock.take_after_wait() {
            return Ok(r);
        }
    }
}

impl Condition {
    /// As [`acquire`](Condition::acquire), as a future: takes the condition's lock, as
    /// [`Lock::acquire_async`] does.
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`Lock::acquire_async`].
    ///
    /// # Errors
    /// As [`Lock::acquire_async`].
    #[allow(clippy::type_complexity)]
    pub async fn acquire_async(
        &self,
    ) -> io::Result<Result<ConditionGuard<'_>, OwnerDied<ConditionGuard<'_>>>> {
        Ok(match self.lock().acquire_async().await? {
            Ok(g) => Ok(self.wrap(g)),
            Err(died) => Err(OwnerDied::new(self.wrap(died.into_inner()))),
        })
    }
}

impl<'a> ConditionGuard<'a> {
    /// As [`wait`](ConditionGuard::wait), as a future: releases the lock, waits until
    /// notified, and takes the lock again. Takes the guard and gives it back (as
    /// async-std's `Condvar::wait` does): a future dropped while waiting has released the
    /// lock, and the guard is gone with it, so nothing can unlock a lock it does not hold.
    ///
    /// A condition has no descriptor: a short-lived helper thread waits for a notification,
    /// 50 ms per round; the lock is then taken again as [`Lock::acquire_async`] takes it.
    /// A notification is taken with the lock held, in the poll that returns. As with the
    /// blocking wait, check the predicate after it returns.
    ///
    /// # Cancellation safety
    /// Cancel-safe: a dropped future holds no lock and took no notification (one sent to
    /// it stays for another waiter; with none left, it is dropped, as a notify with no
    /// waiter is); it stops counting as a waiter when dropped. The helper thread of a
    /// dropped future ends its round (at most 50 ms) having changed nothing.
    ///
    /// # Errors
    /// The outer `Err` when a helper thread cannot be started (the lock is not held then).
    /// The inner [`OwnerDied`] (holding the guard) if a holder of the lock died holding it
    /// while this waited: the wait ends there, notified or not.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use multiproc::{Condition, Value};
    ///
    /// fn announce((ready, cond): (Value<u32>, Condition)) {
    ///     let mut g = cond.acquire().unwrap();
    ///     ready.set_with(g.lock_guard_mut(), 1).unwrap();
    ///     g.notify_all();
    /// }
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let ready = Value::new(0u32)?;
    /// let cond = Condition::with_lock(ready.get_lock().clone())?;
    /// let child = multiproc::spawn_with_args(announce, (ready.clone(), cond.clone()))?;
    /// rt.block_on(async {
    ///     let mut g = cond.acquire_async().await?.map_err(|e| e.to_string())?;
    ///     while ready.get_with(g.lock_guard()) != Some(1) {
    ///         g = g.wait_async().await?.map_err(|e| e.to_string())?;
    ///     }
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// child.join()?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub async fn wait_async(
        self,
    ) -> io::Result<Result<ConditionGuard<'a>, OwnerDied<ConditionGuard<'a>>>> {
        let mut wait = self.begin_async_wait();
        loop {
            if !wait.maybe_notified() {
                let (cond, seen) = (wait.condition().clone(), wait.seen());
                on_helper_thread(move || cond.sleep_unless_notified(seen, RECHECK)).await?;
                continue;
            }
            match wait.condition().lock().acquire_async().await? {
                Ok(guard) => {
                    if let Ok(done) = wait.try_finish(guard) {
                        return Ok(Ok(done));
                    }
                }
                Err(died) => return Ok(Err(OwnerDied::new(wait.finish_early(died.into_inner())))),
            }
        }
    }
}

impl Barrier {
    /// As [`wait`](Barrier::wait), as a future: waits for all parties. Returns this
    /// party's arrival index. The default timeout of
    /// [`with_timeout`](Barrier::with_timeout), if set, applies as to `wait`.
    ///
    /// A barrier has no descriptor: a short-lived helper thread waits for the generation to
    /// end, 50 ms per round; between rounds the task looks for dead parties, as the blocking
    /// wait does (so a party killed while others wait breaks the barrier within about
    /// 50 ms, never a hang). Arriving, and those checks, take the barrier's internal lock
    /// briefly in the task. The last party to arrive runs the action in its poll.
    ///
    /// # Cancellation safety
    /// A dropped future that arrived takes its arrival back if the barrier is still filling,
    /// as asyncio's `Barrier` does for a cancelled waiter: the barrier is not broken and
    /// needs one more arrival again. (As in asyncio, a later arrival may then get an index
    /// that a waiting party already has.) Once the generation is released, dropping changes
    /// nothing. The drop takes the barrier's internal lock for a moment.
    ///
    /// # Errors
    /// The outer `Err` when a helper thread cannot be started (the arrival is taken back).
    /// The inner one as [`wait`](Barrier::wait): [`BrokenBarrierError`].
    ///
    /// # Panics
    /// As [`wait`](Barrier::wait): if the action panics, in the party that ran it.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use std::time::Duration;
    /// use multiproc::Barrier;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let barrier = Barrier::new(2)?.with_timeout(Duration::from_secs(10));
    /// let child = multiproc::spawn_with_args(|b: Barrier| b.wait().is_ok(), barrier.clone())?;
    /// let index = rt.block_on(barrier.wait_async())??;
    /// assert!(index < 2);
    /// assert!(child.join()?);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn wait_async(&self) -> io::Result<Result<usize, BrokenBarrierError>> {
        /// Takes the arrival back unless the wait ended.
        struct Leave<'b> {
            barrier: &'b Barrier,
            g: u32,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.barrier.leave(self.g);
            }
        }
        let deadline = self.default_timeout().and_then(raw::deadline);
        let (g, index) = match self.arrive() {
            Err(e) => return Ok(Err(e)),
            Ok(Arrival::Released(index)) => return Ok(Ok(index)),
            Ok(Arrival::Waiting { g, index }) => (g, index),
        };
        let leave = Leave { barrier: self, g };
        let outcome = loop {
            if let Some(outcome) = self.ended(g, index) {
                break outcome;
            }
            let round = deadline.map_or(RECHECK, |d| {
                d.saturating_duration_since(std::time::Instant::now())
                    .min(RECHECK)
            });
            let b = self.clone();
            on_helper_thread(move || b.sleep_while_generation(g, round)).await?;
            if let Some(outcome) = self.ended(g, index) {
                break outcome;
            }
            let timed_out = deadline.is_some_and(|d| std::time::Instant::now() >= d);
            if let Some(outcome) = self.check_parties(g, index, timed_out) {
                break outcome;
            }
        };
        // Ended: the generation moved on, so there is nothing to take back.
        std::mem::forget(leave);
        Ok(outcome)
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
