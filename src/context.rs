//! Start methods: how a child process begins, and how one is chosen (a process-wide default,
//! a [`Context`] per method, or [`Builder::start_method`] per process), as in Python.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::process::{Builder, JoinHandle, Process, Run};

/// How a child process begins, as Python's start methods.
///
/// | method | the child is | targets it runs | start cost |
/// |---|---|---|---|
/// | `Fork` | a copy of the parent made by `fork()`; unsafe in a parent that already runs threads (a lock another thread held stays locked in the child) | any closure | lowest |
/// | `Spawn` | a fresh execution of the program's binary; `main` does not run in it | fn items and non-capturing closures, with serializable arguments | an `exec` and program start-up per child |
/// | `ForkServer` (default) | forked from a single-threaded server, itself a fresh execution of the binary started on first use | as `Spawn` | a fork of a small process |
///
/// `ForkServer` is the default on Linux, as in Python 3.14: it is as safe as `Spawn` in a
/// threaded program (the server never runs your threads, so no lock can be inherited held),
/// and about as fast as `Fork`. A closure that captures variables can only be forked: while
/// no method was chosen (no [`set_start_method`], no `MULTIPROC_START_METHOD`, no context or
/// [`Builder::start_method`]), such a process uses `Fork`, so code in the shape of
/// `std::thread::spawn(move || ..)` works unchanged; once spawn or forkserver is chosen, a
/// capturing closure is refused at `start()` with
/// [`ErrorKind::UnsupportedTarget`](crate::ErrorKind::UnsupportedTarget).
///
/// What a forked child inherits from a threaded parent: multiproc takes the standard output
/// and error streams' locks for the instant of the fork, so a child never finds them held by
/// a thread it does not have (its prints and its exit's flush cannot deadlock); a start may
/// therefore wait while another thread is in the middle of a print. Any other lock another
/// thread holds at that instant (a `Mutex` of yours, a C library's) stays locked in the
/// child: a forked target should not take locks that other threads of the parent use.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
/// assert_eq!("spawn".parse::<StartMethod>()?, StartMethod::Spawn);
/// assert_eq!(StartMethod::ForkServer.to_string(), "forkserver");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// The child is a `fork()` of the parent.
    Fork,
    /// The child is a fresh execution of the program (`posix_spawn` of the same binary).
    Spawn,
    /// The child is forked from a single-threaded server process.
    #[doc(alias = "forkserver")]
    ForkServer,
}

/// The method used when neither `set_start_method` nor the process chose one.
const BUILTIN_DEFAULT: StartMethod = StartMethod::ForkServer;

/// The chosen default ([`StartMethod::code`]), 0 while none was chosen. An atomic rather than
/// a `OnceLock` so that a forked child can be given its own with one async-signal-safe store
/// ([`force_start_method`]).
static DEFAULT: AtomicU8 = AtomicU8::new(0);

fn chosen() -> Option<StartMethod> {
    StartMethod::from_code(DEFAULT.load(Ordering::Acquire))
}

impl StartMethod {
    fn code(self) -> u8 {
        match self {
            StartMethod::Fork => 1,
            StartMethod::Spawn => 2,
            StartMethod::ForkServer => 3,
        }
    }

    fn from_code(code: u8) -> Option<StartMethod> {
        match code {
            1 => Some(StartMethod::Fork),
            2 => Some(StartMethod::Spawn),
            3 => Some(StartMethod::ForkServer),
            _ => None,
        }
    }

    /// Python's name for the method.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(Error::with_message(
                ErrorKind::UnsupportedStartMethod,
                format!("unknown start method {other:?}"),
            )),
        }
    }
}

/// The start methods this platform supports, the default first.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
/// assert_eq!(
///     multiproc::get_all_start_methods(),
///     [StartMethod::ForkServer, StartMethod::Spawn, StartMethod::Fork]
/// );
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    vec![
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ]
}

