//! The server: objects in one table behind one lock, a thread per client connection.
//!
//! Every call on a built-in object runs under the table's lock, from reading the object to
//! storing its new value, so calls on one object are atomic with respect to each other;
//! `modify` runs the client's function inside that same section, which is why no
//! read-modify-write done with it loses an update. Users' objects (`#[remote]`) are the
//! exception: each has a read-write lock of its own, and their methods run outside the
//! table's lock (see `Shared::method`). Blocking calls (a lock's acquire, a queue's get, an
//! event's wait) wait on one condition variable, woken by every change to a blocking object,
//! and every 50 ms look whether their client is still there, so a client that died while
//! waiting neither takes a queue item nor acquires a lock that then nobody releases. Locks
//! held by a client whose connection closes (its thread or process ended, or it was killed)
//! are released.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::error::{ManagerError, RemoteError};
use super::modify;
use super::protocol::{Bytes, Func, Hello, Kind, Op, Reply, Request, Response, Welcome};
use crate::connection::{Address, ConnectError, Connection, HANDSHAKE_TIMEOUT, Listener};
use crate::process::AuthKey;

/// How often a blocked call looks whether its client is still connected.
const CLIENT_CHECK: Duration = Duration::from_millis(50);

/// A manager's server, for serving from a program of one's own: Python's
/// `BaseManager.get_server().serve_forever()`.
///
/// [`Manager::start`](super::Manager::start) runs one in a child process; run one yourself to
/// serve clients of other programs or machines, which reach it with
/// [`Manager::connect`](super::Manager::connect). Every client must hold the server's authkey.
///
/// # Examples
/// ```
/// use multiproc::manager::{Manager, Server};
/// use multiproc::process::AuthKey;
///
/// let key = AuthKey::from(b"shared secret".to_vec());
/// let server = Server::bind("127.0.0.1:0".parse::<std::net::SocketAddr>()?, key.clone())?;
/// let address = server.address().clone();
/// let serving = std::thread::spawn(move || server.serve_forever());
///
/// let mut remote = Manager::connect(&address, key)?;
/// let d = remote.dict::<String, u64>()?;
/// d.insert(&"answer".to_string(), &42)?;
/// assert_eq!(d.get(&"answer".to_string())?, Some(42));
/// remote.shutdown()?; // Only because this example must end; a server usually runs on.
/// serving.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    authkey: AuthKey,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nonce: u64,
    build: Option<(u64, u64, i64, i64)>,
    objects: Mutex<Objects>,
    changed: Condvar,
    stopping: AtomicBool,
    next_client: AtomicU64,
}

#[derive(Debug, Default)]
struct Objects {
    next_id: u64,
    map: HashMap<u64, Object>,
    /// Registered names: the object's id and the proxy type it was registered through.
    names: HashMap<String, (u64, String)>,
}

#[derive(Debug)]
enum Object {
    Dict(Dict),
    List(Vec<Bytes>),
    Value(Bytes),
    Lock {
        owner: Option<u64>,
        count: u32,
        reentrant: bool,
    },
    Semaphore {
        value: u64,
        bound: Option<u64>,
    },
    Event(bool),
    /// A user's object, with a lock of its own: see [`Shared::method`].
    Custom(Arc<RwLock<Box<dyn std::any::Any + Send + Sync>>>),
    Queue {
        items: VecDeque<Bytes>,
        maxsize: Option<u64>,
    },
    /// A condition variable with its own reentrant lock (Python's default, an `RLock`).
    Condition {
        owner: Option<u64>,
        count: u32,
        /// Tickets of the waits under way, oldest first; `notify` moves them to `woken`.
        waiters: VecDeque<u64>,
        woken: Vec<u64>,
        next_ticket: u64,
    },
    Barrier {
        parties: u64,
        /// How many wait in the current generation.
        count: u64,
        /// Bumped each time the barrier trips, which is what releases waiters.
        generation: u64,
        /// Bumped by each reset, which breaks the waits under way.
        resets: u64,
        broken: bool,
    },
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Dict(_) => "dict",
            Object::List(_) => "list",
            Object::Value(_) => "value",
            Object::Lock {
                reentrant: false, ..
            } => "lock",
            Object::Lock { .. } => "rlock",
            Object::Semaphore { .. } => "semaphore",
            Object::Event(_) => "event",
            Object::Custom(_) => "remote object",
            Object::Queue { .. } => "queue",
            Object::Barrier { .. } => "barrier",
            Object::Condition { .. } => "condition",
        }
    }
}

