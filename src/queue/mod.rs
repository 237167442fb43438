//! [`Queue`], [`SimpleQueue`] and [`JoinableQueue`]: many-producer, many-consumer queues
//! between processes (Python's `multiprocessing.Queue` and friends).
//!
//! Items live in shared memory (a memfd ring: its protocol, and why a crash cannot wedge it,
//! are in `README.md` beside this file), written there before `put` returns: there is no feeder
//! thread, so an item whose `put` returned `Ok` is in the queue even if its producer exits or
//! is killed right after, and Python's pitfall (joining a child before draining what it put)
//! cannot deadlock an unbounded queue. Producers and consumers each have their own lock and
//! never wait for each other's: a small item costs one lock and one copy and no system call
//! unless the other side sleeps; a large one costs a copy in and a copy out, never pipe chunks,
//! and a producer copies one in while a consumer copies another out. A process killed in the
//! middle of a `put` or `get` leaves the queue as it was before that call began (a
//! `JoinableQueue`'s unfinished count included: an item is counted by the same store that puts
//! it in the queue). If it held one of the queue's two locks, the next process that wants it
//! takes it over once it sees the holder dead, within a few tens of milliseconds, under every
//! start method; until then even `put_nowait` and `get_nowait` wait for it, as they do for a
//! live holder's copy.
//!
//! Every handle (the original, each clone, each copy a child received) is registered with the
//! kernel as a holder of the queue until it is dropped, [closed](Queue::close) or its process
//! ends (killed included); when a `get` finds the queue empty and no other unclosed handle is
//! left, it returns [`GetError::Disconnected`] within 50 ms instead of blocking forever.
//! Handles that only get should therefore be closed, so that they do not count as possible
//! producers for each other. A handle inherited through `fork` counts as held by every
//! process that inherited it (a child also inherits its parent's handles, as it inherits
//! every descriptor), so a child does not see its parent's own handle go away.
//!
//! Because every handle can also get, `put` into a queue with room never fails for want of
//! readers: the putting process can always get the item back itself, and a queue filled
//! before its consumers start is a common pattern. What would hang is a blocking `put` into a
//! *full* bounded queue that no other handle holds any more: that returns
//! [`PutError::Disconnected`] with the item, as a `get` on an empty queue returns
//! [`GetError::Disconnected`].
//!
//! Files: `ring.rs` the ring, `wake.rs` how a blocked call sleeps and is woken, `simple.rs` and
//! `joinable.rs` the two wrappers; this file the put and get loops and handle registration.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Waitable;
pub use crate::error::{DecodeError, EncodeError, GetError, PutError};
use crate::sys;
use crate::wire::{self, DeFd, HEADER, SerFd};

/// The shared-memory ring: raw copies into and out of memory other processes write.
#[allow(unsafe_code)]
mod ring;

use ring::{Pushed, ShmQueue, Words};

/// `SimpleQueue` and `JoinableQueue` are cloned, printed and waited on as the `Queue` inside
/// them; by hand, not derived, so that a handle is cloneable and printable whatever its item
/// type. Defined before the modules that use it (`macro_rules!` scope is textual).
macro_rules! handle_around_a_queue {
    ($($wrapper:ident),*) => {$(
        impl<T> Clone for $wrapper<T> {
            /// Another handle to the same queue.
            ///
            /// # Panics
            /// If the process is out of file descriptors.
            fn clone(&self) -> Self {
                $wrapper(self.0.clone())
            }
        }

        impl<T> ::std::fmt::Debug for $wrapper<T> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_tuple(stringify!($wrapper)).field(&self.0).finish()
            }
        }

        impl<T> crate::connection::Waitable for $wrapper<T> {
            fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
                self.0.wait_fd()
            }

            fn ready_now(&self) -> bool {
                self.0.ready_now()
            }

            fn done_waiting(&self) {
                self.0.done_waiting();
            }

            fn needs_recheck(&self) -> bool {
                self.0.needs_recheck()
            }
        }
    )*};
}

mod joinable;
mod simple;
mod wake;

pub use joinable::{JoinableQueue, TaskDoneError};
pub use simple::SimpleQueue;
use wake::{Sleepers, Wait, await_briefly, deadline_after};

