//! Other processes without `/proc`: `kill(pid, 0)`, a life lock that tells a live process
//! from a dead one that shares its pid, and the hook that runs in a child after `fork`.
//!
//! # The life lock
//!
//! `kill(pid, 0)` alone cannot tell a lock's owner from a later process that reused its pid,
//! nor a killed owner from the zombie it leaves until its parent reaps it. So each process
//! that asks for its own identity ([`proc_stat`] of itself, which `sync/owner.rs` does before
//! its first lock) registers in one file per user, `/tmp/multiproc-life-<euid>`:
//!
//! - it picks a random non-zero 32-bit *token* (its identity's "start time" on this layer),
//! - takes a POSIX record lock (`fcntl(F_SETLK)`, write) on the one byte at offset
//!   `pid << 32 | token`, far past the end of the file (which stays empty but for the slots),
//! - and writes the token into the 4-byte slot at offset `4 * pid`.
//!
//! A record lock belongs to its process and is released by the kernel when the process ends,
//! before it becomes a zombie; it is not inherited by `fork`. So another process reads the
//! slot of `pid` and asks `fcntl(F_GETLK)` whether the byte `pid << 32 | token` is locked:
//! locked means the process that wrote the token runs (`Running(token)`, compared with the
//! token the owner recorded in the lock word); unlocked means it ended (`X`: dead), even if
//! it is a zombie, or its pid now runs another program. A pid reused by a process that has
//! registered shows a new token, which no owner recorded.
//!
//! Limits, each falling back to `kill(pid, 0)` (this layer's former and weaker answer, which
//! counts a zombie or a reused pid alive):
//! - a process that never registered (its slot holds 0), or a life file that cannot be
//!   opened (no writable `/tmp`, out of descriptors; the process's identity then carries
//!   token 0, "unknown");
//! - processes that share a lock must run as one user (each user has their own file): an
//!   owner of another user is not in the waiter's file, and when its pid's slot holds a
//!   stale token, `kill(pid, 0)` answering `EPERM` sends the waiter to the fallback (alive).
//!   A root waiter gets no `EPERM`, and takes such a stale slot's word (dead).
//! - A process's record locks on a file are all released when it closes *any* descriptor
//!   of that file, so the descriptor opened here is never closed (nor is a second one, if
//!   two threads race to open it), and nothing else in the crate opens the file.
//!
//! # Safety
//! `pthread_atfork` registers a plain `extern "C" fn`; the record-lock calls go through
//! `libc::fcntl` with a zeroed `flock` (plain data) that lives across the call; the file's
//! descriptor, once opened, is kept as a raw number for the life of the process and borrowed
//! only after `fstat` shows it still names the file (a daemon's `close_range` may have
//! closed it, and the number may name another file since).
//!
//! # References
//! kill(2) (signal 0), fcntl(2) (`F_SETLK`, `F_GETLK`), pthread_atfork(3).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The life file's descriptor (-1: not opened yet), and its identity (device, inode) packed
/// as two words.
static LIFE_FD: AtomicI32 = AtomicI32::new(-1);
static LIFE_DEV: AtomicU64 = AtomicU64::new(0);
static LIFE_INO: AtomicU64 = AtomicU64::new(0);

/// `pid << 32 | token` of this process's registration; token 0 while a thread registers
/// (others wait), and a pid other than ours (inherited through `fork`) means none yet.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

/// Pids at or above this cannot be registered (their lock byte's offset would not fit an
/// `off_t`); no system gives them out.
const PID_LIMIT: u32 = 1 << 30;

/// `/tmp/multiproc-life-<euid>` with a terminating NUL, on the stack (no allocation: this
/// may run in a child after `fork`).
fn life_path() -> [u8; 48] {
    let mut path = [0u8; 48];
    let prefix = b"/tmp/multiproc-life-";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut uid = rustix::process::geteuid().as_raw();
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (uid % 10) as u8;
        n += 1;
        uid /= 10;
        if uid == 0 {
            break;
        }
    }
    for (to, from) in path[prefix.len()..]
        .iter_mut()
        .zip(digits[..n].iter().rev())
    {
        *to = *from;
    }
    path
}

