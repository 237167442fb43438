//! Rank 0's side: the [`MpiLauncher`] a pool starts workers with, the [`MpiLink`] to each remote
//! worker, and the hub thread, the one thread of rank 0 that calls MPI.
//!
//! The pool's thread waits with `poll(2)`, and MPI has no descriptor to wait on, so the hub
//! turns MPI traffic into descriptors: each link has a pipe the hub writes a byte into when
//! bytes from its worker arrived, and another when the worker died (left readable, as a
//! pidfd is). The pool's thread hands the hub what to send through a queue and a wake-up pipe.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use multiproc::pool::remote::{WorkerLauncher, WorkerLink, WorkerStart};
use rustix::event::{PollFd, PollFlags};
use rustix::pipe::PipeFlags;

use crate::net::{self, Inbound, Net};
use crate::proto::{Msg, encode_relay};

/// A round trip between rank 0 and a worker when both ends had gone idle (`net::backoff`).
const ROUND_TRIP: Duration = Duration::from_millis(2);

/// How long a launch waits for its rank's answer.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        PipeFlags::NONBLOCK | PipeFlags::CLOEXEC,
    )?)
}

fn poke(fd: &OwnedFd) {
    // A full pipe is poked already.
    let _ = rustix::io::write(fd, &[1]);
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// What the hub and the pool's thread share.
pub(crate) struct Hub {
    state: Mutex<State>,
    wake_rx: OwnedFd,
    wake_tx: OwnedFd,
    next_slot: AtomicU64,
    /// Serving ranks: 1..=servers.
    servers: i32,
}

#[derive(Default)]
struct State {
    outbox: VecDeque<(i32, Vec<u8>)>,
    links: HashMap<u64, Arc<LinkShared>>,
    launches: HashMap<u64, mpsc::Sender<Result<u32, String>>>,
    /// Workers alive on each rank (index = rank).
    live: Vec<usize>,
    /// Stop once the outbox is empty (the cluster is being dropped).
    closing: bool,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(servers: i32) -> io::Result<Hub> {
        let (wake_rx, wake_tx) = pipe()?;
        Ok(Hub {
            state: Mutex::new(State {
                live: vec![0; servers as usize + 1],
                ..State::default()
            }),
            wake_rx,
            wake_tx,
            next_slot: AtomicU64::new(0),
            servers,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, rank: i32, bytes: Vec<u8>) {
        let mut st = self.state();
        let was_empty = st.outbox.is_empty();
        st.outbox.push_back((rank, bytes));
        drop(st);
        if was_empty {
            poke(&self.wake_tx);
        }
    }

    /// Asks the hub to tell the servers to stop, and to end.
    pub(crate) fn close(&self) {
        self.state().closing = true;
        poke(&self.wake_tx);
    }

    /// The hub thread's loop, until [`close`](Hub::close); then the servers are told to stop.
    pub(crate) fn run(&self, net: &Net) {
        let mut inbound = Inbound::new();
        let mut idle = 0u32;
        let mut last_beat = Instant::now();
        loop {
            let mut busy = false;
            net.check_peers();
            if last_beat.elapsed() >= net::HEARTBEAT {
                last_beat = Instant::now();
                let alive = Msg::Alive.encode();
                for rank in 1..=self.servers {
                    net.send(rank, &alive, None, &mut inbound);
                }
            }
            while let Some((rank, bytes)) = inbound.pop_front().or_else(|| net.try_recv(None)) {
                busy = true;
                self.handle(rank, bytes);
            }
            let (next, closing) = {
                let mut st = self.state();
                (st.outbox.pop_front(), st.closing)
            };
            if let Some((rank, bytes)) = next {
                net.send(rank, &bytes, None, &mut inbound);
                idle = 0;
                continue;
            }
            if closing {
                break;
            }
            idle = if busy { 0 } else { idle.saturating_add(1) };
            if let Some(sleep) = net::backoff(idle) {
                let mut fds = [PollFd::new(&self.wake_rx, PollFlags::IN)];
                let ts = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: sleep.as_nanos() as _,
                };
                if matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
                    idle = 0;
                }
            }
            drain(&self.wake_rx);
        }
        let shutdown = Msg::Shutdown.encode();
        for rank in 1..=self.servers {
            net.send(rank, &shutdown, None, &mut inbound);
        }
    }

    fn handle(&self, rank: i32, bytes: Vec<u8>) {
        let mut st = self.state();
        match Msg::decode(bytes) {
            Some(Msg::FromWorker { slot, bytes }) => {
                if let Some(link) = st.links.get(&slot) {
                    link.arrived(&bytes, None);
                }
            }
            Some(Msg::Died { slot, code }) => {
                if let Some(link) = st.links.remove(&slot) {
                    link.arrived(&[], Some(code));
                }
                if let Some(n) = st.live.get_mut(rank as usize) {
                    *n = n.saturating_sub(1);
                }
            }
            Some(Msg::Launched { slot, pid }) => {
                let waiting = st.launches.remove(&slot);
                if waiting.is_none_or(|tx| tx.send(Ok(pid)).is_err()) {
                    // The launch gave up waiting: this worker is nobody's.
                    st.links.remove(&slot);
                    st.outbox.push_back((rank, Msg::Kill { slot }.encode()));
                }
            }
            Some(Msg::LaunchFailed { slot, why }) => {
                st.links.remove(&slot);
                if let Some(n) = st.live.get_mut(rank as usize) {
                    *n = n.saturating_sub(1);
                }
                if let Some(tx) = st.launches.remove(&slot) {
                    let _ = tx.send(Err(why));
                }
            }
            Some(Msg::Alive) => {}
            other => tracing::warn!(
                rank,
                ?other,
                "unexpected message from a serving rank; ignored"
            ),
        }
    }
}

/// A link's inbox, filled by the hub thread.
struct LinkShared {
    inbox: Mutex<Inbox>,
    /// A byte here means "bytes arrived" (at most one waits).
    data_rx: OwnedFd,
    data_tx: OwnedFd,
    /// Readable once the worker died, for ever.
    death_rx: OwnedFd,
    death_tx: OwnedFd,
}

#[derive(Default)]
struct Inbox {
    bytes: Vec<u8>,
    poked: bool,
    died: Option<i32>,
}

impl LinkShared {
    fn new() -> io::Result<LinkShared> {
        let (data_rx, data_tx) = pipe()?;
        let (death_rx, death_tx) = pipe()?;
        Ok(LinkShared {
            inbox: Mutex::new(Inbox::default()),
            data_rx,
            data_tx,
            death_rx,
            death_tx,
        })
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the hub: bytes from the worker, then (once) its death.
    fn arrived(&self, bytes: &[u8], died: Option<i32>) {
        let mut inbox = self.inbox();
        inbox.bytes.extend_from_slice(bytes);
        if !bytes.is_empty() && !inbox.poked {
            inbox.poked = true;
            poke(&self.data_tx);
        }
        if let Some(code) = died {
            inbox.died = Some(code);
            poke(&self.death_tx);
        }
    }
}

/// Starts pool workers on the serving ranks of the MPI job, the rank with the fewest first.
/// Get one from [`Cluster::launcher`](crate::Cluster::launcher).
#[derive(Clone, Debug)]
pub struct MpiLauncher {
    pub(crate) hub: Arc<Hub>,
}

impl WorkerLauncher for MpiLauncher {
    fn round_trip(&self) -> Duration {
        // An idle rank polls MPI at most a millisecond apart (`net::backoff`), at each end.
        ROUND_TRIP
    }

    fn launch(&self, start: &WorkerStart) -> multiproc::Result<Box<dyn WorkerLink>> {
        let hub = &self.hub;
        if hub.servers < 1 {
            return Err(io::Error::other(
                "this MPI job has no serving ranks: start it with `mpirun -n N` where N >= 2 \
                 (rank 0 runs the program, the others serve it)",
            )
            .into());
        }
        let slot = hub.next_slot.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(LinkShared::new()?);
        let (tx, rx) = mpsc::channel();
        let rank = {
            let mut st = hub.state();
            if st.closing {
                return Err(io::Error::other("the MPI cluster is shut down").into());
            }
            // The rank with the fewest live workers, the lowest first.
            let rank = (1..=hub.servers)
                .min_by_key(|&r| st.live[r as usize])
                .expect("at least one server");
            st.live[rank as usize] += 1;
            st.links.insert(slot, Arc::clone(&shared));
            st.launches.insert(slot, tx);
            rank
        };
        hub.send(
            rank,
            Msg::Launch {
                slot,
                start: start.to_bytes(),
            }
            .encode(),
        );
        let answer = rx.recv_timeout(LAUNCH_TIMEOUT);
        let pid = match answer {
            Ok(Ok(pid)) => pid,
            Ok(Err(why)) => {
                return Err(io::Error::other(format!(
                    "rank {rank} could not start a worker: {why}"
                ))
                .into());
            }
            Err(_) => {
                let mut st = hub.state();
                // The hub may have answered meanwhile; it kills the worker if so.
                st.launches.remove(&slot);
                st.links.remove(&slot);
                st.live[rank as usize] = st.live[rank as usize].saturating_sub(1);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rank {rank} did not start a worker within {LAUNCH_TIMEOUT:?}"),
                )
                .into());
            }
        };
        Ok(Box::new(MpiLink {
            hub: Arc::clone(hub),
            rank,
            slot,
            pid,
            shared,
            out: Vec::new(),
        }))
    }
}

