//! [`Event`]: Python's `multiprocessing.Event`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::raw::{self, EventState};
use crate::error::Result;
use crate::shared::segment::Shm;

/// A flag shared between processes that processes can wait for.
///
/// `set` wakes every waiter; `wait` returns at once while the flag is set. Setting an already
/// set event and waiting on a set event are both free of system calls.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::Event;
///
/// let go = Event::new()?;
/// let child = multiproc::spawn_with_args(
///     |go: Event| go.wait_timeout(Duration::from_secs(10)),
///     go.clone(),
/// )?;
/// go.set();
/// assert!(child.join()?); // the child saw the flag
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    state: Shm<EventState>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if shared memory cannot be created.
    pub fn new() -> Result<Event> {
        Ok(Event {
            state: Shm::zeroed()?,
        })
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.state.flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let s = &*self.state;
        if s.flag.swap(1, Ordering::SeqCst) == 0 && s.sleepers.load(Ordering::SeqCst) > 0 {
            raw::wake(&s.flag, raw::WAKE_ALL);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.state.flag.store(0, Ordering::Release);
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(raw::deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let s = &*self.state;
        loop {
            if self.is_set() {
                return true;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let awake = raw::wait_while(&s.flag, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::Relaxed);
            if !awake {
                return self.is_set();
            }
        }
    }
}
