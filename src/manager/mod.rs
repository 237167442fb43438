//! Managers: typed shared objects kept in a server process and reached by proxies, from
//! children, from unrelated programs, or from other machines (Python's
//! `multiprocessing.managers`, `SyncManager`).
//!
//! [`Manager::start`] runs a server as a daemon child (under the program's start method) and
//! returns a handle that makes objects in it: [`dict`](Manager::dict) ([`DictProxy`]),
//! [`list`](Manager::list) ([`ListProxy`]), [`value`](Manager::value) and
//! [`namespace`](Manager::namespace) ([`ValueProxy`], [`Namespace`]), [`lock`](Manager::lock)
//! and [`rlock`](Manager::rlock) ([`LockProxy`]), [`semaphore`](Manager::semaphore) and
//! [`bounded_semaphore`](Manager::bounded_semaphore) ([`SemaphoreProxy`]),
//! [`event`](Manager::event) ([`EventProxy`]),
//! [`queue`](Manager::queue) ([`QueueProxy`]). A proxy is a small handle: clone it, pass it to
//! a child as a start argument, send it through a queue, capture it under fork; every process
//! and thread opens its own connection to the server on first use, so a fork never shares a
//! socket (cpython#101320).
//!
//! Beyond Python:
//! - `modify` runs a function on a stored value inside the server, atomically, so that
//!   processes incrementing one counter lose no update (Python loses ~40 % with `d[k] += 1`),
//!   and nested changes stick.
//! - Once the server is gone, every call, pending or later, fails at once with
//!   [`ManagerError::Disconnected`], never hangs.
//! - Values travel as serde + postcard, never code; a lock held by a process that dies is
//!   released by the server.
//! - Your own types, with [`#[multiproc::remote]`](crate::remote) on a trait.
//! - Objects by name: [`Manager::register`] names one, [`Manager::get`] returns a typed proxy
//!   to it in any client (a wrong type is an error, not a misread).
//!
//! See `README.md` beside this file for the protocol and why no update is lost.
//!
//! Platforms: `modify` and `#[remote]` types run only functions the server finds in its own
//! executable's ELF symbol table (so a client holding the key cannot make it call anything
//! else). Where that table cannot be read (a stripped executable; macOS, whose executables
//! are Mach-O; a system where the running executable cannot be found), the server refuses
//! those calls with [`RemoteError::BadRequest`] saying why; the
//! other proxies work everywhere.
//!
//! # Examples
//! ```
//! use multiproc::manager::DictProxy;
//!
//! fn count(d: DictProxy<String, u64>) {
//!     for _ in 0..100 {
//!         d.modify(&"hits".into(), |v: &mut u64, by: u64| *v += by, 1).unwrap();
//!     }
//! }
//!
//! let manager = multiproc::Manager::start()?;
//! let d = manager.dict::<String, u64>()?;
//! let children = (0..2)
//!     .map(|_| multiproc::spawn_with_args(count, d.clone()))
//!     .collect::<Result<Vec<_>, _>>()?;
//! for child in children {
//!     child.join()?;
//! }
//! assert_eq!(d.get(&"hits".into())?, Some(200));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod dict;
mod error;
mod list;
mod modify;
mod protocol;
mod queue;
mod registry;
#[doc(hidden)]
pub mod remote;
mod server;
mod shared_memory;
mod sync;
mod value;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use dict::DictProxy;
pub use error::{ManagerError, RemoteError};
pub use list::ListProxy;
pub(crate) use modify::ModifyEntry;
pub use queue::QueueProxy;
pub use registry::Proxy;
pub use server::Server;
pub use shared_memory::SharedMemoryManager;
pub use sync::{
    BarrierProxy, ConditionProxy, EventProxy, LockProxy, LockProxyGuard, SemaphoreProxy,
};
pub use value::{Namespace, ValueProxy};

