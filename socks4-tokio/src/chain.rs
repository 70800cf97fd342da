//! Chaining through parent proxies on the worker's event loop: the route's parents tried in turn
//! ([`Plan`]), each resolved, connected to, asked and answered with tokio's sockets and timers,
//! within the connect timeout per parent. Dropping a future here (the client left) drops the
//! attempt and closes the connection to the parent at once: nothing waits on a thread. The
//! policy (the request, the order and health, what a reply means) is
//! [`socks4_server::upstream`]'s.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use socks4_core::rules::Route;
use socks4_core::{ClientEvent, ClientHandshake, Failure};
use socks4_server::upstream::{self, ChainTarget, Chained, Plan, Upstreams};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::client::read_reply;

/// Connects to `target` through `route` (see [`upstream::connect_request`]): the stream to
/// relay and the address the parent reported.
pub(crate) async fn connect(
    route: &Route,
    target: &ChainTarget,
    user_id: &[u8],
    timeout: Duration,
) -> Chained<(TcpStream, SocketAddr)> {
    let request = match upstream::connect_request(route, target, user_id) {
        Ok(request) => request,
        Err(failure) => return Chained::failed(failure),
    };
    let chained =
        through(Upstreams::global().plan(route), request, timeout, |event, _| upstream::finish_connect(event));
    let Chained { result, via } = chained.await;
    Chained { result: result.map(|(stream, _, bound)| (stream, bound)), via }
}

/// BIND through `route`: the parent listens (its first reply).
pub(crate) async fn bind(
    route: &Route,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
    timeout: Duration,
) -> Chained<ParentBind> {
    let request = match upstream::bind_request(route, expected_peer, user_id) {
        Ok(request) => request,
        Err(failure) => return Chained::failed(failure),
    };
    let Chained { result, via } =
        through(Upstreams::global().plan(route), request, timeout, upstream::first_bind_reply).await;
    Chained { result: result.map(|(stream, hs, listening)| ParentBind { stream, hs, listening }), via }
}

/// A BIND a parent accepted: it listens; its second reply is to come.
#[derive(Debug)]
pub(crate) struct ParentBind {
    stream: TcpStream,
    hs: ClientHandshake,
    /// Where the parent listens, for the client's first reply.
    pub(crate) listening: SocketAddr,
}

impl ParentBind {
    /// Waits up to `timeout` for the parent's second reply: the connection to relay and the peer.
    pub(crate) async fn peer(mut self, timeout: Duration) -> Result<(TcpStream, SocketAddr), Failure> {
        let event = timeout_at(Instant::now() + timeout, read_reply(&mut self.stream, &mut self.hs)).await;
        let event = event.map_err(|_| Failure::TimedOut)?.map_err(|e| upstream::reply_failure(&e))?;
        Ok((self.stream, upstream::second_bind_reply(event)?))
    }
}

/// Tries `plan`'s parents until one is reached, then sends it `request` and reads its reply, which
/// `meaning` turns into the answer (given the parent's address); all within `timeout` per parent.
async fn through(
    mut plan: Plan<'_>,
    request: ClientHandshake,
    timeout: Duration,
    meaning: impl Fn(ClientEvent, Option<SocketAddr>) -> Result<SocketAddr, Failure>,
) -> Chained<(TcpStream, ClientHandshake, SocketAddr)> {
    while let Some(parent) = plan.next() {
        let end = Instant::now() + timeout;
        let reached = timeout_at(end, reach(&parent.host, parent.port)).await;
        let mut stream = match reached.unwrap_or(Err(Failure::TimedOut)) {
            Ok(stream) => stream,
            Err(failure) => {
                plan.unreachable(parent, failure);
                continue;
            }
        };
        let mut hs = request.clone();
        let asked = timeout_at(end, async {
            stream.write_all(hs.request_bytes()).await?;
            read_reply(&mut stream, &mut hs).await
        });
        let result = match asked.await {
            Err(_elapsed) => Err(Failure::TimedOut),
            Ok(Err(e)) => Err(upstream::reply_failure(&e)),
            Ok(Ok(event)) => meaning(event, stream.peer_addr().ok()),
        };
        return plan.answered(parent, result.map(|addr| (stream, hs, addr)));
    }
    plan.exhausted()
}

/// Resolves a parent (an address needs no lookup) and connects to its first address that answers.
async fn reach(host: &str, port: u16) -> Result<TcpStream, Failure> {
    let addrs = tokio::net::lookup_host((host, port)).await.map_err(|_| Failure::NotFound)?;
    let mut failure = Failure::NotFound;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => failure = Failure::from(&e),
        }
    }
    Err(failure)
}
