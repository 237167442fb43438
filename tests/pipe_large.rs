//! Large messages over `pipe()` (issue 17): a message of 64 KiB or more crosses through the
//! pair's side socket, announced by a small frame on the pipe. What a caller can see of it:
//! messages of every size arrive whole and in order, both ways and one way, under every
//! start method; `recv_bytes_into` and its too-short buffer; a clone of an end keeps the
//! side socket; a sender killed in the middle of a large message gives `Truncated`, not a
//! hang; and a timed-out receive of a large message resumes where it stopped.

mod common;

use std::time::Duration;

use multiproc::connection::RecvError;
use multiproc::{Connection, Process, pipe};

use common::{Rng, WAIT};

/// Frame header bytes (a little-endian `u32` length).
const HEADER: usize = 4;

/// Frames of this many bytes or more (header included) go through the side socket.
const SIDE_FROM: usize = 64 * 1024;

/// `n` random bytes from `rng`: a misplaced or repeated chunk shows.
fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(n);
    v
}

/// The child: echoes every message back (as bytes), until an empty one.
fn echo(conn: Connection) {
    loop {
        let got = conn.recv_bytes().unwrap();
        if got.is_empty() {
            return;
        }
        conn.send_bytes(&got).unwrap();
    }
}

/// The child: sends a 2 MiB value, 1 MiB of bytes and a small value, then returns.
fn send_large_values(conn: Connection) {
    let mut rng = Rng::from_seed(17);
    conn.send(&random_bytes(&mut rng, 2 << 20)).unwrap();
    conn.send_bytes(&random_bytes(&mut rng, 1 << 20)).unwrap();
    conn.send(&("done", 7u32)).unwrap();
}

/// The child: sends 1 MiB twice and then a small message, from a clone of its end.
fn send_twice_from_a_clone(conn: Connection) {
    let clone = conn.try_clone().unwrap();
    drop(conn);
    let mut rng = Rng::from_seed(5);
    let big = random_bytes(&mut rng, 1 << 20);
    clone.send_bytes(&big).unwrap();
    clone.send_bytes(&big).unwrap();
    clone.send_bytes(b"after").unwrap();
}

/// The child: sends one message far larger than the socket can buffer, and is killed while
/// it blocks in the middle of it.
fn send_64_mib(conn: Connection) {
    conn.send_bytes(&vec![3u8; 64 << 20]).unwrap();
    // Not reached while the parent does not read: it kills this process first.
    std::thread::sleep(Duration::from_secs(60));
}

