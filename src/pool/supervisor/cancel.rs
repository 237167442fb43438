//! Cancelling a task on a caller's request: one still queued never runs; one running has its
//! worker killed and replaced, and fails with `TaskError::Cancelled`.
//!
//! # Only this thread decides
//! A caller cannot tell whether a task is running, finished, or about to be handed over: only
//! the supervisor can, between two waits. So a caller's cancel (of a task already taken from
//! the queue) is a request in the inbox, by the task's key, and the caller then waits for the
//! task's outcome: a value that arrived before the request was seen stands (the cancel did not
//! take effect), otherwise the outcome is `Cancelled`.
//!
//! # Never harming another task
//! A worker runs its tasks in order and may hold several, so killing it for one task could
//! kill another: one queued behind it (about to start), or the next one if the cancelled task
//! answered between the supervisor's look and the kill. So the worker is killed only when the
//! task being cancelled is the only one it holds: tasks queued behind it are first taken back
//! with a revoke (they return to the queue; a cancelled one among them is cancelled there,
//! never having started), and meanwhile the worker is given nothing new. Once it holds only
//! the one task, no other can start on it, so a kill harms nothing else: if the task answered
//! just before the kill took effect, its value is delivered (`bury` drains the reply pipe
//! first) and the worker had nothing left to start.
//!
//! A cancelled task is not retried, and its worker's death counts neither against
//! `max_worker_deaths_per_task` nor towards a broken pool: the pool killed it on purpose.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Job, Shared, Supervisor, Worker};

/// A fresh key for a cancellable task; unique for the life of the process, so a stale
/// request can never match a later task.
pub(crate) fn new_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A caller's request to cancel the task with this key.
#[derive(Clone, Copy, Debug)]
pub(super) struct CancelRequest {
    key: u64,
    /// Also if a worker holds it (else only while it waits in the pool's queue).
    running: bool,
}

/// A worker one of whose tasks is being cancelled.
#[derive(Debug)]
pub(super) struct Cancelling {
    /// The task's id on this worker.
    pub(super) id: u64,
    /// The worker was killed for it.
    pub(super) killed: bool,
}

/// What a result or future keeps to ask its pool to cancel its task: the pool is not kept
/// alive by it (a pool that is gone has completed every task already).
#[derive(Clone, Debug)]
pub(crate) struct CancelHandle {
    shared: Weak<Shared>,
}

impl CancelHandle {
    pub(super) fn new(shared: Weak<Shared>) -> Self {
        CancelHandle { shared }
    }

    /// Asks the supervisor to cancel the tasks with these `keys`: with `running`, also those
    /// a worker holds (killing it if it runs one), else only those still queued in the pool.
    /// Returns at once; the outcome of each task says what happened.
    pub(crate) fn request(&self, keys: impl IntoIterator<Item = u64>, running: bool) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut inbox = shared.inbox();
        let before = inbox.cancels.len();
        inbox
            .cancels
            .extend(keys.into_iter().map(|key| CancelRequest { key, running }));
        if inbox.cancels.len() > before {
            shared.wake(&mut inbox);
        }
    }

    /// Whether this is the pool's own thread (a callback), which must not wait for itself.
    pub(crate) fn on_pool_thread(&self) -> bool {
        self.shared.upgrade().is_some_and(|shared| {
            shared
                .thread
                .get()
                .is_some_and(|id| *id == std::thread::current().id())
        })
    }
}

fn key_of(job: &Job) -> Option<u64> {
    job.sink.key()
}

impl Supervisor {
    /// Moves every cancel request on: cancels the tasks still queued, takes back what is
    /// queued behind a task to cancel on its worker, kills a worker left holding only a
    /// task to cancel. A request stays until its task is settled (cancelled here or in
    /// `bury`) or found finished.
    pub(super) fn advance_cancels(&mut self) {
        if self.cancels.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for req in std::mem::take(&mut self.cancels) {
            if let Some(pos) = self
                .pending
                .iter()
                .position(|job| key_of(job) == Some(req.key))
            {
                let job = self.pending.remove(pos).expect("position is in range");
                cancel_job(job);
                continue;
            }
            if !req.running {
                continue;
            }
            let found = self.workers.iter().enumerate().find_map(|(i, w)| {
                w.inflight
                    .iter()
                    .position(|(_, job)| key_of(job) == Some(req.key))
                    .map(|pos| (i, pos))
            });
            let Some((i, pos)) = found else {
                continue; // finished (or never submitted): its outcome stands
            };
            if self.drive(i, pos) {
                keep.push(req);
            }
        }
        self.cancels = keep;
        // A worker whose task to cancel was answered or taken back is free again.
        for w in &mut self.workers {
            if let Some(c) = &w.cancel
                && !c.killed
                && !w.inflight.iter().any(|(id, _)| *id == c.id)
            {
                w.cancel = None;
            }
        }
    }

    /// Moves the cancel of the task at `pos` on worker `i` a step; whether it is still
    /// under way (the request is kept).
    fn drive(&mut self, i: usize, pos: usize) -> bool {
        let w = &mut self.workers[i];
        let id = w.inflight[pos].0;
        if w.timed_out.is_some() {
            // Being killed for a time limit: wait until its tasks are settled, then the
            // task is either failed (the request ends) or back in the queue.
            return true;
        }
        match &w.cancel {
            Some(c) if c.id != id || c.killed => return true, // one at a time; or dying
            _ => {}
        }
        w.cancel = Some(Cancelling { id, killed: false });
        if w.revoking {
            return true; // the answer comes first
        }
        if w.inflight.len() > 1 {
            // Take back what is queued behind the running task, the task to cancel too if it
            // is among them; what comes back goes to the queue and is settled from there.
            let ids: Vec<u64> = w.inflight.iter().skip(1).map(|(id, _)| *id).collect();
            w.link.send_revoke(&ids);
            w.revoking = true;
            return true;
        }
        // It holds this task alone: nothing else can start on it, so the kill harms no other.
        tracing::info!(
            pid = w.link.pid(),
            "cancelling a running pool task; killing its worker"
        );
        w.link.kill();
        w.leaving = true;
        w.cancel = Some(Cancelling { id, killed: true });
        true
    }
}

/// Settles, in `bury`, the task being cancelled on the dead worker `w` (with its reply pipe
/// drained): if it is still unanswered it fails with `Cancelled` and is taken out of
/// `inflight`; returns whether it was the one running, in which case the worker's death
/// belongs to it and to no other task. A task killed for its time limit is left to that.
pub(super) fn settle_cancelled(w: &mut Worker) -> bool {
    let Some(c) = w.cancel.take() else {
        return false;
    };
    let Some(pos) = w.inflight.iter().position(|(id, _)| *id == c.id) else {
        return false; // it answered first: its value stands
    };
    if pos == 0 && w.timed_out.is_some() {
        return false;
    }
    let (_, job) = w.inflight.remove(pos).expect("position is in range");
    cancel_job(job);
    pos == 0 && w.ready
}

fn cancel_job(job: Job) {
    super::finish_cancelled(job.sink);
}
