//! Per-client admission limits, checked once at accept, so that a flood from one address cannot
//! starve the others:
//!
//! - connections open at once per client ([`ClientLimits::max_per_client`]);
//! - new connections per second per client, a token bucket whose burst is the rate
//!   ([`ClientLimits::max_rate_per_client`]);
//! - connections still in their handshake, for the whole server ([`ClientLimits::max_handshakes`]):
//!   slow or silent clients cannot hold every slot; and per client
//!   ([`ClientLimits::max_handshakes_per_client`], a small share of the server's), so one address
//!   cannot fill the server's cap with silent sockets and lock everyone else out;
//! - BIND requests waiting for their peer, for the whole server and per client
//!   ([`ClientLimits::max_bind_waits`], [`ClientLimits::max_bind_waits_per_client`]): each holds a
//!   listening port and two descriptors for up to the BIND timeout. Checked when a BIND is about
//!   to listen ([`Admission::start_bind_wait`], or [`Limiter::bind_wait`]); one over the cap gets
//!   reply 91.
//!
//! One [`Limiter`] is shared by all worker threads. [`Limiter::admit`] returns an RAII [`Admission`]
//! (dropping it releases the client's slot) or the [`Refusal`]'s reason; the caller then closes the
//! connection at once, sending nothing. Refusals are counted and summarised in at most one log line
//! per interval by the limiter's [`RefusalLog`], never one line per connection.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use socks4_server::limits::{ClientLimits, Limiter, Refusal};
//! let mut limits = ClientLimits::default();
//! (limits.max_per_client, limits.max_handshakes) = (2, 100);
//! let now = Instant::now();
//! let limiter = Limiter::new(limits, now);
//! let client = "10.0.0.5".parse()?;
//!
//! // Accept: admit, or close at once.
//! let mut first = limiter.admit(client, now).expect("admitted");
//! let _second = limiter.admit(client, now).expect("admitted");
//! assert_eq!(limiter.admit(client, now).unwrap_err(), Refusal::PerClientConnections);
//! assert!(limiter.admit("10.0.0.6".parse()?, now).is_ok(), "others are not starved");
//!
//! // The handshake is over (reply sent, relaying): free its handshake slot, keep the client's.
//! first.handshake_done();
//! assert_eq!(limiter.handshakes(), 1);
//!
//! // The connection is closed: dropping the guard releases the client's slot.
//! drop(first);
//! assert!(limiter.admit(client, now).is_ok());
//! # Ok::<(), std::net::AddrParseError>(())
//! ```
//!
//! # Who is "one client"
//!
//! An IPv4 client is its address (an IPv4-mapped IPv6 address counts as the IPv4 one). An IPv6
//! client is its **/64 network**: one host or home network gets a whole /64 (SLAAC, privacy
//! addresses rotate inside it), so per-address limits would let a single machine open 2⁶⁴
//! "clients" and would fill the table. The /64 is the smallest block an end site is assigned; a
//! site with a larger block (/56, /48) counts as several clients, which the table bound below
//! keeps harmless. See [`ClientKey`].
//!
//! # Bounded memory
//!
//! Clients are tracked in a map of [`SHARDS`](crate::limits::SHARD_COUNT) shards, each a mutex over
//! a hash map on its own cache line, chosen by a keyed hash of the client (random per process, so
//! an attacker cannot aim at one shard). An entry is 40 bytes (the client, its hash, the
//! open-connection count and the rate bucket) plus the hash table's overhead. An entry stays after
//! its client's last connection closes (removing and re-inserting it cost twice as much as the rest
//! of an admit and release together) and is swept when its shard fills: each shard holds at most
//! `tracked_clients / 64` entries ([`ClientLimits::tracked_clients`]); when a new client finds its
//! shard full, the shard is swept of idle entries whose bucket has refilled (or that have no rate
//! limit: a full bucket equals a fresh one), then, if still ¾ full, of all idle ones (forgetting
//! their rate state, which only makes the limit more lenient for them). A sweep leaves the shard at
//! most ¾ full unless more than ¾ of it are clients with open connections, so sweeps are rare.
//! Entries with open connections are never evicted, so a client can only be refused as
//! [`Refusal::ClientTable`] when a shard is full of clients with open connections, which cannot
//! happen while `tracked_clients` is well above the server's connection limit. Worst case with the
//! default 65,536 entries: about 5.5 MB (64 shards of 2,048 table slots of 41 bytes).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gcra::{Gcra, nanos_since};
use crate::shards::{Hashed, Padded, SHARDS, Shards};

/// Number of shards of the client map.
pub const SHARD_COUNT: usize = SHARDS;

/// The per-client limits: the `[client_limits]` table of the config file and the `--max-per-client`,
/// `--max-rate-per-client` and `--max-handshakes` options.
///
/// ```toml
/// [client_limits]
/// max_per_client = 1024        # connections open at once per client; 0 = no limit
/// max_rate_per_client = "20/s" # new connections per client (burst 20); absent = no limit
/// max_handshakes = 1024        # connections in their handshake, whole server; 0 = no limit
/// max_handshakes_per_client = 64 # connections in their handshake per client; 0 = no limit
/// tracked_clients = 65536      # bound of the client table
/// max_bind_waits = 64          # BINDs waiting for their peer, whole server; 0 = no limit
/// max_bind_waits_per_client = 8 # BINDs waiting for their peer per client; 0 = no limit
/// ```
///
/// The defaults: at most 1024 connections per client and 1024 handshakes, no rate limit. 1024 is
/// a quarter of the default [`max_connections`](crate::ServerConfig::max_connections) (4096): one
/// address can never take the whole server, while a NAT gateway with hundreds of users or a load
/// test from one address still fits. A rate limit is off by default because a fair rate depends on
/// the clients (one browser opens dozens of connections in a burst; a NAT gateway many more); set
/// one when clients are known (e.g. `20/s`). The handshake cap only fills when handshakes are slow:
/// at 10,000 handshakes per second that take a millisecond each about ten are in progress at once,
/// so 1024 is reached by slow or silent clients, and then still leaves three quarters of the
/// connection slots to relays. One client may hold at most 64 of those handshakes (a sixteenth),
/// so it takes at least 16 addresses to fill the cap: an address opening thousands of silent
/// sockets is refused past its 64th, and others are still served. 64 handshakes at once is far
/// more than a browser (6 per host) or a NAT gateway's users start within one handshake's time.
///
/// BIND waits: at most 64 at once for the whole server and 8 per client. A BIND is FTP's active
/// mode (one per data transfer, each waiting seconds for its peer) and little else uses it, so a
/// legitimate client seldom has more than one or two open; each wait holds a listening port, two
/// descriptors and a connection slot for up to the BIND timeout (2 minutes), so a client that
/// opens BINDs and never lets a peer in could otherwise hold a thousand ports. 8 leaves room for
/// parallel transfers behind one NAT address; 64 keeps ports and slots for everyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientLimits {
    /// Connections open at once per client (IPv4 address or IPv6 /64); 0 turns it off. Default 1024.
    pub max_per_client: u32,
    /// New connections per client, as a token bucket with burst = the count; `None` (default) is off.
    pub max_rate_per_client: Option<ConnRate>,
    /// Connections in their handshake (accept until the reply), whole server; 0 turns it off.
    /// Default 1024.
    pub max_handshakes: u32,
    /// Connections in their handshake at once per client; 0 turns it off. Default 64, a
    /// sixteenth of [`max_handshakes`](Self::max_handshakes)' default.
    pub max_handshakes_per_client: u32,
    /// Most clients tracked at once: the memory bound, about 84 bytes each at worst. Default 65,536.
    pub tracked_clients: usize,
    /// BIND requests waiting for their peer at once, whole server; 0 turns it off. Default 64.
    pub max_bind_waits: u32,
    /// BIND requests waiting for their peer at once per client; 0 turns it off. Default 8.
    pub max_bind_waits_per_client: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_per_client: 1024,
            max_rate_per_client: None,
            max_handshakes: 1024,
            max_handshakes_per_client: 64,
            tracked_clients: 65_536,
            max_bind_waits: 64,
            max_bind_waits_per_client: 8,
        }
    }
}

