//! Happy Eyeballs (RFC 8305) for SOCKS4a names, sans IO: which of a name's addresses to try, in
//! which order ([`order`], by [`Prefer`]), and when ([`Race`]), written once for every driver.
//!
//! A name's lookup gives addresses of both families. Instead of trying them one after another
//! (where an address that never answers costs the whole connect timeout), the driver starts the
//! first, and the next one after the stagger (`--connect-stagger`, 250 ms by default, the RFC's
//! "Connection Attempt Delay") or as soon as an attempt fails; the first to connect wins and the
//! others are closed at once. All of it runs within the one connect deadline of the handshake.
//!
//! Order (RFC 8305 §4): the addresses of the preferred family first in the resolver's order,
//! interleaved with the other family's (`v6, v4, v6, v4, …` for [`Prefer::Ipv6`], the RFC's
//! default); [`Prefer::Resolver`] keeps the resolver's order as it is. Addresses that are never a
//! real destination and duplicates are dropped, and at most [`MAX_CANDIDATES`] are kept (a
//! hostile name's answer cannot make one request open hundreds of connections).
//!
//! Authorization: every address raced has passed the same checks as the first, which the
//! handshake authorized itself (the rules, at `Authorize`): the embedder's check and the rules,
//! with an allow that goes direct (no route) and asks identd only if identd already confirmed the
//! user; the decisions ([`step::Decisions`](crate::step::Decisions)) drop every other address, so
//! a denied or forbidden address is never connected. At most [`MAX_RACING`] attempts are in
//! flight at once.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use socks4_core::Failure;
//! use socks4_server::eyeballs::{Race, RaceIo};
//! let addrs = vec!["[2001:db8::1]:80".parse()?, "192.0.2.1:80".parse()?];
//! let (t0, stagger) = (Instant::now(), Duration::from_millis(250));
//! let mut race = Race::new(addrs, stagger, t0, t0 + Duration::from_secs(10));
//! assert!(matches!(race.poll(t0), RaceIo::Connect { attempt: 0, .. }));
//! assert_eq!(race.poll(t0), RaceIo::Wait { until: t0 + stagger }); // the IPv6 attempt stalls
//! let later = t0 + stagger;
//! let RaceIo::Connect { attempt: 1, addr } = race.poll(later) else { panic!() };
//! assert_eq!(addr, "192.0.2.1:80".parse()?);
//! race.handle_connected(1);
//! assert_eq!(race.poll(later), RaceIo::Won(1)); // close attempt 0 at once, relay through 1
//! assert_eq!(race.poll(later), RaceIo::Done);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use socks4_core::Failure;
use socks4_core::rules::is_forbidden_destination;

/// Most addresses of one name kept for connecting.
pub const MAX_CANDIDATES: usize = 16;

/// Most connection attempts of one race in flight at once (a further one starts when one fails).
pub const MAX_RACING: usize = 4;

/// The default stagger between two attempts (RFC 8305's "Connection Attempt Delay").
pub const DEFAULT_STAGGER: Duration = Duration::from_millis(250);

/// Which family a name's addresses start with (`--prefer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// IPv6 first, then the families alternate (RFC 8305's default).
    #[default]
    Ipv6,
    /// IPv4 first, then the families alternate.
    Ipv4,
    /// The resolver's order, as it is.
    Resolver,
}

impl fmt::Display for Prefer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv6 => "ipv6",
            Self::Ipv4 => "ipv4",
            Self::Resolver => "resolver",
        })
    }
}

/// `--prefer` got something other than `ipv6`, `ipv4` or `resolver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPrefer(pub String);

impl fmt::Display for BadPrefer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not ipv6, ipv4 or resolver", self.0)
    }
}

impl std::error::Error for BadPrefer {}

impl FromStr for Prefer {
    type Err = BadPrefer;

