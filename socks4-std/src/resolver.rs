//! Blocking work off the event loops (SOCKS4a names with `getaddrinfo`, ident queries): a small
//! pool of threads answering each worker through its channel and its poller's `notify`. (Users-file
//! checks run on the verifier's own threads, with its bounded places: see
//! [`Verifier::verify`](socks4_server::users::Verifier::verify).)

use std::io;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use polling::Poller;
use socks4_core::driver::Candidates;

use crate::worker::Msg;

/// How many resolver threads a server runs.
pub(crate) const RESOLVER_THREADS: usize = 4;

/// What a job asks for.
pub(crate) enum Task {
    /// Look up a SOCKS4a host name (the port is only passed to `getaddrinfo`).
    Resolve(String, u16),
    /// Ask the identd of the client (`client` → `local`) within the timeout.
    Ident(std::net::SocketAddr, std::net::SocketAddr, std::time::Duration),
    /// Connect through a route's parent proxies (on a thread of its own: it may wait for a
    /// connect timeout per parent, which must not hold up the pool's lookups).
    Chain(Box<Chain>),
    /// BIND through a route's parent proxies: the parent's first reply (expected peer, route,
    /// user id, timeout per parent).
    ChainBind(Box<Chain>),
    /// BIND through a parent: wait up to the timeout for its second reply.
    ChainPeer(Box<socks4_server::upstream::ParentBindWait>, std::time::Duration),
}

/// A chained connect: the route, the destination, the client's user id and the timeout per parent.
pub(crate) struct Chain {
    pub(crate) route: socks4_core::rules::Route,
    pub(crate) target: socks4_server::upstream::ChainTarget,
    pub(crate) user_id: Vec<u8>,
    pub(crate) timeout: std::time::Duration,
}

/// One lookup (or ident query) to do.
pub(crate) struct Job {
    /// What to do.
    pub(crate) task: Task,
    /// The asking connection's slot in its worker.
    pub(crate) slot: usize,
    /// The asking connection's id.
    pub(crate) id: u64,
    /// Where the answer goes.
    pub(crate) reply: Sender<Msg>,
    /// The asking worker's poller, to wake it.
    pub(crate) poller: Arc<Poller>,
}

/// Starts the pool; it ends when every clone of the returned sender is dropped. The threads are
/// not joined: one may be blocked in a slow lookup, and its answer is simply dropped.
pub(crate) fn start(threads: usize) -> io::Result<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        thread::Builder::new().name(format!("socks4-resolve-{i}")).stack_size(256 * 1024).spawn(move || run(&rx))?;
    }
    Ok(tx)
}

/// The most chained connects and BINDs on threads of their own at once; more are refused.
const MAX_CHAIN_THREADS: usize = 256;

/// Runs `job` on the pool, or a chained connect or BIND on a thread of its own (it may wait a
/// connect timeout per parent, or a BIND's peer, which must not hold up the pool's lookups). False
/// when it cannot run: the pool is gone, or [`MAX_CHAIN_THREADS`] run already (a flood of
/// requests routed to a dead parent must not start a thread each).
pub(crate) fn submit(pool: &Sender<Job>, job: Job) -> bool {
    static CHAIN_THREADS: AtomicUsize = AtomicUsize::new(0);
    let chain = matches!(job.task, Task::Chain(_) | Task::ChainBind(_) | Task::ChainPeer(..));
    if !chain {
        return pool.send(job).is_ok();
    }
    if CHAIN_THREADS.fetch_add(1, Ordering::Relaxed) < MAX_CHAIN_THREADS {
        let (tx, rx) = mpsc::channel::<Job>();
        let run = move || {
            if let Ok(job) = rx.recv() {
                answer(job);
            }
            CHAIN_THREADS.fetch_sub(1, Ordering::Relaxed);
        };
        if thread::Builder::new().name("socks4-chain".into()).stack_size(256 * 1024).spawn(run).is_ok() {
            return tx.send(job).is_ok();
        }
    }
    CHAIN_THREADS.fetch_sub(1, Ordering::Relaxed); // over the cap, or the spawn failed
    warn_chain_cap();
    false
}

/// Says (at most once every 10 s) that chained connects are being refused: the client only sees
/// a 91, and its log line a failed connect.
fn warn_chain_cap() {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = EPOCH.get_or_init(std::time::Instant::now).elapsed().as_secs();
    let next = NEXT.load(Ordering::Relaxed);
    if now >= next && NEXT.compare_exchange(next, now + 10, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(
            "{MAX_CHAIN_THREADS} connects or BINDs through parent proxies are under way: refusing more (reply 91) until \
             some end"
        );
    }
}

fn run(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        answer(job);
    }
}

/// Does the job and sends its answer to the asking worker.
fn answer(job: Job) {
    {
        let msg = match job.task {
            Task::Resolve(host, port) => Msg::Resolved { slot: job.slot, id: job.id, candidates: resolve(&host, port) },
            Task::Ident(client, local, timeout) => Msg::Ident {
                slot: job.slot,
                id: job.id,
                answer: socks4_server::ident::ask_blocking(client, local, timeout),
            },
            Task::Chain(c) => {
                let ups = socks4_server::upstream::Upstreams::global();
                let chained = ups.connect_blocking(&c.route, &c.target, &c.user_id, c.timeout);
                Msg::Chained { slot: job.slot, id: job.id, chained }
            }
            Task::ChainBind(c) => {
                let ups = socks4_server::upstream::Upstreams::global();
                let chained = match c.target {
                    socks4_server::upstream::ChainTarget::Addr(std::net::SocketAddr::V4(peer)) => {
                        ups.bind_blocking(&c.route, peer, &c.user_id, c.timeout)
                    }
                    // An IPv6 peer cannot be asked for.
                    _ => socks4_server::upstream::ChainedBind { result: Err(socks4_core::Failure::Other), via: None },
                };
                Msg::ChainBound { slot: job.slot, id: job.id, chained: Box::new(chained) }
            }
            Task::ChainPeer(wait, timeout) => {
                Msg::ChainPeer { slot: job.slot, id: job.id, result: wait.peer_blocking(timeout) }
            }
        };
        if job.reply.send(msg).is_ok() {
            let _ = job.poller.notify();
        }
    }
}

/// The addresses of `host` worth trying, in order.
pub(crate) fn resolve(host: &str, port: u16) -> Candidates {
    Candidates::from_lookup((host, port).to_socket_addrs())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use socks4_core::Failure;

    use super::*;

    #[test]
    fn localhost_resolves_to_ipv4() {
        assert_eq!(resolve("localhost", 80).first(), Ok(IpAddr::from([127, 0, 0, 1])));
        let mut v6 = resolve("::1", 80);
        assert_eq!(v6.first(), Ok(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)));
        assert_eq!(v6.next_after(Failure::Refused), None);
        assert_eq!(resolve("0.0.0.0", 80).first(), Ok(IpAddr::from([0, 0, 0, 0])), "for the handshake to refuse");
    }

    #[test]
    fn unknown_name_is_not_found() {
        assert_eq!(resolve("no-such-host.invalid", 80).first(), Err(Failure::NotFound));
    }
}
