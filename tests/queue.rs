//! Queue, SimpleQueue, JoinableQueue. Mirrors CPython's `_TestQueue` scenarios (fork,
//! qsize, get/put with timeouts, task_done/join) and adds the crash cases CPython lacks.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use multiproc::queue::{
    GetError, GetTimeoutError, PutError, PutTimeoutError, TryGetError, TryPutError,
};
use multiproc::{JoinableQueue, Process, Queue, SimpleQueue};

use common::WAIT;

#[test]
fn put_get_in_one_process() {
    let q: Queue<String> = Queue::new().unwrap();
    assert!(q.empty());
    q.put("a".into()).unwrap();
    q.put("b".into()).unwrap();
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.get_nowait().unwrap(), "b");
    assert!(matches!(q.get_nowait(), Err(TryGetError::Empty)));
    // With no other handle a blocking get would be Disconnected; another handle may put.
    let _other = q.clone();
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn bounded_queue_reports_full_and_times_out() {
    let q: Queue<u8> = Queue::with_maxsize(2).unwrap();
    q.put(1).unwrap();
    q.put_nowait(2).unwrap();
    assert!(q.full());
    assert!(matches!(q.put_nowait(3), Err(TryPutError::Full(3))));
    // With no other handle a blocking put would be Disconnected; another handle may get.
    let _other = q.clone();
    let start = Instant::now();
    let err = q.put_timeout(4, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, PutTimeoutError::Timeout(4)));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(err.into_inner(), 4);
    assert_eq!(q.get().unwrap(), 1);
    q.put_nowait(3).unwrap();
}

#[test]
fn put_into_a_full_queue_nobody_else_holds_is_disconnected() {
    let q: Queue<u8> = Queue::with_maxsize(1).unwrap();
    q.put(1).unwrap();
    let start = Instant::now();
    let err = q.put(2).unwrap_err();
    assert!(matches!(err, PutError::Disconnected(2)), "{err:?}");
    // Never shared: a timed put waits, as a consumer may yet be handed a clone.
    let short = Duration::from_millis(100);
    assert!(matches!(
        q.put_timeout(3, short),
        Err(PutTimeoutError::Timeout(3))
    ));
    assert!(start.elapsed() >= short);
    // Shared, and the other handle gone: a timed put fails at once too.
    drop(q.clone());
    let start = Instant::now();
    assert!(matches!(
        q.put_timeout(3, Duration::from_secs(5)),
        Err(PutTimeoutError::Disconnected(3))
    ));
    // Fails at once instead of sleeping for ever (or for the whole timeout).
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("no other handle"), "{err}");
    // The queue itself is fine: the lone holder can make room and put again.
    assert_eq!(q.get().unwrap(), 1);
    q.put(2).unwrap();
}

#[test]
fn a_consumer_that_closed_its_put_side_still_counts_as_a_getter() {
    let _r = common::Reaper::new();
    let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
    let consumer = q.clone();
    let h = multiproc::spawn(move || {
        consumer.close(); // this consumer will never put, but still gets
        std::thread::sleep(Duration::from_millis(200));
        (0..3)
            .map(|_| consumer.get_timeout(Duration::from_secs(10)).unwrap())
            .sum::<u32>()
    })
    .unwrap();
    for i in 1..=3 {
        q.put_timeout(i, WAIT).unwrap();
    }
    let mut h = h;
    assert_eq!(h.join_timeout(WAIT).unwrap(), 6);
}

#[test]
fn blocked_put_turns_disconnected_when_the_last_consumer_exits() {
    let _r = common::Reaper::new();
    let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
    let consumer = q.clone();
    let mut h = multiproc::spawn(move || {
        // Take one item, then leave without taking the rest.
        consumer.get_timeout(Duration::from_secs(10)).unwrap()
    })
    .unwrap();
    drop(q.clone()); // a dropped handle is no getter
    q.put(1).unwrap();
    q.put_timeout(2, WAIT).unwrap(); // room made by the consumer's one get
    let start = Instant::now();
    // Full again; the consumer exits after its get, so this put can never complete.
    let err = q.put_timeout(3, WAIT).unwrap_err();
    assert!(matches!(err, PutTimeoutError::Disconnected(3)), "{err:?}");
    assert!(start.elapsed() < WAIT, "waited the whole timeout");
    assert_eq!(h.join_timeout(WAIT).unwrap(), 1);
}

#[test]
fn blocked_put_resumes_when_a_child_makes_room() {
    let _r = common::Reaper::new();
    let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
    let consumer = q.clone();
    let h = multiproc::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        (0..5)
            .map(|_| consumer.get_timeout(Duration::from_secs(10)).unwrap())
            .sum::<u32>()
    })
    .unwrap();
    for i in 0..5 {
        q.put_timeout(i, WAIT).unwrap();
    }
    assert_eq!(h.join().unwrap(), 10);
}

#[test]
fn closed_handle_refuses_puts_but_still_gets() {
    let q: Queue<u8> = Queue::new().unwrap();
    q.put(1).unwrap();
    q.close();
    assert!(q.is_closed());
    assert!(matches!(q.put(2), Err(PutError::Closed(2))));
    assert_eq!(q.get().unwrap(), 1);
}

#[test]
fn get_on_a_lone_empty_handle_is_disconnected() {
    let q: Queue<u8> = Queue::new().unwrap();
    let start = Instant::now();
    assert!(matches!(q.get(), Err(GetError::Disconnected)));
    assert!(start.elapsed() < WAIT);
    // Another handle in this process may put: then it waits.
    let other = q.clone();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(60)),
        Err(GetTimeoutError::Timeout)
    ));
    other.close();
    assert!(matches!(q.get(), Err(GetError::Disconnected)));
}

