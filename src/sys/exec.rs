//! Starting a fresh copy of the running program: `posix_spawn` of `/proc/self/exe`.
//!
//! The child gets one extra descriptor, the boot socket, at [`BOOT_FD`]; every other
//! descriptor above stderr is closed in it (Python's `close_fds=True`), so the child holds
//! exactly what it is sent.
//!
//! # Safety
//! The `unsafe` blocks call glibc's `posix_spawn` family on attribute and file-action objects
//! that live on this stack frame, are initialised before use and destroyed exactly once, and on
//! NUL-terminated argument and environment arrays that outlive the call.
//!
//! # References
//! posix_spawn(3), posix_spawn_file_actions_adddup2(3), proc(5) (`/proc/self/exe`).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::ptr;

use super::RawPid;

/// The descriptor number at which a spawned child finds its boot socket.
pub(crate) const BOOT_FD: i32 = 3;

/// The program to re-execute: the running binary's inode, even if its path was replaced or
/// deleted since it started.
const SELF_EXE: &std::ffi::CStr = c"/proc/self/exe";

/// Starts a fresh copy of this program with `boot` at [`BOOT_FD`] and `marker` (`NAME=value`)
/// added to the environment. Returns the child's pid; exec failures are reported here.
pub(crate) fn spawn_self(boot: BorrowedFd<'_>, marker: (&str, &str)) -> io::Result<RawPid> {
    // A dup2 onto itself would leave close-on-exec set; move a descriptor that already sits at
    // BOOT_FD out of the way first.
    let moved;
    let boot = if boot.as_raw_fd() == BOOT_FD {
        moved = rustix::io::fcntl_dupfd_cloexec(boot, BOOT_FD + 1)?;
        moved.as_fd()
    } else {
        boot
    };

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

    let mut actions = FileActions::new()?;
    actions.dup2(boot.as_raw_fd(), BOOT_FD)?;
    actions.close_from(BOOT_FD + 1)?;
    let mut attr = SpawnAttr::new()?;
    attr.clear_signal_mask()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: `pid` is a valid out-pointer; SELF_EXE is NUL-terminated; `actions` and `attr`
    // were initialised by their constructors; `argv` and `envp` are NULL-terminated arrays of
    // pointers into CStrings (`argv_owned`, `env_owned`) that live until after the call.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            SELF_EXE.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
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

    #[cfg(target_env = "gnu")]
    fn close_from(&mut self, from: i32) -> io::Result<()> {
        // SAFETY: `self.0` is an initialised file-actions object (glibc >= 2.34).
        check(unsafe { libc::posix_spawn_file_actions_addclosefrom_np(&mut self.0, from) })
    }

    #[cfg(not(target_env = "gnu"))]
    fn close_from(&mut self, _from: i32) -> io::Result<()> {
        // Without closefrom the child inherits only descriptors lacking close-on-exec, which
        // this crate never creates.
        Ok(())
    }
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
    let st = rustix::fs::stat(SELF_EXE)?;
    Ok((
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec as i64,
    ))
}
