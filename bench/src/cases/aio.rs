//! Async support (issue 15, `multiproc::aio` under tokio): a ping-pong awaited from a tokio
//! task against the same done with blocking calls (the `blocking` peer), and 1,000 processes
//! started and awaited from one task against `tokio::process` (the `tokio_process` peer).
//!
//! The child side of each ping-pong is the same blocking echo loop for both sides; only the
//! parent's calls differ. The two sides are measured in alternating rounds, a fresh child per
//! round, so that the shared machine's swings fall on both.

use std::time::Instant;

use multiproc::{Process, Queue, pipe};

use crate::cases::start_methods::EXIT_AT_ONCE;
use crate::harness::{Case, Ctx, Row};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "async_queue_roundtrip",
            run: async_queue_roundtrip,
        },
        Case {
            name: "async_pipe_roundtrip",
            run: async_pipe_roundtrip,
        },
        Case {
            name: "async_join_1000",
            run: async_join_1000,
        },
    ]
}

/// A current-thread runtime, the cheapest tokio has: what a latency-minded program would use.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Medians of `sides` (each measuring one round and returning microseconds per iteration),
/// measured in alternating rounds.
fn alternate(rounds: usize, sides: &mut [&mut dyn FnMut() -> f64]) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(rounds); sides.len()];
    for _ in 0..rounds {
        for (side, out) in sides.iter_mut().zip(&mut samples) {
            out.push(side());
        }
    }
    samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

