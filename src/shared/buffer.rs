//! [`SharedSlice`] and [`SharedBuffer`]: a buffer in its own memfd, filled in place by its
//! creator and then handed to other processes, which read it in place, without a copy.
//!
//! The wire form is the descriptor (through the start method's side table for a start
//! argument, through the sending process's descriptor sharer, `wire::share`, for a message or
//! a pool task), the element size, and the slice's start and length in elements. The
//! descriptor is the memory: the kernel frees it when the last process holding a descriptor
//! or a mapping of it closes them, however it ends; the memfd has no name anywhere.

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Pod;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::wire::share::{PassFdToWorkers, TakeFd};

/// The memfd and this process's mapping of it, shared by the handles of one buffer here.
#[derive(Debug)]
struct Memory {
    fd: OwnedFd,
    map: sys::Mapping,
    /// The process that created the memory, the only one that may ever write it.
    creator: u32,
    /// Set once the memory was cloned, sliced or sent: from then on nobody writes it.
    frozen: AtomicBool,
}

impl Memory {
    /// Ends the writable phase: this process's mapping becomes read-only and the memfd is
    /// sealed against new writers (`F_SEAL_FUTURE_WRITE`), so a receiver cannot make a
    /// writable mapping either.
    fn freeze(&self) {
        if !self.frozen.swap(true, Ordering::AcqRel) && self.creator == std::process::id() {
            // Best effort: failing leaves the memory writable at the OS level, but this
            // crate writes it only through `get_mut`, which `frozen` now refuses.
            let _ = self.map.make_read_only();
            sys::seal_future_writes(self.fd.as_fd());
        }
    }
}

/// `len` values of `T` in shared memory of their own, which the creating process fills in
/// place ([`get_mut`](SharedSlice::get_mut)) and then hands to other processes through a
/// [`Connection`](crate::Connection), a [`Queue`](crate::Queue), a [`Pool`](crate::Pool)
/// task's arguments or value, or a start argument; they read it in place (it derefs to
/// `[T]`), without a copy: only a handle of a few dozen bytes travels, whatever the size.
///
/// - **Written once, then read-only.** Only the creating process writes, and only while its
///   handle is the only one: the first clone, [`slice`](SharedSlice::slice) or send freezes
///   the memory for good (the mapping becomes read-only and the memfd is sealed against new
///   writers). So a receiver's `&[T]` never sees a change, and a sender cannot scribble on a
///   buffer that a worker is reading.
/// - **Freed by the kernel.** The memory is an anonymous memfd with a sealed size: it has no
///   name in `/dev/shm`, a mapping of it can never fault past its end, and it is freed when
///   the last process holding it drops its handles or dies, however it dies.
/// - **Slices share it.** [`slice`](SharedSlice::slice) and [`chunks`](SharedSlice::chunks)
///   give handles to parts of the same memory: a pool `map` over the chunks of one big buffer
///   copies none of it.
///
/// Inside a message or a pool task, the descriptor travels as a
/// [`Connection`](crate::Connection)'s does (Python's `resource_sharer`): the sending process
/// keeps a copy until the receiver asks for it while decoding. So **the sending process must still be running when the message is
/// received** (the pool's caller while its task starts; a worker while its value is decoded,
/// which `map` and `apply` do as soon as they return); otherwise the receive fails with a
/// decode error that says so. A message never received keeps its copy in the sender until the
/// sender exits, and each message can be received once (a pool task holding a shared buffer
/// that is retried after its worker died fails with that error). As a start argument, the
/// descriptor travels with the start method's.
///
/// [`SharedBuffer`] is `SharedSlice<u8>`.
///
/// # Examples
/// ```
/// use multiproc::shared::SharedSlice;
///
/// let mut data = SharedSlice::<f64>::new(1 << 20)?;
/// for (i, x) in data.get_mut().unwrap().iter_mut().enumerate() {
///     *x = i as f64;
/// }
/// // Four workers each sum one quarter; none of the 8 MiB is copied.
/// let pool = multiproc::Pool::new(2)?;
/// let sums = pool.map(|part: SharedSlice<f64>| part.iter().sum::<f64>(), data.chunks(1 << 18)?)?;
/// assert_eq!(sums.iter().sum::<f64>(), data.iter().sum::<f64>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedSlice<T: Pod> {
    memory: Arc<Memory>,
    /// The first element of this handle's view, and how many it spans.
    start: usize,
    len: usize,
    _t: PhantomData<T>,
}

