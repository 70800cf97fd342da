//! One client connection: drive the sans-IO [`ServerHandshake`] with the runtime's I/O, then relay.
//! Written against [`Runtime`] and `futures-io`, so it runs on smol and on async-std alike.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_core::driver::Candidates;
use socks4_core::{Failure, MAX_REQUEST_LEN, Output, ServerHandshake, Target};
use socks4_server::ServerConfig;
use socks4_server::log::{ConnLine, RequestCopy};

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
}

impl ConnLog {
    pub(crate) fn new(client: SocketAddr) -> Self {
        Self { client, start: Instant::now(), request: RequestCopy::default(), result: None, counts: Counts::default() }
    }

    pub(crate) fn finish(&mut self, result: impl fmt::Display) {
        self.result = Some(result.to_string());
    }

    /// Records the request for the log line.
    fn note_request(&mut self, hs: &ServerHandshake) {
        self.request.note(hs);
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        let line = ConnLine {
            client: self.client,
            request: self.request.request(),
            result: &self.result.as_deref().unwrap_or(socks4_server::log::SHUTDOWN),
            up: self.counts.up.get(),
            down: self.counts.down.get(),
            elapsed: self.start.elapsed(),
        };
        tracing::info!("{line}");
    }
}

/// Serves one accepted client connection to the end, filling in `log`.
pub(crate) async fn serve<R: Runtime>(client: R::Stream, config: &ServerConfig, log: &mut ConnLog) {
    match handshake::<R>(client.clone(), config, log).await {
        Ok(Some((dest, early))) => {
            let end = relay::<R>(client, dest, &early, config.timeouts.idle, &log.counts).await;
            log.finish(end);
        }
        Ok(None) => {}
        Err(e) => log.finish(e),
    }
}

/// Runs the handshake. `Ok(Some((dest, early)))`: relay `client` ⇄ `dest`, sending `early` first;
/// `Ok(None)`: the handshake closed (the reason is in `log`); `Err`: an I/O error with the client.
async fn handshake<R: Runtime>(
    mut client: R::Stream,
    config: &ServerConfig,
    log: &mut ConnLog,
) -> io::Result<Option<(R::Stream, Vec<u8>)>> {
    let epoch = Instant::now();
    let now = || epoch.elapsed();
    let client_ip = log.client.ip();
    let mut hs = config.handshake(now());
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let mut early: Vec<u8> = Vec::new();
    let mut dest: Option<R::Stream> = None;
    let mut listener: Option<R::Listener> = None;
    // A SOCKS4a name's further addresses, tried in turn when a connect fails.
    let mut candidates = Candidates::default();
    loop {
        match hs.poll_output() {
            Output::Send(reply) => client.write_all(&reply.to_bytes()).await?,
            Output::Resolve { host, port } => {
                let host = host.to_owned();
                let answer = with_timeout::<R, _>(config.timeouts.connect, R::resolve(&host, port)).await;
                candidates = Candidates::from_lookup(answer);
                misuse(hs.handle_resolved(now(), candidates.first()))?;
            }
            Output::Authorize(_) => {
                log.note_request(&hs);
                misuse(hs.authorize(now(), &config.rules, client_ip))?;
            }
            Output::Connect(Target::Addr(addr)) => {
                // Every address of a name shares the connect phase's deadline.
                let left = hs.deadline().map_or(config.timeouts.connect, |d| d.saturating_sub(now()));
                match R::connect(addr, left).await {
                    Ok(stream) => {
                        let _ = R::set_nodelay(&stream);
                        let local = R::local_addr(&stream).unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                        dest = Some(stream);
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
                    Ok(local) => R::unblock(move || socks4_server::ident::ask_blocking(peer, local, timeout)).await,
                    Err(e) => Err(Failure::from(&e)),
                };
                misuse(hs.handle_ident(now(), answer.as_ref().map_err(|e| *e).and_then(|a| a.reply())))?;
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
                    Ok((l, addr)) => {
                        listener = Some(l);
                        Ok(addr)
                    }
                    Err(e) => Err(Failure::from(&e)),
                };
                misuse(hs.handle_listening(now(), result))?;
            }
            Output::Wait { deadline } => {
                let left = deadline.map(|d| d.saturating_sub(now()));
                if let Some(l) = listener.take() {
                    // BIND: accept one peer, then the listener closes.
                    let accepted = match left {
                        Some(left) => with_timeout::<R, _>(left, R::accept(&l)).await,
                        None => R::accept(&l).await,
                    };
                    drop(l);
                    let result = match accepted {
                        Ok((peer, addr)) => {
                            let _ = R::set_nodelay(&peer);
                            dest = Some(peer);
                            Ok(addr)
                        }
                        Err(e) => Err(Failure::from(&e)),
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
                log.finish(reason);
                linger::<R>(&mut client, &mut buf).await;
                return Ok(None);
            }
            _ => return Err(io::Error::other("unexpected handshake output")),
        }
    }
}

/// Closes gently after a rejection: half-close, then read and discard what the client still sends
/// (bounded in bytes and time), so that closing with unread input does not reset the connection
/// and destroy the reply in flight.
async fn linger<R: Runtime>(client: &mut R::Stream, buf: &mut [u8]) {
    let _ = client.flush().await;
    if R::shutdown_write(client).is_err() {
        return;
    }
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(buf).await {
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
