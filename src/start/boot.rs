//! The boot message: what a child that does not share the parent's memory (spawn, forkserver)
//! needs to become the process the parent prepared.
//!
//! The parent turns a [`ChildPlan`] and a task into one frame plus descriptors
//! ([`prepare`]); the child turns them back into an installed identity and a running target
//! ([`run_boot`]), joining the fork path at `bootstrap::run_target`.
//!
//! Descriptors travel beside the bytes: the result pipe first (if the caller wants a typed
//! result), then those of handles among the arguments, in the order `wire::collect_fds`
//! recorded them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::context;
use crate::error::{Error, ErrorKind, Result};
use crate::process::bootstrap::{self, ChildPlan, Outcome, PANIC_EXIT_CODE};
use crate::process::current::{self, Identity, ProcessEnv};
use crate::process::log_forward;
use crate::process::output::ChildStdio;
use crate::process::target::{Entry, Task};
use crate::sys;
use crate::wire;

/// The environment variable that tells a re-executed program it is a child (`spawn`) or a
/// forkserver (`forkserver`), with its boot socket at `sys::BOOT_FD`.
pub(crate) const MARKER: &str = "__MULTIPROC_CHILD";

/// Bumped whenever [`Boot`] changes shape.
const VERSION: u32 = 3;

/// The running binary, as (device, inode, size, mtime).
type ExeId = (u64, u64, i64, i64);

#[derive(Serialize, Deserialize)]
struct Boot {
    version: u32,
    /// The parent's binary; the child must be running the same file.
    exe: ExeId,
    /// The entry point, as an offset from `sys::image`'s anchor.
    entry: i64,
    identity: Identity,
    #[serde(with = "wire::bytes")]
    payload: Vec<u8>,
    /// Whether the first descriptor is the result pipe's write end.
    has_result: bool,
    /// The default start method the child adopts, by name (`ChildPlan::start_method`).
    start_method: Option<String>,
    /// CPU affinity, niceness and limits (`ChildPlan::placement`).
    placement: crate::process::placement::Placement,
    /// Captured stdout, stderr and the `tracing` level: their descriptors follow the result
    /// pipe's (`ChildStdio::flags`).
    stdio: (bool, bool, Option<u8>),
}

/// A boot message ready to send.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) frame: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Prepared {
    pub(crate) fn borrowed_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.fds.iter().map(AsFd::as_fd).collect()
    }
}

fn exe_identity() -> Result<ExeId> {
    static EXE: OnceLock<ExeId> = OnceLock::new();
    if let Some(id) = EXE.get() {
        return Ok(*id);
    }
    let id = sys::exe_identity().map_err(|e| {
        Error::with_message(
            ErrorKind::Io,
            format!("cannot find this program's binary to re-execute (/proc/self/exe: {e})"),
        )
    })?;
    Ok(*EXE.get_or_init(|| id))
}

/// Serializes everything the child needs. Fails, before any process exists, when the target
/// captures variables, an argument cannot be serialized, or there are too many descriptors.
pub(crate) fn prepare(plan: ChildPlan, task: Box<dyn Task>) -> Result<Prepared> {
    let (remote, payload_fds) = wire::collect_fds_checked(|| task.to_remote())?;
    drop(task);
    let entry = sys::entry_offset(remote.entry).ok_or_else(|| {
        Error::with_message(
            ErrorKind::UnsupportedStartMethod,
            "the target's code is not part of the main executable (is multiproc linked into a \
             shared library?), so a re-executed program cannot find it; use the fork start method",
        )
    })?;
    let has_result = plan.result.is_some();
    let start_method = plan.start_method;
    let placement = plan.placement;
    let stdio = plan.stdio.flags();
    let mut fds: Vec<OwnedFd> = plan.result.into_iter().collect();
    fds.extend(plan.stdio.into_fds());
    fds.extend(payload_fds);
    if fds.len() > sys::MAX_FDS {
        return Err(Error::with_message(
            ErrorKind::Encode,
            format!(
                "the arguments hold {} descriptors, over the limit of {} per start",
                fds.len(),
                sys::MAX_FDS
            ),
        ));
    }
    let boot = Boot {
        version: VERSION,
        exe: exe_identity()?,
        entry,
        identity: plan.env.identity,
        payload: remote.payload,
        has_result,
        start_method: start_method.map(|m| m.name().to_owned()),
        placement,
        stdio,
    };
    Ok(Prepared {
        frame: wire::encode_frame(&boot)?,
        fds,
    })
}

