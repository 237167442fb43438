//! What clients and the tracker share: the fixed-size request record sent over the tracker's
//! pipe, and the registration counter that keeps the tracker's tables from overflowing.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU32;

use crate::sys::{self, MAX_NAME, Mapping};

/// Size of one request on the tracker pipe; smaller than `PIPE_BUF`, so writes are atomic and
/// requests from several processes never interleave.
pub(crate) const RECORD: usize = 24 + MAX_NAME;

/// How many names one tracker watches at a time. The clients reserve a place in a counter
/// shared with the tracker ([`TrackerCount`]) before each registration, so that a
/// registration beyond this is refused to its creator, never dropped by the tracker.
pub(crate) const TRACKER_SLOTS: usize = 4096;

/// A tracker request. `R`: `pid` is about to create `name` (sent before the create, so that no
/// crash point leaks it). `C`: that creation succeeded and made the file `id`. `F`: that
/// creation failed (withdraw the unconfirmed registration of `pid`). `U`: the segment `id` was
/// unlinked (withdraw every registration of exactly that file, whoever made it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrackerOp {
    Register,
    Confirm,
    Forget,
    Unregister,
}

/// Encodes a request: op, name length, pid, device, inode, name.
pub(crate) fn tracker_record(op: TrackerOp, pid: u32, id: (u64, u64), name: &str) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    rec[0] = match op {
        TrackerOp::Register => b'R',
        TrackerOp::Confirm => b'C',
        TrackerOp::Forget => b'F',
        TrackerOp::Unregister => b'U',
    };
    rec[1] = name.len() as u8;
    rec[4..8].copy_from_slice(&pid.to_le_bytes());
    rec[8..16].copy_from_slice(&id.0.to_le_bytes());
    rec[16..24].copy_from_slice(&id.1.to_le_bytes());
    rec[24..24 + name.len()].copy_from_slice(name.as_bytes());
    rec
}

/// The number of registrations a tracker holds or is about to receive, in a shared page that
/// the tracker and every client (the starter and its `fork` children) map: clients add before
/// they register, the tracker subtracts as it lets registrations go.
#[derive(Debug)]
pub(crate) struct TrackerCount {
    map: Mapping,
}

impl TrackerCount {
    pub(super) fn new() -> io::Result<TrackerCount> {
        let fd = sys::memfd(4096)?;
        Ok(TrackerCount {
            map: Mapping::new(fd.as_fd(), 4096)?,
        })
    }

    pub(super) fn counter(&self) -> &AtomicU32 {
        self.map
            .atomic_u32(0)
            .expect("a page-aligned mapping of 4096 bytes holds a word at 0")
    }

    /// Reserves `n` places; false (and nothing reserved) if that would pass [`TRACKER_SLOTS`].
    pub(crate) fn reserve(&self, n: u32) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.counter()
            .fetch_update(SeqCst, SeqCst, |c| {
                c.checked_add(n).filter(|&t| t as usize <= TRACKER_SLOTS)
            })
            .is_ok()
    }

    /// Gives back `n` places reserved for registrations that were never sent.
    pub(crate) fn release(&self, n: u32) {
        self.counter()
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }
}
