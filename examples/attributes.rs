//! Seed 002: `name`, `pid` and `is_alive()` before and after `join`; three workers sleeping
//! 4, 2 and 3 seconds run at once.
//!
//! ```text
//! cargo run --example attributes
//! ```

use std::time::Duration;

use multiproc::Process;

fn clock(interval: u64) {
    for _ in 0..3 {
        println!("当前时间：{:?}", std::time::SystemTime::now());
        std::thread::sleep(Duration::from_secs(interval));
    }
}

fn work((label, interval): (String, u64)) {
    println!("执行{label}");
    std::thread::sleep(Duration::from_secs(interval));
    println!("end {label}");
}

fn main() -> multiproc::Result<()> {
    let mut p = Process::with_args(clock, 1);
    p.start()?;
    println!("p.pid: {}", p.pid().expect("started"));
    println!("p.name: {}", p.name());
    println!("p.is_alive: {}", p.is_alive());
    p.join()?;
    println!("p.is_alive after join: {}", p.is_alive());

    println!("执行主进程");
    let mut workers: Vec<Process> = [("work1", 4), ("work2", 2), ("work3", 3)]
        .into_iter()
        .map(|(label, secs)| Process::with_args(work, (label.to_string(), secs)))
        .collect();
    for w in &mut workers {
        w.start()?;
    }
    for w in &mut workers {
        w.join()?;
    }
    for (i, w) in workers.iter().enumerate() {
        println!("p{}.name: {}", i + 1, w.name());
    }
    println!("主进程结束");
    Ok(())
}
