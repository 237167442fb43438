//! The shared-memory ring behind `Queue`: a memfd holding a header page and a byte ring of
//! frames, with one robust lock for producers and one for consumers (the crate's own
//! [`RawLock`], see `src/sync/README.md`), and futex words for waiting.
//!
//! The protocol (header layout, the put and get paths, what each side reads without a lock,
//! wrap and restart marks, give-back of memory, the `wait()` event descriptor) and the
//! argument that no process can wedge the others by dying at any instruction are in
//! `README.md` beside this file, which names the functions below.
//!
//! Every offset and count read from the header is checked before it is used (another process
//! may have written garbage): a check that fails is an `InvalidData` error, never a panic.
//!
//! # Safety
//! The mapping is `MAP_SHARED` memory that other processes write. Every shared field is an
//! atomic or sits behind a lock; ring bytes are only touched through raw pointer copies or
//! slices of free space or of a published frame, within ranges checked against the ring's
//! size.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::raw::{Acquired, RawLock, WAKE_ALL};
use crate::sys::{self, Mapping};

const MAGIC: u64 = 0x6d70_7175_6575_6536; // "mpqueue6"
const PAGE: usize = 4096;
/// A frame whose length word is this is a wrap marker: the next frame is at offset 0.
const WRAP: u32 = u32::MAX;
/// Frames go back to offset 0 once the write position passes this, if there is room there,
/// so a queue that keeps up stays within a few warm pages.
const SOFT_WRAP: u32 = 4 << 20;
/// After the queue drains, memory beyond this offset is given back to the OS.
const KEEP: u32 = 128 << 20;
/// Frames at least this large have fresh ring pages populated in one call, not faulted in.
const POPULATE: usize = 64 * 1024;

#[repr(C, align(64))]
struct Line<T>(T);

/// The header page. Field order is fixed (`repr(C)`); every process maps the same bytes.
#[repr(C)]
struct Header {
    magic: Line<(u64, u32, u32)>, // magic, capacity, maxsize
    /// Held by the producer putting a frame: it guards `prod` and the free space.
    put_lock: Line<RawLock>,
    /// Held by the consumer taking a frame: it guards `cons` and the frame at the head.
    get_lock: Line<RawLock>,
    /// Write offset (low 32 bits) and number of puts (high 32 bits), changed by one store
    /// under `put_lock`.
    prod: Line<AtomicU64>,
    /// Read offset (low 32 bits) and number of gets (high 32 bits), changed by one store
    /// under `get_lock`.
    cons: Line<AtomicU64>,
    /// Futex words: bumped when an item arrives / room appears / tasks finish, with counts
    /// of sleepers so that nobody makes a system call when nobody sleeps.
    words: Line<Words>,
    /// Marks written once and read often (on a line of their own, so reading them costs
    /// nobody a cache miss).
    flags: Line<Flags>,
}

#[repr(C)]
struct Flags {
    /// Set (never cleared) by `Queue::shutdown`, under `put_lock`: every put that takes
    /// the lock after sees it, so no item is added once it is set.
    shut_down: AtomicU32,
    /// Set (never cleared) once a second handle of the queue has been made: from then on, a
    /// blocked call whose other side is gone gives up at once (see `Queue`'s module docs,
    /// "When a get gives up").
    shared: AtomicU32,
}

#[repr(C)]
pub(crate) struct Words {
    pub(crate) not_empty: AtomicU32,
    pub(crate) not_empty_sleepers: AtomicU32,
    /// A sleeper was woken for an item and has not run yet: later puts need not wake
    /// another (the woken one passes the baton on if items remain).
    pub(crate) not_empty_pending: AtomicU32,
    pub(crate) not_full: AtomicU32,
    pub(crate) not_full_sleepers: AtomicU32,
    pub(crate) not_full_pending: AtomicU32,
    /// `JoinableQueue`: items marked done. The unfinished count is the number of puts (in
    /// [`Header::prod`]) minus this, so a put counts itself with the store that publishes it.
    pub(crate) tasks_done: AtomicU32,
    pub(crate) tasks_done_sleepers: AtomicU32,
    /// Highest ring offset written since memory was last given back (under `put_lock`).
    high_water: AtomicU32,
    /// `wait()` callers interested in this queue.
    pub(crate) fd_waiters: AtomicU32,
    /// The event descriptor is readable (set and cleared under `put_lock`).
    event_set: AtomicU32,
    /// The number of the put whose frame starts the ring afresh at offset 0, because the
    /// queue was empty when it was placed (see `PutGuard::place`); 0 once taken.
    restart: AtomicU32,
    /// Bumped (under `put_lock`) whenever a frame is placed at offset 0: a producer's
    /// remembered view of `cons` (see [`PutView`]) holds only while this has not changed.
    fronts: AtomicU32,
}

const _: () = assert!(size_of::<Header>() <= PAGE);
const _: () = assert!(std::mem::align_of::<Header>() <= PAGE);

