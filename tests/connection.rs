//! Pipe, Connection, wait(), Listener and client. Mirrors CPython's `_TestConnection`,
//! `_TestListenerClient`, `_TestPoll` and `TestWait` scenarios where they apply.

mod common;

use std::time::{Duration, Instant};

use multiproc::{
    Process, connection::Address, connection::ConnectError, connection::Listener,
    connection::RecvError, connection::SendError, connection::Waitable,
    connection::client_with_authkey, connection::wait, pipe, process::AuthKey,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use common::WAIT;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Tuple(i8, u64, f64),
    Struct {
        name: String,
        tags: Vec<String>,
        inner: Option<Box<Shape>>,
    },
}

#[test]
fn duplex_round_trip_with_child() {
    let _r = common::Reaper::new();
    let (parent, child) = pipe(true).unwrap();
    // Under fork the child inherits the parent's end too, so it cannot wait for end of file
    // from the parent (as in Python): an empty message says stop.
    let mut p = Process::new(move || {
        while let Ok(v) = child.recv::<Option<Vec<u32>>>() {
            let Some(v) = v else { break };
            child.send(&v.iter().sum::<u32>()).unwrap();
        }
    });
    p.start().unwrap();
    for n in 0..50u32 {
        parent.send(&Some((0..n).collect::<Vec<_>>())).unwrap();
        assert_eq!(
            parent.recv_timeout::<u32>(WAIT).unwrap(),
            (0..n).sum::<u32>()
        );
    }
    parent.send(&None::<Vec<u32>>).unwrap();
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
}

#[test]
fn simplex_ends_refuse_the_wrong_direction() {
    let (r, w) = pipe(false).unwrap();
    assert!(r.readable() && !r.writable());
    assert!(w.writable() && !w.readable());
    assert!(matches!(r.send(&1u8), Err(SendError::Closed)));
    assert!(matches!(w.recv::<u8>(), Err(RecvError::Closed)));
    w.send(&7u8).unwrap();
    assert_eq!(r.recv::<u8>().unwrap(), 7);
}

#[test]
fn many_small_messages_arrive_in_order() {
    let _r = common::Reaper::new();
    let (rx, tx) = pipe(false).unwrap();
    let mut p = Process::new(move || {
        for i in 0..20_000u64 {
            tx.send(&i).unwrap();
        }
    });
    p.start().unwrap();
    for i in 0..20_000u64 {
        assert_eq!(rx.recv_timeout::<u64>(WAIT).unwrap(), i);
    }
    assert!(matches!(
        rx.recv_timeout::<u64>(WAIT),
        Err(RecvError::Disconnected)
    ));
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
}

#[test]
fn large_message_survives() {
    let _r = common::Reaper::new();
    let (a, b) = pipe(true).unwrap();
    let mut p = Process::new(move || {
        let big = b.recv_bytes().unwrap();
        b.send_bytes(&big).unwrap();
    });
    p.start().unwrap();
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    a.send_bytes(&data).unwrap();
    assert_eq!(a.recv_bytes().unwrap(), data);
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
}

#[test]
fn recv_after_peer_exit_is_disconnected_not_a_hang() {
    let _r = common::Reaper::new();
    let (a, b) = pipe(true).unwrap();
    let mut p = Process::new(move || drop(b));
    p.start().unwrap();
    let start = Instant::now();
    assert!(matches!(a.recv::<u8>(), Err(RecvError::Disconnected)));
    assert!(start.elapsed() < WAIT);
    assert!(matches!(a.send(&1u8), Err(SendError::Disconnected)));
    p.join_timeout(WAIT).unwrap();
}

