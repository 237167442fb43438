//! A serving rank: it runs no task itself. Each worker rank 0 asks for is a local worker process
//! (`multiproc::pool::remote::launch_local`, the very worker a local `Pool` runs), and the rank
//! relays bytes between it and rank 0. A worker that dies (segfault, abort, `exit`, OOM kill)
//! is one local process gone: the rank passes on its last bytes, then its exit code, and rank
//! 0's pool fails that task alone and asks for a replacement. The rank itself never runs user
//! code, so MPI never sees a process die.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use multiproc::StartMethod;
use multiproc::pool::remote::{self, WorkerLink, WorkerStart};
use rustix::event::{PollFd, PollFlags};

use crate::net::{self, Inbound, Net};
use crate::proto::{Msg, encode_relay};

struct Local {
    link: Box<dyn WorkerLink>,
    /// Its reply stream ended (it exited or died); only its death is awaited now.
    eof: bool,
}

/// Serves rank 0 until it says to stop; returns the process's exit status.
pub(crate) fn serve(net: &Net) -> i32 {
    let mut locals: HashMap<u64, Local> = HashMap::new();
    let mut inbound = Inbound::new();
    let mut outbox: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    let mut idle = 0u32;
    let mut stop = false;
    let mut last_beat = Instant::now();
    while !stop {
        let mut busy = false;
        net.check_peers();
        if last_beat.elapsed() >= net::HEARTBEAT {
            last_beat = Instant::now();
            outbox.push(Msg::Alive.encode());
        }
        // What rank 0 sent.
        while let Some((_, bytes)) = inbound.pop_front().or_else(|| net.try_recv(Some(0))) {
            busy = true;
            match Msg::decode(bytes) {
                Some(Msg::Launch { slot, start }) => outbox.push(launch(slot, &start, &mut locals)),
                Some(Msg::ToWorker { slot, bytes }) => {
                    // A worker that already died: rank 0 learns of it from the death message
                    // on its way, and drops what it sent.
                    if let Some(l) = locals.get_mut(&slot) {
                        l.link.write(&bytes);
                    }
                }
                Some(Msg::Kill { slot }) => {
                    if let Some(l) = locals.get(&slot) {
                        l.link.kill();
                    }
                }
                Some(Msg::Shutdown) => {
                    stop = true;
                    break;
                }
                Some(Msg::Alive) => {}
                other => tracing::warn!(?other, "unexpected message from rank 0; ignored"),
            }
        }
        for l in locals.values_mut() {
            if l.link.wants_write() {
                // A failed write means the worker is gone; its death is reported below.
                let _ = l.link.flush();
            }
        }
        // What the workers said, and which died.
        let timeout = if busy || !outbox.is_empty() {
            Some(Duration::ZERO)
        } else {
            net::backoff(idle)
        };
        let slots: Vec<u64> = locals.keys().copied().collect();
        let ready = wait(&locals, &slots, timeout);
        for (slot, (replies, died)) in slots.iter().zip(ready) {
            if !(replies || died) {
                continue;
            }
            busy = true;
            let l = locals.get_mut(slot).expect("listed");
            buf.clear();
            if let Ok(eof) = l.link.read(&mut buf) {
                l.eof |= eof;
            }
            if !buf.is_empty() {
                let mut m = Vec::new();
                encode_relay(&mut m, false, *slot, &buf);
                outbox.push(m);
            }
            if died && let Some(code) = l.link.exitcode().ok().flatten() {
                outbox.push(Msg::Died { slot: *slot, code }.encode());
                locals.remove(slot);
            }
        }
        for m in outbox.drain(..) {
            net.send(0, &m, Some(0), &mut inbound);
        }
        idle = if busy { 0 } else { idle.saturating_add(1) };
    }
    shut_down(locals);
    0
}

/// Starts the worker for `slot`; the answer for rank 0.
fn launch(slot: u64, start: &[u8], locals: &mut HashMap<u64, Local>) -> Vec<u8> {
    let started = WorkerStart::from_bytes(start).and_then(|s| {
        let method = s.start_method().unwrap_or_else(multiproc::get_start_method);
        if method == StartMethod::Fork {
            // A forked worker would be a copy of this MPI process after MPI_Init, with Open
            // MPI's signal handlers (a SIGSEGV in a task then does not end the worker).
            return Err(io::Error::other(
                "the fork start method is not available on MPI ranks (a copy of a process \
                 after MPI_Init, with Open MPI's signal handlers); use forkserver (the \
                 default) or spawn",
            )
            .into());
        }
        remote::launch_local(&s)
    });
    match started {
        Ok(link) => {
            let pid = link.pid();
            // If the machine runs out of memory, the kernel should kill a worker (one task
            // fails) rather than this rank (which would end the whole MPI job). Raising one's
            // own child's score needs no privilege; failing to is harmless.
            let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000");
            locals.insert(slot, Local { link, eof: false });
            Msg::Launched { slot, pid }.encode()
        }
        Err(e) => Msg::LaunchFailed {
            slot,
            why: with_sources(&e),
        }
        .encode(),
    }
}

/// Waits up to `timeout` (`None`: the longest backoff) for a worker to write or die; for each
/// of `slots`, whether it wrote and whether it died.
fn wait(
    locals: &HashMap<u64, Local>,
    slots: &[u64],
    timeout: Option<Duration>,
) -> Vec<(bool, bool)> {
    let mut fds = Vec::with_capacity(3 * slots.len());
    for slot in slots {
        let l = &locals[slot];
        let [replies, tasks, death] = l.link.poll_set();
        let read = if l.eof {
            PollFlags::empty()
        } else {
            PollFlags::IN
        };
        let write = if l.link.wants_write() {
            PollFlags::OUT
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::from_borrowed_fd(replies, read));
        fds.push(PollFd::from_borrowed_fd(tasks, write));
        fds.push(PollFd::from_borrowed_fd(death, PollFlags::IN));
    }
    let timeout = timeout.unwrap_or(Duration::from_millis(1));
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    if fds.is_empty() {
        if !timeout.is_zero() {
            std::thread::sleep(timeout);
        }
        return Vec::new();
    }
    if rustix::event::poll(&mut fds, Some(&ts)).is_err() {
        // EINTR: look again next round.
        return vec![(false, false); slots.len()];
    }
    let hit = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    fds.chunks(3)
        .map(|c| {
            (
                c[0].revents().intersects(hit),
                c[2].revents().intersects(hit),
            )
        })
        .collect()
}

/// Kills the workers still running and waits (at most 5 s) until each has ended.
fn shut_down(mut locals: HashMap<u64, Local>) {
    for l in locals.values() {
        l.link.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for l in locals.values_mut() {
        while matches!(l.link.exitcode(), Ok(None)) && Instant::now() < deadline {
            let death = l.link.poll_set()[2];
            let mut fds = [PollFd::from_borrowed_fd(death, PollFlags::IN)];
            let ts = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
    }
}

/// An error's message followed by its sources' (`Display` of `multiproc::Error` leaves them
/// out, and rank 0 receives only this text).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
