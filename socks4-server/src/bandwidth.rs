//! Bandwidth caps in bytes per second, each direction on its own: per connection, per user (all
//! connections with the same user id together) and per client (IPv4 address or IPv6 /64, see
//! [`ClientKey`]). Runtime-neutral: a relay asks [`ConnBandwidth::grant`] before each read (or
//! splice) and is told how many bytes it may move now or how long to sleep, so it never spins.
//!
//! No cap configured costs nothing: [`Bandwidth::new`] returns `None` and the relay keeps an
//! `Option<ConnBandwidth>` that is `None`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use socks4_server::bandwidth::{Bandwidth, BandwidthCaps, Direction, Grant, RateLimit};
//! let mut caps = BandwidthCaps::default();
//! caps.conn = Some("64K".parse()?);
//! let t0 = Instant::now();
//! let bandwidth = Bandwidth::new(caps, t0).expect("a cap is set");
//! let conn = bandwidth.connection("10.0.0.5".parse().unwrap(), Some(b"alice"), t0);
//!
//! // The relay's loop, one direction: wait until readable, then ask, read at most that, give back the rest.
//! let mut buf = [0u8; 16 * 1024];
//! let mut now = t0;
//! let mut moved = 0;
//! while moved < 256 * 1024 {
//!     match conn.grant(Direction::Up, now, buf.len()) {
//!         Grant::Now(n) => {
//!             let read = n.min(1000); // pretend the socket had only 1000 bytes
//!             moved += read;
//!             conn.refund(Direction::Up, n - read);
//!         }
//!         Grant::After(wait) => now += wait, // sleep(wait) on the runtime's timer
//!     }
//! }
//! // 64 KiB burst, then 64 KiB per second: 256 KiB take 3 seconds.
//! assert_eq!((now - t0).as_secs(), 3);
//! # Ok::<(), socks4_server::bandwidth::BadByteRate>(())
//! ```
//!
//! # How a relay uses it
//!
//! Before each read (copy relay) or splice: `grant(direction, now, buffer_len)`. On
//! [`Grant::Now(n)`](Grant::Now), read or splice at most `n` bytes, then
//! [`refund`](ConnBandwidth::refund) `n − moved`. On [`Grant::After(d)`](Grant::After), sleep `d`
//! (and keep watching the other direction and the idle deadline) before asking again. Asking only
//! once the socket is readable (`readable().await` then `try_read`, or a poll loop's readiness)
//! keeps an idle connection from holding tokens another connection of the same user could use.
//! A grant is never tiny: it waits until a quantum is available, a fiftieth of a second's worth of
//! each cap but at least 4 KiB (or the whole `buffer_len` or burst, if smaller), and then grants
//! all that is there up to `buffer_len`. So a capped direction wakes at most about 50 times a
//! second whatever the rate, and a short message after a busy spell waits at most about 20 ms
//! longer than the cap requires; asking for a whole buffer instead would make a flow that never
//! fills the buffer at once (most flows) wait for tokens it does not use, and run well under its
//! cap.
//!
//! # Bounded memory
//!
//! Per-user and per-client buckets live in sharded maps like the [limits](crate::limits) table, at
//! most 65,536 entries each (an entry: a 32-byte slot and a 64-byte shared bucket pair; about 9 MB
//! per map at worst). An entry may be dropped, when room is needed, once no connection holds it and
//! its bucket has refilled (a full bucket equals a new one). When a shard is full of entries still
//! held by connections, a new user or client gets a bucket of its own, not shared (the cap then
//! holds per connection): memory stays bounded, at the price of leniency in a state that needs more
//! open connections than the table has room for. The per-connection state is fixed, under 128
//! bytes.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gcra::{AtomicBucket, Gcra, nanos_since};
use crate::limits::ClientKey;
use crate::shards::{Hashed, Shards};

