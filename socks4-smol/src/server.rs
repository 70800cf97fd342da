//! The server: listeners, a pool of worker threads each running its own single-threaded executor,
//! an accept task per listener (on one of the workers) dealing connections round-robin to the
//! workers; connection limit and per-client limits at accept; shutdown.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use futures_lite::{StreamExt, future};
use smol::channel::{self, Receiver, Sender};
use socks4_server::ServerConfig;
use socks4_server::limits::{Admission, Refusal, RefusalLog};
use socks4_server::metrics::Metrics;
use socks4_server::reload::{LiveConfig, Snapshot};

use crate::runtime::BlockOn;

/// The pool's runtime for [`Server::spawn`] and [`Server::run`]: a reactor per worker on Linux
/// ([`SmolLocal`](crate::SmolLocal)), async-io's elsewhere.
#[cfg(target_os = "linux")]
type PoolRuntime = crate::SmolLocal;
#[cfg(not(target_os = "linux"))]
type PoolRuntime = crate::Smol;

/// The binary's choice of runtime for comparisons: `SOCKS4_SMOL_RUNTIME=async-io` runs the pool on
/// [`Smol`](crate::Smol) (async-io's reactor) instead of the default.
const RUNTIME_VAR: &str = "SOCKS4_SMOL_RUNTIME";

/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often a worker checks whether its connections have finished during shutdown.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A connection handed from an acceptor to a worker, with its claim on the per-client limits and
/// the config snapshot it runs with (taken at accept).
type Handoff = (TcpStream, SocketAddr, Admission, Arc<Snapshot>);

/// Counters shared by the acceptors and the workers.
#[derive(Debug, Default)]
struct Shared {
    active: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A bound, not yet running server.
///
/// ```no_run
/// use socks4_server::ServerConfig;
/// let mut config = ServerConfig::default();
/// config.listen = vec!["127.0.0.1:0".parse()?];
/// let server = socks4_smol::Server::bind(config)?;
/// println!("listening on {:?}", server.local_addrs());
/// let handle = server.spawn()?;
/// // ...
/// handle.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Server {
    /// The config (rules, users file's verifier, per-client limiter...) each connection takes a
    /// snapshot of at accept; swapped by a reload.
    live: Arc<LiveConfig>,
    /// Each listener, with the one worker it feeds when `reuseport` gives every worker its own.
    listeners: Vec<(TcpListener, Option<usize>)>,
    addrs: Vec<SocketAddr>,
    workers: usize,
    /// Metrics (counting only with `--metrics`).
    metrics: Arc<Metrics>,
}

