//! Errors of the IPC operations: connections and queues.
//!
//! Each names the outcomes a caller branches on (`Disconnected`, `Empty`, `Full`, `Timeout`),
//! as crossbeam's channel errors do, plus the two this crate adds because values travel as
//! bytes: [`EncodeError`] and [`DecodeError`].

use std::fmt;
use std::io;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A value could not be serialized, or its bytes exceed the message size limit.
#[derive(Debug)]
pub struct EncodeError {
    message: String,
    source: Option<BoxError>,
}

impl EncodeError {
    pub(crate) fn new(message: impl Into<String>, source: Option<BoxError>) -> Self {
        EncodeError {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Received bytes are not a valid message of the expected type, announce a size over the
/// limit, or describe a value nested deeper than [`MAX_DECODE_DEPTH`](crate::connection::MAX_DECODE_DEPTH)
/// levels (or deeper than the receiving thread's stack allows). Decoding never runs code from
/// the bytes; bad bytes only ever produce this error.
#[derive(Debug)]
pub struct DecodeError {
    message: String,
    source: Option<BoxError>,
}

impl DecodeError {
    pub(crate) fn new(message: impl Into<String>, source: Option<BoxError>) -> Self {
        DecodeError {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Why [`Connection::send`](crate::Connection::send) (or `send_bytes`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Every receiving end is closed (the peer exited or dropped its connection).
    #[error("the receiving end of the connection is closed")]
    Disconnected,
    /// This connection was closed, or is the read-only end of a one-way pipe.
    #[error("connection is not open for writing")]
    Closed,
    /// The value could not be serialized, or is larger than the message limit.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The operating system refused the write.
    #[error("connection write failed")]
    Io(#[source] io::Error),
    /// [`send_handle`](crate::Connection::send_handle) on a connection that cannot carry
    /// descriptors: only Unix sockets can (not pipes, not TCP).
    #[error(
        "this connection cannot carry descriptors: send_handle needs a Unix socket connection \
         (connection::socket_pipe, Listener/client over a Unix address, or Connection::from_fd \
         of a Unix socket), not a pipe or TCP"
    )]
    HandlesUnsupported,
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::ECONNRESET) {
            SendError::Disconnected
        } else {
            SendError::Io(e)
        }
    }
}

/// Why a receive on a [`Connection`](crate::Connection) produced no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The sending end is closed and every message it sent was received (Python's `EOFError`).
    #[error("the sending end of the connection is closed")]
    Disconnected,
    /// The sending end closed (or died) in the middle of a message; the partial message was
    /// discarded. The connection is at end of file afterwards.
    #[error(
        "peer closed the connection in the middle of a message ({received} of {expected} bytes)"
    )]
    Truncated {
        /// Bytes of the message that arrived.
        received: usize,
        /// Bytes the message announced (header included).
        expected: usize,
    },
    /// This connection was closed, or is the write-only end of a one-way pipe.
    #[error("connection is not open for reading")]
    Closed,
    /// `recv_timeout` ran out of time; no message was consumed.
    #[error("timed out waiting for a message")]
    Timeout,
    /// `recv_bytes_into` was given a buffer smaller than the message. The message is consumed
    /// and returned here whole (Python's `BufferTooShort`).
    #[error("buffer of {capacity} bytes is too short for a {}-byte message", .message.len())]
    BufferTooShort {
        /// The message that did not fit.
        message: Vec<u8>,
        /// The size of the buffer that was given.
        capacity: usize,
    },
    /// The message's bytes are not a valid value of the requested type, or announce a size
    /// over the limit. A bad message is consumed; the stream stays in step, except after a
    /// bad size header, when the connection cannot be read further.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The operating system refused the read.
    #[error("connection read failed")]
    Io(#[source] io::Error),
    /// The first message on a connection made by
    /// [`client_with_authkey`](crate::connection::client_with_authkey) without a key is the listener's
    /// authentication challenge: the listener requires an authkey the client did not use
    /// (Python's client would misread the challenge as data). The challenge is consumed; the
    /// listener refuses this connection.
    #[error(
        "authentication required: the listener sent an authentication challenge, but this \
         client connected without an authkey"
    )]
    AuthenticationRequired,
    /// [`recv_handle`](crate::Connection::recv_handle) on a connection that cannot carry
    /// descriptors: only Unix sockets can (not pipes, not TCP). Nothing was read.
    #[error(
        "this connection cannot carry descriptors: recv_handle needs a Unix socket connection \
         (connection::socket_pipe, Listener/client over a Unix address, or Connection::from_fd \
         of a Unix socket), not a pipe or TCP"
    )]
    HandlesUnsupported,
}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ECONNRESET) {
            RecvError::Disconnected
        } else {
            RecvError::Io(e)
        }
    }
}

