//! [`SimpleQueue`]: Python's `SimpleQueue`, a [`Queue`] with only the basic calls.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Queue;
use crate::error::{GetError, PutError};

/// A simpler queue, Python's `SimpleQueue`: unbounded, with only `put`, `get`, `empty` and
/// `close` (and `shutdown`, which Python's lacks). Same guarantees as [`Queue`].
///
/// # Examples
/// ```
/// let q = multiproc::SimpleQueue::new()?;
/// let child_q = q.clone();
/// let h = multiproc::spawn(move || child_q.put(vec![1, 2, 3]).is_ok())?;
/// assert_eq!(q.get()?, vec![1, 2, 3]);
/// assert!(h.join()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T>(Queue<T>);

impl<T> SimpleQueue<T> {
    /// The queue inside, for `crate::aio`.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn inner(&self) -> &Queue<T> {
        &self.0
    }

    /// A new, empty queue.
    ///
    /// # Errors
    /// The OS error if shared memory cannot be created.
    pub fn new() -> crate::Result<SimpleQueue<T>> {
        Queue::new().map(SimpleQueue)
    }

    /// Whether the queue is empty (a snapshot).
    pub fn empty(&self) -> bool {
        self.0.empty()
    }

    /// Says that this handle will put no more items (see [`Queue::close`]).
    pub fn close(&self) {
        self.0.close();
    }

    /// Shuts the queue down (see [`Queue::shutdown`]). Python's `SimpleQueue` has no
    /// `shutdown`; this one has, so that its gets and puts report what a `Queue`'s do.
    ///
    /// # Errors
    /// As [`Queue::shutdown`].
    pub fn shutdown(&self, immediate: bool) -> crate::Result<()> {
        self.0.shutdown(immediate)
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// Puts `item` at the back (see [`Queue::put`]).
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }

    /// Takes the front item, blocking while the queue is empty (see [`Queue::get`]).
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }
}

handle_around_a_queue!(SimpleQueue);
