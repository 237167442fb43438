//! The worker's side: run the initializer, then tasks, one at a time and in order, until told
//! to exit, the task limit is reached, or the pool goes away.
//!
//! Tasks run in the order they arrive and each reply is written before the next task starts,
//! so the pool always knows which task a dead worker was running: the oldest one without a
//! reply.
//!
//! From its second task on, a reader thread takes frames off the task pipe into a local queue,
//! so that the pool can take back queued tasks while one runs (a revoke): the reader removes
//! those not started and says which, at once. The main thread runs tasks from the queue. Until
//! then the main thread reads the pipe itself: the pool queues nothing behind a worker's first
//! task (so sends it no revoke while it runs), and a worker that runs one task and exits, as in
//! a short-lived pool, never pays for a thread.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::transport::{self, InitArgs, Reply, ToWorker, WorkerArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::process::bootstrap;
use crate::process::target;
use crate::{sys, wire};

/// A pool task's entry point: decodes its arguments, runs it, encodes its value. Named across
/// processes by its distance from an anchor function ([`sys::entry_offset`]).
pub(crate) type PoolEntry = fn(&[u8]) -> Result<Vec<u8>>;

/// A task taken off the pipe, not yet run.
struct Queued {
    id: u64,
    entry: i64,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Inbox {
    tasks: VecDeque<Queued>,
    /// No more tasks will come (exit requested, pipe closed, or garbage received).
    closed: bool,
}

struct Shared {
    inbox: Mutex<Inbox>,
    more: Condvar,
    /// The reply pipe, and whether its buffer was enlarged; whole frames are written under
    /// this lock.
    replies: Mutex<(OwnedFd, bool)>,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one whole frame; `false` if the pool is gone.
    fn reply(&self, frame: &[u8]) -> bool {
        let mut pipe = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        let (fd, grown) = &mut *pipe;
        if !*grown && frame.len() > transport::DEFAULT_PIPE_SIZE {
            sys::set_pipe_size(fd.as_fd(), transport::PIPE_SIZE);
            *grown = true;
        }
        sys::write_all(fd.as_fd(), frame).is_ok()
    }
}

/// The body of a pool worker process.
pub(crate) fn run(args: WorkerArgs) {
    let WorkerArgs {
        tasks,
        replies,
        initializer,
        max_tasks,
    } = args;
    // Ctrl-C reaches the whole process group, and the exit-time cleanup terminates daemonic
    // children: a worker must die of SIGINT and SIGTERM even when the program handles them
    // (its handlers were inherited through fork).
    let _ = sys::restore_default_stop_signals();
    let mut out = Vec::new();
    if let Some(InitArgs {
        entry,
        payload,
        fds,
    }) = initializer
    {
        let init = sys::entry_at::<target::Entry>(entry).map(|decode| {
            bootstrap::catch_task(|| {
                // Handles among the arguments claim their descriptors while they are decoded
                // (the others close); the initializer then runs outside that context.
                let task = wire::with_received_fds(fds, || decode(&payload))?;
                task.run_here()
            })
        });
        let failure = match init {
            None => Some("the initializer's code is not in this program".to_owned()),
            Some(caught) => match caught {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(with_source(&e)),
                Err((message, location)) => Some(match location {
                    Some(l) => format!("{message} at {l}"),
                    None => message,
                }),
            },
        };
        if let Some(message) = failure {
            // Short enough to never block on the empty pipe: the pool reads an idle worker's
            // pipe only once it has died (`supervisor/event_loop.rs`).
            transport::encode_init_failed(&mut out, truncate(&message, INIT_FAILED_MAX));
            let _ = sys::write_all(replies.as_fd(), &out);
            return;
        }
    }
    transport::encode_ready(&mut out);
    if sys::write_all(replies.as_fd(), &out).is_err() {
        return;
    }
    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox::default()),
        more: Condvar::new(),
        replies: Mutex::new((replies, false)),
    });
    // The task pipe and the bytes read from it, while the main thread reads it itself.
    let mut own_feed = Some((tasks, Vec::new()));
    let mut scratch = Vec::new();
    let mut done = 0usize;
    loop {
        let task = match &mut own_feed {
            Some((fd, inbuf)) => next_own(fd.as_fd(), inbuf, &shared, &mut scratch),
            None => next_from_reader(&shared),
        };
        let Some(task) = task else { return };
        if done > 0
            && let Some((fd, inbuf)) = own_feed.take()
        {
            // From the second task on, tasks may be queued behind the one running, and a revoke
            // must be answered while it runs.
            let handoff = Arc::new(Mutex::new(Some((fd, inbuf))));
            let theirs = Arc::clone(&handoff);
            let reader_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name("multiproc-pool-reader".into())
                .spawn(move || {
                    let feed = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some((fd, inbuf)) = feed {
                        read_tasks(fd, inbuf, &reader_shared);
                    }
                });
            if spawned.is_err() {
                // No thread (out of resources): this thread goes on reading the pipe, and
                // answers revokes between tasks rather than during them.
                own_feed = handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
        let reply = match resolve(task.entry) {
            Some(f) => run_one(f, &task.payload),
            None => Reply::Failed {
                decode: true,
                message: "the task's code is not in this program".to_owned(),
            },
        };
        out.clear();
        transport::encode_reply(&mut out, task.id, &reply);
        if !shared.reply(&out) {
            return; // the pool is gone
        }
        done += 1;
        if max_tasks.is_some_and(|max| done >= max) {
            return;
        }
    }
    // Leaving `run` ends the process (its reader thread with it).
}

/// The next task from the local queue, reading the pipe on this thread while it is empty;
/// `None` when no more will come.
fn next_own(
    tasks: BorrowedFd<'_>,
    inbuf: &mut Vec<u8>,
    shared: &Shared,
    scratch: &mut Vec<u8>,
) -> Option<Queued> {
    loop {
        {
            let mut inbox = shared.inbox();
            if let Some(task) = inbox.tasks.pop_front() {
                return Some(task);
            }
            if inbox.closed {
                return None;
            }
        }
        if !fill(tasks, inbuf) {
            shared.inbox().closed = true;
            continue;
        }
        // Nobody waits on the condition variable while this thread reads the pipe itself.
        take_frames(inbuf, shared, scratch, false);
    }
}

/// The next task the reader thread queued; `None` when no more will come.
fn next_from_reader(shared: &Shared) -> Option<Queued> {
    let mut inbox = shared.inbox();
    loop {
        if let Some(task) = inbox.tasks.pop_front() {
            return Some(task);
        }
        if inbox.closed {
            return None;
        }
        inbox = shared.more.wait(inbox).unwrap_or_else(|e| e.into_inner());
    }
}

/// The reader thread: moves task frames into the inbox, answers revokes.
fn read_tasks(tasks: OwnedFd, mut inbuf: Vec<u8>, shared: &Shared) {
    let mut out = Vec::new();
    loop {
        if take_frames(&mut inbuf, shared, &mut out, true) {
            return;
        }
        if !fill(tasks.as_fd(), &mut inbuf) {
            // The pool closed our pipe or went away.
            shared.inbox().closed = true;
            shared.more.notify_one();
            return;
        }
    }
}

/// Moves the complete frames at the start of `inbuf` into the inbox and answers revokes;
/// `true` when no more tasks will come (exit requested, or garbage received). `wake`: another
/// thread may wait for tasks (a system call per notification otherwise saved).
fn take_frames(inbuf: &mut Vec<u8>, shared: &Shared, out: &mut Vec<u8>, wake: bool) -> bool {
    let mut start = 0;
    let mut arrived = VecDeque::new();
    let mut closed = false;
    loop {
        let (body, used) = match transport::split_frame(&inbuf[start..]) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                closed = true;
                break;
            }
        };
        match transport::decode_to_worker(body) {
            Ok(ToWorker::Task { id, entry, payload }) => arrived.push_back(Queued {
                id,
                entry,
                payload: payload.to_vec(),
            }),
            Ok(ToWorker::Revoke(ids)) => {
                let mut inbox = shared.inbox();
                inbox.tasks.extend(arrived.drain(..));
                let mut given_back = Vec::new();
                inbox.tasks.retain(|t| {
                    let revoke = ids.contains(&t.id);
                    if revoke {
                        given_back.push(t.id);
                    }
                    !revoke
                });
                let waiting = !inbox.tasks.is_empty();
                drop(inbox);
                if waiting && wake {
                    shared.more.notify_one();
                }
                out.clear();
                transport::encode_revoked(out, &given_back);
                if !shared.reply(out) {
                    closed = true;
                }
            }
            Ok(ToWorker::Exit) | Err(_) => closed = true,
        }
        start += used;
        if closed {
            break;
        }
    }
    if !arrived.is_empty() || closed {
        let mut inbox = shared.inbox();
        inbox.tasks.extend(arrived);
        inbox.closed |= closed;
        drop(inbox);
        if wake {
            shared.more.notify_one();
        }
    }
    inbuf.drain(..start);
    closed
}

