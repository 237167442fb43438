//! Lifecycle events reach `tracing`, the counterpart of Python's `log_to_stderr()`.

mod common;

use common::{Captured, Reaper, WAIT};
use multiproc::Process;

#[test]
fn start_exit_and_signal_are_logged() {
    let _r = Reaper::new();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut ok = Process::new(|| std::process::exit(4));
        ok.start().unwrap();
        assert_eq!(ok.join_timeout(WAIT).unwrap(), Some(4));
        let mut slow = Process::new(|| std::thread::sleep(std::time::Duration::from_secs(30)));
        slow.start().unwrap();
        slow.terminate().unwrap();
        assert_eq!(slow.join_timeout(WAIT).unwrap(), Some(-15));
    });
    let log = captured.text();
    assert_eq!(log.matches("process started").count(), 2, "{log}");
    assert!(log.contains("exitcode=4"), "{log}");
    assert!(log.contains("signal=Term"), "{log}");
    assert!(log.contains("exitcode=-15"), "{log}");
}