/// Rank 0's end of one worker on a serving rank.
struct MpiLink {
    hub: Arc<Hub>,
    rank: i32,
    slot: u64,
    pid: u32,
    shared: Arc<LinkShared>,
    /// The pool's frames for the worker, sent on the next flush.
    out: Vec<u8>,
}

impl fmt::Debug for MpiLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiLink")
            .field("rank", &self.rank)
            .field("slot", &self.slot)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl WorkerLink for MpiLink {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.out.is_empty() {
            // Room for the message header, so the hub sends this buffer as it is.
            encode_relay(&mut self.out, true, self.slot, &[]);
        }
        self.out.extend_from_slice(bytes);
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.hub.send(self.rank, std::mem::take(&mut self.out));
        }
        Ok(())
    }

    fn wants_write(&self) -> bool {
        false
    }

    fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
        // Nothing ever waits to be written (the hub takes it at once): the middle descriptor
        // is never watched for writing.
        [
            self.shared.data_rx.as_fd(),
            self.shared.data_rx.as_fd(),
            self.shared.death_rx.as_fd(),
        ]
    }

    fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut inbox = self.shared.inbox();
        buf.append(&mut inbox.bytes);
        if inbox.poked {
            inbox.poked = false;
            drain(&self.shared.data_rx);
        }
        // The death message comes after the worker's last bytes.
        Ok(inbox.died.is_some())
    }

    fn exitcode(&mut self) -> io::Result<Option<i32>> {
        Ok(self.shared.inbox().died)
    }

    fn kill(&self) {
        if self.shared.inbox().died.is_none() {
            self.hub
                .send(self.rank, Msg::Kill { slot: self.slot }.encode());
        }
    }
}

impl Drop for MpiLink {
    fn drop(&mut self) {
        // A worker the pool no longer holds must not live on.
        self.kill();
        self.hub.state().links.remove(&self.slot);
    }
}
