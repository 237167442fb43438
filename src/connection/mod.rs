//! Connections between processes: [`pipe`], [`Connection`], [`wait`], and [`Listener`] /
//! [`client`] for programs that did not start each other (Python's
//! `multiprocessing.connection`).
//!
//! A connection carries whole messages. Each message is one frame: a little-endian `u32`
//! length and that many bytes, padded with zeros to at least 64 bytes so that a receive can
//! take a small message in one `read` without touching the next. [`Connection::send`] and [`Connection::recv`] put any serde
//! value in a frame (postcard encoding; decoding only builds plain data and never runs code
//! from the bytes, unlike Python's pickle, and stops with an error past
//! [`MAX_DECODE_DEPTH`] levels of nesting); [`send_bytes`](Connection::send_bytes) and
//! [`recv_bytes`](Connection::recv_bytes) carry raw bytes.
//!
//! A receive reads exactly one message (its header, then its payload) and never bytes of the
//! next one, so several processes may take turns reading one end, as in Python (each
//! holding a lock of its own around `recv`). A peer that exits or is killed in the
//! middle of a message never leaves the reader blocked or holding half a message: the reader
//! gets [`RecvError::Truncated`], then [`RecvError::Disconnected`].

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::error::{DecodeError, EncodeError, RecvError, SendError};
use crate::sys;
use crate::wire::{self, DeFd, HEADER, SerFd};

mod listener;
mod wait;

pub use listener::{
    Address, ConnectError, HANDSHAKE_TIMEOUT, Listener, MAX_HANDSHAKE_MESSAGE, client,
    client_with_authkey,
};
pub use wait::{Waitable, wait};

pub use crate::wire::MAX_DECODE_DEPTH;

/// Every frame on a connection is at least this long (short ones are padded with zeros), so
/// a receive can read this many bytes at once without touching the next message: a small
/// message costs one `read`, and a large one two.
const MIN_FRAME: usize = 64;

/// Messages this large make the connection ask for a bigger pipe buffer.
const LARGE_MESSAGE: usize = 256 * 1024;

/// The first step by which a receive buffer grows for a large message; it then doubles with
/// the bytes received, so a header announcing a gigabyte costs nothing until the bytes come.
const GROW_STEP: usize = 64 * 1024;

/// Receive buffers larger than this are freed after use rather than kept for the next message.
const KEEP_BUFFER: usize = 64 << 20;

/// Creates a pair of connected [`Connection`]s, Python's `Pipe(duplex)`.
///
/// With `duplex` both ends send and receive. Without, the first end only receives and the
/// second only sends (as in Python). Pass one end to a child process (moved into its closure
/// under `fork`, or as a start argument) and keep the other.
///
/// # Examples
/// ```
/// use multiproc::{Process, pipe};
///
/// let (parent, child) = pipe(true)?;
/// let mut p = Process::new(move || {
///     let n: u64 = child.recv().unwrap();
///     child.send(&(n * 2)).unwrap();
/// });
/// p.start()?;
/// parent.send(&21u64)?;
/// assert_eq!(parent.recv::<u64>()?, 42);
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The OS error if pipes cannot be created (out of descriptors).
#[doc(alias = "Pipe")]
pub fn pipe(duplex: bool) -> crate::Result<(Connection, Connection)> {
    let (r1, w1) = sys::pipe()?;
    if duplex {
        let (r2, w2) = sys::pipe()?;
        Ok((
            Connection::from_fds(Some(r1), Some(w2)),
            Connection::from_fds(Some(r2), Some(w1)),
        ))
    } else {
        Ok((
            Connection::from_fds(Some(r1), None),
            Connection::from_fds(None, Some(w1)),
        ))
    }
}

