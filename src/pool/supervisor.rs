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
use super::worker::with_source;
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
    /// How much work a worker is given ahead ([`QUEUE_AHEAD`], plus a remote link's round
    /// trip: a task that looks slow only because its reply travels far is no reason to send
    /// tasks one at a time).
    pub(crate) queue_ahead: Duration,
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
        let initial_avg = 2 * config.queue_ahead;
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
                    avg_task: initial_avg,
                    init_deaths: 0,
                    idle_deaths: 0,
                    retry_launch_at: None,
                    launch_failures: 0,
                    launch_failing_since: None,
                    launch_error: None,
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
                    ErrorKind::Io,
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
}

/// A worker killed for its running task's time limit.
struct TimedOut {
    /// The task that ran out of time.
    id: u64,
    limit: Duration,
    /// When its tasks are settled if the worker has not been seen to die by then.
    settle_by: Instant,
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
}

/// Workers in a row that may die during initialization before the pool gives up.
const MAX_INIT_DEATHS: u32 = 3;

/// How long worker starts may keep failing, with no worker alive, before the queued tasks
/// fail. A start fails for passing reasons (out of descriptors or processes for a moment,
/// memory pressure): a short dip must not fail every queued task, but a pool that cannot
/// start a worker must not leave its callers waiting for ever either.
const LAUNCH_GIVE_UP: Duration = Duration::from_secs(5);

/// The first wait before starting workers again; it doubles with each failure in a row.
const LAUNCH_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest wait between two attempts.
const LAUNCH_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Idle deaths in a row (see `Supervisor::idle_deaths`) after which replacements are delayed
/// as failed starts are.
const IDLE_DEATHS_BEFORE_BACKOFF: u32 = 3;

/// How long after killing a worker for a time limit its tasks may wait to be settled. Its
/// death normally comes within milliseconds, and settling then is exact (see
/// `settle_timed_out`); this bounds the wait should the kernel take longer to end it.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// The wait before the next attempt after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (LAUNCH_BACKOFF_MIN * 2u32.pow(doublings)).min(LAUNCH_BACKOFF_MAX)
}

/// How much queued work (in task time) a worker is given beyond the task it runs.
pub(crate) const QUEUE_AHEAD: Duration = Duration::from_millis(1);

