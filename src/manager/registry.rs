//! Shared objects by name (Python's `BaseManager.register(typeid, ...)`): a program names an
//! object in its manager's server, and any client of that server (a child, or a program that
//! [`connect`](Manager::connect)s, over TCP from another machine) gets a typed proxy to it by
//! that name.
//!
//! The server keeps, per name, the object's id and the name of the proxy type it was
//! registered through (`std::any::type_name`); a lookup says which proxy type it wants, and
//! the server answers with the id only when the two are equal. So a wrong type is an error
//! ([`RemoteError::WrongType`]), never a proxy that would misread the object's bytes.

use super::Manager;
use super::client::{self, unexpected};
use super::error::{ManagerError, RemoteError};
use super::protocol::{Addr, Reply, Request};
use super::remote::RawProxy;

/// A proxy type ([`DictProxy`](super::DictProxy), [`QueueProxy`](super::QueueProxy), a
/// `<Trait>Proxy` made by [`#[multiproc::remote]`](crate::remote)...): what
/// [`Manager::register`] names and [`Manager::get`] returns. Implemented by this crate's
/// proxies and by the macro; its methods are not for users.
///
/// # Examples
/// ```
/// use multiproc::manager::{ListProxy, Manager, Proxy};
///
/// fn share<P: Proxy>(manager: &Manager, name: &str, proxy: &P) {
///     manager.register(name, proxy).unwrap();
/// }
/// let manager = Manager::start()?;
/// share(&manager, "jobs", &manager.list::<u32>()?);
/// assert!(manager.get::<ListProxy<u32>>("jobs")?.is_empty()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Proxy: Sized {
    /// The handle this proxy wraps.
    #[doc(hidden)]
    fn __raw(&self) -> RawProxy;
    /// A proxy of this type wrapping `raw`.
    #[doc(hidden)]
    fn __from_raw(raw: RawProxy) -> Self;
}

impl Manager {
    /// Names `proxy`'s object in this manager's server, so that any client of the server
    /// can [`get`](Manager::get) it (Python's `BaseManager.register(typeid, callable)` with a
    /// callable returning one shared object, the common way to share a queue or a dict with
    /// programs that `connect`). The name is recorded with `P`, the proxy type, which every
    /// lookup must match.
    ///
    /// A name is registered once and never replaced (objects live until the server stops);
    /// register another object under another name.
    ///
    /// # Errors
    /// [`RemoteError::NameTaken`] when `name` is registered already;
    /// [`RemoteError::BadRequest`] when `proxy` belongs to another manager's server; the
    /// errors of any call ([`ManagerError::Disconnected`]...).
    ///
    /// # Examples
    /// ```
    /// use multiproc::manager::{DictProxy, Manager, ManagerError, RemoteError};
    ///
    /// let manager = Manager::start()?;
    /// let scores = manager.dict::<String, i64>()?;
    /// manager.register("scores", &scores)?;
    ///
    /// // Another program, given the address and the authkey, finds it by name.
    /// let remote = Manager::connect(manager.address(), manager.authkey().clone())?;
    /// let d: DictProxy<String, i64> = remote.get("scores")?;
    /// d.insert(&"ada".into(), &3)?;
    /// assert_eq!(scores.get(&"ada".into())?, Some(3));
    ///
    /// let again = manager.register("scores", &manager.dict::<String, i64>()?);
    /// assert!(matches!(again, Err(ManagerError::Remote(RemoteError::NameTaken(_)))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "typeid")]
    pub fn register<P: Proxy>(&self, name: &str, proxy: &P) -> Result<(), ManagerError> {
        let raw = proxy.__raw();
        let handle = raw.handle();
        if handle.server != self.server {
            return Err(ManagerError::Remote(RemoteError::BadRequest(format!(
                "cannot register {name:?}: the proxy belongs to another manager's server"
            ))));
        }
        let request = Request::Register {
            name: name.to_owned(),
            id: handle.id,
            type_name: std::any::type_name::<P>().to_owned(),
        };
        match self.call_own(&request)? {
            Reply::Unit => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// A proxy to the object registered as `name` (with [`register`](Manager::register), by
    /// any client of this server); Python's `manager.typeid()` on a connected manager. `P`
    /// must be the proxy type it was registered through, type parameters included.
    ///
    /// The type is compared by [`std::any::type_name`], which names the crate that defines
    /// it: a user's type (`DictProxy<String, MyStruct>`, a `<Trait>Proxy`) matches only in a
    /// program built from the same crate (as its methods need anyway); types of `std` and of
    /// this crate match in any program built with the same compiler.
    ///
    /// # Errors
    /// [`RemoteError::NotRegistered`] for an unknown name; [`RemoteError::WrongType`] when
    /// `name` was registered through another proxy type; the errors of any call.
    ///
    /// # Examples
    /// ```
    /// use multiproc::connection::Address;
    /// use multiproc::manager::{DictProxy, Manager, ManagerError, QueueProxy, RemoteError};
    ///
    /// let manager = Manager::start()?;
    /// manager.register("tasks", &manager.queue::<String>(None)?)?;
    /// // A manager's default address is a Unix socket; a TCP one works the same way.
    /// let Address::Unix(path) = manager.address().clone() else { unreachable!() };
    /// let child = multiproc::spawn_with_args(
    ///     |(path, key): (std::path::PathBuf, multiproc::process::AuthKey)| {
    ///         let manager = Manager::connect(&Address::Unix(path), key).unwrap();
    ///         let tasks: QueueProxy<String> = manager.get("tasks").unwrap();
    ///         tasks.put(&"from the child".into()).unwrap();
    ///     },
    ///     (path, manager.authkey().clone()),
    /// )?;
    /// child.join()?;
    /// let tasks: QueueProxy<String> = manager.get("tasks")?;
    /// assert_eq!(tasks.get()?, "from the child");
    ///
    /// let wrong = manager.get::<DictProxy<String, i64>>("tasks");
    /// assert!(matches!(wrong, Err(ManagerError::Remote(RemoteError::WrongType { .. }))));
    /// let unknown = manager.get::<QueueProxy<String>>("nope");
    /// assert!(matches!(unknown, Err(ManagerError::Remote(RemoteError::NotRegistered(_)))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<P: Proxy>(&self, name: &str) -> Result<P, ManagerError> {
        let request = Request::Lookup {
            name: name.to_owned(),
            type_name: std::any::type_name::<P>().to_owned(),
        };
        match self.call_own(&request)? {
            Reply::Id(id) => Ok(P::__from_raw(RawProxy::from_handle(client::Handle {
                address: Addr::from(&self.address),
                authkey: self.authkey.clone(),
                server: self.server,
                id,
            }))),
            r => Err(unexpected(r)),
        }
    }

    fn call_own(&self, request: &Request) -> Result<Reply, ManagerError> {
        let address = Addr::from(&self.address);
        client::call_server(&address, &self.authkey, Some(self.server), request)
    }
}
