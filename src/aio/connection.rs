//! `recv_async`, `send_async` for [`Connection`], `accept_async` for [`Listener`], and
//! [`wait_ready`] for anything [`wait`](crate::connection::wait) takes.

use std::future::poll_fn;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::errors::{connect_io, recv_io, recv_would_block};
use super::{Timer, Watch};
use crate::connection::{ConnectError, Connection, Listener, RecvError, SendError, Waitable};
use crate::sys;
use crate::wire;

/// How often an async `accept` advances handshakes under way: their sockets are not
/// registered with the reactor (they belong to the listener, and come and go), so they are
/// looked at on a timer while any is in progress.
const HANDSHAKE_TICK: Duration = Duration::from_millis(5);

/// Receives with `attempt` (a zero-timeout receive), waiting for readability between tries.
async fn recv_with<R>(
    c: &Connection,
    mut attempt: impl FnMut() -> Result<R, RecvError>,
) -> Result<R, RecvError> {
    let mut watch: Option<(std::os::fd::RawFd, Watch)> = None;
    loop {
        if let Err(done) = recv_would_block(attempt()) {
            return done;
        }
        // `attempt` failed with `Closed` already if there is no reading end. The descriptor
        // changes while a pipe's large message comes through its side socket.
        let fd = c.recv_wait_fd().ok_or(RecvError::Closed)?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        if watch.as_ref().is_none_or(|(watched, _)| *watched != raw) {
            drop(watch.take()); // deregistered before the next is registered
            watch = Some((raw, Watch::read(fd).map_err(recv_io)?));
        }
        let (_, w) = watch.as_ref().expect("just set");
        w.readable().await.map_err(recv_io)?;
    }
}

/// How often a send looks whether a frame left by a dropped send has gone out.
const FLUSH_TICK: Duration = Duration::from_millis(1);

/// Writes `frame` without blocking the thread, waiting for writability between writes. If
/// the future is dropped after part of the frame went out, the rest goes out on a helper
/// thread ([`Unfinished`]), so the stream never carries half a frame; a later send waits
/// for it first.
async fn send_frame(
    c: &Connection,
    fd: std::os::fd::BorrowedFd<'_>,
    frame: Vec<u8>,
) -> Result<(), SendError> {
    let turn = c.send_turn();
    // A frame that a dropped send left to a helper thread goes out before this one (the
    // helper holds the turn until it is written); a blocking send holds it while it writes.
    while matches!(turn.try_lock(), Err(TryLockError::WouldBlock)) {
        let mut timer = Timer::after(FLUSH_TICK)?;
        poll_fn(|cx| timer.poll(cx)).await;
    }
    let mut out = Unfinished {
        fd,
        frame,
        written: 0,
        turn,
    };
    let mut watch = None;
    loop {
        match sys::write_nowait(fd, &out.frame[out.written..]) {
            Ok(n) => out.written += n,
            Err(e) => {
                // The stream is unusable (the peer is gone, or worse): nothing to finish.
                out.written = out.frame.len();
                return Err(e.into());
            }
        }
        if out.written == out.frame.len() {
            return Ok(());
        }
        let watch = match &watch {
            Some(w) => w,
            None => watch.insert(Watch::write(fd)?),
        };
        watch.writable().await?;
    }
}

/// A frame being written by an async send. Dropped with part of it written (the future was
/// cancelled between writes), it writes the rest with blocking writes on a helper thread,
/// holding the connection's send turn meanwhile so that no other send of this connection or
/// its clones comes in between. The drop waits only until that thread holds the turn.
struct Unfinished<'f> {
    fd: std::os::fd::BorrowedFd<'f>,
    frame: Vec<u8>,
    written: usize,
    turn: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.written == 0 || self.written >= self.frame.len() {
            return; // nothing, or everything, went out
        }
        // A duplicate: the connection (and its descriptor) may be dropped before the rest
        // is written. If none can be made, the stream keeps the start of a frame, as it
        // would without this (the peer sees `Truncated` once this end closes).
        let Ok(fd) = self.fd.try_clone_to_owned() else {
            return;
        };
        let (frame, written) = (std::mem::take(&mut self.frame), self.written);
        let turn = Arc::clone(&self.turn);
        let (holding, held) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("multiproc-aio-send".into())
            .spawn(move || {
                let _turn = turn.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = holding.send(());
                // An error here (the peer went away) is the next send's to report.
                let _ = sys::write_all(fd.as_fd(), &frame[written..]);
            });
        if spawned.is_ok() {
            let _ = held.recv();
        }
    }
}

