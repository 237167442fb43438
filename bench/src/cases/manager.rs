//! Managers: a DictProxy's set and get round trips, and two processes incrementing one
//! counter in the server (ours with `modify`, Python's with `m.Lock()` around `d['k'] += 1`).

use std::time::{Duration, Instant};

use multiproc::manager::{DictProxy, EventProxy, Manager};

use crate::harness::{Case, Ctx, Row, get, median};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "manager_dict_ops",
            run: manager_dict_ops,
        },
        Case {
            name: "manager_counter_2proc",
            run: manager_counter_2proc,
        },
    ]
}

const WAIT: Duration = Duration::from_secs(60);

/// `d.insert(k, i)` then `d.get(k)` loops, one process; microseconds per operation (the mean
/// of set and get), as `bench_manager.py` measures Python's `d['k'] = i` and `d['k']`.
fn manager_dict_ops(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("manager_dict_ops", "us_per_op");
    let n = ctx.scale(20_000, 5_000);
    let manager = Manager::start().expect("manager");
    let d = manager.dict::<String, u64>().expect("dict");
    let key = "k".to_string();
    d.insert(&key, &0).expect("insert");
    let (mut sets, mut gets) = (Vec::new(), Vec::new());
    row.ours = Some(median(ctx.rounds(), || {
        let t = Instant::now();
        for i in 0..n as u64 {
            d.insert(&key, &i).expect("insert");
        }
        let set = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(d.get(&key).expect("get"));
        }
        let got = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        sets.push(set);
        gets.push(got);
        (set + got) / 2.0
    }));
    let mut sets = sets.into_iter();
    let mut gets = gets.into_iter();
    row.peer.insert(
        "ours_us_per_set".into(),
        median(ctx.rounds(), || sets.next().unwrap_or(f64::NAN)),
    );
    row.peer.insert(
        "ours_us_per_get".into(),
        median(ctx.rounds(), || gets.next().unwrap_or(f64::NAN)),
    );
    // Each get or set is one request and one reply: a round trip between two processes is
    // the kernel's floor for it, whatever the protocol.
    row.limit = ctx.limit("pipe_roundtrip_us");
    let py = ctx.python("bench_manager.py", &[]);
    row.python = get(&py, "us_per_op");
    for k in ["us_per_set", "us_per_get"] {
        if let Some(v) = get(&py, k) {
            row.peer.insert(format!("python_{k}"), v);
        }
    }
    row
}

/// Two processes each add 1 to one dict entry M times with `modify` (run in the server);
/// microseconds per increment (wall time / total increments), the count checked. Python's
/// figure is `with lock: d['k'] += 1` with `m.Lock()`, the lossless way it has.
fn manager_counter_2proc(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("manager_counter_2proc", "us_per_increment");
    let m = ctx.scale(5_000, 2_000) as u64;
    let manager = Manager::start().expect("manager");
    row.ours = Some(median(ctx.rounds(), || {
        let d = manager.dict::<String, u64>().expect("dict");
        let go = manager.event().expect("event");
        let children: Vec<_> = (0..2)
            .map(|_| {
                multiproc::spawn_with_args(
                    |(d, go, m): (DictProxy<String, u64>, EventProxy, u64)| {
                        assert!(go.wait_timeout(WAIT).expect("wait"));
                        let key = "k".to_string();
                        for _ in 0..m {
                            d.modify(&key, |v: &mut u64, by: u64| *v += by, 1)
                                .expect("modify");
                        }
                    },
                    (d.clone(), go.clone(), m),
                )
                .expect("spawn")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        go.set().expect("set");
        for mut c in children {
            c.join_timeout(WAIT).expect("join");
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / (2 * m) as f64;
        let total = d.get(&"k".to_string()).expect("get");
        assert_eq!(total, Some(2 * m), "lost updates");
        us
    }));
    let py = ctx.python("bench_manager.py", &[]);
    row.python = get(&py, "counter_2proc_us_per_locked_incr");
    for k in [
        "counter_2proc_us_per_unlocked_incr",
        "counter_2proc_unlocked_lost_fraction",
    ] {
        if let Some(v) = get(&py, k) {
            row.peer.insert(format!("python_{k}"), v);
        }
    }
    row
}
