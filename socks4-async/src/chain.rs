//! Chaining through parent proxies on the worker's event loop: the route's parents tried in turn
//! ([`Plan`]), each resolved, connected to, asked and answered with the runtime's sockets and
//! timers, within the connect timeout per parent. Dropping a future here (the client left) drops
//! the attempt and closes the connection to the parent at once: nothing waits on a thread. The
//! policy (the request, the order and health, what a reply means) is [`socks4_server::upstream`]'s.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use futures_lite::future;
use socks4_core::rules::Route;
use socks4_core::{ClientEvent, ClientHandshake, Failure};
use socks4_server::upstream::{self, ChainTarget, Chained, Plan, Upstreams};

use crate::client::{self, read_reply_on};
use crate::runtime::{Runtime, peer_addr, set_nodelay};

/// Connects to `target` through `route` (see [`upstream::connect_request`]): the stream to
/// relay and the address the parent reported.
pub(crate) async fn connect<R: Runtime>(
    route: &Route,
    target: &ChainTarget,
    user_id: &[u8],
    timeout: Duration,
) -> Chained<(R::Stream, SocketAddr)> {
    let request = match upstream::connect_request(route, target, user_id) {
        Ok(request) => request,
        Err(failure) => return Chained::failed(failure),
    };
    let plan = Upstreams::global().plan(route);
    let Chained { result, via } =
        through::<R>(plan, request, timeout, |event, _| upstream::finish_connect(event)).await;
    Chained { result: result.map(|(stream, _, bound)| (stream, bound)), via }
}

/// BIND through `route`: the parent listens (its first reply).
pub(crate) async fn bind<R: Runtime>(
    route: &Route,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
    timeout: Duration,
) -> Chained<ParentBind<R>> {
    let request = match upstream::bind_request(route, expected_peer, user_id) {
        Ok(request) => request,
        Err(failure) => return Chained::failed(failure),
    };
    let plan = Upstreams::global().plan(route);
    let Chained { result, via } = through::<R>(plan, request, timeout, upstream::first_bind_reply).await;
    Chained { result: result.map(|(stream, hs, listening)| ParentBind { stream, hs, listening }), via }
}

/// A BIND a parent accepted: it listens; its second reply is to come.
pub(crate) struct ParentBind<R: Runtime> {
    stream: R::Stream,
    hs: ClientHandshake,
    /// Where the parent listens, for the client's first reply.
    pub(crate) listening: SocketAddr,
}

impl<R: Runtime> ParentBind<R> {
    /// Waits up to `timeout` for the parent's second reply: the connection to relay and the peer.
    pub(crate) async fn peer(mut self, timeout: Duration) -> Result<(R::Stream, SocketAddr), Failure> {
        let event = within::<R, _>(timeout, read_reply_on::<R>(&self.stream, &mut self.hs)).await?;
        let event = event.map_err(|e| upstream::reply_failure(&e))?;
        Ok((self.stream, upstream::second_bind_reply(event)?))
    }
}

/// Tries `plan`'s parents until one is reached, then sends it `request` and reads its reply, which
/// `meaning` turns into the answer (given the parent's address); all within `timeout` per parent.
async fn through<R: Runtime>(
    mut plan: Plan<'_>,
    request: ClientHandshake,
    timeout: Duration,
    meaning: impl Fn(ClientEvent, Option<SocketAddr>) -> Result<SocketAddr, Failure>,
) -> Chained<(R::Stream, ClientHandshake, SocketAddr)> {
    while let Some(parent) = plan.next() {
        let end = Instant::now() + timeout;
        let stream = match reach::<R>(&parent.host, parent.port, end).await {
            Ok(stream) => stream,
            Err(failure) => {
                plan.unreachable(parent, failure);
                continue;
            }
        };
        let mut hs = request.clone();
        let left = end.saturating_duration_since(Instant::now());
        let result = match within::<R, _>(left, client::request::<R>(&stream, &mut hs)).await {
            Ok(event) => event.map_err(|e| upstream::reply_failure(&e)),
            Err(timed_out) => Err(timed_out),
        };
        let result = result.and_then(|event| meaning(event, peer_addr::<R>(&stream).ok()));
        return plan.answered(parent, result.map(|addr| (stream, hs, addr)));
    }
    plan.exhausted()
}

/// Resolves a parent and connects to its first address that answers, by `end`.
async fn reach<R: Runtime>(host: &str, port: u16, end: Instant) -> Result<R::Stream, Failure> {
    let left = || end.saturating_duration_since(Instant::now());
    let addrs = within::<R, _>(left(), R::resolve(host, port)).await?.map_err(|_| Failure::NotFound)?;
    let mut failure = Failure::NotFound;
    for addr in addrs {
        match R::connect(addr, left()).await {
            Ok(stream) => {
                set_nodelay::<R>(&stream);
                return Ok(stream);
            }
            Err(e) => failure = Failure::from(&e),
        }
    }
    Err(failure)
}

/// Runs `work` for at most `timeout`; `Err(Failure::TimedOut)` after that.
pub(crate) async fn within<R: Runtime, T>(timeout: Duration, work: impl Future<Output = T>) -> Result<T, Failure> {
    future::or(async { Ok(work.await) }, async {
        R::sleep(timeout).await;
        Err(Failure::TimedOut)
    })
    .await
}