#[test]
fn peer_killed_mid_message_is_truncated_never_half_delivered() {
    let _r = common::Reaper::new();
    let (rx, tx) = pipe(false).unwrap();
    let mut p = Process::new(move || {
        // A header announcing 1000 bytes, then only 10 of them, then death.
        let fd = tx.fd().unwrap();
        let mut frame = 1000u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&[1u8; 10]);
        let mut file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        std::io::Write::write_all(&mut file, &frame).unwrap();
        std::thread::sleep(Duration::from_secs(60));
    });
    p.start().unwrap();
    // Nothing whole arrives: the receive times out and keeps the partial bytes.
    assert!(matches!(
        rx.recv_timeout::<Vec<u8>>(Duration::from_millis(200)),
        Err(RecvError::Timeout)
    ));
    p.kill().unwrap();
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(-9));
    match rx.recv_bytes() {
        Err(RecvError::Truncated { received, expected }) => {
            assert_eq!((received, expected), (14, 1004));
            // (14 bytes arrived: the header and 10 payload bytes.)
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(matches!(rx.recv_bytes(), Err(RecvError::Disconnected)));
}

#[test]
fn oversized_header_is_an_error_not_an_allocation() {
    let (rx, tx) = pipe(false).unwrap();
    let fd = tx.fd().unwrap();
    let mut file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    std::io::Write::write_all(&mut file, &u32::MAX.to_le_bytes()).unwrap();
    let err = rx.recv_bytes().unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");
    // The stream cannot be resynchronised, and says so.
    assert!(matches!(rx.recv_bytes(), Err(RecvError::Decode(_))));
}

#[test]
fn wrong_type_is_a_decode_error_and_the_stream_stays_in_step() {
    let (a, b) = pipe(true).unwrap();
    a.send(&"not a number at all").unwrap();
    a.send(&5u16).unwrap();
    assert!(matches!(
        b.recv::<(u64, u64, u64, u64)>(),
        Err(RecvError::Decode(_))
    ));
    assert_eq!(b.recv::<u16>().unwrap(), 5);
}

#[test]
fn recv_bytes_into_reports_short_buffers() {
    let (a, b) = pipe(true).unwrap();
    a.send_bytes(b"hello world").unwrap();
    let mut small = [0u8; 4];
    match b.recv_bytes_into(&mut small) {
        Err(RecvError::BufferTooShort { message, capacity }) => {
            assert_eq!((message.as_slice(), capacity), (&b"hello world"[..], 4));
        }
        other => panic!("{other:?}"),
    }
    a.send_bytes(b"hi").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"hi");
}

#[test]
fn recv_bytes_max_refuses_long_messages() {
    let (a, b) = pipe(true).unwrap();
    a.send_bytes(&[0u8; 100]).unwrap();
    assert!(matches!(b.recv_bytes_max(10), Err(RecvError::Decode(_))));
}

#[test]
fn poll_and_close() {
    let (mut a, b) = pipe(true).unwrap();
    assert!(!a.poll(Some(Duration::from_millis(20))).unwrap());
    b.send(&1u8).unwrap();
    assert!(a.poll(None).unwrap());
    a.close();
    assert!(a.is_closed());
    assert!(matches!(a.recv::<u8>(), Err(RecvError::Closed)));
    assert!(matches!(a.send(&1u8), Err(SendError::Closed)));
    assert!(matches!(b.send(&1u8), Err(SendError::Disconnected)));
}

#[test]
fn connections_are_usable_from_two_threads() {
    let (a, b) = pipe(true).unwrap();
    let a = std::sync::Arc::new(a);
    let reader = {
        let a = a.clone();
        std::thread::spawn(move || {
            (0..1000)
                .map(|_| a.recv_timeout::<u32>(WAIT).unwrap())
                .sum::<u32>()
        })
    };
    for i in 0..1000u32 {
        b.send(&i).unwrap();
        a.send(&i).unwrap();
    }
    for i in 0..1000u32 {
        assert_eq!(b.recv_timeout::<u32>(WAIT).unwrap(), i);
    }
    assert_eq!(reader.join().unwrap(), (0..1000).sum::<u32>());
}

