//! A runtime-agnostic pipeline on async-io's reactor (what smol runs on): worker processes
//! take numbers from a bounded queue and put their squares on another queue, while one
//! task feeds the queue, reads the results and awaits the workers, all at once and without
//! a thread per wait. The same code runs under smol's executor: only `block_on` differs.
//!
//! ```text
//! cargo run --example async_io_pipeline --features async-io
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use multiproc::Queue;

/// Squares numbers from `work` until no producer is left, putting each on `results`.
fn worker((work, results): (Queue<u64>, Queue<(u64, u64)>)) -> u64 {
    // This handle only gets: closed, it does not count as a producer for the other workers.
    work.close();
    let mut done = 0;
    while let Ok(n) = work.get() {
        results.put((n, n * n)).unwrap();
        done += 1;
    }
    done
}

/// Runs two futures at once in one task (what `futures::join!` or `smol::future::zip` do).
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(x) = a.as_mut().poll(cx)
        {
            ra = Some(x);
        }
        if rb.is_none()
            && let Poll::Ready(y) = b.as_mut().poll(cx)
        {
            rb = Some(y);
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const N: u64 = 1000;
    async_io::block_on(async {
        let work: Queue<u64> = Queue::with_maxsize(8)?;
        let results: Queue<(u64, u64)> = Queue::new()?;
        let mut workers = Vec::new();
        for _ in 0..3 {
            let args = (work.clone(), results.clone());
            workers.push(multiproc::spawn_with_args(worker, args)?);
        }

        let feed = async {
            for n in 0..N {
                // Waits (without blocking the thread) while the 8 places are taken.
                work.put_async(n).await?;
            }
            // No more work: the workers' gets return `Disconnected` once the queue is empty.
            work.close();
            Ok::<(), Box<dyn std::error::Error>>(())
        };
        let collect = async {
            let mut sum = 0u64;
            for _ in 0..N {
                let (n, square) = results.get_async().await?;
                assert_eq!(square, n * n);
                sum += square;
            }
            Ok::<u64, Box<dyn std::error::Error>>(sum)
        };
        let (fed, sum) = both(feed, collect).await;
        fed?;
        let sum = sum?;
        let mut per_worker = Vec::new();
        for w in &mut workers {
            per_worker.push(w.join_async().await?);
        }
        println!("sum of squares below {N}: {sum}");
        println!("items per worker: {per_worker:?}");
        assert_eq!(sum, (0..N).map(|n| n * n).sum::<u64>());
        assert_eq!(per_worker.iter().sum::<u64>(), N);
        Ok(())
    })
}
