//! Happy Eyeballs on the async runtimes: performs a [`Race`]'s I/O (its attempts' connects and
//! the stagger's timer) until one attempt connects or all fail. The policy — order, stagger,
//! deadline, which addresses — is [`socks4_server::eyeballs`]'; socks4-std's poller follows the
//! same machine.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Instant;

use socks4_core::Failure;
use socks4_server::config::NamesConfig;
use socks4_server::egress::Outgoing;
use socks4_server::eyeballs::{Race, RaceIo};

use crate::runtime::Runtime;

/// A SOCKS4a name's lookup: with our own resolver when `names` lists name servers
/// ([`socks4_server::names`]), else the runtime's (the system's `getaddrinfo`).
pub(crate) async fn resolve<R: Runtime>(names: &NamesConfig, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    match socks4_server::names::resolver_for(names) {
        None => R::resolve(host, port).await,
        Some(Ok(resolver)) => socks4_server::names::Lookup::start(&*resolver, host, port).await,
        Some(Err(e)) => Err(e),
    }
}

/// One attempt's connect in flight.
type Connecting<S> = Pin<Box<dyn Future<Output = io::Result<S>>>>;

/// Runs `race` to its end, each attempt's socket made by `outgoing`: the winner's stream, or why none connected. The other attempts are
/// closed as soon as one wins (their futures, and so their sockets, are dropped); dropping this
/// future (the client left) closes them all.
pub(crate) async fn race<R: Runtime>(race: &mut Race, outgoing: Outgoing<'_>) -> Result<R::Stream, Failure> {
    let mut attempts: Vec<(usize, Connecting<R::Stream>)> = Vec::new();
    let mut won: Option<R::Stream> = None;
    let ends = race.ends_at();
    loop {
        let now = Instant::now();
        match race.poll(now) {
            RaceIo::Connect { attempt, addr } => {
                // Each attempt from the next source of the rule's `out` (or `--outgoing`).
                let left = ends.saturating_duration_since(now);
                let connecting: Connecting<R::Stream> = match outgoing.socket(addr) {
                    Ok(socket) => Box::pin(R::connect_socket(socket, addr, left)),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                };
                attempts.push((attempt, connecting));
            }
            RaceIo::Wait { until } => {
                let mut sleep = pin!(R::sleep(until.saturating_duration_since(now)));
                let first = poll_fn(|cx| {
                    for (i, (_, connecting)) in attempts.iter_mut().enumerate() {
                        if let Poll::Ready(result) = connecting.as_mut().poll(cx) {
                            return Poll::Ready(Some((i, result)));
                        }
                    }
                    sleep.as_mut().poll(cx).map(|()| None)
                })
                .await;
                let Some((i, result)) = first else { continue };
                let (attempt, _) = attempts.swap_remove(i);
                match result {
                    Ok(stream) => {
                        race.handle_connected(attempt);
                        if race.is_winner(attempt) {
                            won = Some(stream);
                        }
                    }
                    Err(e) => race.handle_failed(attempt, Instant::now(), Failure::from(&e)),
                }
            }
            // `attempts` (the others) are dropped on return: closed at once.
            RaceIo::Won(_) => return won.ok_or(Failure::Other),
            RaceIo::Failed(failure) => return Err(failure),
            _ => return Err(Failure::Other),
        }
    }
}
