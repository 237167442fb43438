//! `multiproc::aio`: every future under tokio's current-thread and multi-thread runtimes,
//! under async-io's `block_on` and under smol's multi-threaded executor, across processes under every start method: results
//! arrive, many waits share one task, futures dropped at seeded random points lose nothing,
//! and a peer killed while awaited is an error, never a hang.
//!
//! Every body runs once per runtime ([`on_each_runtime`]); every wait is bounded by
//! [`bounded`] (a timer raced against the future); a `Reaper` kills and reaps children.
#![cfg(any(feature = "tokio", feature = "async-io"))]

use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use multiproc::connection::{Address, Listener, RecvError};
use multiproc::queue::{GetError, PutError};
use multiproc::{
    Barrier, Condition, Connection, Event, JoinError, Lock, Process, Queue, RLock, SimpleQueue,
    pipe,
};
use serde_bytes::ByteBuf;

mod common;
use common::{Rng, WAIT};

/// The runtimes each body runs under.
#[derive(Clone, Copy, Debug)]
enum Rt {
    TokioCurrentThread,
    TokioMultiThread,
    #[cfg(feature = "async-io")]
    AsyncIo,
    /// smol's executor with two threads running it, the body a spawned task (async-io's
    /// reactor underneath, as with `AsyncIo`, but woken through a real multi-threaded
    /// executor's wakers rather than `block_on`'s).
    #[cfg(feature = "async-io")]
    Smol,
}

const RUNTIMES: &[Rt] = &[
    Rt::TokioCurrentThread,
    Rt::TokioMultiThread,
    #[cfg(feature = "async-io")]
    Rt::AsyncIo,
    #[cfg(feature = "async-io")]
    Rt::Smol,
];

/// Runs `fut` as a task of a smol executor that this thread and one more run; a panic in
/// the body is caught in the task and raised again here.
#[cfg(feature = "async-io")]
fn run_on_smol<F: Future<Output = ()> + Send + 'static>(fut: F) {
    use smol::future::FutureExt;
    let ex = smol::Executor::new();
    let task = ex.spawn(std::panic::AssertUnwindSafe(fut).catch_unwind());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| smol::block_on(ex.run(stopped.recv())));
        let outcome = smol::block_on(ex.run(task));
        drop(stop);
        outcome
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Rt {
    /// Runs `fut` to completion: on the multi-thread runtime as a spawned task (so on a
    /// worker thread, and the future must be `Send`).
    fn run<F: Future<Output = ()> + Send + 'static>(self, fut: F) {
        match self {
            Rt::TokioCurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut),
            Rt::TokioMultiThread => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                if let Err(e) = rt.block_on(rt.spawn(fut)) {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            #[cfg(feature = "async-io")]
            Rt::AsyncIo => async_io::block_on(fut),
            #[cfg(feature = "async-io")]
            Rt::Smol => run_on_smol(fut),
        }
    }

    /// Runs `fut`, which need not be `Send`, to completion on this thread (on the
    /// multi-thread runtime through `block_on`: the workers drive IO and timers).
    fn run_local<F: Future<Output = ()>>(self, fut: F) {
        match self {
            Rt::TokioCurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut),
            Rt::TokioMultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut),
            #[cfg(feature = "async-io")]
            Rt::AsyncIo => async_io::block_on(fut),
            // A local executor on this thread: the stream is not `Send`.
            #[cfg(feature = "async-io")]
            Rt::Smol => {
                let ex = smol::LocalExecutor::new();
                smol::block_on(ex.run(fut));
            }
        }
    }

    async fn sleep(self, d: Duration) {
        match self {
            Rt::TokioCurrentThread | Rt::TokioMultiThread => tokio::time::sleep(d).await,
            #[cfg(feature = "async-io")]
            Rt::AsyncIo | Rt::Smol => {
                async_io::Timer::after(d).await;
            }
        }
    }
}

/// Runs the body `f(rt)` under every runtime in turn.
fn on_each_runtime<F, Fut>(f: F)
where
    F: Fn(Rt) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    for &rt in RUNTIMES {
        eprintln!("runtime: {rt:?}");
        rt.run(f(rt));
    }
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls both; returns the first to finish, dropping the other (the cancellation under test).
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}

/// `fut`'s output, failing the test if it takes longer than [`WAIT`].
async fn bounded<T>(rt: Rt, fut: impl Future<Output = T>) -> T {
    match race(fut, rt.sleep(WAIT)).await {
        Either::Left(x) => x,
        Either::Right(()) => panic!("an awaited operation did not finish within {WAIT:?}"),
    }
}

/// The next item of `stream`.
async fn next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Awaits every future at once in this one task; their outputs in order.
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

// ---- child targets (non-capturing, so they run under every start method) ----

fn square(i: u64) -> u64 {
    i * i
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

/// `n` bytes, as one byte string (element by element is slow in debug builds), with marks
/// at both ends so that a shifted or truncated copy does not compare equal.
fn big_value(n: usize) -> ByteBuf {
    let mut v = vec![0xa5u8; n];
    if let Some(first) = v.first_mut() {
        *first = (n % 251) as u8;
    }
    if let Some(last) = v.last_mut() {
        *last = (n % 241) as u8;
    }
    ByteBuf::from(v)
}

fn sleep_long() {
    std::thread::sleep(Duration::from_secs(60));
}

/// Puts `0..n` with short random pauses, so that the getter waits at varied points.
fn put_numbers((q, n, seed): (Queue<u32>, u32, u64)) {
    let mut rng = Rng::from_seed(seed);
    for i in 0..n {
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
        }
        q.put(i).unwrap();
    }
}

/// Gets `n` items slowly from `input` and puts their sum on `output`.
fn sum_slowly((input, output, n): (Queue<u32>, Queue<u64>, u32)) {
    let mut sum = 0u64;
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(300));
        sum += u64::from(input.get_timeout(WAIT).unwrap());
    }
    output.put(sum).unwrap();
}

/// Echoes each message back until `None`.
fn echo(conn: Connection) {
    while let Ok(Some(bytes)) = conn.recv::<Option<ByteBuf>>() {
        conn.send(&bytes).unwrap();
    }
}

