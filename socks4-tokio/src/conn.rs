//! One client connection: drives the [`ServerHandshake`], performs its actions, then relays.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socks4_core::driver::Candidates;
use socks4_core::rules::{Parent, Route};
use socks4_core::{CloseReason, Failure, Output, ServerHandshake, Target};
use socks4_server::bandwidth::{Bandwidth, ConnBandwidth};
use socks4_server::limits::Admission;
use socks4_server::log::{ConnLine, RequestCopy};
use socks4_server::metrics::{Close, ConnMeter, Phase};
use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep};
use socks4_server::upstream::{self, Authorized, ChainTarget, Chained, Via};
use socks4_server::users;
use tokio::net::{TcpListener, TcpStream};

use crate::chain;
use crate::relay::{self, write_all};
use crate::server::ActiveGuard;
use socks4_server::reload::Snapshot;

/// Read buffer for the request; a request is at most [`socks4_core::MAX_REQUEST_LEN`] bytes.
const HANDSHAKE_BUF: usize = 1024;

/// What the one log line of a connection says; logged when the connection ends (also when it is
/// dropped at shutdown).
pub(crate) struct Record {
    client: SocketAddr,
    /// When the connection was accepted: the origin of the handshake's and the relay's clocks.
    pub(crate) start: Instant,
    request: RequestCopy,
    result: Option<String>,
    /// Bytes client → destination, set when the relay ends (or is dropped at shutdown).
    pub(crate) up: Cell<u64>,
    /// Bytes destination → client, likewise.
    pub(crate) down: Cell<u64>,
    /// Its phases, reply and end in the metrics.
    meter: ConnMeter,
    /// The parent proxy the connection went through (or tried last).
    via: Option<Parent>,
    /// User ids are checked against a users file (see [`ConnLine::users_file`]).
    users_file: bool,
}

impl Record {
    fn new(client: SocketAddr) -> Self {
        Record {
            client,
            start: Instant::now(),
            request: RequestCopy::default(),
            result: None,
            up: Cell::new(0),
            down: Cell::new(0),
            meter: ConnMeter::start(),
            via: None,
            users_file: false,
        }
    }

    fn note_request(&mut self, hs: &ServerHandshake) {
        self.request.note(hs);
    }

    /// This connection's bandwidth caps under `bandwidth`, with its client's and its user's shares.
    pub(crate) fn bandwidth(&self, bandwidth: &Bandwidth) -> Box<ConnBandwidth> {
        let user = self.request.request().map(|r| users::user_name(r.user_id));
        Box::new(bandwidth.connection(self.client.ip(), user, Instant::now()))
    }

