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
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use socks4_core::driver::Candidates;
use socks4_core::rules::Route;
use socks4_core::{CloseReason, Failure, MAX_REQUEST_LEN, Output, ReplyCode, ServerHandshake, Target};
use socks4_server::ServerConfig;
use socks4_server::limits::Admission;
use socks4_server::linger::{DRAIN_BYTES, DRAIN_TIME};
use socks4_server::metrics::{Close, Phase};
use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep};
use socks4_server::reload::Snapshot;
use socks4_server::upstream::{self, Authorized, ChainTarget, Chained};
use socks4_server::users::{self, AuthError, Verifier};

use crate::Hooks;
use crate::chain::{self, within};
use crate::log::ConnLog;
use crate::relay::relay;
use crate::runtime::{Runtime, local_addr, set_nodelay, with_timeout, write_all};

/// Serves one accepted connection to its end with the project's driver: reads the PROXY header
/// first when `peer` is a trusted balancer (then admits the client it names against the per-client
/// limits), drives the handshake (rules, users file, ident, CONNECT, BIND, chaining), relays, and
/// writes the connection's one log line through `hooks`.
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
        match proxy_header::<R>(&client, peer, config.timeouts.handshake, &mut from.first).await {
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
    let conn = Conn { config, verifier: snapshot.verifier.as_ref(), hooks, from };
    // Boxed: the handshake's state (its request buffer, the awaited lookups, connects and timers)
    // lives on the heap only while it runs; a relaying connection's task keeps none of it.
    let outcome = Box::pin(handshake::<R, H>(&client, &conn, &mut admission, &mut log)).await;
    admission.handshake_done();
    match outcome {
        Ok(Next::Relay(dest, early)) => {
            let bandwidth = snapshot.bandwidth.as_deref().map(|b| log.bandwidth(b));
            log.meter.enter(Phase::Relaying);
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
    timeout: Duration,
    first: &mut Vec<u8>,
) -> Result<SocketAddr, HeaderEnd> {
    let mut reader = HeaderReader::new(balancer);
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

/// Runs the handshake to its end: a destination to relay to, or a close.
async fn handshake<R: Runtime, H: Hooks>(
    client: &R::Stream,
    conn: &Conn<'_, H>,
    admission: &mut Admission,
    log: &mut ConnLog<'_, H>,
) -> io::Result<Next<R::Stream>> {
    let config = conn.config;
    let epoch = log.start;
    let now = || epoch.elapsed();
    let client_ip = log.client.ip().to_canonical();
    let mut hs = config.handshake(now());
    let mut early: Vec<u8> = Vec::new();
    let mut dest: Option<R::Stream> = None;
    // Whether a reply went out (a close after one drains the client).
    let mut replied = false;
    // BIND: the listener, dropped when the wait ends (with the wait's slot in `admission`).
    let mut listener: Option<R::Listener> = None;
    // A SOCKS4a name's further addresses, tried in turn when a connect fails.
    let mut candidates = Candidates::default();
    // The route of the rule that allowed the request (`via`), if any.
    let mut route: Option<Route> = None;
    // BIND through a parent: it listens, its second reply is awaited (boxed: the future stays small).
    let mut bind_wait: Option<Box<chain::ParentBind<R>>> = None;
    if !conn.from.first.is_empty() {
        feed(&mut hs, &mut early, &conn.from.first, now());
    }
    loop {
        match hs.poll_output() {
            Output::Send(reply) => {
                if let Err(e) = write_all::<R>(client, &reply.to_bytes()).await {
                    // The same words in every adapter: the client is gone.
                    tracing::debug!("writing reply: {e}");
                    log.note_request(&hs);
                    log.finish(CloseReason::ClientGone);
                    return Ok(Next::Close);
                }
                replied = true;
                log.meter.replied(reply.code);
                // The (first) reply is out: no longer a handshake for the limits (a BIND waiting
                // for its peer does not hold a handshake slot).
                admission.handshake_done();
            }
            Output::Resolve { host, port } => {
                let host = host.to_owned();
                log.note_request(&hs);
                if upstream::forwards_name(&config.rules, client_ip, &hs, conn.verifier.is_some()) {
                    // Routed to a SOCKS4a parent: the name goes there unresolved.
                    misuse(hs.forward_name(now()))?;
                    continue;
                }
                log.meter.enter(Phase::Resolving);
                let left = hs.deadline().map_or(config.timeouts.connect, |d| d.saturating_sub(now()));
                let lookup = with_timeout::<R, _>(left, R::resolve(&host, port));
                match watched::<R, _>(client, lookup).await {
                    Ok(answer) => {
                        candidates = Candidates::from_lookup(answer);
                        let first = candidates.first();
                        log.meter.resolved(first.is_ok());
                        misuse(hs.handle_resolved(now(), first))?;
                    }
                    Err(_) => hs.handle_client_error(now()),
                }
            }
            Output::Authorize(_) => {
                log.note_request(&hs);
                if let Some(code) = hs.access_request().and_then(|req| conn.hooks.check(log.client, &req).err()) {
                    // The embedder's hook refused (a `Granted` there counts as `Rejected`).
                    let code = if code == ReplyCode::Granted { ReplyCode::Rejected } else { code };
                    log.finish(format_args!("refused by hook ({})", code.code()));
                    misuse(hs.reject(code))?;
                    continue;
                }
                if let Authorized::Via(via) = authorize::<R, H>(&mut hs, epoch, client, conn, log.client).await? {
                    route = Some(via);
                }
            }
            Output::Connect(target) if route.is_some() => {
                let target = ChainTarget::from(target);
                let user_id = hs.request().map(|r| r.user_id.to_vec()).unwrap_or_default();
                // Boxed: only routed connects allocate the chained state.
                let chaining = Box::pin(async {
                    match &route {
                        Some(via) => chain::connect::<R>(via, &target, &user_id, config.timeouts.connect).await,
                        None => Chained::failed(Failure::Other),
                    }
                });
                log.meter.enter(Phase::Connecting);
                let Ok(chained) = watched::<R, _>(client, chaining).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                log.via = chained.via;
                let result = chained.result.map(|(stream, bound)| {
                    dest = Some(stream);
                    log.meter.connected();
                    bound
                });
                misuse(hs.handle_connected(now(), result))?;
            }
            Output::Connect(Target::Addr(addr)) => {
                log.meter.enter(Phase::Connecting);
                // Every address of a name shares the connect phase's deadline.
                let left = hs.deadline().map_or(config.timeouts.connect, |d| d.saturating_sub(now()));
                let Ok(connected) = watched::<R, _>(client, R::connect(addr, left)).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                match connected {
                    Ok(stream) => {
                        set_nodelay::<R>(&stream);
                        let local = local_addr::<R>(&stream).unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                        dest = Some(stream);
                        log.meter.connected();
                        misuse(hs.handle_connected(now(), Ok(local)))?;
                    }
                    Err(e) => match candidates.next_after(Failure::from(&e)) {
                        Some(next) => misuse(hs.retry_connect(now(), next))?,
                        None => misuse(hs.handle_connected(now(), Err(Failure::from(&e))))?,
                    },
                }
            }
            Output::Connect(Target::Host(..)) => {
                // Names are resolved here (`Names::Resolve`), so the handshake never forwards one.
                misuse(hs.handle_connected(now(), Err(Failure::Other)))?;
            }
            Output::Ident => {
                let (peer, timeout) = (log.client, config.timeouts.ident);
                let answer = match local_addr::<R>(client) {
                    _ if conn.from.proxied => socks4_server::proxy::ident_through_balancer(peer),
                    Ok(local) => {
                        let ask = R::unblock(move || socks4_server::ident::ask_blocking(peer, local, timeout));
                        match watched::<R, _>(client, ask).await {
                            Ok(answer) => answer.unwrap_or(Err(Failure::Other)),
                            Err(_) => {
                                hs.handle_client_error(now());
                                continue;
                            }
                        }
                    }
                    Err(e) => Err(Failure::from(&e)),
                };
                misuse(hs.handle_ident(now(), answer.as_ref().map_err(|e| *e).and_then(|a| a.reply())))?;
            }
            Output::Listen { expected_peer } if route.is_some() => {
                // A BIND through a parent waits like one here: it takes a BIND-wait slot.
                if admission.start_bind_wait(Instant::now()).is_err() {
                    // Counted and summarised by the limiter; the client gets 91.
                    misuse(hs.handle_listening(now(), Err(Failure::OverLimit)))?;
                    continue;
                }
                let port = hs.request().map_or(0, |r| r.port);
                let user_id = hs.request().map(|r| r.user_id.to_vec()).unwrap_or_default();
                let chaining = Box::pin(async {
                    match (expected_peer, &route) {
                        (IpAddr::V4(ip), Some(via)) => {
                            let peer = SocketAddrV4::new(ip, port);
                            chain::bind::<R>(via, peer, &user_id, config.timeouts.connect).await
                        }
                        _ => Chained::failed(Failure::Other), // an IPv6 peer cannot be asked for
                    }
                });
                let Ok(chained) = watched::<R, _>(client, chaining).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                log.via = chained.via;
                let result = chained.result.map(|wait| {
                    let listening = wait.listening;
                    bind_wait = Some(Box::new(wait));
                    listening
                });
                misuse(hs.handle_listening(now(), result))?;
            }
            Output::Listen { .. } => {
                // Listen on the address the client reached us on (an IPv6 one is reported as
                // 0.0.0.0: the client uses the address it reached us on).
                let listening = async {
                    let ip = local_addr::<R>(client)?.ip().to_canonical();
                    let l = R::listen(SocketAddr::new(ip, 0)).await?;
                    let addr = R::listener_addr(&l)?;
                    Ok::<_, io::Error>((l, addr))
                };
                let result = match listening.await {
                    // The wait's slot (`--max-bind-waits`), held in the admission.
                    Ok((l, addr)) => match admission.start_bind_wait(Instant::now()) {
                        Ok(()) => {
                            listener = Some(l);
                            Ok(addr)
                        }
                        Err(_counted_by_the_limiter) => Err(Failure::OverLimit),
                    },
                    Err(e) => Err(Failure::from(&e)),
                };
                misuse(hs.handle_listening(now(), result))?;
            }
            Output::Wait { deadline } if bind_wait.is_some() => {
                // BIND through a parent: wait for its second reply; a client that leaves first
                // drops the wait, closing the connection to the parent (and so its listener).
                let Some(wait) = bind_wait.take() else { continue };
                log.meter.enter(Phase::BindWait);
                let timeout = deadline.map_or(config.timeouts.bind, |d| d.saturating_sub(now()));
                let waiting = async { Ok(wait.peer(timeout).await) };
                match future::or(waiting, async { Err(client_left::<R>(client).await) }).await {
                    Ok(result) => {
                        let result = result.map(|(stream, from)| {
                            dest = Some(stream);
                            from
                        });
                        misuse(hs.handle_bind_peer(now(), result))?;
                    }
                    Err(Left::Eof) => hs.handle_eof(now()),
                    Err(Left::Failed(_)) => hs.handle_client_error(now()),
                }
                admission.end_bind_wait();
            }
            Output::Wait { deadline } => {
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
                    None => Ok(R::read(client, &mut buf).await),
                };
                match read {
                    Err(_timed_out) => hs.handle_timeout(now()),
                    Ok(Ok(0)) => hs.handle_eof(now()),
                    Ok(Ok(n)) => {
                        feed(&mut hs, &mut early, &buf[..n], now());
                        log.note_request(&hs);
                    }
                    Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("reading request: {e}"))),
                }
            }
            Output::Relay => {
                log.note_request(&hs);
                return match dest {
                    Some(d) => Ok(Next::Relay(d, early)),
                    None => Err(io::Error::other("relay without a destination")),
                };
            }
            Output::Closed(reason) => {
                log.note_request(&hs);
                log.meter.close(Close::from(&reason));
                let drain = replied && reason != CloseReason::ClientGone;
                log.finish(reason);
                return Ok(if drain { Next::Drain } else { Next::Close });
            }
            _ => return Err(io::Error::other("unexpected handshake output")),
        }
    }
}

