//! Large messages out of band (issue 17): on a Unix-socket connection told to
//! (`Connection::set_out_of_band`), a message whose frame reaches the threshold travels as a
//! sealed memfd passed with SCM_RIGHTS. What a caller can see of it: messages of every size
//! arrive whole, across processes and under every start method, also from a sender that
//! exited right after sending, and whichever side sends out of band; and no descriptor is
//! left behind in the receiver.

mod common;

use multiproc::connection::socket_pipe;
use multiproc::{Connection, Process};

use common::WAIT;

/// Frame header bytes (a little-endian `u32` length).
const HEADER: usize = 4;

/// The threshold these tests set: frames of this many bytes or more go out of band.
const OUT_OF_BAND: usize = 64 * 1024;

/// `n` bytes that depend on `seed` and, every 4093 bytes (a prime, so that pages differ),
/// on their position: cheap to make in a debug build, yet a misplaced chunk shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![seed; n];
    for i in (0..n).step_by(4093) {
        v[i] = (i / 4093) as u8 ^ seed.wrapping_add(1);
    }
    v
}

/// The child: sends 16 MiB as a value and as bytes, and returns at once.
fn send_16_mib_and_exit(conn: Connection) {
    conn.set_out_of_band(Some(OUT_OF_BAND)).unwrap();
    conn.send(&pattern(16 << 20, 1)).unwrap();
    conn.send_bytes(&pattern(16 << 20, 2)).unwrap();
}

/// The child: echoes every message back (as bytes), until an empty one.
fn echo(conn: Connection) {
    conn.set_out_of_band(Some(OUT_OF_BAND)).unwrap();
    loop {
        let got = conn.recv_bytes().unwrap();
        if got.is_empty() {
            return;
        }
        conn.send_bytes(&got).unwrap();
    }
}

/// The child: receives values with `recv_bytes_into` and answers with their sum of bytes.
fn sum_into(conn: Connection) {
    let mut buf = vec![0u8; 32 << 20];
    loop {
        let n = conn.recv_bytes_into(&mut buf).unwrap();
        if n == 0 {
            return;
        }
        conn.send(&buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>())
            .unwrap();
    }
}

start_method_matrix! {
    /// The sender exits before the receiver reads: the messages still arrive whole (the
    /// kernel holds their memory while in flight; no process must stay alive for them).
    #[test]
    fn a_child_sends_16_mib_and_exits_before_the_parent_receives() {
        let _r = common::Reaper::new();
        let (mine, theirs) = socket_pipe().unwrap();
        let mut p = Process::with_args(send_16_mib_and_exit, theirs);
        p.start().unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0), "the child exited");
        let value: Vec<u8> = mine.recv_timeout(WAIT).unwrap();
        assert!(value == pattern(16 << 20, 1), "16 MiB value intact");
        let bytes = mine.recv_bytes().unwrap();
        assert!(bytes == pattern(16 << 20, 2), "16 MiB bytes intact");
    }

    /// Sizes around the threshold, and far above it, there and back.
    #[test]
    fn messages_around_the_threshold_cross_both_ways() {
        let _r = common::Reaper::new();
        let (mine, theirs) = socket_pipe().unwrap();
        let mut p = Process::with_args(echo, theirs);
        p.start().unwrap();
        mine.set_out_of_band(Some(OUT_OF_BAND)).unwrap();
        let at = OUT_OF_BAND - HEADER;
        for (i, n) in [at - 1, at, at + 1, 1, 4 << 20, at - 1].into_iter().enumerate() {
            let sent = pattern(n, i as u8);
            mine.send_bytes(&sent).unwrap();
            assert!(mine.poll(Some(WAIT)).unwrap(), "an answer for {n} bytes");
            assert!(mine.recv_bytes().unwrap() == sent, "{n} bytes intact");
        }
        mine.send_bytes(b"").unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    /// A value sent with `send` and received with `recv_bytes_into`, around the threshold
    /// and at 16 MiB.
    #[test]
    fn values_received_into_a_buffer() {
        let _r = common::Reaper::new();
        let (mine, theirs) = socket_pipe().unwrap();
        let mut p = Process::with_args(sum_into, theirs);
        p.start().unwrap();
        mine.set_out_of_band(Some(OUT_OF_BAND)).unwrap();
        // A serde `Vec<u8>` of these lengths has a 3- or 4-byte length prefix.
        for n in [OUT_OF_BAND - HEADER - 4, OUT_OF_BAND - HEADER - 3, OUT_OF_BAND, 16 << 20] {
            let sent = pattern(n, 9);
            mine.send(&sent).unwrap();
            // postcard writes a `Vec<u8>` as its length (LEB128), then the bytes.
            let mut encoded = common::leb128(n);
            encoded.extend_from_slice(&sent);
            let want = encoded.iter().map(|&b| u64::from(b)).sum::<u64>();
            assert_eq!(mine.recv_timeout::<u64>(WAIT).unwrap(), want, "{n} bytes");
        }
        mine.send_bytes(b"").unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
}

/// Receiving out-of-band messages leaves no descriptor open, whichever receive takes them.
#[test]
fn receiving_out_of_band_leaves_no_descriptor_behind() {
    let (a, b) = socket_pipe().unwrap();
    a.set_out_of_band(Some(OUT_OF_BAND)).unwrap();
    let big = pattern(256 << 10, 3);
    let mut buf = vec![0u8; 1 << 20];
    // One of each first, so that lazily opened descriptors (none expected) are counted.
    let before = common::open_fds();
    for _ in 0..5 {
        a.send_bytes(&big).unwrap();
        assert!(b.recv_bytes().unwrap() == big);
        a.send(&big).unwrap();
        assert!(b.recv::<Vec<u8>>().unwrap() == big);
        a.send_bytes(&big).unwrap();
        assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), big.len());
    }
    assert_eq!(common::open_fds(), before);
}
