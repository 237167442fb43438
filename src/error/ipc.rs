//! Errors of the IPC operations: connections and queues.
//!
//! Each names the outcomes a caller branches on (`Disconnected`, `Empty`, `Full`, `Timeout`),
//! as crossbeam's channel errors do, plus the two this crate adds because values travel as
//! bytes: [`EncodeError`] and [`DecodeError`]. The queue's have one type per operation
//! (`PutError`, `PutTimeoutError`, `TryPutError`; `GetError`, `GetTimeoutError`,
//! `TryGetError`), each with only the outcomes that operation can have.

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

// The queue's errors: one type per operation, as crossbeam's channels have, so that a `match`
// names only what that operation can return. Every put error hands the item back.

/// Defines a put error type: the item comes back in every variant.
macro_rules! put_error {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $message:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[non_exhaustive]
        pub enum $name<T> {
            $( $(#[$vmeta])* $variant(T), )*
            /// The item could not be serialized or is larger than the message limit.
            Encode(T, EncodeError),
            /// The operating system refused (for instance, a lock or mapping failed).
            Io(T, io::Error),
        }

        impl<T> $name<T> {
            /// The item that was not enqueued.
            pub fn into_inner(self) -> T {
                match self {
                    $( $name::$variant(t) )|* | $name::Encode(t, _) | $name::Io(t, _) => t,
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( $name::$variant(_) => f.write_str(concat!(stringify!($variant), "(..)")), )*
                    $name::Encode(_, e) => f.debug_tuple("Encode").field(&"..").field(e).finish(),
                    $name::Io(_, e) => f.debug_tuple("Io").field(&"..").field(e).finish(),
                }
            }
        }

        impl<T> fmt::Display for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( $name::$variant(_) => f.write_str($message), )*
                    $name::Encode(_, e) => fmt::Display::fmt(e, f),
                    $name::Io(..) => f.write_str("queue operation failed"),
                }
            }
        }

        impl<T> std::error::Error for $name<T> {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $name::Encode(_, e) => e.source(),
                    $name::Io(_, e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}

put_error! {
    /// Why a blocking [`Queue::put`](crate::Queue::put) did not enqueue the item, which comes
    /// back inside the error ([`into_inner`](PutError::into_inner)). A blocking put has no
    /// `Full` and no `Timeout`: it waits for room.
    PutError {
        /// The queue was [shut down](crate::Queue::shutdown) (Python 3.13's `queue.ShutDown`).
        ShutDown => "queue is shut down",
        /// This handle was [closed](crate::Queue::close) for putting.
        Closed => "queue handle is closed for putting",
        /// The queue is full and no other handle is left to take an item out: waiting for
        /// room would never end (the rule is in the [`queue`](crate::queue) module's
        /// documentation, "When a get gives up").
        Disconnected => "queue is full and no other handle is left to take items out",
    }
}

put_error! {
    /// Why [`Queue::put_timeout`](crate::Queue::put_timeout) did not enqueue the item, which
    /// comes back inside the error. Python raises `queue.Full` where this says `Timeout`.
    #[doc(alias("Full", "queue.Full"))]
    PutTimeoutError {
        /// The queue stayed full until the timeout (Python's `queue.Full`).
        Timeout => "timed out waiting for room in the queue",
        /// The queue was [shut down](crate::Queue::shutdown).
        ShutDown => "queue is shut down",
        /// This handle was [closed](crate::Queue::close) for putting.
        Closed => "queue handle is closed for putting",
        /// The queue is full and no other handle is left to take an item out: returned as
        /// soon as that is seen, without waiting out the timeout, once the queue has been
        /// shared (see [`PutError::Disconnected`]).
        Disconnected => "queue is full and no other handle is left to take items out",
    }
}

put_error! {
    /// Why [`Queue::put_nowait`](crate::Queue::put_nowait) did not enqueue the item, which
    /// comes back inside the error. A full queue is `Full` whoever still holds it: a
    /// non-blocking call does not ask who else could make room.
    #[doc(alias("Full", "queue.Full"))]
    TryPutError {
        /// The queue is full (Python's `queue.Full`).
        Full => "queue is full",
        /// The queue was [shut down](crate::Queue::shutdown).
        ShutDown => "queue is shut down",
        /// This handle was [closed](crate::Queue::close) for putting.
        Closed => "queue handle is closed for putting",
    }
}

impl<T> PutError<T> {
    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, PutError::ShutDown(_))
    }

    /// Whether no other handle is left to make room.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, PutError::Disconnected(_))
    }
}

