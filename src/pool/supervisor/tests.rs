//! The supervisor against scripted workers ([`MockLink`]), for the orderings a real process
//! cannot be made to produce on demand: a reply written between the time-limit check and
//! the kill, a worker that outlives its SIGKILL, workers that die as soon as they are
//! ready.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::mpsc;

use super::shutdown::SIGKILL;
use super::time_limits::KILL_GRACE;
use super::*;
use crate::error::Result;
use crate::pool::error::WorkerExit;
use crate::pool::transport::{FromWorker, Reply};

/// What a scripted worker does with a task, by its payload's first byte (the second is
/// the task's tag, which stays the same when the task is requeued).
const QUICK: u8 = 0;
/// Runs until killed, and writes its reply just before the kill takes effect; then the
/// next queued task starts and is killed running.
const RACES_THE_KILL: u8 = 1;
/// Runs until killed, never answers.
const SLOW: u8 = 2;
/// Runs until killed, and its worker survives the first kill (as in an uninterruptible
/// wait), dying only at the second.
const UNDYING: u8 = 3;

#[derive(Default)]
struct World {
    /// Tags of the tasks started, in order, over every worker.
    started: Vec<u8>,
    launches: usize,
    /// Workers die as soon as they said `Ready`.
    die_when_ready: bool,
}

struct Script {
    queue: VecDeque<(u64, Vec<u8>)>,
    running: Option<(u64, Vec<u8>)>,
    out: Vec<FromWorker>,
    dead: bool,
    kills: u32,
}

struct MockLink {
    pid: u32,
    world: Arc<Mutex<World>>,
    script: Mutex<Script>,
    reply: (OwnedFd, OwnedFd),
    task: (OwnedFd, OwnedFd),
    death: (OwnedFd, OwnedFd),
}

impl MockLink {
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    /// Runs the queued tasks in order as far as they go, as a worker does.
    fn advance(&self, s: &mut Script) {
        while !s.dead {
            if s.running.is_none() {
                let Some(task) = s.queue.pop_front() else {
                    break;
                };
                self.world.lock().unwrap().started.push(task.1[1]);
                s.running = Some(task);
            }
            let (id, payload) = s.running.as_ref().expect("set above");
            if payload[0] != QUICK {
                break;
            }
            s.out.push(FromWorker::Reply {
                id: *id,
                reply: Reply::Value(payload.clone()),
            });
            s.running = None;
        }
        if !s.out.is_empty() {
            let _ = sys::write_some(self.reply.1.as_fd(), &[1]);
        }
    }
}

impl Link for MockLink {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn send_task(&mut self, id: u64, _entry: i64, payload: &[u8]) {
        let mut s = self.script.lock().unwrap();
        s.queue.push_back((id, payload.to_vec()));
        self.advance(&mut s);
    }
    fn send_exit(&mut self) {}
    fn send_revoke(&mut self, ids: &[u64]) {
        // As a worker's reader thread: give back those not started, answering at once.
        let mut s = self.lock();
        let back: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| s.queue.iter().any(|(x, _)| x == id))
            .collect();
        s.queue.retain(|(x, _)| !back.contains(x));
        s.out.push(FromWorker::Revoked(back));
        let _ = sys::write_some(self.reply.1.as_fd(), &[1]);
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn wants_write(&self) -> bool {
        false
    }
    fn poll_set(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.reply.0.as_fd(),
            self.task.1.as_fd(),
            self.death.0.as_fd(),
        ]
    }
    fn receive(&mut self, out: &mut Vec<FromWorker>) -> Result<bool> {
        let mut buf = [0u8; 64];
        while matches!(sys::read(self.reply.0.as_fd(), &mut buf), Ok(n) if n > 0) {}
        out.append(&mut self.lock().out);
        Ok(false)
    }
    fn exitcode(&mut self) -> io::Result<Option<i32>> {
        Ok(self.lock().dead.then_some(-SIGKILL))
    }
    fn kill(&self) {
        let mut s = self.lock();
        s.kills += 1;
        if s.dead {
            return;
        }
        match s.running.as_ref().map(|(_, p)| p[0]) {
            Some(UNDYING) if s.kills == 1 => return,
            Some(RACES_THE_KILL) => {
                let (id, payload) = s.running.take().expect("matched above");
                s.out.push(FromWorker::Reply {
                    id,
                    reply: Reply::Value(payload),
                });
                // It went on to the next task before the signal took effect.
                if let Some(next) = s.queue.pop_front() {
                    self.world.lock().unwrap().started.push(next.1[1]);
                    s.running = Some(next);
                }
            }
            _ => {}
        }
        s.dead = true;
        let _ = sys::write_some(self.death.1.as_fd(), &[1]);
        if !s.out.is_empty() {
            let _ = sys::write_some(self.reply.1.as_fd(), &[1]);
        }
    }
}

