//! Server configuration as plain data: listen addresses, pool size, limits, timeouts, rules.
//!
//! It deserializes from the config file (TOML, see [`config_file::load_config_file`](crate::config_file::load_config_file)):
//!
//! ```toml
//! listen = ["127.0.0.1:1080", "[::1]:1080"]
//! workers = 4
//! max_connections = 4096
//! rules = ["deny to 169.254.0.0/16", "allow from 127.0.0.0/8"]
//! log_level = "info"            # --log-level / SOCKS4_LOG win over it
//!
//! [limits]
//! user_id = 64
//! host = 255
//!
//! [timeouts]
//! handshake = "10s"
//! connect = "10s"
//! bind = "2m"
//! idle = "5m"
//! shutdown_grace = "10s"
//! ```
//!
//! Abuse limits, bandwidth caps and authentication have their own tables and key (see
//! [`ClientLimits`], [`BandwidthCaps`], [`users`](crate::users)); metrics and the log format are
//! top-level keys (`metrics = "127.0.0.1:9100"`, `log_format = "json"`):
//!
//! ```toml
//! users = "/etc/socks4/users"   # relative paths are relative to the config file
//!
//! [client_limits]
//! max_per_client = 1024         # connections per client address (IPv6: /64); 0 = no limit
//! max_rate_per_client = "20/s"  # new connections per client, burst 20; absent = no limit
//! max_handshakes = 1024         # connections in their handshake, whole server; 0 = no limit
//! max_handshakes_per_client = 64 # connections in their handshake per client; 0 = no limit
//!
//! [bandwidth]                   # bytes per second, each direction; absent = no cap
//! conn = "10M"
//! user = "20M"
//! client = "20M"
//! ```
//!
//! How SOCKS4a names are looked up and their addresses tried (see [`NamesConfig`],
//! [`eyeballs`](crate::eyeballs), [`names`](crate::names)):
//!
//! ```toml
//! [names]
//! prefer = "ipv6"               # ipv6 | ipv4 | resolver: the family tried first
//! connect_stagger = "250ms"     # Happy Eyeballs: the next address after this long
//! resolvers = ["127.0.0.1:53"]  # our own resolver (UDP, TCP on truncation); empty: the system's
//! cache_entries = 4096          # names kept by our resolver's cache
//! min_ttl = "0s"                # TTLs are clamped into [min_ttl, max_ttl]
//! max_ttl = "1h"
//! negative_ttl = "30s"          # a name that does not exist is remembered at most this long
//! ```
//!
//! Load balancers trusted to send a PROXY header first (see [`proxy`](crate::proxy)):
//!
//! ```toml
//! proxy_protocol = ["10.0.0.2/32", "fd00::/64"]
//! ```
//!
//! The outgoing side (see [`egress`](crate::egress), [`keepalive`](crate::keepalive)) and the
//! warn-only mode for requests by address (see [`unsafe_socks`](crate::unsafe_socks)):
//!
//! ```toml
//! outgoing = ["203.0.113.7", "203.0.113.8", "2001:db8::7"]   # rules' `out` win over it
//! keepalive = "60s,10s,5"       # IDLE[,INTERVAL,COUNT]; absent = off
//! warn_unsafe_socks = true
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socks4_core::Limits;
use socks4_core::rules::{IpNet, RuleError, Rules};

use crate::bandwidth::{Bandwidth, BandwidthCaps};
use crate::eyeballs::{DEFAULT_STAGGER, Prefer};
use crate::keepalive::Keepalive;
use crate::limits::{ClientLimits, Limiter};
use crate::log::LogFormat;
use crate::users::{Users, UsersError, Verifier};

