//! Connections as handles: `try_clone`, a Connection sent over a Queue or another
//! Connection, and (below) descriptors passed over a connection. Mirrors CPython's
//! `_TestPicklingConnections` and `_TestConnection.test_fd_transfer` scenarios where they
//! apply.

mod common;

use std::collections::BTreeMap;

use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use multiproc::connection::{RecvError, SendError, socket_pipe};
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

/// A file with `bytes` in it, its name already removed, its offset at the start.
fn anonymous_file(bytes: &[u8]) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "multiproc-test-handles-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(bytes).unwrap();
    f.rewind().unwrap();
    f
}

/// Reads the file whose descriptor arrives, sends back its text; then writes to the socket
/// whose descriptor arrives next; then reports how a non-handle message is refused.
fn handle_child(conn: Connection) {
    let mut file = std::fs::File::from(conn.recv_handle().unwrap());
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    conn.send(&text).unwrap();

    let mut stream = UnixStream::from(conn.recv_handle().unwrap());
    stream.write_all(b"written by the child").unwrap();
    drop(stream);

    let refused = conn.recv_handle().unwrap_err();
    conn.send(&refused.to_string()).unwrap();
    // The stream is still in step after the refusal.
    let mut file = std::fs::File::from(conn.recv_handle().unwrap());
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    conn.send(&text).unwrap();
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
            matches!(err, multiproc::queue::GetTimeoutError::Decode(_)),
            "{err:?}"
        );
        assert!(message.contains("must still be running"), "{message}");
    }

    /// Python's `send_handle`/`recv_handle` (`test_fd_transfer`): a child receives a file's
    /// descriptor and reads it, then a socket's and writes to it; an ordinary message where
    /// a handle is expected is a clear error, and the connection stays in step.
    #[test]
    fn a_child_receives_a_file_and_a_socket_over_send_handle() {
        let _r = common::Reaper::new();
        let (mine, theirs) = socket_pipe().unwrap();
        let mut p = Process::with_args(handle_child, theirs);
        p.start().unwrap();

        let file = anonymous_file(b"a file's contents");
        mine.send_handle(&file).unwrap();
        assert_eq!(mine.recv_timeout::<String>(WAIT).unwrap(), "a file's contents");

        let (mut near, far) = UnixStream::pair().unwrap();
        mine.send_handle(&far).unwrap();
        drop(far);
        near.set_read_timeout(Some(WAIT)).unwrap();
        let mut text = String::new();
        near.read_to_string(&mut text).unwrap();
        assert_eq!(text, "written by the child");

        mine.send(&"not a handle").unwrap();
        let refused = mine.recv_timeout::<String>(WAIT).unwrap();
        assert!(refused.contains("expected a descriptor sent with send_handle"), "{refused}");

        mine.send_handle(anonymous_file(b"second")).unwrap();
        assert_eq!(mine.recv_timeout::<String>(WAIT).unwrap(), "second");
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
}

/// Pipes and TCP sockets cannot carry descriptors: both ends say so, and nothing is sent
/// or consumed.
#[test]
fn handles_over_a_pipe_or_tcp_are_refused_clearly() {
    let (a, b) = pipe(true).unwrap();
    let file = anonymous_file(b"x");
    let err = a.send_handle(&file).unwrap_err();
    assert!(matches!(err, SendError::HandlesUnsupported), "{err:?}");
    assert!(err.to_string().contains("needs a Unix socket"), "{err}");
    let err = b.recv_handle().unwrap_err();
    assert!(matches!(err, RecvError::HandlesUnsupported), "{err:?}");
    // Nothing was sent or consumed.
    assert!(!b.poll(Some(std::time::Duration::ZERO)).unwrap());
    a.send(&1u8).unwrap();
    assert_eq!(b.recv_timeout::<u8>(WAIT).unwrap(), 1);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client = Connection::from_fd(OwnedFd::from(client)).unwrap();
    let server = Connection::from_fd(OwnedFd::from(server)).unwrap();
    assert!(matches!(
        client.send_handle(&file),
        Err(SendError::HandlesUnsupported)
    ));
    assert!(matches!(
        server.recv_handle(),
        Err(RecvError::HandlesUnsupported)
    ));
    client.send(&"tcp").unwrap();
    assert_eq!(server.recv_timeout::<String>(WAIT).unwrap(), "tcp");
}