impl ClientLimits {
    /// No limit at all: [`Limiter::admit`] then only counts.
    pub const OFF: Self = Self {
        max_per_client: 0,
        max_rate_per_client: None,
        max_handshakes: 0,
        max_handshakes_per_client: 0,
        tracked_clients: 65_536,
        max_bind_waits: 0,
        max_bind_waits_per_client: 0,
    };

    /// Whether clients are tracked one by one (a per-client limit is on).
    pub fn per_client(&self) -> bool {
        self.max_per_client != 0 || self.max_rate_per_client.is_some() || self.max_handshakes_per_client != 0
    }
}

/// A rate of new connections: `count` per `per`, with a burst of `count`.
///
/// Written `N/s`, `N/m` or `N/h` (`N` alone is per second).
///
/// ```
/// use std::time::Duration;
/// use socks4_server::limits::ConnRate;
/// let rate: ConnRate = "20/s".parse()?;
/// assert_eq!((rate.count(), rate.per()), (20, Duration::from_secs(1)));
/// assert_eq!("600/m".parse::<ConnRate>()?.to_string(), "600/m");
/// assert_eq!("5".parse::<ConnRate>()?.to_string(), "5/s");
/// assert!("0/s".parse::<ConnRate>().is_err());
/// # Ok::<(), socks4_server::limits::BadRate>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRate {
    count: NonZeroU32,
    per: Duration,
}

impl ConnRate {
    /// `count` connections per `per` (a duration of at least 1 ms).
    ///
    /// # Errors
    ///
    /// [`BadRate`] when `per` is shorter than 1 ms.
    pub fn new(count: NonZeroU32, per: Duration) -> Result<Self, BadRate> {
        if per < Duration::from_millis(1) {
            return Err(BadRate(format!("{count}/{per:?}")));
        }
        Ok(Self { count, per })
    }

    /// Connections per period, also the burst.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    fn gcra(&self) -> Gcra {
        Gcra::new(u64::from(self.count.get()), self.per, u64::from(self.count.get()))
    }
}

impl FromStr for ConnRate {
    type Err = BadRate;

    fn from_str(text: &str) -> Result<Self, BadRate> {
        let bad = || BadRate(text.to_string());
        let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Self::new(count, per)
    }
}

impl fmt::Display for ConnRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match (self.per.as_secs(), self.per.subsec_nanos()) {
            (1, 0) => "s",
            (60, 0) => "m",
            (3600, 0) => "h",
            _ => return write!(f, "{}/{}ms", self.count, self.per.as_millis()),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> serde::Deserialize<'de> for ConnRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ConnRate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a connection rate like \"20/s\" or \"600/m\", or a number per second")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConnRate, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConnRate, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConnRate, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A rate that is not `N/s`, `N/m` or `N/h` with `N` ≥ 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRate(pub String);

impl fmt::Display for BadRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a connection rate like 20/s, 600/m or 1000/h", self.0)
    }
}

impl std::error::Error for BadRate {}

/// One client, as the limits count them: an IPv4 address, or an IPv6 /64 network (see the
/// [module docs](self)).
///
/// ```
/// use socks4_server::limits::ClientKey;
/// let a = ClientKey::from("2001:db8:1:2:aaaa::1".parse::<std::net::IpAddr>()?);
/// let b = ClientKey::from("2001:db8:1:2:bbbb::2".parse::<std::net::IpAddr>()?);
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), "2001:db8:1:2::/64");
/// let v4 = ClientKey::from("::ffff:10.0.0.5".parse::<std::net::IpAddr>()?);
/// assert_eq!(v4.to_string(), "10.0.0.5");
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    /// An IPv4 client (also an IPv4-mapped IPv6 one).
    V4(Ipv4Addr),
    /// An IPv6 client's /64: the address's first 64 bits.
    V6(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(ip) => write!(f, "{ip}"),
            Self::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64)),
        }
    }
}

/// Why [`Limiter::admit`] refused a connection. Close it at once, sending nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The client has [`ClientLimits::max_per_client`] connections open.
    PerClientConnections,
    /// The client opened connections faster than [`ClientLimits::max_rate_per_client`].
    PerClientRate,
    /// [`ClientLimits::max_handshakes`] connections are in their handshake.
    Handshakes,
    /// The client table is full of clients with open connections (see the [module docs](self)).
    ClientTable,
    /// The server's [`max_connections`](crate::ServerConfig::max_connections) are open (counted by the
    /// adapter, recorded here so that one summary line tells all refusals).
    ServerConnections,
    /// A BIND found [`ClientLimits::max_bind_waits`] BINDs waiting (it gets reply 91).
    BindWaits,
    /// A BIND found its client with [`ClientLimits::max_bind_waits_per_client`] BINDs waiting
    /// (it gets reply 91).
    PerClientBindWaits,
    /// The client has [`ClientLimits::max_handshakes_per_client`] connections in their handshake.
    PerClientHandshakes,
}

/// Number of [`Refusal`] reasons.
const REASONS: usize = 8;

impl Refusal {
    pub(crate) const ALL: [Self; REASONS] = [
        Self::PerClientConnections,
        Self::PerClientRate,
        Self::Handshakes,
        Self::ClientTable,
        Self::ServerConnections,
        Self::BindWaits,
        Self::PerClientBindWaits,
        Self::PerClientHandshakes,
    ];

