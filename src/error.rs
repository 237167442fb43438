//! Errors: one opaque [`Error`] for process operations, [`JoinError`] for typed results.

use std::fmt;
use std::io;

/// The result type of this crate's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for callers that branch on it. See [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `start()` was called on a process that was already started.
    AlreadyStarted,
    /// The operation needs a started process (`join`, `sentinel`, ...).
    NotStarted,
    /// The operation needs a process that has ended (`close`).
    StillRunning,
    /// The process object was closed by [`Process::close`](crate::Process::close).
    Closed,
    /// The daemon flag was changed after `start()`.
    DaemonAfterStart,
    /// A daemonic process tried to start a child (daemons may not have children, as in Python).
    DaemonicParent,
    /// The target was already consumed, by `run()` or an earlier `start()`.
    TargetConsumed,
    /// The target cannot run under the chosen start method (a capturing closure under spawn).
    UnsupportedTarget,
    /// The start method is not available on this platform, or this program cannot be
    /// re-executed as a child (see [`init`](crate::init)).
    UnsupportedStartMethod,
    /// [`set_start_method`](crate::set_start_method) was called with a different method after
    /// one was set.
    StartMethodAlreadySet,
    /// A value could not be serialized.
    Encode,
    /// Bytes could not be deserialized into the expected type.
    Decode,
    /// A timed operation ran out of time.
    Timeout,
    /// An argument was out of range (a pool of zero processes, ...).
    InvalidInput,
    /// The operating system refused (fork failed, too many processes, out of descriptors...):
    /// the [`source`](std::error::Error::source) is the `io::Error`. Named as the `Io`
    /// variants of the per-operation errors ([`SendError::Io`](crate::connection::SendError),
    /// [`GetError::Io`](crate::queue::GetError), ...).
    #[doc(alias = "Os")]
    Io,
}

/// An error from a process operation.
///
/// Use [`kind`](Error::kind) to branch; [`source`](std::error::Error::source) holds the OS or
/// serialization error underneath, when there is one.
pub struct Error {
    kind: ErrorKind,
    message: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            message: None,
            source: None,
        }
    }

    pub(crate) fn with_message(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: Some(message.into()),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            message: None,
            source: Some(source.into()),
        }
    }

    /// An error that says what failed (`message`) and keeps the error underneath (`source`).
    pub(crate) fn with_message_and_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            message: Some(message.into()),
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a timed operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    fn describe_kind(&self) -> &'static str {
        match self.kind {
            ErrorKind::AlreadyStarted => "process already started",
            ErrorKind::NotStarted => "process not started",
            ErrorKind::StillRunning => "process is still running",
            ErrorKind::Closed => "process object is closed",
            ErrorKind::DaemonAfterStart => "cannot set daemon status of an active process",
            ErrorKind::DaemonicParent => "daemonic processes are not allowed to have children",
            ErrorKind::TargetConsumed => "target already consumed by an earlier run or start",
            ErrorKind::UnsupportedTarget => "target cannot run under this start method",
            ErrorKind::UnsupportedStartMethod => "start method not supported on this platform",
            ErrorKind::StartMethodAlreadySet => "start method already set",
            ErrorKind::Encode => "could not serialize value",
            ErrorKind::Decode => "could not deserialize value",
            ErrorKind::Timeout => "operation timed out",
            ErrorKind::InvalidInput => "invalid argument",
            ErrorKind::Io => "operating system error",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => f.write_str(self.describe_kind()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::with_source(ErrorKind::Io, e)
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::with_source(ErrorKind::Decode, e)
    }
}

/// Why [`JoinHandle::join`](crate::JoinHandle::join) produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The target panicked; the message and location were also printed to the child's stderr.
    #[error("child process panicked: {message}{}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panic {
        /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
        message: String,
        /// `file:line:column` of the panic, when it could be captured.
        location: Option<String>,
    },
    /// A signal ended the child (its Python-style exit code is `-signal`).
    #[error("child process killed by signal {0}")]
    Signal(i32),
    /// The child exited with this status without returning a value (`std::process::exit`).
    #[error("child process exited with status {0} before returning a value")]
    Exit(i32),
    /// `join_timeout` ran out of time; the child keeps running and can be joined again.
    #[error("timed out waiting for the child process")]
    Timeout,
    /// The handle was already joined.
    #[error("child process already joined")]
    AlreadyJoined,
    /// The returned value could not be decoded, or an OS error got in the way.
    #[error(transparent)]
    Process(#[from] Error),
}

impl From<io::Error> for JoinError {
    fn from(e: io::Error) -> Self {
        JoinError::Process(e.into())
    }
}

impl JoinError {
    /// Whether the target panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panic { .. })
    }

    /// Whether `join_timeout` ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, JoinError::Timeout)
    }
}

mod ipc;
pub use ipc::{
    DecodeError, EncodeError, GetError, GetTimeoutError, PutError, PutTimeoutError, RecvError,
    SendError, TryGetError, TryPutError,
};
