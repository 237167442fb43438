//! Placement and memory limits: CPU affinity, niceness and resource limits read back from
//! `/proc/<pid>`, bad settings refused at start or build, a hard memory cap that fails only the
//! task that passed it, and `max_memory_per_child` recycling only workers that grew.

mod common;

use std::time::Duration;

use multiproc::pool::TaskError;
use multiproc::process::{Builder, Resource};
use multiproc::{ErrorKind, Pool};

/// The CPUs in a `Cpus_allowed_list` value ("0-3,6").
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn cpus_of(pid: u32) -> Vec<usize> {
    parse_cpu_list(&status_field(pid, "Cpus_allowed_list:"))
}

/// Field 19 of `/proc/<pid>/stat`.
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// (soft, hard) of a line of `/proc/<pid>/limits`, as text ("unlimited" or a number).
fn limit_of(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/limits"));
    let mut fields = line[name.len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

/// What the child sees of itself, read in the child from `/proc/<its pid>`.
fn report(_: ()) -> (Vec<usize>, i32, (String, String)) {
    let me = std::process::id();
    (cpus_of(me), nice_of(me), limit_of(me, "Max open files"))
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn exit_worker(_: ()) -> u32 {
    std::process::exit(3)
}

/// Reserves (without touching) `mib` MiB: fails under a smaller address-space limit, and
/// succeeds without one (overcommit).
fn reserve(mib: usize) -> usize {
    let v = Vec::<u8>::with_capacity(mib << 20);
    std::hint::black_box(&v);
    v.capacity() >> 20
}

fn reserve_only(mib: usize) {
    reserve(mib);
}

/// Leaks `mib` MiB, touched, so the worker's resident size grows and stays grown.
fn grow(mib: usize) -> u32 {
    let v: &'static mut [u8] = Box::leak(vec![1u8; mib << 20].into_boxed_slice());
    std::hint::black_box(v);
    std::process::id()
}

fn last_cpu() -> usize {
    *cpus_of(std::process::id()).last().unwrap()
}

fn own_nice() -> i32 {
    nice_of(std::process::id())
}

start_method_matrix! {
    #[test]
    fn process_placement_reads_back_from_proc() {
        let _r = common::Reaper::new();
        let cpu = last_cpu();
        let nice = (own_nice() + 3).min(19);
        let handle = Builder::new()
            .cpu_affinity([cpu])
            .nice(nice)
            .rlimit(Resource::Nofile, 100, 200)
            .spawn_with_args(report, ())
            .unwrap();
        let (cpus, got_nice, files) = handle.join().unwrap();
        assert_eq!(cpus, vec![cpu]);
        assert_eq!(got_nice, nice);
        assert_eq!(files, ("100".to_owned(), "200".to_owned()));
        // Without settings the child inherits ours.
        let handle = Builder::new().spawn_with_args(report, ()).unwrap();
        let (cpus, got_nice, _) = handle.join().unwrap();
        assert_eq!(cpus, cpus_of(std::process::id()));
        assert_eq!(got_nice, own_nice());
    }

    #[test]
    fn bad_placement_is_refused_at_start() {
        let _r = common::Reaper::new();
        let cases: Vec<(&str, Builder)> = vec![
            ("cpu out of range", Builder::new().cpu_affinity([4096])),
            ("empty cpu set", Builder::new().cpu_affinity([])),
            ("nice out of range", Builder::new().nice(25)),
            ("soft above hard", Builder::new().rlimit(Resource::Nofile, 10, 5)),
            ("zero memory limit", Builder::new().memory_limit(0)),
        ];
        for (what, builder) in cases {
            let err = builder.spawn_with_args(pid, ()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
        }
        let above_hard = limit_of(std::process::id(), "Max open files").1;
        if above_hard != "unlimited" && !is_root() {
            let hard_now: u64 = above_hard.parse().unwrap();
            let err = Builder::new()
                .rlimit(Resource::Nofile, 1, hard_now + 1)
                .spawn_with_args(pid, ())
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        }
        assert!(multiproc::active_children().is_empty());
    }

    #[test]
    fn process_memory_limit_is_reported() {
        let _r = common::Reaper::new();
        let mut p = Builder::new().memory_limit(1 << 30).target_with_args(reserve_only, 4096);
        p.start().unwrap();
        assert!(p.join_timeout(Duration::from_secs(60)).unwrap().is_some());
        assert_eq!(p.exitcode(), Some(-6));
        assert!(p.memory_limit_exceeded());
        // The same reservation without a limit succeeds: the limit is what failed it.
        let mut p = Builder::new().target_with_args(reserve_only, 4096);
        p.start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(60)).unwrap(), Some(0));
        assert!(!p.memory_limit_exceeded());
        // Under a limit, a child that stays below it ends normally.
        let mut p = Builder::new().memory_limit(1 << 30).target_with_args(reserve_only, 16);
        p.start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(60)).unwrap(), Some(0));
        assert!(!p.memory_limit_exceeded());
    }

    #[test]
    fn pool_workers_are_pinned_and_replacements_keep_their_place() {
        let _r = common::Reaper::new();
        let allowed = cpus_of(std::process::id());
        let nice = (own_nice() + 2).min(19);
        let pool = Pool::builder()
            .processes(3)
            .pin_workers()
            .worker_nice(nice)
            .worker_rlimit(Resource::Nofile, 150, 250)
            .build()
            .unwrap();
        let mut want: Vec<Vec<usize>> = (0..3).map(|i| vec![allowed[i % allowed.len()]]).collect();
        want.sort();
        let placed = |pids: &[u32]| {
            let mut got: Vec<Vec<usize>> = pids.iter().map(|&p| cpus_of(p)).collect();
            got.sort();
            got
        };
        // Every setting is in place (they are applied one after the other in the child).
        let settled = |pids: &[u32]| {
            placed(pids) == want
                && pids.iter().all(|&p| {
                    nice_of(p) == nice
                        && limit_of(p, "Max open files") == ("150".to_owned(), "250".to_owned())
                })
        };
        let before = pool.worker_pids();
        assert_eq!(before.len(), 3);
        // Spawn and forkserver workers exist before they apply their placement (in their
        // bootstrap): wait for it, bounded.
        common::eventually(Duration::from_secs(20), || settled(&before));
        assert_eq!(placed(&before), want);
        for &p in &before {
            assert_eq!(nice_of(p), nice);
            assert_eq!(limit_of(p, "Max open files"), ("150".to_owned(), "250".to_owned()));
        }
        // A worker dies; its replacement gets the same placement.
        assert!(matches!(pool.apply(exit_worker, ()), Err(TaskError::WorkerDied { .. })));
        assert!(common::eventually(Duration::from_secs(20), || {
            let now = pool.worker_pids();
            now.len() == 3 && now != before
        }));
        let after = pool.worker_pids();
        common::eventually(Duration::from_secs(20), || settled(&after));
        assert_eq!(placed(&after), want);
        for &p in &after {
            assert_eq!(nice_of(p), nice);
            assert_eq!(limit_of(p, "Max open files"), ("150".to_owned(), "250".to_owned()));
        }
    }

    #[test]
    fn pool_worker_cpu_sets_and_bad_settings() {
        let _r = common::Reaper::new();
        let cpu = last_cpu();
        let pool = Pool::builder().processes(2).worker_cpu_sets(vec![vec![cpu]]).build().unwrap();
        let pids = pool.worker_pids();
        common::eventually(Duration::from_secs(20), || pids.iter().all(|&p| cpus_of(p) == vec![cpu]));
        for p in pids {
            assert_eq!(cpus_of(p), vec![cpu]);
        }
        drop(pool);
        for (what, builder) in [
            ("cpu out of range", Pool::builder().processes(1).worker_cpu_affinity([4096])),
            ("no sets", Pool::builder().processes(1).worker_cpu_sets(vec![])),
            ("empty set", Pool::builder().processes(1).worker_cpu_sets(vec![vec![]])),
            ("nice", Pool::builder().processes(1).worker_nice(-40)),
            ("soft above hard", Pool::builder().processes(1).worker_rlimit(Resource::Nofile, 9, 1)),
            ("zero max memory", Pool::builder().processes(1).max_memory_per_child(0)),
        ] {
            let err = builder.build().err().unwrap_or_else(|| panic!("{what}: built"));
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
        }
    }

    #[test]
    fn task_past_the_memory_limit_fails_and_the_pool_goes_on() {
        let _r = common::Reaper::new();
        let pool = Pool::builder().processes(1).memory_limit(1 << 30).build().unwrap();
        assert_eq!(pool.apply(reserve, 16).unwrap(), 16);
        match pool.apply(reserve, 4096) {
            Err(TaskError::MemoryLimitExceeded { limit }) => assert_eq!(limit, 1 << 30),
            other => panic!("expected MemoryLimitExceeded, got {other:?}"),
        }
        let results = pool.map(reserve, vec![16; 8]).unwrap();
        assert_eq!(results, vec![16; 8]);
        // Another death is not blamed on memory.
        assert!(matches!(pool.apply(exit_worker, ()), Err(TaskError::WorkerDied { .. })));
        assert_eq!(pool.apply(reserve, 16).unwrap(), 16);
    }

    #[test]
    fn max_memory_per_child_recycles_only_grown_workers() {
        let _r = common::Reaper::new();
        let pool = Pool::builder()
            .processes(1)
            .max_memory_per_child(200 << 20)
            .build()
            .unwrap();
        let first = pool.apply(pid, ()).unwrap();
        for _ in 0..5 {
            assert_eq!(pool.apply(pid, ()).unwrap(), first, "recycled without growing");
        }
        // Grows by 40 MiB: stays under the limit.
        assert_eq!(pool.apply(grow, 40).unwrap(), first);
        assert_eq!(pool.apply(pid, ()).unwrap(), first);
        // Grows past it: the next task runs in a new worker.
        assert_eq!(pool.apply(grow, 300).unwrap(), first);
        let second = pool.apply(pid, ()).unwrap();
        assert_ne!(second, first);
        assert_eq!(pool.apply(pid, ()).unwrap(), second);
        // Tasks queued behind the one that grew are not lost.
        let mut tasks = vec![pool.apply_async(grow, 300)];
        tasks.extend((0..6).map(|_| pool.apply_async(pid, ())));
        let pids: Vec<u32> = tasks.into_iter().map(|t| t.get().unwrap()).collect();
        assert_eq!(pids[0], second);
        assert!(pids[1..].iter().all(|&p| p != second), "{pids:?}");
    }
}

fn is_root() -> bool {
    status_field(std::process::id(), "Uid:")
        .split_whitespace()
        .nth(1)
        .is_some_and(|euid| euid == "0")
}