/// The message `send_messages` sends as number `i`: its length varies from a few bytes to
/// several hundred KiB (larger than a pipe's buffer), so receives stop part-way through.
fn message(i: u32, rng: &mut Rng) -> ByteBuf {
    let len = match rng.below(4) {
        0 => rng.below(16),
        1 => rng.below(5000),
        2 => rng.below(70_000),
        _ => 100_000 + rng.below(300_000),
    } as usize;
    ByteBuf::from(vec![i as u8; len])
}

/// Sends `n` messages of varied sizes (see [`message`]) with short random pauses, written in
/// pieces so that the receiver sees partial frames.
fn send_messages((conn, n, seed): (Connection, u32, u64)) {
    let mut rng = Rng::from_seed(seed);
    for i in 0..n {
        let m = message(i, &mut rng);
        conn.send(&(i, m)).unwrap();
        if rng.below(3) == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
        }
    }
    // Until the parent has everything: a forked child's exit would not close the parent's
    // copies anyway, and this keeps the end open while the parent reads.
    let _ = conn.recv::<()>();
}

/// Connects to the listener at `path` (with the inherited authkey) and sends `i`.
fn connect_and_send((path, i): (PathBuf, u32)) -> bool {
    let conn = multiproc::connection::client(&Address::Unix(path)).unwrap();
    conn.send(&i).is_ok()
}

fn set_later(ev: multiproc::Event) {
    std::thread::sleep(Duration::from_millis(30));
    ev.set();
}

fn release_later(sem: multiproc::Semaphore) {
    std::thread::sleep(Duration::from_millis(30));
    sem.release();
}

