//! One client connection: drive the sans-IO [`ServerHandshake`] with the runtime's I/O, then relay.
//!
//! Behaviours decided once here for every async adapter:
//! - While the handshake waits on something else (a lookup, a connect, a parent proxy, identd, a
//!   users-file verification, a BIND peer) it watches the client with a peek, consuming nothing: a
//!   client whose connection fails ends the wait at once; one that half-closes lets the wait finish
//!   (the relay passes the half-close on), except during a BIND wait, which it ends.
//! - After a final reply and a close (a rejection, a failed connect, a failed second BIND reply) the
//!   connection drains the client ([`socks4_server::linger`]: write side shut, input discarded until
//!   end of file, at most [`DRAIN_TIME`] and [`DRAIN_BYTES`]), so that unread input does not turn the
//!   close into a reset that destroys the reply in flight.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use socks4_core::rules::AccessRequest;
use socks4_core::{CloseReason, Failure, MAX_REQUEST_LEN, ServerHandshake};
use socks4_server::ServerConfig;
use socks4_server::chain::{AnswerTo, Attempt};
use socks4_server::egress::{Egress, Outgoing};
use socks4_server::limits::Admission;
use socks4_server::linger::{DRAIN_BYTES, DRAIN_TIME};
use socks4_server::metrics::{Close, Phase};
use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep};
use socks4_server::reload::Snapshot;
use socks4_server::step::{Context, Decisions, Step};
use socks4_server::upstream::Upstreams;
use socks4_server::users::Verifier;

use crate::Hooks;
use crate::chain;
use crate::log::ConnLog;
use crate::relay::relay;
use crate::runtime::{Runtime, local_addr, set_nodelay, with_timeout, within, write_all};

/// Serves one accepted connection to its end with the project's driver: reads the PROXY header
/// first when `peer` is a trusted balancer (then admits the client it names against the per-client
/// limits), drives the handshake (rules, users file, ident, CONNECT, BIND, chaining), relays, and
/// writes the connection's one log line through `hooks`.
///
/// `client` should come from a listener of [`socks4_server::listen`], whose accepted sockets keep
/// TCP urgent data in the stream (or one with [`socks4_sys::socket::urgent_inline`] set): from
/// another, a client's urgent byte is not relayed.
///
/// `snapshot`: the configuration the connection runs with (a [`LiveConfig`]'s current one, taken
/// at accept). `admission`: its claim on the per-client limits ([`Limiter::admit`], or
/// [`Limiter::defer`] for a trusted balancer); the end of the handshake frees its handshake slot.
///
/// [`LiveConfig`]: socks4_server::reload::LiveConfig
/// [`Limiter::admit`]: socks4_server::limits::Limiter::admit
/// [`Limiter::defer`]: socks4_server::limits::Limiter::defer
pub async fn serve_connection<R: Runtime, H: Hooks>(
    client: R::Stream,
    peer: SocketAddr,
    snapshot: &Snapshot,
    mut admission: Admission,
    hooks: &H,
) {
    let config = &snapshot.config;
    let start = Instant::now();
    set_nodelay::<R>(&client);
    let mut from = From { proxied: false, first: Vec::new() };
    let peer = if config.proxy_protocol.contains(peer.ip()) {
        from.proxied = true;
        match proxy_header::<R>(&client, peer, config, &mut from.first).await {
            Ok(original) => match admission.claim(original.ip(), Instant::now()) {
                Ok(()) => original,
                // Counted and summarised by the limiter, like a refusal at accept.
                Err(_) => return,
            },
            Err(end) => return end.log(peer, start.elapsed()),
        }
    } else {
        peer
    };
    let mut log = ConnLog::new(peer, start, hooks);
    log.users_file = snapshot.verifier.is_some();
    let conn = Conn { config, verifier: snapshot.verifier.as_ref(), egress: &snapshot.egress, hooks, from };
    // Boxed: the handshake's state (its request buffer, the awaited lookups, connects and timers)
    // lives on the heap only while it runs; a relaying connection's task keeps none of it.
    let outcome = Box::pin(handshake::<R, H>(&client, &conn, &mut admission, &mut log)).await;
    admission.handshake_done();
    match outcome {
        Ok(Next::Relay(dest, early)) => {
            let bandwidth = snapshot.bandwidth.as_deref().map(|b| log.bandwidth(b));
            log.meter.enter(Phase::Relaying);
            config.relay_sockets(R::socket(&client), R::socket(&dest));
            let end = relay::<R>(&client, &dest, &early, config.timeouts.idle, bandwidth, &log.counts).await;
            log.meter.close(end.into());
            log.finish(end);
        }
        Ok(Next::Drain) => drain::<R>(&client).await,
        Ok(Next::Close) => {}
        Err(e) => log.finish(e),
    }
}

