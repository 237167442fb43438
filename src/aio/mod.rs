//! Await processes, queues, connections, locks and pool results from async code: tokio
//! (feature `tokio`) or any executor built on async-io's reactor, such as smol (feature
//! `async-io`).
//!
//! Every waitable in this crate already has a descriptor that becomes readable when waiting
//! may be over: a process its pidfd, a connection its pipe or socket, a queue its eventfd
//! (signalled while it holds items and someone waits). The futures here are one loop each over
//! the crate's non-blocking calls (`get_nowait`, `put_nowait`, a zero-timeout `recv`, a
//! zero-timeout `join`...) and the reactor's readiness on a duplicate of that descriptor, so
//! no thread waits per future. Where no descriptor exists, and only there, a short-lived
//! helper thread sleeps on the crate's futex for at most 50 ms at a time (a `put` into a full
//! bounded queue, [`Event::wait_async`](crate::Event::wait_async), lock and semaphore
//! acquisition ([`Lock::acquire_async`](crate::Lock::acquire_async),
//! [`RLock::acquire_async`](crate::RLock::acquire_async),
//! [`Semaphore::acquire_async`](crate::Semaphore::acquire_async)),
//! [`ConditionGuard::wait_async`](crate::sync::ConditionGuard::wait_async),
//! [`Barrier::wait_async`](crate::Barrier::wait_async),
//! [`JoinableQueue::join_async`](crate::JoinableQueue::join_async)); each method's docs say
//! which. Pool results, [`Pool::imap`](crate::Pool::imap) streams and executor futures are
//! woken by the pool's own result thread.
//!
//! The runtime is found at the first poll: with the `tokio` feature, inside a tokio runtime,
//! tokio's reactor and timer are used (the runtime needs IO and time enabled, as
//! [`enable_all`](https://docs.rs/tokio/1/tokio/runtime/struct.Builder.html#method.enable_all)
//! does); otherwise, with the `async-io` feature, async-io's. With only `tokio` enabled,
//! polling outside a tokio runtime is an `Io` error, never a panic.
//!
//! # Cancellation safety
//! Every method says what dropping its future part-way means; the argument is in `README.md`
//! beside this file. In short: an item or message is taken by one non-blocking call that
//! returns it in the same poll, so a dropped `get`, `recv` or `accept` never loses one, and a
//! dropped `put` never half-puts one. A lock is taken only in the poll that returns its
//! guard, so a dropped acquire never holds it. A dropped `send` of a message too large to go
//! out in one write has its rest written by a helper thread, so the peer never sees half a
//! message (see [`Connection::send_async`]).
//!
//! # Examples
//! ```
//! # #[cfg(feature = "tokio")] {
//! use multiproc::Queue;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let q: Queue<String> = Queue::new()?;
//!     let producer = q.clone();
//!     let mut child = multiproc::spawn_with_args(
//!         |producer: Queue<String>| producer.put("hello".to_owned()).is_ok(),
//!         producer,
//!     )?;
//!     assert_eq!(q.get_async().await?, "hello");
//!     assert!(child.join_async().await?);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Connection::send_async`]: crate::Connection::send_async

use std::future::poll_fn;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

mod connection;
mod errors;
mod pool;
mod process;
mod queue;
mod sync;

pub use connection::wait_ready;
pub use pool::{AsCompleted, as_completed};

/// How long a wait trusts its descriptor alone before it looks again (for a peer that went
/// away, which no descriptor reports): as the blocking calls' `RECHECK`.
const RECHECK: Duration = Duration::from_millis(50);

/// The reactor and timer a future uses, chosen when it first needs one.
#[derive(Clone, Copy, Debug)]
enum Runtime {
    #[cfg(feature = "tokio")]
    Tokio,
    #[cfg(feature = "async-io")]
    AsyncIo,
}

