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
//! starts a new one; a start during which it dies fails with an error and nothing hangs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Launched, Popen, boot};
use crate::error::{Error, ErrorKind, Result};
use crate::process::bootstrap::{self, ChildPlan};
use crate::process::target::Task;
use crate::sys::{self, Kill, RawPid};

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
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

impl Popen for ForkServer {
    fn launch(&self, plan: ChildPlan, task: Box<dyn Task>) -> Result<Launched> {
        super::ensure_can_reexec()?;
        let boot = boot::prepare(plan, task)?;
        // One request at a time: the server answers in order on one socket.
        let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
        let server = running(&mut slot)?;
        let pid = match server.request(&boot) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(server) = slot.take() {
                    server.stop();
                }
                return Err(e);
            }
        };
        drop(slot);
        let pidfd = sys::pidfd_for_new_child(pid)?;
        Ok(Launched { pid, pidfd })
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
                server.stop();
            }
        }
    }
    if slot.is_none() {
        *slot = Some(start_from_a_lasting_thread()?);
    }
    Ok(slot.as_ref().expect("just filled"))
}

/// Starts the server from a thread that lives as long as this process.
///
/// The server's children are made with `CLONE_PARENT`, so their parent is the *thread* that
/// started the server, and the kernel sends a daemon's parent-death signal when that thread
/// exits, not the process. The main thread lasts as long as the process; any other caller
/// hands the start to one keeper thread that never exits.
fn start_from_a_lasting_thread() -> Result<Server> {
    type Reply = std::sync::mpsc::SyncSender<Result<Server>>;
    static KEEPER: Mutex<Option<(RawPid, std::sync::mpsc::Sender<Reply>)>> = Mutex::new(None);

    if sys::is_main_thread() {
        return Server::start();
    }
    let mut keeper = KEEPER.lock().unwrap_or_else(|e| e.into_inner());
    let owner = sys::current_pid();
    let requests = match keeper.as_ref() {
        // A keeper inherited through `fork` has no thread behind it: make a new one.
        Some((pid, requests)) if *pid == owner => requests.clone(),
        _ => {
            let (requests, incoming) = std::sync::mpsc::channel::<Reply>();
            std::thread::Builder::new()
                .name("multiproc-forkserver-keeper".to_owned())
                .spawn(move || {
                    for reply in incoming {
                        let _ = reply.send(Server::start());
                    }
                    // The sender lives in a static: this loop never ends.
                })?;
            *keeper = Some((owner, requests.clone()));
            requests
        }
    };
    drop(keeper);
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let lost = || Error::with_message(ErrorKind::Os, "the forkserver keeper thread is gone");
    requests.send(reply).map_err(|_| lost())?;
    answer.recv().map_err(|_| lost())?
}

impl Server {
    fn start() -> Result<Server> {
        let (ours, pid, pidfd) = super::start_self("forkserver")?;
        tracing::debug!(pid, "forkserver started");
        Ok(Server {
            owner: sys::current_pid(),
            pid,
            pidfd,
            sock: ours,
        })
    }

    fn has_exited(&self) -> bool {
        sys::wait_readable(&[self.pidfd.as_fd()], Some(Instant::now()))
            .map_or(true, |ready| ready[0])
    }

    /// Sends one boot message and waits for the pid of the child made from it.
    fn request(&self, boot: &boot::Prepared) -> Result<RawPid> {
        let died = |what: &str| {
            Error::with_message(
                ErrorKind::Os,
                format!("the forkserver died {what}; the next start launches a new one"),
            )
        };
        if sys::send_with_fds(self.sock.as_fd(), &boot.frame, &boot.borrowed_fds()).is_err() {
            return Err(died("before it got the request"));
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut reply = [0u8; 4];
        let mut got = 0;
        while got < reply.len() {
            let ready =
                sys::wait_readable(&[self.sock.as_fd(), self.pidfd.as_fd()], Some(deadline))?;
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
                return Err(Error::with_message(
                    ErrorKind::Timeout,
                    "the forkserver did not answer within 30 s; the next start launches a new one",
                ));
            }
        }
        match i32::from_le_bytes(reply) {
            pid if pid > 0 => Ok(pid),
            errno => Err(Error::with_source(
                ErrorKind::Os,
                io::Error::from_raw_os_error(errno.saturating_neg()),
            )),
        }
    }

    /// Kills and reaps the server.
    fn stop(self) {
        let _ = sys::pidfd_signal(self.pidfd.as_fd(), Kill::Kill);
        let _ = sys::wait_readable(&[self.pidfd.as_fd()], Some(Instant::now() + REPLY_TIMEOUT));
        let _ = sys::try_reap(self.pidfd.as_fd());
    }
}

/// The server's body, called by the pre-main hook with the socket to its owner. Returns when
/// the owner closes it.
pub(crate) fn serve(sock: OwnedFd) -> i32 {
    sys::ignore_interrupts();
    // Children inherit the hook instead of each installing it.
    bootstrap::install_panic_hook();
    let mut reader = boot::FrameReader::default();
    loop {
        let (frame, fds) = match reader.next(sock.as_fd()) {
            Ok(Some(request)) => request,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("multiproc: forkserver lost its request stream: {e}");
                return 1;
            }
        };
        // In the server the closure is dropped unrun, closing its copies of the descriptors.
        let started = sys::clone_sibling(&[sock.as_raw_fd()], move || boot::run_boot(&frame, fds));
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
