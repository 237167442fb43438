//! Writes that never block, on descriptors that stay in blocking mode: a connection's pipe
//! or socket is shared with other processes (after `fork`, or passed), and `O_NONBLOCK`
//! belongs to the open file description, so setting it for one async writer would make every
//! other holder's blocking calls fail with `EAGAIN`. Used by `crate::aio`.
//!
//! # Safety
//! No `unsafe` here: everything goes through rustix's safe wrappers.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use rustix::io::Errno;
use rustix::net::SendFlags;

use super::{Interest, poll_fds};

/// The most a pipe write may carry and still be atomic; also what a pipe that polls writable
/// is sure to take without blocking (it has a free page).
const PIPE_BUF: usize = 4096;

/// Writes as much of `buf` as the descriptor takes now without blocking, and returns how
/// much that was (`0`: nothing fits now; wait for writability and call again).
///
/// A socket is written with `send(MSG_DONTWAIT | MSG_NOSIGNAL)`. A pipe (where `send` fails
/// with `ENOTSOCK`) is written `PIPE_BUF` bytes at a time, each only after a zero-timeout
/// `poll` says it is writable: a pipe that polls writable has a free slot, which takes up to
/// `PIPE_BUF` bytes at once without blocking. (A concurrent writer in another process could
/// take that slot between the two calls; then this write blocks until the reader makes room,
/// as a blocking send would.)
///
/// # Errors
/// The OS error; a closed peer is `BrokenPipe` (never SIGPIPE on sockets; the crate ignores
/// SIGPIPE for pipes).
///
/// # References
/// send(2) `MSG_DONTWAIT`, pipe(7) "PIPE_BUF", poll(2).
pub(crate) fn write_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(fd, buf, SendFlags::DONTWAIT | super::fdpass::SEND_NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(0),
            Err(Errno::NOTSOCK) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut written = 0;
    while written < buf.len() {
        let writable = Interest {
            read: false,
            write: true,
        };
        if !poll_fds(&[(fd, writable)], Some(Instant::now()))?[0].write {
            break;
        }
        let chunk = &buf[written..buf.len().min(written + PIPE_BUF)];
        match rustix::io::write(fd, chunk) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}