/// Issue 12: a timed get on a queue no other handle ever held returned `Disconnected` at
/// once; Python's waits out its timeout, and so does this one now. Once the queue was shared
/// and the other handles are gone, a timed get fails at once as before (the rule is in the
/// `queue` module's docs).
#[test]
fn a_timed_get_on_a_queue_never_shared_waits_out_its_timeout() {
    let q: Queue<u8> = Queue::new().unwrap();
    let start = Instant::now();
    let short = Duration::from_millis(100);
    assert!(matches!(
        q.get_timeout(short),
        Err(GetTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= short);
    // A blocking get cannot wait for ever on a speculation: it still says so at once.
    assert!(matches!(q.get(), Err(GetError::Disconnected)));
    drop(q.clone());
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(WAIT),
        Err(GetTimeoutError::Disconnected)
    ));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn items_put_right_before_exit_are_delivered() {
    let _r = common::Reaper::new();
    let q: Queue<Vec<u64>> = Queue::new().unwrap();
    let producer = q.clone();
    let mut p = Process::new(move || {
        for i in 0..1000u64 {
            producer.put(vec![i; 10]).unwrap();
        }
        // Leave without any destructor or flush.
        unsafe_free_exit();
    });
    p.start().unwrap();
    // Python's pitfall: join before draining. Here it cannot deadlock.
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(3));
    for i in 0..1000u64 {
        assert_eq!(q.get_timeout(WAIT).unwrap(), vec![i; 10]);
    }
    assert!(matches!(
        q.get_timeout(WAIT),
        Err(GetTimeoutError::Disconnected)
    ));
}

/// Exits at once, skipping destructors (as a crash would, short of a signal).
fn unsafe_free_exit() -> ! {
    std::process::exit(3)
}

