//! Plain byte containers as message values (issue 17): a `Vec<u8>`, a `&[u8]`, a
//! `Box<[u8]>` or a `VecDeque<u8>` is written and read as one piece rather than byte by byte.
//! What a caller can see of it: values of every size (empty, one byte, odd sizes, megabytes)
//! cross connections and queues intact, also inside other values, under every start method;
//! the bytes on the wire are postcard's (a length, then the bytes), exactly as before; and
//! bytes that do not hold a valid value give a decode error, never a panic.

mod common;

use std::collections::VecDeque;

use multiproc::connection::RecvError;
use multiproc::{Connection, Process, Queue, pipe};
use serde::{Deserialize, Serialize};

use common::WAIT;

/// Sizes around the interesting edges: none, one, odd, a page and a bit, and past the 1 MiB
/// that serde's `Vec` reserves up front at most (kept to a few MiB: a debug build decodes a
/// `Vec<u8>` slowly, and these tests also run under load).
const SIZES: [usize; 6] = [0, 1, 7, 4097, (1 << 20) + 3, (2 << 20) + 1];

/// `n` bytes that differ from place to place, so that a misplaced or dropped byte shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// Byte containers inside another value, beside other fields.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Mixed {
    id: u32,
    name: String,
    data: Vec<u8>,
    maybe: Option<Vec<u8>>,
    many: Vec<Vec<u8>>,
    boxed: Box<[u8]>,
    deque: VecDeque<u8>,
    words: Vec<u16>,
}

fn mixed(n: usize) -> Mixed {
    Mixed {
        id: n as u32,
        name: format!("item {n}"),
        data: pattern(n, 1),
        maybe: (n % 2 == 1).then(|| pattern(n / 2, 2)),
        many: vec![pattern(n / 3, 3), Vec::new(), pattern(1, 4)],
        boxed: pattern(n / 5, 5).into_boxed_slice(),
        deque: pattern(n / 7, 6).into(),
        words: (0..(n / 11) as u16).collect(),
    }
}

/// The child: echoes each `Vec<u8>` back, decoded and encoded again, then each `Mixed`,
/// until an empty `Vec`.
fn echo(conn: Connection) {
    loop {
        let v: Vec<u8> = conn.recv_timeout(WAIT).unwrap();
        if v.is_empty() {
            return;
        }
        conn.send(&v).unwrap();
        let m: Mixed = conn.recv_timeout(WAIT).unwrap();
        conn.send(&m).unwrap();
    }
}

/// The child: puts a `Vec<u8>` and a `Mixed` of each size.
fn put_each_size(q: Queue<(Vec<u8>, Mixed)>) {
    for (i, &n) in SIZES.iter().enumerate() {
        q.put((pattern(n, i as u8), mixed(n))).unwrap();
    }
}

start_method_matrix! {
    /// Every size, alone and inside another value, there and back over a connection.
    #[test]
    fn byte_vectors_of_every_size_cross_a_connection_both_ways() {
        let _r = common::Reaper::new();
        let (mine, theirs) = pipe(true).unwrap();
        let mut p = Process::with_args(echo, theirs);
        p.start().unwrap();
        for (i, &n) in SIZES.iter().enumerate().filter(|&(_, &n)| n > 0) {
            let sent = pattern(n, i as u8);
            // A slice is sent as the `Vec` is, and received as one.
            mine.send(&sent[..]).unwrap();
            let back: Vec<u8> = mine.recv_timeout(WAIT).unwrap();
            assert!(back == sent, "{n} bytes intact");
            let m = mixed(n);
            mine.send(&m).unwrap();
            let back: Mixed = mine.recv_timeout(WAIT).unwrap();
            assert!(back == m, "a value holding {n} bytes intact");
        }
        mine.send(&Vec::<u8>::new()).unwrap();
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    /// Every size through a queue, from a child to the parent.
    #[test]
    fn byte_vectors_of_every_size_cross_a_queue() {
        let _r = common::Reaper::new();
        let q: Queue<(Vec<u8>, Mixed)> = Queue::new().unwrap();
        let mut p = Process::with_args(put_each_size, q.clone());
        p.start().unwrap();
        for (i, &n) in SIZES.iter().enumerate() {
            let (v, m) = q.get_timeout(WAIT).unwrap();
            assert!(v == pattern(n, i as u8), "{n} bytes intact");
            assert!(m == mixed(n), "a value holding {n} bytes intact");
        }
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }
}

/// The bytes on the wire (sizes that fit the pipe's buffer: one thread writes, then reads): a `Vec<u8>` is its length as a varint, then the bytes, as postcard
/// has always written a sequence of `u8` (and a `serde_bytes` byte string), so both read it.
#[test]
fn the_wire_format_is_a_length_then_the_bytes() {
    let (a, b) = pipe(true).unwrap();
    for n in [0, 1, 127, 128, 300, 16_000] {
        let v = pattern(n, 9);
        a.send(&v).unwrap();
        let mut expected = common::leb128(n);
        expected.extend_from_slice(&v);
        let got = b.recv_bytes().unwrap();
        assert_eq!(got, expected, "{n} bytes");
        // Read back as a `serde_bytes::ByteBuf` too.
        a.send(&v).unwrap();
        let buf: serde_bytes::ByteBuf = b.recv_timeout(WAIT).unwrap();
        assert_eq!(buf.into_vec(), v);
        // And a `ByteBuf` sent is read back as a `Vec<u8>`.
        a.send(&serde_bytes::ByteBuf::from(v.clone())).unwrap();
        let back: Vec<u8> = b.recv_timeout(WAIT).unwrap();
        assert_eq!(back, v);
    }
}

/// Bytes that are not a valid `Vec<u8>` give a decode error, and the connection goes on.
#[test]
fn bad_bytes_give_a_decode_error() {
    let (a, b) = pipe(true).unwrap();
    let mut cases: Vec<Vec<u8>> = vec![
        // No length at all.
        Vec::new(),
        // A length that runs past the end of the message, small and huge.
        common::leb128(10).into_iter().chain([1, 2, 3]).collect(),
        common::leb128(1 << 40),
        common::leb128(usize::MAX),
        // A varint that never ends.
        vec![0xff; 12],
    ];
    // Bytes left over after the value.
    cases.push(common::leb128(2).into_iter().chain([1, 2, 3]).collect());
    for bad in &cases {
        a.send_bytes(bad).unwrap();
        match b.recv_timeout::<Vec<u8>>(WAIT) {
            Err(RecvError::Decode(_)) => {}
            other => panic!("{bad:?} gave {other:?}"),
        }
        a.send_bytes(bad).unwrap();
        match b.recv_timeout::<Mixed>(WAIT) {
            Err(RecvError::Decode(_)) => {}
            other => panic!("{bad:?} as a Mixed gave {other:?}"),
        }
    }
    a.send(&pattern(5, 0)).unwrap();
    assert_eq!(b.recv_timeout::<Vec<u8>>(WAIT).unwrap(), pattern(5, 0));
}