/// Feeds bytes read from the client to the handshake; bytes past the request are early data.
fn feed(hs: &mut ServerHandshake, early: &mut Vec<u8>, bytes: &[u8], now: Duration) {
    let used = hs.handle_input(now, bytes);
    if hs.request().is_some() && used < bytes.len() {
        early.extend_from_slice(&bytes[used..]);
    }
}

/// Answers `Output::Authorize` (after the embedder's [`Hooks::check`]): with a users file, the
/// user id is verified (at once if cached, else off the event loop while watching the client);
/// then the rules decide on the user's name, never the token.
async fn authorize<R: Runtime, H: Hooks>(
    hs: &mut ServerHandshake,
    epoch: Instant,
    client: &R::Stream,
    conn: &Conn<'_, H>,
    peer: SocketAddr,
) -> io::Result<Authorized> {
    let Some(req) = hs.access_request() else { return Err(io::Error::other("authorize without a request")) };
    let rules = &conn.config.rules;
    let Some(verifier) = conn.verifier else {
        return misuse(upstream::authorize(hs, epoch.elapsed(), rules, peer.ip(), false));
    };
    let verdict = match verifier.check_cached(req.user_id) {
        Some(verdict) => verdict,
        None => {
            let (verifier, user_id) = (Arc::clone(verifier), req.user_id.to_vec());
            match watched::<R, _>(client, R::unblock(move || verifier.verify_blocking(&user_id))).await {
                Ok(verdict) => verdict.unwrap_or(Err(AuthError::Busy)),
                Err(_) => {
                    hs.handle_client_error(epoch.elapsed());
                    return Ok(Authorized::Direct);
                }
            }
        }
    };
    let Some(req) = hs.access_request() else { return Err(io::Error::other("authorize without a request")) };
    let result = match verdict {
        Err(e) => {
            users::log_refusal(peer, req.user_id, e);
            hs.reject(e.reply_code()).map(|()| Authorized::Direct)
        }
        Ok(()) => upstream::authorize(hs, epoch.elapsed(), rules, peer.ip(), true),
    };
    misuse(result)
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
