//! [`Process`], its [`Builder`], [`spawn`] and [`cpu_count`]; as std's `thread/`, the rest is
//! one file per concept: `join_handle.rs` ([`JoinHandle`]), `current.rs` (who this process is:
//! `current_process`, `parent_process`), `children.rs` (the parent's side of each child:
//! `active_children`), `bootstrap.rs` (the child's side of a start), `target.rs` (what a child
//! runs), `authkey.rs`, `placement.rs` (CPU affinity, niceness, limits), `output.rs` (a
//! child's stdout and stderr captured and forwarded line by line: [`Output`],
//! [`Builder::output`]) and `log_forward.rs` (its `tracing` events re-emitted here:
//! [`Builder::forward_tracing`]).
//!
//! # Placement and memory limits
//!
//! [`Builder::cpu_affinity`], [`Builder::nice`], [`Builder::rlimit`] and
//! [`Builder::memory_limit`] are checked by `start()` (a CPU this process may not use, a
//! soft limit above the hard one, a hard limit above this process's without privilege, a
//! niceness it may not set: [`ErrorKind::InvalidInput`]) and applied in the child before the
//! target, or its arguments, are touched: in a forked child as system calls on data prepared
//! before the fork (nothing allocates), in a spawned or forkserver child at the start of its
//! bootstrap. `memory_limit` is an address-space limit (`RLIMIT_AS`): it counts reserved
//! virtual memory, not resident memory, so leave room for thread stacks and malloc arenas.
//! cgroup v2 memory limits, which count resident memory, are not used yet (they need a
//! delegated, writable cgroup, which this crate does not set up). A child that dies of
//! SIGABRT under a memory limit is reported as over it
//! ([`Process::memory_limit_exceeded`]): that is how a Rust program ends when an
//! allocation fails, and the only signal there is; an explicit `abort()` reads the same.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{self, StartMethod};
use crate::error::{Error, ErrorKind, Result};
use crate::start;
use crate::sys::{self, Kill};

mod authkey;
pub(crate) mod bootstrap;
pub(crate) mod children;
pub(crate) mod current;
mod join_handle;
pub(crate) mod log_forward;
pub(crate) mod output;
pub(crate) mod placement;
pub(crate) mod target;

pub use crate::error::JoinError;
pub use authkey::AuthKey;
pub use children::{ActiveChild, active_children};
pub use current::{CurrentProcess, ParentProcess, at_exit, current_process, parent_process};
pub use join_handle::JoinHandle;
pub use output::{MAX_LINE, Output, OutputLine, Stream};
pub use placement::{Resource, UNLIMITED};
pub use target::Run;

use bootstrap::ChildPlan;
use children::Child;
use current::{Identity, ProcessEnv};
use target::{ArgsTask, ClosureTask, RunTask, Task};

/// A child process, with the surface of Python's `multiprocessing.Process`.
///
/// Create one with a target ([`Process::new`], [`Process::with_args`]), in the "subclass"
/// style ([`Process::from_run`]), or through a [`Builder`]; then [`start`](Process::start) and
/// [`join`](Process::join) it. Dropping a started `Process` does not stop the child: it keeps
/// running and is joined when this program exits normally (daemons are terminated instead), as
/// in Python.
///
/// A child leaves by `_exit` once its target is done: the C library's `atexit` handlers, and
/// what is built on them, do not run in it (its target's own values are dropped as usual). Register cleanup with [`at_exit`], which runs
/// at a child's normal end (target returned or panicked, or `std::process::exit`), not when a
/// signal ends it.
///
/// # Examples
/// ```
/// use multiproc::Process;
///
/// let mut p = Process::with_args(|(a, b): (i32, i32)| assert_eq!(a + b, 3), (1, 2));
/// assert_eq!(p.name(), "Process-1");
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Process {
    identity: Identity,
    method: Option<StartMethod>,
    /// The target captures variables: only `fork` can run it (see `context::default_for`).
    captures: bool,
    target: Option<Box<dyn Task>>,
    state: State,
    /// CPU affinity, niceness and limits, checked at start.
    placement: placement::PlacementSpec,
    /// Already resolved (by a pool, which checked them at build).
    resolved: Option<placement::Placement>,
    /// The memory cap the started child runs under.
    memory_limit: Option<u64>,
    output: Output,
    forward_tracing: bool,
    /// The child's output is captured: joining waits until it has been delivered.
    captured: bool,
}

