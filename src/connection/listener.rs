//! [`Listener`] and [`client`]: connections between programs over a Unix socket or TCP,
//! authenticated by an HMAC challenge on a shared key (Python's `Listener`, `Client`,
//! `deliver_challenge` and `answer_challenge`).
//!
//! The handshake runs both ways, as Python's does: the accepting side sends 32 random bytes,
//! the connecting side answers with their HMAC-SHA256 under the key, and the accepting side
//! compares in constant time; then the roles swap. The key itself never travels, and a peer
//! with the wrong key learns only that it was refused. Every handshake message is at most
//! [`MAX_HANDSHAKE_MESSAGE`] bytes and each peer's exchange must finish within
//! [`HANDSHAKE_TIMEOUT`]. `accept` runs the handshakes of all connecting peers side by side
//! (up to 128 at once), so a silent or hostile peer cannot make it allocate, and delays no
//! other peer: only a flood of more than 128 such peers makes the next wait, at most
//! `HANDSHAKE_TIMEOUT`, for a slot.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Connection, MIN_FRAME};
use crate::current_process;
use crate::error::{RecvError, SendError};
use crate::process::AuthKey;
use crate::sys::{self, Interest};
use crate::wire::{self, HEADER};

/// The longest a handshake may take before it fails with [`ConnectError::Timeout`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest handshake message accepted.
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const DIGEST_TAG: &[u8] = b"{sha256}";
const NONCE_LEN: usize = 32;

/// Where a [`Listener`] listens: a Unix socket path, or a TCP address.
///
/// A Unix path that begins with a NUL byte names a socket in Linux's abstract namespace, as
/// in Python (`"\0name"`): no file is created, nothing is left behind if the program dies,
/// and the name is gone when the listener is closed. [`Address::abstract_unix`] builds one.
/// Abstract sockets are reachable by any process in the same network namespace whatever
/// its user (there is no file whose permissions could restrict them), so keep the default
/// authkey check on for them.
///
/// # Examples
/// ```
/// use multiproc::connection::Address;
/// let unix = Address::from(std::path::Path::new("/tmp/app.sock"));
/// let tcp = Address::from(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
/// assert!(matches!(unix, Address::Unix(_)));
/// assert!(matches!(tcp, Address::Tcp(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix-domain stream socket at this path (Python's `AF_UNIX`); a path beginning
    /// with a NUL byte is an abstract name ([`Address::abstract_unix`]).
    Unix(PathBuf),
    /// A TCP address (Python's `AF_INET`); port 0 picks a free port.
    Tcp(SocketAddr),
}