/// Reads more of the task pipe into `inbuf`, blocking until some comes; `false` at its end
/// (the pool closed it or went away) or on error.
fn fill(tasks: BorrowedFd<'_>, inbuf: &mut Vec<u8>) -> bool {
    let len = inbuf.len();
    let want = match crate::wire::frame_len(inbuf) {
        Ok(Some(n)) => (crate::wire::HEADER + n)
            .saturating_sub(len)
            .max(transport::read_size(inbuf)),
        _ => transport::read_size(inbuf),
    };
    // Into spare capacity, not a zeroed buffer: right after the fork, every page zeroed here
    // would be a page fault (16 for a 64 KiB read that brings a few bytes).
    loop {
        match sys::read_append(tasks, inbuf, want) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sys::wait_readable(&[tasks], None).is_err() {
                    return false;
                }
            }
            Ok(n) => return n > 0,
            Err(_) => return false,
        }
    }
}

/// The longest initializer failure message sent, in bytes.
const INIT_FAILED_MAX: usize = 4000;

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The entry function the pool named by `offset`.
///
/// Only ever called with offsets from the pool that started this worker: in the start spec,
/// or in task frames over the pipe that only the pool holds.
fn resolve(offset: i64) -> Option<PoolEntry> {
    sys::entry_at::<PoolEntry>(offset)
}

