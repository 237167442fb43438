//! multiproc's `Pool` over an MPI job: the same `map` and `apply_async` as on one machine,
//! with the workers on the serving ranks, and a task that crashes its worker failing alone.
//!
//! ```text
//! cargo build -p multiproc-mpi --example cluster
//! mpirun -n 3 target/debug/examples/cluster
//! ```
//!
//! Every rank runs `main`: on ranks 1 and 2 `Cluster::init` serves rank 0's pools and ends the
//! process when rank 0 is done; rank 0 goes on past it. Run by `tests/mpirun.rs`.

use multiproc::pool::TaskError;
use multiproc_mpi::Cluster;

fn square(x: u64) -> u64 {
    x * x
}

fn word_count(line: String) -> usize {
    line.split_whitespace().count()
}

/// Ends its worker process as a segfaulting C library would end it.
fn crash(_: ()) -> u64 {
    std::process::abort()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::init()?;
    println!("rank 0: {} serving ranks", cluster.servers());

    let pool = cluster.pool_builder().processes(2).build()?;
    println!("squares: {:?}", pool.map(square, 1..=8)?);

    let lines = ["the quick brown fox", "jumps over", "the lazy dog"].map(String::from);
    println!("words per line: {:?}", pool.map(word_count, lines)?);

    // Under mpi4py.futures a crashing task loses the job; here it loses one worker process,
    // which its rank replaces.
    match pool.apply_async(crash, ()).get() {
        Err(TaskError::WorkerDied { how }) => println!("the crashing task failed alone: {how}"),
        other => return Err(format!("expected WorkerDied, got {other:?}").into()),
    }
    println!("after the crash: {:?}", pool.map(square, [9, 10])?);

    pool.close();
    pool.join()?;
    Ok(())
}
