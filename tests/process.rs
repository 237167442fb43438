//! The Process lifecycle: Python's `multiprocessing.Process` surface, its error cases, typed
//! results, daemons, and leak checks. Mirrors CPython's `_TestProcess` in
//! `Lib/test/_test_multiprocessing.py` where a scenario exists there.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Reaper, WAIT, eventually};
use multiproc::{ErrorKind, JoinError, Process, process::AuthKey, process::Builder, process::Run};
use serde::{Deserialize, Serialize};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    dir
}

fn sleeper(secs: u64) -> Process {
    Process::with_args(|s: u64| std::thread::sleep(Duration::from_secs(s)), secs)
}

#[derive(Serialize, Deserialize)]
struct Counter {
    path: PathBuf,
    times: u32,
}

impl Run for Counter {
    fn run(&mut self) {
        let text: String = (0..self.times).map(|i| format!("{i}\n")).collect();
        std::fs::write(&self.path, text).unwrap();
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// A grandchild's side of `parent_join_waits_for_the_parent`: how its parent's joins went,
/// as bits (1: the short join saw the parent end, 2: the long one did, 4: `is_alive` is false
/// afterwards).
fn await_parent(
    (waiting, done, verdict): (multiproc::Event, multiproc::Event, multiproc::Value<u32>),
) {
    let parent = multiproc::parent_process().expect("a child has a parent");
    let early = parent.join_timeout(Duration::from_millis(20)).unwrap();
    waiting.set();
    let ended = parent.join_timeout(WAIT).unwrap();
    verdict.set(u32::from(early) | u32::from(ended) << 1 | u32::from(!parent.is_alive()) << 2);
    done.set();
}

/// The middle process: starts `await_parent` and waits to be killed.
fn start_grandchild(args: (multiproc::Event, multiproc::Event, multiproc::Value<u32>)) {
    let _g = multiproc::spawn_with_args(await_parent, args).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Registers two exit hooks that report on `w`, then ends as `how` says: 0 returns, 1
/// panics, 2 calls `std::process::exit(3)`, 3 waits to be killed.
fn hooks_then((w, how): (multiproc::Connection, u8)) {
    let w = std::sync::Arc::new(w);
    let first = w.clone();
    multiproc::process::at_exit(move || first.send("first").unwrap());
    let second = w.clone();
    multiproc::process::at_exit(move || {
        second.send("second").unwrap();
        // One that panics does not stop the others.
        panic!("a failing hook");
    });
    match how {
        0 => {}
        1 => panic!("target failed on purpose"),
        2 => std::process::exit(3),
        _ => {
            w.send("ready").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Everything `reader` receives until every writer is gone.
fn drain(reader: &multiproc::Connection) -> Vec<String> {
    let mut got = Vec::new();
    while reader.poll(Some(WAIT)).unwrap_or(true) {
        match reader.recv::<String>() {
            Ok(s) => got.push(s),
            Err(_) => break,
        }
    }
    got
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    /// The replacement for Python's `atexit`/`util.Finalize` in children: `at_exit` hooks run,
    /// newest first, when the target returns, panics or calls `exit`, and not when a signal
    /// ends the child; a forked child does not run its parent's.
    #[test]
    fn at_exit_hooks_run_at_a_normal_end_only() {
        let _r = Reaper::new();
        let parent = std::process::id();
        multiproc::process::at_exit(move || {
            if std::process::id() != parent {
                std::process::abort();
            }
        });
        for (how, code) in [(0u8, 0), (1, 1), (2, 3)] {
            let (reader, writer) = multiproc::pipe(false).unwrap();
            let mut p = Process::with_args(hooks_then, (writer, how));
            p.start().unwrap();
            assert_eq!(p.join_timeout(WAIT).unwrap(), Some(code), "ending {how}");
            assert_eq!(drain(&reader), ["second", "first"], "ending {how}");
        }
        let (reader, writer) = multiproc::pipe(false).unwrap();
        let mut p = Process::with_args(hooks_then, (writer, 3));
        p.start().unwrap();
        assert_eq!(reader.recv::<String>().unwrap(), "ready", "hooks registered");
        p.terminate().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-libc_sigterm()));
        assert!(drain(&reader).is_empty(), "hooks ran on SIGTERM");
    }

    /// Python's `parent_process().join(timeout)` (CPython's `test_parent_process`): a child
    /// whose parent is killed sees it end; before that, a short join times out.
    #[test]
    fn parent_join_waits_for_the_parent() {
        let _r = Reaper::new();
        let (waiting, done) = (multiproc::Event::new().unwrap(), multiproc::Event::new().unwrap());
        let verdict = multiproc::Value::new(0u32).unwrap();
        let mut middle = Process::with_args(
            start_grandchild,
            (waiting.clone(), done.clone(), verdict.clone()),
        );
        middle.start().unwrap();
        assert!(waiting.wait_timeout(WAIT), "the grandchild did not start waiting");
        assert!(!done.is_set(), "the grandchild's join returned while its parent ran");
        middle.kill().unwrap();
        assert_eq!(middle.join_timeout(WAIT).unwrap(), Some(-9));
        // The grandchild, now an orphan, ends by itself once it has reported.
        assert!(done.wait_timeout(WAIT), "the grandchild did not see its parent end");
        assert_eq!(verdict.get(), 2 | 4, "short join: running; long join: ended; not alive");
    }

    #[test]
    fn names_follow_python_numbering() {
        let _r = Reaper::new();
        let a = Process::new(|| {});
        let b = Process::new(|| {});
        assert!(a.name().starts_with("Process-"), "{}", a.name());
        let na: u32 = a.name()["Process-".len()..].parse().unwrap();
        let nb: u32 = b.name()["Process-".len()..].parse().unwrap();
        assert_eq!(nb, na + 1);

        // A child numbers its own children from 1, prefixed by its own number.
        let nested = multiproc::spawn(|| {
            let me = multiproc::current_process().name().to_owned();
            let first = Process::new(|| {}).name().to_owned();
            let second = Process::new(|| {}).name().to_owned();
            (me, first, second)
        })
        .unwrap()
        .join()
        .unwrap();
        let (me, first, second) = nested;
        assert_eq!(first, format!("{me}:1"));
        assert_eq!(second, format!("{me}:2"));

        let mut named = Builder::new().name("worker").target(|| {});
        assert_eq!(named.name(), "worker");
        named.set_name("renamed");
        assert_eq!(named.name(), "renamed");
    }

    #[test]
    fn child_sees_its_name_and_identity() {
        let _r = Reaper::new();
        let h = Builder::new()
            .name("custom")
            .spawn(|| {
                let me = multiproc::current_process();
                (me.name().to_owned(), me.identity().len(), me.daemon())
            })
            .unwrap();
        assert_eq!(h.join().unwrap(), ("custom".to_owned(), 1, false));
    }

    #[test]
    fn subclass_style_run_with_fields() {
        let _r = Reaper::new();
        let path = scratch("counter");
        let mut p = Process::from_run(Counter {
            path: path.clone(),
            times: 3,
        });
        assert!(p.name().starts_with("Counter-"), "{}", p.name());
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n1\n2\n");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn target_with_named_arguments() {
        #[derive(Serialize, Deserialize)]
        struct Kwargs {
            name: String,
            age: u32,
        }
        let _r = Reaper::new();
        let path = scratch("kwargs");
        let mut p = Process::with_args(
            |(path, kw): (PathBuf, Kwargs)| {
                std::fs::write(path, format!("{} {}", kw.name, kw.age)).unwrap()
            },
            (
                path.clone(),
                Kwargs {
                    name: "egon".into(),
                    age: 18,
                },
            ),
        );
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "egon 18");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn run_executes_in_the_calling_process() {
        static RAN: AtomicBool = AtomicBool::new(false);
        let mut p = Process::new(|| RAN.store(true, Ordering::SeqCst));
        p.run().unwrap();
        assert!(RAN.load(Ordering::SeqCst));
        assert!(p.pid().is_none());
        assert_eq!(p.run().unwrap_err().kind(), ErrorKind::TargetConsumed);
        assert_eq!(p.start().unwrap_err().kind(), ErrorKind::TargetConsumed);
    }

    #[test]
    fn lifecycle_states_and_errors() {
        let _r = Reaper::new();
        let mut p = sleeper(30);
        assert!(!p.is_alive());
        assert_eq!(p.pid(), None);
        assert_eq!(p.exitcode(), None);
        assert_eq!(p.join().unwrap_err().kind(), ErrorKind::NotStarted);
        assert_eq!(
            p.join_timeout(Duration::ZERO).unwrap_err().kind(),
            ErrorKind::NotStarted
        );
        assert_eq!(p.sentinel().unwrap_err().kind(), ErrorKind::NotStarted);
        assert_eq!(p.terminate().unwrap_err().kind(), ErrorKind::NotStarted);

        p.start().unwrap();
        assert!(p.pid().is_some());
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        assert_eq!(p.start().unwrap_err().kind(), ErrorKind::AlreadyStarted);
        assert_eq!(
            p.set_daemon(true).unwrap_err().kind(),
            ErrorKind::DaemonAfterStart
        );
        assert_eq!(p.close().unwrap_err().kind(), ErrorKind::StillRunning);

        // A timed-out join returns and the process keeps running.
        let t = Instant::now();
        assert_eq!(p.join_timeout(Duration::from_millis(100)).unwrap(), None);
        assert!(t.elapsed() >= Duration::from_millis(90));
        assert_eq!(p.join_timeout(Duration::ZERO).unwrap(), None);
        assert!(p.is_alive());

        p.terminate().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-libc_sigterm()));
        assert!(!p.is_alive());
        assert_eq!(p.exitcode(), Some(-libc_sigterm()));
        // Terminating a finished process is a no-op, as in Python.
        p.terminate().unwrap();
        p.kill().unwrap();

        p.close().unwrap();
        p.close().unwrap();
        assert_eq!(p.join().unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(p.start().unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(p.sentinel().unwrap_err().kind(), ErrorKind::Closed);
        assert!(!p.is_alive());
    }

    #[test]
    fn exit_codes_follow_python() {
        let _r = Reaper::new();
        let mut ok = Process::new(|| {});
        let mut panics = Process::new(|| panic!("target failed on purpose"));
        let mut exits = Process::new(|| std::process::exit(7));
        let mut killed = sleeper(30);
        for p in [&mut ok, &mut panics, &mut exits, &mut killed] {
            p.start().unwrap();
        }
        killed.kill().unwrap();
        assert_eq!(ok.join_timeout(WAIT).unwrap(), Some(0));
        assert_eq!(panics.join_timeout(WAIT).unwrap(), Some(1));
        assert_eq!(exits.join_timeout(WAIT).unwrap(), Some(7));
        assert_eq!(killed.join_timeout(WAIT).unwrap(), Some(-9));
    }

    /// Python 3.14's `Process.interrupt()`: SIGINT ends a child that does not handle it
    /// (exit code -2), and is the child's to handle if it does.
    #[test]
    fn interrupt_sends_sigint() {
        let _r = Reaper::new();
        let mut p = sleeper(30);
        assert_eq!(p.interrupt().unwrap_err().kind(), ErrorKind::NotStarted);
        p.start().unwrap();
        p.interrupt().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-2));
        // A finished child: a no-op, as terminate and kill.
        p.interrupt().unwrap();

        // A child that ignores SIGINT keeps running.
        let ready = multiproc::Event::new().unwrap();
        let mut deaf = Process::with_args(
            |ready: multiproc::Event| {
                // SAFETY: installing SIG_IGN has no preconditions.
                unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
                ready.set();
                std::thread::sleep(Duration::from_secs(30));
            },
            ready.clone(),
        );
        deaf.start().unwrap();
        assert!(ready.wait_timeout(WAIT));
        deaf.interrupt().unwrap();
        assert_eq!(deaf.join_timeout(Duration::from_millis(200)).unwrap(), None);
        deaf.terminate().unwrap();
        assert_eq!(deaf.join_timeout(WAIT).unwrap(), Some(-libc_sigterm()));

        // Through a JoinHandle too.
        let mut h = multiproc::spawn_with_args(
            |s: u64| std::thread::sleep(Duration::from_secs(s)),
            30,
        )
        .unwrap();
        h.interrupt().unwrap();
        assert!(matches!(h.join_timeout(WAIT), Err(JoinError::Signal(2))));
    }

    #[test]
    fn sentinel_becomes_readable_at_exit() {
        let _r = Reaper::new();
        let mut p = Process::new(|| std::thread::sleep(Duration::from_millis(200)));
        p.start().unwrap();
        assert!(!common::is_readable(p.sentinel().unwrap()));
        assert!(eventually(WAIT, || common::is_readable(
            p.sentinel().unwrap()
        )));
        assert_eq!(p.join().unwrap(), 0);
    }

    /// A child's end is seen while a process it started lives on: on the portable layer, where
    /// the handle is a channel the child holds open, its own children must not hold it too.
    #[test]
    fn a_childs_end_is_seen_while_its_own_child_lives_on() {
        let _r = Reaper::new();
        let grandchild = multiproc::Value::new(0u32).unwrap();
        let mut middle = Process::with_args(
            |g: multiproc::Value<u32>| {
                let mut p = Process::new(|| std::thread::sleep(Duration::from_secs(30)));
                p.start().unwrap();
                g.set(p.pid().unwrap());
                std::thread::sleep(Duration::from_secs(30));
            },
            grandchild.clone(),
        );
        middle.start().unwrap();
        assert!(eventually(WAIT, || grandchild.get() != 0));
        middle.kill().unwrap();
        let ended = middle.join_timeout(WAIT);
        let orphan = grandchild.get().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &orphan]).status();
        assert_eq!(ended.unwrap(), Some(-9), "the middle's end was not seen");
    }