impl<T> PutTimeoutError<T> {
    /// Whether the queue stayed full until the timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PutTimeoutError::Timeout(_))
    }

    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, PutTimeoutError::ShutDown(_))
    }

    /// Whether no other handle is left to make room.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, PutTimeoutError::Disconnected(_))
    }
}

impl<T> TryPutError<T> {
    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TryPutError::Full(_))
    }

    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, TryPutError::ShutDown(_))
    }
}

/// Every outcome of a blocking put is one of a timed put (one that had all the time it
/// needed), so `?` turns the first into the second.
impl<T> From<PutError<T>> for PutTimeoutError<T> {
    fn from(e: PutError<T>) -> Self {
        match e {
            PutError::ShutDown(t) => PutTimeoutError::ShutDown(t),
            PutError::Closed(t) => PutTimeoutError::Closed(t),
            PutError::Disconnected(t) => PutTimeoutError::Disconnected(t),
            PutError::Encode(t, e) => PutTimeoutError::Encode(t, e),
            PutError::Io(t, e) => PutTimeoutError::Io(t, e),
        }
    }
}

/// Why a blocking [`Queue::get`](crate::Queue::get) returned no item. A blocking get has no
/// `Empty` and no `Timeout`: it waits for an item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue was [shut down](crate::Queue::shutdown) and every item left in it was taken
    /// (Python 3.13's `queue.ShutDown`).
    #[doc(alias = "queue.ShutDown")]
    #[error("queue is shut down and empty")]
    ShutDown,
    /// The queue is empty and no item can come: see the rule in the [`queue`](crate::queue)
    /// module's documentation, "When a get gives up".
    #[error("queue is empty and every other handle that could put is gone")]
    Disconnected,
    /// The item's bytes are not a valid value of the queue's type; the item was consumed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The operating system refused (for instance, a lock or mapping failed).
    #[error("queue operation failed")]
    Io(#[source] io::Error),
}

/// Why [`Queue::get_timeout`](crate::Queue::get_timeout) returned no item. Python raises
/// `queue.Empty` where this says `Timeout`.
#[doc(alias("Empty", "queue.Empty"))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetTimeoutError {
    /// The queue stayed empty until the timeout (Python's `queue.Empty`).
    #[error("timed out waiting for an item")]
    Timeout,
    /// The queue was [shut down](crate::Queue::shutdown) and every item left in it was taken.
    #[error("queue is shut down and empty")]
    ShutDown,
    /// The queue is empty and no item can come (see [`GetError::Disconnected`]): returned as
    /// soon as that is seen, without waiting out the timeout, once the queue has been shared
    /// (a timed get on a queue never shared waits, for a producer not started yet).
    #[error("queue is empty and every other handle that could put is gone")]
    Disconnected,
    /// The item's bytes are not a valid value of the queue's type; the item was consumed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The operating system refused (for instance, a lock or mapping failed).
    #[error("queue operation failed")]
    Io(#[source] io::Error),
}

/// Why [`Queue::get_nowait`](crate::Queue::get_nowait) returned no item. An empty queue is
/// `Empty` whoever still holds it: a non-blocking call does not ask who else could put.
#[doc(alias("Empty", "queue.Empty"))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryGetError {
    /// The queue is empty (Python's `queue.Empty`).
    #[error("queue is empty")]
    Empty,
    /// The queue was [shut down](crate::Queue::shutdown) and every item left in it was taken.
    #[error("queue is shut down and empty")]
    ShutDown,
    /// The item's bytes are not a valid value of the queue's type; the item was consumed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The operating system refused (for instance, a lock or mapping failed).
    #[error("queue operation failed")]
    Io(#[source] io::Error),
}

impl GetError {
    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, GetError::ShutDown)
    }

    /// Whether no item can come.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, GetError::Disconnected)
    }
}

impl GetTimeoutError {
    /// Whether the queue stayed empty until the timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, GetTimeoutError::Timeout)
    }

    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, GetTimeoutError::ShutDown)
    }

    /// Whether no item can come.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, GetTimeoutError::Disconnected)
    }
}

impl TryGetError {
    /// Whether the queue was empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryGetError::Empty)
    }

    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, TryGetError::ShutDown)
    }
}

/// Every outcome of a blocking get is one of a timed get, so `?` turns the first into the
/// second.
impl From<GetError> for GetTimeoutError {
    fn from(e: GetError) -> Self {
        match e {
            GetError::ShutDown => GetTimeoutError::ShutDown,
            GetError::Disconnected => GetTimeoutError::Disconnected,
            GetError::Decode(e) => GetTimeoutError::Decode(e),
            GetError::Io(e) => GetTimeoutError::Io(e),
        }
    }
}