#[test]
fn wait_reports_ready_connections_and_sentinels() {
    let _r = common::Reaper::new();
    let (a1, b1) = pipe(true).unwrap();
    let (a2, b2) = pipe(true).unwrap();
    let mut p = Process::new(move || {
        b2.send(&2u8).unwrap();
        let _ = b1.recv_timeout::<u8>(Duration::from_secs(10));
    });
    p.start().unwrap();
    let ready = wait(&[&a1 as &dyn Waitable, &a2], Some(WAIT)).unwrap();
    assert_eq!(ready, vec![1]);
    assert_eq!(a2.recv::<u8>().unwrap(), 2);
    assert!(
        wait(
            &[&a1 as &dyn Waitable, &a2],
            Some(Duration::from_millis(20))
        )
        .unwrap()
        .is_empty()
    );
    a1.send(&0u8).unwrap();
    let ready = wait(&[&p as &dyn Waitable], Some(WAIT)).unwrap();
    assert_eq!(ready, vec![0]);
    p.join_timeout(WAIT).unwrap();
}

#[test]
fn a_receive_takes_exactly_one_message_so_readers_can_share_an_end() {
    let _r = common::Reaper::new();
    let (rx, tx) = pipe(false).unwrap();
    let (done_rx, done_tx) = pipe(false).unwrap();
    let done_tx = std::sync::Arc::new(done_tx);
    for i in 0..4u32 {
        tx.send(&i).unwrap();
    }
    let shared = std::sync::Arc::new(rx);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let rx = shared.clone();
        let done = std::sync::Arc::clone(&done_tx);
        readers.push(Process::new(move || {
            let v: u32 = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            done.send(&v).unwrap();
        }));
    }
    for p in &mut readers {
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
    let mut got = vec![
        done_rx.recv_timeout::<u32>(WAIT).unwrap(),
        done_rx.recv_timeout::<u32>(WAIT).unwrap(),
    ];
    got.sort_unstable();
    assert_eq!(got, vec![0, 1]);
    // The rest is still in the pipe, for this process.
    assert_eq!(shared.recv_timeout::<u32>(WAIT).unwrap(), 2);
    assert_eq!(
        wait(&[&*shared as &dyn Waitable], Some(Duration::ZERO)).unwrap(),
        vec![0]
    );
    assert_eq!(shared.recv_timeout::<u32>(WAIT).unwrap(), 3);
}

fn unix_address(tag: &str) -> Address {
    let path =
        std::env::temp_dir().join(format!("multiproc-test-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Address::Unix(path)
}

fn listener_round_trip(address: Address) {
    let _r = common::Reaper::new();
    let key = AuthKey::from(b"shared secret".to_vec());
    let listener = Listener::bind_with_authkey(address, Some(key.clone())).unwrap();
    let address = listener.address().clone();
    let handle = multiproc::spawn(move || {
        let conn = client_with_authkey(&address, Some(&key)).unwrap();
        let n: u64 = conn.recv().unwrap();
        conn.send(&(n + 1)).unwrap();
    })
    .unwrap();
    let conn = listener.accept().unwrap();
    conn.send(&41u64).unwrap();
    assert_eq!(conn.recv_timeout::<u64>(WAIT).unwrap(), 42);
    handle.join().unwrap();
}

#[test]
fn listener_client_over_unix_socket() {
    let address = unix_address("ok");
    listener_round_trip(address.clone());
    let Address::Unix(path) = address else {
        unreachable!()
    };
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
}

#[test]
fn listener_client_over_tcp() {
    listener_round_trip(Address::Tcp("127.0.0.1:0".parse().unwrap()));
}

#[test]
fn default_authkey_is_inherited_by_children() {
    let _r = common::Reaper::new();
    let listener = Listener::bind(unix_address("default")).unwrap();
    let address = listener.address().clone();
    let handle = multiproc::spawn(move || {
        multiproc::connection::client(&address)
            .map(|c| c.send(&"ok").is_ok())
            .unwrap_or(false)
    })
    .unwrap();
    let conn = listener.accept().unwrap();
    assert_eq!(conn.recv::<String>().unwrap(), "ok");
    assert!(handle.join().unwrap());
}

#[test]
fn wrong_key_is_refused_both_ways() {
    let _r = common::Reaper::new();
    let listener = Listener::bind_with_authkey(
        unix_address("wrong"),
        Some(AuthKey::from(b"right".to_vec())),
    )
    .unwrap();
    let address = listener.address().clone();
    let handle = multiproc::spawn(move || {
        match client_with_authkey(&address, Some(&AuthKey::from(b"wrong".to_vec()))) {
            Err(ConnectError::Refused) => "refused".to_string(),
            Err(e) => format!("other error: {e}"),
            Ok(_) => "accepted".to_string(),
        }
    })
    .unwrap();
    let err = listener.accept().unwrap_err();
    assert!(matches!(err, ConnectError::Refused), "{err:?}");
    assert!(err.to_string().contains("authkey"), "{err}");
    assert_eq!(handle.join().unwrap(), "refused");
}

#[test]
fn a_silent_or_garbage_peer_cannot_wedge_accept() {
    let _r = common::Reaper::new();
    let listener =
        Listener::bind_with_authkey(unix_address("garbage"), Some(AuthKey::from(b"k".to_vec())))
            .unwrap();
    let Address::Unix(path) = listener.address().clone() else {
        unreachable!()
    };
    let mut p = Process::new(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut challenge = [0u8; 4 + 11 + 8 + 32];
        s.read_exact(&mut challenge).unwrap();
        // A header claiming a gigabyte.
        s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(30));
    });
    p.start().unwrap();
    let start = Instant::now();
    assert!(matches!(listener.accept(), Err(ConnectError::Protocol(_))));
    assert!(start.elapsed() < WAIT);
    p.kill().unwrap();
    p.join_timeout(WAIT).unwrap();
}

