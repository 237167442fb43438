//! Registering a descriptor with tokio's reactor (feature `tokio`), for `crate::aio`.
//!
//! # Safety
//! tokio's registration is `unsafe` because a registered descriptor number must keep naming
//! the same open file description until it is deregistered; the one block here hands tokio
//! an `OwnedFd` it then owns, which nothing else can close or replace.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` with the current tokio runtime's reactor for `interest`.
///
/// # Errors
/// The reactor's error (`epoll_ctl` failing).
///
/// # Panics
/// Outside a tokio runtime, or in one built without IO enabled (tokio's own panic); the
/// caller checks for a runtime first and documents the IO requirement.
///
/// # References
/// tokio `AsyncFd::register_with_interest`; epoll_ctl(2).
pub(crate) fn tokio_async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open until the `AsyncFd`
    // is dropped (deregistering it first) and only lends it out by shared reference, so the
    // number stays open and names the same open file description for the whole registration.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