/// Ring size: room for one message of the largest size the crate allows. Memory is only used
/// as items are written, and given back beyond 128 MiB once the queue drains.
const RING: usize = wire::MAX_FRAME + 4096;

/// Items whose frame is larger than this are serialized straight into shared memory (under
/// the producers' lock, which holds up no getter); smaller ones into a scratch buffer first,
/// so the lock is held only for a copy.
const IN_PLACE: usize = 64 * 1024;

/// The OFD-lock byte that marks a handle that may still put.
const PRODUCER: i64 = 0;

/// The OFD-lock byte that marks a handle that may still get: held until the handle's last
/// descriptor closes (dropped, or its process ended), since `close` only ends putting.
const GETTER: i64 = 1;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A first-in first-out queue shared by processes: Python's `multiprocessing.Queue`.
///
/// Any number of processes may put and get at once. Clone the queue for each process that
/// needs it and move the clone into the child (captured under `fork`, or as a start
/// argument). Items are serialized with serde (postcard); decoding never runs code from the
/// bytes. A queue cannot be sent through another queue or connection.
///
/// # Examples
/// ```
/// use multiproc::{Process, Queue};
///
/// let q: Queue<(u32, String)> = Queue::new()?;
/// let producer = q.clone();
/// let mut p = Process::new(move || {
///     for i in 0..3 {
///         producer.put((i, format!("item {i}"))).unwrap();
///     }
/// });
/// p.start()?;
/// for i in 0..3 {
///     assert_eq!(q.get()?, (i, format!("item {i}")));
/// }
/// p.join()?;
/// // The producer is gone and the queue is empty: no hang.
/// assert!(matches!(q.get(), Err(multiproc::queue::GetError::Disconnected)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Items must be serializable; anything else is refused at compile time:
/// ```compile_fail
/// struct NotSerde;
/// let q: multiproc::Queue<NotSerde> = multiproc::Queue::new().unwrap();
/// q.put(NotSerde);
/// ```
pub struct Queue<T> {
    shm: Arc<ShmQueue>,
    /// This handle's own open file description of the queue's memfd: its OFD lock says
    /// "this handle may still put".
    ofd: OwnedFd,
    closed: AtomicBool,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    /// An unbounded queue, Python's `Queue()`.
    ///
    /// "Unbounded" means up to 1 GiB of items waiting, after which `put` blocks.
    ///
    /// # Errors
    /// The OS error if shared memory cannot be created.
    pub fn new() -> crate::Result<Queue<T>> {
        Queue::with_maxsize(0)
    }

    /// A queue holding at most `maxsize` items (`put` blocks while it is full), Python's
    /// `Queue(maxsize)`; `0` means no limit.
    ///
    /// # Errors
    /// As [`new`](Queue::new).
    pub fn with_maxsize(maxsize: usize) -> crate::Result<Queue<T>> {
        let maxsize = u32::try_from(maxsize).unwrap_or(u32::MAX);
        let shm = Arc::new(ShmQueue::create(RING, maxsize)?);
        Queue::handle(shm)
    }

    fn handle(shm: Arc<ShmQueue>) -> crate::Result<Queue<T>> {
        let ofd = shm.reopen()?;
        sys::ofd_hold(ofd.as_fd(), PRODUCER)?;
        sys::ofd_hold(ofd.as_fd(), GETTER)?;
        Ok(Queue {
            shm,
            ofd,
            closed: AtomicBool::new(false),
            _items: PhantomData,
        })
    }

    /// Another handle to the same queue, to move into another process.
    ///
    /// # Errors
    /// The OS error if a descriptor cannot be opened.
    pub fn try_clone(&self) -> crate::Result<Queue<T>> {
        Queue::handle(Arc::clone(&self.shm))
    }

    /// The approximate number of items in the queue, Python's `qsize()`.
    pub fn qsize(&self) -> usize {
        self.shm.len() as usize
    }

    /// Whether the queue is empty (a snapshot, as in Python).
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue holds `maxsize` items (a snapshot, as in Python).
    pub fn full(&self) -> bool {
        let max = self.shm.maxsize();
        max != 0 && self.shm.len() >= max
    }

