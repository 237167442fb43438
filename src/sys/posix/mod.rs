//! The portable POSIX layer (issue 18), selected by `--cfg multiproc_portable` on Linux.
//!
//! It provides the same names as `linux/` (see `src/sys/README.md`). The concerns already
//! replaced by POSIX-only code live in this directory; the rest are, for now, the Linux
//! layer's own files, included by path, so that the layer builds and the whole crate can be
//! run on it while the replacements land one concern at a time:
//!
//! | File | State |
//! |---|---|
//! | `futex.rs` | portable: polling (yields for 100 µs, then sleeps with exponential backoff), no futex |
//! | `proc.rs` | portable: no `/proc`; liveness by a per-process life lock (a record lock held for the process's life), `kill(pid, 0)` as fallback |
//! | `shm.rs` | portable: `shm_open` (anonymous: random `O_EXCL` name, unlinked at once); no seals, no hole punching |
//! | `ofd.rs` | portable: the event is a self-connected Unix datagram socket; a queue handle's holder mark is a `flock`ed file of its own in a private directory per queue |
//! | `process.rs` | portable: child handles by exit socket pairs reaped with `waitpid` by a reaper thread, parent death by an alive pipe |
//! | `clone.rs` | portable: the forkserver forks its children and reports their exit codes (CPython's design) |
//! | `exec.rs` | portable: `posix_spawn` of `current_exe()` as found on first use, with the exit and alive pipes at fixed descriptors |
//! | `image.rs` | shared with the Linux layer (`../image.rs`): per image format, ELF `.init_array` with `__ehdr_start`/`etext` (Linux, and the BSDs with `dl_iterate_phdr` for the main-executable check), Mach-O `__DATA,__mod_init_func` with `__dso_handle`/`getsegmentdata` (type-checked for macOS, never run) |
//! | `placement.rs` | shared with the Linux layer (`../placement.rs`): niceness and limits by POSIX calls; affinity per target (Linux, FreeBSD; `Unsupported` elsewhere), resident size per target (`/proc/<pid>/statm` on Linux, `proc_pidinfo` on macOS, `sysctl` on FreeBSD; `Unsupported` elsewhere) |
//! | `entries.rs` | the Linux file (the manager's ELF symbol reader), reading `current_exe()` on this layer: ELF systems (Linux, the BSDs) have the table; on macOS (Mach-O) a manager refuses `modify` and `#[remote]` calls with an error saying why |
//!
//! The crate type-checks (`cargo check --lib`) for x86_64-unknown-freebsd and
//! x86_64-apple-darwin (CI checks both); it has never been linked or run on them, so the
//! non-Linux branches (`target_vendor = "apple"`, `target_os = "freebsd"`, ...) are unrun.
//!
//! # Safety
//! Each file states its own `# Safety` note; every `unsafe` block carries a `// SAFETY:`
//! comment.

mod clone;
#[path = "../linux/entries.rs"]
mod entries;
mod exec;
mod futex;
#[path = "../image.rs"]
mod image;
mod ofd;
#[path = "../placement.rs"]
mod placement;
mod proc;
mod process;
mod shm;

pub(crate) use clone::*;
pub(crate) use entries::{EntryKind, is_entry};
pub(crate) use exec::*;
// Shadows `image::take_boot_fd`: also takes over the exit and alive pipes (`process.rs`).
pub(crate) use exec::take_boot_fd;
pub(crate) use futex::*;
pub(crate) use image::*;
pub(crate) use ofd::*;
pub(crate) use placement::*;
pub(crate) use proc::*;
pub(crate) use process::*;
pub(crate) use shm::*;
