//! The worker pool: one thread per worker, each a current-thread runtime with a `LocalSet`; one
//! acceptor (on worker 0) that deals connections round-robin, or (reuseport) one listener per worker.
//!
//! The acceptor runs on worker 0 rather than on a thread of its own: a separate acceptor thread
//! costs a wake-up and a context switch per burst of connections: on 2 cores it measured ~120 µs of
//! server CPU per handshake against ~104 µs with the acceptor on worker 0 (socks4-load rate, C=64). Accepting is one `accept4` per
//! connection (non-blocking, close-on-exec, not registered with the acceptor's event loop); the
//! worker that serves the connection registers it.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;

use socks4_async::Runtime as _;

use crate::Tokio;
use crate::server::{ActiveGuard, Shared};

/// Pause after an accept error such as EMFILE before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted in a row before the accept loop yields.
const ACCEPT_BATCH: usize = 64;
/// How often the refusal summary is checked for being due (it is written at most once per
/// `RefusalLog::DEFAULT_INTERVAL`).
const REFUSAL_FLUSH: Duration = Duration::from_secs(1);
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
    /// The shared listeners: this worker accepts for everyone, keeps its turn of the round-robin
    /// and hands the other turns over to the other workers (one sender each).
    Acceptor(Vec<StdListener>, Vec<mpsc::UnboundedSender<Handoff>>),
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
    if shared.live.snapshot().config.reuseport {
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
        // Worker 0 runs the acceptor: it keeps its own share of the connections and hands the
        // others over, so no thread wakes up for accepting alone.
        let mut senders = Vec::with_capacity(workers.saturating_sub(1));
        let mut receivers = Vec::with_capacity(workers.saturating_sub(1));
        for _ in 1..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let listeners: Vec<StdListener> = listeners.into_iter().flatten().collect();
        threads.push(spawn_worker(0, &shared, Source::Acceptor(listeners, senders), &stop)?);
        for (i, rx) in receivers.into_iter().enumerate() {
            threads.push(spawn_worker(i + 1, &shared, Source::Channel(rx), &stop)?);
        }
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
    thread::Builder::new().name(format!("socks4-worker-{index}")).spawn(move || {
        shared.metrics.enter_worker(index);
        run_worker(rt, shared, source, stop)
    })
}

