//! Waiting on many descriptors at once, for reading and for writing: the pool's event loop.
//!
//! # Safety
//! No `unsafe` here: `poll(2)` goes through rustix's safe wrapper.

use std::io;
use std::os::fd::BorrowedFd;
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
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, size);
}