/// A process's mapping of one queue's memory.
pub(crate) struct ShmQueue {
    /// The memfd this mapping came from (used to make new open file descriptions).
    fd: OwnedFd,
    /// An eventfd, readable while the queue holds items and a `wait()` caller is interested;
    /// shared by every handle, in every process.
    event: Option<OwnedFd>,
    /// The header page and the ring, `PAGE + cap` bytes. All access through `&self` is to
    /// atomics, the locks, or raw copies under the rules of the module's `# Safety` note.
    map: Mapping,
    cap: u32,
    /// This process's last look at `cons`, for producers (see [`PutView`]).
    put_view: PutView,
    /// This process's last look at `prod`, for consumers: a published state, so frames up
    /// to it can be taken without looking again (read and written under `get_lock`).
    get_view: AtomicU64,
}

/// What a producer of this process last saw of the consumers' side, kept so that a put does
/// not pull the line consumers write on every get into its cache each time. Read and written
/// under `put_lock` (which orders the threads of this process), so relaxed atomics suffice.
///
/// It holds while no frame has been placed at offset 0 since (`fronts` unchanged) and the
/// frames then lay in one run `[head, tail)`: producers have since only appended after the
/// tail, and consumers only moved the head on, so everything from the tail to the end of the
/// ring is still free. A stale count only overstates how many items there are.
#[derive(Debug, Default)]
struct PutView {
    /// `cons` as seen (head offset, number of gets), or 0 when there is no valid view.
    cons: AtomicU64,
    /// `fronts` when `cons` was seen, plus one (0: no valid view).
    fronts: AtomicU32,
}

impl std::fmt::Debug for ShmQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmQueue")
            .field("fd", &self.fd)
            .field("cap", &self.cap)
            .finish()
    }
}

impl ShmQueue {
    /// Creates a queue whose ring holds `cap` bytes (rounded up to a page) and at most
    /// `maxsize` items (0: no item limit). Memory is only used as frames are written.
    pub(crate) fn create(cap: usize, maxsize: u32) -> io::Result<ShmQueue> {
        // Read the environment now, not first in a blocked call, which may run in a child
        // forked while another thread held the environment's lock.
        let _ = super::wake::recheck();
        let cap = cap.div_ceil(PAGE) * PAGE;
        let cap32 = u32::try_from(cap).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = sys::memfd_named(c"multiproc-queue", PAGE + cap)?;
        let mut q = ShmQueue::map(fd, PAGE + cap)?;
        q.cap = cap32;
        q.event = Some(sys::eventfd()?);
        let header = q.header_ptr();
        // SAFETY: the memfd is new and mapped only here: nobody else can see it yet, so a
        // plain write to the header races with nothing. Everything else starts as zeros (a
        // new memfd reads as zeros): free locks, an empty ring.
        unsafe { (*header).magic.0 = (MAGIC, cap32, maxsize) };
        Ok(q)
    }

    /// Maps the queue behind `fd` (a descriptor of a memfd made by [`create`](Self::create)).
    pub(crate) fn open(fd: OwnedFd, event: OwnedFd) -> io::Result<ShmQueue> {
        let _ = super::wake::recheck();
        let (len, _) = sys::fd_len_and_id(fd.as_fd())?;
        if len < 2 * PAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a queue"));
        }
        let mut q = ShmQueue::map(fd, len)?;
        // SAFETY: the header page is mapped; `magic` is written once before the memfd is
        // shared and never again, so reading it races with nothing.
        let (magic, cap, _) = unsafe { (*q.header_ptr()).magic.0 };
        if magic != MAGIC || cap as usize + PAGE != len {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a queue"));
        }
        q.cap = cap;
        q.event = Some(event);
        Ok(q)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<ShmQueue> {
        let map = Mapping::new(fd.as_fd(), len)?;
        Ok(ShmQueue {
            fd,
            event: None,
            map,
            cap: 0,
            put_view: PutView::default(),
            get_view: AtomicU64::new(0),
        })
    }

    fn header_ptr(&self) -> *mut Header {
        self.map.as_ptr().cast::<Header>()
    }

    fn header(&self) -> &Header {
        // SAFETY: the first page is mapped for the life of `self` and holds a `Header`
        // initialised by `create` before the memfd could be shared; every field reachable
        // through `&Header` is atomic, except `magic`, written once before sharing.
        unsafe { &*self.header_ptr() }
    }

    /// The futex words and counters.
    pub(crate) fn words(&self) -> &Words {
        &self.header().words.0
    }

    /// The item limit (0: none).
    pub(crate) fn maxsize(&self) -> u32 {
        self.header().magic.0.2
    }

    /// Items in the queue now (may be stale by the time it is used).
    pub(crate) fn len(&self) -> u32 {
        let h = self.header();
        let puts = (h.prod.0.load(Ordering::Acquire) >> 32) as u32;
        let gets = (h.cons.0.load(Ordering::Acquire) >> 32) as u32;
        puts.wrapping_sub(gets)
    }

    /// The largest frame (header included) that can ever fit.
    pub(crate) fn max_frame(&self) -> usize {
        self.cap as usize
    }

