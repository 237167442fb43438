//! Run work in separate OS processes as easily as in threads: Python's `multiprocessing`,
//! in Rust, and crash-proof.
//!
//! # A first process
//! ```
//! use multiproc::Process;
//!
//! let mut p = Process::with_args(|who: String| println!("hello, {who}"), "world".to_string());
//! p.start()?;
//! assert_eq!(p.join()?, 0); // the exit code
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # A typed result, as with `std::thread`
//! ```
//! let handle = multiproc::spawn(|| (1..=10u64).product::<u64>())?;
//! assert_eq!(handle.join()?, 3_628_800);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Talking between processes
//! ```
//! use multiproc::{Process, Queue, pipe};
//!
//! let results: Queue<(u32, u64)> = Queue::new()?;
//! let mut workers = Vec::new();
//! for id in 0..2 {
//!     let results = results.clone();
//!     let mut p = Process::new(move || results.put((id, u64::from(id) * 10)).unwrap());
//!     p.start()?;
//!     workers.push(p);
//! }
//! let mut got = vec![results.get()?, results.get()?];
//! got.sort();
//! assert_eq!(got, [(0, 0), (1, 10)]);
//!
//! let (here, there) = pipe(true)?;
//! there.send(&"over the pipe")?;
//! assert_eq!(here.recv::<String>()?, "over the pipe");
//! for mut p in workers {
//!     p.join()?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # A pool of workers, as Python's `Pool`
//! ```
//! use multiproc::{Pool, pool::TaskError};
//!
//! fn collatz_steps(mut n: u64) -> u32 {
//!     let mut steps = 0;
//!     while n != 1 {
//!         n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
//!         steps += 1;
//!     }
//!     steps
//! }
//!
//! let pool = Pool::new(2)?;
//! let steps = pool.map(collatz_steps, 1..=10)?;
//! assert_eq!(steps, vec![0, 1, 7, 2, 5, 8, 16, 3, 19, 6]);
//!
//! // A task that crashes its worker fails alone, saying how; the pool carries on.
//! let crashed = pool.apply(|_: ()| -> u32 { std::process::abort() }, ());
//! assert!(matches!(crashed, Err(TaskError::WorkerDied { .. })));
//! assert_eq!(pool.apply(collatz_steps, 27)?, 111);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where things are
//! The crate root holds the names at the top of Python's `multiprocessing` ([`Process`],
//! [`spawn`], [`Queue`], [`pipe`], [`Lock`], [`Value`], [`Pool`], the start-method
//! functions, ...). Everything else lives in the module of its concept, as in Python's
//! submodules: [`process`] (builders, the current and parent process, [`process::Run`]),
//! [`connection`] (`Listener`, `client`, `wait`, per-operation errors), [`queue`] (get and put
//! errors), [`sync`] (guards and acquire errors), [`shared`] (`SharedMemory`, guards, `Pod`)
//! and [`pool`] (futures, iterators, task errors).
//! Porting a Python program? [`coming_from_python`] puts each name of Python's
//! `multiprocessing` beside its counterpart here.
//!
//! # What is here
//! - [`Process`] with Python's surface: start, join (with timeout), is_alive, terminate,
//!   kill, close, pid, exitcode, name, daemon, authkey, sentinel; built with a target and
//!   arguments, in the subclass style through [`Run`](process::Run), or with a [`Builder`](process::Builder).
//! - [`spawn`] → [`JoinHandle<T>`]: the child's return value, or a [`JoinError`] that tells a
//!   panic from a signal from an exit code.
//! - [`current_process`], [`parent_process`], [`active_children`], [`cpu_count`].
//! - [`Pool`] and [`ProcessPoolExecutor`]: Python's process pools, where a crashed, killed or
//!   stuck worker fails only its own task ([`TaskError`](pool::TaskError)) and is replaced; nothing hangs.
//! - Start methods ([`StartMethod`]): `forkserver` (the default), `spawn` and `fork`, chosen
//!   per program ([`set_start_method`]), per [`Context`] ([`get_context`]) or per process
//!   ([`Builder::start_method`](process::Builder::start_method)).
//! - Synchronization between processes, robust to crashes: [`Lock`], [`RLock`],
//!   [`Semaphore`], [`BoundedSemaphore`], [`Condition`], [`Event`], [`Barrier`].
//! - Shared memory: [`Value`], [`Array`], named [`SharedMemory`](shared::SharedMemory).
//! - IPC: [`pipe`] → [`Connection`] (typed `send`/`recv`, raw bytes, `poll`); [`Queue`],
//!   [`SimpleQueue`], [`JoinableQueue`] in crash-safe shared memory; [`wait`](connection::wait) over
//!   connections, queues and sentinels; [`Listener`](connection::Listener) / [`client`](connection::client) between programs, with an
//!   HMAC challenge on the [`AuthKey`](process::AuthKey). A peer that dies never leaves the other side blocked.
//!
//! # Start methods and `main`
//! `spawn` and `forkserver` start a fresh copy of your program's binary. The copy must run the
//! child's target, not your `main` (Python needs the `if __name__ == "__main__":` guard for
//! this). multiproc does it for you: a hook that runs before `main` turns such a copy into the
//! child, so `main` and, in a test binary, the test harness never run in it. No setup is
//! needed. Should the hook not run (an unusual linker or loader), starting a process with these
//! methods fails with an error that says to call [`init`] as the first line of `main`.
//!
//! Targets under `spawn` and `forkserver` are function items or closures that capture
//! nothing, with their inputs passed as serializable arguments ([`Process::with_args`]). The
//! `fork` method runs any closure: while no start method was chosen, a closure that captures
//! variables is forked; once `spawn` or `forkserver` is chosen, it is refused at `start()`
//! with [`ErrorKind::UnsupportedTarget`].
//!
//! Lifecycle events (start, exit with code, signals) are reported through `tracing`, the
//! counterpart of Python's `log_to_stderr`.
//!
//! # Safety of data
//! Values cross process boundaries with serde and postcard. Decoding only ever builds plain
//! data: unlike Python's pickle, bytes received from another process never run code.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![deny(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// The README's examples, compiled and run as doctests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Async support: awaitable joins, queues, connections and listeners, under tokio (feature
/// `tokio`) or any async-io executor such as smol (feature `async-io`).
#[cfg(any(feature = "tokio", feature = "async-io"))]
pub mod aio;
#[doc = include_str!("coming_from_python.md")]
pub mod coming_from_python {}
pub mod connection;
mod context;
mod error;
pub mod manager;
pub mod pool;
pub mod process;
pub mod queue;
mod resource_tracker;
#[allow(unsafe_code)]
pub mod shared;
mod start;
pub mod sync;
#[allow(unsafe_code)]
mod sys;
mod wire;

