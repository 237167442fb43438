//! Mappings of shared memory and reads of its bytes, shared by every platform layer (each
//! layer's `shm.rs` re-exports them, so they are reached as `crate::sys::NAME`): a
//! `MAP_SHARED` [`Mapping`], a file's size and identity, an out-of-band message's bytes
//! ([`SealedBytes`], checked by the layer's `check_sealed_len`), and the check of a named
//! segment's name ([`check_name`], against the layer's `MAX_NAME`). What differs by layer: the
//! populate hints (`MADV_POPULATE_*` on the Linux layer, nothing on the portable one) and
//! what the seal check proves (see each layer's `shm.rs`).
//!
//! # Safety
//! A [`Mapping`] owns the region `mmap` returned and unmaps it exactly once; the only
//! references it hands out are to atomics inside it, in bounds and aligned
//! ([`Mapping::atomic_u32`]); [`SealedBytes`] lends a mapping's bytes out as a `&[u8]` only
//! after the layer's seal check.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use rustix::mm::{MapFlags, ProtFlags};

/// The size in bytes of the file behind `fd`, and its identity (device and inode): two
/// descriptors, in any processes, refer to the same shared memory exactly when the identities
/// are equal.
///
/// # References
/// fstat(2).
pub(crate) fn fd_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    let st = rustix::fs::fstat(fd)?;
    let len =
        usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    #[allow(clippy::unnecessary_cast)] // their widths differ between platforms
    Ok((len, (st.st_dev as u64, st.st_ino as u64)))
}

/// A `MAP_SHARED` mapping of a whole file (read-write unless made read-only); unmapped on
/// drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; what is stored in it and how it is
// accessed concurrently is governed by the typed layers above, which only use atomics or
// lock-protected access.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read-write. `len` must be non-zero.
    ///
    /// # References
    /// mmap(2).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        Self::map(fd, len, ProtFlags::READ | ProtFlags::WRITE)
    }

    /// Maps the first `len` bytes of `fd` shared and read-only: a write through the mapping
    /// faults, so this process cannot change what other processes read. `len` must be
    /// non-zero.
    ///
    /// # References
    /// mmap(2).
    pub(crate) fn new_read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        Self::map(fd, len, ProtFlags::READ)
    }

    fn map(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty segment",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps nothing we own;
        // the returned region is owned by the `Mapping` and unmapped exactly once in `drop`.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Makes this mapping read-only in place (addresses and existing borrows stay valid);
    /// a later write through it faults.
    ///
    /// # References
    /// mprotect(2).
    pub(crate) fn make_read_only(&self) -> io::Result<()> {
        // SAFETY: `ptr`/`len` describe exactly this mapping, which stays mapped; dropping
        // write permission changes no byte, and no `&mut` into it exists when the typed layer
        // calls this (it holds the only handle, or only shared borrows remain).
        unsafe {
            rustix::mm::mprotect(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::MprotectFlags::READ,
            )?;
        }
        Ok(())
    }

    /// The base address (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The atomic 32-bit word at `offset`, shared with every process that maps the same file;
    /// `None` if it would not lie inside the mapping or is not 4-byte aligned.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(std::mem::align_of::<AtomicU32>())
            || offset.checked_add(4).is_none_or(|end| end > self.len)
        {
            return None;
        }
        // SAFETY: the word lies inside this mapping (checked above), which is page aligned, so
        // the word is 4-byte aligned; it stays mapped while `self` lives, which bounds the
        // returned borrow; an `AtomicU32` is valid for any bit pattern, and every process that
        // shares the word accesses it atomically.
        Some(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    /// Faults in the pages of `[offset, offset + len)` for writing with one call, rather than
    /// one fault per page. Best effort: a range outside the mapping is ignored, as are errors
    /// (the pages are then faulted in when written).
    ///
    /// # References
    /// madvise(2) `MADV_POPULATE_WRITE`.
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    pub(crate) fn populate_write(&self, offset: usize, len: usize) {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return;
        }
        // SAFETY: `[offset, offset + len)` lies inside this mapping (checked above), which
        // stays mapped while `self` lives; populating only faults pages in, which changes no
        // byte of them.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }

    /// Does nothing on the portable layer (`MADV_POPULATE_WRITE` is Linux's): pages are
    /// faulted in as they are written.
    #[cfg(not(all(target_os = "linux", not(multiproc_portable))))]
    pub(crate) fn populate_write(&self, _offset: usize, _len: usize) {}
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the region mapped in `new`, and no reference
        // into it outlives `self` (the typed layers borrow from the owner of this mapping).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Reads `buf.len()` bytes of the file behind `fd` from its start (`pread`, so the file's
/// offset, shared with other holders, does not move).
///
/// # References
/// pread(2).
pub(crate) fn read_exact_at_start(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A read-only mapping of an out-of-band message's file, checked by the layer's
/// `check_sealed_len`: on the Linux layer a memfd whose contents are sealed (`seal_contents`),
/// so that no process can write or resize it and its bytes can be lent out as a plain
/// `&[u8]`; on the portable layer a shared-memory object of exactly the announced size.
#[derive(Debug)]
pub(crate) struct SealedBytes {
    map: Mapping,
}

impl SealedBytes {
    /// Maps `fd` read-only after checking it with the layer's `check_sealed_len` against
    /// `len`, which must be above 0; on the Linux layer its pages are faulted in with one call
    /// (best effort).
    ///
    /// # References
    /// mmap(2), madvise(2) `MADV_POPULATE_READ`.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SealedBytes> {
        super::check_sealed_len(fd, len)?;
        let map = Mapping::new_read_only(fd, len)?;
        #[cfg(all(target_os = "linux", not(multiproc_portable)))]
        // SAFETY: the range is exactly this new mapping, which stays mapped while `map`
        // lives; populating only faults pages in and changes no byte.
        let _ = unsafe {
            rustix::mm::madvise(
                map.as_ptr().cast(),
                len,
                rustix::mm::Advice::LinuxPopulateRead,
            )
        };
        Ok(SealedBytes { map })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: on the Linux layer, the mapping spans `len` bytes of a file whose size is
        // sealed at exactly `len` (checked in `map`), so every byte is backed and reading
        // cannot fault; the write seal means no process can change them (no `write(2)`, and no
        // writable mapping exists or can be made), so the shared borrow sees fixed bytes. On
        // the portable layer, the mapping spans `len` bytes of an object that held exactly
        // `len` bytes when mapped (checked in `map`); with no seals there, the only other
        // holder is the sender, which wrote the message before sending it and never writes or
        // resizes it after (this crate's `Connection::send`), so the bytes are backed and
        // fixed while borrowed (its `shm.rs` says what a hostile sender could do). The borrow
        // lives no longer than `self`, which unmaps on drop.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }
}

/// Checks a named segment's name: 1..=[`MAX_NAME`](crate::sys::MAX_NAME) bytes (the layer's
/// limit) of `[A-Za-z0-9_.-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    use crate::sys::MAX_NAME;
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid shared memory name {name:?}: use 1 to {MAX_NAME} characters of \
                 A-Z a-z 0-9 _ . - not starting with a dot"
            ),
        ))
    }
}
