//! The pool's one thread: it starts and replaces workers, hands them tasks, reads their
//! replies, enforces time limits, and notices deaths.
//!
//! # One thread
//! Everything about workers lives on this thread, so there is no lock around worker state:
//! the [`Supervisor`] value is owned by the thread and every decision about a worker is made
//! by it, in order, between two waits. Callers reach it through [`Core`]: submissions go into
//! an inbox under a mutex, and a byte on a wake-up pipe interrupts the thread's `poll` when it
//! sleeps. Workers are forked by this long-lived thread too, since a daemonic child is killed
//! when the thread that forked it ends.
//!
//! Each worker may hold several queued tasks (fewer when tasks are slow, more when they are
//! tiny, about a millisecond's worth, 33 at most) so that the round trip to the pool does not
//! idle it.
//! Workers run tasks in order and reply to each before starting the next, so when a worker
//! dies the oldest unanswered task is the one it was running: that task fails with how the
//! worker died (or, with `PoolBuilder::retries` left, goes back to the front of the queue:
//! `Supervisor::retry_or_fail` in `workers.rs`), and the tasks behind it, which never
//! started, go back to the queue.
//!
//! # Files
//! One `impl Supervisor` per concern, all on the same value:
//! - `mod.rs`: the types the thread shares with callers ([`Job`], [`Sink`], [`Config`], the
//!   inbox) and its own state ([`Supervisor`], one [`Worker`] per process).
//! - `handle.rs`: [`Core`], the callers' side: starting the thread, submitting, closing,
//!   terminating, joining.
//! - `event_loop.rs`: the loop itself, one `poll` over the wake-up pipe and every worker,
//!   and reading what workers send.
//! - `workers.rs`: starting workers, replacing those that end (with backoff), burying them.
//! - `tasks.rs`: how many tasks a worker holds, handing them out, taking them back.
//! - `time_limits.rs`: killing a worker whose task ran out of time, settling its tasks.
//! - `cancel.rs`: cancelling a queued or running task on a caller's request.
//! - `shutdown.rs`: terminating: killing every worker and failing what is unfinished.
//! - `tests.rs`: the thread against scripted workers.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::TaskError;
use super::transport::{Launcher, Link, WorkerSpec};
use crate::sys;

mod cancel;
mod event_loop;
mod handle;
mod shutdown;
mod tasks;
pub(crate) use tasks::QUEUE_AHEAD;
#[cfg(test)]
mod tests;
mod time_limits;
mod workers;

pub(crate) use cancel::{CancelHandle, new_key};
pub(crate) use handle::Core;
use time_limits::TimedOut;

/// Where a task's outcome goes.
pub(crate) trait Sink: Send {
    /// Called just before the task is handed to a worker; `false` if it was cancelled, and
    /// then the task is dropped without [`finish`](Sink::finish).
    fn start(&self) -> bool {
        true
    }
    /// Delivers the outcome: the encoded value, or why there is none.
    fn finish(self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>);
    /// The task was taken back before any worker started it and will never run
    /// (`shutdown(cancel_futures)`): fails it as cancelled.
    fn cancel(self: Box<Self>) {
        self.finish(Err(TaskError::Cancelled));
    }
    /// The key a caller cancels this task by ([`cancel::new_key`]); `None`: it cannot be
    /// cancelled once queued.
    fn key(&self) -> Option<u64> {
        None
    }
}

/// A task on its way to a worker.
pub(crate) struct Job {
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) sink: Box<dyn Sink>,
    /// This task's time limit, over the pool's.
    pub(crate) limit: Option<Duration>,
    /// Runs of this task that failed and were retried ([`Config::retries`]).
    pub(crate) failed_runs: u32,
    /// Workers that died while running this task ([`Config::max_deaths`]).
    pub(crate) deaths: u32,
}

impl Job {
    fn fail(self, error: TaskError) {
        finish(self.sink, Err(error));
    }
}

fn finish(sink: Box<dyn Sink>, outcome: std::result::Result<Vec<u8>, TaskError>) {
    // Sinks run user callbacks; a panic there must not take the pool down.
    if catch_unwind(AssertUnwindSafe(|| sink.finish(outcome))).is_err() {
        tracing::warn!("a pool callback panicked; the pool carries on");
    }
}

/// Fails a task as cancelled (never started, or killed running on a caller's request).
fn finish_cancelled(sink: Box<dyn Sink>) {
    // Sinks run user callbacks; a panic there must not take the pool down.
    if catch_unwind(AssertUnwindSafe(|| sink.cancel())).is_err() {
        tracing::warn!("a pool callback panicked; the pool carries on");
    }
}

