//! [`Lock`]: Python's `multiprocessing.Lock`, robust to the death of its holder.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::{self, Acquired, RawLock};
use super::{AcquireError, OwnerDied, TryAcquireError};
use crate::error::Result;
use crate::shared::segment::Shm;

/// A non-recursive lock shared between processes.
///
/// Uncontended acquire and release are one atomic operation each on shared memory; a
/// contended acquirer sleeps on a futex. If the holder dies, the next acquirer gets the lock
/// with an [`OwnerDied`] notice instead of waiting forever.
///
/// # Examples
/// ```
/// use multiproc::Lock;
///
/// let lock = Lock::new()?;
/// // The lock is a start argument: this works under every start method.
/// let child = multiproc::spawn_with_args(
///     |lock: Lock| {
///         let _g = lock.acquire().unwrap();
///         // ... the critical section ...
///     },
///     lock.clone(),
/// )?;
/// {
///     let _g = lock.acquire().map_err(|e| e.to_string())?;
/// }
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A holder that is killed does not deadlock the others (with Python's `Lock`, it does):
/// ```
/// use std::time::Duration;
/// use multiproc::{sync::AcquireError, Event, Lock, Process};
///
/// let lock = Lock::new()?;
/// let holding = Event::new()?;
/// let mut p = Process::with_args(
///     |(lock, holding): (Lock, Event)| {
///         let _g = lock.acquire().unwrap();
///         holding.set();
///         std::thread::sleep(Duration::from_secs(60));
///     },
///     (lock.clone(), holding.clone()),
/// );
/// p.start()?;
/// assert!(holding.wait_timeout(Duration::from_secs(10)));
/// p.kill()?; // SIGKILL while holding the lock
/// p.join()?;
/// match lock.acquire_timeout(Duration::from_secs(10)) {
///     Err(AcquireError::OwnerDied(died)) => {
///         let _guard = died.into_inner(); // held: repair the protected data here
///     }
///     other => panic!("expected OwnerDied, got {other:?}"),
/// }
/// assert!(!lock.is_locked());
/// let _again = lock.acquire().map_err(|e| e.to_string())?; // and it stays usable
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Lock {
    pub(crate) raw: Shm<RawLock>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.raw.is_locked())
            .finish()
    }
}

/// Holds a [`Lock`]; releases it when dropped.
///
/// A `Lock` belongs to a process, not a thread, so its guard may be sent to another thread of
/// the same process and released there (as Python allows for its `Lock`).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            raw: Shm::zeroed()?,
        })
    }

    #[inline]
    fn guard(&self, how: Acquired) -> Result<LockGuard<'_>, OwnerDied<LockGuard<'_>>> {
        let g = LockGuard { lock: self };
        match how {
            Acquired::Clean => Ok(g),
            Acquired::OwnerDied => Err(OwnerDied::new(g)),
        }
    }

    /// Blocks until the lock is acquired.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the previous holder died holding the lock.
    #[inline]
    pub fn acquire(&self) -> Result<LockGuard<'_>, OwnerDied<LockGuard<'_>>> {
        let how = self
            .raw
            .lock(None)
            .unwrap_or(Acquired::Clean /* unreachable: no deadline */);
        self.guard(how)
    }

    /// Acquires the lock if it is free, without waiting (Python's `acquire(block=False)`).
    ///
    /// A lock held by a process that died is taken over here too, as a waiting acquire
    /// would: finding that out reads `/proc`, so a busy lock costs a few system calls.
    ///
    /// # Errors
    /// [`TryAcquireError::WouldBlock`] if a live process holds it;
    /// [`TryAcquireError::OwnerDied`] (holding the guard) if its holder had died.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Lock, sync::TryAcquireError};
    ///
    /// let lock = Lock::new()?;
    /// let held = lock.try_acquire().map_err(|e| e.to_string())?;
    /// assert!(matches!(lock.try_acquire(), Err(TryAcquireError::WouldBlock)));
    /// drop(held);
    /// assert!(lock.try_acquire().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<LockGuard<'_>, TryAcquireError<LockGuard<'_>>> {
        match self.raw.try_lock_or_take_over() {
            Some(how) => self.guard(how).map_err(TryAcquireError::OwnerDied),
            None => Err(TryAcquireError::WouldBlock),
        }
    }

    /// Waits at most `timeout` for the lock (Python's `acquire(timeout=...)`).
    ///
    /// # Errors
    /// [`AcquireError::Timeout`] if the time ran out; [`AcquireError::OwnerDied`] (holding the
    /// guard) if the previous holder died holding the lock.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let lock = multiproc::Lock::new()?;
    /// let _held = lock.acquire().map_err(|e| e.to_string())?;
    /// assert!(lock.acquire_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        match self.raw.lock(raw::deadline(timeout)) {
            Err(()) => Err(AcquireError::Timeout),
            Ok(how) => self.guard(how).map_err(AcquireError::OwnerDied),
        }
    }

    /// The lock if it is free now; never takes over a dead holder's lock, so that a look
    /// (a `Debug` print) cannot swallow the [`OwnerDied`] notice the next acquirer is owed.
    pub(crate) fn try_acquire_free(&self) -> Option<LockGuard<'_>> {
        self.raw.try_lock().then_some(LockGuard { lock: self })
    }

    /// Whether some process holds the lock right now (a snapshot).
    #[doc(alias = "locked")]
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// For `crate::aio`: the lock if it is free (taken marked contended, see
    /// [`RawLock::try_lock_contended`]) or its holder died; `None` while a live one holds it.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn try_acquire_after_wait(
        &self,
    ) -> Option<Result<LockGuard<'_>, OwnerDied<LockGuard<'_>>>> {
        self.raw.try_lock_contended().map(|how| self.guard(how))
    }

    pub(crate) fn same(&self, other: &Lock) -> bool {
        self.raw.same(&other.raw)
    }
}

impl LockGuard<'_> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.unlock();
    }
}
