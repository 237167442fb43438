//! The callers' side: [`Core`], the handle that starts the supervisor thread, puts tasks in
//! its inbox and wakes it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use super::{Config, Inbox, Job, RunState, Shared, Supervisor};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::transport::Launcher;
use crate::sys;

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
                cancels: Vec::new(),
            }),
            wake_tx,
            pids: Mutex::new(Vec::new()),
            thread: std::sync::OnceLock::new(),
        });
        let (started_tx, started_rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let initial_avg = 2 * config.queue_ahead;
        // Workers are forked by this long-lived thread: a daemonic child is killed when the
        // thread that forked it ends, so they must not be forked by a caller's thread.
        let thread = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || {
                let _ = thread_shared.thread.set(std::thread::current().id());
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
                    cancels: Vec::new(),
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

    /// A handle for cancelling this pool's tasks ([`CancelHandle`](super::CancelHandle)).
    pub(crate) fn cancel_handle(&self) -> super::CancelHandle {
        super::CancelHandle::new(Arc::downgrade(&self.shared))
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
            // The workers have exited: what they wrote on captured streams is delivered
            // before `join` returns (nothing to do when no output is captured).
            crate::process::output::flush(crate::process::output::FLUSH_TIMEOUT);
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
