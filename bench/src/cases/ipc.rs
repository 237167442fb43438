//! IPC: queues and pipes (issue 4). Python via `bench_queue.py` / `bench_pipe.py`; the
//! kernel limit from the probe; pinned and unpinned variants as peers.
//!
//! Servo's `ipc-channel` is the Rust peer (`ipc_channel*` in `peer`), over the same shapes.
//!
//! `ours` is unpinned for throughput cases and pinned to one CPU for the latency case (as the
//! issue asks); the other variant is reported as a peer.

use std::sync::Arc;
use std::time::Instant;

use multiproc::connection::socket_pipe;
use multiproc::{Connection, Process, Queue, pipe};
use serde_bytes::ByteBuf;

use crate::harness::{Case, Ctx, Row, get, median};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "queue_small_msgs",
            run: queue_small_msgs,
        },
        Case {
            name: "queue_bytes_64k",
            run: queue_bytes_64k,
        },
        Case {
            name: "queue_bytes_16m",
            run: queue_bytes_16m,
        },
        Case {
            name: "pipe_roundtrip",
            run: pipe_roundtrip,
        },
        Case {
            name: "pipe_bytes_1m",
            run: pipe_bytes_1m,
        },
        Case {
            name: "queue_mpmc",
            run: queue_mpmc,
        },
    ]
}

/// Which CPUs the parent and the child run on.
#[derive(Clone, Copy)]
enum Pin {
    None,
    Same,
}

fn pin_to(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        // SAFETY: `set` is a plain bitmask owned by this frame; the calls only read/write it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn unpin() {
    // SAFETY: as in `pin_to`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Pin {
    fn cpu(self) -> Option<usize> {
        match self {
            Pin::None => None,
            Pin::Same => Some(0),
        }
    }
}