#[test]
fn many_producers_many_consumers_keep_per_producer_order() {
    let _r = common::Reaper::new();
    const PER: u32 = 5000;
    let q: Queue<(u32, u32)> = Queue::new().unwrap();
    let out: Queue<Vec<(u32, u32)>> = Queue::new().unwrap();
    let mut procs = Vec::new();
    for id in 0..3u32 {
        let q = q.clone();
        procs.push(Process::new(move || {
            for n in 0..PER {
                q.put((id, n)).unwrap();
            }
        }));
    }
    for _ in 0..2 {
        let q = q.clone();
        let out = out.clone();
        procs.push(Process::new(move || {
            let mut got = Vec::new();
            while let Ok(item) = q.get_timeout(Duration::from_secs(10)) {
                if item.0 == u32::MAX {
                    break;
                }
                got.push(item);
            }
            out.put(got).unwrap();
        }));
    }
    for p in &mut procs {
        p.start().unwrap();
    }
    for p in &mut procs[..3] {
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
    q.put((u32::MAX, 0)).unwrap();
    q.put((u32::MAX, 0)).unwrap();
    let got = [
        out.get_timeout(WAIT).unwrap(),
        out.get_timeout(WAIT).unwrap(),
    ];
    check_in_order_and_once(&got, 3, PER);
    for p in &mut procs[3..] {
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
}

#[test]
fn many_producers_of_large_and_small_items_keep_order_and_lose_nothing() {
    // Large items are serialized straight into the ring under the producers' lock while
    // consumers copy others out under theirs: items of all sizes from three producers, taken
    // by two consumers, each one whole and once.
    let _r = common::Reaper::new();
    const PER: u32 = 150;
    let len = |id: u32, n: u32| {
        if (id + n).is_multiple_of(3) {
            70_000 + (n as usize * 7919 % 300_000)
        } else {
            n as usize % 100
        }
    };
    let q: Queue<(u32, u32, serde_bytes::ByteBuf)> = Queue::with_maxsize(8).unwrap();
    let out: Queue<Vec<(u32, u32)>> = Queue::new().unwrap();
    let mut procs = Vec::new();
    for id in 0..3u32 {
        let q = q.clone();
        procs.push(Process::new(move || {
            for n in 0..PER {
                let bytes = vec![(id * 7 + n) as u8; len(id, n)];
                q.put((id, n, serde_bytes::ByteBuf::from(bytes))).unwrap();
            }
        }));
    }
    for _ in 0..2 {
        let q = q.clone();
        let out = out.clone();
        procs.push(Process::new(move || {
            let mut got = Vec::new();
            while let Ok((id, n, bytes)) = q.get_timeout(Duration::from_secs(10)) {
                if id == u32::MAX {
                    break;
                }
                assert_eq!(bytes.into_vec(), vec![(id * 7 + n) as u8; len(id, n)]);
                got.push((id, n));
            }
            out.put(got).unwrap();
        }));
    }
    for p in &mut procs {
        p.start().unwrap();
    }
    for p in &mut procs[..3] {
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
    for _ in 0..2 {
        q.put((u32::MAX, 0, serde_bytes::ByteBuf::new())).unwrap();
    }
    let got = [
        out.get_timeout(WAIT).unwrap(),
        out.get_timeout(WAIT).unwrap(),
    ];
    check_in_order_and_once(&got, 3, PER);
    for p in &mut procs[3..] {
        assert_eq!(
            p.join_timeout(WAIT).unwrap(),
            Some(0),
            "a consumer saw a bad item"
        );
    }
}

/// What each consumer got, as (producer, number) pairs: each consumer saw every producer's
/// items in the order they were put, and together they got each of `0..per` from each of
/// `producers` exactly once.
fn check_in_order_and_once(got: &[Vec<(u32, u32)>], producers: u32, per: u32) {
    let mut seen: HashMap<u32, Vec<u32>> = HashMap::new();
    for one in got {
        let mut last: HashMap<u32, u32> = HashMap::new();
        for &(id, n) in one {
            if let Some(prev) = last.insert(id, n) {
                assert!(n > prev, "producer {id}: {n} after {prev} in one consumer");
            }
            seen.entry(id).or_default().push(n);
        }
    }
    for id in 0..producers {
        let mut v = seen.remove(&id).unwrap_or_default();
        v.sort_unstable();
        assert_eq!(
            v,
            (0..per).collect::<Vec<_>>(),
            "producer {id}: every item exactly once"
        );
    }
}

#[test]
fn large_items_go_through() {
    let _r = common::Reaper::new();
    let q: Queue<serde_bytes::ByteBuf> = Queue::new().unwrap();
    let producer = q.clone();
    let h = multiproc::spawn(move || {
        for i in 0..4u8 {
            producer
                .put(serde_bytes::ByteBuf::from(vec![i; 9 << 20]))
                .unwrap();
        }
    })
    .unwrap();
    for i in 0..4u8 {
        let item = q.get_timeout(WAIT).unwrap();
        assert_eq!(item.len(), 9 << 20);
        assert!(item.iter().all(|b| *b == i));
    }
    h.join().unwrap();
}

#[test]
fn simple_queue_round_trip() {
    let _r = common::Reaper::new();
    let q: SimpleQueue<(u8, String)> = SimpleQueue::new().unwrap();
    let child = q.clone();
    let h = multiproc::spawn(move || {
        let (n, s) = child.get().unwrap();
        child.put((n + 1, s + "!")).unwrap();
    })
    .unwrap();
    q.put((1, "hi".into())).unwrap();
    h.join().unwrap();
    assert_eq!(q.get().unwrap(), (2, "hi!".to_string()));
    assert!(q.empty());
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    let _r = common::Reaper::new();
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    assert!(q.task_done().is_err());
    let worker = q.clone();
    let mut p = Process::new(move || {
        for _ in 0..20 {
            worker.get_timeout(Duration::from_secs(10)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            worker.task_done().unwrap();
        }
    });
    for i in 0..20 {
        q.put(i).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(20)));
    p.start().unwrap();
    assert!(q.join_timeout(WAIT));
    assert_eq!(q.unfinished_tasks(), 0);
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
}

#[test]
fn wait_reports_a_queue_with_items() {
    use multiproc::{connection::Waitable, connection::wait};
    let _r = common::Reaper::new();
    let q: Queue<u8> = Queue::new().unwrap();
    let (a, _b) = multiproc::pipe(true).unwrap();
    assert!(
        wait(&[&q as &dyn Waitable, &a], Some(Duration::from_millis(60)))
            .unwrap()
            .is_empty()
    );
    let producer = q.clone();
    let mut p = Process::new(move || {
        std::thread::sleep(Duration::from_millis(100));
        producer.put(1).unwrap();
    });
    p.start().unwrap();
    let start = Instant::now();
    assert_eq!(
        wait(&[&q as &dyn Waitable, &a], Some(WAIT)).unwrap(),
        vec![0]
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(q.get().unwrap(), 1);
    // Drained: not ready any more (the event was cleared with the last item).
    assert!(
        wait(&[&q as &dyn Waitable], Some(Duration::from_millis(60)))
            .unwrap()
            .is_empty()
    );
    q.put(2).unwrap();
    assert_eq!(
        wait(&[&q as &dyn Waitable], Some(Duration::ZERO)).unwrap(),
        vec![0]
    );
    p.join_timeout(WAIT).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Handles passed as start arguments, under every start method (descriptors travel beside the
// arguments under spawn and forkserver).

fn put_numbers((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

fn work_joinable(q: JoinableQueue<u32>) {
    while let Ok(item) = q.get_timeout(Duration::from_secs(10)) {
        if item == u32::MAX {
            q.task_done().unwrap();
            break;
        }
        q.task_done().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Processes killed while they put and get, under every start method: the targets capture
// nothing (the queue and the signals travel as start arguments), so each start method is the
// one the test chose, the default forkserver included.

use common::{Reaper, Rng};
use multiproc::{Event, JoinError, shared::SharedMemory};

/// Serializing a `Stuck` (the second time since `STUCK_CALLS` was reset, which is the one
/// that writes into the queue) stalls after setting the event, or panics.
#[derive(Debug)]
enum StuckMode {
    /// Set the event, then sleep a minute.
    Stall(Event),
    Panic,
}

/// A large item whose serialization into the queue (the second of the two a `put` makes: one
/// to size it, one to write it) can be made to stall or panic part-way through.
#[derive(Debug, PartialEq)]
struct Stuck(serde_bytes::ByteBuf);

static STUCK_MODE: std::sync::OnceLock<StuckMode> = std::sync::OnceLock::new();
static STUCK_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl serde::Serialize for Stuck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let second = STUCK_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        match STUCK_MODE.get() {
            Some(StuckMode::Stall(event)) if second => {
                event.set();
                std::thread::sleep(Duration::from_secs(60));
            }
            Some(StuckMode::Panic) if second => panic!("serialize gave up half-way"),
            _ => {}
        }
        t.serialize_element(&0u8)?;
        t.end()
    }
}

impl Stuck {
    fn new(fill: u8, len: usize) -> Stuck {
        Stuck(serde_bytes::ByteBuf::from(vec![fill; len]))
    }
}

impl<'de> serde::Deserialize<'de> for Stuck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (bytes, _): (serde_bytes::ByteBuf, u8) = serde::Deserialize::deserialize(d)?;
        Ok(Stuck(bytes))
    }
}

/// Puts a large `Stuck` that stalls half-way through being written into the queue (holding
/// the producers' lock), after setting `stalled`.
fn put_stalling_in_the_middle((q, stalled): (Queue<Stuck>, Event)) {
    STUCK_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
    STUCK_MODE.set(StuckMode::Stall(stalled)).unwrap();
    let _ = q.put(Stuck::new(2, 1 << 20));
}

/// As [`put_stalling_in_the_middle`], into a `JoinableQueue`.
fn joinable_put_stalling_in_the_middle((q, stalled): (JoinableQueue<Stuck>, Event)) {
    STUCK_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
    STUCK_MODE.set(StuckMode::Stall(stalled)).unwrap();
    let _ = q.put(Stuck::new(2, 1 << 20));
}

/// An item whose decoding, in a process that set [`SLOW_SIGNAL`], sets it and then stalls,
/// so that the process can be killed in the middle of taking it (holding the consumers' lock).
#[derive(Debug, PartialEq, serde::Serialize)]
struct Slow(serde_bytes::ByteBuf);

static SLOW_SIGNAL: std::sync::OnceLock<Event> = std::sync::OnceLock::new();

impl<'de> serde::Deserialize<'de> for Slow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        if let Some(event) = SLOW_SIGNAL.get() {
            event.set();
            std::thread::sleep(Duration::from_secs(60));
        }
        Ok(Slow(bytes))
    }
}

fn get_stalling_in_the_middle((q, stalled): (Queue<Slow>, Event)) {
    SLOW_SIGNAL.set(stalled).unwrap();
    let _ = q.get();
}

fn consumer_killed_while_taking_leaves_it_to_the_next(size: usize) {
    let _r = Reaper::new();
    let q: Queue<Slow> = Queue::new().unwrap();
    let item = Slow(serde_bytes::ByteBuf::from(vec![3; size]));
    q.put(Slow(item.0.clone())).unwrap();
    q.put(Slow(serde_bytes::ByteBuf::from(vec![4; 10])))
        .unwrap();
    let stalled = Event::new().unwrap();
    let mut victim = Process::with_args(get_stalling_in_the_middle, (q.clone(), stalled.clone()));
    victim.start().unwrap();
    assert!(stalled.wait_timeout(WAIT), "the victim never took the item");
    // The victim is decoding the item, holding the consumers' lock: another getter waits for
    // it rather than skipping or duplicating it.
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetTimeoutError::Timeout)
    ));
    victim.kill().unwrap();
    victim.join_timeout(WAIT).unwrap().expect("victim reaped");
    assert_eq!(q.get_timeout(WAIT).unwrap(), item);
    assert_eq!(q.get_timeout(WAIT).unwrap().0.len(), 10);
    // Not `get_nowait` only: it too waits for the lock, so a wedged lock would hang it.
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(GetTimeoutError::Timeout | GetTimeoutError::Disconnected)
    ));
    assert!(matches!(q.get_nowait(), Err(TryGetError::Empty)));
}

