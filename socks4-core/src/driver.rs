//! Helpers for drivers on `std` (feature `std`): the conversions every driver of the state machines
//! repeats.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::rules::is_forbidden_destination;
use crate::server::Failure;

/// The handshake's clock: `Duration`s since an `Instant` the driver picked, and back.
///
/// ```
/// use std::time::Duration;
/// use socks4_core::driver::Clock;
/// let clock = Clock::new();
/// let now = clock.now();
/// let deadline = now + Duration::from_secs(10); // as a handshake hands it out
/// assert_eq!(clock.instant(deadline) - clock.instant(now), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self { epoch: Instant::now() }
    }

    /// A clock with this epoch.
    pub const fn with_epoch(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// The time since the epoch: the `now` to pass to the state machines.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The `Instant` of a time on this clock, e.g. an `Output::Wait` deadline for a timer.
    pub fn instant(&self, at: Duration) -> Instant {
        self.epoch + at
    }
}

/// The addresses of a name lookup worth connecting to, in the order to try them: duplicates and
/// addresses that are never a real destination ([`is_forbidden_destination`]) dropped, IPv4
/// (whose address a SOCKS4 reply can carry) before IPv6, otherwise in the resolver's order.
/// When every address is forbidden, the first of them is kept alone, so that the handshake
/// refuses it by name ([`CloseReason::Forbidden`](crate::CloseReason::Forbidden)).
/// The first is the answer to [`Output::Resolve`](crate::Output::Resolve); the others are for
/// [`ServerHandshake::retry_connect`](crate::ServerHandshake::retry_connect). Empty means
/// [`Failure::NotFound`].
///
/// ```
/// use std::net::ToSocketAddrs;
/// use socks4_core::driver::connect_candidates;
/// let found = connect_candidates(("::1", 80).to_socket_addrs()?);
/// assert_eq!(found, ["::1".parse::<std::net::IpAddr>()?]);
/// let mixed = ["[2001:db8::1]:80", "192.0.2.1:80", "0.0.0.0:80", "192.0.2.1:80"].map(|a| a.parse().unwrap());
/// assert_eq!(connect_candidates(mixed), ["192.0.2.1".parse::<std::net::IpAddr>()?, "2001:db8::1".parse()?]);
/// let zero = connect_candidates(("0.0.0.0", 80).to_socket_addrs()?);
/// assert_eq!(zero, [std::net::IpAddr::from([0, 0, 0, 0])]); // for the handshake to refuse
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_candidates(lookup: impl IntoIterator<Item = SocketAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut forbidden = None;
    for ip in lookup.into_iter().map(|a| a.ip().to_canonical()) {
        if is_forbidden_destination(ip) {
            forbidden = forbidden.or(Some(ip));
        } else if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        out.extend(forbidden);
    }
    out.sort_by_key(|ip| ip.is_ipv6()); // stable: the resolver's order within each family
    out
}

/// A SOCKS4a name's addresses, handed to the handshake one at a time: the first answers
/// [`Output::Resolve`](crate::Output::Resolve), the next ones follow a failed connect through
/// [`ServerHandshake::retry_connect`](crate::ServerHandshake::retry_connect).
///
/// ```
/// use std::net::ToSocketAddrs;
/// use std::time::Duration;
/// use socks4_core::driver::Candidates;
/// use socks4_core::{Failure, Limits, Output, ServerHandshake, Timeouts};
///
/// let now = Duration::ZERO;
/// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
/// hs.handle_input(now, b"\x04\x01\x00\x50\x00\x00\x00\x01\0localhost\0");
/// let Output::Resolve { host, port } = hs.poll_output() else { panic!() };
/// let mut candidates = Candidates::from_lookup((host, port).to_socket_addrs());
/// hs.handle_resolved(now, candidates.first())?;
/// hs.accept(now)?;
/// assert!(matches!(hs.poll_output(), Output::Connect(_)));
/// // The connect failed: retry with the next address, or give up.
/// let failure = Failure::Refused;
/// match candidates.next_after(failure) {
///     Some(next) => hs.retry_connect(now, next)?,
///     None => hs.handle_connected(now, Err(failure))?,
/// }
/// # Ok::<(), socks4_core::Misuse>(())
/// ```
#[derive(Debug, Clone)]
pub struct Candidates {
    /// The addresses not handed out yet, the next one last.
    rest: Vec<IpAddr>,
    /// Why there is no address at all.
    failure: Option<Failure>,
}

impl Candidates {
    /// The candidates of a lookup's result, ordered by [`connect_candidates`]. A failed lookup
    /// keeps its failure for [`first`](Self::first); `getaddrinfo`'s "no such name", which has no
    /// error kind of its own, counts as [`Failure::NotFound`].
    pub fn from_lookup<I: IntoIterator<Item = SocketAddr>>(lookup: io::Result<I>) -> Self {
        match lookup {
            Ok(addrs) => {
                let mut rest = connect_candidates(addrs);
                rest.reverse();
                Self { rest, failure: None }
            }
            Err(e) => Self::failed(match Failure::from(&e) {
                Failure::Other => Failure::NotFound,
                other => other,
            }),
        }
    }

    /// No candidates, because of `failure` (e.g. the lookup timed out).
    pub fn failed(failure: Failure) -> Self {
        Self { rest: Vec::new(), failure: Some(failure) }
    }

    /// The answer to `Resolve`: the first address, or why there is none.
    ///
    /// # Errors
    ///
    /// The lookup's [`Failure`] when it gave no address to try ([`Failure::NotFound`] for an empty
    /// answer); hand it to `handle_resolved` as it is.
    pub fn first(&mut self) -> Result<IpAddr, Failure> {
        match self.rest.pop() {
            Some(ip) => Ok(ip),
            None => Err(self.failure.unwrap_or(Failure::NotFound)),
        }
    }

    /// After a connect failed with `failure`: the next address to try, or `None` when none is left
    /// or the failure was a timeout (the connect phase's time, shared by all addresses, is spent).
    pub fn next_after(&mut self, failure: Failure) -> Option<IpAddr> {
        if failure == Failure::TimedOut { None } else { self.rest.pop() }
    }
}

impl Default for Candidates {
    /// No candidates yet (a request by address).
    fn default() -> Self {
        Self { rest: Vec::new(), failure: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_hand_out_in_order_and_stop_after_a_timeout() {
        let lookup: io::Result<Vec<SocketAddr>> =
            Ok(["[2001:db8::1]:1", "192.0.2.1:1", "192.0.2.2:1"].iter().map(|a| a.parse().unwrap()).collect());
        let mut c = Candidates::from_lookup(lookup);
        assert_eq!(c.first(), Ok(IpAddr::from([192, 0, 2, 1])));
        assert_eq!(c.next_after(Failure::Refused), Some(IpAddr::from([192, 0, 2, 2])));
        assert_eq!(c.clone().next_after(Failure::TimedOut), None);
        assert_eq!(c.next_after(Failure::Unreachable), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(c.next_after(Failure::Refused), None);

        let empty: io::Result<Vec<SocketAddr>> = Ok(Vec::new());
        assert_eq!(Candidates::from_lookup(empty).first(), Err(Failure::NotFound));
        let unknown: io::Result<Vec<SocketAddr>> = Err(io::Error::other("failed to lookup address information"));
        assert_eq!(Candidates::from_lookup(unknown).first(), Err(Failure::NotFound));
        assert_eq!(Candidates::failed(Failure::TimedOut).first(), Err(Failure::TimedOut));
        assert_eq!(Candidates::default().next_after(Failure::Refused), None);
    }
}
