//! [`RawValue`] and [`RawArray`]: plain-old-data in shared memory without a lock (Python's
//! `sharedctypes.RawValue` and `RawArray`).
//!
//! Why unlocked access is sound here, and what it guarantees: see [`RawValue`]'s docs.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize,
};

use serde::{Deserialize, Deserializer, Serialize};

use super::segment::Bytes;
use super::{Pod, SharedAtomic};
use crate::error::Result;

/// The atomic of type `A` at byte `at` of `data`, which must be aligned to `A` and inside the
/// segment (asserted: a bad offset is a bug here, never undefined behaviour).
fn atomic_at<A: SharedAtomic>(data: &Bytes, at: usize) -> &A {
    assert!(
        at.is_multiple_of(align_of::<A>()) && at + size_of::<A>() <= data.seg.len(),
        "misplaced atomic access to a shared segment"
    );
    // SAFETY: `base + at` lies in the live mapping (which `data` keeps alive for the returned
    // borrow) with `size_of::<A>()` bytes after it, and is aligned to `A` (`at` is, checked
    // above, and the mapping is page aligned); `A` is an atomic integer, valid for every bit
    // pattern, and every access to these bytes is atomic with this same width (see
    // `RawValue`'s docs).
    unsafe { &*data.seg.as_ptr().add(at).cast::<A>() }
}

/// Copies `out.len()` bytes at `offset` in `data` into `out`, piece by piece (see the module
/// docs of [`RawValue`]).
fn load_bytes(data: &Bytes, offset: usize, out: &mut [u8]) {
    let mut i = 0;
    while i < out.len() {
        let (at, left) = (offset + i, out.len() - i);
        let width = if at.is_multiple_of(8) && left >= 8 {
            let w = atomic_at::<AtomicU64>(data, at).load(Acquire);
            out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            8
        } else if at.is_multiple_of(4) && left >= 4 {
            let w = atomic_at::<AtomicU32>(data, at).load(Acquire);
            out[i..i + 4].copy_from_slice(&w.to_ne_bytes());
            4
        } else if at.is_multiple_of(2) && left >= 2 {
            let w = atomic_at::<AtomicU16>(data, at).load(Acquire);
            out[i..i + 2].copy_from_slice(&w.to_ne_bytes());
            2
        } else {
            out[i] = atomic_at::<AtomicU8>(data, at).load(Acquire);
            1
        };
        i += width;
    }
}

/// Copies `src` into `data` at `offset`, piece by piece, as [`load_bytes`] reads.
fn store_bytes(data: &Bytes, offset: usize, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        let (at, left) = (offset + i, src.len() - i);
        let width = if at.is_multiple_of(8) && left >= 8 {
            let w = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
            atomic_at::<AtomicU64>(data, at).store(w, Release);
            8
        } else if at.is_multiple_of(4) && left >= 4 {
            let w = u32::from_ne_bytes(src[i..i + 4].try_into().expect("4 bytes"));
            atomic_at::<AtomicU32>(data, at).store(w, Release);
            4
        } else if at.is_multiple_of(2) && left >= 2 {
            let w = u16::from_ne_bytes(src[i..i + 2].try_into().expect("2 bytes"));
            atomic_at::<AtomicU16>(data, at).store(w, Release);
            2
        } else {
            atomic_at::<AtomicU8>(data, at).store(src[i], Release);
            1
        };
        i += width;
    }
}

/// Reads the `T` at `offset` (see `RawValue`'s docs).
fn load<T: Pod>(data: &Bytes, offset: usize) -> T {
    let mut value = MaybeUninit::<T>::zeroed();
    // SAFETY: `value` is `size_of::<T>()` initialised (zero) bytes, writable, and viewed as
    // bytes only for this call.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), size_of::<T>()) };
    load_bytes(data, offset, bytes);
    // SAFETY: `T: Pod`: every bit pattern of its size is a valid `T`.
    unsafe { value.assume_init() }
}

/// Writes `value` at `offset` (see `RawValue`'s docs).
fn store<T: Pod>(data: &Bytes, offset: usize, value: T) {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes of `value` are
    // initialised; they are read only while `value` lives.
    let bytes =
        unsafe { std::slice::from_raw_parts((&raw const value).cast::<u8>(), size_of::<T>()) };
    store_bytes(data, offset, bytes);
}

mod sealed {
    pub trait Sealed {}
}

/// The integer types with an atomic counterpart of the same size and layout, which
/// [`RawValue::as_atomic`] and [`RawArray::as_atomics`] hand out.
pub trait AtomicPod: Pod + sealed::Sealed {
    /// The atomic type of the same size: `AtomicU64` for `u64`, and so on.
    type Atomic: Send + Sync;
}

