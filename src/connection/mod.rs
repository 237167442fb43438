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
//!
//! On a Unix socket, a message may also travel out of band, as a sealed memfd passed beside
//! a short frame (see [`Connection::set_out_of_band`]); every receive takes such messages.
//!
//! Bytes inside values: a `Vec<u8>`, `&[u8]` or `VecDeque<u8>` is written in one piece (the
//! same bytes as postcard's sequence of `u8`: a length, then the bytes). Reading one back as a
//! `Vec<u8>` still goes through serde's `Vec` visitor a byte at a time (some hundreds of MB/s);
//! for large byte payloads, `serde_bytes::ByteBuf` or a field with
//! `#[serde(with = "serde_bytes")]` reads at `memcpy` speed, and reads the same bytes, so
//! either side may use either type.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::error::{DecodeError, EncodeError, RecvError, SendError};
use crate::sys;
use crate::wire::share::{PassFd, TakeFd};
use crate::wire::{self, HEADER};

mod large;
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

/// Frames this large (header included) go through a [`pipe`]'s side socket rather than the
/// pipe: a Unix stream socket moves large messages faster than a pipe (BENCHMARKS.md, "Large
/// payloads"), while a pipe is faster for small ones.
const SIDE_FROM: usize = 64 * 1024;

/// The send buffer asked for on a [`pipe`]'s side socket, and on a Unix socket connection
/// before its first large message (the kernel may cap it).
const SIDE_BUFFER: usize = 4 << 20;

/// Creates a pair of connected duplex [`Connection`]s over a Unix socket pair, which, unlike
/// [`pipe`]'s, can also carry descriptors ([`send_handle`](Connection::send_handle)).
///
/// This is what Python's `Pipe(duplex=True)` is on Unix. [`pipe`] uses two pipes instead,
/// with a socket pair beside them for messages of 64 KiB or more: faster for small
/// messages, as fast for large ones, and, between processes, whole for messages up to 4092
/// bytes from several senders at once (see [`Connection::try_clone`]), which a socket does
/// not give. Use this pair when descriptors must travel.
///
/// # Examples
/// ```
/// use std::io::{Read, Seek, Write};
///
/// let (a, b) = multiproc::connection::socket_pipe()?;
/// let mut file = tempfile_with(b"through the socket")?;
/// a.send_handle(&file)?;
/// let mut received = std::fs::File::from(b.recv_handle()?);
/// let mut text = String::new();
/// received.read_to_string(&mut text)?; // the same open file: shared offset
/// assert_eq!(text, "through the socket");
/// # fn tempfile_with(bytes: &[u8]) -> std::io::Result<std::fs::File> {
/// #     let path = std::env::temp_dir().join(format!("multiproc-doc-{}", std::process::id()));
/// #     let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
/// #     std::fs::remove_file(&path)?;
/// #     f.write_all(bytes)?;
/// #     f.rewind()?;
/// #     Ok(f)
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The OS error if sockets cannot be created (out of descriptors).
#[doc(alias = "socketpair")]
pub fn socket_pipe() -> crate::Result<(Connection, Connection)> {
    let (a, b) = sys::socketpair()?;
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    Ok((
        Connection::from_fds(Some(a), Some(a2)),
        Connection::from_fds(Some(b), Some(b2)),
    ))
}

/// The payload of a message sent by [`Connection::send_handle`]: recognisable, so that
/// `recv_handle` refuses an ordinary message rather than taking it for one.
const HANDLE_MESSAGE: &[u8] = b"#MULTIPROC-HANDLE#";

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
/// # Large messages
/// Each pair also has a Unix socket pair beside its pipes (two more descriptors per end), and
/// a message of 64 KiB or more crosses through it: a small frame on the pipe says the
/// message follows on the socket, which is read whole before the next frame. A pipe is the
/// fastest path for small messages and a socket for large ones (BENCHMARKS.md, "Large
/// payloads"), so both keep their best figure. Nothing changes for the user: order, `poll`,
/// [`wait`], timeouts and end of file work as for any connection. The async sends of
/// `multiproc::aio` keep every message on the pipe; their receives take both.
///
/// # Errors
/// The OS error if pipes cannot be created (out of descriptors).
#[doc(alias = "Pipe")]
pub fn pipe(duplex: bool) -> crate::Result<(Connection, Connection)> {
    let (r1, w1) = sys::pipe()?;
    let (s1, s2) = sys::socketpair()?;
    for s in [&s1, &s2] {
        sys::set_send_buffer(s.as_fd(), SIDE_BUFFER);
    }
    let (a, b) = if duplex {
        let (r2, w2) = sys::pipe()?;
        (
            Connection::from_fds(Some(r1), Some(w2)),
            Connection::from_fds(Some(r2), Some(w1)),
        )
    } else {
        (
            Connection::from_fds(Some(r1), None),
            Connection::from_fds(None, Some(w1)),
        )
    };
    Ok((a.with_side(s1), b.with_side(s2)))
}

/// One end of a message channel between processes: Python's `Connection`.
///
/// `send` and `recv` are safe to call from several threads at once (each direction has its
/// own lock); a message is never interleaved with another. Made by [`pipe`],
/// [`Listener::accept`] or [`client`].
///
/// A connection can be moved into a child process: captured by the target under `fork`, or
/// passed as a start argument under start methods that begin a fresh program (its descriptors
/// travel beside the arguments). It can also be sent inside a message, over a
/// [`Queue`](crate::Queue) or another connection (see the `Serialize` impl for what that
/// implies), and [`try_clone`](Connection::try_clone)d, so that several threads and processes
/// share one end.
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
    /// Shared with this connection's [`try_clone`](Connection::try_clone)s: bytes read from
    /// the stream belong to whichever clone reads next, and one receive at a time.
    inbox: Arc<Mutex<Inbox>>,
    /// Shared with the clones too, so that their sends take turns.
    outbox: Arc<Mutex<Vec<u8>>>,
    /// Whether the pipe was already asked for a larger buffer (done on the first large send,
    /// so that pipes carrying only small messages keep the default and the per-user budget).
    grown: AtomicBool,
    /// Whether `reader` and `writer` are Unix sockets, which carry large messages out of band
    /// ([`large`]): [`UNKNOWN`] until first asked.
    reader_unix: AtomicU8,
    writer_unix: AtomicU8,
    /// Frames of at least this many bytes are sent out of band
    /// ([`set_out_of_band`](Connection::set_out_of_band)); `usize::MAX`: never.
    out_of_band_from: AtomicUsize,
    /// A [`pipe`]'s side socket, which carries messages of [`SIDE_FROM`] bytes or more: the
    /// pipe gets a frame announcing the message (bit 31 set, as an out-of-band frame on a
    /// Unix socket), its payload follows on this socket. `None` for other connections.
    side: Option<OwnedFd>,
}

/// Not yet asked whether a descriptor is a Unix socket ([`Connection::reader_unix`]).
const UNKNOWN: u8 = 0;
const NOT_UNIX: u8 = 1;
const UNIX: u8 = 2;

