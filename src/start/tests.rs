//! Descriptors travel with start arguments under every method.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::context::{StartMethod, get_context};
use crate::process::target::Entry;
use crate::sys;
use crate::wire;

/// A test-only handle that owns one end of a pipe, serialized through the side channel as the
/// crate's real handles (Connection, Queue, ...) are.
#[derive(Debug)]
struct PipeEnd(OwnedFd);

impl Serialize for PipeEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for PipeEnd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        wire::deserialize_fd(d).map(PipeEnd)
    }
}

fn write_greeting((end, text): (PipeEnd, String)) -> usize {
    sys::write_all(end.0.as_fd(), text.as_bytes()).expect("write to the pipe");
    text.len()
}

/// Reads until end of file (every write end closed), failing after `timeout`.
fn read_to_end(fd: &OwnedFd, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    sys::set_nonblocking(fd.as_fd()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let ready = sys::wait_readable(&[fd.as_fd()], Some(deadline)).unwrap();
        assert!(ready[0], "no end of file before the deadline: {out:?}");
        match sys::read(fd.as_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn pipe_end_crosses(method: StartMethod) {
    let (r, w) = sys::pipe().unwrap();
    let text = format!("hello over {method}");
    let handle = get_context(method)
        .spawn_with_args(write_greeting, (PipeEnd(w), text.clone()))
        .unwrap();
    // The parent's copy of the write end went with the arguments: once the child is done, the
    // reader sees end of file, which also proves that no copy stayed in the parent or server.
    assert_eq!(read_to_end(&r, Duration::from_secs(10)), text.as_bytes());
    assert_eq!(handle.join().unwrap(), text.len());
}

#[test]
fn pipe_end_crosses_under_spawn() {
    pipe_end_crosses(StartMethod::Spawn);
}

#[test]
fn pipe_end_crosses_under_forkserver() {
    pipe_end_crosses(StartMethod::ForkServer);
}

#[test]
fn pipe_end_crosses_under_fork() {
    pipe_end_crosses(StartMethod::Fork);
}

#[test]
fn handle_outside_a_start_is_an_encode_error() {
    let (_r, w) = sys::pipe().unwrap();
    let err = crate::process::target::encode(&PipeEnd(w)).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Encode);
}

#[test]
fn garbage_entry_offsets_are_refused() {
    assert!(sys::entry_at::<Entry>(i64::MAX).is_none());
    assert!(sys::entry_at::<Entry>(i64::MIN).is_none());
    assert!(sys::entry_at::<Entry>(1 << 40).is_none());
    let entry: crate::process::target::Entry = |_| Err(crate::Error::new(crate::ErrorKind::Decode));
    let offset = sys::entry_offset(entry).expect("test code lives in the executable");
    assert_eq!(
        sys::entry_at::<Entry>(offset).map(|e| e as usize),
        Some(entry as usize)
    );
}

#[test]
fn without_hook_or_init_reexecuting_is_refused_with_the_fix() {
    assert!(super::reexec_check(true, false).is_ok());
    assert!(super::reexec_check(false, true).is_ok());
    let err = super::reexec_check(false, false).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::UnsupportedStartMethod);
    assert!(err.to_string().contains("multiproc::init()"), "{err}");
    // In this test binary the hook did run: the check passes for real.
    assert!(super::ensure_can_reexec().is_ok());
}
