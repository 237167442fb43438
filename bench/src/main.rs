//! `cargo run --release -p multiproc-bench -- [--quick] [CASE...]`
//!
//! Runs each case for multiproc, for the kernel limit (a C probe built with this crate) and for
//! Python's multiprocessing (scripts in `python/`) in one run, prints one JSON line per case
//! and then a markdown table with the ratios.
//!
//! Each case runs in a fresh process of this binary (`--in-process CASE`), as each Python
//! script does: a fork's cost grows with what the forking process has mapped, so a case
//! measured after others in one process (the 16 MiB queue case leaves heap behind) would
//! pay for them. `--in-process` with several cases runs them in one process, in order.

mod cases;
mod harness;

use harness::{CACHE_ENV, Ctx};
use serde_json::Value;

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
    let mut in_process = false;
    let mut wanted = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--in-process" => in_process = true,
            "-h" | "--help" => {
                println!(
                    "usage: multiproc-bench [--quick] [--in-process] [CASE...]\n\
                     (--in-process: all cases in this process, no table)\ncases:"
                );
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
    let chosen = all
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.name));
    let mut rows = Vec::new();
    if in_process {
        let mut ctx = Ctx::new(quick);
        for case in chosen {
            let row = (case.run)(&mut ctx).json();
            println!("{row}");
            rows.push(row);
        }
        return;
    }
    let cache = std::env::temp_dir().join(format!("multiproc-bench-{}.json", std::process::id()));
    for case in chosen {
        match run_isolated(case.name, quick, &cache) {
            Some(row) => {
                println!("{row}");
                rows.push(row);
            }
            None => eprintln!("bench: case {} failed", case.name),
        }
    }
    let _ = std::fs::remove_file(&cache);
    println!();
    print_table(&rows);
}

/// Runs one case in a fresh process of this binary; its row.
fn run_isolated(case: &str, quick: bool, cache: &std::path::Path) -> Option<Value> {
    let mut cmd = std::process::Command::new(std::env::current_exe().ok()?);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(["--in-process", case]).env(CACHE_ENV, cache);
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("case").is_some())
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
fn print_table(rows: &[Value]) {
    println!("| case | unit | ours | python | limit | ours vs python | ours vs limit | peers |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let num = |k: &str| r.get(k).and_then(Value::as_f64);
        let unit = text("unit");
        let lower_is_better = ["us", "ns", "ms"]
            .iter()
            .any(|p| unit == *p || unit.starts_with(&format!("{p}_")));
        let (ours, python, limit) = (num("ours"), num("python"), num("limit"));
        let (vs_python, vs_limit) = if lower_is_better {
            (ratio(python, ours), ratio(limit, ours))
        } else {
            (ratio(ours, python), ratio(ours, limit))
        };
        let peers: Vec<String> = r
            .get("peer")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {:.2}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {} | {}x | {}x | {} |",
            text("case"),
            unit,
            cell(ours),
            cell(python),
            cell(limit),
            vs_python,
            vs_limit,
            peers.join(", ")
        );
    }
    println!(
        "\nratios: how many times better ours is (>1 = ours better; for a limit, <1 = slower than the kernel allows)"
    );
}