    /// Says that this handle will put no more items, Python's `close()`. Getting still
    /// works. Once every handle that could put is closed or gone, a `get` on an empty queue
    /// returns [`GetError::Disconnected`]. Closing twice is fine.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = sys::ofd_release(self.ofd.as_fd(), PRODUCER);
        }
    }

    /// Whether [`close`](Queue::close) was called on this handle.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether another handle (in this or another process) may still put.
    pub(crate) fn others_may_put(&self) -> io::Result<bool> {
        sys::ofd_others_hold(self.ofd.as_fd(), PRODUCER)
    }
}

/// For `crate::aio`, which waits with the non-blocking calls above plus readiness: a full
/// queue has no descriptor that signals room, so an async `put` sleeps for room on a helper
/// thread, through this.
#[cfg(any(feature = "tokio", feature = "async-io"))]
impl<T> Queue<T> {
    /// Whether another handle (in this or another process) may still get.
    pub(crate) fn others_may_get(&self) -> io::Result<bool> {
        sys::ofd_others_hold(self.ofd.as_fd(), GETTER)
    }

    /// A sleep, for another thread, that ends once a get may have made room since this call
    /// (counted as a sleeping producer, so the getter wakes it), or after `nap`.
    pub(crate) fn room_sleeper(&self) -> impl FnOnce(Duration) + Send + 'static {
        let shm = Arc::clone(&self.shm);
        let gets = shm.gets();
        move |nap| {
            let words = shm.words();
            let seen = words.not_full.load(Ordering::Acquire);
            words.not_full_sleepers.fetch_add(1, Ordering::SeqCst);
            // As in `put_frame`: either the getter sees us counted, or we see its get here.
            std::sync::atomic::fence(Ordering::SeqCst);
            if shm.gets() == gets && !shm.has_room_hint() {
                shm.sleep(&words.not_full, seen, nap);
            }
            words.not_full_sleepers.fetch_sub(1, Ordering::AcqRel);
            words.not_full_pending.store(0, Ordering::Release);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Puts `item` at the back of the queue, blocking while the queue is full.
    ///
    /// When this returns `Ok` the item is in shared memory: it is delivered even if this
    /// process exits at once.
    ///
    /// # Errors
    /// [`PutError::Closed`] after [`close`](Queue::close), [`PutError::Encode`] when the item
    /// cannot be serialized or exceeds 1 GiB. The item comes back inside the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Wait::Forever)
    }

