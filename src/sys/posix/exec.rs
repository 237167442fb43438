//! Starting a fresh copy of the running program: `posix_spawn` of the path it was run from.
//!
//! The portable counterpart of the Linux layer's `exec.rs`, which re-executes
//! `/proc/self/exe`. This one re-executes [`std::env::current_exe`] as it was on first use
//! (taken from the C library's `_NSGetExecutablePath` on macOS, `sysctl` on the BSDs; on Linux
//! std itself reads `/proc/self/exe`, the one `/proc` read left on this layer, done once), made
//! absolute, so a later `chdir` does not change it. What that gives up against the Linux
//! layer: a binary replaced or deleted at that path after the first start is not re-executed
//! as the running inode; the child then runs the new file, or fails to start. The boot
//! message carries the parent's [`exe_identity`] (device, inode, size, mtime of that path when
//! first asked), so a child running a replaced binary refuses to start instead of running
//! code of another build.
//!
//! The child gets three extra descriptors: the boot socket at [`BOOT_FD`], the write end of
//! its exit pipe at `EXIT_FD` and the read end of our alive pipe at `PARENT_ALIVE_FD` (see
//! `process.rs`); every other descriptor above stderr is closed in it (Python's `close_fds=True`), so the child holds
//! exactly what it is sent, and so does the forkserver, whose children inherit what it holds.
//! Descriptors with close-on-exec (all this crate and Rust's standard library make) go at the
//! `exec` anyway; the others, which a careless library may leave open, are closed by a
//! file action: `posix_spawn_file_actions_addclosefrom_np` where the C library has it (glibc
//! 2.34 and later, looked up at run time), else one `addclose` for each descriptor found open
//! without close-on-exec just before the spawn. The fallback misses a descriptor that another
//! thread opens without close-on-exec between that scan and the spawn.
//!
//! Closing them in the re-executed program instead (its pre-main hook) would not have that
//! window, but it runs after the C library and every constructor that precedes the hook
//! (`LD_PRELOAD` libraries, C++ static initialisers) and could not tell their descriptors from
//! inherited ones: it would close a descriptor a library still uses, whose number the next
//! `open` (our boot socket's copies, a result pipe) would then reuse.
//!
//! # Safety
//! The `unsafe` blocks call the C library's `posix_spawn` family on attribute and file-action
//! objects that live on this stack frame, are initialised before use and destroyed exactly
//! once, and on NUL-terminated argument and environment arrays that outlive the call.
//!
//! # References
//! posix_spawn(3), posix_spawn_file_actions_adddup2(3), posix_spawn_file_actions_addclose(3),
//! fcntl(2) (`F_GETFD`).

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::ptr;
use std::sync::OnceLock;

use super::RawPid;
use super::process::{EXIT_FD, PARENT_ALIVE_FD};

/// The descriptor number at which a spawned child finds its boot socket.
pub(crate) const BOOT_FD: i32 = 3;

/// The first descriptor number `spawn_self` closes in the child.
const FIRST_CLOSED: i32 = PARENT_ALIVE_FD + 1;

/// The program to re-execute: the path this program was run from, found on first use.
fn self_exe() -> io::Result<&'static CStr> {
    static EXE: OnceLock<Result<CString, String>> = OnceLock::new();
    let found = EXE.get_or_init(|| {
        let path = std::env::current_exe()
            .and_then(|p| {
                if p.is_absolute() {
                    Ok(p)
                } else {
                    std::path::absolute(p)
                }
            })
            .map_err(|e| e.to_string())?;
        CString::new(path.into_os_string().into_vec()).map_err(|e| e.to_string())
    });
    match found {
        Ok(path) => Ok(path.as_c_str()),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot find the path of the running program: {e}"),
        )),
    }
}

/// The descriptor the pre-main hook reads its boot message from, if this program was started
/// by [`spawn_self`]; takes over the exit pipe and the parent's alive pipe too (`process.rs`).
pub(crate) fn take_boot_fd() -> Option<OwnedFd> {
    let boot = super::image::take_boot_fd()?;
    super::process::adopt_in_spawned_child();
    Some(boot)
}

