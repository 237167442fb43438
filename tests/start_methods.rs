//! Start methods: spawn and forkserver behind the same API as fork (issue 3).
//!
//! Mirrors CPython's `_test_multiprocessing` scenarios `test_current`, `test_parent_process`,
//! `test_process` (name, daemon, authkey seen by the child), `test_forkserver_sigkill` and
//! `test_spawn_close_fds`. The scenarios in `start_method_matrix!` run under every start
//! method (the matrix makes each the default in turn; `ctx` is its context).

mod common;

use std::time::Duration;

use common::{
    Reaper, WAIT, eventually, is_forkserver, os_children, os_children_with_forkserver, pid_exists,
};
use multiproc::{ErrorKind, JoinError, StartMethod, get_context, process::AuthKey};
use serde::{Deserialize, Serialize};

fn square(x: u64) -> u64 {
    x * x
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Seen {
    name: String,
    ident: Vec<u32>,
    daemon: bool,
    authkey: Vec<u8>,
    parent: Option<(u32, String, bool)>,
    pid: u32,
    ppid: u32,
}

fn look_around() -> Seen {
    let me = multiproc::current_process();
    Seen {
        name: me.name().to_owned(),
        ident: me.identity().to_vec(),
        daemon: me.daemon(),
        authkey: me.authkey().as_bytes().to_vec(),
        parent: multiproc::parent_process().map(|p| (p.pid(), p.name().to_owned(), p.is_alive())),
        pid: me.pid(),
        ppid: std::os::unix::process::parent_id(),
    }
}

/// A value whose serialization always fails.
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

/// The `pthread_mutex_t` at the start of `shm`.
fn mutex_in(shm: &multiproc::shared::SharedMemory) -> *mut libc::pthread_mutex_t {
    assert!(shm.size() >= std::mem::size_of::<libc::pthread_mutex_t>() + 64);
    shm.atomics::<std::sync::atomic::AtomicU64>().as_ptr() as *mut libc::pthread_mutex_t
}

/// A flag beside the mutex: the child has the lock.
fn locked_flag(shm: &multiproc::shared::SharedMemory) -> &std::sync::atomic::AtomicU32 {
    &shm.atomics::<std::sync::atomic::AtomicU32>()[1000]
}

/// A child's body: takes the robust mutex in `shm`, says so, and waits to be killed.
fn hold_robust_mutex(shm: multiproc::shared::SharedMemory) {
    // SAFETY: the parent initialised a process-shared robust mutex at the start of the segment,
    // which stays mapped for as long as `shm` lives (until this process is killed).
    let rc = unsafe { libc::pthread_mutex_lock(mutex_in(&shm)) };
    assert_eq!(rc, 0, "pthread_mutex_lock in the child");
    locked_flag(&shm).store(1, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(60));
}

/// A daemon's body: says it is up (after its parent-death signal is armed), then waits.
fn daemon_says_up(up: multiproc::Queue<u32>) {
    up.put(std::process::id()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// A helper process's body: starts a daemon from a thread that ends once the daemon is up,
/// reports the daemon's pid, and waits to be killed.
fn daemon_from_a_short_lived_thread(report: multiproc::Queue<u32>) {
    let up = multiproc::Queue::<u32>::new().unwrap();
    let thread = std::thread::spawn(move || {
        let mut daemon = multiproc::process::Builder::new()
            .daemon(true)
            .target_with_args(daemon_says_up, up.clone());
        daemon.start().unwrap();
        let pid = daemon.pid().unwrap();
        assert_eq!(up.get_timeout(WAIT).unwrap(), pid);
        pid
    });
    let daemon = thread.join().unwrap();
    report.put(daemon).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

/// SIGKILLs a process that is not our child when dropped (a test's cleanup).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if running(self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// What a child sees of start methods: its default, the method a process it makes would use,
/// and the default its own child sees.
fn report_methods() -> [String; 3] {
    let own = multiproc::get_start_method().to_string();
    let next = multiproc::Process::new(|| {}).start_method().to_string();
    let grandchild = multiproc::spawn(|| multiproc::get_start_method().to_string())
        .unwrap()
        .join()
        .unwrap();
    [own, next, grandchild]
}

start_method_matrix! {
    #[test]
    fn typed_result_from_fn_item() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        assert_eq!(ctx.spawn_with_args(square, 12).unwrap().join().unwrap(), 144);
    }

    #[test]
    fn typed_result_from_non_capturing_closure() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let h = ctx.spawn(|| vec!["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(h.join().unwrap(), ["a", "b"]);
    }

    #[test]
    fn panic_is_reported_with_message() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let h = ctx.spawn_with_args(|n: u32| -> u32 { panic!("bad input {n}") }, 7).unwrap();
        match h.join() {
            Err(JoinError::Panic { message, location }) => {
                assert_eq!(message, "bad input 7");
                assert!(location.is_some_and(|l| l.contains("start_methods.rs")));
            }
            other => panic!("expected a panic, got {other:?}"),
        }
    }

    #[test]
    fn exit_code_and_process_api() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let mut p = ctx.process_with_args(|code: i32| std::process::exit(code), 3);
        assert_eq!(p.start_method(), ctx.start_method());
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(3));
    }

    #[test]
    fn child_knows_who_it_is() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let key = AuthKey::from(b"sesame".to_vec());
        let h = ctx
            .builder()
            .name("worker")
            .authkey(key.clone())
            .spawn(look_around)
            .unwrap();
        let child_pid = h.pid();
        let seen = h.join().unwrap();
        assert_eq!(seen.name, "worker");
        assert_eq!(seen.ident.len(), 1);
        assert!(!seen.daemon);
        assert_eq!(seen.authkey, key.as_bytes());
        assert_eq!(seen.pid, child_pid);
        let me = std::process::id();
        assert_eq!(seen.parent, Some((me, "MainProcess".to_string(), true)));
        if cfg!(multiproc_portable) && multiproc::get_start_method() == StartMethod::ForkServer {
            // The portable layer has no CLONE_PARENT: the server forks its children.
            assert_eq!(Some(seen.ppid), multiproc::forkserver_pid());
        } else {
            // Under forkserver too the child is a direct child of this process.
            assert_eq!(seen.ppid, me);
        }
    }

    #[test]
    fn child_inherits_authkey_and_daemon_flag() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let seen = ctx.builder().daemon(true).spawn(look_around).unwrap().join().unwrap();
        assert!(seen.daemon);
        assert_eq!(seen.authkey, multiproc::current_process().authkey().as_bytes());
        assert!(seen.name.starts_with("Process-"));
    }

    #[test]
    fn from_run_value_travels() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        #[derive(Serialize, Deserialize)]
        struct Exit(i32);
        impl multiproc::process::Run for Exit {
            fn run(&mut self) {
                std::process::exit(self.0)
            }
        }
        let mut p = ctx.process_from_run(Exit(9));
        assert_eq!(p.name(), "Exit-1");
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(9));
    }

    #[test]
    fn grandchild_under_same_method() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let method = ctx.start_method().to_string();
        let h = ctx
            .spawn_with_args(
                |method: String| {
                    let ctx = get_context(method.parse().unwrap());
                    // The default the parent set (through the matrix) holds in the child too.
                    assert_eq!(multiproc::get_start_method(), ctx.start_method());
                    let inner = ctx.spawn(look_around).unwrap().join().unwrap();
                    (std::process::id(), multiproc::current_process().name().to_owned(), inner)
                },
                method,
            )
            .unwrap();
        let (child_pid, child_name, inner) = h.join().unwrap();
        assert_eq!(inner.parent, Some((child_pid, child_name.clone(), true)));
        assert_eq!(inner.name, format!("{child_name}:1"));
        assert_eq!(inner.ident.len(), 2);
    }

    #[test]
    fn terminate_and_kill() {
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let mut p = ctx.process(|| std::thread::sleep(Duration::from_secs(60)));
        p.start().unwrap();
        p.terminate().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-15));
    }

    #[test]
    fn robust_pthread_mutex_of_a_killed_child_is_owner_died() {
        // A C library's robust mutex (glibc writes its cached thread id into the lock word) must
        // be marked owner-died by the kernel when the child holding it is killed: the child's
        // cached id must be its own, under forkserver too (a raw clone would keep the server's).
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let shm = multiproc::shared::SharedMemory::create(8192).unwrap();
        let m = mutex_in(&shm);
        // SAFETY: `m` points into a live shared mapping large enough for the mutex (checked in
        // `mutex_in`); the attribute object lives on this stack and is destroyed after use.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            assert_eq!(libc::pthread_mutexattr_init(attr.as_mut_ptr()), 0);
            assert_eq!(libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED), 0);
            assert_eq!(libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST), 0);
            assert_eq!(libc::pthread_mutex_init(m, attr.as_ptr()), 0);
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        }
        let mut p = ctx.process_with_args(hold_robust_mutex, shm.clone());
        p.start().unwrap();
        assert!(
            eventually(WAIT, || locked_flag(&shm).load(std::sync::atomic::Ordering::SeqCst) == 1),
            "the child never took the mutex"
        );
        p.kill().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
        let mut deadline = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the struct we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut deadline) };
        deadline.tv_sec += 5;
        // SAFETY: `m` is the initialised mutex above; `deadline` is a valid timespec.
        let rc = unsafe { libc::pthread_mutex_timedlock(m, &deadline) };
        assert_eq!(
            rc,
            libc::EOWNERDEAD,
            "expected EOWNERDEAD, got {} ({})",
            rc,
            std::io::Error::from_raw_os_error(rc)
        );
        // SAFETY: we own the mutex now (EOWNERDEAD hands it over); nobody else uses it.
        unsafe {
            assert_eq!(libc::pthread_mutex_consistent(m), 0);
            assert_eq!(libc::pthread_mutex_unlock(m), 0);
            libc::pthread_mutex_destroy(m);
        }
        shm.unlink().unwrap();
    }

    #[test]
    fn daemon_started_from_a_short_lived_thread_is_tied_to_the_process() {
        // Linux's parent-death signal follows the parent *thread*: a daemon must neither die
        // when the thread that started it ends nor outlive its parent process (issue 10).
        let ctx = get_context(multiproc::get_start_method());
        let _reaper = Reaper::new();
        let report = multiproc::Queue::<u32>::new().unwrap();
        let mut helper = ctx.process_with_args(daemon_from_a_short_lived_thread, report.clone());
        helper.start().unwrap();
        let daemon = report.get_timeout(WAIT).unwrap();
        let _cleanup = KillOnDrop(daemon);
        // The thread that started the daemon has ended; a signal tied to it is immediate.
        std::thread::sleep(Duration::from_millis(300));
        assert!(running(daemon), "the daemon died with the thread that started it");
        helper.kill().unwrap();
        assert_eq!(helper.join_timeout(WAIT).unwrap(), Some(-9));
        assert!(
            eventually(WAIT, || !running(daemon)),
            "the daemon outlived its parent process"
        );
    }

    #[test]
    fn child_started_through_a_context_defaults_to_its_method() {
        // As in Python, where a concrete context's Process forces its method on the child
        // (`BaseProcess._bootstrap`), while one from the default context keeps the parent's.
        let default = multiproc::get_start_method().to_string();
        let _reaper = Reaper::new();
        for m in multiproc::get_all_start_methods() {
            let all = [m.to_string(), m.to_string(), m.to_string()];
            let seen = get_context(m).spawn(report_methods).unwrap().join().unwrap();
            assert_eq!(seen, all, "a child started through get_context({m})");
            let seen = multiproc::process::Builder::new().start_method(m).spawn(report_methods);
            assert_eq!(seen.unwrap().join().unwrap(), all, "Builder::start_method({m})");
        }
        let seen = multiproc::spawn(report_methods).unwrap().join().unwrap();
        assert_eq!(seen, [default.clone(), default.clone(), default], "a child started with the default");
    }
}

