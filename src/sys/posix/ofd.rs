//! Open file descriptions on the portable layer: the event a `Queue` raises for `wait()`
//! without eventfd, and the queue's holder marks without OFD locks or `/proc`.
//!
//! # The event
//!
//! An eventfd is one descriptor that any holder can make readable and drain. POSIX's pipe
//! has two ends, and a queue's handles (in any process) hold and pass only one descriptor,
//! so the event here is a Unix datagram socket connected to itself: bound to a name in a
//! fresh private directory (mode 0700), connected to that name, after which the name and
//! the directory are removed. [`eventfd_raise`] sends it a one-byte datagram (a full buffer
//! means it is readable already), [`eventfd_drain`] receives until none is left; `poll` sees
//! it readable while a datagram waits, as an eventfd with a non-zero counter. Needs a
//! writable `/tmp` at creation.
//!
//! # Holder marks: `flock`ed files, one per handle
//!
//! A queue marks each handle as a holder (of the producer and the getter roles) with a mark
//! the kernel drops when the handle's last descriptor closes, killed processes included. On
//! Linux that is an OFD lock on a byte of a new open file description of the queue's memory
//! (`/proc/self/fd`). Neither half has a POSIX form: an unlinked `shm_open` object cannot be
//! opened again (`/dev/fd/N` on macOS and the BSDs duplicates the descriptor), and `flock`,
//! which has the open-file-description semantics everywhere, locks whole files and has no
//! query. So here a handle's descriptor (what [`reopen`] returns, and the queue keeps as its
//! `ofd`) is its own *mark file*, in a private directory per queue,
//! `/tmp/multiproc-queue-<16 hex digits>` (mode 0700):
//!
//! - the handle holds it `flock`ed `LOCK_EX` from its creation until its last descriptor
//!   closes (a `fork` or a passed descriptor shares the description, so the two share the
//!   mark, as with OFD locks): that is the getter role;
//! - the producer role is the getter role plus a byte in the file that [`ofd_release`] sets
//!   once (`close` is one-way), so no lock is ever converted or dropped to change roles
//!   (`flock` converts by unlocking first, which would let a querier see a live handle dead);
//! - [`ofd_others_hold`] lists the directory and tries `LOCK_SH | LOCK_NB` on every other
//!   mark (told apart from the caller's own by device and inode): refused means a live
//!   holder (for the producer role, one whose byte is unset); granted means every holder is
//!   gone, and the file is removed. Queriers only ever take shared locks, which a live
//!   holder's exclusive one always refuses and which never refuse each other, so no live
//!   handle is ever seen gone and no two queries disturb each other;
//! - a mark is made under a dot name, locked, then renamed into place, so no query sees it
//!   unlocked; a queue's first mark is made inside a dot-named directory renamed into place
//!   the same way.
//!
//! A mark file holds a magic, the producer byte, and its directory's path, so [`reopen`] of
//! a mark (a new handle of a queue that has one) makes a sibling; of anything else (the
//! queue's memory, on `Queue::new`) a new directory. A queue's memory therefore travels
//! beside its mark when a handle is passed to a child (the queue's serializer sends both).
//!
//! Directories are removed by a sweep when a process makes a new queue: every
//! `/tmp/multiproc-queue-*` owned by this user, of mode 0700, none of whose marks is held, is
//! emptied and removed. No live mark can appear in such a directory (a new mark is made only
//! beside a live one, held by the handle being cloned), so the sweep cannot race a clone. So
//! a queue whose handles are all gone (its creator killed or not) leaves its directory (a few
//! hundred bytes) until that user's next `Queue::new`, rather than until the resource
//! tracker's; a process killed while making a queue's first mark leaves one dot-named
//! directory behind. Needs a writable `/tmp` for making queues and handles (not for passing
//! them).
//!
//! # Safety
//! No `unsafe`: everything goes through rustix's and std's safe wrappers.
//!
//! # References
//! unix(7) (`SOCK_DGRAM`), connect(2), send(2), recv(2), flock(2), rename(2).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// The queue's role bytes (`queue/mod.rs`): the producer role is the only one released
/// while the handle lives.
const PRODUCER: i64 = 0;

