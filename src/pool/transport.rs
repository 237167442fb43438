//! How the pool talks to its workers: the [`Link`] to one worker, the [`Launcher`] that starts
//! them, and the frames they exchange.
//!
//! The supervisor only needs four things of a worker: send it a task frame, read its reply
//! frames, know when it died (and how), and kill it. [`PipeLauncher`] does that with a pair of
//! pipes and the worker's pidfd; a cluster backend (MPI) implements the same two traits.
//!
//! Frames use `wire`'s header (a little-endian `u32` length). Bodies are laid out by hand
//! rather than through serde, because a task's payload and a reply's value are already
//! serialized bytes and copying them once more per task would cost more than the rest of
//! the frame:
//!
//! | frame | body |
//! |---|---|
//! | task | `0u8`, id `u64`, entry `i64`, payload |
//! | exit | `1u8` |
//! | revoke | `2u8`, ids `u64`... (give back these tasks if not started) |
//! | reply | `0u8`, id `u64`, status `u8` (0 value, 1 panic, 2 error), bytes |
//! | ready | `1u8` (the initializer ran) |
//! | init failed | `2u8`, message |
//! | revoked | `3u8`, ids `u64`... (these never started and never will here) |

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::process::{Builder, Process};
use crate::sys::{self, Interest};
use crate::wire;

/// What a worker needs to know at start.
#[derive(Clone, Debug)]
pub(crate) struct WorkerSpec {
    pub(crate) name: String,
    pub(crate) method: Option<StartMethod>,
    /// The initializer, shared by every launch.
    pub(crate) initializer: Option<Arc<InitSpec>>,
    /// Tasks after which the worker exits (Python's `maxtasksperchild`).
    pub(crate) max_tasks: Option<usize>,
    /// CPU affinity, niceness and limits: worker slot `i` gets `placements[i % len]`
    /// (empty: none).
    pub(crate) placements: Vec<crate::process::placement::Placement>,
    /// The slot of the worker this spec launches (replacements take a freed slot).
    pub(crate) slot: usize,
    /// The workers' stdout and stderr (`PoolBuilder::output`).
    pub(crate) output: crate::process::Output,
    /// Their `tracing` events go to the pool's process (`PoolBuilder::forward_tracing`).
    pub(crate) forward_tracing: bool,
}

/// The pool's initializer, as the builder encoded it once: a start method's `Entry` (which
/// decodes the arguments into a task to run) and the arguments, serialized inside
/// `wire::collect_fds`, with the descriptors of the handles among them (a `Lock`, a `Value`,
/// a `Queue`...) in index order. The pool keeps these descriptors while it lives; each launch
/// sends the worker duplicates of its own ([`InitArgs`]), so replacement workers get them too.
#[derive(Debug)]
pub(crate) struct InitSpec {
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl InitSpec {
    /// This launch's copy: the same bytes and fresh duplicates of the descriptors.
    fn for_launch(&self) -> io::Result<InitArgs> {
        Ok(InitArgs {
            entry: self.entry,
            payload: self.payload.clone(),
            fds: self
                .fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<_>>()?,
        })
    }
}

/// The initializer as one worker receives it. Its descriptors travel as the worker's own start
/// arguments do (moved across a fork, or passed beside the boot message to a fresh program),
/// and the worker decodes the payload inside `wire::with_received_fds` with them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitArgs {
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    #[serde(serialize_with = "serialize_fds", deserialize_with = "deserialize_fds")]
    pub(crate) fds: Vec<OwnedFd>,
}

fn serialize_fds<S: serde::Serializer>(
    fds: &[OwnedFd],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(fds.iter().map(|fd| wire::SerFd(fd.as_fd())))
}

fn deserialize_fds<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<OwnedFd>, D::Error> {
    let fds = <Vec<wire::DeFd> as Deserialize>::deserialize(d)?;
    Ok(fds.into_iter().map(|wire::DeFd(fd)| fd).collect())
}

/// What a local worker process is started with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// Read end of the task pipe.
    #[serde(
        serialize_with = "serialize_fd",
        deserialize_with = "wire::deserialize_fd"
    )]
    pub(crate) tasks: OwnedFd,
    /// Write end of the reply pipe.
    #[serde(
        serialize_with = "serialize_fd",
        deserialize_with = "wire::deserialize_fd"
    )]
    pub(crate) replies: OwnedFd,
    pub(crate) initializer: Option<InitArgs>,
    pub(crate) max_tasks: Option<usize>,
}

fn serialize_fd<S: serde::Serializer>(fd: &OwnedFd, s: S) -> std::result::Result<S::Ok, S::Error> {
    wire::serialize_fd(fd.as_fd(), s)
}

