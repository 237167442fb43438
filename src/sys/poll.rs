//! Waiting on many descriptors at once, for reading and for writing: the pool's event loop,
//! and the resource tracker's wait on its request pipe and the processes it watches.
//!
//! # Safety
//! `poll(2)` goes through rustix's safe wrapper, except in [`PollSet::wait`], which passes
//! its own array of plain `pollfd`s, valid and writable for the whole call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};

/// What a caller waits for on one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// What `poll_fds` found on one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Readable, or at end of file / hung up / in error (a read will not block).
    pub(crate) read: bool,
    /// Writable, or the reader is gone (a write will not block; it may fail with `EPIPE`).
    pub(crate) write: bool,
}

/// Waits until one of `fds` is ready as asked, or `deadline` passes (`None`: no deadline).
/// Interrupted waits are resumed. All-default readiness means the deadline passed.
///
/// A descriptor asked for neither reading nor writing is not watched at all: `poll` reports
/// hang-up and errors whatever it is asked, so a pipe whose other end is gone would otherwise
/// end every wait at once (the pool's task pipe to a worker that is exiting, until its pidfd
/// says it has ended), and the caller would spin.
///
/// # References
/// poll(2).
pub(crate) fn poll_fds(
    fds: &[(BorrowedFd<'_>, Interest)],
    deadline: Option<Instant>,
) -> io::Result<Vec<Readiness>> {
    let watched: Vec<usize> = (0..fds.len())
        .filter(|&i| fds[i].1.read || fds[i].1.write)
        .collect();
    let mut pollfds: Vec<PollFd<'_>> = watched
        .iter()
        .map(|&i| {
            let (fd, want) = &fds[i];
            let mut flags = PollFlags::empty();
            if want.read {
                flags |= PollFlags::IN;
            }
            if want.write {
                flags |= PollFlags::OUT;
            }
            PollFd::new(fd, flags)
        })
        .collect();
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut ready = vec![Readiness::default(); fds.len()];
    for (p, &i) in pollfds.iter().zip(&watched) {
        let want = fds[i].1;
        let r = p.revents();
        let broken = r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
        ready[i] = Readiness {
            read: want.read && (r.contains(PollFlags::IN) || broken),
            write: want.write && (r.contains(PollFlags::OUT) || broken),
        };
    }
    Ok(ready)
}

/// Writes as much of `buf` as fits without blocking on a non-blocking descriptor; returns the
/// bytes written (0 when full).
pub(crate) fn write_some(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::io::write(fd, buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks for a pipe buffer of `size` bytes (Linux's default is 64 KiB), so that large messages
/// cross in fewer wake-ups. Best effort: the kernel's limits, or a descriptor that is not a
/// pipe, leave it as it was.
///
/// # References
/// fcntl(2) `F_SETPIPE_SZ`; pipe(7) on `pipe-max-size` and `pipe-user-pages-soft`.
/// Elsewhere pipes have no settable size, and this is a no-op.
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::pipe::fcntl_setpipe_size(fd, size);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (fd, size);
}

/// Asks for a socket send buffer of `size` bytes, so that a large message streams through a
/// Unix socket in fewer, larger steps. Best effort: the kernel caps it at `wmem_max` (212992
/// bytes by default; some systems raise it), and a refusal leaves the buffer as it was.
///
/// # References
/// socket(7) `SO_SNDBUF`; unix(7) (a Unix stream socket's in-flight bytes count against the
/// sender's buffer).
pub(crate) fn set_send_buffer(fd: BorrowedFd<'_>, size: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, size);
}

/// Whether nobody holds the read end of the pipe whose write end is `fd` any more (a pipe's
/// write end polls as an error then). Never blocks.
///
/// # References
/// poll(2) (`POLLERR` on a pipe's write end).
pub(crate) fn pipe_reader_gone(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::new(&fd, PollFlags::OUT)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&now)), Ok(n) if n > 0)
        && pfd[0].revents().contains(PollFlags::ERR)
}

/// A fixed number of places, each watching one descriptor for reading or nothing, polled
/// together. Made before a `fork` so that a child that must not allocate (the resource
/// tracker) can poll as many descriptors as it likes.
///
/// A place holds a descriptor's number, not a borrow of it: the caller keeps each descriptor
/// open while it is in a place (polling a closed number is harmless, it reports `POLLNVAL`).
#[derive(Debug)]
pub(crate) struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// `len` places, all empty.
    pub(crate) fn new(len: usize) -> PollSet {
        let empty = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        PollSet {
            fds: vec![empty; len],
        }
    }

    /// Watches `fd` for reading in place `i`, or nothing if `None`. Allocates nothing.
    pub(crate) fn set(&mut self, i: usize, fd: Option<BorrowedFd<'_>>) {
        self.fds[i] = libc::pollfd {
            fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
    }

    /// Waits, with no deadline, until a descriptor in the first `n` places is readable (or
    /// hung up, or in error); returns how many are. Allocates nothing.
    ///
    /// # References
    /// poll(2).
    pub(crate) fn wait(&mut self, n: usize) -> io::Result<usize> {
        let fds = &mut self.fds[..n];
        // SAFETY: `fds` is a valid, writable array of exactly `fds.len()` `pollfd`s for the
        // whole call; negative descriptors are ignored by poll.
        let got = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// As [`wait`](PollSet::wait), for at most `timeout_ms` milliseconds (0 ready: timed out).
    pub(crate) fn wait_timeout(&mut self, n: usize, timeout_ms: i32) -> io::Result<usize> {
        let fds = &mut self.fds[..n];
        // SAFETY: as in `wait`.
        let got = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// Whether the last [`wait`](PollSet::wait) found place `i` ready.
    pub(crate) fn ready(&self, i: usize) -> bool {
        self.fds[i].revents != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn poll_set_reports_the_readable_place_and_ignores_empty_ones() {
        let (r, w) = crate::sys::pipe().unwrap();
        let (quiet_r, _quiet_w) = crate::sys::pipe().unwrap();
        let mut set = PollSet::new(3);
        set.set(0, Some(quiet_r.as_fd()));
        set.set(1, None);
        set.set(2, Some(r.as_fd()));
        crate::sys::write_all(w.as_fd(), &[1]).unwrap();
        assert_eq!(set.wait(3).unwrap(), 1);
        assert!(!set.ready(0) && !set.ready(1) && set.ready(2));
    }

    #[test]
    fn pipe_reader_gone_once_the_read_end_closes() {
        let (r, w) = crate::sys::pipe().unwrap();
        assert!(!pipe_reader_gone(w.as_fd()));
        drop(r);
        assert!(pipe_reader_gone(w.as_fd()));
    }
}