/// Takes `n` items, marking each done.
fn work_through((q, n): (multiproc::JoinableQueue<u32>, u32)) {
    for _ in 0..n {
        q.get_timeout(WAIT).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        q.task_done().unwrap();
    }
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn hold_queue(_q: Queue<u32>) {
    std::thread::sleep(Duration::from_secs(60));
}

fn hold_connection(_c: Connection) {
    std::thread::sleep(Duration::from_secs(60));
}

/// Takes the lock (and the recursive one), says so, holds both for `hold_ms`, releases.
fn hold_locks((lock, rlock, holding, hold_ms): (Lock, RLock, multiproc::Event, u64)) {
    let _g = lock.acquire().unwrap();
    let _r = rlock.acquire().unwrap();
    holding.set();
    std::thread::sleep(Duration::from_millis(hold_ms));
}

/// Takes and releases both locks until `stop` is set, holding them a random 0-3 ms and
/// pausing up to 300 us between, so that the parent's acquires (and its drops of them) meet the
/// locks held, free, and changing hands. Sets `started` once it first holds them.
fn hammer_locks((lock, rlock, started, stop, seed): (Lock, RLock, Event, Event, u64)) {
    let mut rng = Rng::from_seed(seed);
    while !stop.is_set() {
        {
            let _g = lock.acquire().unwrap();
            let _r = rlock.acquire().unwrap();
            started.set();
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
        }
        std::thread::sleep(Duration::from_micros(rng.below(300)));
    }
}

/// Sets `ready` to 1 under the condition's lock after a moment, and notifies every waiter.
fn notify_later((ready, cond): (multiproc::Value<u32>, Condition)) {
    std::thread::sleep(Duration::from_millis(30));
    let mut g = cond.acquire().unwrap();
    ready.set_with(g.lock_guard_mut(), 1).unwrap();
    g.notify_all();
}

/// Notifies, says so, and stays holding the condition's lock (to be killed holding it).
fn notify_and_hold((cond, holding): (Condition, Event)) {
    let g = cond.acquire().unwrap();
    g.notify_all();
    holding.set();
    std::thread::sleep(Duration::from_secs(60));
    drop(g);
}

fn barrier_wait(b: Barrier) {
    b.wait().unwrap();
}

/// Waits at the barrier, expecting it to be broken (by a party that was killed).
fn barrier_wait_then_sleep(b: Barrier) {
    let _ = b.wait();
    std::thread::sleep(Duration::from_secs(60));
}

fn kill9(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Echoes each number from `ping` to `pong` with blocking calls until `u32::MAX`, pausing
/// now and then for a random few microseconds so that the other side's waits begin at varied
/// points (before, during and after this side's put).
fn echo_numbers((ping, pong, seed): (Queue<u32>, Queue<u32>, u64)) {
    let mut rng = Rng::from_seed(seed);
    loop {
        let i = ping.get().unwrap();
        if i == u32::MAX {
            break;
        }
        if rng.below(3) == 0 {
            let pause = Instant::now() + Duration::from_micros(rng.below(150));
            while Instant::now() < pause {
                std::hint::spin_loop();
            }
        }
        pong.put(i).unwrap();
    }
}

/// The fallback recheck of queue waits, in the copy of the test that
/// [`with_long_recheck`] starts: far longer than any round trip may take.
const LONG_RECHECK_MS: u64 = 30_000;

/// A round trip taking this long waited for the recheck: a wake-up was lost.
const LOST: Duration = Duration::from_secs(8);

/// Unless this process already runs with it, runs the test `module::name` again in a fresh
/// copy of this binary with the queue waits' fallback recheck set to [`LONG_RECHECK_MS`]
/// (`MULTIPROC_TEST_RECHECK_MS`, inherited by the children it starts), waits for it (at
/// most five minutes) and fails if it failed or did not run; returns `true` then, and the
/// caller returns at once.
fn with_long_recheck(module: &str, name: &str) -> bool {
    const VAR: &str = "MULTIPROC_TEST_RECHECK_MS";
    if std::env::var_os(VAR).is_some() {
        return false;
    }
    let path = match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([path.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, LONG_RECHECK_MS.to_string())
        .env("MULTIPROC_TEST_ALONE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{path} with a long recheck did not finish in five minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    print!("{out}");
    assert!(
        status.success(),
        "{path} with a long recheck failed: {status}"
    );
    assert!(
        out.contains("1 passed"),
        "{path} did not run in the copy:\n{out}"
    );
    true
}

fn seed_of(rng: &mut Rng) -> u64 {
    rng.next() | 1
}

fn socket_path(tag: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("multiproc-aio-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

start_method_matrix! {
    /// The defect of `async_queue_roundtrip` (BENCHMARKS.md): a wake-up lost between a put
    /// and a waiting get cost that get the 50 ms recheck. With a recheck of 30 s, any lost
    /// wake-up shows as a round trip of seconds: the parent awaits each reply, the child
    /// gets and puts with blocking calls (so both the event descriptor and the futex path
    /// are crossed), at varied timings.
    #[test]
    fn round_trips_never_wait_for_the_recheck() {
        if with_long_recheck(module_path!(), "round_trips_never_wait_for_the_recheck") {
            return;
        }
        let _r = common::Reaper::new();
        on_each_runtime(|rt| {
            let seed = 0x1057_3a4e;
            async move {
                let ping: Queue<u32> = Queue::new().unwrap();
                let pong: Queue<u32> = Queue::new().unwrap();
                let mut p =
                    Process::with_args(echo_numbers, (ping.clone(), pong.clone(), seed));
                p.start().unwrap();
                for i in 0..1500 {
                    let t = Instant::now();
                    ping.put_async(i).await.unwrap();
                    match race(pong.get_async(), rt.sleep(LOST)).await {
                        Either::Left(got) => assert_eq!(got.unwrap(), i),
                        Either::Right(()) => panic!("round trip {i} lost its wake-up"),
                    }
                    assert!(t.elapsed() < LOST, "round trip {i} took {:?}", t.elapsed());
                }
                ping.put_async(u32::MAX).await.unwrap();
                bounded(rt, p.join_async()).await.unwrap();
            }
        });
    }

    #[test]
    fn pool_results_and_executor_futures_complete_as_futures_and_a_stream() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let pool = multiproc::Pool::new(2).unwrap();
            let mut r = pool.apply_async(nap_ms, 40);
            // Dropped while the task runs: the value stays for the next get.
            match race(r.get_async(), rt.sleep(Duration::from_millis(5))).await {
                Either::Left(v) => panic!("a 40 ms task finished in 5 ms: {v:?}"),
                Either::Right(()) => {}
            }
            assert_eq!(bounded(rt, r.get_async()).await.unwrap(), 40);
            pool.close();
            pool.join().unwrap();

            let ex = multiproc::ProcessPoolExecutor::new(2).unwrap();
            let futures = vec![ex.submit(nap_ms, 300), ex.submit(nap_ms, 1), ex.submit(nap_ms, 100)];
            let mut stream = multiproc::aio::as_completed(futures);
            let mut order = Vec::new();
            while let Some((i, v)) = bounded(rt, poll_fn(|cx| {
                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
            }))
            .await
            {
                order.push((i, v.unwrap()));
            }
            // Each outcome with its index; the 1 ms task (index 1) before the 300 ms one.
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![(0, 300), (1, 1), (2, 100)]);
            let place = |i| order.iter().position(|&(j, _)| j == i).unwrap();
            assert!(place(1) < place(0), "{order:?}");
            ex.shutdown(true, false);
        });
    }

    #[test]
    fn event_semaphore_and_joinable_join_wait_for_a_child() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let ev = multiproc::Event::new().unwrap();
            let mut p = Process::with_args(set_later, ev.clone());
            p.start().unwrap();
            bounded(rt, ev.wait_async()).await.unwrap();
            assert!(ev.is_set());
            bounded(rt, p.join_async()).await.unwrap();

            let sem = multiproc::Semaphore::new(0).unwrap();
            let mut p = Process::with_args(release_later, sem.clone());
            p.start().unwrap();
            bounded(rt, sem.acquire_async()).await.unwrap();
            assert_eq!(sem.value(), 0);
            bounded(rt, p.join_async()).await.unwrap();

            let q: multiproc::JoinableQueue<u32> = multiproc::JoinableQueue::new().unwrap();
            for i in 0..20 {
                q.put_async(i).await.unwrap();
            }
            let mut p = Process::with_args(work_through, (q.clone(), 20));
            p.start().unwrap();
            bounded(rt, q.join_async()).await.unwrap();
            assert_eq!(q.unfinished_tasks(), 0);
            bounded(rt, p.join_async()).await.unwrap();
        });
    }

    #[test]
    fn join_async_returns_values_exit_codes_and_large_values() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let mut h = multiproc::spawn_with_args(square, 12u64).unwrap();
            assert_eq!(bounded(rt, h.join_async()).await.unwrap(), 144);
            assert!(matches!(h.join_async().await, Err(JoinError::AlreadyJoined)));

            let mut p = Process::with_args(exit_with, 7);
            p.start().unwrap();
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), 7);

            // Larger than the pipe's buffer: the child cannot exit until it is read.
            let mut h = multiproc::spawn_with_args(big_value, 3 << 20).unwrap();
            let v = bounded(rt, h.join_async()).await.unwrap();
            assert_eq!(v, big_value(3 << 20));
        });
    }

    #[test]
    fn many_joins_at_once_in_one_task() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let mut handles: Vec<_> = (0..16u64)
                .map(|i| multiproc::spawn_with_args(square, i).unwrap())
                .collect();
            let results = bounded(rt, join_all(handles.iter_mut().map(|h| h.join_async()).collect())).await;
            let values: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
            assert_eq!(values, (0..16u64).map(square).collect::<Vec<_>>());
            assert!(multiproc::active_children().is_empty());
        });
    }

    #[test]
    fn a_killed_child_is_an_error_for_every_future_awaiting_it() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            // A join.
            let mut h = multiproc::spawn(sleep_long).unwrap();
            // The join borrows the handle, so the child is killed by pid.
            let pid = h.pid() as i32;
            let killer = async move {
                rt.sleep(Duration::from_millis(30)).await;
                kill9(pid);
            };
            let (joined, ()) = bounded(rt, async { tokio::join!(h.join_async(), killer) }).await;
            assert!(matches!(joined, Err(JoinError::Signal(9))), "{joined:?}");

            // A get: the child held the only other handle of the queue.
            let q: Queue<u32> = Queue::new().unwrap();
            let mut p = Process::with_args(hold_queue, q.clone());
            p.start().unwrap();
            let pid = p.pid().unwrap() as i32;
            let killer = async move {
                rt.sleep(Duration::from_millis(30)).await;
                kill9(pid);
            };
            let (got, ()) = bounded(rt, async { tokio::join!(q.get_async(), killer) }).await;
            assert!(matches!(got, Err(GetError::Disconnected)), "{got:?}");
            bounded(rt, p.join_async()).await.unwrap();

            // A receive: the child held the other end.
            let (a, b) = pipe(true).unwrap();
            let mut p = Process::with_args(hold_connection, b);
            p.start().unwrap();
            let pid = p.pid().unwrap() as i32;
            let killer = async move {
                rt.sleep(Duration::from_millis(30)).await;
                kill9(pid);
            };
            let (got, ()) = bounded(rt, async { tokio::join!(a.recv_async::<u32>(), killer) }).await;
            assert!(matches!(got, Err(RecvError::Disconnected)), "{got:?}");
            bounded(rt, p.join_async()).await.unwrap();
        });
    }

    #[test]
    fn get_async_takes_every_item_from_a_child_then_reports_disconnected() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("get_async_takes_every_item");
        for &rt in RUNTIMES {
            let seed = seed_of(&mut rng);
            rt.run(async move {
                let q: Queue<u32> = Queue::new().unwrap();
                let mut p = Process::with_args(put_numbers, (q.clone(), 300, seed));
                p.start().unwrap();
                for i in 0..300 {
                    assert_eq!(bounded(rt, q.get_async()).await.unwrap(), i);
                }
                bounded(rt, p.join_async()).await.unwrap();
                assert!(matches!(bounded(rt, q.get_async()).await, Err(GetError::Disconnected)));
            });
        }
    }

    #[test]
    fn gets_dropped_at_random_points_lose_no_item() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("gets_dropped_at_random_points_lose_no_item");
        for &rt in RUNTIMES {
            let seed = seed_of(&mut rng);
            let mut rng = Rng::from_seed(seed_of(&mut rng));
            rt.run(async move {
                let q: Queue<u32> = Queue::new().unwrap();
                let mut p = Process::with_args(put_numbers, (q.clone(), 400, seed));
                p.start().unwrap();
                let mut next = 0;
                let mut dropped = 0;
                while next < 400 {
                    let patience = Duration::from_micros(rng.below(1500));
                    match bounded(rt, race(q.get_async(), rt.sleep(patience))).await {
                        Either::Left(item) => {
                            assert_eq!(item.unwrap(), next);
                            next += 1;
                        }
                        Either::Right(()) => dropped += 1,
                    }
                }
                eprintln!("{dropped} gets dropped while pending");
                bounded(rt, p.join_async()).await.unwrap();
                assert!(q.empty());
            });
        }
    }

    #[test]
    fn put_async_into_a_bounded_queue_waits_for_room() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let q: Queue<u32> = Queue::with_maxsize(2).unwrap();
            let sums: Queue<u64> = Queue::new().unwrap();
            let mut p = Process::with_args(sum_slowly, (q.clone(), sums.clone(), 200));
            p.start().unwrap();
            for i in 0..200 {
                bounded(rt, q.put_async(i)).await.unwrap();
            }
            assert_eq!(bounded(rt, sums.get_async()).await.unwrap(), (0..200u64).sum::<u64>());
            bounded(rt, p.join_async()).await.unwrap();
        });
    }

    #[test]
    fn send_and_recv_async_with_a_child_including_large_messages() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let (a, b) = pipe(true).unwrap();
            let mut p = Process::with_args(echo, b);
            p.start().unwrap();
            for len in [0usize, 10, 4000, 70_000, 1 << 20, 3] {
                let m = big_value(len);
                // Sent while the echo comes back: a large message fills both pipes unless the
                // two directions are driven at once.
                let outgoing = Some(m.clone());
                let (sent, got) = bounded(rt, async {
                    tokio::join!(a.send_async(&outgoing), a.recv_async::<ByteBuf>())
                })
                .await;
                sent.unwrap();
                assert_eq!(got.unwrap(), m);
            }
            a.send(&None::<ByteBuf>).unwrap();
            bounded(rt, p.join_async()).await.unwrap();
        });
    }

    #[test]
    fn recvs_dropped_at_random_points_lose_no_message_and_no_part_of_one() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("recvs_dropped_at_random_points");
        for &rt in RUNTIMES {
            let seed = seed_of(&mut rng);
            let mut rng = Rng::from_seed(seed_of(&mut rng));
            rt.run(async move {
                let (a, b) = pipe(true).unwrap();
                let mut p = Process::with_args(send_messages, (b, 120, seed));
                p.start().unwrap();
                let mut expected = Rng::from_seed(seed);
                let mut next = 0;
                let mut dropped = 0;
                while next < 120 {
                    let patience = Duration::from_micros(rng.below(2000));
                    match bounded(rt, race(a.recv_async::<(u32, ByteBuf)>(), rt.sleep(patience))).await {
                        Either::Left(got) => {
                            let (i, m) = got.unwrap();
                            assert_eq!(i, next);
                            assert!(m == message(i, &mut expected), "message {i} altered");
                            // Keep the sender's pauses in step with ours.
                            if expected.below(3) == 0 {
                                expected.below(3000);
                            }
                            next += 1;
                        }
                        Either::Right(()) => dropped += 1,
                    }
                }
                eprintln!("{dropped} receives dropped while pending");
                a.send(&()).unwrap();
                bounded(rt, p.join_async()).await.unwrap();
            });
        }
    }

    #[test]
    fn accept_async_takes_every_client_even_when_dropped_at_random_points() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("accept_async_takes_every_client");
        for (k, &rt) in RUNTIMES.iter().enumerate() {
            let mut rng = Rng::from_seed(seed_of(&mut rng));
            let tag = format!("accept-{k}-{}", module_path!().replace("::", "-"));
            rt.run(async move {
                let path = socket_path(&tag);
                let listener = Listener::bind(Address::Unix(path.clone())).unwrap();
                let mut clients: Vec<_> = (0..6u32)
                    .map(|i| multiproc::spawn_with_args(connect_and_send, (path.clone(), i)).unwrap())
                    .collect();
                let mut seen = Vec::new();
                while seen.len() < 6 {
                    let patience = Duration::from_micros(rng.below(3000));
                    match bounded(rt, race(listener.accept_async(), rt.sleep(patience))).await {
                        Either::Left(conn) => {
                            let conn = conn.unwrap();
                            seen.push(bounded(rt, conn.recv_async::<u32>()).await.unwrap());
                        }
                        Either::Right(()) => {}
                    }
                }
                seen.sort();
                assert_eq!(seen, (0..6).collect::<Vec<_>>());
                for h in &mut clients {
                    assert!(bounded(rt, h.join_async()).await.unwrap());
                }
            });
        }
    }
    /// A lock (and a recursive one) held by a child: the acquire waits, is dropped while
    /// waiting with nothing held, and completes once the child releases; a child killed while
    /// holding them is `OwnerDied` for the awaiting acquire, never a hang.
    #[test]
    fn lock_and_rlock_acquire_async_wait_for_a_child_and_report_a_killed_holder() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let (lock, rlock) = (Lock::new().unwrap(), RLock::new().unwrap());
            let holding = multiproc::Event::new().unwrap();
            let args = (lock.clone(), rlock.clone(), holding.clone(), 300);
            let mut p = Process::with_args(hold_locks, args);
            p.start().unwrap();
            bounded(rt, holding.wait_async()).await.unwrap();
            // Held by a live child: pending; dropped, it leaves the lock to the child.
            match race(lock.acquire_async(), rt.sleep(Duration::from_millis(20))).await {
                Either::Left(r) => panic!("a held lock was acquired: {:?}", r.map(|r| r.is_ok())),
                Either::Right(()) => {}
            }
            let g = bounded(rt, lock.acquire_async()).await.unwrap().unwrap();
            drop(g);
            // The child releases the recursive lock just after the other.
            assert!(bounded(rt, rlock.acquire_async()).await.unwrap().is_ok());
            bounded(rt, p.join_async()).await.unwrap();
            assert!(!lock.is_locked() && !rlock.is_locked());

            holding.clear();
            let args = (lock.clone(), rlock.clone(), holding.clone(), 60_000);
            let mut p = Process::with_args(hold_locks, args);
            p.start().unwrap();
            bounded(rt, holding.wait_async()).await.unwrap();
            let pid = p.pid().unwrap() as i32;
            let killer = async move {
                rt.sleep(Duration::from_millis(30)).await;
                kill9(pid);
            };
            let (got, ()) = bounded(rt, async { tokio::join!(lock.acquire_async(), killer) }).await;
            match got.unwrap() {
                Err(died) => drop(died.into_inner()),
                Ok(_) => panic!("a killed holder's lock came without OwnerDied"),
            }
            assert!(bounded(rt, rlock.acquire_async()).await.unwrap().is_err());
            assert!(!lock.is_locked() && !rlock.is_locked());
            // And both stay usable.
            assert!(bounded(rt, lock.acquire_async()).await.unwrap().is_ok());
            assert!(bounded(rt, rlock.acquire_async()).await.unwrap().is_ok());
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), -9, "Python's exitcode");
        });
    }

    /// Acquires dropped at seeded random points while a child takes and releases the locks:
    /// a dropped acquire never holds the lock, and the locks are free once the child is done.
    #[test]
    fn lock_acquires_dropped_at_random_points_never_leave_it_held() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("lock_acquires_dropped_at_random_points_never_leave_it_held");
        for &rt in RUNTIMES {
            let mut rng = Rng::from_seed(seed_of(&mut rng));
            rt.run(async move {
                let (lock, rlock) = (Lock::new().unwrap(), RLock::new().unwrap());
                let (started, stop) = (Event::new().unwrap(), Event::new().unwrap());
                let args = (lock.clone(), rlock.clone(), started.clone(), stop.clone(), seed_of(&mut rng));
                let mut p = Process::with_args(hammer_locks, args);
                p.start().unwrap();
                bounded(rt, started.wait_async()).await.unwrap();
                let (mut acquired, mut dropped) = (0u32, 0u32);
                for round in 0..150 {
                    let patience = Duration::from_micros(rng.below(3000));
                    // At a random point of the child's cycle, not just after its release.
                    rt.sleep(Duration::from_micros(rng.below(2000))).await;
                    if round % 2 == 0 {
                        match race(lock.acquire_async(), rt.sleep(patience)).await {
                            Either::Left(r) => {
                                let g = r.unwrap().unwrap();
                                assert!(lock.is_locked());
                                drop(g);
                                acquired += 1;
                            }
                            Either::Right(()) => dropped += 1,
                        }
                    } else {
                        match race(rlock.acquire_async(), rt.sleep(patience)).await {
                            Either::Left(r) => {
                                let g = r.unwrap().unwrap();
                                assert_eq!(rlock.depth(), 1);
                                drop(g);
                                acquired += 1;
                            }
                            Either::Right(()) => dropped += 1,
                        }
                    }
                    // Whatever happened, this process holds neither lock now: a dropped
                    // acquire took nothing (its helper thread only waits).
                    assert_eq!(rlock.depth(), 0);
                }
                stop.set();
                assert_eq!(bounded(rt, p.join_async()).await.unwrap(), 0);
                eprintln!("{acquired} acquires completed, {dropped} dropped");
                assert!(!lock.is_locked(), "a dropped acquire left the lock held");
                assert!(!rlock.is_locked(), "a dropped acquire left the rlock held");
                assert!(dropped > 0, "no acquire was dropped while waiting");
                let g = lock.try_acquire().map_err(|e| e.to_string()).unwrap();
                drop(g);
            });
        }
    }
    /// A condition wait as a future: woken by a child's notify with the predicate true; a
    /// wait dropped while waiting leaves the lock free and takes no later notification from
    /// a real waiter; a notifier killed holding the lock is `OwnerDied` for the waiter.
    #[test]
    fn condition_wait_async_is_notified_by_a_child_and_survives_drops_and_kills() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let ready = multiproc::Value::new(0u32).unwrap();
            let cond = Condition::with_lock(ready.get_lock().clone()).unwrap();
            // Dropped while waiting: the lock went with the future's guard.
            let g = bounded(rt, cond.acquire_async()).await.unwrap().unwrap();
            match race(g.wait_async(), rt.sleep(Duration::from_millis(20))).await {
                Either::Left(_) => panic!("a wait nobody notified returned"),
                Either::Right(()) => {}
            }
            assert!(!cond.lock().is_locked(), "a dropped wait left the lock held");

            let mut p = Process::with_args(notify_later, (ready.clone(), cond.clone()));
            p.start().unwrap();
            let mut g = bounded(rt, cond.acquire_async()).await.unwrap().unwrap();
            // The child sets the value 30 ms after it starts, under the lock this holds: the
            // first look finds it unset unless the child got there first.
            while ready.get_with(g.lock_guard()) != Some(1) {
                g = bounded(rt, g.wait_async()).await.unwrap().unwrap();
            }
            drop(g);
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), 0);

            // The notifier is killed holding the lock after notifying.
            let holding = Event::new().unwrap();
            let g = bounded(rt, cond.acquire_async()).await.unwrap().unwrap();
            let mut p = Process::with_args(notify_and_hold, (cond.clone(), holding.clone()));
            p.start().unwrap();
            let pid = p.pid().unwrap() as i32;
            let killer = async {
                bounded(rt, holding.wait_async()).await.unwrap();
                kill9(pid);
            };
            let (waited, ()) = bounded(rt, async { tokio::join!(g.wait_async(), killer) }).await;
            match waited.unwrap() {
                Err(died) => drop(died.into_inner()),
                Ok(_) => panic!("the lock of a notifier killed holding it came without OwnerDied"),
            }
            assert!(!cond.lock().is_locked());
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), -9);
        });
    }

    /// A barrier wait as a future with two children; a wait dropped while the barrier fills
    /// takes its arrival back (the barrier is neither broken nor a party short); a party
    /// killed while the others wait breaks it for the awaiting one.
    #[test]
    fn barrier_wait_async_meets_children_and_survives_drops_and_kills() {
        let _r = common::Reaper::new();
        on_each_runtime(|rt| async move {
            let b = Barrier::new(3).unwrap();
            let mut kids: Vec<Process> = (0..2)
                .map(|_| {
                    let mut p = Process::with_args(barrier_wait, b.clone());
                    p.start().unwrap();
                    p
                })
                .collect();
            let index = bounded(rt, b.wait_async()).await.unwrap().unwrap();
            assert!(index < 3);
            for p in &mut kids {
                assert_eq!(bounded(rt, p.join_async()).await.unwrap(), 0);
            }

            let b = Barrier::new(2).unwrap();
            match race(b.wait_async(), rt.sleep(Duration::from_millis(20))).await {
                Either::Left(r) => panic!("a barrier of two passed with one: {r:?}"),
                Either::Right(()) => {}
            }
            assert_eq!(b.n_waiting(), 0, "a dropped wait kept its arrival");
            assert!(!b.is_broken());
            let mut p = Process::with_args(barrier_wait, b.clone());
            p.start().unwrap();
            assert!(bounded(rt, b.wait_async()).await.unwrap().unwrap() < 2);
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), 0);

            let b = Barrier::new(3).unwrap();
            let mut p = Process::with_args(barrier_wait_then_sleep, b.clone());
            p.start().unwrap();
            bounded(rt, async {
                while b.n_waiting() < 1 {
                    rt.sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            let pid = p.pid().unwrap() as i32;
            let killer = async move {
                rt.sleep(Duration::from_millis(30)).await;
                kill9(pid);
            };
            let (waited, ()) = bounded(rt, async { tokio::join!(b.wait_async(), killer) }).await;
            assert!(waited.unwrap().is_err(), "a killed party did not break the barrier");
            assert!(b.is_broken());
            assert_eq!(bounded(rt, p.join_async()).await.unwrap(), -9);
        });
    }
    /// `imap` and `imap_unordered` as `Stream`s: every item, in input order for `imap`, the
    /// quick ones first for `imap_unordered`; a `next()` dropped while a slow task runs
    /// loses nothing.
    #[test]
    fn imap_and_imap_unordered_are_streams_and_dropped_nexts_lose_nothing() {
        let _r = common::Reaper::new();
        for &rt in RUNTIMES {
            eprintln!("runtime: {rt:?}");
            rt.run_local(async move {
                let pool = multiproc::Pool::new(2).unwrap();
                let mut squares = pool.imap(square, 0..40u64);
                let mut got = Vec::new();
                while let Some(v) = bounded(rt, next(&mut squares)).await {
                    got.push(v.unwrap());
                }
                assert_eq!(got, (0..40u64).map(|i| i * i).collect::<Vec<_>>());

                // In order: the 150 ms nap comes first, so a `next()` given 10 ms is dropped.
                let mut naps = pool.imap(nap_ms, [150u64, 5, 5]);
                match race(next(&mut naps), rt.sleep(Duration::from_millis(10))).await {
                    Either::Left(v) => panic!("a 150 ms task came in 10 ms: {v:?}"),
                    Either::Right(()) => {}
                }
                let mut got = Vec::new();
                while let Some(v) = bounded(rt, next(&mut naps)).await {
                    got.push(v.unwrap());
                }
                assert_eq!(got, vec![150, 5, 5]);

                let mut naps = pool.imap_unordered(nap_ms, [300u64, 1, 150]);
                let mut got = Vec::new();
                if let Either::Left(v) =
                    race(next(&mut naps), rt.sleep(Duration::from_micros(200))).await
                {
                    got.push(v.unwrap().unwrap());
                }
                while let Some(v) = bounded(rt, next(&mut naps)).await {
                    got.push(v.unwrap());
                }
                // Each exactly once, whether or not the first `next()` was dropped; the
                // 1 ms nap first and the 300 ms one last (two workers).
                let mut sorted = got.clone();
                sorted.sort();
                assert_eq!(sorted, vec![1, 150, 300], "{got:?}");
                assert_eq!((got[0], got[2]), (1, 300), "{got:?}");
                drop(naps);
                pool.close();
                pool.join().unwrap();
            });
        }
    }
}

