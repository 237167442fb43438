//! A shared-memory segment behind a memfd, and [`Shm<T>`]: one `T` living in such a segment.
//!
//! Every cross-process object in this crate lives in a segment. Under `fork` the child inherits
//! the mapping; under start methods that begin a fresh program the segment's descriptor travels
//! through the start arguments (`wire::serialize_fd`) and the child maps it at whatever address
//! it gets, which is why shared layouts hold no pointers.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sync::owner;
use crate::sys;
use crate::wire;

/// A mapped shared-memory file.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: OwnedFd,
    map: sys::Mapping,
    /// Device and inode of the file: the same for every mapping of it, in any process.
    id: (u64, u64),
}

impl Segment {
    /// A new anonymous segment of `len` zero bytes.
    pub(crate) fn anonymous(len: usize) -> io::Result<Segment> {
        let fd = sys::memfd(len)?;
        Segment::from_fd(fd)
    }

    /// Maps the whole file behind `fd`.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Segment> {
        let (len, id) = sys::fd_len_and_id(fd.as_fd())?;
        let map = sys::Mapping::new(fd.as_fd(), len)?;
        Ok(Segment { fd, map, id })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Types that may live in shared memory and be viewed through `&T` by several processes.
///
/// # Safety
/// Every bit pattern, including all zeros, must be a valid `T`; `T` must be `Sync`, have no
/// pointers or drop glue, and be mutated only through interior atomics.
pub(crate) unsafe trait ShmSafe: Sync + Sized {}

/// One `T` in its own shared segment; clones share it.
pub(crate) struct Shm<T: ShmSafe> {
    /// The `T` at the start of `seg` (cached: one load on every access instead of three).
    ptr: NonNull<T>,
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

// SAFETY: `ptr` points into `seg`, which is shared and kept alive by the `Arc`; `T: ShmSafe`
// is `Sync` and only ever accessed through `&T`, so handles may move and be shared between
// threads like an `Arc<T>`.
unsafe impl<T: ShmSafe> Send for Shm<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe> Sync for Shm<T> {}

impl<T: ShmSafe> Clone for Shm<T> {
    fn clone(&self) -> Self {
        Shm {
            ptr: self.ptr,
            seg: self.seg.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: ShmSafe> std::fmt::Debug for Shm<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shm")
            .field("at", &self.seg.as_ptr())
            .finish()
    }
}

impl<T: ShmSafe> Shm<T> {
    /// A zeroed `T` in a new anonymous segment.
    pub(crate) fn zeroed() -> io::Result<Self> {
        Self::from_segment(Segment::anonymous(size_of::<T>())?)
    }

    fn from_segment(seg: Segment) -> io::Result<Self> {
        if seg.len() < size_of::<T>() || seg.as_ptr().align_offset(align_of::<T>()) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared segment too small for the object it should hold",
            ));
        }
        let ptr = NonNull::new(seg.as_ptr().cast::<T>())
            .ok_or_else(|| io::Error::other("null mapping"))?;
        // Learn this process's identity (a read of /proc) now, while it has a descriptor to
        // spare, rather than at its first lock: a lock taken without the start time still
        // works, but guards less well against pid reuse.
        let _ = owner::process_ident();
        Ok(Shm {
            ptr,
            seg: Arc::new(seg),
            _t: PhantomData,
        })
    }

    /// Whether two handles refer to the same shared memory (also when they were received
    /// separately and are two mappings of it).
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.seg.id == other.seg.id
    }
}

impl<T: ShmSafe> std::ops::Deref for Shm<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: `ptr` is the start of a mapping of at least `size_of::<T>()` bytes, suitably
        // aligned (checked in `from_segment`), that lives as long as `self.seg`; `T: ShmSafe`
        // makes any content a valid `T` that is only mutated through atomics.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmSafe> Serialize for Shm<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.seg.fd().as_fd(), s)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for Shm<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        Segment::from_fd(fd)
            .and_then(Shm::from_segment)
            .map_err(serde::de::Error::custom)
    }
}

/// A shared segment holding raw bytes (for `Value`, `Array`), shared by clones.
#[derive(Debug, Clone)]
pub(crate) struct Bytes {
    pub(crate) seg: Arc<Segment>,
}

