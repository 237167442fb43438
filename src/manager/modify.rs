//! `modify`: a function that runs in the server, on the stored value, under the server's lock,
//! so a read-modify-write by many processes loses no update.
//!
//! A function cannot travel as data, so it travels as the Pool sends its tasks: a
//! non-capturing closure or function item has a zero-sized type, the server makes its one
//! value afresh, and the monomorphised [`entry`] that does so is named by its distance from a
//! fixed function of the program (`sys::entry_offset`). That distance means something only in
//! the same binary, so the server runs an offset only from a client whose greeting named the
//! server's own executable (`RemoteError::ForeignBuild` otherwise), and only if the symbol
//! table says an instance of [`entry`] starts there (`sys::linux::entries`): a client that
//! lies about its build still cannot make the server call anything else.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ManagerError, RemoteError};
use super::protocol::Func;
use crate::process::target;

/// What the server runs: `(stored value, argument) -> (new value, result)`, all encoded.
pub(crate) type ModifyEntry = fn(&[u8], &[u8]) -> Result<(Vec<u8>, Vec<u8>), RemoteError>;

/// The server-side body of `modify` for a function of type `F`.
fn entry<F, V, A, R>(stored: &[u8], arg: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RemoteError>
where
    F: Fn(&mut V, A) -> R,
    V: Serialize + DeserializeOwned,
    A: DeserializeOwned,
    R: Serialize,
{
    let bad = |e: crate::error::DecodeError| RemoteError::ModifyDecode(e.to_string());
    let mut value: V = crate::wire::decode_payload(stored).map_err(bad)?;
    let arg: A = crate::wire::decode_payload(arg).map_err(bad)?;
    let result = target::conjure::<F>()(&mut value, arg);
    let enc = |e: postcard::Error| RemoteError::ModifyDecode(format!("encoding failed: {e}"));
    Ok((
        postcard::to_allocvec(&value).map_err(enc)?,
        postcard::to_allocvec(&result).map_err(enc)?,
    ))
}

/// Describes `f` with argument `arg` for the server, refusing at compile time a function that
/// captures anything.
pub(crate) fn func<F, V, A, R>(_f: &F, arg: &A) -> Result<Func, ManagerError>
where
    F: Fn(&mut V, A) -> R + Send + Sync + 'static,
    V: Serialize + DeserializeOwned,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    target::require_stateless::<F>();
    let entry = crate::sys::entry_offset::<ModifyEntry>(entry::<F, V, A, R>)
        .ok_or_else(|| ManagerError::Remote(RemoteError::ForeignBuild))?;
    Ok(Func {
        entry,
        arg: super::client::encode(arg)?,
    })
}

/// Runs a [`Func`] on `stored` in the server; `same_build` says whether the client runs this
/// very binary. A panic in the function is an error for the caller; the value is unchanged.
pub(crate) fn run(
    f: &Func,
    stored: &[u8],
    same_build: bool,
) -> Result<(Vec<u8>, Vec<u8>), RemoteError> {
    if !same_build {
        return Err(RemoteError::ForeignBuild);
    }
    super::remote::check_entry(crate::sys::EntryKind::Modify, f.entry, "modify function")?;
    let entry = crate::sys::entry_at::<ModifyEntry>(f.entry).ok_or_else(|| {
        RemoteError::BadRequest("modify: the function offset is outside the program".into())
    })?;
    std::panic::catch_unwind(|| entry(stored, &f.arg)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        Err(RemoteError::Panicked(message))
    })
}