macro_rules! atomic_pod {
    ($($t:ty => $a:ty),*) => { $(
        impl sealed::Sealed for $t {}
        impl AtomicPod for $t {
            type Atomic = $a;
        }
        const _: () = assert!(
            size_of::<$t>() == size_of::<$a>() && align_of::<$a>() <= size_of::<$a>()
        );
    )* };
}
atomic_pod!(
    u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64, usize => AtomicUsize,
    i8 => AtomicI8, i16 => AtomicI16, i32 => AtomicI32, i64 => AtomicI64, isize => AtomicIsize
);

/// A `T` in shared memory with no lock: Python's `sharedctypes.RawValue`.
///
/// [`get`](RawValue::get) and [`set`](RawValue::set) copy the value atomically piece by piece,
/// so any number of processes and threads may use it at once without undefined behaviour; a
/// value of more than 8 bytes may be read torn. For integers,
/// [`as_atomic`](RawValue::as_atomic) gives the value as a std atomic, for `fetch_add` and
/// compare-and-swap. Where a value of several fields must change as one, use
/// [`Value`](crate::Value), which has a lock.
///
/// Handles are cheap clones of one shared segment; a child receives one as a start argument
/// (or inherits it under `fork`).
///
/// # Why unlocked access is sound, and what it guarantees
/// Without a lock, several processes and threads may read and write the same bytes at once.
/// In Rust a plain read racing a write is undefined behaviour, so every access here is atomic:
/// a value is copied in and out piece by piece with atomic loads (acquire) and stores
/// (release), each piece the widest (8, 4, 2 or 1 bytes) that its offset's alignment and the
/// bytes left allow. The pieces of a value depend only on its offset and size, so every
/// process (whatever address it maps the segment at: mappings are page aligned) and
/// `as_atomic` access the same bytes with the same widths: accesses of different sizes never
/// overlap.
///
/// So: no data race, ever; a value that is one piece (a primitive number up to 8 bytes, at an
/// offset aligned to its size, as every element of a [`RawArray`] of it is) is read and
/// written whole; a larger value may be read *torn*, part old and part new. A torn value is
/// still a valid `T` ([`Pod`] accepts every bit pattern), but maybe one nobody wrote: what
/// Python's raw objects give too (ctypes copies without a lock). For read-modify-write (a
/// counter), use `as_atomic` or a locked [`Value`](crate::Value). Borrowing the value
/// (`&T`) is not offered in safe code, since another process may write it meanwhile; the
/// `unsafe` way is [`as_ptr`](RawValue::as_ptr), with its contract.
///
/// # Examples
/// A counter without lost increments, through the atomic view:
/// ```
/// use std::sync::atomic::Ordering;
/// use multiproc::shared::RawValue;
///
/// let hits = RawValue::new(0u64)?;
/// let children: Vec<_> = (0..4)
///     .map(|_| {
///         multiproc::spawn_with_args(
///             |hits: RawValue<u64>| {
///                 for _ in 0..1000 {
///                     hits.as_atomic().fetch_add(1, Ordering::Relaxed);
///                 }
///             },
///             hits.clone(),
///         )
///     })
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// assert_eq!(hits.get(), 4000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize)]
#[serde(bound = "")]
pub struct RawValue<T: Pod> {
    data: Bytes,
    #[serde(skip)]
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            data: self.data.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawValue")
            .field("value", &self.get())
            .finish()
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let data = Bytes::deserialize(d)?;
        if data.seg.len() < size_of::<T>() {
            return Err(serde::de::Error::custom(
                "shared value segment too small for its type",
            ));
        }
        Ok(RawValue {
            data,
            _t: PhantomData,
        })
    }
}

