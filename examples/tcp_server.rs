//! Seed 003: the concurrent TCP server. It accepts connections on 127.0.0.1 and hands each to
//! a new child process, which answers every message upper-cased until its client leaves.
//!
//! ```text
//! cargo run --example tcp_server                 # serve on 127.0.0.1:8080 until Ctrl-C
//! cargo run --example tcp_server -- 0 3          # any free port, stop after 3 clients
//! ```
//! Then, in another terminal: `nc 127.0.0.1 8080` and type.
//!
//! The accepted socket is moved into the child's closure, so this example uses the fork start
//! method, as the Python original does on Linux.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use multiproc::Process;

fn talk(mut conn: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                    break;
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(8080), |p| p.parse())?;
    let max_clients: Option<usize> = args.next().map(|n| n.parse()).transpose()?;

    let server = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", server.local_addr()?);
    let mut children = Vec::new();
    for _ in 0..max_clients.unwrap_or(usize::MAX) {
        let (conn, client_addr) = server.accept()?;
        println!("{client_addr}");
        // The parent's copy of `conn` is closed once the child has it.
        let mut p = Process::new(move || talk(conn));
        p.start()?;
        children.push(p);
        // Reap children whose clients have left, as a long-running server must.
        children.retain(|c| c.is_alive());
    }
    for mut child in children {
        child.join()?;
    }
    Ok(())
}
