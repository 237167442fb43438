//! Passing a descriptor inside a message that travels where descriptors cannot (a queue in
//! shared memory, a pipe): Python's `multiprocessing.resource_sharer`.
//!
//! The sending process keeps a duplicate of the descriptor under a random 128-bit ticket and
//! serializes only the ticket and the abstract Unix socket name of its *sharer*, a thread that
//! hands each duplicate, once, over SCM_RIGHTS to whoever connects and presents its ticket.
//! The receiving process connects while decoding the message and gets its own copy of the
//! descriptor.
//!
//! What follows from that (documented on the handles that use it, today [`Connection`]):
//! - the sending process must still be running when the message is decoded; otherwise the
//!   decode fails with an error that says so;
//! - until then, the sender holds a copy of the descriptor (so, for the writing end of a
//!   pipe, its reader sees no end of file); a message never received keeps its copy until the
//!   sender exits;
//! - both processes must share a network namespace (abstract sockets live in one).
//!
//! The name is random, and only a ticket that was issued yields a descriptor (128 random
//! bits: not guessable); a ticket works once.
//!
//! Start arguments and pool tasks do not come here: there the start method carries the
//! descriptors itself (`wire::collect_fds`), and the wire form below says which way a
//! descriptor went.
//!
//! [`Connection`]: crate::Connection

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DeFd, OUTGOING, SerFd};
use crate::sys;

/// A ticket: which descriptor to hand over.
type Token = [u8; 16];

/// How long either side of a hand-over waits for the other.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// This process's sharer: its socket name and the descriptors waiting to be taken.
struct Sharer {
    /// The process that started the sharer thread; a forked child has no such thread and
    /// starts its own.
    pid: u32,
    name: Vec<u8>,
    pending: Arc<Mutex<HashMap<Token, OwnedFd>>>,
}

static SHARER: Mutex<Option<Sharer>> = Mutex::new(None);

/// The sharer's lock, held by a thread about to `fork`: a lock that another thread holds at
/// the fork stays held for ever in the child, which would then hang at its first shared
/// handle. Held across the fork, its only holder in the child is the forking thread itself,
/// which releases it (an atomic store and at most a futex wake, async-signal-safe).
pub(crate) struct ForkGuard(#[allow(dead_code)] std::sync::MutexGuard<'static, Option<Sharer>>);

/// Takes the sharer's lock for the duration of a `fork` (see [`ForkGuard`]).
pub(crate) fn hold_for_fork() -> ForkGuard {
    ForkGuard(SHARER.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Keeps a duplicate of `fd` for another process to take; returns the sharer's socket name
/// and the ticket.
fn share(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Token)> {
    let copy = fd.try_clone_to_owned()?;
    let mut token = Token::default();
    sys::random_bytes(&mut token)?;
    let mut sharer = SHARER.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if sharer.as_ref().is_none_or(|s| s.pid != pid) {
        // In a forked child the table holds copies of the parent's pending descriptors, which
        // are the parent's to hand out: dropping them closes only this process's copies.
        *sharer = Some(start(pid)?);
    }
    let sharer = sharer.as_ref().expect("started above");
    sharer
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, copy);
    Ok((sharer.name.clone(), token))
}

/// The sharer's address: a name in Linux's abstract namespace, which needs no file and goes
/// away with the socket. Other systems have no such namespace; there a handle cannot be sent
/// inside a message yet (a socket path in a private directory would do, issue 18).
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return SocketAddr::from_abstract_name(name);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = name;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sending a Connection inside a message needs Linux's abstract Unix sockets",
        ))
    }
}

/// Binds a fresh abstract socket and starts the thread that serves it.
fn start(pid: u32) -> io::Result<Sharer> {
    let mut nonce = [0u8; 8];
    sys::random_bytes(&mut nonce)?;
    let name = format!("multiproc-share-{pid}-{:016x}", u64::from_le_bytes(nonce)).into_bytes();
    let listener = UnixListener::bind_addr(&abstract_addr(&name)?)?;
    let pending: Arc<Mutex<HashMap<Token, OwnedFd>>> = Arc::default();
    let table = Arc::clone(&pending);
    std::thread::Builder::new()
        .name("multiproc-sharer".into())
        .spawn(move || {
            for peer in listener.incoming() {
                match peer {
                    // Failures concern that one peer only (it gave up, sent garbage).
                    Ok(peer) => {
                        let _ = serve(peer, &table);
                    }
                    Err(e) => tracing::debug!("descriptor sharer: accept failed: {e}"),
                }
            }
        })?;
    Ok(Sharer { pid, name, pending })
}

/// Hands one peer the descriptor its ticket names: one byte, `1` with the descriptor
/// attached, or `0` for a ticket that names none (already taken, or never issued).
fn serve(mut peer: UnixStream, table: &Mutex<HashMap<Token, OwnedFd>>) -> io::Result<()> {
    peer.set_read_timeout(Some(HAND_OVER_TIMEOUT))?;
    peer.set_write_timeout(Some(HAND_OVER_TIMEOUT))?;
    let mut token = Token::default();
    peer.read_exact(&mut token)?;
    let fd = table
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&token);
    match fd {
        Some(fd) => sys::send_with_fds(peer.as_fd(), &[1], &[fd.as_fd()]),
        None => peer.write_all(&[0]),
    }
}

