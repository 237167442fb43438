//! multiproc's [`Pool`] and [`ProcessPoolExecutor`] over the ranks of an MPI job, where a
//! task that crashes its worker fails alone.
//!
//! Start the program with `mpirun -n N`: every rank calls [`Cluster::init`] first thing in
//! `main`; on rank 0 it returns the [`Cluster`] and the program goes on, on the other ranks it
//! serves rank 0's pools and then ends the process (mpi4py.futures' static mode);
//! [`Cluster::spawn`] starts the servers from a plainly started program instead (dynamic
//! mode). A pool built
//! from [`Cluster::pool_builder`] is an ordinary [`Pool`]: the same methods, errors and
//! guarantees, with its workers on the serving ranks.
//!
//! A serving rank runs no task itself: each worker is a local worker process started by the
//! rank, exactly a local pool's worker, and the rank relays bytes between it and rank 0. So a
//! task that segfaults, aborts, calls `exit` or is killed by the OOM killer ends one worker
//! process, not an MPI rank: it fails alone with [`TaskError::WorkerDied`] saying how, the
//! rank starts a replacement, and the MPI job goes on (where mpi4py.futures loses the job).
//! Losing a whole rank or host is different: Open MPI without ULFM cannot go on without a
//! rank, so the job ends, promptly and with a non-zero status, never a hang: under `mpirun`,
//! `mpirun` kills every process of the job within about a second and names the rank and how
//! it died; where nothing does (a spawned server in dynamic mode, a host that goes silent),
//! every rank hears from its peers at least once a second and a rank silent for 10 s makes
//! its peer print which one and call `MPI_Abort`. See the crate's README ("Losing a rank").
//!
//! Tasks name their code by its offset in the executable, so every rank must run the identical
//! build: [`Cluster::init`] compares a hash of each rank's executable and refuses a mismatch.
//!
//! # Examples
//! ```no_run
//! use multiproc_mpi::Cluster;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cluster = Cluster::init()?; // serving ranks stay in here
//!     let pool = cluster.pool_builder().build()?;
//!     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
//!     pool.close();
//!     pool.join()?;
//!     Ok(())
//! }
//! ```
//!
//! [`Pool`]: multiproc::Pool
//! [`ProcessPoolExecutor`]: multiproc::ProcessPoolExecutor
//! [`TaskError::WorkerDied`]: multiproc::pool::TaskError::WorkerDied

#![deny(missing_docs, missing_debug_implementations, unsafe_code)]

use std::io::{self, Read};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use mpi::Threading;
use mpi::topology::MergeOrder;
use mpi::traits::*;
use multiproc::Pool;
use multiproc::pool::{ExecutorBuilder, PoolBuilder};
use sha2::{Digest, Sha256};

mod hub;
mod net;
mod proto;
mod serve;

pub use hub::MpiLauncher;

use hub::Hub;
use net::{Inbound, Net};
use proto::Msg;

/// Rank 0's handle on the MPI job: builds pools whose workers run on the serving ranks.
///
/// Keep it until the program is done with its pools: dropping it stops the serving ranks and
/// finalizes MPI (a rank 0 that ends without doing so makes `mpirun` abort the job).
#[derive(Debug)]
pub struct Cluster {
    hub: Arc<Hub>,
    size: i32,
    hosts: Vec<String>,
    thread: Option<JoinHandle<()>>,
}

/// What the MPI thread reports to `init`.
enum Started {
    Ready { size: i32, hosts: Vec<String> },
    Failed(String),
}

impl Cluster {
    /// Initializes MPI and, on a serving rank (any but 0), serves rank 0's pools until rank 0
    /// drops its `Cluster`, then ends the process (exit status 0) without returning. On rank
    /// 0, checks that every rank runs the same build of this program, and returns.
    ///
    /// Call it first thing in `main`, before the program starts threads or processes of its
    /// own: a serving rank never runs the rest of `main`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](multiproc::ErrorKind::Io) when MPI cannot be initialized (or already
    /// was), when this program's executable cannot be read, or when a rank runs a different
    /// build of the program (the message names the ranks and their hosts; the serving ranks
    /// are then told to stop).
    pub fn init() -> multiproc::Result<Cluster> {
        Cluster::start(None)
    }

