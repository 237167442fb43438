//! Large payloads (issue 17): handing a shared buffer over without a copy, a pool `map` over
//! big arrays, and bandwidth by message size (the chart's data: `bench/plot_bandwidth.py`).
//! Python via `python/bench_large.py`; ipc-channel (its `IpcSharedMemory` and bytes channel)
//! as the Rust peer; the probe's memcpy as the limit where one applies.

use std::sync::Arc;
use std::time::Instant;

use ipc_channel::ipc::{self, IpcSharedMemory};
use multiproc::shared::{SharedBuffer, SharedSlice};
use multiproc::{Pool, Process, Queue, StartMethod, pipe};
use serde_bytes::ByteBuf;

use super::ipc::{Link, ipc_channel_mbs, ours_link_mbs, ours_pipe_mbs};
use crate::harness::{Case, Ctx, Row, get, median};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "shared_buffer_handover",
            run: shared_buffer_handover,
        },
        Case {
            name: "pool_map_large",
            run: pool_map_large,
        },
        Case {
            name: "bandwidth_by_size",
            run: bandwidth_by_size,
        },
        Case {
            name: "vec_bytes_1m",
            run: vec_bytes_1m,
        },
    ]
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn label(size: usize) -> String {
    if size >= MIB {
        format!("{}MiB", size / MIB)
    } else {
        format!("{}KiB", size / KIB)
    }
}

/// Reads every byte of `bytes` (as little-endian 8-byte words, summed): what "read there"
/// costs, the same function on every Rust side.
fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .fold(0u64, u64::wrapping_add)
}

