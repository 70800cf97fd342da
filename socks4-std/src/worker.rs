//! A worker thread: one `polling::Poller`, a slab of connections, a timer queue, and a channel
//! through which the acceptor hands over connections and the resolver answers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use polling::{Events, Poller};
use slab::Slab;
use socks4_server::limits::Admission;
use socks4_server::metrics::Metrics;
use socks4_server::reload::{LiveConfig, Snapshot};
use socks4_server::users::AuthError;

use crate::conn::{Conn, Ctx, KEYS_PER_CONN, Side};
use crate::relay::Pipes;
use crate::resolver::Job;
use crate::server::{ACCEPT_BACKOFF, ACCEPTS_PER_WAKE, Accepted, REFUSAL_FLUSH, accept_one, admit};
use crate::timers::{Entry, Timers};

/// Size of each worker's read buffer: the relays' one copy-buffer size.
const SCRATCH: usize = socks4_sys::sizes::COPY_BUF_LEN;

/// A message to a worker.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A newly accepted connection (non-blocking), its peer address, its admission and the config
    /// snapshot it runs with.
    Conn(TcpStream, SocketAddr, Admission, Arc<Snapshot>),
    /// The answer to the lookup of a parent proxy's name for a connection's chained attempt.
    ParentResolved {
        /// The connection's slot.
        slot: usize,
        /// The connection's id.
        id: u64,
        /// Which parent of the attempt.
        parent: usize,
        /// Its addresses to try in order, or why there are none.
        candidates: socks4_core::driver::Candidates,
    },
    /// The answer to a connection's SOCKS4a lookup.
    Resolved {
        /// The connection's slot.
        slot: usize,
        /// The connection's id.
        id: u64,
        /// The addresses, in the resolver's order, or why there are none.
        lookup: std::io::Result<Vec<SocketAddr>>,
    },
    /// The users file's verdict on a connection's user id.
    UserChecked {
        /// The connection's slot.
        slot: usize,
        /// The connection's id.
        id: u64,
        /// The verdict.
        verdict: Result<(), AuthError>,
    },
}

/// State shared by the acceptor, the workers and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config (rules, users file's verifier, per-client limiter...) each connection takes a
    /// snapshot of at accept; swapped by a reload.
    pub(crate) config: Arc<LiveConfig>,
    /// Connections accepted and not yet closed.
    pub(crate) live: AtomicUsize,
    /// Connections admitted since the start.
    pub(crate) accepted: AtomicU64,
    /// Connections closed at once because of the connection limit.
    pub(crate) refused: AtomicU64,
    /// Accept errors (EMFILE...) that paused accepting.
    pub(crate) accept_pauses: AtomicU64,
    /// Stop accepting.
    pub(crate) stop_accepting: AtomicBool,
    /// Workers: finish live connections within the grace period, then exit.
    pub(crate) draining: AtomicBool,
    /// Metrics (counting only with `--metrics`).
    pub(crate) metrics: Arc<Metrics>,
}

impl Shared {
    pub(crate) fn new(config: Arc<LiveConfig>, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accept_pauses: AtomicU64::new(0),
            stop_accepting: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }
}

/// What a worker runs with.
pub(crate) struct Worker {
    pub(crate) poller: Arc<Poller>,
    pub(crate) inbox_rx: Receiver<Msg>,
    pub(crate) inbox_tx: Sender<Msg>,
    pub(crate) resolver: Sender<Job>,
    pub(crate) shared: Arc<Shared>,
    /// Reuseport mode: this worker's own listeners (empty when an acceptor thread deals).
    pub(crate) listeners: Vec<TcpListener>,
    /// When relays splice rather than copy (`splice(2)`, where the platform has it).
    pub(crate) splice: socks4_sys::SplicePolicy,
}

/// The key side (low bits) of a worker's own listener: `index * KEYS_PER_CONN + LISTENER_KEY`.
const LISTENER_KEY: usize = KEYS_PER_CONN - 1;