/// Garbage, or a handle message without its descriptor, is an error, never a panic. (A
/// descriptor attached to an ordinary message: the unit test in `src/connection/mod.rs`.)
#[test]
fn garbage_where_a_handle_is_expected_is_an_error() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let conn = Connection::try_from(OwnedFd::from(ours)).unwrap();
    // The handle message's payload, but no descriptor with it (written with a plain write).
    let mut frame = vec![0u8; 64];
    let payload = b"#MULTIPROC-HANDLE#";
    frame[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    frame[4..4 + payload.len()].copy_from_slice(payload);
    theirs.write_all(&frame).unwrap();
    let err = conn.recv_handle().unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("without its descriptor"), "{err}");

    // A real handle, then an ordinary message: the first is taken, the second refused, and
    // no descriptor is left open.
    let theirs_conn = Connection::from_fd(OwnedFd::from(theirs)).unwrap();
    let before = common::open_fds().len();
    let file = anonymous_file(b"x");
    theirs_conn.send_handle(&file).unwrap();
    drop(file);
    theirs_conn.send(&"not a handle").unwrap();
    drop(conn.recv_handle().unwrap());
    let err = conn.recv_handle().unwrap_err();
    assert!(err.to_string().contains("ordinary"), "{err}");
    assert_eq!(common::open_fds().len(), before, "a descriptor leaked");

    // Random bytes announcing a huge frame: an error, not a panic or an allocation.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let conn = Connection::from_fd(OwnedFd::from(ours)).unwrap();
    theirs.write_all(&[0xff; 64]).unwrap();
    assert!(matches!(conn.recv_handle(), Err(RecvError::Decode(_))));
    drop(theirs);
    assert!(conn.recv_handle().is_err());
}

/// `from_fd` takes the directions from the descriptor's access mode: a pipe's read end only
/// receives, its write end only sends.
#[test]
fn from_fd_of_pipe_ends_follows_their_direction() {
    let (r, w) = std::io::pipe().unwrap();
    let r = Connection::from_fd(OwnedFd::from(r)).unwrap();
    let w = Connection::from_fd(OwnedFd::from(w)).unwrap();
    assert!(r.readable() && !r.writable());
    assert!(w.writable() && !w.readable());
    w.send(&vec![1u32, 2, 3]).unwrap();
    assert_eq!(r.recv_timeout::<Vec<u32>>(WAIT).unwrap(), [1, 2, 3]);
    drop(w);
    assert!(matches!(
        r.recv_timeout::<u8>(WAIT),
        Err(RecvError::Disconnected)
    ));
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

/// A forked child sends a fresh connection back (its own sharer starts in the child), then
/// waits for the parent to have taken it.
fn send_a_connection_back(back: Connection) {
    let (a, _b) = pipe(true).unwrap();
    back.send(&a).unwrap();
    let _taken: bool = back.recv().unwrap();
}

/// The hazard exists only under fork: a thread of the parent shares connections in a loop
/// (taking the sharer's lock again and again) while the main thread forks children that each
/// share one. A child forked while the other thread held the lock would hang at its first
/// share if the fork did not hold the lock itself.
#[test]
fn a_forked_child_shares_connections_while_a_parent_thread_does() {
    let _r = common::Reaper::new();
    let fork = multiproc::get_context(multiproc::StartMethod::Fork);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sharing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let loopback: Queue<Connection> = Queue::new().unwrap();
            let mut shared = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, _b) = pipe(true).unwrap();
                loopback.put(a).unwrap();
                let _a = loopback.get_timeout(WAIT).unwrap();
                shared += 1;
            }
            shared
        })
    };
    for round in 0..300 {
        let (here, there) = pipe(true).unwrap();
        let mut child = fork.spawn_with_args(send_a_connection_back, there).unwrap();
        assert!(
            here.poll(Some(WAIT)).unwrap(),
            "round {round}: the forked child never sent its connection (hung sharing it?)"
        );
        let got: Connection = here.recv().unwrap();
        here.send(&true).unwrap();
        drop(got);
        child.join_timeout(WAIT).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(sharing.join().unwrap() > 0);
}