/// One end of a message channel between processes: Python's `Connection`.
///
/// `send` and `recv` are safe to call from several threads at once (each direction has its
/// own lock); a message is never interleaved with another. Made by [`pipe`],
/// [`Listener::accept`] or [`client`].
///
/// A connection can be moved into a child process: captured by the target under `fork`, or
/// passed as a start argument under start methods that begin a fresh program (its descriptors
/// travel beside the arguments). It cannot be sent over another connection or queue.
///
/// Writing to a connection whose reader is gone fails with [`SendError::Disconnected`]; this
/// relies on `SIGPIPE` being ignored, which Rust programs do by default.
///
/// Like Python's, a connection can deadlock if both ends send large messages at the same
/// time and neither reads: each blocks until the other makes room.
///
/// End of file needs every copy of the sending end closed. Under `fork` a child inherits
/// copies of all its parent's descriptors, the parent's own end included, so (as in Python)
/// a child should not wait for end of file from its parent: send it an explicit "stop"
/// message. The parent does see end of file once the child exits or drops its end.
///
/// # Examples
/// ```
/// use std::time::Duration;
///
/// let (a, b) = multiproc::pipe(true)?;
/// a.send(&("hello", vec![1u8, 2, 3]))?;
/// assert!(b.poll(Some(Duration::ZERO))?);
/// let (word, bytes): (String, Vec<u8>) = b.recv()?;
/// assert_eq!((word.as_str(), bytes.as_slice()), ("hello", &[1u8, 2, 3][..]));
///
/// b.send_bytes(b"raw")?;
/// assert_eq!(a.recv_bytes()?, b"raw");
/// drop(b);
/// assert!(matches!(a.recv_bytes(), Err(multiproc::connection::RecvError::Disconnected)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection {
    reader: Option<OwnedFd>,
    writer: Option<OwnedFd>,
    inbox: Mutex<Inbox>,
    outbox: Mutex<Vec<u8>>,
    /// Whether the pipe was already asked for a larger buffer (done on the first large send,
    /// so that pipes carrying only small messages keep the default and the per-user budget).
    grown: AtomicBool,
}

/// The frame being received: `buf[..filled]`. Reads are exact, so this never holds bytes of
/// a second frame; `buf` stays initialised (and allocated) between messages.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    filled: usize,
    /// The kernel reported end of file.
    eof: bool,
    /// A bad size header was read: the stream cannot be resynchronised.
    broken: bool,
    /// The connection is a client's made without an authkey, and nothing was received yet:
    /// the first message is checked for being a listener's authentication challenge.
    keyless_client: bool,
}