/// Reads whole frames, with the descriptors that came with them, from a stream socket.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl FrameReader {
    /// The next frame's bytes (header included) and every descriptor received so far.
    /// `Ok(None)` at a clean end of stream.
    pub(crate) fn next(&mut self, sock: BorrowedFd<'_>) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            if let Some(len) = wire::frame_len(&self.buf)? {
                let total = wire::HEADER + len;
                if self.buf.len() >= total {
                    let rest = self.buf.split_off(total);
                    let frame = std::mem::replace(&mut self.buf, rest);
                    return Ok(Some((frame, std::mem::take(&mut self.fds))));
                }
            }
            let n = sys::recv_with_fds(sock, &mut self.buf, &mut self.fds)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
}

/// The child's side: decodes `frame`, becomes the process it describes and runs its target.
/// Returns the exit code.
pub(crate) fn run_boot(frame: &[u8], fds: Vec<OwnedFd>) -> i32 {
    match start_child(frame, fds) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("multiproc: child process could not start: {e}");
            PANIC_EXIT_CODE
        }
    }
}

fn start_child(frame: &[u8], mut fds: Vec<OwnedFd>) -> Result<i32> {
    let Some((boot, _)) = wire::decode_frame::<Boot>(frame)? else {
        return Err(Error::with_message(
            ErrorKind::Decode,
            "truncated boot message",
        ));
    };
    if boot.version != VERSION {
        return Err(Error::with_message(
            ErrorKind::Decode,
            format!("boot message version {} (expected {VERSION})", boot.version),
        ));
    }
    if boot.exe != sys::exe_identity()? {
        return Err(Error::with_message(
            ErrorKind::Decode,
            "the parent runs a different binary than this child",
        ));
    }
    let entry = sys::entry_at::<Entry>(boot.entry).ok_or_else(|| {
        Error::with_message(
            ErrorKind::Decode,
            "boot message names no function of this program",
        )
    })?;
    let result = if boot.has_result {
        if fds.is_empty() {
            return Err(Error::with_message(
                ErrorKind::Decode,
                "result pipe missing",
            ));
        }
        Some(fds.remove(0))
    } else {
        None
    };
    let stdio = ChildStdio::from_fds(boot.stdio, &mut fds).ok_or_else(|| {
        Error::with_message(ErrorKind::Decode, "captured stdio descriptors missing")
    })?;
    let tracing = stdio.redirect();
    if boot.identity.daemon
        && let Some((parent, _)) = &boot.identity.parent
        && !sys::die_with_parent(*parent)
    {
        return Ok(PANIC_EXIT_CODE);
    }
    // Before the target's arguments are decoded: that is user code (`Deserialize`).
    if !boot.placement.apply_or_report() {
        return Ok(PANIC_EXIT_CODE);
    }
    if let Some(method) = boot.start_method {
        context::force_start_method(method.parse()?);
    }
    bootstrap::install_panic_hook();
    current::install(Box::new(ProcessEnv::new(boot.identity)));
    let payload = boot.payload;
    // User code from here on.
    Ok(bootstrap::run_target(result, move || {
        let _tracing = log_forward::install(tracing);
        let task = wire::with_received_fds(fds, || entry(&payload))
            .map_err(|e| Outcome::BadArguments(bootstrap::error_chain(&e)))?;
        task.run_here()
            .map_err(|e| Outcome::Unencodable(bootstrap::error_chain(&e)))
    }))
}