enum State {
    New,
    Started(Arc<Child>),
    Closed,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Process");
        d.field("name", &self.identity.name)
            .field("daemon", &self.identity.daemon);
        match &self.state {
            State::New => d.field("state", &"initial"),
            State::Started(c) => d
                .field("pid", &c.pid)
                .field("exitcode", &c.poll().ok().flatten()),
            State::Closed => d.field("state", &"closed"),
        };
        d.finish()
    }
}

impl Process {
    /// A process that will run `target`, Python's `Process(target=f)`.
    ///
    /// Under the `fork` start method any closure works. Start methods that begin a fresh
    /// program need a closure that captures nothing; pass values with [`Process::with_args`].
    /// While no start method was chosen, a closure that captures is forked (see
    /// [`StartMethod`]).
    pub fn new<F>(target: F) -> Process
    where
        F: FnOnce() + Send + 'static,
    {
        Builder::new().target(target)
    }

    /// A process that will run `target(args)`, Python's `Process(target=f, args=..)`.
    ///
    /// `args` is any serializable value: a tuple for positional arguments, a struct for named
    /// ones (Python's `kwargs`). With a function item or non-capturing closure this works
    /// under every start method.
    pub fn with_args<F, A>(target: F, args: A) -> Process
    where
        F: FnOnce(A) + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Builder::new().target_with_args(target, args)
    }

    /// A process whose body is `value.run()`: Python's subclass that overrides `run`.
    /// Its default name is the type's name, `Greeter-1` for a `Greeter`.
    #[doc(alias = "subclass")]
    pub fn from_run<R>(value: R) -> Process
    where
        R: Run + Serialize + DeserializeOwned,
    {
        Builder::new().from_run(value)
    }

    /// A builder for name, daemon flag, authkey and start method.
    pub fn builder() -> Builder {
        Builder::new()
    }

    fn with_task(builder: Builder, label: &str, task: Box<dyn Task>) -> Process {
        let parent = current::current();
        let mut ident = parent.identity.ident.clone();
        ident.push(parent.next_child_number());
        let name = builder.name.unwrap_or_else(|| {
            let numbers: Vec<String> = ident.iter().map(u32::to_string).collect();
            format!("{label}-{}", numbers.join(":"))
        });
        Process {
            identity: Identity {
                name,
                ident,
                daemon: builder.daemon,
                authkey: builder
                    .authkey
                    .unwrap_or_else(|| parent.identity.authkey.clone()),
                parent: None,
            },
            method: builder.method,
            captures: task.captures(),
            target: Some(task),
            state: State::New,
            placement: builder.placement,
            resolved: builder.resolved,
            memory_limit: None,
            output: builder.output,
            forward_tracing: builder.forward_tracing,
            captured: false,
        }
    }

    /// The process's name, `Process-N` (`Process-N:M` in a child) unless one was given.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Renames the process; the child sees the name it had at `start`.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.identity.name = name.into();
    }

    /// Whether the process is daemonic: terminated when this program exits, and killed by the
    /// kernel if this program dies (on Linux); it may not start children of its own.
    pub fn daemon(&self) -> bool {
        self.identity.daemon
    }

    /// Sets the daemon flag.
    ///
    /// # Errors
    /// [`ErrorKind::DaemonAfterStart`] once the process was started.
    #[doc(alias = "daemon")]
    pub fn set_daemon(&mut self, daemon: bool) -> Result<()> {
        if !matches!(self.state, State::New) {
            return Err(Error::new(ErrorKind::DaemonAfterStart));
        }
        self.identity.daemon = daemon;
        Ok(())
    }

    /// The key the child will have (inherited from this process unless set).
    pub fn authkey(&self) -> &AuthKey {
        &self.identity.authkey
    }

    /// Sets the key the child will have.
    pub fn set_authkey(&mut self, key: AuthKey) {
        self.identity.authkey = key;
    }

    /// The start method this process will use (the default unless one was chosen).
    pub fn start_method(&self) -> StartMethod {
        self.method
            .unwrap_or_else(|| context::default_for(self.captures))
    }

    /// Whether the child ended because it exceeded its
    /// [`memory_limit`](Builder::memory_limit), as far as can be told: it had a limit and died
    /// of SIGABRT, which is how a Rust program ends when an allocation fails. An explicit
    /// `abort()` under a limit reads as `true` too. `false` while it runs.
    pub fn memory_limit_exceeded(&self) -> bool {
        self.exitcode()
            .is_some_and(|code| placement::died_of_memory_limit(self.memory_limit, code))
    }

    /// Starts the child, which runs the target.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyStarted`] or [`ErrorKind::Closed`] on a second start,
    /// [`ErrorKind::DaemonicParent`] when called in a daemonic process,
    /// [`ErrorKind::TargetConsumed`] after [`run`](Process::run), and
    /// [`ErrorKind::Io`] when the OS refuses a new process.
    pub fn start(&mut self) -> Result<()> {
        self.start_with(None)
    }

    fn start_with(&mut self, result: Option<OwnedFd>) -> Result<()> {
        match self.state {
            State::New => {}
            State::Started(_) => return Err(Error::new(ErrorKind::AlreadyStarted)),
            State::Closed => return Err(Error::new(ErrorKind::Closed)),
        }
        let parent = current::current();
        if parent.identity.daemon {
            return Err(Error::new(ErrorKind::DaemonicParent));
        }
        let task = self
            .target
            .take()
            .ok_or_else(|| Error::new(ErrorKind::TargetConsumed))?;
        let placement = match self.resolved {
            Some(p) => p,
            None => self.placement.resolve()?,
        };
        bootstrap::install_panic_hook();
        let mut identity = self.identity.clone();
        identity.parent = Some((sys::current_pid(), parent.identity.name.clone()));
        let (stdio, pending) = output::prepare(&self.output, self.forward_tracing)?;
        let plan = ChildPlan {
            env: Box::new(ProcessEnv::new(identity)),
            result,
            stdio,
            // As Python's concrete contexts do (`BaseProcess._bootstrap`).
            start_method: self.method.or_else(context::chosen_start_method),
            placement,
        };
        let method = self.start_method();
        let launched = start::popen(method).launch(plan, task)?;
        self.memory_limit = placement.memory_limit();
        let child = Arc::new(Child::new(
            launched.pid,
            launched.pidfd,
            self.identity.name.clone(),
            self.identity.daemon,
        ));
        children::register(&child);
        if let Some(pending) = pending {
            output::register(pending, &self.identity.name, launched.pid);
            self.captured = true;
        }
        tracing::info!(pid = child.pid, name = %child.name, method = %method, "process started");
        self.state = State::Started(child);
        Ok(())
    }

    /// Runs the target in the calling process, as Python's `Process.run`. Panics propagate.
    ///
    /// # Errors
    /// [`ErrorKind::TargetConsumed`] if the target already ran or the process was started.
    pub fn run(&mut self) -> Result<()> {
        let task = self
            .target
            .take()
            .ok_or_else(|| Error::new(ErrorKind::TargetConsumed))?;
        task.run_here().map(drop)
    }

    fn child(&self) -> Result<&Arc<Child>> {
        match &self.state {
            State::Started(child) => Ok(child),
            State::New => Err(Error::new(ErrorKind::NotStarted)),
            State::Closed => Err(Error::new(ErrorKind::Closed)),
        }
    }

    /// Waits for the child to end and returns its [exit code](Process::exitcode).
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`], [`ErrorKind::Closed`], or an OS error.
    pub fn join(&mut self) -> Result<i32> {
        let child = self.child()?;
        let code = child
            .wait(None)?
            .expect("an untimed wait returns only when the child ended");
        children::forget(child);
        self.flush_output();
        Ok(code)
    }

    /// Waits at most `timeout` for the child to end: `Some(exitcode)` if it did, `None` if time
    /// ran out (the child keeps running). A zero timeout just checks.
    ///
    /// # Errors
    /// As [`join`](Process::join).
    #[doc(alias = "join")]
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child()?;
        let code = child.wait(Some(Instant::now() + timeout))?;
        if code.is_some() {
            children::forget(child);
            self.flush_output();
        }
        Ok(code)
    }

    /// Once the child ended: waits until what it wrote on captured streams was delivered.
    fn flush_output(&mut self) {
        if std::mem::take(&mut self.captured) {
            output::flush(output::FLUSH_TIMEOUT);
        }
    }

    /// Whether the child was started and has not ended. Reaps it if it has ended.
    pub fn is_alive(&self) -> bool {
        self.exitcode_checked().is_ok_and(|code| code.is_none())
            && matches!(self.state, State::Started(_))
    }

    /// Python's `exitcode`: `None` before start and while running, `0` on success, `1` if the
    /// target panicked, `n` after `std::process::exit(n)`, `-N` if signal `N` ended it.
    pub fn exitcode(&self) -> Option<i32> {
        self.exitcode_checked().ok().flatten()
    }

    fn exitcode_checked(&self) -> Result<Option<i32>> {
        let child = self.child()?;
        let code = child.poll()?;
        if code.is_some() {
            children::forget(child);
        }
        Ok(code)
    }

    /// Sends SIGTERM, as Python's `terminate()`. Does nothing if the child already ended.
    /// The target's own cleanup does not run, and locks it held are not released by this
    /// call (see the crate's crash-safe primitives).
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`], [`ErrorKind::Closed`], or an OS error.
    pub fn terminate(&self) -> Result<()> {
        Ok(self.child()?.signal(Kill::Term)?)
    }

    /// Sends SIGKILL, as Python's `kill()`. Does nothing if the child already ended.
    ///
    /// # Errors
    /// As [`terminate`](Process::terminate).
    pub fn kill(&self) -> Result<()> {
        Ok(self.child()?.signal(Kill::Kill)?)
    }

    /// Sends SIGINT, as Python 3.14's `interrupt()`: what Ctrl-C at a terminal sends, here to
    /// this child alone. Does nothing if the child already ended.
    ///
    /// Unless the child handles or ignores SIGINT, it ends at once as with
    /// [`terminate`](Process::terminate), with exit code `-2` (Python's child raises
    /// `KeyboardInterrupt` instead, and its exit code is 1 unless caught). A child that
    /// installed a handler (the `ctrlc` or `signal-hook` crates, say) decides for itself, so
    /// this is the polite request that lets a target finish its current step and clean up.
    /// Children started by every start method begin with SIGINT's default disposition, unless
    /// a `fork` child's parent ignores it or handles it (a forked child inherits handlers).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut p = multiproc::Process::new(|| std::thread::sleep(Duration::from_secs(60)));
    /// p.start()?;
    /// p.interrupt()?;
    /// assert_eq!(p.join()?, -2); // ended by SIGINT (signal 2)
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`terminate`](Process::terminate).
    pub fn interrupt(&self) -> Result<()> {
        Ok(self.child()?.signal(Kill::Int)?)
    }

    /// The child's process id, once started.
    #[doc(alias = "ident")]
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Started(child) => Some(child.pid as u32),
            _ => None,
        }
    }

    /// A file descriptor that becomes readable when the child ends (a pidfd on Linux), for
    /// use with `poll`, `epoll` or this crate's `wait()`.
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`] or [`ErrorKind::Closed`].
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.child()?.sentinel())
    }

    /// Releases the process's resources (its pidfd). Later calls on it fail with
    /// [`ErrorKind::Closed`]; closing twice is fine.
    ///
    /// # Errors
    /// [`ErrorKind::StillRunning`] if the child has not ended.
    pub fn close(&mut self) -> Result<()> {
        if let State::Started(child) = &self.state {
            if child.poll()?.is_none() {
                return Err(Error::new(ErrorKind::StillRunning));
            }
            children::forget(child);
        }
        self.state = State::Closed;
        self.target = None;
        Ok(())
    }
}

/// Configures and creates processes: name, daemon flag, authkey, start method.
///
/// # Examples
/// ```
/// use multiproc::process::Builder;
///
/// let mut p = Builder::new().name("worker").target(|| println!("hi"));
/// assert_eq!(p.name(), "worker");
/// p.start()?;
/// p.join()?;
///
/// let handle = Builder::new().name("adder").spawn_with_args(|(a, b): (u64, u64)| a + b, (2, 3))?;
/// assert_eq!(handle.join()?, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until a target is given"]
pub struct Builder {
    name: Option<String>,
    daemon: bool,
    authkey: Option<AuthKey>,
    method: Option<StartMethod>,
    placement: placement::PlacementSpec,
    resolved: Option<placement::Placement>,
    output: Output,
    forward_tracing: bool,
}

