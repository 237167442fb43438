//! Seeds 000 and 002: a target with positional and named arguments; the child prints its own
//! pid and its parent's, as Python's `os.getpid()` / `os.getppid()`.
//!
//! ```text
//! cargo run --example target_args
//! ```

use multiproc::Process;
use serde::{Deserialize, Serialize};

/// Python's `kwargs={'key': 12}`: named values travel as a struct.
#[derive(Serialize, Deserialize, Debug)]
struct Kwargs {
    key: i32,
}

fn test(name: String) {
    println!("Process ID： {}", std::process::id());
    println!(
        "Parent Process ID： {}",
        std::os::unix::process::parent_id()
    );
    println!("name: {name}");
}

fn run_test((name, age, kwargs): (String, u32, Kwargs)) {
    println!("子进程正在运行，name的值：{name},age的值：{age}");
    println!("字典kwargs: {{'key': {}}}", kwargs.key);
}

fn main() -> multiproc::Result<()> {
    println!("主进程开始执行 (main pid {})", std::process::id());
    let mut proc = Process::with_args(test, "nmask".to_string());
    proc.start()?;
    proc.join()?;

    let mut p = Process::with_args(run_test, ("test".to_string(), 27, Kwargs { key: 12 }));
    p.start()?;
    p.join()?;
    Ok(())
}