/// One producer process puts `n` items made by `make`; the parent gets them all. Returns
/// seconds from the go signal to the last item.
fn queue_run<T, F>(n: usize, pin: Pin, make: F) -> f64
where
    T: serde::Serialize + serde::de::DeserializeOwned + 'static,
    F: Fn(usize) -> T + Send + 'static,
{
    pin_to(pin.cpu());
    let q: Queue<T> = Queue::new().expect("queue");
    let (go_rx, go_tx) = pipe(false).expect("pipe");
    let producer = q.clone();
    let child_cpu = pin.cpu();
    let mut p = Process::new(move || {
        pin_to(child_cpu);
        let _: u8 = go_rx.recv().expect("go");
        for i in 0..n {
            if producer.put(make(i)).is_err() {
                panic!("put failed");
            }
        }
    });
    p.start().expect("start");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    go_tx.send(&1u8).expect("go");
    for _ in 0..n {
        q.get().expect("get");
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(p.join().expect("join"), 0);
    unpin();
    dt
}

/// 200,000 `u64` from one producer process; messages per second.
fn queue_small_msgs(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("queue_small_msgs", "messages_per_s");
    let n = ctx.scale(200_000, 50_000);
    row.ours = Some(median(ctx.rounds(), || {
        n as f64 / queue_run(n, Pin::None, |i| i as u64)
    }));
    let same = median(ctx.rounds(), || {
        n as f64 / queue_run(n, Pin::Same, |i| i as u64)
    });
    row.peer.insert("ours_pin_same".into(), same);
    row.peer.insert(
        "ipc_channel".into(),
        median(ctx.rounds(), || ipc_channel_small(n)),
    );
    let py = ctx.python("bench_queue.py", &["--pin", "none,same"]);
    row.python = get(&py, "Queue_int_msgs_per_s_pin_none");
    if let Some(v) = get(&py, "Queue_int_msgs_per_s_pin_same") {
        row.peer.insert("python_pin_same".into(), v);
    }
    if let Some(v) = get(&py, "SimpleQueue_int_msgs_per_s_pin_none") {
        row.peer.insert("python_SimpleQueue".into(), v);
    }
    row
}

/// Bytes items: the producer shares one payload (an `Arc`, as Python puts the same `bytes`
/// object each time); each item received is a freshly allocated buffer, as in Python.
fn queue_bytes(ctx: &mut Ctx, case: &'static str, size: usize, n: usize, key: &str) -> Row {
    let mut row = Row::new(case, "MB_per_s");
    let payload = Arc::new(ByteBuf::from(vec![0xabu8; size]));
    row.ours = Some(median(ctx.rounds(), || {
        let payload = payload.clone();
        (n * size) as f64 / queue_run(n, Pin::None, move |_| Arc::clone(&payload)) / 1e6
    }));
    row.peer.insert(
        "ipc_channel_bytes".into(),
        median(ctx.rounds(), || ipc_channel_mbs(size, n)),
    );
    let py = ctx.python("bench_queue.py", &["--pin", "none,same"]);
    row.python = get(&py, &format!("Queue_{key}_MB_per_s_pin_none"));
    row.limit = ctx.limit("memcpy_GBps").map(|g| g * 1000.0);
    row
}

/// 64 KiB `bytes`-like items (`serde_bytes::ByteBuf`); MB/s.
fn queue_bytes_64k(ctx: &mut Ctx) -> Row {
    let n = ctx.scale(10_000, 2_000);
    queue_bytes(ctx, "queue_bytes_64k", 64 * 1024, n, "64KiB")
}

/// 16 MiB items; MB/s, against memcpy bandwidth.
fn queue_bytes_16m(ctx: &mut Ctx) -> Row {
    let n = ctx.scale(32, 8);
    queue_bytes(ctx, "queue_bytes_16m", 16 << 20, n, "16MiB")
}

/// Microseconds per 1-byte `send_bytes`/`recv_bytes` round trip over a duplex pipe.
fn roundtrip_us(n: usize, pin: Pin) -> f64 {
    link_roundtrip_us(Link::Pipe, n, pin)
}

/// [`roundtrip_us`] over `link` (`Link::Socket`: a Unix socket pair, as Python's duplex
/// `Pipe` is).
fn link_roundtrip_us(link: Link, n: usize, pin: Pin) -> f64 {
    pin_to(pin.cpu());
    let (a, b) = match link {
        Link::Pipe => pipe(true).expect("pipe"),
        _ => socket_pipe().expect("socket pipe"),
    };
    let child_cpu = pin.cpu();
    let mut p = Process::new(move || {
        pin_to(child_cpu);
        loop {
            let m = b.recv_bytes().expect("recv");
            if m.is_empty() {
                break;
            }
            b.send_bytes(&m).expect("send");
        }
    });
    p.start().expect("start");
    let mut buf = [0u8; 16];
    a.send_bytes(b"x").expect("send");
    a.recv_bytes_into(&mut buf).expect("recv");
    let t = Instant::now();
    for _ in 0..n {
        a.send_bytes(b"x").expect("send");
        a.recv_bytes_into(&mut buf).expect("recv");
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    a.send_bytes(b"").expect("stop");
    p.join().expect("join");
    unpin();
    us
}

/// The same ping-pong over two raw pipes with `read`/`write`, measured here so that pinning
/// is the same as ours.
fn raw_roundtrip_us(n: usize, pin: Pin) -> f64 {
    pin_to(pin.cpu());
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: `pipe` writes two descriptors into each array.
    unsafe {
        libc::pipe(a.as_mut_ptr());
        libc::pipe(b.as_mut_ptr());
    }
    let child_cpu = pin.cpu();
    let mut p = Process::new(move || {
        pin_to(child_cpu);
        let mut c = [0u8; 1];
        loop {
            // SAFETY: one byte from/to pipe descriptors open in this process.
            let k = unsafe { libc::read(a[0], c.as_mut_ptr().cast(), 1) };
            if k <= 0 || c[0] == 0 {
                break;
            }
            // SAFETY: as above.
            unsafe { libc::write(b[1], c.as_ptr().cast(), 1) };
        }
    });
    p.start().expect("start");
    let mut c = [1u8; 1];
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: one byte to/from pipe descriptors open in this process.
        unsafe {
            libc::write(a[1], c.as_ptr().cast(), 1);
            libc::read(b[0], c.as_mut_ptr().cast(), 1);
        }
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    c[0] = 0;
    // SAFETY: as above; then each descriptor is closed once.
    unsafe {
        libc::write(a[1], c.as_ptr().cast(), 1);
    }
    p.join().expect("join");
    for fd in a.into_iter().chain(b) {
        // SAFETY: closing descriptors this function opened, once each.
        unsafe { libc::close(fd) };
    }
    unpin();
    us
}

/// 1-byte ping-pong, pinned to one CPU; the unpinned figure as a peer.
fn pipe_roundtrip(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pipe_roundtrip", "us_per_roundtrip");
    let n = ctx.scale(50_000, 5_000);
    row.ours = Some(median(ctx.rounds(), || roundtrip_us(n, Pin::Same)));
    row.peer.insert(
        "ours_unpinned".into(),
        median(ctx.rounds(), || roundtrip_us(n, Pin::None)),
    );
    row.peer.insert(
        "ours_socket_pin_same".into(),
        median(ctx.rounds(), || {
            link_roundtrip_us(Link::Socket, n, Pin::Same)
        }),
    );
    row.peer.insert(
        "raw_pipe_pin_same".into(),
        median(ctx.rounds(), || raw_roundtrip_us(n, Pin::Same)),
    );
    row.peer.insert(
        "ipc_channel_pin_same".into(),
        median(ctx.rounds(), || ipc_channel_roundtrip(n, Pin::Same)),
    );
    let py = ctx.python("bench_pipe.py", &["--pin", "same,none"]);
    row.python = get(&py, "rt_us_bytes_duplex_socketpair_pin_same");
    if let Some(v) = get(&py, "rt_us_bytes_oneway_ospipe_pair_pin_same") {
        row.peer.insert("python_ospipe_pin_same".into(), v);
    }
    if let Some(v) = get(&py, "rt_us_bytes_duplex_socketpair_pin_none") {
        row.peer.insert("python_unpinned".into(), v);
    }
    row.limit = ctx.limit("pipe_roundtrip_us");
    row
}

/// One-way bandwidth of 1 MiB `send_bytes` messages; MB/s.
fn pipe_bytes_1m(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pipe_bytes_1m", "MB_per_s");
    let n = ctx.scale(2_000, 200);
    let size = 1 << 20;
    row.ours = Some(median(ctx.rounds(), || ours_pipe_mbs(size, n)));
    row.peer.insert(
        "ours_socket".into(),
        median(ctx.rounds(), || ours_link_mbs(Link::Socket, size, n)),
    );
    row.peer.insert(
        "ours_socket_out_of_band".into(),
        median(ctx.rounds(), || {
            ours_link_mbs(Link::SocketOutOfBand, size, n)
        }),
    );
    row.peer.insert(
        "ipc_channel_bytes".into(),
        median(ctx.rounds(), || ipc_channel_mbs(size, n)),
    );
    let py = ctx.python("bench_pipe.py", &["--pin", "same,none"]);
    row.python = get(&py, "bw_MB_per_s_1MiB_duplex_socketpair_pin_none");
    row.limit = ctx.limit("pipe_bandwidth_GBps").map(|g| g * 1000.0);
    row
}

/// Two producer processes, two consumer processes, small messages; total messages per
/// second, with each consumer checking that every producer's items arrive in order.
fn queue_mpmc(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("queue_mpmc", "messages_per_s");
    let per = ctx.scale(100_000, 25_000);
    row.ours = Some(median(ctx.rounds(), || {
        let q: Queue<(u32, u32)> = Queue::new().expect("queue");
        let done: Queue<u64> = Queue::new().expect("queue");
        let (go_rx, go_tx) = pipe(false).expect("pipe");
        let go_rx = std::sync::Arc::new(go_rx);
        let mut procs = Vec::new();
        for id in 0..2u32 {
            let q = q.clone();
            let go = go_rx.clone();
            procs.push(Process::new(move || {
                let _: u8 = go.recv().expect("go");
                for n in 0..per as u32 {
                    q.put((id, n)).expect("put");
                }
            }));
        }
        for _ in 0..2 {
            let q = q.clone();
            let done = done.clone();
            procs.push(Process::new(move || {
                let mut last = [None::<u32>; 2];
                let mut count = 0u64;
                loop {
                    let (id, n) = q.get().expect("get");
                    if id == u32::MAX {
                        break;
                    }
                    let slot = &mut last[id as usize];
                    assert!(slot.is_none_or(|l| n > l), "order broken");
                    *slot = Some(n);
                    count += 1;
                }
                done.put(count).expect("put");
            }));
        }
        for p in &mut procs {
            p.start().expect("start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t = Instant::now();
        go_tx.send(&1u8).expect("go");
        go_tx.send(&1u8).expect("go");
        for p in &mut procs[..2] {
            p.join().expect("join");
        }
        q.put((u32::MAX, 0)).expect("stop");
        q.put((u32::MAX, 0)).expect("stop");
        let total: u64 = (0..2).map(|_| done.get().expect("count")).sum();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(total, 2 * per as u64);
        for p in &mut procs[2..] {
            p.join().expect("join");
        }
        total as f64 / dt
    }));
    // Python's shared bench scripts have no MPMC case; this one is the harness's own.
    row.python = get(
        &ctx.python("bench_queue_mpmc.py", &["--method", "fork"]),
        "mpmc_msgs_per_s",
    );
    row
}

// ---------------------------------------------------------------------------------------------
// ipc-channel (Servo's), the Rust peer: the same shapes over its channels, forked children.

/// `n` `u64` from a child over an `IpcSender<u64>`; messages per second.
fn ipc_channel_small(n: usize) -> f64 {
    let (tx, rx) = ipc_channel::ipc::channel::<u64>().expect("ipc channel");
    let (go_rx, go_tx) = pipe(false).expect("pipe");
    let mut p = Process::new(move || {
        let _: u8 = go_rx.recv().expect("go");
        for i in 0..n {
            tx.send(i as u64).expect("send");
        }
    });
    p.start().expect("start");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    go_tx.send(&1u8).expect("go");
    for _ in 0..n {
        rx.recv().expect("recv");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    p.join().expect("join");
    rate
}

/// 1-byte ping-pong over two `IpcBytesSender`s; microseconds per round trip.
fn ipc_channel_roundtrip(n: usize, pin: Pin) -> f64 {
    pin_to(pin.cpu());
    let (to_child, child_rx) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let (child_tx, from_child) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let child_cpu = pin.cpu();
    let mut p = Process::new(move || {
        pin_to(child_cpu);
        loop {
            let m = child_rx.recv().expect("recv");
            if m.is_empty() {
                break;
            }
            child_tx.send(&m).expect("send");
        }
    });
    p.start().expect("start");
    to_child.send(b"x").expect("send");
    from_child.recv().expect("recv");
    let t = Instant::now();
    for _ in 0..n {
        to_child.send(b"x").expect("send");
        from_child.recv().expect("recv");
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    to_child.send(b"").expect("stop");
    p.join().expect("join");
    unpin();
    us
}

/// How [`ours_link_mbs`] connects the two processes.
#[derive(Clone, Copy)]
pub(super) enum Link {
    /// `pipe(true)`: two pipes.
    Pipe,
    /// `socket_pipe()`: a Unix socket pair, every message through the socket.
    Socket,
    /// `socket_pipe()` with `set_out_of_band(Some(64 KiB))`: large messages as sealed memfds.
    SocketOutOfBand,
}

/// One-way MB/s of `n` `send_bytes` messages of `size` bytes from a child over `pipe(true)`,
/// received with `recv_bytes_into` (`pipe_bytes_1m`, and `bandwidth_by_size` in `large.rs`).
/// The child sends and the parent receives, as in [`ipc_channel_mbs`], so that the two are
/// measured the same way round.
pub(super) fn ours_pipe_mbs(size: usize, n: usize) -> f64 {
    ours_link_mbs(Link::Pipe, size, n)
}

/// [`ours_pipe_mbs`] over `link`.
pub(super) fn ours_link_mbs(link: Link, size: usize, n: usize) -> f64 {
    let (a, b): (Connection, Connection) = match link {
        Link::Pipe => pipe(true).expect("pipe"),
        Link::Socket => socket_pipe().expect("socket pipe"),
        Link::SocketOutOfBand => {
            let (a, b) = socket_pipe().expect("socket pipe");
            a.set_out_of_band(Some(64 * 1024)).expect("out of band");
            (a, b)
        }
    };
    let mut p = Process::new(move || {
        let payload = vec![0xcdu8; size];
        let _ = b.recv_bytes().expect("go");
        for _ in 0..n {
            b.send_bytes(&payload).expect("send");
        }
    });
    p.start().expect("start");
    let mut buf = vec![0u8; size];
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    a.send_bytes(b"go").expect("go");
    for _ in 0..n {
        assert_eq!(a.recv_bytes_into(&mut buf).expect("recv"), size);
    }
    let mbs = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    p.join().expect("join");
    mbs
}

/// `n` messages of `size` bytes over an ipc-channel bytes channel; MB/s.
pub(super) fn ipc_channel_mbs(size: usize, n: usize) -> f64 {
    let (tx, rx) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let (go_rx, go_tx) = pipe(false).expect("pipe");
    let mut p = Process::new(move || {
        let payload = vec![0xabu8; size];
        let _: u8 = go_rx.recv().expect("go");
        for _ in 0..n {
            tx.send(&payload).expect("send");
        }
    });
    p.start().expect("start");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    go_tx.send(&1u8).expect("go");
    for _ in 0..n {
        assert_eq!(rx.recv().expect("recv").len(), size);
    }
    let rate = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    p.join().expect("join");
    rate
}