/// The client as the handshake sees it.
struct From {
    /// Whether it came through a PROXY header (ident cannot reach it).
    proxied: bool,
    /// Bytes read after the PROXY header: the start of the request.
    first: Vec<u8>,
}

/// What a connection's handshake reads.
struct Conn<'a, H> {
    config: &'a ServerConfig,
    verifier: Option<&'a Arc<Verifier>>,
    /// Where its outgoing connections leave from (the snapshot's).
    egress: &'a Egress,
    hooks: &'a H,
    from: From,
}

/// How a handshake ended.
enum Next<S> {
    /// Relay the client ⇄ this stream, sending the early data first.
    Relay(S, Vec<u8>),
    /// A final reply went out and the handshake closed: drain, then close.
    Drain,
    /// Closed with nothing to drain for (no reply, or the client is gone).
    Close,
}

/// Reads the PROXY header of a connection from a trusted load balancer, within the handshake
/// timeout; returns the original client, and puts the bytes after the header into `first`.
async fn proxy_header<R: Runtime>(
    client: &R::Stream,
    balancer: SocketAddr,
    config: &socks4_server::ServerConfig,
    first: &mut Vec<u8>,
) -> Result<SocketAddr, HeaderEnd> {
    let (mut reader, timeout) =
        (HeaderReader::new(balancer).trusting(&config.proxy_protocol), config.timeouts.handshake);
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match with_timeout::<R, _>(left, R::read(client, &mut buf)).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(HeaderEnd::TimedOut),
            // A reset counts as a close (health checks often end with one).
            Ok(0) | Err(_) => return Err(reader.handle_eof()),
            Ok(n) => n,
        };
        match reader.handle_input(&buf[..n]) {
            HeaderStep::More => {}
            HeaderStep::Client { client, rest } => {
                first.extend_from_slice(rest);
                return Ok(client);
            }
            HeaderStep::Close(end) => return Err(end),
        }
    }
}