/// Queue ping-pong: the parent puts a `u64` on one queue, a child gets it and puts it on
/// another, the parent gets it back. Microseconds per round trip, after a warm-up of 100.
fn queue_roundtrip_us(n: usize, asynchronous: bool) -> f64 {
    let ping: Queue<u64> = Queue::new().expect("queue");
    let pong: Queue<u64> = Queue::new().expect("queue");
    let (child_ping, child_pong) = (ping.clone(), pong.clone());
    let mut p = Process::new(move || {
        while let Ok(v) = child_ping.get() {
            if v == u64::MAX {
                break;
            }
            if child_pong.put(v).is_err() {
                panic!("put failed");
            }
        }
    });
    p.start().expect("start");
    let warm = 100;
    let us = if asynchronous {
        runtime().block_on(async {
            let mut t = Instant::now();
            for i in 0..(warm + n) as u64 {
                if i == warm as u64 {
                    t = Instant::now();
                }
                if ping.put_async(i).await.is_err() {
                    panic!("put failed");
                }
                assert_eq!(pong.get_async().await.expect("get"), i);
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
    } else {
        let mut t = Instant::now();
        for i in 0..(warm + n) as u64 {
            if i == warm as u64 {
                t = Instant::now();
            }
            if ping.put(i).is_err() {
                panic!("put failed");
            }
            assert_eq!(pong.get().expect("get"), i);
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    if ping.put(u64::MAX).is_err() {
        panic!("put failed");
    }
    assert_eq!(p.join().expect("join"), 0);
    us
}

/// A `u64` to a child process and back over two queues; microseconds per round trip, the
/// parent awaiting `put_async`/`get_async` in a current-thread tokio runtime. Peer
/// `blocking`: the same with `put`/`get`. Goal: within 1.5x of it.
fn async_queue_roundtrip(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("async_queue_roundtrip", "us_per_roundtrip");
    let n = ctx.scale(20_000, 2_000);
    let m = alternate(
        ctx.rounds(),
        &mut [&mut || queue_roundtrip_us(n, true), &mut || {
            queue_roundtrip_us(n, false)
        }],
    );
    row.ours = Some(m[0]);
    row.peer.insert("blocking".into(), m[1]);
    row
}

/// Pipe ping-pong: one byte to a child over a duplex pipe and back.
fn pipe_roundtrip_us(n: usize, asynchronous: bool) -> f64 {
    let (a, b) = pipe(true).expect("pipe");
    let mut p = Process::new(move || {
        loop {
            let m = b.recv_bytes().expect("recv");
            if m.is_empty() {
                break;
            }
            b.send_bytes(&m).expect("send");
        }
    });
    p.start().expect("start");
    let warm = 100;
    let us = if asynchronous {
        runtime().block_on(async {
            let mut t = Instant::now();
            for i in 0..warm + n {
                if i == warm {
                    t = Instant::now();
                }
                a.send_bytes_async(b"x").await.expect("send");
                assert_eq!(a.recv_bytes_async().await.expect("recv"), b"x");
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
    } else {
        let mut t = Instant::now();
        for i in 0..warm + n {
            if i == warm {
                t = Instant::now();
            }
            a.send_bytes(b"x").expect("send");
            assert_eq!(a.recv_bytes().expect("recv"), b"x");
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    a.send_bytes(b"").expect("stop");
    assert_eq!(p.join().expect("join"), 0);
    us
}

/// One byte to a child over a duplex pipe (a socket pair) and back; microseconds per round
/// trip, the parent awaiting `send_bytes_async`/`recv_bytes_async` in a current-thread tokio
/// runtime. Peer `blocking`: `send_bytes`/`recv_bytes`. Goal: within 1.5x of it.
fn async_pipe_roundtrip(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("async_pipe_roundtrip", "us_per_roundtrip");
    let n = ctx.scale(20_000, 2_000);
    let m = alternate(
        ctx.rounds(),
        &mut [&mut || pipe_roundtrip_us(n, true), &mut || {
            pipe_roundtrip_us(n, false)
        }],
    );
    row.ours = Some(m[0]);
    row.peer.insert("blocking".into(), m[1]);
    row
}

/// Starts `n` processes (the default start method, forkserver), then awaits each
/// `join_async` in turn from the one task; all `n` run at once, so the order of the awaits
/// does not matter. Milliseconds for all `n`.
fn ours_join_all_ms(n: usize) -> f64 {
    runtime().block_on(async {
        let t = Instant::now();
        let mut procs: Vec<Process> = (0..n)
            .map(|_| {
                let mut p = Process::new(|| {});
                p.start().expect("start");
                p
            })
            .collect();
        for p in &mut procs {
            assert_eq!(p.join_async().await.expect("join"), 0);
        }
        t.elapsed().as_secs_f64() * 1e3
    })
}

/// The same with `tokio::process`: `n` children running this binary, which exits at once,
/// then each `wait` awaited in turn.
fn tokio_join_all_ms(n: usize) -> f64 {
    let exe = std::env::current_exe().expect("current_exe");
    runtime().block_on(async {
        let t = Instant::now();
        let mut children: Vec<tokio::process::Child> = (0..n)
            .map(|_| {
                tokio::process::Command::new(&exe)
                    .arg(EXIT_AT_ONCE)
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for c in &mut children {
            assert!(c.wait().await.expect("wait").success());
        }
        t.elapsed().as_secs_f64() * 1e3
    })
}

/// 1,000 processes started and awaited concurrently from one tokio task; milliseconds for all.
/// Peer `tokio_process`: `tokio::process` spawning this same binary (exiting at once) and
/// awaiting it. Goal: faster. Also `ours_spawn`: ours under the spawn start method, which
/// re-executes this binary as `tokio_process` does.
fn async_join_1000(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("async_join_1000", "ms_for_all");
    let n = ctx.scale(1000, 200);
    // Warm-up: starts the forkserver and faults the binary into the page cache.
    ours_join_all_ms(10);
    tokio_join_all_ms(10);
    let spawn = multiproc::get_context(multiproc::StartMethod::Spawn);
    let mut ours_spawn = || {
        runtime().block_on(async {
            let t = Instant::now();
            let mut procs: Vec<Process> = (0..n)
                .map(|_| {
                    let mut p = spawn.process(|| {});
                    p.start().expect("start");
                    p
                })
                .collect();
            for p in &mut procs {
                assert_eq!(p.join_async().await.expect("join"), 0);
            }
            t.elapsed().as_secs_f64() * 1e3
        })
    };
    let m = alternate(
        ctx.rounds(),
        &mut [
            &mut || ours_join_all_ms(n),
            &mut || tokio_join_all_ms(n),
            &mut ours_spawn,
        ],
    );
    row.ours = Some(m[0]);
    row.peer.insert("tokio_process".into(), m[1]);
    row.peer.insert("ours_spawn".into(), m[2]);
    row
}
