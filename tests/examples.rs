//! Drives every example under `examples/` and checks what it prints, as the Python seeds
//! (in `shared/seeds/`) print it. The examples are built by `cargo test` / `cargo nextest`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Builds the examples (nextest, unlike `cargo test`, does not) and returns where cargo put
/// one: `target/<profile>/examples/<name>`. Concurrent calls from other test processes wait
/// on cargo's lock and find nothing left to do.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "--examples", "--manifest-path"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        );
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo build --examples");
    assert!(status.success(), "cargo build --examples failed");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing after cargo build --examples",
        path.display()
    );
    path
}

/// Kills the example's whole process group if the test fails before it finished.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// How long an example may run before its test calls it hung: the examples take a few seconds
/// at most on an idle machine.
const EXAMPLE_LIMIT: Duration = Duration::from_secs(30);

/// The limit for the examples that sleep on purpose (7 s of sleeps on an idle machine): on a
/// loaded machine they reached [`EXAMPLE_LIMIT`], and 120 s still tells a hang from a slow
/// run. `.config/nextest.toml` gives their tests 180 s, so this bound fails first, with a
/// message.
const SLEEPY_EXAMPLE_LIMIT: Duration = Duration::from_secs(120);

/// Runs an example to completion (at most [`EXAMPLE_LIMIT`]) and returns its output and how
/// long it ran.
fn run(name: &str, args: &[&str]) -> (Output, Duration) {
    run_within(name, args, EXAMPLE_LIMIT)
}

