//! Where outgoing connections leave from: the source address or interface of each socket the
//! server connects (to a destination, or to a route's parent), and the one function that makes
//! such a socket, [`socket`], which every driver calls before it connects.
//!
//! The choice, in order: the `out` of the rule that allowed the request (see
//! [`Egress`](socks4_core::rules::Egress): `out ADDR[,ADDR...]`, `out dev IFACE`, `out same`), else
//! the server's `--outgoing` addresses (config key `outgoing`), else the system's (no bind).
//! Several addresses rotate, round robin per address family, each connection taking the next; an
//! address of the other family than the destination's is skipped (with none of its family, the
//! system chooses). `out same` leaves by the address the client connected to (Dante's
//! `same-same`), when it is of the destination's family.
//!
//! Binding an address first would reserve an ephemeral port of its own for each connection and
//! run the range out under load (the failure Dante 1.4 answers 91 with): on Linux the socket is
//! marked `IP_BIND_ADDRESS_NO_PORT` before the bind, so the port is picked at `connect`, per
//! destination, and each source address has a whole port range per destination. `out dev` binds
//! the socket to the interface (`SO_BINDTODEVICE`): on kernels before 5.7 that needs
//! `CAP_NET_RAW` (root, or `AmbientCapabilities=CAP_NET_RAW` in the unit).
//!
//! Every configured address and interface is tried once when the configuration is loaded (at
//! start-up and at each reload, [`check`]): one not on this host, or an interface that does not
//! exist or cannot be used, is refused with a message then, not per connection.
//!
//! ```text
//! Step::Connect(addr) / chain Io::Connect(addr):
//!     let out = decisions.outgoing(&snapshot.egress, || client's local address);
//!     let socket = out.socket(addr)?;               // non-blocking, bound, not connected
//!     connect it (Runtime::connect_socket; socks4-std: connect_started + writability)
//!     on success: out.connected(local address); log out=<its local address>
//! ```
//!
//! ```
//! use socks4_server::egress::{Egress, Source};
//! let mut config = socks4_server::ServerConfig::default();
//! config.outgoing = vec!["127.0.0.2".parse()?, "127.0.0.3".parse()?, "::1".parse()?];
//! config.rules = socks4_core::rules::Rules::parse("allow user alice out same\nallow")?;
//! let egress = Egress::new(&config);
//! let dest = "127.0.0.1:80".parse()?;
//! let picks: Vec<_> = (0..3).map(|_| egress.pick(None, dest, None)).collect();
//! assert_eq!(picks, [Source::Addr("127.0.0.2".parse()?), Source::Addr("127.0.0.3".parse()?), Source::Addr("127.0.0.2".parse()?)]);
//! assert_eq!(egress.pick(None, "[::1]:80".parse()?, None), Source::Addr("::1".parse()?));
//! // Rule 0 (`out same`): the address the client connected to.
//! assert_eq!(egress.pick(Some(0), dest, Some("127.0.0.9".parse()?)), Source::Addr("127.0.0.9".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use socket2::{Domain, SockAddr, Socket};
use socks4_core::rules::Egress as RuleEgress;

use crate::ServerConfig;
use crate::config::ConfigError;

/// The source one outgoing socket is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source<'a> {
    /// The system's choice: no bind.
    Any,
    /// This address; the port is chosen at connect.
    Addr(IpAddr),
    /// This network interface (`SO_BINDTODEVICE`).
    Device(&'a str),
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::Device(name) => write!(f, "dev {name}"),
        }
    }
}

