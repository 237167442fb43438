//! The client side of the resource tracker: the process that unlinks named shared-memory
//! segments whose creator died without unlinking them (Python's `resource_tracker`).
//!
//! The tracker is started on first use, as a detached grandchild that holds no descriptor of
//! ours but the read end of a pipe. Each process that creates a named segment writes
//! `register(pid, name)` to the pipe *before* creating it (so that no crash point leaks the
//! name), and `unregister(name)` when it is unlinked. The tracker watches every registered pid
//! through a pidfd and unlinks the names of each pid that exits, however it exits; when every
//! holder of the pipe's write end is gone it unlinks whatever is left and exits. Children
//! started by `fork` inherit the pipe and share the tracker.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use crate::sync::owner;
use crate::sys;

static PIPE: OnceLock<OwnedFd> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());

fn pipe() -> io::Result<&'static OwnedFd> {
    if let Some(p) = PIPE.get() {
        return Ok(p);
    }
    let _once = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = PIPE.get() {
        return Ok(p);
    }
    let fd = sys::start_tracker()?;
    Ok(PIPE.get_or_init(|| fd))
}

/// Asks the tracker to unlink `name` when this process exits, unless unregistered first.
pub(crate) fn register(name: &str) -> io::Result<()> {
    let pid = owner::ident_pid(owner::process_ident());
    sys::tracker_send(pipe()?, &sys::tracker_record(b'R', pid, name))
}

/// Withdraws this process's registration of `name` (its create failed: the name may be
/// someone else's).
pub(crate) fn forget(name: &str) -> io::Result<()> {
    let pid = owner::ident_pid(owner::process_ident());
    match PIPE.get() {
        Some(p) => sys::tracker_send(p, &sys::tracker_record(b'F', pid, name)),
        None => Ok(()),
    }
}

/// Tells the tracker that `name` was unlinked.
pub(crate) fn unregister(name: &str) -> io::Result<()> {
    match PIPE.get() {
        Some(p) => sys::tracker_send(p, &sys::tracker_record(b'U', 0, name)),
        // Never registered anything from this process tree: nothing to tell.
        None => Ok(()),
    }
}
