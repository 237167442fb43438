//! Queue, SimpleQueue, JoinableQueue. Mirrors CPython's `_TestQueue` scenarios (fork,
//! qsize, get/put with timeouts, task_done/join) and adds the crash cases CPython lacks.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use multiproc::{GetError, JoinableQueue, Process, PutError, Queue, SimpleQueue};

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
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
    // With no other handle a blocking get would be Disconnected; another handle may put.
    let _other = q.clone();
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetError::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn bounded_queue_reports_full_and_times_out() {
    let q: Queue<u8> = Queue::with_maxsize(2).unwrap();
    q.put(1).unwrap();
    q.put_nowait(2).unwrap();
    assert!(q.full());
    assert!(matches!(q.put_nowait(3), Err(PutError::Full(3))));
    // With no other handle a blocking put would be Disconnected; another handle may get.
    let _other = q.clone();
    let start = Instant::now();
    let err = q.put_timeout(4, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, PutError::Timeout(4)));
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
    assert!(matches!(
        q.put_timeout(3, Duration::from_secs(5)),
        Err(PutError::Disconnected(3))
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
    assert!(matches!(err, PutError::Disconnected(3)), "{err:?}");
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
        Err(GetError::Timeout)
    ));
    other.close();
    assert!(matches!(q.get(), Err(GetError::Disconnected)));
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
    assert!(matches!(q.get_timeout(WAIT), Err(GetError::Disconnected)));
}

/// Exits at once, skipping destructors (as a crash would, short of a signal).
fn unsafe_free_exit() -> ! {
    std::process::exit(3)
}

