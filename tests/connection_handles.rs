//! Connections as handles: `try_clone`, a Connection sent over a Queue or another
//! Connection, and (below) descriptors passed over a connection. Mirrors CPython's
//! `_TestPicklingConnections` and `_TestConnection.test_fd_transfer` scenarios where they
//! apply.

mod common;

use std::collections::BTreeMap;

use multiproc::connection::RecvError;
use multiproc::{Connection, Process, Queue, pipe};

use common::WAIT;

/// Messages each sender (thread) sends.
const EACH: u32 = 50;

/// A message: who sent it, its number, and a body whose bytes derive from both, so that a
/// message spliced from two would not check out. The frame stays under `PIPE_BUF`.
type Message = (u32, u32, Vec<u8>);

fn message(who: u32, n: u32) -> Message {
    let body = (0..1000u32).map(|i| (i ^ who ^ n) as u8).collect();
    (who, n, body)
}

/// Sends `EACH` messages as `who` from this thread and as `who + 1` from another, on a
/// clone.
fn send_from_two_threads(conn: &Connection, who: u32) {
    let clone = conn.try_clone().unwrap();
    let other = std::thread::spawn(move || {
        for n in 0..EACH {
            clone.send(&message(who + 1, n)).unwrap();
        }
    });
    for n in 0..EACH {
        conn.send(&message(who, n)).unwrap();
    }
    other.join().unwrap();
}

/// Child 1: takes the shared connection from a queue, sends from two threads, reports on
/// `done` and waits there to be told to stop.
fn child_via_queue((handles, done): (Queue<Connection>, Connection)) {
    let shared = handles.get_timeout(WAIT).unwrap();
    send_from_two_threads(&shared, 10);
    done.send(&true).unwrap();
    let _stop: bool = done.recv().unwrap();
}

/// Child 2: takes the shared connection over another connection.
fn child_via_connection(carrier: Connection) {
    let shared: Connection = carrier.recv().unwrap();
    send_from_two_threads(&shared, 20);
    carrier.send(&true).unwrap();
    let _stop: bool = carrier.recv().unwrap();
}

fn put_and_exit(handles: Queue<Connection>) {
    let (a, _b) = pipe(true).unwrap();
    handles.put(a).unwrap();
}

fn got_it(conn: Connection) {
    let c: Connection = conn.recv().unwrap();
    c.send(&"through").unwrap();
}

start_method_matrix! {
    /// One connection end shared by a parent and two children, each sending from two threads
    /// (the second on a `try_clone`): one child got it over a Queue, the other over another
    /// Connection. Every message arrives whole, once.
    #[test]
    fn one_connection_shared_by_a_parent_two_children_and_threads() {
        let _r = common::Reaper::new();
        let (hub, shared) = pipe(true).unwrap();

        let handles: Queue<Connection> = Queue::new().unwrap();
        let (done1, done1_child) = pipe(true).unwrap();
        let mut p1 = Process::with_args(child_via_queue, (handles.clone(), done1_child));
        p1.start().unwrap();
        let (carrier, carrier_child) = pipe(true).unwrap();
        let mut p2 = Process::with_args(child_via_connection, carrier_child);
        p2.start().unwrap();

        // Read while everyone sends: the pipe holds less than all the messages.
        let reader = std::thread::spawn(move || {
            let mut seen: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for _ in 0..6 * EACH {
                let (who, n, body): Message = hub.recv_timeout(WAIT).unwrap();
                assert_eq!(message(who, n).2, body, "message {n} from {who} is corrupt");
                seen.entry(who).or_default().push(n);
            }
            (hub, seen)
        });
        handles.put(shared.try_clone().unwrap()).unwrap();
        carrier.send(&shared).unwrap();
        send_from_two_threads(&shared, 0);
        let (hub, seen) = reader.join().unwrap();
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [0, 1, 10, 11, 20, 21]);
        for (who, ns) in &seen {
            // Each sender's own messages arrive in its order.
            assert_eq!(ns, &(0..EACH).collect::<Vec<_>>(), "from {who}");
        }
        assert!(done1.recv_timeout::<bool>(WAIT).unwrap());
        assert!(carrier.recv_timeout::<bool>(WAIT).unwrap());
        done1.send(&true).unwrap();
        carrier.send(&true).unwrap();
        assert_eq!(p1.join_timeout(WAIT).unwrap(), Some(0));
        assert_eq!(p2.join_timeout(WAIT).unwrap(), Some(0));

        // Every copy of the shared end is closed once ours is: the hub sees end of file.
        drop(shared);
        assert!(matches!(hub.recv_timeout::<Message>(WAIT), Err(RecvError::Disconnected)));
    }

    /// A connection sent over a connection works both ways in the child, and the receive
    /// direction too (the child reads what the parent wrote to the other end).
    #[test]
    fn a_connection_received_over_a_connection_reads_and_writes() {
        let _r = common::Reaper::new();
        let (mine, theirs) = pipe(true).unwrap();
        let (carrier, carrier_child) = pipe(true).unwrap();
        let mut p = Process::with_args(got_it, carrier_child);
        p.start().unwrap();
        carrier.send(&theirs).unwrap();
        drop(theirs);
        assert_eq!(mine.recv_timeout::<String>(WAIT).unwrap(), "through");
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        assert!(matches!(mine.recv_timeout::<String>(WAIT), Err(RecvError::Disconnected)));
    }

    /// The sender must still run when a handle is received (as in Python): if it has exited,
    /// the receive is a decode error that says so, not a hang or a panic.
    #[test]
    fn a_handle_whose_sender_exited_is_a_clear_error() {
        let _r = common::Reaper::new();
        let handles: Queue<Connection> = Queue::new().unwrap();
        let mut p = Process::with_args(put_and_exit, handles.clone());
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        let err = handles.get_timeout(WAIT).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, multiproc::queue::GetError::Decode(_)),
            "{err:?}"
        );
        assert!(message.contains("must still be running"), "{message}");
    }
}