impl Builder {
    /// A builder with Python's defaults: generated name, not daemonic, inherited authkey,
    /// the default start method.
    pub fn new() -> Self {
        Builder::default()
    }

    /// The process's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the process is daemonic (see [`Process::daemon`]).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// The child's authkey (see [`Process::authkey`]).
    pub fn authkey(mut self, key: AuthKey) -> Self {
        self.authkey = Some(key);
        self
    }

    /// The start method for this process only. Under [`StartMethod::Spawn`] and
    /// [`StartMethod::ForkServer`] a target that captures variables is refused at `start()`.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The CPUs the child may run on (Python's `os.sched_setaffinity(pid, cpus)`, done
    /// before the target runs). Each must be one this process may run on.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::Builder;
    /// fn cpu() -> u32 { 0 }
    /// let handle = Builder::new().cpu_affinity([0]).spawn(cpu)?;
    /// handle.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// `start()` fails with [`ErrorKind::InvalidInput`] for a CPU this process may not use.
    ///
    /// Per-process CPU affinity exists on Linux and FreeBSD only: elsewhere (macOS, OpenBSD,
    /// NetBSD) `start()` fails with [`ErrorKind::Io`] carrying
    /// [`std::io::ErrorKind::Unsupported`], before any child is made (and the example above
    /// fails there).
    #[doc(alias = "sched_setaffinity")]
    pub fn cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.placement.cpus = Some(cpus.into_iter().collect());
        self
    }

    /// The child's niceness, -20 (favoured) to 19 (Python's `os.setpriority`, or `os.nice`
    /// in the child). Below this process's own needs privilege: `start()` fails with
    /// [`ErrorKind::InvalidInput`] otherwise.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::Builder;
    /// fn work() {}
    /// Builder::new().nice(19).spawn(work)?.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "setpriority")]
    pub fn nice(mut self, nice: i32) -> Self {
        self.placement.nice = Some(nice);
        self
    }

    /// A resource limit for the child (Python's `resource.setrlimit` in the child); at most
    /// ten. [`UNLIMITED`] is `RLIM_INFINITY`. `start()` fails with
    /// [`ErrorKind::InvalidInput`] when `soft > hard`, or when `hard` is above this process's
    /// hard limit and it is not privileged.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::{Builder, Resource};
    /// fn work() {}
    /// Builder::new().rlimit(Resource::Core, 0, 0).spawn(work)?.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "setrlimit")]
    pub fn rlimit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.placement.limits.push((resource, soft, hard));
        self
    }

    /// A hard cap on the child's memory, in bytes: its address space (`RLIMIT_AS`, virtual
    /// memory, which is larger than resident memory: every thread's stack and each malloc
    /// arena count in full). An allocation past it fails, which aborts a Rust program;
    /// [`Process::memory_limit_exceeded`] then says so. cgroup v2 memory limits (resident
    /// memory) are not used yet.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::Builder;
    /// // Reserves 4 GiB without touching it: fine without a limit (overcommit), not under one.
    /// fn hog() { std::hint::black_box(Vec::<u8>::with_capacity(4 << 30)); }
    /// let mut p = Builder::new().memory_limit(1 << 30).target(hog);
    /// p.start()?;
    /// p.join()?;
    /// assert!(p.memory_limit_exceeded());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.placement.memory_limit = Some(bytes);
        self
    }

    /// Settings a pool resolved already.
    pub(crate) fn resolved_placement(mut self, placement: placement::Placement) -> Self {
        self.resolved = Some(placement);
        self
    }

    /// What the child does with its stdout and stderr: write to this process's
    /// ([`Output::Inherit`], the default, as in Python), or have them captured and forwarded
    /// line by line with its name as a prefix ([`Output::Forward`]) or handed to a function
    /// ([`Output::Callback`]). Captured streams are pipes installed as the child's descriptors
    /// 1 and 2 before its target runs (so what it executes writes there too), and read by one
    /// thread in this process for all children; everything the child wrote is delivered,
    /// also when it is killed, and [`Process::join`] returns once it has been.
    ///
    /// The child's stdout is then a pipe, not a terminal: programs that check (for colours,
    /// or C's stdio, which buffers a pipe by the block and loses the buffer at `_exit`)
    /// behave as when piped. Rust's `println!` writes each line at once either way.
    ///
    /// Under `fork`, a process that another thread forks while this one is starting gets a
    /// copy of the pipes (as any inherited descriptor); what the child writes is still
    /// delivered when it ends, but an unterminated last line only once that other process
    /// has ended too. A grandchild that inherits the child's stdout holds it likewise.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::{Builder, Output};
    ///
    /// // Prints "[sayer] hi" on this process's stdout.
    /// let mut p = Builder::new().name("sayer").output(Output::Forward).target(|| println!("hi"));
    /// p.start()?;
    /// p.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// Sends the `tracing` events the child emits to this process, where they are emitted
    /// again (target `multiproc::child`) with the fields `process.name` and `process.pid`,
    /// and the child's own target, fields, file and line as the text fields `child.target`,
    /// `child.fields`, `child.file` and `child.line`; the message stays the message.
    ///
    /// The child installs a subscriber for this before its target runs: the global default
    /// when none is set (spawn and forkserver children, which start without the parent's),
    /// otherwise (a forked child of a program that set one) for the target's thread only.
    /// Limits: spans are not forwarded (events inside spans arrive without them), field
    /// values arrive as text, events more verbose than the level this process's subscriber
    /// enabled at the child's start are not sent, and a child that installs its own global
    /// subscriber fails to (`try_init` returns an error) when this one is global.
    ///
    /// # Examples
    /// ```
    /// use multiproc::process::Builder;
    ///
    /// // With a subscriber installed here (tracing_subscriber::fmt::init(), say), this prints
    /// // "... multiproc::child: working process.name="logger" process.pid=..."
    /// let mut p = Builder::new()
    ///     .name("logger")
    ///     .forward_tracing(true)
    ///     .target(|| tracing::info!(step = 1, "working"));
    /// p.start()?;
    /// p.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn forward_tracing(mut self, on: bool) -> Self {
        self.forward_tracing = on;
        self
    }

    /// A process running `target` (see [`Process::new`]).
    pub fn target<F>(self, target: F) -> Process
    where
        F: FnOnce() + Send + 'static,
    {
        Process::with_task(self, "Process", Box::new(ClosureTask(target)))
    }

    /// A process running `target(args)` (see [`Process::with_args`]).
    pub fn target_with_args<F, A>(self, target: F, args: A) -> Process
    where
        F: FnOnce(A) + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Process::with_task(self, "Process", Box::new(ArgsTask { f: target, args }))
    }

    /// A process whose body is `value.run()` (see [`Process::from_run`]).
    #[allow(clippy::wrong_self_convention)]
    pub fn from_run<R>(self, value: R) -> Process
    where
        R: Run + Serialize + DeserializeOwned,
    {
        Process::with_task(self, target::type_label::<R>(), Box::new(RunTask(value)))
    }

    /// Starts a process running `f` and returns a handle whose `join` gives `f`'s value.
    ///
    /// # Errors
    /// As [`Process::start`].
    pub fn spawn<F, T>(self, f: F) -> Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Serialize + DeserializeOwned,
    {
        let process = Process::with_task(self, "Process", Box::new(ClosureTask(f)));
        JoinHandle::start(process)
    }

    /// Starts a process running `f(args)` and returns a handle whose `join` gives its value.
    ///
    /// # Errors
    /// As [`Process::start`].
    pub fn spawn_with_args<F, A, T>(self, f: F, args: A) -> Result<JoinHandle<T>>
    where
        F: FnOnce(A) -> T + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned,
    {
        let process = Process::with_task(self, "Process", Box::new(ArgsTask { f, args }));
        JoinHandle::start(process)
    }
}