impl Bytes {
    pub(crate) fn zeroed(len: usize) -> io::Result<Self> {
        // A zero-length object still gets one page so it can be mapped.
        Ok(Bytes {
            seg: Arc::new(Segment::anonymous(len.max(1))?),
        })
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.seg.fd().as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        let seg = Segment::from_fd(fd).map_err(serde::de::Error::custom)?;
        Ok(Bytes { seg: Arc::new(seg) })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

    use crate::wire;
    use crate::{
        Array, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, Value,
        shared::SharedMemory,
    };

    /// A copy of a collected descriptor, whichever form `collect_fds` hands them out in.
    trait Dup {
        fn dup(&self) -> OwnedFd;
    }

    impl Dup for RawFd {
        fn dup(&self) -> OwnedFd {
            // SAFETY: the descriptor belongs to a handle that is alive during the test.
            unsafe { BorrowedFd::borrow_raw(*self) }
                .try_clone_to_owned()
                .unwrap()
        }
    }

    impl Dup for OwnedFd {
        fn dup(&self) -> OwnedFd {
            self.try_clone().unwrap()
        }
    }

    type All = (
        Lock,
        RLock,
        Semaphore,
        BoundedSemaphore,
        Event,
        Condition,
        Barrier,
        Value<u64>,
        Array<u16>,
        SharedMemory,
    );

    /// What the spawn and forkserver start methods do with start arguments: serialize with
    /// the descriptors set aside, receive them (here: duplicated), deserialize. The received
    /// objects are new mappings of the same memory.
    #[test]
    fn every_primitive_travels_by_descriptor() {
        let shm = SharedMemory::create(64).unwrap();
        shm.unlink().unwrap();
        let all: All = (
            Lock::new().unwrap(),
            RLock::new().unwrap(),
            Semaphore::new(0).unwrap(),
            BoundedSemaphore::new(1).unwrap(),
            Event::new().unwrap(),
            Condition::new().unwrap(),
            Barrier::new(1).unwrap(),
            Value::new(5).unwrap(),
            Array::from_slice(&[1, 2, 3]).unwrap(),
            shm,
        );
        let (bytes, fds) = wire::collect_fds(|| postcard::to_allocvec(&all).unwrap());
        assert_eq!(fds.len(), 13);
        let received: Vec<OwnedFd> = fds.iter().map(Dup::dup).collect();
        let got: All = wire::with_received_fds(received, || postcard::from_bytes(&bytes).unwrap());

        let _g = got.0.acquire().unwrap();
        assert!(all.0.is_locked());
        let _r = got.1.acquire().unwrap();
        assert!(
            all.1.try_acquire().is_ok(),
            "same thread, same process: recursive"
        );
        got.2.release();
        assert_eq!(all.2.value(), 1);
        got.3.acquire();
        assert_eq!(all.3.value(), 0);
        got.4.set();
        assert!(all.4.is_set());
        drop(got.5.acquire().unwrap());
        assert_eq!(got.6.wait().unwrap(), 0);
        got.7.set(9);
        assert_eq!(all.7.get(), 9);
        assert_eq!(got.8.to_vec(), [1, 2, 3]);
        got.9.write(0, b"x").unwrap();
        let mut b = [0u8];
        all.9.read(0, &mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    /// A value and its lock received separately are two mappings each, but still the value
    /// and its lock.
    #[test]
    fn a_lock_received_apart_from_its_value_still_guards_it() {
        let lock = Lock::new().unwrap();
        let v = Value::with_lock(3u32, lock.clone()).unwrap();
        let pair = (lock, v);
        let (bytes, fds) = wire::collect_fds(|| postcard::to_allocvec(&pair).unwrap());
        let received: Vec<OwnedFd> = fds.iter().map(Dup::dup).collect();
        drop(pair);
        let (lock2, v2): (Lock, Value<u32>) =
            wire::with_received_fds(received, || postcard::from_bytes(&bytes).unwrap());
        let mut g = lock2.acquire().unwrap();
        assert_eq!(v2.get_with(&g), Some(3));
        v2.set_with(&mut g, 4).unwrap();
        assert_eq!(
            Lock::new()
                .unwrap()
                .acquire()
                .map(|g2| v2.get_with(&g2))
                .unwrap(),
            None
        );
        drop(g);
        assert_eq!(v2.get(), 4);
    }

    #[test]
    fn a_handle_outside_start_arguments_does_not_serialize() {
        let e = postcard::to_allocvec(&Lock::new().unwrap()).unwrap_err();
        eprintln!("{e}");
        assert!(matches!(e, postcard::Error::SerdeSerCustom), "{e:?}");
    }
}
