//! `wait()`: block until any of several connections, queues or processes is ready.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::Connection;
use crate::Process;
use crate::sys;

/// Something [`wait`] can wait for: a [`Connection`] with a message, a [`Process`] that
/// ended (its sentinel), a [`Queue`](crate::Queue) with an item, or any readable descriptor.
pub trait Waitable {
    /// Whether the object is ready without looking at its descriptor (for instance, a
    /// connection holding part of a message it already read). Defaults to `false`.
    ///
    /// [`wait`] calls this once per object before it blocks, and
    /// [`done_waiting`](Waitable::done_waiting) once after; an object may register its
    /// interest here (a queue asks to have its descriptor signalled).
    fn ready_now(&self) -> bool {
        false
    }

    /// Called by [`wait`] after each [`ready_now`](Waitable::ready_now). Defaults to nothing.
    fn done_waiting(&self) {}

    /// Whether [`wait`] should look again at least every few tens of milliseconds rather than
    /// trust the descriptor alone (queues do, so that a peer that died between signalling
    /// steps cannot leave a waiter asleep). Defaults to `false`.
    fn needs_recheck(&self) -> bool {
        false
    }

    /// The descriptor that becomes readable when the object is ready; `None` means the
    /// object is ready at once (a closed connection, whose next operation fails at once).
    fn wait_fd(&self) -> Option<BorrowedFd<'_>>;
}

impl Waitable for Connection {
    fn ready_now(&self) -> bool {
        self.has_buffered()
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.reader.as_ref().map(std::os::fd::AsFd::as_fd)
    }
}

impl Waitable for BorrowedFd<'_> {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(*self)
    }
}

impl Waitable for Process {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sentinel().ok()
    }
}

/// Waits until at least one of `objects` is ready or `timeout` passes, and returns the
/// indexes of the ready ones (empty on timeout): Python's `multiprocessing.connection.wait`.
/// `None` waits forever.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::{Process, connection::Waitable, pipe, connection::wait};
///
/// let (a, b) = pipe(true)?;
/// let mut p = Process::new(move || b.send(&"done").unwrap());
/// p.start()?;
/// let ready = wait(&[&a as &dyn Waitable], Some(Duration::from_secs(10)))?;
/// assert_eq!(ready, vec![0]);
/// assert_eq!(a.recv::<String>()?, "done");
/// p.join()?;
/// // The process's sentinel is ready once it ended.
/// assert_eq!(wait(&[&a as &dyn Waitable, &p], Some(Duration::ZERO))?, vec![0, 1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// (Above, `a` is ready at the end because its peer `b` is gone: a receive would report
/// `Disconnected` without blocking.)
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for no objects and no timeout
/// (it would block for ever); [`ErrorKind::Io`](crate::ErrorKind::Io) if polling fails.
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> crate::Result<Vec<usize>> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(Instant::now));
    let recheck = objects.iter().any(|o| o.needs_recheck());
    if objects.is_empty() && deadline.is_none() {
        return Err(crate::Error::with_message(
            crate::ErrorKind::InvalidInput,
            "wait() with no objects and no timeout would block forever",
        ));
    }
    loop {
        let result = wait_once(objects, deadline, recheck);
        for object in objects {
            object.done_waiting();
        }
        let ready = result?;
        if !ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready);
        }
    }
}

/// One round: ask every object, then poll until `deadline` (at most [`RECHECK`] when
/// `recheck`). The caller calls `done_waiting` on every object afterwards.
fn wait_once(
    objects: &[&dyn Waitable],
    deadline: Option<Instant>,
    recheck: bool,
) -> io::Result<Vec<usize>> {
    let mut ready: Vec<usize> = Vec::new();
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut owners: Vec<usize> = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let now = object.ready_now();
        match object.wait_fd() {
            _ if now => ready.push(i),
            None => ready.push(i),
            Some(fd) => {
                fds.push(fd);
                owners.push(i);
            }
        }
    }
    let mut until = if ready.is_empty() {
        deadline
    } else {
        Some(Instant::now())
    };
    if recheck {
        let soon = Instant::now() + RECHECK;
        until = Some(until.map_or(soon, |u| u.min(soon)));
    }
    if !fds.is_empty() {
        let flags = sys::wait_readable(&fds, until)?;
        ready.extend(
            owners
                .iter()
                .zip(flags)
                .filter(|(_, r)| *r)
                .map(|(i, _)| *i),
        );
    } else if ready.is_empty()
        && let Some(u) = until
    {
        std::thread::sleep(u.saturating_duration_since(Instant::now()));
    }
    ready.sort_unstable();
    Ok(ready)
}

/// How often [`wait`] looks again at objects that ask for it.
const RECHECK: Duration = Duration::from_millis(50);
