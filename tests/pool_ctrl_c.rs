//! Ctrl-C during `Pool::map`: SIGINT to the whole foreground process group must leave no
//! process running and no hang. With the default action everything dies at once; when the
//! program handles SIGINT, the workers still die of it and `map` returns an error at once.
//!
//! The program under test is this test binary, re-run as the ignored `ctrl_c_helper` test in
//! a process group of its own (the shape of a terminal's foreground job). Each test runs once
//! per start method: the helper's pool uses the method the test was stamped with, passed to it
//! as `MULTIPROC_START_METHOD`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::Pool;

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The program that gets Ctrl-C: prints its workers' pids, then maps slow tasks.
#[test]
#[ignore = "run by the ctrl_c tests in a process group of their own"]
fn ctrl_c_helper() {
    let Ok(mode) = std::env::var("MULTIPROC_CTRL_C") else {
        return;
    };
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if mode == "handled" {
        signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()).unwrap();
    }
    if mode == "forgotten" {
        // A program that handles SIGTERM and never drops its pool: at exit the workers are
        // terminated and joined, and must die although they inherited the handler.
        signal_hook::flag::register(signal_hook::consts::SIGTERM, interrupted.clone()).unwrap();
        let pool = Pool::new(2).unwrap();
        let pids: Vec<String> = multiproc::active_children()
            .iter()
            .map(|c| c.pid().to_string())
            .collect();
        println!("workers {}", pids.join(" "));
        assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
        std::mem::forget(pool);
        return;
    }
    let pool = Pool::new(2).unwrap();
    if let Some(server) = multiproc::forkserver_pid() {
        println!("server {server}");
    }
    let pids: Vec<String> = multiproc::active_children()
        .iter()
        .map(|c| c.pid().to_string())
        .collect();
    println!("workers {}", pids.join(" "));
    let result = pool.map(sleep_ms, vec![20_000u64; 8]);
    // The workers may die of the group's SIGINT and `map` return before the kernel has run
    // this process's own handler (on whichever thread it picked): give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while mode == "handled"
        && !interrupted.load(std::sync::atomic::Ordering::SeqCst)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "map returned {:?} (flag {})",
        result.map(|v| v.len()),
        interrupted.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// Runs the helper, sends SIGINT to its group once the map runs, and returns how it ended,
/// what it printed after the pids, and its worker pids.
fn interrupt_helper(mode: &str) -> (std::process::ExitStatus, Vec<String>, Vec<u32>, Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ctrl_c_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_CTRL_C", mode)
        .env(
            "MULTIPROC_START_METHOD",
            multiproc::get_start_method().name(),
        )
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut server = None;
    let pids: Vec<u32> = loop {
        let line = rx
            .recv_timeout(common::WAIT)
            .expect("the helper reports its workers");
        if let Some(at) = line.find("server ") {
            server = Some(line[at + 7..].trim().parse::<u32>().unwrap());
            continue;
        }
        // libtest prints "test ctrl_c_helper ... " before the helper's own output.
        if let Some(at) = line.find("workers ") {
            break line[at + 8..]
                .split(' ')
                .map(|p| p.parse().unwrap())
                .collect();
        }
    };
    assert_eq!(pids.len(), 2);
    std::thread::sleep(Duration::from_millis(300)); // the map is under way
    let group = format!("-{}", child.id());
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    let gone = common::eventually(Duration::from_secs(1), || {
        exit = exit.or_else(|| child.try_wait().unwrap());
        exit.is_some() && pids.iter().all(|&p| is_dead(p))
    });
    let took = sent.elapsed();
    if !gone {
        kill_group(&mut child);
        panic!(
            "after Ctrl-C: helper exited: {exit:?}, workers alive: {:?}",
            pids.iter().filter(|&&p| !is_dead(p)).collect::<Vec<_>>()
        );
    }
    // The forkserver ignores SIGINT and ends when its owner (the helper) is gone.
    if let Some(server) = server
        && !common::eventually(common::WAIT, || is_dead(server))
    {
        let _ = Command::new("kill")
            .args(["-KILL", &server.to_string()])
            .status();
        panic!("the helper's forkserver {server} outlived it");
    }
    // Everything it printed: the reader thread may still be forwarding the last lines (under
    // load it lags the exit), so read until it ends at end of file, bounded.
    let mut rest = Vec::new();
    let deadline = Instant::now() + common::WAIT;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    (exit.unwrap(), rest, pids, took)
}

/// SIGKILLs the helper's whole process group (helper and workers) and reaps the helper, so a
/// failing test leaves nothing behind.
fn kill_group(child: &mut std::process::Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

/// Gone, or a zombie (dead, waiting for whoever inherited it to reap it).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

start_method_matrix! {
    #[test]
    fn ctrl_c_with_default_action_ends_everything() {
        let _r = common::Reaper::new();
        let (status, _, _, took) = interrupt_helper("default");
        assert_eq!(
            status.signal(),
            Some(2),
            "the program died of SIGINT: {status:?}"
        );
        eprintln!("everything gone {took:?} after SIGINT");
    }

    #[test]
    fn ctrl_c_handled_by_the_program_makes_map_return() {
        let _r = common::Reaper::new();
        let (status, out, _, took) = interrupt_helper("handled");
        assert!(status.success(), "{status:?}");
        let line = out
            .iter()
            .find(|l| l.starts_with("map returned"))
            .expect("map returned");
        assert!(
            line.contains("Err(WorkerDied { how: Signal(2) })"),
            "{line}"
        );
        assert!(line.contains("flag true"), "{line}");
        eprintln!("map returned and everything was gone {took:?} after SIGINT");
    }

    #[test]
    fn a_forgotten_pool_does_not_hold_up_exit() {
        let _r = common::Reaper::new();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ctrl_c_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MULTIPROC_CTRL_C", "forgotten")
            .env("MULTIPROC_START_METHOD", multiproc::get_start_method().name())
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut status = None;
        let ended = common::eventually(common::WAIT, || {
            status = status.or_else(|| child.try_wait().unwrap());
            status.is_some()
        });
        if !ended {
            kill_group(&mut child);
            panic!("the program did not exit: its pool's workers held it up");
        }
        assert!(status.unwrap().success(), "{status:?}");
        let pids: Vec<u32> = rx
            .try_iter()
            .find_map(|line| {
                let at = line.find("workers ")?;
                Some(
                    line[at + 8..]
                        .split(' ')
                        .map(|p| p.parse().unwrap())
                        .collect(),
                )
            })
            .expect("the helper reported its workers");
        assert_eq!(pids.len(), 2);
        assert!(common::eventually(Duration::from_secs(1), || pids
            .iter()
            .all(|&p| is_dead(p))));
    }
}