fn run_one(f: PoolEntry, payload: &[u8]) -> Reply {
    match bootstrap::catch_task(|| f(payload)) {
        Ok(Ok(bytes)) => match transport::check_size(bytes.len()) {
            Ok(()) => Reply::Value(bytes),
            Err(e) => Reply::Failed {
                decode: false,
                message: e.to_string(),
            },
        },
        Ok(Err(e)) => Reply::Failed {
            decode: e.kind() == crate::error::ErrorKind::Decode,
            message: with_source(&e),
        },
        Err((message, location)) => Reply::Panic { message, location },
    }
}

/// An error's message followed by its source's, for the pool's side.
pub(crate) fn with_source(e: &crate::error::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Encodes a task's value (`encode`), refusing one that holds a handle owning a descriptor:
/// the pool's pipes carry bytes only, so the handle would arrive without its descriptor.
/// Shared buffers go through this worker's descriptor sharer, as in `task::encode_args`.
fn encode_value(encode: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let (bytes, fds) = wire::collect_fds(|| wire::share::through_sharer(encode));
    if !fds.is_empty() {
        return Err(Error::with_message(
            ErrorKind::Encode,
            "a pool task's value holds a handle that owns a file descriptor (a Lock, Value, \
             Queue, Connection, SharedMemory...), which cannot travel back from a worker; \
             create such handles in the parent and give them to the workers through the \
             pool's initializer",
        ));
    }
    bytes
}

/// The entry for one task: decodes the argument, applies the task, encodes the value.
pub(crate) fn apply_entry<F, A, T>(payload: &[u8]) -> Result<Vec<u8>>
where
    F: Fn(A) -> T,
    A: DeserializeOwned,
    T: Serialize,
{
    let args: A = target::decode(payload)?;
    let value = target::conjure::<F>()(args);
    encode_value(|| target::encode(&value))
}

/// The entry for a chunk of `map`: decodes the inputs, maps them, encodes the outputs.
pub(crate) fn chunk_entry<F, A, T>(payload: &[u8]) -> Result<Vec<u8>>
where
    F: Fn(A) -> T,
    A: DeserializeOwned + 'static,
    T: Serialize + 'static,
{
    let inputs: Vec<A> = super::codec::decode_chunk(payload)?;
    let f = target::conjure::<F>();
    let outputs: Vec<T> = inputs.into_iter().map(f).collect();
    encode_value(|| super::codec::encode_chunk(&outputs))
}
