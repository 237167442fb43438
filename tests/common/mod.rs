//! Shared test scaffolding: bounded waits, a reaper that never lets a test leak a process,
//! and leak checks on descriptors and zombies.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Kills and reaps every child of this process when dropped, also when the test panics.
/// Create one at the top of every test that starts processes.
pub struct Reaper;

impl Reaper {
    pub fn new() -> Self {
        Reaper
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let deadline = Instant::now() + WAIT;
        for child in multiproc::active_children() {
            let _ = child.kill();
        }
        while !multiproc::active_children().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = multiproc::active_children();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("children survived the reaper: {left:?}");
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The open file descriptors of this process.
pub fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// Children of this process in any state, as (pid, state letter) from /proc, not counting a
/// running forkserver (see [`is_forkserver`] and [`os_children_with_forkserver`]); the
/// children the forkserver made for this process are listed.
pub fn os_children() -> Vec<(i32, char)> {
    os_children_with_forkserver()
        .into_iter()
        .filter(|&(pid, state)| state == 'Z' || !is_forkserver(pid))
        .collect()
}

/// Children of this process in any state, the forkserver included.
pub fn os_children_with_forkserver() -> Vec<(i32, char)> {
    let me = std::process::id() as i32;
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        all.push((pid, state, ppid));
    }
    let mut out: Vec<(i32, char)> = all
        .iter()
        .filter(|e| e.2 == me)
        .map(|e| (e.0, e.1))
        .collect();
    if cfg!(multiproc_portable) {
        // No CLONE_PARENT on the portable layer: the forkserver's children are its own.
        let servers: Vec<i32> = out
            .iter()
            .filter(|&&(pid, state)| state != 'Z' && is_forkserver(pid))
            .map(|e| e.0)
            .collect();
        out.extend(
            all.iter()
                .filter(|e| servers.contains(&e.2))
                .map(|e| (e.0, e.1)),
        );
    }
    out
}

/// Whether a process with this pid exists (in any state but reaped).
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `fd` is readable right now (poll with a zero timeout).
pub fn is_readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd that lives across the call; nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Stamps each test once per start method, as CPython runs each test suite once per method:
/// `mod fork`, `mod spawn` and `mod forkserver`, each holding every test, which first makes its
/// method the process-wide default ([`use_start_method`]) and then runs the body unchanged.
/// The default can be set once per process: under cargo nextest each test has its own
/// process; under `cargo test` each stamped test re-runs itself alone in a fresh copy of the
/// test binary ([`isolated`]). Helpers stay outside the macro (each module does
/// `use super::*`). Tests that need a capturing closure are fork-only and stay outside too.
///
/// ```ignore
/// start_method_matrix! {
///     #[test]
///     fn child_sees_its_name() {
///         let h = multiproc::process::Builder::new().name("w").spawn(|| multiproc::current_process().name().to_owned());
///         assert_eq!(h.unwrap().join().unwrap(), "w");
///     }
/// }
/// ```
#[macro_export]
macro_rules! start_method_matrix {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        $crate::start_method_matrix!(@stamp fork, Fork; $($(#[$meta])* fn $name() $body)*);
        $crate::start_method_matrix!(@stamp spawn, Spawn; $($(#[$meta])* fn $name() $body)*);
        $crate::start_method_matrix!(@stamp forkserver, ForkServer; $($(#[$meta])* fn $name() $body)*);
    };
    (@stamp $module:ident, $method:ident; $($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                fn $name() {
                    if $crate::common::isolated(module_path!(), stringify!($name)) {
                        return;
                    }
                    $crate::common::use_start_method(multiproc::StartMethod::$method);
                    $body
                }
            )*
        }
    };
}

/// Tests that need a process of their own (they count its children, set its default start
/// method...), run alone under `cargo test` as the matrix's are ([`isolated`]).
#[macro_export]
macro_rules! alone {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        $(
            $(#[$meta])*
            fn $name() {
                if $crate::common::isolated(module_path!(), stringify!($name)) {
                    return;
                }
                $body
            }
        )*
    };
}

/// Unless this process runs one test only (cargo nextest, or a copy started by this function),
/// runs the test `module::name` alone in a fresh copy of the test binary, waits for it (at most
/// a minute) and fails if it failed; returns `true` then, and the caller returns at once.
pub fn isolated(module: &str, name: &str) -> bool {
    const ALONE: &str = "MULTIPROC_TEST_ALONE";
    if std::env::var_os("NEXTEST_EXECUTION_MODE").is_some_and(|m| m == "process-per-test")
        || std::env::var_os(ALONE).is_some()
    {
        return false;
    }
    // module_path! starts with the test crate's name, which libtest's test paths omit.
    let path = match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    };
    let mut child = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([path.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("re-run the test binary");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() && out.contains("1 passed") => true,
        Some(s) => panic!("{path} failed alone ({s}):\n{out}\n{err}"),
        None => panic!("{path} did not finish in 60 s:\n{out}\n{err}"),
    }
}

/// Makes `method` this test process's default start method. Needs one process per test
/// (cargo nextest), since the default can be set only once per process.
pub fn use_start_method(method: multiproc::StartMethod) {
    if let Err(e) = multiproc::set_start_method(method) {
        panic!(
            "{e}: start-method matrix tests need one process per test; run them with cargo nextest"
        );
    }
}

/// Whether `pid` is this process's multiproc forkserver (a child of ours that
/// `active_children` does not list), by its pid: the children the server makes inherit its
/// environment and command line, so nothing else tells them apart.
pub fn is_forkserver(pid: i32) -> bool {
    multiproc::forkserver_pid().is_some_and(|server| i64::from(server) == i64::from(pid))
}

/// A small seeded PRNG (xorshift64*) for fault injection at random points, with no
/// dependency. The seed comes from `MULTIPROC_SEED` or the clock and is printed, so a failing
/// run can be replayed with `MULTIPROC_SEED=<seed> cargo nextest run <test>`.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("MULTIPROC_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: MULTIPROC_SEED={seed}");
        Rng(seed | 1)
    }

    /// A generator replaying `seed` (for instance one drawn from a seeded one and handed to
    /// a child process, which then makes the same draws).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Named shared-memory segments in `/dev/shm` whose names start with `prefix`.
pub fn shm_names(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A writer for a `tracing` subscriber that keeps what it is given, so a test can read the log
/// back with [`Captured::text`]; clones share one buffer.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("the log is UTF-8")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// postcard's varint, as the length of a sequence is written.
pub fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
