//! [`Barrier`]: Python's `multiprocessing.Barrier`, broken when a party dies.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BrokenBarrierError;
use super::owner;
use super::raw::{self, BARRIER_MEMBERS, BarrierState};
use crate::error::{Error, ErrorKind, Result};
use crate::process::target;
use crate::shared::segment::Shm;
use crate::sys;

/// What the last party to arrive runs.
#[derive(Clone)]
enum Action {
    /// A function item or a closure that captures nothing, as its monomorphised caller
    /// ([`call_stateless`]): it travels to children of every start method by its offset in
    /// the program's code, as a pool's tasks do.
    Code(fn()),
    /// A closure with state: it stays with this process's handles (and children started by
    /// `fork`, which have a copy of them).
    Closure(Arc<dyn Fn() + Send + Sync>),
}

impl Action {
    fn run(&self) {
        match self {
            Action::Code(f) => f(),
            Action::Closure(f) => f(),
        }
    }
}

/// Runs the one value of the stateless closure or fn item type `F`.
fn call_stateless<F: Fn()>() {
    target::conjure::<F>()()
}

/// How a barrier's action travels in start arguments: an entry offset for [`Action::Code`],
/// nothing for a closure with state.
mod action_wire {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Action;
    use crate::sys;

    pub(super) fn serialize<S: Serializer>(
        action: &Option<Action>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let offset = match action {
            None => None,
            Some(Action::Code(f)) => Some(sys::entry_offset(*f).ok_or_else(|| {
                serde::ser::Error::custom(
                    "a barrier's action cannot travel to another process: this crate is not \
                     part of the main executable",
                )
            })?),
            Some(Action::Closure(_)) => {
                tracing::warn!(
                    "a barrier's action captures variables, so it does not travel to a child \
                     started by spawn or forkserver: the child's handle has no action (use a fn \
                     item or a closure that captures nothing, or set it there with with_action)"
                );
                None
            }
        };
        serde::Serialize::serialize(&offset, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Action>, D::Error> {
        match Option::<i64>::deserialize(d)? {
            None => Ok(None),
            // The offset comes from the start arguments of a process running this same binary
            // (checked before any start argument is decoded), as a start method's entry does.
            Some(offset) => sys::entry_at::<fn()>(offset)
                .map(|f| Some(Action::Code(f)))
                .ok_or_else(|| {
                    serde::de::Error::custom("a barrier's action is not code of this program")
                }),
        }
    }
}

/// A barrier for a fixed number of parties, shared between processes.
///
/// Each party calls [`wait`](Barrier::wait); all are released together once `parties` have
/// arrived, and the barrier is ready for the next round. A barrier is *broken* by
/// [`abort`](Barrier::abort), a wait that times out, a panicking action, or the death of a
/// party: then every current and later wait fails with [`BrokenBarrierError`] until
/// [`reset`](Barrier::reset).
///
/// A process becomes a known party the first time it waits, and stops being one when the
/// handle it waited with is dropped (so a party that has finished with the barrier and
/// exited does not count against the processes that use it next). Waiters check every few
/// milliseconds whether a known party has died; if one has and too few live parties are left
/// to fill the barrier, they break it instead of waiting forever. A party that ends without
/// dropping that handle (killed, `std::process::exit`, or unwinding from a panic) counts as
/// dead. (A process that dies before its first wait is not known; the timed forms cover that
/// case.) Up to 64 processes are tracked per barrier.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::Barrier;
///
/// let barrier = Barrier::new(2)?.with_timeout(Duration::from_secs(10));
/// let child = multiproc::spawn_with_args(|b: Barrier| b.wait().is_ok(), barrier.clone())?;
/// let index = barrier.wait()?; // 0 or 1: the order of arrival
/// assert!(index < 2);
/// assert!(child.join()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, Deserialize)]
pub struct Barrier {
    state: Shm<BarrierState>,
    /// Sent to children of every start method when it is code (see `with_action`).
    #[serde(with = "action_wire")]
    action: Option<Action>,
    timeout: Option<Duration>,
    /// The pid of the process that became a party by waiting through this handle (0: none):
    /// when this handle is dropped there, the process leaves the barrier's members. A copy
    /// inherited through `fork` keeps its parent's pid, so dropping it in the child does not
    /// remove the parent.
    #[serde(skip)]
    joined: AtomicU32,
}

impl Clone for Barrier {
    /// Another handle to the same barrier. It has not been waited on: the process leaves the
    /// members only when the handle it waited with is dropped.
    fn clone(&self) -> Self {
        Barrier {
            state: self.state.clone(),
            action: self.action.clone(),
            timeout: self.timeout,
            joined: AtomicU32::new(0),
        }
    }
}

impl Drop for Barrier {
    fn drop(&mut self) {
        let me = owner::ident_pid(owner::process_ident());
        // A panic on the way out is an abnormal end: stay a member, so that waiting parties
        // see this process die rather than wait for it.
        if self.joined.load(Ordering::Relaxed) != me || std::thread::panicking() {
            return;
        }
        let s = &*self.state;
        self.lock();
        // By pid: this process's identity may have gained its start time since it registered,
        // and an entry with this pid and another start time is a dead process anyway.
        for m in &s.members[..] {
            if owner::ident_pid(m.load(Ordering::Relaxed)) == me {
                m.store(0, Ordering::Relaxed);
            }
        }
        s.lock.unlock();
    }
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

const BROKEN: u32 = 1;

impl Barrier {
    /// A barrier for `parties` processes (or threads).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when `parties` is 0 or above `i32::MAX`;
    /// [`ErrorKind::Io`] if shared memory cannot be created.
    pub fn new(parties: usize) -> Result<Barrier> {
        let parties = u32::try_from(parties)
            .ok()
            .filter(|&p| p > 0 && p <= i32::MAX as u32)
            .ok_or_else(|| {
                Error::with_message(
                    ErrorKind::InvalidInput,
                    format!("a barrier needs at least one party, got {parties}"),
                )
            })?;
        let state: Shm<BarrierState> = Shm::zeroed()?;
        state.parties.store(parties, Ordering::Relaxed);
        state.aborted.store(u32::MAX, Ordering::Relaxed);
        Ok(Barrier {
            state,
            action: None,
            timeout: None,
            joined: AtomicU32::new(0),
        })
    }

    /// Sets the action that the last party to arrive runs, once per round, before all are
    /// released (Python's `Barrier(parties, action)`).
    ///
    /// A function item or a closure that captures nothing travels with the barrier to
    /// children of every start method, as a pool's tasks do (by its place in the program's
    /// code, which is the same in every process running this binary), so each round's action
    /// runs in whichever party arrives last, in whichever process. A closure that captures
    /// variables belongs to this handle and its clones: children started by `fork` have it
    /// too, but under spawn and forkserver it cannot travel (it holds data, maybe pointers),
    /// so the children's handles have no action (with a `tracing` warning); set one there with
    /// `with_action`. Shared state an action updates is reached through a `static` (set in
    /// each process, from start arguments for instance), as Python's module-level functions
    /// reach module globals.
    ///
    /// Each handle runs its own action: if processes set different actions, the last party's
    /// runs.
    ///
    /// # Examples
    /// ```
    /// use std::sync::OnceLock;
    /// use std::time::Duration;
    /// use multiproc::{Barrier, Value};
    ///
    /// /// Where the action counts rounds, in each process.
    /// static ROUNDS: OnceLock<Value<u32>> = OnceLock::new();
    ///
    /// fn count_round() {
    ///     let rounds = ROUNDS.get().expect("set before waiting");
    ///     rounds.set(rounds.get() + 1);
    /// }
    ///
    /// fn party((barrier, rounds): (Barrier, Value<u32>)) {
    ///     ROUNDS.get_or_init(|| rounds);
    ///     for _ in 0..3 {
    ///         barrier.wait().unwrap();
    ///     }
    /// }
    ///
    /// let rounds = Value::new(0u32)?;
    /// let barrier = Barrier::new(2)?
    ///     .with_action(count_round)
    ///     .with_timeout(Duration::from_secs(10));
    /// let ctx = multiproc::get_context(multiproc::StartMethod::Spawn);
    /// let parties = [
    ///     ctx.spawn_with_args(party, (barrier.clone(), rounds.clone()))?,
    ///     ctx.spawn_with_args(party, (barrier.clone(), rounds.clone()))?,
    /// ];
    /// for p in parties {
    ///     p.join()?;
    /// }
    /// assert_eq!(rounds.get(), 3); // one action per round, run in a spawned child
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_action<F>(mut self, action: F) -> Barrier
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.action = Some(if target::is_stateless::<F>() {
            Action::Code(call_stateless::<F>)
        } else {
            Action::Closure(Arc::new(action))
        });
        self
    }

    /// Sets the default timeout of [`wait`](Barrier::wait).
    pub fn with_timeout(mut self, timeout: Duration) -> Barrier {
        self.timeout = Some(timeout);
        self
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.state.parties.load(Ordering::Relaxed) as usize
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> usize {
        if self.is_broken() {
            0
        } else {
            self.state.count.load(Ordering::Relaxed) as usize
        }
    }

    /// Whether the barrier is broken (Python's `broken` property).
    #[doc(alias = "broken")]
    pub fn is_broken(&self) -> bool {
        self.state.generation.load(Ordering::Acquire) & BROKEN != 0
    }

    /// Waits for all parties (at most the default timeout, if one was set). Returns this
    /// party's arrival index, `0..parties`.
    ///
    /// # Errors
    /// [`BrokenBarrierError`] if the barrier is or becomes broken, or the timeout passes (which
    /// breaks it).
    ///
    /// # Panics
    /// If the action panics, in the party that ran it, after breaking the barrier.
    pub fn wait(&self) -> Result<usize, BrokenBarrierError> {
        self.wait_until(self.timeout.and_then(raw::deadline))
    }

    /// As [`wait`](Barrier::wait), for at most `timeout`.
    ///
    /// # Errors
    /// As [`wait`](Barrier::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrierError> {
        self.wait_until(raw::deadline(timeout))
    }

    /// Takes the internal lock; a holder that died inside breaks the barrier.
    fn lock(&self) -> u32 {
        let s = &*self.state;
        if s.lock.lock(None) == Ok(raw::Acquired::OwnerDied) {
            let g = s.generation.load(Ordering::Relaxed);
            self.break_locked(g);
        }
        s.generation.load(Ordering::Relaxed)
    }

    fn break_locked(&self, g: u32) {
        let s = &*self.state;
        s.generation.store(g | BROKEN, Ordering::Release);
        raw::wake(&s.generation, raw::WAKE_ALL);
    }

    /// Arrives: the first half of a wait. The last party to arrive runs the action and
    /// releases the others; every other one gets the generation and index to wait with.
    pub(crate) fn arrive(&self) -> Result<Arrival, BrokenBarrierError> {
        let s = &*self.state;
        let g = self.lock();
        if g & BROKEN != 0 {
            s.lock.unlock();
            return Err(BrokenBarrierError);
        }
        self.register();
        let index = s.count.fetch_add(1, Ordering::Relaxed);
        if index + 1 >= s.parties.load(Ordering::Relaxed) {
            if let Some(action) = &self.action
                && let Err(panic) = catch_unwind(AssertUnwindSafe(|| action.run()))
            {
                self.break_locked(g);
                s.lock.unlock();
                resume_unwind(panic);
            }
            s.count.store(0, Ordering::Relaxed);
            s.generation
                .store(g.wrapping_add(2) & !BROKEN, Ordering::Release);
            raw::wake(&s.generation, raw::WAKE_ALL);
            s.lock.unlock();
            return Ok(Arrival::Released(index as usize));
        }
        s.lock.unlock();
        Ok(Arrival::Waiting { g, index })
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, BrokenBarrierError> {
        let s = &*self.state;
        let (g, index) = match self.arrive()? {
            Arrival::Released(index) => return Ok(index),
            Arrival::Waiting { g, index } => (g, index),
        };
        loop {
            let slice = match deadline {
                None => Some(raw::LIVENESS_SLICE),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    (!left.is_zero()).then(|| left.min(raw::LIVENESS_SLICE))
                }
            };
            let woke = slice.map(|t| sys::futex_wait(&s.generation, g, Some(t)));
            let now = s.generation.load(Ordering::Acquire);
            if now != g {
                return self.outcome(g, now, index);
            }
            if woke == Some(true) {
                continue;
            }
            // A slice or the whole timeout passed: look for dead parties, or time out.
            let now = self.lock();
            if now == g && (woke.is_none() || self.party_died()) {
                self.break_locked(g);
                s.lock.unlock();
                return Err(BrokenBarrierError);
            }
            s.lock.unlock();
            if now != g {
                return self.outcome(g, now, index);
            }
        }
    }
}

/// For `crate::aio`: the async wait is `arrive`, then rounds on a helper
/// thread of [`sleep_while_generation`](Barrier::sleep_while_generation), each followed by
/// [`ended`](Barrier::ended) and, if the generation has not moved,
/// [`check_parties`](Barrier::check_parties); a dropped wait [`leave`](Barrier::leave)s.
#[cfg(any(feature = "tokio", feature = "async-io"))]
impl Barrier {
    /// The default timeout set by [`with_timeout`](Barrier::with_timeout).
    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sleeps while the generation is `g`, at most `max`.
    pub(crate) fn sleep_while_generation(&self, g: u32, max: Duration) {
        raw::wait_while(&self.state.generation, g, raw::deadline(max));
    }

    /// The wait's outcome if generation `g` ended.
    pub(crate) fn ended(&self, g: u32, index: u32) -> Option<Result<usize, BrokenBarrierError>> {
        let now = self.state.generation.load(Ordering::Acquire);
        (now != g).then(|| self.outcome(g, now, index))
    }

    /// As a blocking waiter does after a slice with no change: breaks the barrier if the
    /// wait `timed_out` or a party died too many to fill it; the wait's outcome if it ended.
    pub(crate) fn check_parties(
        &self,
        g: u32,
        index: u32,
        timed_out: bool,
    ) -> Option<Result<usize, BrokenBarrierError>> {
        let s = &*self.state;
        let now = self.lock();
        if now == g && (timed_out || self.party_died()) {
            self.break_locked(g);
            s.lock.unlock();
            return Some(Err(BrokenBarrierError));
        }
        s.lock.unlock();
        (now != g).then(|| self.outcome(g, now, index))
    }

    /// Takes back an arrival in generation `g` if it is still filling (a dropped async
    /// wait), as asyncio's `Barrier` does for a cancelled waiter: the barrier is not broken
    /// and needs one more arrival again.
    pub(crate) fn leave(&self, g: u32) {
        let s = &*self.state;
        if self.lock() == g {
            let count = s.count.load(Ordering::Relaxed);
            s.count.store(count.saturating_sub(1), Ordering::Relaxed);
        }
        s.lock.unlock();
    }
}

/// How an arrival at a barrier went.
pub(crate) enum Arrival {
    /// This party was the last: the generation is released, with this index.
    Released(usize),
    /// Others are still to come: wait for generation `g` to end, with this index.
    Waiting { g: u32, index: u32 },
}

impl Barrier {
    /// How a wait that started in generation word `g` ended, now that the word is `now`.
    fn outcome(&self, g: u32, now: u32, index: u32) -> Result<usize, BrokenBarrierError> {
        let broken_here = now & BROKEN != 0 && now >> 1 == g >> 1;
        let reset_here = self.state.aborted.load(Ordering::Acquire) == g >> 1;
        if broken_here || reset_here {
            Err(BrokenBarrierError)
        } else {
            Ok(index as usize)
        }
    }

    /// Records this process as a party (under the internal lock), until this handle is
    /// dropped.
    fn register(&self) {
        let me = owner::process_ident();
        self.joined.store(owner::ident_pid(me), Ordering::Relaxed);
        let members = &self.state.members;
        if members.iter().any(|m| m.load(Ordering::Relaxed) == me) {
            return;
        }
        let free = members
            .iter()
            .find(|m| m.load(Ordering::Relaxed) == 0)
            .or_else(|| {
                members
                    .iter()
                    .find(|m| !owner::ident_alive(m.load(Ordering::Relaxed)))
            });
        if let Some(slot) = free {
            slot.store(me, Ordering::Relaxed);
        }
    }

    /// Whether a known party died and too few live ones are left to fill the barrier (under
    /// the internal lock). Forgets the dead.
    fn party_died(&self) -> bool {
        let s = &*self.state;
        let mut live = 0u32;
        let mut dead = 0u32;
        for m in &s.members[..BARRIER_MEMBERS] {
            let id = m.load(Ordering::Relaxed);
            if id == 0 {
                continue;
            }
            if owner::ident_alive(id) {
                live += 1;
            } else {
                dead += 1;
                m.store(0, Ordering::Relaxed);
            }
        }
        dead > 0 && live < s.parties.load(Ordering::Relaxed)
    }

    /// Breaks the barrier: current and later waits fail until [`reset`](Barrier::reset).
    pub fn abort(&self) {
        let g = self.lock();
        self.break_locked(g);
        self.state.lock.unlock();
    }

    /// Returns the barrier to its empty, unbroken state; parties waiting now fail with
    /// [`BrokenBarrierError`].
    pub fn reset(&self) {
        let s = &*self.state;
        let g = self.lock();
        s.aborted.store(g >> 1, Ordering::Release);
        s.count.store(0, Ordering::Relaxed);
        s.generation
            .store(g.wrapping_add(2) & !BROKEN, Ordering::Release);
        raw::wake(&s.generation, raw::WAKE_ALL);
        s.lock.unlock();
    }
}