#[test]
fn many_gets_at_once_in_one_task_each_take_one_item() {
    on_each_runtime(|rt| async move {
        let q: Queue<u32> = Queue::new().unwrap();
        let producer = q.clone();
        let gets = join_all((0..64).map(|_| q.get_async()).collect());
        let puts = async {
            rt.sleep(Duration::from_millis(20)).await;
            for i in 0..64 {
                producer.put_async(i).await.unwrap();
            }
        };
        let (got, ()) = bounded(rt, async { tokio::join!(gets, puts) }).await;
        let mut got: Vec<u32> = got.into_iter().map(Result::unwrap).collect();
        got.sort();
        assert_eq!(got, (0..64).collect::<Vec<_>>());
        assert!(q.empty());
    });
}

#[test]
fn simple_and_joinable_queues_work_async() {
    on_each_runtime(|rt| async move {
        let q: SimpleQueue<String> = SimpleQueue::new().unwrap();
        q.put_async("a".into()).await.unwrap();
        assert_eq!(bounded(rt, q.get_async()).await.unwrap(), "a");

        let j: multiproc::JoinableQueue<u8> = multiproc::JoinableQueue::with_maxsize(1).unwrap();
        let other = j.clone();
        j.put_async(1).await.unwrap();
        let (put, got) = bounded(rt, async {
            tokio::join!(j.put_async(2), other.get_async())
        })
        .await;
        put.unwrap();
        assert_eq!(got.unwrap(), 1);
        assert_eq!(bounded(rt, j.get_async()).await.unwrap(), 2);
        j.task_done().unwrap();
        j.task_done().unwrap();
        assert_eq!(j.unfinished_tasks(), 0);
    });
}