use crate::connection::{Address, Connection};
use crate::context::StartMethod;
use crate::process::{AuthKey, Process};
use client::Handle;
use protocol::{Addr, Kind, Reply, Request};

/// How long [`Manager::start`] waits for the server to listen, and [`Manager::shutdown`] for
/// it to exit before killing it.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Clone, Debug, equality and serde (as the [`Handle`]) for a proxy type.
macro_rules! proxy_impls {
    ($name:ident < $($t:ident),+ >) => {
        impl<$($t),+> $name<$($t),+> {
            pub(crate) fn from_handle(handle: $crate::manager::client::Handle) -> Self {
                $name { handle, _types: ::std::marker::PhantomData }
            }
        }
        $crate::manager::proxy_impls!(@common $name [$($t),+]);
    };
    ($name:ident) => {
        impl $name {
            pub(crate) fn from_handle(handle: $crate::manager::client::Handle) -> Self {
                $name { handle }
            }
        }
        $crate::manager::proxy_impls!(@common $name []);
    };
    (@common $name:ident [$($t:ident),*]) => {
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                Self::from_handle(self.handle.clone())
            }
        }
        impl<$($t),*> PartialEq for $name<$($t),*> {
            /// Whether both proxies refer to the same object.
            fn eq(&self, other: &Self) -> bool {
                self.handle == other.handle
            }
        }
        impl<$($t),*> Eq for $name<$($t),*> {}
        impl<$($t),*> $crate::manager::Proxy for $name<$($t),*> {
            fn __raw(&self) -> $crate::manager::remote::RawProxy {
                $crate::manager::remote::RawProxy::from_handle(self.handle.clone())
            }
            fn __from_raw(raw: $crate::manager::remote::RawProxy) -> Self {
                Self::from_handle(raw.into_handle())
            }
        }
        impl<$($t),*> ::std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.handle).finish()
            }
        }
        /// Serialized as a handle (the server's address and authkey, the object's id), so a
        /// proxy can be sent to another process; it connects there on first use.
        impl<$($t),*> ::serde::Serialize for $name<$($t),*> {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.handle.serialize(s)
            }
        }
        impl<'de, $($t),*> ::serde::Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::manager::client::Handle::deserialize(d).map(Self::from_handle)
            }
        }
    };
}
pub(crate) use proxy_impls;

/// A manager: a server process holding shared objects, and the way to make them (Python's
/// `multiprocessing.Manager()` / `SyncManager`).
///
/// [`start`](Manager::start) runs the server as a daemon child; [`shutdown`](Manager::shutdown)
/// or dropping the manager stops it (and its objects are gone: proxies then fail with
/// [`ManagerError::Disconnected`]). [`connect`](Manager::connect) reaches a server that runs
/// elsewhere ([`Server::serve_forever`], or a manager started by another process, given its
/// [`address`](Manager::address) and authkey).
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let l = manager.list::<String>()?;
/// let child = multiproc::spawn_with_args(
///     |l: multiproc::manager::ListProxy<String>| l.push(&"hi".into()).unwrap(),
///     l.clone(),
/// )?;
/// child.join()?;
/// assert_eq!(l.to_vec()?, vec!["hi".to_string()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "SyncManager")]
pub struct Manager {
    address: Address,
    authkey: AuthKey,
    server: u64,
    process: Option<Process>,
    /// The Unix socket file we chose, removed once our server has stopped.
    socket_file: Option<PathBuf>,
    stopped: bool,
}

/// Options for [`Manager::start`]: where the server listens, its authkey, its start method.
///
/// # Examples
/// ```
/// use multiproc::{manager::Manager, process::AuthKey, StartMethod};
///
/// let manager = Manager::builder()
///     .address("127.0.0.1:0".parse::<std::net::SocketAddr>()?)
///     .authkey(AuthKey::from(b"secret".to_vec()))
///     .start_method(StartMethod::Spawn)
///     .start()?;
/// assert!(matches!(manager.address(), multiproc::connection::Address::Tcp(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<AuthKey>,
    start_method: Option<StartMethod>,
}

