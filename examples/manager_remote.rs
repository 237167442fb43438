//! A manager's server in one program and its clients in another, possibly on another host:
//! Python's `BaseManager(address, authkey).get_server().serve_forever()` and
//! `BaseManager.connect()`. `ci/manager-two-hosts.sh` runs the two halves on two network
//! namespace hosts.
//!
//! ```text
//! cargo run --example manager_remote -- serve 127.0.0.1:47651 secret     # serves until asked to stop
//! cargo run --example manager_remote -- client 127.0.0.1:47651 secret    # checks, then stops it
//! ```
//! The client makes a dict in the server, has four child processes (each connecting to the
//! server on its own) add to one entry with `modify`, checks the count is exact, and asks the
//! server to stop. It prints `manager-remote: ok` and the count.

use std::net::SocketAddr;
use std::process::ExitCode;

use multiproc::Manager;
use multiproc::manager::{DictProxy, Server};
use multiproc::process::AuthKey;

const CHILDREN: u64 = 4;
const EACH: u64 = 500;

fn bump(v: &mut u64, by: u64) {
    *v += by;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, address, key] = args.as_slice() else {
        eprintln!("usage: manager_remote serve|client ADDRESS AUTHKEY");
        return ExitCode::from(2);
    };
    let address: SocketAddr = match address.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("manager_remote: bad address {address:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let key = AuthKey::from(key.as_bytes().to_vec());
    let result = match mode.as_str() {
        "serve" => serve(address, key),
        "client" => client(address, key),
        _ => Err(format!("unknown mode {mode:?}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manager_remote {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(address: SocketAddr, key: AuthKey) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind(address, key)?;
    println!("manager-remote: serving on {}", server.address());
    server.serve_forever()?;
    println!("manager-remote: server stopped");
    Ok(())
}

fn client(address: SocketAddr, key: AuthKey) -> Result<(), Box<dyn std::error::Error>> {
    let mut manager = Manager::connect(&address.into(), key)?;
    let d = manager.dict::<String, u64>()?;
    let children = (0..CHILDREN)
        .map(|_| {
            multiproc::spawn_with_args(
                |d: DictProxy<String, u64>| {
                    for _ in 0..EACH {
                        d.modify(&"k".to_string(), bump, 1).expect("modify");
                    }
                },
                d.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for mut c in children {
        c.join_timeout(std::time::Duration::from_secs(60))?;
    }
    let count = d.get(&"k".to_string())?;
    manager.shutdown()?;
    if count != Some(CHILDREN * EACH) {
        return Err(format!("count {count:?}, expected {}", CHILDREN * EACH).into());
    }
    println!("manager-remote: ok, count {}", CHILDREN * EACH);
    Ok(())
}