/// How long each phase of a connection may take: the handshake's own phases and the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Timeouts {
    /// From accept until the whole request has arrived (default 10 s).
    #[serde(with = "duration_text")]
    pub handshake: Duration,
    /// Resolving a SOCKS4a name, and separately connecting to the destination (default 10 s).
    #[serde(with = "duration_text")]
    pub connect: Duration,
    /// BIND: waiting for the peer after the first reply (default 2 min).
    #[serde(with = "duration_text")]
    pub bind: Duration,
    /// Ident (a rule with `ident`): asking the client's identd (default 10 s).
    #[serde(with = "duration_text")]
    pub ident: Duration,
    /// Relay: close when neither side sent anything for this long (default 5 min; zero: never).
    #[serde(with = "duration_text")]
    pub idle: Duration,
    /// Shutdown: how long live relays may go on after the listeners close (default 10 s).
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    /// The handshake's phases as the core's defaults; idle 5 min, shutdown grace 10 s.
    fn default() -> Self {
        let core = socks4_core::Timeouts::default();
        Self {
            handshake: core.handshake,
            connect: core.connect,
            bind: core.bind,
            ident: core.ident,
            idle: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The handshake's share: handshake, connect and BIND timeouts for
    /// [`ServerHandshake::new`](socks4_core::ServerHandshake::new).
    pub fn handshake(&self) -> socks4_core::Timeouts {
        socks4_core::Timeouts::default()
            .with_handshake(self.handshake)
            .with_connect(self.connect)
            .with_bind(self.bind)
            .with_ident(self.ident)
    }
}

/// How SOCKS4a names are looked up and their addresses tried: the `[names]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NamesConfig {
    /// The family a name's addresses start with (`--prefer`; default IPv6, as RFC 8305).
    pub prefer: Prefer,
    /// Happy Eyeballs: start the next address after this long without an answer (default
    /// 250 ms; zero starts them all at once).
    #[serde(with = "duration_text")]
    pub connect_stagger: Duration,
    /// Name servers to ask instead of the system's resolver (`--resolver ADDR[:PORT]`, port 53
    /// by default): over UDP, over TCP when an answer is truncated. Empty (the default): the
    /// system's resolver (`getaddrinfo`).
    #[serde(deserialize_with = "resolver_addrs")]
    pub resolvers: Vec<SocketAddr>,
    /// Names our resolver's cache holds at most (default 4096).
    pub cache_entries: usize,
    /// An answer is cached for its TTL, raised to this at least (default 0 s).
    #[serde(with = "duration_text")]
    pub min_ttl: Duration,
    /// An answer is cached for its TTL, cut to this at most (default 1 h).
    #[serde(with = "duration_text")]
    pub max_ttl: Duration,
    /// A name that does not exist (or has no address) is remembered for its negative TTL, at
    /// most this long (default 30 s; zero: not at all).
    #[serde(with = "duration_text")]
    pub negative_ttl: Duration,
}

impl Default for NamesConfig {
    fn default() -> Self {
        Self {
            prefer: Prefer::default(),
            connect_stagger: DEFAULT_STAGGER,
            resolvers: Vec::new(),
            cache_entries: 4096,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// Parses a name server's address: `ADDR` (port 53) or `ADDR:PORT`, IPv6 as `::1` or `[::1]:53`.
///
/// ```
/// use socks4_server::config::parse_resolver;
/// assert_eq!(parse_resolver("127.0.0.1")?, "127.0.0.1:53".parse()?);
/// assert_eq!(parse_resolver("127.0.0.1:5353")?, "127.0.0.1:5353".parse()?);
/// assert_eq!(parse_resolver("::1")?, "[::1]:53".parse()?);
/// assert_eq!(parse_resolver("[::1]:5353")?, "[::1]:5353".parse()?);
/// assert!(parse_resolver("dns.example").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ConfigError::Resolver`] (holding the text) when it is neither.
pub fn parse_resolver(text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => Err(ConfigError::Resolver(text.to_owned())),
    }
}

fn resolver_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    use serde::Deserialize;
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|t| parse_resolver(t)).collect::<Result<_, _>>().map_err(serde::de::Error::custom)
}

