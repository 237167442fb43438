//! Cross-process synchronization: Python's `multiprocessing.synchronize`, robust to crashes.
//!
//! Every primitive lives in shared memory (a memfd mapped `MAP_SHARED`), so it works between
//! processes started by `fork` (the mapping is inherited) and can be passed as a start
//! argument to start methods that begin a fresh program (the descriptor travels with it).
//! Clones share the same primitive. All are built on the robust futex word of `raw.rs`; see
//! `src/sync/README.md`.
//!
//! A process that dies holding a [`Lock`] or [`RLock`] does not deadlock the others: the next
//! acquirer gets the lock together with an [`OwnerDied`] notice. A [`Barrier`] one of whose
//! parties dies is broken for the others. Every blocking call has a timed form.
//!
//! Each primitive holds one file descriptor (its memfd); a [`Condition`], a
//! [`Value`](crate::Value) or an [`Array`](crate::Array) holds two (its lock's and its own).

use std::fmt;

pub(crate) mod barrier;
mod condition;
mod event;
mod lock;
pub(crate) mod owner;
#[allow(unsafe_code)]
pub(crate) mod raw;
mod rlock;
mod semaphore;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore};

/// The lock was acquired, but its previous owner process died while holding it.
///
/// The lock is held (the guard is inside) and stays usable, like a robust POSIX mutex after
/// `EOWNERDEAD` made consistent; the data it protects may be half-updated. Take the guard with
/// [`into_inner`](OwnerDied::into_inner) after checking or repairing that data.
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    #[inline]
    pub(crate) fn new(guard: G) -> Self {
        OwnerDied { guard }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    #[inline]
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> OwnerDied<H> {
        OwnerDied {
            guard: f(self.guard),
        }
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied").finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("previous owner of the lock died while holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// Why a timed acquire did not return a clean guard.
pub enum AcquireError<G> {
    /// Not acquired within the timeout.
    Timeout,
    /// Acquired, from an owner that died holding the lock; the guard is inside.
    OwnerDied(OwnerDied<G>),
}

impl<G> AcquireError<G> {
    /// The same outcome with the guard (if any) turned into another by `f`, for types that
    /// wrap a lock's guard in their own (`Value`, `Array`, `Condition`).
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> AcquireError<H> {
        match self {
            AcquireError::Timeout => AcquireError::Timeout,
            AcquireError::OwnerDied(e) => AcquireError::OwnerDied(e.map(f)),
        }
    }

    /// Whether the timeout passed without acquiring.
    pub fn is_timeout(&self) -> bool {
        matches!(self, AcquireError::Timeout)
    }
}

impl<G> From<OwnerDied<G>> for AcquireError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        AcquireError::OwnerDied(e)
    }
}

impl<G> fmt::Debug for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout => f.write_str("Timeout"),
            AcquireError::OwnerDied(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl<G> fmt::Display for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout => f.write_str("timed out waiting for the lock"),
            AcquireError::OwnerDied(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<G> std::error::Error for AcquireError<G> {}

/// Why a non-blocking acquire ([`Lock::try_acquire`], [`RLock::try_acquire`]) did not
/// return a clean guard. Python's `acquire(block=False)` returns `False` where this says
/// `WouldBlock`.
pub enum TryAcquireError<G> {
    /// A live process (or another thread) holds the lock.
    WouldBlock,
    /// The holder had died holding the lock: it was taken over, and the guard is inside.
    OwnerDied(OwnerDied<G>),
}

impl<G> TryAcquireError<G> {
    /// Whether the lock is held by someone else.
    pub fn is_would_block(&self) -> bool {
        matches!(self, TryAcquireError::WouldBlock)
    }
}

impl<G> From<OwnerDied<G>> for TryAcquireError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        TryAcquireError::OwnerDied(e)
    }
}

impl<G> fmt::Debug for TryAcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryAcquireError::WouldBlock => f.write_str("WouldBlock"),
            TryAcquireError::OwnerDied(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl<G> fmt::Display for TryAcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryAcquireError::WouldBlock => f.write_str("the lock is held"),
            TryAcquireError::OwnerDied(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<G> std::error::Error for TryAcquireError<G> {}

/// A [`Barrier`] was broken: by [`abort`](Barrier::abort), [`reset`](Barrier::reset), a timeout,
/// a panicking action, or the death of a party. Python's `BrokenBarrierError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("barrier is broken")]
pub struct BrokenBarrierError;

/// [`BoundedSemaphore::release`] would raise the value above its initial value.
#[doc(alias = "ValueError")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("semaphore released too many times")]
pub struct ReleaseError;
