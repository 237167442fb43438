//! Launches `cluster-selftest` (src/bin) under `mpirun` on this machine: the pool on the
//! serving ranks under each start method that applies, refusals that must be clear (a
//! mismatched build, the fork start method, no serving rank). Every run is bounded by
//! `mpirun --timeout`, which kills every rank (and the ranks' workers die with them).
//!
//! Needs Open MPI's `mpirun` on PATH (Debian: openmpi-bin), as building this crate needs
//! libopenmpi-dev.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SELFTEST: &str = env!("CARGO_BIN_EXE_cluster-selftest");

/// Seconds after which `mpirun` kills the job (exit status 110 then).
const TIMEOUT: &str = "150";

/// `mpirun` with what Open MPI needs on a small shared test machine: root allowed (CI runs as
/// root), more ranks than cores, and ranks that yield when idle.
fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--timeout", TIMEOUT, "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("RUST_BACKTRACE", "0");
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("mpirun runs (is Open MPI installed?)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code(), text)
}

fn selftest(method: &str) {
    let (code, out) = run(mpirun().args(["-n", "3", SELFTEST, method]));
    assert_eq!(code, Some(0), "{out}");
    let line = format!("cluster-selftest: ok ({method}, 2 serving ranks,");
    assert!(out.contains(&line), "{out}");
    assert!(
        out.contains("300 tasks of which 30 killed their worker, retries ok"),
        "{out}"
    );
}

#[test]
fn pool_on_two_serving_ranks_under_forkserver() {
    selftest("forkserver");
}

#[test]
fn pool_on_two_serving_ranks_under_spawn() {
    selftest("spawn");
}

/// Builds `examples/cluster.rs` (nextest does not build examples) and returns its path:
/// `target/<profile>/examples/cluster`, beside this test's own profile directory.
fn cluster_example() -> PathBuf {
    let profile_dir = Path::new(SELFTEST).parent().expect("target/<profile>");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--example",
            "cluster",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        );
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    assert!(cargo.status().expect("run cargo build").success());
    profile_dir.join("examples").join("cluster")
}

/// The README's cluster example prints what it says it does.
#[test]
fn the_cluster_example_runs_under_mpirun() {
    let (code, out) = run(mpirun().arg("-n").arg("3").arg(cluster_example()));
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "rank 0: 2 serving ranks",
        "squares: [1, 4, 9, 16, 25, 36, 49, 64]",
        "words per line: [4, 2, 3]",
        "the crashing task failed alone: ",
        "after the crash: [81, 100]",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

/// Dynamic mode: the program started plainly (an MPI singleton) spawns its two servers.
/// Without `mpirun --timeout`, the run is bounded here: the program gets its own process
/// group (which Open MPI's helper daemon and the spawned servers join), killed if it runs
/// over.
#[test]
fn pool_on_two_spawned_servers() {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(SELFTEST)
        .args(["--spawn", "2"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the self-test starts");
    let group = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("cluster-selftest: ok (forkserver, 2 serving ranks,"),
        "{out}"
    );
    assert!(
        out.contains("300 tasks of which 30 killed their worker, retries ok"),
        "{out}"
    );
}

#[test]
fn fork_start_method_is_refused_with_a_clear_error() {
    let (code, out) = run(mpirun().args(["-n", "2", SELFTEST, "fork"]));
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("rank 1 could not start a worker")
            && out.contains("the fork start method is not available on MPI ranks"),
        "{out}"
    );
}

#[test]
fn a_job_without_serving_ranks_is_a_clear_error() {
    let (code, out) = run(mpirun().args(["-n", "1", SELFTEST]));
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("this MPI job has no serving ranks"), "{out}");
}

/// A copy of the self-test with bytes appended: it runs just as well, but it is another build.
fn other_build(dir: &Path) -> PathBuf {
    let copy = dir.join("cluster-selftest-other");
    let mut bytes = std::fs::read(SELFTEST).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&copy, bytes).unwrap();
    let mut perms = std::fs::metadata(&copy).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&copy, perms).unwrap();
    copy
}

