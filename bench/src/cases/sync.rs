//! Synchronization: the robust lock uncontended, a locked shared counter under two processes,
//! and Event / Semaphore ping-pong between two processes (pinned to one CPU and unpinned).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Event, Lock, Semaphore, Value};

use crate::harness::{Case, Ctx, Row, get, median};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "lock_uncontended",
            run: lock_uncontended,
        },
        Case {
            name: "shared_counter_2proc",
            run: shared_counter_2proc,
        },
        Case {
            name: "event_pingpong",
            run: event_pingpong,
        },
        Case {
            name: "semaphore_pingpong",
            run: semaphore_pingpong,
        },
    ]
}

/// Every wait in a benchmark is bounded: a dead peer fails the run instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// `lock.acquire()` + drop of the guard, one process; nanoseconds per pair.
///
/// The probe's figure is a test-and-set spin lock released by a plain store: one atomic
/// read-modify-write per pair, and it can never put a waiter to sleep. A lock that can (ours,
/// `std::sync::Mutex`, glibc's `pthread_mutex`) must release with a second read-modify-write,
/// to learn whether to wake someone; `std::sync::Mutex` is measured beside it as that peer.
/// The probe's own loop is also run in the same rounds (`bare_tas_same_rounds`), since on a
/// shared machine the probe's separate run sees a different load.
fn lock_uncontended(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("lock_uncontended", "ns_per_acquire_release");
    let n = ctx.scale(5_000_000, 1_000_000);
    let lock = Lock::new().expect("lock");
    let std_mutex = std::sync::Mutex::new(());
    // Rounds of the two alternate, so that both see the same machine (2 shared vCPUs here).
    let tas = std::hint::black_box(AtomicU32::new(0));
    let (mut ours, mut peer, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.rounds() {
        let t = Instant::now();
        for _ in 0..n {
            drop(std::hint::black_box(lock.acquire().expect("acquire")));
        }
        ours.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            drop(std::hint::black_box(std_mutex.lock().expect("lock")));
        }
        peer.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        // The probe's loop (compare-exchange, then a release store), in the same rounds.
        let t = Instant::now();
        for _ in 0..n {
            while tas
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {}
            tas.store(0, Ordering::Release);
        }
        bare.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    let mut ours = ours.into_iter();
    let mut peer = peer.into_iter();
    let mut bare = bare.into_iter();
    row.peer.insert(
        "bare_tas_same_rounds".into(),
        median(ctx.rounds(), || bare.next().unwrap_or(f64::NAN)),
    );
    row.ours = Some(median(ctx.rounds(), || ours.next().unwrap_or(f64::NAN)));
    row.peer.insert(
        "std_mutex_in_process".into(),
        median(ctx.rounds(), || peer.next().unwrap_or(f64::NAN)),
    );
    row.python = get(
        &ctx.python("bench_lock.py", &[]),
        "uncontended_ns_per_pair_mp_Lock",
    );
    row.limit = ctx.limit("lock_unlock_ns");
    row
}

/// Two processes each add 1 to a `Value<i32>` M times under its lock; nanoseconds per
/// increment (wall time / total increments), the count checked.
fn shared_counter_2proc(ctx: &mut Ctx) -> Row {
    let mut row = Row::new("shared_counter_2proc", "ns_per_locked_increment");
    let m = ctx.scale(200_000, 50_000);
    row.ours = Some(median(ctx.rounds(), || {
        let v = Value::new(0i32).expect("value");
        let go = Event::new().expect("event");
        let children: Vec<_> = (0..2)
            .map(|_| {
                multiproc::spawn_with_args(
                    |(v, go, m): (Value<i32>, Event, usize)| {
                        assert!(go.wait_timeout(WAIT));
                        for _ in 0..m {
                            *v.lock().expect("lock") += 1;
                        }
                    },
                    (v.clone(), go.clone(), m),
                )
                .expect("spawn")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        go.set();
        for mut c in children {
            c.join_timeout(WAIT).expect("join");
        }
        let dt = t.elapsed();
        assert_eq!(v.get(), 2 * m as i32, "lost updates");
        dt.as_secs_f64() * 1e9 / (2 * m) as f64
    }));
    row.python = get(
        &ctx.python("bench_lock.py", &[]),
        "contended_2proc_ns_per_locked_incr",
    );
    row
}

/// Pins the calling thread to CPU 0 until dropped. Both sides of a ping-pong pin themselves
/// (a child from the forkserver does not inherit our mask).
struct Pin(Option<libc::cpu_set_t>);

impl Pin {
    fn cpu0(pin: bool) -> Pin {
        if !pin {
            return Pin(None);
        }
        // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity read/write exactly one.
        unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut saved);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut one);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
            Pin(Some(saved))
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the mask saved above.
            unsafe {
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), saved);
            }
        }
    }
}