/// The life file, opened (and created) on first use; `None` if it cannot be, or is not a
/// regular file of ours.
fn life_file() -> Option<BorrowedFd<'static>> {
    let fd = LIFE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: a borrow only for `fstat`; the number may name another file or none (then
        // `fstat` fails or tells another identity, and it is not used further).
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        if rustix::fs::fstat(b).is_ok_and(|st| {
            file_id(&st)
                == (
                    LIFE_DEV.load(Ordering::Relaxed),
                    LIFE_INO.load(Ordering::Relaxed),
                )
        }) {
            return Some(b);
        }
    }
    let path = life_path();
    let c = std::ffi::CStr::from_bytes_until_nul(&path).ok()?;
    let file = rustix::fs::open(
        c,
        rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .ok()?;
    let st = rustix::fs::fstat(&file).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        return None;
    }
    let (dev, ino) = file_id(&st);
    LIFE_DEV.store(dev, Ordering::Relaxed);
    LIFE_INO.store(ino, Ordering::Relaxed);
    // Never closed: closing any descriptor of the file would drop this process's lock on it.
    let raw = file.into_raw_fd();
    let _ = LIFE_FD.compare_exchange(fd, raw, Ordering::AcqRel, Ordering::Acquire);
    // SAFETY: `raw` is never closed (leaked above, whether or not it was published), so the
    // borrow is valid for the rest of the process.
    Some(unsafe { BorrowedFd::borrow_raw(raw) })
}

/// The identity (device, inode) of a file.
#[allow(clippy::unnecessary_cast)] // their widths differ between platforms
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// A lock kind as `i32`, whichever integer type the C library gives it.
fn widen(kind: impl Into<i32>) -> i32 {
    kind.into()
}

