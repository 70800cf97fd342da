//! The worker pool: one thread per worker, each a current-thread runtime with a `LocalSet`; one
//! acceptor that deals connections round-robin, or (reuseport) one listener per worker.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;

use crate::conn;
use crate::server::{ActiveGuard, Shared};

/// Pause after an accept error such as EMFILE before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often a draining worker checks whether all connections ended.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A connection on its way from the acceptor to a worker.
type Handoff = (StdStream, SocketAddr, ActiveGuard);

/// Where a worker's connections come from.
enum Source {
    /// Handed over by the acceptor.
    Channel(mpsc::UnboundedReceiver<Handoff>),
    /// The worker's own `SO_REUSEPORT` listeners.
    Listeners(Vec<StdListener>),
}

/// Starts the threads; `listeners` holds, per listen address, one listener (round-robin) or one
/// per worker (reuseport).
pub(crate) fn start(
    shared: Arc<Shared>,
    workers: usize,
    listeners: Vec<Vec<StdListener>>,
    stop: watch::Receiver<bool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(workers + 1);
    if shared.config.reuseport {
        let mut per_worker: Vec<Vec<StdListener>> = (0..workers).map(|_| Vec::new()).collect();
        for group in listeners {
            for (i, l) in group.into_iter().enumerate() {
                per_worker[i % workers].push(l);
            }
        }
        for (i, own) in per_worker.into_iter().enumerate() {
            threads.push(spawn_worker(i, &shared, Source::Listeners(own), &stop)?);
        }
    } else {
        let mut senders = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            threads.push(spawn_worker(i, &shared, Source::Channel(rx), &stop)?);
        }
        let rt = runtime()?;
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        let listeners: Vec<StdListener> = listeners.into_iter().flatten().collect();
        let acceptor = thread::Builder::new()
            .name("socks4-acceptor".into())
            .spawn(move || run_acceptor(rt, shared, listeners, senders, stop))?;
        threads.push(acceptor);
    }
    Ok(threads)
}

fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn spawn_worker(
    index: usize,
    shared: &Arc<Shared>,
    source: Source,
    stop: &watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let rt = runtime()?;
    let shared = Arc::clone(shared);
    let stop = stop.clone();
    thread::Builder::new().name(format!("socks4-worker-{index}")).spawn(move || run_worker(rt, shared, source, stop))
}

fn run_worker(rt: Runtime, shared: Arc<Shared>, source: Source, stop: watch::Receiver<bool>) {
    let local = LocalSet::new();
    local.block_on(&rt, async {
        match source {
            Source::Channel(rx) => receive(rx, stop).await,
            Source::Listeners(listeners) => {
                let mut tasks = Vec::new();
                for l in listeners {
                    match TcpListener::from_std(l) {
                        Ok(l) => tasks.push(tokio::task::spawn_local(accept_loop(
                            l,
                            Arc::clone(&shared),
                            stop.clone(),
                            serve_here,
                        ))),
                        Err(e) => tracing::error!("cannot register a listener: {e}"),
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
        drain(&shared).await;
    });
    // Dropping the LocalSet drops the connections still open after the grace period.
    drop(local);
}

/// Serves connections handed over by the acceptor until shutdown.
async fn receive(mut rx: mpsc::UnboundedReceiver<Handoff>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            handoff = rx.recv() => match handoff {
                Some((stream, client, guard)) => match TcpStream::from_std(stream) {
                    Ok(stream) => serve_here(stream, client, guard),
                    Err(e) => tracing::warn!(%client, "cannot register a connection: {e}"),
                },
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Waits until no connection is left or the grace period ends.
async fn drain(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + shared.config.timeouts.shutdown_grace;
    while shared.active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn serve_here(stream: TcpStream, client: SocketAddr, guard: ActiveGuard) {
    tokio::task::spawn_local(conn::serve(stream, client, guard));
}

fn run_acceptor(
    rt: Runtime,
    shared: Arc<Shared>,
    listeners: Vec<StdListener>,
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    stop: watch::Receiver<bool>,
) {
    let local = LocalSet::new();
    local.block_on(&rt, async {
        let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let senders = std::rc::Rc::new(senders);
        let mut tasks = Vec::new();
        for l in listeners {
            let l = match TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot register a listener: {e}");
                    continue;
                }
            };
            let (next, senders) = (next.clone(), senders.clone());
            let deal = move |stream: TcpStream, client: SocketAddr, guard: ActiveGuard| {
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => return tracing::warn!(%client, "cannot hand over a connection: {e}"),
                };
                let i = next.get();
                next.set((i + 1) % senders.len());
                if senders[i].send((stream, client, guard)).is_err() {
                    tracing::warn!(%client, worker = i, "worker gone: connection dropped");
                }
            };
            tasks.push(tokio::task::spawn_local(accept_loop(l, Arc::clone(&shared), stop.clone(), deal)));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Accepts until shutdown, admitting each connection against the limit and dispatching it.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut dispatch: impl FnMut(TcpStream, SocketAddr, ActiveGuard),
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                if let Some(guard) = shared.admit(client) {
                    dispatch(stream, client, guard);
                }
            }
            Err(e) if is_per_connection(&e) => tracing::debug!("accept: {e}"),
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying in {} ms", ACCEPT_ERROR_PAUSE.as_millis());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
