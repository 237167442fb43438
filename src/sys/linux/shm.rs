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

use rustix::fs::{Mode, OFlags};
// The mapping and its reads are shared by both layers; re-exported here with the rest of
// this concern.
pub(crate) use crate::sys::mapping::{
    Mapping, SealedBytes, check_name, fd_len_and_id, read_exact_at_start,
};

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

/// The longest name accepted for a named segment (bytes, without the leading `/`).
pub(crate) const MAX_NAME: usize = 200;

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