/// A cap in bytes per second with a burst: at most `burst` bytes at once after a quiet spell, and
/// `bytes_per_sec × t + burst` over any time `t`.
///
/// Parsed from a number of bytes per second with an optional binary suffix, `K` (1024), `M`
/// (1024²) or `G` (1024³), optionally followed by `B`, `iB` and `/s`; the burst is one second's
/// worth.
///
/// ```
/// use socks4_server::bandwidth::RateLimit;
/// let r: RateLimit = "10M".parse()?;
/// assert_eq!((r.bytes_per_sec(), r.burst()), (10 << 20, 10 << 20));
/// assert_eq!("512K".parse::<RateLimit>()?.bytes_per_sec(), 512 * 1024);
/// assert_eq!("1.5MiB/s".parse::<RateLimit>()?.bytes_per_sec(), 1_572_864);
/// assert_eq!("100000".parse::<RateLimit>()?.to_string(), "100000");
/// assert_eq!("2048".parse::<RateLimit>()?.to_string(), "2K");
/// assert!("0".parse::<RateLimit>().is_err());
/// # Ok::<(), socks4_server::bandwidth::BadByteRate>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    bytes_per_sec: NonZeroU64,
    burst: NonZeroU64,
}

impl RateLimit {
    /// `bytes_per_sec` with a burst of one second's worth.
    pub const fn per_second(bytes_per_sec: NonZeroU64) -> Self {
        Self { bytes_per_sec, burst: bytes_per_sec }
    }

    /// With another burst.
    #[must_use]
    pub const fn with_burst(mut self, burst: NonZeroU64) -> Self {
        self.burst = burst;
        self
    }

    /// Bytes per second.
    pub const fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec.get()
    }

    /// Most bytes at once.
    pub const fn burst(&self) -> u64 {
        self.burst.get()
    }

    fn gcra(&self) -> Gcra {
        Gcra::new(self.bytes_per_sec.get(), Duration::from_secs(1), self.burst.get())
    }
}

/// Parses a byte count with an optional binary suffix `K`, `M`, `G` (and optional `B`/`iB`, `/s`).
///
/// ```
/// use socks4_server::bandwidth::parse_bytes;
/// assert_eq!(parse_bytes("64k"), Ok(65536));
/// assert_eq!(parse_bytes("1G/s"), Ok(1 << 30));
/// assert!(parse_bytes("1T").is_err());
/// ```
///
/// # Errors
///
/// [`BadByteRate`] (holding the text) for a number that does not parse or a unit other than `B`,
/// `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`.
pub fn parse_bytes(text: &str) -> Result<u64, BadByteRate> {
    let bad = || BadByteRate(text.to_string());
    let s = text.trim();
    let s = s.strip_suffix("/s").unwrap_or(s).trim_end();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(bad()),
    };
    if number.is_empty() {
        return Err(bad());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale).ok_or_else(bad);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * scale as f64).round();
    // `u64::MAX as f64` is 2⁶⁴: anything at or beyond it is out of range.
    if !(0.0..u64::MAX as f64).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

impl FromStr for RateLimit {
    type Err = BadByteRate;

