//! The loop the supervisor thread runs: take what callers submitted, start and feed workers,
//! then sleep in one `poll` on the wake-up pipe and every worker's descriptors until
//! something happens or the next deadline passes, and handle what woke it.

use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::workers::LAUNCH_GIVE_UP;
use super::{RunState, Supervisor, finish};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::error::TaskError;
use crate::pool::transport::{self, FromWorker, Reply};
use crate::sys::{self, Interest};

impl Supervisor {
    pub(super) fn run(&mut self) {
        loop {
            self.take_inbox();
            if self.state == RunState::Terminating {
                self.shut_down();
                return;
            }
            // Before `dispatch`: a task being cancelled must not be handed out again.
            self.advance_cancels();
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
                // Grown past `max_memory_per_child` and now without tasks: let it go; the
                // next round replaces it.
                if w.over_memory && w.inflight.is_empty() && !w.leaving {
                    w.leaving = true;
                    w.link.send_exit();
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

    pub(super) fn take_inbox(&mut self) {
        let mut inbox = self.shared.inbox();
        self.pending.extend(inbox.jobs.drain(..));
        if inbox.state != RunState::Running && self.state != RunState::Terminating {
            self.state = inbox.state;
        }
        let cancel = std::mem::take(&mut inbox.cancel_queued);
        self.cancels.append(&mut inbox.cancels);
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

    pub(super) fn wait_and_handle(&mut self) -> Result<()> {
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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
    pub(super) fn receive(&mut self, i: usize) {
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
                    if let Some(max) = self.config.max_memory {
                        w.memory_floor = Some(memory_floor(w.link.pid(), max));
                    }
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
                        Reply::Panic { message, location } if self.config.retry_panics => {
                            let error = TaskError::Panic { message, location };
                            self.retry_or_fail(job, error, false);
                            continue;
                        }
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
                    check_memory(w);
                }
            }
        }
    }
}

/// What a worker's resident size is compared with after each task: the limit, or its size
/// after starting if that is higher (a forked copy of a large parent, celery#4125), so that it
/// is not replaced after every task for what it inherited.
fn memory_floor(pid: u32, max: u64) -> u64 {
    match sys::resident_bytes(pid) {
        Ok(rss) if rss > max => {
            tracing::warn!(
                pid,
                rss,
                max_memory_per_child = max,
                "a pool worker starts above max_memory_per_child (a forked copy of a large \
                 parent?); it is replaced only once it grows past its starting size"
            );
            rss
        }
        _ => max,
    }
}

/// After a task: a worker grown past `max_memory_per_child` takes no more tasks, and the tasks
/// queued on it that have not started come back (a revoke); it exits once it holds none.
fn check_memory(w: &mut super::Worker) {
    let Some(floor) = w.memory_floor else { return };
    if w.over_memory || w.leaving {
        return;
    }
    let Ok(rss) = sys::resident_bytes(w.link.pid()) else {
        return;
    };
    if rss <= floor {
        return;
    }
    tracing::info!(
        pid = w.link.pid(),
        rss,
        limit = floor,
        "pool worker over max_memory_per_child; replacing it"
    );
    w.over_memory = true;
    if !w.inflight.is_empty() && !w.revoking {
        let ids: Vec<u64> = w.inflight.iter().map(|(id, _)| *id).collect();
        w.link.send_revoke(&ids);
        w.revoking = true;
    }
}
