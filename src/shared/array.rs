//! [`Array`]: a fixed-length array of plain-old-data in shared memory with its lock (Python's
//! `multiprocessing.Array`).

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Pod;
use super::segment::Bytes;
use crate::error::Result;
use crate::sync::{AcquireError, Lock, LockGuard, OwnerDied};

/// `len` values of `T` in shared memory, guarded by one [`Lock`].
///
/// # Examples
/// ```
/// use multiproc::Array;
///
/// let squares = Array::<u32>::new(8)?;
/// let child = multiproc::spawn_with_args(
///     |squares: Array<u32>| {
///         let mut a = squares.lock().unwrap();
///         for (i, x) in a.iter_mut().enumerate() {
///             *x = (i * i) as u32;
///         }
///     },
///     squares.clone(),
/// )?;
/// child.join()?;
/// assert_eq!(squares.to_vec(), [0, 1, 4, 9, 16, 25, 36, 49]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize)]
#[serde(bound = "")]
pub struct Array<T: Pod> {
    lock: Lock,
    data: Bytes,
    len: usize,
    #[serde(skip)]
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            lock: self.lock.clone(),
            data: self.data.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array").field("len", &self.len).finish()
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (lock, data, len) = <(Lock, Bytes, usize)>::deserialize(d)?;
        super::check_received_len::<T, D::Error>(len, data.seg.len())?;
        Ok(Array {
            lock,
            data,
            len,
            _t: PhantomData,
        })
    }
}

/// Holds an [`Array`]'s lock and derefs to its elements; releases the lock on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    _guard: LockGuard<'a>,
    array: &'a Array<T>,
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements with its own lock.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if `len` elements do not fit
    /// in memory; [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new(len: usize) -> Result<Array<T>> {
        Self::zeroed(len, Lock::new()?)
    }

    /// An array holding a copy of `values`, with its own lock.
    ///
    /// # Errors
    /// As [`Array::new`].
    pub fn from_slice(values: &[T]) -> Result<Array<T>> {
        let a = Self::new(values.len())?;
        // Nobody else has the new array yet: no holder can have died.
        a.lock()
            .unwrap_or_else(OwnerDied::into_inner)
            .copy_from_slice(values);
        Ok(a)
    }

    /// An array of `len` zeroed elements guarded by an existing lock.
    ///
    /// # Errors
    /// As [`Array::new`].
    pub fn with_lock(len: usize, lock: Lock) -> Result<Array<T>> {
        Self::zeroed(len, lock)
    }

    fn zeroed(len: usize, lock: Lock) -> Result<Array<T>> {
        let bytes = super::byte_len::<T>(len, "an array")?;
        Ok(Array {
            lock,
            data: Bytes::zeroed(bytes)?,
            len,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lock guarding the array (Python's `get_lock()`).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    fn guard<'a>(&'a self, g: LockGuard<'a>) -> ArrayGuard<'a, T> {
        ArrayGuard {
            _guard: g,
            array: self,
        }
    }

    /// Locks the array; the guard derefs to `[T]`.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the previous holder died holding the lock.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>, OwnerDied<ArrayGuard<'_, T>>> {
        match self.lock.acquire() {
            Ok(g) => Ok(self.guard(g)),
            Err(e) => Err(e.map(|g| self.guard(g))),
        }
    }

    /// Locks the array, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        match self.lock.acquire_timeout(timeout) {
            Ok(g) => Ok(self.guard(g)),
            Err(e) => Err(e.map(|g| self.guard(g))),
        }
    }

    /// Element `i` (under the lock), or `None` past the end.
    ///
    /// If a process died holding the lock, this reads the element as that process left it
    /// and logs a `tracing` warning, as [`Value::get`](crate::Value::get) does; use
    /// [`lock`](Array::lock) to be told.
    pub fn get(&self, i: usize) -> Option<T> {
        self.lock().unwrap_or_else(super::recovered).get(i).copied()
    }

    /// Sets element `i` (under the lock); `None` past the end. After a holder's death it
    /// writes with a `tracing` warning, as [`get`](Array::get) reads.
    pub fn set(&self, i: usize, value: T) -> Option<()> {
        let mut g = self.lock().unwrap_or_else(super::recovered);
        g.get_mut(i).map(|x| *x = value)
    }

    /// A copy of all elements (under the lock). After a holder's death it copies them as that
    /// process left them, with a `tracing` warning, as [`get`](Array::get) reads.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().unwrap_or_else(super::recovered).to_vec()
    }
}

impl<T: Pod> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the segment holds at least `len` elements (checked at creation and on
        // receipt), is page aligned, outlives `self.array`, and the guard holds the lock, so no
        // other process or thread writes it now.
        unsafe {
            std::slice::from_raw_parts(self.array.data.seg.as_ptr().cast::<T>(), self.array.len)
        }
    }
}

impl<T: Pod> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access in this process.
        unsafe {
            std::slice::from_raw_parts_mut(self.array.data.seg.as_ptr().cast::<T>(), self.array.len)
        }
    }
}
