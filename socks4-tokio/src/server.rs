//! The public server: [`Server`] binds the listeners, [`ServerHandle`] owns the running pool.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use socks4_server::ServerConfig;
use socks4_server::limits::{Admission, Limiter, Refusal};
use socks4_server::users::Verifier;
use tokio::sync::watch;

use crate::pool;

/// State shared by the acceptor and all workers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// Per-client limits, checked at accept.
    pub(crate) limiter: Arc<Limiter>,
    /// The users file's verifier, with `--users`.
    pub(crate) verifier: Option<Arc<Verifier>>,
    /// Connections being served right now.
    pub(crate) active: AtomicUsize,
    /// Connections accepted and served (not counting those over the limit).
    pub(crate) accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were already being served.
    pub(crate) over_limit: AtomicU64,
}

impl Shared {
    /// Fresh counters and limiter for `config`; loads its users file, if any.
    pub(crate) fn new(config: ServerConfig) -> io::Result<Self> {
        let verifier = config.verifier().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Shared {
            limiter: config.limiter(Instant::now()),
            verifier,
            config,
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
        })
    }

    /// Counts a newly accepted connection in, unless `max_connections` or a per-client limit
    /// refuses it. Refusals are not logged one by one: the limiter's `RefusalLog` summarises them.
    pub(crate) fn admit(self: &Arc<Self>, client: SocketAddr) -> Option<ActiveGuard> {
        let now = Instant::now();
        let max = self.config.max_connections;
        let admitted =
            self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok();
        if !admitted {
            self.over_limit.fetch_add(1, Ordering::Relaxed);
            self.limiter.refusals().record(now, Refusal::ServerConnections, client.ip().into());
            return None;
        }
        if self.config.proxy_protocol.contains(client.ip()) {
            // A load balancer: limited per client once its PROXY header names the client.
            self.accepted.fetch_add(1, Ordering::Relaxed);
            return Some(ActiveGuard { shared: Arc::clone(self), admission: self.limiter.defer(client.ip()) });
        }
        match self.limiter.admit(client.ip(), now) {
            Ok(admission) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Some(ActiveGuard { shared: Arc::clone(self), admission })
            }
            Err(_counted_by_the_limiter) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// One admitted connection: its `max_connections` slot and its per-client [`Admission`]; dropping
/// it frees both.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    shared: Arc<Shared>,
    admission: Admission,
}

impl ActiveGuard {
    /// The server state this connection belongs to, and its admission (to end its handshake).
    pub(crate) fn parts(&mut self) -> (&Shared, &mut Admission) {
        (&self.shared, &mut self.admission)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections being served now.
    pub active: usize,
    /// Connections admitted since the start.
    pub accepted: u64,
    /// Connections closed at once because the connection limit was reached.
    pub over_limit: u64,
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
    /// Validates `config` and binds its listen addresses (port 0 picks a free port).
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let per_address = if config.reuseport { workers } else { 1 };
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in config.listen_addrs() {
            let first = listen(addr, config.reuseport)?;
            let bound = first.local_addr()?;
            let mut group = vec![first];
            for _ in 1..per_address {
                group.push(listen(bound, true)?);
            }
            listeners.push(group);
        }
        Ok(Server { shared: Arc::new(Shared::new(config)?), workers, listeners })
    }

    /// The addresses actually listened on, one per configured address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|group| group.first()?.local_addr().ok()).collect()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
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

/// Creates a non-blocking listener (IPv6 ones are IPv6-only, so `[::]` and `0.0.0.0` can coexist).
fn listen(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuseport {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
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
        Stats {
            active: self.shared.active.load(Ordering::Acquire),
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            over_limit: self.shared.over_limit.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, lets live connections finish for up to `timeouts.shutdown_grace`, then
    /// closes the rest and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
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
    fn bind(config: ServerConfig) -> io::Result<Self> {
        Server::bind(config)
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        Server::local_addrs(self)
    }

    fn run(self) -> io::Result<()> {
        Server::run(self)
    }
}