/// Where the queue directories live, and their names' prefix.
const QUEUE_DIRS: &str = "/tmp";
const QUEUE_PREFIX: &str = "multiproc-queue-";
/// A mark's name prefix once it is locked and in place; others (dot names) are skipped.
const MARK_PREFIX: &str = "h-";

/// A mark file's first bytes; the producer byte follows, then the directory's path.
const MAGIC: &[u8; 8] = b"mpqmark1";
const CLOSED_AT: u64 = 8;
const PATH_AT: u64 = 16;

/// A new handle's mark: a sibling of the mark `fd` (same queue), or, when `fd` is not a
/// mark (the queue's memory, for a new queue), the first mark of a new queue directory
/// (module note). The mark starts as a holder of both roles.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    match mark_dir(fd) {
        Some(dir) => new_mark(&dir, &dir),
        None => new_queue(),
    }
}

/// Marks `fd` (a mark from [`reopen`]) as a holder of `role`: a mark is made holding both,
/// so this only checks that it is a mark, and, for the getter role, takes its lock again
/// (a no-op while held).
pub(crate) fn ofd_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    if mark_dir(fd).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a queue handle's mark",
        ));
    }
    if role == PRODUCER {
        Ok(())
    } else {
        Ok(rustix::fs::flock(
            fd,
            FlockOperation::NonBlockingLockExclusive,
        )?)
    }
}

/// Stops `fd` being a holder of `role`: the producer role by setting its byte (for good),
/// the getter role by unlocking (which ends both).
pub(crate) fn ofd_release(fd: BorrowedFd<'_>, role: i64) -> io::Result<()> {
    if role == PRODUCER {
        write_at(fd, &[1], CLOSED_AT)
    } else {
        Ok(rustix::fs::flock(fd, FlockOperation::Unlock)?)
    }
}

/// Whether a handle other than `fd`'s holds `role`; removes the marks of handles found gone.
pub(crate) fn ofd_others_hold(fd: BorrowedFd<'_>, role: i64) -> io::Result<bool> {
    let dir = mark_dir(fd)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a queue handle's mark"))?;
    let own = rustix::fs::fstat(fd)?;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(MARK_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Some(other) = open_mark(&path)? else {
            continue; // removed meanwhile: its holders were gone
        };
        let st = rustix::fs::fstat(&other)?;
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) {
            continue;
        }
        if is_held(other.as_fd())? {
            if role != PRODUCER || !is_closed(other.as_fd())? {
                return Ok(true);
            }
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(false)
}

/// The directory of the mark `fd`, or `None` when `fd` is not a mark (reads fail on some
/// systems' shared memory objects: those are not marks either).
fn mark_dir(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    let mut head = [0u8; 8];
    match rustix::io::pread(fd, &mut head, 0) {
        Ok(8) if &head == MAGIC => {}
        _ => return None,
    }
    let mut path = [0u8; 1024];
    let n = rustix::io::pread(fd, &mut path, PATH_AT).ok()?;
    let path = std::str::from_utf8(&path[..n]).ok()?;
    path.starts_with(QUEUE_DIRS).then(|| PathBuf::from(path))
}

fn write_at(fd: BorrowedFd<'_>, bytes: &[u8], at: u64) -> io::Result<()> {
    match rustix::io::pwrite(fd, bytes, at)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::Error::from(io::ErrorKind::WriteZero)),
    }
}

fn is_closed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut b = [0u8; 1];
    Ok(rustix::io::pread(fd, &mut b, CLOSED_AT)? == 1 && b[0] != 0)
}

