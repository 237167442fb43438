//! Shared memory: anonymous segments (memfd), named segments (`/dev/shm`), mappings, and the
//! body of the resource-tracker process that unlinks names left behind by dead creators.
//!
//! # Safety
//! [`Mapping`] owns a `MAP_SHARED` region from `mmap` and unmaps it on drop; it hands out only
//! a raw base pointer and length, and the typed layers above (`shared/`, `sync/raw.rs`) decide
//! how the bytes are viewed. [`tracker_main`] runs in a freshly forked child and keeps to
//! async-signal-safe system calls on stack buffers.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rustix::fs::{Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new anonymous shared-memory file of `len` zero bytes (memfd, close-on-exec).
///
/// # References
/// memfd_create(2), ftruncate(2).
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    memfd_named(c"multiproc", len)
}

/// As [`memfd`], with `name` shown for it in `/proc/<pid>/fd` (as `memfd:<name>`).
pub(crate) fn memfd_named(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// Gives the pages of `[start, start + len)` of the file behind `fd` back to the OS; they
/// read as zeros afterwards and the file keeps its size. Best effort: errors are ignored
/// (the memory is then merely kept).
///
/// # References
/// fallocate(2) `FALLOC_FL_PUNCH_HOLE`.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, start: u64, len: u64) {
    let _ = rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        start,
        len,
    );
}

/// The size in bytes of the file behind `fd`, and its identity (device and inode): two
/// descriptors, in any processes, refer to the same shared memory exactly when the identities
/// are equal.
pub(crate) fn fd_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    let st = rustix::fs::fstat(fd)?;
    let len =
        usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok((len, (st.st_dev as u64, st.st_ino as u64)))
}

/// A `MAP_SHARED`, read-write mapping of a whole file; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; what is stored in it and how it is
// accessed concurrently is governed by the typed layers above, which only use atomics or
// lock-protected access.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read-write. `len` must be non-zero.
    ///
    /// # References
    /// mmap(2).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty segment",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps nothing we own;
        // the returned region is owned by the `Mapping` and unmapped exactly once in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The base address (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Faults in the pages of `[offset, offset + len)` for writing with one call, rather than
    /// one fault per page. Best effort: a range outside the mapping is ignored, as are errors
    /// (the pages are then faulted in when written).
    ///
    /// # References
    /// madvise(2) `MADV_POPULATE_WRITE`.
    pub(crate) fn populate_write(&self, offset: usize, len: usize) {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return;
        }
        // SAFETY: `[offset, offset + len)` lies inside this mapping (checked above), which
        // stays mapped while `self` lives; populating only faults pages in, which changes no
        // byte of them.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the region mapped in `new`, and no reference
        // into it outlives `self` (the typed layers borrow from the owner of this mapping).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The longest name accepted for a named segment (bytes, without the leading `/`).
pub(crate) const MAX_NAME: usize = 200;

/// Checks a segment name: 1..=MAX_NAME bytes of `[A-Za-z0-9_.-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid shared memory name {name:?}: use 1 to {MAX_NAME} characters of \
                 A-Z a-z 0-9 _ . - not starting with a dot"
            ),
        ))
    }
}

fn shm_path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

/// Creates the named segment `name` (which must not exist) with `len` zero bytes.
///
/// # References
/// shm_open(3) (on Linux, a file in `/dev/shm` opened with `O_CREAT | O_EXCL | O_NOFOLLOW`).
pub(crate) fn shm_create(name: &str, len: usize) -> io::Result<OwnedFd> {
    check_name(name)?;
    let fd = rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
        let _ = rustix::fs::unlink(shm_path(name));
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing named segment `name`.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    check_name(name)?;
    Ok(rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes the name `name`; mappings stay valid until unmapped.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::unlink(shm_path(name))?)
}

// ---------------------------------------------------------------------------------------------
// The resource tracker's process body.

/// Size of one request on the tracker pipe; smaller than `PIPE_BUF`, so writes are atomic and
/// requests from several processes never interleave.
pub(crate) const RECORD: usize = 8 + MAX_NAME;

/// Encodes a request: `op` (`b'R'` register `name` for `pid`; `b'F'` forget that
/// registration of `pid`, after a failed create; `b'U'` unregister `name` for every pid, after
/// an unlink), the pid, the name.
pub(crate) fn tracker_record(op: u8, pid: u32, name: &str) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    rec[0] = op;
    rec[1] = name.len() as u8;
    rec[4..8].copy_from_slice(&pid.to_le_bytes());
    rec[8..8 + name.len()].copy_from_slice(name.as_bytes());
    rec
}

