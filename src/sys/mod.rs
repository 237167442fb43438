//! Platform layer: the only place that talks to the OS directly.
//!
//! Everything above this module sees plain Rust types (`OwnedFd`, `io::Error`, `RawPid`, exit
//! codes as `i32`) and reaches every wrapper as `crate::sys::NAME`, never through a platform
//! path: this module is the seam, as rustix's backends are. It selects one platform layer, a
//! directory that provides the full set of names listed in `src/sys/README.md` (processes
//! and child handles, parent death, descriptors, the forkserver's sibling clone, re-executing
//! the program, its image and pre-main hook, waits on shared words, other processes'
//! liveness, open file descriptions, shared memory, stack bounds), and re-exports it beside
//! the portable POSIX files every layer shares (`conn.rs`, `fdpass.rs`, `poll.rs`,
//! `signal.rs`, `daemon.rs`, `stack.rs`; and `fd.rs`, `exit.rs`, `mapping.rs`, `spawn.rs`,
//! which the layers' own files re-export or call).
//!
//! Linux (`linux/`) is the default layer. The portable POSIX layer (`posix/`, issue 18) is
//! selected by `--cfg multiproc_portable` (or `MULTIPROC_PORTABLE=1`, see `build.rs`) and on
//! every other Unix; it has the same names and signatures, documents per
//! name where its promise differs, and still borrows some Linux files (see `posix/mod.rs`).
//!
//! # Safety
//! Each `unsafe` block in the platform files carries a `// SAFETY:` note, and each file a
//! module `# Safety` note. The post-fork child path is [`fork_child`]: it runs no allocation
//! and takes no lock before handing control to the caller's closure, and it leaves through
//! [`exit_now`], never through the parent's destructors or `atexit` handlers. The forkserver's
//! [`SiblingCloner::clone_sibling`] is its sibling for a single-threaded server
//! (`linux/clone.rs`); [`spawn_self`] re-executes the program (`linux/exec.rs`);
//! `image.rs` holds the pre-main hook and the entry-point codec; `fdpass.rs` SCM_RIGHTS;
//! `linux/ofd.rs` new open file descriptions, OFD locks and eventfds.

#[cfg(all(target_os = "linux", not(multiproc_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(multiproc_portable)))]
pub(crate) use linux::*;
#[cfg(any(multiproc_portable, not(target_os = "linux")))]
mod posix;
#[cfg(any(multiproc_portable, not(target_os = "linux")))]
pub(crate) use posix::*;

mod conn;
mod daemon;
mod exit;
mod fd;
mod fdpass;
mod mapping;
#[cfg(any(feature = "tokio", feature = "async-io"))]
mod nowait;
mod poll;
mod signal;
mod spawn;
mod stack;
#[cfg(feature = "tokio")]
mod tokio_fd;
pub(crate) use conn::*;
pub(crate) use daemon::detach_daemon;
pub(crate) use fdpass::*;
#[cfg(any(feature = "tokio", feature = "async-io"))]
pub(crate) use nowait::write_nowait;
pub(crate) use poll::{
    Interest, PollSet, pipe_reader_gone, poll_fds, set_pipe_size, set_send_buffer, write_some,
};
pub(crate) use signal::{
    ignore_interrupts, is_main_thread, restore_default_stop_signals, rust_signal_defaults,
};
pub(crate) use stack::{stack_bounds, stack_pointer};
#[cfg(feature = "tokio")]
pub(crate) use tokio_fd::tokio_async_fd;
