//! Who the current process is: [`current_process`] and [`parent_process`], and the state
//! behind them (its identity: name, daemon flag, authkey, parent; and the children it
//! started).
//!
//! There is one [`ProcessEnv`] per process, reached through an atomic pointer. A forked child
//! must not touch the parent's copy (its mutex may have been held by another thread at fork
//! time), so the parent prepares the child's environment before forking and the child
//! installs it with one atomic store, which is async-signal-safe.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::AuthKey;
use super::children::Child;
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
    /// What [`at_exit`] registered in this process, in order of registration.
    exit_hooks: Mutex<Vec<ExitHook>>,
}

/// One [`at_exit`] hook.
struct ExitHook(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for ExitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitHook")
    }
}

static CURRENT: AtomicPtr<ProcessEnv> = AtomicPtr::new(std::ptr::null_mut());
static MAIN: OnceLock<ProcessEnv> = OnceLock::new();

impl ProcessEnv {
    pub(crate) fn new(identity: Identity) -> Self {
        ProcessEnv {
            identity,
            children: Mutex::new(Vec::new()),
            counter: AtomicU32::new(1),
            exit_hooks: Mutex::new(Vec::new()),
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

/// Registers `hook` to run when this process ends normally: Rust's counterpart of Python's
/// `atexit.register` and `multiprocessing.util.Finalize` with an exit priority, which are what
/// a Python child uses to clean up at its end.
///
/// A child process ends with `_exit`, not through `main`'s return: nothing registered with
/// the C library's `atexit` runs in it (the target's own values are dropped as it returns, as
/// always). These hooks are the way to run code there.
///
/// When hooks run, newest first:
/// - in a child, when its target returns or panics (after its value or panic was sent to the
///   parent), and when it calls [`std::process::exit`];
/// - in the main program, when it returns from `main` or calls [`std::process::exit`];
/// - in both, before this process's children are joined (daemonic ones terminated), as
///   Python's finalizers with an exit priority run before `_exit_function` joins children, so
///   a hook may stop the children it started;
/// - in a pool worker (registered by an initializer or a task), when the worker retires
///   normally (the pool is closed and joined, or `max_tasks_per_child` was reached).
///
/// When they do not run: when the process is ended by a signal ([`Process::terminate`],
/// [`Process::kill`], [`Process::interrupt`] and Ctrl-C without a handler, a daemon
/// terminated at its parent's exit, a crash), or by `abort` or `libc::_exit`. A hook that
/// panics is reported on standard error and the others still run.
///
/// Hooks belong to the process that registered them: a child, even one started by `fork`,
/// starts with none, and never runs its parent's (as Python clears its finalizer registry in a
/// new child). A hook registered while the hooks run (by a hook) runs too.
///
/// [`Process::terminate`]: crate::Process::terminate
/// [`Process::kill`]: crate::Process::kill
/// [`Process::interrupt`]: crate::Process::interrupt
///
/// # Examples
/// ```
/// use multiproc::{connection::pipe, Connection};
///
/// let (reader, writer) = pipe(false)?;
/// let child = multiproc::spawn_with_args(
///     |w: Connection| {
///         multiproc::process::at_exit(move || w.send(&"cleaned up".to_string()).unwrap());
///         6 * 7
///     },
///     writer,
/// )?;
/// assert_eq!(child.join()?, 42);
/// assert_eq!(reader.recv::<String>()?, "cleaned up");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "atexit")]
#[doc(alias = "Finalize")]
#[doc(alias = "register")]
pub fn at_exit(hook: impl FnOnce() + Send + 'static) {
    current()
        .exit_hooks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ExitHook(Box::new(hook)));
    // The main program runs its hooks from the C library's `atexit` (`children::shutdown`).
    super::children::ensure_exit_handler();
}

/// Runs this process's [`at_exit`] hooks, newest first, each once.
pub(crate) fn run_exit_hooks() {
    let env = current();
    loop {
        // Not held while a hook runs: a hook may register another.
        let hook = env
            .exit_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let Some(hook) = hook else { return };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook.0)).is_err() {
            eprintln!("multiproc: an at_exit hook panicked; running the others");
        }
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

/// What a process knows about itself: Python's `current_process()`.
///
/// # Examples
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// let child_name = multiproc::spawn(|| multiproc::current_process().name().to_owned())?.join()?;
/// assert!(child_name.starts_with("Process-"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CurrentProcess {
    env: &'static ProcessEnv,
}

impl CurrentProcess {
    /// `MainProcess` in the main program, the name the parent gave in a child.
    pub fn name(&self) -> &'static str {
        &self.env.identity.name
    }