impl Server {
    /// Validates `config` (an open proxy beyond loopback is refused), loads its users file and
    /// binds its listen addresses. Port 0 picks a free port; see [`local_addrs`](Self::local_addrs).
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        let live = LiveConfig::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Self::bind_live(live, None)
    }

    /// Binds the listen addresses of `live`'s config, or serves `activated` (listening sockets,
    /// e.g. from systemd socket activation) instead. Each connection takes `live`'s current
    /// snapshot at accept, so [`LiveConfig::replace`] reconfigures the server for new connections.
    pub fn bind_live(live: Arc<LiveConfig>, activated: Option<Vec<TcpListener>>) -> io::Result<Server> {
        let config = &live.snapshot().config;
        socks4_dns::install_for(&config.names)?;
        let workers = config.workers.unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
        let metrics = live.metrics(workers);
        // Per address one listener (round-robin over the workers), or one per worker (reuseport).
        let groups = socks4_server::listen::listeners(config, workers, activated)?;
        let addrs = socks4_server::listen::local_addrs(&groups);
        live.listening_on(&addrs);
        let mut listeners = Vec::new();
        for group in groups {
            let fixed = group.len() > 1;
            listeners.extend(group.into_iter().enumerate().map(|(w, l)| (l, fixed.then_some(w))));
        }
        Ok(Server { live, listeners, addrs, workers, metrics })
    }

    /// The addresses the server listens on (with the actual ports).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Its metrics (counting only with `config.metrics` set); serve them with
    /// [`Endpoint`](socks4_server::metrics::Endpoint).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Starts the worker pool (which also accepts) on smol's executor in background threads, each
    /// worker with a reactor of its own ([`SmolLocal`](crate::SmolLocal); [`Smol`](crate::Smol)
    /// where there is none).
    pub fn spawn(self) -> io::Result<ServerHandle> {
        self.spawn_on::<PoolRuntime>()
    }

    /// Starts the worker pool (which also accepts) on runtime `R` in background threads. Each
    /// worker registers its listeners and sets up its runtime before this returns: a failure
    /// (e.g. no file descriptor for a poller) is an error here, not a panic in a thread later.
    pub fn spawn_on<R: BlockOn>(self) -> io::Result<ServerHandle> {
        let listeners = self.listeners;
        let shared = Arc::new(Shared::default());
        let mut handle = ServerHandle {
            addrs: self.addrs.clone(),
            stop: None,
            workers: Vec::new(),
            shared: shared.clone(),
            grace: self.live.snapshot().config.timeouts.shutdown_grace,
            metrics: Arc::clone(&self.metrics),
        };
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        handle.stop = Some(stop_tx);
        let workers = self.workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| channel::unbounded::<Handoff>()).unzip();
        // Each listener's accept loop runs as a task on one worker (the one `reuseport` gives it,
        // else round-robin over the listeners): no acceptor thread to wake per connection.
        let mut accept_tasks: Vec<Vec<(TcpListener, Acceptor)>> = (0..workers).map(|_| Vec::new()).collect();
        let next = Arc::new(AtomicUsize::new(0));
        for (k, (listener, fixed)) in listeners.into_iter().enumerate() {
            let (home, targets) = match fixed {
                Some(w) => (w % workers, senders.get(w).cloned().into_iter().collect()),
                None => (k % workers, senders.clone()),
            };
            let acceptor = Acceptor {
                targets,
                next: next.clone(),
                shared: shared.clone(),
                live: self.live.clone(),
                metrics: Arc::clone(&self.metrics),
            };
            accept_tasks[home].push((listener, acceptor));
        }
        drop(senders);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        for (i, (rx, acceptors)) in receivers.into_iter().zip(accept_tasks).enumerate() {
            let (live, shared, stop) = (self.live.clone(), shared.clone(), stop_rx.clone());
            let metrics = Arc::clone(&self.metrics);
            let ready = ready_tx.clone();
            let thread = thread::Builder::new().name(format!("socks4-smol-worker-{i}")).spawn(move || {
                metrics.enter_worker(i);
                let registered = R::init_thread().and_then(|()| {
                    acceptors.into_iter().map(|(l, a)| Ok((R::accept_listener(l)?, a))).collect::<io::Result<Vec<_>>>()
                });
                match registered {
                    Ok(acceptors) => {
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        worker::<R>(rx, acceptors, stop, live, shared);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
            handle.workers.push(thread);
        }
        drop(ready_tx);
        // Every worker answers once (a thread that died first closes the channel early). On an
        // error, dropping `handle` stops and joins the others.
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a worker thread ended while starting")),
            }
        }
        Ok(handle)
    }

    /// Runs on smol (as [`spawn`](Self::spawn) does) until SIGINT or SIGTERM, then shuts down
    /// gracefully.
    pub fn run(self) -> io::Result<()> {
        self.run_on::<PoolRuntime>()
    }

    /// Runs on runtime `R` until SIGINT or SIGTERM, then shuts down gracefully.
    pub fn run_on<R: BlockOn>(self) -> io::Result<()> {
        let mut signals = async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
        let handle = self.spawn_on::<R>()?;
        let signal = async_io::block_on(signals.next());
        tracing::info!(
            "received {:?}; stopping, live connections may finish within {:?}",
            signal.and_then(Result::ok),
            handle.grace
        );
        handle.shutdown();
        Ok(())
    }
}

