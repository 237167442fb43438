//! The worker's side: run the initializer, then tasks, one at a time and in order, until told
//! to exit, the task limit is reached, or the pool goes away.
//!
//! Tasks run in the order they arrive and each reply is written before the next task starts,
//! so the pool always knows which task a dead worker was running: the oldest one without a
//! reply.

use std::os::fd::AsFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::transport::{self, Reply, ToWorker, WorkerArgs};
use crate::error::Result;
use crate::process::bootstrap;
use crate::process::target;
use crate::sys;
use crate::sys::PoolEntry;

/// The body of a pool worker process.
pub(crate) fn run(args: WorkerArgs) {
    let WorkerArgs {
        tasks,
        replies,
        initializer,
        max_tasks,
    } = args;
    // Ctrl-C reaches the whole process group: a worker must die of it even when the program
    // handles SIGINT (the handler was inherited through fork).
    let _ = sys::restore_default_sigint();
    let mut out = Vec::new();
    if let Some((entry, payload)) = &initializer {
        let init = resolve(*entry);
        let failure = match bootstrap::catch_task(|| init(payload)) {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(with_source(&e)),
            Err((message, location)) => Some(match location {
                Some(l) => format!("{message} at {l}"),
                None => message,
            }),
        };
        if let Some(message) = failure {
            transport::encode_init_failed(&mut out, &message);
            let _ = sys::write_all(replies.as_fd(), &out);
            return;
        }
    }
    transport::encode_ready(&mut out);
    if sys::write_all(replies.as_fd(), &out).is_err() {
        return;
    }
    let mut done = 0usize;
    let mut inbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0;
    loop {
        // Run every complete frame already read.
        loop {
            let (body, used) = match transport::split_frame(&inbuf[start..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            match transport::decode_to_worker(body) {
                Ok(ToWorker::Task { id, entry, payload }) => {
                    let reply = run_one(resolve(entry), payload);
                    out.clear();
                    transport::encode_reply(&mut out, id, &reply);
                    if sys::write_all(replies.as_fd(), &out).is_err() {
                        return; // the pool is gone
                    }
                }
                Ok(ToWorker::Exit) | Err(_) => return,
            }
            start += used;
            done += 1;
            if max_tasks.is_some_and(|max| done >= max) {
                return;
            }
        }
        inbuf.drain(..start);
        start = 0;
        // Block for more.
        let len = inbuf.len();
        let want = match transport::split_frame(&inbuf).ok().flatten() {
            None => match crate::wire::frame_len(&inbuf) {
                Ok(Some(n)) => (crate::wire::HEADER + n).saturating_sub(len).max(64 * 1024),
                _ => 64 * 1024,
            },
            Some(_) => 0,
        };
        inbuf.resize(len + want, 0);
        match read_blocking(tasks.as_fd(), &mut inbuf[len..]) {
            Ok(0) | Err(_) => return, // the pool closed our pipe or went away
            Ok(n) => inbuf.truncate(len + n),
        }
    }
}

/// The entry function the pool named by `offset`.
///
/// Only ever called with offsets from the pool that started this worker: in the start spec,
/// or in task frames over the pipe that only the pool holds.
fn resolve(offset: i64) -> PoolEntry {
    // SAFETY: every offset reaching here was made by `pool_entry_offset` for a `PoolEntry` in the pool's
    // process, which runs this same executable (a fork of it, or the same binary started
    // afresh), and travelled only through this worker's start spec or its private task pipe.
    #[allow(unsafe_code)]
    unsafe {
        sys::pool_entry_at(offset)
    }
}

fn read_blocking(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match sys::read(fd, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sys::wait_readable(&[fd], None)?;
            }
            other => return other,
        }
    }
}

fn run_one(f: PoolEntry, payload: &[u8]) -> Reply {
    match bootstrap::catch_task(|| f(payload)) {
        Ok(Ok(bytes)) => match transport::check_size(bytes.len()) {
            Ok(()) => Reply::Value(bytes),
            Err(e) => Reply::Failed(e.to_string()),
        },
        Ok(Err(e)) => Reply::Failed(with_source(&e)),
        Err((message, location)) => Reply::Panic { message, location },
    }
}

/// An error's message followed by its source's, for the pool's side.
fn with_source(e: &crate::error::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// The entry for one task: decodes the argument, applies the task, encodes the value.
pub(crate) fn apply_entry<F, A, T>(payload: &[u8]) -> Result<Vec<u8>>
where
    F: Fn(A) -> T,
    A: DeserializeOwned,
    T: Serialize,
{
    let args: A = target::decode(payload)?;
    target::encode(&target::conjure::<F>()(args))
}

/// The entry for a chunk of `map`: decodes the inputs, maps them, encodes the outputs.
pub(crate) fn chunk_entry<F, A, T>(payload: &[u8]) -> Result<Vec<u8>>
where
    F: Fn(A) -> T,
    A: DeserializeOwned,
    T: Serialize,
{
    let inputs: Vec<A> = target::decode(payload)?;
    let f = target::conjure::<F>();
    let outputs: Vec<T> = inputs.into_iter().map(f).collect();
    target::encode(&outputs)
}