struct MockLauncher(Arc<Mutex<World>>);

impl Launcher for MockLauncher {
    fn launch(&self, _spec: &WorkerSpec) -> Result<Box<dyn Link>> {
        let (pid, die) = {
            let mut world = self.0.lock().unwrap();
            world.launches += 1;
            (world.launches as u32, world.die_when_ready)
        };
        let link = MockLink {
            pid,
            world: Arc::clone(&self.0),
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                running: None,
                out: vec![FromWorker::Ready],
                dead: die,
                kills: 0,
            }),
            reply: sys::pipe_nonblocking(true, true)?,
            task: sys::pipe_nonblocking(true, true)?,
            death: sys::pipe_nonblocking(true, true)?,
        };
        let _ = sys::write_some(link.reply.1.as_fd(), &[1]);
        if die {
            let _ = sys::write_some(link.death.1.as_fd(), &[1]);
        }
        Ok(Box::new(link))
    }
}

type Outcome = (u8, std::result::Result<Vec<u8>, TaskError>);

struct Probe {
    tag: u8,
    tx: mpsc::Sender<Outcome>,
    key: Option<u64>,
}

impl Sink for Probe {
    fn key(&self) -> Option<u64> {
        self.key
    }

    fn finish(self: Box<Self>, outcome: std::result::Result<Vec<u8>, TaskError>) {
        let _ = self.tx.send((self.tag, outcome));
    }
}

fn job(kind: u8, tag: u8, tx: &mpsc::Sender<Outcome>) -> Job {
    Job {
        entry: 0,
        payload: vec![kind, tag],
        sink: Box::new(Probe {
            tag,
            tx: tx.clone(),
            key: None,
        }),
        limit: None,
        failed_runs: 0,
        deaths: 0,
    }
}

fn start(world: &Arc<Mutex<World>>, limit: Option<Duration>) -> Core {
    let config = Config {
        queue_ahead: super::tasks::QUEUE_AHEAD,
        retries: 0,
        max_deaths: None,
        retry_panics: false,
        processes: 1,
        spec: WorkerSpec {
            name: "Mock".to_owned(),
            method: None,
            initializer: None,
            max_tasks: None,
            placements: Vec::new(),
            slot: 0,
            output: crate::process::Output::Inherit,
            forward_tracing: false,
        },
        max_memory: None,
        memory_limit: None,
        task_timeout: limit,
    };
    Core::start(config, Box::new(MockLauncher(Arc::clone(world)))).unwrap()
}

/// Collects `n` outcomes by tag (bounded).
fn outcomes(rx: &mpsc::Receiver<Outcome>, n: usize) -> Vec<Outcome> {
    let mut got: Vec<Outcome> = (0..n)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(10)).ok())
        .collect();
    got.sort_by_key(|(tag, _)| *tag);
    got
}

/// Quick tasks first: the supervisor learns to queue several per worker.
fn warm_up(core: &Core, tx: &mpsc::Sender<Outcome>, rx: &mpsc::Receiver<Outcome>) {
    for tag in 0..50 {
        assert!(core.submit(job(QUICK, tag, tx)).is_ok());
        assert!(matches!(outcomes(rx, 1)[..], [(_, Ok(_))]));
    }
}

