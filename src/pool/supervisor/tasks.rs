//! Task accounting: how many tasks each worker holds (from the running average of a task's
//! duration), handing them out, and taking back the tasks queued behind one that runs long
//! when another worker is idle.

use std::time::{Duration, Instant};

use super::Supervisor;

/// How much queued work (in task time) a worker is given beyond the task it runs.
pub(crate) const QUEUE_AHEAD: Duration = Duration::from_millis(1);

impl Supervisor {
    /// How many tasks a worker may hold, from the average task duration.
    pub(super) fn depth(&self) -> usize {
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

    pub(super) fn dispatch(&mut self) {
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
                        && w.cancel.is_none()
                        && !w.over_memory
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
    pub(super) fn has_idle_worker(&self) -> bool {
        self.workers.iter().any(|w| {
            !w.leaving
                && !w.over_memory
                && w.inflight.is_empty()
                && w.tasks_left.is_none_or(|n| n > 0)
        })
    }

    /// When nothing is queued but a worker is idle, takes back the tasks waiting behind a task
    /// that has run long on another worker (they go to the idle one, as from Python's shared
    /// queue).
    pub(super) fn rebalance(&mut self) {
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
}
