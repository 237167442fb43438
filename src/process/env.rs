//! Who the current process is: its identity (name, daemon flag, authkey, parent) and the
//! children it started.
//!
//! There is one [`ProcessEnv`] per process, reached through an atomic pointer. A forked child
//! must not touch the parent's copy (its mutex may have been held by another thread at fork
//! time), so the parent prepares the child's environment before forking and the child
//! installs it with one atomic store, which is async-signal-safe.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use super::children::Child;
use crate::AuthKey;
use crate::sys;

/// What a process knows about itself, and what a child is told about itself at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// `MainProcess` or `Process-N:M...`, or a user-chosen name.
    pub(crate) name: String,
    /// Python's `_identity`: the position among its parent's children, prefixed by the parent's.
    pub(crate) ident: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) authkey: AuthKey,
    /// The parent's pid and name; `None` for the main process.
    pub(crate) parent: Option<(sys::RawPid, String)>,
}

/// The per-process state behind `current_process()` and `active_children()`.
#[derive(Debug)]
pub(crate) struct ProcessEnv {
    pub(crate) identity: Identity,
    /// Started children not yet reaped, as Python's `_children`.
    children: Mutex<Vec<Arc<Child>>>,
    /// Numbers the next child (`Process-N`); each process counts from 1.
    counter: AtomicU32,
}

static CURRENT: AtomicPtr<ProcessEnv> = AtomicPtr::new(std::ptr::null_mut());
static MAIN: OnceLock<ProcessEnv> = OnceLock::new();

impl ProcessEnv {
    pub(crate) fn new(identity: Identity) -> Self {
        ProcessEnv {
            identity,
            children: Mutex::new(Vec::new()),
            counter: AtomicU32::new(1),
        }
    }

    /// The next child's identity suffix.
    pub(crate) fn next_child_number(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The children list. A poisoned lock only means a panic happened while it was held; the
    /// list itself is always consistent, so the poison is ignored.
    pub(crate) fn children(&self) -> MutexGuard<'_, Vec<Arc<Child>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The calling process's environment.
#[allow(unsafe_code)]
pub(crate) fn current() -> &'static ProcessEnv {
    let ptr = CURRENT.load(Ordering::Acquire);
    if ptr.is_null() {
        return MAIN.get_or_init(|| {
            ProcessEnv::new(Identity {
                name: "MainProcess".to_owned(),
                ident: Vec::new(),
                daemon: false,
                authkey: AuthKey::random(),
                parent: None,
            })
        });
    }
    // SAFETY: a non-null CURRENT always comes from `install`, which takes a leaked `Box`, so it
    // points to a live `ProcessEnv` for the rest of the process's life and is never written to
    // except through its own synchronised fields.
    unsafe { &*ptr }
}

/// Makes `env` this process's environment for good. Async-signal-safe: one atomic store.
/// Called once, in a child, before user code runs.
pub(crate) fn install(env: Box<ProcessEnv>) {
    CURRENT.store(Box::into_raw(env), Ordering::Release);
}
