//! [`SharedMemory`]: a named segment, Python's `multiprocessing.shared_memory.SharedMemory`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
};

use std::os::fd::AsFd;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::segment::Segment;
use crate::error::{Error, ErrorKind, Result};
use crate::resource_tracker;
use crate::sys;

/// A named block of shared memory: create it in one process, attach to it by name from any
/// other, unlink the name when done. Clones share the mapping.
///
/// The name lives in `/dev/shm` until [`unlink`](SharedMemory::unlink) or until its creator
/// process exits, whichever comes first: a resource-tracker process removes the names of a
/// creator that exits or is killed without unlinking (Python only does so when the whole
/// program ends). Mappings stay valid after the name is gone.
///
/// The tracker follows files, not names: it unlinks a dead creator's name only if the name
/// still refers to the segment that creator made (a segment unlinked and re-created under
/// the same name by someone else keeps its name), and [`unlink`](SharedMemory::unlink)
/// withdraws the registration of its own segment only. One tracker watches at most 4096 names
/// at a time (for a process and its `fork` children; processes started by spawn or the
/// forkserver start their own): past that, [`create_named`](SharedMemory::create_named)
/// fails rather than leave a name unprotected. If the tracker is killed, the next
/// `SharedMemory` call in each process starts a new one (with a `tracing` warning) and
/// re-registers the names that process created and still owns; until that call, they are
/// unprotected. The tracker ignores SIGINT and SIGTERM and leaves the process group before
/// the first `create` returns, so a Ctrl-C does not kill it.
///
/// The bytes can be copied in and out with [`read`](SharedMemory::read) and
/// [`write`](SharedMemory::write), or viewed as atomics with
/// [`atomics`](SharedMemory::atomics). Synchronize with a [`Lock`](crate::Lock) or an
/// [`Event`](crate::Event).
///
/// # Examples
/// ```
/// use multiproc::shared::SharedMemory;
///
/// let shm = SharedMemory::create(4096)?;
/// shm.write(0, b"hello")?;
/// let child = multiproc::spawn_with_args(
///     |name: String| {
///         let other = SharedMemory::open(&name).unwrap(); // attach by name
///         let mut buf = [0u8; 5];
///         other.read(0, &mut buf).unwrap();
///         buf
///     },
///     shm.name().to_string(),
/// )?;
/// assert_eq!(&child.join()?, b"hello");
/// shm.unlink()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SharedMemory {
    name: String,
    seg: Arc<Segment>,
}

impl SharedMemory {
    /// Creates a segment of `size` zero bytes under a fresh random name.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if `size` is 0; [`ErrorKind::Io`] if the OS refuses.
    pub fn create(size: usize) -> Result<SharedMemory> {
        let mut bytes = [0u8; 8];
        sys::random_bytes(&mut bytes)?;
        let name = format!("mp-{:016x}", u64::from_le_bytes(bytes));
        Self::create_named(&name, size)
    }

