//! Captured output (`Output::Forward`, `Output::Callback`) and forwarded `tracing` events
//! (issue 16, "Output"): no line lost when a child is killed, none split or mixed with
//! another child's, each with its child's name and pid; under every start method.
//! Lines are observed through the callback form, never through the test harness's capture.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Captured, Reaper, WAIT};
use multiproc::process::{Builder, Output, OutputLine, Stream};
use multiproc::{Event, Pool};

/// Lines collected by a callback.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<OutputLine>>>);

impl Lines {
    fn output(&self) -> Output {
        let lines = Arc::clone(&self.0);
        Output::callback(move |line| lines.lock().unwrap().push(line))
    }

    fn take(&self) -> Vec<OutputLine> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

const LINES: usize = 6_000;

/// The `i`th line a chatty child writes: every 150th is 70 000 bytes long (more than a pipe
/// holds), the others a few dozen; the content names the writer and the line.
fn line(tag: &str, i: usize) -> String {
    let len = if i % 150 == 7 { 70_000 } else { 20 + i % 50 };
    let fill = char::from(b'a' + (i % 26) as u8);
    format!("{tag} {i} {}", fill.to_string().repeat(len))
}

/// Writes every line with `write(2)` of whole lines on a descriptor of its own for the pipe
/// (no buffering in between), then the unterminated `tail`.
fn write_lines(stream: &str, tag: &str, tail: &str) {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(format!(
            "/proc/self/fd/{}",
            if stream == "out" { 1 } else { 2 }
        ))
        .expect("open our own stdout");
    for i in 0..LINES {
        let mut l = line(tag, i);
        l.push('\n');
        out.write_all(l.as_bytes()).expect("write a line");
    }
    out.write_all(tail.as_bytes()).expect("write the tail");
}

/// A child that fills stdout and stderr, says so, and waits to be killed.
fn chatter((tag, done): (String, Event)) {
    write_lines("out", &tag, "stdout-tail-without-newline");
    write_lines("err", &tag, "stderr-tail");
    done.set();
    std::thread::sleep(Duration::from_secs(60));
}

/// Checks that `lines` are exactly what `chatter(tag)` wrote on `stream`, in order.
fn check_stream(lines: &[&OutputLine], tag: &str, tail: &str) {
    assert_eq!(lines.len(), LINES + 1, "line count for {tag}");
    for (i, l) in lines[..LINES].iter().enumerate() {
        assert!(l.is_complete());
        if l.text() != line(tag, i) {
            panic!(
                "line {i} of {tag} differs: {:?}... ({} bytes)",
                &l.text()[..l.text().len().min(40)],
                l.bytes().len()
            );
        }
    }
    assert_eq!(lines[LINES].text(), tail);
    assert!(!lines[LINES].is_complete(), "the tail had no newline");
}

fn of<'a>(lines: &'a [OutputLine], name: &str, stream: Stream) -> Vec<&'a OutputLine> {
    lines
        .iter()
        .filter(|l| l.name() == name && l.stream() == stream)
        .collect()
}

/// A child that prints `n` lines of its letter on stdout, each `len` bytes long.
fn letters((letter, n, len): (char, usize, usize)) {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/1")
        .unwrap();
    for _ in 0..n {
        let mut l = letter.to_string().repeat(len);
        l.push('\n');
        out.write_all(l.as_bytes()).unwrap();
    }
}

/// Starts two children that forward (`Output::Forward`) to this process's stdout, and joins
/// them: run as a child whose own stdout the test captures.
fn two_forwarders(_: ()) {
    let mut children: Vec<_> = [('x', "left"), ('y', "right")]
        .into_iter()
        .map(|(letter, name)| {
            Builder::new()
                .name(name)
                .output(Output::Forward)
                .target_with_args(letters, (letter, 200, 9_000))
        })
        .collect();
    for c in &mut children {
        c.start().unwrap();
    }
    for c in &mut children {
        assert_eq!(c.join_timeout(WAIT).unwrap(), Some(0));
    }
}

