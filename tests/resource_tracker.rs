//! The resource tracker: the process that unlinks the names of named shared-memory segments
//! whose creator died. It is restarted when it dies (keeping the names it watched), it cannot
//! be killed by a signal to its starter's process group, it tracks files by identity (a name
//! re-created by someone else is never unlinked for the old creator, and an unlink withdraws
//! only its own file's registration), and it never silently drops a registration.
//! Every test prints its seed where it uses one; rerun with `MULTIPROC_SEED=<seed>`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Reaper, Rng, WAIT};
use multiproc::{JoinError, StartMethod, shared::SharedMemory};

/// Whether a create failed because the name exists.
fn already_exists(e: &multiproc::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists)
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{name}")).exists()
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped by its new parent).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

/// SIGKILLs the tracker `pid` and waits until it is dead.
fn kill_tracker(pid: u32) {
    // SAFETY: kill has no memory preconditions; `pid` is the tracker (a process of our own
    // test, reported by `resource_tracker_pid`).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert!(
        common::eventually(WAIT, || dead(pid)),
        "tracker {pid} survived SIGKILL"
    );
}

/// Removes whatever names a failed test left behind.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in common::shm_names(&self.0) {
            let _ = std::fs::remove_file(format!("/dev/shm/{n}"));
        }
    }
}

/// A child that creates `prefix0..prefixN`, keeps them, and sleeps until killed.
fn holder(prefix: String, count: usize) -> multiproc::JoinHandle<()> {
    multiproc::spawn_with_args(
        |(prefix, count): (String, usize)| {
            let mut keep = Vec::new();
            for j in 0..count {
                keep.push(SharedMemory::create_named(&format!("{prefix}{j}"), 4096).unwrap());
            }
            std::thread::sleep(WAIT * 3);
        },
        (prefix, count),
    )
    .unwrap()
}

