//! Shared memory without memfd or `/dev/shm` paths: POSIX `shm_open` objects and mappings.
//!
//! - **Anonymous segments** ([`memfd`]): `shm_open` of a random name with `O_CREAT | O_EXCL`,
//!   unlinked at once, so only the descriptor (passed like a memfd's) reaches the memory, and
//!   the kernel frees it when the last descriptor and mapping are gone, however the holders
//!   end. The name exists for the few system calls between the create and the unlink: a
//!   process killed in between leaves one name behind (`/mp-` and 16 hex digits), which
//!   nothing tracks. Linux keeps no such window (memfd has no name).
//! - **Named segments** ([`shm_create`], [`shm_open`], [`shm_unlink`]): `shm_open` and
//!   `shm_unlink` of `/<name>`. Nothing lists them (no `/dev/shm` directory is read); the
//!   resource tracker finds a dead creator's names through [`shm_identity`] and
//!   [`shm_remove`] by name, as on Linux, so a killed holder's segments are still unlinked.
//! - **No sealing.** `F_ADD_SEALS` is Linux's: [`memfd_fixed_size`] is a plain anonymous
//!   segment, [`seal_future_writes`] does nothing, and [`has_fixed_size`] only checks that
//!   `fstat` reads a size (the caller then bounds its mapping by that size). What that
//!   costs a `SharedSlice`: a receiver can map a frozen buffer writable (its own mapping
//!   stays read-only, and this crate never writes a frozen buffer), and a process holding
//!   the descriptor that shrank the file would make the others' mappings fault (`SIGBUS`)
//!   past the new end; no code in this crate ever shrinks one. A portable repair is to open
//!   a second, read-only descriptor of the object before unlinking its name and to pass only
//!   that one once frozen (`mmap(PROT_WRITE)` of an `O_RDONLY` descriptor fails).
//! - **No hole punching.** [`punch_hole`] does nothing (`fallocate` is Linux's): a `Queue`
//!   that once held more than its 128 MiB keep-level keeps those pages until its last handle
//!   is gone, instead of giving them back when it drains.
//! - [`Mapping::populate_write`] does nothing (`MADV_POPULATE_WRITE` is Linux's): pages are
//!   faulted in one at a time as they are first written.
//!
//! # Safety
//! [`Mapping`] owns a `MAP_SHARED` region from `mmap` and unmaps it on drop; it hands out a
//! raw base pointer and length, and the typed layers above (`shared/`, `sync/raw.rs`) decide
//! how the bytes are viewed; the one typed view it gives itself is an atomic word
//! ([`Mapping::atomic_u32`]), in bounds and aligned. `shm_open`/`shm_unlink` go through
//! `libc` with NUL-terminated names built on the stack and live across each call; the
//! descriptor `shm_open` returns is owned at once.
//!
//! # References
//! shm_open(3), shm_unlink(3), mmap(2), ftruncate(2), fstat(2).

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

// The mapping and its reads are shared by both layers; re-exported here with the rest of
// this concern.
pub(crate) use crate::sys::mapping::{
    Mapping, SealedBytes, check_name, fd_len_and_id, read_exact_at_start,
};

/// The longest name accepted for a named segment (bytes, without the leading `/`). macOS
/// allows 31 bytes with the slash (`PSHMNAMLEN`); elsewhere the file system's limit is far
/// above this.
#[cfg(target_vendor = "apple")]
pub(crate) const MAX_NAME: usize = 30;
/// The longest name accepted for a named segment (bytes, without the leading `/`).
#[cfg(not(target_vendor = "apple"))]
pub(crate) const MAX_NAME: usize = 200;

/// `/<name>` with a terminating NUL, built on the stack: `None` if `name` is longer than
/// [`MAX_NAME`]. A NUL inside `name` ends the name there.
fn stack_name(name: &[u8]) -> Option<[u8; MAX_NAME + 2]> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut path = [0u8; MAX_NAME + 2];
    path[0] = b'/';
    path[1..=name.len()].copy_from_slice(name);
    Some(path)
}

/// `shm_open(name, flags, 0600)`, retried on `EINTR`; the descriptor is close-on-exec (POSIX
/// sets `FD_CLOEXEC` on it).
/// Owner read and write: `mode_t` is `u32` on Linux and `u16` on the BSDs, and macOS's
/// `shm_open` takes its mode as a variadic argument, promoted to `c_uint`.
#[cfg(not(target_vendor = "apple"))]
const SHM_MODE: libc::mode_t = 0o600;
#[cfg(target_vendor = "apple")]
const SHM_MODE: libc::c_uint = 0o600;

