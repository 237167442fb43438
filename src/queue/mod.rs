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
//! # When a get gives up
//!
//! This is the one rule for when a blocked `get` (or `put`) stops waiting with
//! `Disconnected`; the error types and the methods refer here.
//!
//! Every handle (the original, each clone, each copy a child received) is registered with the
//! kernel as a holder of the queue until it is dropped or its process ends (killed
//! included), and as a possible producer until it is also [closed](Queue::close). A `get`
//! that finds the queue empty returns `Disconnected` (within 50 ms, instead of blocking
//! forever) when no *other* handle may put, and
//!
//! - the queue has been shared (a second handle was made, by [`clone`](Queue::clone) or
//!   [`try_clone`](Queue::try_clone), whether or not it is still there): its other handles
//!   are all gone, so no item can come. This holds for [`get`](Queue::get) and
//!   [`get_timeout`](Queue::get_timeout) alike: a consumer whose last producer exited, was
//!   killed or closed its handle hears so at once, not at the end of its timeout;
//! - or the call is a blocking [`get`](Queue::get) on a queue never shared: only this
//!   process could ever put (another of its threads, or a clone it has not made yet), and a
//!   program with one thread would hang for ever, as Python's does.
//!
//! A [`get_timeout`](Queue::get_timeout) on a queue never shared waits out its timeout, as
//! in Python: a producer started after the get began (by another thread, with a clone)
//! delivers to it. [`get_nowait`](Queue::get_nowait) never says `Disconnected`: it asks
//! nobody, and an empty queue is `Empty`. A queue that is [shut down](Queue::shutdown) says
//! `ShutDown` instead, once empty.
//!
//! Handles that only get should be closed, so that they do not count as possible producers
//! for each other. A handle inherited through `fork` counts as held by every process that
//! inherited it (a child also inherits its parent's handles, as it inherits every
//! descriptor), so a child does not see its parent's own handle go away.
//!
//! Puts follow the same rule with the sides swapped, for a *full* bounded queue and handles
//! that may get (closing a handle does not end its getting; dropping it does). Because every
//! handle can also get, `put` into a queue with room never fails for want of readers: the
//! putting process can always get the item back itself, and a queue filled before its
//! consumers start is a common pattern.
//!
//! # Errors
//!
//! Each operation has its own error type, as crossbeam's channels have, holding only the
//! outcomes that operation can have: [`put`](Queue::put) → [`PutError`],
//! [`put_timeout`](Queue::put_timeout) → [`PutTimeoutError`] (adds `Timeout`, Python's
//! `queue.Full`), [`put_nowait`](Queue::put_nowait) → [`TryPutError`] (`Full`); and
//! [`get`](Queue::get) → [`GetError`], [`get_timeout`](Queue::get_timeout) →
//! [`GetTimeoutError`] (adds `Timeout`, Python's `queue.Empty`),
//! [`get_nowait`](Queue::get_nowait) → [`TryGetError`] (`Empty`). Every put error hands the
//! item back (`into_inner`).
//!
//! Files: `ring.rs` the ring, `wake.rs` how a blocked call sleeps and is woken, `simple.rs` and
//! `joinable.rs` the two wrappers; this file the put and get loops and handle registration.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Waitable;
pub use crate::error::{
    DecodeError, EncodeError, GetError, GetTimeoutError, PutError, PutTimeoutError, TryGetError,
    TryPutError,
};
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
#[cfg(any(feature = "tokio", feature = "async-io"))]
pub(crate) use wake::recheck;
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
        Queue::handle(shm, None)
    }

    /// A new handle of `shm`: a new open file description of its memory (of `sibling`'s,
    /// another handle's, when there is one: on the portable layer a handle's mark is made
    /// beside its siblings', `sys/posix/ofd.rs`), marked as a holder of both roles.
    fn handle(shm: Arc<ShmQueue>, sibling: Option<BorrowedFd<'_>>) -> crate::Result<Queue<T>> {
        let ofd = match sibling {
            Some(fd) => sys::reopen(fd)?,
            None => shm.reopen()?,
        };
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
        let handle = Queue::handle(Arc::clone(&self.shm), Some(self.ofd.as_fd()))?;
        self.shm.mark_shared();
        Ok(handle)
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
    /// works. Once every other handle that could put is closed or gone, a `get` on an empty
    /// queue returns [`GetError::Disconnected`] (the rule is in the
    /// [module documentation](self#when-a-get-gives-up)). Closing twice is fine.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = sys::ofd_release(self.ofd.as_fd(), PRODUCER);
        }
    }

    /// Shuts the queue down for every handle in every process, Python 3.13's
    /// `Queue.shutdown(immediate)`.
    ///
    /// Afterwards every put fails with `ShutDown` (the item handed back), and gets return the
    /// items left in the queue, then `ShutDown` once it is empty (not `Disconnected`, and
    /// `get_nowait` too, not `Empty`). Getters and putters blocked in any process are woken
    /// and return. With `immediate`, the items left are removed first and dropped as bytes,
    /// never decoded (so none of their `Drop`s runs, in any process); a
    /// [`JoinableQueue`]'s unfinished count goes down by as many, as in Python, and its
    /// `join` callers return once it is zero (items already taken still wait for their
    /// `task_done`). An item being taken by a `get` at that moment is delivered to it.
    /// Shutting down twice is fine; a later `immediate` shutdown drains what is left.
    ///
    /// A queue that is shut down stays so: it cannot be reopened.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if draining finds the queue's memory corrupted
    /// (another process wrote garbage into it); the queue is shut down all the same.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Queue, queue::{GetError, PutError}};
    ///
    /// let q: Queue<u32> = Queue::new()?;
    /// q.put(1)?;
    /// q.shutdown(false)?;
    /// assert!(matches!(q.put(2), Err(PutError::ShutDown(2))));
    /// assert_eq!(q.get()?, 1); // what was put before is still delivered
    /// assert!(matches!(q.get(), Err(GetError::ShutDown)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self, immediate: bool) -> crate::Result<()> {
        self.shm.shut_down()?;
        if immediate {
            let drained = self.shm.discard_all()?;
            for _ in 0..drained {
                // Python lowers the count only while it is above zero: so does this.
                if joinable::mark_done(&self.shm).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether the queue was [shut down](Queue::shutdown), by any handle.
    pub fn is_shut_down(&self) -> bool {
        self.shm.is_shut_down()
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
    /// After the event descriptor was reported readable and a get found the queue empty:
    /// waits for a put between raising the event and publishing its item, and raises the
    /// event afresh if the queue holds items (`ShmQueue::resync_event`).
    pub(crate) fn resync_event(&self) -> io::Result<()> {
        // The lock is held only for copies; a dead holder's is taken over in milliseconds.
        self.shm
            .resync_event(Some(Instant::now() + Duration::from_millis(100)))
            .map(drop)
    }

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
            Sleepers::for_room(words).enter();
            // As in `put_frame`: either the getter sees us counted, or we see its get here.
            std::sync::atomic::fence(Ordering::SeqCst);
            if shm.gets() == gets && !shm.has_room_hint() {
                shm.sleep(&words.not_full, seen, nap);
            }
            Sleepers::for_room(words).leave();
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
    /// [`PutError::ShutDown`] after a [`shutdown`](Queue::shutdown) (also one that happens
    /// while this waits for room); [`PutError::Closed`] after [`close`](Queue::close);
    /// [`PutError::Disconnected`] when
    /// the queue is full and no other handle is left to make room; [`PutError::Encode`] when
    /// the item cannot be serialized or exceeds 1 GiB. The item comes back inside the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Wait::Forever)
            .map_err(|(fail, item)| fail.into_put(item))
    }

    /// As [`put`](Queue::put), waiting at most `timeout` for room (Python's
    /// `put(item, timeout=...)`).
    ///
    /// # Errors
    /// As `put`, plus [`PutTimeoutError::Timeout`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Queue, queue::PutTimeoutError};
    ///
    /// let q: Queue<u8> = Queue::with_maxsize(1)?;
    /// let _consumer = q.clone(); // someone who could make room
    /// q.put(1)?;
    /// match q.put_timeout(2, Duration::from_millis(10)) {
    ///     Err(PutTimeoutError::Timeout(item)) => assert_eq!(item, 2), // Python's queue.Full
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.put_until(item, Wait::Until(deadline_after(timeout)))
            .map_err(|(fail, item)| fail.into_put_timeout(item))
    }

    /// Puts `item` only if there is room now, Python's `put_nowait`.
    ///
    /// # Errors
    /// [`TryPutError::Full`] when there is no room; [`TryPutError::ShutDown`],
    /// [`TryPutError::Closed`] and [`TryPutError::Encode`] as for `put`.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Queue, queue::TryPutError};
    ///
    /// let q: Queue<String> = Queue::with_maxsize(1)?;
    /// q.put_nowait("first".to_string())?;
    /// let err = q.put_nowait("second".to_string()).unwrap_err();
    /// assert!(matches!(err, TryPutError::Full(_)));
    /// assert_eq!(err.into_inner(), "second"); // nothing is lost
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_nowait(&self, item: T) -> Result<(), TryPutError<T>> {
        self.put_until(item, Wait::No)
            .map_err(|(fail, item)| fail.into_try_put(item))
    }

    /// Takes the item at the front of the queue, blocking while it is empty.
    ///
    /// # Errors
    /// [`GetError::ShutDown`] when the queue was [shut down](Queue::shutdown) and is empty
    /// (also when that happens while this waits); [`GetError::Disconnected`] when the queue
    /// is empty and no item can come (the rule is in the
    /// [module documentation](self#when-a-get-gives-up)); [`GetError::Decode`] when the
    /// item's bytes are not a `T` (it is consumed).
    pub fn get(&self) -> Result<T, GetError> {
        self.get_until(Wait::Forever).map_err(GetFail::into_get)
    }

    /// As [`get`](Queue::get), waiting at most `timeout` (Python's `get(timeout=...)`).
    ///
    /// # Errors
    /// As `get`, plus [`GetTimeoutError::Timeout`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Queue, queue::GetTimeoutError};
    ///
    /// let q: Queue<u8> = Queue::new()?;
    /// let _producer = q.clone(); // someone who could put
    /// let err = q.get_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, GetTimeoutError::Timeout)); // Python's queue.Empty
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.get_until(Wait::Until(deadline_after(timeout)))
            .map_err(GetFail::into_get_timeout)
    }

    /// Takes an item only if one is there now, Python's `get_nowait`.
    ///
    /// # Errors
    /// [`TryGetError::Empty`] when there is none (whoever still holds the queue: a
    /// non-blocking call does not ask); [`TryGetError::ShutDown`] and [`TryGetError::Decode`]
    /// as for `get`.
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Queue, queue::TryGetError};
    ///
    /// let q: Queue<u8> = Queue::new()?;
    /// assert!(matches!(q.get_nowait(), Err(TryGetError::Empty)));
    /// q.put(7)?;
    /// assert_eq!(q.get_nowait()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_nowait(&self) -> Result<T, TryGetError> {
        self.get_until(Wait::No).map_err(GetFail::into_try_get)
    }

    fn put_until(&self, item: T, wait: Wait) -> Result<(), (PutFail, T)> {
        // Looked at again under the lock: this early look only spares the serializing.
        if self.shm.is_shut_down() {
            return Err((PutFail::ShutDown, item));
        }
        if self.is_closed() {
            return Err((PutFail::Closed, item));
        }
        // Measuring issues no tickets for handles in the item (`wire::share`).
        let size = match wire::share::measuring(|| wire::serialized_size(&item)) {
            Ok(size) => size,
            Err(e) => {
                let e = EncodeError::new("could not serialize the item", Some(Box::new(e)));
                return Err((PutFail::Encode(e), item));
            }
        };
        let header = match wire::header_for(size) {
            Ok(h) if HEADER + size <= self.shm.max_frame() => h,
            Ok(_) => {
                let e = EncodeError::new(
                    format!("item of {size} bytes does not fit in the queue"),
                    None,
                );
                return Err((PutFail::Encode(e), item));
            }
            Err(e) => return Err((PutFail::Encode(e), item)),
        };
        if HEADER + size <= IN_PLACE {
            // Small: encode into a scratch buffer outside the lock, copy in under it.
            SCRATCH.with_borrow_mut(|frame| {
                frame.clear();
                if let Err(e) = wire::encode_into(&item, frame) {
                    return Err((PutFail::Encode(e), item));
                }
                if frame.len() != HEADER + size {
                    let e = EncodeError::new("the item serialized to different sizes twice", None);
                    return Err((PutFail::Encode(e), item));
                }
                self.put_frame(HEADER + size, wait, |buf| {
                    buf.copy_from_slice(frame);
                    Ok(())
                })
                .map_err(|fail| (fail, item))
            })
        } else {
            // Large: serialize straight into shared memory, one copy in all.
            let fill = |buf: &mut [u8]| {
                buf[..HEADER].copy_from_slice(&header);
                match wire::encode_to_slice(&item, &mut buf[HEADER..]) {
                    Ok(used) if used == size => Ok(()),
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
            self.put_frame(HEADER + size, wait, fill)
                .map_err(|fail| (fail, item))
        }
    }

    /// Appends an `n`-byte frame written by `fill`, waiting for room as `wait` allows.
    fn put_frame(
        &self,
        n: usize,
        wait: Wait,
        mut fill: impl FnMut(&mut [u8]) -> Result<(), EncodeError>,
    ) -> Result<(), PutFail> {
        let words = self.shm.words();
        loop {
            let mut guard = match self.shm.lock_put(wait.deadline()) {
                Ok(Some(g)) => g,
                Ok(None) => return Err(PutFail::Timeout),
                Err(e) => return Err(PutFail::Io(e)),
            };
            // Set under this lock: once seen clear here, no shutdown can pass this put.
            if self.shm.is_shut_down() {
                return Err(PutFail::ShutDown);
            }
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
                Ok(Err(e)) => return Err(PutFail::Encode(e)),
                Err(e) => return Err(PutFail::Io(e)),
            };
            let seen = words.not_full.load(Ordering::Acquire);
            let nap = match wait.nap() {
                Some(nap) => nap,
                None if matches!(wait, Wait::No) => return Err(PutFail::Full),
                None => return Err(PutFail::Timeout),
            };
            // Full, and no other handle is left (closed ones still count, as they may get): no
            // get can ever make room (the rule is in the module docs, "When a get gives up").
            let shared = self.shm.was_shared();
            match sys::ofd_others_hold(self.ofd.as_fd(), GETTER) {
                Ok(true) => {}
                // The last getter may have made room and left between our look and the
                // question (a get is one store): look once more before giving up.
                Ok(false) if self.shm.gets() != gets => continue,
                Ok(false) if shared || matches!(wait, Wait::Forever) => {
                    return Err(PutFail::Disconnected);
                }
                // Never shared, timed: a thread of this process may yet hand a clone to a
                // consumer, and the wait is bounded.
                Ok(false) => {}
                Err(e) => return Err(PutFail::Io(e)),
            }
            drop(guard);
            if await_briefly(|| self.shm.gets() != gets) {
                continue;
            }
            Sleepers::for_room(words).enter();
            // Either a getter that made room after our look sees us counted (and wakes us),
            // or we see its get here and look again.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.shm.gets() == gets {
                self.shm.sleep(&words.not_full, seen, nap);
            }
            Sleepers::for_room(words).leave();
        }
    }

    fn get_until(&self, wait: Wait) -> Result<T, GetFail> {
        let words = self.shm.words();
        loop {
            let mut guard = match self.shm.lock_get(wait.deadline()) {
                Ok(Some(g)) => g,
                Ok(None) => return Err(GetFail::Timeout),
                Err(e) => return Err(GetFail::Io(e)),
            };
            let popped = guard
                .pop_with(wire::decode_payload::<T>)
                .map_err(GetFail::Io)?;
            if let Some(decoded) = popped {
                drop(guard);
                std::sync::atomic::fence(Ordering::SeqCst);
                Sleepers::for_room(words).wake_one(&self.shm, || true);
                // Items left for other sleeping consumers? Pass the baton on.
                Sleepers::for_items(words).wake_one(&self.shm, || self.shm.len() > 0);
                return decoded.map_err(GetFail::Decode);
            }
            drop(guard);
            if self.shm.is_shut_down() {
                // Every item was published before the mark, which was seen (`Acquire`): a
                // fresh look shows whether any is left for another round.
                if self.shm.len() == 0 {
                    return Err(GetFail::ShutDown);
                }
                continue;
            }
            if matches!(wait, Wait::No) {
                return Err(GetFail::Empty);
            }
            if await_briefly(|| self.shm.len() > 0 || self.shm.is_shut_down()) {
                continue;
            }
            let seen = words.not_empty.load(Ordering::Acquire);
            Sleepers::for_items(words).enter();
            // Either a putter that published after our look sees us counted (and wakes us),
            // or we see its item here and look again.
            std::sync::atomic::fence(Ordering::SeqCst);
            // A shutdown sets its mark before it bumps the word: seen here, or it wakes us.
            let result = if self.shm.len() == 0 && !self.shm.is_shut_down() {
                self.sleep_for_item(&wait, words, seen)
            } else {
                Ok(())
            };
            Sleepers::for_items(words).leave();
            result?;
        }
    }

    /// Sleeps until an item may have arrived; errors when none can come or time ran out.
    fn sleep_for_item(&self, wait: &Wait, words: &Words, seen: u32) -> Result<(), GetFail> {
        // Before asking who holds the queue (see `ShmQueue::mark_shared`).
        let shared = self.shm.was_shared();
        if !self.others_may_put().map_err(GetFail::Io)? {
            // Nobody else can put. An item put just before the last producer left is still
            // in the queue (a put is one store): look once more before giving up. A
            // shutdown by the last producer on its way out is reported as such.
            if self.shm.len() != 0 || self.shm.is_shut_down() {
                return Ok(());
            }
            // The rule of the module docs, "When a get gives up": a timed get on a queue
            // never shared waits on, since a thread of this process may yet hand a clone to
            // a producer, and the wait is bounded.
            if shared || matches!(wait, Wait::Forever) {
                return Err(GetFail::Disconnected);
            }
        }
        match wait.nap() {
            Some(nap) => {
                self.shm.sleep(&words.not_empty, seen, nap);
                Ok(())
            }
            None => Err(GetFail::Timeout),
        }
    }
}

