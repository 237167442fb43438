//! Workers on other machines: the pool's transport as a public extension point, for a backend
//! such as `multiproc-mpi` that runs the pool's workers elsewhere.
//!
//! A backend implements [`WorkerLauncher`] (start one worker somewhere, from a [`WorkerStart`])
//! and [`WorkerLink`] (that worker's two byte streams, its death and a kill), and hands the
//! launcher to [`PoolBuilder::launcher`](super::PoolBuilder::launcher). Everything else, from
//! dispatch and time limits to telling which task a dead worker was running, stays the pool's:
//! the link only carries bytes the pool encodes and decodes.
//!
//! On the far side the backend starts the worker with [`launch_local`], a local worker process
//! exactly like a [`Pool`](super::Pool)'s, and relays bytes between it and the link. The worker
//! runs tasks one at a time and replies in order, so the relay needs no knowledge of the
//! frames; when the local worker dies the relay passes on its last bytes first, then its exit
//! code.
//!
//! Tasks name their code by its offset in the executable (see `README.md` beside this file), so
//! every machine must run the identical build of the program: a backend checks that before it
//! launches anything.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::transport::{
    self, FromWorker, InitSpec, Launcher, Link, WorkerSpec, decode_from_worker, split_frame,
};
use crate::error::{Error, ErrorKind, Result};

/// Starts pool workers somewhere else. See the [module docs](self).
///
/// # Examples
/// A launcher that starts local workers through [`launch_local`] (what a remote backend's
/// far side does), used by a pool:
/// ```
/// use multiproc::Pool;
/// use multiproc::pool::remote::{self, WorkerLauncher, WorkerLink, WorkerStart};
///
/// #[derive(Debug)]
/// struct Here;
///
/// impl WorkerLauncher for Here {
///     fn launch(&self, start: &WorkerStart) -> multiproc::Result<Box<dyn WorkerLink>> {
///         // A remote backend would send `start.to_bytes()` to another machine.
///         let bytes = start.to_bytes();
///         remote::launch_local(&WorkerStart::from_bytes(&bytes)?)
///     }
/// }
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::builder().processes(2).launcher(Here).build()?;
/// assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait WorkerLauncher: Send + fmt::Debug {
    /// Starts one worker; on error nothing is left running.
    ///
    /// # Errors
    /// Why the worker could not be started; the pool retries, as after a failed local start.
    fn launch(&self, start: &WorkerStart) -> Result<Box<dyn WorkerLink>>;

    /// About how long a task's frame and its reply take to travel, on top of the task's own
    /// time (zero by default). The pool gives each worker that much more work ahead, so that a
    /// far worker is not sent tiny tasks one round trip at a time.
    fn round_trip(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The pool's end of one worker started by a [`WorkerLauncher`]: bytes each way, the worker's
/// death, a kill. The pool's thread calls it and waits with `poll(2)` on
/// [`poll_set`](WorkerLink::poll_set), so no method may block.
pub trait WorkerLink: Send + fmt::Debug {
    /// The worker's process id (on its own machine; for logs and [`Pool::worker_pids`]).
    ///
    /// [`Pool::worker_pids`]: super::Pool::worker_pids
    fn pid(&self) -> u32;
    /// Queues bytes for the worker, in order. Never blocks; see [`flush`](WorkerLink::flush).
    fn write(&mut self, bytes: &[u8]);
    /// Sends queued bytes as far as possible without blocking.
    ///
    /// # Errors
    /// A transport failure (the pool logs it and treats the worker as lost).
    fn flush(&mut self) -> io::Result<()>;
    /// Whether queued bytes wait for the second descriptor of [`poll_set`](WorkerLink::poll_set)
    /// to become writable.
    fn wants_write(&self) -> bool;
    /// Descriptors to wait on: readable when bytes from the worker arrived, writable when more
    /// can be [`flush`](WorkerLink::flush)ed, readable once the worker ended (and stays so).
    fn poll_set(&self) -> [BorrowedFd<'_>; 3];
    /// Appends every byte from the worker that arrived, without blocking; `Ok(true)` once no
    /// more will come.
    ///
    /// # Errors
    /// A transport failure.
    fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;
    /// The worker's exit code once it ended (`-N` for signal N), never blocking. Bytes it sent
    /// before it ended must be [`read`](WorkerLink::read)able by then.
    ///
    /// # Errors
    /// A transport failure.
    fn exitcode(&mut self) -> io::Result<Option<i32>>;
    /// Kills the worker (SIGKILL); its death is reported as any other. Not an error if it is
    /// already dead.
    fn kill(&self);
}

/// What a worker is started with (its name, the pool's initializer, its task limit), as bytes
/// that travel to another machine. The initializer's arguments cannot hold handles that own a
/// descriptor (a `Lock`, a `Queue`...): the pool refuses to build then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStart {
    name: String,
    /// The initializer's entry offset and arguments.
    initializer: Option<(i64, Vec<u8>)>,
    max_tasks: Option<usize>,
    /// The start method's name (`forkserver`...).
    method: Option<String>,
}

impl WorkerStart {
    /// The worker's name (`PoolWorker-3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The start method the pool asked for (`None`: the default of the process that starts
    /// the worker).
    pub fn start_method(&self) -> Option<crate::StartMethod> {
        self.method.as_deref().and_then(|m| m.parse().ok())
    }

    /// This start as bytes, for [`from_bytes`](WorkerStart::from_bytes) on another machine.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and bytes always encode.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The start that [`to_bytes`](WorkerStart::to_bytes) encoded.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] for bytes that are not one.
    pub fn from_bytes(bytes: &[u8]) -> Result<WorkerStart> {
        postcard::from_bytes(bytes)
            .map_err(|e| Error::with_message(ErrorKind::Decode, format!("not a worker start: {e}")))
    }

    fn from_spec(spec: &WorkerSpec) -> WorkerStart {
        WorkerStart {
            name: spec.name.clone(),
            initializer: spec
                .initializer
                .as_ref()
                .map(|i| (i.entry, i.payload.clone())),
            max_tasks: spec.max_tasks,
            method: spec.method.map(|m| m.name().to_owned()),
        }
    }

    fn to_spec(&self) -> WorkerSpec {
        WorkerSpec {
            name: self.name.clone(),
            // A name this build does not know (impossible with the same build) is the default.
            method: self.start_method(),
            initializer: self.initializer.as_ref().map(|(entry, payload)| {
                Arc::new(InitSpec {
                    entry: *entry,
                    payload: payload.clone(),
                    fds: Vec::new(),
                })
            }),
            max_tasks: self.max_tasks,
            placements: Vec::new(),
            slot: 0,
            // Output forwarding is local to one machine: a remote worker's output stays on
            // its own (what the far side's stdout is).
            output: crate::process::Output::Inherit,
            forward_tracing: false,
        }
    }
}

/// Starts a worker process on this machine, as a [`Pool`](super::Pool) does (same start
/// method rules, same worker loop), and returns its byte-level link: what a remote backend's
/// far side relays to the pool.
///
/// # Errors
/// As a failed worker start in a [`Pool`](super::Pool) ([`ErrorKind::Io`] and others).
pub fn launch_local(start: &WorkerStart) -> Result<Box<dyn WorkerLink>> {
    Ok(Box::new(transport::launch_pipe(&start.to_spec())?))
}

/// A [`WorkerLauncher`] as the supervisor's [`Launcher`].
#[derive(Debug)]
pub(crate) struct RemoteLauncher(pub(crate) Box<dyn WorkerLauncher>);

impl RemoteLauncher {
    /// Refuses an initializer whose arguments hold descriptors: they cannot travel as bytes.
    pub(crate) fn check(spec: &WorkerSpec) -> Result<()> {
        if spec.initializer.as_ref().is_some_and(|i| !i.fds.is_empty()) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "the initializer's arguments hold a handle that owns a file descriptor (a \
                 Lock, Value, Queue...), which cannot reach workers on other machines",
            ));
        }
        if !spec.placements.is_empty() {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "CPU placement, niceness and limits apply to local workers only",
            ));
        }
        Ok(())
    }
}