/// A plain socket connected to a listener that speaks no protocol unless told to.
enum RawPeer {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl RawPeer {
    fn connect(address: &Address) -> RawPeer {
        match address {
            Address::Unix(path) => {
                RawPeer::Unix(std::os::unix::net::UnixStream::connect(path).unwrap())
            }
            Address::Tcp(addr) => RawPeer::Tcp(std::net::TcpStream::connect(addr).unwrap()),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) {
        use std::io::Write;
        match self {
            RawPeer::Unix(s) => s.write_all(bytes).unwrap(),
            RawPeer::Tcp(s) => s.write_all(bytes).unwrap(),
        }
    }

    /// Everything the listener sent until it closed, or `None` if it did not close in time.
    fn read_until_closed(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut got = Vec::new();
        let result = match self {
            RawPeer::Unix(s) => {
                s.set_read_timeout(Some(timeout)).unwrap();
                s.read_to_end(&mut got)
            }
            RawPeer::Tcp(s) => {
                s.set_read_timeout(Some(timeout)).unwrap();
                s.read_to_end(&mut got)
            }
        };
        result.ok().map(|_| got)
    }
}

/// Fifty peers that connect and never speak, and a few that send garbage, all ahead of a
/// good client in the listener's queue: the good client is accepted at once, and the silent
/// ones are dropped (closed, not leaked) when their own handshake timeout passes.
fn silent_and_garbage_peers_do_not_hold_up_a_good_client(address: Address) {
    const SILENT: usize = 50;
    const GARBAGE: usize = 3;
    let key = AuthKey::from(b"k".to_vec());
    let listener = Listener::bind_with_authkey(address, Some(key.clone())).unwrap();
    let address = listener.address().clone();
    let fds_before = common::open_fds().len();

    let connected = Instant::now();
    let mut silent: Vec<RawPeer> = (0..SILENT).map(|_| RawPeer::connect(&address)).collect();
    let mut garbage: Vec<RawPeer> = (0..GARBAGE).map(|_| RawPeer::connect(&address)).collect();
    // A header claiming a gigabyte, then bytes that are no message at all.
    for g in &mut garbage {
        g.write_all(&(1u32 << 30).to_le_bytes());
        g.write_all(&[0xff; 100]);
    }

    let started = Instant::now();
    let good = std::thread::spawn(move || {
        let conn = client_with_authkey(&address, Some(&key))?;
        conn.send(&"hello").unwrap();
        Ok::<_, ConnectError>(conn)
    });
    let mut protocol_errors = 0;
    let conn = loop {
        match listener.accept() {
            Ok(conn) => break conn,
            Err(ConnectError::Protocol(_)) if protocol_errors < GARBAGE => protocol_errors += 1,
            Err(e) => panic!("accept failed while a good client waited: {e:?}"),
        }
    };
    let waited = started.elapsed();
    assert_eq!(conn.recv_timeout::<String>(WAIT).unwrap(), "hello");
    assert!(
        waited < Duration::from_secs(2),
        "the good client waited {waited:?} behind silent peers"
    );
    let client_end = good.join().unwrap().expect("the good client is accepted");

    // The rest: the garbage peers' errors, then one timeout per silent peer, no earlier than
    // its own handshake timeout.
    let mut timeouts = 0;
    while protocol_errors < GARBAGE || timeouts < SILENT {
        match listener.accept() {
            Err(ConnectError::Protocol(_)) if protocol_errors < GARBAGE => protocol_errors += 1,
            Err(ConnectError::Timeout) => {
                assert!(
                    connected.elapsed() >= multiproc::connection::HANDSHAKE_TIMEOUT,
                    "a silent peer was dropped before its timeout"
                );
                timeouts += 1;
            }
            other => panic!("unexpected accept result: {other:?}"),
        }
        assert!(
            connected.elapsed() < multiproc::connection::HANDSHAKE_TIMEOUT + WAIT,
            "silent peers were not dropped in time"
        );
    }

    // Each silent peer got the challenge, then the listener closed its socket.
    for peer in &mut silent {
        let sent = peer
            .read_until_closed(WAIT)
            .expect("the listener closes a silent peer's socket");
        assert!(sent[4..].starts_with(b"#CHALLENGE#"), "{sent:?}");
    }
    drop((conn, client_end, silent, garbage));
    assert_eq!(
        common::open_fds().len(),
        fds_before,
        "the listener leaked descriptors of dropped peers"
    );
}

#[test]
fn silent_peers_do_not_hold_up_a_good_client_over_unix_socket() {
    silent_and_garbage_peers_do_not_hold_up_a_good_client(unix_address("silent"));
}

#[test]
fn silent_peers_do_not_hold_up_a_good_client_over_tcp() {
    silent_and_garbage_peers_do_not_hold_up_a_good_client(Address::Tcp(
        "127.0.0.1:0".parse().unwrap(),
    ));
}

/// A client without a key, against a listener with one, is told so by its first receive,
/// whichever receive it uses, also when it sent first; the listener refuses it at once.
#[test]
fn a_keyless_client_learns_at_its_first_receive_that_the_listener_wants_a_key() {
    const KINDS: [&str; 6] = [
        "recv",
        "recv_timeout",
        "recv_bytes",
        "recv_bytes_max",
        "recv_bytes_into",
        "send, then recv",
    ];
    let listener =
        Listener::bind_with_authkey(unix_address("needkey"), Some(AuthKey::from(b"k".to_vec())))
            .unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        KINDS.map(|kind| {
            let conn = client_with_authkey(&address, None).expect("connecting without a key");
            let result = match kind {
                "recv" => conn.recv::<String>().map(drop),
                "recv_timeout" => conn.recv_timeout::<u64>(WAIT).map(drop),
                "recv_bytes" => conn.recv_bytes().map(drop),
                "recv_bytes_max" => conn.recv_bytes_max(1024).map(drop),
                "recv_bytes_into" => conn.recv_bytes_into(&mut [0u8; 1024]).map(drop),
                _ => {
                    conn.send(&"hello").unwrap();
                    conn.recv::<String>().map(drop)
                }
            };
            (kind, result)
        })
    });
    for _ in KINDS {
        let started = Instant::now();
        let err = listener.accept().unwrap_err();
        assert!(matches!(err, ConnectError::Protocol(_)), "{err:?}");
        assert!(started.elapsed() < WAIT);
    }
    for (kind, result) in client.join().unwrap() {
        let err = result.unwrap_err();
        assert!(
            matches!(err, RecvError::AuthenticationRequired),
            "{kind}: {err:?}"
        );
        assert!(err.to_string().contains("authkey"), "{kind}: {err}");
    }
}