    fn from_str(s: &str) -> Result<Self, BadPrefer> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ipv6" => Ok(Self::Ipv6),
            "ipv4" => Ok(Self::Ipv4),
            "resolver" => Ok(Self::Resolver),
            _ => Err(BadPrefer(s.to_owned())),
        }
    }
}

/// The addresses of a lookup to connect to, in the order to try them (see the
/// [module docs](self)): canonical (an IPv4-mapped address is IPv4), without duplicates or
/// addresses that are never a real destination, at most [`MAX_CANDIDATES`]. When every address
/// is such an address, the first is kept alone, so that the handshake refuses it by name
/// ([`CloseReason::Forbidden`](socks4_core::CloseReason::Forbidden)).
///
/// ```
/// use socks4_server::eyeballs::{Prefer, order};
/// let ips = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "192.0.2.1", "0.0.0.0"].map(|a| a.parse().unwrap());
/// let text = |prefer| order(ips, prefer).iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ");
/// assert_eq!(text(Prefer::Ipv6), "2001:db8::1 192.0.2.1 192.0.2.2");
/// assert_eq!(text(Prefer::Ipv4), "192.0.2.1 2001:db8::1 192.0.2.2");
/// assert_eq!(text(Prefer::Resolver), "192.0.2.1 192.0.2.2 2001:db8::1");
/// ```
pub fn order(lookup: impl IntoIterator<Item = IpAddr>, prefer: Prefer) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = Vec::new();
    let mut forbidden = None;
    // Bounded: a lookup's answer is read only as far as the kept addresses and a few more.
    for ip in lookup.into_iter().take(MAX_CANDIDATES * 8).map(|ip| ip.to_canonical()) {
        if is_forbidden_destination(ip) {
            forbidden = forbidden.or(Some(ip));
        } else if !found.contains(&ip) {
            found.push(ip);
        }
    }
    if found.is_empty() {
        found.extend(forbidden);
    }
    let first_v6 = match prefer {
        Prefer::Resolver => {
            found.truncate(MAX_CANDIDATES);
            return found;
        }
        Prefer::Ipv6 => true,
        Prefer::Ipv4 => false,
    };
    let (mut preferred, mut other): (Vec<IpAddr>, Vec<IpAddr>) =
        found.into_iter().partition(|ip| ip.is_ipv6() == first_v6);
    preferred.reverse();
    other.reverse();
    let mut out = Vec::with_capacity((preferred.len() + other.len()).min(MAX_CANDIDATES));
    while out.len() < MAX_CANDIDATES {
        match (preferred.pop(), other.pop()) {
            (None, None) => break,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
    out.truncate(MAX_CANDIDATES);
    out
}

/// A name's lookup, ordered for connecting ([`order`]), or why it gave nothing.
///
/// ```
/// use std::net::SocketAddr;
/// use socks4_core::Failure;
/// use socks4_server::eyeballs::{Lookup, Prefer};
/// let found: std::io::Result<Vec<SocketAddr>> = Ok(vec!["127.0.0.1:80".parse()?, "[::1]:80".parse()?]);
/// let lookup = Lookup::new(found, Prefer::Ipv6);
/// assert_eq!(lookup.first(), Ok("::1".parse()?));
/// let none: std::io::Result<Vec<SocketAddr>> = Err(std::io::Error::other("no such name"));
/// assert_eq!(Lookup::new(none, Prefer::Ipv6).first(), Err(Failure::NotFound));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    addrs: Vec<IpAddr>,
    failure: Option<Failure>,
}

impl Lookup {
    /// The addresses of a lookup's result in `prefer`'s order. A failed lookup keeps its failure;
    /// `getaddrinfo`'s "no such name", which has no error kind of its own, counts as
    /// [`Failure::NotFound`].
    pub fn new(lookup: io::Result<Vec<SocketAddr>>, prefer: Prefer) -> Self {
        match lookup {
            Ok(found) => Self { addrs: order(found.into_iter().map(|a| a.ip()), prefer), failure: None },
            Err(e) => Self::failed(match Failure::from(&e) {
                Failure::Other => Failure::NotFound,
                other => other,
            }),
        }
    }

