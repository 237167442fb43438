//! `concurrent.futures.ProcessPoolExecutor` for Rust: submit work, get futures, take results
//! as they complete. `cargo run --example executor`.

use std::time::Duration;

use multiproc::{ProcessPoolExecutor, pool::as_completed};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let executor = ProcessPoolExecutor::new(2)?;

    let future = executor.submit(nap, 10);
    println!("submit(nap, 10).result() = {}", future.result()?);

    // as_completed yields the quick task first, whatever the order of submission.
    let futures = vec![executor.submit(nap, 400), executor.submit(nap, 1)];
    let order = as_completed(futures, None)
        .map(|f| f?.result())
        .collect::<Result<Vec<_>, _>>()?;
    println!("as_completed order: {order:?}");

    // map keeps the order of its input; a timeout would apply to the whole call.
    let mapped = executor
        .map(nap, [3, 2, 1], None)
        .collect::<Result<Vec<_>, _>>()?;
    println!("map: {mapped:?}");

    executor.shutdown(true, false);
    Ok(())
}
