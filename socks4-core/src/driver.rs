//! Helpers for drivers on `std` (feature `std`): the conversions every driver of the state machines
//! repeats.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::rules::is_forbidden_destination;

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
/// [`Failure::NotFound`](crate::Failure::NotFound).
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