/// The start method used when a process does not choose one (except for capturing closures
/// while no method was chosen at all, which are forked; see [`StartMethod`]): the one given to
/// [`set_start_method`]; else the one named by the `MULTIPROC_START_METHOD` environment
/// variable (`fork`, `spawn` or `forkserver`; read once; an unknown name is ignored with a
/// warning), which lets a program be run under another method without a code change, as
/// `RAYON_NUM_THREADS` sizes rayon's pool; else [`StartMethod::ForkServer`].
///
/// In a child, the method given to [`set_start_method`] is the one the child was started
/// with when its process chose one (through a [`Context`] or [`Builder::start_method`]), and
/// otherwise the parent's default, as in Python (whose concrete contexts force their method on
/// the child's default context): a child started by `get_context(Spawn)` in a program whose
/// method is fork says `Spawn`, and its own children are spawned.
///
/// # Examples
/// ```
/// assert_eq!(multiproc::get_start_method(), multiproc::StartMethod::ForkServer);
/// ```
pub fn get_start_method() -> StartMethod {
    chosen().or_else(env_default).unwrap_or(BUILTIN_DEFAULT)
}

/// The method for a process that did not choose one. As [`get_start_method`], except that
/// when no default was chosen at all (neither [`set_start_method`] nor the environment), a
/// target that captures variables is forked: only `fork` can run it, and code written in the
/// shape of `std::thread::spawn(move || ..)` keeps working. Choosing a method explicitly makes
/// such a target an error under spawn and forkserver.
pub(crate) fn default_for(captures: bool) -> StartMethod {
    match chosen().or_else(env_default) {
        Some(method) => method,
        None if captures => StartMethod::Fork,
        None => BUILTIN_DEFAULT,
    }
}

/// The environment variable that names a default start method.
const ENV_DEFAULT: &str = "MULTIPROC_START_METHOD";

fn env_default() -> Option<StartMethod> {
    static FROM_ENV: OnceLock<Option<StartMethod>> = OnceLock::new();
    *FROM_ENV.get_or_init(|| {
        let name = std::env::var(ENV_DEFAULT).ok()?;
        match name.parse() {
            Ok(method) => Some(method),
            Err(_) => {
                tracing::warn!(value = %name, "ignoring {ENV_DEFAULT}: not a start method");
                None
            }
        }
    })
}

/// The method given to [`set_start_method`], if any: a child that begins a fresh program is
/// told it, as Python's spawn preparation data carries `start_method`.
pub(crate) fn chosen_start_method() -> Option<StartMethod> {
    chosen()
}

/// Makes `method` this process's chosen default, whatever was chosen before: what a child is
/// given before its target runs (Python's `_force_start_method`). Async-signal-safe (one
/// atomic store), for a forked child.
pub(crate) fn force_start_method(method: StartMethod) {
    DEFAULT.store(method.code(), Ordering::Release);
}

/// Sets the process-wide default start method, once, as Python's `set_start_method`. Call it
/// early in `main`, before starting processes.
///
/// # Errors
/// [`ErrorKind::StartMethodAlreadySet`] if a different method was already set (setting the
/// same one again is allowed); [`set_start_method_force`] changes it anyway.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
///
/// multiproc::set_start_method(StartMethod::Spawn)?;
/// assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
/// let err = multiproc::set_start_method(StartMethod::Fork).unwrap_err();
/// assert_eq!(err.kind(), multiproc::ErrorKind::StartMethodAlreadySet);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn set_start_method(method: StartMethod) -> Result<()> {
    match DEFAULT.compare_exchange(0, method.code(), Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        Err(code) if code == method.code() => Ok(()),
        Err(code) => Err(Error::with_message(
            ErrorKind::StartMethodAlreadySet,
            format!(
                "the start method was already set to {}",
                StartMethod::from_code(code).map_or("?", StartMethod::name)
            ),
        )),
    }
}