/// Starts workers.
pub(crate) trait Launcher: Send {
    /// Starts one worker; on error nothing is left running.
    fn launch(&self, spec: &WorkerSpec) -> Result<Box<dyn Link>>;
}

/// A message from a worker.
#[derive(Debug)]
pub(crate) enum FromWorker {
    /// The outcome of task `id`.
    Reply { id: u64, reply: Reply },
    /// The initializer ran; tasks from now on are the worker's own doing.
    Ready,
    /// The initializer panicked; the worker exits.
    InitFailed(String),
    /// These tasks were given back unstarted, after a revoke.
    Revoked(Vec<u64>),
}

/// How one task ended inside a worker.
#[derive(Debug)]
pub(crate) enum Reply {
    Value(Vec<u8>),
    Panic {
        message: String,
        location: Option<String>,
    },
    /// The arguments could not be decoded (`decode`), or the value encoded (not `decode`).
    Failed {
        decode: bool,
        message: String,
    },
}

/// The pool's end of one worker.
pub(crate) trait Link: Send {
    /// The worker's process id (for logs and tests).
    fn pid(&self) -> u32;
    /// Queues task `id` for the worker. Never blocks; see [`flush`](Link::flush).
    fn send_task(&mut self, id: u64, entry: i64, payload: &[u8]);
    /// Queues the request to exit once the queued tasks are done.
    fn send_exit(&mut self);
    /// Queues the request to give back those of `ids` that have not started; the worker
    /// answers with [`FromWorker::Revoked`] even while a task runs.
    fn send_revoke(&mut self, ids: &[u64]);
    /// Writes queued bytes as far as the worker takes them without blocking.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether queued bytes wait for the worker to read.
    fn wants_write(&self) -> bool;
    /// Descriptors to wait on: replies (read), tasks (write), death (read).
    fn poll_set(&self) -> [BorrowedFd<'_>; 3];
    /// Reads every complete message available without blocking. `Ok(true)` at end of stream.
    fn receive(&mut self, out: &mut Vec<FromWorker>) -> Result<bool>;
    /// The worker's exit code (`-N` for signal N) once it ended, reaping it. Never blocks.
    fn exitcode(&mut self) -> io::Result<Option<i32>>;
    /// Kills the worker at once (SIGKILL). Killing a dead worker is not an error.
    fn kill(&self);
}

// ---------------------------------------------------------------------------------------------
// Frames.

const TASK: u8 = 0;
const EXIT: u8 = 1;
const REVOKE: u8 = 2;
const REPLY: u8 = 0;
const READY: u8 = 1;
const INIT_FAILED: u8 = 2;
const REVOKED: u8 = 3;
const VALUE: u8 = 0;
const PANIC: u8 = 1;
const FAILED: u8 = 2;

/// Room in a frame for the fixed fields around a payload or value.
const OVERHEAD: usize = 32;

/// Refuses a payload or value that would not fit in one frame.
pub(crate) fn check_size(len: usize) -> Result<()> {
    if len > wire::MAX_FRAME - OVERHEAD {
        return Err(Error::with_message(
            ErrorKind::Encode,
            format!(
                "a task's arguments or value of {len} bytes exceed the {}-byte limit",
                wire::MAX_FRAME - OVERHEAD
            ),
        ));
    }
    Ok(())
}

fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; wire::HEADER]);
    start
}

fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - wire::HEADER) as u32;
    out[start..start + wire::HEADER].copy_from_slice(&len.to_le_bytes());
}

pub(crate) fn encode_task(out: &mut Vec<u8>, id: u64, entry: i64, payload: &[u8]) {
    let start = begin_frame(out);
    out.push(TASK);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(payload);
    end_frame(out, start);
}

pub(crate) fn encode_exit(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.push(EXIT);
    end_frame(out, start);
}

fn encode_ids(out: &mut Vec<u8>, kind: u8, ids: &[u64]) {
    let start = begin_frame(out);
    out.push(kind);
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    end_frame(out, start);
}

fn decode_ids(bytes: &[u8], what: &str) -> Result<Vec<u64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(malformed(what));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

pub(crate) fn encode_revoke(out: &mut Vec<u8>, ids: &[u64]) {
    encode_ids(out, REVOKE, ids);
}

pub(crate) fn encode_revoked(out: &mut Vec<u8>, ids: &[u64]) {
    encode_ids(out, REVOKED, ids);
}