impl Worker {
    /// Runs the event loop until drained after shutdown.
    pub(crate) fn run(self) {
        let Worker { poller, inbox_rx, inbox_tx, resolver, shared, mut listeners, splice } = self;
        for (i, l) in listeners.iter().enumerate() {
            // SAFETY: the listeners are deleted from the poller (`close_listeners`) before being dropped.
            if let Err(e) = unsafe { poller.add(l, polling::Event::readable(i * KEYS_PER_CONN + LISTENER_KEY)) } {
                tracing::error!("cannot watch listener {:?}: {e}", l.local_addr());
            }
        }
        let mut accepted: Vec<(TcpStream, SocketAddr, Admission, Arc<Snapshot>)> = Vec::new();
        let mut accept_paused: Option<Instant> = None;
        let epoch = Instant::now();
        let mut scratch = vec![0u8; SCRATCH].into_boxed_slice();
        let mut pipes = Pipes::new(splice);
        let mut conns: Slab<Conn> = Slab::new();
        let mut timers = Timers::default();
        let mut events = Events::new();
        let mut next_id = 0u64;
        let mut grace_end: Option<Instant> = None;
        let mut touched: Vec<usize> = Vec::new();
        // Reuseport: this worker accepts, so it also tells the refusal summary when it is due.
        let mut next_flush = (!listeners.is_empty()).then(|| epoch + REFUSAL_FLUSH);

        loop {
            let now = Instant::now();
            let wake_at = [timers.next_deadline(), grace_end, accept_paused, next_flush].into_iter().flatten().min();
            let timeout = wake_at.map(|t| t.saturating_duration_since(now));
            events.clear();
            if let Err(e) = poller.wait(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("worker poller failed: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let now = Instant::now();
            let mut ctx = Ctx {
                poller: &poller,
                now,
                epoch,
                scratch: &mut scratch,
                pipes: &mut pipes,
                resolver: &resolver,
                inbox: &inbox_tx,
            };
            // Read before the inbox: everything the acceptor sent before stopping is then visible.
            let draining = shared.draining.load(Ordering::SeqCst);
            touched.clear();

            let mut rearm_listeners = Vec::new();
            for ev in events.iter() {
                if ev.key % KEYS_PER_CONN == LISTENER_KEY {
                    let i = ev.key / KEYS_PER_CONN;
                    let Some(listener) = listeners.get(i) else { continue };
                    for _ in 0..ACCEPTS_PER_WAKE {
                        match accept_one(listener, &shared) {
                            Accepted::Conn(stream, addr) => {
                                if let Some((admission, snapshot)) = admit(&shared, addr, now) {
                                    accepted.push((stream, addr, admission, snapshot));
                                }
                            }
                            Accepted::Again => {}
                            Accepted::Drained => break,
                            Accepted::BackOff => {
                                accept_paused = Some(now + ACCEPT_BACKOFF);
                                break;
                            }
                        }
                    }
                    rearm_listeners.push(i);
                    continue;
                }
                let slot = ev.key / KEYS_PER_CONN;
                let Some(conn) = conns.get_mut(slot) else { continue };
                match Side::from_key(ev.key) {
                    Some(side) => conn.on_event(&mut ctx, side, ev),
                    None => conn.on_race_event(&mut ctx, ev.key % KEYS_PER_CONN),
                }
                touched.push(slot);
            }

            for accepted in accepted.drain(..) {
                let entry = conns.vacant_entry();
                let slot = entry.key();
                next_id += 1;
                entry.insert(Conn::new(next_id, slot, accepted, &mut ctx));
                touched.push(slot);
            }
            if accept_paused.is_some_and(|t| now >= t) {
                accept_paused = None;
                rearm_listeners = (0..listeners.len()).collect();
            }
            if accept_paused.is_none() && !draining {
                for i in rearm_listeners {
                    if let Some(l) = listeners.get(i) {
                        let _ = poller.modify(l, polling::Event::readable(i * KEYS_PER_CONN + LISTENER_KEY));
                    }
                }
            }
            loop {
                match inbox_rx.try_recv() {
                    Ok(Msg::Conn(stream, addr, admission, snapshot)) => {
                        let entry = conns.vacant_entry();
                        let slot = entry.key();
                        next_id += 1;
                        entry.insert(Conn::new(next_id, slot, (stream, addr, admission, snapshot), &mut ctx));
                        touched.push(slot);
                    }
                    Ok(Msg::Resolved { slot, id, lookup }) => {
                        if let Some(conn) = conns.get_mut(slot).filter(|c| c.id() == id) {
                            conn.on_resolved(&mut ctx, lookup);
                            touched.push(slot);
                        }
                    }
                    Ok(Msg::UserChecked { slot, id, verdict }) => {
                        if let Some(conn) = conns.get_mut(slot).filter(|c| c.id() == id) {
                            conn.on_user_checked(&mut ctx, verdict);
                            touched.push(slot);
                        }
                    }
                    Ok(Msg::ParentResolved { slot, id, parent, candidates }) => {
                        if let Some(conn) = conns.get_mut(slot).filter(|c| c.id() == id) {
                            conn.on_parent_resolved(&mut ctx, parent, candidates);
                            touched.push(slot);
                        }
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }

            while let Some(Entry { slot, id, at }) = timers.pop_due(now) {
                let Some(conn) = conns.get_mut(slot).filter(|c| c.id() == id) else { continue };
                if conn.scheduled == Some(at) {
                    conn.scheduled = None;
                } else if !conn.pause_timer_fired(at) {
                    continue;
                }
                conn.on_timer(&mut ctx);
                touched.push(slot);
            }

            if next_flush.is_some_and(|t| now >= t) {
                shared.config.snapshot().limiter.refusals().flush(now);
                next_flush = Some(now + REFUSAL_FLUSH);
            }
            if grace_end.is_none() && draining {
                grace_end = Some(now + shared.config.snapshot().config.timeouts.shutdown_grace);
                close_listeners(&poller, &mut listeners);
                next_flush = None;
            }
            if grace_end.is_some_and(|t| now >= t) {
                for (slot, conn) in conns.iter_mut() {
                    conn.on_shutdown(&poller);
                    touched.push(slot);
                }
            }

            for &slot in &touched {
                let Some(conn) = conns.get_mut(slot) else { continue };
                if conn.is_done() {
                    let mut conn = conns.remove(slot);
                    conn.deregister(&poller);
                    conn.log(now);
                    drop(conn);
                    shared.live.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                if let Some(at) = conn.deadline() {
                    if conn.scheduled.is_none_or(|s| s > at) {
                        conn.scheduled = Some(at);
                        timers.push(Entry { at, slot, id: conn.id() });
                    }
                }
                if let Some(at) = conn.pause_timer() {
                    timers.push(Entry { at, slot, id: conn.id() });
                }
            }

            if grace_end.is_some() && conns.is_empty() {
                break;
            }
        }
        close_listeners(&poller, &mut listeners);
    }
}

/// Stops watching the worker's own listeners and closes them.
fn close_listeners(poller: &Poller, listeners: &mut Vec<TcpListener>) {
    for l in listeners.drain(..) {
        let _ = poller.delete(&l);
    }
}