/// Starts a fresh copy of this program with `boot` at [`BOOT_FD`] and `marker` (`NAME=value`)
/// added to the environment, with an exit pipe (its handle is taken by
/// `pidfd_for_new_child`). Returns the child's pid; exec failures are reported here.
pub(crate) fn spawn_self(boot: BorrowedFd<'_>, marker: (&str, &str)) -> io::Result<RawPid> {
    let exe = self_exe()?;
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let argv_owned = [cstring(arg0)?];
    let mut argv: Vec<*mut libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(ptr::null_mut());

    let mut env_owned = Vec::new();
    for (key, value) in std::env::vars_os() {
        if key == marker.0 {
            continue;
        }
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend(value.into_vec());
        env_owned.push(cstring(OsString::from_vec(entry))?);
    }
    env_owned.push(cstring(OsString::from(format!(
        "{}={}",
        marker.0, marker.1
    )))?);
    let mut envp: Vec<*mut libc::c_char> =
        env_owned.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(ptr::null_mut());

    // Held from the exit pipe's creation until our copy of its write end is closed, so that
    // no child started meanwhile inherits it.
    let start = super::process::START_LOCK.lock();
    let alive_r = super::process::alive_read_end()?;
    let (exit_r, exit_w) = super::process::exit_pipe()?;
    // Sources of the dup2 actions must not sit on a target number another action overwrites
    // first: move them all above the numbers the child uses.
    let above = |fd: BorrowedFd<'_>| rustix::io::fcntl_dupfd_cloexec(fd, FIRST_CLOSED);
    let boot = above(boot)?;
    let exit_w_moved = above(exit_w.as_fd())?;
    drop(exit_w);
    // SAFETY: our alive pipe's read end lives as long as this process.
    let alive = above(unsafe { BorrowedFd::borrow_raw(alive_r) })?;

    let mut actions = FileActions::new()?;
    actions.dup2(boot.as_raw_fd(), BOOT_FD)?;
    actions.dup2(exit_w_moved.as_raw_fd(), EXIT_FD)?;
    actions.dup2(alive.as_raw_fd(), PARENT_ALIVE_FD)?;
    actions.close_from(FIRST_CLOSED)?;
    let mut attr = SpawnAttr::new()?;
    attr.clear_signal_mask()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: `pid` is a valid out-pointer; `exe` is NUL-terminated; `actions` and `attr`
    // were initialised by their constructors; `argv` and `envp` are NULL-terminated arrays of
    // pointers into CStrings (`argv_owned`, `env_owned`) that live until after the call.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    drop(exit_w_moved);
    drop(start);
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    super::process::record_started(pid, exit_r);
    Ok(pid)
}