/// How the pool is configured.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) spec: WorkerSpec,
    pub(crate) task_timeout: Option<Duration>,
    /// How much work a worker is given ahead ([`QUEUE_AHEAD`], plus a remote link's round
    /// trip: a task that looks slow only because its reply travels far is no reason to send
    /// tasks one at a time).
    pub(crate) queue_ahead: Duration,
    /// How many times a failed task runs again (`PoolBuilder::retries`).
    pub(crate) retries: u32,
    /// A task that has killed this many workers fails for good, retries left or not.
    pub(crate) max_deaths: Option<u32>,
    /// Whether a task that panicked is retried too (only worker deaths otherwise).
    pub(crate) retry_panics: bool,
    /// A worker above this resident size after a task is replaced (`max_memory_per_child`).
    pub(crate) max_memory: Option<u64>,
    /// The workers' hard memory cap, to tell a death by it from others (`memory_limit`).
    pub(crate) memory_limit: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    /// No new tasks; finish the queued ones, then stop the workers.
    Closed,
    /// Kill the workers and fail every unfinished task.
    Terminating,
}

struct Inbox {
    jobs: VecDeque<Job>,
    state: RunState,
    /// Fail queued tasks with `Cancelled` (executor `shutdown(cancel_futures=true)`).
    cancel_queued: bool,
    /// The supervisor is (about to be) asleep in `poll` and needs a wake-up byte.
    sleeping: bool,
    /// Tasks callers asked to cancel (`cancel.rs`).
    cancels: Vec<cancel::CancelRequest>,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake_tx: OwnedFd,
    /// The workers' pids, as of the supervisor's last change to its workers.
    pids: Mutex<Vec<u32>>,
    /// The supervisor thread, so that a cancel made from it (in a callback) does not wait
    /// for it.
    thread: std::sync::OnceLock<std::thread::ThreadId>,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, inbox: &mut Inbox) {
        if inbox.sleeping {
            inbox.sleeping = false;
            let _ = sys::write_some(self.wake_tx.as_fd(), &[1]);
        }
    }
}

struct Worker {
    link: Box<dyn Link>,
    /// Tasks handed over and not answered, oldest first; the first one is running.
    inflight: VecDeque<(u64, Job)>,
    /// When the first task in `inflight` started (as far as the pool can tell): when it was
    /// handed over, when the task before it was answered, or when the worker said `Ready`,
    /// whichever came last. Time in the initializer does not count against a time limit.
    head_started: Instant,
    /// Tasks it may still be given (`maxtasksperchild`).
    tasks_left: Option<usize>,
    /// The initializer ran (the worker said `Ready`).
    ready: bool,
    /// It was asked to exit, or killed on purpose.
    leaving: bool,
    /// It was killed because its running task ran out of time; its tasks are settled once
    /// it is dead (or, at the latest, once the kill had time to take effect).
    timed_out: Option<TimedOut>,
    /// End of its reply stream was reached.
    eof: bool,
    /// A revoke was sent and not answered yet.
    revoking: bool,
    /// It answered a task. Until then nothing is queued behind its first task: it reads its
    /// pipe on its main thread, and starts the reader thread that answers revokes during a
    /// task only for its second task (`worker.rs`).
    answered: bool,
    /// One of its tasks is being cancelled: it gets no new task meanwhile (`cancel.rs`).
    cancel: Option<cancel::Cancelling>,
    /// Its place among the pool's workers, which sets its CPU placement.
    slot: usize,
    /// It grew past `max_memory_per_child`: no more tasks; it exits once its tasks are settled.
    over_memory: bool,
    /// Its resident size after its initializer, the limit when that is higher (`Config::max_memory`).
    memory_floor: Option<u64>,
}

struct Supervisor {
    shared: Arc<Shared>,
    wake_rx: OwnedFd,
    launcher: Box<dyn Launcher>,
    config: Config,
    workers: Vec<Worker>,
    pending: VecDeque<Job>,
    next_id: u64,
    next_name: u64,
    state: RunState,
    /// Why tasks cannot run (the initializer fails).
    broken: Option<String>,
    /// Running average of a task's duration, which sets how many tasks a worker is given.
    avg_task: Duration,
    /// Workers in a row that died before finishing their initializer (a SIGKILL from outside
    /// does not count: it says nothing about the setup).
    init_deaths: u32,
    /// Workers in a row that died after their initializer without having answered or held a
    /// task: each is replaced, so they would otherwise be started in a tight loop.
    idle_deaths: u32,
    /// When to start workers again, after a failed start or a run of idle deaths.
    retry_launch_at: Option<Instant>,
    /// Worker starts in a row that failed.
    launch_failures: u32,
    /// Since when every worker start failed (reset by one that succeeds).
    launch_failing_since: Option<Instant>,
    /// Why the last start failed.
    launch_error: Option<String>,
    /// Ctrl-C reached the workers (one died of SIGINT).
    interrupted: bool,
    /// Cancels taken from the inbox and not settled yet (`cancel.rs`).
    cancels: Vec<cancel::CancelRequest>,
}
