//! The pool's one thread: it starts and replaces workers, hands them tasks, reads their
//! replies, enforces time limits, and notices deaths.
//!
//! Everything about workers lives on this thread, so there is no lock around worker state.
//! Callers reach it through [`Core`]: submissions go into an inbox under a mutex, and a byte on
//! a wake-up pipe interrupts the thread's `poll` when it sleeps.
//!
//! Each worker may hold several queued tasks (fewer when tasks are slow, more when they are
//! tiny, about a millisecond's worth, 33 at most) so that the round trip to the pool does not
//! idle it.
//! Workers run tasks in order and reply to each before starting the next, so when a worker
//! dies the oldest unanswered task is the one it was running: that task fails with how the
//! worker died, and the tasks behind it, which never started, go back to the queue.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::{TaskError, WorkerExit};
use super::transport::{self, FromWorker, Launcher, Link, Reply, WorkerSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Interest};

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
}

/// A task on its way to a worker.
pub(crate) struct Job {
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) sink: Box<dyn Sink>,
    /// This task's time limit, over the pool's.
    pub(crate) limit: Option<Duration>,
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

/// How the pool is configured.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) spec: WorkerSpec,
    pub(crate) task_timeout: Option<Duration>,
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
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake_tx: OwnedFd,
    /// The workers' pids, as of the supervisor's last change to its workers.
    pids: Mutex<Vec<u32>>,
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

/// The callers' handle on the supervisor thread.
pub(crate) struct Core {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("state", &self.shared.inbox().state)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Starts the supervisor and its first workers.
    ///
    /// # Errors
    /// When the first workers cannot be started (none is left running then).
    pub(crate) fn start(config: Config, launcher: Box<dyn Launcher>) -> Result<Core> {
        let (wake_rx, wake_tx) = sys::pipe_nonblocking(true, true)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                jobs: VecDeque::new(),
                state: RunState::Running,
                cancel_queued: false,
                sleeping: false,
            }),
            wake_tx,
            pids: Mutex::new(Vec::new()),
        });
        let (started_tx, started_rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        // Workers are forked by this long-lived thread: a daemonic child is killed when the
        // thread that forked it ends, so they must not be forked by a caller's thread.
        let thread = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || {
                let mut sup = Supervisor {
                    shared: thread_shared,
                    wake_rx,
                    launcher,
                    config,
                    workers: Vec::new(),
                    pending: VecDeque::new(),
                    next_id: 0,
                    next_name: 1,
                    state: RunState::Running,
                    broken: None,
                    // Pessimistic until measured: tasks are queued ahead only once they prove short.
                    avg_task: 2 * QUEUE_AHEAD,
                    init_deaths: 0,
                    retry_launch_at: None,
                    interrupted: false,
                };
                match sup.fill() {
                    Ok(()) => {
                        let _ = started_tx.send(Ok(()));
                        if catch_unwind(AssertUnwindSafe(|| sup.run())).is_err() {
                            tracing::error!("pool supervisor panicked; terminating the pool");
                            sup.shut_down();
                        }
                        // Nobody reads the wake-up pipe any more: later calls need not write.
                        sup.shared.inbox().sleeping = false;
                    }
                    Err(e) => {
                        sup.kill_all();
                        let _ = started_tx.send(Err(e));
                    }
                }
            })
            .map_err(Error::from)?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Core {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::with_message(
                    ErrorKind::Os,
                    "pool supervisor thread ended during start",
                ))
            }
        }
    }

    /// Queues `job`; hands it back if the pool no longer accepts tasks.
    pub(crate) fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        let mut inbox = self.shared.inbox();
        if inbox.state != RunState::Running {
            return Err(job);
        }
        inbox.jobs.push_back(job);
        self.shared.wake(&mut inbox);
        Ok(())
    }

    /// Queues many jobs at once.
    pub(crate) fn submit_all(&self, jobs: Vec<Job>) -> std::result::Result<(), Vec<Job>> {
        let mut inbox = self.shared.inbox();
        if inbox.state != RunState::Running {
            return Err(jobs);
        }
        inbox.jobs.extend(jobs);
        self.shared.wake(&mut inbox);
        Ok(())
    }

    /// The pids of the worker processes the pool has now.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the pool still accepts tasks.
    pub(crate) fn is_running(&self) -> bool {
        self.shared.inbox().state == RunState::Running
    }

    /// Stops accepting tasks; queued ones still run.
    pub(crate) fn close(&self) {
        let mut inbox = self.shared.inbox();
        if inbox.state == RunState::Running {
            inbox.state = RunState::Closed;
        }
        self.shared.wake(&mut inbox);
    }

    /// Fails queued tasks that no worker has started with `Cancelled`.
    pub(crate) fn cancel_queued(&self) {
        let mut inbox = self.shared.inbox();
        inbox.cancel_queued = true;
        self.shared.wake(&mut inbox);
    }

    /// Kills the workers; unfinished tasks fail with `Terminated`.
    pub(crate) fn terminate(&self) {
        let mut inbox = self.shared.inbox();
        inbox.state = RunState::Terminating;
        self.shared.wake(&mut inbox);
    }

    /// Waits for the supervisor to finish (after `close` or `terminate`).
    ///
    /// # Errors
    /// [`ErrorKind::StillRunning`] if the pool was neither closed nor terminated.
    pub(crate) fn join(&self) -> Result<()> {
        if self.is_running() {
            return Err(Error::with_message(
                ErrorKind::StillRunning,
                "pool is still running; call close or terminate before join",
            ));
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if thread.thread().id() == std::thread::current().id() {
                // A callback dropped the last handle on its own pool: the thread ends by itself.
                return Ok(());
            }
            let _ = thread.join();
        }
        Ok(())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.terminate();
        let _ = self.join();
    }
}

