//! `spawn`: the child is a fresh execution of this program's binary.
//!
//! The parent `posix_spawn`s `/proc/self/exe` with a marker in the environment and one end of
//! a socket pair at a fixed descriptor, then sends the boot message (identity, entry point,
//! arguments) with the arguments' descriptors attached (SCM_RIGHTS). In the child, the crate's
//! pre-main hook sees the marker, reads the message, runs the target and exits: `main` never
//! runs, which is the Rust counterpart of Python's `if __name__ == "__main__":` guard. In a
//! test binary the test harness never runs either.
//!
//! Nothing is inherited but stdin, stdout, stderr, the environment and the working directory;
//! the child is as safe to start from a threaded program as any `Command`.

use std::os::fd::AsFd;

use super::{Launched, Popen, boot};
use crate::error::Result;
use crate::process::bootstrap::ChildPlan;
use crate::process::target::Task;
use crate::sys;

pub(crate) struct Spawn;

impl Popen for Spawn {
    fn launch(&self, plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched> {
        super::ensure_can_reexec()?;
        let daemon = plan.env.identity.daemon;
        let boot = boot::prepare(plan, task)?;
        if daemon {
            // A daemon's parent-death signal follows the thread that spawns it: spawn it from a
            // thread that lasts as long as this process.
            return super::on_a_lasting_thread(move || spawn(&boot))?;
        }
        spawn(&boot)
    }
}

fn spawn(boot: &boot::Prepared) -> Result<Launched> {
    let (ours, pid, pidfd) = super::start_self("spawn")?;
    // The child may have died before reading (it has its own error to report then, on
    // stderr); a start that cannot deliver the message is a failed start.
    if let Err(e) = sys::send_with_fds(ours.as_fd(), &boot.frame, &boot.borrowed_fds()) {
        sys::kill_and_reap(pid);
        return Err(e.into());
    }
    Ok(Launched { pid, pidfd })
}

/// The spawned child's body, called by the pre-main hook: read the boot message, run it.
pub(crate) fn child_main(sock: std::os::fd::OwnedFd) -> i32 {
    let mut reader = boot::FrameReader::default();
    match reader.next(sock.as_fd()) {
        Ok(Some((frame, fds))) => {
            drop(sock);
            boot::run_boot(&frame, fds)
        }
        Ok(None) => {
            eprintln!("multiproc: spawned child got no boot message (its parent died?)");
            crate::process::bootstrap::PANIC_EXIT_CODE
        }
        Err(e) => {
            eprintln!("multiproc: spawned child could not read its boot message: {e}");
            crate::process::bootstrap::PANIC_EXIT_CODE
        }
    }
}
