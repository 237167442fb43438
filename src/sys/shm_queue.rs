//! The shared-memory ring behind `Queue`: a memfd holding a header page and a byte ring of
//! frames, guarded by a robust process-shared mutex, with futex words for waiting.
//!
//! Crash safety comes from three kernel mechanisms, so no process can wedge the others by
//! dying at any instruction:
//! - The mutex is a robust `pthread_mutex_t`: if its owner dies, the next locker gets
//!   `EOWNERDEAD` and takes over. The ring's state never needs repair, because every change
//!   is published by one atomic store ([`Header::prod`] for a put, [`Header::cons`] for a
//!   get) after the bytes are in place (for a put) or used (for a get): a producer killed
//!   mid-copy leaves no trace, a consumer killed mid-copy or mid-decode leaves the item for
//!   the next one.
//!   A large frame is copied out without the main lock, by a consumer holding a second
//!   robust mutex, the reader lock, instead: the frame is taken by the same one store, made
//!   under the main lock once the copy is done; other consumers wait for the reader lock,
//!   and if its holder dies mid-copy the frame is still at the head, for the next consumer.
//!   Likewise a large frame is copied in without the main lock, by a producer holding a
//!   third, the writer lock: it reserves free space under the main lock, fills it, and
//!   publishes it by the same one store under the main lock; other producers wait for the
//!   writer lock, and if its holder dies mid-copy the space was never published.
//! - Waiting uses futex words with bounded sleeps, so a waiter never depends on a wake-up a
//!   dead process owed it.
//! - Who still holds the queue is the set of open file descriptions with a shared OFD lock on
//!   byte 0 of the memfd: the kernel drops a process's locks when it dies, and shares them
//!   across `fork` and descriptor passing exactly as it shares the descriptor.
//!
//! # Safety
//! The mapping is `MAP_SHARED` memory that other processes write. Every shared field is an
//! atomic or sits behind the mutex; ring bytes are only touched through raw pointer copies,
//! never through references, within ranges checked against the ring's size.
//!
//! # References
//! pthread_mutexattr_setrobust(3), futex(2), fcntl(2) "Open file description locks",
//! memfd_create(2), fallocate(2) `FALLOC_FL_PUNCH_HOLE`.

use std::cell::UnsafeCell;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::thread::futex;

use super::shm::Mapping;

const MAGIC: u64 = 0x6d70_7175_6575_6533; // "mpqueue3"
const PAGE: usize = 4096;
/// A frame whose length word is this is a wrap marker: the next frame is at offset 0.
const WRAP: u32 = u32::MAX;
/// Frames go back to offset 0 once the write position passes this, if there is room there,
/// so a queue that keeps up stays within a few warm pages.
const SOFT_WRAP: u32 = 4 << 20;
/// After the queue drains, memory beyond this offset is given back to the OS.
const KEEP: u32 = 128 << 20;

#[repr(C, align(64))]
struct Line<T>(T);