/// Why the put loop gave up, before the item is handed back in the error type of the calling
/// operation. Each operation maps only the outcomes it can have: a blocking put never sees
/// `Full` or `Timeout` (it waits with no deadline), a non-blocking one never `Timeout` (it
/// waits only for the lock, with no deadline) nor `Disconnected` (it does not ask who holds
/// the queue).
enum PutFail {
    Full,
    Timeout,
    ShutDown,
    Closed,
    Disconnected,
    Encode(EncodeError),
    Io(io::Error),
}

impl PutFail {
    fn into_put<T>(self, item: T) -> PutError<T> {
        match self {
            PutFail::ShutDown => PutError::ShutDown(item),
            PutFail::Closed => PutError::Closed(item),
            PutFail::Disconnected => PutError::Disconnected(item),
            PutFail::Encode(e) => PutError::Encode(item, e),
            PutFail::Io(e) => PutError::Io(item, e),
            PutFail::Full | PutFail::Timeout => unreachable!("a blocking put waits for room"),
        }
    }

    fn into_put_timeout<T>(self, item: T) -> PutTimeoutError<T> {
        match self {
            PutFail::Timeout => PutTimeoutError::Timeout(item),
            PutFail::ShutDown => PutTimeoutError::ShutDown(item),
            PutFail::Closed => PutTimeoutError::Closed(item),
            PutFail::Disconnected => PutTimeoutError::Disconnected(item),
            PutFail::Encode(e) => PutTimeoutError::Encode(item, e),
            PutFail::Io(e) => PutTimeoutError::Io(item, e),
            PutFail::Full => unreachable!("a timed put waits for room until its deadline"),
        }
    }