pub(crate) fn encode_reply(out: &mut Vec<u8>, id: u64, reply: &Reply) {
    let start = begin_frame(out);
    out.push(REPLY);
    out.extend_from_slice(&id.to_le_bytes());
    match reply {
        Reply::Value(bytes) => {
            out.push(VALUE);
            out.extend_from_slice(bytes);
        }
        Reply::Panic { message, location } => {
            out.push(PANIC);
            // Strings always encode.
            let body = postcard::to_allocvec(&(message, location)).unwrap_or_default();
            out.extend_from_slice(&body);
        }
        Reply::Failed { decode, message } => {
            out.push(FAILED);
            out.push(u8::from(*decode));
            out.extend_from_slice(message.as_bytes());
        }
    }
    end_frame(out, start);
}

pub(crate) fn encode_ready(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.push(READY);
    end_frame(out, start);
}

pub(crate) fn encode_init_failed(out: &mut Vec<u8>, message: &str) {
    let start = begin_frame(out);
    out.push(INIT_FAILED);
    out.extend_from_slice(message.as_bytes());
    end_frame(out, start);
}

/// A message to a worker.
#[derive(Debug)]
pub(crate) enum ToWorker<'a> {
    Task {
        id: u64,
        entry: i64,
        payload: &'a [u8],
    },
    Exit,
    Revoke(Vec<u64>),
}

fn malformed(what: &str) -> Error {
    Error::with_message(ErrorKind::Decode, format!("malformed {what} frame"))
}

/// Splits the first complete frame off `buf`: its body and the bytes it used.
pub(crate) fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>> {
    let Some(len) = wire::frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < wire::HEADER + len {
        return Ok(None);
    }
    Ok(Some((
        &buf[wire::HEADER..wire::HEADER + len],
        wire::HEADER + len,
    )))
}

pub(crate) fn decode_to_worker(body: &[u8]) -> Result<ToWorker<'_>> {
    match body.split_first() {
        Some((&TASK, rest)) if rest.len() >= 16 => Ok(ToWorker::Task {
            id: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
            entry: i64::from_le_bytes(rest[8..16].try_into().expect("8 bytes")),
            payload: &rest[16..],
        }),
        Some((&EXIT, _)) => Ok(ToWorker::Exit),
        Some((&REVOKE, ids)) => Ok(ToWorker::Revoke(decode_ids(ids, "revoke")?)),
        _ => Err(malformed("task")),
    }
}