start_method_matrix! {
    /// Sizes around the threshold and far above it, small ones between, there and back; a
    /// small, a large and a small message sent before any answer is read keep their order.
    #[test]
    fn large_and_small_messages_keep_their_order_both_ways() {
        let _r = common::Reaper::new();
        let mut rng = Rng::seeded("large_and_small_messages_keep_their_order_both_ways");
        let (mine, theirs) = pipe(true).unwrap();
        let mut p = Process::with_args(echo, theirs);
        p.start().unwrap();
        let at = SIDE_FROM - HEADER;
        for n in [at - 1, at, at + 1, 1, 4 << 20, 10, 1 << 20, at - 1] {
            let sent = random_bytes(&mut rng, n);
            mine.send_bytes(&sent).unwrap();
            assert!(mine.poll(Some(WAIT)).unwrap(), "an answer for {n} bytes");
            assert!(mine.recv_bytes().unwrap() == sent, "{n} bytes intact");
        }
        let burst = [
            random_bytes(&mut rng, 3),
            random_bytes(&mut rng, 300 * 1024),
            random_bytes(&mut rng, 5),
        ];
        for m in &burst {
            mine.send_bytes(m).unwrap();
        }
        for m in &burst {
            assert!(mine.poll(Some(WAIT)).unwrap(), "an answer");
            assert!(mine.recv_bytes().unwrap() == *m, "{} bytes in order", m.len());
        }
        mine.send_bytes(b"").unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    /// A one-way pipe carries large values and bytes, then a small value.
    #[test]
    fn a_one_way_pipe_carries_large_values() {
        let _r = common::Reaper::new();
        let (reader, writer) = pipe(false).unwrap();
        let mut p = Process::with_args(send_large_values, writer);
        p.start().unwrap();
        let mut rng = Rng::from_seed(17);
        let value: Vec<u8> = reader.recv_timeout(WAIT).unwrap();
        assert!(value == random_bytes(&mut rng, 2 << 20), "2 MiB value intact");
        assert!(reader.poll(Some(WAIT)).unwrap());
        let bytes = reader.recv_bytes().unwrap();
        assert!(bytes == random_bytes(&mut rng, 1 << 20), "1 MiB bytes intact");
        assert_eq!(
            reader.recv_timeout::<(String, u32)>(WAIT).unwrap(),
            ("done".to_owned(), 7)
        );
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
        assert!(matches!(
            reader.recv_timeout::<u8>(WAIT),
            Err(RecvError::Disconnected)
        ));
    }

    /// `recv_bytes_into`: a large message into a buffer that fits, then one into a buffer
    /// too short (the error holds it whole), then a small one: the stream stays in step.
    /// The sender is a clone of the child's end, so clones keep the side socket.
    #[test]
    fn large_messages_into_buffers_and_from_a_clone() {
        let _r = common::Reaper::new();
        let (reader, writer) = pipe(false).unwrap();
        let mut p = Process::with_args(send_twice_from_a_clone, writer);
        p.start().unwrap();
        let big = random_bytes(&mut Rng::from_seed(5), 1 << 20);
        let mut buf = vec![0u8; 2 << 20];
        assert!(reader.poll(Some(WAIT)).unwrap());
        assert_eq!(reader.recv_bytes_into(&mut buf).unwrap(), 1 << 20);
        assert!(buf[..1 << 20] == big[..], "received into the buffer intact");
        assert!(reader.poll(Some(WAIT)).unwrap());
        match reader.recv_bytes_into(&mut buf[..512 * 1024]) {
            Err(RecvError::BufferTooShort { message, capacity }) => {
                assert_eq!(capacity, 512 * 1024);
                assert!(message == big, "the error holds the message");
            }
            other => panic!("expected BufferTooShort, got {other:?}"),
        }
        assert!(reader.poll(Some(WAIT)).unwrap());
        assert_eq!(reader.recv_bytes().unwrap(), b"after");
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    /// A sender killed while it blocks in the middle of a large message: the receiver gets
    /// what was in flight and then `Truncated`, then end of file; no hang.
    #[test]
    fn a_sender_killed_in_a_large_message_gives_truncated() {
        let _r = common::Reaper::new();
        let (reader, writer) = pipe(false).unwrap();
        let mut p = Process::with_args(send_64_mib, writer);
        p.start().unwrap();
        // The announcing frame is on the pipe; the child blocks once the socket is full.
        assert!(reader.poll(Some(WAIT)).unwrap(), "the message began");
        p.kill().unwrap();
        assert!(p.join_timeout(WAIT).unwrap().is_some(), "the child ended");
        drop(p);
        match reader.recv_bytes_timeout(WAIT) {
            Err(RecvError::Truncated { received, expected }) => {
                assert_eq!(expected, HEADER + (64 << 20));
                assert!(received < expected, "{received} of {expected}");
            }
            other => panic!("expected Truncated, got {:?}", other.map(|v| v.len())),
        }
        assert!(matches!(
            reader.recv_timeout::<u8>(WAIT),
            Err(RecvError::Disconnected)
        ));
    }
}

/// A receive that times out in the middle of a large message keeps what came: the next
/// receive finishes it, `poll` says a message is under way meanwhile, and nothing is lost.
#[test]
fn a_timed_out_large_receive_resumes() {
    let _r = common::Reaper::new();
    let (reader, writer) = pipe(false).unwrap();
    let big = random_bytes(
        &mut Rng::seeded("a_timed_out_large_receive_resumes"),
        32 << 20,
    );
    // A thread sends (the receiver's side is in this process too): it blocks once the
    // socket is full, until the receives below read on.
    let sent = big.clone();
    let sender = std::thread::spawn(move || {
        writer.send_bytes(&sent).unwrap();
        writer.send_bytes(b"next").unwrap();
    });
    assert!(reader.poll(Some(WAIT)).unwrap());
    // Short timeouts, until one returns the message; at least the first times out while
    // 32 MiB cannot be in the socket at once.
    let mut timeouts = 0;
    let got = loop {
        match reader.recv_bytes_timeout(Duration::from_micros(1)) {
            Ok(m) => break m,
            Err(RecvError::Timeout) => {
                timeouts += 1;
                assert!(reader.poll(Some(Duration::ZERO)).unwrap(), "under way");
                assert!(timeouts < 10_000_000, "never finished");
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(timeouts > 0, "no receive timed out part-way");
    assert!(got == big, "32 MiB intact after {timeouts} timeouts");
    assert_eq!(reader.recv_bytes_timeout(WAIT).unwrap(), b"next");
    sender.join().unwrap();
}
