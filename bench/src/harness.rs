//! What every case shares: the run's settings, the kernel-limit probe, the Python baselines,
//! and the row each case reports.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// One benchmark case.
pub struct Case {
    pub name: &'static str,
    pub run: fn(&mut Ctx) -> Row,
}

/// What a case measured. Numbers are medians; `None` where a side has no such case.
pub struct Row {
    pub case: &'static str,
    pub unit: &'static str,
    pub ours: Option<f64>,
    pub python: Option<f64>,
    pub limit: Option<f64>,
    /// Other implementations measured in the same run (Rust peers, pinning variants...).
    pub peer: BTreeMap<String, f64>,
}

impl Row {
    pub fn new(case: &'static str, unit: &'static str) -> Self {
        Row {
            case,
            unit,
            ours: None,
            python: None,
            limit: None,
            peer: BTreeMap::new(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::json!({
            "case": self.case,
            "unit": self.unit,
            "ours": self.ours.map(round3),
            "python": self.python.map(round3),
            "limit": self.limit.map(round3),
            "peer": self.peer.iter().map(|(k, v)| (k.clone(), serde_json::json!(round3(*v)))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn round3(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        (x * 10.0).round() / 10.0
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

/// The run's settings and the lazily measured baselines, shared by all cases.
///
/// Each case runs in a process of its own (see `main`), so the baselines are kept in a file
/// the processes of one run share (`MULTIPROC_BENCH_CACHE`): the probe and each Python
/// script still run once per run.
pub struct Ctx {
    pub quick: bool,
    limits: Option<Value>,
    python: HashMap<String, Value>,
    cache: Option<PathBuf>,
}

/// The environment variable naming the run's baseline file.
pub const CACHE_ENV: &str = "MULTIPROC_BENCH_CACHE";

impl Ctx {
    pub fn new(quick: bool) -> Self {
        let cache = std::env::var_os(CACHE_ENV).map(PathBuf::from);
        let saved: Value = cache
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let python = saved
            .get("python")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ctx {
            quick,
            // `null` when an earlier case saved the file before the probe ran.
            limits: saved.get("limits").filter(|v| !v.is_null()).cloned(),
            python,
            cache,
        }
    }

    /// Writes the baselines measured so far to the run's file, for the next case.
    fn save(&self) {
        if let Some(path) = &self.cache {
            let all = serde_json::json!({
                "limits": self.limits,
                "python": self.python.iter().collect::<BTreeMap<_, _>>(),
            });
            if let Err(e) = std::fs::write(path, all.to_string()) {
                eprintln!("bench: could not write {}: {e}", path.display());
            }
        }
    }

    /// Rounds per measurement: medians are taken over this many.
    pub fn rounds(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }

    /// `full` normally, `quick` under `--quick`.
    pub fn scale(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// A figure from the kernel-limit probe (`limits/limits.c`), run once per harness run.
    pub fn limit(&mut self, key: &str) -> Option<f64> {
        if self.limits.is_none() {
            let mut cmd = Command::new(env!("MULTIPROC_LIMITS_PROBE"));
            if self.quick {
                cmd.arg("--quick");
            }
            self.limits = Some(run_json(&mut cmd).unwrap_or(Value::Null));
            self.save();
        }
        self.limits.as_ref()?.get(key)?.as_f64()
    }

    /// The JSON line of a Python baseline script in `python/`, run once per distinct
    /// argument list (`--quick` is added under `--quick`).
    pub fn python(&mut self, script: &str, args: &[&str]) -> Value {
        let key = format!("{script} {}", args.join(" "));
        if let Some(v) = self.python.get(&key) {
            return v.clone();
        }
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let mut cmd = Command::new("python3");
        cmd.arg(path).args(args);
        if self.quick {
            cmd.arg("--quick");
        }
        let value = run_json(&mut cmd).unwrap_or(Value::Null);
        self.python.insert(key, value.clone());
        self.save();
        value
    }

    /// The JSON line of another baseline command (an `mpirun` job, for instance), run once
    /// per harness run under `key`, as the Python scripts are.
    pub fn external(&mut self, key: &str, cmd: &mut Command) -> Value {
        if let Some(v) = self.python.get(key) {
            return v.clone();
        }
        let value = run_json(cmd).unwrap_or(Value::Null);
        self.python.insert(key.to_owned(), value.clone());
        self.save();
        value
    }
}

/// Runs a command and parses the last line of its stdout as JSON.
fn run_json(cmd: &mut Command) -> Option<Value> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("bench: could not run {cmd:?}: {e}");
            return None;
        }
    };
    if !out.status.success() {
        eprintln!(
            "bench: {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last()?).ok()
}

/// Looks up a number at a `/`-separated path in a JSON value.
pub fn get(value: &Value, path: &str) -> Option<f64> {
    path.split('/').try_fold(value, |v, k| v.get(k))?.as_f64()
}

/// The median of `rounds` runs of `f`, each returning one figure.
pub fn median(rounds: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..rounds).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Microseconds per iteration of `f` over `n` iterations.
pub fn us_per_iter(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Medians of microseconds per iteration for each side, measured in alternating rounds after a
/// warm-up, so that load on a shared machine hits every side alike.
pub fn alternate_us(rounds: usize, n: usize, sides: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for side in sides.iter_mut() {
        for _ in 0..n.min(20) {
            side();
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); sides.len()];
    for _ in 0..rounds {
        for (side, out) in sides.iter_mut().zip(&mut samples) {
            out.push(us_per_iter(n, &mut **side));
        }
    }
    samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

/// The kernel's floor for a process start from this very process: `fork`, `_exit(0)` in the
/// child, `waitpid` in the parent. Fork's cost grows with the parent's page tables, so this
/// compares like with like where the C probe forks a much smaller program.
pub fn raw_fork_wait() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(0);
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}