fn runtime() -> io::Result<Runtime> {
    #[cfg(feature = "tokio")]
    if tokio::runtime::Handle::try_current().is_ok() {
        return Ok(Runtime::Tokio);
    }
    #[cfg(feature = "async-io")]
    let fallback = Ok(Runtime::AsyncIo);
    #[cfg(not(feature = "async-io"))]
    let fallback = Err(io::Error::other(
        "multiproc's async support needs a tokio runtime here (or the async-io feature)",
    ));
    fallback
}

/// Readiness of one descriptor, through the current runtime's reactor.
///
/// The descriptor is duplicated: a reactor registers each descriptor once, while any number
/// of futures may wait on one queue or process at a time (and the caller's descriptor stays
/// in blocking mode: `O_NONBLOCK` is never set, as other processes share the file).
#[derive(Debug)]
pub(crate) struct Watch(WatchInner);

#[derive(Debug)]
enum WatchInner {
    #[cfg(feature = "tokio")]
    Tokio(tokio::io::unix::AsyncFd<OwnedFd>),
    #[cfg(feature = "async-io")]
    AsyncIo(async_io::Async<OwnedFd>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

impl Watch {
    /// Watches `fd` for readability.
    pub(crate) fn read(fd: BorrowedFd<'_>) -> io::Result<Watch> {
        Watch::new(fd, Direction::Read)
    }

    /// Watches `fd` for writability.
    pub(crate) fn write(fd: BorrowedFd<'_>) -> io::Result<Watch> {
        Watch::new(fd, Direction::Write)
    }

    fn new(fd: BorrowedFd<'_>, direction: Direction) -> io::Result<Watch> {
        let runtime = runtime()?;
        let fd = fd.try_clone_to_owned()?;
        Ok(Watch(match runtime {
            #[cfg(feature = "tokio")]
            Runtime::Tokio => {
                let interest = match direction {
                    Direction::Read => tokio::io::Interest::READABLE,
                    Direction::Write => tokio::io::Interest::WRITABLE,
                };
                WatchInner::Tokio(crate::sys::tokio_async_fd(fd, interest)?)
            }
            #[cfg(feature = "async-io")]
            Runtime::AsyncIo => {
                let _ = direction;
                // Not `Async::new`, which would set O_NONBLOCK on the shared file.
                WatchInner::AsyncIo(async_io::Async::new_nonblocking(fd)?)
            }
        }))
    }

    /// Ready once the descriptor was reported ready (readable) since the last `Ready`; the
    /// caller then tries its non-blocking call, and polls again if that would still block.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.0 {
            #[cfg(feature = "tokio")]
            // Cleared before the caller's attempt: readiness that comes after it is kept
            // (tokio compares event ticks), so no wake-up is lost.
            WatchInner::Tokio(fd) => fd.poll_read_ready(cx).map_ok(|mut g| g.clear_ready()),
            #[cfg(feature = "async-io")]
            WatchInner::AsyncIo(fd) => fd.poll_readable(cx),
        }
    }

    /// As [`poll_readable`](Watch::poll_readable), for writability.
    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.0 {
            #[cfg(feature = "tokio")]
            WatchInner::Tokio(fd) => fd.poll_write_ready(cx).map_ok(|mut g| g.clear_ready()),
            #[cfg(feature = "async-io")]
            WatchInner::AsyncIo(fd) => fd.poll_writable(cx),
        }
    }

    /// Waits until the descriptor was reported readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// Waits until the descriptor was reported writable.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_writable(cx)).await
    }

    /// Waits until the descriptor was reported readable (`true`) or `max` passed (`false`).
    pub(crate) async fn readable_within(&self, max: Duration) -> io::Result<bool> {
        let mut timer = Timer::after(max)?;
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_readable(cx) {
                return Poll::Ready(r.map(|()| true));
            }
            timer.poll(cx).map(|()| Ok(false))
        })
        .await
    }
}

/// A one-shot timer of the current runtime.
#[derive(Debug)]
enum Timer {
    #[cfg(feature = "tokio")]
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
    #[cfg(feature = "async-io")]
    AsyncIo(async_io::Timer),
}

