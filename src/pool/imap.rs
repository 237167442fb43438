//! `imap` and `imap_unordered`: a window of chunks in flight, fed from the input as results
//! are taken.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::Waker;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::async_result::Slot;
use super::codec;
use super::error::TaskError;
use super::map::{BytesSink, decode_chunk};
use super::progress::Tracker;
use super::supervisor::{Sink, new_key};
use super::task::{encode_args, submit};
use crate::error::Result;

type Feed<'a> = Box<dyn FnMut() -> Option<(usize, Result<Vec<u8>>)> + 'a>;
type ChunkOutcome<T> = (usize, std::result::Result<Vec<T>, TaskError>);
/// A chunk's key, its length and its encoded values.
type RawChunk = (u64, usize, std::result::Result<Vec<u8>, TaskError>);
/// A chunk in flight: its length and where its encoded values land.
type PendingChunk = (usize, Arc<Slot<Vec<u8>>>);

/// The lazy iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one
/// `Result<T, TaskError>` per input item.
///
/// A bounded number of tasks is in flight; the next input items are pulled and submitted as
/// values are taken. A failed chunk yields one error per item in it.
pub struct Imap<'a, T> {
    pool: &'a Pool,
    entry: i64,
    feed: Feed<'a>,
    input_done: bool,
    window: usize,
    /// In order: each chunk's length and slot.
    ordered: Option<VecDeque<PendingChunk>>,
    /// Out of order: outcomes as they come.
    unordered: (mpsc::Sender<RawChunk>, mpsc::Receiver<RawChunk>),
    /// Out of order: the keys of the chunks in flight, for a cancel.
    unordered_keys: HashSet<u64>,
    /// Out of order: the task awaiting the next outcome, if the iterator is a `Stream`
    /// (`crate::aio`); each sink wakes it after sending.
    unordered_waker: Arc<Mutex<Option<Waker>>>,
    in_flight: usize,
    ready: VecDeque<Result<T, TaskError>>,
    /// The pool stopped accepting tasks before the input ended.
    refused: bool,
    progress: Tracker,
}

// Nothing in an `Imap` is pinned in place (its values sit in heap collections that move
// freely), so a `Stream` over it may be polled without pinning, whatever `T` is.
impl<T> Unpin for Imap<'_, T> {}

impl<T> std::fmt::Debug for Imap<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.in_flight)
            .field("input_done", &self.input_done)
            .finish_non_exhaustive()
    }
}

struct ChannelSink {
    key: u64,
    len: usize,
    tx: Option<mpsc::Sender<RawChunk>>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl ChannelSink {
    fn send(&mut self, outcome: std::result::Result<Vec<u8>, TaskError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.key, self.len, outcome));
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl Sink for ChannelSink {
    fn key(&self) -> Option<u64> {
        Some(self.key)
    }

    fn finish(mut self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        self.send(outcome);
    }
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        self.send(Err(TaskError::Terminated));
    }
}

impl<'a, T: DeserializeOwned + Send + 'static> Imap<'a, T> {
    pub(super) fn new<A, I>(
        pool: &'a Pool,
        entry: i64,
        iterable: I,
        chunksize: usize,
        ordered: bool,
    ) -> Self
    where
        A: Serialize + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        let chunksize = chunksize.max(1);
        let mut input = iterable.into_iter();
        let (lower, upper) = input.size_hint();
        let total = (upper == Some(lower)).then_some(lower as u64);
        let feed: Feed<'a> = Box::new(move || {
            let chunk: Vec<A> = input.by_ref().take(chunksize).collect();
            if chunk.is_empty() {
                return None;
            }
            Some((chunk.len(), encode_args(|| codec::encode_chunk(&chunk))))
        });
        Imap {
            pool,
            entry,
            feed,
            input_done: false,
            window: (pool.processes * 32).max(64),
            ordered: ordered.then(VecDeque::new),
            unordered: mpsc::channel(),
            unordered_keys: HashSet::new(),
            unordered_waker: Arc::new(Mutex::new(None)),
            in_flight: 0,
            ready: VecDeque::new(),
            refused: false,
            progress: Tracker::new(&pool.progress, total),
        }
    }

    fn refill(&mut self) {
        if !self.input_done && !self.pool.core.is_running() {
            // Closed or terminated: stop pulling the input (it may be endless); after the
            // chunks in flight, the iterator says so once and ends.
            self.input_done = true;
            self.refused = true;
            return;
        }
        while !self.input_done && self.in_flight < self.window {
            let Some((len, payload)) = (self.feed)() else {
                self.input_done = true;
                break;
            };
            self.in_flight += 1;
            let sink: Box<dyn Sink> = match &mut self.ordered {
                Some(queue) => {
                    let slot = Slot::new();
                    queue.push_back((len, Arc::clone(&slot)));
                    Box::new(BytesSink { slot })
                }
                None => {
                    let key = new_key();
                    self.unordered_keys.insert(key);
                    Box::new(ChannelSink {
                        key,
                        len,
                        tx: Some(self.unordered.0.clone()),
                        waker: Arc::clone(&self.unordered_waker),
                    })
                }
            };
            match payload {
                Ok(payload) => submit(&self.pool.core, self.entry, payload, sink),
                Err(e) => sink.finish(Err(e.into())),
            }
        }
    }

    fn next_chunk(&mut self) -> Option<ChunkOutcome<T>> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        match &mut self.ordered {
            Some(queue) => {
                let (len, slot) = queue.pop_front()?;
                let values = slot
                    .get(None)
                    .and_then(|bytes| decode_chunk::<T>(&bytes, len));
                Some((len, values))
            }
            // Every submitted chunk sends exactly one outcome (on finish or on drop).
            None => {
                let (key, len, raw) = self.unordered.1.recv().ok()?;
                self.unordered_keys.remove(&key);
                Some((len, raw.and_then(|bytes| decode_chunk::<T>(&bytes, len))))
            }
        }
    }
}

