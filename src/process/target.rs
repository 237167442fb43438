//! What a child runs: a closure, a function with serialized arguments, or a [`Run`] type.
//!
//! Every target can run in a forked child, where it is simply moved across the fork. Start
//! methods that begin a fresh program (spawn, forkserver) need the target as data: an
//! [`Entry`] function, monomorphised for the target's type, plus its serialized arguments.
//! That works for any function item or non-capturing closure, because such a type is
//! zero-sized: the child can make its one value out of nothing ([`conjure`]).
//!
//! A zero size does not quite prove that a closure captures nothing: it may capture values
//! that are themselves zero-sized (a `PhantomData`, a unit struct). Such a closure is made
//! afresh in the child like a function item, which is sound (a zero-sized value has no bytes
//! to get wrong) and harmless unless the captured type means something by existing only once.
//! A type with a destructor is the case where that shows (its `drop` would run once per
//! copy), so a closure whose type needs dropping counts as capturing ([`is_stateless`]) and
//! only `fork` runs it.

use std::mem::size_of;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// The "subclass" style of Python's `Process`: a type whose `run` is the child's body.
///
/// The type is moved into the child. It must be serializable so that it also works under
/// start methods that begin a fresh program; under `fork` it is moved without serializing.
///
/// # Examples
/// ```
/// use multiproc::{Process, process::Run};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Greeter { who: String }
///
/// impl Run for Greeter {
///     fn run(&mut self) {
///         println!("hello, {}", self.who);
///     }
/// }
///
/// let mut p = Process::from_run(Greeter { who: "world".into() });
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Run: Send + 'static {
    /// The child's body, as Python's `Process.run`.
    fn run(&mut self);
}

/// A child-side entry point: rebuilds the task from its payload, in the child. Decoding and
/// running are separate so that descriptors travelling with the payload are claimed while
/// decoding (inside `wire::with_received_fds`), and the target then runs as under `fork`.
pub(crate) type Entry = fn(&[u8]) -> Result<Box<dyn Task>>;

/// A target in a form that a fresh program can run.
#[derive(Debug)]
pub(crate) struct RemoteTask {
    pub(crate) entry: Entry,
    pub(crate) payload: Vec<u8>,
}

/// A target, before it is run.
pub(crate) trait Task: Send {
    /// Runs the target in this process and encodes its return value.
    fn run_here(self: Box<Self>) -> Result<Vec<u8>>;

    /// Describes the target for a child that does not share this address space.
    fn to_remote(&self) -> Result<RemoteTask>;

    /// Whether the target is a closure that captures variables, which only `fork` can run.
    fn captures(&self) -> bool {
        false
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    crate::wire::encode_payload(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    crate::wire::from_bytes(bytes)
}

/// Whether a target of type `F` can be made afresh in another process: it is zero-sized (a
/// function item, or a closure that captures nothing or only zero-sized values) and has no
/// destructor that a copy per process would run more than once.
pub(crate) const fn is_stateless<F>() -> bool {
    size_of::<F>() == 0 && !std::mem::needs_drop::<F>()
}

/// Refuses at compile time a pool task or initializer of type `F` that is not
/// [`is_stateless`] (pool workers make their targets afresh; they are never forked with them).
pub(crate) fn require_stateless<F>() {
    const {
        assert!(
            is_stateless::<F>(),
            "a pool task or initializer must be a fn item or a closure that captures nothing \
             (nothing with a destructor either); pass values as arguments"
        )
    };
}

/// Why a target of type `F`, which is not [`is_stateless`], cannot be sent to a fresh program.
fn capture_error<F>() -> Error {
    let name = std::any::type_name::<F>();
    let what = if name.starts_with("fn(") || name.contains(" fn(") {
        // A function pointer holds an address, which means nothing in another program image
        // unless it is turned back into the function item it came from.
        format!(
            "a function pointer ({name}) can only run under the fork start method; pass the \
             function itself (`f`, not `f as fn(..)`), whose type names the code"
        )
    } else if size_of::<F>() == 0 {
        "a closure that captures a value with a destructor can only run under the fork \
         start method (each process would drop its own copy)"
            .to_owned()
    } else {
        "a closure that captures variables can only run under the fork start method".to_owned()
    };
    Error::with_message(
        ErrorKind::UnsupportedTarget,
        format!(
            "{what}; pass its values as arguments (Process::with_args), use a fn item, or \
             choose StartMethod::Fork for this process (Builder::start_method)"
        ),
    )
}

/// Makes the one value of a zero-sized closure or function item type.
pub(crate) fn conjure<F>() -> F {
    assert!(is_stateless::<F>(), "conjure called on a type with state");
    // SAFETY: `F` is zero-sized (asserted above), so reading it from a dangling, well-aligned
    // pointer reads no bytes, and every zero-sized type has exactly one value, so the value
    // read is a valid `F`. Callers use it only for closure and fn-item types (`F: FnOnce`):
    // their value carries no state, and `F` has no destructor (asserted above), so making
    // one per process duplicates nothing observable but the captured zero-sized types' own
    // uniqueness, which the module docs explain.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::NonNull::<F>::dangling().as_ptr().read()
    }
}

/// `Process::new(closure)` and `spawn(closure)`.
pub(crate) struct ClosureTask<F>(pub(crate) F);

impl<F, T> Task for ClosureTask<F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize,
{
    fn run_here(self: Box<Self>) -> Result<Vec<u8>> {
        encode(&(self.0)())
    }