    fn into_try_put<T>(self, item: T) -> TryPutError<T> {
        match self {
            PutFail::Full => TryPutError::Full(item),
            PutFail::ShutDown => TryPutError::ShutDown(item),
            PutFail::Closed => TryPutError::Closed(item),
            PutFail::Encode(e) => TryPutError::Encode(item, e),
            PutFail::Io(e) => TryPutError::Io(item, e),
            PutFail::Timeout | PutFail::Disconnected => {
                unreachable!(
                    "a non-blocking put has no deadline and does not ask who holds the queue"
                )
            }
        }
    }
}

/// Why the get loop gave up; mapped as [`PutFail`] is.
enum GetFail {
    Empty,
    Timeout,
    ShutDown,
    Disconnected,
    Decode(DecodeError),
    Io(io::Error),
}

impl GetFail {
    fn into_get(self) -> GetError {
        match self {
            GetFail::ShutDown => GetError::ShutDown,
            GetFail::Disconnected => GetError::Disconnected,
            GetFail::Decode(e) => GetError::Decode(e),
            GetFail::Io(e) => GetError::Io(e),
            GetFail::Empty | GetFail::Timeout => unreachable!("a blocking get waits for an item"),
        }
    }

    fn into_get_timeout(self) -> GetTimeoutError {
        match self {
            GetFail::Timeout => GetTimeoutError::Timeout,
            GetFail::ShutDown => GetTimeoutError::ShutDown,
            GetFail::Disconnected => GetTimeoutError::Disconnected,
            GetFail::Decode(e) => GetTimeoutError::Decode(e),
            GetFail::Io(e) => GetTimeoutError::Io(e),
            GetFail::Empty => unreachable!("a timed get waits for an item until its deadline"),
        }
    }