/// Without keys on either side, nothing is checked and every first message arrives, even
/// one that looks like a challenge when it is not the first.
#[test]
fn keyless_listener_and_client_talk_freely() {
    let listener = Listener::bind_with_authkey(unix_address("keyless"), None).unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        let conn = client_with_authkey(&address, None).unwrap();
        let first = conn.recv_bytes().unwrap();
        let second = conn.recv_bytes().unwrap();
        conn.send(&"thanks").unwrap();
        (first, second)
    });
    let conn = listener.accept().unwrap();
    conn.send_bytes(b"hello").unwrap();
    conn.send_bytes(b"#CHALLENGE#{sha256}").unwrap();
    assert_eq!(conn.recv_timeout::<String>(WAIT).unwrap(), "thanks");
    let (first, second) = client.join().unwrap();
    assert_eq!(first, b"hello");
    assert_eq!(second, b"#CHALLENGE#{sha256}");
}

/// A client with a key, against a listener without one that speaks first, is refused at
/// connect with an error naming the cause.
#[test]
fn a_client_with_a_key_is_refused_by_a_keyless_listener_that_speaks_first() {
    let listener = Listener::bind_with_authkey(unix_address("nokey"), None).unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        let started = Instant::now();
        let result = client_with_authkey(&address, Some(&AuthKey::from(b"k".to_vec())));
        (result.map(drop), started.elapsed())
    });
    let conn = listener.accept().unwrap();
    conn.send(&"welcome").unwrap();
    let (result, took) = client.join().unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, ConnectError::NoChallenge), "{err:?}");
    assert!(err.to_string().contains("authkey"), "{err}");
    assert!(took < WAIT, "took {took:?}");
}

