//! The `posix_spawn` set-up both layers' `exec.rs` share: the argument and environment
//! arrays, the file actions (copies onto fixed descriptors, every other descriptor closed in
//! the child) and the attributes (no signal blocked). Each layer's `spawn_self` chooses the
//! program and the descriptors the child gets.
//!
//! Descriptors with close-on-exec (all this crate and Rust's standard library make) go at the
//! `exec` anyway; the others, which a careless library may leave open, are closed by a
//! file action: `posix_spawn_file_actions_addclosefrom_np` where the C library has it (glibc
//! 2.34 and later, looked up at run time), else one `addclose` for each descriptor found open
//! without close-on-exec just before the spawn. The fallback misses a descriptor that another
//! thread opens without close-on-exec between that scan and the spawn.
//!
//! # Safety
//! The `unsafe` blocks call the C library's `posix_spawn` family on attribute and file-action
//! objects that live on this stack frame, are initialised before use and destroyed exactly
//! once, and on NUL-terminated argument and environment arrays that outlive the call.
//!
//! # References
//! posix_spawn(3), posix_spawn_file_actions_adddup2(3), posix_spawn_file_actions_addclose(3),
//! fcntl(2) (`F_GETFD`), proc(5) (`/proc/self/fd`, Linux layer only).

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::ptr;

use super::RawPid;

/// The argument and environment arrays of a re-executed copy of this program: its own
/// `argv[0]`, and its environment with `marker` (`NAME=value`) set.
pub(super) struct Program {
    // Never read: owned here so that the pointers in `argv` and `envp` stay valid.
    _argv_owned: [CString; 1],
    argv: Vec<*mut libc::c_char>,
    _env_owned: Vec<CString>,
    envp: Vec<*mut libc::c_char>,
}

impl Program {
    pub(super) fn new(marker: (&str, &str)) -> io::Result<Program> {
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
        Ok(Program {
            _argv_owned: argv_owned,
            argv,
            _env_owned: env_owned,
            envp,
        })
    }

    /// Runs `exe` with these arrays; in the child, each `(from, to)` of `dups` is copied onto
    /// `to` (in order) and every descriptor from `close_from` up is closed, and no signal is
    /// blocked. Returns the child's pid; exec failures are reported here.
    pub(super) fn spawn(
        &self,
        exe: &CStr,
        dups: &[(i32, i32)],
        close_from: i32,
    ) -> io::Result<RawPid> {
        let mut actions = FileActions::new()?;
        for &(from, to) in dups {
            actions.dup2(from, to)?;
        }
        actions.close_from(close_from)?;
        let mut attr = SpawnAttr::new()?;
        attr.clear_signal_mask()?;

        let mut pid: libc::pid_t = 0;
        // SAFETY: `pid` is a valid out-pointer; `exe` is NUL-terminated; `actions` and `attr`
        // were initialised by their constructors; `argv` and `envp` are NULL-terminated arrays
        // of pointers into CStrings (`_argv_owned`, `_env_owned`) that `self` owns, so they
        // live until after the call.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                exe.as_ptr(),
                &actions.0,
                &attr.0,
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(pid)
    }
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

/// This process's descriptors from `from` up that would survive an `exec` (no close-on-exec):
/// on the Linux layer from `/proc/self/fd` where it is mounted; else (and always on the
/// portable layer, which reads no `/proc`) by probing every number below the descriptor limit
/// (at most 65,536).
fn inheritable_fds(from: i32) -> Vec<i32> {
    let inheritable = |fd: i32| {
        // SAFETY: F_GETFD on any number only reads the descriptor's flags (EBADF if closed).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC == 0
    };
    let probe = || -> Vec<i32> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX)
            .min(65_536) as i32;
        (from..limit).collect()
    };
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    let candidates: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_else(probe);
    #[cfg(not(all(target_os = "linux", not(multiproc_portable))))]
    let candidates: Vec<i32> = probe();
    // The directory's own descriptor is closed by now and fails the check.
    candidates
        .into_iter()
        .filter(|&fd| fd >= from && inheritable(fd))
        .collect()
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
