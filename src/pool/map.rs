//! `map` and `starmap`: the input cut into chunks, each chunk one task, the chunks' values
//! put back together in order, either on the caller's thread (`map`) or by the sinks as the
//! chunks complete (`map_async`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::async_result::{AsyncResult, Callbacks, Slot, decode_caught};
use super::error::TaskError;
use super::progress::Tracker;
use super::supervisor::{Job, Sink, new_key};
use super::task::{encode_args, submit};
use super::{Pool, codec, transport};
use crate::error::{Error, ErrorKind, Result};

/// Python's default `chunksize` for `map`: about four chunks per worker.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(processes * 4).max(1)
}

impl Pool {
    /// `map` for a caller who waits: each chunk is submitted as soon as it is encoded, and
    /// the values are decoded on the caller's thread, so the pool's thread only moves bytes
    /// and the caller's encoding and decoding overlap the workers' computing.
    pub(super) fn map_sync<A, T, I>(
        &self,
        entry: i64,
        iterable: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<T>, TaskError>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = iterable.into_iter().collect();
        let chunksize = match chunksize {
            Some(0) => {
                return Err(TaskError::Process(Error::with_message(
                    ErrorKind::InvalidInput,
                    "chunksize must be at least 1",
                )));
            }
            Some(n) => n,
            None => default_chunksize(items.len(), self.processes),
        };
        let progress = Tracker::new(&self.progress, Some(items.len() as u64));
        let mut pending = VecDeque::with_capacity(items.len().div_ceil(chunksize));
        for chunk in items.chunks(chunksize) {
            let slot = Slot::new();
            let sink = Box::new(BytesSink {
                slot: Arc::clone(&slot),
            });
            match encode_args(|| codec::encode_chunk(chunk)) {
                Ok(payload) => submit(&self.core, entry, payload, sink),
                Err(e) => return Err(e.into()),
            }
            pending.push_back((chunk.len(), slot));
        }
        let total = items.len();
        drop(items);
        let mut out = Vec::with_capacity(total);
        for (len, slot) in pending {
            let bytes = slot.get(None)?;
            out.extend(decode_chunk::<T>(&bytes, len)?);
            progress.advance(len);
        }
        progress.finish();
        Ok(out)
    }

    pub(super) fn submit_map<A, T, I>(
        &self,
        entry: i64,
        iterable: I,
        chunksize: Option<usize>,
        callbacks: Option<Callbacks<Vec<T>>>,
    ) -> AsyncResult<Vec<T>>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = iterable.into_iter().collect();
        let slot = Slot::new();
        if items.is_empty() {
            let outcome = Ok(Vec::new());
            if let Some(cb) = callbacks {
                cb.run(&outcome);
            }
            slot.complete(outcome);
            return AsyncResult::new(slot);
        }
        let chunksize = match chunksize {
            Some(0) => {
                let e = TaskError::Process(Error::with_message(
                    ErrorKind::InvalidInput,
                    "chunksize must be at least 1",
                ));
                return AsyncResult::failed(e);
            }
            Some(n) => n,
            None => default_chunksize(items.len(), self.processes),
        };
        let chunks = items.len().div_ceil(chunksize);
        let state = Arc::new(Mutex::new(MapState {
            parts: (0..chunks).map(|_| None).collect(),
            remaining: chunks,
            slot: Arc::clone(&slot),
            callbacks,
            progress: Tracker::new(&self.progress, Some(items.len() as u64)),
        }));
        let mut jobs = Vec::with_capacity(chunks);
        let mut keys = Vec::with_capacity(chunks);
        for (index, chunk) in items.chunks(chunksize).enumerate() {
            let key = new_key();
            keys.push(key);
            let sink = Box::new(ChunkSink {
                key,
                index,
                len: chunk.len(),
                state: Arc::clone(&state),
                finished: false,
            });
            match encode_args(|| codec::encode_chunk(chunk))
                .and_then(|p| transport::check_size(p.len()).map(|()| p))
            {
                Ok(payload) => jobs.push(Job {
                    entry,
                    payload,
                    sink,
                    limit: None,
                    failed_runs: 0,
                    deaths: 0,
                }),
                Err(e) => {
                    sink.finish(Err(e.into()));
                    return AsyncResult::new(slot);
                }
            }
        }
        if let Err(jobs) = self.core.submit_all(jobs) {
            for job in jobs {
                job.sink.finish(Err(TaskError::PoolClosed));
            }
        }
        AsyncResult::over_parts(slot, self.core.cancel_handle(), keys)
    }
}

/// Keeps a task's encoded value for the waiting caller to decode.
pub(super) struct BytesSink {
    pub(super) slot: Arc<Slot<Vec<u8>>>,
}

impl Sink for BytesSink {
    fn start(&self) -> bool {
        // A chunk of an `imap` cancelled while queued completed its slot already.
        self.slot.try_start()
    }

    fn key(&self) -> Option<u64> {
        Some(self.slot.key)
    }

    fn finish(self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        self.slot.complete(outcome);
    }
}

impl Drop for BytesSink {
    fn drop(&mut self) {
        // Dropped without an outcome (the pool went away); after `finish` this does nothing.
        self.slot.complete(Err(TaskError::Terminated));
    }
}

struct MapState<T> {
    parts: Vec<Option<Vec<T>>>,
    remaining: usize,
    slot: Arc<Slot<Vec<T>>>,
    callbacks: Option<Callbacks<Vec<T>>>,
    progress: Tracker,
}

struct ChunkSink<T> {
    /// What the pool knows this chunk by when the result is cancelled.
    key: u64,
    index: usize,
    len: usize,
    state: Arc<Mutex<MapState<T>>>,
    finished: bool,
}

impl<T: DeserializeOwned + Send + 'static> Sink for ChunkSink<T> {
    fn key(&self) -> Option<u64> {
        Some(self.key)
    }

    fn finish(mut self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        let decoded =
            outcome.and_then(|bytes| decode_caught(|| decode_chunk::<T>(&bytes, self.len)));
        // From here nothing unwinds (callbacks are caught), so this chunk's outcome is
        // delivered below and the drop must not deliver another.
        self.finished = true;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.parts.is_empty() {
            return; // already failed
        }
        let outcome = match decoded {
            Ok(values) => {
                state.parts[self.index] = Some(values);
                state.remaining -= 1;
                state.progress.advance(self.len);
                if state.remaining > 0 {
                    return;
                }
                let parts = std::mem::take(&mut state.parts);
                Ok(parts.into_iter().flatten().flatten().collect())
            }
            Err(e) => {
                // Python's map fails as soon as one chunk fails.
                state.parts = Vec::new();
                Err(e)
            }
        };
        state.progress.finish();
        let callbacks = state.callbacks.take();
        let slot = Arc::clone(&state.slot);
        drop(state);
        if let Some(cb) = callbacks {
            cb.run(&outcome);
        }
        slot.complete(outcome);
    }
}

impl<T> Drop for ChunkSink<T> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped without an outcome (the pool went away): never leave a waiter waiting.
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.slot.complete(Err(TaskError::Terminated));
        }
    }
}

pub(super) fn decode_chunk<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    len: usize,
) -> Result<Vec<T>, TaskError> {
    let values: Vec<T> = codec::decode_chunk(bytes)?;
    if values.len() != len {
        return Err(TaskError::Process(Error::with_message(
            ErrorKind::Decode,
            format!("a chunk of {len} tasks returned {} values", values.len()),
        )));
    }
    Ok(values)
}