    /// The portable layer reaps a child as soon as it ends, joined or not: without `/proc`
    /// other processes cannot tell a zombie from a live process (a dead lock owner would count
    /// alive), and the exit code is kept for the join.
    #[cfg(multiproc_portable)]
    #[test]
    fn a_killed_child_is_reaped_before_it_is_joined() {
        let _r = Reaper::new();
        let mut p = sleeper(30);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        p.kill().unwrap();
        assert!(eventually(WAIT, || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
    }

    #[test]
    fn authkey_is_random_and_inherited() {
        let _r = Reaper::new();
        let mine = multiproc::current_process().authkey().clone();
        assert_eq!(mine.as_bytes().len(), 32);
        assert_ne!(mine, AuthKey::random());
        let inherited: Vec<u8> =
            multiproc::spawn(|| multiproc::current_process().authkey().as_bytes().to_vec())
                .unwrap()
                .join()
                .unwrap();
        assert_eq!(inherited, mine.as_bytes());
        let custom: Vec<u8> = Builder::new()
            .authkey(AuthKey::from(b"sesame".to_vec()))
            .spawn(|| multiproc::current_process().authkey().as_bytes().to_vec())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(custom, b"sesame");
        let p = Process::new(|| {});
        assert_eq!(p.authkey(), &mine);
    }

    #[test]
    fn current_and_parent_process() {
        let _r = Reaper::new();
        assert_eq!(multiproc::current_process().name(), "MainProcess");
        assert_eq!(multiproc::current_process().pid(), std::process::id());
        assert!(multiproc::parent_process().is_none());
        let (pid, ppid, parent_pid, parent_name, alive) = multiproc::spawn(|| {
            let parent = multiproc::parent_process().unwrap();
            (
                multiproc::current_process().pid(),
                std::os::unix::process::parent_id(),
                parent.pid(),
                parent.name().to_owned(),
                parent.is_alive(),
            )
        })
        .unwrap()
        .join()
        .unwrap();
        assert_ne!(pid, std::process::id());
        if cfg!(multiproc_portable) && multiproc::get_start_method() == multiproc::StartMethod::ForkServer {
            // The portable layer has no CLONE_PARENT: the server forks its children, so it is
            // their OS parent; `parent_process()` is still the program that started them.
            assert_eq!(Some(ppid), multiproc::forkserver_pid());
        } else {
            assert_eq!(ppid, std::process::id());
        }
        assert_eq!(parent_pid, std::process::id());
        assert_eq!(parent_name, "MainProcess");
        assert!(alive);
        assert!(multiproc::cpu_count() >= 1);
    }

    #[test]
    fn active_children_lists_and_reaps() {
        let _r = Reaper::new();
        assert!(multiproc::active_children().is_empty());
        let mut long = sleeper(30);
        long.start().unwrap();
        {
            let mut short = Process::new(|| {});
            short.start().unwrap();
            // Dropped without join: active_children reaps it once it ends.
        }
        assert!(eventually(WAIT, || multiproc::active_children().len() == 1));
        let listed = multiproc::active_children();
        assert_eq!(Some(listed[0].pid()), long.pid());
        assert_eq!(listed[0].name(), long.name());
        assert!(listed[0].is_alive());
        listed[0].kill().unwrap();
        assert_eq!(long.join_timeout(WAIT).unwrap(), Some(-9));
        assert!(multiproc::active_children().is_empty());
        assert!(
            common::os_children().is_empty(),
            "{:?}",
            common::os_children()
        );
    }

    #[test]
    fn join_handle_returns_values_and_tells_failures_apart() {
        let _r = Reaper::new();
        assert_eq!(
            multiproc::spawn(|| String::from("hello"))
                .unwrap()
                .join()
                .unwrap(),
            "hello"
        );
        assert_eq!(
            multiproc::spawn_with_args(|(a, b): (u32, u32)| a * b, (6, 7))
                .unwrap()
                .join()
                .unwrap(),
            42
        );

        match multiproc::spawn(|| -> u32 { panic!("bad {}", 42) })
            .unwrap()
            .join()
        {
            Err(JoinError::Panic { message, location }) => {
                assert_eq!(message, "bad 42");
                let location = location.expect("location captured");
                assert!(location.contains("tests/process.rs"), "{location}");
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        match multiproc::spawn(|| -> u32 { std::process::exit(5) })
            .unwrap()
            .join()
        {
            Err(JoinError::Exit(5)) => {}
            other => panic!("expected exit 5, got {other:?}"),
        }
        let h = multiproc::spawn(|| -> u32 {
            std::thread::sleep(Duration::from_secs(30));
            0
        })
        .unwrap();
        h.kill().unwrap();
        match h.join() {
            Err(JoinError::Signal(9)) => {}
            other => panic!("expected signal 9, got {other:?}"),
        }
    }

    #[test]
    fn join_handle_timeout_then_join_again() {
        let _r = Reaper::new();
        let mut h = multiproc::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            99u8
        })
        .unwrap();
        assert!(
            h.join_timeout(Duration::from_millis(20))
                .unwrap_err()
                .is_timeout()
        );
        assert!(!h.is_finished());
        assert_eq!(h.join_timeout(WAIT).unwrap(), 99);
        assert!(matches!(
            h.join_timeout(WAIT),
            Err(JoinError::AlreadyJoined)
        ));
    }

    #[test]
    fn large_result_larger_than_a_pipe_buffer() {
        let _r = Reaper::new();
        let v: Vec<u8> = multiproc::spawn(|| (0..4_000_000u32).map(|i| i as u8).collect())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(v.len(), 4_000_000);
        assert!(v.iter().enumerate().all(|(i, b)| *b == i as u8));
    }

    #[test]
    fn daemon_flag_and_daemonic_parent_error() {
        let _r = Reaper::new();
        let mut p = Process::new(|| {});
        p.set_daemon(true).unwrap();
        assert!(p.daemon());
        let kind = Builder::new()
            .daemon(true)
            .spawn(|| {
                Process::new(|| {})
                    .start()
                    .map_err(|e| (e.kind() == ErrorKind::DaemonicParent, e.to_string()))
            })
            .unwrap()
            .join()
            .unwrap();
        let (is_daemonic_error, message) = kind.unwrap_err();
        assert!(is_daemonic_error);
        assert!(message.contains("daemonic"), "{message}");
    }

    #[test]
    fn nondaemon_children_joined_and_daemons_terminated_at_exit() {
        let _r = Reaper::new();
        let marker = scratch("joined-at-exit");
        let daemon_pid_file = scratch("daemon-pid");
        let mut parent = Process::with_args(
            |(marker, daemon_pid_file): (PathBuf, PathBuf)| {
                let mut slow = Process::with_args(
                    |marker: PathBuf| {
                        std::thread::sleep(Duration::from_millis(300));
                        std::fs::write(marker, "done").unwrap();
                    },
                    marker,
                );
                slow.start().unwrap();
                let mut daemon = Builder::new()
                    .daemon(true)
                    .target(|| std::thread::sleep(Duration::from_secs(30)));
                daemon.start().unwrap();
                std::fs::write(daemon_pid_file, daemon.pid().unwrap().to_string()).unwrap();
                // Returning here: the bootstrap joins `slow` and terminates `daemon`.
            },
            (marker.clone(), daemon_pid_file.clone()),
        );
        parent.start().unwrap();
        assert_eq!(parent.join_timeout(WAIT).unwrap(), Some(0));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done");
        let daemon: u32 = std::fs::read_to_string(&daemon_pid_file)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            eventually(WAIT, || !alive(daemon)),
            "daemon {daemon} survived its parent's exit"
        );
        std::fs::remove_file(marker).unwrap();
        std::fs::remove_file(daemon_pid_file).unwrap();
    }

    #[test]
    fn daemon_dies_when_parent_is_killed() {
        let _r = Reaper::new();
        let daemon_pid_file = scratch("orphan-daemon-pid");
        let mut parent = Process::with_args(
            |file: PathBuf| {
                let mut daemon = Builder::new()
                    .daemon(true)
                    .target(|| std::thread::sleep(Duration::from_secs(30)));
                daemon.start().unwrap();
                std::fs::write(file, daemon.pid().unwrap().to_string()).unwrap();
                std::thread::sleep(Duration::from_secs(30));
            },
            daemon_pid_file.clone(),
        );
        parent.start().unwrap();
        assert!(eventually(WAIT, || std::fs::read_to_string(
            &daemon_pid_file
        )
        .is_ok_and(|s| !s.is_empty())));
        let daemon: u32 = std::fs::read_to_string(&daemon_pid_file)
            .unwrap()
            .parse()
            .unwrap();
        assert!(alive(daemon));
        parent.kill().unwrap();
        assert_eq!(parent.join_timeout(WAIT).unwrap(), Some(-9));
        assert!(
            eventually(WAIT, || !alive(daemon)),
            "daemon {daemon} outlived its SIGKILLed parent"
        );
        std::fs::remove_file(daemon_pid_file).unwrap();
    }

    #[test]
    fn no_zombies_or_fd_leaks_after_many_cycles() {
        let _r = Reaper::new();
        // Warm up lazily created state (the main identity, the panic hook, the exit handler).
        let mut warm = Process::new(|| {});
        warm.start().unwrap();
        warm.join().unwrap();
        drop(warm);
        let fds_before = common::open_fds();
        for i in 0..200 {
            let mut p = Process::new(|| {});
            p.start().unwrap();
            assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
            if i % 2 == 0 {
                p.close().unwrap();
            }
        }
        for _ in 0..50 {
            assert_eq!(multiproc::spawn(|| 1u8).unwrap().join().unwrap(), 1);
        }
        // Processes dropped without join are reaped by the next start or active_children().
        for _ in 0..20 {
            let mut p = Process::new(|| {});
            p.start().unwrap();
        }
        assert!(eventually(WAIT, || multiproc::active_children().is_empty()));
        assert_eq!(common::open_fds(), fds_before, "descriptors leaked");
        assert!(
            common::os_children().is_empty(),
            "zombies or live children left: {:?}",
            common::os_children()
        );
    }

    #[test]
    fn output_buffered_before_start_is_not_printed_twice() {
        // Checked end to end by tests/examples.rs, which reads a child's stdout; here: a start
        // with buffered stdout still works and the child's own output is flushed at its exit.
        let _r = Reaper::new();
        print!("partial line without newline ");
        let mut p = Process::new(|| print!("from child without newline"));
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        println!();
    }
    // Issue 20: a loop of short polls collects a value of any size. Each poll takes what the
    // pipe holds, so a child blocked writing a value larger than the pipe's buffer moves on.
    #[test]
    fn short_join_timeout_polls_collect_values_of_any_size() {
        let _r = Reaper::new();
        for len in [100_000usize, 64 << 20] {
            for poll in [0u64, 1, 2] {
                let mut h = multiproc::spawn_with_args(
                    |len: usize| serde_bytes::ByteBuf::from(vec![0xA5u8; len]),
                    len,
                )
                .unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let started = Instant::now();
                let mut polls = 0u64;
                let value = loop {
                    polls += 1;
                    match h.join_timeout(Duration::from_millis(poll)) {
                        Err(JoinError::Timeout) => assert!(
                            Instant::now() < deadline,
                            "{len}-byte value not collected in 60 s of {poll} ms polls"
                        ),
                        other => break other.unwrap(),
                    }
                };
                eprintln!("{len} bytes, {poll} ms polls: {polls} polls, {:?}", started.elapsed());
                assert_eq!(value.len(), len, "{poll} ms polls");
                assert!(value.iter().all(|&b| b == 0xA5));
            }
        }
    }

    // Issue 21 item 3: a value too large for one message is reported as such, not as a clean
    // exit without a value.
    #[test]
    fn a_value_over_the_frame_limit_is_reported_as_unencodable() {
        let _r = Reaper::new();
        let h = multiproc::spawn(|| serde_bytes::ByteBuf::from(vec![1u8; (1 << 30) + 1])).unwrap();
        match h.join() {
            Err(JoinError::Process(e)) => {
                assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
                assert!(e.to_string().contains("limit"), "{e}");
            }
            other => panic!("expected an encode error, got {:?}", other.map(|v| v.len())),
        }
    }
}

/// Decodes to an error in the child: its `Deserialize` refuses what its `Serialize` wrote.
#[derive(Debug)]
struct Unreadable;

impl Serialize for Unreadable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(7)
    }
}

