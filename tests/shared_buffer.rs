//! `SharedSlice` / `SharedBuffer` (issue 17): a buffer filled in place, handed to another
//! process through a Connection, a Queue or a Pool task, and read there in place; the memory
//! is freed when the last holder drops it or dies; forged handles are clear errors.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Reaper, WAIT};
use multiproc::shared::{SharedBuffer, SharedSlice};
use multiproc::{Connection, Pool, Queue};
use serde::{Deserialize, Serialize};

/// The bytes `pattern(seed)` fills a buffer with, so that both sides can check every byte.
fn fill(buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
}

fn check(buf: &[u8], seed: u8) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u8).wrapping_mul(31).wrapping_add(seed))
}

const LEN: usize = (1 << 20) + 123;

/// Child: receives a buffer, checks it, answers with one of its own filled with `seed + 1`,
/// then waits for the parent's word that it decoded it (the sender must be running then).
fn echo_child(conn: Connection) -> bool {
    let got: SharedBuffer = conn.recv().unwrap();
    let ok = got.len() == LEN && check(&got, 5);
    let mut mine = SharedBuffer::new(LEN).unwrap();
    fill(mine.get_mut().unwrap(), 6);
    conn.send(&mine).unwrap();
    drop(mine);
    let _done: u8 = conn.recv().unwrap();
    ok
}

fn queue_child((q, back): (Queue<SharedSlice<u64>>, Queue<u64>)) {
    let got = q.get_timeout(WAIT).unwrap();
    back.put(got.iter().sum()).unwrap();
}

/// Child: holds a received buffer until killed.
fn holder_child(conn: Connection) {
    let held: SharedBuffer = conn.recv().unwrap();
    conn.send(&(held.len() as u64)).unwrap();
    std::thread::sleep(WAIT * 6);
    drop(held);
}

/// Whether a `/proc` path names a shared buffer's memory: a memfd on the Linux layer, an
/// unlinked `shm_open` object (`/dev/shm/mp-...`) on the portable one.
fn is_buffer_memory(path: &str) -> bool {
    path.contains("memfd:multiproc-buffer") || path.contains("/dev/shm/mp-")
}

/// Every (pid, how) holding the file with inode `ino` open or mapped, among the processes
/// this user can see.
fn holders(ino: u64) -> Vec<(u32, &'static str)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == ino)
                    && fd
                        .path()
                        .read_link()
                        .is_ok_and(|l| is_buffer_memory(&l.to_string_lossy()))
                {
                    out.push((pid, "fd"));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            && maps.lines().any(|l| {
                is_buffer_memory(l) && l.split_whitespace().nth(4) == Some(&ino.to_string())
            })
        {
            out.push((pid, "map"));
        }
    }
    out
}

fn inode_of(buf: &SharedBuffer) -> u64 {
    // The buffer's mapping in this process names the memfd; its inode is in /proc/self/maps.
    let addr = buf.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            return f.nth(3).unwrap().parse().unwrap();
        }
    }
    panic!("buffer not mapped");
}

fn chunk_sum(part: SharedSlice<u64>) -> u64 {
    part.iter().sum()
}

fn make_in_worker(n: usize) -> SharedSlice<u32> {
    let mut s = SharedSlice::new(n).unwrap();
    for (i, x) in s.get_mut().unwrap().iter_mut().enumerate() {
        *x = i as u32 * 3;
    }
    s
}

