//! The tracker process: started as a detached grandchild, it reads requests from its pipe,
//! watches each registered creator through a pidfd, and unlinks the names a dead creator
//! left behind (see `README.md` beside this file).
//!
//! It is forked from a process that may be multi-threaded, so from the fork on it allocates
//! nothing and takes no lock: its tables are allocated by the starter before the fork, and it
//! reaches the OS only through async-signal-safe wrappers in `sys`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;

use super::protocol::{RECORD, TRACKER_SLOTS, TrackerCount};
use crate::sys::{self, MAX_NAME, PollSet, RawPid};

/// One registration: `pid` created (or is creating) `name`; `id` is the file it made, once
/// confirmed (`None` until then).
#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    /// The creator died before the slot could be decided (see `Tracker::reclaim`); it holds no
    /// watch.
    orphan: bool,
    pid: u32,
    id: Option<(u64, u64)>,
    len: usize,
    name: [u8; MAX_NAME],
}

const EMPTY_SLOT: Slot = Slot {
    used: false,
    orphan: false,
    pid: 0,
    id: None,
    len: 0,
    name: [0; MAX_NAME],
};

/// One watched process: its pidfd (`None` if none could be opened: the slots stay
/// unwatched) and how many slots name it.
#[derive(Default)]
struct Watch {
    pid: u32,
    pidfd: Option<OwnedFd>,
    refs: u32,
}

/// The tracker's tables, allocated by the starter before it forks (the tracker must not
/// allocate: its parent may be multi-threaded).
struct Tables {
    slots: Vec<Slot>,
    watches: Vec<Watch>,
    /// Place 0: the request pipe; place `i + 1`: watch `i`.
    poll: PollSet,
}

/// The tracker's state, in memory made before the fork.
struct Tracker<'a> {
    slots: &'a mut [Slot],
    watches: &'a mut [Watch],
    poll: &'a mut PollSet,
    count: &'a AtomicU32,
    /// Every client is gone: a read found end of file.
    eof: bool,
    /// How many requests have been handled (so that `settle` knows whether a pass changed
    /// the tables).
    handled: u64,
}

/// The identity of the file now called `slot.name`, if there is one.
fn stat_slot(slot: &Slot) -> Option<(u64, u64)> {
    sys::shm_identity(&slot.name[..slot.len])
}

fn unlink_slot(slot: &Slot) {
    sys::shm_remove(&slot.name[..slot.len]);
}

