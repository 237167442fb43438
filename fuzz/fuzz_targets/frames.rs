//! Arbitrary bytes on a connection: whatever arrives, receiving gives values or errors,
//! never a panic, a hang, or an allocation of whatever a header claims.
//!
//! `cargo +nightly fuzz run frames -- -max_total_time=60`
#![no_main]

use std::collections::BTreeMap;
use std::io::Write;

use libfuzzer_sys::fuzz_target;
use multiproc::{connection::RecvError, pipe};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum Shape {
    Unit,
    Number(u64, i32, f64),
    Text(String, Vec<String>),
    Nested(Option<Box<Shape>>, Vec<Shape>),
    Map(BTreeMap<String, Vec<u8>>),
}

fuzz_target!(|data: &[u8]| {
    // A pipe holds 64 KiB without a reader; more would block the writer.
    let data = &data[..data.len().min(60 * 1024)];
    let (rx, tx) = pipe(false).expect("pipe");
    let fd = tx.fd().expect("fd").try_clone_to_owned().expect("dup");
    std::fs::File::from(fd).write_all(data).expect("write");
    drop(tx);
    // Each frame is decoded as a different type in turn; at most one frame per 64 bytes.
    let mut buf = [0u8; 4096];
    for i in 0..=data.len() / 64 + 1 {
        let result = match i % 4 {
            0 => rx.recv::<Shape>().map(drop),
            1 => rx.recv::<(u8, String)>().map(drop),
            2 => rx.recv_bytes_into(&mut buf).map(drop),
            _ => rx.recv_bytes().map(drop),
        };
        match result {
            Ok(()) | Err(RecvError::Decode(_) | RecvError::BufferTooShort { .. }) => {}
            Err(RecvError::Disconnected | RecvError::Truncated { .. }) => return,
            Err(e) => panic!("unexpected error on arbitrary input: {e:?}"),
        }
    }
});