/// A pool task: prints `n` lines, then its worker is SIGKILLed.
fn print_then_die((tag, n): (String, usize)) -> u32 {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/1")
        .unwrap();
    for i in 0..n {
        let mut l = line(&tag, i);
        l.push('\n');
        out.write_all(l.as_bytes()).unwrap();
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn emit_events(_: ()) {
    tracing::info!(answer = 42, word = "hi", "hello from the child");
    tracing::debug!(target: "custom_target", "a debug event");
    tracing::trace!("too verbose to be sent");
    // Another thread's events are forwarded too when the subscriber is the global one.
    let _ = std::thread::spawn(|| tracing::warn!("from a thread")).join();
}

start_method_matrix! {
    #[test]
    fn a_killed_child_loses_no_line_and_splits_none() {
        let _r = Reaper::new();
        let lines = Lines::default();
        let done = Event::new().unwrap();
        let mut p = Builder::new()
            .name("chatty")
            .output(lines.output())
            .target_with_args(chatter, ("chatty".to_string(), done.clone()));
        p.start().unwrap();
        let pid = p.pid().unwrap();
        assert!(done.wait_timeout(WAIT), "the child did not finish writing");
        p.kill().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
        let got = lines.take();
        assert!(got.iter().all(|l| l.pid() == pid && l.name() == "chatty"));
        check_stream(&of(&got, "chatty", Stream::Stdout), "chatty", "stdout-tail-without-newline");
        check_stream(&of(&got, "chatty", Stream::Stderr), "chatty", "stderr-tail");
    }

    #[test]
    fn concurrent_children_keep_their_lines_whole_and_apart() {
        let _r = Reaper::new();
        let lines = Lines::default();
        let done: Vec<Event> = (0..2).map(|_| Event::new().unwrap()).collect();
        let mut ps: Vec<_> = ["one", "two"]
            .iter()
            .zip(&done)
            .map(|(name, ev)| {
                Builder::new()
                    .name(*name)
                    .output(lines.output())
                    .target_with_args(chatter, (name.to_string(), ev.clone()))
            })
            .collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        for (p, ev) in ps.iter_mut().zip(&done) {
            assert!(ev.wait_timeout(WAIT));
            p.kill().unwrap();
            assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
        }
        let got = lines.take();
        for name in ["one", "two"] {
            check_stream(&of(&got, name, Stream::Stdout), name, "stdout-tail-without-newline");
            check_stream(&of(&got, name, Stream::Stderr), name, "stderr-tail");
        }
    }

    #[test]
    fn forwarded_lines_carry_the_name_and_never_mix() {
        let _r = Reaper::new();
        let lines = Lines::default();
        let mut outer = Builder::new()
            .name("outer")
            .output(lines.output())
            .target_with_args(two_forwarders, ());
        outer.start().unwrap();
        assert_eq!(outer.join_timeout(WAIT).unwrap(), Some(0));
        let got = lines.take();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in &got {
            assert_eq!(l.name(), "outer");
            let text = l.text();
            let (prefix, body) = if let Some(b) = text.strip_prefix("[left] ") {
                ("left", b)
            } else if let Some(b) = text.strip_prefix("[right] ") {
                ("right", b)
            } else {
                panic!("line without a child's prefix: {:?}", &text[..text.len().min(40)]);
            };
            let letter = if prefix == "left" { 'x' } else { 'y' };
            assert_eq!(body.len(), 9_000, "a line of {prefix} was split");
            assert!(body.chars().all(|c| c == letter), "a line of {prefix} was mixed");
            *counts.entry(prefix.to_owned()).or_default() += 1;
        }
        assert_eq!(counts.get("left"), Some(&200));
        assert_eq!(counts.get("right"), Some(&200));
    }

    #[test]
    fn pool_worker_killed_after_printing_loses_no_line() {
        let _r = Reaper::new();
        let lines = Lines::default();
        let pool = Pool::builder().processes(2).output(lines.output()).build().unwrap();
        let pids = pool.worker_pids();
        let failed = pool.apply(print_then_die, ("dying".to_string(), 3_000));
        assert!(failed.is_err(), "the worker was killed: {failed:?}");
        pool.close();
        pool.join().unwrap();
        let got = lines.take();
        let dying: Vec<&OutputLine> = got.iter().filter(|l| l.text().starts_with("dying ")).collect();
        assert_eq!(dying.len(), 3_000);
        let worker = dying[0].name().to_owned();
        assert!(worker.starts_with("PoolWorker-"), "{worker}");
        assert!(pids.contains(&dying[0].pid()));
        for (i, l) in dying.iter().enumerate() {
            assert_eq!(l.name(), worker);
            assert!(l.is_complete());
            assert_eq!(l.text(), line("dying", i), "line {i}");
        }
    }

    #[test]
    fn tracing_events_reach_the_parent_with_name_and_pid() {
        let _r = Reaper::new();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // Global: the events are emitted again on the forwarding thread.
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let mut p = Builder::new()
            .name("tracer")
            .forward_tracing(true)
            .target_with_args(emit_events, ());
        p.start().unwrap();
        let pid = p.pid().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        let log = captured.text();
        let line = log
            .lines()
            .find(|l| l.contains("hello from the child"))
            .unwrap_or_else(|| panic!("event missing:\n{log}"));
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("process.name=\"tracer\""), "{line}");
        assert!(line.contains(&format!("process.pid={pid}")), "{line}");
        assert!(line.contains("answer=42"), "{line}");
        assert!(line.contains("word=\"hi\""), "{line}");
        assert!(line.contains("child.target=output"), "{line}");
        let debug = log
            .lines()
            .find(|l| l.contains("a debug event"))
            .unwrap_or_else(|| panic!("debug event missing:\n{log}"));
        assert!(debug.contains("DEBUG") && debug.contains("child.target=custom_target"), "{debug}");
        assert!(!log.contains("too verbose"), "{log}");
        if multiproc::get_start_method() != multiproc::StartMethod::Fork {
            // A forked child keeps the parent's (copied) global subscriber for its other
            // threads; the others install the forwarding one globally.
            assert!(log.contains("from a thread"), "{log}");
        }
    }
}