#[test]
fn send_bytes_and_recv_bytes_async() {
    on_each_runtime(|rt| async move {
        let (a, b) = pipe(true).unwrap();
        for len in [0usize, 3, 4096, 100_000] {
            let m = vec![7u8; len];
            let (sent, got) = bounded(rt, async {
                tokio::join!(a.send_bytes_async(&m), b.recv_bytes_async())
            })
            .await;
            sent.unwrap();
            assert_eq!(got.unwrap(), m);
        }
        // The two forms interoperate with the blocking ones.
        a.send_bytes(b"x").unwrap();
        assert_eq!(bounded(rt, b.recv_bytes_async()).await.unwrap(), b"x");
        b.send_async(&"y").await.unwrap();
        assert_eq!(a.recv::<String>().unwrap(), "y");
    });
}

#[test]
fn a_dropped_put_into_a_full_queue_puts_nothing() {
    on_each_runtime(|rt| async move {
        let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
        let _other = q.clone();
        q.put_async(1).await.unwrap();
        match race(q.put_async(2), rt.sleep(Duration::from_millis(80))).await {
            Either::Left(r) => panic!("a put into a full queue finished: {r:?}"),
            Either::Right(()) => {}
        }
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get_nowait().unwrap(), 1);
        assert!(matches!(
            q.get_nowait(),
            Err(multiproc::queue::TryGetError::Empty)
        ));
    });
}

