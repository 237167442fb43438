//! Seed 002: `join()` makes the parent wait for the child; `join(3 s)` on a 5 s child
//! returns after 3 s while the child keeps running.
//!
//! ```text
//! cargo run --example join
//! ```

use std::time::{Duration, Instant};

use multiproc::Process;

fn worker(interval: u64) {
    println!("work start");
    std::thread::sleep(Duration::from_secs(interval));
    println!("work end");
}

fn main() -> multiproc::Result<()> {
    println!("主进程正在执行");
    let mut p = Process::with_args(worker, 3);
    p.start()?;
    p.join()?; // the parent waits for the child
    println!("主进程执行完");

    println!("主进程正在执行");
    let started = Instant::now();
    let mut p = Process::with_args(worker, 5);
    p.start()?;
    let code = p.join_timeout(Duration::from_secs(3))?; // waits 3 s only
    println!(
        "主进程执行完 (after {:.0} s, child exit code {code:?}, alive: {})",
        started.elapsed().as_secs_f64(),
        p.is_alive()
    );
    // As in Python, the non-daemonic child is joined when the main program ends.
    Ok(())
}
