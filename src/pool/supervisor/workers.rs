//! Worker bookkeeping: starting workers up to the pool's size, replacing those that end
//! (with a growing pause while starts fail or workers keep dying idle), and settling the tasks
//! of a worker that ended.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::shutdown::libc_sigint;
use super::time_limits::settle_timed_out;
use super::{Job, RunState, Supervisor, Worker};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::error::{TaskError, WorkerExit};
use crate::pool::worker::with_source;

/// Workers in a row that may die during initialization before the pool gives up (deaths by
/// SIGKILL, which come from outside, do not count).
pub(super) const MAX_INIT_DEATHS: u32 = 3;

/// How long worker starts may keep failing, with no worker alive, before the queued tasks
/// fail. A start fails for passing reasons (out of descriptors or processes for a moment,
/// memory pressure): a short dip must not fail every queued task, but a pool that cannot
/// start a worker must not leave its callers waiting for ever either.
pub(super) const LAUNCH_GIVE_UP: Duration = Duration::from_secs(5);

/// The first wait before starting workers again; it doubles with each failure in a row.
pub(super) const LAUNCH_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest wait between two attempts.
pub(super) const LAUNCH_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Idle deaths in a row (see `Supervisor::idle_deaths`) after which replacements are delayed
/// as failed starts are.
pub(super) const IDLE_DEATHS_BEFORE_BACKOFF: u32 = 3;

/// The wait before the next attempt after `failures` failures in a row.
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (LAUNCH_BACKOFF_MIN * 2u32.pow(doublings)).min(LAUNCH_BACKOFF_MAX)
}

impl Supervisor {
    pub(super) fn launch_one(&mut self) -> Result<()> {
        let mut spec = self.config.spec.clone();
        // The lowest slot no running worker holds: a replacement takes its predecessor's.
        let slot = (0..)
            .find(|i| !self.workers.iter().any(|w| w.slot == *i && !w.leaving))
            .expect("some slot is free");
        spec.slot = slot;
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
            cancel: None,
            slot,
            over_memory: false,
            memory_floor: None,
        });
        self.publish_pids();
        Ok(())
    }

    /// Makes the workers' pids visible to callers ([`Core::worker_pids`]); called whenever
    /// a worker is added or removed.
    pub(super) fn publish_pids(&self) {
        let pids = self.workers.iter().map(|w| w.link.pid()).collect();
        *self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()) = pids;
    }

    /// Starts workers until the pool has its size.
    pub(super) fn fill(&mut self) -> Result<()> {
        while self.live_workers() < self.config.processes {
            self.launch_one()?;
        }
        Ok(())
    }

    pub(super) fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.leaving).count()
    }

    pub(super) fn replace_workers(&mut self) {
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
    pub(super) fn fail_if_no_worker_can_start(&mut self, now: Instant) {
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

    /// Worker `i` has ended: settle its tasks and forget it.
    pub(super) fn bury(&mut self, i: usize) {
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
        // SIGKILL is never a worker's own failure to start (a panic exits, an abort or a
        // crash is another signal): it comes from outside (a user, the OOM killer). A worker
        // killed while starting says nothing about the setup, so it is not counted towards
        // giving up, only towards slowing replacements down (as an idle death).
        let killed_starting = !w.ready && how == WorkerExit::Signal(9);
        let idle =
            (w.ready && !w.answered || killed_starting) && !w.leaving && w.inflight.is_empty();
        // A task being cancelled fails with `Cancelled`; if it was the one running, the death
        // is the cancel's and no other task's.
        let cancelled_running = super::cancel::settle_cancelled(&mut w);
        let mut died = None;
        if w.timed_out.is_some() {
            settle_timed_out(&mut w, how);
        } else if cancelled_running {
            // Nothing behind it had started: the cancel killed it holding that task alone.
        } else if !w.ready {
            // It died in its initializer: nothing it held had started.
            if !w.leaving && !killed_starting && self.broken.is_none() {
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
                died = Some(job);
            }
        }
        // The rest never started: the worker runs its tasks in order, answering each first.
        for (_, job) in w.inflight.drain(..).rev() {
            self.pending.push_front(job);
        }
        // After them, so that a retried task goes first: it is the oldest.
        if let Some(job) = died {
            let error = match self.config.memory_limit {
                Some(limit) if how.is_memory_abort() => TaskError::MemoryLimitExceeded { limit },
                _ => TaskError::WorkerDied { how },
            };
            self.retry_or_fail(job, error, true);
        }
        self.count_idle_death(idle, how);
    }

    /// A run of `job` failed with `error` (`died`: its worker died): queues it to run again
    /// if it has retries left and has not killed too many workers, else fails it, with
    /// [`TaskError::RetriesExhausted`] if it ran more than once.
    pub(super) fn retry_or_fail(&mut self, mut job: Job, error: TaskError, died: bool) {
        job.failed_runs += 1;
        if died {
            job.deaths += 1;
        }
        let deaths_left = self.config.max_deaths.is_none_or(|max| job.deaths < max);
        if job.failed_runs <= self.config.retries
            && deaths_left
            && self.state != RunState::Terminating
            && self.broken.is_none()
        {
            tracing::info!(
                failed_runs = job.failed_runs,
                deaths = job.deaths,
                cause = %error,
                "retrying a pool task"
            );
            self.pending.push_front(job);
        } else if job.failed_runs > 1 {
            let attempts = job.failed_runs;
            job.fail(TaskError::RetriesExhausted {
                attempts,
                last: Box::new(error),
            });
        } else {
            job.fail(error);
        }
    }

    /// Delays replacements while workers keep dying with nothing to show for it (after their
    /// initializer, without a task answered or held): a worker whose initializer leaves
    /// something that ends the process soon after would otherwise be replaced in a tight
    /// loop for as long as the pool lives, with no task failing to say so. A death that
    /// settles a task needs no such brake: each fails a task, so the loop ends with the
    /// tasks.
    pub(super) fn count_idle_death(&mut self, idle: bool, how: WorkerExit) {
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
}
