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
    // Whatever sits in our buffers would otherwise be printed twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // In the parent the closure is dropped unrun: the plan's copy of the result pipe's
    // write end closes, and the target's captures are released as after a move to a thread.
    let pid = sys::fork_child(move || {
        if let Some(method) = plan.start_method {
            context::force_start_method(method);
        }
        bootstrap::run_forked(plan, task)
    })?;
    let pidfd = sys::pidfd_for_new_child(pid)?;
    Ok(Launched { pid, pidfd })
}