    /// A new open file description of the queue's memfd, for a new queue's first handle:
    /// OFD locks taken on it are its own (on the portable layer, the first holder mark, in a
    /// new directory: `sys/posix/ofd.rs`).
    pub(crate) fn reopen(&self) -> io::Result<OwnedFd> {
        sys::reopen(self.fd.as_fd())
    }

    /// The queue's memory, to pass beside a handle's mark to another process.
    pub(crate) fn memory_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The event descriptor (see [`want_event`](Self::want_event)).
    pub(crate) fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_ref().expect("set by create and open").as_fd()
    }

    /// Number of gets so far: a producer that found no room waits for it to change.
    pub(crate) fn gets(&self) -> u32 {
        unpack(self.header().cons.0.load(Ordering::SeqCst)).1
    }

    /// Number of puts so far (wrapping): every one was published by the same store that
    /// counted it.
    pub(crate) fn puts(&self) -> u32 {
        unpack(self.header().prod.0.load(Ordering::Acquire)).1
    }

    /// Whether another item may fit (by count; byte room is found out by trying).
    pub(crate) fn has_room_hint(&self) -> bool {
        let max = self.maxsize();
        max == 0 || self.len() < max
    }

    /// Whether the queue was shut down. Once this is seen, every item the queue will ever
    /// hold was published before (with `Acquire`, a fresh look at `prod` sees them all).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.header().flags.0.shut_down.load(Ordering::Acquire) != 0
    }

    /// Records that a second handle exists. Called after that handle registered as a holder,
    /// so that whoever sees the mark and then no other holder knows that handle is gone.
    pub(crate) fn mark_shared(&self) {
        let shared = &self.header().flags.0.shared;
        if shared.load(Ordering::Relaxed) == 0 {
            shared.store(1, Ordering::SeqCst);
        }
    }

    /// Whether a second handle of the queue was ever made. Read before asking who holds the
    /// queue (see [`mark_shared`](Self::mark_shared)).
    pub(crate) fn was_shared(&self) -> bool {
        self.header().flags.0.shared.load(Ordering::SeqCst) != 0
    }

    /// Marks the queue shut down, under the producers' lock (so that a put either published
    /// before or sees the mark), then wakes every sleeping getter and putter, in every
    /// process, to see it.
    pub(crate) fn shut_down(&self) -> io::Result<()> {
        let guard = self.lock_put(None)?;
        self.header().flags.0.shut_down.store(1, Ordering::SeqCst);
        drop(guard);
        let words = self.words();
        for word in [&words.not_empty, &words.not_full] {
            word.fetch_add(1, Ordering::SeqCst);
            self.wake(word, WAKE_ALL);
        }
        Ok(())
    }

    /// Takes every item out without decoding it (`Queue::shutdown(true)`); how many.
    pub(crate) fn discard_all(&self) -> io::Result<u32> {
        let Some(mut guard) = self.lock_get(None)? else {
            return Ok(0);
        };
        let mut n = 0u32;
        while guard.pop_with(|_| ())?.is_some() {
            n = n.wrapping_add(1);
        }
        Ok(n)
    }

    /// Takes the producers' lock, waiting until `deadline` (`None`: no limit). `Ok(None)`
    /// when the deadline passed. A dead owner's lock is taken over.
    pub(crate) fn lock_put(&self, deadline: Option<Instant>) -> io::Result<Option<PutGuard<'_>>> {
        let Ok(how) = self.header().put_lock.0.lock(deadline) else {
            return Ok(None);
        };
        let guard = PutGuard { q: self };
        if how == Acquired::OwnerDied {
            tracing::warn!("a process died holding a queue's producer lock; recovered");
            guard.after_owner_died();
        }
        Ok(Some(guard))
    }

    /// Takes the consumers' lock, waiting until `deadline` (`None`: no limit). `Ok(None)`
    /// when the deadline passed. A dead owner's lock is taken over: it guards nothing that
    /// needs repair (see `README.md`).
    pub(crate) fn lock_get(&self, deadline: Option<Instant>) -> io::Result<Option<GetGuard<'_>>> {
        let Ok(how) = self.header().get_lock.0.lock(deadline) else {
            return Ok(None);
        };
        if how == Acquired::OwnerDied {
            tracing::warn!("a process died holding a queue's consumer lock; recovered");
        }
        Ok(Some(GetGuard { q: self }))
    }

    /// Registers a `wait()` caller (unregistered by decrementing [`Words::fd_waiters`]):
    /// while one is registered the event descriptor is readable whenever the queue holds
    /// items. Returns whether it does now; `Ok(None)` if the producers' lock was not had by
    /// `deadline`.
    pub(crate) fn want_event(&self, deadline: Option<Instant>) -> io::Result<Option<bool>> {
        // Under the producers' lock, so that no put slips between the check and the
        // registration.
        let Some(guard) = self.lock_put(deadline)? else {
            return Ok(None);
        };
        let words = self.words();
        words.fd_waiters.fetch_add(1, Ordering::SeqCst);
        let items = self.len() > 0;
        if items {
            guard.raise_event();
        }
        Ok(Some(items))
    }

    /// For a watcher of the event descriptor that was told it is readable and then found
    /// the queue empty. A put raises the event *before* it publishes its item (see
    /// `README.md`), so such a watcher may have looked in between; the descriptor then stays
    /// readable with no new write to come (the flag is up, so the publish writes nothing),
    /// and an edge-triggered reactor (tokio's) reports nothing more: the wake-up would be
    /// lost until the next recheck. Taking the producers' lock waits for that publish (a
    /// put raises and publishes under it), and the event is then set from the queue's state,
    /// with a fresh write if it holds items, so the watcher is told again. `Ok(false)` if
    /// the lock was not had by `deadline`.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn resync_event(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let Some(guard) = self.lock_put(deadline)? else {
            return Ok(false);
        };
        guard.reset_event();
        Ok(true)
    }

    /// Sleeps while `word` still holds `seen`, at most `max`. Spurious returns are fine.
    pub(crate) fn sleep(&self, word: &AtomicU32, seen: u32, max: Duration) {
        // A shared (not private) futex: waiters and wakers are in different processes.
        sys::futex_wait(word, seen, Some(max));
    }

    /// Wakes up to `n` sleepers on `word`.
    pub(crate) fn wake(&self, word: &AtomicU32, n: u32) {
        sys::futex_wake(word, n);
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the ring starts one page into a mapping of PAGE + cap bytes.
        unsafe { self.map.as_ptr().add(PAGE) }
    }

    /// The ring's bytes `[at, at + n)`, to write a frame into.
    ///
    /// # Safety
    /// The range must be free space given by `PutGuard::place` to the caller, who must hold
    /// the producers' lock until the frame is published or given up, and must not make two
    /// views of it at once.
    #[allow(clippy::mut_from_ref)]
    unsafe fn free_space(&self, at: u32, n: usize) -> &mut [u8] {
        // `place` checked the range against the ring (from offsets it checked first): this
        // holds whatever another process wrote into the header.
        assert!(at as usize + n <= self.cap as usize);
        // SAFETY: inside the ring (asserted above), which is mapped for the life of `self`;
        // exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.data().add(at as usize), n) }
    }
}

