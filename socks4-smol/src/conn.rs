//! One client connection: drive the sans-IO [`ServerHandshake`] with the runtime's I/O, then relay.
//! Written against [`Runtime`] and `futures-io`, so it runs on smol and on async-std alike.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_core::driver::Candidates;
use socks4_core::rules::{Parent, Route};
use socks4_core::{CloseReason, Failure, MAX_REQUEST_LEN, Output, ServerHandshake, Target};
use socks4_server::ServerConfig;
use socks4_server::bandwidth::{Bandwidth, ConnBandwidth};
use socks4_server::limits::Admission;
use socks4_server::log::{ConnLine, RequestCopy};
use socks4_server::metrics::{Close, ConnMeter, Phase};
use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep};
use socks4_server::reload::Snapshot;
use socks4_server::upstream::{self, Authorized, ChainTarget, Chained, Via};
use socks4_server::users::{self, Verifier};

use crate::chain;
use crate::relay::{Counts, relay};
use crate::runtime::{Runtime, with_timeout};

/// How long, and how many bytes, to drain from a rejected client before closing.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// The per-connection log line, written exactly once: when the connection ends, or when its task
/// is dropped (shutdown after the grace period).
#[derive(Debug)]
pub(crate) struct ConnLog {
    client: SocketAddr,
    start: Instant,
    request: RequestCopy,
    result: Option<String>,
    counts: Counts,
    /// Its phases, reply and end in the metrics.
    meter: ConnMeter,
    /// The parent proxy the connection went through (or tried last).
    via: Option<Parent>,
    /// User ids are checked against a users file (see [`ConnLine::users_file`]).
    users_file: bool,
}

impl ConnLog {
    pub(crate) fn new(client: SocketAddr) -> Self {
        Self {
            client,
            start: Instant::now(),
            request: RequestCopy::default(),
            result: None,
            counts: Counts::default(),
            meter: ConnMeter::start(),
            via: None,
            users_file: false,
        }
    }

    /// Sets the result, unless one was set before (e.g. why a request was denied).
    pub(crate) fn finish(&mut self, result: impl fmt::Display) {
        self.result.get_or_insert_with(|| result.to_string());
    }

    /// This connection's bandwidth caps under `bandwidth`, with its client's and its user's shares.
    fn bandwidth(&self, bandwidth: &Bandwidth) -> Box<ConnBandwidth> {
        let user = self.request.request().map(|r| users::user_name(r.user_id));
        Box::new(bandwidth.connection(self.client.ip(), user, Instant::now()))
    }

    /// Records the request for the log line.
    fn note_request(&mut self, hs: &ServerHandshake) {
        self.request.note(hs);
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        let request = self.request.request();
        let (up, down) = (self.counts.up.get(), self.counts.down.get());
        self.meter.finish(request.as_ref().map(|r| r.command), up, down, self.result.is_some());
        let line = ConnLine {
            client: self.client,
            request,
            result: &Via(&self.result.as_deref().unwrap_or(socks4_server::log::SHUTDOWN), self.via.as_ref()),
            up,
            down,
            elapsed: self.start.elapsed(),
            worker: self.meter.worker(),
            reply: self.meter.reply(),
            users_file: self.users_file,
        };
        line.log();
    }
}

/// The client as the handshake sees it.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// Whether it came through a PROXY header (ident cannot reach it).
    proxied: bool,
    /// Bytes read after the PROXY header: the start of the request.
    first: Vec<u8>,
}

