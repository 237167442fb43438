//! The only MPI calls after the handshake: a receive that never waits for a message to come,
//! and a send that keeps receiving while it waits to complete.
//!
//! Each rank makes its MPI calls from one thread. Two ranks that both send a message above
//! the eager limit (for a large task or value) with blocking sends would each wait for the
//! other to receive: so a send is nonblocking, and until it completes the thread takes in
//! whatever arrives (queued for later), which is what lets the peer's send complete too.

use std::collections::VecDeque;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::proto::TAG;

/// Messages received while a send was in progress, in arrival order.
pub(crate) type Inbound = VecDeque<(i32, Vec<u8>)>;

/// One rank's view of the job, used from one thread.
pub(crate) struct Net {
    pub(crate) world: SimpleCommunicator,
}

impl Net {
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
                            None => std::thread::yield_now(),
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