/// ... and against one that waits for the client to speak first, it gives up after the
/// handshake timeout with an error that names the likely cause.
#[test]
fn a_client_with_a_key_times_out_clearly_against_a_keyless_listener_that_waits() {
    let listener = Listener::bind_with_authkey(unix_address("nokey-waits"), None).unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        let started = Instant::now();
        let result = client_with_authkey(&address, Some(&AuthKey::from(b"k".to_vec())));
        (result.map(drop), started.elapsed())
    });
    let conn = listener.accept().unwrap();
    // The client hangs up when it gives up.
    let gone = conn.recv_timeout::<String>(multiproc::connection::HANDSHAKE_TIMEOUT + WAIT);
    assert!(matches!(gone, Err(RecvError::Disconnected)), "{gone:?}");
    let (result, took) = client.join().unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(err, ConnectError::Unanswered { waited } if waited == multiproc::connection::HANDSHAKE_TIMEOUT),
        "{err:?}"
    );
    assert!(err.to_string().contains("authkey"), "{err}");
    assert!(
        took >= multiproc::connection::HANDSHAKE_TIMEOUT,
        "took {took:?}"
    );
}

/// Python's `Listener` does not authenticate by default, ours does, and the handshake runs
/// inside `accept`: a client of a listener nobody accepts on gets, after the handshake
/// timeout, an error that says so (not a hang, not a bare "timed out").
#[test]
fn a_client_of_a_listener_nobody_accepts_on_is_told_why_it_waited() {
    let listener = Listener::bind(unix_address("never-accepts")).unwrap();
    let started = Instant::now();
    let err = multiproc::connection::client(listener.address()).unwrap_err();
    let took = started.elapsed();
    let timeout = multiproc::connection::HANDSHAKE_TIMEOUT;
    assert!(
        matches!(err, ConnectError::Unanswered { waited } if waited == timeout),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("did not answer the authentication handshake within 10s"),
        "{message}"
    );
    assert!(message.contains("`accept()` is running"), "{message}");
    assert!(took >= timeout && took < timeout + WAIT, "took {took:?}");
    // The listener still works for a client that connects while `accept` runs (the peer
    // that gave up is still in its queue, and fails first).
    let address = listener.address().clone();
    let late = std::thread::spawn(move || multiproc::connection::client(&address).map(drop));
    let mut failed = 0;
    while let Err(e) = listener.accept() {
        failed += 1;
        assert!(failed <= 1, "{e:?}");
    }
    late.join().unwrap().unwrap();
}

