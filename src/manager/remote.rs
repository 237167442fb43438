//! Users' own types in the server (Python's `BaseManager.register`): the runtime half of
//! `#[multiproc::remote]`, which generates, for a trait, a proxy type and a dispatch function
//! over these items. Not public API: only the macro's expansion uses them.
//!
//! An object of a user's type is made in the server by a constructor that captures nothing,
//! named by its code offset as `modify`'s functions are ([`CtorEntry`]), and stored as a
//! `Box<dyn Trait + Send + Sync>` inside a `Box<dyn Any + Send + Sync>`; each method call names
//! the trait's dispatch function ([`DispatchEntry`]), a method index, whether the method takes
//! `&self`, and the encoded arguments. Both run only for a client of the server's own binary.
//! Each object has a read-write lock of its own: `&self` methods run under its read side, so
//! they may run at the same time, and `&mut self` ones under its write side, alone. A client
//! that claims `&self` for a `&mut self` method gets [`Target::Shared`], through which the
//! dispatch cannot call it (it fails the call): the claim only chooses the lock.

use std::any::Any;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Manager;
use super::client::{Handle, decode, encode, unexpected};
use super::error::{ManagerError, RemoteError};
use super::protocol::{Kind, Op, Reply};

pub use serde;

/// Makes an object in the server from its encoded argument.
pub type CtorEntry = fn(&[u8]) -> Result<Box<dyn Any + Send + Sync>, RemoteError>;

/// Runs method number `method` of an object with encoded arguments; the encoded result.
pub type DispatchEntry = fn(Target<'_>, u32, &[u8]) -> Result<Vec<u8>, RemoteError>;

/// The object a dispatch runs a method on: shared (under the object's read lock, where only
/// `&self` methods can run) or exclusive (under its write lock, where any can).
#[derive(Debug)]
pub enum Target<'a> {
    /// Under the object's read lock.
    Shared(&'a (dyn Any + Send + Sync)),
    /// Under the object's write lock.
    Exclusive(&'a mut (dyn Any + Send + Sync)),
}

/// The handle a generated proxy wraps.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawProxy(Handle);

impl fmt::Debug for RawProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Refuses at compile time a constructor that captures anything.
pub fn require_stateless<F>() {
    crate::process::target::require_stateless::<F>();
}

/// The one value of the zero-sized constructor type `F`, in the server.
pub fn conjure<F>() -> F {
    crate::process::target::conjure::<F>()
}

/// Makes an object with constructor entry `ctor` and argument `arg` in `manager`'s server.
///
/// # Errors
/// As [`Manager::dict`]; `RemoteError::ForeignBuild` from another program.
pub fn create<A: Serialize>(
    manager: &Manager,
    ctor: CtorEntry,
    arg: &A,
) -> Result<RawProxy, ManagerError> {
    let ctor =
        crate::sys::entry_offset(ctor).ok_or(ManagerError::Remote(RemoteError::ForeignBuild))?;
    manager
        .create(Kind::Custom {
            ctor,
            arg: encode(arg)?,
        })
        .map(RawProxy)
}

impl RawProxy {
    pub(crate) fn from_handle(handle: Handle) -> Self {
        RawProxy(handle)
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.0
    }

    pub(crate) fn into_handle(self) -> Handle {
        self.0
    }

    /// Calls method number `method` through `dispatch` with arguments `args`; `shared` when
    /// the method takes `&self`.
    ///
    /// # Errors
    /// The [`ManagerError`]s of any call.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        dispatch: DispatchEntry,
        method: u32,
        shared: bool,
        args: &A,
    ) -> Result<R, ManagerError> {
        let dispatch = crate::sys::entry_offset(dispatch)
            .ok_or(ManagerError::Remote(RemoteError::ForeignBuild))?;
        match self.0.op(Op::Method {
            dispatch,
            method,
            args: encode(args)?,
            shared,
        })? {
            Reply::Modified(bytes) => decode(&bytes),
            r => Err(unexpected(r)),
        }
    }
}

/// Decodes a method's arguments in the server.
///
/// # Errors
/// `RemoteError::ModifyDecode` for bytes that are not an `A`.
pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, RemoteError> {
    crate::wire::decode_payload(bytes).map_err(|e| RemoteError::ModifyDecode(e.to_string()))
}

/// Encodes a method's result in the server.
///
/// # Errors
/// `RemoteError::ModifyDecode` when it cannot be encoded.
pub fn encode_result<R: Serialize>(value: &R) -> Result<Vec<u8>, RemoteError> {
    postcard::to_allocvec(value).map_err(|e| RemoteError::ModifyDecode(e.to_string()))
}

/// The error for an object that is not of the dispatching trait, or a method index beyond it.
pub fn bad_dispatch(what: &str) -> RemoteError {
    RemoteError::BadRequest(format!("remote object: {what}"))
}

/// Runs a constructor in the server.
pub(crate) fn construct(
    ctor: i64,
    arg: &[u8],
    same_build: bool,
) -> Result<Box<dyn Any + Send + Sync>, RemoteError> {
    if !same_build {
        return Err(RemoteError::ForeignBuild);
    }
    check_entry(crate::sys::EntryKind::Ctor, ctor, "constructor")?;
    let entry = crate::sys::entry_at::<CtorEntry>(ctor)
        .ok_or_else(|| RemoteError::BadRequest("constructor offset outside the program".into()))?;
    std::panic::catch_unwind(|| entry(arg)).unwrap_or_else(|p| Err(panicked(p)))
}

/// Runs a method in the server.
pub(crate) fn dispatch(
    object: Target<'_>,
    entry: i64,
    method: u32,
    args: &[u8],
    same_build: bool,
) -> Result<Vec<u8>, RemoteError> {
    if !same_build {
        return Err(RemoteError::ForeignBuild);
    }
    check_entry(crate::sys::EntryKind::Dispatch, entry, "dispatch function")?;
    let entry = crate::sys::entry_at::<DispatchEntry>(entry)
        .ok_or_else(|| RemoteError::BadRequest("dispatch offset outside the program".into()))?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(object, method, args)))
        .unwrap_or_else(|p| Err(panicked(p)))
}

pub(crate) fn panicked(panic: Box<dyn Any + Send>) -> RemoteError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned());
    RemoteError::Panicked(message)
}

/// Refuses an offset that is not the start of a function of `kind` in this program (see
/// `sys::linux::entries`): a client holding the authkey cannot make the server call anything
/// else, whatever it sends.
pub(crate) fn check_entry(
    kind: crate::sys::EntryKind,
    offset: i64,
    what: &str,
) -> Result<(), RemoteError> {
    match crate::sys::is_entry(kind, offset) {
        Ok(true) => Ok(()),
        Ok(false) => Err(RemoteError::BadRequest(format!(
            "no {what} of this program at offset {offset}: refused"
        ))),
        Err(why) => Err(RemoteError::BadRequest(format!(
            "cannot check the {what} offset, so it is refused: {why}"
        ))),
    }
}
