//! Shared memory: anonymous segments (memfd), named segments (`/dev/shm`), mappings, and the
//! body of the resource-tracker process that unlinks names left behind by dead creators.
//!
//! # Safety
//! [`Mapping`] owns a `MAP_SHARED` region from `mmap` and unmaps it on drop; it hands out only
//! a raw base pointer and length, and the typed layers above (`shared/`, `sync/raw.rs`) decide
//! how the bytes are viewed. [`tracker_main`] runs in a freshly forked child and keeps to
//! async-signal-safe system calls on stack buffers.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rustix::fs::{Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new anonymous shared-memory file of `len` zero bytes (memfd, close-on-exec).
///
/// # References
/// memfd_create(2), ftruncate(2).
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    memfd_named(c"multiproc", len)
}

/// As [`memfd`], with `name` shown for it in `/proc/<pid>/fd` (as `memfd:<name>`).
pub(crate) fn memfd_named(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// Gives the pages of `[start, start + len)` of the file behind `fd` back to the OS; they
/// read as zeros afterwards and the file keeps its size. Best effort: errors are ignored
/// (the memory is then merely kept).
///
/// # References
/// fallocate(2) `FALLOC_FL_PUNCH_HOLE`.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, start: u64, len: u64) {
    let _ = rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        start,
        len,
    );
}

/// The size in bytes of the file behind `fd`, and its identity (device and inode): two
/// descriptors, in any processes, refer to the same shared memory exactly when the identities
/// are equal.
pub(crate) fn fd_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    let st = rustix::fs::fstat(fd)?;
    let len =
        usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok((len, (st.st_dev as u64, st.st_ino as u64)))
}

/// A `MAP_SHARED`, read-write mapping of a whole file; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; what is stored in it and how it is
// accessed concurrently is governed by the typed layers above, which only use atomics or
// lock-protected access.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read-write. `len` must be non-zero.
    ///
    /// # References
    /// mmap(2).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty segment",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps nothing we own;
        // the returned region is owned by the `Mapping` and unmapped exactly once in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The base address (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Faults in the pages of `[offset, offset + len)` for writing with one call, rather than
    /// one fault per page. Best effort: a range outside the mapping is ignored, as are errors
    /// (the pages are then faulted in when written).
    ///
    /// # References
    /// madvise(2) `MADV_POPULATE_WRITE`.
    pub(crate) fn populate_write(&self, offset: usize, len: usize) {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return;
        }
        // SAFETY: `[offset, offset + len)` lies inside this mapping (checked above), which
        // stays mapped while `self` lives; populating only faults pages in, which changes no
        // byte of them.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the region mapped in `new`, and no reference
        // into it outlives `self` (the typed layers borrow from the owner of this mapping).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The longest name accepted for a named segment (bytes, without the leading `/`).
pub(crate) const MAX_NAME: usize = 200;

/// Checks a segment name: 1..=MAX_NAME bytes of `[A-Za-z0-9_.-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid shared memory name {name:?}: use 1 to {MAX_NAME} characters of \
                 A-Z a-z 0-9 _ . - not starting with a dot"
            ),
        ))
    }
}

fn shm_path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

/// Creates the named segment `name` (which must not exist) with `len` zero bytes.
///
/// # References
/// shm_open(3) (on Linux, a file in `/dev/shm` opened with `O_CREAT | O_EXCL | O_NOFOLLOW`).
pub(crate) fn shm_create(name: &str, len: usize) -> io::Result<OwnedFd> {
    check_name(name)?;
    let fd = rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = rustix::fs::unlink(shm_path(name));
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing named segment `name`.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    check_name(name)?;
    Ok(rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes the name `name`; mappings stay valid until unmapped.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::unlink(shm_path(name))?)
}

// ---------------------------------------------------------------------------------------------
// The resource tracker's process body.

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
    fn new() -> io::Result<TrackerCount> {
        let fd = memfd(4096)?;
        Ok(TrackerCount {
            map: Mapping::new(fd.as_fd(), 4096)?,
        })
    }

    fn counter(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the mapping is page aligned, at least 4 bytes long and lives as long as
        // `self`; an AtomicU32 is valid for any bit pattern and all access to the word (here and
        // in the tracker) is atomic.
        unsafe { &*self.map.as_ptr().cast::<std::sync::atomic::AtomicU32>() }
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

const PREFIX: &[u8] = b"/dev/shm/";

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

/// One watched process: its pidfd and how many slots name it.
#[derive(Clone, Copy)]
struct Watch {
    pid: u32,
    pidfd: RawFd,
    refs: u32,
}

const NO_WATCH: Watch = Watch {
    pid: 0,
    pidfd: -1,
    refs: 0,
};

/// The tracker's tables, allocated by the starter before it forks (the tracker must not
/// allocate: its parent may be multi-threaded).
struct Tables {
    slots: Vec<Slot>,
    watches: Vec<Watch>,
    fds: Vec<libc::pollfd>,
}

/// The tracker's state, in memory made before the fork.
struct Tracker<'a> {
    slots: &'a mut [Slot],
    watches: &'a mut [Watch],
    fds: &'a mut [libc::pollfd],
    count: &'a std::sync::atomic::AtomicU32,
}

