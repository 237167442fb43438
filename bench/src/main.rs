//! `cargo run --release -p multiproc-bench -- [--quick] [CASE...]`
//!
//! Runs each case for multiproc, for the kernel limit (a C probe built with this crate) and for
//! Python's multiprocessing (scripts in `python/`) in one run, prints one JSON line per case
//! and then a markdown table with the ratios.

mod cases;
mod harness;

use harness::{Ctx, Row};

fn main() {
    // procspawn (a peer in the spawn case) re-executes this binary and needs its hook first;
    // multiproc's own runs before `main`.
    procspawn::init();
    // SAFETY: procspawn asks that every function it runs live in the main executable (not in
    // a shared library loaded at a different address in the child); the bench's do.
    unsafe { procspawn::assert_spawn_is_safe() };
    if std::env::args().nth(1).as_deref() == Some(cases::start_methods::EXIT_AT_ONCE) {
        return;
    }
    let mut quick = false;
    let mut wanted = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("usage: multiproc-bench [--quick] [CASE...]\ncases:");
                for case in cases::all() {
                    println!("  {}", case.name);
                }
                return;
            }
            name => wanted.push(name.to_owned()),
        }
    }
    let all = cases::all();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !all.iter().any(|c| c.name == w.as_str()))
    {
        eprintln!("unknown case {unknown:?}; --help lists them");
        std::process::exit(2);
    }
    let mut ctx = Ctx::new(quick);
    let mut rows = Vec::new();
    for case in all
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.name))
    {
        let row = (case.run)(&mut ctx);
        println!("{}", row.json());
        rows.push(row);
    }
    println!();
    print_table(&rows);
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

fn cell(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// Ratios are "how many times better than": for times (units starting with `us`, `ns`, `ms`)
/// that is other/ours, for rates ours/other.
fn print_table(rows: &[Row]) {
    println!("| case | unit | ours | python | limit | ours vs python | ours vs limit | peers |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let lower_is_better = ["us", "ns", "ms"]
            .iter()
            .any(|p| r.unit == *p || r.unit.starts_with(&format!("{p}_")));
        let (vs_python, vs_limit) = if lower_is_better {
            (ratio(r.python, r.ours), ratio(r.limit, r.ours))
        } else {
            (ratio(r.ours, r.python), ratio(r.ours, r.limit))
        };
        let peers: Vec<String> = r.peer.iter().map(|(k, v)| format!("{k}: {v:.2}")).collect();
        println!(
            "| {} | {} | {} | {} | {} | {}x | {}x | {} |",
            r.case,
            r.unit,
            cell(r.ours),
            cell(r.python),
            cell(r.limit),
            vs_python,
            vs_limit,
            peers.join(", ")
        );
    }
    println!(
        "\nratios: how many times better ours is (>1 = ours better; for a limit, <1 = slower than the kernel allows)"
    );
}