impl Address {
    /// A Unix socket in Linux's abstract namespace: `name` without the leading NUL byte,
    /// which this adds (Python spells the address `"\0" + name`).
    ///
    /// Linux only: on other systems (the portable layer's targets), binding or connecting to
    /// such an address fails with an I/O error of kind `Unsupported`, and the example below
    /// fails there.
    ///
    /// # Examples
    /// ```
    /// use multiproc::connection::{Address, Listener, client};
    ///
    /// let name = format!("multiproc-doc-{}", std::process::id());
    /// let address = Address::abstract_unix(name.as_bytes());
    /// assert!(address.is_abstract());
    /// assert_eq!(address.to_string(), format!("@{name}"));
    ///
    /// let listener = Listener::bind(address.clone())?;
    /// let peer = std::thread::spawn(move || client(&address).unwrap().send(&"hi").unwrap());
    /// assert_eq!(listener.accept()?.recv::<String>()?, "hi");
    /// peer.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abstract_unix(name: impl AsRef<[u8]>) -> Address {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(name.as_ref());
        Address::Unix(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    /// Whether this is a Unix socket in the abstract namespace (a path beginning with NUL).
    pub fn is_abstract(&self) -> bool {
        self.abstract_name().is_some()
    }

    /// The abstract name (after the NUL byte), for an abstract Unix address.
    fn abstract_name(&self) -> Option<&[u8]> {
        match self {
            Address::Unix(path) => path.as_os_str().as_bytes().strip_prefix(b"\0"),
            Address::Tcp(_) => None,
        }
    }

    /// The socket address of an abstract Unix address.
    fn abstract_socket_addr(&self) -> Option<io::Result<std::os::unix::net::SocketAddr>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return self
            .abstract_name()
            .map(std::os::unix::net::SocketAddr::from_abstract_name);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        self.abstract_name().map(|_| {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract Unix socket names exist on Linux only",
            ))
        })
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Self {
        Address::Unix(p.to_path_buf())
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `@name`, as ss(8) and /proc/net/unix show abstract names.
            Address::Unix(_) if self.is_abstract() => write!(
                f,
                "@{}",
                String::from_utf8_lossy(self.abstract_name().unwrap_or_default())
            ),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why [`Listener::accept`] or [`client`] produced no connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[doc(alias = "AuthenticationError")]
pub enum ConnectError {
    /// The peer's answer to our challenge was wrong, or it rejected ours: the two sides do
    /// not share the authkey (Python's `AuthenticationError`).
    #[error("authentication failed: the peer does not have the same authkey")]
    Refused,
    /// The peer did not follow the handshake (garbage or an oversized message). A peer that
    /// closed the connection mid-handshake is [`Io`](ConnectError::Io) (`UnexpectedEof` or
    /// `BrokenPipe`), as a connection refused is.
    #[error("authentication failed: {0}")]
    Protocol(String),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`]. A client that got no
    /// challenge at all gets [`Unanswered`](ConnectError::Unanswered) instead.
    #[error(
        "authentication timed out: the peer did not finish the handshake in time \
         (does it use an authkey too?)"
    )]
    Timeout,
    /// A client with a key connected, but the listener sent no authentication challenge
    /// within [`HANDSHAKE_TIMEOUT`] (`waited`).
    ///
    /// A listener's handshakes progress only while [`Listener::accept`] runs on it: the
    /// kernel completes the connection at once, but nothing answers until `accept` is called,
    /// so a client of a listener that nobody accepts on waits the whole timeout and then gets
    /// this error. The other cause is a listener without an authkey that waits for the client
    /// to speak first. (Python's `Client` has no timeout: it would wait forever.)
    #[error(
        "the listener did not answer the authentication handshake within {waited:?}: a listener \
         answers only while `accept()` is running on it (or it has no authkey and waits for \
         the client to speak first)"
    )]
    Unanswered {
        /// How long the client waited for the listener's challenge.
        waited: Duration,
    },
    /// A client with a key connected to a listener without one: the listener sent a message
    /// of its own where the authentication challenge should have been.
    #[error(
        "authentication failed: the listener sent no challenge, so it does not use an authkey \
         (connect without one, or give the listener one)"
    )]
    NoChallenge,
    /// Connecting, accepting or the socket's I/O failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
}

impl From<SendError> for ConnectError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Io(e) => ConnectError::Io(e),
            SendError::Disconnected => ConnectError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer closed the connection during the handshake",
            )),
            other => ConnectError::Protocol(other.to_string()),
        }
    }
}

impl From<RecvError> for ConnectError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Timeout => ConnectError::Timeout,
            RecvError::Io(e) => ConnectError::Io(e),
            RecvError::Disconnected => ConnectError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the handshake",
            )),
            other => ConnectError::Protocol(other.to_string()),
        }
    }
}

/// Accepts connections from other programs, Python's `multiprocessing.connection.Listener`.
///
/// Peers must prove they hold the same [`AuthKey`]: by default this process's own key
/// ([`current_process().authkey()`](crate::process::CurrentProcess::authkey)), which children
/// inherit. (Python's `Listener` does not authenticate unless given a key.) The handshake
/// runs inside [`accept`](Listener::accept): a [`client`] that connects while nobody calls
/// `accept` waits up to [`HANDSHAKE_TIMEOUT`] and then fails with
/// [`ConnectError::Unanswered`]. A Unix socket's file is removed when the listener is dropped.
///
/// Handshakes with different peers run side by side, each within its own
/// [`HANDSHAKE_TIMEOUT`], so a peer that connects and then says nothing (or speaks slowly)
/// does not delay the others: [`accept`](Listener::accept) returns whichever handshake
/// finishes first. Up to 128 peers are handled at once; further peers wait in the kernel's
/// queue until one of those finishes, fails or times out.
///
/// # Examples
/// ```
/// use multiproc::{process::AuthKey, connection::Listener, connection::client_with_authkey};
///
/// let key = AuthKey::from(b"secret".to_vec());
/// let listener = Listener::bind_with_authkey("127.0.0.1:0".parse::<std::net::SocketAddr>()?, Some(key.clone()))?;
/// let address = listener.address().clone();
/// let handle = multiproc::spawn(move || {
///     let conn = client_with_authkey(&address, Some(&key)).unwrap();
///     conn.send(&"hi").unwrap();
/// })?;
/// let conn = listener.accept()?;
/// assert_eq!(conn.recv::<String>()?, "hi");
/// handle.join()?;
///
/// // A client with another key is refused.
/// let address = listener.address().clone();
/// let intruder = multiproc::spawn(move || {
///     client_with_authkey(&address, Some(&AuthKey::from(b"guess".to_vec()))).is_err()
/// })?;
/// assert!(matches!(listener.accept(), Err(multiproc::connection::ConnectError::Refused)));
/// assert!(intruder.join()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<AuthKey>,
    backlog: Mutex<Backlog>,
}

/// Peers taken from the socket and not yet handed out by `accept`.
#[derive(Default)]
struct Backlog {
    /// Handshakes under way, each with its own deadline.
    handshakes: Vec<Handshake>,
    /// Finished handshakes, in the order they finished.
    done: VecDeque<Result<Connection, ConnectError>>,
}

impl Backlog {
    /// The next result to hand out: a connection before any error, so that a burst of bad
    /// peers does not keep a good one waiting.
    fn take(&mut self) -> Option<Result<Connection, ConnectError>> {
        let i = self.done.iter().position(Result::is_ok).unwrap_or(0);
        self.done.remove(i)
    }

    fn has_room(&self) -> bool {
        self.handshakes.len() + self.done.len() < MAX_PENDING
    }
}

/// How many peers may be handshaking (or handshaken and not yet accepted) at once; each holds
/// a descriptor, so this stays well below the usual limit of 1024 open files.
const MAX_PENDING: usize = 128;

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }

    /// Takes one waiting peer without blocking; `None` when there is none.
    ///
    /// The peer's socket blocks: on Linux an accepted socket does not inherit the listening
    /// socket's `O_NONBLOCK`.
    fn try_accept(&self) -> io::Result<Option<OwnedFd>> {
        let accepted = match self {
            Socket::Unix(l) => l.accept().map(|(s, _)| OwnedFd::from(s)),
            Socket::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                Ok(OwnedFd::from(s))
            }),
        };
        match accepted {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Listener {
    /// Listens on `address`, authenticating peers with this process's authkey.
    ///
    /// # Errors
    /// The OS error if the address cannot be bound (in use, no permission).
    pub fn bind(address: impl Into<Address>) -> crate::Result<Listener> {
        Listener::bind_with_authkey(address, Some(current_process().authkey().clone()))
    }

    /// Listens on `address`, authenticating peers with `authkey`; `None` accepts every peer
    /// without authentication (only for sockets nobody else can reach).
    ///
    /// # Errors
    /// As [`bind`](Listener::bind).
    pub fn bind_with_authkey(
        address: impl Into<Address>,
        authkey: Option<AuthKey>,
    ) -> crate::Result<Listener> {
        let address = address.into();
        let (socket, address) = match address {
            Address::Unix(_) if address.is_abstract() => {
                let addr = address
                    .abstract_socket_addr()
                    .expect("an abstract address")?;
                (Socket::Unix(UnixListener::bind_addr(&addr)?), address)
            }
            Address::Unix(path) => (
                Socket::Unix(UnixListener::bind(&path)?),
                Address::Unix(path),
            ),
            Address::Tcp(addr) => {
                let l = TcpListener::bind(addr)?;
                let local = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(local))
            }
        };
        // Built first, so that an error below still removes the socket file.
        let listener = Listener {
            socket,
            address,
            authkey,
            backlog: Mutex::new(Backlog::default()),
        };
        // `accept` polls the socket beside the handshakes under way, and takes peers only
        // when one is waiting.
        match &listener.socket {
            Socket::Unix(l) => l.set_nonblocking(true)?,
            Socket::Tcp(l) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// The address peers connect to (with the actual port, if port 0 was asked for).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a peer to finish its handshake, and returns the connection to it.
    ///
    /// While waiting, this takes every peer that connects and runs all their handshakes at
    /// once, each bounded by its own [`HANDSHAKE_TIMEOUT`]; it returns the first to finish.
    /// A handshake that fails is reported by one call, as an error; the others carry on, and
    /// the next call picks them up. Handshakes progress only during calls to `accept` (peers
    /// still handshaking when the listener is dropped are disconnected). Calls from several
    /// threads take turns.
    ///
    /// # Errors
    /// [`ConnectError::Refused`] when the peer's key differs (the listener stays usable),
    /// [`ConnectError::Protocol`] or [`ConnectError::Timeout`] for a peer that does not
    /// follow the handshake, [`ConnectError::Io`] when accepting fails.
    pub fn accept(&self) -> Result<Connection, ConnectError> {
        let mut backlog = self.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(result) = backlog.take() {
                return result;
            }
            self.turn(&mut backlog, None)?;
        }
    }

    /// For `crate::aio`: `accept` without blocking. Hands out a finished handshake, or takes
    /// the peers waiting now and advances every handshake as far as it goes without waiting;
    /// `None` when nothing finished (or another thread is inside `accept`).
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn accept_nowait(&self) -> Option<Result<Connection, ConnectError>> {
        let mut backlog = match self.backlog.try_lock() {
            Ok(b) => b,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if let Some(result) = backlog.take() {
            return Some(result);
        }
        if let Err(e) = self.turn(&mut backlog, Some(Instant::now())) {
            return Some(Err(e.into()));
        }
        backlog.take()
    }

    /// For `crate::aio`: the listening socket (readable when a peer connects), and whether
    /// handshakes are under way (which only progress when `accept_nowait` is called).
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn accept_state(&self) -> (BorrowedFd<'_>, bool) {
        let handshaking = match self.backlog.try_lock() {
            Ok(b) => !b.handshakes.is_empty(),
            Err(std::sync::TryLockError::Poisoned(p)) => !p.into_inner().handshakes.is_empty(),
            // Another thread is inside `accept`: look again soon.
            Err(std::sync::TryLockError::WouldBlock) => true,
        };
        (self.socket.as_fd(), handshaking)
    }

    /// One turn of `accept`: waits until the socket or a handshake is ready, a handshake's
    /// deadline passes, or `limit` passes (`None`: no limit), then takes waiting peers and
    /// advances the handshakes that are ready.
    fn turn(&self, backlog: &mut Backlog, limit: Option<Instant>) -> io::Result<()> {
        let take_peers = backlog.has_room();
        let ready = {
            let mut fds = Vec::with_capacity(1 + backlog.handshakes.len());
            fds.push((
                self.socket.as_fd(),
                Interest {
                    read: take_peers,
                    write: false,
                },
            ));
            fds.extend(
                backlog
                    .handshakes
                    .iter()
                    .map(|h| (h.fd.as_fd(), h.interest())),
            );
            let deadline = backlog
                .handshakes
                .iter()
                .map(|h| h.deadline)
                .chain(limit)
                .min();
            sys::poll_fds(&fds, deadline)?
        };
        let now = Instant::now();
        let handshakes = std::mem::take(&mut backlog.handshakes);
        for (mut h, r) in handshakes.into_iter().zip(&ready[1..]) {
            let progress = if r.read || r.write {
                h.advance()
            } else {
                Ok(false)
            };
            match progress {
                Ok(true) => backlog.done.push_back(h.finish()),
                Ok(false) if now >= h.deadline => {
                    backlog.done.push_back(Err(ConnectError::Timeout))
                }
                Ok(false) => backlog.handshakes.push(h),
                Err(e) => backlog.done.push_back(Err(e)),
            }
        }
        if ready[0].read {
            while backlog.has_room() {
                match self.socket.try_accept() {
                    Ok(Some(fd)) => self.start(fd, backlog),
                    Ok(None) => break,
                    Err(e) => {
                        backlog.done.push_back(Err(e.into()));
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Begins the handshake with a peer just accepted, going as far as it can without
    /// waiting (sending our challenge).
    fn start(&self, fd: OwnedFd, backlog: &mut Backlog) {
        let Some(key) = &self.authkey else {
            backlog
                .done
                .push_back(socket_connection(fd).map_err(Into::into));
            return;
        };
        let mut h = match Handshake::new(fd, key.clone()) {
            Ok(h) => h,
            Err(e) => return backlog.done.push_back(Err(e)),
        };
        match h.advance() {
            Ok(true) => backlog.done.push_back(h.finish()),
            Ok(false) => backlog.handshakes.push(h),
            Err(e) => backlog.done.push_back(Err(e)),
        }
    }
}

/// The accepting side of one handshake, driven without blocking: Python's `deliver_challenge`
/// then `answer_challenge`, as steps that each wait for one message from the peer.
struct Handshake {
    fd: OwnedFd,
    key: AuthKey,
    deadline: Instant,
    step: Step,
    /// Bytes for the peer not yet written.
    out: Vec<u8>,
    /// The frame being received: only its own bytes, never any of the next.
    frame: Vec<u8>,
}

enum Step {
    /// Our challenge (this message) is sent; waiting for the peer's answer.
    AwaitAnswer(Vec<u8>),
    /// We accepted the peer's answer; waiting for its challenge.
    AwaitChallenge,
    /// We answered the peer's challenge; waiting for its verdict.
    AwaitVerdict,
    /// Both sides are authenticated.
    Done,
}

impl Handshake {
    fn new(fd: OwnedFd, key: AuthKey) -> Result<Handshake, ConnectError> {
        sys::set_nonblocking(fd.as_fd())?;
        let message = new_challenge()?;
        let mut h = Handshake {
            fd,
            key,
            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            step: Step::AwaitAnswer(Vec::new()),
            out: Vec::new(),
            frame: Vec::new(),
        };
        h.queue(&[CHALLENGE, &message].concat())?;
        h.step = Step::AwaitAnswer(message);
        Ok(h)
    }

    /// Frames `payload` as `Connection::send_bytes` does and queues it for the peer.
    fn queue(&mut self, payload: &[u8]) -> Result<(), ConnectError> {
        let start = self.out.len();
        self.out
            .extend_from_slice(&wire::header_for(payload.len()).map_err(SendError::from)?);
        self.out.extend_from_slice(payload);
        if self.out.len() - start < MIN_FRAME {
            self.out.resize(start + MIN_FRAME, 0);
        }
        Ok(())
    }

    fn interest(&self) -> Interest {
        // The peer has nothing to say until it has read what we queued (a peer that talks
        // out of turn is read after that, and fails then).
        Interest {
            read: self.out.is_empty(),
            write: !self.out.is_empty(),
        }
    }

    /// Goes as far as possible without blocking; `Ok(true)` once both sides are
    /// authenticated.
    fn advance(&mut self) -> Result<bool, ConnectError> {
        loop {
            while !self.out.is_empty() {
                let n = sys::write_some(self.fd.as_fd(), &self.out)?;
                if n == 0 {
                    return Ok(false);
                }
                self.out.drain(..n);
            }
            if matches!(self.step, Step::Done) {
                return Ok(true);
            }
            let Some(payload) = self.read_frame()? else {
                return Ok(false);
            };
            match std::mem::replace(&mut self.step, Step::Done) {
                Step::AwaitAnswer(message) => {
                    if check_answer(&self.key, &message, &payload)? {
                        self.queue(WELCOME)?;
                        self.step = Step::AwaitChallenge;
                    } else {
                        // Best effort: the peer learns why before we hang up.
                        self.queue(FAILURE)?;
                        let _ = sys::write_some(self.fd.as_fd(), &self.out);
                        return Err(ConnectError::Refused);
                    }
                }
                Step::AwaitChallenge => {
                    let answer = answer_for(&self.key, &payload)?;
                    self.queue(&answer)?;
                    self.step = Step::AwaitVerdict;
                }
                Step::AwaitVerdict => verdict(Ok(payload))?,
                Step::Done => unreachable!("a finished handshake reads nothing"),
            }
        }
    }

    /// Reads what has arrived of the peer's next frame; `None` until all of it has.
    fn read_frame(&mut self) -> Result<Option<Vec<u8>>, ConnectError> {
        let mut buf = [0u8; HEADER + MAX_HANDSHAKE_MESSAGE];
        loop {
            // Every frame is at least MIN_FRAME long, so reading that much first never takes
            // bytes of the next one.
            let len = match self.frame.first_chunk::<HEADER>() {
                None => None,
                Some(header) => match wire::announced_len(*header) {
                    Ok(len) if len <= MAX_HANDSHAKE_MESSAGE => Some(len),
                    _ => {
                        return Err(ConnectError::Protocol(format!(
                            "handshake message longer than {MAX_HANDSHAKE_MESSAGE} bytes"
                        )));
                    }
                },
            };
            let total = len.map_or(MIN_FRAME, |len| (HEADER + len).max(MIN_FRAME));
            if let Some(len) = len
                && self.frame.len() == total
            {
                let payload = self.frame[HEADER..HEADER + len].to_vec();
                self.frame.clear();
                return Ok(Some(payload));
            }
            let want = total - self.frame.len();
            match sys::read(self.fd.as_fd(), &mut buf[..want]) {
                Ok(0) => {
                    return Err(match self.step {
                        // The other side hangs up after refusing; it may not wait for us to
                        // read its verdict.
                        Step::AwaitVerdict => ConnectError::Refused,
                        Step::AwaitAnswer(_) => ConnectError::Protocol(
                            "the peer closed the connection without answering the \
                             authentication challenge (did it connect without an authkey?)"
                                .into(),
                        ),
                        _ => ConnectError::Protocol(
                            "the peer closed the connection during the handshake".into(),
                        ),
                    });
                }
                Ok(n) => self.frame.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn finish(self) -> Result<Connection, ConnectError> {
        sys::set_blocking(self.fd.as_fd())?;
        Ok(socket_connection(self.fd)?)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address
            && !self.address.is_abstract()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.authkey.is_some())
            .finish()
    }
}

/// Connects to a [`Listener`] at `address`, authenticating with this process's authkey:
/// Python's `multiprocessing.connection.Client`.
///
/// Returns once the listener's [`accept`](Listener::accept) has run the handshake; a
/// listener that nobody accepts on makes this wait [`HANDSHAKE_TIMEOUT`] and fail with
/// [`ConnectError::Unanswered`] (see [`client_with_authkey`]).
///
/// # Errors
/// As [`client_with_authkey`].
#[doc(alias = "Client")]
pub fn client(address: &Address) -> Result<Connection, ConnectError> {
    client_with_authkey(address, Some(current_process().authkey()))
}

/// Connects to a [`Listener`] at `address`, authenticating with `authkey` (`None` for a
/// listener that does not authenticate).
///
/// When the two sides disagree on whether to authenticate, the wire protocol (Python's) gives
/// the client nothing to read at connect time, so the mismatch shows at the first point the
/// client can see it:
/// - without a key, against a listener with one: connecting succeeds (the listener's
///   challenge is not read yet), and the first receive on the connection fails with
///   [`RecvError::AuthenticationRequired`]. Sends before that may succeed; the listener
///   discards them when it refuses the peer.
/// - with a key, against a listener without one: [`ConnectError::NoChallenge`] as soon as
///   the listener sends its first message, or [`ConnectError::Unanswered`] after
///   [`HANDSHAKE_TIMEOUT`] if it waits for the client to speak first.
///
/// Unlike Python's, connections authenticate by default ([`client`] and [`Listener::bind`]
/// use this process's authkey), and the listener's side of the handshake runs inside
/// [`Listener::accept`]. So connecting to a listener that nobody calls `accept` on neither
/// returns at once (as Python's keyless `Client` does: the kernel completes the connection)
/// nor hangs forever (as Python's `Client` with an authkey does): it waits
/// [`HANDSHAKE_TIMEOUT`] (10 s) for the listener's challenge and then fails with
/// [`ConnectError::Unanswered`]. Have `accept` running before, or while, clients connect.
///
/// # Errors
/// [`ConnectError::Refused`] when the listener holds a different key,
/// [`ConnectError::Unanswered`] when no challenge came within [`HANDSHAKE_TIMEOUT`] (nobody
/// is running `accept`, or the listener holds no key and waits),
/// [`ConnectError::NoChallenge`] when it holds none (above),
/// [`ConnectError::Protocol`] or [`ConnectError::Timeout`] when it does not follow the
/// handshake, [`ConnectError::Io`] when connecting fails.
pub fn client_with_authkey(
    address: &Address,
    authkey: Option<&AuthKey>,
) -> Result<Connection, ConnectError> {
    let fd: OwnedFd = match address {
        Address::Unix(_) if address.is_abstract() => {
            let addr = address
                .abstract_socket_addr()
                .expect("an abstract address")?;
            UnixStream::connect_addr(&addr)?.into()
        }
        Address::Unix(path) => UnixStream::connect(path)?.into(),
        Address::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s.into()
        }
    };
    let conn = socket_connection(fd)?;
    match authkey {
        Some(key) => {
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            answer_challenge(&conn, key, deadline)?;
            deliver_challenge(&conn, key, deadline)?;
        }
        // Waiting here to see whether a challenge comes would slow every keyless connect;
        // the first receive looks instead.
        None => conn.expect_no_challenge(),
    }
    Ok(conn)
}

fn socket_connection(fd: OwnedFd) -> io::Result<Connection> {
    let writer = fd.try_clone()?;
    Ok(Connection::from_fds(Some(fd), Some(writer)))
}

fn mac(key: &AuthKey, message: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(message);
    mac
}

/// A fresh challenge message (without the `#CHALLENGE#` prefix).
fn new_challenge() -> io::Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    sys::random_bytes(&mut nonce)?;
    Ok([DIGEST_TAG, &nonce].concat())
}

/// Whether `answer` proves the peer holds `key`, for the challenge `message` we sent.
fn check_answer(key: &AuthKey, message: &[u8], answer: &[u8]) -> Result<bool, ConnectError> {
    let digest = answer.strip_prefix(DIGEST_TAG).ok_or_else(|| {
        ConnectError::Protocol(
            "the peer did not answer the authentication challenge \
             (did it connect without an authkey?)"
                .into(),
        )
    })?;
    // `verify_slice` compares in constant time.
    Ok(mac(key, message).verify_slice(digest).is_ok())
}

/// Our answer to the peer's `challenge` message.
fn answer_for(key: &AuthKey, challenge: &[u8]) -> Result<Vec<u8>, ConnectError> {
    let message = challenge
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| ConnectError::Protocol("expected a challenge".into()))?;
    if !message.starts_with(DIGEST_TAG) || message.len() < DIGEST_TAG.len() + NONCE_LEN {
        return Err(ConnectError::Protocol(
            "challenge in an unknown format".into(),
        ));
    }
    let digest = mac(key, message).finalize().into_bytes();
    Ok([DIGEST_TAG, &digest].concat())
}

/// What the peer's reply to our answer means.
fn verdict(reply: Result<Vec<u8>, RecvError>) -> Result<(), ConnectError> {
    match reply {
        Ok(reply) if reply == WELCOME => Ok(()),
        Ok(reply) if reply == FAILURE => Err(ConnectError::Refused),
        // The other side hangs up after refusing; it may not wait for us to read the reply.
        Err(RecvError::Disconnected) | Err(RecvError::Truncated { .. }) => {
            Err(ConnectError::Refused)
        }
        Ok(_) => Err(ConnectError::Protocol(
            "unexpected reply to our answer".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Whether `payload`, the first message a client without a key received, is a listener's
/// authentication challenge: the listener wants a key the client did not use.
pub(super) fn is_challenge(payload: &[u8]) -> bool {
    payload.len() <= MAX_HANDSHAKE_MESSAGE && payload.starts_with(CHALLENGE)
}

/// Sends a challenge and checks the answer (Python's `deliver_challenge`), blocking.
fn deliver_challenge(
    conn: &Connection,
    key: &AuthKey,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let message = new_challenge()?;
    conn.send_bytes(&[CHALLENGE, &message].concat())?;
    let response = conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE)?;
    if check_answer(key, &message, &response)? {
        conn.send_bytes(WELCOME)?;
        Ok(())
    } else {
        let _ = conn.send_bytes(FAILURE);
        Err(ConnectError::Refused)
    }
}

/// Answers a challenge (Python's `answer_challenge`), blocking.
fn answer_challenge(
    conn: &Connection,
    key: &AuthKey,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let challenge = match conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE) {
        Ok(challenge) if challenge.starts_with(CHALLENGE) => challenge,
        // The listener spoke first, and not to challenge us (a message of its own, perhaps
        // too long for a handshake): it does not authenticate.
        Ok(_) | Err(RecvError::Decode(_)) => return Err(ConnectError::NoChallenge),
        Err(RecvError::Timeout) => {
            return Err(ConnectError::Unanswered {
                waited: HANDSHAKE_TIMEOUT,
            });
        }
        Err(e) => return Err(e.into()),
    };
    conn.send_bytes(&answer_for(key, &challenge)?)?;
    verdict(conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE))
}
