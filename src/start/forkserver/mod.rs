//! `forkserver`: children are forked from a small single-threaded server process.
//!
//! The server is a fresh execution of this program (as under `spawn`) that the pre-main hook
//! turns into a request loop before `main` could start any thread. On the first forkserver
//! start the parent launches it; every start sends it the boot message with the arguments'
//! descriptors (SCM_RIGHTS), and the server `clone(CLONE_PARENT)`s a child that runs it and
//! answers with the child's pid. Being made with `CLONE_PARENT`, the child is a direct child of
//! the program that asked for it, so reaping, pidfds, `parent_process()` and daemons'
//! parent-death signal work as under the other methods. See `README.md` beside this file.
//!
//! The server ends when the socket to its owner closes: when the owner exits or dies, however.
//! If it dies, the owner notices (its pidfd is readable) at the next start, reaps it and
//! starts a new one. If it dies during a start, the kernel's record of the children it made
//! (a pid slot shared with the owner, written by `clone` itself) tells whether the child
//! exists: then the start succeeded; otherwise it is tried once more on a new server. Nothing
//! hangs, and no child is ever made that the owner does not know of.
//!
//! On the portable POSIX layer (`--cfg multiproc_portable`, and every non-Linux Unix) there is
//! no `CLONE_PARENT`: the server forks its own children and reports each one's exit status
//! back on a per-child status pipe sent with the request, as CPython's forkserver does; that
//! pipe is the child's handle here (see `sys/posix/clone.rs`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Launched, Popen, boot};
use crate::error::{Error, ErrorKind, Result};
use crate::process::bootstrap::{self, ChildPlan};
use crate::process::target::Task;
use crate::sys::{self, Kill, PidSlot, RawPid, SiblingCloner};
use crate::wire;

pub(crate) struct ForkServer;

/// How long a start waits for the server's answer before giving up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The running server, owned by the process that started it.
#[derive(Debug)]
struct Server {
    /// The process that started the server (a forked child inherits this value, not the server).
    owner: RawPid,
    pid: RawPid,
    pidfd: OwnedFd,
    sock: OwnedFd,
    /// Where the kernel writes the pid of each child the server makes (`CLONE_PARENT_SETTID`),
    /// so that a child is never lost with the server's answer.
    made: PidSlot,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// The running server as (owner pid << 32 | server pid), 0 for none: readable without waiting
/// for a start in progress, for [`server_pid`].
static SERVER_PID: AtomicU64 = AtomicU64::new(0);

/// The pid of the forkserver this process started, if it has one that was not found dead.
pub(crate) fn server_pid() -> Option<u32> {
    let both = SERVER_PID.load(Ordering::Acquire);
    let (owner, pid) = ((both >> 32) as u32, both as u32);
    (both != 0 && owner == sys::current_pid() as u32).then_some(pid)
}

/// Why a request produced no pid.
enum Failure {
    /// The server could not make the child (`clone` failed) and said so; it is still fine.
    Refused(Error),
    /// The server died, or stopped answering, before its answer arrived.
    Lost(Error),
}

impl Popen for ForkServer {
    fn launch(&self, plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched> {
        super::ensure_can_reexec()?;
        let boot = boot::prepare(plan, task)?;
        // One request at a time: the server answers in order on one socket.
        let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
        let mut retried = false;
        let (pid, status) = loop {
            let server = running(&mut slot)?;
            let mut status = StatusPipe::new()?;
            let error = match server.request(&boot, status.write_end()) {
                Ok(pid) => break (pid, status),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Lost(e)) => e,
            };
            // The server is gone or hung. Once it has ended for sure, the slot tells whether it
            // made the child before it went: then the start succeeded (the child is ours,
            // through CLONE_PARENT), and starting it again would run the target twice.
            let server = slot.take().expect("`running` filled the slot");
            match server.stop(status.in_flight()) {
                Ended::Made(pid) => {
                    tracing::warn!(
                        pid,
                        "forkserver died after making a child; the start stands"
                    );
                    break (pid, status);
                }
                // Nothing was made, so trying once more on a new server is safe: a start made
                // just as the server died (it never read the request) should not fail.
                Ended::MadeNothing if !retried && !error.is_timeout() => {
                    tracing::warn!(%error, "retrying the start on a new forkserver");
                    retried = true;
                }
                Ended::MadeNothing | Ended::Unknown => return Err(error),
            }
        };
        drop(slot);
        let pidfd = status.into_handle(pid)?;
        Ok(Launched { pid, pidfd })
    }
}

/// The portable layer's server writes a child's pid into the slot after `fork` returns, and the
/// child writes it too as its first act; a server killed in between leaves it to the child.
/// Whether there is such a child is told by the request's status channel: the child holds its
/// write end from birth, so once the server is dead (and our copy closed) the channel is at its
/// end exactly when no child exists. While it is open, the child will record itself (it is
/// running, or about to): wait for that, bounded.
fn wait_for_made(made: &PidSlot, in_flight: Option<BorrowedFd<'_>>) -> Option<RawPid> {
    let status = in_flight?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        if let Some(pid) = made.get() {
            return Some(pid);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let ready = sys::wait_readable(
            &[status],
            Some((now + Duration::from_millis(1)).min(deadline)),
        );
        if ready.map_or(true, |r| r[0]) {
            // At its end (no child), or an error: a last look at the slot.
            return made.get();
        }
    }
}

/// Where a forkserver child's end is seen from. On the Linux layer the child is ours
/// (`CLONE_PARENT`) and gets a pidfd; on the portable layer the server reports its exit status
/// into a channel made here per request, whose write end goes with the request.
struct StatusPipe {
    read: Option<OwnedFd>,
    write: Option<OwnedFd>,
}

impl StatusPipe {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    fn new() -> Result<StatusPipe> {
        Ok(StatusPipe {
            read: None,
            write: None,
        })
    }