// Methods that begin a fresh program: spawn and forkserver.

fn fresh_methods() -> [StartMethod; 2] {
    [StartMethod::Spawn, StartMethod::ForkServer]
}

/// A child's body for the kill stress: counts its run in slot `i` of `shm`.
fn count_run((shm, i): (multiproc::shared::SharedMemory, usize)) {
    shm.atomics::<std::sync::atomic::AtomicU32>()[i]
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

// Each needs a process of its own (they count this process's children or set its default).
alone! {
    #[test]
    fn capturing_closure_is_refused_before_anything_starts() {
        let _reaper = Reaper::new();
        for m in fresh_methods() {
            let before = os_children_with_forkserver().len();
            let captured = String::from("captured");
            let err = get_context(m).spawn(move || captured.len()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsupportedTarget, "{m}");
            assert!(err.to_string().contains("fork"), "{err}");
            assert!(multiproc::active_children().is_empty());
            assert!(
                os_children_with_forkserver().len() <= before + 1,
                "{m}: a child was started"
            ); // + forkserver
        }
    }

    #[test]
    fn unserializable_arguments_fail_in_the_parent() {
        let _reaper = Reaper::new();
        for m in fresh_methods() {
            let mut p = get_context(m).process_with_args(|_: Unserializable| {}, Unserializable);
            let err = p.start().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Encode, "{m}");
            assert!(p.pid().is_none());
            assert!(multiproc::active_children().is_empty());
        }
    }

    #[test]
    fn spawned_child_does_not_run_main_or_the_test_harness() {
        let _reaper = Reaper::new();
        for m in fresh_methods() {
            let (args, marker) = get_context(m)
                .spawn(|| {
                    let args: Vec<String> = std::env::args().collect();
                    (args, std::env::var_os("__MULTIPROC_CHILD").is_some())
                })
                .unwrap()
                .join()
                .unwrap();
            // The harness would have needed its filter arguments; the child got none.
            assert!(args.len() <= 1, "{m}: {args:?}");
            assert!(
                !marker,
                "{m}: the marker leaked into the child's environment"
            );
        }
    }

    #[test]
    fn fresh_children_hold_only_what_they_were_given() {
        let _reaper = Reaper::new();
        // A descriptor without close-on-exec, as a careless library might leave one: it must not
        // reach children that begin a fresh program (CPython's test_spawn_close_fds).
        let (r, _w) = std::io::pipe().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: F_DUPFD on an open descriptor only allocates a new one, which we close below.
        let leaky = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD, 100) };
        assert!(leaky >= 100);
        for m in fresh_methods() {
            let (leaked, count) = get_context(m)
                .spawn_with_args(
                    |fd: i32| {
                        let open = std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists();
                        (open, common::open_fds().len())
                    },
                    leaky,
                )
                .unwrap()
                .join()
                .unwrap();
            assert!(!leaked, "{m}: descriptor {leaky} leaked into the child");
            // stdin, stdout, stderr, the result pipe, and the directory being listed; on the
            // portable layer also the child's exit channel and its parent's alive pipe.
            let most = if cfg!(multiproc_portable) { 7 } else { 5 };
            assert!(count <= most, "{m}: child holds {count} descriptors");
        }
        // SAFETY: `leaky` is ours and closed once.
        unsafe { libc::close(leaky) };
    }

    #[test]
    fn forkserver_serves_many_starts_from_one_server() {
        let _reaper = Reaper::new();
        let ctx = get_context(StartMethod::ForkServer);
        assert_eq!(ctx.spawn_with_args(square, 2).unwrap().join().unwrap(), 4);
        let servers = os_children_with_forkserver();
        assert_eq!(servers.len(), 1, "one forkserver expected: {servers:?}");
        assert!(is_forkserver(servers[0].0));
        for i in 0..30u64 {
            assert_eq!(
                ctx.spawn_with_args(square, i).unwrap().join().unwrap(),
                i * i
            );
        }
        let pids =
            |children: Vec<(i32, char)>| children.into_iter().map(|(pid, _)| pid).collect::<Vec<_>>();
        assert_eq!(
            pids(os_children_with_forkserver()),
            pids(servers),
            "the same server, and no zombies"
        );
    }

    #[test]
    fn forkserver_restarts_after_it_is_killed() {
        let _reaper = Reaper::new();
        let ctx = get_context(StartMethod::ForkServer);
        assert_eq!(ctx.spawn_with_args(square, 3).unwrap().join().unwrap(), 9);
        let [(server, _)] = os_children_with_forkserver()[..] else {
            panic!(
                "one forkserver expected: {:?}",
                os_children_with_forkserver()
            )
        };
        // SAFETY: kill(2) has no memory-safety preconditions; `server` is our unreaped child.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        // A zombie until the next start reaps it; the portable layer reaps it at once.
        assert!(eventually(WAIT, || {
            let now = os_children_with_forkserver();
            now.iter().any(|&(p, s)| p == server && s == 'Z')
                || (cfg!(multiproc_portable) && !now.iter().any(|&(p, _)| p == server))
        }));
        // The next start notices, reaps the dead server and starts a new one.
        assert_eq!(ctx.spawn_with_args(square, 5).unwrap().join().unwrap(), 25);
        let now = os_children_with_forkserver();
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(is_forkserver(now[0].0));
        assert_ne!(now[0].0, server);
    }

    #[test]
    fn forkserver_dies_with_its_owner() {
        let _reaper = Reaper::new();
        // A fork child starts its own forkserver, reports the server's pid and exits.
        let server = get_context(StartMethod::Fork)
            .spawn(|| {
                let ctx = get_context(StartMethod::ForkServer);
                ctx.spawn_with_args(square, 4).unwrap().join().unwrap();
                let children = common::os_children_with_forkserver();
                assert_eq!(children.len(), 1, "{children:?}");
                assert!(common::is_forkserver(children[0].0));
                children[0].0 as u32
            })
            .unwrap()
            .join()
            .unwrap();
        // Gone, or a zombie waiting for init to reap it.
        let running = || {
            pid_exists(server)
                && std::fs::read_to_string(format!("/proc/{server}/stat")).is_ok_and(|stat| {
                    stat.rsplit(") ")
                        .next()
                        .is_some_and(|rest| !rest.starts_with('Z'))
                })
        };
        assert!(
            eventually(WAIT, || !running()),
            "forkserver {server} outlived its owner"
        );
    }

    #[test]
    fn set_start_method_is_settable_once_and_used_by_default() {
        let _reaper = Reaper::new();
        multiproc::set_start_method(StartMethod::Spawn).unwrap();
        multiproc::set_start_method(StartMethod::Spawn).unwrap();
        let err = multiproc::set_start_method(StartMethod::Fork).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StartMethodAlreadySet);
        let p = multiproc::Process::new(|| {});
        assert_eq!(p.start_method(), StartMethod::Spawn);
        // A spawned child's parent is this process, and it has no forkserver.
        assert_eq!(
            multiproc::spawn_with_args(square, 6)
                .unwrap()
                .join()
                .unwrap(),
            36
        );
        assert!(os_children().is_empty());
    }

    /// Python's `set_start_method(..., force=True)`: the choice changes for processes started
    /// afterwards, children see the new one, and a running forkserver survives the change.
    #[test]
    fn set_start_method_force_changes_the_default_again() {
        let _reaper = Reaper::new();
        multiproc::set_start_method(StartMethod::ForkServer).unwrap();
        assert_eq!(multiproc::spawn_with_args(square, 3).unwrap().join().unwrap(), 9);
        let server = multiproc::forkserver_pid().expect("a forkserver start launched one");

        multiproc::set_start_method_force(Some(StartMethod::Spawn));
        assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
        // Settable again only by force.
        let err = multiproc::set_start_method(StartMethod::Fork).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StartMethodAlreadySet);
        let p = multiproc::Process::new(|| {});
        assert_eq!(p.start_method(), StartMethod::Spawn);
        let seen = multiproc::spawn(report_methods).unwrap().join().unwrap();
        assert_eq!(seen, ["spawn", "spawn", "spawn"]);
        assert_eq!(multiproc::forkserver_pid(), Some(server), "the server keeps running");
        assert!(running(server));

        multiproc::set_start_method_force(Some(StartMethod::ForkServer));
        assert_eq!(multiproc::spawn_with_args(square, 4).unwrap().join().unwrap(), 16);
        assert_eq!(multiproc::forkserver_pid(), Some(server), "and is used again");

        // None: no choice, as at program start (the builtin default, capturing closures forked).
        multiproc::set_start_method_force(None);
        assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
        let text = String::from("captured");
        let p = multiproc::Process::new(move || assert_eq!(text, "captured"));
        assert_eq!(p.start_method(), StartMethod::Fork);
        multiproc::set_start_method(StartMethod::Spawn).unwrap();
        assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
    }

    #[test]
    fn default_is_forkserver() {
        assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
        assert_eq!(
            multiproc::get_all_start_methods()[0],
            StartMethod::ForkServer
        );
    }

    #[test]
    fn daemon_outlives_the_thread_that_started_the_forkserver() {
        let _reaper = Reaper::new();
        let ctx = get_context(StartMethod::ForkServer);
        // Thread A makes the first forkserver start, so the server is launched on its behalf...
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            let ctx = get_context(StartMethod::ForkServer);
            assert_eq!(ctx.spawn_with_args(square, 2).unwrap().join().unwrap(), 4);
            wait.recv().unwrap();
        });
        assert!(eventually(WAIT, || !os_children_with_forkserver().is_empty()));
        // ... then a daemon starts, and then thread A exits.
        let mut daemon = ctx
            .builder()
            .daemon(true)
            .target(|| std::thread::sleep(Duration::from_secs(30)));
        daemon.start().unwrap();
        go.send(()).unwrap();
        a.join().unwrap();
        // A parent-death signal tied to thread A would have killed it by now.
        assert_eq!(
            daemon.join_timeout(Duration::from_millis(300)).unwrap(),
            None
        );
        daemon.kill().unwrap();
        assert_eq!(daemon.join_timeout(WAIT).unwrap(), Some(-9));
    }

    #[test]
    fn concurrent_starts_from_many_threads() {
        let _reaper = Reaper::new();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    for m in fresh_methods() {
                        for i in 0..5 {
                            let n = t * 100 + i;
                            let got = get_context(m)
                                .spawn_with_args(square, n)
                                .unwrap()
                                .join()
                                .unwrap();
                            assert_eq!(got, n * n, "{m}");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn leak_checks_see_forkserver_children_but_not_the_server() {
        let _reaper = Reaper::new();
        assert_eq!(multiproc::forkserver_pid(), None, "no forkserver start yet");
        let mut p = get_context(StartMethod::ForkServer)
            .process(|| std::thread::sleep(Duration::from_secs(60)));
        p.start().unwrap();
        let child = p.pid().unwrap() as i32;
        let server = multiproc::forkserver_pid().expect("the start launched a server") as i32;
        assert_ne!(server, child);
        let seen = os_children();
        assert!(seen.iter().any(|&(pid, _)| pid == child), "the forkserver's child is hidden: {seen:?}");
        assert!(!seen.iter().any(|&(pid, _)| pid == server), "the server is listed: {seen:?}");
        assert!(is_forkserver(server) && !is_forkserver(child));
        assert!(os_children_with_forkserver().iter().any(|&(pid, _)| pid == server));
        p.kill().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
        assert!(os_children().is_empty(), "{:?}", os_children());
    }

    #[test]
    fn forkserver_killed_at_random_points_loses_no_child_and_runs_none_twice() {
        // Issue 21: a server killed between making a child and answering must not make
        // `start()` fail while the child runs (a retry would run the target twice, and the
        // child would stay a zombie); one killed before it made the child is retried.
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        const STARTS: usize = 300;
        let _reaper = Reaper::new();
        let mut rng = common::Rng::seeded("forkserver_killed_at_random_points");
        let shm = multiproc::shared::SharedMemory::create(STARTS * 4).unwrap();
        let ctx = get_context(StartMethod::ForkServer);
        assert_eq!(ctx.spawn_with_args(square, 2).unwrap().join().unwrap(), 4);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let killer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut kills = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_micros(rng.below(6000)));
                    if let Some(server) = multiproc::forkserver_pid() {
                        // SAFETY: kill(2) has no memory-safety preconditions; the server is our
                        // child, not reaped while `forkserver_pid` names it.
                        if unsafe { libc::kill(server as i32, libc::SIGKILL) } == 0 {
                            kills += 1;
                        }
                    }
                }
                kills
            })
        };
        let mut failed = Vec::new();
        for i in 0..STARTS {
            let mut p = ctx.process_with_args(count_run, (shm.clone(), i));
            match p.start() {
                Ok(()) => {
                    let code = p.join_timeout(WAIT).unwrap();
                    // On the portable layer the server reports the exit code: a child whose
                    // server was killed before reporting ends with 255, as in CPython.
                    let lost = cfg!(multiproc_portable) && code == Some(255);
                    assert!(code == Some(0) || lost, "start {i}: {code:?}");
                }
                Err(e) => failed.push((i, e.to_string())),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let kills = killer.join().unwrap();
        // The killer's last victim may be a server nobody asked anything of since: the next
        // start reaps it and starts another.
        assert_eq!(ctx.spawn_with_args(square, 3).unwrap().join().unwrap(), 9);
        eprintln!(
            "{kills} kills, {} failed starts, the first: {:?}",
            failed.len(),
            failed.first()
        );
        // A child left behind by a failed start would run its target (its count goes to 1) and
        // stay a zombie: nothing of ours reaps a child `start()` did not report.
        std::thread::sleep(Duration::from_millis(200));
        let counts = shm.atomics::<AtomicU32>();
        for (i, count) in counts.iter().enumerate().take(STARTS) {
            let runs = count.load(Ordering::SeqCst);
            if failed.iter().any(|&(f, _)| f == i) {
                assert_eq!(runs, 0, "start {i} failed but its target ran");
            } else {
                assert_eq!(runs, 1, "start {i} succeeded and its target ran {runs} times");
            }
        }
        assert!(os_children().is_empty(), "children left: {:?}", os_children());
        assert!(kills > 0);
        shm.unlink().unwrap();
    }

    #[test]
    fn forkserver_dying_before_it_reads_a_start_retries_it_on_a_new_server() {
        let _reaper = Reaper::new();
        let ctx = get_context(StartMethod::ForkServer);
        assert_eq!(ctx.spawn_with_args(square, 3).unwrap().join().unwrap(), 9);
        let server = multiproc::forkserver_pid().expect("a running forkserver") as i32;
        // Stopped, the server never reads the request; then it is killed. Nothing was made from
        // the request, so the start is retried on a new server (issue 21) and succeeds.
        // SAFETY: kill(2) has no memory-safety preconditions; `server` is our unreaped child.
        assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
        // The request is sent within microseconds; the margin is for a loaded machine.
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: as above.
            unsafe { libc::kill(server, libc::SIGKILL) };
        });
        let retried = ctx.spawn_with_args(square, 4).unwrap();
        killer.join().unwrap();
        assert_eq!(retried.join().unwrap(), 16);
        let now = os_children_with_forkserver();
        assert!(now.len() == 1 && now[0].0 != server && is_forkserver(now[0].0), "{now:?}");
        assert_eq!(ctx.spawn_with_args(square, 5).unwrap().join().unwrap(), 25);
    }

    #[test]
    fn start_fails_cleanly_when_out_of_descriptors() {
        let _reaper = Reaper::new();
        // In a fork child (it may capture and change its own limits): use up every descriptor,
        // then try each method. Each start must fail with an OS error and leave no child.
        let outcomes = get_context(StartMethod::Fork)
            .spawn(|| {
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: getrlimit/setrlimit write or read the struct we pass.
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
                limit.rlim_cur = 256.min(limit.rlim_max);
                // SAFETY: as above.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
                let mut hog = Vec::new();
                while let Ok(f) = std::fs::File::open("/dev/null") {
                    hog.push(f);
                }
                let outcomes: Vec<String> = fresh_methods()
                    .into_iter()
                    .map(|m| {
                        let mut p = get_context(m).process_with_args(|x: u64| assert_eq!(square(x), 4), 2);
                        match p.start() {
                            Ok(()) => "started".to_owned(),
                            Err(e) => format!("{:?}", e.kind()),
                        }
                    })
                    .collect();
                drop(hog);
                (outcomes, multiproc::active_children().len())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(outcomes, (vec!["Io".to_owned(), "Io".to_owned()], 0));
    }

    #[test]
    fn out_of_descriptors_for_a_handle_argument_is_an_os_error() {
        let _reaper = Reaper::new();
        // In a fork child (it may capture and change its own limits): with every descriptor in
        // use, passing a Queue to a fresh program needs a duplicate of its descriptors, which
        // fails with EMFILE. That is the OS refusing, not a value that cannot be serialized.
        let outcomes = get_context(StartMethod::Fork)
            .spawn(|| {
                let queue = multiproc::Queue::<u32>::new().unwrap();
                let mut p: Vec<_> = fresh_methods()
                    .into_iter()
                    .map(|m| (m, get_context(m).process_with_args(|q: multiproc::Queue<u32>| drop(q), queue.clone())))
                    .collect();
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: getrlimit/setrlimit write or read the struct we pass.
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
                limit.rlim_cur = 256.min(limit.rlim_max);
                // SAFETY: as above.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
                let mut hog = Vec::new();
                while let Ok(f) = std::fs::File::open("/dev/null") {
                    hog.push(f);
                }
                let outcomes: Vec<(String, String, Option<i32>)> = p
                    .iter_mut()
                    .map(|(m, p)| match p.start() {
                        Ok(()) => (m.to_string(), "started".to_owned(), None),
                        Err(e) => {
                            let errno = std::error::Error::source(&e)
                                .and_then(|s| s.downcast_ref::<std::io::Error>())
                                .and_then(std::io::Error::raw_os_error);
                            (m.to_string(), format!("{:?}: {e}", e.kind()), errno)
                        }
                    })
                    .collect();
                drop(hog);
                (outcomes, multiproc::active_children().len())
            })
            .unwrap()
            .join()
            .unwrap();
        let (outcomes, children) = outcomes;
        assert_eq!(children, 0, "a failed start left a child: {outcomes:?}");
        for (m, outcome, errno) in outcomes {
            assert!(outcome.starts_with("Io: "), "{m}: {outcome}");
            assert!(outcome.contains("Too many open files"), "{m}: {outcome}");
            assert_eq!(errno, Some(libc::EMFILE), "{m}: the source is the OS error: {outcome}");
        }
    }

    #[test]
    fn environment_names_the_default() {
        // SAFETY: this test runs alone in its process (nextest, or `alone!`), before any thread.
        unsafe { std::env::set_var("MULTIPROC_START_METHOD", "spawn") };
        assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
        // The code's choice still wins, once.
        multiproc::set_start_method(StartMethod::Fork).unwrap();
        assert_eq!(multiproc::get_start_method(), StartMethod::Fork);
    }

    #[test]
    fn unknown_name_in_the_environment_is_ignored() {
        // SAFETY: as above.
        unsafe { std::env::set_var("MULTIPROC_START_METHOD", "vfork") };
        assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
    }

    #[test]
    fn capturing_closure_under_the_unchosen_default_is_forked() {
        let _reaper = Reaper::new();
        let text = String::from("captured");
        let mut p = multiproc::Process::new(move || assert_eq!(text, "captured"));
        assert_eq!(p.start_method(), StartMethod::Fork);
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        let n = 7u64;
        assert_eq!(multiproc::spawn(move || n * 6).unwrap().join().unwrap(), 42);
        // Targets that capture nothing take the default, forkserver.
        assert_eq!(
            multiproc::Process::new(|| {}).start_method(),
            StartMethod::ForkServer
        );
        let p = multiproc::Process::with_args(|x: u64| assert_eq!(x, 1), 1);
        assert_eq!(p.start_method(), StartMethod::ForkServer);
    }

    #[test]
    fn capturing_closure_under_a_chosen_default_is_refused() {
        let _reaper = Reaper::new();
        multiproc::set_start_method(StartMethod::ForkServer).unwrap();
        let text = String::from("captured");
        let err = multiproc::spawn(move || text.len()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedTarget);
        assert!(multiproc::active_children().is_empty());
    }
}
