//! Start methods beyond fork: start + join of an empty child under spawn and forkserver.

use std::process::Command;

use multiproc::{StartMethod, get_context};

use crate::harness::{Case, Ctx, Row, alternate_us, get, median, us_per_iter};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "process_start_join_spawn",
            run: process_start_join_spawn,
        },
        Case {
            name: "process_start_join_forkserver",
            run: process_start_join_forkserver,
        },
    ]
}

/// The argument that makes this binary exit at once: the floor for re-executing it.
pub const EXIT_AT_ONCE: &str = "--exit-at-once";

fn start_join(method: StartMethod, n: usize, rounds: usize) -> f64 {
    let ctx = get_context(method);
    // Warm-up: starts the forkserver, faults the binary into the page cache.
    for _ in 0..2 {
        let mut p = ctx.process(|| {});
        p.start().expect("start");
        p.join().expect("join");
    }
    median(rounds, || {
        us_per_iter(n, || {
            let mut p = ctx.process(|| {});
            p.start().expect("start");
            assert_eq!(p.join().expect("join"), 0);
        })
    })
}

/// Start and join a child that does nothing, under spawn; microseconds per process.
/// Peers: procspawn (which also re-executes its binary) and a bare `posix_spawn` + exec + wait
/// of this same binary exiting at once (std's `Command`, which uses `posix_spawn`). The three
/// are measured in alternating rounds, so that the machine's swings fall on all of them.
fn process_start_join_spawn(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("process_start_join_spawn", "us_per_process");
    let n = ctx.scale(200, 40);
    let spawn = get_context(StartMethod::Spawn);
    let exe = std::env::current_exe().expect("current_exe");
    let medians = alternate_us(
        ctx.rounds(),
        n,
        &mut [
            &mut || {
                let mut p = spawn.process(|| {});
                p.start().expect("start");
                assert_eq!(p.join().expect("join"), 0);
            },
            &mut || {
                let status = Command::new(&exe).arg(EXIT_AT_ONCE).status().expect("exec");
                assert!(status.success());
            },
            &mut || {
                procspawn::spawn((), |()| ())
                    .join()
                    .expect("procspawn join");
            },
        ],
    );
    row.ours = Some(medians[0]);
    row.peer
        .insert("posix_spawn_exec_this_binary".to_owned(), medians[1]);
    row.peer.insert("procspawn".to_owned(), medians[2]);
    row.python = get(
        &ctx.python("bench_lifecycle.py", &["--methods", "spawn"]),
        "spawn/us_per_process_median",
    );
    row.limit = ctx.limit("posix_spawn_exec_wait_us");
    row
}

/// Start and join a child that does nothing, under forkserver; microseconds per process.
fn process_start_join_forkserver(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("process_start_join_forkserver", "us_per_process");
    let n = ctx.scale(500, 100);
    row.ours = Some(start_join(StartMethod::ForkServer, n, ctx.rounds()));
    row.python = get(
        &ctx.python("bench_lifecycle.py", &["--methods", "forkserver"]),
        "forkserver/us_per_process_median",
    );
    row.limit = ctx.limit("fork_exit_wait_us");
    row
}