impl ManagerBuilder {
    /// Listen here (a Unix socket path, or a TCP address for clients on other machines; port
    /// 0 picks one). Default: a fresh Unix socket in the temporary directory.
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The key clients must hold. Default: this process's
    /// [`authkey`](crate::process::CurrentProcess::authkey), which children inherit.
    pub fn authkey(mut self, key: AuthKey) -> Self {
        self.authkey = Some(key);
        self
    }

    /// Start the server with this method instead of the program's default.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Starts the server and waits until it listens.
    ///
    /// # Errors
    /// [`ManagerError::Start`] when the process cannot be started or the address cannot be
    /// bound (in use, no permission).
    pub fn start(self) -> Result<Manager, ManagerError> {
        let authkey = self
            .authkey
            .unwrap_or_else(|| crate::current_process().authkey().clone());
        let socket_file = match &self.address {
            None => Some(default_socket_path()?),
            Some(_) => None,
        };
        let address = match (&self.address, &socket_file) {
            (Some(a), _) => a.clone(),
            (None, Some(p)) => Address::Unix(p.clone()),
            (None, None) => unreachable!("a path is chosen when no address is given"),
        };
        let (ready, ready_tx) = crate::pipe(false).map_err(ManagerError::Start)?;
        static STARTED: AtomicU64 = AtomicU64::new(1);
        let mut builder = Process::builder()
            .name(format!(
                "SyncManager-{}",
                STARTED.fetch_add(1, Ordering::Relaxed)
            ))
            .daemon(true);
        if let Some(m) = self.start_method {
            builder = builder.start_method(m);
        }
        let mut process = builder.target_with_args(
            run_server,
            (Addr::from(&address), authkey.clone(), ready_tx),
        );
        process.start().map_err(ManagerError::Start)?;
        let started = ready
            .recv_timeout::<Result<(Addr, u64), String>>(SERVER_TIMEOUT)
            .map_err(|e| format!("the server process did not report ({e})"))
            .and_then(|r| r);
        match started {
            Ok((addr, server)) => Ok(Manager {
                address: Address::from(&addr),
                authkey,
                server,
                process: Some(process),
                socket_file,
                stopped: false,
            }),
            Err(message) => {
                let _ = process.kill();
                let _ = process.join_timeout(SERVER_TIMEOUT);
                Err(ManagerError::Start(crate::Error::with_message(
                    crate::ErrorKind::Io,
                    format!("the manager's server did not start: {message}"),
                )))
            }
        }
    }
}

/// A fresh socket path: pid, a counter and random bits, so that managers of one process,
/// and of a pid reused after a crash that left a file behind, never collide.
fn default_socket_path() -> Result<PathBuf, ManagerError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut bits = [0u8; 4];
    crate::sys::random_bytes(&mut bits).map_err(|e| ManagerError::Start(e.into()))?;
    Ok(std::env::temp_dir().join(format!(
        "multiproc-manager-{}-{}-{:08x}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        u32::from_ne_bytes(bits)
    )))
}

/// The server process's body: bind, say so (or why not) on `ready`, serve.
fn run_server((address, authkey, ready): (Addr, AuthKey, Connection)) {
    match Server::bind(Address::from(&address), authkey) {
        Ok(server) => {
            let id = (Addr::from(server.address()), server.nonce());
            if ready.send(&Ok::<_, String>(id)).is_ok() {
                drop(ready);
                if let Err(e) = server.serve_forever() {
                    tracing::error!("manager server stopped: {e}");
                }
            }
        }
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            let _ = ready.send(&Err::<(Addr, u64), String>(message));
        }
    }
}

impl Manager {
    /// Starts a server as a daemon child, listening on a fresh Unix socket, for clients with
    /// this process's authkey (Python's `Manager()`).
    ///
    /// # Errors
    /// [`ManagerError::Start`] when the server cannot be started.
    pub fn start() -> Result<Manager, ManagerError> {
        ManagerBuilder::default().start()
    }