    /// As [`put`](Queue::put), waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Wait::Until(deadline_after(timeout)))
    }

    /// Puts `item` only if there is room now, Python's `put_nowait`.
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Full`].
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Wait::No)
    }

    /// Takes the item at the front of the queue, blocking while it is empty.
    ///
    /// # Errors
    /// [`GetError::Disconnected`] when the queue is empty and no other handle that may put
    /// is left; [`GetError::Decode`] when the item's bytes are not a `T` (it is consumed).
    pub fn get(&self) -> Result<T, GetError> {
        self.get_until(Wait::Forever)
    }

    /// As [`get`](Queue::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// As `get`, plus [`GetError::Timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_until(Wait::Until(deadline_after(timeout)))
    }

    /// Takes an item only if one is there now, Python's `get_nowait`.
    ///
    /// # Errors
    /// As `get`, plus [`GetError::Empty`].
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.get_until(Wait::No)
    }

    fn put_until(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        if self.is_closed() {
            return Err(PutError::Closed(item));
        }
        let size = match postcard::experimental::serialized_size(&item) {
            Ok(size) => size,
            Err(e) => {
                let e = EncodeError::new("could not serialize the item", Some(Box::new(e)));
                return Err(PutError::Encode(item, e));
            }
        };
        let header = match wire::header_for(size) {
            Ok(h) if HEADER + size <= self.shm.max_frame() => h,
            Ok(_) => {
                let e = EncodeError::new(
                    format!("item of {size} bytes does not fit in the queue"),
                    None,
                );
                return Err(PutError::Encode(item, e));
            }
            Err(e) => return Err(PutError::Encode(item, e)),
        };
        if HEADER + size <= IN_PLACE {
            // Small: encode into a scratch buffer outside the lock, copy in under it.
            SCRATCH.with_borrow_mut(|frame| {
                frame.clear();
                if let Err(e) = wire::encode_into(&item, frame) {
                    return Err(PutError::Encode(item, e));
                }
                if frame.len() != HEADER + size {
                    let e = EncodeError::new("the item serialized to different sizes twice", None);
                    return Err(PutError::Encode(item, e));
                }
                self.put_frame(item, HEADER + size, wait, |buf| {
                    buf.copy_from_slice(frame);
                    Ok(())
                })
            })
        } else {
            // Large: serialize straight into shared memory, one copy in all.
            let fill = |buf: &mut [u8]| {
                buf[..HEADER].copy_from_slice(&header);
                match postcard::to_slice(&item, &mut buf[HEADER..]) {
                    Ok(used) if used.len() == size => Ok(()),
                    Ok(_) => Err(EncodeError::new(
                        "the item serialized to different sizes twice",
                        None,
                    )),
                    Err(e) => Err(EncodeError::new(
                        "could not serialize the item",
                        Some(Box::new(e)),
                    )),
                }
            };
            match self.put_frame((), HEADER + size, wait, fill) {
                Ok(()) => Ok(()),
                Err(e) => Err(e.map_item(item)),
            }
        }
    }

    /// Appends an `n`-byte frame written by `fill`, waiting for room as `wait` allows.
    fn put_frame<I>(
        &self,
        item: I,
        n: usize,
        wait: Wait,
        mut fill: impl FnMut(&mut [u8]) -> Result<(), EncodeError>,
    ) -> Result<(), PutError<I>> {
        let words = self.shm.words();
        loop {
            let mut guard = match self.shm.lock_put(wait.deadline()) {
                Ok(Some(g)) => g,
                Ok(None) => return Err(PutError::Timeout(item)),
                Err(e) => return Err(PutError::Io(item, e)),
            };
            // A `JoinableQueue` counts the item as unfinished with the store that publishes
            // it (the number of puts): a getter's `task_done` always finds it counted, and a
            // producer killed before that store leaves neither item nor count.
            let gets = match guard.push_with(n, &mut fill) {
                Ok(Ok(Pushed::Done)) => {
                    drop(guard);
                    std::sync::atomic::fence(Ordering::SeqCst);
                    Sleepers::for_items(words).wake_one(&self.shm, || true);
                    // Room left for other blocked producers? Pass the baton on.
                    Sleepers::for_room(words).wake_one(&self.shm, || self.shm.has_room_hint());
                    return Ok(());
                }
                Ok(Ok(Pushed::NoRoom { gets })) => gets,
                Ok(Err(e)) => return Err(PutError::Encode(item, e)),
                Err(e) => return Err(PutError::Io(item, e)),
            };
            let seen = words.not_full.load(Ordering::Acquire);
            let nap = match wait.nap() {
                Some(nap) => nap,
                None if matches!(wait, Wait::No) => return Err(PutError::Full(item)),
                None => return Err(PutError::Timeout(item)),
            };
            // Full, and no other handle is left (closed ones still count, as they may get): no
            // get can ever make room, so sleeping would never end.
            match sys::ofd_others_hold(self.ofd.as_fd(), GETTER) {
                Ok(true) => {}
                Ok(false) => return Err(PutError::Disconnected(item)),
                Err(e) => return Err(PutError::Io(item, e)),
            }
            drop(guard);
            if await_briefly(|| self.shm.gets() != gets) {
                continue;
            }
            words.not_full_sleepers.fetch_add(1, Ordering::SeqCst);
            // Either a getter that made room after our look sees us counted (and wakes us),
            // or we see its get here and look again.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.shm.gets() == gets {
                self.shm.sleep(&words.not_full, seen, nap);
            }
            words.not_full_sleepers.fetch_sub(1, Ordering::AcqRel);
            words.not_full_pending.store(0, Ordering::Release);
        }
    }

    fn get_until(&self, wait: Wait) -> Result<T, GetError> {
        let words = self.shm.words();
        loop {
            let mut guard = match self.shm.lock_get(wait.deadline()) {
                Ok(Some(g)) => g,
                Ok(None) => return Err(GetError::Timeout),
                Err(e) => return Err(GetError::Io(e)),
            };
            let popped = guard
                .pop_with(wire::decode_payload::<T>)
                .map_err(GetError::Io)?;
            if let Some(decoded) = popped {
                drop(guard);
                std::sync::atomic::fence(Ordering::SeqCst);
                Sleepers::for_room(words).wake_one(&self.shm, || true);
                // Items left for other sleeping consumers? Pass the baton on.
                Sleepers::for_items(words).wake_one(&self.shm, || self.shm.len() > 0);
                return Ok(decoded?);
            }
            if matches!(wait, Wait::No) {
                return Err(GetError::Empty);
            }
            drop(guard);
            if await_briefly(|| self.shm.len() > 0) {
                continue;
            }
            let seen = words.not_empty.load(Ordering::Acquire);
            words.not_empty_sleepers.fetch_add(1, Ordering::SeqCst);
            // Either a putter that published after our look sees us counted (and wakes us),
            // or we see its item here and look again.
            std::sync::atomic::fence(Ordering::SeqCst);
            let result = if self.shm.len() == 0 {
                self.sleep_for_item(&wait, words, seen)
            } else {
                Ok(())
            };
            words.not_empty_sleepers.fetch_sub(1, Ordering::AcqRel);
            words.not_empty_pending.store(0, Ordering::Release);
            result?;
        }
    }

    /// Sleeps until an item may have arrived; errors when none can come or time ran out.
    fn sleep_for_item(&self, wait: &Wait, words: &Words, seen: u32) -> Result<(), GetError> {
        if !self.others_may_put().map_err(GetError::Io)? {
            // Nobody else can put. An item put just before the last producer left is still
            // in the queue (a put is one store): look once more before giving up.
            return if self.shm.len() == 0 {
                Err(GetError::Disconnected)
            } else {
                Ok(())
            };
        }
        match wait.nap() {
            Some(nap) => {
                self.shm.sleep(&words.not_empty, seen, nap);
                Ok(())
            }
            None => Err(GetError::Timeout),
        }
    }
}