impl<'de> Deserialize<'de> for Unreadable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u8::deserialize(d)?;
        Err(serde::de::Error::custom("Unreadable never decodes"))
    }
}

// Issue 21 items 4 and 5, issue 10 (conjure): what a fresh program cannot run, or cannot
// rebuild, is reported as what it is. Spawn and forkserver only: fork sends nothing.
mod fresh_program {
    use super::*;

    fn each_fresh_method(mut test: impl FnMut(multiproc::Context)) {
        for method in [
            multiproc::StartMethod::Spawn,
            multiproc::StartMethod::ForkServer,
        ] {
            test(multiproc::get_context(method));
        }
    }

    #[test]
    fn a_child_that_cannot_decode_its_arguments_says_so() {
        let _r = Reaper::new();
        each_fresh_method(|ctx| {
            let mut h = ctx
                .spawn_with_args(|_: Unreadable| 1u8, Unreadable)
                .unwrap();
            match h.join_timeout(WAIT) {
                Err(JoinError::Process(e)) => {
                    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
                    let text = e.to_string();
                    assert!(text.contains("decode its arguments"), "{text}");
                }
                other => panic!("expected a decode error, got {other:?}"),
            }
            let mut p = ctx.process_with_args(|_: Unreadable| {}, Unreadable);
            p.start().unwrap();
            assert_eq!(p.join_timeout(WAIT).unwrap(), Some(1));
        });
    }