impl Inbox {
    fn unread(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Refuses the frame at `buf[start..start + len]` if it is the first one a keyless client
    /// receives and it is an authentication challenge (consuming it), so that the client
    /// learns the listener wants a key rather than failing to decode the challenge.
    fn check_first(&mut self, start: usize, len: usize) -> Result<(), RecvError> {
        if std::mem::take(&mut self.keyless_client)
            && listener::is_challenge(&self.buf[start..start + len])
        {
            self.consume();
            return Err(RecvError::AuthenticationRequired);
        }
        Ok(())
    }

    /// Drops the whole frame just handed out.
    fn consume(&mut self) {
        self.filled = 0;
        if self.buf.len() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
    }
}

/// Locks `m`, ignoring poison: the buffers behind these locks are consistent at every await
/// point (a panic can only come from user `Serialize` code, after the buffer was cleared).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    pub(crate) fn from_fds(reader: Option<OwnedFd>, writer: Option<OwnedFd>) -> Self {
        Connection {
            reader,
            writer,
            inbox: Mutex::new(Inbox::default()),
            outbox: Mutex::new(Vec::new()),
            grown: AtomicBool::new(false),
        }
    }

    /// Marks this as a client's connection made without an authkey; see
    /// [`Inbox::check_first`].
    pub(crate) fn expect_no_challenge(&self) {
        lock(&self.inbox).keyless_client = true;
    }

    /// Sends `value` as one message.
    ///
    /// Blocks while the channel is full (the peer is not reading).
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the peer's end is closed, [`SendError::Closed`] on a
    /// read-only or closed connection, [`SendError::Encode`] when `value` cannot be
    /// serialized or exceeds the message size limit (1 GiB).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        let mut out = lock(&self.outbox);
        out.clear();
        wire::encode_into(value, &mut out)?;
        if out.len() < MIN_FRAME {
            out.resize(MIN_FRAME, 0);
        }
        self.grow_for(writer.as_fd(), out.len());
        sys::write_all(writer.as_fd(), &out)?;
        if out.capacity() > KEEP_BUFFER {
            *out = Vec::new();
        }
        Ok(())
    }

    /// Sends `bytes` as one message, without serialization: Python's `send_bytes`.
    ///
    /// # Errors
    /// As [`send`](Connection::send); `Encode` only when `bytes` exceeds the size limit.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        let header = wire::header_for(bytes.len())?;
        let _serialise = lock(&self.outbox);
        if HEADER + bytes.len() < MIN_FRAME {
            let mut frame = [0u8; MIN_FRAME];
            frame[..HEADER].copy_from_slice(&header);
            frame[HEADER..HEADER + bytes.len()].copy_from_slice(bytes);
            sys::write_all(writer.as_fd(), &frame)?;
        } else {
            self.grow_for(writer.as_fd(), HEADER + bytes.len());
            sys::write_all_vectored(writer.as_fd(), &[&header, bytes])?;
        }
        Ok(())
    }

    /// For `crate::aio`: the sending descriptor and `value` framed as `send` frames it, for
    /// writing without blocking.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn frame_for_send<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(BorrowedFd<'_>, Vec<u8>), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        let mut out = Vec::new();
        wire::encode_into(value, &mut out)?;
        if out.len() < MIN_FRAME {
            out.resize(MIN_FRAME, 0);
        }
        self.grow_for(writer.as_fd(), out.len());
        Ok((writer.as_fd(), out))
    }

    /// For `crate::aio`: as [`frame_for_send`](Connection::frame_for_send), for `send_bytes`.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn frame_for_send_bytes(
        &self,
        bytes: &[u8],
    ) -> Result<(BorrowedFd<'_>, Vec<u8>), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        let header = wire::header_for(bytes.len())?;
        let mut out = Vec::with_capacity((HEADER + bytes.len()).max(MIN_FRAME));
        out.extend_from_slice(&header);
        out.extend_from_slice(bytes);
        if out.len() < MIN_FRAME {
            out.resize(MIN_FRAME, 0);
        }
        self.grow_for(writer.as_fd(), out.len());
        Ok((writer.as_fd(), out))
    }

    /// Before a large message, asks once for a 1 MiB pipe buffer: fewer wake-ups per message.
    fn grow_for(&self, writer: BorrowedFd<'_>, len: usize) {
        if len >= LARGE_MESSAGE && !self.grown.swap(true, Ordering::Relaxed) {
            sys::set_pipe_size(writer, 1 << 20);
        }
    }

    /// Receives one message and decodes it as a `T`, blocking until one arrives.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the peer's end is closed and everything it sent was
    /// received; [`RecvError::Truncated`] when it closed in the middle of a message;
    /// [`RecvError::Decode`] when the message is not a valid `T` (the message is consumed);
    /// [`RecvError::Closed`] on a write-only or closed connection.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.recv_with(None, |payload| Ok(wire::decode_payload(payload)?))
    }

    /// As [`recv`](Connection::recv), waiting at most `timeout` for the message.
    ///
    /// # Errors
    /// As `recv`, plus [`RecvError::Timeout`] when no whole message arrived in time (part of
    /// one may have, and is kept for the next call).
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvError> {
        self.recv_with(Some(deadline_after(timeout)), |payload| {
            Ok(wire::decode_payload(payload)?)
        })
    }

    /// Receives one message's bytes: Python's `recv_bytes`.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv), without `Decode` except for a bad size header.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.recv_with(None, |payload| Ok(payload.to_vec()))
    }

    /// As [`recv_bytes`](Connection::recv_bytes), refusing messages longer than `max_len`
    /// (Python's `recv_bytes(maxlength)`): such a message is an error and the connection
    /// cannot be read further, so a peer cannot make this end allocate more than `max_len`.
    ///
    /// # Errors
    /// As `recv_bytes`; [`RecvError::Decode`] for an over-long message.
    pub fn recv_bytes_max(&self, max_len: usize) -> Result<Vec<u8>, RecvError> {
        self.recv_limited(None, max_len)
    }

    pub(crate) fn recv_limited(
        &self,
        deadline: Option<Instant>,
        max_len: usize,
    ) -> Result<Vec<u8>, RecvError> {
        let reader = self.reader.as_ref().ok_or(RecvError::Closed)?;
        let mut inbox = lock(&self.inbox);
        let (start, len) = next_frame(reader.as_fd(), &mut inbox, deadline, max_len)?;
        inbox.check_first(start, len)?;
        let bytes = inbox.buf[start..start + len].to_vec();
        inbox.consume();
        Ok(bytes)
    }

    /// Receives one message into `buf`, returning its length: Python's `recv_bytes_into`.
    ///
    /// # Errors
    /// As [`recv_bytes`](Connection::recv_bytes), plus [`RecvError::BufferTooShort`] (which
    /// holds the message) when `buf` is too small.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let reader = self.reader.as_ref().ok_or(RecvError::Closed)?;
        let reader = reader.as_fd();
        let mut inbox = lock(&self.inbox);
        if inbox.broken {
            return Err(broken());
        }
        // Every frame is at least MIN_FRAME long, so this never reads into the next one.
        fill_at_least(reader, &mut inbox, MIN_FRAME)?;
        let header: [u8; HEADER] = inbox.buf[..HEADER].try_into().expect("HEADER bytes");
        let len = match wire::announced_len(header) {
            Ok(len) => len,
            Err(e) => {
                inbox.broken = true;
                return Err(e.into());
            }
        };
        let have = inbox.filled - HEADER;
        if len <= have || len > buf.len() || inbox.keyless_client {
            // Already whole, too long for `buf`, or to be checked: the general path.
            let (start, len) = next_frame(reader, &mut inbox, None, wire::MAX_FRAME)?;
            inbox.check_first(start, len)?;
            let result = if len > buf.len() {
                Err(RecvError::BufferTooShort {
                    message: inbox.buf[start..start + len].to_vec(),
                    capacity: buf.len(),
                })
            } else {
                buf[..len].copy_from_slice(&inbox.buf[start..start + len]);
                Ok(len)
            };
            inbox.consume();
            return result;
        }
        // A large message that fits: the rest goes straight into `buf`, one copy fewer.
        buf[..have].copy_from_slice(&inbox.buf[HEADER..HEADER + have]);
        inbox.filled = 0;
        let mut got = have;
        while got < len {
            match sys::read(reader, &mut buf[got..len]) {
                Ok(0) => {
                    inbox.eof = true;
                    return Err(RecvError::Truncated {
                        received: HEADER + got,
                        expected: HEADER + len,
                    });
                }
                Ok(n) => got += n,
                Err(e) => {
                    // Part of the message is gone from the stream: it cannot be resumed.
                    inbox.broken = true;
                    return Err(e.into());
                }
            }
        }
        Ok(len)
    }

    fn recv_with<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&[u8]) -> Result<R, RecvError>,
    ) -> Result<R, RecvError> {
        let reader = self.reader.as_ref().ok_or(RecvError::Closed)?;
        let mut inbox = lock(&self.inbox);
        let (start, len) = next_frame(reader.as_fd(), &mut inbox, deadline, wire::MAX_FRAME)?;
        inbox.check_first(start, len)?;
        let result = f(&inbox.buf[start..start + len]);
        inbox.consume();
        result
    }

    /// Whether a message (or end of file) is waiting, waiting up to `timeout` for one;
    /// `None` waits forever, `Some(Duration::ZERO)` just checks. Python's `poll`.
    ///
    /// `true` means the next receive will not block for long: a message has at least
    /// started to arrive, or the peer closed its end.
    ///
    /// # Errors
    /// [`RecvError::Closed`] on a write-only or closed connection; OS errors.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
        let reader = self.reader.as_ref().ok_or(RecvError::Closed)?;
        {
            let inbox = lock(&self.inbox);
            if !inbox.unread().is_empty() || inbox.eof || inbox.broken {
                return Ok(true);
            }
        }
        let deadline = timeout.map(deadline_after);
        Ok(sys::wait_readable(&[reader.as_fd()], deadline)?[0])
    }

    /// Whether received bytes are buffered here (so the descriptor may not look readable).
    pub(crate) fn has_buffered(&self) -> bool {
        let inbox = lock(&self.inbox);
        !inbox.unread().is_empty() || inbox.eof || inbox.broken
    }

    /// Closes the connection: both directions, at once. Later operations fail with `Closed`;
    /// the peer sees end of file once every copy of this end is closed.
    pub fn close(&mut self) {
        self.reader = None;
        self.writer = None;
        *lock(&self.inbox) = Inbox::default();
    }

    /// Whether the connection was closed with [`close`](Connection::close) (Python's
    /// `closed` property).
    #[doc(alias = "closed")]
    pub fn is_closed(&self) -> bool {
        self.reader.is_none() && self.writer.is_none()
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.reader.is_some()
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writer.is_some()
    }

    /// The descriptor to wait on for incoming messages (the sending descriptor for a
    /// write-only end), Python's `fileno()`; `None` once closed.
    ///
    /// Part of a message may already have been read (after a timed-out receive), so prefer
    /// [`poll`](Connection::poll) or [`wait`] to wait for a connection.
    #[doc(alias = "fileno")]
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.reader
            .as_ref()
            .or(self.writer.as_ref())
            .map(|fd| fd.as_fd())
    }
}

