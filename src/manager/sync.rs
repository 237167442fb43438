//! [`LockProxy`] and [`EventProxy`]: synchronization served by the manager, for processes
//! that share no memory with each other (other programs, other machines).

use std::time::Duration;

use super::client::Handle;
use super::error::ManagerError;
use super::protocol::{Op, timeout_ms};

/// Acquires the lock, semaphore or condition's lock behind `handle`, waiting at most
/// `timeout_ms` (forever for `None`); whether it was acquired.
fn acquire(handle: &Handle, timeout_ms: Option<u64>) -> Result<bool, ManagerError> {
    handle.bool(Op::Acquire { timeout_ms })
}

/// A lock in the manager's server: `Manager::lock()` (Python's `Manager().Lock()`) or
/// `Manager::rlock()` (`RLock`), Python's `AcquirerProxy`.
///
/// A lock is owned by the connection that acquired it, that is by one thread of one process
/// (each has its own connection). An `RLock` may be acquired again by its owner and must be
/// released by it, as many times; a plain lock may be released by anyone, as Python's. Beyond
/// Python: when the owner's connection closes (its thread ended, or its process exited or was
/// killed), the server releases the lock, so a dead holder never blocks the others forever.
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let lock = manager.lock()?;
/// {
///     let _guard = lock.lock()?;
///     assert!(!lock.acquire_timeout(std::time::Duration::from_millis(10))?);
/// }
/// assert!(lock.acquire_timeout(std::time::Duration::ZERO)?);
/// lock.release()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "AcquirerProxy")]
pub struct LockProxy {
    pub(crate) handle: Handle,
}

super::proxy_impls!(LockProxy);

impl LockProxy {
    /// Blocks until the lock is acquired.
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone, also while waiting.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        acquire(&self.handle, None).map(drop)
    }

    /// Waits at most `timeout` for the lock; whether it was acquired (`Duration::ZERO`
    /// tries once).
    ///
    /// # Errors
    /// As [`acquire`](LockProxy::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        acquire(&self.handle, timeout_ms(timeout))
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`RemoteError::NotHeld`](super::RemoteError::NotHeld) when it is not held (by this
    /// thread, for an `RLock`); as [`acquire`](LockProxy::acquire).
    pub fn release(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Release)
    }

    /// Acquires the lock and returns a guard that releases it when dropped (Python's
    /// `with lock:`).
    ///
    /// # Errors
    /// As [`acquire`](LockProxy::acquire).
    pub fn lock(&self) -> Result<LockProxyGuard<'_>, ManagerError> {
        self.acquire()?;
        Ok(LockProxyGuard { lock: self })
    }
}

/// Holds a [`LockProxy`] until dropped. A release that fails on drop (the server is gone) is
/// ignored: the lock went with the server.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockProxyGuard<'a> {
    lock: &'a LockProxy,
}

impl Drop for LockProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

/// A semaphore in the manager's server: `Manager::semaphore(n)` (Python's
/// `Manager().Semaphore(n)`) or `Manager::bounded_semaphore(n)` (`BoundedSemaphore`, whose
/// `release` fails beyond its initial value).
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let sem = manager.bounded_semaphore(1)?;
/// sem.acquire()?;
/// assert!(!sem.acquire_timeout(std::time::Duration::ZERO)?);
/// sem.release()?;
/// assert!(sem.release().is_err()); // beyond the bound
/// assert_eq!(sem.value()?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SemaphoreProxy {
    pub(crate) handle: Handle,
}

super::proxy_impls!(SemaphoreProxy);

impl SemaphoreProxy {
    /// Blocks until the counter is positive, then decrements it.
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone, also while waiting.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        acquire(&self.handle, None).map(drop)
    }

    /// As [`acquire`](SemaphoreProxy::acquire), waiting at most `timeout`; whether it
    /// decremented.
    ///
    /// # Errors
    /// As [`acquire`](SemaphoreProxy::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        acquire(&self.handle, timeout_ms(timeout))
    }

    /// Increments the counter, waking a waiter.
    ///
    /// # Errors
    /// [`RemoteError::TooManyReleases`](super::RemoteError::TooManyReleases) for a bounded
    /// semaphore at its bound; as [`acquire`](SemaphoreProxy::acquire).
    pub fn release(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Release)
    }

    /// The counter's current value (Python's `get_value`).
    ///
    /// # Errors
    /// As [`acquire`](SemaphoreProxy::acquire).
    #[doc(alias = "get_value")]
    pub fn value(&self) -> Result<usize, ManagerError> {
        self.handle.len()
    }
}