    /// The name in logs, e.g. `per-client-connections`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerClientConnections => "per-client-connections",
            Self::PerClientRate => "per-client-rate",
            Self::Handshakes => "handshakes",
            Self::ClientTable => "client-table",
            Self::ServerConnections => "server-connections",
            Self::BindWaits => "bind-waits",
            Self::PerClientBindWaits => "per-client-bind-waits",
            Self::PerClientHandshakes => "per-client-handshakes",
        }
    }

    /// The metric label, e.g. `per_client_connections`.
    pub fn label(self) -> &'static str {
        match self {
            Self::PerClientConnections => "per_client_connections",
            Self::PerClientRate => "per_client_rate",
            Self::Handshakes => "handshakes",
            Self::ClientTable => "client_table",
            Self::ServerConnections => "server_connections",
            Self::BindWaits => "bind_waits",
            Self::PerClientBindWaits => "per_client_bind_waits",
            Self::PerClientHandshakes => "per_client_handshakes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tracked client: its open connections, those of them in their handshake and its rate
/// bucket (GCRA arrival time).
#[derive(Debug, Clone, Copy)]
struct Entry {
    active: u32,
    handshaking: u32,
    tat: u64,
}

/// The admission limits, shared by all workers (`Arc`). See the [module docs](self).
#[derive(Debug)]
pub struct Limiter {
    limits: ClientLimits,
    rate: Option<Gcra>,
    epoch: Instant,
    handshakes: Padded<AtomicUsize>,
    clients: Option<Shards<ClientKey, Entry>>,
    bind_waits: BindWaits,
    refusals: RefusalLog,
}

impl Limiter {
    /// A limiter for these limits; `now` starts its clock. Refusals are summarised every 10 s.
    pub fn new(limits: ClientLimits, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            limits,
            rate: limits.max_rate_per_client.map(|r| r.gcra()),
            epoch: now,
            handshakes: Padded(AtomicUsize::new(0)),
            clients: limits.per_client().then(|| Shards::new(limits.tracked_clients.max(1))),
            bind_waits: BindWaits::default(),
            refusals: RefusalLog::new(RefusalLog::DEFAULT_INTERVAL, now),
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Admits a new connection from `client` at `now`, or says why not (and counts the refusal in
    /// [`refusals`](Self::refusals), which logs a summary at most once per interval). The
    /// connection starts in its handshake: call [`Admission::handshake_done`] when it ends.
    ///
    /// # Errors
    ///
    /// [`Refusal::PerClientConnections`], [`Refusal::PerClientRate`], [`Refusal::Handshakes`] or
    /// [`Refusal::ClientTable`]: the limit the connection would exceed (close it).
    pub fn admit(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        let key = ClientKey::from(client);
        match self.try_admit(key, now) {
            Ok(tracked) => Ok(Admission {
                limiter: Arc::clone(self),
                client: key,
                handshake: self.limits.max_handshakes != 0
                    || (tracked.is_some() && self.limits.max_handshakes_per_client != 0),
                tracked,
                bind_wait: false,
            }),
            Err(reason) => {
                self.refusals.record(now, reason, key);
                Err(reason)
            }
        }
    }

    /// Admits a connection from a trusted load balancer (`--proxy-protocol`) until its PROXY
    /// header names the client to [`Admission::claim`]: the balancer's own address carries every
    /// client's connections, so no per-client limit applies to it, but the connection holds a
    /// handshake slot (`max_handshakes`) from now on, so idle connections through the balancer
    /// cannot crowd out the others' handshakes. Refused (and counted) over that cap.
    ///
    /// # Errors
    ///
    /// [`Refusal::Handshakes`] when `max_handshakes` connections are already in their handshake.
    pub fn defer(self: &Arc<Self>, balancer: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        let key = ClientKey::from(balancer);
        if let Err(reason) = self.take_handshake() {
            self.refusals.record(now, reason, key);
            return Err(reason);
        }
        let handshake = self.limits.max_handshakes != 0;
        Ok(Admission { limiter: Arc::clone(self), client: key, tracked: None, handshake, bind_wait: false })
    }

    /// Takes a handshake slot (`max_handshakes`; none is counted when it is 0).
    fn take_handshake(&self) -> Result<(), Refusal> {
        let max = self.limits.max_handshakes as usize;
        if max != 0 && self.handshakes.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.handshakes.0.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Handshakes);
        }
        Ok(())
    }

    fn try_admit(&self, key: ClientKey, now: Instant) -> Result<Option<Hashed<ClientKey>>, Refusal> {
        self.take_handshake()?;
        let Some(clients) = &self.clients else { return Ok(None) };
        let key = clients.hashed(key);
        match self.admit_client(clients, &key, now) {
            Ok(()) => Ok(Some(key)),
            Err(reason) => {
                if self.limits.max_handshakes != 0 {
                    self.handshakes.0.fetch_sub(1, Ordering::Relaxed);
                }
                Err(reason)
            }
        }
    }

    fn admit_client(
        &self,
        clients: &Shards<ClientKey, Entry>,
        key: &Hashed<ClientKey>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let now = nanos_since(self.epoch, now);
        let cap = clients.cap_per_shard;
        let mut map = clients.lock(key);
        if map.len() >= cap && !map.contains_key(key) {
            map.retain(|_, e| e.active > 0 || e.tat > now);
            if map.len() >= cap - cap / 4 {
                map.retain(|_, e| e.active > 0);
            }
            if map.len() >= cap {
                return Err(Refusal::ClientTable);
            }
        }
        let entry = map.entry(*key).or_insert(Entry { active: 0, handshaking: 0, tat: 0 });
        let max = self.limits.max_per_client;
        if max != 0 && entry.active >= max {
            return Err(Refusal::PerClientConnections);
        }
        let max_handshakes = self.limits.max_handshakes_per_client;
        if max_handshakes != 0 && entry.handshaking >= max_handshakes {
            return Err(Refusal::PerClientHandshakes);
        }
        if let Some(g) = &self.rate {
            match g.take(entry.tat, now, 1, 1) {
                Ok((_, tat)) => entry.tat = tat,
                Err(_) => return Err(Refusal::PerClientRate),
            }
        }
        entry.active += 1;
        if max_handshakes != 0 {
            entry.handshaking += 1;
        }
        Ok(())
    }

    /// A tracked client's connection ended its handshake.
    fn release_client_handshake(&self, key: &Hashed<ClientKey>) {
        let Some(clients) = &self.clients else { return };
        if let Some(e) = clients.lock(key).get_mut(key) {
            e.handshaking = e.handshaking.saturating_sub(1);
        }
    }

    fn release(&self, key: &Hashed<ClientKey>) {
        let Some(clients) = &self.clients else { return };
        let mut map = clients.lock(key);
        if let Some(e) = map.get_mut(key) {
            // Kept when idle: swept when the shard fills (see the module docs).
            e.active = e.active.saturating_sub(1);
        }
    }

    /// Connections in their handshake now (holding a handshake slot).
    pub fn handshakes(&self) -> usize {
        self.handshakes.0.load(Ordering::Relaxed)
    }

    /// Connections of `client` in their handshake now, as counted against
    /// [`ClientLimits::max_handshakes_per_client`] (0 when that is off or the client untracked).
    pub fn handshakes_of(&self, client: IpAddr) -> u32 {
        let Some(clients) = &self.clients else { return 0 };
        let key = clients.hashed(ClientKey::from(client));
        clients.lock(&key).get(&key).map_or(0, |e| e.handshaking)
    }

    /// Open connections of `client` (0 when untracked).
    pub fn connections_of(&self, client: IpAddr) -> u32 {
        let Some(clients) = &self.clients else { return 0 };
        let key = clients.hashed(ClientKey::from(client));
        clients.lock(&key).get(&key).map_or(0, |e| e.active)
    }

    /// Clients in the table now (locks every shard in turn: for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.clients.as_ref().map_or(0, Shards::len)
    }

    /// The refusal counters and their periodic summary line.
    pub fn refusals(&self) -> &RefusalLog {
        &self.refusals
    }

    /// A BIND from `client` is about to listen for its peer: takes a BIND-wait slot (held until
    /// the returned guard drops: when the peer has arrived, or the wait ended), or says why not
    /// (counted and summarised in [`refusals`](Self::refusals)); the BIND then gets reply 91.
    ///
    /// ```
    /// use std::time::Instant;
    /// use socks4_server::limits::{ClientLimits, Limiter, Refusal};
    /// let mut limits = ClientLimits::default();
    /// (limits.max_bind_waits, limits.max_bind_waits_per_client) = (3, 2);
    /// let now = Instant::now();
    /// let limiter = Limiter::new(limits, now);
    /// let (a, b) = ("10.0.0.5".parse()?, "10.0.0.6".parse()?);
    /// let first = limiter.bind_wait(a, now).expect("a slot");
    /// let _second = limiter.bind_wait(a, now).expect("a slot");
    /// assert_eq!(limiter.bind_wait(a, now).unwrap_err(), Refusal::PerClientBindWaits);
    /// let _third = limiter.bind_wait(b, now).expect("another client");
    /// assert_eq!(limiter.bind_wait(b, now).unwrap_err(), Refusal::BindWaits);
    /// drop(first); // the peer arrived, or the wait ended
    /// assert!(limiter.bind_wait(a, now).is_ok());
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Refusal::BindWaits`] or [`Refusal::PerClientBindWaits`]: the cap the BIND would exceed
    /// (reply 91).
    pub fn bind_wait(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<BindWait, Refusal> {
        let key = ClientKey::from(client);
        let counted = self.take_bind_wait(key, now)?;
        Ok(BindWait { limiter: counted.then(|| Arc::clone(self)), client: key })
    }

    /// Counts a BIND wait of `key` (`Ok(false)`: not counted, BIND waits are not limited), or
    /// records and returns the refusal.
    fn take_bind_wait(&self, key: ClientKey, now: Instant) -> Result<bool, Refusal> {
        let (max, per_client) = (self.limits.max_bind_waits, self.limits.max_bind_waits_per_client);
        if max == 0 && per_client == 0 {
            return Ok(false);
        }
        let mut clients = self.bind_waits.clients.lock().unwrap_or_else(|e| e.into_inner());
        let refused = if max != 0 && self.bind_waits.total(&clients) >= max {
            Some(Refusal::BindWaits)
        } else if per_client != 0 && clients.get(&key).is_some_and(|&n| n >= per_client) {
            Some(Refusal::PerClientBindWaits)
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(clients);
            self.refusals.record(now, reason, key);
            return Err(reason);
        }
        *clients.entry(key).or_insert(0) += 1;
        Ok(true)
    }

    /// Ends a wait counted by [`take_bind_wait`](Self::take_bind_wait).
    fn release_bind_wait(&self, key: ClientKey) {
        let mut clients = self.bind_waits.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = clients.entry(key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// BIND requests waiting for their peer now (holding a [`BindWait`]).
    pub fn bind_waits(&self) -> u32 {
        let clients = self.bind_waits.clients.lock().unwrap_or_else(|e| e.into_inner());
        self.bind_waits.total(&clients)
    }
}

/// The BIND waits by client. BINDs are rare and short-lived, so one mutex over a small map is
/// enough; a client's entry goes when its last wait ends, so the map never holds more entries than
/// there are waits (at most [`ClientLimits::max_bind_waits`] when that is on).
#[derive(Debug, Default)]
struct BindWaits {
    clients: Mutex<std::collections::HashMap<ClientKey, u32>>,
}

impl BindWaits {
    fn total(&self, clients: &std::collections::HashMap<ClientKey, u32>) -> u32 {
        clients.values().sum()
    }
}

/// A BIND's claim on a wait slot ([`Limiter::bind_wait`]); dropping it frees the slot. Hold it
/// from the listen until the peer has arrived or the wait has ended.
#[derive(Debug)]
#[must_use = "dropping the slot frees it at once"]
pub struct BindWait {
    /// `None` when BIND waits are not limited.
    limiter: Option<Arc<Limiter>>,
    client: ClientKey,
}

impl Drop for BindWait {
    fn drop(&mut self) {
        if let Some(limiter) = &self.limiter {
            limiter.release_bind_wait(self.client);
        }
    }
}

/// An admitted connection's claim on the limits; dropping it releases them.
///
/// Hold it for the connection's life (in the task or the connection's slot) and call
/// [`handshake_done`](Self::handshake_done) once the handshake ends. A BIND's wait slot is held
/// in it too ([`start_bind_wait`](Self::start_bind_wait)), so that it costs a connection no
/// memory of its own.
#[derive(Debug)]
#[must_use = "dropping the admission releases the client's slot at once"]
pub struct Admission {
    limiter: Arc<Limiter>,
    client: ClientKey,
    /// The client's table key, when the client is tracked.
    tracked: Option<Hashed<ClientKey>>,
    /// It is counted as in its handshake: server-wide (`max_handshakes`, when on) and, when its
    /// client is tracked, in its client's (`max_handshakes_per_client`, when on).
    handshake: bool,
    /// It holds a counted BIND-wait slot.
    bind_wait: bool,
}

impl Admission {
    /// The handshake is over (relaying, or closing): frees the handshake slot. Idempotent.
    pub fn handshake_done(&mut self) {
        self.release_handshake();
    }

    /// A [deferred](Limiter::defer) admission becomes `client`'s, once the PROXY header named it:
    /// its handshake slot is handed over and the per-client limits apply to `client`. Refused (and
    /// counted) as [`Limiter::admit`] refuses; the admission then holds nothing.
    ///
    /// ```
    /// use std::time::Instant;
    /// use socks4_server::limits::{ClientLimits, Limiter, Refusal};
    /// let mut limits = ClientLimits::default();
    /// limits.max_per_client = 1;
    /// let (now, limiter) = (Instant::now(), Limiter::new(limits, Instant::now()));
    /// let mut first = limiter.defer("10.0.0.1".parse()?, now).expect("a handshake slot");
    /// let mut second = limiter.defer("10.0.0.1".parse()?, now).expect("the balancer is not limited");
    /// assert_eq!(first.claim("192.0.2.7".parse()?, now), Ok(()));
    /// assert_eq!(second.claim("192.0.2.7".parse()?, now), Err(Refusal::PerClientConnections));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The [`Refusal`]s of [`Limiter::admit`], for `client`.
    pub fn claim(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.release_handshake();
        *self = self.limiter.admit(client, now)?;
        Ok(())
    }

    fn release_handshake(&mut self) {
        if std::mem::take(&mut self.handshake) {
            if self.limiter.limits.max_handshakes != 0 {
                self.limiter.handshakes.0.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(key) = self.tracked.as_ref().filter(|_| self.limiter.limits.max_handshakes_per_client != 0) {
                self.limiter.release_client_handshake(key);
            }
        }
    }

    /// Whether it still holds a handshake slot.
    pub fn in_handshake(&self) -> bool {
        self.handshake
    }

    /// The client it counts against.
    pub fn client(&self) -> ClientKey {
        self.client
    }

    /// This connection's BIND is about to listen: takes a BIND-wait slot for its client
    /// ([`Limiter::bind_wait`]), held until [`end_bind_wait`](Self::end_bind_wait) or the drop, or
    /// says why not (counted in the refusal summary; the BIND then gets reply 91).
    ///
    /// ```
    /// use std::time::Instant;
    /// use socks4_server::limits::{ClientLimits, Limiter, Refusal};
    /// let mut limits = ClientLimits::default();
    /// limits.max_bind_waits_per_client = 1;
    /// let now = Instant::now();
    /// let limiter = Limiter::new(limits, now);
    /// let client = "10.0.0.5".parse()?;
    /// let (mut one, mut two) = (limiter.admit(client, now).unwrap(), limiter.admit(client, now).unwrap());
    /// assert_eq!(one.start_bind_wait(now), Ok(()));
    /// assert_eq!(two.start_bind_wait(now), Err(Refusal::PerClientBindWaits));
    /// one.end_bind_wait(); // the peer arrived, or the wait ended
    /// assert_eq!(two.start_bind_wait(now), Ok(()));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The [`Refusal`]s of [`Limiter::bind_wait`].
    pub fn start_bind_wait(&mut self, now: Instant) -> Result<(), Refusal> {
        self.end_bind_wait();
        self.bind_wait = self.limiter.take_bind_wait(self.client, now)?;
        Ok(())
    }

    /// The BIND's wait ended (the peer arrived, the wait timed out, or the client left): frees its
    /// slot. Idempotent.
    pub fn end_bind_wait(&mut self) {
        if std::mem::take(&mut self.bind_wait) {
            self.limiter.release_bind_wait(self.client);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.handshake_done();
        self.end_bind_wait();
        if let Some(key) = &self.tracked {
            self.limiter.release(key);
        }
    }
}

/// Counts refusals by reason and logs one summary line (tracing, `warn`) at most once per
/// interval, with the most refused client of each reason:
///
/// ```text
/// refused 1234 connections in the last 10s: 1200 per-client-connections (top: 10.0.0.5), 34 per-client-rate (top: 2001:db8::/64)
/// ```
///
/// The first refusal after a quiet interval is logged at once; the ones after it wait for the
/// interval to pass (for the next refusal, or a periodic [`flush`](Self::flush)). Recording is a
/// counter increment and a short lock for the top-client sketch; any thread may record.
///
/// ```
/// use std::time::{Duration, Instant};
/// use socks4_server::limits::{RefusalLog, Refusal};
/// let t0 = Instant::now();
/// let log = RefusalLog::new(Duration::from_secs(10), t0);
/// let client = "10.0.0.5".parse::<std::net::IpAddr>()?.into();
/// assert!(log.record(t0, Refusal::PerClientRate, client).is_some(), "the first is told at once");
/// for _ in 0..99 {
///     assert!(log.record(t0 + Duration::from_secs(1), Refusal::PerClientConnections, client).is_none());
/// }
/// let summary = log.flush(t0 + Duration::from_secs(10)).expect("the interval has passed");
/// assert_eq!(summary.to_string(), "refused 99 connections in the last 10s: 99 per-client-connections (top: 10.0.0.5)");
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug)]
pub struct RefusalLog {
    interval: u64,
    epoch: Instant,
    /// When the next line may be written (nanoseconds since `epoch`).
    next: AtomicU64,
    /// When the last line was written.
    last: AtomicU64,
    counts: [AtomicU64; REASONS],
    /// Since the start, never reset (for metrics).
    totals: [AtomicU64; REASONS],
    top: Mutex<[TopClients; REASONS]>,
}