/// The header page. Field order is fixed (`repr(C)`); every process maps the same bytes.
#[repr(C)]
struct Header {
    magic: Line<(u64, u32, u32)>, // magic, capacity, maxsize
    mutex: Line<UnsafeCell<libc::pthread_mutex_t>>,
    /// The reader lock: held (robust, process-shared) by the one consumer copying a large
    /// frame out of the ring without the main lock; see [`Guard::begin_read`].
    rmutex: Line<UnsafeCell<libc::pthread_mutex_t>>,
    /// The writer lock: held by the one producer copying a large frame into reserved space
    /// without the main lock; see [`Guard::begin_write`].
    wmutex: Line<UnsafeCell<libc::pthread_mutex_t>>,
    /// Write offset (low 32 bits) and number of puts (high 32 bits), changed by one store.
    prod: Line<AtomicU64>,
    /// Read offset (low 32 bits) and number of gets (high 32 bits), changed by one store.
    cons: Line<AtomicU64>,
    /// Futex words: bumped when an item arrives / room appears / tasks finish, with counts
    /// of sleepers so that nobody makes a system call when nobody sleeps.
    words: Line<Words>,
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
    /// `JoinableQueue`: items put and not yet marked done.
    pub(crate) unfinished: AtomicU32,
    pub(crate) unfinished_sleepers: AtomicU32,
    /// Highest ring offset written since memory was last given back.
    high_water: AtomicU32,
    /// `wait()` callers interested in this queue, registered under the lock.
    pub(crate) fd_waiters: AtomicU32,
    /// The event descriptor is readable (set and cleared under the lock).
    event_set: AtomicU32,
    /// A consumer holds the reader lock and is copying the head frame out without the main
    /// lock (set and cleared under the main lock, only while the reader lock is held).
    reading: AtomicU32,
    /// A producer holds the writer lock and is copying a frame into space it reserved,
    /// without the main lock (set and cleared under the main lock, only while the writer
    /// lock is held).
    writing: AtomicU32,
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
    /// atomics, the mutexes, or raw copies under the rules in the module docs.
    map: Mapping,
    cap: u32,
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
        let cap = cap.div_ceil(PAGE) * PAGE;
        let cap32 = u32::try_from(cap).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = rustix::fs::memfd_create("multiproc-queue", MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, (PAGE + cap) as u64)?;
        let mut q = ShmQueue::map(fd, PAGE + cap)?;
        q.cap = cap32;
        q.event = Some(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let header = q.header_ptr();
        // SAFETY: the memfd is new and mapped only here: nobody else can see it yet, so plain
        // writes to the header are not racing. The mutex attribute calls follow the POSIX
        // protocol (init, set, use, destroy), each on a live, properly aligned object.
        unsafe {
            (*header).magic.0 = (MAGIC, cap32, maxsize);
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let r = (|| {
                check(libc::pthread_mutexattr_setpshared(
                    &mut attr,
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                check(libc::pthread_mutex_init((*header).mutex.0.get(), &attr))?;
                check(libc::pthread_mutex_init((*header).rmutex.0.get(), &attr))?;
                check(libc::pthread_mutex_init((*header).wmutex.0.get(), &attr))
            })();
            libc::pthread_mutexattr_destroy(&mut attr);
            r?;
        }
        Ok(q)
    }

    /// Maps the queue behind `fd` (a descriptor of a memfd made by [`create`](Self::create)).
    pub(crate) fn open(fd: OwnedFd, event: OwnedFd) -> io::Result<ShmQueue> {
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
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
        })
    }

    fn header_ptr(&self) -> *mut Header {
        self.map.as_ptr().cast::<Header>()
    }

    fn header(&self) -> &Header {
        // SAFETY: the first page is mapped for the life of `self` and holds a `Header`
        // initialised by `create` before the memfd could be shared; every field reachable
        // through `&Header` is atomic or an `UnsafeCell`.
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

    /// A new open file description of the queue's memfd, for a new handle: OFD locks taken
    /// on it are its own.
    pub(crate) fn reopen(&self) -> io::Result<OwnedFd> {
        reopen(self.fd.as_fd())
    }

    /// The event descriptor (see [`Guard::want_event`]).
    pub(crate) fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_ref().expect("set by create and open").as_fd()
    }