/// `fcntl(fd, cmd, {kind, offset, 1 byte})`, retried on `EINTR`; the `flock` as the kernel
/// left it.
fn record_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: impl Into<i32>,
    offset: u64,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // The lock kinds are `c_int` on Linux and `c_short` on the BSDs and macOS.
    fl.l_type = kind.into() as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = offset as _;
    fl.l_len = 1;
    loop {
        // SAFETY: `fl` is a valid `flock` that lives across the call.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
        if r != -1 {
            return Ok(fl);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn lock_offset(pid: u32, token: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(token)
}

/// This process's token, registering it first if needed (see the module note). `None` if
/// the life file cannot be used. Async-signal-safe (no allocation, no lock but a spin on an
/// atomic another thread of this process holds for a few system calls).
fn own_token(pid: u32) -> Option<u32> {
    if pid >= PID_LIMIT {
        return None;
    }
    loop {
        let s = REGISTERED.load(Ordering::Acquire);
        if (s >> 32) as u32 == pid {
            if s as u32 != 0 {
                return Some(s as u32);
            }
            std::thread::yield_now();
            continue;
        }
        if REGISTERED
            .compare_exchange(s, u64::from(pid) << 32, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let token = register(pid);
            let done = token.map_or(s, |t| (u64::from(pid) << 32) | u64::from(t));
            REGISTERED.store(done, Ordering::Release);
            return token;
        }
    }
}

fn register(pid: u32) -> Option<u32> {
    let fd = life_file()?;
    let mut token = 0u32;
    while token == 0 {
        let mut b = [0u8; 4];
        super::random_bytes(&mut b).ok()?;
        token = u32::from_ne_bytes(b);
    }
    record_lock(fd, libc::F_SETLK, libc::F_WRLCK, lock_offset(pid, token)).ok()?;
    // Lock first, slot second: whoever reads the new token finds its byte locked.
    match rustix::io::pwrite(fd, &token.to_ne_bytes(), u64::from(pid) * 4) {
        Ok(4) => Some(token),
        _ => {
            let _ = record_lock(fd, libc::F_SETLK, libc::F_UNLCK, lock_offset(pid, token));
            None
        }
    }
}

/// The state letter and "start time" of process `pid`, from the life lock (module note):
/// `(b'R', token)` if the process that registered `token` under `pid` runs (for this process
/// itself, registering it if needed), `(b'X', 0)` if it ended (zombies included). `Err` when
/// the life file cannot be used, or `pid` never registered, or belongs to another user;
/// callers then fall back to [`pid_exists`].
pub(crate) fn proc_stat(pid: u32) -> io::Result<Option<(u8, u32)>> {
    let unsupported = || io::Error::from(io::ErrorKind::Unsupported);
    let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
    if pid == me {
        return own_token(pid)
            .map(|t| Some((b'R', t)))
            .ok_or_else(unsupported);
    }
    if pid == 0 || pid >= PID_LIMIT {
        return Err(unsupported());
    }
    let fd = life_file().ok_or_else(unsupported)?;
    let mut slot = [0u8; 4];
    if rustix::io::pread(fd, &mut slot, u64::from(pid) * 4)? != 4 {
        return Err(unsupported());
    }
    let token = u32::from_ne_bytes(slot);
    if token == 0 {
        return Err(unsupported());
    }
    let fl = record_lock(fd, libc::F_GETLK, libc::F_WRLCK, lock_offset(pid, token))?;
    if i32::from(fl.l_type) != widen(libc::F_UNLCK) {
        return Ok(Some((b'R', token)));
    }
    // Nobody holds the byte. A process of another user (another file) is not ours to judge.
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(unsupported)?;
    match rustix::process::test_kill_process(p) {
        Err(rustix::io::Errno::PERM) => Err(unsupported()),
        _ => Ok(Some((b'X', 0))),
    }
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

/// Whether `/proc` is used: never on this layer, so an identity without a token is final.
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
    use std::time::{Duration, Instant};

    #[test]
    fn the_kernel_is_asked_without_a_descriptor() {
        assert!(pid_exists(std::process::id()));
        assert!(pid_exists(1), "EPERM or not, pid 1 exists");
        assert!(!pid_exists(0x3FFF_FFFF), "above any pid_max");
        assert!(!pid_exists(u32::MAX));
    }

    #[test]
    fn a_process_has_one_token_for_its_life() {
        let me = std::process::id();
        let Ok(Some((b'R', token))) = proc_stat(me) else {
            panic!("no life file: {:?}", proc_stat(me));
        };
        assert_ne!(token, 0);
        assert_eq!(proc_stat(me).unwrap(), Some((b'R', token)), "stable");
        assert!(proc_stat(u32::MAX).is_err());
        assert!(proc_stat(0).is_err());
        let path = life_path();
        let path = std::ffi::CStr::from_bytes_until_nul(&path).unwrap();
        let expected = format!(
            "/tmp/multiproc-life-{}",
            rustix::process::geteuid().as_raw()
        );
        assert_eq!(path.to_str().unwrap(), expected);
        assert!(std::path::Path::new(&expected).is_file());
    }

    /// A registered child is `R` with its own token while it runs, and `X` once it ended,
    /// though it is still a zombie (which `kill(pid, 0)` calls alive).
    #[test]
    fn a_zombie_is_dead_and_a_live_child_runs_with_its_own_token() {
        let mine = proc_stat(std::process::id()).unwrap().unwrap().1;
        let (r, w) = super::super::pipe().unwrap();
        let pid = super::super::fork_child(|| {
            // Registers (the post-fork-safe path), then waits for the parent's word.
            let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
            if own_token(me).is_none() {
                return 3;
            }
            let mut b = [0u8; 1];
            let _ = rustix::io::read(&r, &mut b);
            0
        })
        .unwrap();
        let child = pid as u32;
        struct Reap(i32);
        impl Drop for Reap {
            fn drop(&mut self) {
                super::super::kill_and_reap(self.0);
            }
        }
        let _reap = Reap(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        let token = loop {
            if let Ok(Some((b'R', t))) = proc_stat(child) {
                break t;
            }
            assert!(Instant::now() < deadline, "child never registered");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_ne!(token, mine, "a forked child has a token of its own");
        rustix::io::write(&w, b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_stat(child).unwrap() != Some((b'X', 0)) {
            assert!(Instant::now() < deadline, "child never ended");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(pid_exists(child), "a zombie, not reaped yet");
    }
}