    #[cfg(any(multiproc_portable, not(target_os = "linux")))]
    fn new() -> Result<StatusPipe> {
        let (r, w) = sys::exit_pipe()?;
        Ok(StatusPipe {
            read: Some(r),
            write: Some(w),
        })
    }

    fn write_end(&self) -> Option<BorrowedFd<'_>> {
        self.write.as_ref().map(AsFd::as_fd)
    }

    /// After a lost request: closes our copy of the write end (so that the channel ends when
    /// no child holds it) and returns the read end for [`Server::stop`].
    fn in_flight(&mut self) -> Option<BorrowedFd<'_>> {
        self.write = None;
        self.read.as_ref().map(AsFd::as_fd)
    }

    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    fn into_handle(self, pid: RawPid) -> Result<OwnedFd> {
        Ok(sys::pidfd_for_new_child(pid)?)
    }

    #[cfg(any(multiproc_portable, not(target_os = "linux")))]
    fn into_handle(self, pid: RawPid) -> Result<OwnedFd> {
        let read = self.read.expect("made by `new` on this layer");
        // The server and the child hold the write end now; ours would hide their end.
        drop(self.write);
        Ok(sys::handle_for_reported_child(pid, read)?)
    }
}

/// The server for this process, started (or restarted) if needed.
fn running(slot: &mut Option<Server>) -> Result<&Server> {
    let me = sys::current_pid();
    if let Some(server) = slot.as_ref() {
        if server.owner != me {
            // Inherited through `fork`: the server belongs to our parent. Close our copies.
            *slot = None;
        } else if server.has_exited() {
            tracing::warn!(pid = server.pid, "forkserver died; starting a new one");
            if let Some(server) = slot.take() {
                // Its last request was answered, so the slot holds no unknown child.
                server.stop(None);
            }
        }
    }
    if slot.is_none() {
        // The server's children are made with CLONE_PARENT, so their parent is the *thread*
        // that started the server, and the kernel sends a daemon's parent-death signal when
        // that thread exits: start it from a thread that lasts as long as this process.
        *slot = Some(super::on_a_lasting_thread(Server::start)??);
    }
    Ok(slot.as_ref().expect("just filled"))
}