/// A running server. Dropping it shuts it down like [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    stop: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl ServerHandle {
    /// The addresses the server listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// The current counters.
    pub fn stats(&self) -> socks4_server::Stats {
        socks4_server::Stats::new(
            self.shared.active.load(Ordering::Acquire),
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.refused.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting, lets live connections finish within `timeouts.shutdown_grace`, closes the
    /// rest and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Its metrics (counting only with `config.metrics` set).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    fn stop_and_join(&mut self) {
        self.metrics.set_draining();
        // Closing the stop channel ends every accept task; each drops its senders, so once all
        // are gone the workers' channels close and they start their grace period.
        drop(self.stop.take());
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// One listener's accept loop.
struct Acceptor {
    targets: Vec<Sender<Handoff>>,
    next: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    live: Arc<LiveConfig>,
    metrics: Arc<Metrics>,
}

/// Connections accepted in a row before the accept task lets its worker's other tasks run.
const ACCEPT_BATCH: usize = 64;

impl Acceptor {
    /// Accepts until `stop` closes.
    async fn run<R: BlockOn>(self, listener: R::AcceptListener, stop: Receiver<()>) {
        let summaries = async {
            // The refusal summary's last lines, when no new refusal comes to write them.
            loop {
                R::sleep(RefusalLog::DEFAULT_INTERVAL).await;
                self.live.snapshot().limiter.refusals().flush(Instant::now());
            }
        };
        future::or(
            async {
                let _ = stop.recv().await;
            },
            future::or(self.accept_loop::<R>(&listener), summaries),
        )
        .await;
    }

    /// Accepts every pending connection (non-blocking, without registering it with the reactor:
    /// its worker does that), then waits for the listener to become readable again.
    async fn accept_loop<R: BlockOn>(&self, listener: &R::AcceptListener) {
        let mut batch = 0;
        loop {
            match R::try_accept(listener) {
                Ok((stream, peer)) => {
                    self.deal(stream, peer);
                    batch += 1;
                    if batch >= ACCEPT_BATCH {
                        batch = 0;
                        future::yield_now().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    batch = 0;
                    if let Err(e) = R::accept_readable(listener).await {
                        tracing::warn!("listener failed: {e}; pausing {ACCEPT_ERROR_PAUSE:?}");
                        R::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                }
                Err(e) if socks4_server::accept::is_per_connection(&e) => {}
                Err(e) => {
                    self.metrics.accept_error();
                    tracing::warn!("accept failed: {e}; pausing {ACCEPT_ERROR_PAUSE:?}");
                    R::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Hands `stream` to a worker, or closes it at once (sending nothing) when a limit refuses it:
    /// refusals are summarised by the limiter's log, never one line per connection.
    fn deal(&self, stream: TcpStream, peer: SocketAddr) {
        let now = Instant::now();
        let snapshot = self.live.snapshot();
        let active = self.shared.active.fetch_add(1, Ordering::AcqRel);
        if active >= snapshot.config.max_connections {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            snapshot.limiter.refusals().record(now, Refusal::ServerConnections, peer.ip().into());
            return;
        }
        let admitted = if snapshot.config.proxy_protocol.contains(peer.ip()) {
            // A load balancer: limited per client once its PROXY header names the client.
            snapshot.limiter.defer(peer.ip(), now)
        } else {
            snapshot.limiter.admit(peer.ip(), now)
        };
        let Ok(admission) = admitted else {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        if self.targets.is_empty() {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        if self.targets[i].try_send((stream, peer, admission, snapshot)).is_err() {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("worker {i} is gone; closed {peer}");
        }
    }
}

/// Decrements the live counts when a connection's task ends or is dropped.
struct LiveGuard {
    live: Rc<Cell<usize>>,
    shared: Arc<Shared>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.set(self.live.get().saturating_sub(1));
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A worker thread: one single-threaded executor running its listeners' accept tasks and serving
/// the connections it is handed.
fn worker<R: BlockOn>(
    rx: Receiver<Handoff>,
    acceptors: Vec<(R::AcceptListener, Acceptor)>,
    stop: Receiver<()>,
    config: Arc<LiveConfig>,
    shared: Arc<Shared>,
) {
    let ex = LocalExecutor::new();
    let live = Rc::new(Cell::new(0usize));
    for (listener, acceptor) in acceptors {
        ex.spawn(acceptor.run::<R>(listener, stop.clone())).detach();
    }
    drop(stop);
    R::block_on(ex.run(async {
        while let Ok((stream, peer, admission, snapshot)) = rx.recv().await {
            live.set(live.get() + 1);
            let guard = LiveGuard { live: live.clone(), shared: shared.clone() };
            ex.spawn(async move {
                let _guard = guard;
                match R::from_std(stream) {
                    Ok(stream) => socks4_async::serve_connection::<R, _>(stream, peer, &snapshot, admission, &()).await,
                    Err(e) => tracing::warn!(client = %peer, "cannot register a connection: {e}"),
                }
            })
            .detach();
        }
        // Shutdown: let live connections finish, up to the grace period.
        let end = Instant::now() + config.snapshot().config.timeouts.shutdown_grace;
        while live.get() > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::info!("closing {} connections after the shutdown grace period", live.get());
                break;
            }
            R::sleep(left.min(DRAIN_POLL)).await;
        }
    }));
    // Dropping the executor cancels what is left; their log lines say `result=shutdown`.
    drop(ex);
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
        match std::env::var(RUNTIME_VAR).as_deref() {
            Ok("async-io") => self.spawn_on::<crate::Smol>(),
            Ok("local") | Err(_) => Server::spawn(self),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{RUNTIME_VAR}={other}: expected `local` (the default) or `async-io`"),
            )),
        }
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