/// Clones in one process: sends from clones take turns, closing one leaves the other open,
/// and the peer sees end of file only when every copy is gone.
#[test]
fn try_clone_in_one_process() {
    let (a, b) = pipe(true).unwrap();
    let mut a2 = a.try_clone().unwrap();
    let big = vec![7u8; 200_000];
    let threads: Vec<_> = [a.try_clone().unwrap(), a2.try_clone().unwrap()]
        .into_iter()
        .map(|c| {
            let big = big.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    c.send(&big).unwrap();
                }
            })
        })
        .collect();
    // Large messages from clones in one process never interleave (they share the send lock).
    let reader = std::thread::spawn(move || {
        for _ in 0..10 {
            assert_eq!(b.recv_timeout::<Vec<u8>>(WAIT).unwrap(), vec![7u8; 200_000]);
        }
        b
    });
    for t in threads {
        t.join().unwrap();
    }
    let b = reader.join().unwrap();
    a2.close();
    assert!(a2.is_closed() && !a.is_closed());
    a.send(&1u8).unwrap();
    assert_eq!(b.recv_timeout::<u8>(WAIT).unwrap(), 1);
    // A clone of the receiving side reads on from where the other stopped.
    b.send(&"x").unwrap();
    b.send(&"y").unwrap();
    let a3 = a.try_clone().unwrap();
    assert_eq!(a.recv_timeout::<String>(WAIT).unwrap(), "x");
    assert_eq!(a3.recv_timeout::<String>(WAIT).unwrap(), "y");
    drop(a);
    assert!(!b.poll(Some(std::time::Duration::ZERO)).unwrap());
    drop(a3);
    assert!(matches!(
        b.recv_timeout::<u8>(WAIT),
        Err(RecvError::Disconnected)
    ));
}

/// A connection sent to this same process over a queue (Python's pickling round trip).
#[test]
fn a_connection_sent_to_this_process_over_a_queue() {
    let (a, b) = pipe(true).unwrap();
    let q: Queue<Connection> = Queue::new().unwrap();
    q.put(b).unwrap();
    let b = q.get_timeout(WAIT).unwrap();
    a.send(&5u8).unwrap();
    assert_eq!(b.recv_timeout::<u8>(WAIT).unwrap(), 5);
    // The ticket works once: the bytes of the message cannot be replayed.
    let (c, d) = pipe(true).unwrap();
    let (carrier, carrier_end) = pipe(true).unwrap();
    carrier.send(&d).unwrap();
    let raw = carrier_end.recv_bytes().unwrap();
    carrier.send_bytes(&raw).unwrap();
    carrier.send_bytes(&raw).unwrap();
    let d2: Connection = carrier_end.recv().unwrap();
    let again = carrier_end.recv::<Connection>().unwrap_err();
    assert!(again.to_string().contains("already received"), "{again}");
    c.send(&6u8).unwrap();
    assert_eq!(d2.recv_timeout::<u8>(WAIT).unwrap(), 6);
}