const SLOTS: usize = 256;
const PREFIX: &[u8] = b"/dev/shm/";

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    pid: u32,
    pidfd: RawFd,
    len: usize,
    name: [u8; MAX_NAME],
}

fn unlink_slot(slot: &Slot) {
    let mut path = [0u8; PREFIX.len() + MAX_NAME + 1];
    path[..PREFIX.len()].copy_from_slice(PREFIX);
    path[PREFIX.len()..PREFIX.len() + slot.len].copy_from_slice(&slot.name[..slot.len]);
    if let Ok(c) = CStr::from_bytes_until_nul(&path) {
        let _ = rustix::fs::unlink(c);
    }
}

fn close_raw(fd: RawFd) {
    // SAFETY: `fd` is a pidfd this process opened and recorded in exactly one slot, which is
    // being cleared; it is closed once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Starts the tracker: forks a detached grandchild that reads requests from the returned
/// pipe and unlinks each registered name when its creator dies, or all of them when every
/// holder of the pipe's write end has exited. Returns the write end.
pub(crate) fn start_tracker() -> io::Result<OwnedFd> {
    let (read, write) = super::pipe()?;
    let read_raw = read.as_raw_fd();
    let mid = super::fork_child(|| {
        // Intermediate child: fork the tracker and leave, so that the tracker is reparented
        // and nobody has to reap it.
        match super::fork_child(|| tracker_main(read_raw)) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    })?;
    drop(read);
    let pid = rustix::process::Pid::from_raw(mid).ok_or_else(|| io::Error::other("bad pid"))?;
    let status = loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    match status.and_then(|(_, s)| s.exit_status()) {
        Some(0) => Ok(write),
        _ => Err(io::Error::other(
            "could not start the resource tracker process",
        )),
    }
}

/// The tracker's loop. Async-signal-safe: no allocation, no locks.
fn tracker_main(read: RawFd) -> i32 {
    // SAFETY: plain system calls on descriptors and signal dispositions of this fresh child:
    // detach from the session (no terminal signals), ignore SIGINT/SIGTERM as Python's
    // resource tracker does, move the request pipe to fd 3, point stdio at /dev/null (so no
    // test harness waits on our inherited stdout), and close every other inherited descriptor
    // (so we never keep someone else's pipe open).
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        if read != 3 && libc::dup2(read, 3) < 0 {
            return 1;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9: close them one by one.
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as i32;
            for fd in 4..max {
                libc::close(fd);
            }
        }
    }
    let read = 3;
    let mut slots = [Slot {
        used: false,
        pid: 0,
        pidfd: -1,
        len: 0,
        name: [0; MAX_NAME],
    }; SLOTS];
    let mut rec = [0u8; RECORD];
    loop {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; SLOTS + 1];
        fds[0].fd = read;
        for (i, s) in slots.iter().enumerate() {
            if s.used {
                fds[i + 1].fd = s.pidfd;
            }
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length; negative fds are
        // ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        for i in 0..SLOTS {
            if slots[i].used && fds[i + 1].revents != 0 {
                unlink_slot(&slots[i]);
                close_raw(slots[i].pidfd);
                slots[i].used = false;
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: reads into a stack buffer of exactly `RECORD` bytes.
        let got = unsafe { libc::read(read, rec.as_mut_ptr().cast(), RECORD) };
        if got == 0 || (got < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
        {
            // Every client is gone: nothing can attach by name any more.
            for s in slots.iter().filter(|s| s.used) {
                unlink_slot(s);
            }
            return 0;
        }
        if got as usize != RECORD {
            continue;
        }
        let len = (rec[1] as usize).min(MAX_NAME);
        let pid = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let name = &rec[8..8 + len];
        match rec[0] {
            b'R' => {
                let Some(free) = slots.iter().position(|s| !s.used) else {
                    continue;
                };
                // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
                let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
                if pidfd < 0 {
                    // The creator is already gone.
                    let mut s = slots[free];
                    s.len = len;
                    s.name[..len].copy_from_slice(name);
                    unlink_slot(&s);
                    continue;
                }
                let s = &mut slots[free];
                s.used = true;
                s.pid = pid;
                s.pidfd = pidfd as RawFd;
                s.len = len;
                s.name[..len].copy_from_slice(name);
            }
            b'U' | b'F' => {
                let any_pid = rec[0] == b'U';
                for s in slots.iter_mut() {
                    if s.used && &s.name[..s.len] == name && (any_pid || s.pid == pid) {
                        close_raw(s.pidfd);
                        s.used = false;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Writes one request to the tracker pipe (atomic: `RECORD < PIPE_BUF`).
pub(crate) fn tracker_send(pipe: &OwnedFd, rec: &[u8; RECORD]) -> io::Result<()> {
    super::write_all(pipe.as_fd(), rec)
}
