//! `Value`, `Array` and named `SharedMemory` across processes, and their bad-input errors.
//! Mirrors CPython's `_TestValue`, `_TestArray` and `_TestSharedMemory`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Reaper, WAIT};
use multiproc::{Array, ErrorKind, Value, shared::SharedMemory};

#[test]
fn value_counter_has_no_lost_increments() {
    let _r = Reaper::new();
    let v = Value::new(0i64).unwrap();
    const PROCS: i64 = 3;
    const N: i64 = 5000;
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            multiproc::spawn_with_args(
                |v: Value<i64>| {
                    for _ in 0..N {
                        *v.lock().unwrap() += 1;
                    }
                },
                v.clone(),
            )
            .unwrap()
        })
        .collect();
    for mut c in children {
        c.join_timeout(WAIT).unwrap();
    }
    assert_eq!(v.get(), PROCS * N);
    v.set(-1);
    assert_eq!(v.get(), -1);
}

#[test]
fn value_lock_timeout() {
    let v = Value::new(1u8).unwrap();
    let _g = v.lock().unwrap();
    assert!(
        v.lock_timeout(Duration::from_millis(20))
            .unwrap_err()
            .is_timeout()
    );
}

#[test]
fn value_get_with_checks_the_lock() {
    let a = Value::new(1u32).unwrap();
    let b = Value::new(2u32).unwrap();
    let mut g = a.get_lock().acquire().unwrap();
    assert_eq!(a.get_with(&g), Some(1));
    assert_eq!(
        b.get_with(&g),
        None,
        "a guard of another lock must not give access"
    );
    assert_eq!(b.set_with(&mut g, 5), None);
    a.set_with(&mut g, 7).unwrap();
    drop(g);
    assert_eq!(a.get(), 7);
    assert_eq!(b.get(), 2);
}