    /// Takes the queue's lock, waiting until `deadline` (`None`: no limit). `Ok(None)` when
    /// the deadline passed.
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<Guard<'_>>> {
        let locked = lock_robust(self.header().mutex.0.get(), deadline)?;
        Ok(locked.then_some(Guard { q: self }))
    }

    /// Takes the reader lock (see [`Guard::begin_read`]), waiting until `deadline`, and
    /// releases it at once: returns when the consumer that held it is done. `Ok(false)` when
    /// the deadline passed.
    pub(crate) fn wait_reader(&self, deadline: Option<Instant>) -> io::Result<bool> {
        wait_for(self.header().rmutex.0.get(), deadline)
    }

    /// As [`wait_reader`](Self::wait_reader), for the writer lock (see
    /// [`Guard::begin_write`]).
    pub(crate) fn wait_writer(&self, deadline: Option<Instant>) -> io::Result<bool> {
        wait_for(self.header().wmutex.0.get(), deadline)
    }

    /// Sleeps while `word` still holds `seen`, at most `max`. Spurious returns are fine.
    pub(crate) fn sleep(&self, word: &AtomicU32, seen: u32, max: Duration) {
        let ts = rustix::time::Timespec {
            tv_sec: max.as_secs() as i64,
            tv_nsec: i64::from(max.subsec_nanos()),
        };
        // Shared (not private) futex: waiters and wakers are in different processes.
        let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&ts));
    }

    /// Wakes up to `n` sleepers on `word`.
    pub(crate) fn wake(&self, word: &AtomicU32, n: u32) {
        let _ = futex::wake(word, futex::Flags::empty(), n);
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the ring starts one page into a mapping of PAGE + cap bytes.
        unsafe { self.map.as_ptr().add(PAGE) }
    }

    /// The ring's bytes `[at, at + n)`, to write a frame into.
    ///
    /// # Safety
    /// The range must be free space given by `Guard::place` to the caller, who must hold the
    /// main lock or the writer lock until the frame is published or given up, and must not
    /// make two views of it at once.
    #[allow(clippy::mut_from_ref)]
    unsafe fn free_space(&self, at: u32, n: usize) -> &mut [u8] {
        assert!(at as usize + n <= self.cap as usize);
        // SAFETY: inside the ring (asserted above), which is mapped for the life of `self`;
        // exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.data().add(at as usize), n) }
    }
}

/// The queue's lock, held. Unlocks on drop.
pub(crate) struct Guard<'a> {
    q: &'a ShmQueue,
}

fn pack(offset: u32, count: u32) -> u64 {
    u64::from(offset) | (u64::from(count) << 32)
}

fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

impl<'a> Guard<'a> {
    fn h(&self) -> &Header {
        self.q.header()
    }

    /// Items in the queue.
    pub(crate) fn len(&self) -> u32 {
        let (_, puts) = unpack(self.h().prod.0.load(Ordering::Relaxed));
        let (_, gets) = unpack(self.h().cons.0.load(Ordering::Relaxed));
        puts.wrapping_sub(gets)
    }

    /// Registers a `wait()` caller (unregistered by decrementing
    /// [`Words::fd_waiters`]): while one is registered the event descriptor is readable
    /// whenever the queue holds items. Returns whether it does now.
    pub(crate) fn want_event(&mut self) -> bool {
        let words = &self.h().words.0;
        words.fd_waiters.fetch_add(1, Ordering::Relaxed);
        if self.len() > 0 && words.event_set.load(Ordering::Relaxed) == 0 {
            words.event_set.store(1, Ordering::Relaxed);
            let _ = rustix::io::write(self.q.event_fd(), &1u64.to_ne_bytes());
        }
        self.len() > 0
    }

    /// Whether another item may fit (by count; byte room is found out by trying).
    pub(crate) fn has_room_hint(&self) -> bool {
        let max = self.q.maxsize();
        max == 0 || self.len() < max
    }

