//! Ending the pool: kill every worker, wait for each (boundedly), and fail what is left
//! unfinished, telling tasks interrupted by Ctrl-C apart from those the pool killed.

use std::time::{Duration, Instant};

use super::time_limits::settle_timed_out;
use super::{Job, RunState, Supervisor};
use crate::pool::error::{TaskError, WorkerExit};
use crate::sys;

impl Supervisor {
    /// Kills every worker and waits (boundedly) for each to end; returns their exit codes,
    /// in the order of `self.workers`.
    pub(super) fn kill_and_reap(&mut self) -> Vec<Option<i32>> {
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
    pub(super) fn kill_all(&mut self) {
        self.kill_and_reap();
        self.workers.clear();
        self.publish_pids();
    }

    /// Terminate: kill every worker, fail every unfinished task.
    pub(super) fn shut_down(&mut self) {
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

pub(super) const SIGKILL: i32 = 9;

pub(super) fn libc_sigint() -> i32 {
    2
}