impl RefusalLog {
    /// The default interval between two summary lines.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    /// At most one line per `interval`; `now` starts its clock.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval: nanos_since(now, now + interval).max(1),
            epoch: now,
            next: AtomicU64::new(0),
            last: AtomicU64::new(0),
            counts: Default::default(),
            totals: Default::default(),
            top: Mutex::new(Default::default()),
        }
    }

    /// Counts one refusal of `client`; returns (and logs) the summary if one is due.
    pub fn record(&self, now: Instant, reason: Refusal, client: ClientKey) -> Option<RefusalSummary> {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.totals[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.top.lock().unwrap_or_else(|e| e.into_inner())[reason.index()].add(client);
        self.flush(now)
    }

    /// Refusals for `reason` since the log began (the summaries' counts restart each line).
    pub fn total(&self, reason: Refusal) -> u64 {
        self.totals[reason.index()].load(Ordering::Relaxed)
    }

    /// Adds `old`'s totals to this log's, so that the totals of a limiter that replaces another
    /// (a reload with new limits) keep counting up from where the old one stood.
    pub(crate) fn carry_totals(&self, old: &RefusalLog) {
        for (total, old) in self.totals.iter().zip(&old.totals) {
            total.fetch_add(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Returns (and logs) the summary if one is due and anything was refused since the last one.
    /// Call it from a periodic timer, if the adapter has one, so that the last refusals of an
    /// attack are told without waiting for the next refusal.
    pub fn flush(&self, now: Instant) -> Option<RefusalSummary> {
        let now = nanos_since(self.epoch, now);
        let next = self.next.load(Ordering::Relaxed);
        if now < next || self.counts.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
            return None;
        }
        // One thread wins the right to write this interval's line.
        self.next
            .compare_exchange(next, now.saturating_add(self.interval), Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let last = self.last.swap(now, Ordering::Relaxed);
        let mut top = self.top.lock().unwrap_or_else(|e| e.into_inner());
        let counts = Refusal::ALL
            .iter()
            .map(|&r| (r, self.counts[r.index()].swap(0, Ordering::Relaxed), std::mem::take(&mut top[r.index()]).top()))
            .filter(|(_, n, _)| *n > 0)
            .collect();
        drop(top);
        let summary = RefusalSummary { elapsed: Duration::from_nanos(now - last), counts };
        tracing::warn!("{summary}");
        Some(summary)
    }
}

/// The "Space-Saving" sketch of the most frequent clients, in constant space: a client that was
/// refused more than a fifth of the times is always in it.
#[derive(Debug, Default, Clone)]
struct TopClients([Option<(ClientKey, u64)>; 4]);

impl TopClients {
    fn add(&mut self, client: ClientKey) {
        if let Some(slot) = self.0.iter_mut().flatten().find(|(c, _)| *c == client) {
            slot.1 += 1;
        } else if let Some(free) = self.0.iter_mut().find(|s| s.is_none()) {
            *free = Some((client, 1));
        } else if let Some(min) = self.0.iter_mut().flatten().min_by_key(|(_, n)| *n) {
            // Replace the least counted, inheriting its count (so counts are upper bounds).
            *min = (client, min.1 + 1);
        }
    }

    fn top(&self) -> Option<ClientKey> {
        self.0.iter().flatten().max_by_key(|(_, n)| *n).map(|(c, _)| *c)
    }
}

/// One summary of refusals, as [`RefusalLog`] logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusalSummary {
    /// Time since the previous summary (or since the log began).
    pub elapsed: Duration,
    /// Per reason (only those that occurred): how many, and the most refused client.
    pub counts: Vec<(Refusal, u64, Option<ClientKey>)>,
}

impl RefusalSummary {
    /// All refusals in the summary.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n, _)| n).sum()
    }
}

impl fmt::Display for RefusalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let s = if total == 1 { "" } else { "s" };
        write!(f, "refused {total} connection{s} in the last {}s:", self.elapsed.as_secs_f64().round())?;
        for (i, (reason, n, top)) in self.counts.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{n} {reason}")?;
            if let Some(top) = top {
                write!(f, " (top: {top})")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(per_client: u32, rate: Option<&str>, handshakes: u32) -> ClientLimits {
        ClientLimits {
            max_per_client: per_client,
            max_rate_per_client: rate.map(|r| r.parse().unwrap()),
            max_handshakes: handshakes,
            max_handshakes_per_client: 0,
            ..ClientLimits::default()
        }
    }

    #[test]
    fn one_client_holds_only_its_share_of_the_handshakes() {
        let t = Instant::now();
        let l = Limiter::new(ClientLimits::default(), t);
        let share = ClientLimits::default().max_handshakes_per_client;
        assert!(share > 0 && share * 8 <= ClientLimits::default().max_handshakes, "a small share by default");
        let mut held: Vec<Admission> = (0..share).map(|_| l.admit(ip("10.0.0.1"), t).unwrap()).collect();
        assert_eq!(l.admit(ip("10.0.0.1"), t).unwrap_err(), Refusal::PerClientHandshakes);
        assert_eq!(l.refusals().total(Refusal::PerClientHandshakes), 1);
        assert!(l.admit(ip("10.0.0.2"), t).is_ok(), "others are served");
        // A handshake that ends (relaying now) frees its share, not its connection slot.
        held[0].handshake_done();
        assert_eq!((l.handshakes_of(ip("10.0.0.1")), l.connections_of(ip("10.0.0.1"))), (share - 1, share));
        held.push(l.admit(ip("10.0.0.1"), t).unwrap());
        drop(held);
        assert_eq!((l.handshakes_of(ip("10.0.0.1")), l.handshakes()), (0, 0));
    }

    #[test]
    fn bind_waits_off_and_on() {
        let t = Instant::now();
        let off = Limiter::new(ClientLimits::OFF, t);
        let held: Vec<_> = (0..100).map(|_| off.bind_wait(ip("10.0.0.5"), t).unwrap()).collect();
        assert_eq!(off.bind_waits(), 0, "not counted when off");
        drop(held);
        let l = Limiter::new(ClientLimits { max_bind_waits: 0, max_bind_waits_per_client: 1, ..limits(0, None, 0) }, t);
        let a = l.bind_wait(ip("2001:db8::1"), t).unwrap();
        assert_eq!(l.bind_wait(ip("2001:db8::2"), t).unwrap_err(), Refusal::PerClientBindWaits, "same /64");
        // The first refusal is told at once, the next in the interval's summary.
        assert_eq!(l.bind_wait(ip("2001:db8::3"), t).unwrap_err(), Refusal::PerClientBindWaits);
        let _b = l.bind_wait(ip("10.0.0.1"), t).unwrap();
        assert_eq!(l.bind_waits(), 2);
        drop(a);
        assert_eq!(l.bind_waits(), 1);
        assert!(l.bind_wait(ip("2001:db8::2"), t).is_ok());
        let summary = l.refusals().flush(t + Duration::from_secs(60)).unwrap();
        assert!(summary.to_string().contains("1 per-client-bind-waits (top: 2001:db8::/64)"), "{summary}");
    }

    proptest! {
        /// Any order of BIND waits taken and dropped: never more than the caps, globally and per
        /// client, a refusal only at a cap, and nothing left once all are dropped.
        #[test]
        fn bind_waits_hold_their_caps(
            max in 0u32..6, per_client in 0u32..4,
            ops in proptest::collection::vec((any::<bool>(), 0u8..4), 1..200),
        ) {
            let t = Instant::now();
            let l = Limiter::new(ClientLimits { max_bind_waits: max, max_bind_waits_per_client: per_client, ..limits(0, None, 0) }, t);
            let mut held: Vec<(u8, BindWait)> = Vec::new();
            for (take, client) in ops {
                if take {
                    let mine = held.iter().filter(|(c, _)| *c == client).count() as u32;
                    match l.bind_wait(IpAddr::from([10, 0, 0, client]), t) {
                        Ok(w) => held.push((client, w)),
                        Err(Refusal::BindWaits) => prop_assert!(max != 0 && held.len() as u32 >= max),
                        Err(Refusal::PerClientBindWaits) => prop_assert!(per_client != 0 && mine >= per_client),
                        Err(other) => prop_assert!(false, "{other}"),
                    }
                } else if let Some(i) = held.iter().position(|(c, _)| *c == client) {
                    drop(held.swap_remove(i));
                }
                prop_assert!(max == 0 || held.len() as u32 <= max);
                for c in 0..4u8 {
                    prop_assert!(per_client == 0 || held.iter().filter(|(h, _)| *h == c).count() as u32 <= per_client);
                }
            }
            held.clear();
            prop_assert_eq!(l.bind_waits(), 0);
        }
    }

    #[test]
    fn per_client_connections() {
        let t = Instant::now();
        let l = Limiter::new(limits(3, None, 0), t);
        let a: Vec<_> = (0..3).map(|_| l.admit(ip("10.0.0.5"), t).unwrap()).collect();
        assert_eq!(l.admit(ip("10.0.0.5"), t).unwrap_err(), Refusal::PerClientConnections);
        assert_eq!(l.admit(ip("::ffff:10.0.0.5"), t).unwrap_err(), Refusal::PerClientConnections, "mapped = v4");
        assert_eq!(l.connections_of(ip("10.0.0.5")), 3);
        let _other = l.admit(ip("10.0.0.6"), t).unwrap();
        drop(a);
        assert_eq!(l.connections_of(ip("10.0.0.5")), 0);
        assert_eq!(l.tracked(), 2, "idle clients stay until room is needed");
        assert!(l.admit(ip("10.0.0.5"), t).is_ok());
    }

    #[test]
    fn a_deferred_admission_holds_a_handshake_slot_until_claimed() {
        let t = Instant::now();
        let l = Limiter::new(limits(1, None, 2), t);
        let balancer = ip("10.0.0.2");
        // Not limited per client, but each holds a handshake slot: the third finds none.
        let mut a = l.defer(balancer, t).unwrap();
        let mut b = l.defer(balancer, t).unwrap();
        assert_eq!(l.defer(balancer, t).unwrap_err(), Refusal::Handshakes);
        assert_eq!(l.admit(ip("192.0.2.9"), t).unwrap_err(), Refusal::Handshakes);
        assert_eq!((l.handshakes(), l.connections_of(balancer), l.tracked()), (2, 0, 0));
        assert!(a.in_handshake() && b.in_handshake());
        // Claimed for the clients the headers name: the slot is handed over and the per-client
        // limits apply to them; a refused claim holds nothing.
        assert_eq!(a.claim(ip("192.0.2.7"), t), Ok(()));
        assert_eq!((l.handshakes(), l.connections_of(ip("192.0.2.7"))), (2, 1));
        assert_eq!(b.claim(ip("192.0.2.7"), t), Err(Refusal::PerClientConnections));
        assert!(!b.in_handshake());
        assert_eq!(l.handshakes(), 1);
        drop((a, b));
        assert_eq!((l.handshakes(), l.connections_of(ip("192.0.2.7"))), (0, 0));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = Instant::now();
        let l = Limiter::new(limits(2, None, 0), t);
        let _a = l.admit(ip("2001:db8:0:1::1"), t).unwrap();
        let _b = l.admit(ip("2001:db8:0:1:ffff:ffff:ffff:ffff"), t).unwrap();
        assert_eq!(l.admit(ip("2001:db8:0:1::99"), t).unwrap_err(), Refusal::PerClientConnections);
        assert!(l.admit(ip("2001:db8:0:2::1"), t).is_ok(), "the next /64 is another client");
    }

    #[test]
    fn per_client_rate_is_a_token_bucket() {
        let t = Instant::now();
        let l = Limiter::new(limits(0, Some("5/s"), 0), t);
        for _ in 0..5 {
            drop(l.admit(ip("10.0.0.5"), t).unwrap());
        }
        assert_eq!(l.admit(ip("10.0.0.5"), t).unwrap_err(), Refusal::PerClientRate);
        assert!(l.admit(ip("10.0.0.6"), t).is_ok());
        // One new token every 200 ms.
        assert_eq!(l.admit(ip("10.0.0.5"), t + Duration::from_millis(199)).unwrap_err(), Refusal::PerClientRate);
        assert!(l.admit(ip("10.0.0.5"), t + Duration::from_millis(200)).is_ok());
        assert!(l.admit(ip("10.0.0.5"), t + Duration::from_millis(200)).is_err());
        // After a quiet second the burst is back.
        let later = t + Duration::from_millis(1200);
        for _ in 0..5 {
            assert!(l.admit(ip("10.0.0.5"), later).is_ok());
        }
        assert!(l.admit(ip("10.0.0.5"), later).is_err());
        assert_eq!(l.tracked(), 2, "idle clients with a draining bucket are remembered");
    }

    #[test]
    fn handshake_slots() {
        let t = Instant::now();
        let l = Limiter::new(limits(0, None, 2), t);
        let mut a = l.admit(ip("10.0.0.1"), t).unwrap();
        let b = l.admit(ip("10.0.0.2"), t).unwrap();
        assert_eq!(l.admit(ip("10.0.0.3"), t).unwrap_err(), Refusal::Handshakes);
        assert!(a.in_handshake());
        a.handshake_done();
        a.handshake_done();
        assert!(!a.in_handshake());
        assert_eq!(l.handshakes(), 1);
        let c = l.admit(ip("10.0.0.3"), t).unwrap();
        assert_eq!(l.admit(ip("10.0.0.4"), t).unwrap_err(), Refusal::Handshakes);
        drop((b, c));
        assert_eq!(l.handshakes(), 0);
        drop(a);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn a_refused_client_gives_back_its_handshake_slot() {
        let t = Instant::now();
        let l = Limiter::new(limits(1, None, 5), t);
        let _a = l.admit(ip("10.0.0.1"), t).unwrap();
        for _ in 0..10 {
            assert_eq!(l.admit(ip("10.0.0.1"), t).unwrap_err(), Refusal::PerClientConnections);
        }
        assert_eq!(l.handshakes(), 1);
    }

    #[test]
    fn off_means_no_table_and_no_counter() {
        let t = Instant::now();
        let l = Limiter::new(ClientLimits::OFF, t);
        let held: Vec<_> = (0..1000).map(|_| l.admit(ip("10.0.0.1"), t).unwrap()).collect();
        assert_eq!((l.tracked(), l.handshakes()), (0, 0));
        assert!(!held[0].in_handshake());
    }

    #[test]
    fn table_is_bounded_under_a_flood_of_addresses() {
        let t = Instant::now();
        let cap = 1024;
        let l = Limiter::new(ClientLimits { tracked_clients: cap, ..limits(4, Some("10/s"), 0) }, t);
        // A /32 of IPv6 /64s, each opening one connection and closing it.
        for i in 0..50_000u64 {
            let addr = IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8_0000_0000u128 | u128::from(i)) << 64));
            drop(l.admit(addr, t + Duration::from_micros(i)).unwrap());
            if i % 1000 == 0 {
                assert!(l.tracked() <= cap.div_ceil(SHARDS) * SHARDS);
            }
        }
        assert!(l.tracked() <= cap.div_ceil(SHARDS) * SHARDS, "{}", l.tracked());
        // Clients with open connections are never evicted: their count survives the flood.
        let held: Vec<_> = (0..4).map(|_| l.admit(ip("10.0.0.9"), t).unwrap()).collect();
        for i in 0..50_000u64 {
            let addr = IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db9_0000_0000u128 | u128::from(i)) << 64));
            let _ = l.admit(addr, t);
        }
        assert_eq!(l.connections_of(ip("10.0.0.9")), 4);
        assert_eq!(l.admit(ip("10.0.0.9"), t).unwrap_err(), Refusal::PerClientConnections);
        drop(held);
    }

    #[test]
    fn table_full_of_open_connections_refuses_new_clients() {
        let t = Instant::now();
        let l = Limiter::new(ClientLimits { tracked_clients: 1, ..limits(10, None, 0) }, t);
        // One entry per shard: keep admitting new clients until one lands on an occupied shard.
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..3000u32 {
            match l.admit(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i)), t) {
                Ok(a) => held.push(a),
                Err(r) => {
                    assert_eq!(r, Refusal::ClientTable);
                    refused += 1;
                }
            }
        }
        assert_eq!(held.len(), SHARDS);
        assert_eq!(refused, 3000 - SHARDS);
        drop(held);
        assert_eq!(l.tracked(), SHARDS, "idle entries stay until room is needed");
        let newcomers: Vec<_> =
            (5000..8000u32).filter_map(|i| l.admit(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i)), t).ok()).collect();
        assert_eq!(newcomers.len(), SHARDS, "idle entries make room");
    }

    #[test]
    fn refusal_log_summarises_once_per_interval() {
        let t = Instant::now();
        let log = RefusalLog::new(Duration::from_secs(10), t);
        let a = ClientKey::from(ip("10.0.0.5"));
        let b = ClientKey::from(ip("2001:db8::1"));
        let first = log.record(t + Duration::from_secs(3), Refusal::Handshakes, b).unwrap();
        assert_eq!(first.to_string(), "refused 1 connection in the last 3s: 1 handshakes (top: 2001:db8::/64)");
        let mut lines = 0;
        for i in 0..1000u64 {
            let now = t + Duration::from_secs(3) + Duration::from_millis(i * 10);
            let who = if i % 10 == 0 { b } else { a };
            let reason = if i % 2 == 0 { Refusal::PerClientConnections } else { Refusal::PerClientRate };
            if let Some(s) = log.record(now, reason, who) {
                lines += 1;
                assert_eq!(s.elapsed, Duration::from_secs(10));
                assert_eq!(s.total(), 1000);
                assert_eq!(s.counts.len(), 2);
                assert_eq!(s.counts[0], (Refusal::PerClientConnections, 500, Some(a)));
                assert_eq!(
                    s.to_string(),
                    "refused 1000 connections in the last 10s: 500 per-client-connections (top: 10.0.0.5), \
                     500 per-client-rate (top: 10.0.0.5)"
                );
            }
        }
        assert_eq!(lines, 0, "the interval has not passed yet");
        let s = log.flush(t + Duration::from_secs(13)).unwrap();
        assert_eq!(s.total(), 1000);
        assert!(log.flush(t + Duration::from_secs(100)).is_none(), "nothing new to tell");
        // A quiet spell: the next refusal is told at once.
        assert!(log.record(t + Duration::from_secs(200), Refusal::ClientTable, a).is_some());
    }

    #[test]
    fn top_clients_finds_the_heavy_hitter() {
        let mut top = TopClients::default();
        let heavy = ClientKey::V4(Ipv4Addr::new(10, 0, 0, 1));
        for i in 0..10_000u32 {
            top.add(if i % 3 == 0 { heavy } else { ClientKey::V4(Ipv4Addr::from_bits(i)) });
        }
        assert_eq!(top.top(), Some(heavy));
    }

    #[test]
    fn rates_parse_and_print() {
        for (text, count, secs) in [("20/s", 20, 1), ("7", 7, 1), ("100/m", 100, 60), (" 3 / h ", 3, 3600)] {
            let r: ConnRate = text.parse().unwrap();
            assert_eq!((r.count(), r.per().as_secs()), (count, secs), "{text}");
        }
        for bad in ["", "0", "-1/s", "1/d", "x/s", "1/", "4294967296/s"] {
            assert!(bad.parse::<ConnRate>().is_err(), "{bad}");
        }
        assert!(BadRate("x".into()).to_string().contains("20/s"));
        let odd = ConnRate::new(NonZeroU32::new(3).unwrap(), Duration::from_millis(1500)).unwrap();
        assert_eq!(odd.to_string(), "3/1500ms");
        assert!(ConnRate::new(NonZeroU32::new(3).unwrap(), Duration::ZERO).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { client: u8, advance_ms: u16 },
        Done(usize),
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..8, 0u16..300).prop_map(|(client, advance_ms)| Op::Admit { client, advance_ms }),
            any::<usize>().prop_map(Op::Done),
            any::<usize>().prop_map(Op::Drop),
        ]
    }

    proptest! {
        /// Whatever the order of admits, handshake ends and drops: no client ever has more than its
        /// limit open, no more handshakes than the cap are in progress, the table stays within its
        /// bound, and all counters return to zero once every guard is gone.
        #[test]
        fn counters_hold_and_return_to_zero(
            per_client in 0u32..4, handshakes in 0u32..6, client_handshakes in 0u32..4,
            rate in proptest::option::of(1u32..5),
            tracked in 1usize..1000, ops in proptest::collection::vec(op(), 1..300),
        ) {
            let t = Instant::now();
            let limits = ClientLimits {
                max_per_client: per_client,
                max_rate_per_client: rate.map(|r| ConnRate::new(NonZeroU32::new(r).unwrap(), Duration::from_secs(1)).unwrap()),
                max_handshakes: handshakes,
                max_handshakes_per_client: client_handshakes,
                tracked_clients: tracked,
                ..ClientLimits::default()
            };
            let l = Limiter::new(limits, t);
            let mut now = t;
            let mut held: Vec<(u8, Admission)> = Vec::new();
            let mut admitted_at: Vec<Vec<Instant>> = vec![Vec::new(); 8];
            for op in ops {
                match op {
                    Op::Admit { client, advance_ms } => {
                        now += Duration::from_millis(u64::from(advance_ms));
                        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, client));
                        if let Ok(a) = l.admit(addr, now) {
                            held.push((client, a));
                            admitted_at[usize::from(client)].push(now);
                        }
                    }
                    Op::Done(i) if !held.is_empty() => { let n = held.len(); held[i % n].1.handshake_done() }
                    Op::Drop(i) if !held.is_empty() => { let n = held.len(); drop(held.swap_remove(i % n)); }
                    _ => {}
                }
                for c in 0..8u8 {
                    let open = held.iter().filter(|(x, _)| *x == c).count() as u32;
                    if per_client != 0 { prop_assert!(open <= per_client); }
                    let shaking = held.iter().filter(|(x, a)| *x == c && a.in_handshake()).count() as u32;
                    if client_handshakes != 0 {
                        prop_assert!(shaking <= client_handshakes);
                        prop_assert_eq!(l.handshakes_of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, c))), shaking);
                    }
                    if limits.per_client() {
                        prop_assert_eq!(l.connections_of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, c))), open);
                    }
                }
                let in_hs = held.iter().filter(|(_, a)| a.in_handshake()).count();
                prop_assert_eq!(l.handshakes(), if handshakes != 0 { in_hs } else { 0 });
                if handshakes != 0 { prop_assert!(in_hs <= handshakes as usize); }
                prop_assert!(l.tracked() <= tracked.div_ceil(SHARDS) * SHARDS);
            }
            // The rate: within any window of a second, at most `rate` + `rate` (burst) admits.
            // (Only when the table never has to forget an idle client's bucket.)
            if let Some(r) = rate.filter(|_| tracked > 8 * SHARDS) {
                for times in &admitted_at {
                    for (i, a) in times.iter().enumerate() {
                        let within = times[i..].iter().filter(|b| **b - *a < Duration::from_secs(1)).count();
                        prop_assert!(within as u32 <= 2 * r, "{within} admits within a second at rate {r}");
                    }
                }
            }
            drop(held);
            prop_assert_eq!(l.handshakes(), 0);
            for c in 0..8u8 {
                prop_assert_eq!(l.connections_of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, c))), 0);
            }
        }
    }
}