/// Everything a server adapter needs to run.
///
/// Start from [`ServerConfig::default`] and set fields; more fields will come (it is
/// `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Addresses to listen on (default `127.0.0.1:1080`).
    pub listen: Vec<SocketAddr>,
    /// Worker threads; `None` means one per CPU.
    pub workers: Option<usize>,
    /// Most connections served at once; more are closed on accept and counted (default 4096).
    pub max_connections: usize,
    /// Give each worker its own `SO_REUSEPORT` listener instead of one acceptor (Linux).
    pub reuseport: bool,
    /// User id and host name limits.
    #[serde(with = "limits_file")]
    pub limits: Limits,
    /// Phase timeouts.
    pub timeouts: Timeouts,
    /// Access rules; empty allows everything and is refused beyond loopback.
    #[serde(deserialize_with = "rules_text")]
    pub rules: Rules,
    /// Refuse CONNECT requests that carry only an IP address, like Tor's `SafeSocks`: clients must
    /// send names (SOCKS4a), so one that resolved a name itself (a DNS leak) is caught and logged.
    pub safe_socks: bool,
    /// Let CONNECT requests by IP address through but log them, once per client per minute
    /// (`warn_unsafe_socks = true`; see [`unsafe_socks`](crate::unsafe_socks)): what
    /// `safe_socks` would refuse, found without breaking the applications.
    pub warn_unsafe_socks: bool,

    // --- The outgoing side (modules `egress`, `keepalive`). ---
    /// Source addresses of outgoing connections (`outgoing = ["203.0.113.7", "2001:db8::7"]`),
    /// for requests whose rule has no `out`: several rotate, one of the other family than the
    /// destination's is skipped (see [`egress`](crate::egress)). Empty: the system's choice.
    pub outgoing: Vec<IpAddr>,
    /// TCP keepalive on both sockets of each relay (`keepalive = "60s,10s,5"`, see
    /// [`keepalive`](crate::keepalive)); `None` (the default): off.
    pub keepalive: Option<Keepalive>,

    // --- Abuse limits, bandwidth caps, authentication (modules `limits`, `bandwidth`, `users`). ---
    /// Per-client admission limits (the `[client_limits]` table).
    pub client_limits: ClientLimits,
    /// Bandwidth caps (the `[bandwidth]` table); none by default.
    pub bandwidth: BandwidthCaps,
    /// The users file (`users = "FILE"`): when set, user ids must be `NAME:TOKEN` that verify.
    pub users: Option<PathBuf>,

    // --- Operations (module `reload`). ---
    /// Log filter (`log_level = "info"`): a level or a tracing filter directive. `--log-level` or
    /// `SOCKS4_LOG` override it; a reload applies it.
    pub log_level: String,
    // --- Operations: metrics and logs (modules `metrics`, `log`). ---
    /// Where to serve Prometheus metrics, `/healthz` and `/readyz` (`metrics = "127.0.0.1:9100"`);
    /// `None`: nothing is served or counted.
    pub metrics: Option<SocketAddr>,
    /// How the binary writes its log (`log_format = "text"` or `"json"`).
    pub log_format: LogFormat,
    // --- PROXY protocol (module `proxy`). ---
    /// Sources whose connections start with a PROXY header (`proxy_protocol = ["10.0.0.0/8"]`):
    /// see [`proxy`](crate::proxy). Empty (the default): no header is read from anyone.
    #[serde(deserialize_with = "networks_text")]
    pub proxy_protocol: TrustedProxies,
    // --- Names: Happy Eyeballs and our own resolver (modules `eyeballs`, `dns`). ---
    /// How SOCKS4a names are looked up and their addresses tried (the `[names]` table).
    pub names: NamesConfig,
}

/// The default log filter, `info`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The default listen address, `127.0.0.1:1080`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![DEFAULT_LISTEN],
            workers: None,
            max_connections: 4096,
            reuseport: false,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            rules: Rules::default(),
            safe_socks: false,
            warn_unsafe_socks: false,
            // --- The outgoing side. ---
            outgoing: Vec::new(),
            keepalive: None,
            // --- Abuse limits, bandwidth caps, authentication. ---
            client_limits: ClientLimits::default(),
            bandwidth: BandwidthCaps::default(),
            users: None,
            // --- Operations. ---
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            metrics: None,
            log_format: LogFormat::Text,
            // --- PROXY protocol. ---
            proxy_protocol: TrustedProxies::default(),
            // --- Names. ---
            names: NamesConfig::default(),
        }
    }
}

impl ServerConfig {
    /// A handshake for a connection accepted at `now`, with this config's limits, timeouts and
    /// request policy (`safe_socks`): what every adapter starts a connection with.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut config = socks4_server::ServerConfig::default();
    /// config.safe_socks = true;
    /// let mut hs = config.handshake(Duration::ZERO);
    /// hs.handle_input(Duration::ZERO, b"\x04\x01\x00\x50\x7f\x00\x00\x01\0");
    /// assert!(matches!(hs.poll_output(), socks4_core::Output::Send(_))); // 91: names required
    /// ```
    pub fn handshake(&self, now: Duration) -> socks4_core::ServerHandshake {
        socks4_core::ServerHandshake::new(now, self.limits, self.handshake_timeouts())
            .refuse_addresses(self.safe_socks)
            .ident_name_only(self.users.is_some())
    }

