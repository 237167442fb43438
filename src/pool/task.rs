//! What a pool task is, and how one is handed to the supervisor: the entry offset that names
//! the task in a worker, the encoding of its arguments, and the submission that fails the
//! task rather than the caller when it cannot be queued.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::TaskError;
use super::supervisor::{Core, Job, Sink};
#[cfg(doc)]
use super::{Pool, PoolBuilder, ProcessPoolExecutor};
use super::{transport, worker};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A function a pool can run as a task: `Fn(A) -> T`, sendable to the pool's thread, and
/// `'static`. Implemented for every such function; it only names the bound that [`Pool`] and
/// [`ProcessPoolExecutor`] methods share.
///
/// The task must also capture nothing (a function item, or a closure without captures), since
/// a worker, started by any start method, finds it by its address in the program and not by
/// its data; that part is checked at compile time, where the task is submitted. Its argument
/// `A` and value `T` are [`Payload`]s.
///
/// Initializers ([`PoolBuilder::initializer`]) are `TaskFn<A, ()>`.
///
/// # Examples
/// ```
/// use multiproc::{pool::Payload, Pool, pool::TaskFn};
///
/// // A helper generic over tasks states the pool's bounds once.
/// fn run_twice<F, A, T>(pool: &Pool, f: F, a: A, b: A) -> Vec<T>
/// where
///     F: TaskFn<A, T> + Copy,
///     A: Payload,
///     T: Payload,
/// {
///     vec![pool.apply(f, a).unwrap(), pool.apply(f, b).unwrap()]
/// }
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(1)?;
/// assert_eq!(run_twice(&pool, square, 3, 4), vec![9, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a pool task taking `{A}` and returning `{T}`",
    note = "a pool task is a function item or a closure that captures nothing, \
            `Fn({A}) -> {T} + Send + Sync + 'static`"
)]
pub trait TaskFn<A, T>: Fn(A) -> T + Send + Sync + 'static {}

impl<F, A, T> TaskFn<A, T> for F where F: Fn(A) -> T + Send + Sync + 'static {}

/// A value that can travel to or from a pool's worker: a task's argument or its value, an
/// initializer's arguments. It is serialized with serde (so [`Serialize`] and
/// [`Deserialize`](serde::Deserialize) for any lifetime), and owned and sendable, since it
/// crosses to the pool's thread. Implemented for every such type; it only names the bound
/// that [`Pool`] and [`ProcessPoolExecutor`] methods share.
///
/// A type that lacks one of these bounds is refused at compile time, where the task is
/// submitted, and the compiler names the missing one (here `Serialize`, then `Deserialize`):
///
/// ```compile_fail,E0277
/// struct Opaque(u64); // no `Serialize`, no `Deserialize`
///
/// fn unwrap(x: Opaque) -> u64 { x.0 }
///
/// let pool = multiproc::Pool::new(1)?;
/// pool.apply(unwrap, Opaque(7)); // error: `Opaque: Serialize` is not satisfied
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Handles that own a file descriptor (a [`Lock`](crate::Lock), a [`Queue`](crate::Queue)...)
/// are serializable but cannot be a task's argument or value: the task fails with
/// [`ErrorKind::Encode`] saying so. They reach workers through the initializer.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel to or from a pool's worker",
    label = "a pool task's argument or value",
    note = "a pool task's argument and value must be serde's `Serialize` and \
            `DeserializeOwned`, and `Send + 'static`"
)]
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<P> Payload for P where P: Serialize + DeserializeOwned + Send + 'static {}

/// The entry offset of `f` as a pool task taking `A` and returning `T`.
pub(super) fn apply_entry<F, A, T>(_f: &F) -> i64
where
    F: TaskFn<A, T>,
    A: Payload,
    T: Payload,
{
    offset_of::<F>(worker::apply_entry::<F, A, T>)
}

/// The entry offset of `f` mapped over a chunk of `A`s.
pub(super) fn chunk_entry<F, A, T>(_f: &F) -> i64
where
    F: TaskFn<A, T>,
    A: Payload,
    T: Payload,
{
    offset_of::<F>(worker::chunk_entry::<F, A, T>)
}

/// The offset of `entry`, the pool's entry point for task type `F`, refusing at compile time
/// an `F` that a worker could not make afresh.
fn offset_of<F>(entry: worker::PoolEntry) -> i64 {
    crate::process::target::require_stateless::<F>();
    // `None` only when this crate lives outside the main executable; the worker then refuses
    // the task with a clear error, as it refuses any offset outside the program's code.
    sys::entry_offset(entry).unwrap_or(i64::MIN)
}

/// Encodes a task's arguments (`encode`), refusing handles that own a file descriptor: a
/// task travels to a running worker over a pipe, which carries bytes only. Handles reach
/// workers as start arguments, through the initializer. Shared buffers
/// ([`SharedSlice`](crate::shared::SharedSlice)) are the exception: their descriptor goes
/// through this process's descriptor sharer (`wire::share`), which the worker asks for it.
pub(super) fn encode_args(encode: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let (bytes, fds) = crate::wire::collect_fds(|| crate::wire::share::through_sharer(encode));
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
        failed_runs: 0,
        deaths: 0,
    }) {
        job.sink.finish(Err(TaskError::PoolClosed));
    }
}