/// Bytes in shared memory: a [`SharedSlice`] of `u8`, filled in place and handed over without
/// a copy (Python's `SharedMemory` buffer passed by handle, but freed by the kernel).
///
/// # Examples
/// ```
/// use multiproc::shared::SharedBuffer;
///
/// let mut buf = SharedBuffer::new(16 << 20)?;
/// buf.get_mut().unwrap().fill(7);
/// let (a, b) = multiproc::pipe(true)?;
/// a.send(&buf)?; // a handle of a few dozen bytes, not 16 MiB
/// let got: SharedBuffer = b.recv()?;
/// assert_eq!(got.len(), 16 << 20);
/// assert!(got.iter().all(|&x| x == 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type SharedBuffer = SharedSlice<u8>;

impl<T: Pod> SharedSlice<T> {
    /// `len` zeroed elements in new shared memory, writable through
    /// [`get_mut`](SharedSlice::get_mut) until first cloned or sent.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if `len` elements do not fit in memory; [`ErrorKind::Io`]
    /// if the memory cannot be created or mapped (the OS's error is the source).
    pub fn new(len: usize) -> Result<SharedSlice<T>> {
        let bytes = super::byte_len::<T>(len, "a shared slice")?;
        // A memory of no bytes cannot be mapped: an empty slice still gets one byte.
        let fd = sys::memfd_fixed_size(c"multiproc-buffer", bytes.max(1))?;
        let map = sys::Mapping::new(fd.as_fd(), bytes.max(1))?;
        Ok(SharedSlice {
            memory: Arc::new(Memory {
                fd,
                map,
                creator: std::process::id(),
                frozen: AtomicBool::new(false),
            }),
            start: 0,
            len,
            _t: PhantomData,
        })
    }

    /// New shared memory holding a copy of `values` (the one copy; use
    /// [`new`](SharedSlice::new) and [`get_mut`](SharedSlice::get_mut) to fill it in place).
    ///
    /// # Errors
    /// As [`new`](SharedSlice::new).
    pub fn from_slice(values: &[T]) -> Result<SharedSlice<T>> {
        let mut s = Self::new(values.len())?;
        s.get_mut()
            .expect("a new slice is writable")
            .copy_from_slice(values);
        Ok(s)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, read in place (also through `Deref`).
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping spans at least `(start + len) * size_of::<T>()` bytes (checked
        // at creation and on receipt) and lives as long as `self.memory`; it is page aligned
        // and `start * size_of::<T>()` is a multiple of `T`'s alignment, so the elements are
        // aligned; `T: Pod` makes any bytes valid. Nothing writes them while this borrow
        // lives: the only writer is `get_mut`, which needs `&mut self`, this handle to be the
        // only one and the memory never to have been cloned or sent; received memory is
        // mapped read-only and sealed against new writers.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.map.as_ptr().cast::<T>().add(self.start),
                self.len,
            )
        }
    }

    /// The elements, writable in place: `Some` only in the process that created the memory,
    /// while this is its only handle and it was never cloned, sliced or sent (then nobody
    /// else can see the bytes change). Afterwards the memory is read-only for good: `None`.
    ///
    /// # Examples
    /// ```
    /// let mut buf = multiproc::shared::SharedSlice::<u32>::new(4)?;
    /// buf.get_mut().unwrap().copy_from_slice(&[1, 2, 3, 4]);
    /// let view = buf.clone();
    /// assert!(buf.get_mut().is_none(), "frozen once shared");
    /// assert_eq!(&view[..], &[1, 2, 3, 4]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut [T]> {
        if !self.is_writable() {
            return None;
        }
        let memory = Arc::get_mut(&mut self.memory)?;
        // SAFETY: as in `as_slice` for bounds, alignment and validity; `memory` is borrowed
        // mutably through the only handle (`Arc::get_mut`), it was never cloned or sent
        // (`frozen` is false) and this is the creating process, so no other view of these
        // bytes exists in any process while the returned borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                memory.map.as_ptr().cast::<T>().add(self.start),
                self.len,
            )
        })
    }

    /// Whether [`get_mut`](SharedSlice::get_mut) would give the elements.
    pub fn is_writable(&self) -> bool {
        !self.memory.frozen.load(Ordering::Acquire)
            && self.memory.creator == std::process::id()
            && Arc::strong_count(&self.memory) == 1
    }

    /// A handle to the elements in `range` of this one, sharing its memory (no copy); `None`
    /// if the range is out of bounds or decreasing, as [`slice::get`] is. Freezes the memory.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Option<SharedSlice<T>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1)?,
            Bound::Excluded(&i) => i,
            Bound::Unbounded => self.len,
        };
        if from > to || to > self.len {
            return None;
        }
        let mut part = self.clone();
        part.start += from;
        part.len = to - from;
        Some(part)
    }

    /// Handles to consecutive parts of `chunk_len` elements (the last may be shorter), all
    /// sharing this memory: hand them to a pool's `map` to spread one big buffer over the
    /// workers without copying it. Freezes the memory.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if `chunk_len` is 0.
    pub fn chunks(&self, chunk_len: usize) -> Result<Vec<SharedSlice<T>>> {
        if chunk_len == 0 {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "chunks of a shared slice need a length above 0",
            ));
        }
        Ok((0..self.len)
            .step_by(chunk_len)
            .filter_map(|from| self.slice(from..(from + chunk_len).min(self.len)))
            .collect())
    }
}