#[test]
fn put_async_into_a_full_queue_nobody_else_holds_is_disconnected() {
    on_each_runtime(|rt| async move {
        let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
        q.put_async(1).await.unwrap();
        let r = bounded(rt, q.put_async(2)).await;
        assert!(matches!(r, Err(PutError::Disconnected(2))), "{r:?}");
    });
}

#[test]
fn wait_ready_reports_a_queue_with_an_item_and_a_connection_with_a_message() {
    on_each_runtime(|rt| async move {
        let q: Queue<u8> = Queue::new().unwrap();
        let producer = q.clone();
        let (a, b) = pipe(true).unwrap();
        let feed = async {
            rt.sleep(Duration::from_millis(20)).await;
            producer.put(5).unwrap();
            b.send(&6u8).unwrap();
        };
        let ((ready_q, ready_a), ()) = bounded(rt, async {
            tokio::join!(
                async {
                    tokio::join!(
                        multiproc::aio::wait_ready(&q),
                        multiproc::aio::wait_ready(&a)
                    )
                },
                feed
            )
        })
        .await;
        ready_q.unwrap();
        ready_a.unwrap();
        assert_eq!(q.get_nowait().unwrap(), 5);
        assert_eq!(a.recv_timeout::<u8>(Duration::ZERO).unwrap(), 6);
    });
}

