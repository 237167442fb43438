//! The Linux layer: everything in `sys` that uses a Linux-only interface.
//!
//! See `src/sys/README.md` for what each file provides and what another platform must
//! provide in its place.
//!
//! # Safety
//! Each file states its own `# Safety` note; every `unsafe` block carries a `// SAFETY:`
//! comment.

mod clone;
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
pub(crate) use futex::*;
pub(crate) use image::*;
pub(crate) use ofd::*;
pub(crate) use placement::*;
pub(crate) use proc::*;
pub(crate) use process::*;
pub(crate) use shm::*;
