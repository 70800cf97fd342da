//! The public server: [`Server`] binds the listeners, [`ServerHandle`] owns the running pool.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use socks4_server::limits::{Admission, Refusal};
use socks4_server::metrics::Metrics;
use socks4_server::reload::{LiveConfig, Snapshot};
use socks4_server::{ServerConfig, Stats};
use tokio::sync::watch;

use crate::pool;

/// State shared by the acceptor and all workers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config (rules, users file's verifier, per-client limiter...) each connection takes a
    /// snapshot of at accept; swapped by a reload.
    pub(crate) live: Arc<LiveConfig>,
    /// Connections being served right now.
    pub(crate) active: AtomicUsize,
    /// Connections accepted and served (not counting those over the limit).
    pub(crate) accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were already being served.
    pub(crate) over_limit: AtomicU64,
    /// Metrics (counting only with `--metrics`).
    pub(crate) metrics: Arc<Metrics>,
}

impl Shared {
    /// Fresh counters for `live` and `workers`.
    pub(crate) fn new(live: Arc<LiveConfig>, workers: usize) -> Self {
        Shared {
            metrics: live.metrics(workers),
            live,
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
        }
    }

    /// Counts a newly accepted connection in, unless `max_connections` or a per-client limit
    /// refuses it. Refusals are not logged one by one: the limiter's `RefusalLog` summarises them.
    pub(crate) fn admit(self: &Arc<Self>, client: SocketAddr) -> Option<ActiveGuard> {
        let now = Instant::now();
        let snapshot = self.live.snapshot();
        let max = snapshot.config.max_connections;
        let admitted =
            self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok();
        if !admitted {
            self.over_limit.fetch_add(1, Ordering::Relaxed);
            snapshot.limiter.refusals().record(now, Refusal::ServerConnections, client.ip().into());
            return None;
        }
        if snapshot.config.proxy_protocol.contains(client.ip()) {
            // A load balancer: limited per client once its PROXY header names the client.
            let Ok(admission) = snapshot.limiter.defer(client.ip(), now) else {
                self.active.fetch_sub(1, Ordering::AcqRel);
                return None;
            };
            self.accepted.fetch_add(1, Ordering::Relaxed);
            return Some(ActiveGuard { slot: Slot(Arc::clone(self)), admission, snapshot });
        }
        match snapshot.limiter.admit(client.ip(), now) {
            Ok(admission) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Some(ActiveGuard { slot: Slot(Arc::clone(self)), admission, snapshot })
            }
            Err(_counted_by_the_limiter) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// One admitted connection: its `max_connections` slot, its per-client [`Admission`] and the
/// config it runs with; dropping it frees both.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    pub(crate) slot: Slot,
    pub(crate) admission: Admission,
    /// The config this connection runs with, taken at accept.
    pub(crate) snapshot: Arc<Snapshot>,
}

/// A connection's `max_connections` slot, freed on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    workers: usize,
    /// Round-robin mode: one listener per address. Reuseport mode: per address, one per worker.
    listeners: Vec<Vec<TcpListener>>,
}

impl Server {
    /// Validates `config`, loads its users file and binds its listen addresses (port 0 picks a
    /// free port).
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
        let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let listeners = socks4_server::listen::listeners(config, workers, activated)?;
        live.listening_on(&socks4_server::listen::local_addrs(&listeners));
        Ok(Server { shared: Arc::new(Shared::new(live, workers)), workers, listeners })
    }

    /// The addresses actually listened on, one per configured address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        socks4_server::listen::local_addrs(&self.listeners)
    }

    /// The configuration new connections get now.
    pub fn config(&self) -> ServerConfig {
        self.shared.live.snapshot().config.clone()
    }

    /// The live configuration: [`LiveConfig::replace`] reconfigures the server for new connections.
    pub fn live(&self) -> &Arc<LiveConfig> {
        &self.shared.live
    }

    /// Its metrics (counting only with `config.metrics` set); serve them with
    /// [`Endpoint`](socks4_server::metrics::Endpoint).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Starts the workers (and the acceptor, unless in reuseport mode) in background threads.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let (stop, stop_rx) = watch::channel(false);
        let threads = pool::start(Arc::clone(&self.shared), self.workers, self.listeners, stop_rx)?;
        Ok(ServerHandle { shared: self.shared, stop, threads })
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully (see [`ServerHandle::shutdown`]).
    pub fn run(self) -> io::Result<()> {
        let handle = self.spawn()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(wait_for_signal())?;
        tracing::info!("signal received: shutting down");
        handle.shutdown();
        Ok(())
    }
}

async fn wait_for_signal() -> io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// A running server. Dropping it shuts it down like [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The current counters.
    pub fn stats(&self) -> Stats {
        Stats::new(
            self.shared.active.load(Ordering::Acquire),
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.over_limit.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting, lets live connections finish for up to `timeouts.shutdown_grace`, then
    /// closes the rest and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Its metrics (counting only with `config.metrics` set).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    fn stop_and_join(&mut self) {
        self.shared.metrics.set_draining();
        self.stop.send_replace(true);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a server thread panicked");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
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
