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