impl Tracker<'_> {
    /// Drops one slot's reference to the watch of `pid`, closing the pidfd with the last.
    fn release_watch(&mut self, pid: u32) {
        if let Some(w) = self.watches.iter_mut().find(|w| w.refs > 0 && w.pid == pid) {
            w.refs -= 1;
            if w.refs == 0 {
                // Closes the pidfd, if any.
                *w = Watch::default();
            }
        }
    }

    /// Lets slot `i` go: drops its watch reference and gives its place back to the clients.
    fn free(&mut self, i: usize) {
        let pid = self.slots[i].pid;
        self.slots[i].used = false;
        if !self.slots[i].orphan {
            self.release_watch(pid);
        }
        self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads and handles every request already in the pipe, without blocking. A name a
    /// process created since our last read was registered before it was created, so after a
    /// stat followed by this drain, every creator of the file the stat saw is in the tables
    /// (or has withdrawn, unlinked or been reclaimed since).
    fn drain(&mut self, read: BorrowedFd<'_>) {
        let mut rec = [0u8; RECORD];
        while !self.eof {
            match sys::read(read, &mut rec) {
                Ok(n) if n == RECORD => self.handle(&rec),
                // Every client is gone.
                Ok(0) => self.eof = true,
                // Empty (`WouldBlock`), or a short record, which atomic writes never make.
                Ok(_) | Err(_) => return,
            }
        }
    }

    /// The creator of slot `i` is gone: unlinks its name if the name still refers to the file
    /// it made, and frees the slot. An unconfirmed slot (the creator died between registering
    /// and confirming) is unlinked if the name exists and no registration could own the file:
    /// the name is stat'ed, then the pipe is drained, so that a live creator that registered
    /// the name before creating it is seen even if its requests were still unread when the
    /// death was noticed. While a live creator's unconfirmed registration of the same name is
    /// pending, that cannot be told, so the slot is kept as an orphan and decided once it is
    /// no longer pending ([`settle`](Self::settle)).
    fn reclaim(&mut self, i: usize, read: BorrowedFd<'_>) {
        if !self.slots[i].orphan {
            self.release_watch(self.slots[i].pid);
            self.slots[i].orphan = true;
        }
        let s = self.slots[i];
        let Some(now) = stat_slot(&s) else {
            self.free(i);
            return;
        };
        if s.id.is_none() {
            self.drain(read);
        }
        let pending = self.slots.iter().enumerate().any(|(j, o)| {
            j != i && o.used && !o.orphan && o.id.is_none() && o.name[..o.len] == s.name[..s.len]
        });
        if s.id.is_none() && pending {
            return;
        }
        let mine = match s.id {
            Some(id) => id == now,
            None => !self
                .slots
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.used && o.id == Some(now)),
        };
        // The name may have changed hands during the drain: unlink only the file seen.
        if mine && stat_slot(&s) == Some(now) {
            unlink_slot(&s);
        }
        self.free(i);
    }

    /// Decides the orphans whose name is no longer pending. The drains inside may make new
    /// orphans (a registration from a process already gone), so passes repeat until one
    /// handles no request.
    fn settle(&mut self, read: BorrowedFd<'_>) {
        loop {
            let before = self.handled;
            for i in 0..self.slots.len() {
                if self.slots[i].used && self.slots[i].orphan {
                    self.reclaim(i, read);
                }
            }
            if self.handled == before {
                return;
            }
        }
    }

    /// The watched process `pid` is gone: its slots become orphans, decided by `settle`.
    fn bury(&mut self, pid: u32) {
        for i in 0..self.slots.len() {
            if self.slots[i].used && !self.slots[i].orphan && self.slots[i].pid == pid {
                self.release_watch(pid);
                self.slots[i].orphan = true;
            }
        }
    }

    fn register(&mut self, pid: u32, name: &[u8]) {
        let Some(i) = self.slots.iter().position(|s| !s.used) else {
            // Cannot happen while clients reserve places first; a client that did not still
            // gets its name unlinked at the end, when every client is gone.
            return;
        };
        let s = &mut self.slots[i];
        s.used = true;
        s.orphan = false;
        s.pid = pid;
        s.id = None;
        s.len = name.len();
        s.name[..name.len()].copy_from_slice(name);
        if let Some(w) = self.watches.iter_mut().find(|w| w.refs > 0 && w.pid == pid) {
            w.refs += 1;
            return;
        }
        let pidfd = match sys::pidfd_open_if_alive(pid as RawPid) {
            Ok(Some(fd)) => Some(fd),
            Ok(None) => {
                // The creator is already gone: `settle` decides the slot.
                self.slots[i].orphan = true;
                return;
            }
            // Out of descriptors, the slot stays unwatched (never ready): its name is still
            // unlinked when every client is gone.
            Err(_) => None,
        };
        if let Some(w) = self.watches.iter_mut().find(|w| w.refs == 0) {
            *w = Watch {
                pid,
                pidfd,
                refs: 1,
            };
        }
    }

    /// The unconfirmed slot of `pid` for `name`: a live one first, else an orphan.
    fn own_pending(&self, pid: u32, name: &[u8]) -> Option<usize> {
        let matches = |s: &Slot, orphan: bool| {
            s.used
                && s.orphan == orphan
                && s.pid == pid
                && s.id.is_none()
                && &s.name[..s.len] == name
        };
        (self.slots.iter().position(|s| matches(s, false)))
            .or_else(|| self.slots.iter().position(|s| matches(s, true)))
    }

    fn handle(&mut self, rec: &[u8; RECORD]) {
        self.handled = self.handled.wrapping_add(1);
        let len = (rec[1] as usize).min(MAX_NAME);
        let pid = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rec[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let id = (word(8), word(16));
        let name = &rec[24..24 + len];
        match rec[0] {
            b'R' => self.register(pid, name),
            // A confirm or forget may come from a process already buried (its last requests
            // were unread when its death was seen): its orphan slot is matched if no live slot
            // is (a live one would be a later process given the same pid).
            b'C' => {
                if let Some(i) = self.own_pending(pid, name) {
                    self.slots[i].id = Some(id);
                }
            }
            b'F' => {
                if let Some(i) = self.own_pending(pid, name) {
                    self.free(i);
                }
            }
            b'U' => {
                for i in 0..self.slots.len() {
                    if self.slots[i].used && self.slots[i].id == Some(id) {
                        self.free(i);
                    }
                }
            }
            _ => {}
        }
    }

    /// Serves requests from `read`, the request pipe (non-blocking), until every client is
    /// gone.
    fn run(&mut self, read: BorrowedFd<'_>) -> i32 {
        loop {
            self.poll.set(0, Some(read));
            // Poll only up to the last watch in use.
            let hi = self
                .watches
                .iter()
                .rposition(|w| w.refs > 0)
                .map_or(0, |i| i + 1);
            for (i, w) in self.watches[..hi].iter().enumerate() {
                let fd = if w.refs > 0 { w.pidfd.as_ref() } else { None };
                self.poll.set(i + 1, fd.map(|fd| fd.as_fd()));
            }
            // A creator watched without a descriptor (the portable layer has none for a process
            // that is not our child; or we ran out) is checked with `kill(pid, 0)` ten times a
            // second instead.
            let unwatched = self.watches[..hi]
                .iter()
                .any(|w| w.refs > 0 && w.pidfd.is_none());
            let waited = if unwatched {
                self.poll.wait_timeout(hi + 1, 100)
            } else {
                self.poll.wait(hi + 1)
            };
            if waited.is_err() {
                continue; // EINTR
            }
            for w in 0..hi {
                let gone = self.watches[w].pidfd.is_none() && !sys::pid_exists(self.watches[w].pid);
                if (self.poll.ready(w + 1) || gone) && self.watches[w].refs > 0 {
                    let pid = self.watches[w].pid;
                    self.bury(pid);
                }
            }
            self.drain(read);
            self.settle(read);
            if self.eof {
                // Every client is gone: nothing can attach by name any more. All creators
                // are dead now, so none is pending.
                for i in 0..self.slots.len() {
                    if self.slots[i].used && !self.slots[i].orphan {
                        let pid = self.slots[i].pid;
                        self.bury(pid);
                    }
                }
                self.settle(read);
                return 0;
            }
        }
    }
}

