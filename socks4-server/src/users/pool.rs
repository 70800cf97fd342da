//! The verification threads of a users file: a fixed number of threads, each with one Argon2
//! block buffer allocated once and reused, fed by the fair [`Queue`], with one check in flight per
//! user id (later askers wait for its verdict, not for a place).
//!
//! Memory: the buffers are the only large allocations, `threads × m_cost` (the largest entry's
//! `m_cost`), allocated at a thread's first check and kept; nothing is allocated and freed per
//! check, so the allocator has nothing to fragment (freed 19 MiB arrays raised glibc's mmap
//! threshold, later ones came from per-thread arenas that were never trimmed).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use argon2::Block;

use super::queue::{ClientKey, Lane, Queue};
use super::{AuthError, Inner};

/// The most connections that may wait for one check in flight (the same user id); more are busy.
pub(crate) const MAX_FOLLOWERS: usize = 1024;

/// What identifies a check in flight: the verifier's generation and the user id's tag.
type Key = (u64, [u8; 16]);

/// A verdict, as the pool hands it out.
type Verdict = Result<(), AuthError>;

/// The callback of one asker.
type Notify = Box<dyn FnOnce(Verdict) + Send>;

/// One asker's place to receive the verdict.
struct Cell {
    shared: Arc<Shared>,
    key: Key,
    state: Mutex<CellState>,
}

#[derive(Default)]
struct CellState {
    verdict: Option<Verdict>,
    waker: Option<Waker>,
    notify: Option<Notify>,
}

impl Cell {
    fn complete(&self, verdict: Verdict) {
        let (waker, notify) = {
            let mut s = lock(&self.state);
            s.verdict = Some(verdict);
            (s.waker.take(), s.notify.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(f) = notify {
            f(verdict);
        }
    }
}

/// A check queued or running, and who waits for it.
struct Flight {
    inner: Arc<Inner>,
    user_id: Box<[u8]>,
    askers: Vec<Arc<Cell>>,
    queued: bool,
}

struct State {
    queue: Queue<Key>,
    flights: HashMap<Key, Flight>,
    /// Threads started, and the most that may be.
    threads: usize,
    max_threads: usize,
    shutdown: bool,
}

impl State {
    /// Starts a thread if the pool has fewer than it may.
    fn spawn(&mut self, shared: &Arc<Shared>) {
        if self.threads >= self.max_threads {
            return;
        }
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("socks4-verify".into())
            .stack_size(256 * 1024)
            .spawn(move || work(&shared));
        if spawned.is_ok() {
            self.threads += 1;
        }
    }
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    hashes: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The threads and the queue; shared by a verifier and the ones reloads build after it, so that
/// CPU and memory stay bounded across reloads. The threads end when it is dropped.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let flights = {
            let mut s = lock(&self.shared.state);
            s.shutdown = true;
            while s.queue.pop().is_some() {}
            std::mem::take(&mut s.flights)
        };
        self.shared.work.notify_all();
        // Nobody will run them (and their askers hold the pool's state: break the cycle).
        for flight in flights.into_values() {
            for cell in flight.askers {
                cell.complete(Err(AuthError::Busy));
            }
        }
    }
}

impl Pool {
    /// At most `threads` verification threads (at least 1, started on demand), `waiting` places
    /// (at least 1).
    pub(crate) fn new(threads: usize, waiting: usize) -> Self {
        let pool = Self::paused(waiting.max(1));
        lock(&pool.shared.state).max_threads = threads.max(1);
        pool
    }

    /// A pool that starts no thread until [`resume`](Self::resume): checks only wait.
    pub(crate) fn paused(waiting: usize) -> Self {
        let state =
            State { queue: Queue::new(waiting), flights: HashMap::new(), threads: 0, max_threads: 0, shutdown: false };
        Self { shared: Arc::new(Shared { state: Mutex::new(state), work: Condvar::new(), hashes: Default::default() }) }
    }

    /// Lets a paused pool start one thread (tests).
    #[cfg(test)]
    pub(crate) fn resume(&self) {
        let mut s = lock(&self.shared.state);
        s.max_threads = 1;
        s.spawn(&self.shared);
        self.shared.work.notify_all();
    }

