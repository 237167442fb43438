//! The only MPI calls after the handshake: a receive that never waits for a message to come,
//! and a send that keeps receiving while it waits to complete.
//!
//! Each rank makes its MPI calls from one thread. Two ranks that both send a message above
//! the eager limit (for a large task or value) with blocking sends would each wait for the
//! other to receive: so a send is nonblocking, and until it completes the thread takes in
//! whatever arrives (queued for later), which is what lets the peer's send complete too.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::proto::TAG;

/// Messages received while a send was in progress, in arrival order.
pub(crate) type Inbound = VecDeque<(i32, Vec<u8>)>;

/// How often each rank tells its peers it is alive (rank 0 to every serving rank, each serving
/// rank to rank 0), whatever else it sends.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// A peer that has sent nothing, not even a heartbeat, for this long is taken for lost (its
/// process killed, its host gone): the job is aborted. Long against `HEARTBEAT`, since a loaded
/// machine delays a rank's loop (a worker start under the spawn method takes a while).
pub(crate) const LOST_AFTER: Duration = Duration::from_secs(10);

/// One rank's view of the job, used from one thread.
pub(crate) struct Net {
    pub(crate) world: SimpleCommunicator,
    /// Peers watched for silence ([`Net::watch`]): who, and when each was last heard from.
    watched: RefCell<Vec<Watched>>,
    /// When [`Net::check_peers`] last looked, so that a busy loop looks only now and then.
    checked: Cell<Option<Instant>>,
}

struct Watched {
    rank: i32,
    name: String,
    heard: Instant,
}

impl Net {
    pub(crate) fn new(world: SimpleCommunicator) -> Net {
        Net {
            world,
            watched: RefCell::new(Vec::new()),
            checked: Cell::new(None),
        }
    }

    /// From now on, a peer in `peers` (rank, how to name it) that stays silent for
    /// [`LOST_AFTER`] aborts the job ([`Net::check_peers`]).
    pub(crate) fn watch(&self, peers: impl IntoIterator<Item = (i32, String)>) {
        let now = Instant::now();
        *self.watched.borrow_mut() = peers
            .into_iter()
            .map(|(rank, name)| Watched {
                rank,
                name,
                heard: now,
            })
            .collect();
    }

    fn heard(&self, rank: i32) {
        if let Some(w) = self
            .watched
            .borrow_mut()
            .iter_mut()
            .find(|w| w.rank == rank)
        {
            w.heard = Instant::now();
        }
    }

    /// Aborts the MPI job, saying so on stderr, if a watched peer has been silent for
    /// [`LOST_AFTER`]. Open MPI without ULFM cannot go on without a rank, and most lost ranks
    /// make `mpirun` abort the job at once; this catches those it does not (a spawned server
    /// in dynamic mode, a host whose link went quiet), where this rank would otherwise wait
    /// for ever on a peer that is gone.
    pub(crate) fn check_peers(&self) {
        let now = Instant::now();
        if self
            .checked
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.checked.set(Some(now));
        let lost = self
            .watched
            .borrow()
            .iter()
            .find(|w| now.saturating_duration_since(w.heard) > LOST_AFTER)
            .map(|w| w.name.clone());
        if let Some(name) = lost {
            eprintln!(
                "multiproc-mpi: rank {}: {name} has sent nothing for {LOST_AFTER:?}: it or its \
                 host was lost. An MPI job cannot go on without one of its ranks (Open MPI has \
                 no ULFM here), so the job is aborted; tasks not yet finished are lost.",
                self.world.rank()
            );
            self.world.abort(1);
        }
    }

    /// A message that has arrived, from `source` (any rank if `None`), without waiting.
    pub(crate) fn try_recv(&self, source: Option<i32>) -> Option<(i32, Vec<u8>)> {
        let probed = match source {
            Some(rank) => self
                .world
                .process_at_rank(rank)
                .immediate_matched_probe_with_tag(TAG),
            None => self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(TAG),
        };
        // The message is matched, so this receive only waits for its bytes, which the sender
        // (also never blocked for long) is pushing.
        let (bytes, status) = probed?.matched_receive_vec::<u8>();
        self.heard(status.source_rank());
        Some((status.source_rank(), bytes))
    }

    /// Sends `bytes` to `rank`, taking in messages (from `source`, or anyone) until the send
    /// completes.
    pub(crate) fn send(&self, rank: i32, bytes: &[u8], source: Option<i32>, inbound: &mut Inbound) {
        mpi::request::scope(|scope| {
            let mut req = self
                .world
                .process_at_rank(rank)
                .immediate_send_with_tag(scope, bytes, TAG);
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(pending) => {
                        req = pending;
                        match self.try_recv(source) {
                            Some(m) => inbound.push_back(m),
                            None => {
                                // A send to a lost peer may never complete.
                                self.check_peers();
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            }
        });
    }

    /// A blocking receive from `rank`, for the handshake only (before any large message).
    pub(crate) fn recv_from(&self, rank: i32) -> Vec<u8> {
        self.world
            .process_at_rank(rank)
            .receive_vec_with_tag::<u8>(TAG)
            .0
    }
}

/// How long a rank's thread sleeps when nothing happened for `idle` rounds: not at all for the
/// first few, then from 5 µs doubling up to 1 ms. MPI has no descriptor to wait on, so an idle
/// rank polls; this bounds both the CPU it burns and the latency it adds.
pub(crate) fn backoff(idle: u32) -> Option<std::time::Duration> {
    const SPIN: u32 = 16;
    if idle < SPIN {
        return None;
    }
    let micros = 5u64 << (idle - SPIN).min(8);
    Some(std::time::Duration::from_micros(micros.min(1000)))
}