pub(crate) fn decode_from_worker(body: &[u8]) -> Result<FromWorker> {
    match body.split_first() {
        Some((&REPLY, rest)) if rest.len() >= 9 => {
            let id = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let bytes = &rest[9..];
            let reply = match rest[8] {
                VALUE => Reply::Value(bytes.to_vec()),
                PANIC => {
                    let (message, location) =
                        postcard::from_bytes(bytes).map_err(|_| malformed("reply"))?;
                    Reply::Panic { message, location }
                }
                FAILED => match bytes.split_first() {
                    Some((&decode, message)) => Reply::Failed {
                        decode: decode != 0,
                        message: String::from_utf8_lossy(message).into_owned(),
                    },
                    None => return Err(malformed("reply")),
                },
                _ => return Err(malformed("reply")),
            };
            Ok(FromWorker::Reply { id, reply })
        }
        Some((&READY, _)) => Ok(FromWorker::Ready),
        Some((&INIT_FAILED, rest)) => Ok(FromWorker::InitFailed(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        Some((&REVOKED, ids)) => Ok(FromWorker::Revoked(decode_ids(ids, "revoked")?)),
        _ => Err(malformed("reply")),
    }
}

// ---------------------------------------------------------------------------------------------
// Pipes and a local process.

/// The pipe buffer asked for, each way, once a frame outgrows the default one. Chunks of `map`
/// are often hundreds of KiB: fewer wake-ups with larger buffers. Asked for on the first large
/// frame rather than at launch, which a pool that only ever sends small frames would pay for in
/// two system calls per worker.
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// A pipe's buffer until [`PIPE_SIZE`] is asked for (Linux's default).
pub(crate) const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// The most read from a pipe at once.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// How much to read next onto `buf`: its spare room, or as much as it holds already (so a long
/// transfer is read in growing steps, the buffer doubling), at least a page and at most
/// [`READ_CHUNK`]. A few-byte reply or task, the common case, does not make a 64 KiB
/// allocation whose pages and trimming would cost more than the read.
pub(crate) fn read_size(buf: &Vec<u8>) -> usize {
    buf.len()
        .max(buf.capacity() - buf.len())
        .clamp(4096, READ_CHUNK)
}

/// Workers as local child processes, one pipe each way.
#[derive(Debug)]
pub(crate) struct PipeLauncher;

impl Launcher for PipeLauncher {
    fn launch(&self, spec: &WorkerSpec) -> Result<Box<dyn Link>> {
        Ok(Box::new(launch_pipe(spec)?))
    }
}

/// Starts a local worker process with a pipe each way.
pub(crate) fn launch_pipe(spec: &WorkerSpec) -> Result<PipeLink> {
    {
        // The pool's ends do not block; the worker's do.
        let (task_rx, task_tx) = sys::pipe_nonblocking(false, true)?;
        let (reply_rx, reply_tx) = sys::pipe_nonblocking(true, false)?;
        let initializer = match &spec.initializer {
            Some(init) => Some(init.for_launch()?),
            None => None,
        };
        let args = WorkerArgs {
            tasks: task_rx,
            replies: reply_tx,
            initializer,
            max_tasks: spec.max_tasks,
        };
        let mut builder = Builder::new()
            .name(spec.name.clone())
            .daemon(true)
            .output(spec.output.clone())
            .forward_tracing(spec.forward_tracing);
        if let Some(method) = spec.method {
            builder = builder.start_method(method);
        }
        if !spec.placements.is_empty() {
            builder =
                builder.resolved_placement(spec.placements[spec.slot % spec.placements.len()]);
        }
        // A fn item with serializable arguments, so that it runs under every start method: a
        // forked worker gets the arguments moved, a fresh program gets them serialized with
        // the pipes passed alongside. The parent's copies of the worker's ends close once the
        // start is done.
        let mut process = builder.target_with_args(super::worker::run, args);
        process.start()?;
        Ok(PipeLink {
            process,
            task_tx,
            reply_rx,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            eof: false,
            grown: false,
        })
    }
}

#[derive(Debug)]
pub(crate) struct PipeLink {
    process: Process,
    task_tx: OwnedFd,
    reply_rx: OwnedFd,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    eof: bool,
    /// The task pipe's buffer was enlarged to [`PIPE_SIZE`].
    grown: bool,
}

impl Link for PipeLink {
    fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    fn send_task(&mut self, id: u64, entry: i64, payload: &[u8]) {
        encode_task(&mut self.out, id, entry, payload);
    }

    fn send_exit(&mut self) {
        encode_exit(&mut self.out);
    }

    fn send_revoke(&mut self, ids: &[u64]) {
        encode_revoke(&mut self.out, ids);
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.grown && self.out.len() - self.out_pos > DEFAULT_PIPE_SIZE {
            sys::set_pipe_size(self.task_tx.as_fd(), PIPE_SIZE);
            self.grown = true;
        }
        while self.out_pos < self.out.len() {
            match sys::write_some(self.task_tx.as_fd(), &self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                // The worker is gone; its death is noticed through its pidfd.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.out_pos = self.out.len();
                }
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
        let sentinel = self
            .process
            .sentinel()
            .expect("a launched worker is started and not closed");
        [self.reply_rx.as_fd(), self.task_tx.as_fd(), sentinel]
    }

    fn receive(&mut self, out: &mut Vec<FromWorker>) -> Result<bool> {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let read = self.read_into(&mut inbuf);
        let mut used = 0;
        let mut parsed = Ok(());
        loop {
            match split_frame(&inbuf[used..]) {
                Ok(Some((body, n))) => match decode_from_worker(body) {
                    Ok(message) => {
                        out.push(message);
                        used += n;
                    }
                    Err(e) => {
                        parsed = Err(e);
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    parsed = Err(e);
                    break;
                }
            }
        }
        inbuf.drain(..used);
        self.inbuf = inbuf;
        read?;
        parsed?;
        Ok(self.eof)
    }

    fn exitcode(&mut self) -> io::Result<Option<i32>> {
        Ok(self.process.exitcode())
    }

    fn kill(&self) {
        let _ = self.process.kill();
    }
}

impl PipeLink {
    /// Reads everything the worker wrote so far onto `buf`, noting the end of the stream.
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        while !self.eof {
            // Straight into the buffer's spare room: a zeroed scratch array would touch (and,
            // just after a fork, copy) 16 pages to receive a few bytes.
            let want = read_size(buf);
            match sys::read_append(self.reply_rx.as_fd(), buf, want) {
                Ok(0) => self.eof = true,
                Ok(n) if n < want => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The byte-level face of a local worker, which a remote backend's far side relays
/// (`remote::launch_local`).
impl super::remote::WorkerLink for PipeLink {
    fn pid(&self) -> u32 {
        Link::pid(self)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn flush(&mut self) -> io::Result<()> {
        Link::flush(self)
    }

    fn wants_write(&self) -> bool {
        Link::wants_write(self)
    }

    fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
        Link::poll_set(self)
    }

    fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        self.read_into(buf)?;
        Ok(self.eof)
    }

    fn exitcode(&mut self) -> io::Result<Option<i32>> {
        Link::exitcode(self)
    }

    fn kill(&self) {
        Link::kill(self);
    }
}

/// What `poll_fds` should watch for one link.
pub(crate) fn interests(link: &dyn Link, replies: bool) -> [(BorrowedFd<'_>, Interest); 3] {
    let [reply, task, death] = link.poll_set();
    let read = Interest {
        read: true,
        write: false,
    };
    [
        (
            reply,
            Interest {
                read: replies,
                write: false,
            },
        ),
        (
            task,
            Interest {
                read: false,
                write: link.wants_write(),
            },
        ),
        (death, read),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((body, used)) = split_frame(&buf[at..]).unwrap() {
            out.push(body);
            at += used;
        }
        assert_eq!(at, buf.len(), "trailing bytes");
        out
    }

    #[test]
    fn task_and_exit_frames_round_trip() {
        let mut buf = Vec::new();
        encode_task(&mut buf, 7, -12345, b"payload");
        encode_exit(&mut buf);
        encode_task(&mut buf, u64::MAX, i64::MIN, b"");
        encode_revoke(&mut buf, &[3, 4, u64::MAX]);
        let bodies = frames(&buf);
        assert!(
            matches!(decode_to_worker(bodies[3]).unwrap(), ToWorker::Revoke(ids) if ids == [3, 4, u64::MAX])
        );
        assert!(matches!(
            decode_to_worker(bodies[0]).unwrap(),
            ToWorker::Task {
                id: 7,
                entry: -12345,
                payload: b"payload"
            }
        ));
        assert!(matches!(
            decode_to_worker(bodies[1]).unwrap(),
            ToWorker::Exit
        ));
        assert!(matches!(
            decode_to_worker(bodies[2]).unwrap(),
            ToWorker::Task {
                id: u64::MAX,
                entry: i64::MIN,
                payload: b""
            }
        ));
    }

    #[test]
    fn reply_frames_round_trip() {
        let mut buf = Vec::new();
        encode_reply(&mut buf, 1, &Reply::Value(vec![1, 2, 3]));
        encode_reply(
            &mut buf,
            2,
            &Reply::Panic {
                message: "boom".into(),
                location: Some("a.rs:1:2".into()),
            },
        );
        encode_reply(
            &mut buf,
            3,
            &Reply::Failed {
                decode: true,
                message: "bad bytes".into(),
            },
        );
        encode_ready(&mut buf);
        encode_init_failed(&mut buf, "init panicked");
        encode_revoked(&mut buf, &[9]);
        let got: Vec<FromWorker> = frames(&buf)
            .into_iter()
            .map(|b| decode_from_worker(b).unwrap())
            .collect();
        assert!(
            matches!(&got[0], FromWorker::Reply { id: 1, reply: Reply::Value(v) } if v == &[1, 2, 3])
        );
        assert!(
            matches!(&got[1], FromWorker::Reply { id: 2, reply: Reply::Panic { message, location } }
            if message == "boom" && location.as_deref() == Some("a.rs:1:2"))
        );
        assert!(
            matches!(&got[2], FromWorker::Reply { id: 3, reply: Reply::Failed { decode: true, message } } if message == "bad bytes")
        );
        assert!(matches!(got[3], FromWorker::Ready));
        assert!(matches!(&got[4], FromWorker::InitFailed(m) if m == "init panicked"));
        assert!(matches!(&got[5], FromWorker::Revoked(ids) if ids == &[9]));
    }

    #[test]
    fn partial_and_malformed_frames() {
        let mut buf = Vec::new();
        encode_task(&mut buf, 1, 2, b"abc");
        for cut in 0..buf.len() {
            assert!(split_frame(&buf[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(decode_to_worker(&[]).is_err());
        assert!(decode_to_worker(&[TASK, 1, 2]).is_err());
        assert!(decode_to_worker(&[9]).is_err());
        assert!(decode_to_worker(&[REVOKE, 1, 2, 3]).is_err());
        assert!(decode_from_worker(&[REPLY, 0, 0, 0, 0, 0, 0, 0, 0, 7]).is_err());
        assert!(decode_from_worker(&[REPLY, 0, 0, 0, 0, 0, 0, 0, 0, PANIC, 0xff]).is_err());
        // A header announcing more than the limit is an error, not an allocation.
        assert!(split_frame(&u32::MAX.to_le_bytes()).is_err());
    }
}
