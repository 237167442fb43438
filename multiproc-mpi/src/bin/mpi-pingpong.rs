//! The limit for `cluster_bytes_1m`: a raw MPI send/recv ping-pong of 1 MiB between rank 0
//! and rank 1, with nothing else around it (no pool, no worker, no relay).
//!
//! `mpirun -n 2 mpi-pingpong [--quick] [--json]`: rank 0 sends 1 MiB to rank 1, which sends
//! it back, `iters` times after a warm-up, five rounds. The rate is bytes moved per second
//! (`2 * 1 MiB * iters / time`, each direction counted), i.e. 1 MiB per half round trip: what
//! one link carries one way. Prints the median in MB/s (with `--json`, a JSON line).

use std::time::Instant;

use mpi::traits::*;

const SIZE: usize = 1 << 20;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let json = std::env::args().any(|a| a == "--json");
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    if world.size() != 2 {
        if world.rank() == 0 {
            eprintln!("mpi-pingpong: run it with mpirun -n 2");
        }
        std::process::exit(2);
    }
    let iters = if quick { 20 } else { 100 };
    let mut buf = vec![7u8; SIZE];
    let peer = world.process_at_rank(1 - world.rank());
    let mut rates = Vec::new();
    for round in 0..6 {
        world.barrier();
        let t = Instant::now();
        for _ in 0..iters {
            if world.rank() == 0 {
                peer.send(&buf[..]);
                peer.receive_into(&mut buf[..]);
            } else {
                peer.receive_into(&mut buf[..]);
                peer.send(&buf[..]);
            }
        }
        // Round 0 warms up (connections, registration).
        if round > 0 {
            rates.push((2 * SIZE * iters) as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
    }
    if world.rank() == 0 {
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        if json {
            println!(
                "{}",
                format_args!("{{\"pingpong_1m_mb_per_s\": {median:.1}, \"runs\": {rates:?}}}")
            );
        } else {
            println!("raw MPI ping-pong of 1 MiB: {median:.1} MB/s (median of {rates:?})");
        }
    }
}