#[test]
fn a_rank_running_another_build_is_refused() {
    let dir = std::env::temp_dir().join(format!("multiproc-mpi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = other_build(&dir);
    // MPMD: rank 0 and rank 1 run the real build, rank 2 the other one.
    let (code, out) = run(mpirun()
        .args(["-n", "2", SELFTEST, ":", "-n", "1"])
        .arg(&other));
    std::fs::remove_dir_all(&dir).ok();
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("not every rank runs the same build of this program"),
        "{out}"
    );
    assert!(out.contains("rank 2 (pid"), "{out}");
    assert!(!out.contains("rank 1 (pid"), "{out}");
    assert!(!out.contains("cluster-selftest: ok"), "{out}");
}

/// The parent pid of `pid`, from /proc (None once it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Processes running the self-test's executable (ranks and their workers) below `root`.
fn selftests_below(root: u32) -> Vec<u32> {
    let me = std::fs::canonicalize(SELFTEST).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&me) {
            continue;
        }
        let mut p = pid;
        while let Some(parent) = parent_of(p) {
            if parent == root {
                found.push(pid);
                break;
            }
            if parent <= 1 {
                break;
            }
            p = parent;
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Starts `cmd` (the self-test with `--busy-marker`), waits until rank 0 has its workers busy,
/// SIGKILLs one serving rank, and returns the job's exit status, its output, how long it took
/// to end after the kill, and the self-test processes (ranks, workers) that were running then
/// and are still alive 5 s after the job ended.
fn kill_a_serving_rank(mut cmd: Command, marker: &Path) -> (Option<i32>, String, f64, Vec<u32>) {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the job starts");
    let group = child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    };
    let started = Instant::now();
    let rank0: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(marker)
            && let Ok(pid) = text.trim().parse()
        {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            kill_group();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the job never got busy: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ours = selftests_below(group);
    // A serving rank: a child of the launcher (mpirun, or Open MPI's orted in dynamic mode).
    let rank = ours.iter().copied().find(|&p| {
        p != rank0
            && parent_of(p).is_some_and(|q| ["mpirun", "orted"].contains(&command_name(q).as_str()))
    });
    let Some(rank) = rank else {
        kill_group();
        let _ = child.wait();
        panic!("no serving rank among {ours:?} (rank 0: {rank0})");
    };
    assert!(ours.len() >= 4, "ranks and workers running: {ours:?}");
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(rank as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = killed + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed().as_secs_f64();
    let timed_out = child.try_wait().unwrap().is_none();
    if timed_out {
        kill_group();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !timed_out,
        "the job still ran 60 s after a rank was killed:\n{text}"
    );
    let gone_by = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<u32> = ours.clone();
    while !left.is_empty() && Instant::now() < gone_by {
        left.retain(|&p| alive(p));
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &left {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(p as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    (out.status.code(), text, took, left)
}

/// Static mode: `mpirun` notices the lost rank and aborts the job at once.
#[test]
fn a_killed_serving_rank_ends_the_job_promptly_under_mpirun() {
    let dir = std::env::temp_dir().join(format!("multiproc-mpi-lost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("busy");
    let mut cmd = mpirun();
    cmd.args(["-n", "3", SELFTEST, "--busy-marker"])
        .arg(&marker);
    let (code, out, took, left) = kill_a_serving_rank(cmd, &marker);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("the job ended {took:.1} s after the kill, status {code:?}:\n{out}");
    assert!(left.is_empty(), "processes left behind: {left:?}\n{out}");
    assert!(code.is_some_and(|c| c != 0), "status {code:?}\n{out}");
    assert!(out.contains("exited on signal 9 (Killed)"), "{out}");
    assert!(!out.contains("the busy run finished"), "{out}");
    // mpirun's --timeout (150 s) did not end it: status 110 would say so.
    assert_ne!(code, Some(110), "{out}");
}

/// Dynamic mode: no `mpirun` watches the spawned servers, and Open MPI aborts only their
/// job; rank 0 notices the silence (`net::LOST_AFTER`, 10 s) and aborts with a clear message.
#[test]
fn a_killed_spawned_server_ends_the_job_promptly_in_dynamic_mode() {
    let dir = std::env::temp_dir().join(format!("multiproc-mpi-lost-dyn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("busy");
    let mut cmd = Command::new(SELFTEST);
    cmd.args(["--spawn", "2", "--busy-marker"])
        .arg(&marker)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("RUST_BACKTRACE", "0");
    let (code, out, took, left) = kill_a_serving_rank(cmd, &marker);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("the job ended {took:.1} s after the kill, status {code:?}:\n{out}");
    assert!(left.is_empty(), "processes left behind: {left:?}\n{out}");
    assert!(code.is_some_and(|c| c != 0), "status {code:?}\n{out}");
    assert!(
        out.contains("multiproc-mpi: rank 0: serving rank")
            && out.contains("has sent nothing for 10s"),
        "{out}"
    );
}
