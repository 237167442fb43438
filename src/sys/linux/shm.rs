//! Shared memory: anonymous segments (memfd), named segments (`/dev/shm`) and mappings.
//!
//! # Safety
//! [`Mapping`] owns a `MAP_SHARED` region from `mmap` and unmaps it on drop; it hands out a
//! raw base pointer and length, and the typed layers above (`shared/`, `sync/raw.rs`) decide
//! how the bytes are viewed; the one typed view it gives itself is an atomic word
//! ([`Mapping::atomic_u32`]), in bounds and aligned.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use rustix::fs::{Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new anonymous shared-memory file of `len` zero bytes (memfd, close-on-exec).
///
/// # References
/// memfd_create(2), ftruncate(2).
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    memfd_named(c"multiproc", len)
}

/// As [`memfd`], with `name` shown for it in `/proc/<pid>/fd` (as `memfd:<name>`).
pub(crate) fn memfd_named(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// A new anonymous shared-memory file of `len` zero bytes whose size is sealed: it can never
/// shrink or grow, so a mapping of it, in any process, can never fault past the file's end
/// (`SIGBUS`), whatever another holder does. A seal cannot be removed.
///
/// # References
/// memfd_create(2) `MFD_ALLOW_SEALING`, fcntl(2) `F_ADD_SEALS`.
pub(crate) fn memfd_fixed_size(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(
        &fd,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )?;
    Ok(fd)
}

/// A new anonymous shared-memory file, empty and not yet sealed (memfd, close-on-exec): an
/// out-of-band message is written into it with `write(2)`, which grows it, and then sealed
/// with [`seal_contents`]. It is never mapped writable, so the write seal can be added.
///
/// # References
/// memfd_create(2) `MFD_ALLOW_SEALING`.
pub(crate) fn memfd_sealable(name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )?)
}

/// The seals that make a memfd's bytes immutable for every holder: its size can neither
/// shrink nor grow, and nobody can write it (`write(2)` or a writable mapping).
fn content_seals() -> rustix::fs::SealFlags {
    rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW | rustix::fs::SealFlags::WRITE
}

/// Seals the memfd behind `fd` so that its bytes and size never change again, and no seal
/// can be added or removed. Fails (`EBUSY`) while a writable shared mapping of it exists,
/// which is what makes the seal a promise a receiver can rely on.
///
/// # References
/// fcntl(2) `F_ADD_SEALS`, `F_SEAL_WRITE`, `F_SEAL_SEAL`.
pub(crate) fn seal_contents(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, content_seals() | rustix::fs::SealFlags::SEAL)?;
    Ok(())
}

/// Checks that `fd` is a memfd whose contents are sealed ([`seal_contents`]) and that it
/// holds exactly `len` bytes; the error says which check failed (`InvalidData`).
pub(crate) fn check_sealed_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) if seals.contains(content_seals()) => {}
        Ok(_) => {
            return Err(bad(
                "its memory is not sealed against writes and resizing".to_owned()
            ));
        }
        Err(_) => return Err(bad("its descriptor is not a memfd".to_owned())),
    }
    let (size, _) = fd_len_and_id(fd)?;
    if size != len {
        return Err(bad(format!(
            "its memory holds {size} bytes, but the header announces {len}"
        )));
    }
    Ok(())
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

/// A read-only mapping of a memfd whose contents are sealed ([`seal_contents`]): since no
/// process can write or resize the file, its bytes can be lent out as a plain `&[u8]`.
#[derive(Debug)]
pub(crate) struct SealedBytes {
    map: Mapping,
}

impl SealedBytes {
    /// Maps `fd` read-only after checking it with [`check_sealed_len`] against `len`, which
    /// must be above 0; its pages are faulted in with one call (best effort).
    ///
    /// # References
    /// mmap(2), madvise(2) `MADV_POPULATE_READ`.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SealedBytes> {
        check_sealed_len(fd, len)?;
        let map = Mapping::new_read_only(fd, len)?;
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
        // SAFETY: the mapping spans `len` bytes of a file whose size is sealed at exactly
        // `len` (checked in `map`), so every byte is backed and reading cannot fault; the
        // write seal means no process can change them (no `write(2)`, and no writable mapping
        // exists or can be made), so the shared borrow sees fixed bytes; it lives no longer
        // than `self`, which unmaps on drop.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }
}

/// Seals the memfd behind `fd` against new writers: no process can map it writable or
/// `write(2)` to it any more (mappings made before keep their protection; see
/// [`Mapping::make_read_only`]), and no seal can be added or removed. Best effort: kernels
/// before 5.1 lack `F_SEAL_FUTURE_WRITE`, and then nothing changes.
///
/// # References
/// fcntl(2) `F_ADD_SEALS`, `F_SEAL_FUTURE_WRITE`, `F_SEAL_SEAL`.
pub(crate) fn seal_future_writes(fd: BorrowedFd<'_>) {
    let _ = rustix::fs::fcntl_add_seals(
        fd,
        rustix::fs::SealFlags::FUTURE_WRITE | rustix::fs::SealFlags::SEAL,
    );
}

