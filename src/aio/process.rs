//! `join_async` for [`Process`] and [`JoinHandle`]: the pidfd's readiness.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Watch;
use crate::error::{Error, JoinError};
use crate::process::{JoinHandle, Process};

impl Process {
    /// As [`join`](Process::join), as a future: waits for the child to end, on its pidfd
    /// through the runtime's reactor (no thread), and returns its exit code.
    ///
    /// # Cancellation safety
    /// Cancel-safe: it only waits; the child is reaped by the poll that returns. After a
    /// dropped future the process can be joined again.
    ///
    /// # Errors
    /// As [`join`](Process::join); an `Io` error also when no supported runtime is running.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use multiproc::Process;
    ///
    /// fn exit_three() {
    ///     std::process::exit(3);
    /// }
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let mut p = Process::new(exit_three);
    /// p.start()?;
    /// assert_eq!(rt.block_on(p.join_async())?, 3);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn join_async(&mut self) -> crate::Result<i32> {
        if let Some(code) = self.join_timeout(Duration::ZERO)? {
            return Ok(code);
        }
        let watch = Watch::read(self.sentinel()?).map_err(Error::from)?;
        loop {
            watch.readable().await.map_err(Error::from)?;
            if let Some(code) = self.join_timeout(Duration::ZERO)? {
                return Ok(code);
            }
        }
    }
}

impl<T: DeserializeOwned> JoinHandle<T> {
    /// As [`join`](JoinHandle::join), as a future: waits for the child to end and returns
    /// the value its target returned.
    ///
    /// Waits on the child's pidfd and on the pipe its value comes through (a value larger
    /// than the pipe's buffer is read as it arrives, so the child can finish writing it),
    /// both through the runtime's reactor: no thread. It borrows the handle, so it composes
    /// with `select!` and timeouts; join again after a dropped future.
    ///
    /// # Cancellation safety
    /// Cancel-safe: part of the value read before the future was dropped stays in the handle,
    /// and the next join (async or not) continues from there.
    ///
    /// # Errors
    /// As [`join`](JoinHandle::join), and [`JoinError::AlreadyJoined`] after a join that
    /// returned; [`JoinError::Process`] with an `Io` error also when no supported runtime is
    /// running.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(async {
    ///     let mut handles = Vec::new();
    ///     for i in 0..4u64 {
    ///         handles.push(multiproc::spawn_with_args(|i: u64| i * i, i)?);
    ///     }
    ///     let mut sum = 0;
    ///     for h in &mut handles {
    ///         sum += h.join_async().await?;
    ///     }
    ///     assert_eq!(sum, 14);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn join_async(&mut self) -> Result<T, JoinError> {
        let mut pipe: Option<Watch> = None;
        let mut exit: Option<Watch> = None;
        loop {
            match self.join_timeout(Duration::ZERO) {
                Err(JoinError::Timeout) => {}
                done => return done,
            }
            if exit.is_none() {
                let fd = self.process().sentinel()?;
                exit = Some(Watch::read(fd).map_err(Error::from)?);
            }
            match self.result_fd() {
                // At end of file the handle closed its end: a duplicate would stay readable.
                None => pipe = None,
                Some(fd) if pipe.is_none() => pipe = Some(Watch::read(fd).map_err(Error::from)?),
                Some(_) => {}
            }
            let (exit, pipe) = (exit.as_ref(), pipe.as_ref());
            std::future::poll_fn(|cx| {
                let exited = exit.map(|w| w.poll_readable(cx));
                let sent = pipe.map(|w| w.poll_readable(cx));
                match (exited, sent) {
                    (Some(std::task::Poll::Ready(r)), _) | (_, Some(std::task::Poll::Ready(r))) => {
                        std::task::Poll::Ready(r)
                    }
                    _ => std::task::Poll::Pending,
                }
            })
            .await
            .map_err(Error::from)?;
        }
    }
}