start_method_matrix! {
    /// Item 9: after the tracker is SIGKILLed, `SharedMemory::create` works again (a new
    /// tracker), and a SIGKILLed creator's names are still unlinked.
    #[test]
    fn create_works_after_the_tracker_is_killed() {
        let _r = Reaper::new();
        let prefix = format!("mptrk-{}-restart-", std::process::id());
        let _c = Cleanup(prefix.clone());
        let first = SharedMemory::create_named(&format!("{prefix}first"), 64).unwrap();
        let old = multiproc::resource_tracker_pid().expect("create started a tracker");
        kill_tracker(old);
        let second = SharedMemory::create_named(&format!("{prefix}second"), 64)
            .expect("create after the tracker died");
        let new = multiproc::resource_tracker_pid().expect("a tracker");
        assert_ne!(new, old, "the tracker was not restarted");
        assert!(!dead(new));
        first.unlink().unwrap();
        second.unlink().unwrap();
        // A creator (sharing the new tracker under fork, with its own otherwise) is killed:
        // its names go.
        let mut c = holder(prefix.clone(), 3);
        assert!(common::eventually(WAIT, || common::shm_names(&prefix).len() == 3));
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        assert!(
            common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
            "leaked after the tracker restart: {:?}",
            common::shm_names(&prefix)
        );
    }

    /// Item 9: a process whose tracker died re-registers the names it still owns with the new
    /// tracker: when it is SIGKILLed, the names it created before the death are unlinked too.
    #[test]
    fn names_created_before_a_tracker_death_stay_protected() {
        let _r = Reaper::new();
        let prefix = format!("mptrk-{}-rereg-", std::process::id());
        let _c = Cleanup(prefix.clone());
        let mut c = multiproc::spawn_with_args(
            |prefix: String| {
                let before = SharedMemory::create_named(&format!("{prefix}before"), 64).unwrap();
                let old = multiproc::resource_tracker_pid().unwrap();
                kill_tracker(old);
                // Made after the death: proves this process noticed and re-registered.
                let after = SharedMemory::create_named(&format!("{prefix}after"), 64).unwrap();
                assert_ne!(multiproc::resource_tracker_pid(), Some(old));
                std::mem::forget((before, after));
                std::thread::sleep(WAIT * 3);
            },
            prefix.clone(),
        )
        .unwrap();
        assert!(
            common::eventually(WAIT, || exists(&format!("{prefix}after"))),
            "the child could not create after its tracker died"
        );
        assert!(exists(&format!("{prefix}before")));
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        assert!(
            common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
            "left behind by the killed creator: {:?}",
            common::shm_names(&prefix)
        );
    }

    /// Item 10: a SIGTERM or SIGINT to the process group right after the first
    /// `SharedMemory::create` (which starts the tracker) does not kill the tracker: the killed
    /// creator's name is still unlinked, every time. The child leads its own process group,
    /// so the test harness is not signalled.
    #[test]
    fn group_signal_right_after_the_first_create_spares_the_tracker() {
        let _r = Reaper::new();
        let prefix = format!("mptrk-{}-pgrp-", std::process::id());
        let _c = Cleanup(prefix.clone());
        const TRIALS: usize = 20;
        for k in 0..TRIALS {
            let name = format!("{prefix}{k}");
            let sig = if k % 2 == 0 { libc::SIGTERM } else { libc::SIGINT };
            let mut c = multiproc::spawn_with_args(
                |(name, sig): (String, i32)| {
                    // SAFETY: setpgid and killpg take plain integers; this process becomes the
                    // leader of a group of its own and signals only that group.
                    unsafe {
                        assert_eq!(libc::setpgid(0, 0), 0);
                        // The signal's default action: terminate (SIGINT too).
                        libc::signal(sig, libc::SIG_DFL);
                    }
                    let shm = SharedMemory::create_named(&name, 64).unwrap();
                    std::mem::forget(shm);
                    // SAFETY: as above.
                    unsafe { libc::killpg(0, sig) };
                    std::thread::sleep(WAIT);
                },
                (name.clone(), sig),
            )
            .unwrap();
            match c.join_timeout(WAIT) {
                Err(JoinError::Signal(s)) if s == sig => {}
                other => panic!("trial {k}: the child was not ended by its signal: {other:?}"),
            }
            assert!(
                common::eventually(WAIT, || !exists(&name)),
                "trial {k}: signal {sig} to the group killed the tracker: {name} leaked"
            );
        }
    }

    /// Item 18 (b): a dead creator's name that was unlinked and re-created by another process
    /// meanwhile is left alone: the new segment keeps its name.
    #[test]
    fn dead_creator_leaves_a_recreated_name_alone() {
        let _r = Reaper::new();
        let prefix = format!("mptrk-{}-recreate-", std::process::id());
        let _c = Cleanup(prefix.clone());
        let name = format!("{prefix}0");
        // The creator records its tracker's pid in the segment.
        let mut c = multiproc::spawn_with_args(
            |name: String| {
                let shm = SharedMemory::create_named(&name, 64).unwrap();
                let pid = multiproc::resource_tracker_pid().unwrap();
                shm.write(0, &pid.to_le_bytes()).unwrap();
                shm.write(4, &[1]).unwrap();
                std::mem::forget(shm);
                std::thread::sleep(WAIT * 3);
            },
            name.clone(),
        )
        .unwrap();
        let mut tracker = None;
        assert!(common::eventually(WAIT, || {
            let Ok(s) = SharedMemory::open(&name) else { return false };
            let mut b = [0u8; 5];
            s.read(0, &mut b).unwrap();
            tracker = (b[4] == 1).then(|| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            tracker.is_some()
        }));
        let tracker = tracker.unwrap();
        // Someone unlinks it by name and makes a new segment of the same name.
        SharedMemory::open(&name).unwrap().unlink().unwrap();
        let mine = SharedMemory::create_named(&name, 64).unwrap();
        let ino = std::fs::metadata(format!("/dev/shm/{name}")).unwrap().ino();
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        // Wait until the creator's tracker has dealt with its death (under fork it is this
        // process's tracker only if this process had one first; here it does not).
        if Some(tracker) != multiproc::resource_tracker_pid() {
            assert!(common::eventually(WAIT, || dead(tracker)), "the creator's tracker lingers");
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        let now = std::fs::metadata(format!("/dev/shm/{name}"));
        assert!(
            now.as_ref().is_ok_and(|m| m.ino() == ino),
            "the re-created segment lost its name to the dead creator's tracker"
        );
        mine.unlink().unwrap();
    }

    /// Item 18 (d): 300 live names of one creator (more than the old 256-slot table) are all
    /// unlinked after its SIGKILL.
    #[test]
    fn three_hundred_names_of_a_killed_creator_are_unlinked() {
        let _r = Reaper::new();
        let prefix = format!("mptrk-{}-many-", std::process::id());
        let _c = Cleanup(prefix.clone());
        let mut c = holder(prefix.clone(), 300);
        assert!(
            common::eventually(WAIT, || common::shm_names(&prefix).len() == 300),
            "the creator made {} of 300",
            common::shm_names(&prefix).len()
        );
        // Give the tracker time to read all 300 registrations before the kill (a tracker
        // that lags behind would see the creator dead already and unlink at once, which
        // would hide a dropped registration).
        std::thread::sleep(Duration::from_millis(300));
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        assert!(
            common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
            "{} of 300 names leaked after the creator's SIGKILL",
            common::shm_names(&prefix).len()
        );
    }
}

/// Item 18 (d): past the tracker's limit a create fails with a clear error instead of
/// leaving the name unprotected; unlinking one makes room again (once the tracker has read
/// the unlink).
#[test]
fn creation_past_the_tracker_limit_is_refused() {
    if common::isolated(module_path!(), "creation_past_the_tracker_limit_is_refused") {
        return;
    }
    let prefix = format!("mptrk-{}-limit-", std::process::id());
    let _c = Cleanup(prefix.clone());
    let mut keep = Vec::new();
    let err = loop {
        match SharedMemory::create_named(&format!("{prefix}{}", keep.len()), 8) {
            Ok(s) => keep.push(s),
            Err(e) => break e,
        }
        assert!(keep.len() <= 100_000, "no limit at all");
    };
    assert_eq!(keep.len(), 4096, "the limit is the documented 4096");
    assert!(
        err.to_string().contains("resource tracker"),
        "unclear error: {err}"
    );
    assert!(
        !exists(&format!("{prefix}4096")),
        "a refused create left its name"
    );
    keep.pop().unwrap().unlink().unwrap();
    // The place comes back once the tracker has read the unlink (asynchronously).
    let mut again = None;
    assert!(
        common::eventually(WAIT, || {
            again = SharedMemory::create_named(&format!("{prefix}again"), 8).ok();
            again.is_some()
        }),
        "no room after an unlink"
    );
    again.unwrap().unlink().unwrap();
    for s in keep {
        s.unlink().unwrap();
    }
}

/// Item 18 (a): an unlink withdraws only its own file's registration. Here the test process
/// unlinks its segment while a `fork` child (sharing the tracker) spins to create the same
/// name; the child's registration, made between the unlink and its unregister, must survive,
/// so the child's names are unlinked after its SIGKILL.
#[test]
fn unlink_does_not_erase_a_new_creators_registration() {
    if common::isolated(
        module_path!(),
        "unlink_does_not_erase_a_new_creators_registration",
    ) {
        return;
    }
    let _r = Reaper::new();
    let prefix = format!("mptrk-{}-race-", std::process::id());
    let _c = Cleanup(prefix.clone());
    let fork = multiproc::get_context(StartMethod::Fork);
    const NAMES: usize = 100;
    for k in 0..NAMES {
        let name = format!("{prefix}{k}");
        let shm = SharedMemory::create_named(&name, 64).unwrap(); // the shared tracker
        let mut c = fork
            .spawn_with_args(
                |name: String| {
                    let shm = loop {
                        match SharedMemory::create_named(&name, 64) {
                            Ok(s) => break s,
                            Err(e) if already_exists(&e) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    };
                    std::mem::forget(shm);
                    std::thread::sleep(WAIT * 3);
                },
                name.clone(),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(5)); // let the child spin
        let ino = std::fs::metadata(format!("/dev/shm/{name}")).unwrap().ino();
        shm.unlink().unwrap();
        assert!(common::eventually(WAIT, || {
            std::fs::metadata(format!("/dev/shm/{name}")).is_ok_and(|m| m.ino() != ino)
        }));
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
    }
    assert!(
        common::eventually(WAIT, || common::shm_names(&prefix).is_empty()),
        "{} of {NAMES} names of killed creators leaked: {:?}",
        common::shm_names(&prefix).len(),
        common::shm_names(&prefix)
    );
}

/// Item 18 (c): two `fork` children (sharing the tracker) hand one name back and forth
/// (create, hold, unlink, again). One of them is SIGKILLed at a random point, the other is
/// then told to stop (it finishes its round, unlinking what it holds, and returns): the name
/// is gone afterwards, every time, and the survivor's own unlinks never failed (the tracker
/// never took its name).
#[test]
fn name_handed_back_and_forth_is_unlinked_after_kills() {
    if common::isolated(
        module_path!(),
        "name_handed_back_and_forth_is_unlinked_after_kills",
    ) {
        return;
    }
    let _r = Reaper::new();
    let mut rng = Rng::seeded("name_handed_back_and_forth_is_unlinked_after_kills");
    let prefix = format!("mptrk-{}-handoff-", std::process::id());
    let _c = Cleanup(prefix.clone());
    let stop = SharedMemory::create_named(&format!("{prefix}stop"), 8).unwrap(); // the shared tracker
    let fork = multiproc::get_context(StartMethod::Fork);
    const TRIALS: usize = 30;
    let mut held = 0;
    for k in 0..TRIALS {
        let name = format!("{prefix}{k}");
        stop.write(0, &[0]).unwrap();
        let player = || {
            fork.spawn_with_args(
                |(name, stop): (String, String)| {
                    let stop = SharedMemory::open(&stop).unwrap();
                    let mut flag = [0u8];
                    loop {
                        stop.read(0, &mut flag).unwrap();
                        if flag[0] == 1 {
                            return;
                        }
                        match SharedMemory::create_named(&name, 64) {
                            Ok(s) => {
                                std::thread::sleep(Duration::from_micros(200));
                                s.unlink().expect("someone took the name of a live holder");
                            }
                            Err(e) if already_exists(&e) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                },
                (name.clone(), format!("{prefix}stop")),
            )
            .unwrap()
        };
        let mut pair = [player(), player()];
        std::thread::sleep(Duration::from_micros(2000 + rng.below(20_000)));
        let victim = rng.below(2) as usize;
        held += usize::from(exists(&name));
        pair[victim].kill().unwrap();
        let _ = pair[victim].join_timeout(WAIT);
        stop.write(0, &[1]).unwrap();
        pair[1 - victim]
            .join_timeout(WAIT)
            .unwrap_or_else(|e| panic!("trial {k}: the surviving holder failed: {e}"));
        assert!(
            common::eventually(WAIT, || !exists(&name)),
            "trial {k}: {name} left in /dev/shm after its holder was killed"
        );
    }
    stop.unlink().unwrap();
    eprintln!("{TRIALS} trials, the name existed just before {held} of the kills");
    assert!(
        held > 0,
        "no kill came while the name was held: the test tests nothing"
    );
}
