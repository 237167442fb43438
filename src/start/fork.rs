//! `fork`: the child is a copy of the parent and runs the target it inherited.

use std::io::Write;

use super::{Launched, Popen};
use crate::context;
use crate::error::Result;
use crate::process::bootstrap::{self, ChildPlan};
use crate::process::target::Task;
use crate::sys;

pub(crate) struct Fork;

impl Popen for Fork {
    fn launch(&self, plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched> {
        if plan.env.identity.daemon {
            // A daemon's parent-death signal follows the thread that forks it: fork it from a
            // thread that lasts as long as this process (the child is then a copy of that
            // thread, which holds nothing of the caller's but the task moved to it).
            return super::on_a_lasting_thread(move || fork(plan, task))?;
        }
        fork(plan, task)
    }
}

fn fork(plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched> {
    // The child is a copy of this thread alone. A lock that another thread holds at the
    // fork stays held for ever in the child, so stdout and stderr, which the child uses
    // (the target's prints, the flush at its exit), are taken here first: then the only
    // holder the child knows of is its own thread, which releases them before anything
    // else. Flushing under the locks also means nothing buffered is printed twice.
    // The same holds for the descriptor sharer's lock (a Connection sent in a message).
    let sharer = crate::wire::share::hold_for_fork();
    let forwarder = crate::process::output::hold_for_fork();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let _ = out.flush();
    let _ = err.flush();
    // In the parent the closure is dropped unrun: the locks are released, the plan's copy
    // of the result pipe's write end closes, and the target's captures are released as
    // after a move to a thread. In the child, releasing the locks is an atomic store and
    // at most a futex wake, both async-signal-safe.
    let pid = sys::fork_child(move || {
        drop(err);
        drop(out);
        drop(sharer);
        drop(forwarder);
        if let Some(method) = plan.start_method {
            context::force_start_method(method);
        }
        bootstrap::run_forked(plan, task)
    })?;
    let pidfd = sys::pidfd_for_new_child(pid)?;
    Ok(Launched { pid, pidfd })
}