/// Starts a process running `f` and returns a handle to its result, in the shape of
/// [`std::thread::spawn`].
///
/// # Examples
/// ```
/// let handle = multiproc::spawn(|| std::process::id())?;
/// let child_pid = handle.pid();
/// assert_eq!(handle.join()?, child_pid);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The value must be serializable, since it crosses a process boundary:
/// ```compile_fail
/// struct NotSerializable;
/// let _ = multiproc::spawn(|| NotSerializable);
/// ```
/// and so must arguments:
/// ```compile_fail
/// struct NotSerializable;
/// let _ = multiproc::spawn_with_args(|_x: NotSerializable| 1u8, NotSerializable);
/// ```
///
/// # Errors
/// As [`Process::start`].
pub fn spawn<F, T>(f: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize + DeserializeOwned,
{
    Builder::new().spawn(f)
}

/// Starts a process running `f(args)` and returns a handle to its result.
///
/// # Examples
/// ```
/// fn square(x: u64) -> u64 { x * x }
/// let handle = multiproc::spawn_with_args(square, 7)?;
/// assert_eq!(handle.join()?, 49);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`Process::start`].
pub fn spawn_with_args<F, A, T>(f: F, args: A) -> Result<JoinHandle<T>>
where
    F: FnOnce(A) -> T + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned,
{
    Builder::new().spawn_with_args(f, args)
}

/// The number of CPUs this process may run on.
///
/// # Examples
/// ```
/// assert!(multiproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
