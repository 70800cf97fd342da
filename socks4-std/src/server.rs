//! The server: listeners, the acceptor thread, the worker pool, and shutdown.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};
use socks4_server::ServerConfig;
use socks4_server::limits::{Admission, Refusal};
use socks4_server::metrics::Metrics;
use socks4_server::reload::{LiveConfig, Snapshot};
use socks4_sys::SplicePolicy;

use crate::resolver::{self, RESOLVER_THREADS};
use crate::worker::{Msg, Shared, Worker};

/// Pause after an accept error such as EMFILE.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accepts per listener wake-up before looking at the others.
pub(crate) const ACCEPTS_PER_WAKE: usize = 128;
/// How often the accepting threads check whether the refusal summary is due (it is written at
/// most once per `RefusalLog::DEFAULT_INTERVAL`), so the last refusals of a flood are told.
pub(crate) const REFUSAL_FLUSH: Duration = Duration::from_secs(1);
/// Stack size of the server's threads.
const STACK: usize = 512 * 1024;

/// A bound, not yet running server.
///
/// ```no_run
/// use socks4_server::ServerConfig;
/// let server = socks4_std::Server::bind(ServerConfig::default())?;
/// println!("listening on {:?}", server.local_addrs());
/// let handle = server.spawn()?;
/// // ... later:
/// handle.shutdown();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Server {
    /// One group per listen address: one listener, or (reuseport) one per worker.
    listeners: Vec<Vec<TcpListener>>,
    workers: usize,
    /// The config (rules, users file's verifier, per-client limiter...) each connection takes a
    /// snapshot of at accept; swapped by a reload.
    live: Arc<LiveConfig>,
    splice: SplicePolicy,
    metrics: Arc<Metrics>,
}

/// The environment variable that picks the splice policy (`never`, `always`, `streaming`),
/// read once when a server is bound; for benchmarks (`bench/compare.sh`). Unset, or not a
/// policy's name: [`SplicePolicy::DEFAULT`]. The same for every adapter
/// ([`SplicePolicy::from_env`]).
pub use socks4_sys::SPLICE_POLICY_ENV;

impl Server {
    /// Binds every listen address of `config` (port 0 picks a free port).
    ///
    /// The config should have been validated (`ServerConfig::validate`); an invalid one, or an
    /// unreadable users file, is refused with `InvalidInput`.
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        let live = LiveConfig::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Self::bind_live(live, None)
    }

    /// Binds the listen addresses of `live`'s config, or serves `activated` (listening,
    /// non-blocking sockets, e.g. from systemd socket activation) instead. Each connection takes
    /// `live`'s current snapshot at accept, so [`LiveConfig::replace`] reconfigures the server for
    /// new connections.
    pub fn bind_live(live: Arc<LiveConfig>, activated: Option<Vec<TcpListener>>) -> io::Result<Server> {
        let config = &live.snapshot().config;
        socks4_dns::install_for(&config.names)?;
        let workers = config.workers.unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
        let listeners = socks4_server::listen::listeners(config, workers, activated)?;
        live.listening_on(&socks4_server::listen::local_addrs(&listeners));
        let metrics = live.metrics(workers);
        let splice = SplicePolicy::from_env();
        Ok(Server { listeners, workers, live, splice, metrics })
    }

    /// Whether relays move bytes with `splice(2)` through pipes borrowed per worker (Linux; on by
    /// default), rather than copying them through a buffer (always the case elsewhere). On is
    /// [`SplicePolicy::DEFAULT`] (or what [`SPLICE_POLICY_ENV`] names), off is
    /// [`SplicePolicy::Never`].
    pub fn splice(mut self, on: bool) -> Self {
        self.splice = if on { SplicePolicy::DEFAULT } else { SplicePolicy::Never };
        self
    }

    /// When relays splice rather than copy: see [`SplicePolicy`].
    pub fn splice_policy(mut self, policy: SplicePolicy) -> Self {
        self.splice = policy;
        self
    }

    /// The addresses actually bound (with the ports picked for port 0), one per listen address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        socks4_server::listen::local_addrs(&self.listeners)
    }

    /// Its metrics (counting only with `config.metrics` set); serve them with
    /// [`Endpoint`](socks4_server::metrics::Endpoint).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Starts the workers, the resolver pool and (unless in reuseport mode, where every worker
    /// accepts on its own listener) the acceptor in background threads.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let addrs = self.local_addrs();
        let workers = self.workers;
        let reuseport = self.live.snapshot().config.reuseport;
        // Reuseport: worker i gets the i-th listener of every group; otherwise the acceptor gets all.
        let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut for_acceptor = Vec::new();
        for group in self.listeners {
            if reuseport {
                for (i, l) in group.into_iter().enumerate() {
                    per_worker[i % workers].push(l);
                }
            } else {
                for_acceptor.extend(group);
            }
        }
        let mut per_worker = per_worker.into_iter();
        let shared = Arc::new(Shared::new(self.live, self.metrics));
        let resolver = resolver::start(RESOLVER_THREADS)?;
        let mut handle = ServerHandle { addrs, shared: Arc::clone(&shared), acceptor: None, workers: Vec::new() };
        let mut links = Vec::with_capacity(workers);
        for i in 0..workers {
            let poller = Arc::new(Poller::new()?);
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                poller: Arc::clone(&poller),
                inbox_rx: rx,
                inbox_tx: tx.clone(),
                resolver: resolver.clone(),
                shared: Arc::clone(&shared),
                listeners: per_worker.next().unwrap_or_default(),
                splice: self.splice,
            };
            let thread =
                thread::Builder::new().name(format!("socks4-worker-{i}")).stack_size(STACK).spawn(move || {
                    worker.shared.metrics.enter_worker(i);
                    worker.run()
                })?;
            handle.workers.push((Arc::clone(&poller), thread));
            links.push(WorkerLink { tx, poller });
        }
        drop(resolver);
        if reuseport {
            return Ok(handle);
        }
        let poller = Arc::new(Poller::new()?);
        let acceptor = Acceptor { listeners: for_acceptor, poller: Arc::clone(&poller), workers: links, shared };
        let thread =
            thread::Builder::new().name("socks4-accept".into()).stack_size(STACK).spawn(move || acceptor.run())?;
        handle.acceptor = Some((poller, thread));
        Ok(handle)
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully (see [`ServerHandle::shutdown`]).
    pub fn run(self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = self.spawn()?;
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "shutting down: no new connections, live ones get the grace period");
        }
        handle.shutdown();
        Ok(())
    }
}