/// Reads until `inbox` holds at least `want` bytes (never more than `want` in all).
fn fill_at_least(reader: BorrowedFd<'_>, inbox: &mut Inbox, want: usize) -> Result<(), RecvError> {
    if inbox.buf.len() < want {
        inbox.buf.resize(want, 0);
    }
    while inbox.filled < want {
        if inbox.eof {
            let received = inbox.filled;
            inbox.filled = 0;
            return Err(if received == 0 {
                RecvError::Disconnected
            } else {
                RecvError::Truncated {
                    received,
                    expected: want,
                }
            });
        }
        let filled = inbox.filled;
        let n = sys::read(reader, &mut inbox.buf[filled..want])?;
        if n == 0 {
            inbox.eof = true;
        }
        inbox.filled += n;
    }
    Ok(())
}

fn broken() -> RecvError {
    DecodeError::new("connection unreadable after a bad message header", None).into()
}

/// Reads until `inbox` holds a whole frame; returns its payload's offset and length.
fn next_frame(
    reader: BorrowedFd<'_>,
    inbox: &mut Inbox,
    deadline: Option<Instant>,
    max_len: usize,
) -> Result<(usize, usize), RecvError> {
    if inbox.broken {
        return Err(broken());
    }
    loop {
        let unread = inbox.unread();
        let need = match unread.get(..HEADER) {
            Some(header) => {
                let len = match wire::announced_len(header.try_into().expect("HEADER bytes")) {
                    Ok(len) if len <= max_len => len,
                    Ok(len) => {
                        inbox.broken = true;
                        return Err(DecodeError::new(
                            format!("message of {len} bytes exceeds the {max_len}-byte limit"),
                            None,
                        )
                        .into());
                    }
                    Err(e) => {
                        inbox.broken = true;
                        return Err(e.into());
                    }
                };
                let total = (HEADER + len).max(MIN_FRAME);
                if unread.len() >= total {
                    return Ok((HEADER, len));
                }
                total - unread.len()
            }
            None => MIN_FRAME - unread.len(),
        };
        if inbox.eof {
            let received = unread.len();
            if received == 0 {
                return Err(RecvError::Disconnected);
            }
            let expected = received + need;
            inbox.filled = 0;
            return Err(RecvError::Truncated { received, expected });
        }
        // Grow with what actually arrives (at most doubling), never by what a header claims.
        let end = inbox.filled + need.min(inbox.filled.max(GROW_STEP));
        if inbox.buf.len() < end {
            inbox.buf.resize(end, 0);
        }
        if let Some(d) = deadline
            && !sys::wait_readable(&[reader], Some(d))?[0]
        {
            return Err(RecvError::Timeout);
        }
        let filled = inbox.filled;
        let n = sys::read(reader, &mut inbox.buf[filled..end])?;
        if n == 0 {
            inbox.eof = true;
        }
        inbox.filled += n;
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("reader", &self.reader)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// A connection serializes only as a start argument for a child process: its descriptors
/// travel beside the arguments, and bytes it already read travel inside them.
impl Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inbox = lock(&self.inbox);
        (
            self.reader.as_ref().map(|fd| SerFd(fd.as_fd())),
            self.writer.as_ref().map(|fd| SerFd(fd.as_fd())),
            inbox.unread(),
            inbox.eof,
            inbox.keyless_client,
        )
            .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Connection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (reader, writer, unread, eof, keyless_client): (
            Option<DeFd>,
            Option<DeFd>,
            Vec<u8>,
            bool,
            bool,
        ) = serde::Deserialize::deserialize(d)?;
        let conn = Connection::from_fds(reader.map(|f| f.0), writer.map(|f| f.0));
        {
            let mut inbox = lock(&conn.inbox);
            inbox.filled = unread.len();
            inbox.buf = unread;
            inbox.eof = eof;
            inbox.keyless_client = keyless_client;
        }
        Ok(conn)
    }
}