/// Whether `fd` is a Unix socket, asking the kernel once and keeping the answer in `cache`.
fn is_unix(cache: &AtomicU8, fd: BorrowedFd<'_>) -> bool {
    match cache.load(Ordering::Relaxed) {
        UNKNOWN => {
            let unix = sys::is_unix_socket(fd).unwrap_or(false);
            cache.store(if unix { UNIX } else { NOT_UNIX }, Ordering::Relaxed);
            unix
        }
        known => known == UNIX,
    }
}

/// A frame read off the stream: where its payload is.
enum Frame {
    /// In the inbox: `buf[start..start + len]`.
    Inline { start: usize, len: usize },
    /// In a memfd that came with the frame (already consumed from the inbox).
    OutOfBand(large::OutOfBand),
    /// Read whole from a [`pipe`]'s side socket.
    Side(Vec<u8>),
}

/// A message coming through a [`pipe`]'s side socket: `buf[..got]` of its `len` bytes are
/// in. Kept in the inbox between receives, so that one that timed out resumes.
struct SidePayload {
    buf: Vec<u8>,
    got: usize,
    len: usize,
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
    /// Descriptors that arrived with the frame being received (on a Unix socket).
    fds: Vec<OwnedFd>,
    /// The message being read from a [`pipe`]'s side socket, once its frame was taken.
    side: Option<SidePayload>,
}