fn slot_path(slot: &Slot) -> [u8; PREFIX.len() + MAX_NAME + 1] {
    let mut path = [0u8; PREFIX.len() + MAX_NAME + 1];
    path[..PREFIX.len()].copy_from_slice(PREFIX);
    path[PREFIX.len()..PREFIX.len() + slot.len].copy_from_slice(&slot.name[..slot.len]);
    path
}

/// The identity of the file now called `slot.name`, if there is one.
fn stat_slot(slot: &Slot) -> Option<(u64, u64)> {
    let path = slot_path(slot);
    let c = CStr::from_bytes_until_nul(&path).ok()?;
    let st = rustix::fs::lstat(c).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

fn unlink_slot(slot: &Slot) {
    let path = slot_path(slot);
    if let Ok(c) = CStr::from_bytes_until_nul(&path) {
        let _ = rustix::fs::unlink(c);
    }
}

fn close_raw(fd: RawFd) {
    // SAFETY: `fd` is a pidfd this process opened and recorded in exactly one watch, which is
    // being cleared; it is closed once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

impl Tracker<'_> {
    /// Drops one slot's reference to the watch of `pid`, closing the pidfd with the last.
    fn release_watch(&mut self, pid: u32) {
        if let Some(w) = self.watches.iter_mut().find(|w| w.refs > 0 && w.pid == pid) {
            w.refs -= 1;
            if w.refs == 0 {
                if w.pidfd >= 0 {
                    close_raw(w.pidfd);
                }
                *w = NO_WATCH;
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

    /// The creator of slot `i` is gone: unlinks its name if the name still refers to the file
    /// it made, and frees the slot. An unconfirmed slot (the creator died between registering
    /// and confirming) is unlinked if the name exists and no live registration could own the
    /// file; while a live creator's unconfirmed registration of the same name is pending, that
    /// cannot be told, so the slot is kept as an orphan and decided once it is no longer
    /// pending ([`settle`](Self::settle)).
    fn reclaim(&mut self, i: usize) {
        let s = self.slots[i];
        let now = stat_slot(&s);
        let pending = |slots: &[Slot]| {
            slots.iter().enumerate().any(|(j, o)| {
                j != i
                    && o.used
                    && !o.orphan
                    && o.id.is_none()
                    && o.name[..o.len] == s.name[..s.len]
            })
        };
        if s.id.is_none() && now.is_some() && pending(self.slots) {
            if !s.orphan {
                self.release_watch(s.pid);
                self.slots[i].orphan = true;
            }
            return;
        }
        let mine = match (s.id, now) {
            (_, None) => false,
            (Some(id), Some(now)) => id == now,
            (None, Some(now)) => !self
                .slots
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.used && o.id == Some(now)),
        };
        if mine {
            unlink_slot(&s);
        }
        self.free(i);
    }

    /// Decides the orphans whose name is no longer pending.
    fn settle(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].used && self.slots[i].orphan {
                self.reclaim(i);
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
        // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if pidfd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            // The creator is already gone.
            self.slots[i].orphan = true;
            self.reclaim(i);
            return;
        }
        // Out of descriptors, the slot stays unwatched (pidfd -1, never ready): its name is
        // still unlinked when every client is gone.
        if let Some(w) = self.watches.iter_mut().find(|w| w.refs == 0) {
            *w = Watch {
                pid,
                pidfd: pidfd as RawFd,
                refs: 1,
            };
        }
    }

    fn handle(&mut self, rec: &[u8; RECORD]) {
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
            b'C' => {
                if let Some(s) = self.slots.iter_mut().find(|s| {
                    s.used
                        && !s.orphan
                        && s.pid == pid
                        && s.id.is_none()
                        && &s.name[..s.len] == name
                }) {
                    s.id = Some(id);
                }
            }
            b'F' => {
                if let Some(i) = self.slots.iter().position(|s| {
                    s.used
                        && !s.orphan
                        && s.pid == pid
                        && s.id.is_none()
                        && &s.name[..s.len] == name
                }) {
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

    fn run(&mut self, read: RawFd) -> i32 {
        let mut rec = [0u8; RECORD];
        loop {
            self.fds[0] = libc::pollfd {
                fd: read,
                events: libc::POLLIN,
                revents: 0,
            };
            // Poll only up to the last watch in use.
            let hi = self
                .watches
                .iter()
                .rposition(|w| w.refs > 0)
                .map_or(0, |i| i + 1);
            for (i, w) in self.watches[..hi].iter().enumerate() {
                self.fds[i + 1] = libc::pollfd {
                    fd: if w.refs > 0 { w.pidfd } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                };
            }
            // SAFETY: `fds` is a valid array of pollfd of the given length; negative fds are
            // ignored by poll.
            let n = unsafe { libc::poll(self.fds.as_mut_ptr(), (hi + 1) as libc::nfds_t, -1) };
            if n < 0 {
                continue; // EINTR
            }
            for w in 0..hi {
                if self.fds[w + 1].revents == 0 || self.watches[w].refs == 0 {
                    continue;
                }
                let pid = self.watches[w].pid;
                for i in 0..self.slots.len() {
                    let s = &self.slots[i];
                    if s.used && !s.orphan && s.pid == pid {
                        self.reclaim(i);
                    }
                }
            }
            self.settle();
            if self.fds[0].revents == 0 {
                continue;
            }
            // SAFETY: reads into a stack buffer of exactly `RECORD` bytes.
            let got = unsafe { libc::read(read, rec.as_mut_ptr().cast(), RECORD) };
            if got == 0
                || (got < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                // Every client is gone: nothing can attach by name any more. All creators
                // are dead now, so none is pending.
                for i in 0..self.slots.len() {
                    if self.slots[i].used && !self.slots[i].orphan {
                        self.release_watch(self.slots[i].pid);
                        self.slots[i].orphan = true;
                    }
                }
                self.settle();
                return 0;
            }
            if got as usize == RECORD {
                self.handle(&rec);
                self.settle();
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
        watches: vec![NO_WATCH; TRACKER_SLOTS],
        fds: vec![
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0
            };
            TRACKER_SLOTS + 1
        ],
    };
    let (read, write) = super::pipe()?;
    let (ready_r, ready_w) = super::pipe()?;
    let read_raw = read.as_raw_fd();
    let ready_raw = ready_w.as_raw_fd();
    let counter: *const std::sync::atomic::AtomicU32 = count.counter();
    let raw = (
        tables.slots.as_mut_ptr(),
        tables.watches.as_mut_ptr(),
        tables.fds.as_mut_ptr(),
    );
    let mid = super::fork_child(|| {
        // Intermediate child: fork the tracker and leave, so that the tracker is reparented
        // and nobody has to reap it.
        match super::fork_child(|| {
            // SAFETY: the three tables were allocated by the starter before the fork with
            // exactly these lengths and are never freed in this process (it leaves by
            // `_exit`); the counter's page is mapped shared and stays mapped here likewise.
            let mut t = unsafe {
                Tracker {
                    slots: std::slice::from_raw_parts_mut(raw.0, TRACKER_SLOTS),
                    watches: std::slice::from_raw_parts_mut(raw.1, TRACKER_SLOTS),
                    fds: std::slice::from_raw_parts_mut(raw.2, TRACKER_SLOTS + 1),
                    count: &*counter,
                }
            };
            tracker_main(read_raw, ready_raw, &mut t)
        }) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    })?;
    drop(read);
    drop(ready_w);
    let pid = rustix::process::Pid::from_raw(mid).ok_or_else(|| io::Error::other("bad pid"))?;
    let status = loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    drop(tables);
    if status.and_then(|(_, s)| s.exit_status()) != Some(0) {
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
        let mut pfd = [rustix::event::PollFd::new(
            &ready_r,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        match super::read(ready_r.as_fd(), &mut got[have..])? {
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
fn tracker_main(read: RawFd, ready: RawFd, t: &mut Tracker<'_>) -> i32 {
    // SAFETY: plain system calls on descriptors and signal dispositions of this fresh child:
    // detach from the session (no terminal signals), ignore SIGINT/SIGTERM as Python's
    // resource tracker does, tell the starter so (with our pid), move the request pipe to fd
    // 3, point stdio at /dev/null (so no test harness waits on our inherited stdout), raise
    // our descriptor limit (one pidfd per watched creator), and close every other inherited
    // descriptor (so we never keep someone else's pipe open).
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        let pid = (libc::getpid() as u32).to_le_bytes();
        if libc::write(ready, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
            return 1;
        }
        libc::close(ready);
        if read != 3 && libc::dup2(read, 3) < 0 {
            return 1;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9: close them one by one.
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as i32;
            for fd in 4..max {
                libc::close(fd);
            }
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    t.run(3)
}

/// Writes one request to the tracker pipe (atomic: `RECORD < PIPE_BUF`).
pub(crate) fn tracker_send(pipe: &OwnedFd, rec: &[u8; RECORD]) -> io::Result<()> {
    super::write_all(pipe.as_fd(), rec)
}

/// Whether the tracker behind `pipe` is gone: nobody holds the read end any more (a pipe's
/// write end polls as an error then). Never blocks.
pub(crate) fn tracker_gone(pipe: &OwnedFd) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        pipe,
        rustix::event::PollFlags::OUT,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&now)), Ok(n) if n > 0)
        && pfd[0].revents().contains(rustix::event::PollFlags::ERR)
}