    /// Creates a segment of `size` zero bytes called `name` (1 to 200 characters of
    /// `A-Za-z0-9_.-`, no leading dot; Python's leading `/` is accepted and dropped).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad name or a `size` of 0; [`ErrorKind::Io`] if the
    /// name exists (`AlreadyExists` underneath) or the OS refuses, or if the resource tracker
    /// already watches its limit of 4096 names (see the type's docs).
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory> {
        let name = Self::clean_name(name)?;
        if size == 0 {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "a shared memory segment needs a size above 0",
            ));
        }
        // Register first: a crash between creating and registering must not leak the name.
        resource_tracker::register(name).map_err(|e| match e.kind() {
            // The tracker's limit: say so plainly (the message is the whole story).
            std::io::ErrorKind::OutOfMemory => Error::with_message(ErrorKind::Io, e.to_string()),
            _ => e.into(),
        })?;
        let fd = match sys::shm_create(name, size) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = resource_tracker::forget(name);
                return Err(e.into());
            }
        };
        let seg = match Segment::from_fd(fd) {
            Ok(seg) => seg,
            Err(e) => {
                let _ = sys::shm_unlink(name);
                let _ = resource_tracker::forget(name);
                return Err(e.into());
            }
        };
        // Tell the tracker which file the name is now, so that it never unlinks a later
        // segment of the same name for us. If this fails, the registration stays unconfirmed,
        // and the tracker still unlinks the name at our death if nobody else can own it.
        if let Ok((_, id)) = sys::fd_len_and_id(seg.fd().as_fd()) {
            let _ = resource_tracker::confirm(name, id);
        }
        Ok(SharedMemory {
            name: name.to_string(),
            seg: Arc::new(seg),
        })
    }

    /// Attaches to the existing segment `name`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad name; [`ErrorKind::Io`] if there is no such
    /// segment (`NotFound` underneath).
    pub fn open(name: &str) -> Result<SharedMemory> {
        let name = Self::clean_name(name)?;
        let seg = Segment::from_fd(sys::shm_open(name)?)?;
        Ok(SharedMemory {
            name: name.to_string(),
            seg: Arc::new(seg),
        })
    }

    fn clean_name(name: &str) -> Result<&str> {
        let name = name.strip_prefix('/').unwrap_or(name);
        sys::check_name(name)
            .map_err(|e| Error::with_message(ErrorKind::InvalidInput, e.to_string()))?;
        Ok(name)
    }

    /// The segment's name (without a leading `/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.seg.len()
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::with_message(
                ErrorKind::InvalidInput,
                format!(
                    "bytes {offset}..{offset}+{len} are outside the {}-byte segment",
                    self.size()
                ),
            )),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    ///
    /// Bytes that another process writes at the same time may be seen half-written; use a lock
    /// or an event to order writes and reads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if the range is outside the segment.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let (bytes, words) = (self.bytes(), self.atomics::<AtomicU64>());
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i;
            if at.is_multiple_of(8) && buf.len() - i >= 8 {
                let w = words[at / 8].load(Relaxed);
                buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                buf[i] = bytes[at].load(Relaxed);
                i += 1;
            }
        }
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if the range is outside the segment.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        let (bytes, words) = (self.bytes(), self.atomics::<AtomicU64>());
        let mut i = 0;
        while i < data.len() {
            let at = offset + i;
            if at.is_multiple_of(8) && data.len() - i >= 8 {
                let w = u64::from_ne_bytes(data[i..i + 8].try_into().expect("8 bytes"));
                words[at / 8].store(w, Relaxed);
                i += 8;
            } else {
                bytes[at].store(data[i], Relaxed);
                i += 1;
            }
        }
        Ok(())
    }

    fn bytes(&self) -> &[AtomicU8] {
        self.atomics::<AtomicU8>()
    }

    /// The segment as a slice of atomics (`AtomicU8` up to `AtomicU64`, signed or not); a
    /// trailing part smaller than one `A` is left out.
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let shm = multiproc::shared::SharedMemory::create(64)?;
    /// let counters = shm.atomics::<AtomicU64>();
    /// assert_eq!(counters.len(), 8);
    /// counters[3].fetch_add(1, Ordering::Relaxed);
    /// # shm.unlink()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn atomics<A: SharedAtomic>(&self) -> &[A] {
        // SAFETY: the mapping is page aligned (enough for any atomic), at least
        // `len * size_of::<A>()` bytes long and lives as long as `self`; atomics of integers
        // are valid for every bit pattern, and all access through them is atomic.
        unsafe {
            std::slice::from_raw_parts(
                self.seg.as_ptr().cast::<A>(),
                self.seg.len() / size_of::<A>(),
            )
        }
    }

    /// Removes the name, so that no one else can attach; mappings stay valid. Call it once,
    /// from one process (Python's `unlink`).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] (`NotFound` underneath) if the name is already gone.
    pub fn unlink(&self) -> Result<()> {
        let r = sys::shm_unlink(&self.name);
        if let Ok((_, id)) = sys::fd_len_and_id(self.seg.fd().as_fd()) {
            // Withdraws the registration of this very file only: a new segment created under
            // the same name since keeps its own.
            let _ = resource_tracker::unregister(&self.name, id);
        }
        Ok(r?)
    }

    /// Drops this handle (Python's `close`); the segment is unmapped when its last clone goes.
    pub fn close(self) {}
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Fd<'a>(&'a Segment);
        impl Serialize for Fd<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                crate::wire::serialize_fd(std::os::fd::AsFd::as_fd(self.0.fd()), s)
            }
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.name)?;
        t.serialize_element(&Fd(&self.seg))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fd(std::os::fd::OwnedFd);
        impl<'de> Deserialize<'de> for Fd {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                crate::wire::deserialize_fd(d).map(Fd)
            }
        }
        let (name, Fd(fd)) = <(String, Fd)>::deserialize(d)?;
        let seg = Segment::from_fd(fd).map_err(serde::de::Error::custom)?;
        Ok(SharedMemory {
            name,
            seg: Arc::new(seg),
        })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The atomic integer types a [`SharedMemory`] can be viewed as.
pub trait SharedAtomic: sealed::Sealed + Sync {}

macro_rules! atomics {
    ($($t:ty),*) => { $( impl sealed::Sealed for $t {} impl SharedAtomic for $t {} )* };
}
atomics!(
    AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicI8, AtomicI16, AtomicI32, AtomicI64
);