/// A child's item as the crash tests put it: `(producer, number, bytes)` with bytes that
/// depend on both, some of them large (written into the queue in place).
type Numbered = (u32, u32, serde_bytes::ByteBuf);

fn numbered_len(n: u32) -> usize {
    if n.is_multiple_of(5) {
        70_000 + (n as usize * 7919 % 100_000)
    } else {
        n as usize * 37 % 3000
    }
}

fn numbered(id: u32, n: u32) -> Numbered {
    let byte = (id.wrapping_mul(7).wrapping_add(n) % 251) as u8;
    (
        id,
        n,
        serde_bytes::ByteBuf::from(vec![byte; numbered_len(n)]),
    )
}

/// How many items each producer of `killed_producers_and_consumers_...` may put; its slots in
/// the delivery table.
const PER_PRODUCER: u32 = 4096;

/// Shared words of the duplicate-and-loss test, as `AtomicU32`s in one segment: for producer
/// `id`, `started[id]` (puts begun: set before each put) and `finished[id]` (puts that
/// returned: set after), then one delivery count per `(id, n)`.
struct Ledger(SharedMemory);

impl Ledger {
    const PRODUCERS: usize = 64;

    fn new() -> Ledger {
        let words = 2 * Self::PRODUCERS + Self::PRODUCERS * PER_PRODUCER as usize;
        let shm = SharedMemory::create(4 * words).unwrap();
        shm.unlink().unwrap();
        Ledger(shm)
    }

    fn words(&self) -> &[std::sync::atomic::AtomicU32] {
        self.0.atomics()
    }

    fn started(&self, id: u32) -> &std::sync::atomic::AtomicU32 {
        &self.words()[id as usize]
    }

    fn finished(&self, id: u32) -> &std::sync::atomic::AtomicU32 {
        &self.words()[Self::PRODUCERS + id as usize]
    }

    fn delivered(&self, id: u32, n: u32) -> &std::sync::atomic::AtomicU32 {
        &self.words()[2 * Self::PRODUCERS + (id * PER_PRODUCER + n) as usize]
    }

