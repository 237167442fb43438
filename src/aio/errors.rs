//! Every place `aio` looks inside the crate's per-operation error types, so that a change to
//! them (variants split per operation, renamed) is adapted here alone.

use std::io;

use crate::connection::{ConnectError, RecvError};
use crate::queue::{GetError, PutError};

/// `Ok(())` when a `get_nowait` found the queue empty (wait and try again), else its result.
pub(super) fn get_would_block<T>(r: Result<T, GetError>) -> Result<(), Result<T, GetError>> {
    match r {
        Err(GetError::Empty) => Ok(()),
        r => Err(r),
    }
}

pub(super) fn get_io(e: io::Error) -> GetError {
    GetError::Io(e)
}

pub(super) fn get_disconnected() -> GetError {
    GetError::Disconnected
}

/// `Ok(item)` when a `put_nowait` found the queue full (wait and try again with the item),
/// else its result.
pub(super) fn put_would_block<T>(r: Result<(), PutError<T>>) -> Result<T, Result<(), PutError<T>>> {
    match r {
        Err(PutError::Full(item)) => Ok(item),
        r => Err(r),
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