    /// Sets the options of a relay's two sockets as the relay starts, best effort (a socket that
    /// refuses still relays): `SO_OOBINLINE` on `dest` (the client's comes from its listener,
    /// [`listen`](crate::listen)), and [`keepalive`](Self::keepalive) on both when configured.
    /// What every adapter does when its handshake ends in a relay.
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// let (dest, _) = l.accept()?;
    /// let config = socks4_server::ServerConfig::default();
    /// config.relay_sockets(socket2::SockRef::from(&client), socket2::SockRef::from(&dest));
    /// assert!(socket2::SockRef::from(&dest).out_of_band_inline()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn relay_sockets(&self, client: socket2::SockRef<'_>, dest: socket2::SockRef<'_>) {
        let _ = socks4_sys::socket::urgent_inline(&dest);
        if let Some(keepalive) = &self.keepalive {
            let _ = keepalive.apply(client);
            let _ = keepalive.apply(dest);
        }
    }

    /// The timeouts a [`ServerHandshake`](socks4_core::ServerHandshake) needs.
    pub fn handshake_timeouts(&self) -> socks4_core::Timeouts {
        self.timeouts.handshake()
    }

    /// The addresses to bind, in order: each listen address as configured, except that an
    /// IPv4-mapped IPv6 address becomes the IPv4 address it stands for, so every adapter binds
    /// `[::ffff:127.0.0.1]:1080` as `127.0.0.1:1080` (an IPv6-only socket cannot bind a mapped
    /// address, and a dual-stack one would only ever see IPv4 clients on it).
    ///
    /// ```
    /// use socks4_server::ServerConfig;
    /// let mut config = ServerConfig::default();
    /// config.listen = vec!["[::ffff:127.0.0.1]:1080".parse()?, "[::1]:1080".parse()?];
    /// let addrs: Vec<_> = config.listen_addrs().map(|a| a.to_string()).collect();
    /// assert_eq!(addrs, ["127.0.0.1:1080", "[::1]:1080"]);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen.iter().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
    }

    /// Checks the config is safe and usable: at least one listen address, non-zero workers and
    /// connection limit, and rules whenever any listen address is not loopback.
    ///
    /// ```
    /// use socks4_server::ServerConfig;
    /// use socks4_core::rules::Rules;
    /// let mut config = ServerConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.listen = vec!["0.0.0.0:1080".parse().unwrap()];
    /// assert!(config.validate().is_err()); // an open proxy: refused
    /// config.rules = Rules::parse("allow from 10.0.0.0/8")?;
    /// assert!(config.validate().is_ok());
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`ConfigError`]: no listen address, a zero count, an address
    /// beyond loopback without rules (an open proxy), or another inconsistent setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        if self.workers == Some(0) {
            return Err(ConfigError::Zero("workers"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Zero("max_connections"));
        }
        if self.rules.is_empty() {
            if let Some(addr) = self.listen.iter().find(|a| !a.ip().to_canonical().is_loopback()) {
                return Err(ConfigError::OpenProxy(*addr));
            }
        }
        let listen: Vec<SocketAddr> = self.listen_addrs().collect();
        if let Some(parent) = crate::upstream::route_to_self(&self.rules, &listen) {
            return Err(ConfigError::RouteToSelf(parent.to_string()));
        }
        // --- The outgoing side: every configured source is tried once, here. ---
        crate::egress::check(self)?;
        // --- Abuse limits. ---
        if self.client_limits.tracked_clients == 0 {
            return Err(ConfigError::Zero("client_limits.tracked_clients"));
        }
        // --- Names. ---
        if !self.names.resolvers.is_empty() && self.names.cache_entries == 0 {
            return Err(ConfigError::Zero("names.cache_entries"));
        }
        if self.names.min_ttl > self.names.max_ttl {
            return Err(ConfigError::Ttl(self.names.min_ttl, self.names.max_ttl));
        }
        // --- Operations. ---
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(ConfigError::LogLevel(format!("`{}`: {e}", self.log_level)));
        }
        Ok(())
    }

    // --- Abuse limits, bandwidth caps, authentication: what an adapter builds at bind. ---

    /// The admission limiter for all workers: call [`Limiter::admit`] on each accepted connection.
    pub fn limiter(&self, now: Instant) -> Arc<Limiter> {
        Limiter::new(self.client_limits, now)
    }

    /// The shared bandwidth state, or `None` when no cap is set (relays then pay nothing).
    pub fn bandwidth(&self, now: Instant) -> Option<Arc<Bandwidth>> {
        Bandwidth::new(self.bandwidth, now)
    }

    /// Loads the users file, if one is set, into a [`Verifier`] (reads the file: call it at bind,
    /// not per connection).
    ///
    /// ```
    /// let config = socks4_server::ServerConfig::default();
    /// assert!(config.verifier()?.is_none(), "no users file: no authentication");
    /// # Ok::<(), socks4_server::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the users file cannot be read or has a bad line.
    pub fn verifier(&self) -> Result<Option<Arc<Verifier>>, ConfigError> {
        self.verifier_after(None)
    }

    /// [`verifier`](Self::verifier) for a reload: with the running verifier `old`, the new one
    /// shares its threads and keeps what still holds (see [`Verifier::reloaded`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the users file cannot be read or has a bad line.
    pub fn verifier_after(&self, old: Option<&Verifier>) -> Result<Option<Arc<Verifier>>, ConfigError> {
        let Some(path) = &self.users else { return Ok(None) };
        let users = Users::load(path)?;
        Ok(Some(Arc::new(match old {
            Some(old) => Verifier::reloaded(users, old),
            None => Verifier::new(users),
        })))
    }
}

