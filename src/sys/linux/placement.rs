//! Where a child runs and what it may use: CPU affinity, niceness, resource limits, and the
//! resident size of a process.
//!
//! The setters run in a forked child before user code, so each is one system call on data
//! already in place (a fixed-size CPU mask on the stack): async-signal-safe, no allocation.
//! Which settings a process or worker gets is decided in `process/placement.rs`.
//!
//! # Safety
//! The `unsafe` blocks call `sched_setaffinity`, `sched_getaffinity`, `setpriority`,
//! `getpriority`, `setrlimit` and `getrlimit` with pointers to live, properly sized values.
//!
//! # References
//! sched_setaffinity(2), setpriority(2), setrlimit(2), proc(5) (`/proc/<pid>/statm`).

#![allow(unsafe_code)]

use std::io;

/// The CPUs a mask can name: glibc's `CPU_SETSIZE`.
pub(crate) const MAX_CPUS: usize = 1024;

/// A CPU set as 64-bit words, the layout of `cpu_set_t` on Linux.
pub(crate) type CpuMask = [u64; MAX_CPUS / 64];

fn to_cpu_set(mask: &CpuMask) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..MAX_CPUS {
        if mask[cpu / 64] & (1 << (cpu % 64)) != 0 {
            // SAFETY: `cpu` < MAX_CPUS, the bits of a cpu_set_t.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    set
}

/// Restricts the calling process (its calling thread, which in a fresh child is all of it) to
/// the CPUs in `mask`. Async-signal-safe.
pub(crate) fn set_affinity(mask: &CpuMask) -> io::Result<()> {
    let set = to_cpu_set(mask);
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPUs the calling thread may run on, in increasing order (Python's
/// `os.sched_getaffinity(0)`).
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..MAX_CPUS)
        // SAFETY: `cpu` < MAX_CPUS, the bits of a cpu_set_t.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Sets the calling process's nice value. Async-signal-safe.
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling process's nice value.
pub(crate) fn nice() -> io::Result<i32> {
    // getpriority may return -1 legitimately: errno tells.
    // SAFETY: writes errno of this thread.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let e = io::Error::last_os_error();
    if r == -1 && e.raw_os_error() != Some(0) {
        return Err(e);
    }
    Ok(r)
}

/// The signal Rust's allocation failure handler ends the process with.
pub(crate) const SIGABRT: i32 = libc::SIGABRT;

/// `RLIM_INFINITY`.
pub(crate) const RLIM_INFINITY: u64 = libc::RLIM_INFINITY;

/// The `RLIMIT_*` number of a resource, by the names of setrlimit(2) (without `RLIMIT_`).
pub(crate) fn rlimit_number(name: &str) -> Option<i32> {
    Some(match name {
        "AS" => libc::RLIMIT_AS as i32,
        "CORE" => libc::RLIMIT_CORE as i32,
        "CPU" => libc::RLIMIT_CPU as i32,
        "DATA" => libc::RLIMIT_DATA as i32,
        "FSIZE" => libc::RLIMIT_FSIZE as i32,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK as i32,
        "NOFILE" => libc::RLIMIT_NOFILE as i32,
        "NPROC" => libc::RLIMIT_NPROC as i32,
        "STACK" => libc::RLIMIT_STACK as i32,
        "NICE" => libc::RLIMIT_NICE as i32,
        _ => return None,
    })
}

/// Sets resource limit `resource` (an `RLIMIT_*` number) of the calling process.
/// Async-signal-safe.
pub(crate) fn set_rlimit(resource: i32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a live rlimit; the resource number came from `rlimit_number`.
    let r = unsafe { libc::setrlimit(resource as _, &lim) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The soft and hard limit of `resource` for the calling process.
pub(crate) fn rlimit(resource: i32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit to be written.
    let r = unsafe { libc::getrlimit(resource as _, &mut lim) };
    if r == 0 {
        Ok((lim.rlim_cur, lim.rlim_max))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process runs with effective uid 0 (and so may raise hard limits and lower
/// niceness, unless capabilities were dropped; the kernel has the last word).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The resident size of process `pid` in bytes, from `/proc/<pid>/statm`.
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// Writes `message` to stderr: for a forked child that cannot allocate. Async-signal-safe.
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: fd 2 is borrowed for the call only.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(fd, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cpus_is_not_empty_and_resident_size_reads() {
        assert!(!allowed_cpus().unwrap().is_empty());
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
        let (soft, hard) = rlimit(rlimit_number("NOFILE").unwrap()).unwrap();
        assert!(soft <= hard);
        assert!((-20..=19).contains(&nice().unwrap()));
    }
}
