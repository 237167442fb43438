//! Byte-stream helpers for connections: vectored writes, retrying on `EINTR`.
//!
//! # Safety
//! No `unsafe` here: everything goes through rustix's safe wrappers.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// Writes every byte of `parts`, in order, with as few `writev` calls as the kernel allows.
///
/// # References
/// writev(2).
pub(crate) fn write_all_vectored(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        if offset == parts[index].len() {
            index += 1;
            offset = 0;
            continue;
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() - index);
        slices.push(IoSlice::new(&parts[index][offset..]));
        slices.extend(parts[index + 1..].iter().map(|p| IoSlice::new(p)));
        let mut written = match rustix::io::writev(fd, &slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        while written > 0 {
            let left = parts[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// Whether `fd` was opened for reading and for writing (its access mode).
///
/// # References
/// fcntl(2) (`F_GETFL`).
pub(crate) fn access_mode(fd: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    use rustix::fs::OFlags;
    let mode = rustix::fs::fcntl_getfl(fd)? & OFlags::RWMODE;
    Ok(if mode == OFlags::RDONLY {
        (true, false)
    } else if mode == OFlags::WRONLY {
        (false, true)
    } else {
        (true, true)
    })
}