/// The configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No listen address.
    NoListen,
    /// A count that must be positive is zero.
    Zero(&'static str),
    /// Listening beyond loopback with no access rules would be an open proxy.
    OpenProxy(SocketAddr),
    /// A rule is malformed.
    Rule(RuleError),
    /// A duration is malformed.
    BadDuration(String),
    /// The config file could not be read or parsed (path or message).
    File(String),
    /// The users file could not be read, or a line of it is bad.
    Users(UsersError),
    /// The log filter is malformed.
    LogLevel(String),
    /// A reload read a config file holding nothing but blanks and comments (one being rewritten
    /// in place, caught half-written) while the running config has settings it would drop.
    BlankReload(String),
    /// A route's parent is this server itself (see
    /// [`upstream::route_to_self`](crate::upstream::route_to_self)).
    RouteToSelf(String),
    /// An outgoing source (`--outgoing`, a rule's `out`) cannot be used on this host (see
    /// [`egress::check`](crate::egress::check)).
    Outgoing(String),
    /// A name server's address is not `ADDR` or `ADDR:PORT`.
    Resolver(String),
    /// `names.min_ttl` is above `names.max_ttl`.
    Ttl(Duration, Duration),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoListen => f.write_str("no listen address"),
            Self::Zero(what) => write!(f, "{what} must be at least 1"),
            Self::OpenProxy(addr) => write!(
                f,
                "refusing to listen on {addr} with no access rules: that is an open proxy. \
                 Add rules, or listen on 127.0.0.1. A safe start, for clients in 192.168.0.0/16 \
                 reaching the internet but not this host or its networks:\n  \
                 --deny 'to loopback' --deny 'to private' --deny 'to link-local' --allow 'from 192.168.0.0/16'\n\
                 or in the config file:\n  \
                 rules = [\"deny to loopback\", \"deny to private\", \"deny to link-local\", \"allow from 192.168.0.0/16\"]\n\
                 (rules are tried in order; a request no rule allows is denied)"
            ),
            Self::Rule(e) => write!(f, "bad rule: {e}"),
            Self::BadDuration(s) => write!(f, "`{s}` is not a duration like 500ms, 10s, 2m or 1h"),
            Self::File(msg) => write!(f, "config file: {msg}"),
            Self::Users(e) => write!(f, "users file: {e}"),
            Self::LogLevel(e) => write!(f, "bad log level {e}"),
            Self::RouteToSelf(parent) => write!(
                f,
                "the route through {parent} leads back to this server's own listener: each request \
                 would loop through it; name another proxy"
            ),
            Self::Outgoing(why) => write!(f, "outgoing source {why}"),
            Self::Resolver(text) => {
                write!(f, "`{text}` is not a name server address like 127.0.0.1, 127.0.0.1:5353 or [::1]:53")
            }
            Self::Ttl(min, max) => write!(
                f,
                "names.min_ttl ({}) is above names.max_ttl ({})",
                format_duration(*min),
                format_duration(*max)
            ),
            Self::BlankReload(path) => write!(
                f,
                "{path} is empty (blanks and comments only): not applied over the running config, which \
                 it would strip of its rules, users and limits (a file caught while being rewritten in \
                 place?); write the new file beside it and rename it over the old one"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<RuleError> for ConfigError {
    fn from(e: RuleError) -> Self {
        Self::Rule(e)
    }
}

impl From<UsersError> for ConfigError {
    fn from(e: UsersError) -> Self {
        Self::Users(e)
    }
}

/// Parses a duration: a number with an optional unit `ms`, `s` (the default), `m` or `h`.
///
/// ```
/// use core::time::Duration;
/// use socks4_server::config::parse_duration;
/// assert_eq!(parse_duration("1.5s")?, Duration::from_millis(1500));
/// assert_eq!(parse_duration("2m")?, Duration::from_secs(120));
/// assert_eq!(parse_duration("250ms")?, Duration::from_millis(250));
/// assert_eq!(parse_duration("10")?, Duration::from_secs(10));
/// assert!(parse_duration("soon").is_err());
/// # Ok::<(), socks4_server::config::ConfigError>(())
/// ```
///
/// # Errors
///
/// [`ConfigError::BadDuration`] (holding the text) for a number that does not parse, a unit other
/// than `ms`, `s`, `m`, `h`, or a value too large for a `Duration`.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration(text.to_string());
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

mod duration_text {
    use super::{format_duration, parse_duration};
    use serde::de::{self, Visitor};
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like \"10s\", or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom("negative duration"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `[limits]` table of the config file (the core's `Limits` carries no serde).
mod limits_file {
    use serde::{Deserialize, Serialize};
    use socks4_core::Limits;

    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct File {
        user_id: u8,
        host: u8,
    }

    impl Default for File {
        fn default() -> Self {
            let l = Limits::default();
            Self { user_id: l.user_id, host: l.host }
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
        File::deserialize(d).map(|f| Limits::new(f.user_id, f.host))
    }
}

fn rules_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Rules, D::Error> {
    use serde::Deserialize;
    let lines = Vec::<String>::deserialize(d)?;
    let rules = lines.iter().map(|l| l.parse()).collect::<Result<Vec<_>, _>>().map_err(serde::de::Error::custom)?;
    Ok(Rules(rules))
}

/// The networks trusted to send PROXY headers (`--proxy-protocol`, config key `proxy_protocol`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Whether a connection from `peer` must start with a PROXY header.
    ///
    /// ```
    /// use socks4_server::config::TrustedProxies;
    /// let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
    /// assert!(trusted.contains("10.1.2.3".parse().unwrap()));
    /// assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
    /// ```
    pub fn contains(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(peer))
    }

    /// Whether no source is trusted (the feature is off: nothing is read before the request).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn networks_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrustedProxies, D::Error> {
    use serde::Deserialize;
    let nets = Vec::<String>::deserialize(d)?;
    let nets = nets.iter().map(|n| n.parse()).collect::<Result<Vec<_>, _>>().map_err(serde::de::Error::custom)?;
    Ok(TrustedProxies(nets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_catches_each_problem() {
        let ok = ServerConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut ServerConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate()
        };
        assert_eq!(with(&|c| c.listen.clear()), Err(ConfigError::NoListen));
        assert_eq!(with(&|c| c.workers = Some(0)), Err(ConfigError::Zero("workers")));
        assert_eq!(with(&|c| c.max_connections = 0), Err(ConfigError::Zero("max_connections")));
        let open: SocketAddr = "[::]:1080".parse().unwrap();
        assert_eq!(with(&|c| c.listen.push(open)), Err(ConfigError::OpenProxy(open)));
        assert_eq!(
            with(&|c| c.listen = vec!["[::1]:1".parse().unwrap(), "[::ffff:127.0.0.1]:1".parse().unwrap()]),
            Ok(())
        );
        assert_eq!(
            with(&|c| {
                c.listen.push(open);
                c.rules = Rules::parse("allow from ::1").unwrap();
            }),
            Ok(())
        );
        let msg = format!("{}", ConfigError::OpenProxy(open));
        assert!(msg.contains("--allow"), "{msg}");
        // The safe rule set it suggests is valid and keeps the open listener from being refused.
        let suggested = ["deny to loopback", "deny to private", "deny to link-local", "allow from 192.168.0.0/16"];
        for rule in suggested {
            assert!(msg.contains(&format!("\"{rule}\"")), "{msg}");
        }
        let mut safe = ok.clone();
        safe.listen = vec![open];
        safe.rules = Rules::parse(&suggested.join("\n")).unwrap();
        assert_eq!(safe.validate(), Ok(()));
        let local =
            socks4_core::AccessRequest::new(socks4_core::Command::Connect, 80, b"").with_addr([127, 0, 0, 1].into());
        assert_eq!(safe.rules.evaluate([192, 168, 1, 2].into(), &local), socks4_core::Action::Deny);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(" 3m "), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "-1s", "5 parsecs", "1e9999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(7)), "7s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert!(format!("{}", ConfigError::BadDuration("x".into())).contains("`x`"));
    }
}
