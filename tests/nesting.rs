//! Deeply nested values sent by another process: the receiver gets a clear decode error and
//! carries on, whether it receives through a Connection, a Queue or a Listener's connection,
//! and in a thread with a small stack too. Before decoding was bounded, a value 100,000 levels
//! deep (100 KB) overflowed the receiver's stack and aborted it; through a Queue every
//! consumer crashed in turn on the same item.

mod common;

use multiproc::{
    Connection, Queue,
    connection::Listener,
    connection::MAX_DECODE_DEPTH,
    connection::RecvError,
    connection::client_with_authkey,
    process::AuthKey,
    queue::{GetTimeoutError, TryGetError},
};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};

use common::{Reaper, WAIT};

/// A recursive type: each `Node` is one level.
#[derive(Debug, PartialEq, Deserialize)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
    /// Only ever sent: serializes exactly as `levels` `Node`s around a `Leaf` would, built
    /// flat so that the sender needs no deep stack (a hostile peer would send such bytes).
    #[serde(skip_deserializing)]
    Deep(usize),
}

impl Serialize for Nest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Nest::Leaf => s.serialize_unit_variant("Nest", 0, "Leaf"),
            Nest::Node(inner) => s.serialize_newtype_variant("Nest", 1, "Node", inner),
            Nest::Deep(levels) => {
                // postcard writes a u8 as one byte and a tuple without a length: this is
                // variant index 1 (`Node`) `levels` times, then variant index 0 (`Leaf`).
                let mut t = s.serialize_tuple(levels + 1)?;
                for _ in 0..*levels {
                    t.serialize_element(&1u8)?;
                }
                t.serialize_element(&0u8)?;
                t.end()
            }
        }
    }
}

/// Deep enough to overflow any stack this test runs on if decoding recursed unbounded.
const HOSTILE: usize = 100_000;

/// Runs `f` on a thread of its own with a `stack`-byte stack.
fn on_stack<R: Send>(stack: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// The stacks the receiving side is tried on: Rust's default for threads, and a small one.
const STACKS: [usize; 2] = [2 << 20, 256 << 10];

fn assert_nesting_error(message: &str) {
    assert!(message.contains("nested"), "not a nesting error: {message}");
}

/// Sends, over `conn`, for each stack in [`STACKS`]: a hostile value, the deepest value
/// allowed, a value one level too deep, then a leaf.
fn send_nests(conn: Connection) {
    for _ in STACKS {
        conn.send(&Nest::Deep(HOSTILE)).unwrap();
        conn.send(&Nest::Deep(MAX_DECODE_DEPTH - 1)).unwrap();
        conn.send(&Nest::Deep(MAX_DECODE_DEPTH)).unwrap();
        conn.send(&Nest::Leaf).unwrap();
    }
}

/// Receives what [`send_nests`] sends, on each stack of [`STACKS`].
fn receive_nests(conn: &Connection) {
    for stack in STACKS {
        on_stack(stack, || {
            match conn.recv_timeout::<Nest>(WAIT) {
                Err(RecvError::Decode(e)) => assert_nesting_error(&e.to_string()),
                other => panic!("{stack}-byte stack: expected a decode error, got {other:?}"),
            }
            // The limit itself decodes where the stack allows it (Rust's default does even
            // in a debug build); on a small stack it may stop early, with a clear error.
            match conn.recv_timeout::<Nest>(WAIT) {
                Ok(n) => std::mem::forget(n), // dropping a deep chain recurses too
                Err(RecvError::Decode(e)) if stack < 2 << 20 => {
                    assert!(e.to_string().contains("stack"), "{e}")
                }
                Err(e) => panic!("{stack}-byte stack: the deepest allowed value failed: {e}"),
            }
            match conn.recv_timeout::<Nest>(WAIT) {
                Err(RecvError::Decode(e)) => assert_nesting_error(&e.to_string()),
                other => panic!("{stack}-byte stack: expected a decode error, got {other:?}"),
            }
            // The bad messages were consumed whole: the stream is still in step.
            assert_eq!(conn.recv_timeout::<Nest>(WAIT).unwrap(), Nest::Leaf);
        });
    }
}

fn consume_one(q: Queue<Nest>) -> String {
    match q.get_timeout(WAIT) {
        Ok(n) => format!("got {n:?}"),
        Err(GetTimeoutError::Decode(e)) => format!("decode error: {e}"),
        Err(e) => format!("other error: {e}"),
    }
}

fn connect_and_send_nests(address: std::net::SocketAddr) {
    let address = multiproc::connection::Address::Tcp(address);
    let conn = client_with_authkey(&address, Some(&AuthKey::from(b"nest".to_vec()))).unwrap();
    send_nests(conn);
}

start_method_matrix! {
    #[test]
    fn a_deep_value_over_a_connection_is_a_decode_error() {
        let _r = Reaper::new();
        let (ours, theirs) = multiproc::pipe(true).unwrap();
        let mut p = multiproc::Process::with_args(send_nests, theirs);
        p.start().unwrap();
        receive_nests(&ours);
        drop(ours);
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    #[test]
    fn a_deep_queue_item_is_consumed_with_a_decode_error_not_a_crash_per_consumer() {
        let _r = Reaper::new();
        let q: Queue<Nest> = Queue::new().unwrap();
        q.put(Nest::Deep(HOSTILE)).unwrap();
        q.put(Nest::Leaf).unwrap();
        // The first consumer takes the poisonous item and lives; the next one gets the leaf.
        let first = multiproc::spawn_with_args(consume_one, q.clone()).unwrap();
        let first = first.join().unwrap();
        assert!(first.starts_with("decode error") && first.contains("nested"), "{first}");
        let second = multiproc::spawn_with_args(consume_one, q.clone()).unwrap();
        assert_eq!(second.join().unwrap(), "got Leaf");
        // And in this process, on a small stack.
        for stack in STACKS {
            q.put(Nest::Deep(HOSTILE)).unwrap();
            on_stack(stack, || match q.get_timeout(WAIT) {
                Err(GetTimeoutError::Decode(e)) => assert_nesting_error(&e.to_string()),
                other => panic!("expected a decode error, got {other:?}"),
            });
        }
        // Every poisonous item was consumed.
        let rest = q.get_nowait();
        assert!(matches!(rest, Err(TryGetError::Empty)), "{rest:?}");
    }

    #[test]
    fn a_deep_value_from_an_authenticated_listener_peer_is_a_decode_error() {
        let _r = Reaper::new();
        let key = AuthKey::from(b"nest".to_vec());
        let listener =
            Listener::bind_with_authkey("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), Some(key))
                .unwrap();
        let multiproc::connection::Address::Tcp(address) = listener.address().clone() else {
            unreachable!("bound to a TCP address")
        };
        let mut p = multiproc::Process::with_args(connect_and_send_nests, address);
        p.start().unwrap();
        let conn = listener.accept().unwrap();
        receive_nests(&conn);
        drop(conn);
        assert_eq!(p.join_timeout(WAIT).unwrap(), Some(0));
    }

    #[test]
    fn a_deep_result_from_a_child_is_a_decode_error() {
        let _r = Reaper::new();
        let child = multiproc::spawn_with_args(|levels: usize| Nest::Deep(levels), HOSTILE).unwrap();
        let e = on_stack(256 << 10, move || child.join().unwrap_err());
        assert_nesting_error(&e.to_string());
    }
}