/// Whether some description holds the mark `fd` exclusively: a live handle. Granted, the
/// shared lock is dropped with `fd` by the caller.
fn is_held(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockShared) {
            Ok(()) => return Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens a mark read-only (never following a link); `None` if it is gone.
fn open_mark(path: &Path) -> io::Result<Option<OwnedFd>> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok(Some(f.into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn random_hex() -> io::Result<String> {
    let mut random = [0u8; 8];
    super::random_bytes(&mut random)?;
    Ok(format!("{:016x}", u64::from_ne_bytes(random)))
}

/// A new locked mark in `dir`, naming `home` (where `dir` will be once renamed) as its
/// directory.
fn new_mark(dir: &Path, home: &Path) -> io::Result<OwnedFd> {
    let name = random_hex()?;
    let tmp = dir.join(format!(".n-{name}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let fd = OwnedFd::from(file);
    let made = (|| {
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
        let home = home
            .to_str()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        write_at(fd.as_fd(), MAGIC, 0)?;
        write_at(fd.as_fd(), &[0; (PATH_AT - CLOSED_AT) as usize], CLOSED_AT)?;
        write_at(fd.as_fd(), home.as_bytes(), PATH_AT)?;
        std::fs::rename(&tmp, dir.join(format!("{MARK_PREFIX}{name}")))
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(fd)
}

/// A new queue directory with its first mark: made under a dot name, renamed into place.
fn new_queue() -> io::Result<OwnedFd> {
    sweep();
    let name = random_hex()?;
    let tmp = Path::new(QUEUE_DIRS).join(format!(".{QUEUE_PREFIX}{name}"));
    let home = Path::new(QUEUE_DIRS).join(format!("{QUEUE_PREFIX}{name}"));
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    let made = new_mark(&tmp, &home).and_then(|fd| {
        // `rename` would replace an empty directory already there: refuse one instead.
        if std::fs::symlink_metadata(&home).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(&tmp, &home).map(|()| fd)
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// Removes this user's queue directories none of whose marks is held (module note).
fn sweep() {
    let Ok(entries) = std::fs::read_dir(QUEUE_DIRS) else {
        return;
    };
    let euid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(QUEUE_PREFIX)
        {
            continue;
        }
        let dir = entry.path();
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == euid && m.mode() & 0o777 == 0o700 => {}
            _ => continue,
        }
        if unheld(&dir) == Some(true) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Whether no mark in `dir` is held (`None` if it cannot be told).
fn unheld(dir: &Path) -> Option<bool> {
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        if !entry.file_name().to_string_lossy().starts_with(MARK_PREFIX) {
            continue;
        }
        let Ok(Some(mark)) = open_mark(&entry.path()) else {
            continue;
        };
        if is_held(mark.as_fd()).ok()? {
            return Some(false);
        }
    }
    Some(true)
}

/// A new event (unset, close-on-exec, non-blocking): a Unix datagram socket connected to
/// itself (module note), readable while raised.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::DGRAM, None)?;
    rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::CLOEXEC)?;
    super::set_nonblocking(std::os::fd::AsFd::as_fd(&sock))?;
    let dir = private_dir()?;
    let name = dir.join("event");
    let bound = SocketAddrUnix::new(&name)
        .and_then(|addr| {
            rustix::net::bind(&sock, &addr)?;
            rustix::net::connect(&sock, &addr)
        })
        .map_err(io::Error::from);
    let _ = std::fs::remove_file(&name);
    let _ = std::fs::remove_dir(&dir);
    bound?;
    Ok(sock)
}

/// A new empty directory of mode 0700 in `/tmp`, under a random name.
fn private_dir() -> io::Result<std::path::PathBuf> {
    let mut attempts = 0;
    loop {
        let mut random = [0u8; 8];
        super::random_bytes(&mut random)?;
        let dir = std::path::PathBuf::from(format!(
            "/tmp/multiproc-event-{:016x}",
            u64::from_ne_bytes(random)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Makes the event `fd` readable (sends it one byte). Errors are ignored: the likely one, a
/// full buffer (`WouldBlock`), leaves it readable anyway.
pub(crate) fn eventfd_raise(fd: BorrowedFd<'_>) {
    loop {
        match rustix::net::send(fd, &[1], rustix::net::SendFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Makes the event `fd` unreadable (receives every byte sent to it). Errors are ignored:
/// `WouldBlock` ends the draining.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    loop {
        match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 1
    }

    #[test]
    fn the_event_is_raised_by_any_holder_and_drained_by_any() {
        let ev = eventfd().unwrap();
        assert!(!readable(ev.as_fd()), "starts unset");
        eventfd_drain(ev.as_fd());
        assert!(!readable(ev.as_fd()), "draining an unset event is harmless");
        for _ in 0..10_000 {
            eventfd_raise(ev.as_fd()); // past the socket's buffer: still just raised
        }
        let other = ev.try_clone().unwrap(); // as another process's descriptor of it
        assert!(readable(other.as_fd()));
        eventfd_drain(other.as_fd());
        assert!(!readable(ev.as_fd()), "drained for every holder");
        eventfd_raise(other.as_fd());
        assert!(readable(ev.as_fd()));
    }

    const GETTER: i64 = 1;

    fn memory() -> OwnedFd {
        // Not a mark (reads fail), as a queue's memory is not: `reopen` makes a new queue.
        rustix::pipe::pipe().unwrap().0
    }

    fn marks_in(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(MARK_PREFIX)
            })
            .count()
    }

    #[test]
    fn marks_hold_both_roles_until_closed_and_their_last_descriptor_goes() {
        let a = reopen(memory().as_fd()).unwrap();
        let dir = mark_dir(a.as_fd()).expect("a mark names its directory");
        assert!(dir.is_dir());
        ofd_hold(a.as_fd(), PRODUCER).unwrap();
        ofd_hold(a.as_fd(), GETTER).unwrap();
        assert!(!ofd_others_hold(a.as_fd(), PRODUCER).unwrap(), "alone");
        assert!(!ofd_others_hold(a.as_fd(), GETTER).unwrap(), "alone");
        let b = reopen(a.as_fd()).unwrap();
        assert_eq!(
            mark_dir(b.as_fd()).as_deref(),
            Some(dir.as_path()),
            "a sibling"
        );
        assert!(ofd_others_hold(a.as_fd(), PRODUCER).unwrap());
        assert!(ofd_others_hold(a.as_fd(), GETTER).unwrap());
        ofd_release(b.as_fd(), PRODUCER).unwrap();
        assert!(!ofd_others_hold(a.as_fd(), PRODUCER).unwrap(), "b closed");
        assert!(
            ofd_others_hold(a.as_fd(), GETTER).unwrap(),
            "a closed handle still gets"
        );
        assert!(
            ofd_others_hold(b.as_fd(), PRODUCER).unwrap(),
            "a still puts"
        );
        // A second descriptor of b's description (as after fork or passing) keeps its mark.
        let b2 = b.try_clone().unwrap();
        drop(b);
        assert!(ofd_others_hold(a.as_fd(), GETTER).unwrap());
        assert_eq!(marks_in(&dir), 2);
        drop(b2);
        assert!(!ofd_others_hold(a.as_fd(), GETTER).unwrap(), "b is gone");
        assert_eq!(marks_in(&dir), 1, "b's mark was removed by the query");
        assert!(ofd_hold(memory().as_fd(), GETTER).is_err(), "not a mark");
        assert!(
            ofd_others_hold(memory().as_fd(), GETTER).is_err(),
            "not a mark"
        );
    }

    #[test]
    fn concurrent_queries_never_see_a_live_handle_gone() {
        let a = reopen(memory().as_fd()).unwrap();
        let others: Vec<OwnedFd> = (0..4).map(|_| reopen(a.as_fd()).unwrap()).collect();
        std::thread::scope(|s| {
            for me in &others {
                s.spawn(move || {
                    for _ in 0..300 {
                        assert!(ofd_others_hold(me.as_fd(), PRODUCER).unwrap());
                        assert!(ofd_others_hold(me.as_fd(), GETTER).unwrap());
                    }
                });
            }
        });
    }

    #[test]
    fn a_queue_directory_is_swept_once_every_handle_is_gone_and_not_before() {
        let live = reopen(memory().as_fd()).unwrap();
        let live_dir = mark_dir(live.as_fd()).unwrap();
        let dead = reopen(memory().as_fd()).unwrap();
        let dead_dir = mark_dir(dead.as_fd()).unwrap();
        let dead_sibling = reopen(dead.as_fd()).unwrap();
        drop(dead); // as a killed holder's: the kernel drops the lock with the description
        drop(dead_sibling);
        let next = reopen(memory().as_fd()).unwrap();
        assert!(
            !dead_dir.exists(),
            "the sweep removed the dead queue's directory"
        );
        assert!(live_dir.is_dir(), "a held queue's directory stays");
        assert!(mark_dir(next.as_fd()).unwrap().is_dir());
        drop(live);
        drop(next);
        drop(reopen(memory().as_fd()).unwrap()); // sweeps both
        assert!(!live_dir.exists());
    }
}
