//! `recv_async`, `send_async` for [`Connection`], `accept_async` for [`Listener`], and
//! [`wait_ready`] for anything [`wait`](crate::connection::wait) takes.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Watch;
use super::errors::{connect_io, recv_io, recv_would_block};
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
    let mut watch = None;
    loop {
        if let Err(done) = recv_would_block(attempt()) {
            return done;
        }
        let watch = match &watch {
            Some(w) => w,
            None => {
                // `attempt` failed with `Closed` already if there is no reading end.
                let fd = c.wait_fd().ok_or(RecvError::Closed)?;
                watch.insert(Watch::read(fd).map_err(recv_io)?)
            }
        };
        watch.readable().await.map_err(recv_io)?;
    }
}

/// Writes `frame` without blocking the thread, waiting for writability between writes.
async fn send_frame(fd: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> Result<(), SendError> {
    let mut written = 0;
    let mut watch = None;
    loop {
        written += sys::write_nowait(fd, &frame[written..])?;
        if written == frame.len() {
            return Ok(());
        }
        let watch = match &watch {
            Some(w) => w,
            None => watch.insert(Watch::write(fd)?),
        };
        watch.writable().await?;
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
    /// Not cancel-safe once the message has begun to go out, and the message cannot always
    /// go out in one write: a framed message of up to 4 KiB goes out whole or not at all on
    /// a pipe; a larger one (or any that does not fit in a socket's free buffer) is written
    /// in parts, waiting for the peer in between. Dropping the future between parts leaves
    /// the start of a message in the stream that no later send completes: the peer can no
    /// longer make sense of what follows, so the connection must then be closed, not used
    /// again (the peer then gets [`RecvError::Truncated`]). Dropping it before its first
    /// poll, or after it returned, sends nothing or the whole message. Likewise, two sends
    /// from different tasks on one connection at once can interleave large messages; use
    /// one sending task per connection, or a lock.
    ///
    /// # Errors
    /// As [`send`](Connection::send); [`SendError::Io`] also when no supported runtime is
    /// running.
    pub async fn send_async<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let (fd, frame) = self.frame_for_send(value)?;
        send_frame(fd, &frame).await
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
        send_frame(fd, &frame).await
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
