//! Start methods behind one small trait, as CPython's `popen_*` modules.
//!
//! A start method only has to bring a child into being that runs a task with a plan, and hand
//! back its pid and a pidfd. Waiting, signalling and reaping are the same for every method and
//! live in `process::children`.

use std::os::fd::OwnedFd;

use crate::context::StartMethod;
use crate::error::Result;
use crate::process::bootstrap::ChildPlan;
use crate::process::target::Task;
use crate::sys::RawPid;

mod fork;

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
    }
}
