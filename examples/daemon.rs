//! Seed 003: a daemonic child is terminated when the parent's code ends; its non-daemonic
//! sibling runs to the end (the parent joins it on exit, as Python does).
//!
//! ```text
//! cargo run --example daemon
//! ```

use std::time::Duration;

use multiproc::process::Builder;

fn foo() {
    println!("123");
    std::thread::sleep(Duration::from_secs(1));
    println!("end123");
}

fn bar() {
    println!("456");
    std::thread::sleep(Duration::from_secs(3));
    println!("end456");
}

fn main() -> multiproc::Result<()> {
    let mut p1 = Builder::new().daemon(true).target(foo);
    let mut p2 = Builder::new().target(bar);
    p1.start()?;
    p2.start()?;
    std::thread::sleep(Duration::from_millis(100));
    println!("main-------");
    // Leaving main: p1 (daemon) is terminated before it prints "end123"; p2 is joined and
    // prints "end456".
    Ok(())
}