impl<T: Pod> Clone for SharedSlice<T> {
    /// Another handle to the same memory (no copy); freezes it.
    fn clone(&self) -> Self {
        self.memory.freeze();
        SharedSlice {
            memory: Arc::clone(&self.memory),
            start: self.start,
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> std::ops::Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> std::fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlice")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("writable", &self.is_writable())
            .finish_non_exhaustive()
    }
}

/// Sends a handle (the descriptor, the element size, the start and the length); freezes the
/// memory. See the type's docs for how the descriptor travels.
impl<T: Pod> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.memory.freeze();
        (
            PassFdToWorkers(self.memory.fd.as_fd()),
            size_of::<T>() as u32,
            self.start as u64,
            self.len as u64,
        )
            .serialize(s)
    }
}

/// Maps the received memory read-only, after checking that it is a shared buffer's (a memfd
/// whose size is sealed, so reading it can never fault) and that the slice lies inside it.
impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (TakeFd(fd), elem, start, len) = <(TakeFd, u32, u64, u64)>::deserialize(d)?;
        receive(fd, elem, start, len).map_err(|why| {
            serde::de::Error::custom(crate::wire::share::failed(format!(
                "not a valid shared slice: {why}"
            )))
        })
    }
}

fn receive<T: Pod>(
    fd: OwnedFd,
    elem: u32,
    start: u64,
    len: u64,
) -> std::result::Result<SharedSlice<T>, String> {
    if elem as usize != size_of::<T>() {
        return Err(format!(
            "its elements are {elem} bytes, not {} (a different element type?)",
            size_of::<T>()
        ));
    }
    if !sys::has_fixed_size(fd.as_fd()) {
        return Err(
            "the descriptor is not a shared buffer's memory (a memfd of sealed size)".into(),
        );
    }
    let (file_len, _) = sys::fd_len_and_id(fd.as_fd()).map_err(|e| e.to_string())?;
    let (start, len) = (usize::try_from(start), usize::try_from(len));
    let (Ok(start), Ok(len)) = (start, len) else {
        return Err("its bounds do not fit in this process's address space".into());
    };
    let end = start
        .checked_add(len)
        .and_then(|end| end.checked_mul(size_of::<T>()));
    if end.is_none_or(|end| end > file_len) {
        return Err(format!(
            "elements {start}..+{len} lie outside its {file_len}-byte memory"
        ));
    }
    let map = sys::Mapping::new_read_only(fd.as_fd(), file_len).map_err(|e| e.to_string())?;
    Ok(SharedSlice {
        memory: Arc::new(Memory {
            fd,
            map,
            creator: 0,
            frozen: AtomicBool::new(true),
        }),
        start,
        len,
        _t: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    /// What a start method does with a start argument: the descriptor goes into the side
    /// table, comes back as a copy.
    fn through_table<T: Serialize, U: serde::de::DeserializeOwned>(
        value: &T,
        fds: impl FnOnce(Vec<OwnedFd>) -> Vec<OwnedFd>,
    ) -> postcard::Result<U> {
        let (bytes, sent) = wire::collect_fds(|| postcard::to_allocvec(value).unwrap());
        wire::with_received_fds(fds(sent), || postcard::from_bytes(&bytes))
    }

    #[test]
    fn written_in_place_then_frozen_by_sharing() {
        let mut a = SharedSlice::<u64>::new(1000).unwrap();
        assert!(a.is_writable());
        a.get_mut().unwrap()[999] = 7;
        let b: SharedSlice<u64> = through_table(&a, |f| f).unwrap();
        assert!(!a.is_writable(), "sent: frozen");
        assert!(a.get_mut().is_none());
        assert!(!b.is_writable(), "received: read-only");
        assert_eq!(b[999], 7);
        assert_eq!(b.len(), 1000);
    }

    #[test]
    fn slices_share_the_memory_and_check_bounds() {
        let a = SharedSlice::from_slice(&[1u32, 2, 3, 4, 5]).unwrap();
        let s = a.slice(1..4).unwrap();
        assert_eq!(&s[..], &[2, 3, 4]);
        assert_eq!(&s.slice(1..).unwrap()[..], &[3, 4]);
        assert!(a.slice(2..6).is_none());
        let (from, to) = (2, 1);
        assert!(s.slice(from..to).is_none() && s.slice(..=3).is_none());
        let got: SharedSlice<u32> = through_table(&s, |f| f).unwrap();
        assert_eq!(&got[..], &[2, 3, 4]);
        let parts = a.chunks(2).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
            [vec![1, 2], vec![3, 4], vec![5]]
        );
        assert!(a.chunks(0).is_err());
        assert!(
            SharedSlice::<u8>::new(0)
                .unwrap()
                .chunks(3)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    #[cfg_attr(
        multiproc_portable,
        ignore = "the portable layer has no seals (sys/posix/shm.rs says what that costs)"
    )]
    fn a_frozen_memfd_refuses_new_writers() {
        let mut a = SharedBuffer::new(4096).unwrap();
        a.get_mut().unwrap()[0] = 1;
        let _b = a.clone();
        // A writable mapping of the sealed memfd is refused (Linux 5.1 and later).
        let e = sys::Mapping::new(a.memory.fd.as_fd(), 4096).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::PERM.raw_os_error())
        );
    }

    /// The wire form of a descriptor through the side table, forged by hand.
    #[derive(Serialize)]
    enum FdRef<'a> {
        Index(wire::SerFd<'a>),
    }

    #[test]
    fn wrong_type_wrong_bounds_and_foreign_descriptors_are_errors() {
        let a = SharedSlice::<u32>::new(4).unwrap();
        let e = through_table::<_, SharedSlice<u64>>(&a, |f| f).unwrap_err();
        assert!(
            wire::share::take_failure()
                .unwrap()
                .contains("4 bytes, not 8"),
            "{e}"
        );

        let forged = (
            FdRef::Index(wire::SerFd(a.memory.fd.as_fd())),
            4u32,
            3u64,
            2u64,
        );
        let _ = through_table::<_, SharedSlice<u32>>(&forged, |f| f).unwrap_err();
        assert!(wire::share::take_failure().unwrap().contains("outside its"));

        let (r, _w) = sys::pipe().unwrap();
        let forged = (FdRef::Index(wire::SerFd(r.as_fd())), 1u32, 0u64, 0u64);
        let _ = through_table::<_, SharedBuffer>(&forged, |f| f).unwrap_err();
        assert!(
            wire::share::take_failure()
                .unwrap()
                .contains("not a shared buffer's memory")
        );
    }

    #[test]
    fn too_long_is_an_error() {
        assert_eq!(
            SharedSlice::<u64>::new(usize::MAX / 4).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