/// A dict that remembers insertion order, as Python's does: each entry carries the sequence
/// number of its first insertion.
#[derive(Debug, Default)]
struct Dict {
    map: HashMap<Bytes, (u64, Bytes)>,
    next: u64,
}

impl Dict {
    fn insert(&mut self, k: Bytes, v: Bytes) {
        match self.map.get_mut(&k) {
            Some(slot) => slot.1 = v,
            None => {
                self.next += 1;
                self.map.insert(k, (self.next, v));
            }
        }
    }

    fn ordered(&self) -> Vec<(&Bytes, &Bytes)> {
        let mut all: Vec<_> = self.map.iter().map(|(k, (n, v))| (*n, k, v)).collect();
        all.sort_unstable_by_key(|e| e.0);
        all.into_iter().map(|(_, k, v)| (k, v)).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    /// Listens on `address` (a Unix socket path or a TCP address; port 0 picks one) for
    /// clients holding `authkey`.
    ///
    /// # Errors
    /// [`ManagerError::Start`] when the address cannot be bound.
    pub fn bind(address: impl Into<Address>, authkey: AuthKey) -> Result<Server, ManagerError> {
        let listener = Listener::bind_with_authkey(address, Some(authkey.clone()))
            .map_err(ManagerError::Start)?;
        let mut nonce = [0u8; 8];
        crate::sys::random_bytes(&mut nonce)
            .map_err(|e| ManagerError::Start(crate::Error::from(e)))?;
        Ok(Server {
            listener,
            authkey,
            shared: Arc::new(Shared {
                nonce: u64::from_ne_bytes(nonce),
                build: crate::sys::exe_identity().ok(),
                objects: Mutex::new(Objects::default()),
                changed: Condvar::new(),
                stopping: AtomicBool::new(false),
                next_client: AtomicU64::new(1),
            }),
        })
    }

    /// The server's identity, random, fixed for its life.
    pub(crate) fn nonce(&self) -> u64 {
        self.shared.nonce
    }

    /// The address clients connect to (with the actual port, if port 0 was asked for).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// Serves clients, each on a thread of its own, until one asks the server to shut down;
    /// then stops accepting, and returns (clients still connected are served until they
    /// hang up or the process exits).
    ///
    /// A client that fails the handshake (wrong authkey, garbage) is turned away and the
    /// others are served on; so is a client that sends garbage after it.
    ///
    /// # Errors
    /// Only when a client thread cannot be started.
    pub fn serve_forever(self) -> Result<(), ManagerError> {
        loop {
            let accepted = self.listener.accept();
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            match accepted {
                Ok(conn) => {
                    let shared = Arc::clone(&self.shared);
                    let wake = (self.listener.address().clone(), self.authkey.clone());
                    std::thread::Builder::new()
                        .name("manager-client".into())
                        .spawn(move || serve_client(&shared, &conn, &wake))
                        .map_err(|e| ManagerError::Start(crate::Error::from(e)))?;
                }
                Err(ConnectError::Io(e)) => {
                    // Out of descriptors, typically: let clients hang up before trying again.
                    tracing::warn!("manager: accepting a client failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => tracing::debug!("manager: a client was turned away: {e}"),
            }
        }
    }
}

fn serve_client(shared: &Shared, conn: &Connection, wake: &(Address, AuthKey)) {
    let client = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let Ok(hello) = conn.recv_timeout::<Hello>(HANDSHAKE_TIMEOUT) else {
        return;
    };
    let same_build = hello.build.is_some() && hello.build == shared.build;
    let welcome = Welcome {
        server: shared.nonce,
        same_build,
    };
    if conn.send(&welcome).is_ok() {
        while let Ok(bytes) = conn.recv_bytes() {
            let response: Response = match crate::wire::decode_payload::<Request>(&bytes) {
                Err(e) => Err(RemoteError::BadRequest(e.to_string())),
                Ok(Request::Create(kind)) => shared.create(kind, same_build),
                Ok(Request::Call { id, op }) => shared.call(client, id, op, same_build, conn),
                Ok(Request::Register {
                    name,
                    id,
                    type_name,
                }) => shared.register(name, id, type_name),
                Ok(Request::Lookup { name, type_name }) => shared.lookup(name, type_name),
                Ok(Request::Shutdown) => {
                    shared.stopping.store(true, Ordering::SeqCst);
                    let _ = conn.send(&Response::Ok(Reply::Unit));
                    // Wakes the accept loop, which then sees the flag.
                    let _ = crate::connection::client_with_authkey(&wake.0, Some(&wake.1));
                    break;
                }
            };
            if conn.send(&response).is_err() {
                break;
            }
        }
    }
    shared.release_all(client);
}

fn index(i: i64, len: usize) -> Result<usize, RemoteError> {
    let j = if i < 0 { i + len as i64 } else { i };
    if j < 0 || j >= len as i64 {
        return Err(RemoteError::IndexOutOfRange { index: i, len });
    }
    Ok(j as usize)
}

fn deadline(timeout_ms: Option<u64>) -> Option<Instant> {
    timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

impl Shared {
    fn create(&self, kind: Kind, same_build: bool) -> Response {
        let object = match kind {
            Kind::Dict => Object::Dict(Dict::default()),
            Kind::List => Object::List(Vec::new()),
            Kind::Value(v) => Object::Value(v),
            Kind::Lock => Object::Lock {
                owner: None,
                count: 0,
                reentrant: false,
            },
            Kind::RLock => Object::Lock {
                owner: None,
                count: 0,
                reentrant: true,
            },
            Kind::Semaphore { value, bound } => Object::Semaphore { value, bound },
            Kind::Event => Object::Event(false),
            // Runs the user's constructor before taking the table's lock.
            Kind::Custom { ctor, arg } => Object::Custom(Arc::new(RwLock::new(
                super::remote::construct(ctor, &arg, same_build)?,
            ))),
            Kind::Queue { maxsize } => Object::Queue {
                items: VecDeque::new(),
                maxsize,
            },
            Kind::Condition => Object::Condition {
                owner: None,
                count: 0,
                waiters: VecDeque::new(),
                woken: Vec::new(),
                next_ticket: 0,
            },
            Kind::Barrier { parties: 0 } => {
                return Err(RemoteError::BadRequest(
                    "a barrier needs at least one party".into(),
                ));
            }
            Kind::Barrier { parties } => Object::Barrier {
                parties,
                count: 0,
                generation: 0,
                resets: 0,
                broken: false,
            },
        };
        let mut objects = lock(&self.objects);
        objects.next_id += 1;
        let id = objects.next_id;
        objects.map.insert(id, object);
        Ok(Reply::Id(id))
    }

    fn register(&self, name: String, id: u64, type_name: String) -> Response {
        let mut objects = lock(&self.objects);
        if !objects.map.contains_key(&id) {
            return Err(RemoteError::NoSuchObject(id));
        }
        match objects.names.entry(name) {
            std::collections::hash_map::Entry::Occupied(e) => {
                Err(RemoteError::NameTaken(e.key().clone()))
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((id, type_name));
                Ok(Reply::Unit)
            }
        }
    }

    fn lookup(&self, name: String, type_name: String) -> Response {
        let objects = lock(&self.objects);
        match objects.names.get(&name) {
            None => Err(RemoteError::NotRegistered(name)),
            Some((id, registered)) if *registered == type_name => Ok(Reply::Id(*id)),
            Some((_, registered)) => Err(RemoteError::WrongType {
                name,
                registered: registered.clone(),
                requested: type_name,
            }),
        }
    }

    /// Releases every lock `client` holds: its connection closed.
    fn release_all(&self, client: u64) {
        let mut objects = lock(&self.objects);
        let mut any = false;
        for object in objects.map.values_mut() {
            if let Object::Lock { owner, count, .. } | Object::Condition { owner, count, .. } =
                object
                && *owner == Some(client)
            {
                *owner = None;
                *count = 0;
                any = true;
            }
        }
        if any {
            self.changed.notify_all();
        }
    }

    fn call(&self, client: u64, id: u64, op: Op, same_build: bool, conn: &Connection) -> Response {
        let mut objects = lock(&self.objects);
        let object = objects
            .map
            .get_mut(&id)
            .ok_or(RemoteError::NoSuchObject(id))?;
        let reply = match (object, op) {
            (Object::Dict(d), Op::Len) => Reply::Len(d.map.len() as u64),
            (Object::List(l), Op::Len) => Reply::Len(l.len() as u64),
            (Object::Queue { items, .. }, Op::Len) => Reply::Len(items.len() as u64),
            (Object::Dict(d), Op::Clear) => {
                d.map.clear();
                Reply::Unit
            }
            (Object::List(l), Op::Clear) => {
                l.clear();
                Reply::Unit
            }
            (Object::Dict(d), op) => dict_op(id, d, op, same_build)?,
            (Object::List(l), op) => list_op(id, l, op, same_build)?,
            (Object::Value(v), Op::Load) => Reply::Value(Some(v.clone())),
            (Object::Value(v), Op::Store(new)) => {
                *v = new;
                Reply::Unit
            }
            (Object::Value(v), Op::Modify(f)) => {
                let (new, result) = modify::run(&f, v, same_build)?;
                *v = new;
                Reply::Modified(result)
            }
            (
                Object::Lock {
                    owner,
                    count,
                    reentrant,
                },
                Op::Release,
            ) => {
                if owner.is_none() || (*reentrant && *owner != Some(client)) {
                    return Err(RemoteError::NotHeld);
                }
                *count -= 1;
                if !*reentrant || *count == 0 {
                    *owner = None;
                    *count = 0;
                    self.changed.notify_all();
                }
                Reply::Unit
            }
            (Object::Lock { .. }, Op::Acquire { timeout_ms }) => {
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                    Object::Lock {
                        owner,
                        count,
                        reentrant,
                    } if owner.is_none() || (*reentrant && *owner == Some(client)) => {
                        *owner = Some(client);
                        *count += 1;
                        true
                    }
                    _ => false,
                })?;
                return Ok(Reply::Bool(done));
            }
            (Object::Semaphore { value, .. }, Op::Len) => Reply::Len(*value),
            (Object::Semaphore { value, bound }, Op::Release) => {
                if bound.is_some_and(|b| *value >= b) {
                    return Err(RemoteError::TooManyReleases);
                }
                *value += 1;
                self.changed.notify_all();
                Reply::Unit
            }
            (Object::Semaphore { .. }, Op::Acquire { timeout_ms }) => {
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                    Object::Semaphore { value, .. } if *value > 0 => {
                        *value -= 1;
                        true
                    }
                    _ => false,
                })?;
                return Ok(Reply::Bool(done));
            }
            (
                Object::Custom(object),
                Op::Method {
                    dispatch,
                    method,
                    args,
                    shared,
                },
            ) => {
                let object = Arc::clone(object);
                drop(objects);
                return Ok(Reply::Modified(Self::method(
                    &object, dispatch, method, &args, shared, same_build,
                )?));
            }
            (Object::Event(flag), Op::SetFlag) => {
                *flag = true;
                self.changed.notify_all();
                Reply::Unit
            }
            (Object::Event(flag), Op::ClearFlag) => {
                *flag = false;
                Reply::Unit
            }
            (Object::Event(flag), Op::IsSet) => Reply::Bool(*flag),
            (Object::Event(_), Op::Wait { timeout_ms }) => {
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| {
                    matches!(o, Object::Event(true))
                })?;
                return Ok(Reply::Bool(done));
            }
            (Object::Queue { .. }, Op::Put { item, timeout_ms }) => {
                let mut item = Some(item);
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                    Object::Queue { items, maxsize }
                        if maxsize.is_none_or(|m| (items.len() as u64) < m) =>
                    {
                        items.extend(item.take());
                        true
                    }
                    _ => false,
                })?;
                if done {
                    self.changed.notify_all();
                }
                return Ok(Reply::Bool(done));
            }
            (Object::Queue { .. }, Op::Take { timeout_ms }) => {
                let mut taken = None;
                self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                    Object::Queue { items, .. } if !items.is_empty() => {
                        taken = items.pop_front();
                        true
                    }
                    _ => false,
                })?;
                if taken.is_some() {
                    self.changed.notify_all();
                }
                return Ok(Reply::Value(taken));
            }
            (Object::Condition { owner, count, .. }, Op::Release) => {
                if *owner != Some(client) {
                    return Err(RemoteError::NotHeld);
                }
                *count -= 1;
                if *count == 0 {
                    *owner = None;
                    self.changed.notify_all();
                }
                Reply::Unit
            }
            (Object::Condition { .. }, Op::Acquire { timeout_ms }) => {
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| {
                    take_condition(o, client, None)
                })?;
                return Ok(Reply::Bool(done));
            }
            (
                Object::Condition {
                    owner,
                    waiters,
                    woken,
                    ..
                },
                Op::Notify(n),
            ) => {
                if *owner != Some(client) {
                    return Err(RemoteError::NotHeld);
                }
                let n = n.map_or(waiters.len(), |n| (n as usize).min(waiters.len()));
                woken.extend(waiters.drain(..n));
                self.changed.notify_all();
                Reply::Unit
            }
            (
                Object::Condition {
                    owner,
                    count,
                    waiters,
                    next_ticket,
                    ..
                },
                Op::CondWait { timeout_ms },
            ) => {
                if *owner != Some(client) {
                    return Err(RemoteError::NotHeld);
                }
                // Release the lock entirely (however many times it was taken), wait for a
                // notify, then take it again as many times: Python's `Condition.wait`.
                let saved = *count;
                *owner = None;
                *count = 0;
                *next_ticket += 1;
                let ticket = *next_ticket;
                waiters.push_back(ticket);
                self.changed.notify_all();
                let mut notified =
                    self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                        Object::Condition { woken, .. } => {
                            match woken.iter().position(|t| *t == ticket) {
                                Some(i) => {
                                    woken.swap_remove(i);
                                    true
                                }
                                None => false,
                            }
                        }
                        _ => false,
                    })?;
                let mut objects = lock(&self.objects);
                if !notified
                    && let Some(Object::Condition { waiters, woken, .. }) = objects.map.get_mut(&id)
                {
                    waiters.retain(|t| *t != ticket);
                    // A notify that came between the timeout and this lock counts.
                    if let Some(i) = woken.iter().position(|t| *t == ticket) {
                        woken.swap_remove(i);
                        notified = true;
                    }
                }
                // Taken again even after a timeout, as Python does; not for a client that
                // hung up (its lock would be released at once anyway).
                self.wait(objects, id, None, conn, |o| {
                    take_condition(o, client, Some(saved))
                })?;
                return Ok(Reply::Bool(notified));
            }
            (Object::Barrier { parties, .. }, Op::Parties) => Reply::Len(*parties),
            (Object::Barrier { count, .. }, Op::Waiting) => Reply::Len(*count),
            (Object::Barrier { broken, .. }, Op::IsBroken) => Reply::Bool(*broken),
            (Object::Barrier { broken, count, .. }, Op::Abort) => {
                *broken = true;
                *count = 0;
                self.changed.notify_all();
                Reply::Unit
            }
            (
                Object::Barrier {
                    broken,
                    count,
                    resets,
                    ..
                },
                Op::Reset,
            ) => {
                // The waits under way fail (Python's reset); later ones use a fresh barrier.
                *resets += 1;
                *count = 0;
                *broken = false;
                self.changed.notify_all();
                Reply::Unit
            }
            (
                Object::Barrier {
                    parties,
                    count,
                    generation,
                    resets,
                    broken,
                },
                Op::BarrierWait { timeout_ms },
            ) => {
                if *broken {
                    return Err(RemoteError::BrokenBarrier);
                }
                let index = *count;
                *count += 1;
                if *count == *parties {
                    *count = 0;
                    *generation += 1;
                    self.changed.notify_all();
                    return Ok(Reply::Len(index));
                }
                let (mine, my_resets) = (*generation, *resets);
                let mut outcome = None;
                let done = self.wait(objects, id, deadline(timeout_ms), conn, |o| match o {
                    Object::Barrier { generation, .. } if *generation != mine => {
                        outcome = Some(true);
                        true
                    }
                    Object::Barrier { resets, broken, .. } if *broken || *resets != my_resets => {
                        outcome = Some(false);
                        true
                    }
                    _ => false,
                })?;
                if done && outcome == Some(true) {
                    return Ok(Reply::Len(index));
                }
                if !done {
                    // Timed out, or the waiter's client hung up: the others would wait for
                    // a party that never comes, so the barrier breaks (Python's timeout does).
                    let mut objects = lock(&self.objects);
                    if let Some(Object::Barrier { broken, count, .. }) = objects.map.get_mut(&id) {
                        *broken = true;
                        *count = 0;
                    }
                    self.changed.notify_all();
                }
                return Err(RemoteError::BrokenBarrier);
            }
            (object, op) => return Err(unsupported(id, object.kind(), &op)),
        };
        Ok(reply)
    }

    /// Runs a method of a user's object outside the table's lock, under the object's own:
    /// its read side for a `&self` method (such calls run side by side, and beside calls on
    /// other objects), its write side for a `&mut self` one (alone on this object). A method
    /// that panics is caught inside the dispatch, so the lock is never poisoned by one; a
    /// poisoned lock is used anyway, as the table's is.
    fn method(
        object: &RwLock<Box<dyn std::any::Any + Send + Sync>>,
        dispatch: i64,
        method: u32,
        args: &[u8],
        shared: bool,
        same_build: bool,
    ) -> Result<Bytes, RemoteError> {
        use super::remote::Target;
        if shared {
            let guard = object.read().unwrap_or_else(PoisonError::into_inner);
            super::remote::dispatch(Target::Shared(&**guard), dispatch, method, args, same_build)
        } else {
            let mut guard = object.write().unwrap_or_else(PoisonError::into_inner);
            super::remote::dispatch(
                Target::Exclusive(&mut **guard),
                dispatch,
                method,
                args,
                same_build,
            )
        }
    }

    /// Waits until `ready` (run under the table's lock) returns `true` for object `id`, or
    /// `deadline` passes (`Ok(false)`), or the client hangs up (`Ok(false)`: its answer would
    /// go nowhere, so nothing is taken for it).
    fn wait(
        &self,
        mut objects: MutexGuard<'_, Objects>,
        id: u64,
        deadline: Option<Instant>,
        conn: &Connection,
        mut ready: impl FnMut(&mut Object) -> bool,
    ) -> Result<bool, RemoteError> {
        loop {
            let object = objects
                .map
                .get_mut(&id)
                .ok_or(RemoteError::NoSuchObject(id))?;
            if ready(object) {
                return Ok(true);
            }
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return Ok(false),
                Some(d) => (d - now).min(CLIENT_CHECK),
                None => CLIENT_CHECK,
            };
            objects = self
                .changed
                .wait_timeout(objects, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            // A client waiting for our reply sends nothing: readable means it hung up.
            if conn.poll(Some(Duration::ZERO)).unwrap_or(true) {
                return Ok(false);
            }
        }
    }
}

