//! [`Condition`]: Python's `multiprocessing.Condition`, on a robust [`Lock`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::raw::{self, Acquired, CondState};
use super::{AcquireError, Lock, LockGuard, OwnerDied};
use crate::error::Result;
use crate::shared::segment::Shm;

/// A condition variable shared between processes, with its lock.
///
/// Acquire it to get a [`ConditionGuard`]; wait and notify through the guard, so that both
/// happen with the lock held, as Python requires. `notify(n)` wakes `n` waiters; a wait can
/// still return early in rare cases (after a waiter was killed), so check the predicate, or
/// use [`wait_for`](ConditionGuard::wait_for). A waiter is never stranded by a
/// notifier that died: if the notifier died holding the lock, the waiter gets the lock with an
/// [`OwnerDied`] notice; if it died before notifying, the timed forms return.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::{Condition, Value};
///
/// let ready = Value::new(0u32)?;
/// let cond = Condition::with_lock(ready.get_lock().clone())?;
/// let child = multiproc::spawn_with_args(
///     |(ready, cond): (Value<u32>, Condition)| {
///         let mut g = cond.acquire().unwrap();
///         ready.set_with(g.lock_guard_mut(), 1).unwrap();
///         g.notify_all();
///     },
///     (ready.clone(), cond.clone()),
/// )?;
/// let mut g = cond.acquire().map_err(|e| e.to_string())?;
/// let ok = g.wait_for(|held| ready.get_with(held) == Some(1), Some(Duration::from_secs(10)));
/// assert!(ok.map_err(|e| e.to_string())?);
/// drop(g);
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    state: Shm<CondState>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

/// The held lock of a [`Condition`]; wait and notify through it. Releases the lock on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    guard: LockGuard<'a>,
}

impl Condition {
    /// A condition with a new lock of its own.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new() -> Result<Condition> {
        Self::with_lock(Lock::new()?)
    }

    /// A condition over an existing lock (for example a [`Value`](crate::Value)'s), Python's
    /// `Condition(lock)`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn with_lock(lock: Lock) -> Result<Condition> {
        Ok(Condition {
            lock,
            state: Shm::zeroed()?,
        })
    }

    /// The underlying lock.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    pub(crate) fn wrap<'a>(&'a self, g: LockGuard<'a>) -> ConditionGuard<'a> {
        ConditionGuard {
            cond: self,
            guard: g,
        }
    }

    /// Acquires the lock.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the previous holder died holding the lock.
    pub fn acquire(&self) -> Result<ConditionGuard<'_>, OwnerDied<ConditionGuard<'_>>> {
        match self.lock.acquire() {
            Ok(g) => Ok(self.wrap(g)),
            Err(e) => Err(e.map(|g| self.wrap(g))),
        }
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        match self.lock.acquire_timeout(timeout) {
            Ok(g) => Ok(self.wrap(g)),
            Err(e) => Err(e.map(|g| self.wrap(g))),
        }
    }
}

impl<'a> ConditionGuard<'a> {
    /// Releases the lock, sleeps until notified, and takes the lock again.
    ///
    /// # Errors
    /// [`OwnerDied`] if, while this process waited, a holder of the lock died holding it; the
    /// lock is held again all the same.
    pub fn wait(&mut self) -> Result<(), OwnerDied<()>> {
        self.wait_until(None).map(drop).map_err(|e| e.map(drop))
    }

    /// As [`wait`](Self::wait), for at most `timeout`. Returns `false` if the time ran out
    /// (Python's return value). The lock is held again either way.
    ///
    /// # Errors
    /// [`OwnerDied`] as for [`wait`](Self::wait); it carries the same `bool`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool, OwnerDied<bool>> {
        self.wait_until(raw::deadline(timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<bool, OwnerDied<bool>> {
        let state = &*self.cond.state;
        let lock = &self.cond.lock.raw;
        let mut seen = state.seq.load(Ordering::SeqCst);
        state.sleepers.fetch_add(1, Ordering::SeqCst);
        lock.unlock();
        let notified = loop {
            if !raw::wait_while(&state.seq, seen, deadline) {
                // Timed out; a notification that raced with the timeout still counts.
                break take_token(state);
            }
            if take_token(state) {
                break true;
            }
            // Another waiter took that notification: sleep on.
            seen = state.seq.load(Ordering::SeqCst);
        };
        let how = lock.lock(None).unwrap_or(Acquired::Clean);
        let sleepers = state.sleepers.fetch_sub(1, Ordering::Relaxed) - 1;
        // Tokens meant for waiters that died waiting must not pile up.
        state.tokens.fetch_min(sleepers, Ordering::Relaxed);
        match how {
            Acquired::Clean => Ok(notified),
            Acquired::OwnerDied => Err(OwnerDied::new(notified)),
        }
    }

    /// The held lock, for reading a [`Value`](crate::Value) that shares it
    /// ([`Value::get_with`](crate::Value::get_with)).
    pub fn lock_guard(&self) -> &LockGuard<'_> {
        &self.guard
    }

    /// The held lock, for writing a [`Value`](crate::Value) that shares it
    /// ([`Value::set_with`](crate::Value::set_with)).
    pub fn lock_guard_mut(&mut self) -> &mut LockGuard<'a> {
        &mut self.guard
    }

