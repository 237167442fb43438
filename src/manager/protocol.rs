//! The messages between a proxy and the server (see `README.md` beside this file). Values are
//! opaque bytes here (each proxy's type encodes and decodes its own), so the server needs no
//! type parameters and never runs code from the wire except `modify`'s checked entry offsets.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::RemoteError;
use crate::connection::Address;

/// An encoded value (postcard).
pub(crate) type Bytes = Vec<u8>;

/// The first message on every connection, after the authkey handshake.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The client's binary, `(device, inode, size, mtime)`: `modify` is allowed only when it is
    /// the server's own (`None` when the client cannot tell).
    pub(crate) build: Option<(u64, u64, i64, i64)>,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    /// Random, fixed for the server's life: tells a proxy whether the server it reaches is the
    /// one that made its object.
    pub(crate) server: u64,
    /// Whether this client may send `modify` functions.
    pub(crate) same_build: bool,
}

/// The kinds of objects a server holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Value(Bytes),
    Lock,
    RLock,
    Semaphore {
        value: u64,
        bound: Option<u64>,
    },
    Event,
    /// A user's type, made by a constructor named by its code offset.
    Custom {
        ctor: i64,
        arg: Bytes,
    },
    Queue {
        maxsize: Option<u64>,
    },
    Barrier {
        parties: u64,
    },
    Condition,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Create(Kind),
    Call {
        id: u64,
        op: Op,
    },
    /// Stop serving (the server's process then exits, if a manager started it).
    Shutdown,
    /// Name object `id` (Python's `register(typeid, ...)`); `type_name` is the proxy type it
    /// was registered through, checked by every `Lookup`.
    Register {
        name: String,
        id: u64,
        type_name: String,
    },
    /// The id of the object registered as `name`, if its proxy type is `type_name`.
    Lookup {
        name: String,
        type_name: String,
    },
}

/// A function sent by `modify`: its entry offset, and its encoded argument.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Func {
    pub(crate) entry: i64,
    pub(crate) arg: Bytes,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Len,
    Clear,
    // Dict
    Get(Bytes),
    Insert(Bytes, Bytes),
    Remove(Bytes),
    Contains(Bytes),
    Keys,
    Values,
    Items,
    Update(Vec<(Bytes, Bytes)>),
    SetDefault(Bytes, Bytes),
    /// `modify` on the value at a key, starting from the given default when it is absent.
    ModifyKey(Bytes, Bytes, Func),
    // List
    Push(Bytes),
    Pop(Option<i64>),
    At(i64),
    Set(i64, Bytes),
    Extend(Vec<Bytes>),
    RemoveItem(Bytes),
    InsertAt(i64, Bytes),
    Snapshot,
    ModifyAt(i64, Func),
    // Value
    Load,
    Store(Bytes),
    Modify(Func),
    // Lock, RLock
    Acquire {
        timeout_ms: Option<u64>,
    },
    Release,
    // Event
    SetFlag,
    ClearFlag,
    IsSet,
    Wait {
        timeout_ms: Option<u64>,
    },
    // Queue
    Put {
        item: Bytes,
        timeout_ms: Option<u64>,
    },
    Take {
        timeout_ms: Option<u64>,
    },
    // Condition (plus Acquire and Release)
    CondWait {
        timeout_ms: Option<u64>,
    },
    Notify(Option<u64>),
    // Barrier
    BarrierWait {
        timeout_ms: Option<u64>,
    },
    Abort,
    Reset,
    Parties,
    Waiting,
    IsBroken,
    // A user's type
    Method {
        dispatch: i64,
        method: u32,
        args: Bytes,
        /// The method takes `&self`: it may run beside other such calls on the object.
        shared: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Unit,
    Id(u64),
    Bool(bool),
    Len(u64),
    Value(Option<Bytes>),
    Values(Vec<Bytes>),
    Items(Vec<(Bytes, Bytes)>),
    /// The result of `modify`: what the function returned.
    Modified(Bytes),
}

pub(crate) type Response = Result<Reply, RemoteError>;

/// An [`Address`] as it travels inside a serialized proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum Addr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl From<&Address> for Addr {
    fn from(a: &Address) -> Self {
        match a {
            Address::Unix(p) => Addr::Unix(p.clone()),
            Address::Tcp(s) => Addr::Tcp(*s),
        }
    }
}

impl From<&Addr> for Address {
    fn from(a: &Addr) -> Self {
        match a {
            Addr::Unix(p) => Address::Unix(p.clone()),
            Addr::Tcp(s) => Address::Tcp(*s),
        }
    }
}

/// A client's timeout as the `timeout_ms` of an [`Op`]: `Some` (a wait without one is `None`),
/// saturated at `u64::MAX` ms.
pub(super) fn timeout_ms(timeout: std::time::Duration) -> Option<u64> {
    Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}