/// Runs the handshake to its end: a destination to relay to, or a close. The decisions are
/// [`Decisions`]'; this performs each [`Step`] it hands out, watching the client meanwhile.
async fn handshake<R: Runtime, H: Hooks>(
    client: &R::Stream,
    conn: &Conn<'_, H>,
    admission: &mut Admission,
    log: &mut ConnLog<'_, H>,
) -> io::Result<Next<R::Stream>> {
    let config = conn.config;
    let epoch = log.start;
    let now = || epoch.elapsed();
    let mut hs = config.handshake(now());
    let mut decisions = Decisions::default();
    let mut early: Vec<u8> = Vec::new();
    let mut dest: Option<R::Stream> = None;
    // Whether a reply went out (a close after one drains the client).
    let mut replied = false;
    // Whether the embedder's hook refused the request (for the log line).
    let mut by_hook = false;
    // BIND: the listener, dropped when the wait ends (with the wait's slot in `admission`).
    let mut listener: Option<R::Listener> = None;
    // Through a parent: the attempt (a BIND's waits for its second reply) and its connection.
    let mut attempt: Option<Box<Attempt>> = None;
    let mut parent: Option<R::Stream> = None;
    if !conn.from.first.is_empty() {
        feed(&mut hs, &mut early, &conn.from.first, now());
    }
    let client_addr = log.client;
    let context = || Context {
        config,
        verifier: conn.verifier,
        client: client_addr,
        proxied: conn.from.proxied,
        upstreams: Upstreams::global(),
        now: now(),
        at: Instant::now(),
    };
    loop {
        log.note_request(&hs);
        let cx = context();
        let mut check = |req: &AccessRequest<'_>| conn.hooks.check(cx.client, req).inspect_err(|_| by_hook = true);
        let step = misuse(decisions.next_checked(&mut hs, admission, &cx, &mut check))?;
        match step {
            Step::Send(reply) => {
                if std::mem::take(&mut by_hook) {
                    log.finish(format_args!("refused by hook ({})", reply.code.code()));
                }
                if let Err(e) = write_all::<R>(client, &reply.to_bytes()).await {
                    // The same words in every adapter: the client is gone.
                    tracing::debug!("writing reply: {e}");
                    log.finish(CloseReason::ClientGone);
                    return Ok(Next::Close);
                }
                replied = true;
                log.meter.replied(reply.code);
            }
            Step::Resolve { host, port } => {
                log.meter.enter(Phase::Resolving);
                let left = hs.deadline().map_or(config.timeouts.connect, |d| d.saturating_sub(now()));
                let lookup = with_timeout::<R, _>(left, crate::eyeballs::resolve::<R>(&config.names, &host, port));
                match watched::<R, _>(client, lookup).await {
                    Ok(answer) => {
                        let found = misuse(decisions.resolved(&mut hs, &context(), answer))?;
                        log.meter.resolved(found);
                    }
                    Err(_) => hs.handle_client_error(now()),
                }
            }
            Step::VerifyUser { verifier, user_id } => {
                // On the verifier's threads, within the handshake's deadline (socks4-std's poller
                // waits on the same deadline: a check still queued then gets the client 91); a
                // client that leaves, or the deadline, drops (withdraws) the check.
                let verify = verifier.verify(log.client.ip(), &user_id);
                let bounded = async {
                    match hs.deadline().map(|d| d.saturating_sub(now())) {
                        Some(left) => within::<R, _>(left, verify).await,
                        None => Some(verify.await),
                    }
                };
                match watched::<R, _>(client, bounded).await {
                    Ok(Some(verdict)) => misuse(decisions.user_checked(&mut hs, verdict, log.client))?,
                    Ok(None) => hs.handle_timeout(now()),
                    Err(_) => hs.handle_client_error(now()),
                }
            }
            Step::Ident => {
                let (peer, timeout) = (log.client, config.timeouts.ident);
                let answer = match local_addr::<R>(client) {
                    Ok(local) => match watched::<R, _>(client, crate::ident::ask::<R>(peer, local, timeout)).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            hs.handle_client_error(now());
                            continue;
                        }
                    },
                    Err(e) => Err(Failure::from(&e)),
                };
                misuse(hs.handle_ident(now(), answer.as_ref().map_err(|e| *e).and_then(|a| a.reply())))?;
            }
            Step::Connect(addr) => {
                log.meter.enter(Phase::Connecting);
                // Every address of a name shares the connect phase's deadline.
                let left = hs.deadline().map_or(config.timeouts.connect, |d| d.saturating_sub(now()));
                let outgoing = decisions.outgoing(conn.egress, || arrived_on::<R>(client));
                let connecting = async { R::connect_socket(outgoing.socket(addr)?, addr, left).await };
                let Ok(connected) = watched::<R, _>(client, connecting).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                match connected {
                    Ok(stream) => {
                        let local = on_connected::<R, H>(&stream, outgoing, log);
                        dest = Some(stream);
                        misuse(hs.handle_connected(now(), Ok(local)))?;
                    }
                    Err(e) => misuse(hs.handle_connected(now(), Err(Failure::from(&e))))?,
                }
            }
            Step::Race(mut race) => {
                // An address the embedder's hook refused is left out of the race, not a refusal.
                by_hook = false;
                log.meter.enter(Phase::Connecting);
                let outgoing = decisions.outgoing(conn.egress, || arrived_on::<R>(client));
                let racing = Box::pin(crate::eyeballs::race::<R>(&mut race, outgoing));
                let Ok(raced) = watched::<R, _>(client, racing).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                match raced {
                    Ok(stream) => {
                        let local = on_connected::<R, H>(&stream, outgoing, log);
                        dest = Some(stream);
                        misuse(hs.handle_connected(now(), Ok(local)))?;
                    }
                    Err(failure) => misuse(hs.handle_connected(now(), Err(failure)))?,
                }
            }
            Step::Chain(mut chained) => {
                if !chained.is_bind() {
                    log.meter.enter(Phase::Connecting);
                }
                // Boxed: only chained requests allocate the attempt's I/O state.
                let outgoing = decisions.outgoing(conn.egress, || arrived_on::<R>(client));
                let answering = chain::answer::<R>(&mut chained, &mut parent, outgoing);
                let answered = watched::<R, _>(client, Box::pin(answering)).await;
                log.via = chained.via().cloned();
                let Ok(answer) = answered else {
                    // The client's connection failed: the attempt and the parent's connection go.
                    parent = None;
                    hs.handle_client_error(now());
                    continue;
                };
                let answer = answer?;
                match (answer.to, answer.result.is_ok()) {
                    (_, false) => parent = None,
                    (AnswerTo::Connect, true) => {
                        log.meter.connected();
                        log.out = parent.as_ref().and_then(|p| local_addr::<R>(p).ok()).map(|a| a.ip());
                        dest = parent.take();
                    }
                    // It listens: its second reply is awaited at the BIND wait.
                    (_, true) => attempt = Some(chained),
                }
                misuse(answer.apply(&mut hs, now()))?;
            }
            Step::Listen => {
                // Listen on the address the client reached us on (an IPv6 one is reported as
                // 0.0.0.0: the client uses the address it reached us on).
                let listening = async {
                    let ip = local_addr::<R>(client)?.ip().to_canonical();
                    let l = R::listen(SocketAddr::new(ip, 0)).await?;
                    let addr = R::listener_addr(&l)?;
                    Ok::<_, io::Error>((l, addr))
                };
                let result = listening.await.map(|(l, addr)| {
                    listener = Some(l);
                    addr
                });
                misuse(hs.handle_listening(now(), result.map_err(|e| Failure::from(&e))))?;
            }
            Step::Wait { .. } if attempt.is_some() => {
                // BIND through a parent: wait for its second reply (within the attempt's BIND
                // timeout); a client that leaves first drops the wait, closing the connection to
                // the parent (and so its listener).
                let Some(mut chained) = attempt.take() else { continue };
                log.meter.enter(Phase::BindWait);
                let outgoing = decisions.outgoing(conn.egress, || arrived_on::<R>(client));
                let waiting = async { Ok(Box::pin(chain::answer::<R>(&mut chained, &mut parent, outgoing)).await) };
                let outcome = future::or(waiting, async { Err(client_left::<R>(client).await) }).await;
                admission.end_bind_wait();
                match outcome {
                    Ok(answer) => {
                        let answer = answer?;
                        dest = parent.take().filter(|_| answer.result.is_ok());
                        misuse(answer.apply(&mut hs, now()))?;
                    }
                    Err(Left::Eof) => hs.handle_eof(now()),
                    Err(Left::Failed(_)) => hs.handle_client_error(now()),
                }
                parent = None;
            }
            Step::Wait { deadline } => {
                let left = deadline.map(|d| d.saturating_sub(now()));
                if let Some(l) = &listener {
                    // BIND: accept one peer, then the listener closes; a client that leaves first
                    // (end of file or error) ends the wait at once.
                    log.meter.enter(Phase::BindWait);
                    let accept = async {
                        match left {
                            Some(left) => Ok(with_timeout::<R, _>(left, R::accept(l)).await),
                            None => Ok(R::accept(l).await),
                        }
                    };
                    let outcome = future::or(accept, async { Err(client_left::<R>(client).await) }).await;
                    listener = None;
                    admission.end_bind_wait();
                    let result = match outcome {
                        Ok(Ok((peer, addr))) => {
                            set_nodelay::<R>(&peer);
                            dest = Some(peer);
                            Ok(addr)
                        }
                        Ok(Err(e)) => Err(Failure::from(&e)),
                        Err(Left::Eof) => {
                            hs.handle_eof(now());
                            continue;
                        }
                        Err(Left::Failed(_)) => {
                            hs.handle_client_error(now());
                            continue;
                        }
                    };
                    misuse(hs.handle_bind_peer(now(), result))?;
                    continue;
                }
                if !hs.wants_input() {
                    // Nothing else to wait for: let the deadline pass (never reached in practice).
                    let Some(left) = left else { return Err(io::Error::other("stalled handshake")) };
                    R::sleep(left).await;
                    hs.handle_timeout(now());
                    continue;
                }
                let mut buf = [0u8; MAX_REQUEST_LEN];
                let read = match left {
                    Some(left) => within::<R, _>(left, R::read(client, &mut buf)).await,
                    None => Some(R::read(client, &mut buf).await),
                };
                match read {
                    None => hs.handle_timeout(now()),
                    Some(Ok(0)) => hs.handle_eof(now()),
                    Some(Ok(n)) => feed(&mut hs, &mut early, &buf[..n], now()),
                    Some(Err(e)) => return Err(io::Error::new(e.kind(), format!("reading request: {e}"))),
                }
            }
            Step::Relay => {
                return match dest {
                    Some(d) => Ok(Next::Relay(d, early)),
                    None => Err(io::Error::other("relay without a destination")),
                };
            }
            Step::Closed(reason) => {
                // A BIND's wait (its slot) ends with the handshake, also when it failed early.
                admission.end_bind_wait();
                log.meter.close(Close::from(&reason));
                let drain = replied && reason != CloseReason::ClientGone;
                log.finish(reason);
                return Ok(if drain { Next::Drain } else { Next::Close });
            }
            other => return Err(io::Error::other(format!("unexpected step {other:?}"))),
        }
    }
}

