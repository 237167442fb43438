//! Children's stdout and stderr, captured and forwarded line by line ([`Output`]), and their
//! `tracing` events re-emitted in the parent (`Builder::forward_tracing`, `log_forward.rs`).
//!
//! The child side is two `dup2`s before user code (`ChildStdio::redirect`, async-signal-safe
//! in a forked child). The parent side is one thread per process, the *forwarder*, that
//! `poll`s every captured pipe of every child and turns bytes into whole lines: a child's
//! pipe is read until end of file, so a child that is killed loses nothing it wrote, and a
//! line is delivered only once its newline arrived (or the child's end came first).

use std::borrow::Cow;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sys::{self, Interest, RawPid, StdStream};

/// What a child does with its stdout and stderr.
///
/// The default for a [`Process`](crate::Process) and for pools is [`Output::Inherit`], as in
/// Python: the child writes to the parent's terminal or file directly. See
/// [`PoolBuilder::output`](crate::pool::PoolBuilder::output) for why pools do not forward by
/// default.
///
/// # Examples
/// ```
/// use std::sync::{Arc, Mutex};
/// use multiproc::process::{Builder, Output};
///
/// let lines = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&lines);
/// let mut p = Builder::new()
///     .name("greeter")
///     .output(Output::callback(move |line| seen.lock().unwrap().push(line.text().into_owned())))
///     .target(|| println!("hello from the child"));
/// p.start()?;
/// p.join()?; // returns once the child's output has been delivered
/// assert_eq!(*lines.lock().unwrap(), ["hello from the child"]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Output {
    /// The child writes to this process's stdout and stderr itself (Python's behaviour).
    #[default]
    Inherit,
    /// Captured and written to this process's stdout (resp. stderr) line by line, each line
    /// prefixed with the child's name: `[PoolWorker-3] text`. Lines of different children
    /// never mix within a line, whatever their length.
    Forward,
    /// Captured and handed, line by line, to a function run on the forwarding thread (one
    /// thread for every child of this process: a function that blocks holds up all output).
    Callback(Arc<dyn Fn(OutputLine) + Send + Sync>),
}

impl Output {
    /// [`Output::Callback`] with `f`.
    pub fn callback(f: impl Fn(OutputLine) + Send + Sync + 'static) -> Output {
        Output::Callback(Arc::new(f))
    }

    fn captures(&self) -> bool {
        !matches!(self, Output::Inherit)
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Inherit => f.write_str("Inherit"),
            Output::Forward => f.write_str("Forward"),
            Output::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// Which of a child's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output (descriptor 1).
    Stdout,
    /// Standard error (descriptor 2).
    Stderr,
}

/// One line a child wrote, as an [`Output::Callback`] receives it.
#[derive(Clone, Debug)]
pub struct OutputLine {
    name: Arc<str>,
    pid: u32,
    stream: Stream,
    bytes: Vec<u8>,
    complete: bool,
}

impl OutputLine {
    /// The child's name ([`Process::name`](crate::Process::name) at its start).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The stream the line was written to.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// The line's bytes, without its newline.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The line's bytes, without its newline.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The line as text (invalid UTF-8 replaced by U+FFFD).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }

    /// `false` for a line that had no newline: the last bytes of a child that ended (or
    /// closed its stream) in mid-line, or a piece of a line longer than [`MAX_LINE`].
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// The longest line delivered whole: a longer one comes in pieces of this size (each with
/// [`OutputLine::is_complete`] `false`, the last one `true`), so that a child writing without
/// newlines cannot make the parent buffer without limit.
pub const MAX_LINE: usize = 8 << 20;

/// Descriptors a child installs as its stdout and stderr, and where its `tracing` events go.
#[derive(Debug, Default)]
pub(crate) struct ChildStdio {
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
    /// The write end of the `tracing` channel and the most verbose level to send.
    pub(crate) tracing: Option<(OwnedFd, u8)>,
}

impl ChildStdio {
    /// In the child, before user code: makes the captured pipes its stdout and stderr and
    /// closes the originals. Only `dup2` and `close`: async-signal-safe. Returns the
    /// `tracing` channel, which `log_forward::install` turns into a subscriber once user code
    /// may run. A failed `dup2` (out of descriptors) leaves that stream inherited.
    pub(crate) fn redirect(self) -> Option<(OwnedFd, u8)> {
        if let Some(fd) = self.stdout {
            let _ = sys::redirect_stdio(fd.as_fd(), StdStream::Stdout);
        }
        if let Some(fd) = self.stderr {
            let _ = sys::redirect_stdio(fd.as_fd(), StdStream::Stderr);
        }
        self.tracing
    }