/// What a stopped server left behind.
enum Ended {
    /// It made a child for the request in flight: this pid.
    Made(RawPid),
    /// It ended without making one.
    MadeNothing,
    /// It could not be seen to end.
    Unknown,
}

impl Server {
    fn start() -> Result<Server> {
        #[cfg(all(target_os = "linux", not(multiproc_portable)))]
        warn_once_if_no_cached_tid();
        let (made, made_fd) = sys::PidSlot::create()?;
        let (ours, pid, pidfd) = super::start_self("forkserver")?;
        let server = Server {
            owner: sys::current_pid(),
            pid,
            pidfd,
            sock: ours,
            made,
        };
        // Its first message: the pid slot it clones children with.
        let setup = wire::encode_frame(&())?;
        if let Err(e) = sys::send_with_fds(server.sock.as_fd(), &setup, &[made_fd.as_fd()]) {
            server.stop(None);
            return Err(Error::with_source(ErrorKind::Io, e));
        }
        SERVER_PID.store(
            (u64::from(server.owner as u32) << 32) | u64::from(pid as u32),
            Ordering::Release,
        );
        tracing::debug!(pid, "forkserver started");
        Ok(server)
    }

    fn has_exited(&self) -> bool {
        sys::wait_readable(&[self.pidfd.as_fd()], Some(Instant::now()))
            .map_or(true, |ready| ready[0])
    }

    /// Sends one boot message and waits for the pid of the child made from it.
    fn request(
        &self,
        boot: &boot::Prepared,
        status: Option<BorrowedFd<'_>>,
    ) -> std::result::Result<RawPid, Failure> {
        let died = |what: &str| {
            Failure::Lost(Error::with_message(
                ErrorKind::Io,
                format!("the forkserver died {what}; the next start launches a new one"),
            ))
        };
        self.made.clear();
        let mut fds = boot.borrowed_fds();
        // Last, so the server finds it whatever the boot message carries.
        fds.extend(status);
        if sys::send_with_fds(self.sock.as_fd(), &boot.frame, &fds).is_err() {
            return Err(died("before it got the request"));
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut reply = [0u8; 4];
        let mut got = 0;
        while got < reply.len() {
            let ready =
                sys::wait_readable(&[self.sock.as_fd(), self.pidfd.as_fd()], Some(deadline))
                    .map_err(|e| Failure::Lost(e.into()))?;
            if ready[0] {
                match sys::read(self.sock.as_fd(), &mut reply[got..]) {
                    Ok(0) => return Err(died("while starting a child")),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // A peer that dies with our request unread resets the connection.
                    Err(e) => return Err(died(&format!("while starting a child ({e})"))),
                }
            } else if ready[1] {
                return Err(died("while starting a child"));
            } else if Instant::now() >= deadline {
                return Err(Failure::Lost(Error::with_message(
                    ErrorKind::Timeout,
                    "the forkserver did not answer within 30 s; the next start launches a new one",
                )));
            }
        }
        match i32::from_le_bytes(reply) {
            pid if pid > 0 => Ok(pid),
            errno => Err(Failure::Refused(Error::with_source(
                ErrorKind::Io,
                io::Error::from_raw_os_error(errno.saturating_neg()),
            ))),
        }
    }

    /// Kills and reaps the server, and says whether it made a child for the request in flight.
    /// `in_flight` is that request's status channel on the portable layer (see `wait_for_made`).
    fn stop(self, in_flight: Option<BorrowedFd<'_>>) -> Ended {
        if server_pid() == Some(self.pid as u32) {
            SERVER_PID.store(0, Ordering::Release);
        }
        let _ = sys::pidfd_signal(self.pidfd.as_fd(), Kill::Kill);
        let ended = sys::wait_readable(&[self.pidfd.as_fd()], Some(Instant::now() + REPLY_TIMEOUT))
            .is_ok_and(|ready| ready[0]);
        let _ = sys::try_reap(self.pidfd.as_fd());
        // An exited process makes no more children, so the slot is final now (on the portable
        // layer, once the child it may have made has recorded itself: `wait_for_made`).
        match self
            .made
            .get()
            .or_else(|| wait_for_made(&self.made, in_flight))
        {
            Some(pid) => Ended::Made(pid),
            None if ended => Ended::MadeNothing,
            None => Ended::Unknown,
        }
    }
}

/// Tells the program's log once when forkserver children cannot get a correct cached thread id
/// (not glibc, or glibc without the descriptor `libthread_db` uses).
#[cfg(all(target_os = "linux", not(multiproc_portable)))]
fn warn_once_if_no_cached_tid() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if sys::cached_tid_slot().is_none() {
            tracing::warn!(
                "cannot locate the C library's cached thread id: forkserver children keep the \
                 server's, so robust, priority-inheritance and error-checking pthread mutexes \
                 (in C libraries a target uses) misbehave in them; use spawn for such targets"
            );
        }
    });
}

