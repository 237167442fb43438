//! The MPI pool (`multiproc-mpi`) on `mpirun -n 3` on this machine (rank 0 and 2 serving
//! ranks, one worker each), against mpi4py.futures' `MPIPoolExecutor` on the same work
//! (`python/bench_cluster.py`) and, for 1 MiB arguments, a raw MPI ping-pong (the limit).
//!
//! This crate does not depend on MPI: the cases launch `mpirun` on the binaries of
//! `multiproc-mpi` (`cluster-bench`, `mpi-pingpong`) if they were built with
//! `cargo build --release -p multiproc-mpi`, and skip with a line saying why otherwise.
//! Each `mpirun` job runs once per harness run (all three cases come from it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Case, Ctx, Row, get};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "cluster_apply_async",
            run: |ctx| cluster(ctx, "cluster_apply_async", "tasks_per_s"),
        },
        Case {
            name: "cluster_map_small",
            run: |ctx| cluster(ctx, "cluster_map_small", "items_per_s"),
        },
        Case {
            name: "cluster_bytes_1m",
            run: |ctx| cluster(ctx, "cluster_bytes_1m", "mb_per_s"),
        },
    ]
}

/// Where `multiproc-mpi`'s release binaries are: `$CARGO_TARGET_DIR/release`, else the
/// workspace's `target/release`.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("release")
}

/// Why the cluster cases cannot run here, if they cannot.
fn missing() -> Option<String> {
    let mpirun = Command::new("mpirun").arg("--version").output();
    if !mpirun.is_ok_and(|o| o.status.success()) {
        return Some(
            "mpirun not found (Open MPI: apt-get install openmpi-bin libopenmpi-dev)".into(),
        );
    }
    for bin in ["cluster-bench", "mpi-pingpong"] {
        let path = release_dir().join(bin);
        if !path.exists() {
            return Some(format!(
                "{} not built (cargo build --release -p multiproc-mpi)",
                path.display()
            ));
        }
    }
    None
}

/// `mpirun` as the tests run it on a small shared machine: root allowed, more ranks than
/// cores, ranks that yield when idle (for both sides alike).
fn mpirun(n: u32) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--timeout", "900", "--oversubscribe", "-n", &n.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1");
    cmd
}

fn cluster(ctx: &mut Ctx, case: &'static str, unit: &'static str) -> Row {
    let mut row = Row::new(case, unit);
    if let Some(why) = missing() {
        eprintln!("bench: {case} skipped: {why}");
        return row;
    }
    let quick: &[&str] = if ctx.quick { &["--quick"] } else { &[] };
    let ours = ctx.external(
        "mpirun -n 3 cluster-bench --json",
        mpirun(3)
            .arg(release_dir().join("cluster-bench"))
            .arg("--json")
            .args(quick),
    );
    row.ours = get(&ours, &format!("{case}/median"));
    if let Some(local) = get(&ours, &format!("{case}/local_median")) {
        row.peer.insert("ours_local_pool_2_workers".into(), local);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/bench_cluster.py");
    let mpi4py = ctx.external(
        "mpirun -n 3 python3 -m mpi4py.futures bench_cluster.py",
        mpirun(3)
            .args(["python3", "-m", "mpi4py.futures"])
            .arg(script)
            .args(quick),
    );
    if mpi4py == Value::Null {
        eprintln!(
            "bench: {case}: no mpi4py figure (pip install mpi4py, built against the same Open MPI)"
        );
    }
    row.python = get(&mpi4py, &format!("{case}/median"));
    if case == "cluster_bytes_1m" {
        let raw = ctx.external(
            "mpirun -n 2 mpi-pingpong --json",
            mpirun(2)
                .arg(release_dir().join("mpi-pingpong"))
                .arg("--json")
                .args(quick),
        );
        row.limit = get(&raw, "pingpong_1m_mb_per_s");
    }
    row
}