/// A new non-blocking TCP socket for connecting to `dest`, bound to `source` (an address is bound
/// with `IP_BIND_ADDRESS_NO_PORT` on Linux, so no port is reserved before the connect), not yet
/// connected: start the connect with [`connect_started`] (or the runtime's own), then wait for it.
/// Every outgoing connection of every adapter is made from one of these.
///
/// ```
/// use socks4_server::egress::{Source, connect_started, socket};
/// let target = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let socket = socket(target.local_addr()?, Source::Addr("127.0.0.2".parse()?))?;
/// connect_started(&socket, target.local_addr()?)?;
/// let (_, peer) = target.accept()?;
/// assert_eq!(peer.ip().to_string(), "127.0.0.2", "the target sees the chosen source");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The system's, from `socket`, the options or the bind (`EADDRNOTAVAIL`: the address is not on
/// this host; `EPERM` binding to a device without the capability), or `InvalidInput` for a source
/// address of the other family than `dest`'s.
pub fn socket(dest: SocketAddr, source: Source<'_>) -> io::Result<Socket> {
    let socket = socks4_sys::socket::nonblocking(Domain::for_address(dest))?;
    match source {
        Source::Any => {}
        Source::Addr(ip) => {
            let ip = match (ip, dest) {
                (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_)) => ip,
                // A v4 source for an IPv4-mapped destination on an IPv6 socket.
                (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
                (IpAddr::V6(_), SocketAddr::V4(_)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "an IPv6 source for an IPv4 destination"));
                }
            };
            bind_address_no_port(&socket)?;
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        Source::Device(name) => bind_device(&socket, name)?,
    }
    Ok(socket)
}

pub use socks4_sys::socket::{connect_started, is_in_progress};

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): a `bind(addr:0)` then leaves the port to
/// `connect`, which picks one per destination, instead of reserving one exclusively at `bind`.
/// socket2 and rustix have no setter for it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor (borrowed for the call), and a pointer to a live c_int
    // with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast::<libc::c_void>(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Elsewhere the option does not exist: the port is reserved at `bind`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_address_no_port(_socket: &Socket) -> io::Result<()> {
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
fn bind_device(socket: &Socket, name: &str) -> io::Result<()> {
    socket.bind_device(Some(name.as_bytes()))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
fn bind_device(_socket: &Socket, _name: &str) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "`out dev` (SO_BINDTODEVICE) needs Linux"))
}

/// One configured source address and its use counter (the metric).
#[derive(Debug)]
struct Counted {
    ip: IpAddr,
    used: Arc<AtomicU64>,
}

/// The outgoing plan of one rule (or the server's default).
#[derive(Debug)]
enum Plan {
    /// Rotating addresses: IPv4 ones, IPv6 ones, and the next of each.
    Addrs {
        v4: Box<[Counted]>,
        v6: Box<[Counted]>,
        next: [AtomicUsize; 2],
    },
    Device {
        name: Box<str>,
        used: Arc<AtomicU64>,
    },
    Same {
        used: Arc<AtomicU64>,
    },
}

impl Plan {
    fn addrs(addrs: &[IpAddr]) -> Self {
        let counted = |v6: bool| -> Box<[Counted]> {
            let mut seen: Vec<IpAddr> = Vec::new();
            addrs
                .iter()
                .map(|ip| ip.to_canonical())
                .filter(|ip| ip.is_ipv6() == v6)
                .filter(|ip| {
                    let new = !seen.contains(ip);
                    seen.push(*ip);
                    new
                })
                .map(|ip| Counted { ip, used: counter(ip.to_string()) })
                .collect()
        };
        Self::Addrs { v4: counted(false), v6: counted(true), next: Default::default() }
    }

    fn from_rule(egress: &RuleEgress) -> Option<Self> {
        Some(match egress {
            RuleEgress::Addrs(addrs) => Self::addrs(addrs),
            RuleEgress::Device(name) => {
                Self::Device { name: name.as_str().into(), used: counter(format!("dev {name}")) }
            }
            RuleEgress::Same => Self::Same { used: counter("same".to_string()) },
            _ => return None,
        })
    }

    fn pick(&self, dest: SocketAddr, arrived_on: Option<IpAddr>) -> Source<'_> {
        let v6 = !dest.ip().to_canonical().is_ipv4();
        match self {
            Self::Addrs { v4, v6: six, next } => {
                let (list, next) = if v6 { (six, &next[1]) } else { (v4, &next[0]) };
                match list.len() {
                    0 => Source::Any,
                    n => Source::Addr(list[next.fetch_add(1, Relaxed) % n].ip),
                }
            }
            Self::Device { name, .. } => Source::Device(name),
            Self::Same { .. } => match arrived_on.map(|ip| ip.to_canonical()) {
                Some(ip) if ip.is_ipv6() == v6 && !ip.is_unspecified() => Source::Addr(ip),
                _ => Source::Any,
            },
        }
    }

    /// The use counter of the source a connection from `local` left by, if configured here.
    fn counter_of(&self, local: IpAddr) -> Option<&AtomicU64> {
        match self {
            Self::Addrs { v4, v6, .. } => v4.iter().chain(v6.iter()).find(|c| c.ip == local).map(|c| &*c.used),
            Self::Device { used, .. } | Self::Same { used } => Some(used),
        }
    }
}