/// Takes a condition's lock for `client` if it is free or already its own: once more, or
/// `restore` times (after a wait).
fn take_condition(o: &mut Object, client: u64, restore: Option<u32>) -> bool {
    match o {
        Object::Condition { owner, count, .. } if owner.is_none() || *owner == Some(client) => {
            *owner = Some(client);
            match restore {
                Some(n) => *count = n,
                None => *count += 1,
            }
            true
        }
        _ => false,
    }
}

/// The error for `op` on an object of kind `actual` that has no such operation.
fn unsupported(id: u64, actual: &str, op: &Op) -> RemoteError {
    let name = format!("{op:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or("");
    RemoteError::WrongKind {
        id,
        expected: format!("object with the operation {name}"),
        actual: actual.to_owned(),
    }
}

fn dict_op(id: u64, d: &mut Dict, op: Op, same_build: bool) -> Result<Reply, RemoteError> {
    Ok(match op {
        Op::Get(k) => Reply::Value(d.map.get(&k).map(|(_, v)| v.clone())),
        Op::Insert(k, v) => {
            let old = d.map.get(&k).map(|(_, v)| v.clone());
            d.insert(k, v);
            Reply::Value(old)
        }
        Op::Remove(k) => Reply::Value(d.map.remove(&k).map(|(_, v)| v)),
        Op::Contains(k) => Reply::Bool(d.map.contains_key(&k)),
        Op::Keys => Reply::Values(d.ordered().into_iter().map(|(k, _)| k.clone()).collect()),
        Op::Values => Reply::Values(d.ordered().into_iter().map(|(_, v)| v.clone()).collect()),
        Op::Items => Reply::Items(
            d.ordered()
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        Op::Update(items) => {
            for (k, v) in items {
                d.insert(k, v);
            }
            Reply::Unit
        }
        Op::SetDefault(k, v) => {
            if let Some((_, old)) = d.map.get(&k) {
                Reply::Value(Some(old.clone()))
            } else {
                d.insert(k, v.clone());
                Reply::Value(Some(v))
            }
        }
        Op::ModifyKey(k, default, f) => {
            let stored = d.map.get(&k).map_or(&default, |(_, v)| v);
            let (new, result) = run(&f, stored, same_build)?;
            d.insert(k, new);
            Reply::Modified(result)
        }
        op => return Err(unsupported(id, "dict", &op)),
    })
}

fn run(f: &Func, stored: &[u8], same_build: bool) -> Result<(Bytes, Bytes), RemoteError> {
    modify::run(f, stored, same_build)
}

fn list_op(id: u64, l: &mut Vec<Bytes>, op: Op, same_build: bool) -> Result<Reply, RemoteError> {
    Ok(match op {
        Op::Push(v) => {
            l.push(v);
            Reply::Unit
        }
        Op::Pop(None) => Reply::Value(l.pop()),
        Op::Pop(Some(i)) => {
            let i = index(i, l.len())?;
            Reply::Value(Some(l.remove(i)))
        }
        Op::At(i) => Reply::Value(Some(l[index(i, l.len())?].clone())),
        Op::Set(i, v) => {
            let i = index(i, l.len())?;
            l[i] = v;
            Reply::Unit
        }
        Op::Extend(items) => {
            l.extend(items);
            Reply::Unit
        }
        Op::RemoveItem(v) => {
            let i = l
                .iter()
                .position(|x| *x == v)
                .ok_or(RemoteError::NotFound)?;
            l.remove(i);
            Reply::Unit
        }
        Op::InsertAt(i, v) => {
            // Python's list.insert clamps the index instead of failing.
            let len = l.len() as i64;
            let j = if i < 0 { (i + len).max(0) } else { i.min(len) };
            l.insert(j as usize, v);
            Reply::Unit
        }
        Op::Snapshot => Reply::Values(l.clone()),
        Op::ModifyAt(i, f) => {
            let i = index(i, l.len())?;
            let (new, result) = run(&f, &l[i], same_build)?;
            l[i] = new;
            Reply::Modified(result)
        }
        op => return Err(unsupported(id, "list", &op)),
    })
}