    /// Flags for the boot message: (stdout, stderr, tracing level), in the order
    /// [`into_fds`](ChildStdio::into_fds) puts the descriptors.
    pub(crate) fn flags(&self) -> (bool, bool, Option<u8>) {
        (
            self.stdout.is_some(),
            self.stderr.is_some(),
            self.tracing.as_ref().map(|(_, level)| *level),
        )
    }

    pub(crate) fn into_fds(self) -> impl Iterator<Item = OwnedFd> {
        self.stdout
            .into_iter()
            .chain(self.stderr)
            .chain(self.tracing.map(|(fd, _)| fd))
    }

    /// The child's side of a boot message: takes the descriptors [`flags`](ChildStdio::flags)
    /// announced from the front of `fds`.
    pub(crate) fn from_fds(
        flags: (bool, bool, Option<u8>),
        fds: &mut Vec<OwnedFd>,
    ) -> Option<ChildStdio> {
        let (out, err, level) = flags;
        let wanted = usize::from(out) + usize::from(err) + usize::from(level.is_some());
        if fds.len() < wanted {
            return None;
        }
        let mut taken = fds.drain(..wanted);
        let stdio = ChildStdio {
            stdout: if out { taken.next() } else { None },
            stderr: if err { taken.next() } else { None },
            tracing: level.and_then(|l| taken.next().map(|fd| (fd, l))),
        };
        drop(taken);
        Some(stdio)
    }
}

/// The parent's ends of one child's captured streams, until the child exists.
#[derive(Debug)]
pub(crate) struct Pending {
    sources: Vec<(OwnedFd, Kind)>,
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Forward,
    Callback(Arc<dyn Fn(OutputLine) + Send + Sync>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Forward => "Forward",
            Sink::Callback(_) => "Callback",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lines(Stream),
    Tracing,
}

/// Creates the pipes a child needs for `output` and `tracing` (event forwarding): the
/// child's ends for its plan, ours to [`register`] once it exists.
pub(crate) fn prepare(output: &Output, tracing: bool) -> io::Result<(ChildStdio, Option<Pending>)> {
    let mut stdio = ChildStdio::default();
    let mut sources = Vec::new();
    if output.captures() {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let (ours, theirs) = sys::pipe_nonblocking(true, false)?;
            sources.push((ours, Kind::Lines(stream)));
            match stream {
                Stream::Stdout => stdio.stdout = Some(theirs),
                Stream::Stderr => stdio.stderr = Some(theirs),
            }
        }
    }
    if tracing {
        let level = super::log_forward::parent_level();
        let (ours, theirs) = sys::pipe_nonblocking(true, false)?;
        sources.push((ours, Kind::Tracing));
        stdio.tracing = Some((theirs, level));
    }
    if sources.is_empty() {
        return Ok((stdio, None));
    }
    let sink = match output {
        Output::Callback(f) => Sink::Callback(Arc::clone(f)),
        _ => Sink::Forward,
    };
    Ok((stdio, Some(Pending { sources, sink })))
}

/// Hands a started child's streams to the forwarding thread. If the thread cannot be
/// started, the streams are dropped (the child's writes then fail with `EPIPE`) and a warning
/// is logged.
pub(crate) fn register(pending: Pending, name: &str, pid: RawPid) {
    let name: Arc<str> = Arc::from(name);
    let sources = pending.sources.into_iter().map(|(fd, kind)| Source {
        fd,
        kind,
        name: Arc::clone(&name),
        pid: pid as u32,
        sink: pending.sink.clone(),
        buf: Vec::new(),
    });
    match forwarder() {
        Ok(shared) => {
            let mut inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.sources.extend(sources);
            drop(inbox);
            shared.wake();
        }
        Err(e) => {
            tracing::warn!(error = %e, name = %name, "cannot start the output forwarding thread; the child's output is lost")
        }
    }
}

/// Waits (at most `timeout`) until the forwarding thread has read and delivered everything
/// that the captured children of this process have written so far. Called once a child is
/// known to have ended, so its output is complete, and at exit. Does nothing when nothing
/// is captured, or on the forwarding thread itself (a callback that joins a process).
pub(crate) fn flush(timeout: Duration) {
    if IS_FORWARDER.get() {
        return;
    }
    let shared = {
        let slot = FORWARDER.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(s) if s.owner == sys::current_pid() => Arc::clone(s),
            _ => return,
        }
    };
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    shared
        .inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flushes
        .push(Arc::clone(&done));
    shared.wake();
    let deadline = Instant::now() + timeout;
    let (lock, cv) = &*done;
    let mut finished = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*finished {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!("the output forwarding thread did not catch up in time");
            return;
        }
        finished = cv
            .wait_timeout(finished, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// How long a join waits for a finished child's output to be delivered.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The forwarding thread.

type Done = Arc<(Mutex<bool>, Condvar)>;

pub(crate) struct Shared {
    /// The process whose thread this is (a forked child inherits the value, not the thread).
    owner: RawPid,
    inbox: Mutex<Inbox>,
    wake_tx: OwnedFd,
}

impl Shared {
    fn wake(&self) {
        // A full pipe already holds a wake-up.
        let _ = sys::write_some(self.wake_tx.as_fd(), &[1]);
    }
}

#[derive(Default)]
struct Inbox {
    sources: Vec<Source>,
    flushes: Vec<Done>,
}

struct Source {
    fd: OwnedFd,
    kind: Kind,
    name: Arc<str>,
    pid: u32,
    sink: Sink,
    /// Bytes read and not yet delivered: a partial line, or a partial `tracing` frame.
    buf: Vec<u8>,
}

static FORWARDER: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

/// Taken by the `fork` start method around the fork, as stdout's lock is: a forked child
/// that found it held by a thread that does not exist there would block at its first start
/// with captured output, or at its exit (which flushes).
pub(crate) fn hold_for_fork() -> std::sync::MutexGuard<'static, Option<Arc<Shared>>> {
    FORWARDER.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    static IS_FORWARDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn forwarder() -> io::Result<Arc<Shared>> {
    let mut slot = FORWARDER.lock().unwrap_or_else(|e| e.into_inner());
    let me = sys::current_pid();
    if let Some(shared) = slot.as_ref()
        && shared.owner == me
    {
        return Ok(Arc::clone(shared));
    }
    let (wake_rx, wake_tx) = sys::pipe_nonblocking(true, true)?;
    let shared = Arc::new(Shared {
        owner: me,
        inbox: Mutex::new(Inbox::default()),
        wake_tx,
    });
    let theirs = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("multiproc-output".to_owned())
        .spawn(move || {
            IS_FORWARDER.set(true);
            run(&theirs, wake_rx);
        })?;
    *slot = Some(Arc::clone(&shared));
    Ok(shared)
}

/// The forwarding thread's loop; it lasts as long as the process.
fn run(shared: &Shared, wake_rx: OwnedFd) {
    let mut sources: Vec<Source> = Vec::new();
    let mut scratch = Vec::new();
    loop {
        let mut fds = Vec::with_capacity(sources.len() + 1);
        let read = Interest {
            read: true,
            write: false,
        };
        fds.push((wake_rx.as_fd(), read));
        fds.extend(sources.iter().map(|s| (s.fd.as_fd(), read)));
        let ready = match sys::poll_fds(&fds, None) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "output forwarding stopped");
                return;
            }
        };
        let mut flushes = Vec::new();
        let mut readable: Vec<bool> = ready[1..].iter().map(|r| r.read).collect();
        drop(fds);
        if ready[0].read {
            let mut sink = [0u8; 64];
            while matches!(sys::read(wake_rx.as_fd(), &mut sink), Ok(n) if n > 0) {}
            let mut inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            sources.append(&mut inbox.sources);
            flushes = std::mem::take(&mut inbox.flushes);
        }
        if !flushes.is_empty() {
            // A flush asks for everything written so far: read every source.
            readable = vec![true; sources.len()];
        }
        readable.resize(sources.len(), false);
        let mut i = 0;
        sources.retain_mut(|source| {
            let ready = readable[i];
            i += 1;
            !ready || pump(source, &mut scratch)
        });
        for done in flushes {
            let (lock, cv) = &*done;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
    }
}

/// Reads what `source` holds and delivers it. `false` at end of file (everything delivered).
fn pump(source: &mut Source, scratch: &mut Vec<u8>) -> bool {
    let mut eof = false;
    // At most 2 MiB at a time (more than a dead child's pipe holds), so that one chatty child
    // does not keep the others waiting; what is left makes the next `poll` return at once.
    for _ in 0..32 {
        match sys::read_append(source.fd.as_fd(), &mut source.buf, 64 * 1024) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => deliver(source, scratch, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    if eof {
        deliver(source, scratch, true);
    }
    !eof
}

/// Delivers the complete lines (or frames) in `source.buf`; at `end`, what is left too.
fn deliver(source: &mut Source, scratch: &mut Vec<u8>, end: bool) {
    match source.kind {
        Kind::Tracing => super::log_forward::deliver(&source.name, source.pid, &mut source.buf),
        Kind::Lines(stream) => deliver_lines(source, stream, scratch, end),
    }
}

fn deliver_lines(source: &mut Source, stream: Stream, scratch: &mut Vec<u8>, end: bool) {
    scratch.clear();
    let mut used = 0;
    let buf = &source.buf;
    let mut emit = |line: &[u8], complete: bool| match &source.sink {
        Sink::Forward => {
            scratch.push(b'[');
            scratch.extend_from_slice(source.name.as_bytes());
            scratch.extend_from_slice(b"] ");
            scratch.extend_from_slice(line);
            scratch.push(b'\n');
        }
        Sink::Callback(f) => {
            let line = OutputLine {
                name: Arc::clone(&source.name),
                pid: source.pid,
                stream,
                bytes: line.to_vec(),
                complete,
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(line))).is_err() {
                tracing::error!("an output callback panicked; the line is dropped");
            }
        }
    };
    while used < buf.len() {
        let rest = &buf[used..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) if n <= MAX_LINE => {
                emit(&rest[..n], true);
                used += n + 1;
            }
            _ if rest.len() >= MAX_LINE => {
                emit(&rest[..MAX_LINE], false);
                used += MAX_LINE;
            }
            _ if end => {
                emit(rest, false);
                used = buf.len();
            }
            _ => break,
        }
    }
    source.buf.drain(..used);
    if !scratch.is_empty() {
        // One write for all the lines read at once; the lock keeps this process's other
        // writers out of the middle of a line.
        let _ = match stream {
            Stream::Stdout => io::stdout().lock().write_all(scratch),
            Stream::Stderr => io::stderr().lock().write_all(scratch),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&got);
        let (r, _w) = sys::pipe().unwrap();
        let mut source = Source {
            fd: r,
            kind: Kind::Lines(Stream::Stdout),
            name: Arc::from("t"),
            pid: 1,
            sink: Sink::Callback(Arc::new(move |l: OutputLine| {
                seen.lock()
                    .unwrap()
                    .push((l.bytes().to_vec(), l.is_complete()))
            })),
            buf: Vec::new(),
        };
        let mut scratch = Vec::new();
        for chunk in chunks {
            source.buf.extend_from_slice(chunk);
            deliver(&mut source, &mut scratch, false);
        }
        deliver(&mut source, &mut scratch, true);
        got.lock().unwrap().clone()
    }

    #[test]
    fn lines_are_joined_across_reads_and_a_partial_end_is_flagged() {
        let got = collect(&[b"ab", b"c\nde", b"f\n\n", b"tail"]);
        assert_eq!(
            got,
            vec![
                (b"abc".to_vec(), true),
                (b"def".to_vec(), true),
                (Vec::new(), true),
                (b"tail".to_vec(), false)
            ]
        );
    }

    #[test]
    fn an_overlong_line_comes_in_pieces() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = collect(&[&input]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (vec![b'x'; MAX_LINE], false));
        assert_eq!(got[1], (vec![b'x'; 10], true));
    }
}
