//! Handles (`Value`, `Lock`, `Event`, `Queue`) given to pool workers through the initializer,
//! Python's standard way of sharing a lock or a value with a pool (issue 10, item 11), under
//! every start method, for every worker including replacements; and the clear refusal of a
//! handle among a task's arguments or in its value.

mod common;

use std::sync::OnceLock;

use multiproc::{ErrorKind, Event, Lock, Pool, ProcessPoolExecutor, Queue, Value, pool::TaskError};

type Handles = (Value<u64>, Lock, Event, Queue<u64>);

/// What the initializer received, in each worker.
static HANDLES: OnceLock<Handles> = OnceLock::new();

fn keep(handles: Handles) {
    assert!(HANDLES.set(handles).is_ok(), "the initializer ran twice");
}

fn handles() -> &'static Handles {
    HANDLES.get().expect("the initializer stored the handles")
}

/// Adds `x` to the shared value and puts it on the queue; returns the worker's pid.
fn add(x: u64) -> u32 {
    let (value, _, _, queue) = handles();
    {
        let mut v = value
            .lock()
            .unwrap_or_else(multiproc::sync::OwnerDied::into_inner);
        *v += x;
    }
    queue.put(x).expect("put");
    std::process::id()
}

/// Whether the shared lock is free (taking it and letting it go if so).
fn lock_is_free(_: ()) -> bool {
    handles().1.try_acquire().is_ok()
}

fn set_event(_: ()) {
    handles().2.set();
}

fn value_of(_: ()) -> u64 {
    handles().0.get()
}

fn new_handles() -> Handles {
    (
        Value::new(0u64).unwrap(),
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Queue::new().unwrap(),
    )
}

fn clone_handles(h: &Handles) -> Handles {
    (
        h.0.clone(),
        h.1.clone(),
        h.2.clone(),
        h.3.try_clone().unwrap(),
    )
}

// Every test below runs once per start method (modules fork, spawn, forkserver).
start_method_matrix! {
    #[test]
    fn an_initializer_receives_shared_handles() {
        let _r = common::Reaper::new();
        // Anything started lazily on first use (the forkserver) is started before counting
        // descriptors.
        drop(Pool::new(1).unwrap());
        let shared = new_handles();
        let (value, lock, event, queue) = clone_handles(&shared);
        let fds_before = common::open_fds();
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .initializer(keep, clone_handles(&shared))
            .build()
            .unwrap();
        // Ten tasks, two per worker: at least five workers, most of them replacements, each
        // launched with its own copies of the descriptors.
        let pids = pool.map_chunked(add, 1..=10u64, 1).unwrap();
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 5, "{pids:?}");
        assert_eq!(value.get(), 55);
        let mut got: Vec<u64> = (0..10)
            .map(|_| queue.get_timeout(common::WAIT).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        // The lock is the parent's own.
        let held = lock.acquire().unwrap();
        assert!(!pool.apply(lock_is_free, ()).unwrap());
        drop(held);
        assert!(pool.apply(lock_is_free, ()).unwrap());
        assert!(!event.is_set());
        pool.apply(set_event, ()).unwrap();
        assert!(event.is_set());
        // A worker that dies is replaced by one that has the handles too.
        let died = pool.apply(|_: ()| -> u8 { std::process::exit(5) }, ());
        assert!(died.unwrap_err().is_worker_died());
        value.set(1000);
        assert_eq!(pool.apply(value_of, ()).unwrap(), 1000);
        pool.close();
        pool.join().unwrap();
        drop(pool);
        // The pool held its copies of the descriptors only while it lived.
        assert_eq!(common::open_fds(), fds_before);
    }

    #[test]
    fn an_executor_initializer_receives_shared_handles() {
        let _r = common::Reaper::new();
        let shared = new_handles();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .initializer(keep, clone_handles(&shared))
            .build()
            .unwrap();
        let futures: Vec<_> = (1..=4u64).map(|x| ex.submit(add, x)).collect();
        for f in futures {
            f.result().unwrap();
        }
        assert_eq!(shared.0.get(), 10);
        ex.shutdown(true, false);
    }

    #[test]
    fn a_handle_among_task_arguments_is_refused_clearly() {
        let _r = common::Reaper::new();
        let pool = Pool::new(1).unwrap();
        let lock = Lock::new().unwrap();
        let check = |got: Result<(), TaskError>| match got {
            Err(TaskError::Process(e)) => {
                assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
                let text = e.to_string();
                assert!(text.contains("initializer"), "{text}");
            }
            other => panic!("unexpected {other:?}"),
        };
        check(pool.apply(|l: Lock| drop(l), lock.clone()));
        check(pool.map(|l: Lock| drop(l), vec![lock.clone()]).map(drop));
        check(pool.map_async(|l: Lock| drop(l), vec![lock.clone()]).get().map(drop));
        check(pool.imap(|l: Lock| drop(l), vec![lock.clone()]).next().unwrap());
        check(pool.imap_unordered(|l: Lock| drop(l), vec![lock.clone()]).next().unwrap());
        let ex = ProcessPoolExecutor::new(1).unwrap();
        check(ex.submit(|l: Lock| drop(l), lock.clone()).result());
        // And a task cannot return one.
        match pool.apply(|_: ()| Lock::new().unwrap(), ()) {
            Err(TaskError::Process(e)) => {
                assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
                assert!(e.to_string().contains("handle"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The pool is unharmed.
        assert_eq!(pool.apply(|x: u8| x + 1, 1).unwrap(), 2);
    }
}
