//! [`JoinHandle`]: a started child and the pipe its value comes back on (std's
//! `thread::JoinHandle`, for processes).

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::bootstrap::Outcome;
use super::{Process, children, target};
use crate::error::{Error, ErrorKind, JoinError, Result};
use crate::sys;
use crate::wire;

/// An owned permission to join a child process and receive its value, as
/// [`std::thread::JoinHandle`].
///
/// [`join`](JoinHandle::join) tells a panic (with its message and location) from a signal
/// from an exit code. Dropping the handle without joining leaves the child running, like
/// dropping a [`Process`].
///
/// # Examples
/// ```
/// use multiproc::JoinError;
///
/// let handle = multiproc::spawn(|| -> u8 { panic!("boom") })?;
/// match handle.join() {
///     Err(JoinError::Panic { message, .. }) => assert_eq!(message, "boom"),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct JoinHandle<T> {
    process: Process,
    /// Read end of the pipe the child reports its outcome on; `None` once at end of file.
    reader: Option<OwnedFd>,
    received: Vec<u8>,
    joined: bool,
    _value: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// How long a join waits on the child's exit alone before also watching its result pipe.
const EXIT_ONLY_SLICE: Duration = Duration::from_millis(1);

/// The most a join reads from the result pipe per system call.
const READ_CHUNK: usize = 256 * 1024;

impl<T: DeserializeOwned> JoinHandle<T> {
    pub(super) fn start(mut process: Process) -> Result<Self> {
        let (reader, writer) = sys::pipe()?;
        sys::set_nonblocking(reader.as_fd())?;
        process.start_with(Some(writer))?;
        Ok(JoinHandle {
            process,
            reader: Some(reader),
            received: Vec::new(),
            joined: false,
            _value: PhantomData,
        })
    }

    /// Waits for the child to end and returns the value its target returned.
    ///
    /// # Errors
    /// [`JoinError::Panic`], [`JoinError::Signal`] or [`JoinError::Exit`] when the child
    /// produced no value; [`JoinError::Process`] when the value could not be decoded, or the
    /// child could not encode it or decode its arguments.
    pub fn join(mut self) -> Result<T, JoinError> {
        self.wait(None)
    }