/// The server's body, called by the pre-main hook with the socket to its owner. Returns when
/// the owner closes it.
pub(crate) fn serve(sock: OwnedFd) -> i32 {
    sys::ignore_interrupts();
    // Children inherit the hook instead of each installing it.
    bootstrap::install_panic_hook();
    let mut reader = boot::FrameReader::default();
    let cloner = match setup(&mut reader, &sock) {
        Ok(Some(cloner)) => cloner,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("multiproc: forkserver could not set up: {e}");
            return 1;
        }
    };
    loop {
        // The portable layer's server reports its children's exits while it waits.
        #[cfg(any(multiproc_portable, not(target_os = "linux")))]
        if let Err(e) = cloner.wait_for_request(sock.as_fd()) {
            eprintln!("multiproc: forkserver lost its request stream: {e}");
            return 1;
        }
        let (frame, fds) = match reader.next(sock.as_fd()) {
            Ok(Some(request)) => request,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("multiproc: forkserver lost its request stream: {e}");
                return 1;
            }
        };
        #[cfg(any(multiproc_portable, not(target_os = "linux")))]
        let (fds, report) = {
            let mut fds = fds;
            let Some(report) = fds.pop() else {
                eprintln!("multiproc: forkserver request without its status pipe");
                return 1;
            };
            (fds, report)
        };
        // In the server the closure is dropped unrun, closing its copies of the descriptors.
        let body = move || {
            // libc's fork handlers do not run after a raw clone: the server's identity,
            // should it ever have computed one, is not the child's.
            crate::sync::owner::forget_ident_in_child();
            boot::run_boot(&frame, fds)
        };
        #[cfg(all(target_os = "linux", not(multiproc_portable)))]
        let started = cloner.clone_sibling(&[sock.as_raw_fd()], body);
        #[cfg(any(multiproc_portable, not(target_os = "linux")))]
        let started = cloner.clone_sibling_reporting(&[sock.as_raw_fd()], report, body);
        let reply = match started {
            Ok(pid) => pid,
            // `clone` errors always carry an errno; EPERM stands in should one not.
            Err(e) => -e.raw_os_error().unwrap_or(1),
        };
        if sys::write_all(sock.as_fd(), &reply.to_le_bytes()).is_err() {
            return 0;
        }
    }
}

/// Reads the owner's first message, which carries the pid slot. `None` if the owner is gone.
fn setup(reader: &mut boot::FrameReader, sock: &OwnedFd) -> Result<Option<SiblingCloner>> {
    let Some((_, fds)) = reader.next(sock.as_fd())? else {
        return Ok(None);
    };
    let [slot_fd] = &fds[..] else {
        return Err(Error::with_message(
            ErrorKind::Decode,
            format!("setup message with {} descriptors (expected 1)", fds.len()),
        ));
    };
    let slot = PidSlot::attach(slot_fd.as_fd())?;
    drop(fds);
    Ok(Some(SiblingCloner::new(slot)))
}
