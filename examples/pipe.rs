//! Two processes talking over a duplex `pipe` (Python's `multiprocessing.Pipe`):
//! `cargo run --example pipe`.

use multiproc::{Connection, connection::RecvError};

/// Answers each word with its length until it is told to stop.
fn measure(conn: Connection) {
    // `None` is the stop sign. Waiting for the parent to hang up instead would not do under
    // fork: the child inherits the parent's end too, so its own copy keeps the pipe open.
    while let Some(word) = conn.recv::<Option<String>>().expect("recv") {
        conn.send(&(word.clone(), word.len())).expect("send");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (here, there) = multiproc::pipe(true)?;
    let child = multiproc::spawn_with_args(measure, there)?;
    for word in ["fork", "spawn", "forkserver"] {
        here.send(&Some(word))?;
        let (echo, len): (String, usize) = here.recv()?;
        println!("{echo} has {len} letters");
    }
    here.send(&None::<&str>)?;
    child.join()?;
    // The other end is gone with the child: a recv says so instead of blocking forever.
    match here.recv::<String>() {
        Err(RecvError::Disconnected) => println!("child done; recv() -> Disconnected"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
