//! Producers and a consumer in separate processes, joined by a typed `Queue`
//! (Python's `multiprocessing.Queue`): `cargo run --example queue`.

use std::time::Duration;

use multiproc::{Queue, queue::GetTimeoutError};

/// `None` says "this producer is done", as Python programs send a sentinel.
type Item = Option<(u32, u64)>;

fn produce((id, q): (u32, Queue<Item>)) {
    for n in 1..=5 {
        q.put(Some((id, n * 10))).expect("put");
    }
    q.put(None).expect("put");
}

/// Takes items until every producer said it is done; returns how many and their sum.
fn consume((producers, q): (u32, Queue<Item>)) -> (u32, u64) {
    let (mut done, mut count, mut sum) = (0, 0, 0);
    while done < producers {
        match q.get().expect("get") {
            Some((_, value)) => {
                count += 1;
                sum += value;
            }
            None => done += 1,
        }
    }
    (count, sum)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q: Queue<Item> = Queue::with_maxsize(4)?; // bounded: producers wait for the consumer
    let consumer = multiproc::spawn_with_args(consume, (2, q.clone()))?;
    let producers = (0..2)
        .map(|id| multiproc::spawn_with_args(produce, (id, q.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    for p in producers {
        p.join()?;
    }
    let (count, sum) = consumer.join()?;
    println!("consumed {count} items, sum {sum}");

    // A timed get on an empty queue says Timeout (Python's queue.Empty), a typed error.
    match q.get_timeout(Duration::from_millis(50)) {
        Err(e @ (GetTimeoutError::Timeout | GetTimeoutError::Disconnected)) => {
            println!("empty afterwards: {e}")
        }
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
