//! Other processes without `/proc`: `kill(pid, 0)` alone, and the hook that runs in a child
//! after `fork`.
//!
//! What is weaker than on Linux (`sync/owner.rs` builds on these): with no start time, a lock
//! owner's identity carries start time 0 ("unknown"), so a pid reused by an unrelated process
//! keeps the owner counted alive; and a killed owner that its parent has not reaped yet (a
//! zombie) still answers `kill(pid, 0)`, so it counts alive until it is reaped.
//!
//! # Safety
//! The one `unsafe` block is `pthread_atfork`, registering a plain `extern "C" fn`.
//!
//! # References
//! kill(2) (signal 0), pthread_atfork(3).

/// The state letter and start time of process `pid`: always `Err(Unsupported)` on this layer,
/// which reads no `/proc`; callers fall back to [`pid_exists`].
pub(crate) fn proc_stat(_pid: u32) -> std::io::Result<Option<(u8, u32)>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// `kill(pid, 0)`: `false` only if the kernel says no such process exists (`ESRCH`), or the
/// number cannot be a pid; `true` otherwise (`EPERM` means it exists). Needs no descriptor.
pub(crate) fn pid_exists(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Whether `/proc` is used: never on this layer, so an identity without a start time is final.
pub(crate) fn proc_mounted() -> bool {
    false
}

/// Registers `handler` to run in the child after every `fork` made through libc. `handler`
/// must be async-signal-safe.
pub(crate) fn on_fork_child(handler: extern "C" fn()) {
    // SAFETY: registers a child handler; the function is a plain `extern "C" fn` that lives
    // for the whole program, and the caller promises it is async-signal-safe.
    unsafe {
        libc::pthread_atfork(None, None, Some(handler));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_asked_without_a_descriptor() {
        assert!(pid_exists(std::process::id()));
        assert!(pid_exists(1), "EPERM or not, pid 1 exists");
        assert!(!pid_exists(0x3FFF_FFFF), "above any pid_max");
        assert!(!pid_exists(u32::MAX));
        assert!(proc_stat(std::process::id()).is_err());
    }
}