    fn write(&self, offset: u32, bytes: &[u8]) {
        assert!(offset as usize + bytes.len() <= self.q.cap as usize);
        // SAFETY: the range is inside the ring (checked above), which is mapped for the life
        // of the queue; we hold the lock and the range is free space (only wrap markers are
        // written this way) that no reader looks at until a later commit.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.q.data().add(offset as usize),
                bytes.len(),
            );
        }
    }

    fn read(&self, offset: u32, out: &mut [u8]) {
        assert!(offset as usize + out.len() <= self.q.cap as usize);
        // SAFETY: inside the ring (checked above); we hold the lock, and the range holds a
        // committed frame that no producer writes until the consumer's commit frees it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.q.data().add(offset as usize),
                out.as_mut_ptr(),
                out.len(),
            );
        }
    }

    fn read_u32(&self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Appends an `n`-byte frame (a length word and payload) that `fill` writes in place, if
    /// there is room (`Ok(false)` if not; items beyond `maxsize` count as no room). If `fill`
    /// fails nothing is appended. Call only when [`writer_busy`](Self::writer_busy) said no.
    pub(crate) fn push_with<E>(
        &mut self,
        n: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Some(at) = self.place(n) else {
            return Ok(false);
        };
        // SAFETY: `place` returned free space inside the ring; we hold the lock, so no other
        // producer writes there and no consumer looks there until `publish`.
        fill(unsafe { self.q.free_space(at, n) })?;
        self.publish(at, n);
        Ok(true)
    }

    /// Where an `n`-byte frame goes, if there is room: free space that no consumer looks at
    /// until [`publish`](Self::publish) and no other producer is given while the caller
    /// holds the main lock or the writer lock.
    fn place(&mut self, n: usize) -> Option<u32> {
        let cap = self.q.cap;
        let n = u32::try_from(n).expect("frame size checked against max_frame");
        assert!(n <= cap, "frame size checked against max_frame");
        let h = self.h();
        let (head, gets) = unpack(h.cons.0.load(Ordering::Relaxed));
        let (tail, puts) = unpack(h.prod.0.load(Ordering::Relaxed));
        let count = puts.wrapping_sub(gets);
        let maxsize = self.q.maxsize();
        if maxsize != 0 && count >= maxsize {
            return None;
        }
        let at = if count == 0 {
            // Empty: start over at the front, where pages are warm.
            if head != 0 {
                h.cons.0.store(pack(0, gets), Ordering::Release);
            }
            0
        } else if tail > head {
            let fits_end = cap - tail >= n;
            let fits_front = head >= n;
            if fits_front && (tail >= SOFT_WRAP || !fits_end) {
                if cap - tail >= 4 {
                    self.write(tail, &WRAP.to_le_bytes());
                }
                0
            } else if fits_end {
                tail
            } else {
                return None;
            }
        } else if tail < head && head - tail >= n {
            tail
        } else {
            // tail == head with items in the queue: full; or too little room before head.
            return None;
        };
        assert!(at as usize + n as usize <= cap as usize);
        let end = at + n;
        if end > h.words.0.high_water.load(Ordering::Relaxed) {
            h.words.0.high_water.store(end, Ordering::Relaxed);
        }
        Some(at)
    }

    /// Makes the `n`-byte frame written at `at` (given by [`place`](Self::place)) the newest
    /// item, with one store.
    fn publish(&self, at: u32, n: usize) {
        let h = self.h();
        let (_, puts) = unpack(h.prod.0.load(Ordering::Relaxed));
        h.prod
            .0
            .store(pack(at + n as u32, puts.wrapping_add(1)), Ordering::Release);
        let words = &h.words.0;
        if words.fd_waiters.load(Ordering::Relaxed) > 0
            && words.event_set.load(Ordering::Relaxed) == 0
        {
            words.event_set.store(1, Ordering::Relaxed);
            let _ = rustix::io::write(self.q.event_fd(), &1u64.to_ne_bytes());
        }
    }

    /// Whether a live producer is filling reserved space without the main lock (see
    /// [`begin_write`](Self::begin_write)); if so, wait with [`ShmQueue::wait_writer`] before
    /// putting anything, so that frames stay in the order of their places. One that died
    /// while at it is forgotten here: its space was never published.
    ///
    /// # Errors
    /// The OS error of the lock call.
    pub(crate) fn writer_busy(&mut self) -> io::Result<bool> {
        side_busy(&self.h().words.0.writing, self.h().wmutex.0.get())
    }

    /// Starts appending an `n`-byte frame without holding the main lock, so that consumers
    /// can go on getting while it is filled: the space is reserved now, and the frame is
    /// published by [`LargeWrite::finish`], under the main lock, by the one atomic store a
    /// [`push_with`](Self::push_with) makes. Meanwhile other producers see the writer lock
    /// held and wait; if this process dies first, the writer lock's owner is dead, and the
    /// space, never published, is free again for the next producer. Call only when
    /// [`writer_busy`](Self::writer_busy) said no.
    pub(crate) fn begin_write(mut self, n: usize) -> io::Result<Reserved<'a>> {
        let m = self.h().wmutex.0.get();
        // SAFETY: `m` is the initialised process-shared writer mutex in our mapping.
        let r = unsafe { libc::pthread_mutex_trylock(m) };
        if !locked(m, r)? {
            // Only a caller of `wait_writer`, between its lock and unlock, holds it now.
            return Ok(Reserved::Busy(self));
        }
        let fresh_from = self.h().words.0.high_water.load(Ordering::Relaxed);
        let Some(at) = self.place(n) else {
            // SAFETY: we hold the writer mutex (taken just above).
            unsafe { libc::pthread_mutex_unlock(m) };
            return Ok(Reserved::NoRoom(self));
        };
        self.h().words.0.writing.store(1, Ordering::Relaxed);
        let q = self.q;
        drop(self);
        // Pages never written yet would each fault on first touch; one call maps them all.
        let start = (at.max(fresh_from) as usize) & !(PAGE - 1);
        let end = at as usize + n;
        if end > start {
            // SAFETY: `[start, end)` lies inside the ring's mapping (`at + n <= cap`, checked by
            // `place`); populating only faults pages in, which changes no byte of them.
            let _ = unsafe {
                rustix::mm::madvise(
                    q.data().add(start).cast(),
                    end - start,
                    rustix::mm::Advice::LinuxPopulateWrite,
                )
            };
        }
        Ok(Reserved::Space(LargeWrite {
            q,
            at,
            n,
            done: false,
        }))
    }

    /// The oldest frame: the offset of its payload, its length, and the numbers of gets and
    /// puts so far (`Ok(None)` when empty).
    fn head_frame(&self) -> io::Result<Option<(u32, u32, u32, u32)>> {
        let cap = self.q.cap;
        let h = self.h();
        let (tail, puts) = unpack(h.prod.0.load(Ordering::Acquire));
        let (mut head, gets) = unpack(h.cons.0.load(Ordering::Relaxed));
        if puts == gets {
            return Ok(None);
        }
        let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "queue memory is corrupted");
        if cap - head < 4 || self.read_u32(head) == WRAP {
            head = 0;
        }
        let len = self.read_u32(head);
        let end = u64::from(head) + 4 + u64::from(len);
        if len == WRAP || end > u64::from(cap) || (head < tail && end > u64::from(tail)) {
            return Err(corrupt());
        }
        Ok(Some((head + 4, len, gets, puts)))
    }

    /// Removes the oldest frame and calls `f` with its payload (`Ok(None)` when empty). The
    /// item counts as taken even if `f` fails or panics. Call only when
    /// [`reader_busy`](Self::reader_busy) said no.
    ///
    /// # Errors
    /// `InvalidData` if the ring holds a frame that cannot be valid (memory corrupted by a
    /// misbehaving process); the queue is unusable after that.
    pub(crate) fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> io::Result<Option<R>> {
        Ok(match self.pop_small_with(u32::MAX, f)? {
            Popped::Item(r) => Some(r),
            Popped::Empty | Popped::Large => None,
        })
    }

    /// As [`pop_with`](Self::pop_with), but leaves a frame whose payload is longer than
    /// `max` in place ([`Popped::Large`]), for [`begin_read`](Self::begin_read).
    ///
    /// # Errors
    /// As for [`pop_with`](Self::pop_with).
    pub(crate) fn pop_small_with<R>(
        &mut self,
        max: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<Popped<R>> {
        let Some((at, len, gets, puts)) = self.head_frame()? else {
            return Ok(Popped::Empty);
        };
        if len > max {
            return Ok(Popped::Large);
        }
        // The frame is taken (one store to `cons`) only once `f` has returned or unwound: a
        // process killed while `f` runs dies holding the lock with the frame still at the
        // head, and the next locker takes it over (EOWNERDEAD) and finds it there.
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
        // committed frame. Producers write only free space and only under the lock, which we
        // hold until this guard drops, so nothing writes these bytes while `f` reads them.
        let payload =
            unsafe { std::slice::from_raw_parts(self.q.data().add(at as usize), len as usize) };
        let result = f(payload);
        drop(take);
        if gets.wrapping_add(1) == puts {
            self.drained();
        }
        Ok(Popped::Item(result))
    }

    /// The queue was just emptied: gives memory back, and the event descriptor is no longer
    /// readable.
    fn drained(&self) {
        self.release_memory();
        let words = &self.h().words.0;
        if words.event_set.load(Ordering::Relaxed) != 0 {
            words.event_set.store(0, Ordering::Relaxed);
            let mut drain = [0u8; 8];
            let _ = rustix::io::read(self.q.event_fd(), &mut drain);
        }
    }

    /// Whether a live consumer is taking the oldest frame without the main lock (see
    /// [`begin_read`](Self::begin_read)); if so, wait with [`ShmQueue::wait_reader`] before
    /// taking anything. One that died while at it is forgotten here: its frame was never
    /// taken, and stays at the head for the next consumer.
    ///
    /// # Errors
    /// The OS error of the lock call.
    pub(crate) fn reader_busy(&mut self) -> io::Result<bool> {
        side_busy(&self.h().words.0.reading, self.h().rmutex.0.get())
    }

    /// Starts taking the oldest frame without holding the main lock, so that producers can
    /// go on putting while its payload is read: the frame stays in the ring (neither reused
    /// by producers nor visible as taken) until [`LargeRead`] commits, under the main lock,
    /// by the one atomic store a [`pop_with`](Self::pop_with) makes. Meanwhile other
    /// consumers see the reader lock held and wait; if this process dies first, the reader
    /// lock's owner is dead, and the next consumer takes the frame instead (nothing lost,
    /// nothing taken twice). Call only when [`reader_busy`](Self::reader_busy) said no.
    ///
    /// Returns the guard back (`Err`) if the queue is empty or the reader lock is taken.
    ///
    /// # Errors
    /// As for [`pop_with`](Self::pop_with).
    pub(crate) fn begin_read(self) -> io::Result<Result<LargeRead<'a>, Guard<'a>>> {
        let guard = self;
        let Some((at, len, gets, _)) = guard.head_frame()? else {
            return Ok(Err(guard));
        };
        let m = guard.h().rmutex.0.get();
        // SAFETY: `m` is the initialised process-shared reader mutex in our mapping.
        let r = unsafe { libc::pthread_mutex_trylock(m) };
        if !locked(m, r)? {
            return Ok(Err(guard));
        }
        guard.h().words.0.reading.store(1, Ordering::Relaxed);
        let q = guard.q;
        drop(guard);
        Ok(Ok(LargeRead {
            q,
            at,
            len,
            gets,
            done: false,
        }))
    }

    /// Once drained, gives pages beyond [`KEEP`] back to the OS (not while a producer may
    /// be writing into reserved space there).
    fn release_memory(&self) {
        let words = &self.h().words.0;
        if words.writing.load(Ordering::Relaxed) != 0 {
            return;
        }
        let high = words.high_water.load(Ordering::Relaxed);
        if high > KEEP {
            let start = u64::from(KEEP) + PAGE as u64;
            let len = u64::from(high - KEEP).div_ceil(PAGE as u64) * PAGE as u64;
            let _ = rustix::fs::fallocate(
                &self.q.fd,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                len,
            );
            words.high_water.store(KEEP, Ordering::Relaxed);
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard exists only while the calling thread holds the mutex.
        unsafe {
            libc::pthread_mutex_unlock(self.q.header().mutex.0.get());
        }
    }
}

/// Whether a live process holds the side lock `m` (the reader or writer lock) and is at work
/// under it, as `flag` says; called with the main lock held, which `flag` is changed under.
fn side_busy(flag: &AtomicU32, m: *mut libc::pthread_mutex_t) -> io::Result<bool> {
    if flag.load(Ordering::Relaxed) == 0 {
        return Ok(false);
    }
    // SAFETY: `m` is an initialised process-shared mutex in the queue's mapping.
    let r = unsafe { libc::pthread_mutex_trylock(m) };
    if !locked(m, r)? {
        return Ok(true);
    }
    // `flag` is set only while its process holds the side lock, yet we got the lock: that
    // process died mid-copy, before its commit or publish.
    flag.store(0, Ordering::Relaxed);
    // SAFETY: we hold the mutex (taken just above).
    unsafe { libc::pthread_mutex_unlock(m) };
    Ok(false)
}

/// Takes the robust mutex `m` (in a queue's mapping), waiting until `deadline`, and releases
/// it at once: returns when the process that held it is done or dead. `Ok(false)` when the
/// deadline passed.
fn wait_for(m: *mut libc::pthread_mutex_t, deadline: Option<Instant>) -> io::Result<bool> {
    let locked = lock_robust(m, deadline)?;
    if locked {
        // SAFETY: we hold the mutex (just locked above).
        unsafe { libc::pthread_mutex_unlock(m) };
    }
    Ok(locked)
}

/// Locks the robust mutex `m` (in a queue's mapping), waiting until `deadline`; `Ok(false)`
/// when it passed. A dead owner's lock is taken over: the queue needs no repair (see the
/// module docs).
fn lock_robust(m: *mut libc::pthread_mutex_t, deadline: Option<Instant>) -> io::Result<bool> {
    let r = match deadline {
        // SAFETY: the caller passes an initialised process-shared mutex in a live mapping.
        None => unsafe { libc::pthread_mutex_lock(m) },
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let abs = realtime_after(left)?;
            // SAFETY: as above; `abs` is a valid timespec.
            unsafe { libc::pthread_mutex_timedlock(m, &abs) }
        }
    };
    locked(m, r)
}