fn first_receive_wants_a_key(conn: multiproc::Connection) {
    let err = conn.recv::<String>().unwrap_err();
    assert!(matches!(err, RecvError::AuthenticationRequired), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn every_shape_round_trips(
        name in ".{0,40}",
        tags in proptest::collection::vec(".{0,8}", 0..8),
        a in any::<i8>(), b in any::<u64>(), c in any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()),
        bytes in proptest::collection::vec(any::<u8>(), 0..5000),
    ) {
        let (x, y) = pipe(true).unwrap();
        let value = vec![
            Shape::Unit,
            Shape::Tuple(a, b, c),
            Shape::Struct { name: name.clone(), tags: tags.clone(), inner: Some(Box::new(Shape::Tuple(a, b, c))) },
        ];
        x.send(&value).unwrap();
        x.send_bytes(&bytes).unwrap();
        x.send(&(name.clone(), bytes.clone())).unwrap();
        prop_assert_eq!(y.recv::<Vec<Shape>>().unwrap(), value);
        prop_assert_eq!(y.recv_bytes().unwrap(), bytes.clone());
        prop_assert_eq!(y.recv::<(String, Vec<u8>)>().unwrap(), (name, bytes));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (x, y) = pipe(true).unwrap();
        x.send_bytes(&bytes).unwrap();
        let _ = y.recv::<Vec<Shape>>();
        x.send(&1u8).unwrap();
        prop_assert_eq!(y.recv::<u8>().unwrap(), 1);
    }
}