start_method_matrix! {
    #[test]
    fn round_trip_through_a_connection() {
        let _r = Reaper::new();
        let (a, b) = multiproc::pipe(true).unwrap();
        let mut buf = SharedBuffer::new(LEN).unwrap();
        fill(buf.get_mut().unwrap(), 5);
        let child = multiproc::spawn_with_args(echo_child, b).unwrap();
        a.send(&buf).unwrap();
        assert!(!buf.is_writable(), "sent: frozen");
        let back: SharedBuffer = a.recv_timeout(WAIT).unwrap();
        assert!(back.len() == LEN && check(&back, 6), "the child's buffer arrived whole");
        a.send(&0u8).unwrap();
        let mut child = child;
        assert!(child.join_timeout(WAIT).unwrap(), "the child read the parent's buffer");
        // The child has exited: the received mapping stays valid.
        assert!(check(&back, 6));
    }

    #[test]
    fn round_trip_through_a_queue() {
        let _r = Reaper::new();
        let q = Queue::new().unwrap();
        let back = Queue::new().unwrap();
        let child = multiproc::spawn_with_args(queue_child, (q.clone(), back.clone())).unwrap();
        let data: Vec<u64> = (0..1_000_000).collect();
        q.put(SharedSlice::from_slice(&data).unwrap()).unwrap();
        assert_eq!(back.get_timeout(WAIT).unwrap(), data.iter().sum::<u64>());
        let mut child = child;
        child.join_timeout(WAIT).unwrap();
    }

    #[test]
    fn pool_map_over_chunks_and_results() {
        let _r = Reaper::new();
        let pool = Pool::new(2).unwrap();
        let mut big = SharedSlice::<u64>::new(1 << 20).unwrap();
        for (i, x) in big.get_mut().unwrap().iter_mut().enumerate() {
            *x = i as u64;
        }
        let parts = big.chunks(100_000).unwrap();
        assert_eq!(parts.len(), 11);
        let sums = pool.map(chunk_sum, parts.clone()).unwrap();
        let want: Vec<u64> = parts.iter().map(|p| p.iter().sum()).collect();
        assert_eq!(sums, want);
        assert_eq!(sums.iter().sum::<u64>(), (0..1u64 << 20).sum::<u64>());
        // A single task's argument, and a buffer made in a worker as its value.
        assert_eq!(pool.apply(chunk_sum, big.slice(10..20).unwrap()).unwrap(), (10..20).sum());
        let made = pool.apply(make_in_worker, 5000).unwrap();
        assert_eq!(made.len(), 5000);
        assert!(made.iter().enumerate().all(|(i, &x)| x == i as u32 * 3));
        assert!(!made.is_writable());
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn memory_is_freed_when_its_last_holder_is_killed() {
        let _r = Reaper::new();
        let (a, b) = multiproc::pipe(true).unwrap();
        let mut buf = SharedBuffer::new(4 << 20).unwrap();
        fill(buf.get_mut().unwrap(), 1);
        let ino = inode_of(&buf);
        let me = std::process::id();
        assert!(holders(ino).contains(&(me, "map")));
        let child = multiproc::spawn_with_args(holder_child, b).unwrap();
        a.send(&buf).unwrap();
        assert_eq!(a.recv_timeout::<u64>(WAIT).unwrap(), 4 << 20);
        drop(buf);
        let pid = child.pid();
        let held = holders(ino);
        assert!(held.iter().all(|&(p, _)| p == pid), "only the child holds it: {held:?}");
        assert!(held.contains(&(pid, "map")), "{held:?}");
        child.kill().unwrap();
        let mut child = child;
        assert!(child.join_timeout(WAIT).is_err(), "killed");
        assert!(
            common::eventually(WAIT, || holders(ino).is_empty()),
            "nobody holds the memory after its last holder was killed: {:?}",
            holders(ino)
        );
    }
}

/// The wire form of a handle, mirrored to forge one.
#[derive(Serialize, Deserialize, Debug)]
enum FdRef {
    Index(u32),
    Shared((Vec<u8>, [u8; 16])),
}

type Forged = (FdRef, u32, u64, u64);

#[test]
fn forged_and_garbage_handles_are_clear_errors() {
    let (a, b) = multiproc::pipe(true).unwrap();
    // Garbage bytes.
    a.send_bytes(&[1, 2, 3, 255, 255, 255]).unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("not a valid value"), "{e}");
    // A real handle, read as its wire form: the sharer's name and a ticket.
    let buf = SharedBuffer::from_slice(b"hello").unwrap();
    a.send(&buf).unwrap();
    let (FdRef::Shared((name, ticket)), 1, 0, 5) = b.recv::<Forged>().unwrap() else {
        panic!("unexpected wire form");
    };
    // A ticket nobody issued.
    let mut wrong = ticket;
    wrong[0] ^= 1;
    a.send(&(FdRef::Shared((name.clone(), wrong)), 1u32, 0u64, 5u64))
        .unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("already received once"), "{e}");
    // The real ticket works once, and only for a slice inside the memory.
    a.send(&(FdRef::Shared((name.clone(), ticket)), 1u32, 3u64, 5u64))
        .unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("outside its"), "{e}");
    a.send(&(FdRef::Shared((name.clone(), ticket)), 1u32, 0u64, 5u64))
        .unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("already received once"), "{e}");
    // No such sharer.
    a.send(&(
        FdRef::Shared((b"multiproc-share-nobody".to_vec(), ticket)),
        1u32,
        0u64,
        5u64,
    ))
    .unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("could not reach the process"), "{e}");
    // An index outside start arguments.
    a.send(&(FdRef::Index(0), 1u32, 0u64, 5u64)).unwrap();
    let e = b.recv::<SharedBuffer>().unwrap_err();
    assert!(e.to_string().contains("descriptor 0 missing"), "{e}");
    // The link is still in step.
    a.send(&buf).unwrap();
    assert_eq!(&b.recv::<SharedBuffer>().unwrap()[..], b"hello");
    // The wrong element type.
    a.send(&SharedSlice::<u32>::new(2).unwrap()).unwrap();
    let e = b.recv::<SharedSlice<u64>>().unwrap_err();
    assert!(e.to_string().contains("4 bytes, not 8"), "{e}");
}