/// The outgoing plans of one configuration: the server's default and each rule's (indexed like
/// the snapshot's `config.rules`). Built once per configuration ([`Egress::new`]; a reload builds
/// a new one, for connections accepted after it); the use counters outlive it.
#[derive(Debug, Default)]
pub struct Egress {
    default: Option<Plan>,
    rules: Vec<Option<Plan>>,
}

impl Egress {
    /// The plans of `config`: its `outgoing` addresses and its rules' `out` (by rule index).
    pub fn new(config: &ServerConfig) -> Self {
        let default = (!config.outgoing.is_empty()).then(|| Plan::addrs(&config.outgoing));
        let rules = match config.rules.0.iter().any(|r| r.egress.is_some()) {
            true => config.rules.0.iter().map(|r| r.egress.as_ref().and_then(Plan::from_rule)).collect(),
            false => Vec::new(),
        };
        Self { default, rules }
    }

    /// Whether nothing is configured: every connection leaves by the system's choice.
    pub fn is_off(&self) -> bool {
        self.default.is_none() && self.rules.is_empty()
    }

    /// Whether `rule`'s choice (or the default) leaves by the address the client connected to, so
    /// the caller must tell it (see [`pick`](Self::pick)).
    pub fn needs_arrival(&self, rule: Option<usize>) -> bool {
        matches!(self.plan(rule), Some(Plan::Same { .. }))
    }

    fn plan(&self, rule: Option<usize>) -> Option<&Plan> {
        rule.and_then(|i| self.rules.get(i)).and_then(Option::as_ref).or(self.default.as_ref())
    }

    /// The source for a connection to `dest` allowed by rule `rule` (the index of
    /// [`Decision::rule`](socks4_core::rules::Decision::rule); `None`: no rule, or the default),
    /// whose client connected to `arrived_on` (needed only for `out same`: see
    /// [`needs_arrival`](Self::needs_arrival)). Each call takes the next address of a rotation.
    pub fn pick(&self, rule: Option<usize>, dest: SocketAddr, arrived_on: Option<IpAddr>) -> Source<'_> {
        match self.plan(rule) {
            Some(plan) => plan.pick(dest, arrived_on),
            None => Source::Any,
        }
    }

    /// A connection allowed by `rule` connected from `local`: counts it for its configured source
    /// (`socks4_outgoing_connections_total{source=...}`; nothing when the system chose).
    pub fn connected(&self, rule: Option<usize>, local: SocketAddr) {
        if let Some(used) = self.plan(rule).and_then(|p| p.counter_of(local.ip().to_canonical())) {
            used.fetch_add(1, Relaxed);
        }
    }
}

/// One connection's way out: its configuration's [`Egress`], the rule that allowed it, and the
/// address its client connected to. Make each outgoing socket of the connection with
/// [`socket`](Self::socket). Copy it freely.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    egress: &'a Egress,
    rule: Option<usize>,
    arrived_on: Option<IpAddr>,
}

impl<'a> Outgoing<'a> {
    /// The way out under `egress` for a connection allowed by `rule`; `arrived_on` is asked (a
    /// `getsockname`) only when the choice is `out same`.
    pub fn new(egress: &'a Egress, rule: Option<usize>, arrived_on: impl FnOnce() -> Option<IpAddr>) -> Self {
        let arrived_on = if egress.needs_arrival(rule) { arrived_on() } else { None };
        Self { egress, rule, arrived_on }
    }