/// A running tracker, as its starter sees it.
#[derive(Debug)]
pub(crate) struct TrackerHandle {
    /// The write end of the request pipe.
    pub(crate) pipe: OwnedFd,
    /// The tracker's pid (it is not our child: a detached grandchild).
    pub(crate) pid: u32,
    /// The registration counter shared with the tracker.
    pub(crate) count: TrackerCount,
}

/// How long the starter waits for a new tracker to say it is immune to the group's signals.
const TRACKER_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the tracker: forks a detached grandchild that reads requests from the returned
/// pipe and unlinks each registered name when its creator dies, or all of them when every
/// holder of the pipe's write end has exited. Returns once the tracker has left our session
/// and ignores SIGINT and SIGTERM (it says so, with its pid, on a close-on-exec pipe), so that
/// a signal to our process group right after this call cannot kill it.
pub(crate) fn start_tracker() -> io::Result<TrackerHandle> {
    let count = TrackerCount::new()?;
    let mut tables = Tables {
        slots: vec![EMPTY_SLOT; TRACKER_SLOTS],
        watches: std::iter::repeat_with(Watch::default)
            .take(TRACKER_SLOTS)
            .collect(),
        poll: PollSet::new(TRACKER_SLOTS + 1),
    };
    let (read, write) = sys::pipe()?;
    let (ready_r, ready_w) = sys::pipe()?;
    let counter = count.counter();
    let mid = sys::fork_child(|| {
        // Intermediate child: fork the tracker and leave, so that the tracker is reparented
        // and nobody has to reap it.
        match sys::fork_child(|| {
            // The tables and the counter's page were made by the starter before the fork and
            // are never freed in this process (it leaves by `_exit`).
            let mut t = Tracker {
                slots: &mut tables.slots,
                watches: &mut tables.watches,
                poll: &mut tables.poll,
                count: counter,
                eof: false,
                handled: 0,
            };
            tracker_main(read.as_fd(), ready_w.as_fd(), &mut t)
        }) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    })?;
    drop(read);
    drop(ready_w);
    let status = sys::wait_child(mid)?;
    drop(tables);
    if status != 0 {
        return Err(io::Error::other(
            "could not start the resource tracker process",
        ));
    }
    // The tracker writes its pid once it is immune, then closes its copy; EOF first means it
    // died before that.
    let mut got = [0u8; 4];
    let mut have = 0;
    let deadline = std::time::Instant::now() + TRACKER_READY;
    while have < got.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the resource tracker did not start in time",
            ));
        }
        if !sys::wait_readable(&[ready_r.as_fd()], Some(deadline))?[0] {
            continue;
        }
        match sys::read(ready_r.as_fd(), &mut got[have..])? {
            0 => {
                return Err(io::Error::other("the resource tracker died while starting"));
            }
            n => have += n,
        }
    }
    Ok(TrackerHandle {
        pipe: write,
        pid: u32::from_le_bytes(got),
        count,
    })
}

/// The tracker's body. Async-signal-safe: no allocation, no locks.
fn tracker_main(read: BorrowedFd<'_>, ready: BorrowedFd<'_>, t: &mut Tracker<'_>) -> i32 {
    // Leaves our session, ignores SIGINT/SIGTERM, tells the starter so, and keeps only the
    // request pipe (at fd 3) and /dev/null as stdio.
    let Some(requests) = sys::detach_daemon(ready, read) else {
        return 1;
    };
    // Non-blocking, so that the pipe can be drained without waiting.
    if sys::set_nonblocking(requests.as_fd()).is_err() {
        return 1;
    }
    t.run(requests.as_fd())
}

/// Writes one request to the tracker pipe (atomic: `RECORD < PIPE_BUF`).
pub(crate) fn tracker_send(pipe: &OwnedFd, rec: &[u8; RECORD]) -> io::Result<()> {
    sys::write_all(pipe.as_fd(), rec)
}

/// Whether the tracker behind `pipe` is gone: nobody holds the read end any more. Never
/// blocks.
pub(crate) fn tracker_gone(pipe: &OwnedFd) -> bool {
    sys::pipe_reader_gone(pipe.as_fd())
}