/// Parent: e1.set(); e2.wait(); e2.clear() / child: e1.wait(); e1.clear(); e2.set(), as
/// bench_event.py; microseconds per round trip.
fn event_rt(n: usize, pin: bool) -> f64 {
    let _pin = Pin::cpu0(pin);
    let (e1, e2) = (Event::new().expect("event"), Event::new().expect("event"));
    let mut child = multiproc::spawn_with_args(
        |(e1, e2, n, pin): (Event, Event, usize, bool)| {
            let _pin = Pin::cpu0(pin);
            for _ in 0..=n {
                assert!(e1.wait_timeout(WAIT));
                e1.clear();
                e2.set();
            }
        },
        (e1.clone(), e2.clone(), n, pin),
    )
    .expect("spawn");
    e1.set();
    assert!(e2.wait_timeout(WAIT));
    e2.clear();
    let t = Instant::now();
    for _ in 0..n {
        e1.set();
        assert!(e2.wait_timeout(WAIT));
        e2.clear();
    }
    let dt = t.elapsed();
    child.join_timeout(WAIT).expect("join");
    dt.as_secs_f64() * 1e6 / n as f64
}

/// Parent: s1.release(); s2.acquire() / child: s1.acquire(); s2.release(); microseconds per
/// round trip.
fn semaphore_rt(n: usize, pin: bool) -> f64 {
    let _pin = Pin::cpu0(pin);
    let (s1, s2) = (
        Semaphore::new(0).expect("sem"),
        Semaphore::new(0).expect("sem"),
    );
    let mut child = multiproc::spawn_with_args(
        |(s1, s2, n, pin): (Semaphore, Semaphore, usize, bool)| {
            let _pin = Pin::cpu0(pin);
            for _ in 0..=n {
                assert!(s1.acquire_timeout(WAIT));
                s2.release();
            }
        },
        (s1.clone(), s2.clone(), n, pin),
    )
    .expect("spawn");
    s1.release();
    assert!(s2.acquire_timeout(WAIT));
    let t = Instant::now();
    for _ in 0..n {
        s1.release();
        assert!(s2.acquire_timeout(WAIT));
    }
    let dt = t.elapsed();
    child.join_timeout(WAIT).expect("join");
    dt.as_secs_f64() * 1e6 / n as f64
}

fn pingpong(ctx: &mut Ctx, case: &'static str, key: &str, rt: fn(usize, bool) -> f64) -> Row {
    let mut row = Row::new(case, "us_per_roundtrip_pinned_cpu0");
    let n = ctx.scale(20_000, 5_000);
    let rounds = ctx.rounds();
    row.ours = Some(median(rounds, || rt(n, true)));
    row.peer
        .insert("ours_unpinned".into(), median(rounds, || rt(n, false)));
    let py = ctx.python("bench_event.py", &["--pin", "same,none"]);
    row.python = get(&py, &format!("{key}_rt_us_pin_same"));
    if let Some(p) = get(&py, &format!("{key}_rt_us_pin_none")) {
        row.peer.insert("python_unpinned".into(), p);
    }
    row.limit = ctx.limit("futex_shm_roundtrip_us");
    row
}

fn event_pingpong(ctx: &mut Ctx) -> Row {
    pingpong(ctx, "event_pingpong", "event", event_rt)
}

fn semaphore_pingpong(ctx: &mut Ctx) -> Row {
    pingpong(ctx, "semaphore_pingpong", "semaphore", semaphore_rt)
}