    /// Dynamic mode (mpi4py.futures' `MPIPoolExecutor` started plainly): in a program started
    /// without `mpirun` (an MPI singleton), starts `servers` more copies of this executable
    /// with `MPI_Comm_spawn` to serve it, and returns; in a program started by `mpirun -n N`
    /// with N > 1, the same as [`init`](Cluster::init) (static mode, the `N - 1` other ranks
    /// serve). The spawned copies run `main` and stay in this call (or in `init`), serving,
    /// until this `Cluster` is dropped.
    ///
    /// Open MPI refuses more processes than cores unless
    /// `OMPI_MCA_rmaps_base_oversubscribe=1` is set, and spawned processes talk over TCP even on
    /// one machine. Spawning is not available under every launcher (`srun`, MPICH): see the
    /// crate's README.
    ///
    /// # Errors
    /// As [`init`](Cluster::init), and [`ErrorKind::Io`](multiproc::ErrorKind::Io) when the
    /// spawn fails (with MPI's message).
    pub fn spawn(servers: usize) -> multiproc::Result<Cluster> {
        Cluster::start(Some(servers))
    }

    fn start(spawn: Option<usize>) -> multiproc::Result<Cluster> {
        let hash = build_hash()?;
        let (tx, rx) = mpsc::channel();
        // Every MPI call of this process is made by this one thread (Open MPI's `Funneled`):
        // the pool's thread and the caller's threads never touch MPI.
        let hub_slot: Arc<std::sync::Mutex<Option<Arc<Hub>>>> = Arc::default();
        let theirs = Arc::clone(&hub_slot);
        let thread = std::thread::Builder::new()
            .name("multiproc-mpi".into())
            .spawn(move || mpi_thread(hash, spawn, &tx, &theirs))?;
        match rx.recv() {
            Ok(Started::Ready { size, hosts }) => {
                let hub = hub_slot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("set before Ready");
                Ok(Cluster {
                    hub,
                    size,
                    hosts,
                    thread: Some(thread),
                })
            }
            Ok(Started::Failed(why)) => {
                let _ = thread.join();
                Err(io::Error::other(why).into())
            }
            // The thread ended without a word: it served, as a rank other than 0.
            Err(_) => {
                let served = thread.join().is_ok();
                std::process::exit(if served { 0 } else { 101 });
            }
        }
    }

    /// The number of ranks in the job, rank 0 included.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// The number of serving ranks (all but rank 0).
    pub fn servers(&self) -> usize {
        self.size as usize - 1
    }

    /// The host name of each rank, by rank.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The launcher that starts pool workers on the serving ranks, for
    /// [`PoolBuilder::launcher`] and [`ExecutorBuilder::launcher`].
    pub fn launcher(&self) -> MpiLauncher {
        MpiLauncher {
            hub: Arc::clone(&self.hub),
        }
    }

    /// A [`PoolBuilder`] for a pool on the serving ranks: one worker per serving rank unless
    /// [`processes`](PoolBuilder::processes) says otherwise (workers are spread evenly over the
    /// ranks, and each rank may run several). Every other option works as for a local pool,
    /// except that the initializer's arguments cannot hold handles that own a descriptor.
    pub fn pool_builder(&self) -> PoolBuilder {
        Pool::builder()
            .processes(self.servers().max(1))
            .launcher(self.launcher())
    }