    /// Options: address, authkey, start method.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Reaches a server that runs elsewhere (Python's `BaseManager.connect`): one started by
    /// another program, or [`Server::serve_forever`]. Dropping the result leaves the server
    /// running.
    ///
    /// # Errors
    /// [`ManagerError::Connect`] with [`ConnectError::Refused`](crate::connection::ConnectError::Refused)
    /// for a wrong authkey; [`ManagerError::Disconnected`] when nothing listens there.
    pub fn connect(address: &Address, authkey: AuthKey) -> Result<Manager, ManagerError> {
        let (_conn, welcome) = client::connect(address, &authkey)?;
        Ok(Manager {
            address: address.clone(),
            authkey,
            server: welcome.server,
            process: None,
            socket_file: None,
            stopped: false,
        })
    }

    /// Where the server listens: give it, with the authkey, to programs that should
    /// [`connect`](Manager::connect).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The key clients must hold.
    pub fn authkey(&self) -> &AuthKey {
        &self.authkey
    }

    /// The server process, when this manager started it (`None` after `shutdown`, and for a
    /// manager from `connect`).
    pub fn server_process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    pub(crate) fn create(&self, kind: Kind) -> Result<Handle, ManagerError> {
        let address = Addr::from(&self.address);
        let request = Request::Create(kind);
        match client::call_server(&address, &self.authkey, Some(self.server), &request)? {
            Reply::Id(id) => Ok(Handle {
                address,
                authkey: self.authkey.clone(),
                server: self.server,
                id,
            }),
            r => Err(client::unexpected(r)),
        }
    }