    /// Waits at most `timeout`. On [`JoinError::Timeout`] the child keeps running and the
    /// handle can be joined again.
    ///
    /// Every call, a zero timeout included, first takes whatever part of the child's value is
    /// waiting in the pipe, so a loop of short polls collects a value of any size: a child
    /// whose value is larger than the pipe's buffer is blocked writing it until it is read.
    /// A zero timeout never blocks: it reads what is there, checks whether the child has
    /// ended, and returns.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::JoinError;
    ///
    /// let mut handle = multiproc::spawn(|| vec![7u8; 1 << 20])?;
    /// let value = loop {
    ///     match handle.join_timeout(Duration::ZERO) {
    ///         Err(JoinError::Timeout) => std::thread::sleep(Duration::from_millis(1)), // other work
    ///         done => break done?,
    ///     }
    /// };
    /// assert_eq!(value.len(), 1 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`join`](JoinHandle::join), plus [`JoinError::Timeout`] and
    /// [`JoinError::AlreadyJoined`].
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<T, JoinError> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<T, JoinError> {
        if self.joined {
            return Err(JoinError::AlreadyJoined);
        }
        let child = Arc::clone(self.process.child()?);
        // Whatever the child has written so far is taken on every call, however short its
        // deadline: a child whose value does not fit in the pipe cannot exit until it is read.
        self.drain()?;
        // A short child with a small value is done before this slice ends: waiting on its exit
        // alone costs one wake-up instead of two (data, then exit), and each cross-CPU wake-up
        // is tens of microseconds on a small VM. A value larger than the pipe buffer blocks
        // the child until we read, so after the slice, or from the start when the deadline
        // comes first, the pipe is watched too.
        let first_slice = Instant::now() + EXIT_ONLY_SLICE;
        let short_deadline = deadline.is_some_and(|d| d <= first_slice);
        let exitcode = loop {
            let watch_pipe = short_deadline || Instant::now() >= first_slice;
            let slice_end = if watch_pipe {
                deadline
            } else {
                Some(deadline.map_or(first_slice, |d| d.min(first_slice)))
            };
            let ready = match &self.reader {
                Some(reader) if watch_pipe => {
                    sys::wait_readable(&[child.sentinel(), reader.as_fd()], slice_end)?
                }
                _ => sys::wait_readable(&[child.sentinel()], slice_end)?,
            };
            if ready.get(1) == Some(&true) {
                self.drain()?;
            }
            if ready[0] {
                // The child is gone; what it wrote is all in the pipe now.
                self.drain()?;
                if let Some(code) = child.poll().map_err(Error::from)? {
                    break code;
                }
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(JoinError::Timeout);
            }
        };
        children::forget(&child);
        self.joined = true;
        self.reader = None;
        match wire::decode_frame::<Outcome>(&self.received)? {
            Some((Outcome::Returned(bytes), _)) => Ok(target::decode(&bytes)?),
            Some((Outcome::Panicked { message, location }, _)) => {
                Err(JoinError::Panic { message, location })
            }
            Some((Outcome::Unencodable(reason), _)) => {
                Err(JoinError::Process(Error::with_message(
                    ErrorKind::Encode,
                    format!("child could not encode its value: {reason}"),
                )))
            }
            Some((Outcome::BadArguments(reason), _)) => {
                Err(JoinError::Process(Error::with_message(
                    ErrorKind::Decode,
                    format!("child could not decode its arguments: {reason}"),
                )))
            }
            None if exitcode < 0 => Err(JoinError::Signal(-exitcode)),
            None => Err(JoinError::Exit(exitcode)),
        }
    }

    /// Moves whatever the pipe holds into `received`, without blocking.
    fn drain(&mut self) -> Result<()> {
        let Some(reader) = &self.reader else {
            return Ok(());
        };
        loop {
            // Once the header is in, read up to the end of the announced frame in one go.
            let want = match wire::frame_len(&self.received)? {
                Some(len) => (wire::HEADER + len)
                    .saturating_sub(self.received.len())
                    .clamp(1, READ_CHUNK),
                None => 16 * 1024,
            };
            match sys::read_append(reader.as_fd(), &mut self.received, want) {
                Ok(0) => {
                    self.reader = None;
                    return Ok(());
                }
                Ok(_) => {
                    if let Some(len) = wire::frame_len(&self.received)?
                        && self.received.len() > wire::HEADER + len
                    {
                        return Err(Error::with_message(
                            ErrorKind::Decode,
                            "child sent more than one result",
                        ));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<T> JoinHandle<T> {
    /// The read end of the pipe the child's value comes through, while it is open: a value
    /// larger than the pipe's buffer keeps the child alive until it is read, so an async join
    /// (`crate::aio`) waits on this beside the pidfd.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn result_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.reader.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process
            .pid()
            .expect("a JoinHandle's process is always started")
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// Whether the child has ended (its value may still be waiting to be joined).
    pub fn is_finished(&self) -> bool {
        !self.process.is_alive()
    }

    /// Sends SIGTERM to the child.
    ///
    /// # Errors
    /// An OS error.
    pub fn terminate(&self) -> Result<()> {
        self.process.terminate()
    }

    /// Sends SIGKILL to the child.
    ///
    /// # Errors
    /// An OS error.
    pub fn kill(&self) -> Result<()> {
        self.process.kill()
    }

    /// Sends SIGINT to the child (see [`Process::interrupt`]).
    ///
    /// # Errors
    /// An OS error.
    pub fn interrupt(&self) -> Result<()> {
        self.process.interrupt()
    }

    /// The underlying process, for its sentinel, exit code and other attributes.
    pub fn process(&self) -> &Process {
        &self.process
    }
}
