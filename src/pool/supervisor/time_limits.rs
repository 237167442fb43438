//! Time limits: killing the worker whose running task is over its limit, and settling its
//! tasks once it is dead (or once the kill had time to take effect).

use std::time::{Duration, Instant};

use super::shutdown::SIGKILL;
use super::{Supervisor, Worker};
use crate::pool::error::{TaskError, WorkerExit};

/// A worker killed for its running task's time limit.
pub(super) struct TimedOut {
    /// The task that ran out of time.
    pub(super) id: u64,
    pub(super) limit: Duration,
    /// When its tasks are settled if the worker has not been seen to die by then.
    pub(super) settle_by: Instant,
}

/// How long after killing a worker for a time limit its tasks may wait to be settled. Its
/// death normally comes within milliseconds, and settling then is exact (see
/// `settle_timed_out`); this bounds the wait should the kernel take longer to end it.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(1);

impl Supervisor {
    /// The time limit of the task worker `w` runs: none while its initializer runs (the task
    /// has not started), nor once it was killed for it.
    pub(super) fn head_limit(&self, w: &Worker) -> Option<Duration> {
        if w.timed_out.is_some() || !w.ready {
            return None;
        }
        let (_, job) = w.inflight.front()?;
        job.limit.or(self.config.task_timeout)
    }

    /// Kills the workers whose running task is over its time limit, and settles the tasks of
    /// those killed a [`KILL_GRACE`] ago that have not been seen to die.
    pub(super) fn check_time_limits(&mut self) {
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
pub(super) fn settle_timed_out(w: &mut Worker, how: WorkerExit) {
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
