//! Where a child runs and what it may use, on both layers (each includes this file as its
//! `placement` module): CPU affinity, niceness, resource limits, and the resident size of a
//! process.
//!
//! Niceness and resource limits are POSIX (`setpriority`, `setrlimit`). The rest has no
//! POSIX form and is chosen per target with `cfg`, as `stack.rs` does; only the Linux
//! branches are built on this machine, the others are written from their manuals and
//! **not compiled here**:
//!
//! - **Affinity**: `sched_setaffinity` on Linux, `cpuset_setaffinity` (`CPU_WHICH_PID`, the
//!   calling thread's process) on FreeBSD; elsewhere (macOS has only advisory thread affinity
//!   tags, OpenBSD and NetBSD nothing per process) [`allowed_cpus`] and [`set_affinity`]
//!   return `Unsupported`, so a placement naming CPUs is refused when it is configured, before
//!   any child is started.
//! - **Resident size**: `/proc/<pid>/statm` on Linux (on the portable layer the one `/proc` read:
//!   Linux has no other way to read another process's resident size), `proc_pidinfo`
//!   (`PROC_PIDTASKINFO`) on macOS, `sysctl` (`KERN_PROC_PID`, `ki_rssize`) on FreeBSD;
//!   elsewhere `Unsupported` (a pool's `max_memory_per_child` then cannot be enforced, and
//!   says so when the pool is built).
//!
//! The setters run in a forked child before user code, so each is one system call on data
//! already in place (a fixed-size CPU mask on the stack): async-signal-safe, no allocation.
//!
//! # Safety
//! The `unsafe` blocks call `sched_setaffinity`/`sched_getaffinity` (Linux),
//! `cpuset_setaffinity`/`cpuset_getaffinity` (FreeBSD), `proc_pidinfo` (macOS), `sysctl`
//! (FreeBSD), `setrlimit` and `getrlimit` with pointers to live, properly sized values, and
//! borrow descriptor 2 for the length of one `write`.
//!
//! # References
//! sched_setaffinity(2), cpuset_setaffinity(2) (FreeBSD), setpriority(2), setrlimit(2),
//! proc(5) (`/proc/<pid>/statm`), proc_pidinfo (macOS libproc), sysctl(3) (FreeBSD).

#![allow(unsafe_code)]

use std::io;

/// The CPUs a mask can name: glibc's `CPU_SETSIZE`.
pub(crate) const MAX_CPUS: usize = 1024;

/// A CPU set as 64-bit words (the layout of `cpu_set_t` on Linux).
pub(crate) type CpuMask = [u64; MAX_CPUS / 64];

/// A C call's return value as a result: 0 is success, anything else the error in `errno`.
fn os_result(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(any(target_os = "linux", target_os = "freebsd"))]
fn has(mask: &CpuMask, cpu: usize) -> bool {
    mask[cpu / 64] & (1 << (cpu % 64)) != 0
}

#[cfg(target_os = "linux")]
mod affinity {
    use super::*;

    fn to_cpu_set(mask: &CpuMask) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in (0..MAX_CPUS).filter(|&cpu| has(mask, cpu)) {
            // SAFETY: `cpu` < MAX_CPUS, the bits of a cpu_set_t.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        set
    }

    pub(crate) fn set_affinity(mask: &CpuMask) -> io::Result<()> {
        let set = to_cpu_set(mask);
        // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the caller.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        os_result(r)
    }

    pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
        // SAFETY: as in `to_cpu_set`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live, writable cpu_set_t of the size passed.
        let r =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        os_result(r)?;
        Ok((0..MAX_CPUS)
            // SAFETY: `cpu` < MAX_CPUS, the bits of a cpu_set_t.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }
}

// Not compiled here (see the module note).
#[cfg(target_os = "freebsd")]
mod affinity {
    use super::*;

    /// The CPUs a `cpuset_t` can name (256 before FreeBSD 14, 1024 since), at most ours.
    fn set_size() -> usize {
        (libc::CPU_SETSIZE as usize).min(MAX_CPUS)
    }

    pub(crate) fn set_affinity(mask: &CpuMask) -> io::Result<()> {
        // SAFETY: cpuset_t is plain bits; all-zero is the empty set.
        let mut set: libc::cpuset_t = unsafe { std::mem::zeroed() };
        for cpu in (0..set_size()).filter(|&cpu| has(mask, cpu)) {
            // SAFETY: `cpu` < CPU_SETSIZE, the bits of a cpuset_t.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: `set` is a live cpuset_t of the size passed; id -1 is the caller.
        let r = unsafe {
            libc::cpuset_setaffinity(
                libc::CPU_LEVEL_WHICH,
                libc::CPU_WHICH_PID,
                -1,
                std::mem::size_of::<libc::cpuset_t>(),
                &set,
            )
        };
        os_result(r)
    }

    pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
        // SAFETY: as above.
        let mut set: libc::cpuset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live, writable cpuset_t of the size passed.
        let r = unsafe {
            libc::cpuset_getaffinity(
                libc::CPU_LEVEL_WHICH,
                libc::CPU_WHICH_PID,
                -1,
                std::mem::size_of::<libc::cpuset_t>(),
                &mut set,
            )
        };
        os_result(r)?;
        Ok((0..set_size())
            // SAFETY: `cpu` < CPU_SETSIZE, the bits of a cpuset_t.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }
}

// macOS, OpenBSD, NetBSD, ...: no per-process CPU affinity (module note).
#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
mod affinity {
    use super::*;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU affinity is not supported on this platform",
        )
    }

