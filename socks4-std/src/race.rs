//! Happy Eyeballs in the worker's poller: the sockets of a [`Race`]'s attempts, each registered
//! for writability under one of the connection's race keys, and the race driven from their
//! events and the connection's timer. The policy — order, stagger, deadline, which addresses —
//! is [`socks4_server::eyeballs`]'; the async driver follows the same machine.

use std::net::TcpStream;
use std::time::Instant;

use polling::{Event, Poller};
use socks4_core::Failure;
use socks4_server::egress::Outgoing;
use socks4_server::eyeballs::{MAX_RACING, Race, RaceIo};

use crate::conn::{RACE_KEY, start_connect};

/// How a race stands after it was driven.
pub(crate) enum RaceEnd {
    /// Attempts are in flight (or the stagger runs): wait for their events or the deadline.
    Pending,
    /// This connection won (no longer registered with the poller); the others are closed.
    Won(TcpStream),
    /// None connected; every attempt is closed.
    Failed(Failure),
}

/// One attempt's socket: which attempt, and whether the poller has it.
#[derive(Debug)]
struct Attempt {
    attempt: usize,
    stream: TcpStream,
    registered: bool,
}

/// A race and its sockets, in the connection's race keys `RACE_KEY .. RACE_KEY + MAX_RACING`.
#[derive(Debug)]
pub(crate) struct Racing {
    race: Race,
    sockets: [Option<Attempt>; MAX_RACING],
    /// The winner's socket, between its connect and [`RaceIo::Won`].
    won: Option<TcpStream>,
}

impl Racing {
    /// Takes over `race` (nothing started yet: [`pump`](Self::pump) starts it).
    pub(crate) fn new(race: Race) -> Box<Self> {
        Box::new(Self { race, sockets: Default::default(), won: None })
    }

    /// When the race wants a timer: the next stagger or its deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.race.deadline()
    }

    /// Drives the race at `now`: starts the attempts due, and ends it when one won or all failed.
    /// `base`: the connection's first poller key (`slot * KEYS_PER_CONN`); each attempt's socket
    /// comes from `outgoing` (the rule's `out`, `--outgoing`).
    pub(crate) fn pump(&mut self, poller: &Poller, base: usize, now: Instant, outgoing: &Outgoing<'_>) -> RaceEnd {
        loop {
            match self.race.poll(now) {
                RaceIo::Connect { attempt, addr } => match start_connect(outgoing, addr) {
                    Err(failure) => self.race.handle_failed(attempt, now, failure),
                    Ok((stream, true)) => {
                        self.race.handle_connected(attempt);
                        if self.race.is_winner(attempt) {
                            self.won = Some(stream);
                        }
                    }
                    Ok((stream, false)) => {
                        let Some(k) = self.sockets.iter().position(Option::is_none) else {
                            // Cannot happen: at most MAX_RACING are in flight.
                            self.race.handle_failed(attempt, now, Failure::Other);
                            continue;
                        };
                        let key = base + RACE_KEY + k;
                        // SAFETY: every registered attempt's socket is deleted from the poller
                        // before it is dropped (`drop_socket`, `close`; the connection calls
                        // `close` before it drops the race).
                        let registered = unsafe { poller.add(&stream, Event::writable(key)) }.is_ok();
                        if !registered {
                            self.race.handle_failed(attempt, now, Failure::Other);
                            continue;
                        }
                        self.sockets[k] = Some(Attempt { attempt, stream, registered });
                    }
                },
                RaceIo::Wait { .. } => return RaceEnd::Pending,
                RaceIo::Won(_) => {
                    self.close(poller);
                    return self.won.take().map_or(RaceEnd::Failed(Failure::Other), RaceEnd::Won);
                }
                RaceIo::Failed(failure) => {
                    self.close(poller);
                    return RaceEnd::Failed(failure);
                }
                _ => {
                    self.close(poller);
                    return RaceEnd::Failed(Failure::Other);
                }
            }
        }
    }

    /// The socket under race key `k` is writable: its connect succeeded or failed.
    pub(crate) fn on_event(&mut self, poller: &Poller, k: usize, now: Instant) {
        let Some(Attempt { attempt, stream, .. }) = self.sockets.get(k).and_then(Option::as_ref) else { return };
        let attempt = *attempt;
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(Failure::from(&e)),
            Ok(None) => Ok(()),
        };
        let Some(stream) = self.drop_socket(poller, k) else { return };
        match result {
            Ok(()) => {
                self.race.handle_connected(attempt);
                if self.race.is_winner(attempt) {
                    self.won = Some(stream);
                }
            }
            Err(failure) => self.race.handle_failed(attempt, now, failure),
        }
    }

    /// Takes the socket under race key `k` out of the poller.
    fn drop_socket(&mut self, poller: &Poller, k: usize) -> Option<TcpStream> {
        let a = self.sockets.get_mut(k)?.take()?;
        if a.registered {
            let _ = poller.delete(&a.stream);
        }
        Some(a.stream)
    }

    /// Closes every attempt still held (deleting it from the poller first).
    pub(crate) fn close(&mut self, poller: &Poller) {
        for k in 0..MAX_RACING {
            drop(self.drop_socket(poller, k));
        }
    }
}