/// An event in the manager's server, Python's `Manager().Event()`.
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let event = manager.event()?;
/// let child = multiproc::spawn_with_args(
///     |e: multiproc::manager::EventProxy| e.set().unwrap(),
///     event.clone(),
/// )?;
/// assert!(event.wait_timeout(std::time::Duration::from_secs(10))?);
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventProxy {
    pub(crate) handle: Handle,
}

super::proxy_impls!(EventProxy);

impl EventProxy {
    /// Sets the flag, waking every waiter.
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone; the other [`ManagerError`]s.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::SetFlag)
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// As [`set`](EventProxy::set).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::ClearFlag)
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](EventProxy::set).
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        self.handle.bool(Op::IsSet)
    }

    /// Blocks until the flag is set.
    ///
    /// # Errors
    /// As [`set`](EventProxy::set), also while waiting.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.handle.bool(Op::Wait { timeout_ms: None }).map(drop)
    }

    /// Waits at most `timeout` for the flag; whether it is set.
    ///
    /// # Errors
    /// As [`set`](EventProxy::set).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.handle.bool(Op::Wait {
            timeout_ms: timeout_ms(timeout),
        })
    }
}

/// A barrier in the manager's server for `parties` processes or threads, Python's
/// `Manager().Barrier(parties)`: each [`wait`](BarrierProxy::wait) blocks until `parties`
/// calls wait, then all return.
///
/// A wait that times out, or whose caller dies while waiting, breaks the barrier (otherwise
/// the others would wait for it forever); so does [`abort`](BarrierProxy::abort). Waits on a
/// broken barrier fail with [`RemoteError::BrokenBarrier`](super::RemoteError::BrokenBarrier)
/// until [`reset`](BarrierProxy::reset).
///
/// # Examples
/// ```
/// use multiproc::manager::BarrierProxy;
///
/// let manager = multiproc::Manager::start()?;
/// let barrier = manager.barrier(2)?;
/// let child = multiproc::spawn_with_args(|b: BarrierProxy| b.wait().unwrap(), barrier.clone())?;
/// let mine = barrier.wait()?;
/// let theirs = child.join()?;
/// assert_eq!(mine + theirs, 1); // arrival indices 0 and 1
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BarrierProxy {
    pub(crate) handle: Handle,
}

super::proxy_impls!(BarrierProxy);

impl BarrierProxy {
    fn arrive(&self, timeout_ms: Option<u64>) -> Result<usize, ManagerError> {
        match self.handle.op(Op::BarrierWait { timeout_ms })? {
            super::protocol::Reply::Len(i) => Ok(i as usize),
            r => Err(super::client::unexpected(r)),
        }
    }

    /// Blocks until `parties` calls wait; this caller's arrival index, `0..parties`.
    ///
    /// # Errors
    /// [`RemoteError::BrokenBarrier`](super::RemoteError::BrokenBarrier) when the barrier is
    /// or becomes broken; [`ManagerError::Disconnected`] when the server is gone, also while
    /// waiting.
    pub fn wait(&self) -> Result<usize, ManagerError> {
        self.arrive(None)
    }