/// The outcome of a lock call on robust mutex `m` that returned `r`: `Ok(true)` if now held
/// (after making a dead owner's mutex consistent), `Ok(false)` if busy or timed out.
fn locked(m: *mut libc::pthread_mutex_t, r: libc::c_int) -> io::Result<bool> {
    match r {
        0 => Ok(true),
        libc::EOWNERDEAD => {
            // A holder died. The ring is consistent at every instant (see the module docs),
            // so marking the mutex consistent is all the repair needed.
            // SAFETY: we own the mutex now (EOWNERDEAD means it was acquired).
            check(unsafe { libc::pthread_mutex_consistent(m) })?;
            tracing::warn!("a process died holding a queue's lock; recovered");
            Ok(true)
        }
        libc::ETIMEDOUT | libc::EBUSY => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// What [`Guard::pop_small_with`] found.
pub(crate) enum Popped<R> {
    /// The queue is empty.
    Empty,
    /// The oldest frame was taken; what the callback returned.
    Item(R),
    /// The oldest frame is too large, and was left in place.
    Large,
}

/// A frame being taken without the main lock (see [`Guard::begin_read`]); holds the reader
/// lock. Taken for good by [`finish`](Self::finish), or when dropped (a panic included).
pub(crate) struct LargeRead<'a> {
    q: &'a ShmQueue,
    at: u32,
    len: u32,
    gets: u32,
    done: bool,
}

impl<'a> LargeRead<'a> {
    /// The frame's payload.
    pub(crate) fn payload(&self) -> &[u8] {
        // SAFETY: `[at, at + len)` is inside the ring (checked by `head_frame`) and holds a
        // committed frame. It is not taken yet, so no producer writes there (they write only
        // free space, which ends at the taken offset); other consumers wait while `reading`
        // is set and its holder, this one, lives.
        unsafe {
            std::slice::from_raw_parts(self.q.data().add(self.at as usize), self.len as usize)
        }
    }

    /// Takes the frame for good and lets other consumers on; returns the main lock, held.
    ///
    /// # Errors
    /// The OS error if the main lock cannot be taken (the frame is then left in the queue).
    pub(crate) fn finish(mut self) -> io::Result<Guard<'a>> {
        self.done = true;
        self.commit()
    }

    fn commit(&self) -> io::Result<Guard<'a>> {
        let guard = match self.q.lock(None) {
            Ok(g) => g.expect("no deadline"),
            Err(e) => {
                // SAFETY: we hold the reader mutex (since `begin_read`).
                unsafe { libc::pthread_mutex_unlock(self.q.header().rmutex.0.get()) };
                return Err(e);
            }
        };
        let h = guard.h();
        let gets = self.gets.wrapping_add(1);
        h.cons
            .0
            .store(pack(self.at + self.len, gets), Ordering::Release);
        h.words.0.reading.store(0, Ordering::Relaxed);
        // SAFETY: we hold the reader mutex (since `begin_read`).
        unsafe { libc::pthread_mutex_unlock(h.rmutex.0.get()) };
        let (_, puts) = unpack(h.prod.0.load(Ordering::Relaxed));
        if puts == gets {
            guard.drained();
        }
        Ok(guard)
    }
}

