//! `SharedMemoryManager`: the segments it creates are unlinked when it shuts down or is
//! dropped, also in a child that returns or panics, and by the resource tracker when the
//! process holding it is SIGKILLed; nothing is left in /dev/shm.

mod common;

use common::{Reaper, WAIT};
use multiproc::manager::SharedMemoryManager;
use multiproc::shared::SharedMemory;

/// Named segments in `/dev/shm` whose names start with `prefix`.
fn shm_names(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes whatever names a failed test left behind.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in shm_names(&self.0) {
            let _ = std::fs::remove_file(format!("/dev/shm/{n}"));
        }
    }
}

fn prefix(test: &str) -> String {
    format!("mpsmm-{}-{test}-", std::process::id())
}

/// A child that makes a manager with `count` segments, writes its pid in each, then either
/// sleeps until killed (`how == 0`), returns (1) or panics (2).
fn holder((prefix, count, how): (String, usize, u8)) {
    let smm = SharedMemoryManager::new();
    for j in 0..count {
        let shm = smm
            .shared_memory_named(&format!("{prefix}{j}"), 4096)
            .unwrap();
        shm.write(0, &std::process::id().to_ne_bytes()).unwrap();
    }
    match how {
        0 => std::thread::sleep(WAIT * 3),
        1 => {}
        _ => panic!("the holder panics on purpose"),
    }
}

start_method_matrix! {
    /// Segments are usable from a child, and `shutdown` unlinks all of them; `Drop` too.
    #[test]
    fn shutdown_and_drop_unlink_every_segment() {
        let _r = Reaper::new();
        let prefix = prefix("shutdown");
        let _c = Cleanup(prefix.clone());
        let smm = SharedMemoryManager::new();
        let a = smm.shared_memory_named(&format!("{prefix}a"), 64).unwrap();
        let b = smm.shared_memory(128).unwrap();
        a.write(0, b"from the parent").unwrap();
        let mut child = multiproc::spawn_with_args(
            |(a, b_name): (SharedMemory, String)| {
                let b = SharedMemory::open(&b_name).unwrap();
                let mut buf = [0u8; 15];
                a.read(0, &mut buf).unwrap();
                b.write(0, &buf).unwrap();
            },
            (a.clone(), b.name().to_string()),
        )
        .unwrap();
        child.join_timeout(WAIT).expect("child failed or hung");
        let mut buf = [0u8; 15];
        b.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"from the parent");
        assert_eq!(smm.names(), vec![a.name().to_string(), b.name().to_string()]);
        let b_name = b.name().to_string();
        // The user unlinked one already: shutdown skips it without an error.
        b.unlink().unwrap();
        smm.shutdown().unwrap();
        assert!(shm_names(&prefix).is_empty(), "left: {:?}", shm_names(&prefix));
        assert!(SharedMemory::open(&b_name).is_err());
        // Mappings outlive the names.
        a.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"from the parent");

        let smm = SharedMemoryManager::new();
        smm.shared_memory_named(&format!("{prefix}dropped"), 64).unwrap();
        assert_eq!(shm_names(&prefix).len(), 1);
        drop(smm);
        assert!(shm_names(&prefix).is_empty(), "left: {:?}", shm_names(&prefix));
    }

    /// A child whose manager ends with it (returning or panicking) leaves nothing behind.
    #[test]
    fn a_child_s_manager_unlinks_when_the_child_returns_or_panics() {
        let _r = Reaper::new();
        let prefix = prefix("child");
        let _c = Cleanup(prefix.clone());
        for how in [1u8, 2] {
            let mut c = multiproc::spawn_with_args(holder, (format!("{prefix}{how}-"), 3, how))
                .unwrap();
            let r = c.join_timeout(WAIT);
            assert_eq!(r.is_ok(), how == 1, "child result: {r:?}");
            assert!(
                common::eventually(WAIT, || shm_names(&prefix).is_empty()),
                "left after a child that {}: {:?}",
                if how == 1 { "returned" } else { "panicked" },
                shm_names(&prefix)
            );
        }
    }

    /// The process holding the manager is SIGKILLed: the resource tracker unlinks its
    /// segments, and /dev/shm holds none of them afterwards.
    #[test]
    fn a_sigkilled_holder_s_segments_are_unlinked() {
        let _r = Reaper::new();
        let prefix = prefix("killed");
        let _c = Cleanup(prefix.clone());
        let mut c = multiproc::spawn_with_args(holder, (prefix.clone(), 4, 0)).unwrap();
        assert!(
            common::eventually(WAIT, || shm_names(&prefix).len() == 4),
            "the holder made {:?}",
            shm_names(&prefix)
        );
        // Each segment holds the holder's pid: it is the holder's, not some leftover.
        let shm = SharedMemory::open(&format!("{prefix}3")).unwrap();
        let mut pid = [0u8; 4];
        assert!(common::eventually(WAIT, || {
            shm.read(0, &mut pid).unwrap();
            u32::from_ne_bytes(pid) != 0
        }));
        assert_eq!(u32::from_ne_bytes(pid), c.pid());
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        assert!(
            common::eventually(WAIT, || shm_names(&prefix).is_empty()),
            "left behind by the killed holder: {:?}",
            shm_names(&prefix)
        );
    }
}
