//! `tracing` events of a child, re-emitted in the parent (`Builder::forward_tracing`).
//!
//! The child installs [`ChildSubscriber`], which turns each event into a [`Record`] (level,
//! target, message and fields as text) and writes it as one frame on a pipe; the parent's
//! forwarding thread (`output.rs`) decodes the frames and emits each again with
//! `tracing::event!`, adding `process.name` and `process.pid`. The `tracing` crate only is
//! needed: no `tracing-subscriber` in the library.

use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::sys;
use crate::wire;

/// One event as it crosses the pipe.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    level: u8,
    target: String,
    message: String,
    /// The other fields, each formatted as `tracing`'s `Debug` recording shows it.
    fields: Vec<(String, String)>,
    file: Option<String>,
    line: Option<u32>,
}

fn level_code(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The most verbose level the parent's subscriber wants, as sent to the child (0: none): the
/// child sends nothing more verbose, which the parent would drop anyway.
pub(crate) fn parent_level() -> u8 {
    match LevelFilter::current().into_level() {
        None => 0,
        Some(level) => level_code(&level),
    }
}

/// The child's subscriber: every event at or above the parent's level becomes one frame.
struct ChildSubscriber {
    out: Mutex<OwnedFd>,
    max: u8,
    next_span: AtomicU64,
}

impl Subscriber for ChildSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_code(metadata.level()) <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match self.max {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not forwarded; each still needs an id of its own (never 0).
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &SpanRecord<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut record = Record {
            level: level_code(meta.level()),
            target: meta.target().to_owned(),
            message: String::new(),
            fields: Vec::new(),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
        };
        event.record(&mut Fields(&mut record));
        let Ok(frame) = wire::encode_frame(&record) else {
            return;
        };
        // One writer at a time, so frames of events from different threads never mix.
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // The parent may be gone: then nobody listens.
        let _ = sys::write_all(out.as_fd(), &frame);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

struct Fields<'a>(&'a mut Record);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.0.message = text;
        } else {
            self.0.fields.push((field.name().to_owned(), text));
        }
    }
}

/// Keeps the child's subscriber installed for this thread when it could not be the global one.
pub(crate) struct Installed(#[allow(dead_code)] Option<tracing::dispatcher::DefaultGuard>);

/// In the child, as its first user-level step: sends its `tracing` events to `fd`. Becomes the
/// global default if none is set (spawn and forkserver children, forked children of a parent
/// without one); a forked child of a parent that set one keeps that one for its other threads
/// and uses this one on the thread that runs its target.
pub(crate) fn install(channel: Option<(OwnedFd, u8)>) -> Installed {
    let Some((fd, max)) = channel else {
        return Installed(None);
    };
    let subscriber = ChildSubscriber {
        out: Mutex::new(fd),
        max,
        next_span: AtomicU64::new(0),
    };
    let dispatch = tracing::Dispatch::new(subscriber);
    if tracing::dispatcher::set_global_default(dispatch.clone()).is_ok() {
        return Installed(None);
    }
    Installed(Some(tracing::dispatcher::set_default(&dispatch)))
}

/// In the parent (the forwarding thread): re-emits the complete frames in `buf`, removing
/// them. A partial frame stays; at the child's end it is dropped (the child died mid-write).
pub(crate) fn deliver(name: &str, pid: u32, buf: &mut Vec<u8>) {
    let mut used = 0;
    loop {
        let rest = &buf[used..];
        match wire::frame_len(rest) {
            Ok(Some(len)) if rest.len() >= wire::HEADER + len => {
                // A frame that does not decode is skipped; the ones after it still do.
                if let Ok(Some((record, _))) = wire::decode_frame::<Record>(rest) {
                    emit(name, pid, &record);
                }
                used += wire::HEADER + len;
            }
            Ok(_) => break,
            // Not a frame at all: nothing after it can be trusted.
            Err(_) => {
                used = buf.len();
                break;
            }
        }
    }
    buf.drain(..used);
}

fn emit(name: &str, pid: u32, r: &Record) {
    let fields = r
        .fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let file = r.file.as_deref().unwrap_or("");
    let line = r.line.unwrap_or(0);
    // `tracing`'s callsites are static, so the child's target, file and line travel as fields.
    macro_rules! again {
        ($level:expr) => {
            tracing::event!(
                target: "multiproc::child",
                $level,
                process.name = name,
                process.pid = pid,
                child.target = %r.target,
                child.fields = %fields,
                child.file = file,
                child.line = line,
                "{}",
                r.message
            )
        };
    }
    match r.level {
        1 => again!(Level::ERROR),
        2 => again!(Level::WARN),
        3 => again!(Level::INFO),
        4 => again!(Level::DEBUG),
        _ => again!(Level::TRACE),
    }
}