    fn from_str(text: &str) -> Result<Self, BadByteRate> {
        let bytes = NonZeroU64::new(parse_bytes(text)?).ok_or_else(|| BadByteRate(text.to_string()))?;
        Ok(Self::per_second(bytes))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes_per_sec.get();
        match [(30, "G"), (20, "M"), (10, "K")].into_iter().find(|(shift, _)| b % (1 << shift) == 0) {
            Some((shift, unit)) => write!(f, "{}{unit}", b >> shift),
            None => write!(f, "{b}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RateLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes per second like \"10M\" or \"512K\", or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RateLimit, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RateLimit, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RateLimit, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte rate that is not a positive number with an optional `K`, `M` or `G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadByteRate(pub String);

impl fmt::Display for BadByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a byte rate like 10M, 512K or 100000 (bytes per second, K = 1024)", self.0)
    }
}

impl std::error::Error for BadByteRate {}

/// The caps: the `[bandwidth]` table of the config file and the `--rate-limit-conn`,
/// `--rate-limit-user` and `--rate-limit-client` options. All off by default.
///
/// ```toml
/// [bandwidth]
/// conn = "10M"    # each connection, each direction
/// user = "20M"    # all connections of one user id together, each direction
/// client = "20M"  # all connections of one client address (IPv6: /64) together, each direction
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BandwidthCaps {
    /// Per connection.
    pub conn: Option<RateLimit>,
    /// Per user id (connections without one are not capped per user).
    pub user: Option<RateLimit>,
    /// Per client address (IPv4 address or IPv6 /64).
    pub client: Option<RateLimit>,
}

impl BandwidthCaps {
    /// No cap at all.
    pub fn is_off(&self) -> bool {
        self.conn.is_none() && self.user.is_none() && self.client.is_none()
    }
}

/// The direction of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to destination.
    Up,
    /// Destination to client.
    Down,
}

impl From<socks4_core::Side> for Direction {
    /// The direction of the bytes a relay reads from this side.
    ///
    /// ```
    /// use socks4_server::bandwidth::Direction;
    /// assert_eq!(Direction::from(socks4_core::Side::Client), Direction::Up);
    /// ```
    fn from(from: socks4_core::Side) -> Self {
        match from {
            socks4_core::Side::Client => Self::Up,
            socks4_core::Side::Upstream => Self::Down,
        }
    }
}

/// What a relay may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Move at most this many bytes now (then [`refund`](ConnBandwidth::refund) what was not moved).
    Now(usize),
    /// Move nothing; ask again after this long (never zero).
    After(Duration),
}

/// The least a grant waits for: a fiftieth of a second's worth of a cap, at least 4 KiB.
fn quantum(limit: RateLimit) -> u64 {
    (limit.bytes_per_sec() / 50).max(4096)
}

/// A bucket per direction under one cap.
#[derive(Debug)]
struct Pair {
    gcra: Gcra,
    /// The least a grant waits for (see [`quantum`]).
    quantum: u64,
    dirs: [AtomicBucket; 2],
}

impl Pair {
    fn new(limit: RateLimit) -> Self {
        Self { gcra: limit.gcra(), quantum: quantum(limit), dirs: [AtomicBucket::new(), AtomicBucket::new()] }
    }

    fn is_full(&self, now: u64) -> bool {
        self.dirs.iter().all(|b| b.is_full(now))
    }
}

/// Entries per shared map.
const TRACKED: usize = 65_536;

/// The shared per-user and per-client buckets, one for the whole server (all workers), and the
/// maker of each connection's [`ConnBandwidth`]. See the [module docs](self).
#[derive(Debug)]
pub struct Bandwidth {
    caps: BandwidthCaps,
    epoch: Instant,
    users: Option<Shards<u64, Arc<Pair>>>,
    user_hasher: RandomState,
    clients: Option<Shards<ClientKey, Arc<Pair>>>,
}

impl Bandwidth {
    /// The shared state for these caps, or `None` when no cap is set (then relays pay nothing).
    pub fn new(caps: BandwidthCaps, now: Instant) -> Option<Arc<Self>> {
        if caps.is_off() {
            return None;
        }
        Some(Arc::new(Self {
            caps,
            epoch: now,
            users: caps.user.map(|_| Shards::new(TRACKED)),
            user_hasher: RandomState::new(),
            clients: caps.client.map(|_| Shards::new(TRACKED)),
        }))
    }

    /// The caps it enforces.
    pub fn caps(&self) -> &BandwidthCaps {
        &self.caps
    }

    /// The buckets of a new relay from `client` with `user` (the verified user name, or the user id
    /// when there is no authentication; `None` or empty: no per-user cap).
    pub fn connection(&self, client: IpAddr, user: Option<&[u8]>, now: Instant) -> ConnBandwidth {
        let now_n = nanos_since(self.epoch, now);
        let user = match (&self.users, self.caps.user, user) {
            (Some(map), Some(limit), Some(name)) if !name.is_empty() => {
                Some(shared(map, map.hashed(self.user_hasher.hash_one(name)), limit, now_n))
            }
            _ => None,
        };
        let client = match (&self.clients, self.caps.client) {
            (Some(map), Some(limit)) => Some(shared(map, map.hashed(ClientKey::from(client)), limit, now_n)),
            _ => None,
        };
        ConnBandwidth { epoch: self.epoch, conn: self.caps.conn.map(Pair::new), user, client }
    }

