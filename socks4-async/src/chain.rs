//! Chaining through parent proxies on the worker's event loop: the sans-IO
//! [`Attempt`](socks4_server::chain::Attempt) (which parent, what to write, how much to read,
//! what a reply means, the parents' health) performed with the runtime's resolver, connects,
//! stream and timers, each within the attempt's deadline. The driver awaits [`answer`] while it
//! watches the client: a client that leaves drops the future, and dropping the attempt and the
//! parent's stream closes the connection to the parent at once. Nothing waits on a thread, so a
//! stalled parent holds its socket and a timer.

use std::future::Future;
use std::io;
use std::time::Instant;

use socks4_core::driver::Candidates;
use socks4_core::{Failure, REPLY_LEN};
use socks4_server::chain::{Answer, Attempt, Io};
use socks4_server::egress::Outgoing;

use crate::runtime::{Runtime, local_addr, set_nodelay, within};

/// Performs `attempt`'s I/O until its next [`Answer`]: `parent` is its connection to the parent
/// (replaced at each connect; the relay's after a granted CONNECT or BIND's second reply), each
/// made by `outgoing` (the source the rule's `out` or `--outgoing` names).
///
/// # Errors
/// Only if the attempt stalls (waits with no deadline) or ends without an answer: a bug.
pub(crate) async fn answer<R: Runtime>(
    attempt: &mut Attempt,
    parent: &mut Option<R::Stream>,
    outgoing: Outgoing<'_>,
) -> io::Result<Answer> {
    let mut buf = [0u8; REPLY_LEN];
    loop {
        let deadline = attempt.deadline();
        match attempt.poll() {
            Io::Resolve { host, port, parent: n } => {
                let lookup = until::<R, _>(deadline, R::resolve(host, port)).await;
                match lookup {
                    Some(lookup) => attempt.handle_resolved(Instant::now(), n, Candidates::from_lookup(lookup)),
                    None => attempt.handle_timeout(Instant::now()),
                }
            }
            Io::Connect(addr) => {
                *parent = None;
                let Some(deadline) = deadline else { return Err(stalled()) };
                let left = deadline.saturating_duration_since(Instant::now());
                let result = match outgoing.socket(addr) {
                    Ok(socket) => R::connect_socket(socket, addr, left).await,
                    Err(e) => Err(e),
                };
                if let Ok(local) = result.as_ref().map_err(drop).and_then(|s| local_addr::<R>(s).map_err(drop)) {
                    outgoing.connected(local);
                }
                let result = result.map(|stream| {
                    set_nodelay::<R>(&stream);
                    *parent = Some(stream);
                });
                attempt.handle_connected(Instant::now(), result.map_err(|e| Failure::from(&e)));
            }
            Io::Write(bytes) => {
                let Some(stream) = parent.as_ref() else {
                    attempt.handle_error(Instant::now(), Failure::Other);
                    continue;
                };
                match until::<R, _>(deadline, R::write(stream, bytes)).await {
                    Some(Ok(0)) => attempt.handle_error(Instant::now(), Failure::Other),
                    Some(Ok(n)) => attempt.handle_written(n),
                    Some(Err(e)) => attempt.handle_error(Instant::now(), Failure::from(&e)),
                    None => attempt.handle_timeout(Instant::now()),
                }
            }
            Io::Read(want) => {
                let Some(stream) = parent.as_ref() else {
                    attempt.handle_error(Instant::now(), Failure::Other);
                    continue;
                };
                let buf = &mut buf[..want.min(REPLY_LEN)];
                match until::<R, _>(deadline, R::read(stream, buf)).await {
                    Some(Ok(0)) => attempt.handle_eof(Instant::now()),
                    Some(Ok(n)) => drop(attempt.handle_input(Instant::now(), &buf[..n])),
                    Some(Err(e)) => attempt.handle_error(Instant::now(), Failure::from(&e)),
                    None => attempt.handle_timeout(Instant::now()),
                }
            }
            Io::Answer(answer) => return Ok(answer),
            // A timer woke before the deadline: wait out the rest.
            Io::Wait => {
                let Some(deadline) = deadline else { return Err(stalled()) };
                R::sleep(deadline.saturating_duration_since(Instant::now())).await;
                attempt.handle_timeout(Instant::now());
            }
            Io::Done => return Err(io::Error::other("chained attempt over without an answer")),
        }
    }
}

fn stalled() -> io::Error {
    io::Error::other("stalled chained attempt")
}

/// Runs `work` until `deadline` (`None`: no deadline); `None` if the deadline came first.
async fn until<R: Runtime, T>(deadline: Option<Instant>, work: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => within::<R, _>(deadline.saturating_duration_since(Instant::now()), work).await,
        None => Some(work.await),
    }
}