/// The producers' lock, held. Unlocks on drop.
pub(crate) struct PutGuard<'a> {
    q: &'a ShmQueue,
}

/// The consumers' lock, held. Unlocks on drop.
pub(crate) struct GetGuard<'a> {
    q: &'a ShmQueue,
}

fn pack(offset: u32, count: u32) -> u64 {
    u64::from(offset) | (u64::from(count) << 32)
}

fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// The error for a header or frame that no correct process could have written.
fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("queue memory is corrupted: {what}"),
    )
}

/// `(offset, count)` from `prod` or `cons`, after checking the offset lies in the ring.
fn unpack_checked(v: u64, cap: u32, what: &str) -> io::Result<(u32, u32)> {
    let (offset, count) = unpack(v);
    if offset > cap {
        return Err(corrupt(what));
    }
    Ok((offset, count))
}

/// Whether `count` items could be in a ring of `cap` bytes (every frame has a 4-byte length
/// word); more means a counter was overwritten, or went backwards.
fn plausible_count(count: u32, cap: u32) -> bool {
    count <= cap / 4
}

/// Where [`PutGuard::place`] put a frame.
enum Placed {
    /// At this offset; pages from `fresh_from` on were never written.
    At { at: u32, fresh_from: u32 },
    /// Nowhere: no room when the queue had seen this many gets.
    NoRoom { gets: u32 },
}

/// What [`PutGuard::push_with`] did.
pub(crate) enum Pushed {
    /// The frame is in the queue.
    Done,
    /// No room (or `maxsize` items already) when the queue had seen this many gets: room
    /// can only appear once that number changes.
    NoRoom { gets: u32 },
}