/// Takes the descriptor `token` names from the sharer at `name`.
fn take(name: &[u8], token: &Token) -> io::Result<OwnedFd> {
    let gone = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "could not reach the process that sent this handle (it must still be running \
                 when the message is received): {e}"
            ),
        )
    };
    let addr = abstract_addr(name)?;
    let mut sock = UnixStream::connect_addr(&addr).map_err(gone)?;
    sock.set_read_timeout(Some(HAND_OVER_TIMEOUT))?;
    sock.set_write_timeout(Some(HAND_OVER_TIMEOUT))?;
    sock.write_all(token).map_err(gone)?;
    let mut reply = Vec::with_capacity(1);
    let mut fds = Vec::new();
    if sys::recv_with_fds(sock.as_fd(), &mut reply, &mut fds).map_err(gone)? == 0 {
        return Err(gone(io::ErrorKind::UnexpectedEof.into()));
    }
    match (reply.as_slice(), fds.len()) {
        ([1], 1) => Ok(fds.pop().expect("one descriptor")),
        ([0], 0) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the handle in this message was already received once (a message carrying a \
             handle can be received only once)",
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the handle's sender answered with something other than one descriptor",
        )),
    }
}

thread_local! {
    /// Why the last hand-over on this thread failed: serde formats such as postcard keep no
    /// text for custom errors, so the codec picks it up here ([`take_failure`]).
    static FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Inside [`through_sharer`]: [`PassFdToWorkers`] handles use the sharer.
    static BY_SHARER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Inside [`measuring`]: serialize handles at their size, without sharing anything.
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, which only measures how long a value's serialization is (a queue sizing an
/// item before encoding it), so that handles in the value issue no ticket: a ticket nobody
/// redeems would keep its descriptor open in this process.
pub(crate) fn measuring<R>(f: impl FnOnce() -> R) -> R {
    let previous = MEASURING.replace(true);
    let result = f();
    MEASURING.set(previous);
    result
}

/// This process's sharer's socket name, starting the sharer if needed.
fn sharer_name() -> io::Result<Vec<u8>> {
    let mut sharer = SHARER.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if sharer.as_ref().is_none_or(|s| s.pid != pid) {
        *sharer = Some(start(pid)?);
    }
    Ok(sharer.as_ref().expect("started above").name.clone())
}

/// The reason the last failed hand-over on this thread gave, once.
pub(crate) fn take_failure() -> Option<String> {
    FAILURE.take()
}

/// Keeps `message` for the codec ([`take_failure`]) and returns it, for `serde`'s error.
pub(crate) fn failed(message: String) -> String {
    FAILURE.set(Some(message.clone()));
    message
}

/// How a descriptor travels in a message.
#[derive(Deserialize)]
enum FdRef {
    /// As an index into the start method's side table (`wire::collect_fds`).
    Index(DeFd),
    /// As a ticket for the sending process's sharer: its socket name and the ticket.
    Shared((Vec<u8>, Token)),
}

/// A borrowed descriptor that serializes through the start method's side table when the
/// message is a start argument or pool task, and through the sharer otherwise.
pub(crate) struct PassFd<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for PassFd<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pass(self.0, s, true)
    }
}

/// As [`PassFd`], for a handle that may also travel in a pool task's arguments or value
/// (a [`SharedSlice`](crate::shared::SharedSlice)): inside [`through_sharer`] it goes through
/// the sharer even though the pool collects descriptors (to refuse every other handle), since
/// the pool's pipes cannot carry the descriptor itself.
pub(crate) struct PassFdToWorkers<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for PassFdToWorkers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pass(self.0, s, !BY_SHARER.get())
    }
}

/// Runs `encode` (a pool task's arguments or value, encoded inside `wire::collect_fds`) so
/// that [`PassFdToWorkers`] handles go through the sharer.
pub(crate) fn through_sharer<R>(encode: impl FnOnce() -> R) -> R {
    let previous = BY_SHARER.replace(true);
    let result = encode();
    BY_SHARER.set(previous);
    result
}

/// Serializes `fd` into the start method's side table if one is collecting and `table_ok`,
/// through the sharer otherwise.
fn pass<S: serde::Serializer>(fd: BorrowedFd<'_>, s: S, table_ok: bool) -> Result<S::Ok, S::Error> {
    if table_ok && OUTGOING.with_borrow(Option::is_some) {
        return s.serialize_newtype_variant("FdRef", 0, "Index", &SerFd(fd));
    }
    let shared = if MEASURING.get() {
        // The same length as the real thing: the name is this process's, a ticket 16 bytes.
        sharer_name().map(|name| (name, Token::default()))
    } else {
        share(fd)
    };
    let (name, token) = shared.map_err(|e| {
        serde::ser::Error::custom(failed(format!(
            "could not share a descriptor with the receiving process: {e}"
        )))
    })?;
    s.serialize_newtype_variant("FdRef", 1, "Shared", &(name, token))
}

/// A descriptor deserialized from a [`PassFd`].
pub(crate) struct TakeFd(pub(crate) OwnedFd);

impl<'de> Deserialize<'de> for TakeFd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match FdRef::deserialize(d)? {
            FdRef::Index(DeFd(fd)) => Ok(TakeFd(fd)),
            FdRef::Shared((name, token)) => take(&name, &token)
                .map(TakeFd)
                .map_err(|e| serde::de::Error::custom(failed(e.to_string()))),
        }
    }
}
