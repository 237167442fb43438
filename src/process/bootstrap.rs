//! The child's side of a start: become the new process, run the target, report, leave.
//!
//! [`run_forked`] is what a forked child executes. Until it calls the target it does only
//! async-signal-safe work (a `prctl`, a `getppid`, atomic stores): everything that needs memory
//! was prepared by the parent before the fork. Start methods that begin a fresh program rebuild
//! the same [`ChildPlan`] from bytes and join the same path at [`run_target`].

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use serde::{Deserialize, Serialize};

use super::children;
use super::current::{self, ProcessEnv};
use super::target::Task;
use crate::sys;
use crate::wire;

/// What the parent prepares for a child before it exists.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    pub(crate) env: Box<ProcessEnv>,
    /// Write end of the pipe that carries the [`Outcome`] back, for typed `JoinHandle`s.
    pub(crate) result: Option<OwnedFd>,
    /// The default start method the child adopts: the one its process chose, else the
    /// parent's chosen default (`None`: no choice to pass on). See `context::get_start_method`.
    pub(crate) start_method: Option<crate::context::StartMethod>,
    /// CPU affinity, niceness and limits, applied before the target runs.
    pub(crate) placement: super::placement::Placement,
    /// Captured stdout and stderr, and the `tracing` channel (see `process::output`).
    pub(crate) stdio: super::output::ChildStdio,
}

/// How the target ended, sent from child to parent for typed results.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The target returned; its value, encoded.
    Returned(#[serde(with = "wire::bytes")] Vec<u8>),
    /// The target panicked.
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The target returned a value that could not be encoded, or one too large to send.
    Unencodable(String),
    /// The child could not rebuild its target from the arguments it was sent (spawn and
    /// forkserver); the target never ran.
    BadArguments(String),
}

/// The exit code of a child whose target panicked, as Python's for an uncaught exception.
pub(crate) const PANIC_EXIT_CODE: i32 = 1;

/// The body of a forked child. Returns its exit code.
pub(crate) fn run_forked(plan: ChildPlan, task: Box<dyn Task>) -> i32 {
    if plan.env.identity.daemon
        && let Some((parent, _)) = &plan.env.identity.parent
        && !sys::die_with_parent(*parent)
    {
        return PANIC_EXIT_CODE;
    }
    if !plan.placement.apply_or_report() {
        return PANIC_EXIT_CODE;
    }
    let tracing = plan.stdio.redirect();
    current::install(plan.env);
    // User code from here on.
    run_target(plan.result, move || {
        let _tracing = super::log_forward::install(tracing);
        task.run_here()
            .map_err(|e| Outcome::Unencodable(error_chain(&e)))
    })
}

/// Runs `target` as this child's body, reports its outcome on `result` if given, joins the
/// child's own children as Python's `_exit_function` does, flushes stdout, and returns the
/// exit code. `target` returns the encoded value, or the outcome to report when there is none
/// (it could not be encoded, or the target could not be built from its arguments).
pub(crate) fn run_target(
    result: Option<OwnedFd>,
    target: impl FnOnce() -> std::result::Result<Vec<u8>, Outcome>,
) -> i32 {
    CAPTURE_PANICS.set(true);
    let outcome = match panic::catch_unwind(AssertUnwindSafe(target)) {
        Ok(Ok(bytes)) => Outcome::Returned(bytes),
        Ok(Err(failed)) => failed,
        Err(payload) => Outcome::Panicked {
            message: panic_message(&*payload),
            location: PANIC_LOCATION.take(),
        },
    };
    CAPTURE_PANICS.set(false);
    let outcome = fit_in_a_frame(outcome);
    let code = match outcome {
        Outcome::Returned(_) => 0,
        Outcome::Unencodable(ref reason) => {
            eprintln!("multiproc: child process could not report its result: {reason}");
            PANIC_EXIT_CODE
        }
        Outcome::BadArguments(ref reason) => {
            eprintln!("multiproc: child process could not decode its arguments: {reason}");
            PANIC_EXIT_CODE
        }
        Outcome::Panicked { .. } => PANIC_EXIT_CODE,
    };
    if let Some(fd) = result {
        // The parent may be gone already; then nobody is waiting for the value.
        // `fit_in_a_frame` made every outcome encodable.
        if let Ok(frame) = wire::encode_frame(&outcome) {
            let _ = sys::write_all(fd.as_fd(), &frame);
        }
    }
    children::shutdown();
    let _ = std::io::stdout().flush();
    code
}

/// `outcome`, unless it is a value too large to send in one frame: then the report says so.
/// The parent must never mistake a value it could not be sent for "no value".
fn fit_in_a_frame(outcome: Outcome) -> Outcome {
    // The value's bytes plus the variant tag and the length prefix (at most 6 bytes).
    const OVERHEAD: usize = 8;
    match outcome {
        Outcome::Returned(bytes) if bytes.len() + OVERHEAD > wire::MAX_FRAME => {
            Outcome::Unencodable(format!(
                "its value is {} bytes encoded, over the {}-byte limit of one message",
                bytes.len(),
                wire::MAX_FRAME
            ))
        }
        outcome => outcome,
    }
}

/// `error` and the errors that caused it, on one line: the whole story has to fit in the
/// report a child sends, which carries text, not error values.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

thread_local! {
    /// Set while this thread runs a child's target: its panics are recorded for the parent.
    static CAPTURE_PANICS: Cell<bool> = const { Cell::new(false) };
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chains a panic hook that records where a target panicked, then prints as before (the
/// child's stderr shows the message, as Python prints a traceback). Installed in the parent,
/// before the first child starts, so a forked child never has to allocate for it.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURE_PANICS.get() {
                let location = info.location().map(|l| l.to_string());
                PANIC_LOCATION.set(location);
            }
            previous(info);
        }));
    });
}

/// Runs one pool task inside a worker, catching a panic as its message and location.
pub(crate) fn catch_task<R>(
    f: impl FnOnce() -> R,
) -> std::result::Result<R, (String, Option<String>)> {
    let was = CAPTURE_PANICS.replace(true);
    let caught = panic::catch_unwind(AssertUnwindSafe(f));
    CAPTURE_PANICS.set(was);
    caught.map_err(|payload| (panic_message(&*payload), PANIC_LOCATION.take()))
}
