//! Seed 003: `terminate()` sends SIGTERM; `is_alive()` right after it is usually still true
//! (the signal takes a moment to act), and shortly after it is false.
//!
//! ```text
//! cargo run --example terminate
//! ```

use std::time::Duration;

use multiproc::{Process, process::Run};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Myprocess {
    person: String,
}

impl Run for Myprocess {
    fn run(&mut self) {
        println!("{}正在和陈松聊天", self.person);
        std::thread::sleep(Duration::from_secs(3));
        println!("{}还在和陈松聊天", self.person);
    }
}

fn main() -> multiproc::Result<()> {
    let mut p1 = Process::from_run(Myprocess {
        person: "陈松".into(),
    });
    p1.start()?;
    p1.terminate()?;
    println!("{}", if p1.is_alive() { "True" } else { "False" });
    println!("开始");
    // "Shortly after": wait for the child to go (at most a second) rather than guess a sleep,
    // which a loaded machine could outlast.
    p1.join_timeout(Duration::from_secs(1))?;
    println!("{}", if p1.is_alive() { "True" } else { "False" });
    println!("exitcode: {:?}", p1.exitcode());
    Ok(())
}
