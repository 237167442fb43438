//! [`RLock`]: Python's `multiprocessing.RLock`, a lock its owning thread may take again.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::owner;
use super::raw::{self, Acquired, RLockState};
use super::{AcquireError, OwnerDied, TryAcquireError};
use crate::error::Result;
use crate::shared::segment::Shm;

/// A recursive lock shared between processes: the thread that holds it may acquire it again,
/// and it is free once every guard is dropped.
///
/// Robust like [`Lock`](crate::Lock): if the owning process dies, the next acquirer gets it
/// with an [`OwnerDied`] notice.
///
/// # Examples
/// ```
/// let lock = multiproc::RLock::new()?;
/// let outer = lock.acquire().map_err(|e| e.to_string())?;
/// let inner = lock.acquire().map_err(|e| e.to_string())?; // same thread: no deadlock
/// assert_eq!(lock.depth(), 2);
/// drop(inner);
/// drop(outer);
/// assert_eq!(lock.depth(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct RLock {
    state: Shm<RLockState>,
}

impl std::fmt::Debug for RLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RLock")
            .field("locked", &self.state.lock.is_locked())
            .finish()
    }
}

/// One level of holding an [`RLock`]. Not `Send`: the thread that acquired must release.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let lock = multiproc::RLock::new().unwrap();
/// send(lock.acquire().unwrap()); // error: the guard cannot move to another thread
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl RLock {
    /// A new, unlocked recursive lock.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new() -> Result<RLock> {
        Ok(RLock {
            state: Shm::zeroed()?,
        })
    }

    fn mine(&self) -> bool {
        self.state.lock.held_by_me()
            && self.state.thread.load(Ordering::Relaxed) == owner::thread_tag()
    }

    fn enter(&self, how: Option<Acquired>) -> Result<RLockGuard<'_>, OwnerDied<RLockGuard<'_>>> {
        let s = &*self.state;
        let g = RLockGuard {
            lock: self,
            _not_send: PhantomData,
        };
        match how {
            None => {
                s.count.fetch_add(1, Ordering::Relaxed);
                Ok(g)
            }
            Some(how) => {
                s.thread.store(owner::thread_tag(), Ordering::Relaxed);
                s.count.store(1, Ordering::Relaxed);
                match how {
                    Acquired::Clean => Ok(g),
                    Acquired::OwnerDied => Err(OwnerDied::new(g)),
                }
            }
        }
    }

    /// Blocks until acquired; returns at once if this thread already holds it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the previous owner died holding the lock.
    pub fn acquire(&self) -> Result<RLockGuard<'_>, OwnerDied<RLockGuard<'_>>> {
        if self.mine() {
            return self.enter(None);
        }
        let how = self.state.lock.lock(None).unwrap_or(Acquired::Clean);
        self.enter(Some(how))
    }

    /// Acquires without waiting; at once if this thread already holds it. A lock whose
    /// holder died is taken over, as [`Lock::try_acquire`](crate::Lock::try_acquire) does.
    ///
    /// # Errors
    /// [`TryAcquireError::WouldBlock`] if another thread or a live process holds it;
    /// [`TryAcquireError::OwnerDied`] (holding the guard) if its holder had died.
    pub fn try_acquire(&self) -> Result<RLockGuard<'_>, TryAcquireError<RLockGuard<'_>>> {
        if self.mine() {
            return self.enter(None).map_err(TryAcquireError::OwnerDied);
        }
        match self.state.lock.try_lock_or_take_over() {
            Some(how) => self.enter(Some(how)).map_err(TryAcquireError::OwnerDied),
            None => Err(TryAcquireError::WouldBlock),
        }
    }

    /// Waits at most `timeout`.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`] or [`AcquireError::OwnerDied`], as for
    /// [`Lock::acquire_timeout`](crate::Lock::acquire_timeout).
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        if self.mine() {
            return self.enter(None).map_err(AcquireError::OwnerDied);
        }
        match self.state.lock.lock(raw::deadline(timeout)) {
            Err(()) => Err(AcquireError::Timeout),
            Ok(how) => self.enter(Some(how)).map_err(AcquireError::OwnerDied),
        }
    }

    /// Whether anyone holds the lock right now: this thread, another thread of this process,
    /// or another process (a snapshot). Python 3.14's `RLock.locked()`. Compare
    /// [`depth`](RLock::depth), which counts only this thread's holds.
    ///
    /// A lock whose holder died still reads as locked until the next acquirer takes it over
    /// (and is told with [`OwnerDied`]).
    ///
    /// # Examples
    /// ```
    /// let lock = multiproc::RLock::new()?;
    /// assert!(!lock.is_locked());
    /// let guard = lock.acquire().map_err(|e| e.to_string())?;
    /// assert!(lock.is_locked());
    /// // Held by another thread: still locked, though this thread's depth is 0.
    /// std::thread::scope(|s| {
    ///     s.spawn(|| assert!(lock.is_locked() && lock.depth() == 0));
    /// });
    /// drop(guard);
    /// assert!(!lock.is_locked());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "locked")]
    pub fn is_locked(&self) -> bool {
        self.state.lock.is_locked()
    }

    /// For `crate::aio`: the lock's word, to wait on until it looks free.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn raw(&self) -> &super::raw::RawLock {
        &self.state.lock
    }

    /// For `crate::aio`: as [`try_acquire`](RLock::try_acquire), but a free lock is taken
    /// marked contended (see `RawLock::try_lock_contended`); `None` while another thread or
    /// a live process holds it.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn try_acquire_after_wait(
        &self,
    ) -> Option<Result<RLockGuard<'_>, OwnerDied<RLockGuard<'_>>>> {
        if self.mine() {
            return Some(self.enter(None));
        }
        self.state
            .lock
            .try_lock_contended()
            .map(|how| self.enter(Some(how)))
    }

    /// How many guards this thread holds (0 if another thread or process holds the lock).
    pub fn depth(&self) -> u32 {
        if self.mine() {
            self.state.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let s = &*self.lock.state;
        if s.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.thread.store(0, Ordering::Relaxed);
            s.lock.unlock();
        }
    }
}
