//! A one-minute walk through multiproc: run `cargo run --example tour`.
//!
//! Each step prints what it does and what happened.

use std::time::{Duration, Instant};

use multiproc::{JoinError, Process, process::Builder, process::Run};
use serde::{Deserialize, Serialize};

fn step(title: &str) {
    println!("\n== {title}");
}

fn square(x: u64) -> u64 {
    x * x
}

#[derive(Serialize, Deserialize)]
struct Greeter {
    greeting: String,
}

impl Run for Greeter {
    fn run(&mut self) {
        println!(
            "   [{}] {}",
            multiproc::current_process().name(),
            self.greeting
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "multiproc tour: Python's multiprocessing, for Rust (start methods: {:?}, default: {})",
        multiproc::get_all_start_methods(),
        multiproc::get_start_method()
    );
    println!(
        "this is {} (pid {}), {} CPUs",
        multiproc::current_process().name(),
        std::process::id(),
        multiproc::cpu_count()
    );

    step("1. A Process with a target and arguments, like Process(target=f, args=(..))");
    let mut p = Process::with_args(
        |(who, times): (String, u32)| {
            for i in 0..times {
                println!("   [pid {}] hello {who} #{i}", std::process::id());
            }
        },
        ("world".to_string(), 2),
    );
    println!(
        "   before start: name={} pid={:?} alive={}",
        p.name(),
        p.pid(),
        p.is_alive()
    );
    // Half a line sits in stdout's buffer at start(); it is flushed first, so it prints once.
    print!("   starting {}... ", p.name());
    p.start()?;
    println!("started, pid {:?}", p.pid());
    let code = p.join()?;
    println!("   after join: exitcode={code} alive={}", p.is_alive());

    step("2. The subclass style: a type that implements Run");
    let mut g = Process::from_run(Greeter {
        greeting: "hi from a Run type".into(),
    });
    g.start()?;
    g.join()?;

    step("3. Typed results: spawn(..) -> JoinHandle<T>, as std::thread::spawn");
    let h = multiproc::spawn_with_args(square, 12)?;
    println!("   square(12) computed in pid {} = {}", h.pid(), h.join()?);
    let words = multiproc::spawn(|| {
        "computed elsewhere"
            .split(' ')
            .map(String::from)
            .collect::<Vec<_>>()
    })?
    .join()?;
    println!("   a Vec<String> came back: {words:?}");

    step("4. Failures are told apart: panic, exit code, signal");
    match multiproc::spawn(|| -> u32 { panic!("something broke") })?.join() {
        Err(JoinError::Panic { message, location }) => {
            println!("   panic: {message:?} at {location:?} (the child's stderr shows it too)")
        }
        other => println!("   unexpected: {other:?}"),
    }
    match multiproc::spawn(|| -> u32 { std::process::exit(3) })?.join() {
        Err(e) => println!("   exit: {e}"),
        Ok(v) => println!("   unexpected value {v}"),
    }
    let sleeper = multiproc::spawn(|| -> u32 {
        std::thread::sleep(Duration::from_secs(60));
        0
    })?;
    sleeper.kill()?;
    println!("   kill: {}", sleeper.join().unwrap_err());

    step("5. join with a timeout, terminate, exit codes");
    let mut slow = Process::new(|| std::thread::sleep(Duration::from_secs(60)));
    slow.start()?;
    let t = Instant::now();
    println!(
        "   join_timeout(200 ms) -> {:?} after {:?}; still alive: {}",
        slow.join_timeout(Duration::from_millis(200))?,
        t.elapsed(),
        slow.is_alive()
    );
    println!(
        "   active_children: {:?}",
        multiproc::active_children()
            .iter()
            .map(|c| c.name().to_owned())
            .collect::<Vec<_>>()
    );
    slow.terminate()?;
    println!(
        "   terminate() -> exitcode {:?} (-15 = SIGTERM, as Python)",
        slow.join()?
    );
    slow.close()?;
    println!(
        "   after close(), join() says: {}",
        slow.join().unwrap_err()
    );

    step("6. Daemons: killed when the parent ends, may not have children");
    let refused = Builder::new()
        .daemon(true)
        .spawn(|| Process::new(|| {}).start().map_err(|e| e.to_string()))?
        .join()?;
    println!("   a daemon starting a child gets: {refused:?}");

    step("7. Who am I: current_process() and parent_process() in a child");
    let (name, parent) = Builder::new()
        .name("curious")
        .spawn(|| {
            let parent =
                multiproc::parent_process().map(|p| format!("{} (pid {})", p.name(), p.pid()));
            (multiproc::current_process().name().to_owned(), parent)
        })?
        .join()?;
    println!("   child named {name:?}, parent {parent:?}");

    step("8. Typed IPC: a Queue filled by one process, drained by another");
    let queue: multiproc::Queue<(u32, String)> = multiproc::Queue::new()?;
    let mut producer = Process::with_args(
        |q: multiproc::Queue<(u32, String)>| {
            for i in 0..3 {
                q.put((i, format!("item {i}"))).expect("put");
            }
        },
        queue.try_clone()?,
    );
    producer.start()?;
    producer.join()?; // no deadlock: items live in shared memory, not in a feeder thread
    for _ in 0..3 {
        println!("   got {:?}", queue.get_timeout(Duration::from_secs(5))?);
    }
    let (parent_end, child_end) = multiproc::pipe(true)?;
    let echo = multiproc::spawn_with_args(
        |conn: multiproc::Connection| {
            let word: String = conn.recv().expect("recv");
            conn.send(&word.to_uppercase()).expect("send");
        },
        child_end,
    )?;
    parent_end.send("ping")?;
    println!(
        "   over a Pipe: sent \"ping\", got {:?}",
        parent_end.recv::<String>()?
    );
    echo.join()?;

    step("9. A lock whose holder is killed does not deadlock everyone");
    let lock = multiproc::Lock::new()?;
    let holder = multiproc::spawn_with_args(
        |lock: multiproc::Lock| -> u8 {
            let _guard = lock.acquire();
            std::thread::sleep(Duration::from_secs(60));
            0
        },
        lock.clone(),
    )?;
    while !lock.is_locked() {
        std::thread::sleep(Duration::from_millis(1));
    }
    holder.kill()?;
    let _ = holder.join();
    match lock.acquire() {
        Ok(_) => println!("   acquired (unexpected: the holder had it)"),
        Err(died) => {
            let _guard = died.into_inner();
            println!("   acquire() -> OwnerDied: the lock is ours and stays usable");
        }
    }

    step("10. A Pool that never hangs: a worker that dies mid-task fails that task only");
    let pool = multiproc::Pool::new(2)?;
    println!("   map(square, 0..8) = {:?}", pool.map(square, 0..8u64)?);
    // abort() ends the worker as a segfault or the OOM killer would.
    let lost = pool.apply(|_: ()| -> u64 { std::process::abort() }, ());
    println!("   a task whose worker died: {}", lost.unwrap_err());
    println!(
        "   the pool carries on: apply(square, 9) = {}",
        pool.apply(square, 9u64)?
    );
    pool.close();
    pool.join()?;

    println!(
        "\nNext: the seed examples (cargo run --example join, daemon, terminate, tcp_server, ...), and the docs (cargo doc --open)."
    );
    Ok(())
}
