//! Shared objects in a manager's server process, reached through proxies (Python's
//! `multiprocessing.Manager()`): `cargo run --example manager`.

use multiproc::manager::{DictProxy, ListProxy};

/// Counts words into the shared dict and logs what it did in the shared list.
fn count((id, words, counts, log): (u32, Vec<String>, DictProxy<String, u32>, ListProxy<String>)) {
    for w in &words {
        // modify runs inside the server, so concurrent increments lose no update.
        counts
            .modify(w, |n: &mut u32, by: u32| *n += by, 1)
            .expect("modify");
    }
    log.push(&format!("worker {id} counted {} words", words.len()))
        .expect("push");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = multiproc::Manager::start()?;
    let counts = manager.dict::<String, u32>()?;
    let log = manager.list::<String>()?;
    let texts = ["a rose is a rose", "is a rose a rose"];
    let workers = texts
        .iter()
        .zip(0..)
        .map(|(text, id)| {
            let words = text.split(' ').map(String::from).collect();
            multiproc::spawn_with_args(count, (id, words, counts.clone(), log.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for w in workers {
        w.join()?;
    }
    let mut items = counts.items()?;
    items.sort();
    println!("counts: {items:?}");
    let mut lines = log.to_vec()?;
    lines.sort();
    println!("log: {lines:?}");
    Ok(())
}
