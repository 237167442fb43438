//! Every place `aio` looks inside the crate's per-operation error types, so that a change to
//! them (variants split per operation, renamed) is adapted here alone.

use std::io;

use crate::connection::{ConnectError, RecvError};
use crate::queue::{GetError, PutError, TryGetError, TryPutError};

/// `Ok(())` when a `get_nowait` found the queue empty (wait and try again), else its result
/// as the blocking `get` would give it.
pub(super) fn get_would_block<T>(r: Result<T, TryGetError>) -> Result<(), Result<T, GetError>> {
    match r {
        Err(TryGetError::Empty) => Ok(()),
        Ok(item) => Err(Ok(item)),
        Err(TryGetError::ShutDown) => Err(Err(GetError::ShutDown)),
        Err(TryGetError::Decode(e)) => Err(Err(GetError::Decode(e))),
        Err(TryGetError::Io(e)) => Err(Err(GetError::Io(e))),
    }
}

pub(super) fn get_io(e: io::Error) -> GetError {
    GetError::Io(e)
}

pub(super) fn get_disconnected() -> GetError {
    GetError::Disconnected
}

/// `Ok(item)` when a `put_nowait` found the queue full (wait and try again with the item),
/// else its result as the blocking `put` would give it.
pub(super) fn put_would_block<T>(
    r: Result<(), TryPutError<T>>,
) -> Result<T, Result<(), PutError<T>>> {
    match r {
        Err(TryPutError::Full(item)) => Ok(item),
        Ok(()) => Err(Ok(())),
        Err(TryPutError::ShutDown(item)) => Err(Err(PutError::ShutDown(item))),
        Err(TryPutError::Closed(item)) => Err(Err(PutError::Closed(item))),
        Err(TryPutError::Encode(item, e)) => Err(Err(PutError::Encode(item, e))),
        Err(TryPutError::Io(item, e)) => Err(Err(PutError::Io(item, e))),
    }
}

pub(super) fn put_io<T>(item: T, e: io::Error) -> PutError<T> {
    PutError::Io(item, e)
}

pub(super) fn put_disconnected<T>(item: T) -> PutError<T> {
    PutError::Disconnected(item)
}

/// `Ok(())` when a zero-timeout receive found no whole message yet (part of one may have
/// been read and kept), else its result.
pub(super) fn recv_would_block<T>(r: Result<T, RecvError>) -> Result<(), Result<T, RecvError>> {
    match r {
        Err(RecvError::Timeout) => Ok(()),
        r => Err(r),
    }
}

pub(super) fn recv_io(e: io::Error) -> RecvError {
    RecvError::Io(e)
}

pub(super) fn connect_io(e: io::Error) -> ConnectError {
    ConnectError::Io(e)
}