impl Timer {
    fn after(d: Duration) -> io::Result<Timer> {
        Ok(match runtime()? {
            #[cfg(feature = "tokio")]
            Runtime::Tokio => Timer::Tokio(Box::pin(tokio::time::sleep(d))),
            #[cfg(feature = "async-io")]
            Runtime::AsyncIo => Timer::AsyncIo(async_io::Timer::after(d)),
        })
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        use std::future::Future;
        match self {
            #[cfg(feature = "tokio")]
            Timer::Tokio(sleep) => sleep.as_mut().poll(cx),
            #[cfg(feature = "async-io")]
            Timer::AsyncIo(timer) => std::pin::Pin::new(timer).poll(cx).map(|_| ()),
        }
    }
}

/// A wait with no descriptor, done by a short-lived helper thread: `work` runs there (it
/// must return within a bounded time), then the awaiting task is woken. Dropping the future
/// leaves the thread to finish `work` and exit.
async fn on_helper_thread(work: impl FnOnce() + Send + 'static) -> io::Result<()> {
    #[derive(Default)]
    struct Handoff {
        done: bool,
        waker: Option<Waker>,
    }
    let handoff = Arc::new(Mutex::new(Handoff::default()));
    let theirs = Arc::clone(&handoff);
    std::thread::Builder::new()
        .name("multiproc-aio".into())
        .spawn(move || {
            work();
            let mut h = theirs.lock().unwrap_or_else(PoisonError::into_inner);
            h.done = true;
            if let Some(w) = h.waker.take() {
                w.wake();
            }
        })?;
    poll_fn(|cx| {
        let mut h = handoff.lock().unwrap_or_else(PoisonError::into_inner);
        if h.done {
            Poll::Ready(())
        } else {
            h.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    Ok(())
}

/// A round of a wait that takes something, on a short-lived helper thread (for objects with
/// no descriptor): `take` runs there and must return within a bounded time, `true` if it took
/// what it waits for. If the future was dropped by then, `undo` gives it back on that thread,
/// so a cancelled wait never keeps what it took; otherwise the future returns `true` and the
/// caller owns it.
async fn take_on_helper_thread(
    take: impl FnOnce() -> bool + Send + 'static,
    undo: impl FnOnce() + Send + 'static,
) -> io::Result<bool> {
    struct Handoff {
        taken: Option<bool>,
        abandoned: bool,
        waker: Option<Waker>,
        undo: Option<Box<dyn FnOnce() + Send>>,
    }
    /// Marks the handoff abandoned when the future is dropped before it returned, and gives
    /// back what was taken if the thread already finished.
    struct Abandon(Arc<Mutex<Handoff>>);
    impl Drop for Abandon {
        fn drop(&mut self) {
            let mut h = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            h.abandoned = true;
            if h.taken.take() == Some(true)
                && let Some(undo) = h.undo.take()
            {
                undo();
            }
        }
    }
    let handoff = Arc::new(Mutex::new(Handoff {
        taken: None,
        abandoned: false,
        waker: None,
        undo: Some(Box::new(undo)),
    }));
    let theirs = Arc::clone(&handoff);
    std::thread::Builder::new()
        .name("multiproc-aio".into())
        .spawn(move || {
            let took = take();
            let mut h = theirs.lock().unwrap_or_else(PoisonError::into_inner);
            if h.abandoned {
                if took && let Some(undo) = h.undo.take() {
                    undo();
                }
                return;
            }
            h.taken = Some(took);
            if let Some(w) = h.waker.take() {
                w.wake();
            }
        })?;
    let abandon = Abandon(Arc::clone(&handoff));
    let took = poll_fn(|cx| {
        let mut h = handoff.lock().unwrap_or_else(PoisonError::into_inner);
        match h.taken.take() {
            Some(took) => Poll::Ready(took),
            None => {
                h.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    // Returned: the caller owns what was taken.
    std::mem::forget(abandon);
    Ok(took)
}