fn started_once(world: &Arc<Mutex<World>>, tags: &[u8]) {
    let started = &world.lock().unwrap().started;
    for tag in tags {
        let n = started.iter().filter(|t| *t == tag).count();
        assert!(n <= 1, "task {tag} started {n} times: {started:?}");
    }
}

#[test]
fn a_reply_that_beats_the_time_limit_kill_is_honoured_and_nothing_runs_twice() {
    let world = Arc::new(Mutex::new(World::default()));
    let core = start(&world, Some(Duration::from_millis(100)));
    let (tx, rx) = mpsc::channel();
    warm_up(&core, &tx, &rx);
    let batch = vec![
        job(RACES_THE_KILL, 100, &tx),
        job(SLOW, 101, &tx),
        job(QUICK, 102, &tx),
    ];
    assert!(core.submit_all(batch).is_ok());
    let got = outcomes(&rx, 3);
    started_once(&world, &[100, 101, 102]);
    assert_eq!(got.len(), 3, "{got:?}");
    // Its reply came before the kill took effect: it counts.
    assert!(
        matches!(&got[0], (100, Ok(v)) if v == &[RACES_THE_KILL, 100]),
        "{got:?}"
    );
    // The next task had started when the kill landed: it fails, and is not run again.
    assert!(
        matches!(
            got[1],
            (
                101,
                Err(TaskError::WorkerDied {
                    how: WorkerExit::Signal(SIGKILL)
                })
            )
        ),
        "{got:?}"
    );
    // The one behind it never started, and ran on the replacement.
    assert!(matches!(got[2], (102, Ok(_))), "{got:?}");
}

#[test]
fn a_task_over_its_limit_fails_alone_and_those_behind_it_run_once() {
    let world = Arc::new(Mutex::new(World::default()));
    let core = start(&world, Some(Duration::from_millis(100)));
    let (tx, rx) = mpsc::channel();
    warm_up(&core, &tx, &rx);
    let batch = vec![
        job(SLOW, 100, &tx),
        job(QUICK, 101, &tx),
        job(QUICK, 102, &tx),
    ];
    assert!(core.submit_all(batch).is_ok());
    let got = outcomes(&rx, 3);
    started_once(&world, &[100, 101, 102]);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        matches!(got[0], (100, Err(TaskError::TimeLimit { limit })) if limit == Duration::from_millis(100)),
        "{got:?}"
    );
    assert!(matches!(got[1], (101, Ok(_))), "{got:?}");
    assert!(matches!(got[2], (102, Ok(_))), "{got:?}");
}

#[test]
fn a_worker_that_outlives_its_kill_does_not_hold_its_tasks() {
    let world = Arc::new(Mutex::new(World::default()));
    let core = start(&world, Some(Duration::from_millis(100)));
    let (tx, rx) = mpsc::channel();
    warm_up(&core, &tx, &rx);
    let t0 = Instant::now();
    assert!(
        core.submit_all(vec![job(UNDYING, 100, &tx), job(QUICK, 101, &tx)])
            .is_ok()
    );
    let got = outcomes(&rx, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(got[0], (100, Err(TaskError::TimeLimit { .. }))),
        "{got:?}"
    );
    assert!(matches!(got[1], (101, Ok(_))), "{got:?}");
    // Settled after the grace, not at the worker's death (which comes with the pool's).
    assert!(t0.elapsed() >= KILL_GRACE, "{:?}", t0.elapsed());
    started_once(&world, &[100, 101]);
    drop(core);
}

