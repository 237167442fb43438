//! Platform layer: the only place that talks to the OS directly.
//!
//! Everything above this module sees plain Rust types (`OwnedFd`, `io::Error`, `ExitCode`
//! values as `i32`). Linux is complete; other Unixes (kqueue instead of pidfd, no parent-death
//! signal) and Windows (spawn only) slot in as sibling files with the same functions.
//!
//! # Safety
//! Each `unsafe` block in the platform files carries a `// SAFETY:` note. The post-fork child
//! path is [`fork_child`]: it runs no allocation and takes no lock before handing control to
//! the caller's closure, and it leaves through [`exit_now`], never through the parent's
//! destructors or `atexit` handlers. The forkserver's [`SiblingCloner::clone_sibling`] is its
//! sibling for a single-threaded server (`clone.rs`); [`spawn_self`] re-executes the program (`exec.rs`);
//! `image.rs` holds the pre-main hook and the entry-point codec; `fdpass.rs` SCM_RIGHTS;
//! `ofd.rs` new open file descriptions, OFD locks and eventfds.

#[cfg(target_os = "linux")]
mod clone;
#[cfg(target_os = "linux")]
mod exec;
mod fdpass;
#[cfg(target_os = "linux")]
mod image;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use clone::*;
#[cfg(target_os = "linux")]
pub(crate) use exec::*;
pub(crate) use fdpass::*;
#[cfg(target_os = "linux")]
pub(crate) use image::*;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
mod conn;
#[cfg(target_os = "linux")]
pub(crate) use conn::*;
#[cfg(target_os = "linux")]
mod ofd;
#[cfg(target_os = "linux")]
pub(crate) use ofd::*;

#[cfg(any(feature = "tokio", feature = "async-io"))]
mod nowait;
mod poll;
mod signal;
mod stack;
#[cfg(feature = "tokio")]
mod tokio_fd;
#[cfg(any(feature = "tokio", feature = "async-io"))]
pub(crate) use nowait::write_nowait;
pub(crate) use poll::{Interest, poll_fds, set_pipe_size, write_some};
pub(crate) use signal::restore_default_stop_signals;
pub(crate) use stack::{stack_bounds, stack_pointer};
#[cfg(feature = "tokio")]
pub(crate) use tokio_fd::tokio_async_fd;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiproc supports Linux today; macOS (kqueue) and Windows (spawn) are planned, see src/sys/mod.rs"
);

mod futex;
mod proc;
mod shm;
pub(crate) use futex::*;
pub(crate) use proc::*;
pub(crate) use shm::*;