impl<T> Clone for Queue<T> {
    /// Another handle to the same queue (see [`try_clone`](Queue::try_clone)).
    ///
    /// # Panics
    /// If the process is out of file descriptors.
    fn clone(&self) -> Self {
        self.try_clone()
            .expect("could not open a descriptor for a queue handle")
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("qsize", &self.qsize())
            .field("maxsize", &self.shm.maxsize())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A queue handle serializes only as a start argument for a child process: its descriptor
/// travels beside the arguments, and the child's handle is this one (the two share one
/// registration as a holder of the queue, as after `fork`).
impl<T> Serialize for Queue<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            SerFd(self.ofd.as_fd()),
            SerFd(self.shm.event_fd()),
            self.is_closed(),
        )
            .serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for Queue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (DeFd(ofd), DeFd(event), closed): (DeFd, DeFd, bool) =
            serde::Deserialize::deserialize(d)?;
        let shm = sys::reopen(ofd.as_fd())
            .and_then(|fd| ShmQueue::open(fd, event))
            .map_err(serde::de::Error::custom)?;
        Ok(Queue {
            shm: Arc::new(shm),
            ofd,
            closed: AtomicBool::new(closed),
            _items: PhantomData,
        })
    }
}

/// A queue is ready for [`wait`](crate::connection::wait) when it holds an item (Python's
/// `wait([q._reader])`).
impl<T> Waitable for Queue<T> {
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.shm.event_fd())
    }

    fn ready_now(&self) -> bool {
        self.register_waiter(true)
    }

    fn done_waiting(&self) {
        self.register_waiter(false);
    }

    fn needs_recheck(&self) -> bool {
        true
    }
}

