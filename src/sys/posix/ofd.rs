//! Open file descriptions on the portable layer: the event a `Queue` raises for `wait()`
//! without eventfd; reopening and holder locks still Linux's (see below).
//!
//! # The event
//!
//! An eventfd is one descriptor that any holder can make readable and drain. POSIX's pipe
//! has two ends, and a queue's handles (in any process) hold and pass only one descriptor,
//! so the event here is a Unix datagram socket connected to itself: bound to a name in a
//! fresh private directory (mode 0700), connected to that name, after which the name and
//! the directory are removed. [`eventfd_raise`] sends it a one-byte datagram (a full buffer
//! means it is readable already), [`eventfd_drain`] receives until none is left; `poll` sees
//! it readable while a datagram waits, as an eventfd with a non-zero counter. Needs a
//! writable `/tmp` at creation.
//!
//! # Reopening and holder locks: still Linux's
//!
//! A queue marks each handle as a holder with an OFD lock on a byte of a *new open file
//! description* of its memory (`reopen`, through `/proc/self/fd`), so that the kernel drops
//! the mark when the handle's last descriptor closes, killed processes included. Neither
//! half has a POSIX form here:
//!
//! - **Reopening.** An unlinked `shm_open` object has no name to open again, and `/dev/fd/N`
//!   on macOS and the BSDs duplicates the descriptor (the same description) rather than
//!   opening the file anew. So a portable `reopen` needs names that live as long as the
//!   queue: the files below, in a private directory beside the memory, opened per handle and
//!   passed with the memory's descriptor (a handle that outlives the creator keeps working:
//!   it holds its descriptions already).
//! - **Holder locks.** `flock` has the open-file-description semantics (released when the
//!   description's last descriptor closes, available on macOS and the BSDs), but locks a whole
//!   file, not a byte, and has no query: asking "does another description hold it" by converting
//!   one's own shared lock to an exclusive one without blocking is not atomic (`flock` drops the
//!   old lock first), so two handles asking at once can each miss the other. So a portable version
//!   gives each handle its own file per role, `flock`ed (`LOCK_EX`) while it has the role, in the
//!   queue's private directory (removed by the resource tracker when its creator dies); the query
//!   lists the directory and tries `LOCK_SH | LOCK_NB` on the other handles' files of that role
//!   (refused: a live holder; granted: its holders are gone and the file is removed). No handle
//!   drops its own mark to ask, so it is race-free.
//!
//! Until that lands, `reopen`, `ofd_hold`, `ofd_release` and `ofd_others_hold` are the Linux
//! layer's (`linux/ofd.rs`, included below), which is why this layer runs on Linux only.
//!
//! # Safety
//! No `unsafe` of its own: the event goes through rustix's safe wrappers, and the included
//! Linux file states its own note.
//!
//! # References
//! unix(7) (`SOCK_DGRAM`), connect(2), send(2), recv(2).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

#[allow(dead_code)] // its eventfd functions: this layer has its own, below
#[path = "../linux/ofd.rs"]
mod linux_ofd;

pub(crate) use linux_ofd::{ofd_hold, ofd_others_hold, ofd_release, reopen};

/// A new event (unset, close-on-exec, non-blocking): a Unix datagram socket connected to
/// itself (module note), readable while raised.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::DGRAM, None)?;
    rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::CLOEXEC)?;
    super::set_nonblocking(std::os::fd::AsFd::as_fd(&sock))?;
    let dir = private_dir()?;
    let name = dir.join("event");
    let bound = SocketAddrUnix::new(&name)
        .and_then(|addr| {
            rustix::net::bind(&sock, &addr)?;
            rustix::net::connect(&sock, &addr)
        })
        .map_err(io::Error::from);
    let _ = std::fs::remove_file(&name);
    let _ = std::fs::remove_dir(&dir);
    bound?;
    Ok(sock)
}

/// A new empty directory of mode 0700 in `/tmp`, under a random name.
fn private_dir() -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut attempts = 0;
    loop {
        let mut random = [0u8; 8];
        super::random_bytes(&mut random)?;
        let dir = std::path::PathBuf::from(format!(
            "/tmp/multiproc-event-{:016x}",
            u64::from_ne_bytes(random)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Makes the event `fd` readable (sends it one byte). Errors are ignored: the likely one, a
/// full buffer (`WouldBlock`), leaves it readable anyway.
pub(crate) fn eventfd_raise(fd: BorrowedFd<'_>) {
    loop {
        match rustix::net::send(fd, &[1], rustix::net::SendFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Makes the event `fd` unreadable (receives every byte sent to it). Errors are ignored:
/// `WouldBlock` ends the draining.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    loop {
        match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 1
    }

    #[test]
    fn the_event_is_raised_by_any_holder_and_drained_by_any() {
        let ev = eventfd().unwrap();
        assert!(!readable(ev.as_fd()), "starts unset");
        eventfd_drain(ev.as_fd());
        assert!(!readable(ev.as_fd()), "draining an unset event is harmless");
        for _ in 0..10_000 {
            eventfd_raise(ev.as_fd()); // past the socket's buffer: still just raised
        }
        let other = ev.try_clone().unwrap(); // as another process's descriptor of it
        assert!(readable(other.as_fd()));
        eventfd_drain(other.as_fd());
        assert!(!readable(ev.as_fd()), "drained for every holder");
        eventfd_raise(other.as_fd());
        assert!(readable(ev.as_fd()));
    }
}
