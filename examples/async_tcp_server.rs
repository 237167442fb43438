//! Seed 003, async: the concurrent TCP server on tokio. One task accepts connections on
//! 127.0.0.1 and hands each to a new child process, which answers every message upper-cased
//! until its client leaves; the children are awaited on their pidfds (`join_async`), so a
//! single-threaded runtime serves any number of clients without a thread per child.
//!
//! ```text
//! cargo run --example async_tcp_server --features tokio             # 127.0.0.1:8080, until Ctrl-C
//! cargo run --example async_tcp_server --features tokio -- 0 3      # any free port, 3 clients
//! ```
//! Then, in another terminal: `nc 127.0.0.1 8080` and type.
//!
//! The accepted socket is moved into the child's closure, so this example uses the fork start
//! method, as the blocking `tcp_server` example does.

use std::io::{Read, Write};
use std::net::TcpStream;

use multiproc::{Process, StartMethod};

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
    multiproc::set_start_method(StartMethod::Fork)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", server.local_addr()?);
        let mut children = tokio::task::JoinSet::new();
        for _ in 0..max_clients.unwrap_or(usize::MAX) {
            let (conn, client_addr) = server.accept().await?;
            println!("{client_addr}");
            // The child talks with plain blocking I/O: give it a blocking socket (the flag is
            // shared with the child through the descriptor).
            let conn = conn.into_std()?;
            conn.set_nonblocking(false)?;
            let mut p = Process::new(move || talk(conn));
            p.start()?;
            // The parent's copy of the socket went with the closure; the child is reaped as
            // soon as it ends, by a task waiting on its pidfd.
            children.spawn(async move { p.join_async().await });
        }
        while let Some(joined) = children.join_next().await {
            joined??;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