    /// The system's choice for everything (no configuration).
    pub fn any() -> Outgoing<'static> {
        static NONE: Egress = Egress { default: None, rules: Vec::new() };
        Outgoing { egress: &NONE, rule: None, arrived_on: None }
    }

    /// A new non-blocking socket for `dest` from the next source ([`socket`]; each call takes the
    /// next address of a rotation).
    ///
    /// # Errors
    /// As [`socket`].
    pub fn socket(&self, dest: SocketAddr) -> io::Result<Socket> {
        socket(dest, self.egress.pick(self.rule, dest, self.arrived_on))
    }

    /// The connect succeeded from `local` (the socket's local address): counts it for its
    /// configured source ([`Egress::connected`]).
    pub fn connected(&self, local: SocketAddr) {
        self.egress.connected(self.rule, local);
    }
}

/// The most distinct source labels counted; later ones share [`OTHER`] (a long run of reloads
/// naming new addresses cannot grow the metrics without bound).
pub const MAX_LABELS: usize = 256;
/// The label past [`MAX_LABELS`].
pub const OTHER: &str = "other";

/// The use counters by label (`127.0.0.2`, `dev eth1`, `same`): the process's, kept across
/// reloads (the labels are configured values, never clients').
static COUNTERS: Mutex<Vec<(String, Arc<AtomicU64>)>> = Mutex::new(Vec::new());

fn counter(label: String) -> Arc<AtomicU64> {
    let mut counters = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = counters.iter().find(|(l, _)| *l == label) {
        return Arc::clone(c);
    }
    let label = if counters.len() >= MAX_LABELS { OTHER.to_string() } else { label };
    if let Some((_, c)) = counters.iter().find(|(l, _)| *l == label) {
        return Arc::clone(c);
    }
    let c = Arc::new(AtomicU64::new(0));
    counters.push((label, Arc::clone(&c)));
    c
}

/// Connections made from each configured source so far, by label (for the metrics).
pub fn totals() -> Vec<(String, u64)> {
    let counters = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    counters.iter().map(|(l, c)| (l.clone(), c.load(Relaxed))).collect()
}

/// Tries every source `config` names once (the `outgoing` addresses, each rule's `out` addresses
/// and interfaces): a socket of the address's family is bound to it (with
/// `IP_BIND_ADDRESS_NO_PORT`: no port is taken), or to the interface. What a start-up and a
/// reload run before the configuration is used.
///
/// # Errors
/// [`ConfigError::Outgoing`] naming the first source that cannot be used, and why (not an address
/// of this host; no such interface; binding to an interface without `CAP_NET_RAW`).
pub fn check(config: &ServerConfig) -> Result<(), ConfigError> {
    for ip in &config.outgoing {
        let ip = ip.to_canonical();
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(ConfigError::Outgoing(format!("`outgoing = {ip}` is not a unicast address")));
        }
        try_addr(ip).map_err(|why| ConfigError::Outgoing(format!("`--outgoing {ip}`: {why}")))?;
    }
    for rule in &config.rules.0 {
        match &rule.egress {
            Some(RuleEgress::Addrs(addrs)) => {
                for ip in addrs {
                    try_addr(*ip).map_err(|why| ConfigError::Outgoing(format!("rule `{rule}`: {ip}: {why}")))?;
                }
            }
            Some(RuleEgress::Device(name)) => {
                try_device(name).map_err(|why| ConfigError::Outgoing(format!("rule `{rule}`: dev {name}: {why}")))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Binds a socket of `ip`'s family to it, no port taken.
fn try_addr(ip: IpAddr) -> Result<(), String> {
    let probe = match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 9)),
    };
    match socket(probe, Source::Addr(ip)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            Err(format!("not an address of this host ({e}); name one this host has (`ip -br addr`)"))
        }
        Err(e) => Err(format!("cannot bind it: {e}")),
    }
}

/// Binds a socket to interface `name`.
fn try_device(name: &str) -> Result<(), String> {
    match socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)), Source::Device(name)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "binding to an interface (SO_BINDTODEVICE) needs CAP_NET_RAW on this kernel ({e}): run as root, \
             or grant it (systemd: AmbientCapabilities=CAP_NET_RAW), or use `out ADDR` with the interface's address"
        )),
        Err(e) if no_such_device(&e) => Err(format!("no such interface ({e}); see `ip -br link`")),
        Err(e) => Err(format!("cannot bind to it: {e}")),
    }
}

