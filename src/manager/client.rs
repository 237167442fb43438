//! The client side: a [`Handle`] names one object (server address, authkey, server identity,
//! object id), and each thread of each process reaches the server over a connection of its
//! own, opened on first use.
//!
//! Python's proxies share one socket per thread too, but a fork copies it into the child, and
//! parent and child then read each other's replies (cpython#101320). Here every connection is
//! recorded with the pid that opened it; a process that finds one opened by another process
//! (its parent, before a fork) drops its copy of the descriptor (the parent's stays open) and
//! connects afresh.

use std::cell::RefCell;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ManagerError;
use super::protocol::{Addr, Hello, Reply, Request, Response, Welcome};
use crate::connection::{
    Address, ConnectError, Connection, RecvError, SendError, client_with_authkey,
};
use crate::error::{DecodeError, EncodeError};
use crate::process::AuthKey;

/// Where an object lives: what a proxy holds, and what it serializes to.
///
/// It carries the authkey, as a proxy passed to a child must be able to reach the server:
/// whoever receives a proxy can use the manager, exactly as whoever holds the key can.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handle {
    pub(crate) address: Addr,
    pub(crate) authkey: AuthKey,
    pub(crate) server: u64,
    pub(crate) id: u64,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("address", &Address::from(&self.address))
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One connection of this thread to one server.
struct Open {
    address: Addr,
    server: u64,
    pid: u32,
    conn: Connection,
}

thread_local! {
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

/// Connects and greets a server; its identity and whether this client may send functions.
pub(crate) fn connect(
    address: &Address,
    authkey: &AuthKey,
) -> Result<(Connection, Welcome), ManagerError> {
    let conn = client_with_authkey(address, Some(authkey)).map_err(|e| match e {
        ConnectError::Io(io) if gone(&io) => disconnected(address),
        e => ManagerError::Connect(e),
    })?;
    let hello = Hello {
        build: crate::sys::exe_identity().ok(),
    };
    conn.send(&hello).map_err(|e| send_error(e, address))?;
    let welcome: Welcome = conn.recv().map_err(|e| recv_error(e, address))?;
    Ok((conn, welcome))
}

fn gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | NotFound | ConnectionReset | BrokenPipe | UnexpectedEof
    )
}

pub(crate) fn disconnected(address: &Address) -> ManagerError {
    ManagerError::Disconnected {
        address: address.to_string(),
    }
}

fn send_error(e: SendError, address: &Address) -> ManagerError {
    match e {
        SendError::Encode(e) => ManagerError::Encode(e),
        SendError::Io(io) if !gone(&io) => ManagerError::Connect(ConnectError::Io(io)),
        _ => disconnected(address),
    }
}

fn recv_error(e: RecvError, address: &Address) -> ManagerError {
    match e {
        RecvError::Decode(e) => ManagerError::Decode(e),
        RecvError::Io(io) if !gone(&io) => ManagerError::Connect(ConnectError::Io(io)),
        RecvError::AuthenticationRequired => ManagerError::Connect(ConnectError::Refused),
        _ => disconnected(address),
    }
}

/// Sends `request` about `handle`'s server on this thread's connection to it (opening one if
/// needed) and returns the reply.
pub(crate) fn call(handle: &Handle, request: &Request) -> Result<Reply, ManagerError> {
    call_server(
        &handle.address,
        &handle.authkey,
        Some(handle.server),
        request,
    )
}

/// As [`call`], for a server known by address; `expect` is the server identity the caller
/// needs (`None`: any).
pub(crate) fn call_server(
    address: &Addr,
    authkey: &AuthKey,
    expect: Option<u64>,
    request: &Request,
) -> Result<Reply, ManagerError> {
    let pid = std::process::id();
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        // Connections made by another process (copied by fork) are not ours to use.
        open.retain(|o| o.pid == pid);
        let i = match open
            .iter()
            .position(|o| o.address == *address && expect.is_none_or(|s| s == o.server))
        {
            Some(i) => i,
            None => {
                let addr = Address::from(address);
                let (conn, welcome) = connect(&addr, authkey)?;
                if expect.is_some_and(|s| s != welcome.server) {
                    return Err(ManagerError::ServerReplaced {
                        address: addr.to_string(),
                    });
                }
                // A server that was replaced leaves a stale entry behind; drop it.
                open.retain(|o| o.address != *address);
                open.push(Open {
                    address: address.clone(),
                    server: welcome.server,
                    pid,
                    conn,
                });
                open.len() - 1
            }
        };
        let addr = || Address::from(address);
        let result = (|| {
            open[i]
                .conn
                .send(request)
                .map_err(|e| send_error(e, &addr()))?;
            open[i]
                .conn
                .recv::<Response>()
                .map_err(|e| recv_error(e, &addr()))
        })();
        match result {
            Ok(response) => Ok(response?),
            Err(e) => {
                // The stream may be out of step (or dead): never reuse it.
                open.remove(i);
                Err(e)
            }
        }
    })
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ManagerError> {
    postcard::to_allocvec(value)
        .map_err(|e| ManagerError::Encode(EncodeError::new(e.to_string(), Some(Box::new(e)))))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ManagerError> {
    Ok(crate::wire::decode_payload(bytes)?)
}

/// A reply that is not the one the call expects.
pub(crate) fn unexpected(reply: Reply) -> ManagerError {
    ManagerError::Decode(DecodeError::new(
        format!("unexpected reply from the manager's server: {reply:?}"),
        None,
    ))
}

/// Shorthand for the calls on one object.
impl Handle {
    pub(crate) fn op(&self, op: super::protocol::Op) -> Result<Reply, ManagerError> {
        call(self, &Request::Call { id: self.id, op })
    }

    pub(crate) fn unit(&self, op: super::protocol::Op) -> Result<(), ManagerError> {
        match self.op(op)? {
            Reply::Unit => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub(crate) fn bool(&self, op: super::protocol::Op) -> Result<bool, ManagerError> {
        match self.op(op)? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    pub(crate) fn len(&self) -> Result<usize, ManagerError> {
        match self.op(super::protocol::Op::Len)? {
            Reply::Len(n) => Ok(n as usize),
            r => Err(unexpected(r)),
        }
    }

    pub(crate) fn value<T: DeserializeOwned>(
        &self,
        op: super::protocol::Op,
    ) -> Result<Option<T>, ManagerError> {
        match self.op(op)? {
            Reply::Value(v) => v.as_deref().map(decode).transpose(),
            r => Err(unexpected(r)),
        }
    }

    pub(crate) fn values<T: DeserializeOwned>(
        &self,
        op: super::protocol::Op,
    ) -> Result<Vec<T>, ManagerError> {
        match self.op(op)? {
            Reply::Values(v) => v.iter().map(|b| decode(b)).collect(),
            r => Err(unexpected(r)),
        }
    }

    pub(crate) fn modified<R: DeserializeOwned>(
        &self,
        op: super::protocol::Op,
    ) -> Result<R, ManagerError> {
        match self.op(op)? {
            Reply::Modified(b) => decode(&b),
            r => Err(unexpected(r)),
        }
    }
}