impl<T> Queue<T> {
    fn register_waiter(&self, want: bool) -> bool {
        if !want {
            let _ = self.shm.words().fd_waiters.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |n| n.checked_sub(1),
            );
            return false;
        }
        // Registering takes the producers' lock so that no put can slip between the check
        // and the registration; it is held only for copies, so a short bound suffices.
        match self
            .shm
            .want_event(Some(Instant::now() + Duration::from_millis(100)))
        {
            Ok(Some(items)) => items,
            // Ready: the caller's next operation waits properly or reports the error.
            _ => {
                self.shm.words().fd_waiters.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the spawn start method does with a handle in the start arguments.
    fn through_start_arguments<H: Serialize + DeserializeOwned>(handle: &H) -> H {
        let (bytes, fds) = wire::collect_fds(|| postcard::to_allocvec(handle));
        let bytes = bytes.expect("serialize");
        wire::with_received_fds(fds, || postcard::from_bytes(&bytes)).expect("deserialize")
    }

    #[test]
    fn a_handle_passed_as_a_start_argument_reaches_the_same_queue() {
        let q: Queue<String> = Queue::new().unwrap();
        let sent: Queue<String> = q.clone();
        let received = through_start_arguments(&sent);
        drop(sent);
        received.put("over there".into()).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), "over there");
        // The received handle is a holder: the original does not see Disconnected yet.
        assert!(matches!(
            q.get_timeout(Duration::from_millis(60)),
            Err(GetError::Timeout)
        ));
        drop(received);
        assert!(matches!(q.get(), Err(GetError::Disconnected)));
    }

    /// Kills the process on drop, so a failing assertion leaves no child behind.
    struct KillOnDrop(crate::Process);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.join_timeout(Duration::from_secs(10));
        }
    }

    /// Starts a process that takes the consumers' lock (`get`) or the producers' lock and
    /// holds it until killed.
    fn hold_lock(q: &Queue<u8>, get: bool) -> KillOnDrop {
        let q2 = q.clone();
        let (ready_rx, ready_tx) = crate::pipe(false).unwrap();
        let mut p = crate::Process::new(move || {
            if get {
                let _held = q2.shm.lock_get(None).unwrap();
                ready_tx.send(&1u8).unwrap();
                std::thread::sleep(Duration::from_secs(60));
            } else {
                let _held = q2.shm.lock_put(None).unwrap();
                ready_tx.send(&1u8).unwrap();
                std::thread::sleep(Duration::from_secs(60));
            }
        });
        p.start().unwrap();
        let p = KillOnDrop(p);
        let _: u8 = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        p
    }

    #[test]
    fn a_process_killed_holding_the_get_lock_does_not_wedge_the_queue() {
        let q: Queue<u8> = Queue::new().unwrap();
        let mut p = hold_lock(&q, true);
        // Puts go on while a getter holds its lock; gets wait.
        q.put_timeout(5, Duration::from_secs(10)).unwrap();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(100)),
            Err(GetError::Timeout)
        ));
        p.0.kill().unwrap();
        p.0.join_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 5);
    }

    #[test]
    fn a_process_killed_holding_the_put_lock_does_not_wedge_the_queue() {
        let q: Queue<u8> = Queue::new().unwrap();
        q.put(4).unwrap();
        let mut p = hold_lock(&q, false);
        // Gets go on while a putter holds its lock; puts wait.
        assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 4);
        assert!(matches!(
            q.put_timeout(5, Duration::from_millis(100)),
            Err(PutError::Timeout(5))
        ));
        p.0.kill().unwrap();
        p.0.join_timeout(Duration::from_secs(10)).unwrap();
        q.put_timeout(5, Duration::from_secs(10)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 5);
    }

    #[test]
    fn a_handle_serialized_outside_a_start_is_an_error() {
        let q: Queue<u8> = Queue::new().unwrap();
        assert!(postcard::to_allocvec(&q).is_err());
    }

    #[test]
    fn a_connection_passed_as_a_start_argument_keeps_working() {
        let (a, b) = crate::pipe(true).unwrap();
        let b = through_start_arguments(&b);
        a.send(&5u32).unwrap();
        assert_eq!(b.recv::<u32>().unwrap(), 5);
        b.send(&6u32).unwrap();
        assert_eq!(a.recv::<u32>().unwrap(), 6);
    }
}
