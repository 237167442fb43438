//! Memory shared between processes, without copying through a pipe (Python's
//! `multiprocessing.Value`, `Array` and `shared_memory.SharedMemory`):
//! `cargo run --example shared_memory`.

use multiproc::{Array, Value, shared::SharedMemory};

/// Squares its share of the array in place, and adds what it did to the counter.
fn square_part((part, parts, numbers, done): (usize, usize, Array<u64>, Value<u32>)) {
    let mut a = numbers.lock().expect("no holder died");
    for i in (part..a.len()).step_by(parts) {
        a[i] *= a[i];
    }
    drop(a);
    *done.lock().expect("no holder died") += 1;
}

/// Writes a greeting into a named segment another process created.
fn greet(name: String) {
    let shm = SharedMemory::open(&name).expect("open");
    shm.write(0, b"hello from a child").expect("write");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let numbers = Array::from_slice(&[1u64, 2, 3, 4, 5, 6])?;
    let done = Value::new(0u32)?;
    let children = (0..2)
        .map(|part| {
            let args = (part, 2, numbers.clone(), done.clone());
            multiproc::spawn_with_args(square_part, args)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for c in children {
        c.join()?;
    }
    println!(
        "squared in place: {:?} by {} children",
        numbers.to_vec(),
        done.get()
    );

    // A named segment: any process that knows the name can open it. The resource tracker
    // removes it should this program be killed before unlink.
    let shm = SharedMemory::create(64)?;
    multiproc::spawn_with_args(greet, shm.name().to_owned())?.join()?;
    let mut buf = [0u8; 18];
    shm.read(0, &mut buf)?;
    println!(
        "segment {} says: {}",
        shm.name(),
        String::from_utf8_lossy(&buf)
    );
    shm.unlink()?;
    Ok(())
}