#[test]
fn workers_that_die_idle_are_replaced_ever_more_slowly() {
    // Every worker dies as soon as it is ready, with no task to fail.
    let world = Arc::new(Mutex::new(World {
        die_when_ready: true,
        ..World::default()
    }));
    let core = start(&world, None);
    std::thread::sleep(Duration::from_secs(1));
    // Without a brake this is thousands (a replacement per loop); with it, about ten.
    let launches = world.lock().unwrap().launches;
    assert!(launches < 40, "{launches} launches in a second");
    // A task submitted meanwhile still ends (its worker dies under it).
    let (tx, rx) = mpsc::channel();
    assert!(core.submit(job(QUICK, 1, &tx)).is_ok());
    let got = outcomes(&rx, 1);
    assert!(
        matches!(
            got[..],
            [(1, Ok(_)) | (1, Err(TaskError::WorkerDied { .. }))]
        ),
        "{got:?}"
    );
    drop(core);
}

/// A job a caller can cancel by `key`.
fn keyed(kind: u8, tag: u8, key: u64, tx: &mpsc::Sender<Outcome>) -> Job {
    let mut job = job(kind, tag, tx);
    job.sink = Box::new(Probe {
        tag,
        tx: tx.clone(),
        key: Some(key),
    });
    job
}

fn wait_started(world: &Arc<Mutex<World>>, tag: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world.lock().unwrap().started.contains(&tag) {
        assert!(Instant::now() < deadline, "task {tag} never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_reply_that_beats_the_cancel_kill_keeps_its_value_and_harms_no_other_task() {
    let world = Arc::new(Mutex::new(World::default()));
    let core = start(&world, None);
    let (tx, rx) = mpsc::channel();
    warm_up(&core, &tx, &rx);
    let key = super::new_key();
    // Quick tasks are queued behind it on the worker: they are taken back before the kill,
    // so the worker cannot go on to one of them when the reply races the kill.
    let batch = vec![
        keyed(RACES_THE_KILL, 100, key, &tx),
        job(QUICK, 101, &tx),
        job(QUICK, 102, &tx),
    ];
    assert!(core.submit_all(batch).is_ok());
    wait_started(&world, 100);
    core.cancel_handle().request([key], true);
    let got = outcomes(&rx, 3);
    started_once(&world, &[100, 101, 102]);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        matches!(&got[0], (100, Ok(v)) if v == &[RACES_THE_KILL, 100]),
        "{got:?}"
    );
    assert!(matches!(got[1], (101, Ok(_))), "{got:?}");
    assert!(matches!(got[2], (102, Ok(_))), "{got:?}");
    assert_eq!(
        world.lock().unwrap().launches,
        2,
        "the worker was replaced once"
    );
}

#[test]
fn cancels_of_a_queued_and_a_running_task_on_one_worker_spare_the_others() {
    let world = Arc::new(Mutex::new(World::default()));
    let core = start(&world, None);
    let (tx, rx) = mpsc::channel();
    warm_up(&core, &tx, &rx);
    let (slow, queued) = (super::new_key(), super::new_key());
    let batch = vec![
        keyed(SLOW, 100, slow, &tx),
        keyed(QUICK, 101, queued, &tx),
        job(QUICK, 102, &tx),
    ];
    assert!(core.submit_all(batch).is_ok());
    wait_started(&world, 100);
    // Queued behind the slow task on its worker: taken back and cancelled, never started.
    core.cancel_handle().request([queued], true);
    let got = outcomes(&rx, 1);
    assert!(
        matches!(got[..], [(101, Err(TaskError::Cancelled))]),
        "{got:?}"
    );
    // The running one: its worker is killed, the task behind it runs on the replacement.
    core.cancel_handle().request([slow], true);
    let got = outcomes(&rx, 2);
    assert!(
        matches!(got[0], (100, Err(TaskError::Cancelled))),
        "{got:?}"
    );
    assert!(matches!(got[1], (102, Ok(_))), "{got:?}");
    let started = world.lock().unwrap().started.clone();
    assert!(!started.contains(&101), "{started:?}");
    started_once(&world, &[100, 102]);
    // A stale request (the task is gone) changes nothing.
    core.cancel_handle().request([slow, queued], true);
    assert!(core.submit(job(QUICK, 103, &tx)).is_ok());
    assert!(matches!(outcomes(&rx, 1)[..], [(103, Ok(_))]));
    assert_eq!(world.lock().unwrap().launches, 2);
}