struct Worker {
    link: Box<dyn Link>,
    /// Tasks handed over and not answered, oldest first; the first one is running.
    inflight: VecDeque<(u64, Job)>,
    /// When the first task in `inflight` started (as far as the pool can tell).
    head_started: Instant,
    /// Tasks it may still be given (`maxtasksperchild`).
    tasks_left: Option<usize>,
    /// The initializer ran (the worker said `Ready`).
    ready: bool,
    /// It was asked to exit, or killed on purpose.
    leaving: bool,
    /// It was killed because its running task ran out of time; that task already failed.
    killed_for_time: bool,
    /// End of its reply stream was reached.
    eof: bool,
    /// A revoke was sent and not answered yet.
    revoking: bool,
    /// It answered a task. Until then nothing is queued behind its first task: it reads its
    /// pipe on its main thread, and starts the reader thread that answers revokes during a
    /// task only for its second task (`worker.rs`).
    answered: bool,
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
    /// Workers in a row that died before finishing their initializer.
    init_deaths: u32,
    /// After a failed start, when to try again.
    retry_launch_at: Option<Instant>,
    /// Ctrl-C reached the workers (one died of SIGINT).
    interrupted: bool,
}

/// Workers in a row that may die during initialization before the pool gives up.
const MAX_INIT_DEATHS: u32 = 3;

/// How much queued work (in task time) a worker is given beyond the task it runs.
const QUEUE_AHEAD: Duration = Duration::from_millis(1);

impl Supervisor {
    fn launch_one(&mut self) -> Result<()> {
        let mut spec = self.config.spec.clone();
        spec.name = format!("{}-{}", spec.name, self.next_name);
        self.next_name += 1;
        let link = self.launcher.launch(&spec)?;
        self.workers.push(Worker {
            link,
            inflight: VecDeque::new(),
            head_started: Instant::now(),
            tasks_left: self.config.spec.max_tasks,
            ready: false,
            leaving: false,
            killed_for_time: false,
            eof: false,
            revoking: false,
            answered: false,
        });
        self.publish_pids();
        Ok(())
    }