/// A connect succeeded (directly or as a race's winner): no delay on `stream`, its source counted
/// for `outgoing` and logged (`out=`), the meter told; returns the local address for the reply.
fn on_connected<R: Runtime, H: Hooks>(
    stream: &R::Stream,
    outgoing: Outgoing<'_>,
    log: &mut ConnLog<'_, H>,
) -> SocketAddr {
    set_nodelay::<R>(stream);
    let local = local_addr::<R>(stream).unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    outgoing.connected(local);
    log.out = Some(local.ip());
    log.meter.connected();
    local
}

/// The address the client connected to (for `out same`).
fn arrived_on<R: Runtime>(client: &R::Stream) -> Option<std::net::IpAddr> {
    local_addr::<R>(client).ok().map(|a| a.ip())
}

/// Feeds bytes read from the client to the handshake; bytes past the request are early data.
fn feed(hs: &mut ServerHandshake, early: &mut Vec<u8>, bytes: &[u8], now: Duration) {
    let used = hs.handle_input(now, bytes);
    if hs.request().is_some() && used < bytes.len() {
        early.extend_from_slice(&bytes[used..]);
    }
}

/// What the client did while the handshake waited on something else.
enum Left {
    /// It half-closed (or closed).
    Eof,
    /// Its connection failed.
    Failed(io::Error),
}