fn touch(bytes: &[u8], read_all: bool) -> u64 {
    if read_all {
        sum_words(bytes)
    } else {
        u64::from(bytes[0]) + u64::from(bytes[bytes.len() - 1])
    }
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Microseconds per hand-over of one `size`-byte `SharedBuffer` (made and filled before the
/// clock starts) to a child over a `Connection`: send the handle, the child maps it and reads
/// the first and last byte (or every byte), answers; median of `rounds`.
fn ours_handover_us(size: usize, rounds: usize, read_all: bool) -> f64 {
    let mut buf = SharedBuffer::new(size).expect("buffer");
    buf.get_mut().expect("fresh").fill(0xab);
    let (a, b) = pipe(true).expect("pipe");
    let mut p = Process::new(move || {
        while let Some(got) = b.recv::<Option<SharedBuffer>>().expect("recv") {
            b.send(&touch(&got, read_all)).expect("send");
        }
    });
    p.start().expect("start");
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 2 {
        let t = Instant::now();
        a.send(&Some(&buf)).expect("send");
        let _: u64 = a.recv().expect("recv");
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    a.send(&None::<SharedBuffer>).expect("stop");
    p.join().expect("join");
    median_of(times)
}

/// The same with ipc-channel's `IpcSharedMemory`, which a send consumes: each round's block
/// is made (`from_byte`, a memset) before the clock starts.
fn ipc_channel_handover_us(size: usize, rounds: usize, read_all: bool) -> f64 {
    let (tx, rx) = ipc::channel::<Option<IpcSharedMemory>>().expect("ipc channel");
    let (back_tx, back_rx) = ipc::channel::<u64>().expect("ipc channel");
    let mut p = Process::new(move || {
        while let Some(got) = rx.recv().expect("recv") {
            back_tx.send(touch(&got, read_all)).expect("send");
        }
    });
    p.start().expect("start");
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 2 {
        let block = IpcSharedMemory::from_byte(0xab, size);
        let t = Instant::now();
        tx.send(Some(block)).expect("send");
        back_rx.recv().expect("recv");
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    tx.send(None).expect("stop");
    p.join().expect("join");
    median_of(times)
}

/// A 1 MiB, 16 MiB and 256 MiB buffer handed to another process and read there (first and
/// last byte); `ours` is 256 MiB in microseconds, every size a peer, with the full read
/// (every byte summed) beside it.
fn shared_buffer_handover(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("shared_buffer_handover", "us_per_handover_256MiB");
    let quick = ctx.quick;
    for (size, rounds) in [(MIB, 200), (16 * MIB, 100), (256 * MIB, 20)] {
        let rounds = if quick { (rounds / 4).max(5) } else { rounds };
        let read_rounds = (rounds / 4).max(3);
        let l = label(size);
        let ours = ours_handover_us(size, rounds, false);
        if size == 256 * MIB {
            row.ours = Some(ours);
        }
        row.peer.insert(format!("ours_{l}"), ours);
        row.peer.insert(
            format!("ours_read_all_{l}"),
            ours_handover_us(size, read_rounds, true),
        );
        row.peer.insert(
            format!("ipc_channel_{l}"),
            ipc_channel_handover_us(size, rounds, false),
        );
        row.peer.insert(
            format!("ipc_channel_read_all_{l}"),
            ipc_channel_handover_us(size, read_rounds, true),
        );
    }
    let py = ctx.python("bench_large.py", &["--only", "handover"]);
    row.python = get(&py, "handover_us_256MiB");
    for l in ["1MiB", "16MiB", "256MiB"] {
        for (key, name) in [
            ("handover_us", "python"),
            ("handover_read_us", "python_read_all"),
        ] {
            if let Some(v) = get(&py, &format!("{key}_{l}")) {
                row.peer.insert(format!("{name}_{l}"), v);
            }
        }
    }
    row
}

const TASKS: usize = 64;
const TASK_BYTES: usize = 4 * MIB;

fn sum_slice(part: SharedSlice<u64>) -> u64 {
    part.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

fn sum_bytes(part: ByteBuf) -> u64 {
    sum_words(&part)
}

/// 64 tasks, each given a 4 MiB array and returning its sum, on a pool of 2 workers (fork,
/// created and warmed up before the clock starts); MB/s of arrays summed. Ours: the 64
/// arrays are the chunks of one 256 MiB `SharedSlice<u64>`, so nothing is copied; peer
/// `ours_copied`: 64 `ByteBuf`s through the pool's pipes.
fn pool_map_large(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("pool_map_large", "MB_per_s");
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Fork)
        .build()
        .expect("pool");
    let words = TASK_BYTES / 8;
    let mut big = SharedSlice::<u64>::new(TASKS * words).expect("buffer");
    for (i, x) in big.get_mut().expect("fresh").iter_mut().enumerate() {
        *x = i as u64;
    }
    let parts = big.chunks(words).expect("chunks");
    let want: u64 = big.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    let total_mb = (TASKS * TASK_BYTES) as f64 / 1e6;
    pool.map(sum_slice, parts[..2].to_vec()).expect("warm-up");
    row.ours = Some(median(ctx.rounds(), || {
        let t = Instant::now();
        let sums = pool.map(sum_slice, parts.clone()).expect("map");
        let rate = total_mb / t.elapsed().as_secs_f64();
        assert_eq!(sums.iter().fold(0u64, |a, &x| a.wrapping_add(x)), want);
        rate
    }));
    let copies: Vec<ByteBuf> = parts
        .iter()
        .map(|p| ByteBuf::from(p.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()))
        .collect();
    drop(parts);
    drop(big);
    pool.map(sum_bytes, copies[..2].to_vec()).expect("warm-up");
    row.peer.insert(
        "ours_copied".into(),
        median(ctx.rounds(), || {
            let items = copies.clone();
            let t = Instant::now();
            let sums = pool.map(sum_bytes, items).expect("map");
            let rate = total_mb / t.elapsed().as_secs_f64();
            assert_eq!(sums.iter().fold(0u64, |a, &x| a.wrapping_add(x)), want);
            rate
        }),
    );
    let py = ctx.python("bench_large.py", &["--only", "pool_map"]);
    row.python = get(&py, "pool_map_bytes_sum_MB_per_s");
    if let Some(v) = get(&py, "pool_map_bytes_crc_MB_per_s") {
        row.peer.insert("python_bytes_crc32".into(), v);
    }
    if let Some(v) = get(&py, "pool_map_numpy_MB_per_s") {
        row.peer.insert("python_numpy".into(), v);
    }
    row.limit = ctx.limit("memcpy_GBps").map(|g| g * 1000.0);
    row
}

/// MB/s by message size (4 KiB to 64 MiB) for our `send_bytes`, ipc-channel's bytes channel,
/// Python's `send_bytes`, and a `SharedBuffer` handed over and read whole by the receiver
/// (`ours_shared_read_all`: size / (hand-over + reading every byte)). `ours` is 16 MiB over
/// our pipe. The chart is drawn from this row by `bench/plot_bandwidth.py`.
fn bandwidth_by_size(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("bandwidth_by_size", "MB_per_s_16MiB");
    let sizes = [4 * KIB, 64 * KIB, 256 * KIB, MIB, 16 * MIB, 64 * MIB];
    let rounds = ctx.rounds();
    for size in sizes {
        let n = (256 * MIB / size).clamp(8, 20_000);
        let n = if ctx.quick { (n / 8).max(4) } else { n };
        let l = label(size);
        let ours = median(rounds, || ours_pipe_mbs(size, n));
        if size == 16 * MIB {
            row.ours = Some(ours);
        }
        row.peer.insert(format!("ours_pipe_{l}"), ours);
        row.peer.insert(
            format!("ours_socket_{l}"),
            median(rounds, || ours_link_mbs(Link::Socket, size, n)),
        );
        if size >= 64 * KIB {
            row.peer.insert(
                format!("ours_socket_out_of_band_{l}"),
                median(rounds, || ours_link_mbs(Link::SocketOutOfBand, size, n)),
            );
        }
        row.peer.insert(
            format!("ipc_channel_{l}"),
            median(rounds, || ipc_channel_mbs(size, n)),
        );
        if size >= 64 * KIB {
            let handovers = (n / 4).clamp(3, 200);
            let us = ours_handover_us(size, handovers, true);
            row.peer
                .insert(format!("ours_shared_read_all_{l}"), size as f64 / us);
        }
    }
    let py = ctx.python("bench_large.py", &["--only", "bandwidth"]);
    row.python = get(&py, "bw_MB_per_s_16MiB");
    for size in sizes {
        let l = label(size);
        if let Some(v) = get(&py, &format!("bw_MB_per_s_{l}")) {
            row.peer.insert(format!("python_{l}"), v);
        }
    }
    row.limit = ctx.limit("memcpy_GBps").map(|g| g * 1000.0);
    row
}

/// One-way MB/s of `n` typed messages made by `make` (each `size` bytes of payload) sent to
/// a child with `Connection::send`, which decodes each with `recv::<T>()`: the encode and the
/// decode are both in the figure, unlike `pipe_bytes_1m`'s `send_bytes`/`recv_bytes_into`.
fn typed_pipe_mbs<T>(size: usize, n: usize, make: fn(usize) -> T) -> f64
where
    T: serde::Serialize + serde::de::DeserializeOwned + AsRef<[u8]> + 'static,
{
    let (a, b) = pipe(true).expect("pipe");
    let mut p = Process::new(move || {
        for _ in 0..n {
            let m: T = b.recv().expect("recv");
            assert_eq!(m.as_ref().len(), size);
        }
        b.send(&0u8).expect("send");
    });
    p.start().expect("start");
    let payload = make(size);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    for _ in 0..n {
        a.send(&payload).expect("send");
    }
    let _: u8 = a.recv().expect("done");
    let mbs = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    p.join().expect("join");
    mbs
}

/// The same through a `Queue<T>`: a child puts `n` items, this process gets them.
fn typed_queue_mbs<T>(size: usize, n: usize, make: fn(usize) -> T) -> f64
where
    T: serde::Serialize + serde::de::DeserializeOwned + AsRef<[u8]> + 'static,
{
    // Items are `Arc`s of one payload, so that the producer does not copy it per item.
    let q: Queue<Arc<T>> = Queue::new().expect("queue");
    let (go_rx, go_tx) = pipe(false).expect("pipe");
    let producer = q.clone();
    let mut p = Process::new(move || {
        let payload = Arc::new(make(size));
        let _: u8 = go_rx.recv().expect("go");
        for _ in 0..n {
            if producer.put(Arc::clone(&payload)).is_err() {
                panic!("put failed");
            }
        }
    });
    p.start().expect("start");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    go_tx.send(&1u8).expect("go");
    for _ in 0..n {
        assert_eq!((*q.get().expect("get")).as_ref().len(), size);
    }
    let mbs = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    p.join().expect("join");
    mbs
}

fn make_vec(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

fn make_byte_buf(size: usize) -> ByteBuf {
    ByteBuf::from(make_vec(size))
}

/// A plain `Vec<u8>` of 1 MiB through `Connection::send`/`recv` (`ours`) and `Queue::put`/`get`
/// (`ours_queue`), beside the same bytes as `serde_bytes::ByteBuf` (written and read as one
/// byte string), which was the fast way before plain `Vec<u8>` was; MB/s, encode and decode
/// included.
fn vec_bytes_1m(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("vec_bytes_1m", "MB_per_s");
    let size = MIB;
    let n = ctx.scale(500, 50);
    row.ours = Some(median(ctx.rounds(), || typed_pipe_mbs(size, n, make_vec)));
    row.peer.insert(
        "ours_byte_buf".into(),
        median(ctx.rounds(), || typed_pipe_mbs(size, n, make_byte_buf)),
    );
    row.peer.insert(
        "ours_queue".into(),
        median(ctx.rounds(), || typed_queue_mbs(size, n, make_vec)),
    );
    row.peer.insert(
        "ours_queue_byte_buf".into(),
        median(ctx.rounds(), || typed_queue_mbs(size, n, make_byte_buf)),
    );
    row.peer.insert(
        "ipc_channel_bytes".into(),
        median(ctx.rounds(), || ipc_channel_mbs(size, n)),
    );
    row
}
