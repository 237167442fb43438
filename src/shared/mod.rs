//! Shared memory: [`Value`], [`Array`] and their lock-free counterparts [`RawValue`],
//! [`RawArray`] (Python's `sharedctypes`), and named [`SharedMemory`] (Python's
//! `multiprocessing.shared_memory`).
//!
//! `Value` and `Array` live in anonymous memory (a memfd): nothing to clean up, the kernel
//! frees it when the last process holding it exits, however it exits. Named segments are
//! tracked by a small resource-tracker process that unlinks a name when its creator dies.
//!
//! For large data handed from one process to another, [`SharedSlice`] (and [`SharedBuffer`]
//! for bytes) is filled in place by its creator and then sent, as a handle of a few dozen
//! bytes, through a [`Connection`](crate::Connection), a [`Queue`](crate::Queue), a
//! [`Pool`](crate::Pool) task's arguments or value, or a start argument; the receiver reads
//! it in place. The memory is written once and read-only from its first send (sealed
//! against new writers); it lives in its own memfd, freed when its last holder drops it or
//! dies; [`SharedSlice::slice`] and [`SharedSlice::chunks`] split it without a copy.

mod array;
mod buffer;
mod raw;
pub(crate) mod segment;
mod shared_memory;
mod value;

pub use array::{Array, ArrayGuard};
pub use buffer::{SharedBuffer, SharedSlice};
pub use raw::{AtomicPod, RawArray, RawValue};
pub use shared_memory::{SharedAtomic, SharedMemory};
pub use value::{Value, ValueGuard};

/// The guard inside an [`OwnerDied`](crate::sync::OwnerDied), for the accessors of `Value` and
/// `Array` that return plain values (Python's `.value`, indexing, `[:]`): they go on with the
/// data as the dead holder left it, and say so in a `tracing` warning, since their callers
/// cannot be told. [`Value::lock`] and [`Array::lock`] report it instead.
fn recovered<G>(died: crate::sync::OwnerDied<G>) -> G {
    tracing::warn!(
        "a process died holding the lock of a shared Value or Array; \
         its data is used as that process left it"
    );
    died.into_inner()
}

/// The bytes that `len` elements of `T` take, checked once for all the shared containers: an
/// overflowing product, or one past `isize::MAX` (no allocation or mapping can be larger), is
/// bad input, reported as `{what} of {len} elements does not fit in memory`.
fn byte_len<T: Pod>(len: usize, what: &str) -> crate::error::Result<usize> {
    len.checked_mul(size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            crate::error::Error::with_message(
                crate::error::ErrorKind::InvalidInput,
                format!("{what} of {len} elements does not fit in memory"),
            )
        })
}

/// Checks a received array's length against the segment it came with: a peer (or a corrupt
/// message) could claim more elements than the segment holds, and indexing would then read
/// past the mapping.
fn check_received_len<T: Pod, E: serde::de::Error>(
    len: usize,
    segment_len: usize,
) -> std::result::Result<(), E> {
    if len
        .checked_mul(size_of::<T>())
        .is_none_or(|bytes| bytes > segment_len)
    {
        return Err(E::custom("shared array segment too small for its length"));
    }
    Ok(())
}

/// Plain old data: types that may be stored in shared memory and read back by any process.
///
/// # Safety
/// Every bit pattern of `size_of::<Self>()` bytes, including all zeros, must be a valid
/// `Self`; `Self` must have no padding bytes (a [`RawValue`] copies a value's bytes, and
/// padding is uninitialised); and `Self` must hold no pointers, references or handles (they
/// would mean nothing in another process). Implement it for `#[repr(C)]` structs of `Pod`
/// fields without padding.
///
/// # Examples
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Point { x: f64, y: f64 }
/// // SAFETY: two f64s, no padding; every bit pattern is a valid Point.
/// unsafe impl multiproc::shared::Pod for Point {}
///
/// let p = multiproc::Value::new(Point { x: 1.0, y: 2.0 })?;
/// assert_eq!(p.get().y, 2.0);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number: every bit pattern is a valid value.
        unsafe impl Pod for $t {}
    )* };
}
pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

// SAFETY: an array of `Pod` has no padding and every bit pattern of its elements is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}