    /// Makes the workers' pids visible to callers ([`Core::worker_pids`]); called whenever
    /// a worker is added or removed.
    fn publish_pids(&self) {
        let pids = self.workers.iter().map(|w| w.link.pid()).collect();
        *self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()) = pids;
    }

    /// Starts workers until the pool has its size.
    fn fill(&mut self) -> Result<()> {
        while self.live_workers() < self.config.processes {
            self.launch_one()?;
        }
        Ok(())
    }

    fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.leaving).count()
    }

    fn run(&mut self) {
        loop {
            self.take_inbox();
            if self.state == RunState::Terminating {
                self.shut_down();
                return;
            }
            if let Some(reason) = &self.broken {
                let reason = reason.clone();
                for job in self.pending.drain(..) {
                    job.fail(TaskError::InitializerFailed {
                        message: reason.clone(),
                    });
                }
            }
            self.replace_workers();
            self.dispatch();
            self.rebalance();
            if self.state == RunState::Closed
                && self.pending.is_empty()
                && self.workers.iter().all(|w| w.inflight.is_empty())
            {
                for w in &mut self.workers {
                    if !w.leaving {
                        w.leaving = true;
                        w.link.send_exit();
                    }
                }
                if self.workers.is_empty() {
                    return;
                }
            }
            for w in &mut self.workers {
                if let Err(e) = w.link.flush() {
                    tracing::warn!(pid = w.link.pid(), error = %e, "writing to a pool worker failed");
                    w.link.kill();
                }
            }
            if let Err(e) = self.wait_and_handle() {
                tracing::error!(error = %e, "pool supervisor cannot wait for its workers; terminating the pool");
                self.shut_down();
                return;
            }
        }
    }

    fn take_inbox(&mut self) {
        let mut inbox = self.shared.inbox();
        self.pending.extend(inbox.jobs.drain(..));
        if inbox.state != RunState::Running && self.state != RunState::Terminating {
            self.state = inbox.state;
        }
        let cancel = std::mem::take(&mut inbox.cancel_queued);
        inbox.sleeping = true;
        drop(inbox);
        if cancel {
            for job in self.pending.drain(..) {
                // Sinks run user callbacks; a panic there must not take the pool down.
                if catch_unwind(AssertUnwindSafe(|| job.sink.cancel())).is_err() {
                    tracing::warn!("a pool callback panicked; the pool carries on");
                }
            }
        }
    }

    fn replace_workers(&mut self) {
        if self.broken.is_some() || self.state == RunState::Terminating {
            return;
        }
        let busy = self.workers.iter().any(|w| !w.inflight.is_empty());
        if self.state == RunState::Closed && self.pending.is_empty() && !busy {
            return;
        }
        if self.retry_launch_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.retry_launch_at = None;
        if let Err(e) = self.fill() {
            tracing::warn!(error = %e, "could not start a pool worker; retrying shortly");
            self.retry_launch_at = Some(Instant::now() + Duration::from_millis(100));
            if self.workers.is_empty() {
                // Nobody can run the queued tasks now: fail them rather than leave them waiting.
                let message = e.to_string();
                for job in self.pending.drain(..) {
                    job.fail(TaskError::Process(Error::with_message(
                        ErrorKind::Os,
                        format!("no pool worker could be started: {message}"),
                    )));
                }
            }
        }
    }

    /// How many tasks a worker may hold, from the average task duration.
    fn depth(&self) -> usize {
        let avg = self.avg_task.as_nanos().max(1);
        let ahead = (QUEUE_AHEAD.as_nanos() / avg) as usize;
        if ahead == 0 {
            // Slow tasks: one at a time, so that no task waits behind a slow one while another
            // worker is idle.
            return 1;
        }
        if self.config.task_timeout.is_some() {
            // A queued task's clock starts only when the one before it replies: keep it short.
            return ahead.clamp(1, 8);
        }
        ahead.clamp(1, 32) + 1
    }

    fn dispatch(&mut self) {
        if self.broken.is_some() || self.pending.is_empty() {
            return;
        }
        let depth = self.depth();
        let now = Instant::now();
        // Fill the emptiest workers first, a task at a time, so that a short burst spreads.
        // Nothing is queued behind a task that has already run long: it may run much longer.
        loop {
            let target = self
                .workers
                .iter_mut()
                .filter(|w| {
                    let slow_head = !w.inflight.is_empty()
                        && now.saturating_duration_since(w.head_started) > QUEUE_AHEAD;
                    !w.leaving
                        && w.inflight.len() < if slow_head || !w.answered { 1 } else { depth }
                        && w.tasks_left.is_none_or(|n| n > 0)
                })
                .min_by_key(|w| w.inflight.len());
            let Some(w) = target else { break };
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            if !job.sink.start() {
                continue; // cancelled
            }
            let id = self.next_id;
            self.next_id += 1;
            w.link.send_task(id, job.entry, &job.payload);
            if w.inflight.is_empty() {
                w.head_started = now;
            }
            w.inflight.push_back((id, job));
            if let Some(n) = &mut w.tasks_left {
                *n -= 1;
            }
        }
    }

    /// Whether a worker could take a task now.
    fn has_idle_worker(&self) -> bool {
        self.workers
            .iter()
            .any(|w| !w.leaving && w.inflight.is_empty() && w.tasks_left.is_none_or(|n| n > 0))
    }

    /// When nothing is queued but a worker is idle, takes back the tasks waiting behind a task
    /// that has run long on another worker (they go to the idle one, as from Python's shared
    /// queue).
    fn rebalance(&mut self) {
        if !self.pending.is_empty() || self.broken.is_some() || !self.has_idle_worker() {
            return;
        }
        let now = Instant::now();
        for w in &mut self.workers {
            if w.revoking
                || w.leaving
                || w.inflight.len() < 2
                || now.saturating_duration_since(w.head_started) < QUEUE_AHEAD
            {
                continue;
            }
            let ids: Vec<u64> = w.inflight.iter().skip(1).map(|(id, _)| *id).collect();
            w.link.send_revoke(&ids);
            w.revoking = true;
        }
    }

    fn wait_and_handle(&mut self) -> Result<()> {
        let deadline = self.next_deadline();
        let mut fds = Vec::with_capacity(1 + 3 * self.workers.len());
        fds.push((
            self.wake_rx.as_fd(),
            Interest {
                read: true,
                write: false,
            },
        ));
        for w in &self.workers {
            // A worker's pipe is read only while it owes an answer (a reply or a revoke). Its
            // other messages, `Ready` and `InitFailed`, are small enough never to block it (a
            // single write into an empty pipe), and are read with its next reply or when it
            // dies (`bury` reads first), so that neither they nor the pipe closing as the
            // worker exits wake this thread once more.
            let owes = !w.inflight.is_empty() || w.revoking;
            fds.extend(transport::interests(&*w.link, !w.eof && owes));
        }
        let ready = sys::poll_fds(&fds, deadline)?;
        drop(fds);
        if ready[0].read {
            let mut buf = [0u8; 64];
            while matches!(sys::read(self.wake_rx.as_fd(), &mut buf), Ok(n) if n > 0) {}
        }
        let mut dead = Vec::new();
        for (i, r) in ready[1..].chunks(3).enumerate() {
            if r[0].read || r[2].read {
                self.receive(i);
            }
            if r[2].read {
                dead.push(i);
            }
        }
        // Remove from the back so indexes stay valid.
        for &i in dead.iter().rev() {
            self.bury(i);
        }
        self.check_time_limits();
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.retry_launch_at;
        if self.pending.is_empty() && self.has_idle_worker() {
            // Wake when a queue behind a running task becomes worth taking back.
            for w in &self.workers {
                if !w.revoking && !w.leaving && w.inflight.len() >= 2 {
                    let d = w.head_started + QUEUE_AHEAD + Duration::from_micros(100);
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
            }
        }
        for w in &self.workers {
            if let Some(limit) = self.head_limit(w) {
                let d = w.head_started + limit;
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        deadline
    }

    /// Reads and delivers whatever worker `i` has sent.
    fn receive(&mut self, i: usize) {
        let mut msgs = Vec::new();
        let w = &mut self.workers[i];
        if w.eof {
            return;
        }
        match w.link.receive(&mut msgs) {
            Ok(eof) => w.eof = eof,
            Err(e) => {
                tracing::warn!(pid = w.link.pid(), error = %e, "pool worker sent garbage; killing it");
                w.link.kill();
                w.eof = true;
            }
        }
        let now = Instant::now();
        for msg in msgs {
            let w = &mut self.workers[i];
            match msg {
                FromWorker::Ready => {
                    w.ready = true;
                    self.init_deaths = 0;
                }
                FromWorker::InitFailed(message) => {
                    w.leaving = true;
                    tracing::error!(%message, "pool initializer failed; the pool cannot run tasks");
                    self.broken.get_or_insert(message.clone());
                    for (_, job) in w.inflight.drain(..) {
                        job.fail(TaskError::InitializerFailed {
                            message: message.clone(),
                        });
                    }
                }
                FromWorker::Revoked(ids) => {
                    w.revoking = false;
                    let mut back = Vec::new();
                    for id in ids {
                        if let Some(pos) = w.inflight.iter().position(|(x, _)| *x == id) {
                            let (_, job) = w.inflight.remove(pos).expect("position is in range");
                            if pos == 0 {
                                w.head_started = now;
                            }
                            if let Some(n) = &mut w.tasks_left {
                                *n += 1;
                            }
                            back.push(job);
                        }
                    }
                    // They never started: to the front of the queue, in their order.
                    for job in back.into_iter().rev() {
                        self.pending.push_front(job);
                    }
                }
                FromWorker::Reply { id, reply } => {
                    let Some(pos) = w.inflight.iter().position(|(x, _)| *x == id) else {
                        continue; // a reply to a task already failed (time limit)
                    };
                    let (_, job) = w.inflight.remove(pos).expect("position is in range");
                    w.answered = true;
                    if pos == 0 {
                        let took = now.saturating_duration_since(w.head_started);
                        self.avg_task = (self.avg_task * 7 + took) / 8;
                        w.head_started = now;
                    }
                    let outcome = match reply {
                        Reply::Value(bytes) => Ok(bytes),
                        Reply::Panic { message, location } => {
                            Err(TaskError::Panic { message, location })
                        }
                        Reply::Failed { decode, message } => {
                            let kind = if decode {
                                ErrorKind::Decode
                            } else {
                                ErrorKind::Encode
                            };
                            Err(TaskError::Process(Error::with_message(kind, message)))
                        }
                    };
                    finish(job.sink, outcome);
                }
            }
        }
    }

    /// Worker `i` has ended: settle its tasks and forget it.
    fn bury(&mut self, i: usize) {
        self.receive(i);
        let mut w = self.workers.remove(i);
        self.publish_pids();
        // The pidfd said it ended, so this wait is short; bounded all the same.
        let mut code = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while code.is_none() && Instant::now() < deadline {
            code = w.link.exitcode().ok().flatten();
            if code.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let how = WorkerExit::from_exitcode(code.unwrap_or(-9));
        tracing::info!(pid = w.link.pid(), %how, unanswered = w.inflight.len(), "pool worker ended");
        if w.killed_for_time || !w.ready {
            // Nothing it held had started (or its running task already failed): requeue all.
            if !w.ready && !w.leaving && self.broken.is_none() {
                self.init_deaths += 1;
                if self.init_deaths >= MAX_INIT_DEATHS {
                    self.broken = Some(format!(
                        "{MAX_INIT_DEATHS} workers in a row died while starting; the last {how}"
                    ));
                }
            }
        } else if let Some((_, job)) = w.inflight.pop_front() {
            if how == WorkerExit::Signal(libc_sigint()) {
                // Ctrl-C reached the workers while the program handles SIGINT: stop everything
                // and let every caller return.
                tracing::warn!("a pool worker was interrupted (SIGINT); terminating the pool");
                job.fail(TaskError::WorkerDied { how });
                self.state = RunState::Terminating;
                self.interrupted = true;
            } else {
                job.fail(TaskError::WorkerDied { how });
            }
        }
        for (_, job) in w.inflight.drain(..).rev() {
            self.pending.push_front(job);
        }
    }

    /// The time limit of the task worker `w` runs, unless it was already killed for it.
    fn head_limit(&self, w: &Worker) -> Option<Duration> {
        if w.killed_for_time {
            return None;
        }
        let (_, job) = w.inflight.front()?;
        job.limit.or(self.config.task_timeout)
    }

    fn check_time_limits(&mut self) {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            let over = |sup: &Supervisor| {
                let w = &sup.workers[i];
                sup.head_limit(w)
                    .filter(|limit| now >= w.head_started + *limit)
            };
            if over(self).is_none() {
                continue;
            }
            // It may have answered just now.
            self.receive(i);
            let Some(limit) = over(self) else {
                continue;
            };
            let w = &mut self.workers[i];
            tracing::warn!(
                pid = w.link.pid(),
                ?limit,
                "pool task ran out of time; killing its worker"
            );
            w.link.kill();
            w.killed_for_time = true;
            w.leaving = true;
            let (_, job) = w.inflight.pop_front().expect("checked not empty");
            job.fail(TaskError::TimeLimit { limit });
        }
    }

    /// Kills every worker and waits (boundedly) for each to end; returns them with their
    /// exit codes.
    fn kill_all(&mut self) -> Vec<(Worker, Option<i32>)> {
        for w in &self.workers {
            w.link.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ended = Vec::new();
        for mut w in std::mem::take(&mut self.workers) {
            let code = loop {
                match w.link.exitcode() {
                    Ok(Some(code)) => break Some(code),
                    Err(_) => break None,
                    Ok(None) if Instant::now() >= deadline => break None,
                    Ok(None) => {
                        let sentinel = w.link.poll_set()[2];
                        let _ = sys::wait_readable(&[sentinel], Some(deadline));
                    }
                }
            };
            ended.push((w, code));
        }
        self.publish_pids();
        ended
    }

    /// Terminate: kill every worker, fail every unfinished task.
    fn shut_down(&mut self) {
        self.state = RunState::Terminating;
        self.shared.inbox().state = RunState::Terminating;
        if self.interrupted {
            // The other workers got the same SIGINT: let them die of it (briefly), so that
            // their tasks report the interrupt rather than our kill.
            let deadline = Instant::now() + Duration::from_millis(100);
            for w in &mut self.workers {
                while matches!(w.link.exitcode(), Ok(None)) && Instant::now() < deadline {
                    let sentinel = w.link.poll_set()[2];
                    let _ = sys::wait_readable(&[sentinel], Some(deadline));
                }
            }
        }
        for w in &self.workers {
            w.link.kill();
        }
        // Replies already written still count.
        for i in 0..self.workers.len() {
            self.receive(i);
        }
        let mut unfinished: Vec<Job> = Vec::new();
        for (mut w, code) in self.kill_all() {
            let mut jobs = w.inflight.drain(..).map(|(_, job)| job);
            if code == Some(-libc_sigint()) && w.ready && !w.killed_for_time {
                // Ctrl-C ended this worker before the pool did: its task says so.
                if let Some(job) = jobs.next() {
                    job.fail(TaskError::WorkerDied {
                        how: WorkerExit::Signal(libc_sigint()),
                    });
                }
            }
            unfinished.extend(jobs);
        }
        self.take_inbox();
        unfinished.extend(self.pending.drain(..));
        for job in unfinished {
            job.fail(TaskError::Terminated);
        }
        // Submissions racing with terminate were refused by `submit`; nothing else can arrive.
    }
}

fn libc_sigint() -> i32 {
    2
}