    pub(crate) fn set_affinity(_mask: &CpuMask) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
        Err(unsupported())
    }
}

/// Restricts the calling process (its calling thread, which in a fresh child is all of it) to
/// the CPUs in `mask`. Async-signal-safe. `Unsupported` where the platform has no
/// per-process affinity (module note).
pub(crate) fn set_affinity(mask: &CpuMask) -> io::Result<()> {
    affinity::set_affinity(mask)
}

/// The CPUs the calling thread may run on, in increasing order (Python's
/// `os.sched_getaffinity(0)`). `Unsupported` where the platform has no per-process affinity.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    affinity::allowed_cpus()
}

/// Sets the calling process's nice value. Async-signal-safe.
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(None, nice)?)
}

/// The calling process's nice value.
pub(crate) fn nice() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(None)?)
}

/// The signal Rust's allocation failure handler ends the process with.
pub(crate) const SIGABRT: i32 = libc::SIGABRT;

/// `RLIM_INFINITY`.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is signed on the BSDs
pub(crate) const RLIM_INFINITY: u64 = libc::RLIM_INFINITY as u64;

/// The `RLIMIT_*` number of a resource, by the names of setrlimit(2) (without `RLIMIT_`);
/// `NICE` only where the platform has it (Linux).
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
        #[cfg(any(target_os = "linux", target_os = "android"))]
        "NICE" => libc::RLIMIT_NICE as i32,
        _ => return None,
    })
}

/// Sets resource limit `resource` (an `RLIMIT_*` number) of the calling process.
/// Async-signal-safe.
pub(crate) fn set_rlimit(resource: i32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as _,
        rlim_max: hard as _,
    };
    // SAFETY: `lim` is a live rlimit; an unknown resource number is refused with EINVAL.
    let r = unsafe { libc::setrlimit(resource as _, &lim) };
    os_result(r)
}

/// The soft and hard limit of `resource` for the calling process.
pub(crate) fn rlimit(resource: i32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live, writable rlimit.
    let r = unsafe { libc::getrlimit(resource as _, &mut lim) };
    if r == 0 {
        #[allow(clippy::unnecessary_cast)] // `rlim_t` is signed on the BSDs
        Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process runs with effective uid 0 (and so may raise hard limits and lower
/// niceness; the kernel has the last word).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The resident size of process `pid` in bytes: `/proc/<pid>/statm` on Linux.
#[cfg(target_os = "linux")]
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// The resident size of process `pid` in bytes: `proc_pidinfo(PROC_PIDTASKINFO)` on macOS
/// (not compiled here).
#[cfg(target_vendor = "apple")]
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    let pid =
        libc::c_int::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: proc_taskinfo is plain data; all-zero is a valid value.
    let mut info: libc::proc_taskinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
    // SAFETY: `info` is a live, writable proc_taskinfo of the size passed.
    let n =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTASKINFO, 0, (&raw mut info).cast(), size) };
    if n == size {
        Ok(info.pti_resident_size)
    } else if n <= 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short proc_pidinfo",
        ))
    }
}

/// The resident size of process `pid` in bytes: `sysctl(KERN_PROC_PID)`'s `ki_rssize` pages
/// on FreeBSD (not compiled here).
#[cfg(target_os = "freebsd")]
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    let pid =
        libc::c_int::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
    // SAFETY: kinfo_proc is plain data; all-zero is a valid value.
    let mut info: libc::kinfo_proc = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::kinfo_proc>();
    // SAFETY: `name` holds the 4 ints passed; `info` is live and writable for `len` bytes,
    // and `len` is a live size_t the kernel updates; no new value is set.
    let r = unsafe {
        libc::sysctl(
            name.as_ptr(),
            name.len() as libc::c_uint,
            (&raw mut info).cast(),
            &mut len,
            std::ptr::null(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if len < std::mem::size_of::<libc::kinfo_proc>() {
        return Err(io::Error::from(io::ErrorKind::NotFound)); // no such process
    }
    let pages = u64::try_from(info.ki_rssize).unwrap_or(0);
    Ok(pages * rustix::param::page_size() as u64)
}

/// Where no resident size of another process can be read.
#[cfg(not(any(target_os = "linux", target_os = "freebsd", target_vendor = "apple")))]
pub(crate) fn resident_bytes(_pid: u32) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "reading a process's resident size is not supported on this platform",
    ))
}

/// Writes `message` to stderr: for a forked child that cannot allocate. Async-signal-safe.
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: descriptor 2 is borrowed for this one write; if it is closed, the write fails
    // with EBADF, which is ignored.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(fd, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cpus_is_not_empty_and_resident_size_reads() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let mut mask = [0u64; MAX_CPUS / 64];
        for &cpu in &cpus {
            mask[cpu / 64] |= 1 << (cpu % 64);
        }
        set_affinity(&mask).unwrap(); // what it has already: harmless
        assert_eq!(allowed_cpus().unwrap(), cpus);
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
        let (soft, hard) = rlimit(rlimit_number("NOFILE").unwrap()).unwrap();
        assert!(soft <= hard);
        set_rlimit(rlimit_number("NOFILE").unwrap(), soft, hard).unwrap();
        assert!(rlimit_number("NO_SUCH").is_none());
        let n = nice().unwrap();
        assert!((-20..=19).contains(&n));
        set_nice(n).unwrap();
    }
}