impl Inbox {
    fn unread(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Whether a receive would find something here without waiting for the descriptor: part
    /// of a message, end of file, a broken stream, or a side message under way.
    fn has_buffered(&self) -> bool {
        !self.unread().is_empty() || self.eof || self.broken || self.side.is_some()
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

    /// Drops the whole frame just handed out, and closes the descriptors that came with it
    /// and were not taken.
    fn consume(&mut self) {
        self.filled = 0;
        self.fds.clear();
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
    /// A connection over a descriptor made elsewhere: a Unix or TCP socket, a pipe end, a
    /// FIFO, a descriptor received with [`recv_handle`](Connection::recv_handle) or inherited.
    /// Its access mode decides the directions: a read-only descriptor (a pipe's read end)
    /// only receives, a write-only one only sends, a read-write one (a socket) does both.
    /// The descriptor should be blocking, as sockets and pipes are when made.
    ///
    /// The peer must speak this crate's framing: each message is a little-endian `u32`
    /// payload length, then the payload, the whole frame padded with zeros to at least 64
    /// bytes (the padding is not part of the payload); [`send`](Connection::send) and
    /// [`recv`](Connection::recv) payloads are postcard encodings of the value, while
    /// [`send_bytes`](Connection::send_bytes)/[`recv_bytes`](Connection::recv_bytes) payloads
    /// are the bytes themselves. (This is not Python's framing, which has no padding and a
    /// big-endian signed length.) No authentication is done.
    ///
    /// # Examples
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::OwnedFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (ours, mut theirs) = UnixStream::pair()?;
    /// let conn = multiproc::Connection::from_fd(OwnedFd::from(ours))?;
    /// // A peer writing the framing by hand: length 2, "hi", zeros up to 64 bytes.
    /// let mut frame = vec![0u8; 64];
    /// frame[..4].copy_from_slice(&2u32.to_le_bytes());
    /// frame[4..6].copy_from_slice(b"hi");
    /// theirs.write_all(&frame)?;
    /// assert_eq!(conn.recv_bytes()?, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The OS error if `fd` is not open, or (for a read-write descriptor) cannot be
    /// duplicated for the sending side.
    pub fn from_fd(fd: OwnedFd) -> crate::Result<Connection> {
        Ok(match sys::access_mode(fd.as_fd())? {
            (true, false) => Connection::from_fds(Some(fd), None),
            (false, true) => Connection::from_fds(None, Some(fd)),
            _ => {
                let writer = fd.try_clone()?;
                Connection::from_fds(Some(fd), Some(writer))
            }
        })
    }

    pub(crate) fn from_fds(reader: Option<OwnedFd>, writer: Option<OwnedFd>) -> Self {
        Connection {
            reader,
            writer,
            inbox: Arc::default(),
            outbox: Arc::default(),
            grown: AtomicBool::new(false),
            reader_unix: AtomicU8::new(UNKNOWN),
            writer_unix: AtomicU8::new(UNKNOWN),
            out_of_band_from: AtomicUsize::new(usize::MAX),
            side: None,
        }
    }

    fn with_side(mut self, side: OwnedFd) -> Self {
        self.side = Some(side);
        self
    }

    /// The side socket, if this connection has one and a frame of `frame_len` bytes should
    /// go through it.
    fn side_for(&self, frame_len: usize) -> Option<BorrowedFd<'_>> {
        self.side
            .as_ref()
            .filter(|_| frame_len >= SIDE_FROM)
            .map(AsFd::as_fd)
    }

    /// Sends a message of `len` bytes (the concatenation of `parts`) through the side socket:
    /// its announcing frame on the pipe, then the bytes. The caller holds the send turn.
    fn send_on_side(
        writer: BorrowedFd<'_>,
        side: BorrowedFd<'_>,
        parts: &[&[u8]],
        len: usize,
    ) -> Result<(), SendError> {
        debug_assert!(len <= wire::MAX_FRAME);
        let mut frame = [0u8; MIN_FRAME];
        frame[..HEADER].copy_from_slice(&(len as u32 | large::OOB_FLAG).to_le_bytes());
        sys::write_all(writer, &frame)?;
        sys::write_all_vectored(side, parts)?;
        Ok(())
    }

    /// Marks this as a client's connection made without an authkey; see
    /// [`Inbox::check_first`].
    pub(crate) fn expect_no_challenge(&self) {
        lock(&self.inbox).keyless_client = true;
    }

    /// Sends `value` as one message.
    ///
    /// Blocks while the channel is full (the peer is not reading). The bytes of `value` go
    /// through the channel, however large (a [`pipe`]'s message of 64 KiB or more through
    /// the pair's side socket, see [`pipe`]), unless this Unix-socket connection was told to
    /// send large messages out of band ([`set_out_of_band`](Connection::set_out_of_band)); to
    /// hand over a large buffer without copying it, send a
    /// [`SharedBuffer`](crate::shared::SharedBuffer) or
    /// [`SharedSlice`](crate::shared::SharedSlice), which travels as a handle.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the peer's end is closed, [`SendError::Closed`] on a
    /// read-only or closed connection, [`SendError::Encode`] when `value` cannot be
    /// serialized or exceeds the message size limit (1 GiB).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        let mut out = lock(&self.outbox);
        out.clear();
        let from = self.out_of_band_from.load(Ordering::Relaxed);
        if from != usize::MAX {
            if let large::Encoded::OutOfBand { file, len } = large::encode(value, &mut out, from)? {
                large::send_frame(writer.as_fd(), file.as_fd(), len)?;
                return Ok(());
            }
        } else {
            wire::encode_into(value, &mut out)?;
        }
        if let Some(side) = self.side_for(out.len()) {
            let len = out.len() - HEADER;
            Connection::send_on_side(writer.as_fd(), side, &[&out[HEADER..]], len)?;
        } else {
            if out.len() < MIN_FRAME {
                out.resize(MIN_FRAME, 0);
            }
            self.grow_for(writer.as_fd(), out.len());
            sys::write_all(writer.as_fd(), &out)?;
        }
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
        if HEADER + bytes.len() >= self.out_of_band_from.load(Ordering::Relaxed) {
            let file = large::file_with(bytes)?;
            let _serialise = lock(&self.outbox);
            large::send_frame(writer.as_fd(), file.as_fd(), bytes.len())?;
            return Ok(());
        }
        let _serialise = lock(&self.outbox);
        if let Some(side) = self.side_for(HEADER + bytes.len()) {
            return Connection::send_on_side(writer.as_fd(), side, &[bytes], bytes.len());
        }
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

    /// Sends messages whose frame (the 4-byte header and the payload) is at least `from`
    /// bytes long out of band from now on, or none with `None` (the default).
    ///
    /// Out of band, a message's payload is written into a fresh memfd, which is sealed (its
    /// size fixed, no more writes) and passed with a 64-byte frame (SCM_RIGHTS) instead of
    /// going through the socket: a large [`send`](Connection::send) or
    /// [`send_bytes`](Connection::send_bytes) then does not wait for the peer to read its
    /// bytes (it returns once the memfd is written and its 64-byte frame queued), and the
    /// sender may exit right after sending (the kernel holds the memfd while it is in
    /// flight). Receiving needs nothing: every
    /// receive takes such messages, on any Unix-socket connection, whatever this setting.
    ///
    /// It is not the default because it is not faster when the receiver copies the message
    /// out, which every receive does: each message costs fresh pages for the memfd, written
    /// and then read whole from memory, while a socket streams the bytes through a small
    /// buffer that stays in cache (measured in BENCHMARKS.md, "Large payloads"). To hand a
    /// large buffer over without any copy, send a
    /// [`SharedBuffer`](crate::shared::SharedBuffer) instead. `from` is raised to at least 65
    /// bytes, so that a payload sent out of band is never empty.
    ///
    /// Affects this handle's blocking sends only (a [`try_clone`](Connection::try_clone)
    /// starts with this handle's setting; the async sends of `multiproc::aio` send every
    /// message through the socket, and their receives take out-of-band messages too).
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiproc::connection::socket_pipe()?;
    /// a.set_out_of_band(Some(64 * 1024))?;
    /// let big = vec![7u8; 1 << 20];
    /// a.send_bytes(&big)?; // a 64-byte frame and a memfd, not 1 MiB through the socket
    /// drop(a); // the message is in flight, held by the kernel
    /// assert_eq!(b.recv_bytes()?, big);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SendError::HandlesUnsupported`] if the connection is not a Unix socket (a pipe or
    /// TCP cannot carry descriptors; nothing changes); [`SendError::Closed`] on a read-only
    /// or closed connection.
    pub fn set_out_of_band(&self, from: Option<usize>) -> Result<(), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        if !is_unix(&self.writer_unix, writer.as_fd()) {
            return Err(SendError::HandlesUnsupported);
        }
        let from = from.map_or(usize::MAX, |f| f.max(MIN_FRAME + 1));
        self.out_of_band_from.store(from, Ordering::Relaxed);
        Ok(())
    }

    /// Sends an open descriptor (a file, a socket, a pipe end: anything [`AsFd`]) to the
    /// peer, which receives its own copy with [`recv_handle`](Connection::recv_handle):
    /// Python's `multiprocessing.reduction.send_handle`. The copy refers to the same open
    /// file (shared offset and flags); this end's descriptor stays open.
    ///
    /// Descriptors travel only over Unix sockets (SCM_RIGHTS): connections made by
    /// [`socket_pipe`], by [`Listener`]/[`client`] over a Unix address, or by
    /// [`Connection::from_fd`] of a Unix socket. [`pipe`]'s connections are pipes and cannot.
    ///
    /// The message is one frame like any other, with the descriptor attached: the peer must
    /// take it with `recv_handle` (an ordinary receive discards the descriptor and fails to
    /// decode the message).
    ///
    /// # Examples
    /// ```
    /// use multiproc::{Process, connection::socket_pipe};
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    ///
    /// fn child(conn: multiproc::Connection) {
    ///     let mut stream = UnixStream::from(conn.recv_handle().unwrap());
    ///     stream.write_all(b"hello from the child").unwrap();
    /// }
    ///
    /// let (mine, theirs) = socket_pipe()?;
    /// let mut p = Process::with_args(child, theirs);
    /// p.start()?;
    /// let (mut near, far) = UnixStream::pair()?;
    /// mine.send_handle(&far)?;
    /// drop(far);
    /// let mut text = String::new();
    /// std::io::Read::read_to_string(&mut near, &mut text)?;
    /// assert_eq!(text, "hello from the child");
    /// p.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SendError::HandlesUnsupported`] on a connection that is not a Unix socket (nothing is
    /// sent); otherwise as [`send_bytes`](Connection::send_bytes).
    pub fn send_handle(&self, fd: impl AsFd) -> Result<(), SendError> {
        let writer = self.writer.as_ref().ok_or(SendError::Closed)?;
        if !sys::is_unix_socket(writer.as_fd())? {
            return Err(SendError::HandlesUnsupported);
        }
        let mut frame = [0u8; MIN_FRAME];
        frame[..HEADER].copy_from_slice(&wire::header_for(HANDLE_MESSAGE.len())?);
        frame[HEADER..HEADER + HANDLE_MESSAGE.len()].copy_from_slice(HANDLE_MESSAGE);
        let _serialise = lock(&self.outbox);
        sys::send_with_fds(writer.as_fd(), &frame, &[fd.as_fd()])?;
        Ok(())
    }

    /// Receives a descriptor sent with [`send_handle`](Connection::send_handle), blocking
    /// until the message arrives: Python's `multiprocessing.reduction.recv_handle`. The
    /// descriptor is close-on-exec.
    ///
    /// # Errors
    /// [`RecvError::HandlesUnsupported`] on a connection that is not a Unix socket (nothing
    /// is read); [`RecvError::Decode`] when the next message is not a handle, or arrived
    /// without its descriptor (the message is consumed and any descriptors with it closed);
    /// otherwise as [`recv`](Connection::recv).
    pub fn recv_handle(&self) -> Result<OwnedFd, RecvError> {
        let reader = self.reader.as_ref().ok_or(RecvError::Closed)?;
        if !sys::is_unix_socket(reader.as_fd())? {
            return Err(RecvError::HandlesUnsupported);
        }
        let mut inbox = lock(&self.inbox);
        let (start, len) =
            match self.read_frame(reader.as_fd(), &mut inbox, None, wire::MAX_FRAME)? {
                Frame::Inline { start, len } => (start, len),
                // (A side message cannot come here: only a pipe's connection has one.)
                Frame::OutOfBand(_) | Frame::Side(_) => {
                    return Err(DecodeError::new(
                        "expected a descriptor sent with send_handle, but a large message arrived \
                     out of band (it is consumed, its memory closed)",
                        None,
                    )
                    .into());
                }
            };
        inbox.check_first(start, len)?;
        let is_handle = &inbox.buf[start..start + len] == HANDLE_MESSAGE;
        let mut fds = std::mem::take(&mut inbox.fds);
        inbox.consume();
        let why = match (is_handle, fds.len()) {
            (true, 1) => return Ok(fds.pop().expect("one descriptor")),
            (true, 0) => "a handle message arrived without its descriptor (was it sent over a \
                          connection that drops descriptors?)"
                .to_owned(),
            (true, n) => format!("a handle message carried {n} descriptors, not one (closed here)"),
            (false, 0) => "expected a descriptor sent with send_handle, but the message is an \
                           ordinary one (it is consumed)"
                .to_owned(),
            (false, n) => format!(
                "expected a message sent with send_handle, but an ordinary message arrived \
                 with {n} descriptor(s) attached (closed here)"
            ),
        };
        Err(DecodeError::new(why, None).into())
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

    /// For `crate::aio`: the lock that sends of this connection and its clones take turns
    /// with (a blocking send holds it while it writes).
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn send_turn(&self) -> Arc<Mutex<Vec<u8>>> {
        Arc::clone(&self.outbox)
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

    /// Before a large message, asks once for a 1 MiB pipe buffer, or a larger socket send
    /// buffer: fewer wake-ups per message.
    fn grow_for(&self, writer: BorrowedFd<'_>, len: usize) {
        if len >= LARGE_MESSAGE && !self.grown.swap(true, Ordering::Relaxed) {
            if is_unix(&self.writer_unix, writer) {
                sys::set_send_buffer(writer, SIDE_BUFFER);
            } else {
                sys::set_pipe_size(writer, 1 << 20);
            }
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
        self.recv_limited(None, wire::MAX_FRAME)
    }

    /// As [`recv_bytes`](Connection::recv_bytes), waiting at most `timeout` for the message.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::connection::RecvError;
    ///
    /// let (a, b) = multiproc::pipe(true)?;
    /// let nothing = b.recv_bytes_timeout(Duration::from_millis(10));
    /// assert!(matches!(nothing, Err(RecvError::Timeout)));
    /// a.send_bytes(b"hello")?;
    /// assert_eq!(b.recv_bytes_timeout(Duration::from_secs(10))?, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As `recv_bytes`, plus [`RecvError::Timeout`] when no whole message arrived in time
    /// (part of one may have, and is kept for the next call).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.recv_limited(Some(deadline_after(timeout)), wire::MAX_FRAME)
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
        match self.read_frame(reader.as_fd(), &mut inbox, deadline, max_len)? {
            Frame::Inline { start, len } => {
                inbox.check_first(start, len)?;
                let bytes = inbox.buf[start..start + len].to_vec();
                inbox.consume();
                Ok(bytes)
            }
            Frame::OutOfBand(payload) => Ok(payload.to_vec().map_err(refused)?),
            Frame::Side(bytes) => Ok(bytes),
        }
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
        if inbox.side.is_some() {
            // A side message a timed-out receive began: finish it first.
            return match self.finish_side(&mut inbox, None)? {
                Frame::Side(message) => side_message_into(message, buf),
                _ => unreachable!("finish_side gives side messages"),
            };
        }
        // Every frame is at least MIN_FRAME long, so this never reads into the next one.
        if is_unix(&self.reader_unix, reader) {
            let mut fds = std::mem::take(&mut inbox.fds);
            let filled = fill_at_least_with(reader, &mut inbox, MIN_FRAME, &mut |fd, buf| {
                sys::recv_exact_with_fds(fd, buf, &mut fds)
            });
            inbox.fds = fds;
            filled?;
        } else {
            fill_at_least(reader, &mut inbox, MIN_FRAME)?;
        }
        let raw = u32::from_le_bytes(inbox.buf[..HEADER].try_into().expect("HEADER bytes"));
        let out_of_band = raw & large::OOB_FLAG != 0;
        let len = match wire::announced_len((raw & !large::OOB_FLAG).to_le_bytes()) {
            Ok(len) => len,
            Err(e) => {
                inbox.broken = true;
                return Err(e.into());
            }
        };
        let have = inbox.filled - HEADER;
        if let Some(side) = self
            .side
            .as_ref()
            .filter(|_| out_of_band && len <= buf.len())
        {
            // A side message that fits: read straight into `buf`, one copy fewer.
            inbox.consume();
            let read = read_side_into(side.as_fd(), &mut buf[..len]);
            if let Err(RecvError::Io(_)) = read {
                inbox.broken = true; // part of the message is gone: no resuming
            }
            return read.map(|()| len);
        }
        if len <= have || len > buf.len() || inbox.keyless_client || out_of_band {
            // Already whole, too long for `buf`, to be checked, or out of band: the general
            // path.
            let (start, len) = match self.read_frame(reader, &mut inbox, None, wire::MAX_FRAME)? {
                Frame::Inline { start, len } => (start, len),
                Frame::OutOfBand(payload) if payload.len > buf.len() => {
                    return Err(RecvError::BufferTooShort {
                        message: payload.to_vec().map_err(refused)?,
                        capacity: buf.len(),
                    });
                }
                Frame::OutOfBand(payload) => {
                    payload
                        .read_into(&mut buf[..payload.len])
                        .map_err(refused)?;
                    return Ok(payload.len);
                }
                Frame::Side(message) => return side_message_into(message, buf),
            };
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
        // A large message that fits: the rest goes straight into `buf`, one copy fewer. (A
        // descriptor attached to it is closed; so is any in its remaining bytes, which the
        // kernel closes for a plain read.)
        buf[..have].copy_from_slice(&inbox.buf[HEADER..HEADER + have]);
        inbox.filled = 0;
        inbox.fds.clear();
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
        match self.read_frame(reader.as_fd(), &mut inbox, deadline, wire::MAX_FRAME)? {
            Frame::Inline { start, len } => {
                inbox.check_first(start, len)?;
                let result = f(&inbox.buf[start..start + len]);
                inbox.consume();
                result
            }
            Frame::OutOfBand(payload) => {
                // The inbox is free again: decoding from the mapping holds no buffer of ours.
                drop(inbox);
                let bytes = payload.map().map_err(refused)?;
                f(bytes.bytes())
            }
            Frame::Side(bytes) => {
                drop(inbox);
                f(&bytes)
            }
        }
    }

    /// Reads the next frame: on a Unix socket, with the descriptors that come with it. A
    /// frame announced out of band is taken off the stream here, with its descriptor, which
    /// must be exactly one; otherwise the frame is refused (consumed, descriptors closed).
    fn read_frame(
        &self,
        reader: BorrowedFd<'_>,
        inbox: &mut Inbox,
        deadline: Option<Instant>,
        max_len: usize,
    ) -> Result<Frame, RecvError> {
        if inbox.side.is_some() {
            return self.finish_side(inbox, deadline);
        }
        let unix = is_unix(&self.reader_unix, reader);
        let found = if unix {
            let mut fds = std::mem::take(&mut inbox.fds);
            let found = next_frame_with(reader, inbox, deadline, max_len, &mut |fd, buf| {
                sys::recv_exact_with_fds(fd, buf, &mut fds)
            });
            inbox.fds = fds;
            found
        } else {
            next_frame(reader, inbox, deadline, max_len)
        };
        let (start, len, out_of_band) = match found {
            Ok(found) => found,
            Err(e) => {
                if inbox.filled == 0 {
                    // No frame is pending (end of stream, or a truncated one dropped).
                    inbox.fds.clear();
                }
                return Err(e);
            }
        };
        if !out_of_band {
            // Descriptors attached to an ordinary frame are closed when it is consumed, as
            // a plain `read(2)` would have closed them.
            return Ok(Frame::Inline { start, len });
        }
        inbox.keyless_client = false;
        let mut fds = std::mem::take(&mut inbox.fds);
        inbox.consume();
        if self.side.is_some() && !unix {
            if len > max_len {
                // Its bytes are on the side socket, unread: the connection cannot go on.
                inbox.broken = true;
                return Err(DecodeError::new(
                    format!("message of {len} bytes exceeds the {max_len}-byte limit"),
                    None,
                )
                .into());
            }
            inbox.side = Some(SidePayload {
                buf: Vec::new(),
                got: 0,
                len,
            });
            return self.finish_side(inbox, deadline);
        }
        let why = match fds.len() {
            1 if len <= max_len => {
                let file = fds.pop().expect("one descriptor");
                return Ok(Frame::OutOfBand(large::OutOfBand { file, len }));
            }
            1 => {
                format!("message of {len} bytes exceeds the {max_len}-byte limit (it is consumed)")
            }
            0 if unix => format!(
                "a frame header announces {len} bytes out of band (bit 31 set), but no \
                 descriptor came with it (the frame is consumed)"
            ),
            0 => format!(
                "a frame header announces {len} bytes out of band (bit 31 set), which only a \
                 Unix-socket connection can carry (the frame is consumed)"
            ),
            n => format!(
                "a frame announced out of band came with {n} descriptors, not one (consumed, \
                 closed here)"
            ),
        };
        Err(DecodeError::new(why, None).into())
    }

    /// Reads the rest of the message coming through the side socket ([`Inbox::side`]), until
    /// `deadline`: on timeout what came is kept for the next receive.
    fn finish_side(
        &self,
        inbox: &mut Inbox,
        deadline: Option<Instant>,
    ) -> Result<Frame, RecvError> {
        let side = self
            .side
            .as_ref()
            .expect("a side payload needs a side socket")
            .as_fd();
        loop {
            let pending = inbox.side.as_mut().expect("a side payload is pending");
            if pending.got == pending.len {
                let mut bytes = std::mem::take(&mut pending.buf);
                bytes.truncate(pending.len);
                inbox.side = None;
                return Ok(Frame::Side(bytes));
            }
            if pending.buf.len() == pending.got {
                // Grow with what actually arrives (at most doubling), never by what the
                // header claims.
                let end = pending
                    .len
                    .min(pending.got.max(GROW_STEP).saturating_mul(2));
                pending.buf.resize(end, 0);
            }
            if let Some(d) = deadline
                && !sys::wait_readable(&[side], Some(d))?[0]
            {
                return Err(RecvError::Timeout);
            }
            let got = pending.got;
            match sys::read(side, &mut pending.buf[got..]) {
                Ok(0) => {
                    // The sender went away part-way; the pipe tells what follows (end of
                    // file, most likely).
                    let (received, expected) = (HEADER + pending.got, HEADER + pending.len);
                    inbox.side = None;
                    return Err(RecvError::Truncated { received, expected });
                }
                Ok(n) => pending.got += n,
                Err(e) => {
                    inbox.side = None;
                    inbox.broken = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// For `crate::aio`: the descriptor a receive that would block waits on: the side socket
    /// while a message is coming through it, else the reader.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn recv_wait_fd(&self) -> Option<BorrowedFd<'_>> {
        if lock(&self.inbox).side.is_some() {
            return self.side.as_ref().map(AsFd::as_fd);
        }
        self.reader.as_ref().map(AsFd::as_fd)
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
            if inbox.has_buffered() {
                return Ok(true);
            }
        }
        let deadline = timeout.map(deadline_after);
        Ok(sys::wait_readable(&[reader.as_fd()], deadline)?[0])
    }

    /// Whether received bytes are buffered here (so the descriptor may not look readable).
    pub(crate) fn has_buffered(&self) -> bool {
        lock(&self.inbox).has_buffered()
    }

    /// Closes the connection: both directions, at once. Later operations fail with `Closed`;
    /// the peer sees end of file once every copy of this end is closed.
    pub fn close(&mut self) {
        self.reader = None;
        self.writer = None;
        self.side = None;
        // Clones keep the buffered bytes; this end just lets go of them.
        self.inbox = Arc::default();
        self.outbox = Arc::default();
    }

    /// Another handle on this connection: a duplicate of its descriptors (`dup`), which can
    /// be used from another thread, moved into a child process, sent over a [`Queue`] or a
    /// connection, and closed independently. The peer sees end of file only once every copy
    /// is closed.
    ///
    /// Clones in one process take turns exactly as threads on one `Connection` do: each send
    /// and each receive is whole. Between processes (a clone sent to a child, or a child
    /// that inherited one), what the kernel guarantees is what holds, as in Python:
    /// - sends: on a [`pipe`] connection, a message of at most 4092 bytes (a frame of at most
    ///   `PIPE_BUF`, 4096 bytes, header included) is written in one `write`, which the kernel
    ///   never interleaves with another process's, so several processes may send small
    ///   messages at once. Larger messages, and any message on a socket connection
    ///   ([`Listener`], [`client`], [`socket_pipe`]), may interleave with another process's
    ///   and corrupt both: senders in different processes must hold a
    ///   [`Lock`](crate::Lock) around `send` for those.
    /// - receives: readers in different processes must take turns (a [`Lock`](crate::Lock)
    ///   around `recv`, as the module docs say): a receive reads exactly one message, but two
    ///   at once may each take part of the same one.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiproc::pipe(true)?;
    /// let a2 = a.try_clone()?;
    /// let t = std::thread::spawn(move || a2.send(&"from a clone").unwrap());
    /// a.send(&"from the original")?;
    /// t.join().unwrap();
    /// let mut got = vec![b.recv::<String>()?, b.recv::<String>()?];
    /// got.sort();
    /// assert_eq!(got, ["from a clone", "from the original"]);
    /// drop(a); // the clone was dropped by its thread: every copy is closed
    /// assert!(b.recv::<String>().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The OS error if the descriptors cannot be duplicated (out of descriptors).
    ///
    /// [`Queue`]: crate::Queue
    pub fn try_clone(&self) -> crate::Result<Connection> {
        let dup = |fd: &Option<OwnedFd>| fd.as_ref().map(OwnedFd::try_clone).transpose();
        Ok(Connection {
            reader: dup(&self.reader)?,
            writer: dup(&self.writer)?,
            inbox: Arc::clone(&self.inbox),
            outbox: Arc::clone(&self.outbox),
            grown: AtomicBool::new(self.grown.load(Ordering::Relaxed)),
            reader_unix: AtomicU8::new(self.reader_unix.load(Ordering::Relaxed)),
            writer_unix: AtomicU8::new(self.writer_unix.load(Ordering::Relaxed)),
            out_of_band_from: AtomicUsize::new(self.out_of_band_from.load(Ordering::Relaxed)),
            side: dup(&self.side)?,
        })
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
    fill_at_least_with(reader, inbox, want, &mut sys::read)
}

/// As [`fill_at_least`], reading with `read` (which must read at most the slice it is given).
fn fill_at_least_with(
    reader: BorrowedFd<'_>,
    inbox: &mut Inbox,
    want: usize,
    read: &mut dyn FnMut(BorrowedFd<'_>, &mut [u8]) -> std::io::Result<usize>,
) -> Result<(), RecvError> {
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
        let n = read(reader, &mut inbox.buf[filled..want])?;
        if n == 0 {
            inbox.eof = true;
        }
        inbox.filled += n;
    }
    Ok(())
}

/// `recv_bytes_into`'s answer for a side message read whole.
fn side_message_into(message: Vec<u8>, buf: &mut [u8]) -> Result<usize, RecvError> {
    if message.len() > buf.len() {
        return Err(RecvError::BufferTooShort {
            capacity: buf.len(),
            message,
        });
    }
    buf[..message.len()].copy_from_slice(&message);
    Ok(message.len())
}

/// Reads a whole side message into `buf` (blocking: its frame was already taken).
fn read_side_into(side: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(), RecvError> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(side, &mut buf[got..])? {
            0 => {
                return Err(RecvError::Truncated {
                    received: HEADER + got,
                    expected: HEADER + buf.len(),
                });
            }
            n => got += n,
        }
    }
    Ok(())
}

/// A payload that came out of band and cannot be read: a descriptor that is not a sealed
/// memfd of the announced size is a [`RecvError::Decode`] that says why; failing to map or
/// read a valid one is the OS's error.
fn refused(e: std::io::Error) -> RecvError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        DecodeError::new(format!("refused a message sent out of band: {e}"), None).into()
    } else {
        e.into()
    }
}

fn broken() -> RecvError {
    DecodeError::new("connection unreadable after a bad message header", None).into()
}

/// Reads until `inbox` holds a whole frame; returns its payload's offset and length, and
/// whether the header announced it out of band (bit 31 set: the frame on the stream is then
/// [`MIN_FRAME`] bytes, and `len`, unchecked against `max_len`, is that of the payload in the
/// descriptor that came with it).
fn next_frame(
    reader: BorrowedFd<'_>,
    inbox: &mut Inbox,
    deadline: Option<Instant>,
    max_len: usize,
) -> Result<(usize, usize, bool), RecvError> {
    next_frame_with(reader, inbox, deadline, max_len, &mut sys::read)
}

/// As [`next_frame`], reading with `read` (which must read at most the slice it is given).
fn next_frame_with(
    reader: BorrowedFd<'_>,
    inbox: &mut Inbox,
    deadline: Option<Instant>,
    max_len: usize,
    read: &mut dyn FnMut(BorrowedFd<'_>, &mut [u8]) -> std::io::Result<usize>,
) -> Result<(usize, usize, bool), RecvError> {
    if inbox.broken {
        return Err(broken());
    }
    loop {
        let unread = inbox.unread();
        let need = match unread.get(..HEADER) {
            Some(header) => {
                let raw = u32::from_le_bytes(header.try_into().expect("HEADER bytes"));
                let out_of_band = raw & large::OOB_FLAG != 0;
                let len = match wire::announced_len((raw & !large::OOB_FLAG).to_le_bytes()) {
                    Ok(len) if len <= max_len || out_of_band => len,
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
                let total = if out_of_band {
                    MIN_FRAME
                } else {
                    (HEADER + len).max(MIN_FRAME)
                };
                if unread.len() >= total {
                    return Ok((HEADER, len, out_of_band));
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
        let n = read(reader, &mut inbox.buf[filled..end])?;
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

/// [`Connection::from_fd`].
impl TryFrom<OwnedFd> for Connection {
    type Error = crate::Error;

    fn try_from(fd: OwnedFd) -> crate::Result<Connection> {
        Connection::from_fd(fd)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("reader", &self.reader)
            .field("writer", &self.writer)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// A connection serializes as a start argument for a child process (its descriptors travel
/// beside the arguments) and inside any message: over a [`Queue`](crate::Queue) or another
/// connection, as Python pickles connections. Bytes it already read travel inside it.
///
/// Inside a message, serializing keeps a duplicate of the descriptors in this process and
/// writes a ticket for them; the receiving process fetches its own duplicate from this one
/// (over a Unix socket in the abstract namespace, with SCM_RIGHTS) while decoding, as
/// Python's `resource_sharer` does. So:
/// - the sending process must still be running when the message is received, or the
///   receive fails with a decode error that says so;
/// - sending does not close this end (as with [`try_clone`](Connection::try_clone), both
///   ends are then open; drop this one if it should not be used here), and until the
///   message is received this process holds one more copy, so for a sending end, the peer
///   sees end of file only after that;
/// - a message never received keeps its copy open here until this process exits;
/// - each message can be received once.
impl Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inbox = lock(&self.inbox);
        (
            self.reader.as_ref().map(|fd| PassFd(fd.as_fd())),
            self.writer.as_ref().map(|fd| PassFd(fd.as_fd())),
            self.side.as_ref().map(|fd| PassFd(fd.as_fd())),
            inbox.unread(),
            inbox.eof,
            inbox.keyless_client,
            inbox.side.as_ref().map(|p| (&p.buf[..p.got], p.len)),
        )
            .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Connection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[allow(clippy::type_complexity)]
        let (reader, writer, side, unread, eof, keyless_client, side_payload): (
            Option<TakeFd>,
            Option<TakeFd>,
            Option<TakeFd>,
            Vec<u8>,
            bool,
            bool,
            Option<(Vec<u8>, usize)>,
        ) = serde::Deserialize::deserialize(d)?;
        let mut conn = Connection::from_fds(reader.map(|f| f.0), writer.map(|f| f.0));
        conn.side = side.map(|f| f.0);
        {
            let mut inbox = lock(&conn.inbox);
            if let Some((buf, len)) = side_payload {
                if conn.side.is_none() || buf.len() > len || len > wire::MAX_FRAME {
                    return Err(serde::de::Error::custom(
                        "a connection's partly received side message does not fit it",
                    ));
                }
                inbox.side = Some(SidePayload {
                    got: buf.len(),
                    buf,
                    len,
                });
            }
            inbox.filled = unread.len();
            inbox.buf = unread;
            inbox.eof = eof;
            inbox.keyless_client = keyless_client;
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor attached to an ordinary message (which `send_handle` never sends, but a
    /// peer speaking the framing by hand may): `recv_handle` refuses the message and closes
    /// the descriptor. It is a pipe's write end, so its reader seeing end of file proves it.
    #[test]
    fn recv_handle_closes_descriptors_attached_to_an_ordinary_message() {
        let (a, b) = socket_pipe().unwrap();
        let (pipe_r, pipe_w) = sys::pipe().unwrap();
        let mut frame = [0u8; MIN_FRAME];
        frame[..HEADER].copy_from_slice(&wire::header_for(3).unwrap());
        frame[HEADER..HEADER + 3].copy_from_slice(b"abc");
        sys::send_with_fds(
            a.writer.as_ref().unwrap().as_fd(),
            &frame,
            &[pipe_w.as_fd()],
        )
        .unwrap();
        drop(pipe_w);
        let err = b.recv_handle().unwrap_err();
        assert!(
            err.to_string().contains("1 descriptor(s) attached"),
            "{err}"
        );
        // Bounded: a descriptor left open would leave the pipe unreadable, not hang the test.
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(sys::wait_readable(&[pipe_r.as_fd()], Some(deadline)).unwrap()[0]);
        let mut byte = [0u8; 1];
        assert_eq!(sys::read(pipe_r.as_fd(), &mut byte).unwrap(), 0);
        // The stream is in step: the next message is received whole.
        a.send(&7u8).unwrap();
        assert_eq!(b.recv::<u8>().unwrap(), 7);
    }

    /// Reads the next frame off `conn`'s socket by hand: its header and the descriptors that
    /// came with it.
    fn raw_frame(conn: &Connection) -> (u32, Vec<OwnedFd>) {
        let mut frame = [0u8; MIN_FRAME];
        let mut fds = Vec::new();
        let mut got = 0;
        while got < MIN_FRAME {
            let n = sys::recv_exact_with_fds(
                conn.reader.as_ref().unwrap().as_fd(),
                &mut frame[got..],
                &mut fds,
            )
            .unwrap();
            assert!(n > 0, "end of stream");
            got += n;
        }
        (u32::from_le_bytes(frame[..HEADER].try_into().unwrap()), fds)
    }

    /// Sends a forged frame with header `raw` and `fds` attached.
    fn forge(conn: &Connection, raw: u32, fds: &[BorrowedFd<'_>]) {
        let mut frame = [0u8; MIN_FRAME];
        frame[..HEADER].copy_from_slice(&raw.to_le_bytes());
        sys::send_with_fds(conn.writer.as_ref().unwrap().as_fd(), &frame, fds).unwrap();
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// With `set_out_of_band(Some(T))`, frames of `T - 1` bytes go down the socket, frames of
    /// `T` and `T + 1` bytes out of band, for `send_bytes` and for `send` alike; by default,
    /// and after `set_out_of_band(None)`, none does.
    #[test]
    fn the_threshold_is_the_frame_length() {
        const T: usize = 64 * 1024;
        let (a, b) = socket_pipe().unwrap();
        let big = pattern(T * 2);
        for setting in [None, Some(T), None] {
            a.set_out_of_band(setting).unwrap();
            a.send_bytes(&big).unwrap();
            let (raw, fds) = raw_frame(&b);
            assert_eq!(raw & large::OOB_FLAG != 0, setting.is_some());
            assert_eq!(fds.len(), usize::from(setting.is_some()));
            if setting.is_none() {
                let mut rest = vec![0u8; HEADER + big.len() - MIN_FRAME];
                let mut got = 0;
                while got < rest.len() {
                    got += sys::read(b.reader.as_ref().unwrap().as_fd(), &mut rest[got..]).unwrap();
                }
            }
        }
        a.set_out_of_band(Some(T)).unwrap();
        for delta in [-1isize, 0, 1] {
            let frame = T.checked_add_signed(delta).unwrap();
            let out_of_band = delta >= 0;
            let bytes = pattern(frame - HEADER);
            a.send_bytes(&bytes).unwrap();
            let (raw, fds) = raw_frame(&b);
            assert_eq!(
                raw & large::OOB_FLAG != 0,
                out_of_band,
                "send_bytes {frame}"
            );
            assert_eq!(fds.len(), usize::from(out_of_band));
            if out_of_band {
                assert_eq!((raw & !large::OOB_FLAG) as usize, bytes.len());
            } else {
                // The rest of the inline frame.
                let mut rest = vec![0u8; frame - MIN_FRAME];
                let mut got = 0;
                while got < rest.len() {
                    got += sys::read(b.reader.as_ref().unwrap().as_fd(), &mut rest[got..]).unwrap();
                }
            }
            // A `Vec<u8>` of n < 2^21 bytes encodes as a 3-byte length, then the bytes.
            let value = pattern(frame - HEADER - 3);
            a.send(&value).unwrap();
            let (raw, fds) = raw_frame(&b);
            assert_eq!(raw & large::OOB_FLAG != 0, out_of_band, "send {frame}");
            assert_eq!(fds.len(), usize::from(out_of_band));
            if !out_of_band {
                let mut rest = vec![0u8; frame - MIN_FRAME];
                let mut got = 0;
                while got < rest.len() {
                    got += sys::read(b.reader.as_ref().unwrap().as_fd(), &mut rest[got..]).unwrap();
                }
            }
            // And every receive gets them back whole.
            a.send_bytes(&bytes).unwrap();
            assert_eq!(b.recv_bytes().unwrap(), bytes);
            a.send(&value).unwrap();
            assert_eq!(b.recv::<Vec<u8>>().unwrap(), value);
            a.send_bytes(&bytes).unwrap();
            let mut into = vec![0u8; bytes.len() + 5];
            assert_eq!(b.recv_bytes_into(&mut into).unwrap(), bytes.len());
            assert_eq!(&into[..bytes.len()], &bytes[..]);
            a.send_bytes(&bytes).unwrap();
            assert_eq!(b.recv_bytes_max(bytes.len()).unwrap(), bytes);
            a.send(&value).unwrap();
            assert_eq!(
                b.recv_timeout::<Vec<u8>>(Duration::from_secs(10)).unwrap(),
                value
            );
        }
    }

    /// Checks that `err` is a decode error mentioning `what`, and that the stream is still in
    /// step after it.
    fn refused_then_in_step(a: &Connection, b: &Connection, err: RecvError, what: &str) {
        assert!(matches!(err, RecvError::Decode(_)), "{err:?}");
        assert!(err.to_string().contains(what), "{err} (wanted {what:?})");
        a.send(&"next").unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "next");
    }

    /// Bit 31 with no descriptor, with two, with a pipe, with an unsealed memfd, with one of
    /// the wrong size, one sealed against resizing but not writes, one of no bytes: each a
    /// clear error, the frame consumed and its descriptors closed, never a panic or a hang.
    #[test]
    #[cfg_attr(
        multiproc_portable,
        ignore = "the portable layer has no seals: an unsealed object of the right size is accepted (src/sys/posix/shm.rs)"
    )]
    fn forged_out_of_band_frames_are_refused() {
        let (a, b) = socket_pipe().unwrap();
        let flag = large::OOB_FLAG;

        forge(&a, flag | 100_000, &[]);
        let e = b.recv::<Vec<u8>>().unwrap_err();
        refused_then_in_step(&a, &b, e, "no descriptor came with it");

        // A pipe's write end: its reader sees end of file once the receiver closes it.
        let (pipe_r, pipe_w) = sys::pipe().unwrap();
        forge(&a, flag | 100_000, &[pipe_w.as_fd()]);
        drop(pipe_w);
        let e = b.recv_bytes().unwrap_err();
        refused_then_in_step(&a, &b, e, "not a memfd");
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(sys::wait_readable(&[pipe_r.as_fd()], Some(deadline)).unwrap()[0]);
        assert_eq!(sys::read(pipe_r.as_fd(), &mut [0u8; 1]).unwrap(), 0);

        let unsealed = sys::memfd(100_000).unwrap();
        forge(&a, flag | 100_000, &[unsealed.as_fd()]);
        let e = b.recv::<Vec<u8>>().unwrap_err();
        refused_then_in_step(&a, &b, e, "not sealed");

        let fixed = sys::memfd_fixed_size(c"test", 100_000).unwrap();
        forge(&a, flag | 100_000, &[fixed.as_fd()]);
        let mut buf = vec![0u8; 200_000];
        let e = b.recv_bytes_into(&mut buf).unwrap_err();
        refused_then_in_step(&a, &b, e, "not sealed");

        let sealed = large::file_with(&pattern(100_000)).unwrap();
        forge(&a, flag | 100_001, &[sealed.as_fd()]);
        let e = b.recv_bytes().unwrap_err();
        refused_then_in_step(
            &a,
            &b,
            e,
            "holds 100000 bytes, but the header announces 100001",
        );

        forge(&a, flag | 100_000, &[sealed.as_fd(), sealed.as_fd()]);
        let e = b.recv::<Vec<u8>>().unwrap_err();
        refused_then_in_step(&a, &b, e, "2 descriptors");

        let empty = large::file_with(&[]).unwrap();
        forge(&a, flag, &[empty.as_fd()]);
        let e = b.recv::<Vec<u8>>().unwrap_err();
        assert!(!matches!(e, RecvError::Timeout), "{e:?}");
        a.send(&"next").unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "next");

        // Over the frame limit even without the bit: the stream cannot be resynchronised.
        forge(&a, flag | (wire::MAX_FRAME as u32 + 1), &[sealed.as_fd()]);
        let e = b.recv_bytes().unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");

        // A genuine one still decodes on a fresh pair, also as a value of the wrong type.
        let (a, b) = socket_pipe().unwrap();
        forge(&a, flag | 100_000, &[sealed.as_fd()]);
        assert_eq!(b.recv_bytes().unwrap(), pattern(100_000));
        forge(&a, flag | 100_000, &[sealed.as_fd()]);
        let e = b.recv::<(u64, u64)>().unwrap_err();
        refused_then_in_step(&a, &b, e, "left over");
    }

    /// On a pipe, which cannot carry descriptors, a header with bit 31 set is refused and
    /// the stream stays in step; `recv_handle`, `recv_bytes_max` and `recv_bytes_into` refuse
    /// out-of-band messages they cannot take, and `poll` sees one coming.
    #[test]
    fn out_of_band_frames_where_they_cannot_be_taken() {
        // Bare pipes: a `pipe()`'s own pair takes such a frame as a side message.
        let (r, w) = sys::pipe().unwrap();
        let (r, w) = (
            Connection::from_fds(Some(r), None),
            Connection::from_fds(None, Some(w)),
        );
        assert!(matches!(
            w.set_out_of_band(Some(1 << 20)),
            Err(SendError::HandlesUnsupported)
        ));
        let mut frame = [0u8; MIN_FRAME];
        frame[..HEADER].copy_from_slice(&(large::OOB_FLAG | 100_000).to_le_bytes());
        sys::write_all(w.writer.as_ref().unwrap().as_fd(), &frame).unwrap();
        let e = r.recv_bytes().unwrap_err();
        refused_then_in_step(&w, &r, e, "only a Unix-socket connection can carry");

        let (a, b) = socket_pipe().unwrap();
        a.set_out_of_band(Some(1000)).unwrap();
        let big = pattern(1 << 20);
        a.send_bytes(&big).unwrap();
        assert!(b.poll(Some(Duration::from_secs(10))).unwrap());
        let e = b.recv_handle().unwrap_err();
        refused_then_in_step(&a, &b, e, "out of band");

        a.send_bytes(&big).unwrap();
        let e = b.recv_bytes_max(1000).unwrap_err();
        refused_then_in_step(&a, &b, e, "exceeds the 1000-byte limit");

        a.send_bytes(&big).unwrap();
        let mut small = [0u8; 10];
        match b.recv_bytes_into(&mut small) {
            Err(RecvError::BufferTooShort { message, capacity }) => {
                assert_eq!((message, capacity), (big.clone(), 10));
            }
            other => panic!("{other:?}"),
        }
        a.send(&"next").unwrap();
        assert_eq!(b.recv::<String>().unwrap(), "next");
    }

    /// A `pipe()`'s large message goes through its side socket: the pipe carries only the
    /// 64-byte frame announcing it; a small one stays on the pipe.
    #[test]
    fn a_pipes_large_messages_go_through_its_side_socket() {
        let (r, w) = pipe(false).unwrap();
        let big = pattern(SIDE_FROM);
        let sent = big.clone();
        let sender = std::thread::spawn(move || {
            w.send_bytes(&sent).unwrap();
            w.send_bytes(b"small").unwrap();
            w
        });
        let pipe_fd = r.reader.as_ref().unwrap().as_fd();
        let side_fd = r.side.as_ref().unwrap().as_fd();
        let mut frame = [0u8; MIN_FRAME];
        let mut got = 0;
        while got < MIN_FRAME {
            got += sys::read(pipe_fd, &mut frame[got..]).unwrap();
        }
        let raw = u32::from_le_bytes(frame[..HEADER].try_into().unwrap());
        assert_eq!(
            raw,
            large::OOB_FLAG | SIDE_FROM as u32,
            "the announcing frame"
        );
        let mut payload = vec![0u8; SIDE_FROM];
        let mut got = 0;
        while got < SIDE_FROM {
            got += sys::read(side_fd, &mut payload[got..]).unwrap();
        }
        assert!(payload == big, "the bytes came through the side socket");
        let w = sender.join().unwrap();
        assert_eq!(r.recv_bytes().unwrap(), b"small");
        drop(w);
        assert!(matches!(r.recv_bytes(), Err(RecvError::Disconnected)));
    }

    /// Frames forged on a `pipe()`'s pipe: a side message over `recv_bytes_max`'s limit is
    /// refused (the connection then unreadable, as for an over-long inline message), and one
    /// whose sender closes part-way gives `Truncated`, then end of file; no hang.
    #[test]
    fn forged_side_frames_are_refused() {
        let announce = |w: &Connection, len: u32| {
            let mut frame = [0u8; MIN_FRAME];
            frame[..HEADER].copy_from_slice(&(large::OOB_FLAG | len).to_le_bytes());
            sys::write_all(w.writer.as_ref().unwrap().as_fd(), &frame).unwrap();
        };
        let (r, w) = pipe(false).unwrap();
        announce(&w, 5000);
        let e = r.recv_bytes_max(1000).unwrap_err();
        assert!(e.to_string().contains("exceeds the 1000-byte limit"), "{e}");
        assert!(
            r.recv_bytes().is_err(),
            "unreadable after a refused message"
        );

        let (r, w) = pipe(false).unwrap();
        announce(&w, 1000);
        sys::write_all(w.side.as_ref().unwrap().as_fd(), &[9u8; 500]).unwrap();
        let wait = Duration::from_millis(20);
        assert!(matches!(
            r.recv_bytes_timeout(wait),
            Err(RecvError::Timeout)
        ));
        assert!(
            r.poll(Some(Duration::ZERO)).unwrap(),
            "a message is under way"
        );
        drop(w);
        match r.recv_bytes_timeout(Duration::from_secs(10)) {
            Err(RecvError::Truncated { received, expected }) => {
                assert_eq!((received, expected), (HEADER + 500, HEADER + 1000));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        assert!(matches!(r.recv_bytes(), Err(RecvError::Disconnected)));
    }
}