/// Whether the file behind `fd` is a memfd whose size is sealed as [`memfd_fixed_size`]
/// seals it. `false` for any other kind of file (which has no seals).
pub(crate) fn has_fixed_size(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| {
        seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW)
    })
}

/// Gives the pages of `[start, start + len)` of the file behind `fd` back to the OS; they
/// read as zeros afterwards and the file keeps its size. Best effort: errors are ignored
/// (the memory is then merely kept).
///
/// # References
/// fallocate(2) `FALLOC_FL_PUNCH_HOLE`.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, start: u64, len: u64) {
    let _ = rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        start,
        len,
    );
}

/// The size in bytes of the file behind `fd`, and its identity (device and inode): two
/// descriptors, in any processes, refer to the same shared memory exactly when the identities
/// are equal.
pub(crate) fn fd_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    let st = rustix::fs::fstat(fd)?;
    let len =
        usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
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

/// The longest name accepted for a named segment (bytes, without the leading `/`).
pub(crate) const MAX_NAME: usize = 200;

/// Checks a segment name: 1..=MAX_NAME bytes of `[A-Za-z0-9_.-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
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

fn shm_path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

/// Creates the named segment `name` (which must not exist) with `len` zero bytes.
///
/// # References
/// shm_open(3) (on Linux, a file in `/dev/shm` opened with `O_CREAT | O_EXCL | O_NOFOLLOW`).
pub(crate) fn shm_create(name: &str, len: usize) -> io::Result<OwnedFd> {
    check_name(name)?;
    let fd = rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = rustix::fs::unlink(shm_path(name));
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing named segment `name`.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    check_name(name)?;
    Ok(rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes the name `name`; mappings stay valid until unmapped.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::unlink(shm_path(name))?)
}

const PREFIX: &[u8] = b"/dev/shm/";

/// `/dev/shm/<name>` with a terminating NUL, built on the stack: `None` if `name` is longer
/// than [`MAX_NAME`]. A NUL inside `name` ends the path there.
fn stack_path(name: &[u8]) -> Option<[u8; PREFIX.len() + MAX_NAME + 1]> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut path = [0u8; PREFIX.len() + MAX_NAME + 1];
    path[..PREFIX.len()].copy_from_slice(PREFIX);
    path[PREFIX.len()..PREFIX.len() + name.len()].copy_from_slice(name);
    Some(path)
}

/// The identity (device, inode) of the file now called `name` in `/dev/shm`, if there is one.
/// Allocates nothing and is async-signal-safe (the resource tracker calls it after `fork`);
/// the name is not checked beyond its length.
///
/// # References
/// lstat(2).
pub(crate) fn shm_identity(name: &[u8]) -> Option<(u64, u64)> {
    let path = stack_path(name)?;
    let c = CStr::from_bytes_until_nul(&path).ok()?;
    let st = rustix::fs::lstat(c).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Removes the name `name` from `/dev/shm`, ignoring errors. Allocates nothing and is
/// async-signal-safe, as [`shm_identity`].
///
/// # References
/// unlink(2).
pub(crate) fn shm_remove(name: &[u8]) {
    if let Some(path) = stack_path(name)
        && let Ok(c) = CStr::from_bytes_until_nul(&path)
    {
        let _ = rustix::fs::unlink(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn atomic_u32_is_given_only_in_bounds_and_aligned() {
        let fd = memfd(4096).unwrap();
        let map = Mapping::new(fd.as_fd(), 4096).unwrap();
        assert!(map.atomic_u32(0).is_some());
        assert!(map.atomic_u32(4092).is_some());
        assert!(map.atomic_u32(4093).is_none(), "past the end");
        assert!(map.atomic_u32(4096).is_none(), "past the end");
        assert!(map.atomic_u32(usize::MAX).is_none(), "overflow");
        assert!(map.atomic_u32(2).is_none(), "misaligned");
        map.atomic_u32(8)
            .unwrap()
            .store(7, std::sync::atomic::Ordering::SeqCst);
        let other = Mapping::new(fd.as_fd(), 4096).unwrap();
        assert_eq!(
            other
                .atomic_u32(8)
                .unwrap()
                .load(std::sync::atomic::Ordering::SeqCst),
            7,
            "two mappings of one file share the word"
        );
    }

    #[test]
    fn shm_identity_and_remove_see_the_named_file() {
        let name = format!("mpsys-{}-identity", std::process::id());
        let fd = shm_create(&name, 64).unwrap();
        let (_, id) = fd_len_and_id(fd.as_fd()).unwrap();
        let seen = shm_identity(name.as_bytes());
        shm_remove(name.as_bytes());
        assert_eq!(seen, Some(id));
        assert_eq!(shm_identity(name.as_bytes()), None, "removed");
        assert_eq!(shm_identity(&[b'a'; MAX_NAME + 1]), None, "too long");
    }
}
