//! Synchronization between processes (Python's `multiprocessing.synchronize`): an `Event`
//! as a starting gun, a `Lock` around a read-modify-write, a `Semaphore` capping how many
//! run at once, and what happens when a lock's holder dies. `cargo run --example locks`.

use std::time::Duration;

use multiproc::{Event, Lock, Semaphore, Value};

type Shared = (Event, Lock, Semaphore, Value<u64>);

fn work((start, lock, slots, total): Shared) {
    start.wait();
    for _ in 0..100 {
        // Without the lock, two processes could read the same value and lose an update.
        let _guard = lock.acquire().expect("no holder died");
        let seen = total.get();
        total.set(seen + 1);
    }
    // At most two processes are ever inside here together.
    slots.acquire();
    std::thread::sleep(Duration::from_millis(20));
    slots.release();
}

fn hold_and_die(lock: Lock) {
    let _guard = lock.acquire().expect("free");
    std::process::abort(); // dies holding the lock, as a crash or the OOM killer would
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared: Shared = (
        Event::new()?,
        Lock::new()?,
        Semaphore::new(2)?,
        Value::new(0)?,
    );
    let workers = (0..4)
        .map(|_| multiproc::spawn_with_args(work, shared.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    shared.0.set(); // everyone starts at once
    for w in workers {
        w.join()?;
    }
    println!("total after 4 x 100 locked increments: {}", shared.3.get());

    // Python's Lock would stay locked forever here; ours hands it over as OwnerDied.
    let lock = Lock::new()?;
    let crashed = multiproc::spawn_with_args(hold_and_die, lock.clone())?;
    println!("holder ended: {}", crashed.join().unwrap_err());
    match lock.acquire() {
        Ok(_) => println!("acquired a free lock"),
        Err(died) => {
            let _guard = died.into_inner(); // the lock is ours now; repair shared state here
            println!("acquire() -> OwnerDied: the holder died, the lock is ours");
        }
    }
    Ok(())
}
