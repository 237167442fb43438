//! Progress of long `map`, `starmap`, `imap`, `imap_unordered` and executor `map` calls: a bar
//! on stderr (cargo feature `progress`) and a callback ([`Progress`]) for programs that draw
//! their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far a `map` has come, as given to a callback set with
/// [`PoolBuilder::progress_with`](crate::pool::PoolBuilder::progress_with) or
/// [`ExecutorBuilder::progress_with`](crate::pool::ExecutorBuilder::progress_with).
///
/// # Examples
/// ```
/// use std::sync::{Arc, Mutex};
/// use multiproc::{Pool, pool::Progress};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let pool = Pool::builder()
///     .processes(2)
///     .progress_with(move |p: Progress| {
///         // A program's own display: here, just the counts.
///         log.lock().unwrap().push((p.done, p.total));
///         let _ = (p.elapsed, p.eta, p.per_sec());
///     })
///     .build()?;
/// pool.map(square, 0..100)?;
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen.last(), Some(&(100, Some(100))));
/// assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Items done so far (values delivered, or failed).
    pub done: u64,
    /// Items in all, when known (an `imap` over an iterator without an exact length: `None`).
    pub total: Option<u64>,
    /// Time since the call started.
    pub elapsed: Duration,
    /// Time left at the rate so far, when the total is known and an item is done.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Throughput so far, items per second.
    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }
}

/// A progress callback.
pub(crate) type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What a pool shows for its maps: the bar, a callback, both or neither.
#[derive(Clone, Default)]
pub(crate) struct ProgressSetup {
    pub(crate) bar: bool,
    pub(crate) callback: Option<ProgressFn>,
}

impl std::fmt::Debug for ProgressSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSetup")
            .field("bar", &self.bar)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

/// One call's progress: the bar on stderr (if asked for and the feature is on) and the
/// callback (if set), both fed by [`advance`](Tracker::advance).
#[derive(Default)]
pub(crate) struct Tracker {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
    callback: Option<ProgressFn>,
    total: Option<u64>,
    done: AtomicU64,
    start: Option<Instant>,
}

impl Tracker {
    /// Progress over `total` items (`None`: unknown length).
    #[allow(unused_variables)]
    pub(crate) fn new(setup: &ProgressSetup, total: Option<u64>) -> Self {
        #[cfg(feature = "progress")]
        let bar = setup.bar.then(|| {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::no_length(),
            };
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Tracker {
            #[cfg(feature = "progress")]
            bar,
            callback: setup.callback.clone(),
            total,
            done: AtomicU64::new(0),
            start: setup.callback.is_some().then(Instant::now),
        }
    }

    /// `n` more items are done.
    pub(crate) fn advance(&self, n: usize) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        let (Some(callback), Some(start)) = (&self.callback, self.start) else {
            return;
        };
        let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let elapsed = start.elapsed();
        let eta = self
            .total
            .filter(|_| done > 0)
            .map(|total| elapsed.mul_f64(total.saturating_sub(done) as f64 / done as f64));
        let report = Progress {
            done,
            total: self.total,
            elapsed,
            eta,
        };
        // User code: a panic in it is reported and goes no further (it may run on the pool's
        // thread, for `map_async`).
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(report))).is_err() {
            tracing::warn!("a progress callback panicked");
        }
    }

    /// The work is over.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