/// Why a [`Queue::put`](crate::Queue::put) (or one of its variants) did not enqueue the item,
/// which comes back inside the error.
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue is full (`put_nowait` only).
    Full(T),
    /// The queue stayed full until the timeout (`put_timeout` only).
    Timeout(T),
    /// This handle was [closed](crate::Queue::close) for putting.
    Closed(T),
    /// The queue is full and no other handle is left to take an item out: a blocking `put`
    /// would never return.
    Disconnected(T),
    /// The item could not be serialized or is larger than the message limit.
    Encode(T, EncodeError),
    /// The operating system refused (for instance, a lock or mapping failed).
    Io(T, io::Error),
}

impl<T> PutError<T> {
    /// The item that was not enqueued.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t)
            | PutError::Timeout(t)
            | PutError::Closed(t)
            | PutError::Disconnected(t)
            | PutError::Encode(t, _)
            | PutError::Io(t, _) => t,
        }
    }

    /// The same error carrying `item` instead.
    pub(crate) fn map_item<U>(self, item: U) -> PutError<U> {
        match self {
            PutError::Full(_) => PutError::Full(item),
            PutError::Timeout(_) => PutError::Timeout(item),
            PutError::Closed(_) => PutError::Closed(item),
            PutError::Disconnected(_) => PutError::Disconnected(item),
            PutError::Encode(_, e) => PutError::Encode(item, e),
            PutError::Io(_, e) => PutError::Io(item, e),
        }
    }

    /// Whether the queue was full (`Full` or `Timeout`).
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_) | PutError::Timeout(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Timeout(_) => f.write_str("Timeout(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Disconnected(_) => f.write_str("Disconnected(..)"),
            PutError::Encode(_, e) => f.debug_tuple("Encode").field(&"..").field(e).finish(),
            PutError::Io(_, e) => f.debug_tuple("Io").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("queue is full"),
            PutError::Timeout(_) => f.write_str("timed out waiting for room in the queue"),
            PutError::Closed(_) => f.write_str("queue handle is closed for putting"),
            PutError::Disconnected(_) => {
                f.write_str("queue is full and no other handle is left to take items out")
            }
            PutError::Encode(_, e) => fmt::Display::fmt(e, f),
            PutError::Io(..) => f.write_str("queue operation failed"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Encode(_, e) => e.source(),
            PutError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Why a [`Queue::get`](crate::Queue::get) (or one of its variants) returned no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue is empty (`get_nowait` only).
    #[error("queue is empty")]
    Empty,
    /// The queue stayed empty until the timeout (`get_timeout` only).
    #[error("timed out waiting for an item")]
    Timeout,
    /// The queue is empty and no other handle that could put is left: every other process
    /// holding the queue has exited or closed it.
    #[error("queue is empty and every other handle is gone")]
    Disconnected,
    /// The item's bytes are not a valid value of the queue's type; the item was consumed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The operating system refused (for instance, a lock or mapping failed).
    #[error("queue operation failed")]
    Io(#[source] io::Error),
}