fn no_such_device(e: &io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::ENODEV);
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socks4_core::rules::Rules;

    fn config(outgoing: &[&str], rules: &str) -> ServerConfig {
        ServerConfig {
            outgoing: outgoing.iter().map(|a| a.parse().unwrap()).collect(),
            rules: Rules::parse(rules).unwrap(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn rotation_is_even_per_family_and_skips_the_other() {
        let egress = Egress::new(&config(&["127.0.0.2", "::1", "127.0.0.3", "::ffff:127.0.0.2"], "allow"));
        let v4: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..100 {
            *seen.entry(egress.pick(Some(0), v4, None).to_string()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "a mapped duplicate is one address: {seen:?}");
        assert_eq!((seen["127.0.0.2"], seen["127.0.0.3"]), (50, 50));
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(egress.pick(None, v6, None), Source::Addr("::1".parse().unwrap()));
        let only_v4 = Egress::new(&config(&["127.0.0.2"], "allow"));
        assert_eq!(only_v4.pick(None, v6, None), Source::Any, "no IPv6 source: the system's choice");
        assert!(Egress::new(&ServerConfig::default()).is_off());
    }

    #[test]
    fn a_rules_out_wins_over_the_default() {
        let egress = Egress::new(&config(
            &["127.0.0.2"],
            "allow user a out 127.0.0.3\nallow user b out same\nallow user c out dev lo\nallow",
        ));
        let dest: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let on = Some("127.0.0.7".parse().unwrap());
        assert_eq!(egress.pick(Some(0), dest, on), Source::Addr("127.0.0.3".parse().unwrap()));
        assert!(egress.needs_arrival(Some(1)) && !egress.needs_arrival(Some(0)) && !egress.needs_arrival(None));
        assert_eq!(egress.pick(Some(1), dest, on), Source::Addr("127.0.0.7".parse().unwrap()));
        assert_eq!(egress.pick(Some(1), "[::1]:80".parse().unwrap(), on), Source::Any, "same: other family");
        assert_eq!(egress.pick(Some(2), dest, on), Source::Device("lo"));
        assert_eq!(egress.pick(Some(3), dest, on), Source::Addr("127.0.0.2".parse().unwrap()), "default");
        assert_eq!(egress.pick(Some(99), dest, on), Source::Addr("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn sockets_are_bound_without_a_port_and_counted() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let egress = Egress::new(&config(&["127.0.0.3"], "allow"));
        let out = Outgoing::new(&egress, None, || None);
        let before = totals().iter().find(|(l, _)| l == "127.0.0.3").map_or(0, |(_, n)| *n);
        let socket = out.socket(target.local_addr().unwrap()).unwrap();
        let local = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!((local.ip().to_string().as_str(), local.port()), ("127.0.0.3", 0), "no port before connect");
        connect_started(&socket, target.local_addr().unwrap()).unwrap();
        let (_, peer) = target.accept().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.3");
        out.connected(peer);
        out.connected("127.0.0.9:1".parse().unwrap()); // not a configured source: not counted
        let after = totals().iter().find(|(l, _)| l == "127.0.0.3").map_or(0, |(_, n)| *n);
        assert_eq!(after, before + 1);
        assert!(Outgoing::any().socket(target.local_addr().unwrap()).is_ok());
    }

    #[test]
    fn sources_not_on_this_host_are_refused_at_load() {
        assert_eq!(check(&config(&["127.0.0.2", "::1"], "allow out 127.0.0.3")), Ok(()));
        let e = check(&config(&["192.0.2.1"], "allow")).unwrap_err();
        assert!(e.to_string().contains("192.0.2.1") && e.to_string().contains("not an address of this host"), "{e}");
        let e = check(&config(&[], "allow user a out 127.0.0.2,192.0.2.7")).unwrap_err();
        assert!(e.to_string().contains("192.0.2.7"), "{e}");
        let e = check(&config(&[], "allow out dev nosuch0")).unwrap_err();
        assert!(e.to_string().contains("nosuch0"), "{e}");
        assert!(check(&config(&["0.0.0.0"], "allow")).is_err());
    }
}