// The crate root holds what a Python user types first (the names at the top of Python's
// `multiprocessing`); everything else lives in its concept's module.
pub use connection::{Connection, pipe};
pub use context::{
    Context, StartMethod, forkserver_pid, get_all_start_methods, get_context, get_start_method,
    set_start_method, set_start_method_force,
};
pub use error::{Error, ErrorKind, JoinError, Result};
pub use manager::Manager;
/// Objects of your own types in a manager's server (Python's `BaseManager.register`): on a
/// trait, generates `<Trait>Proxy`, whose `new(&manager, ctor, arg)` makes an object in the
/// server by running `ctor(arg)` there, and whose methods call the object's methods in the
/// server, returning `Result<_, ManagerError>`. The proxy serializes as a handle, like every
/// manager proxy.
///
/// Methods take `&self` or `&mut self`; their arguments and results are serde types. The
/// constructor, like `modify`'s functions, must capture nothing, and it and the methods run
/// only for clients of the server's own binary. Each object has a read-write lock of its own:
/// `&self` methods may run at the same time (so the type must be `Sync`), `&mut self` ones
/// run alone on their object; a panic in a method fails the call with
/// [`RemoteError::Panicked`](manager::RemoteError::Panicked).
///
/// # Examples
/// ```
/// #[multiproc::remote]
/// trait Counter {
///     fn add(&mut self, by: i64) -> i64;
///     fn get(&self) -> i64;
/// }
///
/// struct Simple(i64);
///
/// impl Counter for Simple {
///     fn add(&mut self, by: i64) -> i64 {
///         self.0 += by;
///         self.0
///     }
///     fn get(&self) -> i64 {
///         self.0
///     }
/// }
///
/// let manager = multiproc::Manager::start()?;
/// let counter = CounterProxy::new(&manager, Simple, 10)?;
/// let child = multiproc::spawn_with_args(|c: CounterProxy| c.add(5).unwrap(), counter.clone())?;
/// assert_eq!(child.join()?, 15);
/// assert_eq!(counter.get()?, 15);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use multiproc_macros::remote;
pub use pool::{Pool, ProcessPoolExecutor};
pub use process::{
    JoinHandle, Process, active_children, cpu_count, current_process, parent_process, spawn,
    spawn_with_args,
};
pub use queue::{JoinableQueue, Queue, SimpleQueue};
pub use resource_tracker::resource_tracker_pid;
pub use shared::{Array, RawArray, RawValue, Value};
pub use sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};

/// Hands control to multiproc if this program was started as a child process or forkserver;
/// returns at once otherwise. Rust's counterpart of Python's `if __name__ == "__main__":`.
///
/// Not needed where multiproc's pre-main hook runs (Linux with the usual toolchains, in normal
/// and test binaries alike); calling it there is harmless. Where the hook does not run,
/// `spawn` and `forkserver` refuse to start children until `init` was called, since a copy of
/// the program that ran `main` again could start children of its own. Call it as the very
/// first line of `main`, before any thread starts: in a child it never returns, and anything
/// before it would run in every child too.
///
/// # Examples
/// ```
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     multiproc::init();
///     // The program, which may now use every start method.
///     let ctx = multiproc::get_context(multiproc::StartMethod::Spawn);
///     assert_eq!(ctx.spawn(|| 6 * 7)?.join()?, 42);
///     Ok(())
/// }
/// ```
pub fn init() {
    start::init();
}