#[test]
fn a_receive_dropped_mid_message_leaves_the_part_for_the_next_receive() {
    // 128 MiB: a pipe moves a few GB/s here, so a whole message takes tens of milliseconds,
    // far beyond the 2 ms after which the receive is dropped (16 MiB arrived whole in 5 ms
    // on an idle machine).
    const LEN: usize = 128 << 20;
    on_each_runtime(|rt| async move {
        // A message far larger than the pipe: its writer blocks once the pipe is full, and
        // the receive, dropped 2 ms after it began, has read part of it. A fast machine could
        // take it whole in that time; then the round proves nothing, and another is run.
        let mut dropped_mid_message = 0;
        for round in 0..5u8 {
            let (a, b) = pipe(false).unwrap();
            let writer = std::thread::spawn(move || {
                b.send(&(round, ByteBuf::from(vec![round; LEN]))).unwrap();
                b
            });
            // Let the writer fill the pipe, so the first poll reads part of the frame.
            rt.sleep(Duration::from_millis(20)).await;
            let whole = match race(
                a.recv_async::<(u8, ByteBuf)>(),
                rt.sleep(Duration::from_millis(2)),
            )
            .await
            {
                Either::Left(got) => got.unwrap(),
                Either::Right(()) => {
                    dropped_mid_message += 1;
                    // A blocking receive continues the same frame.
                    a.recv_timeout(WAIT).unwrap()
                }
            };
            assert_eq!(whole.0, round);
            assert!(whole.1.iter().all(|&x| x == round) && whole.1.len() == LEN);
            drop(writer.join().unwrap());
            assert!(matches!(
                bounded(rt, a.recv_async::<u8>()).await,
                Err(RecvError::Disconnected)
            ));
            if dropped_mid_message > 0 {
                break;
            }
        }
        assert!(
            dropped_mid_message > 0,
            "no receive was dropped mid-message in 5 rounds"
        );
    });
}

