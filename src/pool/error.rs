//! [`TaskError`]: why a pool task produced no value.

use std::fmt;
use std::time::Duration;

use crate::error::Error;

/// How a pool worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// A signal ended it (`SIGKILL`, `SIGSEGV`, `SIGABRT`, ...): the signal number.
    Signal(i32),
    /// It exited with this status (`std::process::exit` inside the task).
    Exit(i32),
}

impl WorkerExit {
    pub(crate) fn from_exitcode(code: i32) -> Self {
        if code < 0 {
            WorkerExit::Signal(-code)
        } else {
            WorkerExit::Exit(code)
        }
    }

    /// The death a failed allocation causes (SIGABRT): under a memory limit, read as the
    /// limit reached (`process/placement.rs`, `died_of_memory_limit`).
    pub(crate) fn is_memory_abort(self) -> bool {
        let code = match self {
            WorkerExit::Signal(n) => -n,
            WorkerExit::Exit(n) => n,
        };
        crate::process::placement::died_of_memory_limit(Some(0), code)
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WorkerExit::Signal(n) => match signal_name(n) {
                Some(name) => write!(f, "killed by signal {n} ({name})"),
                None => write!(f, "killed by signal {n}"),
            },
            WorkerExit::Exit(n) => write!(f, "exited with status {n}"),
        }
    }
}

fn signal_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Why a task submitted to a [`Pool`](crate::Pool) or
/// [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) produced no value.
///
/// Every way a task can fail ends in one of these; none of them leaves a caller waiting.
///
/// # Examples
/// ```
/// use multiproc::{Pool, pool::TaskError};
///
/// fn fail(_: ()) -> u8 { panic!("no luck") }
///
/// let pool = Pool::new(1)?;
/// match pool.apply(fail, ()) {
///     Err(TaskError::Panic { message, .. }) => assert_eq!(message, "no luck"),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the worker survived and goes on with other tasks.
    #[error("task panicked: {message}{}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panic {
        /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
        message: String,
        /// `file:line:column` of the panic, when it could be captured.
        location: Option<String>,
    },
    /// The worker process running the task died (killed, crashed, or exited); it was replaced.
    /// Also the fate of a task its worker had just started when the pool killed the worker
    /// for the time limit of the task before it, which replied at the last moment: the task
    /// may have run in part, so it is not run again.
    #[error("worker process {how} while running the task")]
    WorkerDied {
        /// How the worker ended.
        how: WorkerExit,
    },
    /// The task ran longer than the pool's per-task time limit (counted from when its worker
    /// could start it, after the initializer); its worker was killed and replaced.
    #[error("task exceeded its time limit of {limit:?}; its worker was killed")]
    TimeLimit {
        /// The limit that was exceeded.
        limit: Duration,
    },
    /// A wait with a timeout (`get_timeout`, `result_timeout`) ran out of time; the task goes
    /// on and can be waited for again.
    #[error("timed out waiting for the task")]
    Timeout,
    /// The task was cancelled: before it started, or while it ran, with its worker killed and
    /// replaced ([`AsyncResult::cancel`](crate::pool::AsyncResult::cancel),
    /// [`TaskFuture::cancel_running`](crate::pool::TaskFuture::cancel_running),
    /// [`Imap::cancel`](crate::pool::Imap::cancel)). Never retried, and distinct from
    /// [`WorkerDied`](TaskError::WorkerDied): the pool killed the worker on request.
    #[error("task was cancelled")]
    Cancelled,
    /// The task was [retried](crate::pool::PoolBuilder::retries) and failed every time: it ran
    /// `attempts` times; `last` is why the last run failed (`WorkerDied`, or `Panic` with
    /// [`retry_panics`](crate::pool::PoolBuilder::retry_panics)).
    #[error("task failed {attempts} times; the last time: {last}")]
    RetriesExhausted {
        /// How many times the task ran.
        attempts: u32,
        /// Why its last run failed.
        #[source]
        last: Box<TaskError>,
    },
    /// The task's worker died of an allocation failure under the pool's
    /// [`memory_limit`](crate::pool::PoolBuilder::memory_limit) (it aborted with SIGABRT, as
    /// a Rust program does when an allocation fails; an explicit `abort()` in a task under a
    /// memory limit reads the same). The worker was replaced; the pool goes on.
    #[error("task exceeded the worker memory limit of {limit} bytes; its worker was replaced")]
    MemoryLimitExceeded {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The pool was terminated (explicitly, by being dropped, or by Ctrl-C reaching its
    /// workers) before the task finished.
    #[error("pool was terminated before the task finished")]
    Terminated,
    /// The pool no longer accepts tasks (`close` or `shutdown` was called).
    #[error("pool is closed to new tasks")]
    PoolClosed,
    /// The pool's initializer failed in a worker, so the pool cannot run tasks.
    #[error("pool initializer failed in a worker: {message}")]
    InitializerFailed {
        /// The initializer's panic message, or how its worker died.
        message: String,
    },
    /// The task's value was already taken by an earlier `get`.
    #[error("task result already taken")]
    AlreadyTaken,
    /// The arguments or the value could not be serialized or deserialized (or held a handle,
    /// which only the pool's initializer can pass to workers), or the operating system
    /// refused: no worker could be started for 5 seconds while none was alive.
    #[error(transparent)]
    Process(#[from] Error),
}

impl TaskError {
    /// Whether a timed wait ran out of time (the task may still finish).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::Timeout)
    }

    /// Whether the task panicked (on its last run, if it was
    /// [retried](crate::pool::PoolBuilder::retries)).
    pub fn is_panic(&self) -> bool {
        matches!(self.last_cause(), TaskError::Panic { .. })
    }

    /// Whether the task's worker process died under it (on its last run, if it was
    /// [retried](crate::pool::PoolBuilder::retries)).
    pub fn is_worker_died(&self) -> bool {
        matches!(self.last_cause(), TaskError::WorkerDied { .. })
    }

    /// Why the task's last run failed: the error itself, or for
    /// [`RetriesExhausted`](TaskError::RetriesExhausted) its `last`.
    pub fn last_cause(&self) -> &TaskError {
        match self {
            TaskError::RetriesExhausted { last, .. } => last,
            other => other,
        }
    }

    /// An error to hand to a second waiter of the same failure (callbacks see the original).
    pub(crate) fn duplicate(&self) -> TaskError {
        match self {
            TaskError::Panic { message, location } => TaskError::Panic {
                message: message.clone(),
                location: location.clone(),
            },
            TaskError::WorkerDied { how } => TaskError::WorkerDied { how: *how },
            TaskError::TimeLimit { limit } => TaskError::TimeLimit { limit: *limit },
            TaskError::MemoryLimitExceeded { limit } => {
                TaskError::MemoryLimitExceeded { limit: *limit }
            }
            TaskError::Timeout => TaskError::Timeout,
            TaskError::Cancelled => TaskError::Cancelled,
            TaskError::Terminated => TaskError::Terminated,
            TaskError::PoolClosed => TaskError::PoolClosed,
            TaskError::InitializerFailed { message } => TaskError::InitializerFailed {
                message: message.clone(),
            },
            TaskError::AlreadyTaken => TaskError::AlreadyTaken,
            TaskError::RetriesExhausted { attempts, last } => TaskError::RetriesExhausted {
                attempts: *attempts,
                last: Box::new(last.duplicate()),
            },
            TaskError::Process(e) => {
                TaskError::Process(Error::with_message(e.kind(), e.to_string()))
            }
        }
    }
}