impl<T: Pod> RawValue<T> {
    /// A new shared value holding `value`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new(value: T) -> Result<RawValue<T>> {
        let v = RawValue {
            data: Bytes::zeroed(size_of::<T>())?,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// Reads the value (Python's `.value`): whole for a primitive of at most 8 bytes, possibly
    /// torn for a larger `T` written at the same time (see the type's docs).
    #[doc(alias = "value")]
    #[doc(alias = "load")]
    pub fn get(&self) -> T {
        load(&self.data, 0)
    }

    /// Writes the value (Python's `.value = ...`); release ordering, so a reader whose
    /// [`get`](RawValue::get) sees it (all of it, for a value of one piece) also sees what this
    /// thread wrote before.
    #[doc(alias = "store")]
    pub fn set(&self, value: T) {
        store(&self.data, 0, value);
    }

    /// The value's address in this process's mapping, for `unsafe` code with its own
    /// synchronization (an [`Event`](crate::Event), a [`Lock`](crate::Lock)).
    ///
    /// Reading or writing through it is sound only while no other thread or process writes
    /// the value (or, for a write, reads it) by any means at the same time: otherwise it is a
    /// data race, undefined behaviour. Safe code has [`get`](RawValue::get),
    /// [`set`](RawValue::set) and [`as_atomic`](RawValue::as_atomic) instead. The pointer is
    /// valid while this handle (or a clone) lives; it is page aligned.
    pub fn as_ptr(&self) -> *mut T {
        self.data.seg.as_ptr().cast::<T>()
    }
}

impl<T: AtomicPod> RawValue<T> {
    /// The value as its std atomic type (`AtomicU64` for a `RawValue<u64>`...), for atomic
    /// read-modify-write: `fetch_add`, `compare_exchange` and the rest, in any process.
    pub fn as_atomic(&self) -> &T::Atomic {
        // SAFETY: the mapping is page aligned (enough for any atomic), at least
        // `size_of::<T>() == size_of::<T::Atomic>()` bytes long, and lives as long as `self`;
        // an atomic integer is valid for every bit pattern, and every other access to these
        // bytes is atomic with the same width (`get`/`set` copy a whole aligned primitive in
        // one piece).
        unsafe { &*self.data.seg.as_ptr().cast::<T::Atomic>() }
    }
}

/// `len` values of `T` in shared memory with no lock: Python's `sharedctypes.RawArray`.
///
/// Each element is read and written as a [`RawValue`] is: atomically piece by piece, whole for
/// primitives of at most 8 bytes, possibly torn for larger elements written concurrently (see
/// [`RawValue`] for why this is sound). There is no way to borrow the elements as a `&[T]` in safe code,
/// since another process may write them meanwhile; [`to_vec`](RawArray::to_vec) copies them
/// (element by element: the copy is not a snapshot of one instant), and integer arrays have
/// [`as_atomics`](RawArray::as_atomics).
///
/// # Examples
/// ```
/// use multiproc::shared::RawArray;
///
/// let squares = RawArray::<u32>::new(8)?;
/// let children: Vec<_> = (0..8)
///     .map(|i| {
///         multiproc::spawn_with_args(
///             |(a, i): (RawArray<u32>, usize)| a.set(i, (i * i) as u32).unwrap(),
///             (squares.clone(), i),
///         )
///     })
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// assert_eq!(squares.to_vec(), [0, 1, 4, 9, 16, 25, 36, 49]);
/// assert_eq!(squares.get(8), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize)]
#[serde(bound = "")]
pub struct RawArray<T: Pod> {
    data: Bytes,
    len: usize,
    #[serde(skip)]
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            data: self.data.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> std::fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawArray").field("len", &self.len).finish()
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (data, len) = <(Bytes, usize)>::deserialize(d)?;
        super::check_received_len::<T, D::Error>(len, data.seg.len())?;
        Ok(RawArray {
            data,
            len,
            _t: PhantomData,
        })
    }
}