    /// No address, because of `failure` (e.g. the lookup timed out).
    pub fn failed(failure: Failure) -> Self {
        Self { addrs: Vec::new(), failure: Some(failure) }
    }

    /// The addresses, in the order to try them.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// The first address to try, or why there is none: the answer to the handshake's `Resolve`.
    ///
    /// # Errors
    /// The lookup's [`Failure`] when it gave no address ([`Failure::NotFound`] for an empty one).
    pub fn first(&self) -> Result<IpAddr, Failure> {
        match self.addrs.first() {
            Some(ip) => Ok(*ip),
            None => Err(self.failure.unwrap_or(Failure::NotFound)),
        }
    }

    /// Moves `ip` to the front (the address the handshake is asked to authorize first).
    pub fn put_first(&mut self, ip: IpAddr) {
        if let Some(i) = self.addrs.iter().position(|a| *a == ip) {
            let ip = self.addrs.remove(i);
            self.addrs.insert(0, ip);
        }
    }
}

/// Where one address of a [`Race`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    NotStarted,
    Connecting,
    Failed,
    Won,
}

/// What the driver does next for a [`Race`] ([`Race::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaceIo {
    /// Start connecting to `addr` (non-blocking, no source port bound first); answer with
    /// [`Race::handle_connected`] or [`Race::handle_failed`] for this `attempt`.
    Connect {
        /// The attempt's number, for the answer (its index in the race's addresses).
        attempt: usize,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Nothing to start before `until` (or before an attempt's answer): then poll again.
    Wait {
        /// The next stagger, or the connect deadline.
        until: Instant,
    },
    /// This attempt connected first: close every other attempt at once, and answer the
    /// handshake with its connection ([`ServerHandshake::handle_connected`]). Once.
    ///
    /// [`ServerHandshake::handle_connected`]: socks4_core::ServerHandshake::handle_connected
    Won(usize),
    /// No attempt connected (the last failure, or [`Failure::TimedOut`] at the deadline): close
    /// them all and answer the handshake with it. Once.
    Failed(Failure),
    /// The race is over.
    Done,
}

/// The connection attempts to a name's addresses, raced per RFC 8305, sans IO (see the
/// [module docs](self)). The addresses are the authorized ones, in [`order`]'s order. Drop it to
/// abandon the race (the client left); the driver closes the attempts it holds.
#[derive(Debug, Clone)]
pub struct Race {
    addrs: Vec<SocketAddr>,
    attempts: Vec<Attempt>,
    /// How many attempts were started (they start in order).
    started: usize,
    in_flight: usize,
    /// When the next attempt may start without a failure.
    next_at: Instant,
    stagger: Duration,
    deadline: Instant,
    failure: Option<Failure>,
    /// The winner, until [`RaceIo::Won`] was handed out.
    winner: Option<usize>,
    over: bool,
}

impl Race {
    /// A race to `addrs` (at least one, in the order to try them) started at `now`, one attempt
    /// every `stagger` (zero: all at once, as far as [`MAX_RACING`] allows), all of them over by
    /// `deadline`.
    pub fn new(addrs: Vec<SocketAddr>, stagger: Duration, now: Instant, deadline: Instant) -> Self {
        let attempts = vec![Attempt::NotStarted; addrs.len()];
        Self {
            addrs,
            attempts,
            started: 0,
            in_flight: 0,
            next_at: now,
            stagger,
            deadline,
            failure: None,
            winner: None,
            over: false,
        }
    }

    /// The addresses raced, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The next thing to do at `now`. Poll until it returns [`RaceIo::Wait`] or [`RaceIo::Done`].
    pub fn poll(&mut self, now: Instant) -> RaceIo {
        if self.over {
            return RaceIo::Done;
        }
        if let Some(i) = self.winner.take() {
            self.over = true;
            return RaceIo::Won(i);
        }
        if now >= self.deadline {
            return self.fail(Failure::TimedOut);
        }
        let can_start = self.started < self.addrs.len() && self.in_flight < MAX_RACING;
        if can_start && (self.in_flight == 0 || now >= self.next_at) {
            let attempt = self.started;
            self.started += 1;
            self.in_flight += 1;
            self.attempts[attempt] = Attempt::Connecting;
            self.next_at = now + self.stagger;
            return RaceIo::Connect { attempt, addr: self.addrs[attempt] };
        }
        if self.in_flight == 0 {
            return self.fail(self.failure.unwrap_or(Failure::NotFound));
        }
        let until = if can_start { self.next_at.min(self.deadline) } else { self.deadline };
        RaceIo::Wait { until }
    }

    /// When the driver must poll again without any answer (the next stagger or the deadline);
    /// `None` once the race is over.
    pub fn deadline(&self) -> Option<Instant> {
        if self.over {
            return None;
        }
        if self.winner.is_some() {
            return Some(self.next_at.min(self.deadline));
        }
        let can_start = self.started < self.addrs.len() && self.in_flight < MAX_RACING;
        Some(if can_start { self.next_at.min(self.deadline) } else { self.deadline })
    }

    /// Attempt `attempt` connected. The first to do so wins; a later one is to be closed
    /// (it is not in flight any more).
    pub fn handle_connected(&mut self, attempt: usize) {
        if self.attempts.get(attempt) != Some(&Attempt::Connecting) {
            return;
        }
        self.in_flight -= 1;
        if self.winner.is_none() && !self.over {
            self.attempts[attempt] = Attempt::Won;
            self.winner = Some(attempt);
        } else {
            self.attempts[attempt] = Attempt::Failed;
        }
    }

    /// Attempt `attempt` failed with `failure`: the next address starts at once (at the next
    /// [`poll`](Self::poll)).
    pub fn handle_failed(&mut self, attempt: usize, now: Instant, failure: Failure) {
        if self.attempts.get(attempt) != Some(&Attempt::Connecting) {
            return;
        }
        self.attempts[attempt] = Attempt::Failed;
        self.in_flight -= 1;
        self.failure = Some(failure);
        self.next_at = now;
    }

    /// When the race ends at the latest (the connect deadline it was given).
    pub fn ends_at(&self) -> Instant {
        self.deadline
    }

    /// Whether `attempt` connected first (it is, or was, handed out as [`RaceIo::Won`]).
    pub fn is_winner(&self, attempt: usize) -> bool {
        self.attempts.get(attempt) == Some(&Attempt::Won)
    }

    /// Whether `attempt` is in flight (started, no answer yet).
    pub fn is_connecting(&self, attempt: usize) -> bool {
        self.attempts.get(attempt) == Some(&Attempt::Connecting)
    }

    fn fail(&mut self, failure: Failure) -> RaceIo {
        self.over = true;
        for a in &mut self.attempts {
            if *a == Attempt::Connecting {
                *a = Attempt::Failed;
            }
        }
        self.in_flight = 0;
        RaceIo::Failed(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn interleaves_families_and_bounds_the_count() {
        let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([192, 0, 2, i + 1])).collect();
        assert_eq!(order(many.clone(), Prefer::Ipv6).len(), MAX_CANDIDATES);
        let mut mixed: Vec<IpAddr> = many[..3].to_vec();
        mixed.push("2001:db8::1".parse().unwrap());
        mixed.push("::ffff:192.0.2.1".parse().unwrap()); // the same as the first, mapped
        let v6 = order(mixed.clone(), Prefer::Ipv6);
        assert_eq!(v6[0], "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(v6.len(), 4);
        assert_eq!(&v6[1..], &many[..3]);
        let v4 = order(mixed, Prefer::Ipv4);
        assert_eq!(v4[1], "2001:db8::1".parse::<IpAddr>().unwrap());
        let only_bad = order(["0.0.0.0".parse().unwrap(), "224.0.0.1".parse().unwrap()], Prefer::Ipv6);
        assert_eq!(only_bad, [IpAddr::from([0, 0, 0, 0])], "kept for the handshake to refuse");
        assert_eq!(order(Vec::new(), Prefer::Ipv6), Vec::<IpAddr>::new());
    }

    #[test]
    fn staggers_then_starts_at_once_after_a_failure() {
        let t0 = Instant::now();
        let mut race = Race::new(addrs(&["[::1]:1", "127.0.0.1:1", "127.0.0.2:1"]), 250 * MS, t0, t0 + 1000 * MS);
        assert_eq!(race.poll(t0), RaceIo::Connect { attempt: 0, addr: "[::1]:1".parse().unwrap() });
        assert_eq!(race.poll(t0 + MS), RaceIo::Wait { until: t0 + 250 * MS });
        assert_eq!(race.deadline(), Some(t0 + 250 * MS));
        // The first fails early: the second starts at once, not at the stagger.
        race.handle_failed(0, t0 + 10 * MS, Failure::Refused);
        assert!(matches!(race.poll(t0 + 10 * MS), RaceIo::Connect { attempt: 1, .. }));
        assert_eq!(race.poll(t0 + 10 * MS), RaceIo::Wait { until: t0 + 260 * MS });
        assert!(matches!(race.poll(t0 + 260 * MS), RaceIo::Connect { attempt: 2, .. }));
        assert_eq!(race.poll(t0 + 260 * MS), RaceIo::Wait { until: t0 + 1000 * MS }, "nothing left to start");
        race.handle_connected(2);
        race.handle_connected(1); // too late: not the winner
        assert_eq!(race.poll(t0 + 300 * MS), RaceIo::Won(2));
        assert_eq!(race.poll(t0 + 300 * MS), RaceIo::Done);
        assert_eq!(race.deadline(), None);
    }

    #[test]
    fn fails_with_the_last_failure_or_at_the_deadline() {
        let t0 = Instant::now();
        let mut race = Race::new(addrs(&["127.0.0.1:1", "127.0.0.2:1"]), 250 * MS, t0, t0 + 1000 * MS);
        assert!(matches!(race.poll(t0), RaceIo::Connect { attempt: 0, .. }));
        race.handle_failed(0, t0, Failure::Refused);
        assert!(matches!(race.poll(t0), RaceIo::Connect { attempt: 1, .. }));
        race.handle_failed(1, t0, Failure::Unreachable);
        assert_eq!(race.poll(t0), RaceIo::Failed(Failure::Unreachable));
        assert_eq!(race.poll(t0), RaceIo::Done);

        let mut stalled = Race::new(addrs(&["127.0.0.1:1"]), 250 * MS, t0, t0 + 1000 * MS);
        assert!(matches!(stalled.poll(t0), RaceIo::Connect { .. }));
        assert_eq!(stalled.poll(t0), RaceIo::Wait { until: t0 + 1000 * MS });
        assert_eq!(stalled.poll(t0 + 1000 * MS), RaceIo::Failed(Failure::TimedOut));
        stalled.handle_connected(0); // after the deadline: ignored
        assert_eq!(stalled.poll(t0 + 1000 * MS), RaceIo::Done);
    }

    #[test]
    fn at_most_max_racing_in_flight() {
        let t0 = Instant::now();
        let list: Vec<SocketAddr> = (1..=8u8).map(|i| SocketAddr::from(([127, 0, 0, i], 1))).collect();
        let mut race = Race::new(list, Duration::ZERO, t0, t0 + 1000 * MS);
        let mut started = 0;
        while let RaceIo::Connect { .. } = race.poll(t0) {
            started += 1;
        }
        assert_eq!(started, MAX_RACING);
        race.handle_failed(0, t0, Failure::Refused);
        assert!(matches!(race.poll(t0), RaceIo::Connect { attempt, .. } if attempt == MAX_RACING));
    }
}
