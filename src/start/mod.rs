//! Start methods behind one small trait, as CPython's `popen_*` modules.
//!
//! A start method only has to bring a child into being that runs a task with a plan, and hand
//! back its pid and a pidfd. Waiting, signalling and reaping are the same for every method and
//! live in `process::children`.
//!
//! `spawn` and `forkserver` re-execute this program. The re-executed copy must become the
//! child (or the server) instead of running `main`: a hook the crate places in `.init_array`
//! does that before `main` ([`pre_main`]), with [`crate::init`] as the documented fallback.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Checks that a re-executed copy of this program will become the child rather than run
/// `main` again (which could start children of its own: a fork bomb).
/// Starts a fresh copy of this program in `role` ("spawn" or "forkserver"), connected by a
/// socket over which it is sent its boot message. Returns our end, its pid and its pidfd.
fn start_self(role: &str) -> Result<(OwnedFd, RawPid, OwnedFd)> {
    let (ours, theirs) = sys::socketpair()?;
    let pid = sys::spawn_self(theirs.as_fd(), (boot::MARKER, role))?;
    drop(theirs);
    let pidfd = sys::pidfd_for_new_child(pid)?;
    Ok((ours, pid, pidfd))
}

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

#[cfg(test)]
mod tests;
