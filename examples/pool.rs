//! A pool of worker processes (Python's `multiprocessing.Pool`): `cargo run --example pool`.

use multiproc::{Pool, pool::TaskError};

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(2)?;

    let primes = pool.map(is_prime, 0..20u64)?;
    let found: Vec<usize> = (0..20).filter(|&i| primes[i]).collect();
    println!("map: primes below 20: {found:?}");

    println!("starmap: {:?}", pool.starmap(add, [(1, 2), (3, 4)])?);

    // imap yields results lazily and in order; imap_unordered as they finish.
    let mut big = 0;
    for prime in pool.imap(is_prime, 1_000_000..1_000_100u64) {
        big += usize::from(prime?);
    }
    println!("imap: {big} primes in 1_000_000..1_000_100");

    let pending = pool.apply_async(add, (40, 2));
    println!("apply_async: {}", pending.get()?);

    // A worker that crashes fails its own task, says how, and is replaced.
    match pool.apply(|_: ()| -> u64 { std::process::abort() }, ()) {
        Err(e @ TaskError::WorkerDied { .. }) => println!("crashed task: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    println!("the pool goes on: {}", pool.apply(add, (1, 1))?);

    pool.close();
    pool.join()?;
    Ok(())
}
