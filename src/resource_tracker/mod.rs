//! The resource tracker: the process that unlinks named shared-memory segments whose creator
//! died without unlinking them (Python's `resource_tracker`). This file is the client side
//! (registration, restarting a dead tracker); `protocol.rs` holds the request record and the
//! shared registration counter, `server.rs` the tracker process itself; `README.md` beside
//! them says how cleanup is guaranteed when processes are killed.
//!
//! The tracker is started on first use, as a detached grandchild that holds no descriptor of
//! ours but the read end of a pipe; the starter returns only once the tracker has left our
//! session and ignores SIGINT and SIGTERM, so a signal to our process group cannot kill it.
//! Children started by `fork` inherit the pipe and share the tracker; children started by
//! spawn or the forkserver start their own on first use.
//!
//! # Protocol: segments are tracked by file identity, not by name
//! A creator writes `register(pid, name)` *before* creating the segment (so that no crash
//! point leaks the name), then `confirm(pid, name, id)` with the identity (device, inode) of
//! the file it made, or `forget(pid, name)` if the create failed. [`SharedMemory::unlink`]
//! sends `unregister(id)`, which withdraws only the registrations of that very file: a later
//! creator of the same name keeps its registration. The tracker watches every registered pid
//! through a pidfd; when one exits, however it exits, it unlinks each of its names that still
//! refers to the file that pid made (a stat just before the unlink), so a name re-created by
//! someone else since is left alone. A creator that died between register and confirm has its
//! name unlinked if the file exists and no other registration could own it: the tracker stats
//! the name and then reads every request already in its pipe before it decides, since a live
//! creator of that file registered before creating it, but its request may still be unread
//! when the death is noticed (deciding without it unlinked a live holder's segment). When every holder
//! of the pipe's write end is gone, the tracker unlinks what is left in the same way and
//! exits.
//!
//! What remains racy: between the tracker's stat and its unlink, another process could unlink
//! the name and create a new segment under it, which would then lose its name; and a creator
//! killed after a create failed with `AlreadyExists` but before it withdrew its registration
//! may have the name's other owner's segment unlinked if that owner is tracked by another
//! tracker (one started under spawn or the forkserver).
//!
//! # Limit
//! A tracker watches at most [`TRACKER_SLOTS`](protocol::TRACKER_SLOTS) (4096) names at a
//! time for its whole `fork` tree. Clients reserve a place in a counter shared with the
//! tracker before registering, so a creation beyond the limit fails with an error to its
//! creator instead of going unprotected.
//!
//! # When the tracker dies
//! Someone can kill the tracker (it ignores only SIGINT and SIGTERM). A process notices on its
//! next call here (the pipe has no reader left, or a write fails with `EPIPE`), starts a new
//! tracker with a `tracing` warning, and re-registers the names it created and has not
//! unlinked, so their protection comes back. What a death costs: until each process makes its
//! next call, the names it created are unprotected (if it is killed meanwhile, they leak); a
//! `fork` child and its parent each start their own new tracker, since each re-registers only
//! what it created itself; and the old tracker does not unlink anything when it dies.
//! Writes to a dead tracker rely on `SIGPIPE` being ignored, as Rust programs (and
//! multiproc's children) do by default; the liveness check before each write makes the
//! remaining window tiny.
//!
//! [`SharedMemory::unlink`]: crate::shared::SharedMemory::unlink

use std::io;
use std::sync::Mutex;

use crate::sync::owner;
mod protocol;
mod server;

use protocol::{RECORD, TRACKER_SLOTS, TrackerOp, tracker_record};
use server::{TrackerHandle, start_tracker, tracker_gone, tracker_send};

/// A segment this process (or, after a `fork`, its parent: see `pid`) created and has not
/// unlinked.
struct Owned {
    pid: u32,
    name: String,
    id: Option<(u64, u64)>,
}

struct State {
    tracker: Option<TrackerHandle>,
    owned: Vec<Owned>,
    /// The tracker died and no new one has received our names yet (starting it may fail;
    /// the next call tries again).
    lost: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    tracker: None,
    owned: Vec::new(),
    lost: false,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn my_pid() -> u32 {
    owner::ident_pid(owner::process_ident())
}

fn limit_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "the resource tracker already watches {} named segments; unlink some before \
             creating more",
            TRACKER_SLOTS
        ),
    )
}