#[test]
fn killed_producer_means_disconnected_not_a_hang() {
    let _r = common::Reaper::new();
    let q: Queue<u32> = Queue::new().unwrap();
    let producer = q.clone();
    let mut p = Process::new(move || {
        producer.put(7).unwrap();
        std::thread::sleep(Duration::from_secs(60));
    });
    p.start().unwrap();
    drop(q.clone()); // clones come and go without effect
    assert_eq!(q.get_timeout(WAIT).unwrap(), 7);
    p.kill().unwrap();
    p.join_timeout(WAIT).unwrap();
    let start = Instant::now();
    assert!(matches!(q.get_timeout(WAIT), Err(GetError::Disconnected)));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn processes_killed_at_random_points_never_wedge_or_corrupt_the_queue() {
    let _r = common::Reaper::new();
    let mut rng =
        common::Rng::seeded("processes_killed_at_random_points_never_wedge_or_corrupt_the_queue");
    let mut next = move || rng.next();
    let q: Queue<(u32, Vec<u8>)> = Queue::with_maxsize(64).unwrap();
    for round in 0..6u32 {
        let producer = q.clone();
        let consumer = q.clone();
        let mut p = Process::new(move || {
            for i in 0.. {
                let len = (i * 37 % 5000) as usize;
                producer.put((i, vec![(i % 251) as u8; len])).unwrap();
            }
        });
        let mut c = Process::new(move || {
            loop {
                let _ = consumer.get();
            }
        });
        p.start().unwrap();
        c.start().unwrap();
        std::thread::sleep(Duration::from_micros(next() % 30_000));
        p.kill().unwrap();
        std::thread::sleep(Duration::from_micros(next() % 3_000));
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
    // Large items are written without the queue's lock, in space reserved in turn: items of
    // all sizes from three producers, taken by two consumers, each one whole and once.
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
    use multiproc::{Waitable, wait};
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

#[test]
fn large_items_with_several_consumers_and_a_killed_one() {
    let _r = common::Reaper::new();
    const SIZE: usize = 512 * 1024;
    const N: u32 = 40;
    let q: Queue<(u32, serde_bytes::ByteBuf)> = Queue::new().unwrap();
    let out: Queue<u32> = Queue::new().unwrap();
    // A consumer that is killed while it takes items: whatever it held goes, nothing wedges.
    let victim_q = q.clone();
    let mut victim = Process::new(move || {
        loop {
            let _ = victim_q.get();
        }
    });
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let q = q.clone();
        let out = out.clone();
        consumers.push(Process::new(move || {
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
        }));
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
fn large_items_killed_at_random_points_are_whole_and_in_order() {
    // As `processes_killed_at_random_points_never_wedge_or_corrupt_the_queue`, with items on
    // both sides of the size above which a get copies out without the queue's lock.
    let _r = common::Reaper::new();
    let mut rng = common::Rng::seeded("large_items_killed_at_random_points_are_whole_and_in_order");
    let mut next = move || rng.next();
    let len = |i: u32| {
        if i.is_multiple_of(2) {
            60_000 + (i as usize * 7919 % 200_000)
        } else {
            i as usize * 37 % 5000
        }
    };
    let q: Queue<(u32, serde_bytes::ByteBuf)> = Queue::with_maxsize(16).unwrap();
    for round in 0..6u32 {
        let producer = q.clone();
        let consumers: Vec<_> = (0..2).map(|_| q.clone()).collect();
        let mut p = Process::new(move || {
            for i in 0.. {
                let item = serde_bytes::ByteBuf::from(vec![(i % 251) as u8; len(i)]);
                producer.put((i, item)).unwrap();
            }
        });
        let mut cs: Vec<_> = consumers
            .into_iter()
            .map(|consumer| {
                Process::new(move || {
                    loop {
                        let _ = consumer.get();
                    }
                })
            })
            .collect();
        p.start().unwrap();
        for c in &mut cs {
            c.start().unwrap();
        }
        std::thread::sleep(Duration::from_micros(next() % 30_000));
        p.kill().unwrap();
        std::thread::sleep(Duration::from_micros(next() % 3_000));
        for c in &mut cs {
            c.kill().unwrap();
            std::thread::sleep(Duration::from_micros(next() % 1_000));
        }
        p.join_timeout(WAIT).unwrap().expect("producer reaped");
        for c in &mut cs {
            c.join_timeout(WAIT).unwrap().expect("consumer reaped");
        }
        // Everything left is whole, well-formed, and in order.
        let mut last = None;
        while let Ok((i, bytes)) = q.get_timeout(Duration::from_millis(10)) {
            assert_eq!(
                bytes.into_vec(),
                vec![(i % 251) as u8; len(i)],
                "round {round}"
            );
            assert!(
                last.is_none_or(|l| i > l),
                "round {round}: {i} after {last:?}"
            );
            last = Some(i);
        }
        // And the queue still works, for large items too.
        let big = serde_bytes::ByteBuf::from(vec![7; 100_000]);
        q.put_timeout((round, big.clone()), WAIT).unwrap();
        assert_eq!(q.get_timeout(WAIT).unwrap(), (round, big));
    }
}

/// An item whose decoding, in a process that set [`SLOW_SIGNAL`], signals and then stalls,
/// so that the process can be killed in the middle of taking it.
#[derive(Debug, PartialEq, serde::Serialize)]
struct Slow(serde_bytes::ByteBuf);

static SLOW_SIGNAL: std::sync::OnceLock<std::os::unix::net::UnixStream> =
    std::sync::OnceLock::new();

impl<'de> serde::Deserialize<'de> for Slow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        if let Some(mut s) = SLOW_SIGNAL.get() {
            use std::io::Write;
            s.write_all(&[1]).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        Ok(Slow(bytes))
    }
}

#[test]
fn a_consumer_killed_while_taking_a_large_item_leaves_it_to_the_next() {
    // Large items are decoded outside the queue's lock, under the reader lock.
    consumer_killed_while_taking_leaves_it_to_the_next(1 << 20);
}

#[test]
fn a_consumer_killed_while_taking_a_small_item_leaves_it_to_the_next() {
    // Small items are decoded under the queue's lock, which the victim dies holding.
    consumer_killed_while_taking_leaves_it_to_the_next(100);
}

fn consumer_killed_while_taking_leaves_it_to_the_next(size: usize) {
    use std::io::Read;
    let _r = common::Reaper::new();
    let q: Queue<Slow> = Queue::new().unwrap();
    let item = Slow(serde_bytes::ByteBuf::from(vec![3; size]));
    q.put(Slow(item.0.clone())).unwrap();
    q.put(Slow(serde_bytes::ByteBuf::from(vec![4; 10])))
        .unwrap();
    let (mut here, there) = std::os::unix::net::UnixStream::pair().unwrap();
    let victim_q = q.clone();
    let mut victim = Process::new(move || {
        SLOW_SIGNAL.set(there).unwrap();
        let _ = victim_q.get();
    });
    victim.start().unwrap();
    here.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 1];
    here.read_exact(&mut b).unwrap();
    // The victim is decoding the item: another getter waits for it rather than skipping or
    // duplicating it.
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetError::Timeout)
    ));
    victim.kill().unwrap();
    victim.join_timeout(WAIT).unwrap().expect("victim reaped");
    assert_eq!(q.get_timeout(WAIT).unwrap(), item);
    assert_eq!(q.get_timeout(WAIT).unwrap().0.len(), 10);
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
}

