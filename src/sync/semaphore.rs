//! [`Semaphore`] and [`BoundedSemaphore`]: Python's counting semaphores.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ReleaseError;
use super::raw::{self, SemState};
use crate::error::Result;
use crate::shared::segment::Shm;

/// A counting semaphore shared between processes.
///
/// `acquire` takes one unit, waiting while the value is 0; `release` gives one back. A
/// semaphore has no owner: a process that dies between acquire and release takes its unit
/// with it (as with POSIX semaphores); use the timed forms where that matters.
///
/// # Examples
/// ```
/// use multiproc::Semaphore;
///
/// let ready = Semaphore::new(0)?;
/// let child = multiproc::spawn_with_args(|ready: Semaphore| ready.release(), ready.clone())?;
/// ready.acquire(); // returns once the child released
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Semaphore {
    state: Shm<SemState>,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

/// The largest value a semaphore can hold; releases beyond it are ignored.
const MAX_VALUE: u32 = u32::MAX;

impl Semaphore {
    /// A semaphore with initial `value` (Python's default is 1).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new(value: u32) -> Result<Semaphore> {
        Self::with_max(value, 0)
    }

    fn with_max(value: u32, max: u32) -> Result<Semaphore> {
        let state: Shm<SemState> = Shm::zeroed()?;
        state.value.store(value, Ordering::Relaxed);
        state.max.store(max, Ordering::Relaxed);
        Ok(Semaphore { state })
    }

    /// Takes one unit, waiting as long as it takes.
    pub fn acquire(&self) {
        let _ = self.acquire_until(None);
    }

    /// Takes one unit if the value is above 0, without waiting. Returns whether it did.
    pub fn try_acquire(&self) -> bool {
        let s = &*self.state;
        let mut v = s.value.load(Ordering::Relaxed);
        while v > 0 {
            match s
                .value
                .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    /// Waits at most `timeout` for a unit. Returns whether it was taken.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let sem = multiproc::Semaphore::new(1)?;
    /// assert!(sem.acquire_timeout(Duration::from_millis(10)));
    /// assert!(!sem.acquire_timeout(Duration::from_millis(10)));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(raw::deadline(timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> bool {
        let s = &*self.state;
        loop {
            if self.try_acquire() {
                return true;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let awake = raw::wait_while(&s.value, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::Relaxed);
            if !awake {
                return self.try_acquire();
            }
        }
    }

    /// Gives one unit back and wakes one waiter. (At `u32::MAX` units the value stays put.)
    pub fn release(&self) {
        // A plain semaphore has no bound but the width of its counter.
        let _ = self.release_checked(MAX_VALUE);
    }

    fn release_checked(&self, max: u32) -> Result<(), ReleaseError> {
        let s = &*self.state;
        let mut v = s.value.load(Ordering::Relaxed);
        loop {
            if v >= max {
                return Err(ReleaseError);
            }
            match s
                .value
                .compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            raw::wake(&s.value, 1);
        }
        Ok(())
    }

    /// The current value (a snapshot; Python's `get_value`).
    #[doc(alias = "get_value")]
    pub fn value(&self) -> u32 {
        self.state.value.load(Ordering::Relaxed)
    }
}

/// A [`Semaphore`] that refuses to be released above its initial value.
///
/// # Examples
/// ```
/// let sem = multiproc::BoundedSemaphore::new(1)?;
/// sem.acquire();
/// sem.release()?;
/// assert!(sem.release().is_err()); // one release too many
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl BoundedSemaphore {
    /// A bounded semaphore with initial and maximum `value`.
    ///
    /// # Errors
    /// As [`Semaphore::new`].
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            inner: Semaphore::with_max(value, value)?,
        })
    }

    /// Takes one unit, waiting as long as it takes.
    pub fn acquire(&self) {
        self.inner.acquire()
    }

    /// Takes one unit without waiting; returns whether it did.
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Waits at most `timeout` for a unit; returns whether it was taken.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_timeout(timeout)
    }

    /// Gives one unit back.
    ///
    /// # Errors
    /// [`ReleaseError`] (Python's `ValueError`) if the value is already at its bound; the
    /// value is left unchanged.
    pub fn release(&self) -> Result<(), ReleaseError> {
        let max = self.inner.state.max.load(Ordering::Relaxed);
        self.inner.release_checked(max)
    }

    /// The current value.
    pub fn value(&self) -> u32 {
        self.inner.value()
    }
}