#[test]
fn acquires_dropped_at_random_points_keep_no_unit() {
    let mut rng = Rng::seeded("acquires_dropped_at_random_points_keep_no_unit");
    for &rt in RUNTIMES {
        let mut rng = Rng::from_seed(seed_of(&mut rng));
        rt.run(async move {
            let sem = multiproc::Semaphore::new(0).unwrap();
            let mut acquired = 0u32;
            let mut released = 0u32;
            for _ in 0..30 {
                let releaser = sem.clone();
                let delay = Duration::from_micros(rng.below(4000));
                let patience = Duration::from_micros(rng.below(4000));
                let release = async move {
                    rt.sleep(delay).await;
                    releaser.release();
                };
                let (got, ()) =
                    tokio::join!(race(sem.acquire_async(), rt.sleep(patience)), release);
                released += 1;
                if let Either::Left(r) = got {
                    r.unwrap();
                    acquired += 1;
                }
            }
            // Helper threads of dropped acquires finish their round (at most 50 ms) and give
            // back what they took; then every unit is either ours or in the semaphore.
            rt.sleep(Duration::from_millis(200)).await;
            eprintln!("{acquired} of {released} acquires finished before being dropped");
            assert_eq!(acquired + sem.value(), released);
        });
    }
}

/// A large send dropped part-way (nobody reading, so it cannot finish): the peer still
/// receives the whole message, then the next one, whether that next send is async or
/// blocking; on a socket pair and on a pipe.
#[test]
fn a_large_send_dropped_part_way_still_delivers_it_whole_before_the_next() {
    on_each_runtime(|rt| async move {
        for duplex in [true, false] {
            // Without duplex the first end only receives; with it, either may.
            let (rx, tx) = pipe(duplex).unwrap();
            let big = ByteBuf::from((0..3 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            let small = ByteBuf::from(vec![1, 2, 3]);
            for blocking_next in [false, true] {
                match race(tx.send_async(&big), rt.sleep(Duration::from_millis(5))).await {
                    Either::Left(r) => panic!("3 MiB went into an unread channel: {r:?}"),
                    Either::Right(()) => {}
                }
                if blocking_next {
                    let reader = rx.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let first = reader.recv_timeout::<ByteBuf>(WAIT);
                        (first, reader.recv_timeout::<ByteBuf>(WAIT))
                    });
                    // Waits for the helper thread's rest of `big`, then goes out whole.
                    tx.send(&small).unwrap();
                    let (first, second) = reader.join().unwrap();
                    assert!(
                        first.unwrap() == big,
                        "duplex {duplex}: the first message is not whole"
                    );
                    assert_eq!(second.unwrap(), small, "duplex {duplex}");
                } else {
                    let receive = async {
                        let first = rx.recv_async::<ByteBuf>().await;
                        (first, rx.recv_async::<ByteBuf>().await)
                    };
                    let (sent, (first, second)) =
                        bounded(rt, async { tokio::join!(tx.send_async(&small), receive) }).await;
                    sent.unwrap();
                    assert!(
                        first.unwrap() == big,
                        "duplex {duplex}: the first message is not whole"
                    );
                    assert_eq!(second.unwrap(), small, "duplex {duplex}");
                }
            }
        }
    });
}

#[test]
fn a_dropped_event_wait_changes_nothing() {
    on_each_runtime(|rt| async move {
        let ev = multiproc::Event::new().unwrap();
        match race(ev.wait_async(), rt.sleep(Duration::from_millis(20))).await {
            Either::Left(r) => panic!("an unset event's wait finished: {r:?}"),
            Either::Right(()) => {}
        }
        assert!(!ev.is_set());
        ev.set();
        bounded(rt, ev.wait_async()).await.unwrap();
    });
}

/// Builds an async example (they need the features this test binary was built with) and
/// returns its path.
fn async_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--example",
            name,
            "--features",
            FEATURES,
        ])
        .arg("--manifest-path")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}

const FEATURES: &str = if cfg!(all(feature = "tokio", feature = "async-io")) {
    "tokio,async-io"
} else if cfg!(feature = "tokio") {
    "tokio"
} else {
    "async-io"
};

/// Kills the example if the test fails before it exited.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "tokio")]
#[test]
fn async_tcp_server_example_serves_clients_concurrently_from_child_processes() {
    use std::io::{BufRead, BufReader, Read, Write};
    let child = std::process::Command::new(async_example("async_tcp_server"))
        .args(["0", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(child);
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap().to_owned();
    // Three clients connected at once: answered together, so served by three processes.
    let mut clients: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.set_read_timeout(Some(WAIT)).unwrap();
            let msg = format!("hello from client {i} round {round}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(String::from_utf8(buf).unwrap(), msg.to_uppercase());
        }
    }
    drop(clients);
    let addresses: Vec<String> = lines.by_ref().take(3).map(|l| l.unwrap()).collect();
    assert_eq!(addresses.len(), 3);
    assert!(
        common::eventually(WAIT, || server.0.try_wait().unwrap().is_some()),
        "server did not exit"
    );
    assert!(server.0.wait().unwrap().success());
}

#[cfg(feature = "async-io")]
#[test]
fn async_io_pipeline_example_runs() {
    let mut run = KillOnDrop(
        std::process::Command::new(async_example("async_io_pipeline"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(
        common::eventually(WAIT, || run.0.try_wait().unwrap().is_some()),
        "example did not exit"
    );
    assert!(run.0.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(run.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("sum of squares below 1000: 332833500"),
        "{out}"
    );
}

/// A `pipe()`'s message far larger than a socket buffer, sent by a blocking sender: the async
/// receive reads it through the pair's side socket, waiting on that socket between reads
/// (not on the pipe, which stays silent meanwhile), and it arrives whole.
#[test]
fn a_large_pipe_message_is_received_async_through_many_waits() {
    on_each_runtime(|rt| async move {
        let (a, b) = pipe(true).unwrap();
        let sent: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let sender = std::thread::spawn(move || {
            b.send_bytes(&sent).unwrap();
            b
        });
        let got = bounded(rt, a.recv_bytes_async()).await.unwrap();
        assert!(got == expected, "32 MiB intact");
        drop(sender.join().unwrap());
    });
}