    /// Shared buckets held now (users, clients); locks every shard in turn: for tests and metrics.
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.as_ref().map_or(0, Shards::len), self.clients.as_ref().map_or(0, Shards::len))
    }
}

/// The shared bucket pair of `key`, made if needed, within the map's bound.
fn shared<K: std::hash::Hash + Eq + Copy>(
    map: &Shards<K, Arc<Pair>>,
    key: Hashed<K>,
    limit: RateLimit,
    now: u64,
) -> Arc<Pair> {
    let cap = map.cap_per_shard;
    let mut shard = map.lock(&key);
    if let Some(pair) = shard.get(&key) {
        return Arc::clone(pair);
    }
    if shard.len() >= cap {
        // Held only by the map (new holders are only made under this lock) and refilled: forget.
        shard.retain(|_, p| Arc::strong_count(p) > 1 || !p.is_full(now));
        if shard.len() >= cap - cap / 4 {
            shard.retain(|_, p| Arc::strong_count(p) > 1);
        }
        if shard.len() >= cap {
            return Arc::new(Pair::new(limit));
        }
    }
    Arc::clone(shard.entry(key).or_insert_with(|| Arc::new(Pair::new(limit))))
}

/// One relay's buckets: its own and its shares of its user's and its client's. Fixed size; make it
/// with [`Bandwidth::connection`] when the relay starts. See the [module docs](self) for the loop.
#[derive(Debug)]
pub struct ConnBandwidth {
    epoch: Instant,
    conn: Option<Pair>,
    user: Option<Arc<Pair>>,
    client: Option<Arc<Pair>>,
}

impl ConnBandwidth {
    fn pairs(&self) -> impl Iterator<Item = &Pair> {
        self.conn.iter().chain(self.user.as_deref()).chain(self.client.as_deref())
    }