    fn twice(x: u32) -> u32 {
        2 * x
    }

    #[test]
    fn a_function_pointer_is_refused_with_its_own_reason() {
        let _r = Reaper::new();
        each_fresh_method(|ctx| {
            let f: fn(u32) -> u32 = twice;
            let e = ctx.spawn_with_args(f, 4).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedTarget);
            let text = e.to_string();
            assert!(text.contains("function pointer"), "{text}");
            assert!(!text.contains("captures variables"), "{text}");
            // The function item itself works.
            assert_eq!(ctx.spawn_with_args(twice, 4).unwrap().join().unwrap(), 8);
        });
    }

    /// Zero-sized, with a destructor: made afresh per process it would be dropped per process.
    struct Token;

    impl Drop for Token {
        fn drop(&mut self) {}
    }

    #[test]
    fn a_closure_capturing_a_zero_sized_value_with_a_destructor_is_not_duplicated() {
        let _r = Reaper::new();
        each_fresh_method(|ctx| {
            let token = Token;
            let e = ctx
                .spawn(move || {
                    let _keep = &token;
                    1u8
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedTarget);
            assert!(e.to_string().contains("destructor"), "{e}");
        });
        // Without a chosen method it is forked, as any capturing closure is.
        let token = Token;
        let h = multiproc::spawn(move || {
            let _keep = &token;
            3u8
        })
        .unwrap();
        assert_eq!(h.process().start_method(), multiproc::StartMethod::Fork);
        assert_eq!(h.join().unwrap(), 3);
    }
}