    /// Waits until `predicate` holds, for at most `timeout` (`None`: no limit). Returns the
    /// predicate's last value. The predicate runs with the lock held, which it is handed so it
    /// can read values that share the lock.
    ///
    /// # Errors
    /// [`OwnerDied`] as for [`wait`](Self::wait); it carries the predicate's value.
    pub fn wait_for(
        &mut self,
        mut predicate: impl FnMut(&LockGuard<'_>) -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, OwnerDied<bool>> {
        let deadline = timeout.and_then(raw::deadline);
        let mut died = false;
        loop {
            if predicate(&self.guard) {
                return if died {
                    Err(OwnerDied::new(true))
                } else {
                    Ok(true)
                };
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return if died {
                    Err(OwnerDied::new(false))
                } else {
                    Ok(false)
                };
            }
            if self.wait_until(deadline).is_err() {
                died = true;
            }
        }
    }

    /// Wakes one waiter.
    pub fn notify(&self) {
        self.notify_n(1);
    }

    /// Wakes up to `n` waiters (Python's `notify(n)`).
    pub fn notify_n(&self, n: u32) {
        let n = n.min(raw::WAKE_ALL);
        let state = &*self.cond.state;
        let sleepers = state.sleepers.load(Ordering::SeqCst);
        let tokens = state.tokens.load(Ordering::SeqCst);
        let give = n.min(sleepers.saturating_sub(tokens));
        if give == 0 {
            return; // nobody waits who is not already notified
        }
        state.tokens.fetch_add(give, Ordering::SeqCst);
        state.seq.fetch_add(1, Ordering::SeqCst);
        raw::wake(&state.seq, give);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify_n(raw::WAKE_ALL);
    }
}

/// For `crate::aio`: a wait begun by [`ConditionGuard::begin_async_wait`], with the lock
/// released. Dropping it ends the wait (it is no longer counted as a sleeper), whether it was
/// notified or cancelled.
#[cfg(any(feature = "tokio", feature = "async-io"))]
#[derive(Debug)]
pub(crate) struct AsyncWait<'a> {
    cond: &'a Condition,
    /// The notification count when this waiter last looked.
    seen: u32,
}

#[cfg(any(feature = "tokio", feature = "async-io"))]
impl<'a> ConditionGuard<'a> {
    /// Registers as a waiter and releases the lock, as the blocking wait does first.
    pub(crate) fn begin_async_wait(self) -> AsyncWait<'a> {
        let ConditionGuard { cond, guard } = self;
        let state = &*cond.state;
        let seen = state.seq.load(Ordering::SeqCst);
        state.sleepers.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        AsyncWait { cond, seen }
    }
}

#[cfg(any(feature = "tokio", feature = "async-io"))]
impl<'a> AsyncWait<'a> {
    pub(crate) fn condition(&self) -> &'a Condition {
        self.cond
    }

    /// The notification count this waiter waits to see change.
    pub(crate) fn seen(&self) -> u32 {
        self.seen
    }

    /// Whether a notification may be there for this waiter to take: one came since it last
    /// looked, and not all were taken. If they were, it looks again from now on.
    pub(crate) fn maybe_notified(&mut self) -> bool {
        let state = &*self.cond.state;
        let now = state.seq.load(Ordering::SeqCst);
        if now == self.seen {
            return false;
        }
        if state.tokens.load(Ordering::SeqCst) > 0 {
            return true;
        }
        // Taken by other waiters; a later notify changes the count again (it adds its
        // tokens before it bumps the count).
        self.seen = now;
        false
    }

    /// With the lock held again: takes a notification and ends the wait, or (another
    /// waiter took it first) releases the lock and goes on waiting.
    pub(crate) fn try_finish(
        &mut self,
        guard: LockGuard<'a>,
    ) -> std::result::Result<ConditionGuard<'a>, ()> {
        let state = &*self.cond.state;
        let now = state.seq.load(Ordering::SeqCst);
        if take_token(state) {
            return Ok(self.cond.wrap(guard));
        }
        self.seen = now;
        drop(guard);
        Err(())
    }

    /// Wraps a guard of this condition's lock (for an `OwnerDied` re-acquire, which ends
    /// the wait early, as a spurious wake-up; a notification there is taken with it).
    pub(crate) fn finish_early(&mut self, guard: LockGuard<'a>) -> ConditionGuard<'a> {
        take_token(&self.cond.state);
        self.cond.wrap(guard)
    }
}

#[cfg(any(feature = "tokio", feature = "async-io"))]
impl Drop for AsyncWait<'_> {
    fn drop(&mut self) {
        let state = &*self.cond.state;
        let sleepers = state.sleepers.fetch_sub(1, Ordering::SeqCst) - 1;
        // As the blocking wait's end: tokens meant for waiters that are gone must not pile up.
        state.tokens.fetch_min(sleepers, Ordering::SeqCst);
    }
}

#[cfg(any(feature = "tokio", feature = "async-io"))]
impl Condition {
    /// Sleeps while no notification came since `seen`, at most `max` (an async waiter's
    /// helper thread does this).
    pub(crate) fn sleep_unless_notified(&self, seen: u32, max: Duration) {
        raw::wait_while(&self.state.seq, seen, raw::deadline(max));
    }
}

/// Takes one notification, if there is one.
fn take_token(state: &CondState) -> bool {
    state
        .tokens
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
        .is_ok()
}