impl Drop for LargeRead<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commit();
        }
    }
}

/// What [`Guard::begin_write`] found.
pub(crate) enum Reserved<'a> {
    /// Space was reserved, to be filled without the main lock.
    Space(LargeWrite<'a>),
    /// No room for the frame now; the main lock, still held.
    NoRoom(Guard<'a>),
    /// The writer lock is briefly taken by a waiter; try again.
    Busy(Guard<'a>),
}

/// Space being filled without the main lock (see [`Guard::begin_write`]); holds the writer
/// lock. Published by [`finish`](Self::finish); dropped unfinished (a failed or panicking
/// fill), it is given up and nothing is appended.
pub(crate) struct LargeWrite<'a> {
    q: &'a ShmQueue,
    at: u32,
    n: usize,
    done: bool,
}

impl<'a> LargeWrite<'a> {
    /// The reserved space, to fill with the whole frame.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        // SAFETY: `place` gave this range as free space inside the ring. Nothing else writes
        // it or reads it until it is published: other producers wait while `writing` is set
        // and its holder, this one, lives; consumers read only published frames, and do not
        // give memory back while `writing` is set. `&mut self` makes this the only view.
        unsafe { self.q.free_space(self.at, self.n) }
    }

    /// Publishes the frame and lets other producers on; returns the main lock, held.
    ///
    /// # Errors
    /// The OS error if the main lock cannot be taken (nothing is appended then).
    pub(crate) fn finish(mut self) -> io::Result<Guard<'a>> {
        self.done = true;
        self.end(true)
    }

    fn end(&self, publish: bool) -> io::Result<Guard<'a>> {
        let wmutex = self.q.header().wmutex.0.get();
        let guard = match self.q.lock(None) {
            Ok(g) => g.expect("no deadline"),
            Err(e) => {
                // SAFETY: we hold the writer mutex (since `begin_write`).
                unsafe { libc::pthread_mutex_unlock(wmutex) };
                return Err(e);
            }
        };
        if publish {
            guard.publish(self.at, self.n);
        }
        guard.h().words.0.writing.store(0, Ordering::Relaxed);
        // SAFETY: we hold the writer mutex (since `begin_write`).
        unsafe { libc::pthread_mutex_unlock(wmutex) };
        Ok(guard)
    }
}

