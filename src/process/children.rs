//! The parent's side of a started child: its pidfd, how it ended, and the process-wide list
//! behind `active_children()` and the exit-time join.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use super::current;
use crate::sys::{self, Kill, RawPid};

/// A child process this process started and has not necessarily reaped.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: RawPid,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// Readable once the child has exited: Python's `sentinel`.
    pidfd: OwnedFd,
    /// Python's `exitcode` once the child was reaped. The lock also serialises reaping.
    exitcode: Mutex<Option<i32>>,
}

impl Child {
    pub(crate) fn new(pid: RawPid, pidfd: OwnedFd, name: String, daemon: bool) -> Self {
        Child {
            pid,
            name,
            daemon,
            pidfd,
            exitcode: Mutex::new(None),
        }
    }

    pub(crate) fn sentinel(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The exit code if the child has ended, reaping it if needed. Never blocks.
    pub(crate) fn poll(&self) -> io::Result<Option<i32>> {
        let mut code = self.exitcode.lock().unwrap_or_else(|e| e.into_inner());
        if code.is_none() {
            *code = sys::try_reap(self.pidfd.as_fd())?;
            if let Some(c) = *code {
                tracing::info!(pid = self.pid, name = %self.name, exitcode = c, "process exited");
            }
        }
        Ok(*code)
    }

    /// Waits until the child ends or `deadline` passes; `None` waits forever.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<Option<i32>> {
        loop {
            if let Some(code) = self.poll()? {
                return Ok(Some(code));
            }
            let ready = sys::wait_readable(&[self.pidfd.as_fd()], deadline)?;
            if !ready[0] && deadline.is_some_and(|d| Instant::now() >= d) {
                return self.poll();
            }
        }
    }

    /// Sends SIGTERM or SIGKILL, unless the child was already reaped.
    pub(crate) fn signal(&self, sig: Kill) -> io::Result<()> {
        let code = self.exitcode.lock().unwrap_or_else(|e| e.into_inner());
        if code.is_none() {
            tracing::info!(pid = self.pid, name = %self.name, signal = ?sig, "signalling process");
            sys::pidfd_signal(self.pidfd.as_fd(), sig)?;
        }
        Ok(())
    }
}

/// Records a newly started child so that `active_children()` and the exit-time join see it.
pub(crate) fn register(child: &Arc<Child>) {
    ensure_exit_handler();
    let mut children = current::current().children();
    // Reap what ended meanwhile (Python's `_cleanup` on every start), so dropped processes
    // do not linger as zombies.
    children.retain(|c| matches!(c.poll(), Ok(None)));
    children.push(Arc::clone(child));
}

/// Drops a reaped child from the list, so its pidfd closes with the last handle.
pub(crate) fn forget(child: &Arc<Child>) {
    current::current()
        .children()
        .retain(|c| !Arc::ptr_eq(c, child));
}

/// The started children still running, reaping (and forgetting) those that ended.
pub(crate) fn active() -> Vec<Arc<Child>> {
    let mut children = current::current().children();
    children.retain(|c| matches!(c.poll(), Ok(None)));
    children.clone()
}

/// Python's `_exit_function`: run the `at_exit` hooks, terminate daemonic children, then join
/// every child.
///
/// Runs at normal exit of the main process, and at the end of every child's bootstrap.
pub(crate) fn shutdown() {
    // Python runs the finalizers that have an exit priority first, so that they may stop the
    // children about to be joined.
    current::run_exit_hooks();
    for child in active() {
        if child.daemon {
            let _ = child.signal(Kill::Term);
        }
    }
    for child in active() {
        tracing::info!(pid = child.pid, name = %child.name, "joining child at exit");
        let _ = child.wait(None);
    }
    current::current().children().clear();
    // What captured children wrote before they ended is printed before this process ends.
    super::output::flush(super::output::FLUSH_TIMEOUT);
}

extern "C" fn shutdown_at_exit() {
    // A panic must not unwind into libc's exit machinery.
    let _ = std::panic::catch_unwind(shutdown);
}

pub(crate) fn ensure_exit_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = sys::at_exit(shutdown_at_exit) {
            tracing::warn!(error = %e, "could not register exit handler; children will not be joined at exit");
        }
    });
}

/// A running child of this process, as listed by [`active_children`].
#[derive(Debug, Clone)]
pub struct ActiveChild {
    child: Arc<Child>,
}

impl ActiveChild {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid as u32
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.child.name
    }

    /// Whether the child is daemonic.
    pub fn daemon(&self) -> bool {
        self.child.daemon
    }

    /// Whether the child still runs.
    pub fn is_alive(&self) -> bool {
        matches!(self.child.poll(), Ok(None))
    }

    /// Sends SIGTERM to the child.
    ///
    /// # Errors
    /// An OS error.
    pub fn terminate(&self) -> crate::Result<()> {
        Ok(self.child.signal(Kill::Term)?)
    }

    /// Sends SIGKILL to the child.
    ///
    /// # Errors
    /// An OS error.
    pub fn kill(&self) -> crate::Result<()> {
        Ok(self.child.signal(Kill::Kill)?)
    }

    /// Sends SIGINT to the child (see [`Process::interrupt`](crate::Process::interrupt)).
    ///
    /// # Errors
    /// An OS error.
    pub fn interrupt(&self) -> crate::Result<()> {
        Ok(self.child.signal(Kill::Int)?)
    }
}

/// The children of this process that are still running, as Python's `active_children()`;
/// finished children are reaped on the way.
///
/// # Examples
/// ```
/// use std::time::Duration;
///
/// let mut p = multiproc::Process::new(|| std::thread::sleep(Duration::from_secs(5)));
/// p.start()?;
/// assert!(multiproc::active_children().iter().any(|c| Some(c.pid()) == p.pid()));
/// p.kill()?;
/// p.join()?;
/// assert!(multiproc::active_children().is_empty());
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn active_children() -> Vec<ActiveChild> {
    active()
        .into_iter()
        .map(|child| ActiveChild { child })
        .collect()
}