impl Launcher for RemoteLauncher {
    fn launch(&self, spec: &WorkerSpec) -> Result<Box<dyn Link>> {
        let link = self.0.launch(&WorkerStart::from_spec(spec))?;
        Ok(Box::new(FramedLink {
            link,
            frame: Vec::new(),
            inbuf: Vec::new(),
        }))
    }
}

/// A [`WorkerLink`] with the pool's frames on top.
#[derive(Debug)]
struct FramedLink {
    link: Box<dyn WorkerLink>,
    /// Scratch for encoding one frame.
    frame: Vec<u8>,
    inbuf: Vec<u8>,
}

impl FramedLink {
    fn put(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.frame.clear();
        encode(&mut self.frame);
        self.link.write(&self.frame);
    }
}

impl Link for FramedLink {
    fn pid(&self) -> u32 {
        self.link.pid()
    }

    fn send_task(&mut self, id: u64, entry: i64, payload: &[u8]) {
        self.put(|out| transport::encode_task(out, id, entry, payload));
    }

    fn send_exit(&mut self) {
        self.put(transport::encode_exit);
    }

    fn send_revoke(&mut self, ids: &[u64]) {
        self.put(|out| transport::encode_revoke(out, ids));
    }

    fn flush(&mut self) -> io::Result<()> {
        self.link.flush()
    }

    fn wants_write(&self) -> bool {
        self.link.wants_write()
    }

    fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
        self.link.poll_set()
    }

    fn receive(&mut self, out: &mut Vec<FromWorker>) -> Result<bool> {
        let eof = self.link.read(&mut self.inbuf)?;
        let mut used = 0;
        while let Some((body, n)) = split_frame(&self.inbuf[used..])? {
            out.push(decode_from_worker(body)?);
            used += n;
        }
        self.inbuf.drain(..used);
        Ok(eof)
    }

    fn exitcode(&mut self) -> io::Result<Option<i32>> {
        self.link.exitcode()
    }

    fn kill(&self) {
        self.link.kill();
    }
}
