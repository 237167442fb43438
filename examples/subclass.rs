//! Seed 000: the subclass style. A type implements `Run` (Python's overridden `run`) and
//! carries its own fields; ten children are started, then joined.
//!
//! ```text
//! cargo run --example subclass
//! ```

use std::time::Duration;

use multiproc::{Process, process::Run};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct MyProcess {
    arg: u32,
}

impl Run for MyProcess {
    fn run(&mut self) {
        println!("nMask {}", self.arg);
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() -> multiproc::Result<()> {
    let mut processes: Vec<Process> = (0..10)
        .map(|i| Process::from_run(MyProcess { arg: i }))
        .collect();
    for p in &mut processes {
        p.start()?;
    }
    for p in &mut processes {
        p.join()?;
    }
    Ok(())
}