    /// As [`wait`](BarrierProxy::wait), for at most `timeout`; a timeout breaks the barrier
    /// and fails with `BrokenBarrier`, as Python's does.
    ///
    /// # Errors
    /// As [`wait`](BarrierProxy::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.arrive(timeout_ms(timeout))
    }

    /// Breaks the barrier: current and later waits fail until [`reset`](BarrierProxy::reset).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone.
    pub fn abort(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Abort)
    }

    /// Makes the barrier whole and empty again; waits under way fail with `BrokenBarrier`.
    ///
    /// # Errors
    /// As [`abort`](BarrierProxy::abort).
    pub fn reset(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Reset)
    }

    /// How many must wait for it to trip.
    ///
    /// # Errors
    /// As [`abort`](BarrierProxy::abort).
    pub fn parties(&self) -> Result<usize, ManagerError> {
        self.count(Op::Parties)
    }

    /// How many wait now (Python's `n_waiting`).
    ///
    /// # Errors
    /// As [`abort`](BarrierProxy::abort).
    pub fn n_waiting(&self) -> Result<usize, ManagerError> {
        self.count(Op::Waiting)
    }

    /// Whether the barrier is broken.
    ///
    /// # Errors
    /// As [`abort`](BarrierProxy::abort).
    pub fn broken(&self) -> Result<bool, ManagerError> {
        self.handle.bool(Op::IsBroken)
    }

    fn count(&self, op: Op) -> Result<usize, ManagerError> {
        match self.handle.op(op)? {
            super::protocol::Reply::Len(n) => Ok(n as usize),
            r => Err(super::client::unexpected(r)),
        }
    }
}

/// A condition variable in the manager's server with a reentrant lock of its own, Python's
/// `Manager().Condition()`: hold it (acquire) to [`wait`](ConditionProxy::wait) or
/// [`notify`](ConditionProxy::notify).
///
/// The lock is owned by the calling thread (its connection), as an `RLock`'s; when the owner's
/// connection closes, the server releases it.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::manager::{ConditionProxy, ValueProxy};
///
/// let manager = multiproc::Manager::start()?;
/// let (cond, ready) = (manager.condition()?, manager.value(false)?);
/// cond.acquire()?;
/// let child = multiproc::spawn_with_args(
///     |(cond, ready): (ConditionProxy, ValueProxy<bool>)| {
///         cond.acquire().unwrap(); // free once the parent waits
///         ready.set(&true).unwrap();
///         cond.notify_all().unwrap();
///         cond.release().unwrap();
///     },
///     (cond.clone(), ready.clone()),
/// )?;
/// while !ready.get()? {
///     assert!(cond.wait_timeout(Duration::from_secs(10))?);
/// }
/// cond.release()?;
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ConditionProxy {
    pub(crate) handle: Handle,
}

super::proxy_impls!(ConditionProxy);

impl ConditionProxy {
    /// Blocks until this thread holds the lock (again, if it already does).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone, also while waiting.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        acquire(&self.handle, None).map(drop)
    }

    /// Waits at most `timeout` for the lock; whether it was acquired.
    ///
    /// # Errors
    /// As [`acquire`](ConditionProxy::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        acquire(&self.handle, timeout_ms(timeout))
    }

    /// Releases the lock once.
    ///
    /// # Errors
    /// [`RemoteError::NotHeld`](super::RemoteError::NotHeld) when this thread does not hold
    /// it; as [`acquire`](ConditionProxy::acquire).
    pub fn release(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Release)
    }

    /// Releases the lock, blocks until notified, and takes the lock again.
    ///
    /// # Errors
    /// `NotHeld` when this thread does not hold the lock; as
    /// [`acquire`](ConditionProxy::acquire), also while waiting.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.handle
            .bool(Op::CondWait { timeout_ms: None })
            .map(drop)
    }

    /// As [`wait`](ConditionProxy::wait), waiting at most `timeout` for a notify; whether one
    /// came (the lock is taken again either way, as Python's).
    ///
    /// # Errors
    /// As [`wait`](ConditionProxy::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.handle.bool(Op::CondWait {
            timeout_ms: timeout_ms(timeout),
        })
    }

    /// Wakes up to `n` waiters, oldest first. The caller must hold the lock.
    ///
    /// # Errors
    /// `NotHeld` when this thread does not hold the lock; as
    /// [`acquire`](ConditionProxy::acquire).
    pub fn notify(&self, n: usize) -> Result<(), ManagerError> {
        self.handle.unit(Op::Notify(Some(n as u64)))
    }

    /// Wakes every waiter. The caller must hold the lock.
    ///
    /// # Errors
    /// As [`notify`](ConditionProxy::notify).
    pub fn notify_all(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Notify(None))
    }
}
