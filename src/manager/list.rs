//! [`ListProxy`]: a list in the manager's server.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Handle, encode, unexpected};
use super::error::ManagerError;
use super::modify;
use super::protocol::{Op, Reply};

/// A list in the manager's server, Python's `ListProxy` (`Manager().list()`), typed.
///
/// Indices may be negative, counting from the end, as in Python. An index out of range is
/// [`RemoteError::IndexOutOfRange`](super::RemoteError::IndexOutOfRange).
///
/// # Examples
/// ```
/// let manager = multiproc::Manager::start()?;
/// let l = manager.list::<u32>()?;
/// l.extend(&[1, 2, 3])?;
/// l.push(&4)?;
/// assert_eq!(l.get(-1)?, 4);
/// l.modify(0, |x: &mut u32, by: u32| *x += by, 10)?;
/// assert_eq!(l.to_vec()?, vec![11, 2, 3, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ListProxy<T> {
    pub(crate) handle: Handle,
    pub(crate) _types: PhantomData<fn() -> T>,
}

super::proxy_impls!(ListProxy<T>);

impl<T> ListProxy<T>
where
    T: Serialize + DeserializeOwned,
{
    /// Appends `item` (Python's `append`).
    ///
    /// # Errors
    /// [`ManagerError::Disconnected`] when the server is gone; the other [`ManagerError`]s.
    #[doc(alias = "append")]
    pub fn push(&self, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Push(encode(item)?))
    }

    /// Removes and returns the last item; `None` if the list is empty.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn pop(&self) -> Result<Option<T>, ManagerError> {
        self.handle.value(Op::Pop(None))
    }

    /// The item at `index`.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push), and `IndexOutOfRange`.
    pub fn get(&self, index: i64) -> Result<T, ManagerError> {
        self.handle
            .value(Op::At(index))?
            .ok_or_else(|| unexpected(Reply::Value(None)))
    }

    /// Replaces the item at `index` (Python's `l[i] = v`).
    ///
    /// # Errors
    /// As [`get`](ListProxy::get).
    pub fn set(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Set(index, encode(item)?))
    }

    /// The number of items.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.handle.len()
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// Appends every item of `items`, in one call.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn extend<'a>(&self, items: impl IntoIterator<Item = &'a T>) -> Result<(), ManagerError>
    where
        T: 'a,
    {
        let items = items
            .into_iter()
            .map(encode)
            .collect::<Result<_, ManagerError>>()?;
        self.handle.unit(Op::Extend(items))
    }

    /// Removes the first item equal to `item` (compared by encoded bytes).
    ///
    /// # Errors
    /// As [`push`](ListProxy::push), and [`RemoteError::NotFound`](super::RemoteError::NotFound).
    pub fn remove(&self, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::RemoveItem(encode(item)?))
    }

    /// Inserts `item` before `index` (clamped to the list, as Python does).
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn insert(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::InsertAt(index, encode(item)?))
    }

    /// Removes every item.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Clear)
    }

    /// A snapshot of the whole list, in one call.
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn to_vec(&self) -> Result<Vec<T>, ManagerError> {
        self.handle.values(Op::Snapshot)
    }

    /// Iterates over a snapshot of the list taken now (one call; later changes are not
    /// seen).
    ///
    /// # Errors
    /// As [`push`](ListProxy::push).
    pub fn iter(&self) -> Result<std::vec::IntoIter<T>, ManagerError> {
        Ok(self.to_vec()?.into_iter())
    }

    /// Runs `f(&mut item, arg)` in the server on the item at `index`, atomically; as
    /// [`DictProxy::modify`](super::DictProxy::modify).
    ///
    /// # Errors
    /// As [`get`](ListProxy::get) and `DictProxy::modify`.
    pub fn modify<F, A, R>(&self, index: i64, f: F, arg: A) -> Result<R, ManagerError>
    where
        F: Fn(&mut T, A) -> R + Send + Sync + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let func = modify::func(&f, &arg)?;
        self.handle.modified(Op::ModifyAt(index, func))
    }
}
