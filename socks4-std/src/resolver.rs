//! Blocking work off the event loops (SOCKS4a and parent proxies' names with `getaddrinfo`; ident
//! queries run on the pollers, see `Conn::start_ident`): a small pool of threads answering each
//! worker through its channel and its poller's `notify`. (Users-file checks run on the verifier's own threads, with its bounded places: see
//! [`Verifier::verify`](socks4_server::users::Verifier::verify).)

use std::io;
use std::net::ToSocketAddrs;
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
    /// Look up a parent proxy's name for a chained attempt (its `usize`-th parent).
    ResolveParent(String, u16, usize),
}

/// One lookup to do.
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

/// Runs a SOCKS4a name's lookup (`job`'s task is [`Task::Resolve`]): with our own resolver when
/// `names` lists name servers (its callback answers the worker, at once when cached), else on the
/// pool (`getaddrinfo`). False when it cannot be asked.
pub(crate) fn submit_name(names: &socks4_server::config::NamesConfig, pool: &Sender<Job>, job: Job) -> bool {
    let Task::Resolve(host, port) = &job.task else { return submit(pool, job) };
    match socks4_server::names::resolver_for(names) {
        None => submit(pool, job),
        Some(Ok(resolver)) => {
            let (host, port) = (host.clone(), *port);
            let Job { slot, id, reply, poller, .. } = job;
            resolver.lookup(
                &host,
                port,
                Box::new(move |lookup| {
                    if reply.send(Msg::Resolved { slot, id, lookup }).is_ok() {
                        let _ = poller.notify();
                    }
                }),
            );
            true
        }
        Some(Err(e)) => {
            tracing::warn!("our resolver: {e}");
            false
        }
    }
}

/// Runs `job` on the pool; false when the pool is gone.
pub(crate) fn submit(pool: &Sender<Job>, job: Job) -> bool {
    pool.send(job).is_ok()
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
            Task::Resolve(host, port) => Msg::Resolved { slot: job.slot, id: job.id, lookup: lookup(&host, port) },
            Task::ResolveParent(host, port, parent) => {
                Msg::ParentResolved { slot: job.slot, id: job.id, parent, candidates: resolve(&host, port) }
            }
        };
        if job.reply.send(msg).is_ok() {
            let _ = job.poller.notify();
        }
    }
}

/// The addresses of `host`, in the resolver's order (the decisions order them for connecting).
pub(crate) fn lookup(host: &str, port: u16) -> io::Result<Vec<std::net::SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The addresses of `host` worth trying, in order (a parent proxy's name).
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
