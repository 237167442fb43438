//! What the kernel says about other processes: `/proc/<pid>/stat` and `kill(pid, 0)`, and the
//! hook that runs in a child after `fork`.
//!
//! The policy built on these (when an owner counts as dead) is `sync/owner.rs`.
//!
//! # Safety
//! The one `unsafe` block is `pthread_atfork`, registering a plain `extern "C" fn`.
//!
//! # References
//! proc(5) (`/proc/<pid>/stat`), kill(2) (signal 0), pthread_atfork(3).

/// The state letter and the low 32 bits of the start time (clock ticks since boot) of process
/// `pid`, from `/proc/<pid>/stat`: `Err` if the file could not be read, `Ok(None)` if it could
/// but did not parse.
pub(crate) fn proc_stat(pid: u32) -> std::io::Result<Option<(u8, u32)>> {
    let text = std::fs::read(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&text))
}

fn parse_stat(text: &[u8]) -> Option<(u8, u32)> {
    // Fields after the parenthesised command name (which may itself contain ')').
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.as_bytes().first().copied()?;
    // starttime is field 22 of stat; `state` was field 3.
    let start: u64 = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start as u32))
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

/// Whether `/proc` is mounted (a sandbox may hide it).
pub(crate) fn proc_mounted() -> bool {
    static MOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MOUNTED.get_or_init(|| std::path::Path::new("/proc/self/stat").exists())
}

/// Registers `handler` to run in the child after every `fork` made through libc (not after
/// the forkserver's raw `clone`, whose children call what they need themselves). `handler`
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
    fn stat_parses_names_with_parentheses_and_spaces() {
        let line = b"42 (a) (b c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                     123456789012 0 0";
        assert_eq!(parse_stat(line), Some((b'S', 123456789012u64 as u32)));
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 (x) S 1"), None);
    }

    #[test]
    fn the_kernel_is_asked_without_a_descriptor() {
        assert!(pid_exists(std::process::id()));
        assert!(pid_exists(1), "EPERM or not, pid 1 exists");
        assert!(!pid_exists(0x3FFF_FFFF), "above any pid_max");
        assert!(!pid_exists(u32::MAX));
    }
}