impl State {
    /// A live tracker: the one we have, or a new one if it died (then this process's own
    /// registrations are sent to the new one).
    fn live(&mut self) -> io::Result<&TrackerHandle> {
        let dead = match &self.tracker {
            None => false,
            Some(t) => tracker_gone(&t.pipe),
        };
        if dead {
            self.lost = true;
            let old = self.tracker.take().map(|t| t.pid);
            tracing::warn!(
                tracker_pid = old,
                "the resource tracker died; starting a new one (names created meanwhile by \
                 processes that have not noticed yet are unprotected)"
            );
        }
        if self.tracker.is_none() {
            // Kept even if re-registering fails below: dropping its pipe would make the new
            // tracker unlink the names already re-registered, which are still in use.
            let t = self.tracker.insert(start_tracker()?);
            let lost = std::mem::take(&mut self.lost);
            if lost && let Err(e) = reregister(&self.owned, t) {
                tracing::warn!(
                    error = %e,
                    "could not re-register every named segment with the new resource \
                     tracker; those left out are not unlinked if this process dies"
                );
            }
        }
        Ok(self.tracker.as_ref().expect("set above"))
    }
}

/// Sends this process's own registrations in `owned` to the new tracker `t`.
fn reregister(owned: &[Owned], t: &TrackerHandle) -> io::Result<()> {
    let me = my_pid();
    for o in owned.iter().filter(|o| o.pid == me) {
        if !t.count.reserve(1) {
            return Err(limit_error());
        }
        tracker_send(
            &t.pipe,
            &tracker_record(TrackerOp::Register, me, (0, 0), &o.name),
        )?;
        if let Some(id) = o.id {
            tracker_send(
                &t.pipe,
                &tracker_record(TrackerOp::Confirm, me, id, &o.name),
            )?;
        }
    }
    Ok(())
}

impl State {
    /// Sends `rec`, restarting the tracker once if it turns out dead.
    fn send(&mut self, rec: &[u8; RECORD], reserve: bool) -> io::Result<()> {
        for attempt in 0..2 {
            let t = self.live()?;
            if reserve && !t.count.reserve(1) {
                return Err(limit_error());
            }
            match tracker_send(&t.pipe, rec) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if reserve {
                        t.count.release(1);
                    }
                    if attempt == 1 || e.kind() != io::ErrorKind::BrokenPipe {
                        return Err(e);
                    }
                    // Dead between the check and the write: `live` restarts it.
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// Asks the tracker to unlink `name` if this process dies before unregistering it; sent
/// before the segment is created.
///
/// # Errors
/// The tracker cannot be started, or already watches its limit of names.
pub(crate) fn register(name: &str) -> io::Result<()> {
    let pid = my_pid();
    let mut st = state();
    st.send(
        &tracker_record(TrackerOp::Register, pid, (0, 0), name),
        true,
    )?;
    st.owned.push(Owned {
        pid,
        name: name.to_owned(),
        id: None,
    });
    Ok(())
}

/// The create of `name` succeeded and made the file `id`.
pub(crate) fn confirm(name: &str, id: (u64, u64)) -> io::Result<()> {
    let pid = my_pid();
    let mut st = state();
    if let Some(o) = st
        .owned
        .iter_mut()
        .find(|o| o.pid == pid && o.id.is_none() && o.name == name)
    {
        o.id = Some(id);
    }
    st.send(&tracker_record(TrackerOp::Confirm, pid, id, name), false)
}

/// Withdraws this process's unconfirmed registration of `name` (its create failed: the name
/// may be someone else's).
pub(crate) fn forget(name: &str) -> io::Result<()> {
    let pid = my_pid();
    let mut st = state();
    if let Some(i) = st
        .owned
        .iter()
        .position(|o| o.pid == pid && o.id.is_none() && o.name == name)
    {
        st.owned.remove(i);
    }
    if st.tracker.is_none() {
        return Ok(());
    }
    st.send(&tracker_record(TrackerOp::Forget, pid, (0, 0), name), false)
}

/// Tells the tracker that the segment `id`, called `name`, was unlinked: every registration of
/// that file (and of no other file of the same name) is withdrawn.
pub(crate) fn unregister(name: &str, id: (u64, u64)) -> io::Result<()> {
    let mut st = state();
    st.owned.retain(|o| o.id != Some(id));
    if st.tracker.is_none() {
        // Never registered anything from this process tree: nothing to tell.
        return Ok(());
    }
    st.send(&tracker_record(TrackerOp::Unregister, 0, id, name), false)
}

/// The pid of the resource tracker this process uses, if it has started or inherited one
/// (Python's `resource_tracker._resource_tracker._pid`): the process that unlinks the names
/// of [`SharedMemory`](crate::shared::SharedMemory) segments whose creator died. It is not a child of
/// this process. If it has died, the next `SharedMemory` call starts a new one (see the
/// [`SharedMemory`](crate::shared::SharedMemory) docs), and this then returns the new pid.
///
/// # Examples
/// ```
/// let shm = multiproc::shared::SharedMemory::create(64)?;
/// let pid = multiproc::resource_tracker_pid().expect("create started a tracker");
/// assert_ne!(pid, std::process::id());
/// shm.unlink()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn resource_tracker_pid() -> Option<u32> {
    state().tracker.as_ref().map(|t| t.pid)
}
