//! [`AsyncResult`]: a task's value that arrives later, and the slot behind it that the
//! executor's futures share.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::error::TaskError;
use super::supervisor::{CancelHandle, Sink, new_key};
use crate::error::{Error, ErrorKind};
use crate::process::{bootstrap, target};

type Outcome<T> = Result<T, TaskError>;

/// A done callback ([`TaskFuture::add_done_callback`](crate::pool::TaskFuture::add_done_callback)).
pub(crate) type DoneCallback<T> = Box<dyn FnOnce(Result<&T, &TaskError>) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Running,
    Done,
}

struct SlotState<T> {
    phase: Phase,
    outcome: Option<Outcome<T>>,
    /// The outcome was handed out.
    taken: bool,
    cancelled: bool,
    /// The outcome was a value (kept after it is taken).
    ok: bool,
    wakers: Vec<Waker>,
    /// Done callbacks not run yet.
    callbacks: Vec<DoneCallback<T>>,
    /// Done callbacks are running with the outcome lent to them (out of the mutex, so that
    /// a callback may look at this slot's future without deadlocking): waiters for the
    /// outcome wait until they end.
    lending: bool,
}

/// Where one task's outcome lands: a mutex, a condition variable for blocking waiters, and
/// wakers for async ones.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cond: Condvar,
    /// What the pool knows its task by when asked to cancel it.
    pub(crate) key: u64,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                phase: Phase::Pending,
                outcome: None,
                taken: false,
                cancelled: false,
                ok: false,
                wakers: Vec::new(),
                callbacks: Vec::new(),
                lending: false,
            }),
            cond: Condvar::new(),
            key: new_key(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Pending → running (a task requeued after its worker died is running already);
    /// `false` if it was cancelled or has finished.
    pub(crate) fn try_start(&self) -> bool {
        let mut s = self.lock();
        match s.phase {
            Phase::Pending => {
                s.phase = Phase::Running;
                true
            }
            Phase::Running => true,
            Phase::Done => false,
        }
    }

    /// Cancels a task that has not started. Returns whether it is now cancelled.
    pub(crate) fn cancel(&self) -> bool {
        let s = self.lock();
        match s.phase {
            // Under the same lock as the check, so that the pool cannot start it in between.
            Phase::Pending => {
                self.complete_cancelled(s);
                true
            }
            _ => s.cancelled,
        }
    }

    /// Cancels a task for the pool: one it took back unstarted (`shutdown(cancel_futures)`,
    /// also one marked running because it was requeued after its worker died), or one whose
    /// worker it killed on a caller's request. Does nothing once done.
    pub(crate) fn cancel_unstarted(&self) {
        let s = self.lock();
        if s.phase != Phase::Done {
            self.complete_cancelled(s);
        }
    }

    fn complete_cancelled<'a>(&'a self, mut s: MutexGuard<'a, SlotState<T>>) {
        s.cancelled = true;
        s.phase = Phase::Done;
        s.ok = false;
        self.settle(s, Some(Err(TaskError::Cancelled)));
    }

    /// Stores the outcome (the first one wins), runs the done callbacks and wakes every waiter.
    pub(crate) fn complete(&self, outcome: Outcome<T>) {
        let mut s = self.lock();
        if s.phase == Phase::Done {
            return;
        }
        s.phase = Phase::Done;
        s.ok = outcome.is_ok();
        // A part of a `map_async` cancelled by the pool completes it as cancelled.
        s.cancelled = matches!(outcome, Err(TaskError::Cancelled));
        self.settle(s, Some(outcome));
    }

    /// Adds a callback to run once done, with the outcome: at once (on this thread) if done
    /// already, else on the thread that completes the slot.
    pub(crate) fn add_done_callback(&self, callback: DoneCallback<T>) {
        let mut s = self.lock();
        s.callbacks.push(callback);
        if s.phase != Phase::Done || s.lending {
            // The thread that completes the slot, or that lends its outcome now, runs it.
            return;
        }
        let outcome = s.outcome.take();
        self.settle(s, outcome);
    }

    /// With the phase `Done`: runs the pending done callbacks with `outcome` (`None` once it
    /// was taken) lent to them, outside the mutex, then stores it and wakes every waiter.
    /// Callbacks added meanwhile run too. A callback or waker that panics is reported and
    /// the others still run: nobody is left waiting.
    fn settle<'a>(&'a self, mut s: MutexGuard<'a, SlotState<T>>, outcome: Option<Outcome<T>>) {
        let taken = TaskError::AlreadyTaken;
        while !s.callbacks.is_empty() {
            let callbacks = std::mem::take(&mut s.callbacks);
            s.lending = true;
            drop(s);
            for callback in callbacks {
                let view = match &outcome {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(e)) => Err(e),
                    None => Err(&taken),
                };
                if catch_unwind(AssertUnwindSafe(|| callback(view))).is_err() {
                    tracing::warn!("a task's done callback panicked");
                }
            }
            s = self.lock();
        }
        s.lending = false;
        if outcome.is_some() {
            s.outcome = outcome;
        }
        let wakers = std::mem::take(&mut s.wakers);
        drop(s);
        self.cond.notify_all();
        for w in wakers {
            // A waker is the async runtime's code: one that panics must not keep the others
            // from being woken.
            if catch_unwind(AssertUnwindSafe(|| w.wake())).is_err() {
                tracing::warn!("a task's waker panicked");
            }
        }
    }

    /// Waits until done or `deadline`; returns whether done.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut s = self.lock();
        while s.phase != Phase::Done || s.lending {
            match deadline {
                None => s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s = self
                        .cond
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// Takes the outcome once done: `None` while not done.
    pub(crate) fn take(&self) -> Option<Outcome<T>> {
        let mut s = self.lock();
        if s.phase != Phase::Done {
            return None;
        }
        // Done callbacks have the outcome for a moment: it comes back when they end.
        while s.lending {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.taken {
            return Some(Err(TaskError::AlreadyTaken));
        }
        s.taken = true;
        s.outcome.take()
    }

    /// Whether it is done and succeeded; `None` while not done.
    pub(crate) fn successful(&self) -> Option<bool> {
        let s = self.lock();
        if s.phase != Phase::Done {
            return None;
        }
        Some(s.ok)
    }

    /// Registers `waker` to be woken when done; returns `true` if already done.
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.phase == Phase::Done && !s.lending {
            return true;
        }
        if !s.wakers.iter().any(|w| w.will_wake(waker)) {
            s.wakers.push(waker.clone());
        }
        false
    }

    /// Cancels the task: at once if it has not started; if it is running and `pool` is
    /// given, by asking the pool, which kills its worker unless it finished first, and
    /// waiting for its outcome. Returns whether the task ended cancelled (`false` for one
    /// that finished first, and, on the pool's own thread, which cannot wait for itself,
    /// for a running one, whose cancel is then only requested).
    pub(crate) fn cancel_via(&self, pool: Option<&CancelHandle>) -> bool {
        if self.cancel() {
            return true;
        }
        if self.phase() != Phase::Running {
            return self.cancelled();
        }
        let Some(pool) = pool else {
            return false;
        };
        pool.request([self.key], true);
        if pool.on_pool_thread() {
            return false;
        }
        // The pool settles the task soon: cancelled, or finished before the request was seen
        // (or failed otherwise, or terminated); every path completes the slot.
        self.wait(None);
        self.cancelled()
    }

    /// Cancels the tasks with keys `parts`, whose outcomes complete this slot together (a
    /// `map_async`): the first chunk cancelled completes it as cancelled. Returns whether it
    /// ended cancelled.
    pub(crate) fn cancel_parts(&self, pool: &CancelHandle, parts: &[u64]) -> bool {
        if self.phase() == Phase::Done {
            return self.cancelled();
        }
        pool.request(parts.iter().copied(), true);
        if pool.on_pool_thread() {
            return false;
        }
        self.wait(None);
        self.cancelled()
    }

    /// Waits like [`wait`](Slot::wait), then takes the outcome; `Timeout` if time ran out.
    pub(crate) fn get(&self, deadline: Option<Instant>) -> Outcome<T> {
        if !self.wait(deadline) {
            return Err(TaskError::Timeout);
        }
        self.take().unwrap_or(Err(TaskError::Timeout))
    }
}

/// Decodes a task's value and completes a slot, running callbacks first.
pub(crate) struct ApplySink<T> {
    pub(crate) slot: Arc<Slot<T>>,
    pub(crate) callbacks: Option<Callbacks<T>>,
}

/// Python's `callback` and `error_callback`, run on the pool's thread.
pub(crate) struct Callbacks<T> {
    pub(crate) on_value: Box<dyn FnOnce(&T) + Send>,
    pub(crate) on_error: Box<dyn FnOnce(&TaskError) + Send>,
}

impl<T> Callbacks<T> {
    /// Runs the callback that fits `outcome`. A panic in it is reported and goes no further:
    /// the result it belongs to must complete all the same, or its waiters would wait for
    /// ever.
    pub(crate) fn run(self, outcome: &Outcome<T>) {
        let ran = catch_unwind(AssertUnwindSafe(|| match outcome {
            Ok(v) => (self.on_value)(v),
            Err(e) => (self.on_error)(e),
        }));
        if ran.is_err() {
            tracing::warn!("a pool callback panicked; its result completes all the same");
        }
    }
}

/// Runs `decode` (a task's value, deserialized on the pool's thread); a `Deserialize` that
/// panics fails the task with a decode error instead of unwinding through the code that must
/// complete its result.
pub(crate) fn decode_caught<T>(decode: impl FnOnce() -> Outcome<T>) -> Outcome<T> {
    match bootstrap::catch_task(decode) {
        Ok(outcome) => outcome,
        Err((message, location)) => Err(TaskError::Process(Error::with_message(
            ErrorKind::Decode,
            match location {
                Some(at) => format!("decoding the task's value panicked at {at}: {message}"),
                None => format!("decoding the task's value panicked: {message}"),
            },
        ))),
    }
}

impl<T: DeserializeOwned + Send + 'static> Sink for ApplySink<T> {
    fn start(&self) -> bool {
        self.slot.try_start()
    }

    fn key(&self) -> Option<u64> {
        Some(self.slot.key)
    }

    fn cancel(mut self: Box<Self>) {
        if let Some(cb) = self.callbacks.take() {
            cb.run(&Err(TaskError::Cancelled));
        }
        self.slot.cancel_unstarted();
    }

    fn finish(mut self: Box<Self>, outcome: Result<Vec<u8>, TaskError>) {
        let outcome = outcome.and_then(|bytes| {
            decode_caught(|| target::decode::<T>(&bytes).map_err(TaskError::from))
        });
        if let Some(cb) = self.callbacks.take() {
            // Python runs the callback before the result becomes ready.
            cb.run(&outcome);
        }
        self.slot.complete(outcome);
    }
}

