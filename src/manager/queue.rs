//! [`QueueProxy`]: a queue in the manager's server.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Handle, encode, unexpected};
use super::error::ManagerError;
use super::protocol::{Op, Reply, timeout_ms};

/// A FIFO queue in the manager's server, Python's `Manager().Queue(maxsize)`, typed. Unlike
/// [`Queue`](crate::Queue), it reaches processes of other programs and machines; it is
/// slower (a round trip to the server per item).
///
/// A client that dies while blocked in `get` takes no item: the server notices the closed
/// connection and leaves the item for the next.
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let q = manager.queue::<String>(None)?;
/// let child = multiproc::spawn_with_args(
///     |q: multiproc::manager::QueueProxy<String>| q.put(&"from the child".into()).unwrap(),
///     q.clone(),
/// )?;
/// assert_eq!(q.get_timeout(std::time::Duration::from_secs(10))?.as_deref(), Some("from the child"));
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct QueueProxy<T> {
    pub(crate) handle: Handle,
    pub(crate) _types: PhantomData<fn() -> T>,
}

super::proxy_impls!(QueueProxy<T>);

impl<T> QueueProxy<T>
where
    T: Serialize + DeserializeOwned,
{
    /// Appends `item`, blocking while the queue is full.
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone, also while waiting.
    pub fn put(&self, item: &T) -> Result<(), ManagerError> {
        self.put_with(item, None).map(drop)
    }

    /// Appends `item`, waiting at most `timeout` for room; whether it was put.
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<bool, ManagerError> {
        self.put_with(item, timeout_ms(timeout))
    }

    fn put_with(&self, item: &T, timeout_ms: Option<u64>) -> Result<bool, ManagerError> {
        self.handle.bool(Op::Put {
            item: encode(item)?,
            timeout_ms,
        })
    }

    /// Takes the oldest item, blocking until there is one.
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn get(&self) -> Result<T, ManagerError> {
        self.handle
            .value(Op::Take { timeout_ms: None })?
            .ok_or_else(|| unexpected(Reply::Value(None)))
    }

    /// Takes the oldest item, waiting at most `timeout`; `None` if none came.
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>, ManagerError> {
        self.handle.value(Op::Take {
            timeout_ms: timeout_ms(timeout),
        })
    }

    /// Takes the oldest item if there is one, without waiting.
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn get_nowait(&self) -> Result<Option<T>, ManagerError> {
        self.get_timeout(Duration::ZERO)
    }

    /// The number of items (Python's `qsize`).
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn qsize(&self) -> Result<usize, ManagerError> {
        self.handle.len()
    }

    /// Whether the queue is empty.
    ///
    /// # Errors
    /// As [`put`](QueueProxy::put).
    pub fn empty(&self) -> Result<bool, ManagerError> {
        Ok(self.qsize()? == 0)
    }
}