    /// Checks one item taken from the queue and counts its delivery.
    fn deliver(&self, (id, n, bytes): Numbered) {
        assert!(
            (id as usize) < Self::PRODUCERS && n < PER_PRODUCER,
            "item ({id}, {n}) was never put"
        );
        assert_eq!(bytes, numbered(id, n).2, "item ({id}, {n}) damaged");
        self.delivered(id, n)
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Registers with `up`, then puts numbered items as producer `id` until killed (or
/// `PER_PRODUCER` were put), recording each put in the ledger before and after.
fn ledger_producer(
    (q, ledger, up, id): (Queue<Numbered>, SharedMemory, multiproc::Semaphore, u32),
) {
    use std::sync::atomic::Ordering::SeqCst;
    let ledger = Ledger(ledger);
    up.release();
    for n in 0..PER_PRODUCER {
        ledger.started(id).store(n + 1, SeqCst);
        q.put(numbered(id, n)).unwrap();
        ledger.finished(id).store(n + 1, SeqCst);
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// Registers with `up`, then takes items and counts their deliveries until killed.
fn ledger_consumer((q, ledger, up): (Queue<Numbered>, SharedMemory, multiproc::Semaphore)) {
    let ledger = Ledger(ledger);
    q.close(); // a consumer only: not a possible producer for the others
    up.release();
    loop {
        match q.get_timeout(Duration::from_secs(60)) {
            Ok(item) => ledger.deliver(item),
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

start_method_matrix! {
    #[test]
    fn a_queue_passed_as_a_start_argument() {
        let _r = common::Reaper::new();
        let q: Queue<u64> = Queue::new().unwrap();
        let mut p = Process::with_args(put_numbers, (q.clone(), 500));
        p.start().unwrap();
        for i in 0..500 {
            assert_eq!(q.get_timeout(WAIT).unwrap(), i);
        }
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        // The child's handle went with it: nobody else can put.
        assert!(matches!(q.get_timeout(WAIT), Err(GetTimeoutError::Disconnected)));
    }

    #[test]
    fn a_joinable_queue_passed_as_a_start_argument() {
        let _r = common::Reaper::new();
        let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
        for i in 0..50 {
            q.put(i).unwrap();
        }
        q.put(u32::MAX).unwrap();
        let mut p = Process::with_args(work_joinable, q.clone());
        p.start().unwrap();
        assert!(q.join_timeout(WAIT));
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    #[test]
    fn killed_producer_means_disconnected_not_a_hang() {
        let _r = Reaper::new();
        let q: Queue<u32> = Queue::new().unwrap();
        let mut p = Process::with_args(
            |q: Queue<u32>| {
                q.put(7).unwrap();
                std::thread::sleep(Duration::from_secs(60));
            },
            q.clone(),
        );
        p.start().unwrap();
        drop(q.clone()); // clones come and go without effect
        assert_eq!(q.get_timeout(WAIT).unwrap(), 7);
        p.kill().unwrap();
        p.join_timeout(WAIT).unwrap();
        let start = Instant::now();
        assert!(matches!(q.get_timeout(WAIT), Err(GetTimeoutError::Disconnected)));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// The getter role outlives `close` and ends with the holder, SIGKILL included: a put on
    /// a full queue times out (it may yet get room) while a closed child lives, and is
    /// `Disconnected` once it is killed; a get sees the closed child as no producer.
    #[test]
    fn a_closed_then_killed_consumer_ends_the_getter_role_only_when_killed() {
        let _r = Reaper::new();
        let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
        let closed = Event::new().unwrap();
        let mut p = Process::with_args(
            |(q, closed): (Queue<u32>, Event)| {
                q.close();
                closed.set();
                std::thread::sleep(Duration::from_secs(60));
            },
            (q.clone(), closed.clone()),
        );
        p.start().unwrap();
        assert!(closed.wait_timeout(WAIT));
        let start = Instant::now();
        assert!(matches!(q.get_timeout(WAIT), Err(GetTimeoutError::Disconnected)));
        assert!(start.elapsed() < WAIT, "waited the whole timeout");
        q.put(1).unwrap();
        let err = q.put_timeout(2, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, PutTimeoutError::Timeout(2)), "{err:?}");
        p.kill().unwrap();
        p.join_timeout(WAIT).unwrap();
        let start = Instant::now();
        let err = q.put_timeout(2, WAIT).unwrap_err();
        assert!(matches!(err, PutTimeoutError::Disconnected(2)), "{err:?}");
        assert!(start.elapsed() < WAIT, "waited the whole timeout");
    }

    #[test]
    fn processes_killed_at_random_points_never_wedge_or_corrupt_the_queue() {
        let _r = Reaper::new();
        let mut rng = Rng::seeded("processes_killed_at_random_points_never_wedge_or_corrupt_the_queue");
        let q: Queue<(u32, Vec<u8>)> = Queue::with_maxsize(64).unwrap();
        for round in 0..6u32 {
            let mut p = Process::with_args(
                |q: Queue<(u32, Vec<u8>)>| {
                    for i in 0.. {
                        let len = (i * 37 % 5000) as usize;
                        q.put((i, vec![(i % 251) as u8; len])).unwrap();
                    }
                },
                q.clone(),
            );
            let mut c = Process::with_args(
                |q: Queue<(u32, Vec<u8>)>| {
                    loop {
                        let _ = q.get();
                    }
                },
                q.clone(),
            );
            p.start().unwrap();
            c.start().unwrap();
            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            p.kill().unwrap();
            std::thread::sleep(Duration::from_micros(rng.below(3_000)));
            c.kill().unwrap();
            p.join_timeout(WAIT).unwrap().expect("producer reaped");
            c.join_timeout(WAIT).unwrap().expect("consumer reaped");
            // Everything left is whole, well-formed, and in order.
            let mut last = None;
            while let Ok((i, bytes)) = q.get_timeout(Duration::from_millis(10)) {
                assert_eq!(
                    bytes,
                    vec![(i % 251) as u8; (i * 37 % 5000) as usize],
                    "round {round}"
                );
                assert!(
                    last.is_none_or(|l| i > l),
                    "round {round}: {i} after {last:?}"
                );
                last = Some(i);
            }
            // And the queue still works.
            q.put_timeout((round, vec![1]), WAIT).unwrap();
            assert_eq!(q.get_timeout(WAIT).unwrap(), (round, vec![1]));
        }
    }

    #[test]
    fn large_items_killed_at_random_points_are_whole_and_in_order() {
        // As `processes_killed_at_random_points_never_wedge_or_corrupt_the_queue`, with items
        // on both sides of the size above which a put serializes in place.
        let _r = Reaper::new();
        let mut rng =
            Rng::seeded("large_items_killed_at_random_points_are_whole_and_in_order");
        let q: Queue<Numbered> = Queue::with_maxsize(16).unwrap();
        for round in 0..6u32 {
            let mut p = Process::with_args(
                |q: Queue<Numbered>| {
                    for i in 0.. {
                        q.put(numbered(0, i)).unwrap();
                    }
                },
                q.clone(),
            );
            let mut cs: Vec<_> = (0..2)
                .map(|_| {
                    Process::with_args(
                        |q: Queue<Numbered>| {
                            loop {
                                let _ = q.get();
                            }
                        },
                        q.clone(),
                    )
                })
                .collect();
            p.start().unwrap();
            for c in &mut cs {
                c.start().unwrap();
            }
            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            p.kill().unwrap();
            std::thread::sleep(Duration::from_micros(rng.below(3_000)));
            for c in &mut cs {
                c.kill().unwrap();
                std::thread::sleep(Duration::from_micros(rng.below(1_000)));
            }
            p.join_timeout(WAIT).unwrap().expect("producer reaped");
            for c in &mut cs {
                c.join_timeout(WAIT).unwrap().expect("consumer reaped");
            }
            // Everything left is whole, well-formed, and in order.
            let mut last = None;
            while let Ok((id, i, bytes)) = q.get_timeout(Duration::from_millis(10)) {
                assert_eq!((id, i, bytes), numbered(0, i), "round {round}");
                assert!(
                    last.is_none_or(|l| i > l),
                    "round {round}: {i} after {last:?}"
                );
                last = Some(i);
            }
            // And the queue still works, for large items too.
            q.put_timeout(numbered(9, 5), WAIT).unwrap();
            assert_eq!(q.get_timeout(WAIT).unwrap(), numbered(9, 5));
        }
    }

    #[test]
    fn large_items_with_several_consumers_and_a_killed_one() {
        let _r = Reaper::new();
        const SIZE: usize = 512 * 1024;
        const N: u32 = 40;
        let q: Queue<(u32, serde_bytes::ByteBuf)> = Queue::new().unwrap();
        let out: Queue<u32> = Queue::new().unwrap();
        // A consumer that is killed while it takes items: whatever it held goes, nothing
        // wedges.
        let mut victim = Process::with_args(
            |q: Queue<(u32, serde_bytes::ByteBuf)>| {
                loop {
                    let _ = q.get();
                }
            },
            q.clone(),
        );
        let mut consumers = Vec::new();
        for _ in 0..2 {
            consumers.push(Process::with_args(
                |(q, out): (Queue<(u32, serde_bytes::ByteBuf)>, Queue<u32>)| {
                    while let Ok((i, bytes)) = q.get_timeout(Duration::from_secs(10)) {
                        if i == u32::MAX {
                            break;
                        }
                        assert!(
                            bytes.len() == SIZE && bytes.iter().all(|b| *b == i as u8),
                            "item {i} damaged"
                        );
                        out.put(i).unwrap();
                    }
                },
                (q.clone(), out.clone()),
            ));
        }
        victim.start().unwrap();
        for c in &mut consumers {
            c.start().unwrap();
        }
        for i in 0..N {
            q.put_timeout((i, serde_bytes::ByteBuf::from(vec![i as u8; SIZE])), WAIT)
                .unwrap();
            if i == N / 4 {
                victim.kill().unwrap();
                victim.join_timeout(WAIT).unwrap();
            }
        }
        let mut got = Vec::new();
        while got.len() < N as usize {
            match out.get_timeout(Duration::from_secs(3)) {
                Ok(i) => got.push(i),
                Err(_) => break,
            }
        }
        // The victim may have taken items put before it died; every item put after arrived,
        // exactly once.
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        assert_eq!(before, got.len(), "an item arrived twice");
        for i in N / 4 + 1..N {
            assert!(
                got.contains(&i),
                "item {i}, put after the kill, was lost: {got:?}"
            );
        }
        for _ in 0..2 {
            q.put((u32::MAX, serde_bytes::ByteBuf::new())).unwrap();
        }
        for c in &mut consumers {
            assert_eq!(c.join_timeout(WAIT).unwrap(), Some(0));
        }
    }

    #[test]
    fn a_consumer_killed_while_taking_a_large_item_leaves_it_to_the_next() {
        consumer_killed_while_taking_leaves_it_to_the_next(1 << 20);
    }

    #[test]
    fn a_consumer_killed_while_taking_a_small_item_leaves_it_to_the_next() {
        consumer_killed_while_taking_leaves_it_to_the_next(100);
    }

    #[test]
    fn a_producer_killed_while_putting_a_large_item_leaves_no_trace() {
        let _r = Reaper::new();
        let q: Queue<Stuck> = Queue::new().unwrap();
        q.put(Stuck::new(1, 10)).unwrap();
        let stalled = Event::new().unwrap();
        let mut victim =
            Process::with_args(put_stalling_in_the_middle, (q.clone(), stalled.clone()));
        victim.start().unwrap();
        assert!(stalled.wait_timeout(WAIT), "the victim never began its put");
        // The victim is writing its item into the queue, holding the producers' lock: getters
        // go on, and another putter waits its turn.
        assert_eq!(q.get_timeout(WAIT).unwrap().0.len(), 10);
        assert!(matches!(
            q.get_timeout(Duration::from_millis(50)),
            Err(GetTimeoutError::Timeout)
        ));
        assert!(matches!(
            q.put_timeout(Stuck::new(3, 10), Duration::from_millis(50)),
            Err(PutTimeoutError::Timeout(_))
        ));
        victim.kill().unwrap();
        victim.join_timeout(WAIT).unwrap().expect("victim reaped");
        // Half an item is never seen, and its space is free again.
        assert!(matches!(
            q.get_timeout(Duration::from_millis(50)),
            Err(GetTimeoutError::Timeout | GetTimeoutError::Disconnected)
        ));
        q.put_timeout(Stuck::new(4, 1 << 20), WAIT).unwrap();
        q.put_timeout(Stuck::new(5, 10), WAIT).unwrap();
        assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(4, 1 << 20));
        assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(5, 10));
        assert!(matches!(q.get_nowait(), Err(TryGetError::Empty)));
    }

    /// Issue 10 item 5: the unfinished count went up before the item was written, so a
    /// producer killed inside `put` left `join` waiting forever.
    #[test]
    fn a_producer_killed_mid_put_leaves_join_nothing_to_wait_for() {
        let _r = Reaper::new();
        let q: JoinableQueue<Stuck> = JoinableQueue::new().unwrap();
        q.put(Stuck::new(1, 10)).unwrap();
        let stalled = Event::new().unwrap();
        let mut victim = Process::with_args(
            joinable_put_stalling_in_the_middle,
            (q.clone(), stalled.clone()),
        );
        victim.start().unwrap();
        assert!(stalled.wait_timeout(WAIT), "the victim never began its put");
        victim.kill().unwrap();
        victim.join_timeout(WAIT).unwrap().expect("victim reaped");
        assert_eq!(q.unfinished_tasks(), 1, "only the item that was put");
        assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(1, 10));
        assert!(!q.join_timeout(Duration::from_millis(30)), "not done yet");
        q.task_done().unwrap();
        assert!(q.join_timeout(WAIT), "join waits for an item that was never put");
        assert!(q.task_done().is_err());
        // And the queue goes on counting.
        q.put_timeout(Stuck::new(3, 1 << 20), WAIT).unwrap();
        assert_eq!(q.unfinished_tasks(), 1);
        assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(3, 1 << 20));
        q.task_done().unwrap();
        assert!(q.join_timeout(WAIT));
    }

    #[test]
    fn a_put_whose_serialization_panics_half_way_appends_nothing() {
        let _r = Reaper::new();
        let q: JoinableQueue<Stuck> = JoinableQueue::new().unwrap();
        let mut p = Process::with_args(
            |q: JoinableQueue<Stuck>| {
                STUCK_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
                STUCK_MODE.set(StuckMode::Panic).unwrap();
                let _ = q.put(Stuck::new(2, 1 << 20));
            },
            q.clone(),
        );
        p.start().unwrap();
        let err = p.join_timeout(WAIT).unwrap();
        assert_eq!(err, Some(1), "the panic ends the child");
        // Nothing was appended or counted: `join` returns at once, and the queue works.
        assert!(q.join_timeout(WAIT));
        assert!(q.empty());
        q.put_timeout(Stuck::new(3, 1 << 20), WAIT).unwrap();
        assert_eq!(q.qsize(), 1);
    }

    /// Issue 10 items 1 and 14: producers and consumers SIGKILLed at seeded random points,
    /// round after round, on one queue. No item is ever delivered twice or made up; an item
    /// whose put returned is delivered, except at most one per killed consumer (the one it
    /// had taken when it died); and the queue is never wedged (every wait here is bounded).
    #[test]
    fn killed_producers_and_consumers_never_duplicate_or_lose_items() {
        use std::sync::atomic::Ordering::SeqCst;
        let _r = Reaper::new();
        let mut rng = Rng::seeded("killed_producers_and_consumers_never_duplicate_or_lose_items");
        const ROUNDS: u32 = 8;
        const PRODUCERS: u32 = 2;
        const CONSUMERS: u32 = 2;
        let ledger = Ledger::new();
        let q: Queue<Numbered> = Queue::with_maxsize(32).unwrap();
        let up = multiproc::Semaphore::new(0).unwrap();
        let mut consumer_kills = 0u32;
        for round in 0..ROUNDS {
            let mut procs = Vec::new();
            for p in 0..PRODUCERS {
                let id = round * PRODUCERS + p;
                procs.push(
                    multiproc::spawn_with_args(
                        ledger_producer,
                        (q.clone(), ledger.0.clone(), up.clone(), id),
                    )
                    .unwrap(),
                );
            }
            for _ in 0..CONSUMERS {
                procs.push(
                    multiproc::spawn_with_args(
                        ledger_consumer,
                        (q.clone(), ledger.0.clone(), up.clone()),
                    )
                    .unwrap(),
                );
            }
            for _ in 0..PRODUCERS + CONSUMERS {
                assert!(up.acquire_timeout(WAIT), "a child did not start");
            }
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            // Kill them all, in a random order, at random moments.
            while !procs.is_empty() {
                let i = rng.below(procs.len() as u64) as usize;
                let mut victim = procs.swap_remove(i);
                victim.kill().unwrap();
                match victim.join_timeout(WAIT) {
                    Err(JoinError::Signal(9)) => {}
                    other => panic!("round {round}: a child ended with {other:?}"),
                }
                std::thread::sleep(Duration::from_micros(rng.below(2_000)));
            }
            consumer_kills += CONSUMERS;
            // What is left is taken here (the only handle now: empty means Disconnected).
            loop {
                match q.get_timeout(WAIT) {
                    Ok(item) => ledger.deliver(item),
                    Err(GetTimeoutError::Disconnected) => break,
                    Err(e) => panic!("round {round}: draining the queue: {e}"),
                }
            }
            assert_eq!(q.qsize(), 0);
            q.put_timeout(numbered(63, 0), WAIT).unwrap();
            assert_eq!(q.get_timeout(WAIT).unwrap(), numbered(63, 0));
        }
        let (mut delivered, mut lost, mut duplicated, mut made_up) = (0u64, 0u32, 0u32, 0u32);
        for id in 0..ROUNDS * PRODUCERS {
            let (started, finished) = (ledger.started(id).load(SeqCst), ledger.finished(id).load(SeqCst));
            for n in 0..PER_PRODUCER {
                let times = ledger.delivered(id, n).load(SeqCst);
                delivered += u64::from(times);
                if times > 1 {
                    duplicated += 1;
                    eprintln!("({id}, {n}) delivered {times} times");
                }
                if times > 0 && n >= started {
                    made_up += 1;
                    eprintln!("({id}, {n}) delivered but never put");
                }
                if times == 0 && n < finished {
                    lost += 1;
                    eprintln!("({id}, {n}) put and never delivered");
                }
            }
        }
        eprintln!(
            "{ROUNDS} rounds: {delivered} deliveries, {duplicated} duplicated, {made_up} made \
             up, {lost} lost, {consumer_kills} consumers killed"
        );
        assert_eq!(duplicated, 0, "items delivered twice");
        assert_eq!(made_up, 0, "items delivered that were never put");
        assert!(lost <= consumer_kills, "{lost} items lost to {consumer_kills} consumer kills");
        assert!(delivered > u64::from(ROUNDS), "the children never got going: nothing tested");
    }

    /// Issue 12 (Python 3.13's `Queue.shutdown`): a getter blocked in a child is released by
    /// a shutdown in the parent, with `ShutDown` (not `Disconnected`: the parent still holds
    /// the queue, and says it is done).
    #[test]
    fn a_getter_blocked_in_a_child_is_released_by_a_shutdown_in_the_parent() {
        let _r = Reaper::new();
        let q: Queue<u32> = Queue::new().unwrap();
        let waiting = Event::new().unwrap();
        let mut getter =
            multiproc::spawn_with_args(get_and_report, (q.clone(), waiting.clone())).unwrap();
        assert!(waiting.wait_timeout(WAIT));
        std::thread::sleep(Duration::from_millis(100)); // into its sleep
        q.shutdown(false).unwrap();
        assert_eq!(getter.join_timeout(WAIT).unwrap(), "shut down");
    }

    /// And the other way round: a shutdown in a child releases a getter blocked here.
    #[test]
    fn a_getter_blocked_in_the_parent_is_released_by_a_shutdown_in_a_child() {
        let _r = Reaper::new();
        let q: Queue<u32> = Queue::new().unwrap();
        let done = Event::new().unwrap();
        let mut child = Process::with_args(shut_down_later, (q.clone(), done.clone()));
        child.start().unwrap();
        let start = Instant::now();
        let got = q.get();
        assert!(matches!(got, Err(GetError::ShutDown)), "{got:?}");
        assert!(start.elapsed() < WAIT);
        done.set();
        assert_eq!(child.join_timeout(WAIT).unwrap(), Some(0));
        assert!(q.is_shut_down());
    }

    /// A putter blocked in a child on a full bounded queue is released with its item; what
    /// was in the queue is still delivered, then gets say `ShutDown`.
    #[test]
    fn a_putter_blocked_on_a_full_queue_is_released_by_a_shutdown() {
        let _r = Reaper::new();
        let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
        q.put(1).unwrap();
        let waiting = Event::new().unwrap();
        let mut putter =
            multiproc::spawn_with_args(put_and_report, (q.clone(), waiting.clone())).unwrap();
        assert!(waiting.wait_timeout(WAIT));
        std::thread::sleep(Duration::from_millis(100)); // into its sleep
        q.shutdown(false).unwrap();
        assert_eq!(putter.join_timeout(WAIT).unwrap(), "shut down, item 2 back");
        assert_eq!(q.get_timeout(WAIT).unwrap(), 1);
        assert!(matches!(q.get_timeout(WAIT), Err(GetTimeoutError::ShutDown)));
    }

    /// An immediate shutdown drains the queue and releases a `join` waiting in a child.
    #[test]
    fn an_immediate_shutdown_releases_join_in_a_child() {
        let _r = Reaper::new();
        let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
        for i in 0..3 {
            q.put(i).unwrap();
        }
        let waiting = Event::new().unwrap();
        let mut joiner =
            multiproc::spawn_with_args(join_and_report, (q.clone(), waiting.clone())).unwrap();
        assert!(waiting.wait_timeout(WAIT));
        std::thread::sleep(Duration::from_millis(100)); // into its sleep
        q.shutdown(true).unwrap();
        assert!(joiner.join_timeout(WAIT).unwrap(), "join did not return");
        assert_eq!(q.qsize(), 0);
        assert_eq!(q.unfinished_tasks(), 0);
        assert!(q.get().unwrap_err().is_shut_down());
    }

    /// Issue 12: a timed get on a queue nobody else holds yet receives from a producer
    /// started after the get began (here by another thread, with a clone), as in Python.
    /// Then, the producer gone, the next timed get fails at once.
    #[test]
    fn a_timed_get_receives_from_a_producer_started_after_it_began() {
        let _r = Reaper::new();
        let q: Queue<u64> = Queue::new().unwrap();
        let (got, mut producer) = std::thread::scope(|s| {
            let starter = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                let mut p = Process::with_args(put_numbers, (q.clone(), 1));
                p.start().unwrap();
                p
            });
            let got = q.get_timeout(WAIT);
            (got, starter.join().unwrap())
        });
        assert_eq!(got.unwrap(), 0);
        assert_eq!(producer.join_timeout(WAIT).unwrap(), Some(0));
        let start = Instant::now();
        assert!(matches!(q.get_timeout(WAIT), Err(GetTimeoutError::Disconnected)));
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
}

fn get_and_report((q, waiting): (Queue<u32>, Event)) -> String {
    waiting.set();
    match q.get() {
        Err(GetError::ShutDown) => "shut down".to_owned(),
        other => format!("{other:?}"),
    }
}

fn put_and_report((q, waiting): (Queue<u32>, Event)) -> String {
    waiting.set();
    match q.put(2) {
        Err(PutError::ShutDown(item)) => format!("shut down, item {item} back"),
        other => format!("{other:?}"),
    }
}

fn join_and_report((q, waiting): (JoinableQueue<u32>, Event)) -> bool {
    waiting.set();
    q.join_timeout(WAIT)
}

/// Shuts the queue down after a while, then stays (holding the queue) until told to go.
fn shut_down_later((q, done): (Queue<u32>, Event)) {
    std::thread::sleep(Duration::from_millis(200));
    q.shutdown(false).unwrap();
    assert!(done.wait_timeout(WAIT));
}

#[test]
fn shutdown_refuses_puts_and_delivers_what_is_left() {
    let q: Queue<u32> = Queue::new().unwrap();
    let other = q.clone();
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(!other.is_shut_down());
    q.shutdown(false).unwrap();
    assert!(other.is_shut_down());
    let err = other.put(3).unwrap_err();
    assert!(err.is_shut_down(), "{err:?}");
    assert_eq!(err.into_inner(), 3);
    assert!(matches!(
        other.put_timeout(4, WAIT),
        Err(PutTimeoutError::ShutDown(4))
    ));
    assert!(matches!(other.put_nowait(5), Err(TryPutError::ShutDown(5))));
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.get_nowait().unwrap(), 2);
    // Empty now: every get says so at once, whatever it would have waited for.
    let start = Instant::now();
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
    assert!(matches!(
        q.get_timeout(WAIT),
        Err(GetTimeoutError::ShutDown)
    ));
    assert!(matches!(q.get_nowait(), Err(TryGetError::ShutDown)));
    assert!(start.elapsed() < WAIT);
    assert_eq!(
        q.get().unwrap_err().to_string(),
        "queue is shut down and empty"
    );
    // Twice is fine, and an immediate one later drains.
    q.shutdown(false).unwrap();
    q.shutdown(true).unwrap();
}

/// An item whose decoding panics: one that an immediate shutdown dropped was never decoded.
#[derive(Debug, serde::Serialize)]
struct Undecodable(u8);

impl<'de> serde::Deserialize<'de> for Undecodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("an item dropped by an immediate shutdown was decoded");
    }
}

#[test]
fn an_immediate_shutdown_drops_items_without_decoding_them() {
    let q: Queue<Undecodable> = Queue::new().unwrap();
    for i in 0..3 {
        q.put(Undecodable(i)).unwrap();
    }
    q.put(Undecodable(9)).unwrap();
    assert_eq!(q.qsize(), 4);
    q.shutdown(true).unwrap();
    assert_eq!(q.qsize(), 0);
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
    assert!(matches!(q.put(Undecodable(4)), Err(PutError::ShutDown(_))));
}

#[test]
fn an_immediate_shutdown_lowers_the_unfinished_count_as_python_does() {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    for i in 0..3 {
        q.put(i).unwrap();
    }
    assert_eq!(q.get().unwrap(), 0); // taken, not yet done
    q.shutdown(true).unwrap();
    // The two dropped items are no longer unfinished; the taken one still is.
    assert_eq!(q.unfinished_tasks(), 1);
    assert!(!q.join_timeout(Duration::from_millis(60)));
    q.task_done().unwrap();
    assert!(q.join_timeout(WAIT));
    assert!(q.task_done().is_err());
}

#[test]
fn a_shut_down_queue_is_ready_for_wait() {
    use multiproc::connection::{Waitable, wait};
    let q: Queue<u8> = Queue::new().unwrap();
    let _other = q.clone();
    assert_eq!(
        wait(&[&q as &dyn Waitable], Some(Duration::from_millis(20))).unwrap(),
        Vec::<usize>::new()
    );
    q.shutdown(false).unwrap();
    assert_eq!(wait(&[&q as &dyn Waitable], Some(WAIT)).unwrap(), vec![0]);
    assert!(matches!(q.get_nowait(), Err(TryGetError::ShutDown)));
}