/// A running server. Dropping it shuts the server down like [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    acceptor: Option<(Arc<Poller>, JoinHandle<()>)>,
    workers: Vec<(Arc<Poller>, JoinHandle<()>)>,
}

impl ServerHandle {
    /// The addresses the server listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Its counters: connections open now (accepted and not yet closed), admitted since the
    /// start, and closed on accept because `max_connections` were open.
    pub fn stats(&self) -> socks4_server::Stats {
        let shared = &self.shared;
        let (active, accepted) = (shared.live.load(Ordering::SeqCst), shared.accepted.load(Ordering::SeqCst));
        socks4_server::Stats::new(active, accepted, shared.refused.load(Ordering::SeqCst))
    }

    /// Times accepting paused after an error such as EMFILE (about [`ACCEPT_BACKOFF`] each).
    pub fn accept_pauses(&self) -> u64 {
        self.shared.accept_pauses.load(Ordering::SeqCst)
    }

    /// Stops accepting (the listeners close), lets live connections go on for up to
    /// `timeouts.shutdown_grace`, then closes what is left and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Its metrics (counting only with `config.metrics` set).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    fn stop(&mut self) {
        self.shared.metrics.set_draining();
        self.shared.stop_accepting.store(true, Ordering::SeqCst);
        if let Some((poller, thread)) = self.acceptor.take() {
            let _ = poller.notify();
            let _ = thread.join();
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        for (poller, _) in &self.workers {
            let _ = poller.notify();
        }
        for (_, thread) in self.workers.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WorkerLink {
    tx: Sender<Msg>,
    poller: Arc<Poller>,
}

struct Acceptor {
    listeners: Vec<TcpListener>,
    poller: Arc<Poller>,
    workers: Vec<WorkerLink>,
    shared: Arc<Shared>,
}

impl Acceptor {
    fn run(self) {
        for (i, l) in self.listeners.iter().enumerate() {
            // SAFETY: the listeners are deleted from the poller below, before they are dropped.
            if let Err(e) = unsafe { self.poller.add(l, Event::readable(i)) } {
                tracing::error!("cannot watch listener {:?}: {e}", l.local_addr());
            }
        }
        let mut events = Events::new();
        let mut next = 0usize;
        let mut wake = vec![false; self.workers.len()];
        while !self.shared.stop_accepting.load(Ordering::SeqCst) {
            events.clear();
            if let Err(e) = self.poller.wait(&mut events, Some(REFUSAL_FLUSH)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("acceptor poller failed: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            let mut back_off = false;
            let now = Instant::now();
            self.shared.config.snapshot().limiter.refusals().flush(now);
            for ev in events.iter() {
                let Some(listener) = self.listeners.get(ev.key) else { continue };
                for _ in 0..ACCEPTS_PER_WAKE {
                    match accept_one(listener, &self.shared) {
                        Accepted::Conn(stream, addr) => self.dispatch(stream, addr, now, &mut next, &mut wake),
                        Accepted::Again => {}
                        Accepted::Drained => break,
                        Accepted::BackOff => {
                            back_off = true;
                            break;
                        }
                    }
                }
                // One wake-up per worker for the whole batch, not one per connection.
                self.wake(&mut wake);
            }
            if back_off {
                thread::sleep(ACCEPT_BACKOFF);
            }
            for ev in events.iter() {
                if let Some(l) = self.listeners.get(ev.key) {
                    if let Err(e) = self.poller.modify(l, Event::readable(ev.key)) {
                        tracing::error!("cannot re-arm listener: {e}");
                    }
                }
            }
        }
        for l in &self.listeners {
            let _ = self.poller.delete(l);
        }
    }

    /// Wakes the workers marked in `wake` (they were handed connections) and clears the marks.
    fn wake(&self, wake: &mut [bool]) {
        for (link, woken) in self.workers.iter().zip(wake.iter_mut()) {
            if std::mem::take(woken) {
                let _ = link.poller.notify();
            }
        }
    }

    /// Hands a connection to the next worker and marks it in `wake`.
    fn dispatch(&self, stream: TcpStream, addr: SocketAddr, now: Instant, next: &mut usize, wake: &mut [bool]) {
        let Some((admission, snapshot)) = admit(&self.shared, addr, now) else { return };
        // Round-robin; a worker that is gone (it cannot be, short of a bug) passes its turn on.
        let n = self.workers.len();
        let mut msg = Msg::Conn(stream, addr, admission, snapshot);
        for _ in 0..n {
            let i = *next % n;
            *next = (*next + 1) % n;
            match self.workers[i].tx.send(msg) {
                Ok(()) => {
                    if let Some(w) = wake.get_mut(i) {
                        *w = true;
                    }
                    return;
                }
                Err(mpsc::SendError(back)) => msg = back,
            }
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one `accept` gave.
pub(crate) enum Accepted {
    /// A connection.
    Conn(TcpStream, SocketAddr),
    /// A transient error (the peer gave up, a signal): try again.
    Again,
    /// Nothing more to accept now.
    Drained,
    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM...): pause, do not spin.
    BackOff,
}

/// Accepts one connection from a non-blocking listener; the connection is non-blocking too (on
/// Linux in the same `accept4` call, no extra syscall).
pub(crate) fn accept_one(listener: &TcpListener, shared: &Shared) -> Accepted {
    match socks4_sys::accept_nonblocking(listener) {
        Ok((stream, addr)) => Accepted::Conn(stream, addr),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Drained,
        Err(e) if socks4_server::accept::is_per_connection(&e) => Accepted::Again,
        Err(e) => {
            tracing::warn!("accept failed: {e}; pausing {ACCEPT_BACKOFF:?}");
            shared.accept_pauses.fetch_add(1, Ordering::SeqCst);
            shared.metrics.accept_error();
            Accepted::BackOff
        }
    }
}

/// Takes the current config snapshot and applies its connection limit, then its per-client limits;
/// `None` if the connection is to be closed at once, sending nothing (the limiter's summary line
/// tells refusals, not one line each). Nothing else happens on the accepting thread: the worker
/// sets the socket's options.
pub(crate) fn admit(shared: &Shared, addr: SocketAddr, now: Instant) -> Option<(Admission, Arc<Snapshot>)> {
    let snapshot = shared.config.snapshot();
    let live = shared.live.fetch_add(1, Ordering::SeqCst);
    if live >= snapshot.config.max_connections {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        shared.refused.fetch_add(1, Ordering::SeqCst);
        snapshot.limiter.refusals().record(now, Refusal::ServerConnections, addr.ip().into());
        return None;
    }
    let admitted = if snapshot.config.proxy_protocol.contains(addr.ip()) {
        // A load balancer: limited per client once its PROXY header names the client.
        snapshot.limiter.defer(addr.ip(), now)
    } else {
        snapshot.limiter.admit(addr.ip(), now)
    };
    match admitted {
        Ok(admission) => {
            shared.accepted.fetch_add(1, Ordering::Relaxed);
            Some((admission, snapshot))
        }
        Err(_counted_by_the_limiter) => {
            shared.live.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }
}

impl socks4_server::cli::Serve for Server {
    type Running = ServerHandle;

    fn bind_live(live: Arc<LiveConfig>, activated: Option<Vec<TcpListener>>) -> io::Result<Self> {
        Server::bind_live(live, activated)
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        Server::local_addrs(self)
    }

    fn spawn(self) -> io::Result<ServerHandle> {
        Server::spawn(self)
    }

    fn metrics(&self) -> Arc<Metrics> {
        Server::metrics(self)
    }
}

impl socks4_server::cli::Running for ServerHandle {
    fn shutdown(self) {
        ServerHandle::shutdown(self);
    }
}
