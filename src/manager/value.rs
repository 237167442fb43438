//! [`ValueProxy`] (and [`Namespace`]): one value in the manager's server.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Handle, encode, unexpected};
use super::error::ManagerError;
use super::modify;
use super::protocol::{Op, Reply};

/// One value of type `T` in the manager's server: Python's `Manager().Value(typecode, v)`,
/// for any serializable `T`.
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let v = manager.value(0i64)?;
/// v.set(&41)?;
/// assert_eq!(v.modify(|x: &mut i64, by: i64| { *x += by; *x }, 1)?, 42);
/// assert_eq!(v.get()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "Value")]
pub struct ValueProxy<T> {
    pub(crate) handle: Handle,
    pub(crate) _types: PhantomData<fn() -> T>,
}

/// Python's `Manager().Namespace()`, typed: a struct of yours, stored in the server. Read it
/// whole with `get`, replace it with `set`, change fields in place with `modify` (Python's
/// `ns.x = 1` is `ns.modify(|s: &mut S, x| s.x = x, 1)`).
///
/// # Examples
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Settings { verbose: bool, retries: u32 }
///
/// let manager = multiproc::Manager::start()?;
/// let ns = manager.namespace(Settings::default())?;
/// ns.modify(|s: &mut Settings, n: u32| s.retries = n, 3)?;
/// assert_eq!(ns.get()?.retries, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Namespace<T> = ValueProxy<T>;

super::proxy_impls!(ValueProxy<T>);

impl<T> ValueProxy<T>
where
    T: Serialize + DeserializeOwned,
{
    /// The current value (Python's `v.value`).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone; the other [`ManagerError`]s.
    pub fn get(&self) -> Result<T, ManagerError> {
        self.handle
            .value(Op::Load)?
            .ok_or_else(|| unexpected(Reply::Value(None)))
    }

    /// Replaces the value (Python's `v.value = x`).
    ///
    /// # Errors
    /// As [`get`](ValueProxy::get).
    pub fn set(&self, value: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Store(encode(value)?))
    }

    /// Runs `f(&mut value, arg)` in the server, atomically; as
    /// [`DictProxy::modify`](super::DictProxy::modify).
    ///
    /// # Errors
    /// As [`get`](ValueProxy::get) and `DictProxy::modify`.
    pub fn modify<F, A, R>(&self, f: F, arg: A) -> Result<R, ManagerError>
    where
        F: Fn(&mut T, A) -> R + Send + Sync + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let func = modify::func(&f, &arg)?;
        self.handle.modified(Op::Modify(func))
    }
}