fn cstring(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment contains a NUL byte",
        )
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut raw = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: `init` writes a valid object through the pointer; on success it is initialised.
        check(unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised by the successful call above.
        Ok(FileActions(unsafe { raw.assume_init() }))
    }

    fn dup2(&mut self, from: i32, to: i32) -> io::Result<()> {
        // SAFETY: `self.0` is an initialised file-actions object.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, from, to) })
    }

    /// Closes, in the child, every descriptor from `from` up.
    fn close_from(&mut self, from: i32) -> io::Result<()> {
        if let Some(addclosefrom) = addclosefrom() {
            // SAFETY: `self.0` is an initialised file-actions object; `addclosefrom` is the C
            // library's `posix_spawn_file_actions_addclosefrom_np`, with that signature.
            return check(unsafe { addclosefrom(&mut self.0, from) });
        }
        for fd in inheritable_fds(from) {
            // SAFETY: `self.0` is an initialised file-actions object.
            match check(unsafe { libc::posix_spawn_file_actions_addclose(&mut self.0, fd) }) {
                // Above the descriptor limit (lowered since it was opened): such a number
                // cannot be closed by an action; it is the one descriptor that may leak.
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

type AddCloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

/// `posix_spawn_file_actions_addclosefrom_np`, if the C library has it (glibc 2.34 and later).
/// Looked up at run time, so that the crate links against older C libraries too.
fn addclosefrom() -> Option<AddCloseFrom> {
    static FOUND: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    #[cfg(test)]
    if FORCE_NO_CLOSEFROM.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let addr = *FOUND.get_or_init(|| {
        // SAFETY: `dlsym` only looks the NUL-terminated name up; null when it is not there.
        let sym = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            )
        };
        (!sym.is_null()).then_some(sym as usize)
    });
    // SAFETY: the address is the C library's `posix_spawn_file_actions_addclosefrom_np`,
    // whose C signature `AddCloseFrom` is (glibc's <spawn.h>).
    addr.map(|a| unsafe { std::mem::transmute::<usize, AddCloseFrom>(a) })
}

/// This process's descriptors from `from` up that would survive an `exec` (no close-on-exec),
/// by probing every number below the descriptor limit (at most 65,536): no `/proc/self/fd`.
fn inheritable_fds(from: i32) -> Vec<i32> {
    let inheritable = |fd: i32| {
        // SAFETY: F_GETFD on any number only reads the descriptor's flags (EBADF if closed).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC == 0
    };
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
        .min(65_536) as i32;
    (from..limit).filter(|&fd| inheritable(fd)).collect()
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and destroyed only here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        let mut raw = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: `init` writes a valid object through the pointer; on success it is initialised.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised by the successful call above.
        Ok(SpawnAttr(unsafe { raw.assume_init() }))
    }

    /// The child starts with no signals blocked, whatever the calling thread blocks.
    fn clear_signal_mask(&mut self) -> io::Result<()> {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigemptyset` initialises the set it is given.
        unsafe { libc::sigemptyset(empty.as_mut_ptr()) };
        // SAFETY: `self.0` is initialised; `empty` was initialised by `sigemptyset`.
        check(unsafe { libc::posix_spawnattr_setsigmask(&mut self.0, empty.as_ptr()) })?;
        // SAFETY: `self.0` is initialised.
        check(unsafe {
            libc::posix_spawnattr_setflags(&mut self.0, libc::POSIX_SPAWN_SETSIGMASK as _)
        })
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and destroyed only here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Identifies the running program's file, to check that a re-executed child runs the same
/// binary as its parent: (device, inode, size, modification time in ns).
pub(crate) fn exe_identity() -> io::Result<(u64, u64, i64, i64)> {
    let st = rustix::fs::stat(self_exe()?)?;
    Ok((
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec as i64,
    ))
}

/// Makes spawns take the fallback used where the C library has no
/// `posix_spawn_file_actions_addclosefrom_np`, so that this machine's tests exercise it.
#[cfg(test)]
pub(crate) static FORCE_NO_CLOSEFROM: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    #[test]
    fn inheritable_fds_lists_exactly_the_descriptors_without_close_on_exec() {
        let (r, w) = super::super::pipe().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: F_DUPFD on an open descriptor only allocates a new one, closed below.
        let leaky = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD, 3) };
        assert!(leaky >= 3);
        let found = super::inheritable_fds(3);
        assert!(found.contains(&leaky), "{found:?}");
        assert!(!found.contains(&r.as_raw_fd()) && !found.contains(&w.as_raw_fd()));
        assert!(
            super::inheritable_fds(leaky + 1)
                .iter()
                .all(|&fd| fd > leaky)
        );
        // SAFETY: `leaky` is ours and closed once.
        unsafe { libc::close(leaky) };
    }

    /// The child's view: whether descriptor `fd` is open in it.
    fn fd_is_open(fd: i32) -> bool {
        // SAFETY: F_GETFD on any number only reads the descriptor's flags (EBADF if closed).
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// Where the C library cannot close every descriptor for `posix_spawn` (glibc before
    /// 2.34, musl), a descriptor left without close-on-exec must still reach neither a spawned
    /// child nor the forkserver (whose children would inherit it).
    #[test]
    fn descriptors_without_close_on_exec_do_not_leak_without_closefrom() {
        use crate::context::{StartMethod, get_context};
        super::FORCE_NO_CLOSEFROM.store(true, std::sync::atomic::Ordering::Relaxed);
        let (r, _w) = super::super::pipe().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: F_DUPFD (no close-on-exec) on an open descriptor only allocates a new one,
        // closed below.
        let leaky = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD, 40) };
        assert!(leaky >= 40);
        for method in [StartMethod::Spawn, StartMethod::ForkServer] {
            let open = get_context(method)
                .spawn_with_args(fd_is_open, leaky)
                .unwrap()
                .join()
                .unwrap();
            assert!(!open, "{method}: descriptor {leaky} leaked into the child");
        }
        // SAFETY: `leaky` is ours and closed once.
        unsafe { libc::close(leaky) };
    }
}