impl Drop for LargeWrite<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.end(false);
        }
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn realtime_after(d: Duration) -> io::Result<libc::timespec> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let mut sec = now
        .tv_sec
        .saturating_add(d.as_secs().min(i64::MAX as u64 / 2) as i64);
    let mut nsec = now.tv_nsec + i64::from(d.subsec_nanos());
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    Ok(libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    })
}

/// A new open file description for the file behind `fd`, through `/proc/self/fd`.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn ofd_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_int,
    byte: i64,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = byte as _;
    fl.l_len = 1;
    loop {
        // SAFETY: `fl` is a valid `flock` that lives across the call; OFD lock commands
        // require `l_pid` to be 0, which it is.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
        if r == 0 {
            return Ok(fl);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Marks the open file description `fd` as a holder of `role` (a byte of the lock file).
/// Held until [`ofd_release`] or until every descriptor of it is closed (exit included).
pub(crate) fn ofd_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    ofd_lock(fd, libc::F_OFD_SETLKW, libc::F_RDLCK, role).map(drop)
}

/// Stops `fd` being a holder of `role`.
pub(crate) fn ofd_release(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    ofd_lock(fd, libc::F_OFD_SETLK, libc::F_UNLCK, role).map(drop)
}

/// Whether any open file description other than `fd`'s holds `role`.
pub(crate) fn ofd_others_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<bool> {
    let fl = ofd_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK, role)?;
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}