    /// How many of `wanted` bytes may move in `direction` at `now`: all the caps' buckets must have
    /// them. Grants all there is up to `wanted`, once each cap has its quantum (see the
    /// [module docs](self)), rather than granting crumbs.
    pub fn grant(&self, direction: Direction, now: Instant, wanted: usize) -> Grant {
        if wanted == 0 {
            return Grant::Now(0);
        }
        let now = nanos_since(self.epoch, now);
        let d = direction as usize;
        let mut n = wanted as u64;
        let mut taken = [0u64; 3];
        for (i, pair) in self.pairs().enumerate() {
            match pair.dirs[d].take(&pair.gcra, now, n, pair.quantum.min(n)) {
                Ok(k) => {
                    taken[i] = k;
                    n = k;
                }
                Err(wait) => {
                    for (pair, &k) in self.pairs().zip(&taken[..i]) {
                        pair.dirs[d].refund(&pair.gcra, k);
                    }
                    return Grant::After(Duration::from_nanos(wait));
                }
            }
        }
        // A later bucket may have granted less than an earlier one: give back the difference.
        for (pair, &k) in self.pairs().zip(&taken) {
            pair.dirs[d].refund(&pair.gcra, k - n);
        }
        Grant::Now(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Gives back `unused` bytes of the last [`Grant::Now`] in `direction` (granted but not moved).
    pub fn refund(&self, direction: Direction, unused: usize) {
        for pair in self.pairs() {
            pair.dirs[direction as usize].refund(&pair.gcra, unused as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(text: &str) -> Option<RateLimit> {
        Some(text.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_print() {
        for (text, bytes) in [
            ("1", 1),
            ("1000", 1000),
            ("10M", 10 << 20),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("2g", 2 << 30),
            (" 1.5M ", 1_572_864),
            ("3KB/s", 3072),
            ("3 KiB /s", 3072),
            ("7B", 7),
            ("0.5K", 512),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "K", "-1", "1T", "1.2.3", "x", "99999999999G", "1e3", "18446744073709551616", ".", "nan"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!("0".parse::<RateLimit>().is_err());
        assert!("0.1".parse::<RateLimit>().is_err(), "rounds to zero");
        for text in ["1", "1K", "3M", "7G", "1000", "1536K"] {
            assert_eq!(text.parse::<RateLimit>().unwrap().to_string(), text);
        }
        assert!(BadByteRate("x".into()).to_string().contains("10M"));
    }

    #[test]
    fn per_connection_state_is_small_and_fixed() {
        assert!(size_of::<ConnBandwidth>() <= 128, "{}", size_of::<ConnBandwidth>());
    }

    #[test]
    fn off_is_none() {
        assert!(Bandwidth::new(BandwidthCaps::default(), Instant::now()).is_none());
    }

    #[test]
    fn waits_for_a_quantum_not_crumbs() {
        let t = Instant::now();
        let caps = BandwidthCaps { conn: rate("500K"), ..Default::default() };
        let bw = Bandwidth::new(caps, t).unwrap();
        let c = bw.connection(ip("10.0.0.1"), None, t);
        assert_eq!(c.grant(Direction::Up, t, 500 * 1024), Grant::Now(500 * 1024));
        // Down is separate.
        assert_eq!(c.grant(Direction::Down, t, 4096), Grant::Now(4096));
        // Empty: the quantum, 10 KiB (1/50 s of 500K), is there after 20 ms, not a byte earlier.
        let Grant::After(wait) = c.grant(Direction::Up, t, 64 * 1024) else { panic!() };
        assert_eq!(wait, Duration::from_millis(20));
        assert!(matches!(c.grant(Direction::Up, t + wait - Duration::from_nanos(1), 64 * 1024), Grant::After(_)));
        assert_eq!(c.grant(Direction::Up, t + wait, 64 * 1024), Grant::Now(10 * 1024));
        // A refund makes the bytes available again; later, all there is up to what is asked.
        c.refund(Direction::Up, 10 * 1024);
        assert_eq!(c.grant(Direction::Up, t + wait, 64 * 1024), Grant::Now(10 * 1024));
        let later = t + wait + Duration::from_millis(100);
        assert_eq!(c.grant(Direction::Up, later, 64 * 1024), Grant::Now(50 * 1024));
        // A smaller request than the quantum waits only for itself.
        let Grant::After(wait) = c.grant(Direction::Up, later, 1024) else { panic!() };
        assert_eq!(wait, Duration::from_millis(2));
        assert_eq!(c.grant(Direction::Up, t, 0), Grant::Now(0));
        // Slow caps: the quantum is at least 4 KiB, or the burst if that is smaller.
        assert_eq!(quantum("1K".parse().unwrap()), 4096);
        let slow = Bandwidth::new(BandwidthCaps { conn: rate("1K"), ..Default::default() }, t).unwrap();
        let s = slow.connection(ip("10.0.0.1"), None, t);
        assert_eq!(s.grant(Direction::Up, t, 16 * 1024), Grant::Now(1024));
        assert_eq!(s.grant(Direction::Up, t, 16 * 1024), Grant::After(Duration::from_secs(1)));
    }

    #[test]
    fn shared_per_client_and_per_user() {
        let t = Instant::now();
        let caps = BandwidthCaps { user: rate("10K"), client: rate("20K"), ..Default::default() };
        let bw = Bandwidth::new(caps, t).unwrap();
        let a1 = bw.connection(ip("10.0.0.1"), Some(b"alice"), t);
        let a2 = bw.connection(ip("10.0.0.2"), Some(b"alice"), t);
        let b1 = bw.connection(ip("10.0.0.1"), Some(b"bob"), t);
        let anon = bw.connection(ip("10.0.0.1"), Some(b""), t);
        assert_eq!(bw.tracked(), (2, 2));
        // Alice's two connections share 10K.
        assert_eq!(a1.grant(Direction::Up, t, 8192), Grant::Now(8192));
        assert_eq!(a2.grant(Direction::Up, t, 2048), Grant::Now(2048));
        assert!(matches!(a2.grant(Direction::Up, t, 1), Grant::After(_)));
        // Client 10.0.0.1 has 20K − 8K left, bob takes it; then the anonymous one waits.
        assert_eq!(b1.grant(Direction::Up, t, 12 * 1024), Grant::Now(10 * 1024), "bob's own cap is 10K");
        assert_eq!(anon.grant(Direction::Up, t, 2048), Grant::Now(2048));
        assert!(matches!(anon.grant(Direction::Up, t, 1), Grant::After(_)));
        // A refused grant takes nothing from the buckets that had room.
        let Grant::After(_) = a1.grant(Direction::Up, t, 1024) else { panic!() };
        drop((a1, a2, b1, anon));
        // Dropped and refilled entries are forgotten when room is needed, not before.
        assert_eq!(bw.tracked(), (2, 2));
    }

    #[test]
    fn shared_maps_stay_bounded() {
        let t = Instant::now();
        let caps = BandwidthCaps { user: rate("1K"), client: rate("1K"), ..Default::default() };
        let bw = Bandwidth::new(caps, t).unwrap();
        let held = bw.connection(ip("10.9.9.9"), Some(b"keeper"), t);
        let _ = held.grant(Direction::Up, t, 1024);
        for i in 0..200_000u32 {
            let name = i.to_be_bytes();
            let c = bw.connection(IpAddr::V4(std::net::Ipv4Addr::from_bits(i)), Some(&name), t);
            let _ = c.grant(Direction::Down, t, 1024);
        }
        let (users, clients) = bw.tracked();
        assert!(users <= TRACKED && clients <= TRACKED, "{users} {clients}");
        // The held entries survived: still empty.
        let again = bw.connection(ip("10.9.9.9"), Some(b"keeper"), t);
        assert!(matches!(again.grant(Direction::Up, t, 1), Grant::After(_)));
    }

    proptest! {
        /// Two connections of one user against per-connection and per-user caps, in any order, with
        /// partial reads: per connection and per user, bytes moved over any window of time are at
        /// most `rate × window + burst`; and a wait is never zero.
        #[test]
        fn grants_never_exceed_the_caps(
            conn_rate in 1u64..100_000, user_rate in 1u64..100_000,
            ops in proptest::collection::vec((0u64..300_000_000, any::<bool>(), 1usize..200_000, 0u8..=255), 1..200),
        ) {
            let t = Instant::now();
            let caps = BandwidthCaps {
                conn: Some(RateLimit::per_second(NonZeroU64::new(conn_rate).unwrap())),
                user: Some(RateLimit::per_second(NonZeroU64::new(user_rate).unwrap())),
                ..Default::default()
            };
            let bw = Bandwidth::new(caps, t).unwrap();
            let conns = [bw.connection(ip("10.0.0.1"), Some(b"u"), t), bw.connection(ip("10.0.0.2"), Some(b"u"), t)];
            let mut now = t;
            let mut moved: [Vec<(Duration, u64)>; 2] = [Vec::new(), Vec::new()];
            for (advance, which, wanted, frac) in ops {
                now += Duration::from_nanos(advance);
                let i = usize::from(which);
                match conns[i].grant(Direction::Up, now, wanted) {
                    Grant::Now(n) => {
                        prop_assert!(n >= 1 && n <= wanted);
                        let used = n as u64 * u64::from(frac) / 255;
                        conns[i].refund(Direction::Up, n - used as usize);
                        moved[i].push((now - t, used));
                    }
                    Grant::After(d) => prop_assert!(d > Duration::ZERO),
                }
            }
            let check = |events: &[(Duration, u64)], rate: u64| -> Result<(), TestCaseError> {
                for (i, &(a, _)) in events.iter().enumerate() {
                    let mut sum = 0u128;
                    for &(b, n) in &events[i..] {
                        sum += u128::from(n);
                        let allowed = ((b - a).as_nanos() + 1) * u128::from(rate) / 1_000_000_000 + u128::from(rate);
                        prop_assert!(sum <= allowed, "{} bytes in {:?} at {}/s", sum, b - a, rate);
                    }
                }
                Ok(())
            };
            check(&moved[0], conn_rate)?;
            check(&moved[1], conn_rate)?;
            let mut all: Vec<_> = moved.concat();
            all.sort_by_key(|e| e.0);
            check(&all, user_rate)?;
        }
    }
}