    fn finish(&mut self, result: impl fmt::Display) {
        self.result.get_or_insert_with(|| result.to_string());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let request = self.request.request();
        let (up, down) = (self.up.get(), self.down.get());
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

/// Serves one accepted connection to its end.
pub(crate) async fn serve(client: TcpStream, peer: SocketAddr, mut guard: ActiveGuard) {
    let start = Instant::now();
    let (shared, admission) = guard.parts();
    let mut first = Vec::new();
    let proxied = shared.config.proxy_protocol.contains(peer.ip());
    let peer = if proxied {
        match proxy_header(&client, peer, shared.config.timeouts.handshake, &mut first).await {
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
    let mut record = Record::new(peer);
    record.start = start;
    record.users_file = shared.verifier.is_some();
    let from = Peer { addr: peer, proxied, first };
    let result = handshake_and_relay(&client, from, &mut guard, &mut record).await;
    match result {
        Ok(()) => record.finish("ok"),
        Err(e) => record.finish(e),
    }
    drop(client);
    drop(record);
    drop(guard);
}

/// Why a connection ended other than "ok".
#[derive(Debug)]
enum ConnError {
    /// The handshake closed (the reason's text).
    Handshake(String),
    /// An I/O error on a socket.
    Io(&'static str, io::Error),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(reason) => f.write_str(reason),
            Self::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// The client as the handshake sees it.
struct Peer {
    /// Its address: the accepted peer's, or the one its PROXY header named.
    addr: SocketAddr,
    /// Whether it came through a PROXY header (ident cannot reach it).
    proxied: bool,
    /// Bytes read after the PROXY header: the start of the request.
    first: Vec<u8>,
}

/// Reads the PROXY header of a connection from a trusted load balancer, within the handshake
/// timeout; returns the original client, and puts the bytes after the header into `first`.
async fn proxy_header(
    client: &TcpStream,
    balancer: SocketAddr,
    timeout: Duration,
    first: &mut Vec<u8>,
) -> Result<SocketAddr, HeaderEnd> {
    let mut reader = HeaderReader::new(balancer);
    let mut buf = [0u8; HANDSHAKE_BUF];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, read_some(client, &mut buf)).await {
            Err(_elapsed) => return Err(HeaderEnd::TimedOut),
            // A reset counts as a close (health checks often end with one).
            Ok(Ok(0) | Err(_)) => return Err(reader.handle_eof()),
            Ok(Ok(n)) => n,
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

async fn handshake_and_relay(
    client: &TcpStream,
    peer: Peer,
    guard: &mut ActiveGuard,
    record: &mut Record,
) -> Result<(), ConnError> {
    let (shared, admission) = guard.parts();
    // Separate futures, so the handshake's state is not kept while relaying.
    let handshake = handshake(client, peer, shared, admission, record).await;
    admission.handshake_done();
    let (upstream, early) = handshake?;
    let bandwidth = shared.bandwidth.as_deref();
    record.meter.enter(Phase::Relaying);
    let end = relay::relay(client, &upstream, early, shared.config.timeouts.idle, bandwidth, record).await;
    record.meter.close(end.into());
    record.finish(end);
    Ok(())
}

/// Drives the handshake to the relay; returns the destination (or BIND peer) stream and the
/// client's early data. While it waits on a lookup, a connect, identd or a BIND peer it watches
/// the client (see [`watching`]).
async fn handshake(
    client: &TcpStream,
    from: Peer,
    shared: &Snapshot,
    admission: &mut Admission,
    record: &mut Record,
) -> Result<(TcpStream, Vec<u8>), ConnError> {
    let config = &shared.config;
    let peer = from.addr;
    let _ = client.set_nodelay(true);
    let start = record.start;
    let now = || start.elapsed();
    let at = |d: Duration| tokio::time::Instant::from_std(start + d);
    let mut hs = config.handshake(now());
    let mut early: Vec<u8> = Vec::new();
    if !from.first.is_empty() {
        feed(&mut hs, &mut early, &from.first, now());
        record.note_request(&hs);
    }
    let mut upstream: Option<TcpStream> = None;
    // BIND: the listener, dropped when the wait ends (with the wait's slot in `admission`).
    let mut bind_listener: Option<TcpListener> = None;
    // A SOCKS4a name's further addresses, tried in turn when a connect fails.
    let mut candidates = Candidates::default();
    // The route of the rule that allowed the request (`via`), if any.
    let mut route: Option<Route> = None;
    // BIND through a parent: it listens, its second reply is awaited (boxed: the future stays small).
    let mut bind_wait: Option<Box<chain::ParentBind>> = None;
    let misuse = |e: socks4_core::Misuse| ConnError::Handshake(format!("internal error: {e}"));

    loop {
        match hs.poll_output() {
            Output::Send(reply) => {
                if let Err(e) = write_all(client, &reply.to_bytes()).await {
                    // The same words in every adapter: the client is gone.
                    tracing::debug!("writing reply: {e}");
                    record.note_request(&hs);
                    return Err(ConnError::Handshake(CloseReason::ClientGone.to_string()));
                }
                record.meter.replied(reply.code);
                // The (first) reply is out: no longer a handshake for the limits.
                admission.handshake_done();
            }
            Output::Authorize(_) => {
                record.note_request(&hs);
                if let Authorized::Via(via) = authorize(&mut hs, client, peer, shared, &now).await.map_err(misuse)? {
                    route = Some(via);
                }
            }
            Output::Resolve { host, port } => {
                let host = host.to_owned();
                record.note_request(&hs);
                if upstream::forwards_name(&config.rules, peer.ip(), &hs, shared.verifier.is_some()) {
                    // Routed to a SOCKS4a parent: the name goes there unresolved.
                    hs.forward_name(now()).map_err(misuse)?;
                    continue;
                }
                record.meter.enter(Phase::Resolving);
                let deadline = hs.deadline().map(at);
                let lookup = with_deadline(deadline, tokio::net::lookup_host((host.as_str(), port)));
                match watching(client, false, lookup).await {
                    Ok(lookup) => {
                        candidates = lookup.map_or_else(Candidates::failed, Candidates::from_lookup);
                        let first = candidates.first();
                        record.meter.resolved(first.is_ok());
                        hs.handle_resolved(now(), first).map_err(misuse)?;
                    }
                    Err(left) => left.tell(&mut hs, now()),
                }
            }
            Output::Connect(target) if route.is_some() => {
                let target = ChainTarget::from(target);
                let user_id = hs.request().map(|r| r.user_id.to_vec()).unwrap_or_default();
                // Boxed: only routed connects allocate the chained state.
                let chaining = Box::pin(async {
                    match &route {
                        Some(via) => chain::connect(via, &target, &user_id, config.timeouts.connect).await,
                        None => Chained::failed(Failure::Other),
                    }
                });
                record.meter.enter(Phase::Connecting);
                let chained = match watching(client, false, chaining).await {
                    Ok(chained) => chained,
                    Err(left) => {
                        left.tell(&mut hs, now());
                        continue;
                    }
                };
                record.via = chained.via;
                let result = chained.result.map(|(stream, bound)| {
                    upstream = Some(stream);
                    record.meter.connected();
                    bound
                });
                hs.handle_connected(now(), result).map_err(misuse)?;
            }
            Output::Connect(Target::Addr(addr)) => {
                record.meter.enter(Phase::Connecting);
                let deadline = hs.deadline().map(at);
                let attempt = with_deadline(deadline, async {
                    let stream = TcpStream::connect(addr).await.map_err(|e| Failure::from(&e))?;
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                    Ok((stream, local))
                });
                let result = match watching(client, false, attempt).await {
                    Ok(result) => result.and_then(|r| r),
                    Err(left) => {
                        left.tell(&mut hs, now());
                        continue;
                    }
                };
                match result {
                    Ok((stream, local)) => {
                        upstream = Some(stream);
                        record.meter.connected();
                        hs.handle_connected(now(), Ok(local)).map_err(misuse)?;
                    }
                    Err(e) => match candidates.next_after(e) {
                        Some(next) => hs.retry_connect(now(), next).map_err(misuse)?,
                        None => hs.handle_connected(now(), Err(e)).map_err(misuse)?,
                    },
                }
            }
            Output::Connect(Target::Host(..)) => {
                // Names are resolved here (`Names::Resolve`), so the handshake never forwards one.
                hs.handle_connected(now(), Err(Failure::Other)).map_err(misuse)?;
            }
            Output::Ident => {
                let timeout = config.timeouts.ident;
                let answer = match client.local_addr() {
                    _ if from.proxied => socks4_server::proxy::ident_through_balancer(peer),
                    Ok(local) => {
                        let ask = move || socks4_server::ident::ask_blocking(peer, local, timeout);
                        let asking = async { tokio::task::spawn_blocking(ask).await.unwrap_or(Err(Failure::Other)) };
                        match watching(client, false, asking).await {
                            Ok(answer) => answer,
                            Err(left) => {
                                left.tell(&mut hs, now());
                                continue;
                            }
                        }
                    }
                    Err(e) => Err(Failure::from(&e)),
                };
                hs.handle_ident(now(), answer.as_ref().map_err(|e| *e).and_then(|a| a.reply())).map_err(misuse)?;
            }
            Output::Listen { expected_peer } if route.is_some() => {
                // A BIND through a parent waits like one here: it takes a BIND-wait slot.
                if admission.start_bind_wait(Instant::now()).is_err() {
                    // Counted and summarised by the limiter; the client gets 91.
                    hs.handle_listening(now(), Err(Failure::OverLimit)).map_err(misuse)?;
                    continue;
                }
                let port = hs.request().map_or(0, |r| r.port);
                let user_id = hs.request().map(|r| r.user_id.to_vec()).unwrap_or_default();
                let chaining = Box::pin(async {
                    match (expected_peer, &route) {
                        (IpAddr::V4(ip), Some(via)) => {
                            chain::bind(via, SocketAddrV4::new(ip, port), &user_id, config.timeouts.connect).await
                        }
                        _ => Chained::failed(Failure::Other), // an IPv6 peer cannot be asked for
                    }
                });
                let chained = match watching(client, false, chaining).await {
                    Ok(chained) => chained,
                    Err(left) => {
                        left.tell(&mut hs, now());
                        continue;
                    }
                };
                record.via = chained.via;
                let result = chained.result.map(|wait| {
                    let listening = wait.listening;
                    bind_wait = Some(Box::new(wait));
                    listening
                });
                hs.handle_listening(now(), result).map_err(misuse)?;
            }
            Output::Listen { .. } => {
                let result = match listen_for_peer(client).await {
                    // The wait's slot (`--max-bind-waits`), held in the admission.
                    Ok((listener, addr)) => match admission.start_bind_wait(Instant::now()) {
                        Ok(()) => {
                            bind_listener = Some(listener);
                            Ok(addr)
                        }
                        Err(_counted_by_the_limiter) => Err(Failure::OverLimit),
                    },
                    Err(e) => Err(Failure::from(&e)),
                };
                hs.handle_listening(now(), result).map_err(misuse)?;
            }
            Output::Relay => break,
            Output::Closed(reason) => {
                record.note_request(&hs);
                record.meter.close(Close::from(&reason));
                return Err(ConnError::Handshake(reason.to_string()));
            }
            Output::Wait { deadline: wait_until } if bind_wait.is_some() => {
                // BIND through a parent: wait for its second reply (or the client leaving, which
                // drops the wait and closes the connection to the parent, ending its listener).
                let Some(wait) = bind_wait.take() else { continue };
                record.meter.enter(Phase::BindWait);
                let timeout = wait_until.map_or(config.timeouts.bind, |d| d.saturating_sub(now()));
                match watching(client, true, Box::pin(wait.peer(timeout))).await {
                    Ok(result) => {
                        let result = result.map(|(stream, from)| {
                            upstream = Some(stream);
                            from
                        });
                        hs.handle_bind_peer(now(), result).map_err(misuse)?;
                    }
                    Err(left) => left.tell(&mut hs, now()),
                }
                admission.end_bind_wait();
            }
            Output::Wait { deadline } => {
                let deadline = deadline.map(at);
                if let Some(listener) = &bind_listener {
                    // BIND: the first reply went out; wait for one peer (or the client leaving),
                    // then close the listener.
                    record.meter.enter(Phase::BindWait);
                    let accept =
                        with_deadline(deadline, async { listener.accept().await.map_err(|e| Failure::from(&e)) });
                    let waited = watching(client, true, accept).await;
                    bind_listener = None;
                    admission.end_bind_wait();
                    match waited {
                        Ok(result) => {
                            let result = result.and_then(|r| r).map(|(stream, from)| {
                                let _ = stream.set_nodelay(true);
                                upstream = Some(stream);
                                from
                            });
                            hs.handle_bind_peer(now(), result).map_err(misuse)?;
                        }
                        Err(left) => left.tell(&mut hs, now()),
                    }
                } else if hs.wants_input() {
                    read_request(client, &mut hs, &mut early, deadline, &now).await?;
                    record.note_request(&hs);
                } else {
                    // Nothing else to wait for: let the deadline pass (never reached in practice).
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => return Err(ConnError::Handshake("internal error: stalled handshake".into())),
                    }
                    hs.handle_timeout(now());
                }
            }
            _ => return Err(ConnError::Handshake("internal error: unknown handshake output".into())),
        }
    }

    match upstream {
        Some(upstream) => Ok((upstream, early)),
        None => Err(ConnError::Handshake("internal error: relay without a destination".into())),
    }
}

/// Answers [`Output::Authorize`]. With a users file the user id is verified first (from the cache
/// at once, else on the verifier's threads while the client is watched: a client that leaves
/// withdraws its check); then the rules decide on the user's name, never the token, and say
/// whether the request goes through a route.
async fn authorize(
    hs: &mut ServerHandshake,
    client_stream: &TcpStream,
    peer: SocketAddr,
    shared: &Snapshot,
    now: &impl Fn() -> Duration,
) -> Result<Authorized, socks4_core::Misuse> {
    let rules = &shared.config.rules;
    let client = peer.ip().to_canonical();
    if let (Some(verifier), Some(req)) = (&shared.verifier, hs.access_request()) {
        match watching(client_stream, false, verifier.verify(peer.ip(), req.user_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return users::refuse(hs, peer, e).map(|()| Authorized::Direct),
            Err(left) => {
                left.tell(hs, now());
                return Ok(Authorized::Direct);
            }
        }
    }
    upstream::authorize(hs, now(), rules, client, shared.verifier.is_some())
}

/// How the client left while the handshake waited on something else.
#[derive(Debug, Clone, Copy)]
enum Left {
    /// It closed its sending side.
    Closed,
    /// Its connection failed (reset or another error).
    Failed,
}

impl Left {
    /// Tells the handshake; whatever was started for it has been dropped already.
    fn tell(self, hs: &mut ServerHandshake, now: Duration) {
        match self {
            Left::Closed => hs.handle_eof(now),
            Left::Failed => hs.handle_client_error(now),
        }
    }
}

/// Runs `work` while watching the client: `Err` as soon as the client's connection fails (or it
/// closes, if `eof_ends`), dropping `work` and what it started (a connect attempt, a lookup's
/// answer, an accept).
async fn watching<T>(client: &TcpStream, eof_ends: bool, work: impl Future<Output = T>) -> Result<T, Left> {
    tokio::select! {
        biased;
        done = work => Ok(done),
        left = client_left(client, eof_ends) => Err(left),
    }
}

/// Resolves when the client's connection fails, or it closes and `eof_ends`. It only peeks, so
/// early data stays in the socket for the relay. Once data (or an EOF that does not end the phase)
/// is there it stays pending for good: the socket would stay readable, and watching on would spin.
async fn client_left(client: &TcpStream, eof_ends: bool) -> Left {
    let mut byte = [0u8; 1];
    match client.peek(&mut byte).await {
        Err(_) => Left::Failed,
        Ok(0) if eof_ends => Left::Closed,
        Ok(_) => std::future::pending().await,
    }
}

/// Reads once from the client (until the deadline) and feeds the handshake; bytes past the
/// request are kept as early data.
async fn read_request(
    client: &TcpStream,
    hs: &mut ServerHandshake,
    early: &mut Vec<u8>,
    deadline: Option<tokio::time::Instant>,
    now: &impl Fn() -> Duration,
) -> Result<(), ConnError> {
    let mut buf = [0u8; HANDSHAKE_BUF];
    match with_deadline(deadline, read_some(client, &mut buf)).await {
        Err(_timed_out) => hs.handle_timeout(now()),
        Ok(Ok(0)) => hs.handle_eof(now()),
        Ok(Ok(n)) => feed(hs, early, &buf[..n], now()),
        Ok(Err(e)) => return Err(ConnError::Io("reading request", e)),
    }
    Ok(())
}

/// Feeds bytes read from the client to the handshake; bytes past the request are early data.
fn feed(hs: &mut ServerHandshake, early: &mut Vec<u8>, bytes: &[u8], now: Duration) {
    let used = hs.handle_input(now, bytes);
    if hs.request().is_some() && used < bytes.len() {
        early.extend_from_slice(&bytes[used..]);
    }
}

/// Reads what the client has sent (at least one byte, or 0 at EOF).
async fn read_some(client: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        client.readable().await?;
        match client.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Runs `fut` until `deadline`; a missed deadline is `Failure::TimedOut`.
async fn with_deadline<T, F>(deadline: Option<tokio::time::Instant>, fut: F) -> Result<T, Failure>
where
    F: Future<Output = T>,
{
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.map_err(|_| Failure::TimedOut),
        None => Ok(fut.await),
    }
}

/// BIND: listens on the address the client reached us on, port 0; returns the listener and its
/// address (an IPv6 one is reported as 0.0.0.0: the client uses the address it reached us on).
async fn listen_for_peer(client: &TcpStream) -> io::Result<(TcpListener, SocketAddr)> {
    let local = client.local_addr()?.ip().to_canonical();
    let listener = TcpListener::bind((local, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
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
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = TcpStream::connect(addr).await.unwrap();
            let live = socks4_server::reload::LiveConfig::new(ServerConfig::default()).unwrap();
            let shared = std::sync::Arc::new(crate::server::Shared::new(live, 1));
            let guard = shared.admit(addr).unwrap();
            let task = serve(stream, addr, guard);
            let size = std::mem::size_of_val(&task);
            println!("connection future: {size} bytes");
            assert!(size < 4096, "connection future is {size} bytes");
        });
    }
}