    /// A new, empty dict in the server (Python's `Manager().dict()`).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone; the other [`ManagerError`]s.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, ManagerError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.create(Kind::Dict).map(DictProxy::from_handle)
    }

    /// A new, empty list in the server (Python's `Manager().list()`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn list<T>(&self) -> Result<ListProxy<T>, ManagerError>
    where
        T: Serialize + DeserializeOwned,
    {
        self.create(Kind::List).map(ListProxy::from_handle)
    }

    /// A value in the server, starting at `initial` (Python's `Manager().Value(t, v)`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict), and [`ManagerError::Encode`].
    #[doc(alias = "Value")]
    pub fn value<T>(&self, initial: T) -> Result<ValueProxy<T>, ManagerError>
    where
        T: Serialize + DeserializeOwned,
    {
        let bytes = client::encode(&initial)?;
        self.create(Kind::Value(bytes)).map(ValueProxy::from_handle)
    }

    /// A struct of yours in the server, starting at `initial` (Python's
    /// `Manager().Namespace()`, typed; see [`Namespace`]).
    ///
    /// # Errors
    /// As [`value`](Manager::value).
    #[doc(alias = "Namespace")]
    pub fn namespace<T>(&self, initial: T) -> Result<Namespace<T>, ManagerError>
    where
        T: Serialize + DeserializeOwned,
    {
        self.value(initial)
    }

    /// A lock in the server (Python's `Manager().Lock()`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "Lock")]
    pub fn lock(&self) -> Result<LockProxy, ManagerError> {
        self.create(Kind::Lock).map(LockProxy::from_handle)
    }

    /// A reentrant lock in the server (Python's `Manager().RLock()`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "RLock")]
    pub fn rlock(&self) -> Result<LockProxy, ManagerError> {
        self.create(Kind::RLock).map(LockProxy::from_handle)
    }

    /// A semaphore in the server starting at `value` (Python's `Manager().Semaphore(value)`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "Semaphore")]
    pub fn semaphore(&self, value: usize) -> Result<SemaphoreProxy, ManagerError> {
        let value = value as u64;
        self.create(Kind::Semaphore { value, bound: None })
            .map(SemaphoreProxy::from_handle)
    }

    /// A semaphore in the server starting at `value` whose `release` fails beyond `value`
    /// (Python's `Manager().BoundedSemaphore(value)`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "BoundedSemaphore")]
    pub fn bounded_semaphore(&self, value: usize) -> Result<SemaphoreProxy, ManagerError> {
        let value = value as u64;
        let bound = Some(value);
        self.create(Kind::Semaphore { value, bound })
            .map(SemaphoreProxy::from_handle)
    }

    /// An event in the server (Python's `Manager().Event()`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "Event")]
    pub fn event(&self) -> Result<EventProxy, ManagerError> {
        self.create(Kind::Event).map(EventProxy::from_handle)
    }

    /// A condition variable in the server with its own reentrant lock (Python's
    /// `Manager().Condition()`).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "Condition")]
    pub fn condition(&self) -> Result<ConditionProxy, ManagerError> {
        self.create(Kind::Condition)
            .map(ConditionProxy::from_handle)
    }

    /// A barrier in the server for `parties` callers (Python's `Manager().Barrier(parties)`).
    ///
    /// # Errors
    /// [`ManagerError::Remote`] with [`RemoteError::BadRequest`] for `parties == 0`; as
    /// [`dict`](Manager::dict).
    #[doc(alias = "Barrier")]
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, ManagerError> {
        if parties == 0 {
            return Err(ManagerError::Remote(RemoteError::BadRequest(
                "a barrier needs at least one party".into(),
            )));
        }
        self.create(Kind::Barrier {
            parties: parties as u64,
        })
        .map(BarrierProxy::from_handle)
    }

    /// A FIFO queue in the server, holding at most `maxsize` items (`None`: unbounded);
    /// Python's `Manager().Queue(maxsize)`.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    #[doc(alias = "Queue")]
    pub fn queue<T>(&self, maxsize: Option<usize>) -> Result<QueueProxy<T>, ManagerError>
    where
        T: Serialize + DeserializeOwned,
    {
        let maxsize = maxsize.map(|m| m as u64);
        self.create(Kind::Queue { maxsize })
            .map(QueueProxy::from_handle)
    }

    /// Stops the server and waits for its process to exit (killing it if it does not within
    /// 10 s); its objects are gone, and their proxies fail with
    /// [`ManagerError::Disconnected`]. A manager from [`connect`](Manager::connect) asks the
    /// server it reached to stop serving. Calling it again does nothing.
    ///
    /// # Errors
    /// [`ManagerError::Start`] if the server process could not be reaped; for a connected
    /// manager, the errors of reaching the server.
    pub fn shutdown(&mut self) -> Result<(), ManagerError> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let Some(mut process) = self.process.take() else {
            return self.ask_to_stop();
        };
        // A server already gone (killed) cannot be asked; it is reaped below all the same.
        let _ = self.ask_to_stop();
        let exited = process
            .join_timeout(SERVER_TIMEOUT)
            .map_err(ManagerError::Start)?;
        if exited.is_none() {
            let _ = process.kill();
            process.join().map_err(ManagerError::Start)?;
        }
        if let Some(path) = self.socket_file.take() {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    fn ask_to_stop(&self) -> Result<(), ManagerError> {
        let (conn, welcome) = client::connect(&self.address, &self.authkey)?;
        if welcome.server != self.server {
            return Ok(());
        }
        conn.send(&Request::Shutdown)
            .map_err(|_| client::disconnected(&self.address))?;
        let _ = conn.recv::<protocol::Response>();
        Ok(())
    }
}

impl Drop for Manager {
    /// Stops the server this manager started (not one it connected to).
    fn drop(&mut self) {
        if self.process.is_some()
            && let Err(e) = self.shutdown()
        {
            tracing::warn!("manager: stopping the server failed: {e}");
        }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.address)
            .field("server_pid", &self.process.as_ref().and_then(Process::pid))
            .finish_non_exhaustive()
    }
}