    /// An [`ExecutorBuilder`] for a `ProcessPoolExecutor` on the serving ranks, as
    /// [`pool_builder`](Cluster::pool_builder).
    pub fn executor_builder(&self) -> ExecutorBuilder {
        ExecutorBuilder::new()
            .max_workers(self.servers().max(1))
            .launcher(self.launcher())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.hub.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SHA-256 of this program's executable file: equal on two ranks only if they run the same
/// build (code offsets, which name tasks, are then equal too).
fn build_hash() -> io::Result<[u8; 32]> {
    let mut file = std::fs::File::open("/proc/self/exe")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn hex(hash: &[u8]) -> String {
    hash.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The body of the MPI thread: init, handshake, then serve (ranks > 0) or run the hub (rank 0),
/// then finalize (when `universe` drops).
fn mpi_thread(
    hash: [u8; 32],
    spawn: Option<usize>,
    tx: &mpsc::Sender<Started>,
    hub_slot: &std::sync::Mutex<Option<Arc<Hub>>>,
) {
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = tx.send(Started::Failed(
            "MPI was initialized already in this process".into(),
        ));
        return;
    };
    if threading < Threading::Funneled {
        let _ = tx.send(Started::Failed(format!(
            "this MPI library provides thread level {threading:?}, and multiproc-mpi needs \
             Funneled"
        )));
        return;
    }
    let world = universe.world();
    // The job's communicator, with the program as rank 0 and its servers as the others.
    let comm = if let Some(parent) = world.parent() {
        // Spawned by a program in dynamic mode: it is rank 0 of the merged communicator.
        parent.merge(MergeOrder::High)
    } else if let Some(n) = spawn.filter(|_| world.size() == 1) {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                let _ = tx.send(Started::Failed(format!("cannot find this program: {e}")));
                return;
            }
        };
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        match world
            .process_at_rank(0)
            .spawn(&std::process::Command::new(exe), n)
        {
            Ok(children) => children.merge(MergeOrder::Low),
            Err(e) => {
                let _ = tx.send(Started::Failed(format!(
                    "MPI_Comm_spawn of {n} serving processes failed: {e:?}"
                )));
                return;
            }
        }
    } else {
        world
    };
    let net = Net::new(comm);
    let rank = net.world.rank();
    let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
    if rank != 0 {
        let hello = Msg::Hello {
            hash,
            pid: std::process::id(),
            host,
        };
        net.world
            .process_at_rank(0)
            .send_with_tag(&hello.encode()[..], proto::TAG);
        match Msg::decode(net.recv_from(0)) {
            Some(Msg::Verdict(Ok(()))) => {
                net.watch([(0, "rank 0 (the program)".to_owned())]);
                serve::serve(&net);
            }
            Some(Msg::Verdict(Err(why))) => {
                eprintln!("multiproc-mpi: rank {rank}: not serving: {why}");
            }
            other => eprintln!("multiproc-mpi: rank {rank}: unexpected handshake {other:?}"),
        }
        // Dropping `tx` unanswered tells `init` this rank served.
        return;
    }
    let size = net.world.size();
    let mut hosts = vec![host];
    let mut mismatched = Vec::new();
    let mut names = Vec::new();
    for r in 1..size {
        match Msg::decode(net.recv_from(r)) {
            Some(Msg::Hello {
                hash: theirs,
                host,
                pid,
            }) => {
                if theirs != hash {
                    mismatched.push(format!(
                        "rank {r} (pid {pid} on {host}) runs build {}",
                        hex(&theirs)
                    ));
                }
                names.push((r, format!("serving rank {r} (pid {pid} on {host})")));
                hosts.push(host);
            }
            _ => {
                mismatched.push(format!("rank {r} does not speak multiproc-mpi"));
                hosts.push("?".into());
            }
        }
    }
    let verdict = if mismatched.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not every rank runs the same build of this program (rank 0 runs build {}; {}): \
             tasks are named by code offsets, so every rank must run the identical executable",
            hex(&hash),
            mismatched.join("; ")
        ))
    };
    let message = Msg::Verdict(verdict.clone()).encode();
    let mut inbound = Inbound::new();
    for r in 1..size {
        net.send(r, &message, Some(r), &mut inbound);
    }
    if let Err(why) = verdict {
        let _ = tx.send(Started::Failed(why));
        return;
    }
    let hub = match Hub::new(size - 1) {
        Ok(hub) => Arc::new(hub),
        Err(e) => {
            let _ = tx.send(Started::Failed(format!("rank 0 cannot make a pipe: {e}")));
            let message = Msg::Shutdown.encode();
            for r in 1..size {
                net.send(r, &message, Some(r), &mut inbound);
            }
            return;
        }
    };
    *hub_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&hub));
    if tx.send(Started::Ready { size, hosts }).is_err() {
        hub.close();
    }
    net.watch(names);
    hub.run(&net);
}
