//! The MPI pool against a local `Pool` with as many workers, on the same work, in one run:
//! `mpirun -n 3 target/release/cluster-bench [--quick]` (figures in this crate's README).
//!
//! - `cluster_apply_async`: 20,000 tiny tasks submitted with `apply_async`, then awaited (tasks/s);
//! - `cluster_map_small`: `map(x*x)` over 1,000,000 `u64`s, default chunks (items/s);
//! - `cluster_bytes_1m`: 200 tasks each taking 1 MiB of arguments (a `serde_bytes::ByteBuf`),
//!   4 in flight (MB/s).
//!
//! Each case runs three times; the best run is printed, with the others. With `--json`, one
//! JSON line instead, with each case's median and runs on either pool: what the benchmark
//! harness (`bench/`, cases `cluster_*`) reads.

use std::time::Instant;

use multiproc::Pool;
use multiproc_mpi::Cluster;

type Error = Box<dyn std::error::Error>;

/// A case's name, unit and rates (best first).
type Case = (&'static str, &'static str, Vec<f64>);

fn square(x: u64) -> u64 {
    x * x
}

/// A byte string (`serde_bytes::ByteBuf`), as Python's `bytes`: a `Vec<u8>` would be encoded
/// as a sequence of a million integers, one serde call each.
fn len(v: serde_bytes::ByteBuf) -> u64 {
    v.len() as u64
}

/// Runs `f` (returning how many units it did) three times; units per second, best first.
fn measure(mut f: impl FnMut() -> Result<f64, Error>) -> Result<Vec<f64>, Error> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let units = f()?;
        rates.push(units / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| b.total_cmp(a));
    Ok(rates)
}

fn cases(pool: &Pool, scale: u64) -> Result<Vec<Case>, Error> {
    let n = 20_000 / scale;
    let apply = measure(|| {
        let rs: Vec<_> = (0..n).map(|i| pool.apply_async(square, i)).collect();
        for r in rs {
            r.get()?;
        }
        Ok(n as f64)
    })?;
    let m = 1_000_000 / scale;
    let map = measure(|| {
        let out = pool.map(square, 0..m)?;
        assert_eq!(out.len() as u64, m);
        Ok(m as f64)
    })?;
    let k = 200 / scale;
    let mib = serde_bytes::ByteBuf::from(vec![7u8; 1 << 20]);
    let bytes = measure(|| {
        let mut inflight = std::collections::VecDeque::new();
        for _ in 0..k {
            if inflight.len() == 4 {
                let r: multiproc::pool::AsyncResult<u64> =
                    inflight.pop_front().expect("4 in flight");
                assert_eq!(r.get()?, 1 << 20);
            }
            inflight.push_back(pool.apply_async(len, mib.clone()));
        }
        for r in inflight {
            assert_eq!(r.get()?, 1 << 20);
        }
        Ok(k as f64 * 1.048_576)
    })?;
    Ok(vec![
        ("cluster_apply_async", "tasks/s", apply),
        ("cluster_map_small", "items/s", map),
        ("cluster_bytes_1m", "MB/s", bytes),
    ])
}

fn fmt(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

fn main() -> Result<(), Error> {
    let cluster = Cluster::init()?;
    let scale = if std::env::args().any(|a| a == "--quick") {
        10
    } else {
        1
    };
    let workers = cluster.servers().max(1);
    let mpi = cluster.pool_builder().processes(workers).build()?;
    let over_mpi = cases(&mpi, scale)?;
    mpi.close();
    mpi.join()?;
    drop(mpi);
    let local = Pool::new(workers)?;
    let here = cases(&local, scale)?;
    local.close();
    local.join()?;
    if std::env::args().any(|a| a == "--json") {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let fields: Vec<String> = over_mpi
            .iter()
            .zip(&here)
            .map(|((name, _, a), (_, _, b))| {
                format!(
                    "\"{name}\": {{\"median\": {}, \"runs\": {a:?}, \"local_median\": {}}}",
                    median(a),
                    median(b)
                )
            })
            .collect();
        println!(
            "{{\"workers\": {workers}, \"ranks\": {}, {}}}",
            cluster.size(),
            fields.join(", ")
        );
        return Ok(());
    }
    println!(
        "{} ranks on {:?}; {workers} workers either way; best of 3 (all runs)",
        cluster.size(),
        cluster.hosts()
    );
    println!("| case | unit | MPI pool | local Pool | MPI / local |");
    println!("|---|---|---|---|---|");
    for ((name, unit, a), (_, _, b)) in over_mpi.iter().zip(&here) {
        println!(
            "| {name} | {unit} | {} ({}) | {} ({}) | {:.2} |",
            fmt(a[0]),
            a.iter().map(|r| fmt(*r)).collect::<Vec<_>>().join(", "),
            fmt(b[0]),
            b.iter().map(|r| fmt(*r)).collect::<Vec<_>>().join(", "),
            a[0] / b[0]
        );
    }
    Ok(())
}