    /// Argon2 hashes computed so far.
    pub(crate) fn hashes(&self) -> u64 {
        self.shared.hashes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks for the check of `user_id` (tag `tag`) by `inner` for `client`, in `lane`.
    pub(crate) fn ask(
        &self,
        inner: &Arc<Inner>,
        tag: [u8; 16],
        user_id: &[u8],
        client: ClientKey,
        lane: Lane,
        user: u32,
    ) -> Verification {
        let key = (inner.generation, tag);
        let cell = Arc::new(Cell { shared: Arc::clone(&self.shared), key, state: Mutex::default() });
        let mut s = lock(&self.shared.state);
        if let Some(flight) = s.flights.get_mut(&key) {
            if flight.askers.len() >= MAX_FOLLOWERS {
                return Verification::ready(Err(AuthError::Busy));
            }
            flight.askers.push(Arc::clone(&cell));
        } else {
            // Checked again under the lock: a thread may have just finished this user id.
            if let Some(verdict) = inner.cached(&tag) {
                return Verification::ready(verdict);
            }
            if s.queue.push_for(lane, user, client, key).is_err() {
                return Verification::ready(Err(AuthError::Busy));
            }
            let flight = Flight {
                inner: Arc::clone(inner),
                user_id: user_id.into(),
                askers: vec![Arc::clone(&cell)],
                queued: true,
            };
            s.flights.insert(key, flight);
            s.spawn(&self.shared);
            self.shared.work.notify_one();
        }
        drop(s);
        Verification(Waiting::Pending(Ticket(cell)))
    }

    /// Checks waiting for a thread (not running).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }
}

/// A verification thread: takes the next check, runs it with its own buffer, hands the verdict out.
fn work(shared: &Shared) {
    let mut blocks: Vec<Block> = Vec::new();
    let mut s = lock(&shared.state);
    loop {
        if s.shutdown {
            return;
        }
        let Some(key) = s.queue.pop() else {
            s = shared.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let Some(flight) = s.flights.get_mut(&key) else { continue };
        flight.queued = false;
        let (inner, user_id) = (Arc::clone(&flight.inner), flight.user_id.clone());
        drop(s);
        let verdict = inner.verify_with(&user_id, &key.1, &mut blocks);
        shared.hashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s = lock(&shared.state);
        let askers = s.flights.remove(&key).map(|f| f.askers).unwrap_or_default();
        drop(s);
        for cell in askers {
            cell.complete(verdict);
        }
        s = lock(&shared.state);
    }
}

/// One asker's claim on a check in flight; dropping it before the verdict withdraws it (the check
/// leaves the queue when nobody waits for it any more).
struct Ticket(Arc<Cell>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let cell = &self.0;
        if lock(&cell.state).verdict.is_some() {
            return;
        }
        let mut s = lock(&cell.shared.state);
        let State { queue, flights, .. } = &mut *s;
        if let Some(flight) = flights.get_mut(&cell.key) {
            flight.askers.retain(|c| !Arc::ptr_eq(c, cell));
            if flight.askers.is_empty() && flight.queued {
                flights.remove(&cell.key);
                queue.remove(|k| *k == cell.key);
            }
        }
    }
}

enum Waiting {
    Ready(Verdict),
    Pending(Ticket),
}

/// A user id's check under way ([`Verifier::verify`](super::Verifier::verify)): await it (a
/// runtime-neutral [`Future`]), or ask for a callback with [`notify`](Self::notify). Dropping it
/// before the verdict (the client left) withdraws the check if nobody else waits for it.
pub struct Verification(Waiting);

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Verification").field(&self.ready_verdict()).finish()
    }
}

impl Verification {
    pub(crate) fn ready(verdict: Verdict) -> Self {
        Self(Waiting::Ready(verdict))
    }

    /// The verdict, if known already (cached, malformed, busy, or the check finished).
    pub fn ready_verdict(&self) -> Option<Result<(), AuthError>> {
        match &self.0 {
            Waiting::Ready(v) => Some(*v),
            Waiting::Pending(t) => lock(&t.0.state).verdict,
        }
    }

    /// Calls `f` with the verdict once it is known: at once on this thread if it is already,
    /// otherwise on a verification thread. Not called if `self` is dropped first.
    pub fn notify(&mut self, f: impl FnOnce(Result<(), AuthError>) + Send + 'static) {
        match &self.0 {
            Waiting::Ready(v) => f(*v),
            Waiting::Pending(t) => {
                let mut s = lock(&t.0.state);
                match s.verdict {
                    Some(v) => {
                        drop(s);
                        f(v);
                    }
                    None => s.notify = Some(Box::new(f)),
                }
            }
        }
    }

    /// Waits for the verdict, blocking the calling thread.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] that refuses the user id, or [`AuthError::Busy`] when the check was given
    /// up.
    pub fn wait(mut self) -> Result<(), AuthError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.notify(move |v| {
            let _ = tx.send(v);
        });
        rx.recv().unwrap_or(Err(AuthError::Busy))
    }
}

impl Future for Verification {
    type Output = Result<(), AuthError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &this.0 {
            Waiting::Ready(v) => Poll::Ready(*v),
            Waiting::Pending(t) => {
                let mut s = lock(&t.0.state);
                match s.verdict {
                    Some(v) => Poll::Ready(v),
                    None => {
                        s.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}