impl<T: Pod> RawArray<T> {
    /// An array of `len` zeroed elements (Python's `RawArray(type, size)`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if `len` elements do not fit
    /// in memory; [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new(len: usize) -> Result<RawArray<T>> {
        let bytes = super::byte_len::<T>(len, "an array")?;
        Ok(RawArray {
            data: Bytes::zeroed(bytes)?,
            len,
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `values` (Python's `RawArray(type, initializer)`).
    ///
    /// # Errors
    /// As [`RawArray::new`].
    pub fn from_slice(values: &[T]) -> Result<RawArray<T>> {
        let a = Self::new(values.len())?;
        for (i, &v) in values.iter().enumerate() {
            store(&a.data, i * size_of::<T>(), v);
        }
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i`, or `None` past the end (Python's `a[i]`).
    #[doc(alias = "load")]
    pub fn get(&self, i: usize) -> Option<T> {
        (i < self.len).then(|| load(&self.data, i * size_of::<T>()))
    }

    /// Sets element `i`; `None` past the end (Python's `a[i] = v`).
    #[doc(alias = "store")]
    pub fn set(&self, i: usize, value: T) -> Option<()> {
        (i < self.len).then(|| store(&self.data, i * size_of::<T>(), value))
    }

    /// A copy of all elements (Python's `a[:]`), each read as [`get`](RawArray::get) reads.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len)
            .map(|i| load(&self.data, i * size_of::<T>()))
            .collect()
    }

    /// The first element's address in this process's mapping, for `unsafe` code with its own
    /// synchronization; `len()` elements follow. The contract of [`RawValue::as_ptr`] applies
    /// to every element: no access through it may race a write by anyone.
    pub fn as_ptr(&self) -> *mut T {
        self.data.seg.as_ptr().cast::<T>()
    }
}

impl<T: AtomicPod> RawArray<T> {
    /// The elements as their std atomic type (`&[AtomicU32]` for a `RawArray<u32>`...), for
    /// atomic read-modify-write in any process.
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let counts = multiproc::shared::RawArray::<u32>::new(4)?;
    /// counts.as_atomics()[2].fetch_add(5, Ordering::Relaxed);
    /// assert_eq!(counts.to_vec(), [0, 0, 5, 0]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn as_atomics(&self) -> &[T::Atomic] {
        // SAFETY: the mapping is page aligned, holds at least `len` elements of
        // `size_of::<T>() == size_of::<T::Atomic>()` bytes (checked at creation and on
        // receipt) and lives as long as `self`; element `i` sits at a multiple of its size, so
        // it is aligned, and `get`/`set` access it in one piece of the same width; an atomic
        // integer is valid for every bit pattern.
        unsafe { std::slice::from_raw_parts(self.data.seg.as_ptr().cast::<T::Atomic>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[derive(Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    struct Odd {
        a: u8,
        b: [u8; 2],
    }
    // SAFETY: three bytes, no padding; every bit pattern is valid.
    unsafe impl Pod for Odd {}

    /// Values of every width and alignment survive the piecewise copy, at every offset an
    /// array puts them.
    #[test]
    fn values_of_every_shape_round_trip() {
        let v = RawValue::new(u128::MAX - 12345).unwrap();
        assert_eq!(v.get(), u128::MAX - 12345);
        let f = RawValue::new(-1.5f64).unwrap();
        f.set(2.25);
        assert_eq!(f.get(), 2.25);

        let odd: Vec<Odd> = (0..9u8)
            .map(|i| Odd {
                a: i,
                b: [i.wrapping_mul(7), 255 - i],
            })
            .collect();
        let a = RawArray::from_slice(&odd).unwrap();
        assert_eq!(a.to_vec(), odd);
        a.set(4, Odd { a: 1, b: [2, 3] }).unwrap();
        assert_eq!(a.get(4), Some(Odd { a: 1, b: [2, 3] }));
        assert_eq!(a.get(3), Some(odd[3]));
        assert_eq!(a.get(9), None);
        assert_eq!(a.set(9, odd[0]), None);

        let words = RawArray::from_slice(&[[1u16, 2, 3], [4, 5, 6]]).unwrap();
        assert_eq!(words.to_vec(), [[1, 2, 3], [4, 5, 6]]);
        let empty = RawArray::<u64>::new(0).unwrap();
        assert!(empty.is_empty() && empty.to_vec().is_empty() && empty.as_atomics().is_empty());
    }

    /// The atomic views and the copies see the same bytes.
    #[test]
    fn atomic_views_agree_with_get_and_set() {
        use std::sync::atomic::Ordering::SeqCst;
        let v = RawValue::new(7i32).unwrap();
        assert_eq!(v.as_atomic().fetch_add(3, SeqCst), 7);
        assert_eq!(v.get(), 10);
        let a = RawArray::from_slice(&[1u64, 2, 3]).unwrap();
        a.as_atomics()[1].fetch_add(40, SeqCst);
        a.set(2, 9).unwrap();
        assert_eq!(a.as_atomics()[2].load(SeqCst), 9);
        assert_eq!(a.to_vec(), [1, 42, 9]);
    }

    #[test]
    fn too_many_elements_is_an_error() {
        let e = RawArray::<u64>::new(usize::MAX / 4).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    /// Writers of a two-word value racing a reader: no undefined behaviour (each piece is
    /// atomic), and every value read is made of halves that some writer wrote.
    #[test]
    fn concurrent_use_is_race_free() {
        let v = RawValue::new([0u64; 2]).unwrap();
        std::thread::scope(|s| {
            for t in 1..=2u64 {
                let v = &v;
                s.spawn(move || {
                    for _ in 0..10_000 {
                        v.set([t, t]);
                    }
                });
            }
            for _ in 0..10_000 {
                let [x, y] = v.get();
                assert!(x <= 2 && y <= 2, "{x} {y}");
            }
        });
    }
}