/// A large item whose serialization into the queue (the second of the two a `put` makes: one
/// to size it, one to write it) can be made to stall or panic part-way through.
#[derive(Debug, PartialEq)]
struct Stuck(serde_bytes::ByteBuf);

/// What `Stuck` does when it is serialized for the second time since `STUCK_CALLS` was reset.
static STUCK_MODE: std::sync::OnceLock<StuckMode> = std::sync::OnceLock::new();
static STUCK_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Debug)]
enum StuckMode {
    /// Signal on the stream, then sleep a minute.
    Stall(std::os::unix::net::UnixStream),
    Panic,
}

impl serde::Serialize for Stuck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let second = STUCK_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        match STUCK_MODE.get() {
            Some(StuckMode::Stall(stream)) if second => {
                use std::io::Write;
                (&*stream).write_all(&[1]).unwrap();
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

#[test]
fn a_producer_killed_while_putting_a_large_item_leaves_no_trace() {
    use std::io::Read;
    let _r = common::Reaper::new();
    let q: Queue<Stuck> = Queue::new().unwrap();
    q.put(Stuck::new(1, 10)).unwrap();
    let (mut here, there) = std::os::unix::net::UnixStream::pair().unwrap();
    let victim_q = q.clone();
    let mut victim = Process::new(move || {
        STUCK_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
        STUCK_MODE.set(StuckMode::Stall(there)).unwrap();
        let _ = victim_q.put(Stuck::new(2, 1 << 20));
    });
    victim.start().unwrap();
    here.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 1];
    here.read_exact(&mut b).unwrap();
    // The victim is writing its item into the queue without the lock: getters go on, and
    // another putter waits its turn, as the order of items is the order of their places.
    assert_eq!(q.get_timeout(WAIT).unwrap().0.len(), 10);
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(GetError::Timeout)
    ));
    assert!(matches!(
        q.put_timeout(Stuck::new(3, 10), Duration::from_millis(50)),
        Err(PutError::Timeout(_))
    ));
    victim.kill().unwrap();
    victim.join_timeout(WAIT).unwrap().expect("victim reaped");
    // Half an item is never seen, and its space is free again.
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
    q.put_timeout(Stuck::new(4, 1 << 20), WAIT).unwrap();
    q.put_timeout(Stuck::new(5, 10), WAIT).unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(4, 1 << 20));
    assert_eq!(q.get_timeout(WAIT).unwrap(), Stuck::new(5, 10));
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
}

#[test]
fn a_put_whose_serialization_panics_half_way_appends_nothing() {
    let _r = common::Reaper::new();
    let q: JoinableQueue<Stuck> = JoinableQueue::new().unwrap();
    let putter = q.clone();
    let mut p = Process::new(move || {
        STUCK_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
        STUCK_MODE.set(StuckMode::Panic).unwrap();
        let _ = putter.put(Stuck::new(2, 1 << 20));
    });
    p.start().unwrap();
    let err = p.join_timeout(WAIT).unwrap();
    assert_eq!(err, Some(1), "the panic ends the child");
    // Nothing was appended or counted: `join` returns at once, and the queue works.
    assert!(q.join_timeout(WAIT));
    assert!(q.empty());
    q.put_timeout(Stuck::new(3, 1 << 20), WAIT).unwrap();
    assert_eq!(q.qsize(), 1);
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
        assert!(matches!(q.get_timeout(WAIT), Err(GetError::Disconnected)));
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
}