    fn into_try_get(self) -> TryGetError {
        match self {
            GetFail::Empty => TryGetError::Empty,
            GetFail::ShutDown => TryGetError::ShutDown,
            GetFail::Decode(e) => TryGetError::Decode(e),
            GetFail::Io(e) => TryGetError::Io(e),
            GetFail::Timeout | GetFail::Disconnected => {
                unreachable!(
                    "a non-blocking get has no deadline and does not ask who holds the queue"
                )
            }
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
            SerFd(self.shm.memory_fd()),
            SerFd(self.shm.event_fd()),
            self.is_closed(),
        )
            .serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for Queue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The memory travels beside the handle's own description: on the portable layer that
        // is a holder mark, not the memory (`sys/posix/ofd.rs`).
        let (DeFd(ofd), DeFd(memory), DeFd(event), closed): (DeFd, DeFd, DeFd, bool) =
            serde::Deserialize::deserialize(d)?;
        let shm = ShmQueue::open(memory, event).map_err(serde::de::Error::custom)?;
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
        if self.shm.is_shut_down() {
            // Ready: the caller's next get returns an item or `ShutDown` at once.
            self.shm.words().fd_waiters.fetch_add(1, Ordering::Relaxed);
            return true;
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
            Err(GetTimeoutError::Timeout)
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
            Err(GetTimeoutError::Timeout)
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
            Err(PutTimeoutError::Timeout(5))
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