fn run_worker(rt: Runtime, shared: Arc<Shared>, source: Source, stop: watch::Receiver<bool>) {
    let local = LocalSet::new();
    local.block_on(&rt, async {
        match source {
            Source::Channel(rx) => receive(rx, stop).await,
            Source::Listeners(listeners) => {
                tokio::task::spawn_local(flush_refusals(Arc::clone(&shared), stop.clone()));
                let tasks: Vec<_> = listeners
                    .into_iter()
                    .map(|l| tokio::task::spawn_local(accept_loop(l, Arc::clone(&shared), stop.clone(), register)))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            }
            Source::Acceptor(listeners, senders) => {
                tokio::task::spawn_local(flush_refusals(Arc::clone(&shared), stop.clone()));
                let next = Rc::new(Cell::new(0usize));
                let senders = Rc::new(senders);
                let tasks: Vec<_> = listeners
                    .into_iter()
                    .map(|l| {
                        let (next, senders) = (Rc::clone(&next), Rc::clone(&senders));
                        let deal = move |stream: StdStream, client: SocketAddr, guard: ActiveGuard| {
                            let i = next.get();
                            next.set((i + 1) % (senders.len() + 1));
                            match i.checked_sub(1) {
                                None => register(stream, client, guard),
                                Some(j) => {
                                    if senders[j].send((stream, client, guard)).is_err() {
                                        tracing::warn!(%client, worker = i, "worker gone: connection dropped");
                                    }
                                }
                            }
                        };
                        tokio::task::spawn_local(accept_loop(l, Arc::clone(&shared), stop.clone(), deal))
                    })
                    .collect();
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
        let first = tokio::select! {
            handoff = rx.recv() => match handoff {
                Some(handoff) => handoff,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        // The acceptor deals in batches: take what else is queued without going back to select.
        let mut next = Some(first);
        while let Some((stream, client, guard)) = next {
            register(stream, client, guard);
            next = rx.try_recv().ok();
        }
    }
}

/// Writes the summary of refused connections once its interval has passed, also when no new
/// refusal comes to trigger it (the last ones of a flood). A flush with nothing due is a few
/// atomic loads.
async fn flush_refusals(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REFUSAL_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {
                shared.live.snapshot().limiter.refusals().flush(Instant::now());
            }
        }
    }
}

/// Waits until no connection is left or the grace period ends.
async fn drain(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + shared.live.snapshot().config.timeouts.shutdown_grace;
    while shared.active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// One connection's task: the shared driver, then its slot is freed (also when the task is
/// dropped at the end of the grace period).
pub(crate) async fn serve(stream: TcpStream, client: SocketAddr, guard: ActiveGuard) {
    let ActiveGuard { slot, admission, snapshot } = guard;
    socks4_async::serve_connection::<Tokio, ()>(stream, client, &snapshot, admission, &()).await;
    drop(slot);
}

/// Registers an accepted connection with this worker's event loop and serves it here.
fn register(stream: StdStream, client: SocketAddr, guard: ActiveGuard) {
    match Tokio::from_std(stream) {
        Ok(stream) => drop(tokio::task::spawn_local(serve(stream, client, guard))),
        Err(e) => tracing::warn!(%client, "cannot register a connection: {e}"),
    }
}

/// Accepts until shutdown, admitting each connection against the limit and dispatching it as a
/// non-blocking std stream (not registered with any event loop: the worker it goes to registers it).
///
/// On Unix the listener is watched with [`AsyncFd`](tokio::io::unix::AsyncFd) and, once readable,
/// accepted from until it would block (at most [`ACCEPT_BATCH`] at a time).
#[cfg(unix)]
async fn accept_loop(
    listener: StdListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut dispatch: impl FnMut(StdStream, SocketAddr, ActiveGuard),
) {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    // SAFETY: the `AsyncFd` owns the listener, so its descriptor stays open and the same for the
    // `AsyncFd`'s whole life.
    let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    let listener = match registered {
        Ok(l) => l,
        Err(e) => return tracing::error!("cannot register a listener: {e}"),
    };
    loop {
        let ready = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            ready = listener.readable() => ready,
        };
        let mut ready = match ready {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("listener failed: {e}");
                return;
            }
        };
        let mut failed = None;
        for _ in 0..ACCEPT_BATCH {
            // A WouldBlock clears the readiness, and ends the batch.
            let Ok(accepted) = ready.try_io(|l| socks4_sys::accept_nonblocking(l.get_ref())) else {
                break;
            };
            match accepted {
                Ok((stream, client)) => {
                    if let Some(guard) = shared.admit(client) {
                        dispatch(stream, client, guard);
                    }
                }
                Err(e) if socks4_server::accept::is_per_connection(&e) => tracing::debug!("accept: {e}"),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(ready);
        match failed {
            Some(e) => {
                shared.metrics.accept_error();
                tracing::warn!("accept failed: {e}; retrying in {} ms", ACCEPT_ERROR_PAUSE.as_millis());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
            // Let the worker's connections (reuseport) run between batches.
            None => tokio::task::yield_now().await,
        }
    }
}

/// Accepts until shutdown, admitting each connection against the limit and dispatching it as a
/// non-blocking std stream.
#[cfg(not(unix))]
async fn accept_loop(
    listener: StdListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut dispatch: impl FnMut(StdStream, SocketAddr, ActiveGuard),
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("cannot register a listener: {e}"),
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted.and_then(|(stream, client)| Ok((stream.into_std()?, client))) {
            Ok((stream, client)) => {
                if let Some(guard) = shared.admit(client) {
                    dispatch(stream, client, guard);
                }
            }
            Err(e) if socks4_server::accept::is_per_connection(&e) => tracing::debug!("accept: {e}"),
            Err(e) => {
                shared.metrics.accept_error();
                tracing::warn!("accept failed: {e}; retrying in {} ms", ACCEPT_ERROR_PAUSE.as_millis());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use socks4_server::ServerConfig;

    use super::*;

    /// The per-connection task stays small: the perf goal is < 16 KiB per idle relayed connection
    /// in total, and the relay holds no buffer while idle.
    #[test]
    fn connection_future_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = TcpStream::connect(addr).await.unwrap();
            let live = socks4_server::reload::LiveConfig::new(ServerConfig::default()).unwrap();
            let shared = Arc::new(Shared::new(live, 1));
            let guard = shared.admit(addr).unwrap();
            let task = serve(stream, addr, guard);
            let size = std::mem::size_of_val(&task);
            println!("connection future: {size} bytes");
            assert!(size < 4096, "connection future is {size} bytes");
        });
    }
}