/// Serves a connection just handed over by the acceptor: reads the PROXY header first when `peer`
/// is a trusted balancer (then admits the client it names against the per-client limits), then
/// [`serve`]s it with its one log line.
pub(crate) async fn serve_accepted<R: Runtime>(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    snapshot: &Snapshot,
    mut admission: Admission,
) {
    let config = &snapshot.config;
    let start = Instant::now();
    let client = match R::from_std(stream) {
        Ok(client) => client,
        Err(e) => return ConnLog::new(peer).finish(e),
    };
    let _ = R::set_nodelay(&client);
    let mut from = Peer::default();
    let peer = if config.proxy_protocol.contains(peer.ip()) {
        from.proxied = true;
        match proxy_header::<R>(client.clone(), peer, config.timeouts.handshake, &mut from.first).await {
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
    let mut log = ConnLog::new(peer);
    log.start = start;
    log.users_file = snapshot.verifier.is_some();
    let (verifier, bandwidth) = (snapshot.verifier.as_ref(), snapshot.bandwidth.as_deref());
    serve::<R>(client, config, verifier, bandwidth, &mut admission, &mut log, from).await;
}

/// Reads the PROXY header of a connection from a trusted load balancer, within the handshake
/// timeout; returns the original client, and puts the bytes after the header into `first`.
async fn proxy_header<R: Runtime>(
    mut client: R::Stream,
    balancer: SocketAddr,
    timeout: Duration,
    first: &mut Vec<u8>,
) -> Result<SocketAddr, HeaderEnd> {
    let mut reader = HeaderReader::new(balancer);
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match with_timeout::<R, _>(left, client.read(&mut buf)).await {
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

/// Serves one accepted client connection to the end, filling in `log`. `verifier`: the users file's,
/// if any; `bandwidth`: the caps' shared buckets, if any. The handshake's end frees `admission`'s handshake slot.
pub(crate) async fn serve<R: Runtime>(
    mut client: R::Stream,
    config: &ServerConfig,
    verifier: Option<&Arc<Verifier>>,
    bandwidth: Option<&Bandwidth>,
    admission: &mut Admission,
    log: &mut ConnLog,
    from: Peer,
) {
    let outcome = handshake::<R>(client.clone(), config, verifier, admission, log, from).await;
    admission.handshake_done();
    match outcome {
        Ok(Some((dest, early))) => {
            let bandwidth = bandwidth.map(|b| log.bandwidth(b));
            log.meter.enter(Phase::Relaying);
            let end = relay::<R>(client, dest, &early, config.timeouts.idle, bandwidth, &log.counts).await;
            log.meter.close(end.into());
            log.finish(end);
        }
        Ok(None) => linger::<R>(&mut client).await,
        Err(e) => log.finish(e),
    }
}

/// Runs the handshake. `Ok(Some((dest, early)))`: relay `client` ⇄ `dest`, sending `early` first;
/// `Ok(None)`: the handshake closed (the reason is in `log`; linger next); `Err`: an I/O error with
/// the client.
async fn handshake<R: Runtime>(
    mut client: R::Stream,
    config: &ServerConfig,
    verifier: Option<&Arc<Verifier>>,
    admission: &mut Admission,
    log: &mut ConnLog,
    from: Peer,
) -> io::Result<Option<(R::Stream, Vec<u8>)>> {
    let epoch = Instant::now();
    let now = || epoch.elapsed();
    let client_ip = log.client.ip();
    let mut hs = config.handshake(now());
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let mut early: Vec<u8> = Vec::new();
    let mut dest: Option<R::Stream> = None;
    // BIND: the listener, dropped when the wait ends (with the wait's slot in `admission`).
    let mut listener: Option<R::Listener> = None;
    // A SOCKS4a name's further addresses, tried in turn when a connect fails.
    let mut candidates = Candidates::default();
    // The route of the rule that allowed the request (`via`), if any.
    let mut route: Option<Route> = None;
    let users_file = verifier.is_some();
    // BIND through a parent: it listens, its second reply is awaited (boxed: the future stays small).
    let mut bind_wait: Option<Box<chain::ParentBind<R>>> = None;
    if !from.first.is_empty() {
        let used = hs.handle_input(now(), &from.first);
        early.extend_from_slice(&from.first[used..]);
    }
    loop {
        match hs.poll_output() {
            Output::Send(reply) => {
                if let Err(e) = client.write_all(&reply.to_bytes()).await {
                    // The same words in every adapter: the client is gone.
                    tracing::debug!("writing reply: {e}");
                    log.note_request(&hs);
                    log.finish(CloseReason::ClientGone);
                    return Ok(None);
                }
                log.meter.replied(reply.code);
                // The (first) reply is out: no longer a handshake for the limits (a BIND waiting
                // for its peer does not hold a handshake slot).
                admission.handshake_done();
            }
            Output::Resolve { host, port } => {
                let host = host.to_owned();
                if upstream::forwards_name(&config.rules, client_ip, &hs, users_file) {
                    // Routed to a SOCKS4a parent: the name goes there unresolved.
                    misuse(hs.forward_name(now()))?;
                    continue;
                }
                log.meter.enter(Phase::Resolving);
                let lookup = with_timeout::<R, _>(config.timeouts.connect, R::resolve(&host, port));
                match watched::<R, _>(&client, lookup).await {
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
                let authorized = match verifier {
                    Some(verifier) => {
                        authorize_user::<R>(&mut hs, epoch, verifier, &client, config, log.client).await?
                    }
                    None => misuse(upstream::authorize(&mut hs, now(), &config.rules, client_ip, false))?,
                };
                if let Authorized::Via(via) = authorized {
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
                let Ok(chained) = watched::<R, _>(&client, chaining).await else {
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
                let Ok(connected) = watched::<R, _>(&client, R::connect(addr, left)).await else {
                    hs.handle_client_error(now());
                    continue;
                };
                match connected {
                    Ok(stream) => {
                        let _ = R::set_nodelay(&stream);
                        let local = R::local_addr(&stream).unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
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
                let answer = match R::local_addr(&client) {
                    _ if from.proxied => socks4_server::proxy::ident_through_balancer(peer),
                    Ok(local) => {
                        let ask = R::unblock(move || socks4_server::ident::ask_blocking(peer, local, timeout));
                        match watched::<R, _>(&client, ask).await {
                            Ok(answer) => answer,
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
                let Ok(chained) = watched::<R, _>(&client, chaining).await else {
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
            Output::Wait { deadline } if bind_wait.is_some() => {
                // BIND through a parent: wait for its second reply; a client that leaves first
                // drops the wait, closing the connection to the parent (and so its listener).
                let Some(wait) = bind_wait.take() else { continue };
                log.meter.enter(Phase::BindWait);
                let timeout = deadline.map_or(config.timeouts.bind, |d| d.saturating_sub(now()));
                let waiting = async { Ok(wait.peer(timeout).await) };
                match future::or(waiting, async { Err(client_left::<R>(&client).await) }).await {
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
            Output::Listen { .. } => {
                // Listen on the address the client reached us on (an IPv6 one is reported as
                // 0.0.0.0: the client uses the address it reached us on).
                let listening = async {
                    let ip = R::local_addr(&client)?.ip().to_canonical();
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
                    let outcome = future::or(accept, async { Err(client_left::<R>(&client).await) }).await;
                    listener = None;
                    admission.end_bind_wait();
                    let result = match outcome {
                        Ok(Ok((peer, addr))) => {
                            let _ = R::set_nodelay(&peer);
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
                let read = async { Some(client.read(&mut buf).await) };
                let timer = async {
                    match left {
                        Some(left) => {
                            R::sleep(left).await;
                            None
                        }
                        None => future::pending().await,
                    }
                };
                match future::or(read, timer).await {
                    None => hs.handle_timeout(now()),
                    Some(Ok(0)) => hs.handle_eof(now()),
                    Some(Ok(n)) => {
                        let used = hs.handle_input(now(), &buf[..n]);
                        early.extend_from_slice(&buf[used..n]);
                    }
                    Some(Err(e)) => return Err(e),
                }
            }
            Output::Relay => {
                log.note_request(&hs);
                return match dest {
                    Some(d) => Ok(Some((d, early))),
                    None => Err(io::Error::other("relay without a destination")),
                };
            }
            Output::Closed(reason) => {
                log.note_request(&hs);
                log.meter.close(Close::from(&reason));
                log.finish(reason);
                return Ok(None);
            }
            _ => return Err(io::Error::other("unexpected handshake output")),
        }
    }
}

/// `Output::Authorize` with a users file: the user id is verified (at once if cached, else off the
/// event loop while watching the client), then the rules decide on the user's name, never the token.
async fn authorize_user<R: Runtime>(
    hs: &mut ServerHandshake,
    epoch: Instant,
    verifier: &Arc<Verifier>,
    client: &R::Stream,
    config: &ServerConfig,
    peer: SocketAddr,
) -> io::Result<Authorized> {
    let Some(req) = hs.access_request() else { return Err(io::Error::other("authorize without a request")) };
    let verdict = match verifier.check_cached(req.user_id) {
        Some(verdict) => verdict,
        None => match watched::<R, _>(client, verifier.verify(peer.ip(), req.user_id)).await {
            Ok(verdict) => verdict,
            Err(_) => {
                hs.handle_client_error(epoch.elapsed());
                return Ok(Authorized::Direct);
            }
        },
    };
    let result = match verdict {
        Err(e) => users::refuse(hs, peer, e).map(|()| Authorized::Direct),
        Ok(()) => upstream::authorize(hs, epoch.elapsed(), &config.rules, peer.ip(), true),
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
/// watches no more (the phase's deadline bounds the wait).
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
/// is dropped); a half-close lets `work` finish (the relay passes it on).
async fn watched<R: Runtime, T>(client: &R::Stream, work: impl Future<Output = T>) -> Result<T, io::Error> {
    let mut work = pin!(work);
    let first = future::or(async { Ok(work.as_mut().await) }, async { Err(client_left::<R>(client).await) }).await;
    match first {
        Ok(done) => Ok(done),
        Err(Left::Eof) => Ok(work.await),
        Err(Left::Failed(e)) => Err(e),
    }
}

/// Closes gently after a rejection: half-close, then read and discard what the client still sends
/// (bounded in bytes and time), so that closing with unread input does not reset the connection
/// and destroy the reply in flight.
async fn linger<R: Runtime>(client: &mut R::Stream) {
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let _ = client.flush().await;
    if R::shutdown_write(client).is_err() {
        return;
    }
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    future::or(drain, R::sleep(LINGER_TIME)).await;
}

/// A state-machine misuse is a bug here, never the peer's doing: end the connection with it.
fn misuse<T>(r: Result<T, socks4_core::Misuse>) -> io::Result<T> {
    r.map_err(io::Error::other)
}
