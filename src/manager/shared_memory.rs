//! [`SharedMemoryManager`]: a scope that owns named shared-memory segments and unlinks them
//! all when it ends (Python's `multiprocessing.managers.SharedMemoryManager`).

use std::sync::Mutex;

use crate::error::{ErrorKind, Result};
use crate::shared::SharedMemory;

/// A scope for named shared memory: every segment it creates is unlinked when it
/// [shuts down](SharedMemoryManager::shutdown) or is dropped (Python's
/// `multiprocessing.managers.SharedMemoryManager`, with `SharedMemory(size)` as
/// [`shared_memory`](SharedMemoryManager::shared_memory)).
///
/// Unlike Python's, it runs no server process: the segments are created by the process that
/// holds the manager, and the resource tracker unlinks them if that process dies without
/// shutting it down (SIGKILL included), exactly as for any [`SharedMemory`] it created. A
/// Rust scope owns what it creates and frees it at its end (`Drop`); Python needs a server
/// because its segments would otherwise be unlinked by whichever process garbage-collects
/// them, and because its manager can hand out segments to other processes that ask for them.
/// Here, other processes get a segment itself (a [`SharedMemory`] is a start argument, or
/// crosses a queue) or its [`name`](SharedMemory::name) to [`open`](SharedMemory::open); they
/// never create segments in this scope, so a server would buy nothing and cost a process and
/// a round trip per segment. Segments therefore live at most as long as the process holding
/// the manager (Python's live until its server stops).
///
/// Unlinking removes the name; processes that still map a segment keep its memory until they
/// drop their [`SharedMemory`]. A manager captured by a `fork` child is inert there: only the
/// process that created it unlinks its segments.
///
/// # Examples
/// ```
/// use multiproc::manager::SharedMemoryManager;
/// use multiproc::shared::SharedMemory;
///
/// let smm = SharedMemoryManager::new();
/// let shm = smm.shared_memory(4096)?;
/// shm.write(0, b"hello")?;
/// let child = multiproc::spawn_with_args(
///     |shm: SharedMemory| {
///         let mut buf = [0u8; 5];
///         shm.read(0, &mut buf).unwrap();
///         buf
///     },
///     shm.clone(),
/// )?;
/// assert_eq!(&child.join()?, b"hello");
/// let name = shm.name().to_string();
/// smm.shutdown()?; // unlinks every segment it made
/// assert!(SharedMemory::open(&name).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedMemoryManager {
    /// The process that created the manager: the only one that unlinks its segments.
    owner: u32,
    segments: Mutex<Vec<SharedMemory>>,
}

impl Default for SharedMemoryManager {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedMemoryManager {
    /// An empty scope (Python's `SharedMemoryManager()` followed by `start()`; nothing to
    /// start here).
    pub fn new() -> SharedMemoryManager {
        SharedMemoryManager {
            owner: std::process::id(),
            segments: Mutex::new(Vec::new()),
        }
    }

    /// Creates a segment of `size` zero bytes under a fresh random name, unlinked when this
    /// manager ends (Python's `smm.SharedMemory(size)`).
    ///
    /// # Errors
    /// As [`SharedMemory::create`].
    #[doc(alias = "SharedMemory")]
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        self.keep(SharedMemory::create(size)?)
    }

    /// Creates a segment called `name`, unlinked when this manager ends.
    ///
    /// # Errors
    /// As [`SharedMemory::create_named`].
    pub fn shared_memory_named(&self, name: &str, size: usize) -> Result<SharedMemory> {
        self.keep(SharedMemory::create_named(name, size)?)
    }

    fn keep(&self, shm: SharedMemory) -> Result<SharedMemory> {
        self.lock().push(shm.clone());
        Ok(shm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SharedMemory>> {
        // A panic while pushing leaves a valid Vec: go on with it.
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the segments this manager will unlink, oldest first.
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().map(|s| s.name().to_string()).collect()
    }

    /// Unlinks every segment this manager created (Python's `shutdown`). A name that is
    /// already gone (unlinked by someone else) is skipped.
    ///
    /// # Errors
    /// The first failure to unlink other than the name being gone; the other segments are
    /// unlinked all the same.
    pub fn shutdown(self) -> Result<()> {
        self.unlink_all()
    }

    fn unlink_all(&self) -> Result<()> {
        if std::process::id() != self.owner {
            return Ok(());
        }
        let mut first = Ok(());
        for shm in self.lock().drain(..) {
            if let Err(e) = shm.unlink()
                && !is_not_found(&e)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

fn is_not_found(e: &crate::Error) -> bool {
    e.kind() == ErrorKind::Io
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

impl Drop for SharedMemoryManager {
    /// Unlinks every segment (errors are logged with `tracing`).
    fn drop(&mut self) {
        if let Err(e) = self.unlink_all() {
            tracing::warn!("SharedMemoryManager: unlinking a segment failed: {e}");
        }
    }
}

impl std::fmt::Debug for SharedMemoryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemoryManager")
            .field("owner", &self.owner)
            .field("names", &self.names())
            .finish()
    }
}