/// Watches the client without consuming its bytes (early data stays in the socket for the relay):
/// resolves on end of file or an error. Once bytes are there, or if the runtime cannot peek, it
/// watches no more (the socket would stay readable and watching on would spin; the phase's
/// deadline bounds the wait).
async fn client_left<R: Runtime>(client: &R::Stream) -> Left {
    if let Some(peek) = R::peek(client) {
        match peek.await {
            Ok(0) => return Left::Eof,
            Ok(_) => {}
            Err(e) => return Left::Failed(e),
        }
    }
    future::pending().await
}

/// Runs `work` while watching the client. `Err` if the client's connection failed first (`work`
/// is dropped, and with it what it started); a half-close lets `work` finish.
async fn watched<R: Runtime, T>(client: &R::Stream, work: impl Future<Output = T>) -> Result<T, io::Error> {
    let mut work = pin!(work);
    let first = future::or(async { Ok(work.as_mut().await) }, async { Err(client_left::<R>(client).await) }).await;
    match first {
        Ok(done) => Ok(done),
        Err(Left::Eof) => Ok(work.await),
        Err(Left::Failed(e)) => Err(e),
    }
}

/// Closes gently after a final reply ([`socks4_server::linger`]): half-close, then read and
/// discard what the client still sends until it closes, at most [`DRAIN_BYTES`] within
/// [`DRAIN_TIME`].
async fn drain<R: Runtime>(client: &R::Stream) {
    if R::socket(client).shutdown(Shutdown::Write).is_err() {
        return;
    }
    let discard = async {
        // A pooled buffer: the connection's future holds none of its own for this.
        let mut buf = socks4_sys::LocalBuf::take();
        let mut left = DRAIN_BYTES;
        while left > 0 {
            match R::read(client, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    future::or(discard, R::sleep(DRAIN_TIME)).await;
}

/// A state-machine misuse is a bug here, never the peer's doing: end the connection with it.
fn misuse<T>(r: Result<T, socks4_core::Misuse>) -> io::Result<T> {
    r.map_err(io::Error::other)
}