impl<T> Drop for ApplySink<T> {
    fn drop(&mut self) {
        // Dropped without an outcome (the pool went away): never leave a waiter waiting.
        // After `finish` or a cancel this does nothing, since the first outcome wins.
        self.slot.complete(Err(TaskError::Terminated));
    }
}

/// The value of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async), once it arrives: Python's `AsyncResult`.
///
/// Every wait ends: the task returns, panics, times out, or its worker dies, and each of these
/// completes the result.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::Pool;
///
/// fn slow_square(x: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(50));
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// let mut r = pool.apply_async(slow_square, 7);
/// assert!(!r.ready());
/// assert!(r.wait_timeout(Duration::from_secs(10)));
/// assert_eq!(r.successful(), Some(true));
/// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 49);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncResult<T> {
    slot: Arc<Slot<T>>,
    /// How to ask the pool to cancel the task; `None` for results that cannot be cancelled
    /// once running (`map_async`'s, one result over many tasks).
    pool: Option<CancelHandle>,
    /// For a `map_async` result: the keys of its chunks, cancelled together.
    parts: Option<Vec<u64>>,
    _value: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(slot: Arc<Slot<T>>) -> Self {
        AsyncResult {
            slot,
            pool: None,
            parts: None,
            _value: PhantomData,
        }
    }

    /// A result whose task [`cancel`](AsyncResult::cancel) can stop while it runs.
    pub(crate) fn cancellable(slot: Arc<Slot<T>>, pool: CancelHandle) -> Self {
        AsyncResult {
            slot,
            pool: Some(pool),
            parts: None,
            _value: PhantomData,
        }
    }

    /// A result over many tasks (`map_async`'s chunks, by their keys), cancelled together.
    pub(crate) fn over_parts(slot: Arc<Slot<T>>, pool: CancelHandle, parts: Vec<u64>) -> Self {
        AsyncResult {
            slot,
            pool: Some(pool),
            parts: Some(parts),
            _value: PhantomData,
        }
    }

    /// For `crate::aio`: the outcome if the task is done (taken, in this call), else
    /// `Pending` with `cx`'s waker registered for its completion.
    #[cfg(any(feature = "tokio", feature = "async-io"))]
    pub(crate) fn poll_outcome(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T, TaskError>> {
        if self.slot.register(cx.waker()) {
            std::task::Poll::Ready(self.slot.take().unwrap_or(Err(TaskError::AlreadyTaken)))
        } else {
            std::task::Poll::Pending
        }
    }

    /// A result that failed before it was submitted.
    pub(crate) fn failed(error: TaskError) -> Self {
        let slot = Slot::new();
        slot.complete(Err(error));
        AsyncResult::new(slot)
    }

    /// Waits for the task and returns its value.
    ///
    /// # Errors
    /// The task's [`TaskError`]: a panic, its worker's death, its time limit, the pool's
    /// termination, or a value that could not be decoded.
    pub fn get(self) -> Result<T, TaskError> {
        self.slot.get(None)
    }

    /// Waits at most `timeout`. On [`TaskError::Timeout`] the task goes on and the result can
    /// be waited for again.
    ///
    /// # Errors
    /// As [`get`](AsyncResult::get), plus [`TaskError::Timeout`] and, after the value was
    /// taken, [`TaskError::AlreadyTaken`].
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, TaskError> {
        self.slot.get(Some(Instant::now() + timeout))
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        self.slot.wait(None);
    }

    /// Waits at most `timeout`; returns whether the result is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot.wait(Some(Instant::now() + timeout))
    }

    /// Whether the task has finished (with a value or an error).
    pub fn ready(&self) -> bool {
        self.slot.phase() == Phase::Done
    }

    /// Whether the task finished with a value; `None` while it is not ready (where Python
    /// raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        self.slot.successful()
    }

    /// Cancels the task, queued or running; returns whether it took effect, that is whether
    /// the task's outcome is now [`TaskError::Cancelled`].
    ///
    /// A task still queued never runs. A running task's worker is killed (SIGKILL) and
    /// replaced, and the task fails with `Cancelled`: not retried, and not counted as a
    /// worker death against [`max_worker_deaths_per_task`](crate::pool::PoolBuilder::max_worker_deaths_per_task).
    /// The pool's thread decides, so there is no race: a task whose value arrived before
    /// the cancel keeps it (and this returns `false`), and no other task is ever harmed (a
    /// worker is killed only while it holds the cancelled task alone; tasks queued behind it
    /// are first taken back). For a running task this waits until the pool has settled it,
    /// normally a few milliseconds. Python's `AsyncResult` has no `cancel`; this is what
    /// pebble's `future.cancel()` does and what loky users have asked for (joblib/loky#176).
    ///
    /// Called on the pool's own thread (in a callback) a cancel cannot wait for that thread:
    /// it cancels a queued task as usual, and for a running one only asks, returning
    /// `false`. A [`map_async`](crate::Pool::map_async) result cancels all its tasks (chunks)
    /// the same way, and is cancelled unless every chunk finished first.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Pool, pool::TaskError};
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = Pool::new(1)?;
    /// let long = pool.apply_async(nap, 60_000);
    /// let queued = pool.apply_async(nap, 1);
    /// assert!(queued.cancel()); // never runs
    /// std::thread::sleep(Duration::from_millis(50)); // let `long` start
    /// assert!(long.cancel()); // its worker is killed and replaced
    /// assert!(matches!(long.get(), Err(TaskError::Cancelled)));
    /// assert_eq!(pool.apply(nap, 2)?, 2); // the pool goes on
    ///
    /// let done = pool.apply_async(nap, 3);
    /// done.wait();
    /// assert!(!done.cancel()); // finished first: it keeps its value
    /// assert_eq!(done.get()?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "terminate")]
    pub fn cancel(&self) -> bool {
        match (&self.parts, &self.pool) {
            (Some(parts), Some(pool)) => self.slot.cancel_parts(pool, parts),
            _ => self.slot.cancel_via(self.pool.as_ref()),
        }
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.slot.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn first_outcome_wins_and_is_taken_once() {
        let slot = Slot::<u8>::new();
        assert_eq!(slot.phase(), Phase::Pending);
        assert!(slot.try_start());
        assert!(slot.try_start(), "a requeued task starts again");
        slot.complete(Ok(1));
        slot.complete(Err(TaskError::Terminated));
        assert_eq!(slot.successful(), Some(true));
        assert!(matches!(slot.take(), Some(Ok(1))));
        assert!(matches!(slot.take(), Some(Err(TaskError::AlreadyTaken))));
        assert_eq!(
            slot.successful(),
            Some(true),
            "kept after the value is taken"
        );
        assert!(!slot.try_start());
    }

    #[test]
    fn cancel_only_while_pending() {
        let pending = Slot::<u8>::new();
        assert!(pending.cancel());
        assert!(pending.cancelled());
        assert!(!pending.try_start());
        assert!(matches!(pending.get(None), Err(TaskError::Cancelled)));

        let running = Slot::<u8>::new();
        assert!(running.try_start());
        assert!(!running.cancel());
        assert!(!running.wait(Some(Instant::now())));
        assert!(matches!(
            running.get(Some(Instant::now() + Duration::from_millis(5))),
            Err(TaskError::Timeout)
        ));
        // Taken back by the pool unstarted (requeued tasks are marked running).
        running.cancel_unstarted();
        assert!(running.cancelled());
        assert_eq!(running.phase(), Phase::Done);
        assert!(matches!(running.get(None), Err(TaskError::Cancelled)));

        let finished = Slot::<u8>::new();
        finished.complete(Ok(1));
        finished.cancel_unstarted();
        assert!(!finished.cancelled());
        assert!(matches!(finished.take(), Some(Ok(1))));
    }

    #[test]
    fn done_callbacks_run_once_outside_the_lock() {
        let slot = Slot::<u8>::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second"] {
            let seen = Arc::clone(&seen);
            let me = Arc::clone(&slot);
            slot.add_done_callback(Box::new(move |r| {
                // The callback may look at its own slot: it is not called under the lock.
                assert_eq!(me.phase(), Phase::Done);
                seen.lock().unwrap().push(format!("{name} {r:?}"));
                // A callback added while they run runs too, in this round.
                if name == "first" {
                    let seen = Arc::clone(&seen);
                    me.add_done_callback(Box::new(move |r| {
                        seen.lock().unwrap().push(format!("nested {r:?}"))
                    }));
                }
            }));
        }
        slot.add_done_callback(Box::new(|_| panic!("a callback panics")));
        assert!(seen.lock().unwrap().is_empty());
        slot.complete(Ok(7));
        slot.complete(Ok(8));
        assert_eq!(
            *seen.lock().unwrap(),
            ["first Ok(7)", "second Ok(7)", "nested Ok(7)"]
        );
        assert!(matches!(slot.take(), Some(Ok(7))), "the value stayed");
        let late = Arc::clone(&seen);
        slot.add_done_callback(Box::new(move |r| {
            late.lock().unwrap().push(format!("late {r:?}"))
        }));
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            "late Err(AlreadyTaken)"
        );
    }

    #[test]
    fn wakers_fire_once_on_completion() {
        let slot = Slot::<u8>::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        assert!(!slot.register(&waker));
        assert!(!slot.register(&waker), "registered once");
        slot.complete(Ok(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(slot.register(&waker), "already done");
    }
}