#[cfg(any(feature = "tokio", feature = "async-io"))]
impl<T: DeserializeOwned + Send + 'static> Imap<'_, T> {
    /// For `crate::aio`'s `Stream`: as [`next_chunk`](Imap::next_chunk) without waiting;
    /// `Pending` with `cx`'s waker registered for the next chunk's completion. A chunk is
    /// taken only in the call that returns it.
    fn poll_next_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ChunkOutcome<T>>> {
        use std::task::Poll;
        if self.in_flight == 0 {
            return Poll::Ready(None);
        }
        match &mut self.ordered {
            Some(queue) => {
                let Some((_, slot)) = queue.front() else {
                    return Poll::Ready(None);
                };
                if !slot.register(cx.waker()) {
                    return Poll::Pending;
                }
                let Some((len, slot)) = queue.pop_front() else {
                    return Poll::Ready(None);
                };
                self.in_flight -= 1;
                let values = slot
                    .take()
                    .unwrap_or(Err(TaskError::AlreadyTaken))
                    .and_then(|bytes| decode_chunk::<T>(&bytes, len));
                Poll::Ready(Some((len, values)))
            }
            None => {
                let mut got = self.unordered.1.try_recv();
                if matches!(got, Err(mpsc::TryRecvError::Empty)) {
                    // Registered before looking again: a sink that sends after this look
                    // finds the waker.
                    *self
                        .unordered_waker
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
                    got = self.unordered.1.try_recv();
                }
                match got {
                    Ok((key, len, raw)) => {
                        self.in_flight -= 1;
                        self.unordered_keys.remove(&key);
                        let values = raw.and_then(|bytes| decode_chunk::<T>(&bytes, len));
                        Poll::Ready(Some((len, values)))
                    }
                    Err(mpsc::TryRecvError::Empty) => Poll::Pending,
                    // Unreachable: this iterator holds a sender.
                    Err(mpsc::TryRecvError::Disconnected) => Poll::Ready(None),
                }
            }
        }
    }

    /// As [`next`](Iterator::next), without waiting: the `Stream` of `crate::aio`.
    pub(crate) fn poll_next_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<T, TaskError>>> {
        use std::task::Poll;
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.progress.advance(1);
                return Poll::Ready(Some(item));
            }
            self.refill();
            let Some((len, outcome)) = std::task::ready!(self.poll_next_chunk(cx)) else {
                self.progress.finish();
                if std::mem::take(&mut self.refused) {
                    return Poll::Ready(Some(Err(TaskError::PoolClosed)));
                }
                return Poll::Ready(None);
            };
            self.queue_outcome(len, outcome);
        }
    }
}

impl<T> Imap<'_, T> {
    /// Queues a chunk's values, or its error once per item.
    fn queue_outcome(&mut self, len: usize, outcome: std::result::Result<Vec<T>, TaskError>) {
        match outcome {
            Ok(values) => self.ready.extend(values.into_iter().map(Ok)),
            Err(e) => {
                for _ in 1..len {
                    self.ready.push_back(Err(e.duplicate()));
                }
                self.ready.push_back(Err(e));
            }
        }
    }

    /// The keys of the chunks submitted and not yet taken by the iterator.
    fn keys_in_flight(&self) -> Vec<u64> {
        match &self.ordered {
            Some(queue) => queue.iter().map(|(_, slot)| slot.key).collect(),
            None => self.unordered_keys.iter().copied().collect(),
        }
    }

    /// Cancels every task of this `imap` not yet delivered, and stops pulling the input.
    /// Tasks still queued never run; running ones have their worker killed and replaced
    /// (see [`AsyncResult::cancel`](crate::pool::AsyncResult::cancel): no race, no other
    /// task harmed). Returns at once: the iterator then yields what is left, each item as
    /// its value if its task finished first, else [`TaskError::Cancelled`], and ends.
    ///
    /// Dropping an `Imap` cancels only its tasks that no worker has started, which costs
    /// nothing; it does not kill workers, since `pool.imap(f, xs).take(3)` drops the iterator
    /// with tasks running, and a kill and a new worker for each would cost more than letting
    /// them finish.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Pool, pool::TaskError};
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = Pool::new(2)?;
    /// let mut it = pool.imap(nap, [1, 60_000, 60_000, 5]);
    /// assert_eq!(it.next().unwrap()?, 1);
    /// it.cancel();
    /// let rest: Vec<_> = it.collect();
    /// assert_eq!(rest.len(), 3); // all four were submitted: the window is wider
    /// // The two long naps were running and are cancelled; the last may have finished.
    /// assert!(rest.iter().filter(|r| matches!(r, Err(TaskError::Cancelled))).count() >= 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&mut self) {
        self.input_done = true;
        let keys = self.keys_in_flight();
        self.pool.core.cancel_handle().request(keys, true);
    }
}

impl<T> Drop for Imap<'_, T> {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            let keys = self.keys_in_flight();
            self.pool.core.cancel_handle().request(keys, false);
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Iterator for Imap<'_, T> {
    type Item = Result<T, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.progress.advance(1);
                return Some(item);
            }
            self.refill();
            let Some((len, outcome)) = self.next_chunk() else {
                self.progress.finish();
                if std::mem::take(&mut self.refused) {
                    return Some(Err(TaskError::PoolClosed));
                }
                return None;
            };
            self.queue_outcome(len, outcome);
        }
    }
}