impl Connection {
    /// As [`recv`](Connection::recv), as a future: receives one message without blocking the
    /// thread, waiting on the connection's descriptor through the runtime's reactor.
    ///
    /// # Cancellation safety
    /// Cancel-safe. The bytes of a message are read as they arrive into the connection's own
    /// buffer (as a timed-out [`recv_timeout`](Connection::recv_timeout) keeps them), and a
    /// message is decoded and taken only once whole, in the poll that returns it. A future
    /// dropped while pending therefore loses nothing: part of a message it read stays in the
    /// connection, and the next receive (async or not) continues from there.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv); [`RecvError::Io`] also when no supported runtime is
    /// running.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let (a, b) = multiproc::pipe(true)?;
    /// let mut child = multiproc::spawn_with_args(|b: multiproc::Connection| {
    ///     let n: u32 = b.recv().unwrap();
    ///     b.send(&(n + 1)).unwrap();
    /// }, b)?;
    /// rt.block_on(async {
    ///     a.send_async(&41u32).await?;
    ///     assert_eq!(a.recv_async::<u32>().await?, 42);
    ///     child.join_async().await?;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn recv_async<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        recv_with(self, || self.recv_timeout(Duration::ZERO)).await
    }

    /// As [`recv_bytes`](Connection::recv_bytes), as a future.
    ///
    /// # Cancellation safety
    /// Cancel-safe, as [`recv_async`](Connection::recv_async).
    ///
    /// # Errors
    /// As [`recv_async`](Connection::recv_async).
    pub async fn recv_bytes_async(&self) -> Result<Vec<u8>, RecvError> {
        recv_with(self, || {
            self.recv_limited(Some(Instant::now()), wire::MAX_FRAME)
        })
        .await
    }

    /// As [`send`](Connection::send), as a future: sends `value` as one message, waiting
    /// without blocking the thread while the channel is full.
    ///
    /// The descriptor stays in blocking mode (other processes share it): a socket is
    /// written with `MSG_DONTWAIT`, a pipe 4 KiB at a time once it polls writable.
    ///
    /// # Cancellation safety
    /// Cancel-safe in the sense that matters for a stream: the peer receives the whole
    /// message or none of it, never part of one. A framed message of up to 4 KiB goes out in
    /// one write on a pipe; a larger one (or one that does not fit in a socket's free buffer)
    /// is written in parts, waiting for the peer in between. If the future is dropped after
    /// the first part went out, the rest is written by a short-lived helper thread with
    /// blocking writes, so the message is *sent* although its future did not return: a
    /// dropped send has sent nothing (dropped before any byte went out) or all of it. That
    /// thread holds the connection's send turn until it is done: a later send of this
    /// connection or its clones (async or blocking) waits for it, so nothing comes between
    /// the parts. (The helper lives as long as the peer takes to read the rest; an error
    /// there, such as the peer having gone, is reported by the next send.) The drop waits
    /// until that thread holds the send turn, which is at once unless a blocking send of a
    /// clone holds it.
    ///
    /// Two async sends on one connection *at the same time* (from two tasks, or joined in
    /// one) do not wait for each other's parts and can interleave large messages: use one
    /// sending task per connection, or a lock.
    ///
    /// # Errors
    /// As [`send`](Connection::send); [`SendError::Io`] also when no supported runtime is
    /// running.
    pub async fn send_async<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let (fd, frame) = self.frame_for_send(value)?;
        send_frame(self, fd, frame).await
    }

    /// As [`send_bytes`](Connection::send_bytes), as a future.
    ///
    /// # Cancellation safety
    /// As [`send_async`](Connection::send_async).
    ///
    /// # Errors
    /// As [`send_async`](Connection::send_async).
    pub async fn send_bytes_async(&self, bytes: &[u8]) -> Result<(), SendError> {
        let (fd, frame) = self.frame_for_send_bytes(bytes)?;
        send_frame(self, fd, frame).await
    }
}