#[test]
fn array_shared_between_processes() {
    let _r = Reaper::new();
    let a = Array::<f64>::from_slice(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(a.len(), 4);
    let child = multiproc::spawn_with_args(
        |a: Array<f64>| {
            let mut g = a.lock().unwrap();
            for x in g.iter_mut() {
                *x *= -1.0;
            }
            g.iter().sum::<f64>()
        },
        a.clone(),
    )
    .unwrap();
    assert_eq!(child.join().unwrap(), -10.0);
    assert_eq!(a.to_vec(), [-1.0, -2.0, -3.0, -4.0]);
    assert_eq!(a.get(3), Some(-4.0));
    assert_eq!(a.get(4), None);
    assert_eq!(a.set(4, 0.0), None);
    a.set(0, 9.0).unwrap();
    assert_eq!(a.get(0), Some(9.0));
    let empty = Array::<u8>::new(0).unwrap();
    assert!(empty.is_empty() && empty.to_vec().is_empty());
}

#[test]
fn array_too_large_is_an_error() {
    let e = Array::<u64>::new(usize::MAX / 4).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[test]
fn shared_memory_create_attach_unlink() {
    let _r = Reaper::new();
    let name = format!("mptest-{}-a", std::process::id());
    let shm = SharedMemory::create_named(&name, 10_000).unwrap();
    assert_eq!(shm.name(), name);
    assert_eq!(shm.size(), 10_000);
    assert_eq!(common::shm_names(&name), std::slice::from_ref(&name));
    shm.write(9_995, b"tail!").unwrap();
    let child = multiproc::spawn_with_args(
        |name: String| {
            let other = SharedMemory::open(&format!("/{name}")).unwrap(); // Python's spelling
            let mut buf = [0u8; 5];
            other.read(9_995, &mut buf).unwrap();
            other.atomics::<AtomicU32>()[0].store(42, Ordering::SeqCst);
            (buf, other.size())
        },
        name.clone(),
    )
    .unwrap();
    let (buf, size) = child.join().unwrap();
    assert_eq!(&buf, b"tail!");
    assert_eq!(size, 10_000);
    assert_eq!(shm.atomics::<AtomicU32>()[0].load(Ordering::SeqCst), 42);
    // A second segment of the same name is refused.
    let e = SharedMemory::create_named(&name, 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    shm.unlink().unwrap();
    assert!(common::shm_names(&name).is_empty());
    assert!(
        SharedMemory::open(&name).is_err(),
        "unlinked names cannot be opened"
    );
    assert!(shm.unlink().is_err(), "a second unlink fails");
    // The mapping stays valid after unlink.
    let mut buf = [0u8; 5];
    shm.read(9_995, &mut buf).unwrap();
    assert_eq!(&buf, b"tail!");
}

#[test]
fn shared_memory_bad_input_is_an_error() {
    for bad in ["", ".hidden", "a/b", "spaces are bad", &"x".repeat(201)] {
        let e = SharedMemory::create_named(bad, 10).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        assert_eq!(
            SharedMemory::open(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    let name = format!("mptest-{}-b", std::process::id());
    assert_eq!(
        SharedMemory::create_named(&name, 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(
        common::shm_names(&name).is_empty(),
        "a failed create left its name"
    );
    let e = SharedMemory::open(&format!("mptest-{}-missing", std::process::id())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    let shm = SharedMemory::create(16).unwrap();
    assert_eq!(
        shm.write(10, &[0; 7]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        shm.read(usize::MAX, &mut [0; 2]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    shm.write(10, &[1; 6]).unwrap();
    shm.unlink().unwrap();
}

/// A creator that exits normally without unlinking leaves nothing behind either.
#[test]
fn shared_memory_of_an_exited_creator_is_unlinked() {
    let _r = Reaper::new();
    let prefix = format!("mptest-{}-c", std::process::id());
    let child = multiproc::spawn_with_args(
        |name: String| {
            let shm = SharedMemory::create_named(&name, 100).unwrap();
            std::mem::forget(shm);
        },
        prefix.clone(),
    )
    .unwrap();
    child.join().unwrap();
    assert!(
        common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
        "{:?}",
        common::shm_names(&prefix)
    );
}

#[test]
fn shared_memory_read_write_at_every_alignment() {
    let shm = SharedMemory::create(100).unwrap();
    shm.unlink().unwrap();
    let data: Vec<u8> = (0..37).collect();
    for offset in 0..20 {
        shm.write(offset, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        shm.read(offset, &mut back).unwrap();
        assert_eq!(back, data, "offset {offset}");
    }
    shm.write(95, &[9; 5]).unwrap();
    let mut tail = [0u8; 5];
    shm.read(95, &mut tail).unwrap();
    assert_eq!(tail, [9; 5]);
}

type RawArgs = (
    usize,
    multiproc::shared::RawValue<u64>,
    multiproc::shared::RawArray<u32>,
    multiproc::shared::RawValue<Point>,
    multiproc::shared::RawArray<[u8; 3]>,
);

/// A child's side of `raw_value_and_array_across_processes`: counts through the atomic views,
/// writes its own slot of the array and the value, and reads what the parent wrote.
fn raw_worker((i, hits, slots, point, odd): RawArgs) -> ([u8; 3], Point) {
    for _ in 0..1000 {
        hits.as_atomic().fetch_add(1, Ordering::Relaxed);
        slots.as_atomics()[0].fetch_add(1, Ordering::Relaxed);
    }
    slots.set(1 + i, 100 + i as u32).unwrap();
    assert_eq!(slots.get(slots.len()), None);
    let seen = odd.get(i).unwrap();
    odd.set(i, [seen[2], seen[1], seen[0]]).unwrap();
    (seen, point.get())
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[repr(C)]
struct Point {
    x: f64,
    y: f64,
}
// SAFETY: two f64s, no padding; every bit pattern is a valid Point.
unsafe impl multiproc::shared::Pod for Point {}

start_method_matrix! {
    /// Python's `RawValue` and `RawArray` (CPython's `_TestValue.test_rawvalue`,
    /// `_TestArray.test_rawarray`): shared without a lock, in children of every start method;
    /// the atomic views lose no increments, and elements of odd sizes keep their neighbours.
    #[test]
    fn raw_value_and_array_across_processes() {
        use multiproc::shared::{RawArray, RawValue};
        let _r = Reaper::new();
        const PROCS: usize = 3;
        let hits = RawValue::new(0u64).unwrap();
        let slots = RawArray::<u32>::new(1 + PROCS).unwrap();
        let point = RawValue::new(Point { x: 1.5, y: -2.0 }).unwrap();
        let odd = RawArray::from_slice(&[[1u8, 2, 3], [4, 5, 6], [7, 8, 9]]).unwrap();
        let children: Vec<_> = (0..PROCS)
            .map(|i| {
                multiproc::spawn_with_args(
                    raw_worker,
                    (i, hits.clone(), slots.clone(), point.clone(), odd.clone()),
                )
                .unwrap()
            })
            .collect();
        let seen: Vec<_> = children
            .into_iter()
            .map(|mut c| c.join_timeout(WAIT).unwrap())
            .collect();
        assert_eq!(hits.get(), 1000 * PROCS as u64);
        assert_eq!(slots.to_vec(), [1000 * PROCS as u32, 100, 101, 102]);
        assert_eq!(
            seen,
            [
                ([1, 2, 3], Point { x: 1.5, y: -2.0 }),
                ([4, 5, 6], Point { x: 1.5, y: -2.0 }),
                ([7, 8, 9], Point { x: 1.5, y: -2.0 }),
            ]
        );
        assert_eq!(odd.to_vec(), [[3, 2, 1], [6, 5, 4], [9, 8, 7]]);
    }
}