/// Sets or clears the process-wide default start method even if one was already set:
/// Python's `set_start_method(method, force=True)`. `None` clears the choice, as Python's
/// `set_start_method(None, force=True)`: the default is then the environment's
/// (`MULTIPROC_START_METHOD`) or [`StartMethod::ForkServer`] again, and capturing closures
/// are forked again (see [`get_start_method`]).
///
/// Prefer [`set_start_method`] once, early in `main`, or a [`Context`] where part of a program
/// needs another method; this is for programs that must change their mind (a library's
/// test suite running each case per method, a program that learns its method from its
/// configuration after a first default was set).
///
/// What the change reaches, and what it does not:
/// - Processes already started are unaffected, and so is each one's own default (a child
///   takes its default at its start).
/// - A process created but not yet started uses the new default at its `start()`, unless it
///   chose a method ([`Builder::start_method`], a [`Context`]).
/// - A forkserver already running keeps running: later forkserver starts reuse it, and it ends
///   when this process ends, as ever ([`forkserver_pid`] still names it). Choosing another
///   method neither stops it nor starts one.
/// - A [`Pool`](crate::Pool) or [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) that did
///   not choose its method starts the workers it replaces later (after a crash, or
///   `max_tasks_per_child`) with the default of that moment; its running workers carry on.
/// - Another thread starting a process at the same moment sees the old default or the new,
///   never a mixture.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
///
/// multiproc::set_start_method(StartMethod::Spawn)?;
/// assert!(multiproc::set_start_method(StartMethod::Fork).is_err());
/// multiproc::set_start_method_force(Some(StartMethod::Fork));
/// assert_eq!(multiproc::get_start_method(), StartMethod::Fork);
/// multiproc::set_start_method_force(None);
/// assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[doc(alias = "force")]
pub fn set_start_method_force(method: Option<StartMethod>) {
    DEFAULT.store(method.map_or(0, StartMethod::code), Ordering::Release);
}

/// The pid of this process's forkserver, for diagnostics (a process listing, a debugger, a
/// leak check that must tell the server from children): `None` until this process's first
/// forkserver start. A server that dies keeps being named here until the next forkserver
/// start notices, reaps it and starts a new one. A process has its own server: a child
/// started with `fork` does not share its parent's, so this is `None` in it until it makes a
/// forkserver start of its own.
///
/// The server is a child of this process that [`active_children`](crate::active_children)
/// does not list; the children it makes are direct children of this process.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let ctx = multiproc::get_context(StartMethod::ForkServer);
/// let child = ctx.spawn_with_args(square, 7)?;
/// let server = multiproc::forkserver_pid().expect("the start above launched a server");
/// assert_ne!(server, child.pid());
/// assert_eq!(child.join()?, 49);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn forkserver_pid() -> Option<u32> {
    crate::start::forkserver_pid()
}

/// A context for one start method, as Python's `get_context("spawn")`: processes made
/// through it use that method whatever the default is, and have it as their own default
/// ([`get_start_method`] in them), so their children use it too.
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
///
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let ctx = multiproc::get_context(StartMethod::Spawn);
/// assert_eq!(ctx.spawn_with_args(double, 21)?.join()?, 42);
///
/// let mut p = ctx.process(|| println!("hello from a fresh program"));
/// assert_eq!(p.start_method(), StartMethod::Spawn);
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

/// Creates processes with one start method; see [`get_context`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

impl Context {
    /// The context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A [`Builder`] preset to this context's start method.
    pub fn builder(&self) -> Builder {
        Builder::new().start_method(self.method)
    }

    /// A process that will run `target` ([`Process::new`]), Python's `ctx.Process(target=f)`.
    #[doc(alias = "Process")]
    pub fn process<F>(&self, target: F) -> Process
    where
        F: FnOnce() + Send + 'static,
    {
        self.builder().target(target)
    }

    /// A process that will run `target(args)` ([`Process::with_args`]).
    pub fn process_with_args<F, A>(&self, target: F, args: A) -> Process
    where
        F: FnOnce(A) + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        self.builder().target_with_args(target, args)
    }

    /// A process whose body is `value.run()` ([`Process::from_run`]).
    pub fn process_from_run<R>(&self, value: R) -> Process
    where
        R: Run + Serialize + DeserializeOwned,
    {
        self.builder().from_run(value)
    }

    /// Starts a process running `f` ([`spawn`](crate::spawn)).
    ///
    /// # Errors
    /// As [`Process::start`].
    pub fn spawn<F, T>(&self, f: F) -> Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Serialize + DeserializeOwned,
    {
        self.builder().spawn(f)
    }

    /// Starts a process running `f(args)` ([`spawn_with_args`](crate::spawn_with_args)).
    ///
    /// # Errors
    /// As [`Process::start`].
    pub fn spawn_with_args<F, A, T>(&self, f: F, args: A) -> Result<JoinHandle<T>>
    where
        F: FnOnce(A) -> T + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned,
    {
        self.builder().spawn_with_args(f, args)
    }
}
