//! What a pool task is, and how one is handed to the supervisor: the entry offset that names
//! the task in a worker, the encoding of its arguments, and the submission that fails the
//! task rather than the caller when it cannot be queued.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::TaskError;
use super::supervisor::{Core, Job, Sink};
use super::{transport, worker};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The entry offset of `f` as a pool task taking `A` and returning `T`.
pub(super) fn apply_entry<F, A, T>(_f: &F) -> i64
where
    F: Fn(A) -> T + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    const {
        assert!(
            crate::process::target::is_stateless::<F>(),
            "a pool task must be a fn item or a closure that captures nothing (nothing with a destructor either); pass values as arguments"
        )
    };
    // `None` only when this crate lives outside the main executable; the worker then refuses
    // the task with a clear error, as it refuses any offset outside the program's code.
    sys::entry_offset::<worker::PoolEntry>(worker::apply_entry::<F, A, T>).unwrap_or(i64::MIN)
}

/// The entry offset of `f` mapped over a chunk of `A`s.
pub(super) fn chunk_entry<F, A, T>(_f: &F) -> i64
where
    F: Fn(A) -> T + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    const {
        assert!(
            crate::process::target::is_stateless::<F>(),
            "a pool task must be a fn item or a closure that captures nothing (nothing with a destructor either); pass values as arguments"
        )
    };
    // `None` only when this crate lives outside the main executable; the worker then refuses
    // the task with a clear error, as it refuses any offset outside the program's code.
    sys::entry_offset::<worker::PoolEntry>(worker::chunk_entry::<F, A, T>).unwrap_or(i64::MIN)
}

/// Encodes a task's arguments (`encode`), refusing handles that own a file descriptor: a
/// task travels to a running worker over a pipe, which carries bytes only. Handles reach
/// workers as start arguments, through the initializer.
pub(super) fn encode_args(encode: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let (bytes, fds) = crate::wire::collect_fds(encode);
    if !fds.is_empty() {
        return Err(Error::with_message(
            ErrorKind::Encode,
            "a pool task's arguments hold a handle that owns a file descriptor (a Lock, \
             Value, Queue, Connection, SharedMemory...), which cannot be sent to a running \
             worker; give it to every worker through the pool's initializer \
             (PoolBuilder::initializer, ExecutorBuilder::initializer) and keep it there, in a \
             static for instance, as Python's pools share locks and values",
        ));
    }
    bytes
}

pub(super) fn submit(core: &Core, entry: i64, payload: Vec<u8>, sink: Box<dyn Sink>) {
    submit_limited(core, entry, payload, sink, None);
}

pub(super) fn submit_limited(
    core: &Core,
    entry: i64,
    payload: Vec<u8>,
    sink: Box<dyn Sink>,
    limit: Option<Duration>,
) {
    if let Err(e) = transport::check_size(payload.len()) {
        sink.finish(Err(e.into()));
        return;
    }
    if let Err(job) = core.submit(Job {
        entry,
        payload,
        sink,
        limit,
    }) {
        job.sink.finish(Err(TaskError::PoolClosed));
    }
}
