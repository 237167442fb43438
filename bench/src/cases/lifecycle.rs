//! Process lifecycle: start + join, sequentially.

use multiproc::{StartMethod, get_context};

use crate::harness::{Case, Ctx, Row, alternate_us, get, raw_fork_wait};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "process_start_join",
            run: process_start_join,
        },
        Case {
            name: "spawn_join_result",
            run: spawn_join_result,
        },
    ]
}

/// Start and join a child that does nothing, under fork; microseconds per process.
fn process_start_join(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("process_start_join", "us_per_process");
    let n = ctx.scale(500, 100);
    let mut ours = || {
        let mut p = get_context(StartMethod::Fork).process(|| {});
        p.start().expect("start");
        assert_eq!(p.join().expect("join"), 0);
    };
    let medians = alternate_us(ctx.rounds(), n, &mut [&mut ours, &mut raw_fork_wait]);
    row.ours = Some(medians[0]);
    row.peer
        .insert("raw_fork_waitpid_same_binary".into(), medians[1]);
    row.python = get(
        &ctx.python("bench_lifecycle.py", &["--methods", "fork"]),
        "fork/us_per_process_median",
    );
    row.limit = ctx.limit("fork_exit_wait_us");
    row
}

/// `spawn(|| 42u64).join()` under fork: start, typed result back over a pipe, join; microseconds.
fn spawn_join_result(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("spawn_join_result", "us_per_process");
    let n = ctx.scale(500, 100);
    let mut ours = || {
        let v: u64 = get_context(StartMethod::Fork)
            .spawn(|| 42u64)
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(v, 42);
    };
    let medians = alternate_us(ctx.rounds(), n, &mut [&mut ours, &mut raw_fork_wait]);
    row.ours = Some(medians[0]);
    row.peer
        .insert("raw_fork_waitpid_same_binary".into(), medians[1]);
    row.limit = ctx.limit("fork_exit_wait_us");
    row
}