impl PutGuard<'_> {
    fn h(&self) -> &Header {
        self.q.header()
    }

    /// Appends an `n`-byte frame (a length word and payload) that `fill` writes in place, if
    /// there is room; items beyond `maxsize` count as no room. If `fill` fails (or panics)
    /// nothing is appended.
    ///
    /// # Errors
    /// The outer error is `InvalidData` when the header holds offsets or counts no correct
    /// process could have written (nothing is appended); the inner one is `fill`'s.
    pub(crate) fn push_with<E>(
        &mut self,
        n: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> io::Result<Result<Pushed, E>> {
        let (at, fresh_from) = match self.place(n)? {
            Placed::At { at, fresh_from } => (at, fresh_from),
            Placed::NoRoom { gets } => return Ok(Ok(Pushed::NoRoom { gets })),
        };
        if n >= POPULATE {
            self.populate(at, n, fresh_from);
        }
        // SAFETY: `place` returned free space inside the ring; we hold the producers' lock,
        // so no other producer writes there, and no consumer looks there until `publish`.
        if let Err(e) = fill(unsafe { self.q.free_space(at, n) }) {
            return Ok(Err(e));
        }
        self.publish(at, n);
        Ok(Ok(Pushed::Done))
    }

    /// Called with the lock just taken over from a dead owner: sets the `wait()` event flag
    /// and descriptor from the queue's state, since the owner may have died between the two
    /// (in `publish`, `want_event` or `drained`). Every other change a producer makes is
    /// safe to leave half-done (see `README.md`). All changes to the flag are made under
    /// this lock, and no put can happen while it is held.
    fn after_owner_died(&self) {
        self.reset_event();
    }

    /// Sets the `wait()` event flag and descriptor from the queue's state: both cleared,
    /// then raised again (a fresh write, so a fresh edge for edge-triggered watchers) if the
    /// queue holds items and someone waits.
    fn reset_event(&self) {
        let words = &self.h().words.0;
        words.event_set.store(0, Ordering::Relaxed);
        sys::eventfd_drain(self.q.event_fd());
        // No put can happen while we hold the lock. Consumers may take the items meanwhile;
        // the one that takes the last calls `drained`, which waits for this lock and clears
        // the flag again.
        if self.q.len() > 0 && words.fd_waiters.load(Ordering::Relaxed) > 0 {
            self.raise_event();
        }
    }

    /// Where an `n`-byte frame goes, if there is room, and where the pages never written
    /// before begin; or the number of gets seen if there is no room. The space is free:
    /// consumers read only published frames, and `cons` only ever moves on, so the free space
    /// seen here can only have grown by the time it is written.
    fn place(&mut self, n: usize) -> io::Result<Placed> {
        let cap = self.q.cap;
        let n = match u32::try_from(n) {
            Ok(n) if n <= cap => n,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "frame larger than the queue's ring",
                ));
            }
        };
        let h = self.h();
        let words = &h.words.0;
        let (tail, puts) = unpack_checked(h.prod.0.load(Ordering::Relaxed), cap, "write offset")?;
        let maxsize = self.q.maxsize();
        let view = &self.q.put_view;
        if view.fronts.load(Ordering::Relaxed)
            == words.fronts.load(Ordering::Relaxed).wrapping_add(1)
        {
            let (head, gets) = unpack(view.cons.load(Ordering::Relaxed));
            let count = puts.wrapping_sub(gets);
            if count > 0
                && tail > head
                && tail < SOFT_WRAP
                && cap - tail >= n
                && (maxsize == 0 || count < maxsize)
            {
                let fresh_from = self.raise_high_water(tail + n);
                return Ok(Placed::At {
                    at: tail,
                    fresh_from,
                });
            }
        }
        // The restart mark first: a consumer clears it (Release) only after taking its frame,
        // so if it is still set for the next get seen below, that frame, at the front, is
        // where the oldest item is, whatever the head offset still says.
        let restart = h.words.0.restart.load(Ordering::Acquire);
        let (head, gets) = unpack_checked(h.cons.0.load(Ordering::Acquire), cap, "read offset")?;
        let head = if restart == gets.wrapping_add(1) {
            0
        } else {
            head
        };
        let count = puts.wrapping_sub(gets);
        if !plausible_count(count, cap) {
            return Err(corrupt("more items than the ring can hold"));
        }
        // Remembered only if the frames lie in one run; placing at the front below forgets it.
        let one_run = count == 0 || tail > head;
        view.cons.store(pack(head, gets), Ordering::Relaxed);
        view.fronts.store(
            if one_run {
                words.fronts.load(Ordering::Relaxed).wrapping_add(1)
            } else {
                0
            },
            Ordering::Relaxed,
        );
        if maxsize != 0 && count >= maxsize {
            return Ok(Placed::NoRoom { gets });
        }
        let at = if count == 0 {
            // Empty: go back to the front, where pages are warm. Consumers cannot be told by
            // a wrap marker at the tail (the frame may cover it), so the frame's number says
            // it, published with the frame.
            h.words
                .0
                .restart
                .store(puts.wrapping_add(1), Ordering::Relaxed);
            0
        } else if tail > head {
            let fits_end = cap - tail >= n;
            let fits_front = head >= n;
            if fits_front && (tail >= SOFT_WRAP || !fits_end) {
                self.wrap_at(tail);
                0
            } else if fits_end {
                tail
            } else {
                return Ok(Placed::NoRoom { gets });
            }
        } else if tail < head && head - tail >= n {
            tail
        } else {
            // tail == head with items in the queue: full; or too little room before head.
            return Ok(Placed::NoRoom { gets });
        };
        if u64::from(at) + u64::from(n) > u64::from(cap) {
            return Err(corrupt("no free space where the offsets say"));
        }
        if at == 0 {
            words.fronts.fetch_add(1, Ordering::Relaxed);
            if count == 0 {
                // Empty before: the new frame alone is one run, starting at the front.
                view.cons.store(pack(0, gets), Ordering::Relaxed);
                view.fronts.store(
                    words.fronts.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
            }
        }
        let fresh_from = self.raise_high_water(at + n);
        Ok(Placed::At { at, fresh_from })
    }

    /// Records that the ring is written up to `end`; returns where never-written pages began.
    fn raise_high_water(&self, end: u32) -> u32 {
        let high = &self.h().words.0.high_water;
        let fresh_from = high.load(Ordering::Relaxed);
        if end > fresh_from {
            high.store(end, Ordering::Relaxed);
        }
        fresh_from
    }

    /// Marks `tail` as the end of the frames before the front (if a length word fits there;
    /// if not, consumers go to the front anyway). Only for a frame placed at the front while
    /// others wait before `tail`: the frame ends before the head, so before `tail`.
    fn wrap_at(&self, tail: u32) {
        if self.q.cap - tail >= 4 {
            // SAFETY: `[tail, tail + 4)` is inside the ring (checked above) and free: no
            // published frame lies at the tail, and we hold the producers' lock.
            unsafe { self.q.free_space(tail, 4) }.copy_from_slice(&WRAP.to_le_bytes());
        }
    }

    /// Pages of `[at, at + n)` from `fresh_from` on were never written: fault them all in
    /// with one call rather than one fault per page.
    fn populate(&self, at: u32, n: usize, fresh_from: u32) {
        let start = (at.max(fresh_from) as usize) & !(PAGE - 1);
        let end = at as usize + n;
        if end > start {
            // Ring offsets: the ring starts one page into the mapping.
            self.q.map.populate_write(PAGE + start, end - start);
        }
    }

    /// Makes the `n`-byte frame written at `at` the newest item, with one store.
    fn publish(&self, at: u32, n: usize) {
        let h = self.h();
        // The event goes up before the item is visible: a consumer that takes the item then
        // sees the flag, and clears it if that emptied the queue (`GetGuard::drained`).
        if h.words.0.fd_waiters.load(Ordering::Relaxed) > 0 {
            self.raise_event();
        }
        let (_, puts) = unpack(h.prod.0.load(Ordering::Relaxed));
        h.prod
            .0
            .store(pack(at + n as u32, puts.wrapping_add(1)), Ordering::SeqCst);
    }

    /// Makes the event descriptor readable, if it is not.
    fn raise_event(&self) {
        let words = &self.h().words.0;
        if words.event_set.load(Ordering::Relaxed) == 0 {
            words.event_set.store(1, Ordering::Relaxed);
            sys::eventfd_raise(self.q.event_fd());
        }
    }
}

