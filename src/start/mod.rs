//! Start methods behind one small trait, as CPython's `popen_*` modules.
//!
//! A start method only has to bring a child into being that runs a task with a plan, and hand
//! back its pid and a pidfd. Waiting, signalling and reaping are the same for every method and
//! live in `process::children`.
//!
//! `spawn` and `forkserver` re-execute this program. The re-executed copy must become the
//! child (or the server) instead of running `main`: a hook the crate places in `.init_array`
//! does that before `main` ([`pre_main`]), with [`crate::init`] as the documented fallback.

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, sync_channel};
use std::sync::{Mutex, Once};

use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::process::bootstrap::{ChildPlan, PANIC_EXIT_CODE};
use crate::process::target::Task;
use crate::sys::{self, RawPid};

mod boot;
mod fork;
mod forkserver;
mod spawn;

/// A started child, as the start method hands it back.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) pid: RawPid,
    /// Becomes readable when the child exits; also used to signal and reap it.
    pub(crate) pidfd: OwnedFd,
}

/// One way of starting a child (CPython's `Popen` classes).
pub(crate) trait Popen: Sync {
    /// Starts a child that installs `plan` and runs `task`. On error no child is left behind.
    fn launch(&self, plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched>;
}

/// The pid of this process's forkserver, if it started one (see `context::forkserver_pid`).
pub(crate) fn forkserver_pid() -> Option<u32> {
    forkserver::server_pid()
}

/// The implementation of `method`.
pub(crate) fn popen(method: StartMethod) -> &'static dyn Popen {
    match method {
        StartMethod::Fork => &fork::Fork,
        StartMethod::Spawn => &spawn::Spawn,
        StartMethod::ForkServer => &forkserver::ForkServer,
    }
}

static INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// What the pre-main hook (or `init`) runs: in a program started as a child or forkserver,
/// becomes that and never returns; otherwise returns at once.
pub(crate) fn pre_main() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(role) = sys::take_env(boot::MARKER) else {
            return;
        };
        sys::rust_signal_defaults();
        let code = match (role.to_str(), sys::take_boot_fd()) {
            (Some("spawn"), Some(sock)) => spawn::child_main(sock),
            (Some("forkserver"), Some(sock)) => forkserver::serve(sock),
            (role, _) => {
                eprintln!(
                    "multiproc: {}={role:?} is set but this program was not started by \
                     multiproc (no boot socket); exiting instead of running main",
                    boot::MARKER
                );
                PANIC_EXIT_CODE
            }
        };
        sys::exit_now(code)
    });
}

/// `crate::init`: the fallback for programs in which the pre-main hook does not run.
pub(crate) fn init() {
    INIT_CALLED.store(true, Ordering::Relaxed);
    pre_main();
}

/// Starts a fresh copy of this program in `role` ("spawn" or "forkserver"), connected by a
/// socket over which it is sent its boot message. Returns our end, its pid and its pidfd.
fn start_self(role: &str) -> Result<(OwnedFd, RawPid, OwnedFd)> {
    let (ours, theirs) = sys::socketpair()?;
    let pid = sys::spawn_self(theirs.as_fd(), (boot::MARKER, role))?;
    drop(theirs);
    let pidfd = sys::pidfd_for_new_child(pid)?;
    Ok((ours, pid, pidfd))
}

/// Checks that a re-executed copy of this program will become the child rather than run
/// `main` again (which could start children of its own: a fork bomb).
fn ensure_can_reexec() -> Result<()> {
    reexec_check(
        sys::pre_main_hook_ran(),
        INIT_CALLED.load(Ordering::Relaxed),
    )
}

fn reexec_check(hook_ran: bool, init_called: bool) -> Result<()> {
    if hook_ran || init_called {
        return Ok(());
    }
    Err(Error::with_message(
        ErrorKind::UnsupportedStartMethod,
        "the spawn and forkserver start methods re-execute this program, but multiproc's \
         pre-main hook did not run in it; call multiproc::init() as the first line of main",
    ))
}

/// Runs `f` on a thread that lives as long as this process: the calling thread if it is the
/// main thread (or the keeper itself), otherwise one keeper thread started on first use.
///
/// Linux sends a child's parent-death signal (`PR_SET_PDEATHSIG`, which daemons use to die
/// with this program) when the parent *thread* exits, not the parent process; and the parent
/// thread of a child is the one that forked or spawned it (for forkserver children, the one
/// that started the server). Daemons started from a short-lived thread would die with it, so
/// their creation is handed to a thread that never exits.
///
/// # Errors
/// [`ErrorKind::Io`] if the keeper thread cannot be started. A panic in `f` is resumed in the
/// caller.
pub(crate) fn on_a_lasting_thread<R, F>(f: F) -> Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: Mutex<Option<(RawPid, Sender<Job>)>> = Mutex::new(None);
    thread_local! {
        static IS_KEEPER: Cell<bool> = const { Cell::new(false) };
    }

    if sys::is_main_thread() || IS_KEEPER.get() {
        return Ok(f());
    }
    let (reply, answer) = sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    let owner = sys::current_pid();
    let mut keeper = KEEPER.lock().unwrap_or_else(|e| e.into_inner());
    let requests = match keeper.as_ref() {
        // A keeper inherited through `fork` has no thread behind it: make a new one.
        Some((pid, requests)) if *pid == owner => requests.clone(),
        _ => {
            let (requests, incoming) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("multiproc-keeper".to_owned())
                .spawn(move || {
                    IS_KEEPER.set(true);
                    // The sender lives in a static: this loop never ends.
                    for job in incoming {
                        job();
                    }
                })?;
            *keeper = Some((owner, requests.clone()));
            requests
        }
    };
    drop(keeper);
    let lost = || Error::with_message(ErrorKind::Io, "multiproc's keeper thread is gone");
    requests.send(job).map_err(|_| lost())?;
    match answer.recv().map_err(|_| lost())? {
        Ok(value) => Ok(value),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests;