fn raw_shm_open(name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a NUL-terminated string that lives across the call; the mode is
        // a plain integer.
        let fd = unsafe { libc::shm_open(name.as_ptr(), flags, SHM_MODE) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by `shm_open` and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn raw_shm_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a NUL-terminated string that lives across the call.
    if unsafe { libc::shm_unlink(name.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A new anonymous shared-memory object of `len` zero bytes (close-on-exec): a random name
/// created exclusively and unlinked at once.
///
/// # References
/// shm_open(3) `O_CREAT | O_EXCL`, shm_unlink(3), ftruncate(2).
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    let mut attempts = 0;
    let fd = loop {
        let mut random = [0u8; 8];
        super::random_bytes(&mut random)?;
        // "/mp-" and 16 hex digits: 20 bytes, within macOS's 31.
        let mut name = *b"/mp-0000000000000000\0";
        for (i, b) in random.iter().enumerate() {
            name[4 + 2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
            name[5 + 2 * i] = b"0123456789abcdef"[usize::from(b & 15)];
        }
        let name = CStr::from_bytes_with_nul(&name).expect("one NUL, at the end");
        match raw_shm_open(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) {
            Ok(fd) => {
                raw_shm_unlink(name)?;
                break fd;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// As [`memfd`]; `name` is not shown anywhere (an unlinked object has no name).
pub(crate) fn memfd_named(_name: &CStr, len: usize) -> io::Result<OwnedFd> {
    memfd(len)
}

/// As [`memfd`]: no seal can fix its size on this layer (see the module note).
pub(crate) fn memfd_fixed_size(_name: &CStr, len: usize) -> io::Result<OwnedFd> {
    memfd(len)
}

/// Does nothing: sealing is Linux's (see the module note).
pub(crate) fn seal_future_writes(_fd: BorrowedFd<'_>) {}

/// Whether the file behind `fd` is a regular file (as POSIX shared-memory objects `fstat` on
/// Linux, macOS and the BSDs) whose size `fstat` reads: the only check this layer has in
/// place of Linux's size seal (see the module note); the caller bounds its mapping by that
/// size. Pipes, sockets and devices are refused.
pub(crate) fn has_fixed_size(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_size >= 0
    })
}

/// Does nothing: hole punching is Linux's (see the module note).
pub(crate) fn punch_hole(_fd: BorrowedFd<'_>, _start: u64, _len: u64) {}

/// `/<name>` as a C string, for a name that passed [`check_name`].
fn checked_name(name: &str) -> io::Result<[u8; MAX_NAME + 2]> {
    check_name(name)?;
    stack_name(name.as_bytes()).ok_or_else(|| io::ErrorKind::InvalidInput.into())
}

fn as_cstr(path: &[u8; MAX_NAME + 2]) -> io::Result<&CStr> {
    CStr::from_bytes_until_nul(path).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Creates the named segment `name` (which must not exist) with `len` zero bytes.
///
/// # References
/// shm_open(3) `O_CREAT | O_EXCL`, ftruncate(2).
pub(crate) fn shm_create(name: &str, len: usize) -> io::Result<OwnedFd> {
    let path = checked_name(name)?;
    let c = as_cstr(&path)?;
    let fd = raw_shm_open(c, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = raw_shm_unlink(c);
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing named segment `name`.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    let path = checked_name(name)?;
    raw_shm_open(as_cstr(&path)?, libc::O_RDWR)
}

/// Removes the name `name`; mappings stay valid until unmapped.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    let path = checked_name(name)?;
    raw_shm_unlink(as_cstr(&path)?)
}

/// The identity (device, inode) of the object now called `name`, if there is one: opened
/// read-only, `fstat`ed and closed. Allocates nothing (the resource tracker calls it after
/// `fork`): `shm_open` is not on POSIX's list of async-signal-safe calls, but it is a system
/// call on macOS and the BSDs, and glibc's builds the path on the stack and calls `open`. The
/// name is not checked beyond its length.
///
/// # References
/// shm_open(3), fstat(2).
pub(crate) fn shm_identity(name: &[u8]) -> Option<(u64, u64)> {
    let path = stack_name(name)?;
    let c = CStr::from_bytes_until_nul(&path).ok()?;
    let fd = raw_shm_open(c, libc::O_RDONLY).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    #[allow(clippy::unnecessary_cast)] // their widths differ between platforms
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Removes the name `name`, ignoring errors. Allocates nothing, as [`shm_identity`].
///
/// # References
/// shm_unlink(3).
pub(crate) fn shm_remove(name: &[u8]) {
    if let Some(path) = stack_name(name)
        && let Ok(c) = CStr::from_bytes_until_nul(&path)
    {
        let _ = raw_shm_unlink(c);
    }
}

/// Out-of-band messages (`Connection::set_out_of_band`) on this layer: an anonymous object
/// as [`memfd`], empty; it grows as the message is written into it.
pub(crate) fn memfd_sealable(_name: &CStr) -> io::Result<OwnedFd> {
    memfd(0)
}

/// Does nothing: sealing is Linux's (see the module note). On this layer a receiver trusts
/// that its sender does not write or shrink an object after sending it, as for
/// `SharedSlice`; this crate never does.
pub(crate) fn seal_contents(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(())
}

/// Checks that `fd` is a regular file (a shared-memory object, [`has_fixed_size`]) holding
/// exactly `len` bytes: this layer's stand-in for Linux's seal check (`InvalidData`).
pub(crate) fn check_sealed_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if !has_fixed_size(fd) {
        return Err(bad(
            "its descriptor is not a shared-memory object".to_owned()
        ));
    }
    let (size, _) = fd_len_and_id(fd)?;
    if size != len {
        return Err(bad(format!(
            "its memory holds {size} bytes, but the header announces {len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;

    #[test]
    fn anonymous_segments_are_shared_zeroed_and_nameless() {
        let fd = memfd(4096).unwrap();
        let (len, id) = fd_len_and_id(fd.as_fd()).unwrap();
        assert_eq!(len, 4096);
        let map = Mapping::new(fd.as_fd(), 4096).unwrap();
        assert_eq!(map.atomic_u32(8).unwrap().load(Ordering::SeqCst), 0);
        map.atomic_u32(8).unwrap().store(7, Ordering::SeqCst);
        let other = Mapping::new(fd.as_fd(), 4096).unwrap();
        assert_eq!(other.atomic_u32(8).unwrap().load(Ordering::SeqCst), 7);
        assert!(map.atomic_u32(4093).is_none(), "past the end");
        assert!(map.atomic_u32(2).is_none(), "misaligned");
        assert_ne!(
            fd_len_and_id(memfd(4096).unwrap().as_fd()).unwrap().1,
            id,
            "each is its own object"
        );
        // Unlinked at once: no name of ours is left behind (on Linux, where names are files
        // in /dev/shm, this can be seen).
        if cfg!(target_os = "linux") {
            let ours = std::fs::read_dir("/dev/shm")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.metadata().is_ok_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.dev(), m.ino()) == id
                    })
                })
                .count();
            assert_eq!(ours, 0, "the anonymous segment still has a name");
        }
    }

    #[test]
    fn shm_identity_and_remove_see_the_named_object() {
        let name = format!("mpsys-{}-identity", std::process::id());
        let fd = shm_create(&name, 64).unwrap();
        assert_eq!(
            shm_create(&name, 64).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let (len, id) = fd_len_and_id(fd.as_fd()).unwrap();
        assert_eq!(len, 64);
        let again = shm_open(&name).unwrap();
        assert_eq!(fd_len_and_id(again.as_fd()).unwrap().1, id);
        let seen = shm_identity(name.as_bytes());
        shm_remove(name.as_bytes());
        assert_eq!(seen, Some(id));
        assert_eq!(shm_identity(name.as_bytes()), None, "removed");
        assert_eq!(shm_open(&name).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(shm_identity(&[b'a'; MAX_NAME + 1]), None, "too long");
        assert!(shm_unlink("../etc").is_err(), "checked");
    }

    #[test]
    fn the_size_check_replaces_the_seal() {
        let fd = memfd_fixed_size(c"x", 100).unwrap();
        assert!(has_fixed_size(fd.as_fd()));
        let (r, _w) = super::super::pipe().unwrap();
        assert!(!has_fixed_size(r.as_fd()), "a pipe is no shared memory");
        seal_future_writes(fd.as_fd());
        punch_hole(fd.as_fd(), 0, 100);
        assert_eq!(fd_len_and_id(fd.as_fd()).unwrap().0, 100);
    }
}
