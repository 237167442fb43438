//! [`Value`]: one plain-old-data value in shared memory with its lock (Python's `Value`).

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Pod;
use super::segment::Bytes;
use crate::error::Result;
use crate::sync::{AcquireError, Lock, LockGuard, OwnerDied};

/// A `T` in shared memory, guarded by a [`Lock`]: Python's `multiprocessing.Value`.
///
/// All access goes through the lock, so it is free of data races; a process that dies holding
/// it hands the next one an [`OwnerDied`] notice, since the value may be half-updated.
///
/// # Examples
/// The shared counter of Python's tutorials, without lost increments:
/// ```
/// use multiproc::Value;
///
/// let counter = Value::new(0u64)?;
/// let children: Vec<_> = (0..4)
///     .map(|_| {
///         multiproc::spawn_with_args(
///             |counter: Value<u64>| {
///                 for _ in 0..1000 {
///                     *counter.lock().unwrap() += 1;
///                 }
///             },
///             counter.clone(),
///         )
///     })
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// assert_eq!(counter.get(), 4000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize)]
#[serde(bound = "")]
pub struct Value<T: Pod> {
    lock: Lock,
    data: Bytes,
    #[serde(skip)]
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            lock: self.lock.clone(),
            data: self.data.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Value");
        match self.lock.try_acquire_free() {
            Some(g) => d.field("value", &self.get_with(&g)),
            None => d.field("value", &"<locked>"),
        };
        d.finish()
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (lock, data) = <(Lock, Bytes)>::deserialize(d)?;
        if data.seg.len() < size_of::<T>() {
            return Err(serde::de::Error::custom(
                "shared value segment too small for its type",
            ));
        }
        Ok(Value {
            lock,
            data,
            _t: PhantomData,
        })
    }
}

/// Holds a [`Value`]'s lock and gives access to the value; releases the lock on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    _guard: LockGuard<'a>,
    value: &'a Value<T>,
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

impl<T: Pod> Value<T> {
    /// A new shared value with its own lock.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new(value: T) -> Result<Value<T>> {
        Self::with_lock(value, Lock::new()?)
    }

    /// A new shared value guarded by an existing lock (Python's `Value(..., lock=lock)`).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn with_lock(value: T, lock: Lock) -> Result<Value<T>> {
        let v: Value<T> = Value {
            lock,
            data: Bytes::zeroed(size_of::<T>())?,
            _t: PhantomData,
        };
        // SAFETY: nobody else can see the new segment yet.
        unsafe { v.ptr().write(value) };
        Ok(v)
    }

    fn ptr(&self) -> *mut T {
        self.data.seg.as_ptr().cast::<T>()
    }

    /// The lock guarding the value (Python's `get_lock()`).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    #[inline]
    fn guard<'a>(&'a self, g: LockGuard<'a>) -> ValueGuard<'a, T> {
        ValueGuard {
            _guard: g,
            value: self,
        }
    }

    /// Locks the value for reading and writing.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the previous holder died holding the lock.
    #[inline]
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, OwnerDied<ValueGuard<'_, T>>> {
        match self.lock.acquire() {
            Ok(g) => Ok(self.guard(g)),
            Err(e) => Err(e.map(|g| self.guard(g))),
        }
    }

    /// Locks the value, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        match self.lock.acquire_timeout(timeout) {
            Ok(g) => Ok(self.guard(g)),
            Err(e) => Err(e.map(|g| self.guard(g))),
        }
    }

    /// Reads the value under the lock (Python's `.value`).
    ///
    /// If a process died holding the lock, this reads the value as that process left it,
    /// possibly half-updated, and logs a `tracing` warning: it cannot report the death. Use
    /// [`lock`](Value::lock), which returns [`OwnerDied`], where that matters.
    pub fn get(&self) -> T {
        *self.lock().unwrap_or_else(super::recovered)
    }

    /// Writes the value under the lock (Python's `.value = ...`).
    ///
    /// After a holder's death it writes over whatever that process left, with a `tracing`
    /// warning, as [`get`](Value::get) reads it.
    pub fn set(&self, value: T) {
        *self.lock().unwrap_or_else(super::recovered) = value;
    }

    /// Reads the value with its lock already held through `guard` (a
    /// [`ConditionGuard`](crate::sync::ConditionGuard)'s, for instance). `None` if `guard` holds
    /// another lock.
    pub fn get_with(&self, guard: &LockGuard<'_>) -> Option<T> {
        // SAFETY: `guard` proves this process holds the value's lock, so no other process or
        // thread writes the value now.
        guard
            .lock()
            .same(&self.lock)
            .then(|| unsafe { self.ptr().read() })
    }

    /// Writes the value with its lock already held through `guard`. `None` if `guard` holds
    /// another lock.
    pub fn set_with(&self, guard: &mut LockGuard<'_>, value: T) -> Option<()> {
        // SAFETY: `guard` (borrowed mutably) proves this process holds the value's lock, so no
        // other process or thread reads or writes the value now.
        guard
            .lock()
            .same(&self.lock)
            .then(|| unsafe { self.ptr().write(value) })
    }
}

impl<T: Pod> std::ops::Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the value's lock, so no other process or thread writes it;
        // the segment outlives `self.value`.
        unsafe { &*self.value.ptr() }
    }
}

impl<T: Pod> std::ops::DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access in this process.
        unsafe { &mut *self.value.ptr() }
    }
}