#[test]
fn a_header_announcing_a_gigabyte_allocates_nothing_until_bytes_come() {
    let (rx, tx) = pipe(false).unwrap();
    let fd = tx.fd().unwrap();
    let mut file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    std::io::Write::write_all(&mut file, &((1u32 << 30) - 1).to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut file, &[7u8; 1000]).unwrap();
    drop(file);
    drop(tx);
    let rss_before = rss_kib();
    match rx.recv_bytes() {
        Err(RecvError::Truncated { received, expected }) => {
            assert_eq!((received, expected), (1004, 1 << 30 | 3));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(
        rss_kib() < rss_before + 50 * 1024,
        "receiving grew memory by a claimed size"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn recv_bytes_into_large_messages_and_truncation() {
    let _r = common::Reaper::new();
    let (rx, tx) = pipe(false).unwrap();
    let mut p = Process::new(move || {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        tx.send_bytes(&data).unwrap();
        tx.send_bytes(b"small").unwrap();
        // Then a header promising more than ever comes.
        let fd = tx.fd().unwrap();
        let mut file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        let mut frame = 200_000u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&[9u8; 100_000]);
        std::io::Write::write_all(&mut file, &frame).unwrap();
    });
    p.start().unwrap();
    let mut buf = vec![0u8; 4_000_000];
    let n = rx.recv_bytes_into(&mut buf).unwrap();
    assert_eq!(n, 3_000_000);
    assert!(
        buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 253) as u8)
    );
    assert_eq!(rx.recv_bytes_into(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"small");
    match rx.recv_bytes_into(&mut buf) {
        Err(RecvError::Truncated { received, expected }) => {
            assert_eq!((received, expected), (100_004, 200_004));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(matches!(
        rx.recv_bytes_into(&mut buf),
        Err(RecvError::Disconnected)
    ));
    assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Connections passed as start arguments, under every start method.

fn echo_plus_one(conn: multiproc::Connection) {
    while let Ok(Some(v)) = conn.recv::<Option<u32>>() {
        conn.send(&(v + 1)).unwrap();
    }
}

/// A child's side of the abstract-namespace test: connect with the inherited authkey and
/// echo one number plus one.
fn abstract_client(name: Vec<u8>) {
    let conn = multiproc::connection::client(&Address::abstract_unix(name)).unwrap();
    let n: u64 = conn.recv().unwrap();
    conn.send(&(n + 1)).unwrap();
}

fn abstract_name(tag: &str) -> Vec<u8> {
    format!("multiproc-test-{}-{tag}", std::process::id()).into_bytes()
}

start_method_matrix! {
    /// Python accepts Unix addresses beginning with a NUL byte (Linux's abstract namespace):
    /// bind, connect from a child, authenticate with the inherited key, talk; no file is
    /// made, and the name is free again once the listener is dropped.
    #[test]
    fn listener_and_client_over_an_abstract_unix_address() {
        let _r = common::Reaper::new();
        let name = abstract_name(&module_path!().replace("::", "-"));
        let address = Address::abstract_unix(&name);
        let Address::Unix(path) = &address else { unreachable!() };
        assert_eq!(path.as_os_str().as_encoded_bytes()[0], 0);
        let listener = Listener::bind(address.clone()).unwrap();
        assert_eq!(listener.address(), &address);
        // The name is taken while the listener lives.
        assert!(Listener::bind(address.clone()).is_err());
        let mut p = Process::with_args(abstract_client, name.clone());
        p.start().unwrap();
        let conn = listener.accept().unwrap();
        conn.send(&41u64).unwrap();
        assert_eq!(conn.recv_timeout::<u64>(WAIT).unwrap(), 42);
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));

        // A client with another key is refused over an abstract address too.
        let other = address.clone();
        let intruder = std::thread::spawn(move || {
            client_with_authkey(&other, Some(&AuthKey::from(b"guess".to_vec()))).map(drop)
        });
        assert!(matches!(listener.accept(), Err(ConnectError::Refused)));
        assert!(matches!(intruder.join().unwrap(), Err(ConnectError::Refused)));

        drop(listener);
        assert!(!std::path::Path::new(&String::from_utf8(name.clone()).unwrap()).exists());
        let again = Listener::bind(address).unwrap();
        drop(again);
    }

    #[test]
    fn a_connection_passed_as_a_start_argument() {
        let _r = common::Reaper::new();
        let (a, b) = pipe(true).unwrap();
        let mut p = Process::with_args(echo_plus_one, b);
        p.start().unwrap();
        for v in 0..10u32 {
            a.send(&Some(v)).unwrap();
            assert_eq!(a.recv_timeout::<u32>(WAIT).unwrap(), v + 1);
        }
        // A forked child also holds a copy of our end, so it is told to stop rather than
        // left to wait for end of file (as in Python).
        a.send(&None::<u32>).unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        // The child is gone: end of file.
        assert!(matches!(a.recv_timeout::<u32>(WAIT), Err(RecvError::Disconnected)));
    }

    /// A keyless client's connection, passed to a child before its first receive, still
    /// recognises the listener's challenge there.
    #[test]
    fn a_keyless_client_connection_passed_to_a_child_still_checks_the_first_message() {
        let _r = common::Reaper::new();
        let listener = Listener::bind_with_authkey(
            unix_address(&format!("needkey-child-{}", module_path!().replace("::", "-"))),
            Some(AuthKey::from(b"k".to_vec())),
        )
        .unwrap();
        let conn = client_with_authkey(listener.address(), None).unwrap();
        let mut p = Process::with_args(first_receive_wants_a_key, conn);
        p.start().unwrap();
        assert!(listener.accept().is_err());
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
}

/// Constructors and `wait` report the crate's `Error`, like `Lock::new` and `Value::new` do
/// (issue 11): a wait that could never end is refused as invalid input, not an OS error.
#[test]
fn wait_with_nothing_to_wait_for_is_invalid_input() {
    let e = multiproc::connection::wait(&[], None).unwrap_err();
    assert_eq!(e.kind(), multiproc::ErrorKind::InvalidInput, "{e}");
    // With a timeout it is a plain sleep that finds nothing ready.
    let ready =
        multiproc::connection::wait(&[], Some(std::time::Duration::from_millis(1))).unwrap();
    assert!(ready.is_empty());
}