impl Supervisor {
    fn launch_one(&mut self) -> Result<()> {
        let mut spec = self.config.spec.clone();
        spec.name = format!("{}-{}", spec.name, self.next_name);
        self.next_name += 1;
        let link = self.launcher.launch(&spec)?;
        self.launch_failures = 0;
        self.launch_failing_since = None;
        self.launch_error = None;
        self.workers.push(Worker {
            link,
            inflight: VecDeque::new(),
            head_started: Instant::now(),
            tasks_left: self.config.spec.max_tasks,
            ready: false,
            leaving: false,
            timed_out: None,
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
        let now = Instant::now();
        // Past the give-up, tasks fail unless a worker starts: try at once for new ones
        // rather than fail them on the strength of an earlier attempt.
        let gave_up = self.live_workers() == 0
            && self
                .launch_failing_since
                .is_some_and(|since| now.saturating_duration_since(since) >= LAUNCH_GIVE_UP);
        if self.retry_launch_at.is_none_or(|t| now >= t) || (gave_up && !self.pending.is_empty()) {
            self.retry_launch_at = None;
            if let Err(e) = self.fill() {
                // Retried with a growing pause: a start fails for passing reasons more often
                // than for lasting ones, and the tasks wait meanwhile.
                self.launch_failures += 1;
                let since = *self.launch_failing_since.get_or_insert(now);
                let pause = backoff(self.launch_failures);
                let message = with_source(&e);
                tracing::warn!(
                    error = %message,
                    failures = self.launch_failures,
                    failing_for = ?now.saturating_duration_since(since),
                    retry_in = ?pause,
                    "could not start a pool worker"
                );
                self.launch_error = Some(message);
                self.retry_launch_at = Some(now + pause);
            }
        }
        self.fail_if_no_worker_can_start(now);
    }

    /// Fails the queued tasks when no worker is alive to run them and starts have failed
    /// for [`LAUNCH_GIVE_UP`]. Starts are still retried, so the pool runs tasks again once
    /// workers can start; until then each task submitted fails at once.
    fn fail_if_no_worker_can_start(&mut self, now: Instant) {
        let Some(since) = self.launch_failing_since else {
            return;
        };
        if self.live_workers() > 0 || now.saturating_duration_since(since) < LAUNCH_GIVE_UP {
            return;
        }
        let message = format!(
            "no pool worker could be started for {:?}; the last attempt: {}",
            now.saturating_duration_since(since),
            self.launch_error.as_deref().unwrap_or("unknown error")
        );
        for job in self.pending.drain(..) {
            job.fail(TaskError::Process(Error::with_message(
                ErrorKind::Io,
                message.clone(),
            )));
        }
    }

    /// How many tasks a worker may hold, from the average task duration.
    fn depth(&self) -> usize {
        let avg = self.avg_task.as_nanos().max(1);
        let ahead = (self.config.queue_ahead.as_nanos() / avg) as usize;
        if ahead == 0 {
            // Slow tasks: one at a time, so that no task waits behind a slow one while another
            // worker is idle.
            return 1;
        }
        if self.config.task_timeout.is_some() {
            // A queued task's clock starts only when the one before it replies: keep it short.
            return ahead.clamp(1, 8);
        }
        // A far worker (a remote link's round trip widens the window) may hold more: its
        // replies come back in batches a round trip apart.
        let windows = (self.config.queue_ahead.as_nanos() / QUEUE_AHEAD.as_nanos()).max(1);
        ahead.clamp(1, 32 * windows as usize) + 1
    }

    fn dispatch(&mut self) {
        if self.broken.is_some() || self.pending.is_empty() {
            return;
        }
        let depth = self.depth();
        let queue_ahead = self.config.queue_ahead;
        let now = Instant::now();
        // Fill the emptiest workers first, a task at a time, so that a short burst spreads.
        // Nothing is queued behind a task that has already run long: it may run much longer.
        loop {
            let target = self
                .workers
                .iter_mut()
                .filter(|w| {
                    let slow_head = !w.inflight.is_empty()
                        && now.saturating_duration_since(w.head_started) > queue_ahead;
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
                || now.saturating_duration_since(w.head_started) < self.config.queue_ahead
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
        if let Some(since) = self.launch_failing_since
            && !self.pending.is_empty()
        {
            let d = since + LAUNCH_GIVE_UP;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        if self.pending.is_empty() && self.has_idle_worker() {
            // Wake when a queue behind a running task becomes worth taking back.
            for w in &self.workers {
                if !w.revoking && !w.leaving && w.inflight.len() >= 2 {
                    let d = w.head_started + self.config.queue_ahead + Duration::from_micros(100);
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
            }
        }
        for w in &self.workers {
            let d = match (&w.timed_out, self.head_limit(w)) {
                (Some(t), _) => t.settle_by,
                (None, Some(limit)) => w.head_started + limit,
                (None, None) => continue,
            };
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
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
                    // A task handed over during the initializer starts only now.
                    w.head_started = now;
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
        // Everything it wrote before it died is in its pipe now.
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
        let idle = w.ready && !w.leaving && !w.answered && w.inflight.is_empty();
        if w.timed_out.is_some() {
            settle_timed_out(&mut w, how);
        } else if !w.ready {
            // It died in its initializer: nothing it held had started.
            if !w.leaving && self.broken.is_none() {
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
        // The rest never started: the worker runs its tasks in order, answering each first.
        for (_, job) in w.inflight.drain(..).rev() {
            self.pending.push_front(job);
        }
        self.count_idle_death(idle, how);
    }

    /// Delays replacements while workers keep dying with nothing to show for it (after their
    /// initializer, without a task answered or held): a worker whose initializer leaves
    /// something that ends the process soon after would otherwise be replaced in a tight
    /// loop for as long as the pool lives, with no task failing to say so. A death that
    /// settles a task needs no such brake: each fails a task, so the loop ends with the
    /// tasks.
    fn count_idle_death(&mut self, idle: bool, how: WorkerExit) {
        if !idle {
            self.idle_deaths = 0;
            return;
        }
        self.idle_deaths += 1;
        if self.idle_deaths >= IDLE_DEATHS_BEFORE_BACKOFF {
            let pause = backoff(self.idle_deaths + 1 - IDLE_DEATHS_BEFORE_BACKOFF);
            tracing::warn!(
                in_a_row = self.idle_deaths,
                last = %how,
                retry_in = ?pause,
                "pool workers keep dying before taking any task; slowing their replacement"
            );
            let at = Instant::now() + pause;
            self.retry_launch_at = Some(self.retry_launch_at.map_or(at, |t| t.max(at)));
        }
    }

    /// The time limit of the task worker `w` runs: none while its initializer runs (the task
    /// has not started), nor once it was killed for it.
    fn head_limit(&self, w: &Worker) -> Option<Duration> {
        if w.timed_out.is_some() || !w.ready {
            return None;
        }
        let (_, job) = w.inflight.front()?;
        job.limit.or(self.config.task_timeout)
    }

    /// Kills the workers whose running task is over its time limit, and settles the tasks of
    /// those killed a [`KILL_GRACE`] ago that have not been seen to die.
    fn check_time_limits(&mut self) {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            if let Some(t) = &self.workers[i].timed_out {
                if now >= t.settle_by {
                    self.receive(i);
                    let w = &mut self.workers[i];
                    tracing::warn!(
                        pid = w.link.pid(),
                        "a pool worker killed for a time limit has not ended yet; settling its tasks"
                    );
                    settle_timed_out(w, WorkerExit::Signal(SIGKILL));
                    for (_, job) in w.inflight.drain(..).rev() {
                        self.pending.push_front(job);
                    }
                }
                continue;
            }
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
            w.leaving = true;
            // Not failed yet: it may have answered between the look above and the kill, and
            // then started the next task. Which of its tasks ran is known only once it is
            // dead and its pipe drained (`settle_timed_out`).
            let (id, _) = w.inflight.front().expect("a limit implies a running task");
            w.timed_out = Some(TimedOut {
                id: *id,
                limit,
                settle_by: now + KILL_GRACE,
            });
        }
    }

    /// Kills every worker and waits (boundedly) for each to end; returns their exit codes,
    /// in the order of `self.workers`.
    fn kill_and_reap(&mut self) -> Vec<Option<i32>> {
        for w in &self.workers {
            w.link.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut codes = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
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
            codes.push(code);
        }
        codes
    }

    /// Kills every worker and waits (boundedly) for each to end.
    fn kill_all(&mut self) {
        self.kill_and_reap();
        self.workers.clear();
        self.publish_pids();
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
        let codes = self.kill_and_reap();
        // Replies written before they died still count.
        for i in 0..self.workers.len() {
            self.receive(i);
        }
        let mut unfinished: Vec<Job> = Vec::new();
        for (mut w, code) in std::mem::take(&mut self.workers).into_iter().zip(codes) {
            if w.timed_out.is_some() {
                settle_timed_out(&mut w, WorkerExit::from_exitcode(code.unwrap_or(-SIGKILL)));
            } else if code == Some(-libc_sigint()) && w.ready {
                // Ctrl-C ended this worker before the pool did: its task says so.
                if let Some((_, job)) = w.inflight.pop_front() {
                    job.fail(TaskError::WorkerDied {
                        how: WorkerExit::Signal(libc_sigint()),
                    });
                }
            }
            unfinished.extend(w.inflight.drain(..).map(|(_, job)| job));
        }
        self.publish_pids();
        self.take_inbox();
        unfinished.extend(self.pending.drain(..));
        for job in unfinished {
            job.fail(TaskError::Terminated);
        }
        // Submissions racing with terminate were refused by `submit`; nothing else can arrive.
    }
}

/// Settles the tasks of a worker killed for a time limit, once it is dead or the kill had
/// [`KILL_GRACE`] to take effect, with its pipe drained: every reply it wrote has been
/// delivered, so `inflight` holds only unanswered tasks, oldest first.
///
/// The worker runs its tasks in order and writes each reply before it starts the next. So if
/// the task that ran out of time is still unanswered, it is the one that was running: it
/// fails with `TimeLimit`, and nothing behind it started. If it answered (between the pool's
/// last look and the kill), its reply was honoured, and the oldest unanswered task may have
/// started before the kill took effect: it fails with how the worker ended (it must not run
/// again, as a requeued task would), and never with `TimeLimit`, whose limit it did not
/// reach. In both cases the tasks left in `inflight` never started; the caller requeues them.
///
/// Why a grace instead of waiting for the death alone: a SIGKILLed process runs no more user
/// code, so once the kill has taken effect no reply can start being written, and a reply not
/// complete in the pipe by then never will be; the kernel may still take long to tear the
/// process down (a huge address space, an uninterruptible wait), and callers must not wait for
/// that.
fn settle_timed_out(w: &mut Worker, how: WorkerExit) {
    let Some(t) = w.timed_out.take() else {
        return;
    };
    match w.inflight.front() {
        Some((id, _)) if *id == t.id => {
            let (_, job) = w.inflight.pop_front().expect("front exists");
            job.fail(TaskError::TimeLimit { limit: t.limit });
        }
        Some(_) => {
            tracing::warn!(
                pid = w.link.pid(),
                "a task answered just before its worker was killed for its time limit; the \
                 next task may have started and fails with the worker's death"
            );
            let (_, job) = w.inflight.pop_front().expect("front exists");
            job.fail(TaskError::WorkerDied { how });
        }
        None => {}
    }
}

const SIGKILL: i32 = 9;

fn libc_sigint() -> i32 {
    2
}

#[cfg(test)]
mod tests {
    //! The supervisor against scripted workers ([`MockLink`]), for the orderings a real process
    //! cannot be made to produce on demand: a reply written between the time-limit check and
    //! the kill, a worker that outlives its SIGKILL, workers that die as soon as they are
    //! ready.

    use std::io;
    use std::os::fd::BorrowedFd;
    use std::sync::mpsc;

    use super::*;

    /// What a scripted worker does with a task, by its payload's first byte (the second is
    /// the task's tag, which stays the same when the task is requeued).
    const QUICK: u8 = 0;
    /// Runs until killed, and writes its reply just before the kill takes effect; then the
    /// next queued task starts and is killed running.
    const RACES_THE_KILL: u8 = 1;
    /// Runs until killed, never answers.
    const SLOW: u8 = 2;
    /// Runs until killed, and its worker survives the first kill (as in an uninterruptible
    /// wait), dying only at the second.
    const UNDYING: u8 = 3;

    #[derive(Default)]
    struct World {
        /// Tags of the tasks started, in order, over every worker.
        started: Vec<u8>,
        launches: usize,
        /// Workers die as soon as they said `Ready`.
        die_when_ready: bool,
    }

    struct Script {
        queue: VecDeque<(u64, Vec<u8>)>,
        running: Option<(u64, Vec<u8>)>,
        out: Vec<FromWorker>,
        dead: bool,
        kills: u32,
    }

    struct MockLink {
        pid: u32,
        world: Arc<Mutex<World>>,
        script: Mutex<Script>,
        reply: (OwnedFd, OwnedFd),
        task: (OwnedFd, OwnedFd),
        death: (OwnedFd, OwnedFd),
    }

    impl MockLink {
        fn lock(&self) -> MutexGuard<'_, Script> {
            self.script.lock().unwrap()
        }

        /// Runs the queued tasks in order as far as they go, as a worker does.
        fn advance(&self, s: &mut Script) {
            while !s.dead {
                if s.running.is_none() {
                    let Some(task) = s.queue.pop_front() else {
                        break;
                    };
                    self.world.lock().unwrap().started.push(task.1[1]);
                    s.running = Some(task);
                }
                let (id, payload) = s.running.as_ref().expect("set above");
                if payload[0] != QUICK {
                    break;
                }
                s.out.push(FromWorker::Reply {
                    id: *id,
                    reply: Reply::Value(payload.clone()),
                });
                s.running = None;
            }
            if !s.out.is_empty() {
                let _ = sys::write_some(self.reply.1.as_fd(), &[1]);
            }
        }
    }

    impl Link for MockLink {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn send_task(&mut self, id: u64, _entry: i64, payload: &[u8]) {
            let mut s = self.script.lock().unwrap();
            s.queue.push_back((id, payload.to_vec()));
            self.advance(&mut s);
        }
        fn send_exit(&mut self) {}
        fn send_revoke(&mut self, _ids: &[u64]) {}
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn wants_write(&self) -> bool {
            false
        }
        fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
            [
                self.reply.0.as_fd(),
                self.task.1.as_fd(),
                self.death.0.as_fd(),
            ]
        }
        fn receive(&mut self, out: &mut Vec<FromWorker>) -> Result<bool> {
            let mut buf = [0u8; 64];
            while matches!(sys::read(self.reply.0.as_fd(), &mut buf), Ok(n) if n > 0) {}
            out.append(&mut self.lock().out);
            Ok(false)
        }
        fn exitcode(&mut self) -> io::Result<Option<i32>> {
            Ok(self.lock().dead.then_some(-SIGKILL))
        }
        fn kill(&self) {
            let mut s = self.lock();
            s.kills += 1;
            if s.dead {
                return;
            }
            match s.running.as_ref().map(|(_, p)| p[0]) {
                Some(UNDYING) if s.kills == 1 => return,
                Some(RACES_THE_KILL) => {
                    let (id, payload) = s.running.take().expect("matched above");
                    s.out.push(FromWorker::Reply {
                        id,
                        reply: Reply::Value(payload),
                    });
                    // It went on to the next task before the signal took effect.
                    if let Some(next) = s.queue.pop_front() {
                        self.world.lock().unwrap().started.push(next.1[1]);
                        s.running = Some(next);
                    }
                }
                _ => {}
            }
            s.dead = true;
            let _ = sys::write_some(self.death.1.as_fd(), &[1]);
            if !s.out.is_empty() {
                let _ = sys::write_some(self.reply.1.as_fd(), &[1]);
            }
        }
    }

    struct MockLauncher(Arc<Mutex<World>>);

    impl Launcher for MockLauncher {
        fn launch(&self, _spec: &WorkerSpec) -> Result<Box<dyn Link>> {
            let (pid, die) = {
                let mut world = self.0.lock().unwrap();
                world.launches += 1;
                (world.launches as u32, world.die_when_ready)
            };
            let link = MockLink {
                pid,
                world: Arc::clone(&self.0),
                script: Mutex::new(Script {
                    queue: VecDeque::new(),
                    running: None,
                    out: vec![FromWorker::Ready],
                    dead: die,
                    kills: 0,
                }),
                reply: sys::pipe_nonblocking(true, true)?,
                task: sys::pipe_nonblocking(true, true)?,
                death: sys::pipe_nonblocking(true, true)?,
            };
            let _ = sys::write_some(link.reply.1.as_fd(), &[1]);
            if die {
                let _ = sys::write_some(link.death.1.as_fd(), &[1]);
            }
            Ok(Box::new(link))
        }
    }

    type Outcome = (u8, std::result::Result<Vec<u8>, TaskError>);

    struct Probe {
        tag: u8,
        tx: mpsc::Sender<Outcome>,
    }

    impl Sink for Probe {
        fn finish(self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
            let _ = self.tx.send((self.tag, outcome));
        }
    }

    fn job(kind: u8, tag: u8, tx: &mpsc::Sender<Outcome>) -> Job {
        Job {
            entry: 0,
            payload: vec![kind, tag],
            sink: Box::new(Probe {
                tag,
                tx: tx.clone(),
            }),
            limit: None,
        }
    }

    fn start(world: &Arc<Mutex<World>>, limit: Option<Duration>) -> Core {
        let config = Config {
            queue_ahead: QUEUE_AHEAD,
            processes: 1,
            spec: WorkerSpec {
                name: "Mock".to_owned(),
                method: None,
                initializer: None,
                max_tasks: None,
            },
            task_timeout: limit,
        };
        Core::start(config, Box::new(MockLauncher(Arc::clone(world)))).unwrap()
    }

    /// Collects `n` outcomes by tag (bounded).
    fn outcomes(rx: &mpsc::Receiver<Outcome>, n: usize) -> Vec<Outcome> {
        let mut got: Vec<Outcome> = (0..n)
            .map_while(|_| rx.recv_timeout(Duration::from_secs(10)).ok())
            .collect();
        got.sort_by_key(|(tag, _)| *tag);
        got
    }

    /// Quick tasks first: the supervisor learns to queue several per worker.
    fn warm_up(core: &Core, tx: &mpsc::Sender<Outcome>, rx: &mpsc::Receiver<Outcome>) {
        for tag in 0..50 {
            assert!(core.submit(job(QUICK, tag, tx)).is_ok());
            assert!(matches!(outcomes(rx, 1)[..], [(_, Ok(_))]));
        }
    }

    fn started_once(world: &Arc<Mutex<World>>, tags: &[u8]) {
        let started = &world.lock().unwrap().started;
        for tag in tags {
            let n = started.iter().filter(|t| *t == tag).count();
            assert!(n <= 1, "task {tag} started {n} times: {started:?}");
        }
    }

    #[test]
    fn a_reply_that_beats_the_time_limit_kill_is_honoured_and_nothing_runs_twice() {
        let world = Arc::new(Mutex::new(World::default()));
        let core = start(&world, Some(Duration::from_millis(100)));
        let (tx, rx) = mpsc::channel();
        warm_up(&core, &tx, &rx);
        let batch = vec![
            job(RACES_THE_KILL, 100, &tx),
            job(SLOW, 101, &tx),
            job(QUICK, 102, &tx),
        ];
        assert!(core.submit_all(batch).is_ok());
        let got = outcomes(&rx, 3);
        started_once(&world, &[100, 101, 102]);
        assert_eq!(got.len(), 3, "{got:?}");
        // Its reply came before the kill took effect: it counts.
        assert!(
            matches!(&got[0], (100, Ok(v)) if v == &[RACES_THE_KILL, 100]),
            "{got:?}"
        );
        // The next task had started when the kill landed: it fails, and is not run again.
        assert!(
            matches!(
                got[1],
                (
                    101,
                    Err(TaskError::WorkerDied {
                        how: WorkerExit::Signal(SIGKILL)
                    })
                )
            ),
            "{got:?}"
        );
        // The one behind it never started, and ran on the replacement.
        assert!(matches!(got[2], (102, Ok(_))), "{got:?}");
    }

    #[test]
    fn a_task_over_its_limit_fails_alone_and_those_behind_it_run_once() {
        let world = Arc::new(Mutex::new(World::default()));
        let core = start(&world, Some(Duration::from_millis(100)));
        let (tx, rx) = mpsc::channel();
        warm_up(&core, &tx, &rx);
        let batch = vec![
            job(SLOW, 100, &tx),
            job(QUICK, 101, &tx),
            job(QUICK, 102, &tx),
        ];
        assert!(core.submit_all(batch).is_ok());
        let got = outcomes(&rx, 3);
        started_once(&world, &[100, 101, 102]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            matches!(got[0], (100, Err(TaskError::TimeLimit { limit })) if limit == Duration::from_millis(100)),
            "{got:?}"
        );
        assert!(matches!(got[1], (101, Ok(_))), "{got:?}");
        assert!(matches!(got[2], (102, Ok(_))), "{got:?}");
    }

    #[test]
    fn a_worker_that_outlives_its_kill_does_not_hold_its_tasks() {
        let world = Arc::new(Mutex::new(World::default()));
        let core = start(&world, Some(Duration::from_millis(100)));
        let (tx, rx) = mpsc::channel();
        warm_up(&core, &tx, &rx);
        let t0 = Instant::now();
        assert!(
            core.submit_all(vec![job(UNDYING, 100, &tx), job(QUICK, 101, &tx)])
                .is_ok()
        );
        let got = outcomes(&rx, 2);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(got[0], (100, Err(TaskError::TimeLimit { .. }))),
            "{got:?}"
        );
        assert!(matches!(got[1], (101, Ok(_))), "{got:?}");
        // Settled after the grace, not at the worker's death (which comes with the pool's).
        assert!(t0.elapsed() >= KILL_GRACE, "{:?}", t0.elapsed());
        started_once(&world, &[100, 101]);
        drop(core);
    }

    #[test]
    fn workers_that_die_idle_are_replaced_ever_more_slowly() {
        // Every worker dies as soon as it is ready, with no task to fail.
        let world = Arc::new(Mutex::new(World {
            die_when_ready: true,
            ..World::default()
        }));
        let core = start(&world, None);
        std::thread::sleep(Duration::from_secs(1));
        // Without a brake this is thousands (a replacement per loop); with it, about ten.
        let launches = world.lock().unwrap().launches;
        assert!(launches < 40, "{launches} launches in a second");
        // A task submitted meanwhile still ends (its worker dies under it).
        let (tx, rx) = mpsc::channel();
        assert!(core.submit(job(QUICK, 1, &tx)).is_ok());
        let got = outcomes(&rx, 1);
        assert!(
            matches!(
                got[..],
                [(1, Ok(_)) | (1, Err(TaskError::WorkerDied { .. }))]
            ),
            "{got:?}"
        );
        drop(core);
    }
}