    /// The operating system's id for this process.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Whether this process is daemonic.
    pub fn daemon(&self) -> bool {
        self.env.identity.daemon
    }

    /// This process's authkey.
    pub fn authkey(&self) -> &'static AuthKey {
        &self.env.identity.authkey
    }

    /// Python's `_identity`: empty for the main process, `[1]` for `Process-1`, and so on.
    pub fn identity(&self) -> &'static [u32] {
        &self.env.identity.ident
    }
}

/// The calling process.
pub fn current_process() -> CurrentProcess {
    CurrentProcess { env: current() }
}

/// The process that started this one, as Python's `parent_process()`.
///
/// # Examples
/// ```
/// assert!(multiproc::parent_process().is_none());
/// let (parent_pid, alive) = multiproc::spawn(|| {
///     let parent = multiproc::parent_process().expect("a child has a parent");
///     (parent.pid(), parent.is_alive())
/// })?.join()?;
/// assert_eq!(parent_pid, std::process::id());
/// assert!(alive);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParentProcess {
    pid: sys::RawPid,
    name: String,
}

impl ParentProcess {
    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the parent still runs: once it dies, the kernel gives this process a new parent.
    pub fn is_alive(&self) -> bool {
        sys::parent_pid() == self.pid
    }

    /// Waits at most `timeout` for the parent to end: `true` if it has ended (at once if it
    /// already had), `false` if time ran out. Python's `parent_process().join(timeout)`; a
    /// zero timeout just checks.
    ///
    /// The parent is not this process's child, so there is no exit code to collect: the wait
    /// is on a pidfd of the parent, which becomes readable when it exits. Only the parent is
    /// ever waited for: once it has died, the kernel gives this process another parent, and
    /// this returns `true` at once, even if its pid now belongs to an unrelated process. (A
    /// child that was given another parent while the first still runs is impossible on Linux:
    /// a process is reparented only when its parent exits.)
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// let parent_running = multiproc::spawn(|| {
    ///     let parent = multiproc::parent_process().expect("a child has a parent");
    ///     // The parent is waiting for this child: it does not end within 10 ms.
    ///     !parent.join_timeout(Duration::from_millis(10)).unwrap()
    /// })?.join()?;
    /// assert!(parent_running);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the parent runs but no pidfd can be opened
    /// for it (out of descriptors, for instance).
    #[doc(alias = "join")]
    pub fn join_timeout(&self, timeout: Duration) -> crate::Result<bool> {
        let deadline = Instant::now().checked_add(timeout);
        let pidfd = match sys::pidfd_open(self.pid) {
            Ok(fd) => fd,
            // Most likely gone (ESRCH); if it still runs, the error is real.
            Err(_) if !self.is_alive() => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        // The pidfd may name a process that took the pid of a parent that died before the
        // open; the parent still being the parent now proves it was alive at the open, so the
        // pidfd is the parent's.
        if !self.is_alive() {
            return Ok(true);
        }
        let ready = sys::wait_readable(&[pidfd.as_fd()], deadline)?;
        Ok(ready[0])
    }
}

/// The process that started this one, or `None` in the main process.
pub fn parent_process() -> Option<ParentProcess> {
    let (pid, name) = current().identity.parent.clone()?;
    Some(ParentProcess { pid, name })
}