// Issue 10 item 3: a forked child must not inherit stdout's or stderr's lock held by another
// thread of the parent: it would deadlock at its first print or at its exit's flush. Fork
// only (the other methods start from a process without the parent's threads); the default
// method forks capturing closures, which is how threaded programs meet this.
#[test]
fn a_forked_child_does_not_inherit_a_held_stdout_lock() {
    let _r = Reaper::new();
    for stream in ["stdout", "stderr"] {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Other threads take the stream's lock over and over, as threads that log a lot
            // do: one of them holds it most of the time, and when the parent's pre-fork flush
            // lets it go another takes it at once, so forks land while it is held.
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let _held: Box<dyn std::any::Any> = if stream == "stdout" {
                            Box::new(std::io::stdout().lock())
                        } else {
                            Box::new(std::io::stderr().lock())
                        };
                        let until = Instant::now() + Duration::from_micros(20);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let mut deadlocked = 0;
            for _ in 0..30 {
                let tag = stream.to_owned();
                let mut p = Process::new(move || {
                    println!("child prints to stdout ({tag})");
                    eprintln!("child prints to stderr ({tag})");
                });
                p.start().unwrap();
                if p.join_timeout(Duration::from_secs(2)).unwrap().is_none() {
                    deadlocked += 1;
                    p.kill().unwrap();
                    p.join_timeout(WAIT).unwrap();
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(deadlocked, 0, "children deadlocked on {stream}'s lock");
        });
    }
}