    fn to_remote(&self) -> Result<RemoteTask> {
        if !is_stateless::<F>() {
            return Err(capture_error::<F>());
        }
        Ok(RemoteTask {
            entry: closure_entry::<F, T>,
            payload: Vec::new(),
        })
    }

    fn captures(&self) -> bool {
        !is_stateless::<F>()
    }
}

fn closure_entry<F, T>(_payload: &[u8]) -> Result<Box<dyn Task>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize,
{
    Ok(Box::new(ClosureTask(conjure::<F>())))
}

/// `Process::with_args(f, args)` and `spawn_with_args(f, args)`.
pub(crate) struct ArgsTask<F, A> {
    pub(crate) f: F,
    pub(crate) args: A,
}

impl<F, A, T> Task for ArgsTask<F, A>
where
    F: FnOnce(A) -> T + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize,
{
    fn run_here(self: Box<Self>) -> Result<Vec<u8>> {
        encode(&(self.f)(self.args))
    }

    fn to_remote(&self) -> Result<RemoteTask> {
        if !is_stateless::<F>() {
            return Err(capture_error::<F>());
        }
        Ok(RemoteTask {
            entry: args_entry::<F, A, T>,
            payload: encode(&self.args)?,
        })
    }

    fn captures(&self) -> bool {
        !is_stateless::<F>()
    }
}

fn args_entry<F, A, T>(payload: &[u8]) -> Result<Box<dyn Task>>
where
    F: FnOnce(A) -> T + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize,
{
    let args: A = decode(payload)?;
    Ok(Box::new(ArgsTask {
        f: conjure::<F>(),
        args,
    }))
}

/// `Process::from_run(value)`.
pub(crate) struct RunTask<R>(pub(crate) R);

impl<R> Task for RunTask<R>
where
    R: Run + Serialize + DeserializeOwned,
{
    fn run_here(mut self: Box<Self>) -> Result<Vec<u8>> {
        self.0.run();
        encode(&())
    }

    fn to_remote(&self) -> Result<RemoteTask> {
        Ok(RemoteTask {
            entry: run_entry::<R>,
            payload: encode(&self.0)?,
        })
    }
}

fn run_entry<R: Run + Serialize + DeserializeOwned>(payload: &[u8]) -> Result<Box<dyn Task>> {
    Ok(Box::new(RunTask(decode::<R>(payload)?)))
}

/// A short display name for a `Run` type, as Python names a subclass's processes.
pub(crate) fn type_label<R>() -> &'static str {
    let full = std::any::type_name::<R>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}