/// Runs an example to completion (at most `limit`, not counting building it) and returns its
/// output and how long it ran.
fn run_within(name: &str, args: &[&str], limit: Duration) -> (Output, Duration) {
    let path = example_path(name);
    let started = Instant::now();
    let child = Command::new(path)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        // The example runs under this test's start method (see start_method_matrix!).
        .env(
            "MULTIPROC_START_METHOD",
            multiproc::get_start_method().name(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let mut running = Running(child);
    let deadline = started + limit;
    while running.0.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "example {name} did not finish in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    running
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    running
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let status = running.0.wait().unwrap();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        started.elapsed(),
    )
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs an example that must succeed and returns its stdout.
fn ok_text(name: &str) -> String {
    let (out, _) = run(name, &[]);
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} missing from:\n{haystack}"))
}

fn field<T: std::str::FromStr>(out: &str, prefix: &str) -> T {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"));
    line[prefix.len()..]
        .trim()
        .parse()
        .ok()
        .unwrap_or_else(|| panic!("unparsable {line:?}"))
}

// Each example runs once per start method (modules fork, spawn, forkserver). tcp_server
// moves a socket into a capturing closure, which only fork can run, and stays outside.
start_method_matrix! {
    #[test]
    fn target_args_prints_pids_and_arguments() {
        let (out, _) = run("target_args", &[]);
        assert!(out.status.success());
        let s = text(&out);
        let main_pid: u32 = {
            let i = position(&s, "(main pid ") + "(main pid ".len();
            s[i..].split(')').next().unwrap().parse().unwrap()
        };
        let child_pid: u32 = field(&s, "Process ID：");
        let parent_pid: u32 = field(&s, "Parent Process ID：");
        assert_ne!(child_pid, main_pid);
        // The OS parent; on the portable layer a forkserver child's is the server, as in CPython.
        if !(cfg!(multiproc_portable)
            && multiproc::get_start_method() == multiproc::StartMethod::ForkServer)
        {
            assert_eq!(parent_pid, main_pid);
        }
        assert!(s.contains("name: nmask"));
        assert!(s.contains("子进程正在运行，name的值：test,age的值：27"));
        assert!(s.contains("字典kwargs: {'key': 12}"));
    }

    #[test]
    fn subclass_runs_ten_children_concurrently() {
        let (out, elapsed) = run("subclass", &[]);
        assert!(out.status.success());
        let s = text(&out);
        for i in 0..10 {
            assert_eq!(
                s.lines().filter(|l| *l == format!("nMask {i}")).count(),
                1,
                "{s}"
            );
        }
        // Ten children sleeping 1 s each: concurrent, not one after another (10 s).
        assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    }

    #[test]
    fn join_waits_and_join_timeout_returns_early() {
        let (out, _) = run("join", &[]);
        assert!(out.status.success());
        let s = text(&out);
        // First run: the parent's line comes after the child's "work end".
        let first_end = position(&s, "work end");
        let first_done = position(&s, "主进程执行完");
        assert!(first_end < first_done, "{s}");
        // Second run: join(3 s) on a 5 s child returns while it still runs...
        let timed = position(
            &s,
            "主进程执行完 (after 3 s, child exit code None, alive: true)",
        );
        // ...and the child finishes afterwards (joined when main ends).
        assert!(s[timed..].contains("work end"), "{s}");
    }

    #[test]
    fn attributes_before_and_after_join() {
        let (out, _) = run_within("attributes", &[], SLEEPY_EXAMPLE_LIMIT);
        assert!(out.status.success());
        let s = text(&out);
        let pid: u32 = field(&s, "p.pid:");
        assert!(pid > 0);
        assert!(s.contains("p.name: Process-1"));
        assert!(s.contains("p.is_alive: true"));
        assert!(s.contains("p.is_alive after join: false"));
        assert_eq!(s.matches("当前时间").count(), 3);
        // Workers sleeping 4, 2, 3 s end in the order 2, 3, 4.
        let (e1, e2, e3) = (
            position(&s, "end work1"),
            position(&s, "end work2"),
            position(&s, "end work3"),
        );
        assert!(e2 < e3 && e3 < e1, "{s}");
        for (i, n) in [(1, 2), (2, 3), (3, 4)] {
            assert!(s.contains(&format!("p{i}.name: Process-{n}")), "{s}");
        }
        assert!(s.trim_end().ends_with("主进程结束"));
    }

    #[test]
    fn daemon_is_terminated_when_main_ends() {
        let (out, _) = run_within("daemon", &[], SLEEPY_EXAMPLE_LIMIT);
        assert!(out.status.success());
        let s = text(&out);
        assert!(
            s.contains("456") && s.contains("main-------") && s.contains("end456"),
            "{s}"
        );
        assert!(!s.contains("end123"), "the daemon outlived main:\n{s}");
    }

    #[test]
    fn terminate_then_is_alive() {
        let (out, _) = run("terminate", &[]);
        assert!(out.status.success());
        let s = text(&out);
        let lines: Vec<&str> = s
            .lines()
            .filter(|l| matches!(*l, "True" | "False" | "开始"))
            .collect();
        // Right after terminate() the child may or may not have died yet (as the seed says);
        // once it had a moment, it is gone.
        assert_eq!(lines.len(), 3, "{s}");
        assert!(matches!(lines[0], "True" | "False"), "{s}");
        assert_eq!(lines[1..], ["开始", "False"], "{s}");
        assert!(s.contains("exitcode: Some(-15)"), "{s}");
        assert!(!s.contains("还在和陈松聊天"), "{s}");
    }

    #[test]
    fn tour_runs_and_prints_buffered_output_once() {
        let (out, _) = run("tour", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = text(&out);
        // The example ran under this test's start method.
        let method = format!("default: {})", multiproc::get_start_method());
        assert!(s.contains(&method), "{s}");
        assert_eq!(s.matches("starting Process-1... ").count(), 1, "{s}");
        assert!(s.contains("square(12) computed in pid"));
        assert!(s.contains("terminate() -> exitcode -15"));
        assert!(s.contains("panic: \"something broke\""));
        assert!(s.contains("got (2, \"item 2\")"), "{s}");
        assert!(s.contains("got \"PING\""), "{s}");
        assert!(s.contains("acquire() -> OwnerDied"), "{s}");
        assert!(s.contains("map(square, 0..8) = [0, 1, 4, 9, 16, 25, 36, 49]"), "{s}");
        assert!(s.contains("killed by signal 6"), "{s}");
        assert!(s.contains("apply(square, 9) = 81"), "{s}");
        // The child printed its panic to stderr, as Python prints a traceback.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("panicked at examples/tour.rs") && err.contains("something broke"),
            "{err}"
        );
    }

    // The examples per concept (queue, pipe, locks, shared_memory, pool, executor, manager).

    #[test]
    fn queue_example_passes_every_item() {
        let s = ok_text("queue");
        // Two producers of 10 + 20 + .. + 50 each.
        assert!(s.contains("consumed 10 items, sum 300"), "{s}");
        assert!(s.contains("empty afterwards: "), "{s}");
    }

    #[test]
    fn pipe_example_round_trips_and_reports_disconnection() {
        let s = ok_text("pipe");
        for line in ["fork has 4 letters", "spawn has 5 letters", "forkserver has 10 letters"] {
            assert!(s.contains(line), "{s}");
        }
        assert!(s.contains("child done; recv() -> Disconnected"), "{s}");
    }

    #[test]
    fn locks_example_loses_no_update_and_survives_a_dead_holder() {
        let s = ok_text("locks");
        assert!(s.contains("total after 4 x 100 locked increments: 400"), "{s}");
        assert!(s.contains("holder ended: "), "{s}");
        assert!(s.contains("acquire() -> OwnerDied"), "{s}");
    }

    #[test]
    fn shared_memory_example_sees_the_childrens_writes() {
        let s = ok_text("shared_memory");
        assert!(s.contains("squared in place: [1, 4, 9, 16, 25, 36] by 2 children"), "{s}");
        assert!(s.contains("says: hello from a child"), "{s}");
    }

    #[test]
    fn pool_example_maps_and_survives_a_crash() {
        let s = ok_text("pool");
        assert!(s.contains("map: primes below 20: [2, 3, 5, 7, 11, 13, 17, 19]"), "{s}");
        assert!(s.contains("starmap: [3, 7]"), "{s}");
        // 1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099.
        assert!(s.contains("imap: 6 primes in 1_000_000..1_000_100"), "{s}");
        assert!(s.contains("apply_async: 42"), "{s}");
        assert!(s.contains("crashed task: "), "{s}");
        assert!(s.contains("the pool goes on: 2"), "{s}");
    }

    #[test]
    fn executor_example_yields_in_completion_order() {
        let s = ok_text("executor");
        assert!(s.contains("submit(nap, 10).result() = 10"), "{s}");
        assert!(s.contains("as_completed order: [1, 400]"), "{s}");
        assert!(s.contains("map: [3, 2, 1]"), "{s}");
    }

    #[test]
    fn manager_example_counts_without_losing_updates() {
        let s = ok_text("manager");
        assert!(
            s.contains(r#"counts: [("a", 4), ("is", 2), ("rose", 4)]"#),
            "{s}"
        );
        assert!(
            s.contains(r#"log: ["worker 0 counted 5 words", "worker 1 counted 5 words"]"#),
            "{s}"
        );
    }
}

#[test]
fn tcp_server_serves_clients_concurrently_from_child_processes() {
    let child = Command::new(example_path("tcp_server"))
        .args(["0", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tcp_server");
    let mut server = Running(child);
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let first = lines.next().expect("server output").unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();

    // Three clients connected at once: a server that handled them one at a time would never
    // answer the second while the first is still connected.
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.set_read_timeout(Some(common::WAIT)).unwrap();
            let msg = format!("hello from client {i} round {round}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(String::from_utf8(buf).unwrap(), msg.to_uppercase());
        }
    }
    drop(clients);
    // The server printed each client's address, then exits once its three children ended.
    let addresses: Vec<String> = lines.by_ref().take(3).map(|l| l.unwrap()).collect();
    assert_eq!(addresses.len(), 3);
    assert!(
        addresses.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{addresses:?}"
    );
    let deadline = Instant::now() + common::WAIT;
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after its clients left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