impl Listener {
    /// As [`accept`](Listener::accept), as a future: waits for a peer to finish its
    /// handshake without blocking the thread.
    ///
    /// Waits for peers on the listening socket through the runtime's reactor. Handshakes
    /// under way are advanced every 5 ms while any is in progress (their sockets are not
    /// registered with the reactor); each is still bounded by its own
    /// [`HANDSHAKE_TIMEOUT`](crate::connection::HANDSHAKE_TIMEOUT). Do not mix it with a
    /// blocking [`accept`](Listener::accept) on another thread: the blocking call holds the
    /// listener while it waits.
    ///
    /// # Cancellation safety
    /// Cancel-safe: a connection is handed out by one non-blocking call in the poll that
    /// returns it; peers taken from the socket and handshakes under way stay with the
    /// listener, for the next `accept` (async or not).
    ///
    /// # Errors
    /// As [`accept`](Listener::accept).
    pub async fn accept_async(&self) -> Result<Connection, ConnectError> {
        let mut watch = None;
        loop {
            if let Some(result) = self.accept_nowait() {
                return result;
            }
            let (fd, handshaking) = self.accept_state();
            let watch = match &watch {
                Some(w) => w,
                None => watch.insert(Watch::read(fd).map_err(connect_io)?),
            };
            if handshaking {
                watch.readable_within(HANDSHAKE_TICK).await.map(drop)
            } else {
                watch.readable().await
            }
            .map_err(connect_io)?;
        }
    }
}

/// Waits until `object` is ready, as [`wait`](crate::connection::wait) does for one object:
/// a connection with a message (or end of file), a process that ended, a queue with an item,
/// a readable descriptor. Compose several with the runtime's `select!` or `join!`.
///
/// Readiness is a hint, as with `wait`: another consumer may take the item first, so follow
/// it with a non-blocking call, or use the object's own async method.
///
/// # Cancellation safety
/// Cancel-safe: it only waits, and takes nothing.
///
/// # Errors
/// An OS error, or [`std::io::ErrorKind::Other`] when no supported runtime is running.
///
/// # Examples
/// ```
/// # #[cfg(feature = "tokio")] {
/// use multiproc::aio::wait_ready;
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let (a, b) = multiproc::pipe(true)?;
/// rt.block_on(async {
///     b.send(&1u8)?;
///     wait_ready(&a).await?;
///     assert!(a.poll(Some(std::time::Duration::ZERO))?);
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub async fn wait_ready(object: &(impl Waitable + ?Sized)) -> std::io::Result<()> {
    struct Registered<'a, W: Waitable + ?Sized>(&'a W);
    impl<W: Waitable + ?Sized> Drop for Registered<'_, W> {
        fn drop(&mut self) {
            self.0.done_waiting();
        }
    }
    let ready_now = object.ready_now();
    let _registered = Registered(object);
    if ready_now {
        return Ok(());
    }
    let Some(fd) = object.wait_fd() else {
        return Ok(());
    };
    let watch = Watch::read(fd)?;
    if !object.needs_recheck() {
        return watch.readable().await;
    }
    loop {
        if watch.readable_within(super::RECHECK).await? {
            return Ok(());
        }
        // Trust the object over a descriptor that may have missed a signal: its look
        // replaces the registration made by the last one.
        object.done_waiting();
        if object.ready_now() {
            return Ok(());
        }
    }
}
