//! [`DictProxy`]: a dict in the manager's server.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Handle, decode, encode, unexpected};
use super::error::ManagerError;
use super::modify;
use super::protocol::{Op, Reply};

/// A dict in the manager's server, Python's `DictProxy` (`Manager().dict()`), typed.
///
/// Keys are compared by their encoded bytes (postcard), which for the usual key types
/// (integers, strings, tuples and structs of them) is equality; keys that serialize an
/// unordered collection, or floats (`-0.0` and `0.0` differ), are best avoided. Iteration
/// order is insertion order, as in Python.
///
/// `d.get(k)` then `d.insert(k, ..)` is two calls, and another process may write in between
/// (Python's lost `d['k'] += 1`); [`modify`](DictProxy::modify) does it in one.
///
/// The proxy is a handle (address, authkey, object id): clone it, send it to a child as a
/// start argument, or through a queue; each process and thread reaches the server over its
/// own connection.
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let d = manager.dict::<String, u64>()?;
/// d.insert(&"a".into(), &1)?;
/// let child = multiproc::spawn_with_args(
///     |d: multiproc::manager::DictProxy<String, u64>| d.insert(&"b".into(), &2).unwrap(),
///     d.clone(),
/// )?;
/// child.join()?;
/// assert_eq!(d.items()?, vec![("a".to_string(), 1), ("b".to_string(), 2)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DictProxy<K, V> {
    pub(crate) handle: Handle,
    pub(crate) _types: PhantomData<fn() -> (K, V)>,
}

super::proxy_impls!(DictProxy<K, V>);

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// The value at `key`, if any (Python's `d.get(k)`).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone; the other [`ManagerError`]s.
    pub fn get(&self, key: &K) -> Result<Option<V>, ManagerError> {
        self.handle.value(Op::Get(encode(key)?))
    }

    /// Sets `key` to `value`; the previous value, if any (Python's `d[k] = v`).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>, ManagerError> {
        self.handle.value(Op::Insert(encode(key)?, encode(value)?))
    }

    /// Removes `key`; its value, if it was there (Python's `d.pop(k, None)`).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    #[doc(alias = "pop")]
    pub fn remove(&self, key: &K) -> Result<Option<V>, ManagerError> {
        self.handle.value(Op::Remove(encode(key)?))
    }

    /// As [`remove`](DictProxy::remove), under Python's name.
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn pop(&self, key: &K) -> Result<Option<V>, ManagerError> {
        self.remove(key)
    }

    /// Whether `key` is in the dict (Python's `k in d`).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn contains(&self, key: &K) -> Result<bool, ManagerError> {
        self.handle.bool(Op::Contains(encode(key)?))
    }

    /// The number of entries.
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.handle.len()
    }

    /// Whether the dict is empty.
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order (a snapshot).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        self.handle.values(Op::Keys)
    }

    /// The values, in insertion order of their keys (a snapshot).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn values(&self) -> Result<Vec<V>, ManagerError> {
        self.handle.values(Op::Values)
    }

    /// The entries, in insertion order (a snapshot).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn items(&self) -> Result<Vec<(K, V)>, ManagerError> {
        match self.handle.op(Op::Items)? {
            Reply::Items(items) => items
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    /// Inserts every entry of `entries`, in one call (all or nothing if one cannot be
    /// encoded).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn update<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    ) -> Result<(), ManagerError>
    where
        K: 'a,
        V: 'a,
    {
        let items = entries
            .into_iter()
            .map(|(k, v)| Ok((encode(k)?, encode(v)?)))
            .collect::<Result<_, ManagerError>>()?;
        self.handle.unit(Op::Update(items))
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Clear)
    }

    /// The value at `key`, inserting `default` first if the key is absent, in one call
    /// (Python's `d.setdefault(k, default)`).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get).
    pub fn setdefault(&self, key: &K, default: &V) -> Result<V, ManagerError> {
        self.handle
            .value(Op::SetDefault(encode(key)?, encode(default)?))?
            .ok_or_else(|| unexpected(Reply::Value(None)))
    }

    /// Runs `f(&mut value, arg)` in the server on the value at `key` (starting from
    /// `V::default()` if absent, which is then inserted), atomically: no other call on this
    /// dict runs in between, so concurrent `modify` calls lose no update. Returns what `f`
    /// returns. Changes nested inside the value stick, where Python silently drops them.
    ///
    /// `f` must capture nothing (a function item or a closure without captures; refused at
    /// compile time otherwise): it travels as a code offset, as Pool tasks do, and the server
    /// runs it only for a client running the server's own binary. It runs under the server's
    /// lock, so it should be quick. If it panics, the value is unchanged and the call fails
    /// with [`RemoteError::Panicked`](super::RemoteError::Panicked).
    ///
    /// # Errors
    /// As [`get`](DictProxy::get), plus [`RemoteError::ForeignBuild`](super::RemoteError)
    /// from a client running another program.
    ///
    /// # Examples
    /// ```
    /// let manager = multiproc::Manager::start()?;
    /// let d = manager.dict::<String, u64>()?;
    /// let now = d.modify(&"hits".into(), |v: &mut u64, by: u64| { *v += by; *v }, 5)?;
    /// assert_eq!(now, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn modify<F, A, R>(&self, key: &K, f: F, arg: A) -> Result<R, ManagerError>
    where
        F: Fn(&mut V, A) -> R + Send + Sync + 'static,
        V: Default,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let func = modify::func(&f, &arg)?;
        self.handle
            .modified(Op::ModifyKey(encode(key)?, encode(&V::default())?, func))
    }
}
