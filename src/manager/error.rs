//! What a manager call can fail with: [`ManagerError`] on the client, carrying a
//! [`RemoteError`] when the server refused the call.

use serde::{Deserialize, Serialize};

use crate::connection::ConnectError;
use crate::error::{DecodeError, EncodeError};

/// Why a call to a manager's server (or starting or reaching one) failed.
///
/// The outcome callers branch on most is [`Disconnected`](ManagerError::Disconnected): the
/// server is gone. A pending call gets it as soon as the server's end of the socket closes
/// (the server exited or was killed), and every later call gets it at once (the connection
/// is refused). It is final for the objects of that server: they lived in its memory, so no
/// reconnection brings them back; a server started again at the same address is a different
/// one, and calls on the old proxies then fail with
/// [`ServerReplaced`](ManagerError::ServerReplaced).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server is gone (exited, killed, or shut down). Its objects are lost; start a new
    /// manager (proxies of this one cannot recover).
    #[error(
        "the manager's server at {address} is gone (it exited or was killed); its objects \
         are lost, start a new manager"
    )]
    Disconnected {
        /// Where the server listened.
        address: String,
    },
    /// Connecting or authenticating failed for another reason than the server being gone:
    /// a wrong authkey ([`ConnectError::Refused`]), a peer that is not a manager, a timeout.
    #[error("could not connect to the manager's server")]
    Connect(#[source] ConnectError),
    /// A server answers at the proxy's address, but it is not the one that made the object:
    /// the manager was restarted, and the objects of the old server are gone.
    #[error(
        "the manager at {address} was restarted: the objects of the server this proxy \
         belongs to are gone"
    )]
    ServerReplaced {
        /// Where the server listens.
        address: String,
    },
    /// The server received the call and refused it.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// An argument could not be serialized.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A value from the server is not of the proxy's type (two proxies of different types on
    /// one object), or the server's reply is garbled.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server process could not be started, or did not come up.
    #[error("could not start the manager's server")]
    Start(#[source] crate::Error),
}

/// Why the server refused a call (Python's `RemoteError`, with the cases told apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The server has no object with this id.
    #[error("the manager has no object with id {0}")]
    NoSuchObject(u64),
    /// The object is not of the kind the call is for.
    #[error("manager object {id} is a {actual}, not a {expected}")]
    WrongKind {
        /// The object's id.
        id: u64,
        /// What the call needed.
        expected: String,
        /// What the object is.
        actual: String,
    },
    /// A list index out of range.
    #[error("list index {index} out of range for a list of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: i64,
        /// The list's length.
        len: usize,
    },
    /// `ListProxy::remove` found no equal item.
    #[error("the list holds no such item")]
    NotFound,
    /// A lock released by a client that does not hold it.
    #[error("release of a lock that is not held (by this thread, for an RLock)")]
    NotHeld,
    /// A bounded semaphore released more times than it was acquired.
    #[error("semaphore released too many times")]
    TooManyReleases,
    /// A barrier that was aborted, reset while this call waited, or broken by a waiter's
    /// timeout or departure (Python's `BrokenBarrierError`).
    #[doc(alias = "BrokenBarrierError")]
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A function sent with `modify` panicked in the server; the object is unchanged.
    #[error("the modify function panicked in the server: {0}")]
    Panicked(String),
    /// A function sent with `modify` could not decode the stored value or its argument (two
    /// proxies of different types on one object); the object is unchanged.
    #[error("the modify function could not decode its input: {0}")]
    ModifyDecode(String),
    /// `modify` from a program that is not the server's own binary: functions travel as
    /// code offsets, which mean nothing in another build.
    #[error(
        "modify needs the client to run the same binary as the server (functions travel as \
         code offsets); this client runs another program"
    )]
    ForeignBuild,
    /// The request could not be decoded (garbage, or a client of another version).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// [`Manager::get`](super::Manager::get): no object is registered under this name.
    #[error("no object is registered with the manager under the name {0:?}")]
    NotRegistered(String),
    /// [`Manager::register`](super::Manager::register): the name is already taken (a name is
    /// registered once; it is never replaced).
    #[error("the name {0:?} is already registered with the manager")]
    NameTaken(String),
    /// [`Manager::get`](super::Manager::get) asked for another proxy type than the object was
    /// registered with.
    #[error("{name:?} was registered as a {registered}, not a {requested}")]
    WrongType {
        /// The name looked up.
        name: String,
        /// The proxy type it was registered through.
        registered: String,
        /// The proxy type asked for.
        requested: String,
    },
}
