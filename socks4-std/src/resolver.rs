//! SOCKS4a name resolution off the event loops: a small pool of threads blocking in
//! `getaddrinfo`, answering each worker through its channel and its poller's `notify`.

use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use polling::Poller;
use socks4_core::Failure;

use crate::worker::Msg;

/// How many resolver threads a server runs.
pub(crate) const RESOLVER_THREADS: usize = 4;

/// One lookup to do.
pub(crate) struct Job {
    /// The SOCKS4a host name.
    pub(crate) host: String,
    /// The requested port (only passed to `getaddrinfo`).
    pub(crate) port: u16,
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

fn run(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = resolve(&job.host, job.port);
        if job.reply.send(Msg::Resolved { slot: job.slot, id: job.id, result }).is_ok() {
            let _ = job.poller.notify();
        }
    }
}

/// The addresses of `host` worth trying, in order (never empty), or why there are none.
pub(crate) fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, Failure> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            Some(socks4_core::driver::connect_candidates(addrs)).filter(|c| !c.is_empty()).ok_or(Failure::NotFound)
        }
        // getaddrinfo's "no such name" has no error kind of its own.
        Err(e) => Err(match Failure::from(&e) {
            Failure::Other => Failure::NotFound,
            other => other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_to_ipv4() {
        assert_eq!(resolve("localhost", 80).unwrap()[0], IpAddr::from([127, 0, 0, 1]));
        assert_eq!(resolve("::1", 80), Ok(vec![IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]));
        assert_eq!(resolve("0.0.0.0", 80), Ok(vec![IpAddr::from([0, 0, 0, 0])]), "for the handshake to refuse");
    }

    #[test]
    fn unknown_name_is_not_found() {
        assert!(resolve("no-such-host.invalid", 80).is_err());
    }
}
