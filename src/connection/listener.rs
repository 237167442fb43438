//! [`Listener`] and [`client`]: connections between programs over a Unix socket or TCP,
//! authenticated by an HMAC challenge on a shared key (Python's `Listener`, `Client`,
//! `deliver_challenge` and `answer_challenge`).
//!
//! The handshake runs both ways, as Python's does: the accepting side sends 32 random bytes,
//! the connecting side answers with their HMAC-SHA256 under the key, and the accepting side
//! compares in constant time; then the roles swap. The key itself never travels, and a peer
//! with the wrong key learns only that it was refused. Every handshake message is at most
//! [`MAX_HANDSHAKE_MESSAGE`] bytes and the whole exchange must finish within
//! [`HANDSHAKE_TIMEOUT`], so a silent or hostile peer cannot block `accept` for long or make
//! it allocate.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Connection;
use crate::error::{RecvError, SendError};
use crate::{current_process, process::AuthKey, sys};

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
    /// A Unix-domain stream socket at this path (Python's `AF_UNIX`).
    Unix(PathBuf),
    /// A TCP address (Python's `AF_INET`); port 0 picks a free port.
    Tcp(SocketAddr),
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
    /// The peer did not follow the handshake (garbage, an oversized message, or it closed).
    #[error("authentication failed: {0}")]
    Protocol(String),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("authentication timed out")]
    Timeout,
    /// Connecting, accepting or the socket's I/O failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
}

impl From<SendError> for ConnectError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Io(e) => ConnectError::Io(e),
            other => ConnectError::Protocol(other.to_string()),
        }
    }
}

impl From<RecvError> for ConnectError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Timeout => ConnectError::Timeout,
            RecvError::Io(e) => ConnectError::Io(e),
            other => ConnectError::Protocol(other.to_string()),
        }
    }
}

/// Accepts connections from other programs, Python's `multiprocessing.connection.Listener`.
///
/// Peers must prove they hold the same [`AuthKey`]: by default this process's own key
/// ([`current_process().authkey()`](crate::process::CurrentProcess::authkey)), which children
/// inherit. A Unix socket's file is removed when the listener is dropped.
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
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Listens on `address`, authenticating peers with this process's authkey.
    ///
    /// # Errors
    /// The OS error if the address cannot be bound (in use, no permission).
    pub fn bind(address: impl Into<Address>) -> io::Result<Listener> {
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
    ) -> io::Result<Listener> {
        let (socket, address) = match address.into() {
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
        Ok(Listener {
            socket,
            address,
            authkey,
        })
    }

    /// The address peers connect to (with the actual port, if port 0 was asked for).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a peer, runs the handshake, and returns the connection to it.
    ///
    /// # Errors
    /// [`ConnectError::Refused`] when the peer's key differs (the listener stays usable),
    /// [`ConnectError::Protocol`] or [`ConnectError::Timeout`] for a peer that does not
    /// follow the handshake, [`ConnectError::Io`] when accepting fails.
    pub fn accept(&self) -> Result<Connection, ConnectError> {
        let fd: OwnedFd = match &self.socket {
            Socket::Unix(l) => l.accept()?.0.into(),
            Socket::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        let conn = socket_connection(fd)?;
        if let Some(key) = &self.authkey {
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            deliver_challenge(&conn, key, deadline)?;
            answer_challenge(&conn, key, deadline)?;
        }
        Ok(conn)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address {
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
/// # Errors
/// As [`client_with_authkey`].
#[doc(alias = "Client")]
pub fn client(address: &Address) -> Result<Connection, ConnectError> {
    client_with_authkey(address, Some(current_process().authkey()))
}

/// Connects to a [`Listener`] at `address`, authenticating with `authkey` (`None` for a
/// listener that does not authenticate).
///
/// # Errors
/// [`ConnectError::Refused`] when the listener holds a different key,
/// [`ConnectError::Protocol`] or [`ConnectError::Timeout`] when it does not follow the
/// handshake, [`ConnectError::Io`] when connecting fails.
pub fn client_with_authkey(
    address: &Address,
    authkey: Option<&AuthKey>,
) -> Result<Connection, ConnectError> {
    let fd: OwnedFd = match address {
        Address::Unix(path) => UnixStream::connect(path)?.into(),
        Address::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s.into()
        }
    };
    let conn = socket_connection(fd)?;
    if let Some(key) = authkey {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        answer_challenge(&conn, key, deadline)?;
        deliver_challenge(&conn, key, deadline)?;
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

/// Sends a challenge and checks the answer (Python's `deliver_challenge`).
fn deliver_challenge(
    conn: &Connection,
    key: &AuthKey,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let mut nonce = [0u8; NONCE_LEN];
    sys::random_bytes(&mut nonce)?;
    let message = [DIGEST_TAG, &nonce].concat();
    conn.send_bytes(&[CHALLENGE, &message].concat())?;
    let response = conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE)?;
    let digest = response
        .strip_prefix(DIGEST_TAG)
        .ok_or_else(|| ConnectError::Protocol("answer lacks the digest tag".into()))?;
    // `verify_slice` compares in constant time.
    if mac(key, &message).verify_slice(digest).is_ok() {
        conn.send_bytes(WELCOME)?;
        Ok(())
    } else {
        let _ = conn.send_bytes(FAILURE);
        Err(ConnectError::Refused)
    }
}

/// Answers a challenge (Python's `answer_challenge`).
fn answer_challenge(
    conn: &Connection,
    key: &AuthKey,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let challenge = conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE)?;
    let message = challenge
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| ConnectError::Protocol("expected a challenge".into()))?;
    if !message.starts_with(DIGEST_TAG) || message.len() < DIGEST_TAG.len() + NONCE_LEN {
        return Err(ConnectError::Protocol(
            "challenge in an unknown format".into(),
        ));
    }
    let digest = mac(key, message).finalize().into_bytes();
    conn.send_bytes(&[DIGEST_TAG, &digest].concat())?;
    match conn.recv_limited(Some(deadline), MAX_HANDSHAKE_MESSAGE) {
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