impl Drop for PutGuard<'_> {
    fn drop(&mut self) {
        self.q.header().put_lock.0.unlock();
    }
}

impl GetGuard<'_> {
    fn h(&self) -> &Header {
        self.q.header()
    }

    fn read_u32(&self, offset: u32) -> io::Result<u32> {
        if offset as usize + 4 > self.q.cap as usize {
            return Err(corrupt("a frame outside the ring"));
        }
        let mut b = [0u8; 4];
        // SAFETY: inside the ring (checked above). The word is a published frame's length
        // or a wrap marker written before the `prod` store we loaded with Acquire; no
        // producer writes there until a get frees it, which takes the lock we hold.
        unsafe {
            std::ptr::copy_nonoverlapping(self.q.data().add(offset as usize), b.as_mut_ptr(), 4);
        }
        Ok(u32::from_le_bytes(b))
    }

    /// The oldest frame: the offset of its payload, its length, and the numbers of gets and
    /// puts so far (`Ok(None)` when empty).
    fn head_frame(&self) -> io::Result<Option<(u32, u32, u32, u32)>> {
        let cap = self.q.cap;
        let h = self.h();
        let (mut head, gets) =
            unpack_checked(h.cons.0.load(Ordering::Relaxed), cap, "read offset")?;
        // Frames up to the last `prod` this process saw are published (they stay so until
        // taken); look at `prod` again, pulling in the line producers write on every put,
        // only once they are all taken.
        let mut seen = self.q.get_view.load(Ordering::Relaxed);
        if (unpack(seen).1.wrapping_sub(gets) as i32) <= 0 {
            seen = h.prod.0.load(Ordering::Acquire);
            self.q.get_view.store(seen, Ordering::Relaxed);
        }
        let (tail, puts) = unpack_checked(seen, cap, "write offset")?;
        if puts == gets {
            return Ok(None);
        }
        if !plausible_count(puts.wrapping_sub(gets), cap) {
            // Forget the view: it may be what is wrong.
            self.q.get_view.store(0, Ordering::Relaxed);
            return Err(corrupt("more items than the ring can hold"));
        }
        // Written before the `prod` store loaded above with Acquire.
        let restart = h.words.0.restart.load(Ordering::Relaxed) == gets.wrapping_add(1);
        if restart || cap - head < 4 || self.read_u32(head)? == WRAP {
            head = 0;
        }
        let len = self.read_u32(head)?;
        let end = u64::from(head) + 4 + u64::from(len);
        if len == WRAP || end > u64::from(cap) || (head < tail && end > u64::from(tail)) {
            return Err(corrupt("a frame longer than the ring or than what was put"));
        }
        Ok(Some((head + 4, len, gets, puts)))
    }

    /// Removes the oldest frame and calls `f` with its payload (`Ok(None)` when empty). The
    /// frame is taken (one store) once `f` returns, or unwinds: a process killed while `f`
    /// runs dies holding the lock with the frame still at the head, and the next consumer
    /// takes the lock over and finds it there.
    ///
    /// # Errors
    /// `InvalidData` if the ring holds a frame that cannot be valid (memory corrupted by a
    /// misbehaving process); the queue is unusable after that.
    pub(crate) fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> io::Result<Option<R>> {
        let Some((at, len, gets, puts)) = self.head_frame()? else {
            return Ok(None);
        };
        struct Take<'h> {
            cons: &'h AtomicU64,
            to: u64,
        }
        impl Drop for Take<'_> {
            fn drop(&mut self) {
                self.cons.store(self.to, Ordering::Release);
            }
        }
        let take = Take {
            cons: &self.h().cons.0,
            to: pack(at + len, gets.wrapping_add(1)),
        };
        // SAFETY: `[at, at + len)` is inside the ring (checked by `head_frame`) and holds a
        // published frame. Producers write only free space, which ends where the frame at
        // the head begins until `take` moves `cons` past it, and other consumers wait for
        // the lock we hold: nothing writes these bytes while `f` reads them.
        let payload =
            unsafe { std::slice::from_raw_parts(self.q.data().add(at as usize), len as usize) };
        let result = f(payload);
        drop(take);
        // Taken: its restart mark (if it had one) must not match a later get. A producer
        // that marked a newer frame meanwhile is left alone.
        let restart = &self.h().words.0.restart;
        if restart.load(Ordering::Relaxed) == gets.wrapping_add(1) {
            // Only then: even a failed compare-exchange would take the line from producers.
            let _ = restart.compare_exchange(
                gets.wrapping_add(1),
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        if gets.wrapping_add(1) == puts {
            self.drained(gets.wrapping_add(1))?;
        }
        Ok(Some(result))
    }

    /// The queue looked empty after `gets` gets: gives memory back and makes the event
    /// descriptor unreadable, if either is due. Both touch the producers' side, so they are
    /// done under both locks, once the producers' lock shows the queue still empty.
    fn drained(&self, gets: u32) -> io::Result<()> {
        let h = self.h();
        let words = &h.words.0;
        // A flag raised for the item just taken was raised before it was published, so it
        // is seen here (through the Acquire load of `prod` in `head_frame`).
        if words.event_set.load(Ordering::Relaxed) == 0
            && words.high_water.load(Ordering::Relaxed) <= KEEP
        {
            return Ok(());
        }
        let Some(put) = self.q.lock_put(None)? else {
            return Ok(());
        };
        let (_, puts) = unpack(h.prod.0.load(Ordering::Relaxed));
        if puts != gets {
            // A put came in meanwhile: not drained after all.
            return Ok(());
        }
        // Never beyond the ring, whatever the word says.
        let high = words.high_water.load(Ordering::Relaxed).min(self.q.cap);
        if high > KEEP {
            let start = u64::from(KEEP) + PAGE as u64;
            let len = u64::from(high - KEEP).div_ceil(PAGE as u64) * PAGE as u64;
            sys::punch_hole(self.q.fd.as_fd(), start, len);
            words.high_water.store(KEEP, Ordering::Relaxed);
        }
        if words.event_set.load(Ordering::Relaxed) != 0 {
            words.event_set.store(0, Ordering::Relaxed);
            sys::eventfd_drain(self.q.event_fd());
        }
        drop(put);
        Ok(())
    }
}

impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        self.q.header().get_lock.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> ShmQueue {
        ShmQueue::create(4 * PAGE, 0).unwrap()
    }

    fn put(q: &ShmQueue, payload: &[u8]) -> io::Result<Pushed> {
        let mut g = q.lock_put(None)?.expect("no deadline");
        let n = 4 + payload.len();
        g.push_with(n, |buf| {
            buf[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            buf[4..].copy_from_slice(payload);
            Ok::<(), ()>(())
        })
        .map(|r| r.expect("fill never fails"))
    }

    fn get(q: &ShmQueue) -> io::Result<Option<Vec<u8>>> {
        let mut g = q.lock_get(None)?.expect("no deadline");
        g.pop_with(|b| b.to_vec())
    }

    /// Another process's view of the same queue (with no remembered look at either side).
    fn another_mapping(q: &ShmQueue) -> ShmQueue {
        let event = rustix::io::dup(q.event_fd()).unwrap();
        ShmQueue::open(rustix::io::dup(q.fd.as_fd()).unwrap(), event).unwrap()
    }

    fn is_corrupt<T>(r: io::Result<T>) -> bool {
        match r {
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                true
            }
            Ok(_) => false,
        }
    }

    #[test]
    fn items_go_through() {
        let q = queue();
        assert!(matches!(put(&q, b"abc").unwrap(), Pushed::Done));
        assert!(matches!(put(&q, b"de").unwrap(), Pushed::Done));
        assert_eq!(q.len(), 2);
        assert_eq!(q.puts(), 2);
        assert_eq!(get(&q).unwrap().unwrap(), b"abc");
        assert_eq!(get(&q).unwrap().unwrap(), b"de");
        assert_eq!(get(&q).unwrap(), None);
    }

    #[test]
    fn offsets_outside_the_ring_are_errors_not_panics() {
        let cap = 4 * PAGE as u32;
        for bad in [cap + 1, u32::MAX, cap + 4096] {
            let q = queue();
            put(&q, b"x").unwrap();
            q.header().prod.0.store(pack(bad, 1), Ordering::SeqCst);
            assert!(is_corrupt(put(&q, b"y")), "write offset {bad}");
            assert!(is_corrupt(get(&q)), "write offset {bad}");

            let q = queue();
            put(&q, b"x").unwrap();
            q.header().cons.0.store(pack(bad, 0), Ordering::SeqCst);
            assert!(is_corrupt(get(&q)), "read offset {bad}");
            // This process's producers remember where the consumers were; another's look.
            assert!(
                is_corrupt(put(&another_mapping(&q), b"y")),
                "read offset {bad}"
            );
        }
    }

    #[test]
    fn counts_that_went_backwards_are_errors() {
        let q = queue();
        put(&q, b"x").unwrap();
        // More gets than puts: the count wraps to billions of items.
        q.header().cons.0.store(pack(0, 5), Ordering::SeqCst);
        assert!(is_corrupt(get(&q)));
        assert!(is_corrupt(put(&another_mapping(&q), b"y")));
    }

    #[test]
    fn a_frame_length_beyond_the_ring_or_the_tail_is_an_error() {
        for len in [u32::MAX - 1, 4 * PAGE as u32, 100] {
            let q = queue();
            put(&q, b"x").unwrap();
            // SAFETY: test only; the frame at offset 0 is published and no one else maps
            // this queue.
            unsafe { std::ptr::copy_nonoverlapping(len.to_le_bytes().as_ptr(), q.data(), 4) };
            assert!(is_corrupt(get(&q)), "length {len}");
        }
    }

    #[test]
    fn a_garbage_high_water_mark_is_clamped() {
        let q = queue();
        put(&q, b"x").unwrap();
        q.words().high_water.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(get(&q).unwrap().unwrap(), b"x");
        assert!(matches!(put(&q, b"y").unwrap(), Pushed::Done));
    }

    /// Random garbage in every header word and the ring: every call returns (an item, no
    /// room, or an error), none panics.
    #[test]
    fn random_garbage_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cap = 4 * PAGE as u64;
        for _ in 0..2000 {
            let q = queue();
            for _ in 0..(next() % 4) {
                put(&q, &vec![7; (next() % 3000) as usize]).unwrap();
            }
            let h = q.header();
            // Offsets mostly within reach of the ring, sometimes anything.
            let offset = |r: u64| {
                if r.is_multiple_of(4) {
                    r as u32
                } else {
                    (r % (cap + 16)) as u32
                }
            };
            let count = |r: u64| (r % 8) as u32;
            match next() % 6 {
                0 => h
                    .prod
                    .0
                    .store(pack(offset(next()), count(next())), Ordering::SeqCst),
                1 => h
                    .cons
                    .0
                    .store(pack(offset(next()), count(next())), Ordering::SeqCst),
                2 => h.words.0.restart.store(count(next()), Ordering::SeqCst),
                3 => h.words.0.fronts.store(next() as u32, Ordering::SeqCst),
                4 => h.words.0.high_water.store(next() as u32, Ordering::SeqCst),
                _ => {
                    let at = (next() % (cap - 4)) as usize;
                    let word = if next() % 2 == 0 {
                        WRAP
                    } else {
                        next() as u32 % 5000
                    };
                    // SAFETY: test only; inside the ring, and no one else maps this queue.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            word.to_le_bytes().as_ptr(),
                            q.data().add(at),
                            4,
                        );
                    }
                }
            }
            for _ in 0..4 {
                let _ = put(&q, &vec![1; (next() % 5000) as usize]);
                let _ = get(&q);
            }
        }
    }

    #[test]
    fn a_producer_lock_taken_from_a_dead_owner_sets_the_event_from_the_queue() {
        let q = queue();
        // As if a producer died between raising the flag and publishing: flag set, no item.
        q.words().fd_waiters.store(1, Ordering::Relaxed);
        q.words().event_set.store(1, Ordering::Relaxed);
        rustix::io::write(q.event_fd(), &1u64.to_ne_bytes()).unwrap();
        // A dead owner (a pid above any pid_max) holds the producers' lock.
        let dead = crate::sync::raw::tests_support::held_by_dead_owner();
        q.header().put_lock.0.force_state(dead);
        drop(q.lock_put(None).unwrap().unwrap());
        assert_eq!(q.words().event_set.load(Ordering::Relaxed), 0);
        let mut b = [0u8; 8];
        assert!(rustix::io::read(q.event_fd(), &mut b).is_err(), "drained");
        // With an item and a waiter, the flag and the descriptor are raised together.
        put(&q, b"x").unwrap();
        q.words().event_set.store(0, Ordering::Relaxed); // as if killed before raising
        q.header().put_lock.0.force_state(dead);
        drop(q.lock_put(None).unwrap().unwrap());
        assert_eq!(q.words().event_set.load(Ordering::Relaxed), 1);
        assert!(rustix::io::read(q.event_fd(), &mut b).is_ok(), "readable");
    }
}
