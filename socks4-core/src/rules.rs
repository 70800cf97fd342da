//! Access rules: plain data, evaluated in order, first match wins.
//!
//! The text form, one rule per line (the config file and the `--allow`/`--deny` options use it):
//!
//! ```text
//! allow|deny [from CIDR] [to CIDR|CLASS|HOST-PATTERN] [port N|N-M] [command connect|bind] [user NAME]
//! allow [conditions as above] ident
//! allow [conditions as above] via socks4a://HOST:PORT[,socks4://HOST:PORT...] [as NAME]
//!       [isolate client|user|client,user]
//! allow [conditions as above] out ADDR[,ADDR...] | out dev IFACE | out same
//! allow|deny any
//! ```
//!
//! `out` (allow rules only) gives the rule an [`Egress`]: the source address (or interface) of
//! the outgoing connection a request it allows makes (to the destination, or to the first parent
//! of a `via` route). The core only carries it: the server binds the socket
//! ([`Rules::egress`] gives the matching rule's).
//!
//! `via` (allow rules only) gives the rule a [`Route`]: a request it allows is sent through these
//! parent proxies, tried in order, instead of connecting directly (see [`Route`] for the syntax,
//! `as` and `isolate`). [`Rules::decide`] names the matching rule ([`Decision::rule`]) and
//! [`Rules::route`] gives its route. A rule without `via` connects directly.
//!
//! `from` matches the client's address, `to` the destination: a network (IPv4 or IPv6) matches the
//! destination address (for SOCKS4a, the address the name resolved to); a [class](AddrClass)
//! (`loopback`, `private`, `link-local`) matches every address of that kind, IPv4 and IPv6, including
//! IPv4-mapped IPv6; a host pattern (`example.com`, `*.example.com`, `*`) matches a SOCKS4a host
//! name, case-insensitively. IPv4-mapped IPv6 addresses count as IPv4 everywhere. A rule with no
//! conditions matches everything. With rules present, a request no rule matches is denied.
//!
//! `ident` (allow rules only) is not a condition but a requirement: a request the rule matches is
//! allowed only if the client host's identd (RFC 1413) confirms that the connection belongs to the
//! request's user id, byte for byte; otherwise the client gets 92 (identd unreachable or no valid
//! answer) or 93 (another user, or an identd `ERROR`). [`Rules::decide`] reports it, and
//! [`ServerHandshake::authorize`](crate::ServerHandshake::authorize) performs it (see
//! [`Output::Ident`](crate::Output::Ident)). `allow user alice ident` lets only a client that
//! says it is alice and whose identd agrees. On a deny rule `ident` would mean nothing (a denied
//! request is refused whatever identd says), so it is an error there, [`RuleError::IdentOnDeny`].
//!
//! A destination address that is never a real destination — unspecified (`0.0.0.0/8`, `::`),
//! broadcast or multicast, see [`is_forbidden_destination`] — is refused by the
//! [`ServerHandshake`](crate::ServerHandshake) before any rule is asked.
//!
//! When a server forwards SOCKS4a names unresolved (see
//! [`Names::Forward`](crate::Names::Forward)), a request carries a host name and no address:
//! `to CIDR` and `to CLASS` conditions never match it (they never match a placeholder address).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

use crate::request::Command;

/// What a rule does with a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Reject it with reply 91.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// The facts a rule is checked against: one request, after any SOCKS4a name was resolved.
///
/// ```
/// use socks4_core::{AccessRequest, Command};
/// let by_ip = AccessRequest::new(Command::Connect, 443, b"alice").with_addr([10, 0, 0, 1].into());
/// let by_name = AccessRequest::new(Command::Connect, 443, b"").with_host("example.com");
/// assert_eq!(by_ip.addr, Some([10, 0, 0, 1].into()));
/// assert_eq!((by_name.addr, by_name.host), (None, Some("example.com")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessRequest<'a> {
    /// CONNECT or BIND.
    pub command: Command,
    /// The destination address (CONNECT) or the expected peer (BIND): the request's IPv4 address or
    /// what its SOCKS4a name resolved to (IPv4 or IPv6). `None` when the name is forwarded unresolved.
    pub addr: Option<IpAddr>,
    /// The requested port.
    pub port: u16,
    /// The SOCKS4a host name, if any.
    pub host: Option<&'a str>,
    /// The user id the client sent.
    pub user_id: &'a [u8],
}

impl<'a> AccessRequest<'a> {
    /// A request with no destination address or host name yet.
    pub const fn new(command: Command, port: u16, user_id: &'a [u8]) -> Self {
        Self { command, addr: None, port, host: None, user_id }
    }

    /// With the destination address.
    #[must_use]
    pub const fn with_addr(mut self, addr: IpAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// With the SOCKS4a host name.
    #[must_use]
    pub const fn with_host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }
}

/// Is `ip` never a real destination? True for the unspecified networks (`0.0.0.0/8`, `::`), the
/// IPv4 broadcast address and multicast (`224.0.0.0/4`, `ff00::/8`), also as IPv4-mapped IPv6.
/// Linux connects `0.0.0.0` to the local host, so an unchecked `0.0.0.0` bypasses `deny to
/// 127.0.0.0/8`; the server handshake refuses these before any rule.
///
/// ```
/// use socks4_core::rules::is_forbidden_destination;
/// assert!(is_forbidden_destination([0, 0, 0, 0].into()));
/// assert!(is_forbidden_destination([0, 1, 2, 3].into()));
/// assert!(is_forbidden_destination("::ffff:0.0.0.0".parse().unwrap()));
/// assert!(is_forbidden_destination([255, 255, 255, 255].into()));
/// assert!(is_forbidden_destination([239, 1, 1, 1].into()));
/// assert!(is_forbidden_destination("::".parse().unwrap()));
/// assert!(is_forbidden_destination("ff02::1".parse().unwrap()));
/// assert!(!is_forbidden_destination([127, 0, 0, 1].into()));
/// assert!(!is_forbidden_destination("::1".parse().unwrap()));
/// ```
pub fn is_forbidden_destination(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// The address a host name written as a number stands for, the way resolvers read it, or `None`
/// for a real name. After one trailing dot is dropped (`127.0.0.1.` is `127.0.0.1`, as for host
/// patterns): an IPv6 address (with or without a `%scope`), or an IPv4 address in any form C's
/// `inet_aton` takes — 1 to 4 parts separated by dots, each decimal, octal (a leading `0`) or
/// hexadecimal (`0x`), the last one filling the remaining bytes (`127.1`, `2130706433`,
/// `0x7f000001` and `0177.0.0.1` are all 127.0.0.1; `0` is 0.0.0.0), optionally followed by
/// whitespace and anything. A server must treat such a name as that address — check it as one and
/// never pass it on to a parent as a name, where it would slip past every address rule.
///
/// ```
/// use core::net::{IpAddr, Ipv4Addr};
/// use socks4_core::rules::numeric_host;
/// let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
/// for name in ["127.0.0.1", "127.0.0.1.", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7F.1"] {
///     assert_eq!(numeric_host(name), lo, "{name}");
/// }
/// for name in ["0", "00", "0x0", "0.0.0.0."] {
///     assert_eq!(numeric_host(name), Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), "{name}");
/// }
/// assert_eq!(numeric_host("::1."), Some("::1".parse().unwrap()));
/// for name in ["example.com", "127.0.0.1..", "08", "0x", "1.2.3.4.5", "256.1.1.1", "4294967296", "1e3"] {
///     assert_eq!(numeric_host(name), None, "{name}");
/// }
/// ```
pub fn numeric_host(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let v6 = host.split_once('%').map_or(host, |(addr, _scope)| addr);
    if let Ok(ip) = v6.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(ip).to_canonical());
    }
    inet_aton(host.as_bytes()).map(IpAddr::V4)
}

/// C's `inet_aton` (glibc's, which ignores what follows a whitespace after the number).
fn inet_aton(s: &[u8]) -> Option<Ipv4Addr> {
    const MAX_LAST: [u64; 4] = [0xffff_ffff, 0xff_ffff, 0xffff, 0xff];
    let mut parts = [0u8; 3];
    let mut n = 0;
    let mut i = 0;
    loop {
        // A part: starts with a digit; `0x` hex, `0` octal, else decimal (C's strtoul, base 0).
        if !s.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let hex = s[i] == b'0'
            && matches!(s.get(i + 1), Some(b'x' | b'X'))
            && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        let (radix, start) = match (hex, s[i]) {
            (true, _) => (16, i + 2),
            (false, b'0') => (8, i),
            _ => (10, i),
        };
        let mut value: u64 = 0;
        i = start;
        while let Some(digit) = s.get(i).and_then(|&b| char::from(b).to_digit(radix)) {
            value = value.checked_mul(u64::from(radix))?.checked_add(u64::from(digit))?;
            if value > 0xffff_ffff {
                return None;
            }
            i += 1;
        }
        if s.get(i) == Some(&b'.') {
            if n == 3 || value > 0xff {
                return None;
            }
            parts[n] = value as u8;
            n += 1;
            i += 1;
            continue;
        }
        // The end, or whitespace and anything after it.
        if s.get(i).is_some_and(|&b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')) || value > MAX_LAST[n] {
            return None;
        }
        let mut word = value as u32;
        for (k, &part) in parts[..n].iter().enumerate() {
            word |= u32::from(part) << (24 - 8 * k);
        }
        return Some(Ipv4Addr::from(word));
    }
}

/// A kind of address a rule can name instead of listing networks: `to loopback`, `to private`,
/// `to link-local`. Each covers IPv4 and IPv6 (and IPv4-mapped IPv6).
///
/// ```
/// use socks4_core::rules::AddrClass;
/// assert!(AddrClass::Private.contains([192, 168, 1, 1].into()));
/// assert!(AddrClass::Private.contains("fd00::1".parse().unwrap()));
/// assert!(AddrClass::Loopback.contains("::ffff:127.0.0.2".parse().unwrap()));
/// assert!(AddrClass::LinkLocal.contains([169, 254, 169, 254].into()));
/// assert!(!AddrClass::Private.contains([8, 8, 8, 8].into()));
/// assert_eq!("link-local".parse::<AddrClass>(), Ok(AddrClass::LinkLocal));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddrClass {
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// Private and shared networks: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, the carrier-grade
    /// NAT `100.64.0.0/10`, and IPv6 unique-local `fc00::/7`.
    Private,
    /// `169.254.0.0/16` (cloud metadata services live here) and `fe80::/10`.
    LinkLocal,
}

impl AddrClass {
    /// Is `ip` of this class?
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (Self::Loopback, ip) => ip.is_loopback(),
            (Self::Private, IpAddr::V4(v4)) => v4.is_private() || is_shared_v4(v4),
            (Self::Private, IpAddr::V6(v6)) => v6.segments()[0] & 0xfe00 == 0xfc00,
            (Self::LinkLocal, IpAddr::V4(v4)) => v4.is_link_local(),
            (Self::LinkLocal, IpAddr::V6(v6)) => is_link_local_v6(v6),
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
        }
    }
}

/// `100.64.0.0/10`, the carrier-grade NAT range.
fn is_shared_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 100 && o[1] & 0xc0 == 64
}

fn is_link_local_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

impl FromStr for AddrClass {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        [Self::Loopback, Self::Private, Self::LinkLocal]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| RuleError::BadHostPattern(s.to_string()))
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// A network, or `None` if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Does the network contain `ip`? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(net.to_bits().into(), ip.to_bits().into(), 32, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(net.to_bits(), ip.to_bits(), 128, self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, width: u8, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (width - prefix) == 0
}

impl FromStr for IpNet {
    type Err = RuleError;

    /// `ADDR/PREFIX` or a bare address (a host network).
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadNetwork(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Self::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A host-name pattern: `*` (any name), `*.example.com` (any subdomain) or an exact name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(String);

impl HostPattern {
    /// Does the pattern match `host` (ASCII case-insensitive; a fully qualified `host.` is
    /// `host`, so a trailing dot cannot slip past a rule)?
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        let pat = self.0.as_str();
        if pat == "*" {
            return true;
        }
        match pat.strip_prefix('*') {
            Some(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            None => host.eq_ignore_ascii_case(pat),
        }
    }
}

impl FromStr for HostPattern {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        // `example.com.` is `example.com` (see `matches`); no other label may be empty.
        let name = if s.len() > 1 && s != "*." { s.strip_suffix('.').unwrap_or(s) } else { s };
        let body = name.strip_prefix("*.").unwrap_or(if name == "*" { "" } else { name });
        let label = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let valid = name == "*" || (!body.is_empty() && body.split('.').all(label));
        if valid { Ok(Self(name.to_ascii_lowercase())) } else { Err(RuleError::BadHostPattern(s.to_string())) }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a request goes: a network, an address class or a host-name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestMatch {
    /// The destination address lies in this network (IPv4 or IPv6).
    Net(IpNet),
    /// The destination address is of this class.
    Class(AddrClass),
    /// The SOCKS4a host name matches this pattern.
    Host(HostPattern),
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port in the range.
    pub first: u16,
    /// Last port in the range.
    pub last: u16,
}

impl PortRange {
    /// Is `port` in the range?
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl FromStr for PortRange {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadPort(s.to_string());
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (first, last) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

/// The most parent proxies one rule may list.
pub const MAX_PARENTS: usize = 8;

/// The protocol a parent proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `socks4://`: names are resolved here and the parent gets the address.
    Socks4,
    /// `socks4a://`: names are passed to the parent unresolved (no local DNS lookup).
    Socks4a,
}

impl Scheme {
    /// The URL scheme, `socks4` or `socks4a`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Socks4 => "socks4",
            Self::Socks4a => "socks4a",
        }
    }
}

/// One parent proxy of a [`Route`]: `socks4a://127.0.0.1:9050`, `socks4://bastion:1080`,
/// `socks4://[::1]:1080`. The host may be a name; the server resolves it when it connects.
///
/// ```
/// use socks4_core::rules::{Parent, Scheme};
/// let tor: Parent = "socks4a://127.0.0.1:9050".parse()?;
/// assert_eq!((tor.scheme, tor.host.as_str(), tor.port), (Scheme::Socks4a, "127.0.0.1", 9050));
/// assert_eq!("socks4://[::1]:1080".parse::<Parent>()?.host, "::1");
/// assert_eq!("socks4://[::1]:1080".parse::<Parent>()?.to_string(), "socks4://[::1]:1080");
/// assert!("http://proxy:3128".parse::<Parent>().is_err());
/// # Ok::<(), socks4_core::rules::RuleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Parent {
    /// SOCKS4 or SOCKS4a.
    pub scheme: Scheme,
    /// A host name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    /// The parent's port.
    pub port: u16,
}

impl FromStr for Parent {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadRoute(s.to_string());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "socks4" => Scheme::Socks4,
            "socks4a" => Scheme::Socks4a,
            _ => return Err(bad()),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
                v6
            }
            None => host,
        };
        let valid = !host.is_empty()
            && host.len() <= 255
            && (host.parse::<Ipv6Addr>().is_ok()
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
        if !valid || (host.contains(':') && !rest.starts_with('[')) {
            return Err(bad());
        }
        Ok(Self { scheme, host: host.to_string(), port })
    }
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme.name(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme.name(), self.host, self.port)
        }
    }
}

/// Where an allowed request goes instead of a direct connection: parent proxies, tried in order
/// while they cannot be reached, and the user id to send them.
///
/// Text form, in a rule: `via socks4a://a:9050,socks4a://b:9050` (or `via` repeated), and
/// optionally `as NAME` (the user id sent to the parents; without it the client's user name is
/// sent, never a users-file token) and `isolate client`, `isolate user` or `isolate client,user`
/// (stream isolation, see [`Isolate`]: each client gets its own user id upstream, so a Tor parent
/// keeps different clients off shared circuits; with `as NAME`, NAME is its prefix). `user` stays
/// the condition on the client's user id.
///
/// ```
/// use socks4_core::rules::{Rule, Scheme};
/// let rule: Rule = "allow to 10.0.0.0/8 via socks4://bastion:1080,socks4://[::1]:1081 as relay".parse()?;
/// let route = rule.route.as_ref().unwrap();
/// assert_eq!(route.parents.len(), 2);
/// assert_eq!(route.parents[0].scheme, Scheme::Socks4);
/// assert_eq!(route.user.as_deref(), Some("relay"));
/// assert_eq!(route.to_string(), "via socks4://bastion:1080,socks4://[::1]:1081 as relay");
/// let tor: Rule = "allow to *.onion via socks4a://127.0.0.1:9050 isolate client".parse()?;
/// assert_eq!(tor.route.unwrap().isolate, Some(socks4_core::rules::Isolate::Client));
/// # Ok::<(), socks4_core::rules::RuleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Route {
    /// The parents, in the order to try them (at least one).
    pub parents: Vec<Parent>,
    /// The user id to send to the parents (`as NAME`); `None`: the client's user name. With
    /// [`isolate`](Self::isolate), the prefix of the per-client id.
    pub user: Option<String>,
    /// Stream isolation (`isolate ...`): send each client (by address, user name or both) a user
    /// id of its own; `None`: the same one for all (`as NAME`, or the client's user name).
    pub isolate: Option<Isolate>,
}

impl Route {
    /// A route through `parents`, sending the client's user name.
    pub fn new(parents: Vec<Parent>) -> Self {
        Self { parents, user: None, isolate: None }
    }

    /// With the user id to send to the parents.
    #[must_use]
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// With stream isolation (`isolate ...`; see [`Isolate`]).
    ///
    /// ```
    /// use socks4_core::rules::{Isolate, Route};
    /// let route = Route::new(vec!["socks4a://127.0.0.1:9050".parse()?]).with_user("tor").with_isolate(Isolate::Both);
    /// assert_eq!(route.to_string(), "via socks4a://127.0.0.1:9050 as tor isolate client,user");
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    #[must_use]
    pub fn with_isolate(mut self, isolate: Isolate) -> Self {
        self.isolate = Some(isolate);
        self
    }

    /// Are the parents SOCKS4a ones, to which names are passed unresolved? (A rule's parents
    /// all speak the same protocol.)
    pub fn forwards_names(&self) -> bool {
        self.parents.first().is_some_and(|p| p.scheme == Scheme::Socks4a)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("via ")?;
        for (i, parent) in self.parents.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{parent}")?;
        }
        if let Some(user) = &self.user {
            write!(f, " as {user}")?;
        }
        if let Some(isolate) = &self.isolate {
            write!(f, " isolate {isolate}")?;
        }
        Ok(())
    }
}

/// The longest `as NAME` a route with [`Isolate`] takes: the per-client id the server sends is
/// `NAME-` and [`ISOLATION_ID_LEN`] hex digits, and a SOCKS4 user id is at most 255 bytes.
pub const MAX_ISOLATED_PREFIX: usize = 255 - 1 - ISOLATION_ID_LEN;

/// The length of the per-client part of an isolated user id (hex digits of a 64-bit keyed hash).
pub const ISOLATION_ID_LEN: usize = 16;

/// What tells clients apart for stream isolation (`isolate client`, `isolate user`, `isolate
/// client,user` after a route): each distinct client gets a distinct user id upstream, the same
/// one for as long as the server runs, so a Tor parent (which isolates streams by SOCKS
/// credentials, `IsolateSOCKSAuth`) keeps different clients off shared circuits.
///
/// The core only carries it; the server derives the id (a keyed hash: the parent never sees the
/// client's address or name).
///
/// ```
/// use socks4_core::rules::{Isolate, Rule};
/// let rule: Rule = "allow via socks4a://127.0.0.1:9050 isolate user,client".parse()?;
/// let isolate = rule.route.as_ref().unwrap().isolate.unwrap();
/// assert_eq!(isolate, Isolate::Both);
/// assert!(isolate.by_client() && isolate.by_user());
/// assert_eq!(rule.to_string(), "allow via socks4a://127.0.0.1:9050 isolate client,user");
/// assert!("allow via socks4a://127.0.0.1:9050 isolate bogus".parse::<Rule>().is_err());
/// # Ok::<(), socks4_core::rules::RuleError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isolate {
    /// By the client's address (`isolate client`): behind a trusted balancer, the address its
    /// PROXY header names.
    Client,
    /// By the client's user name (`isolate user`; with a users file the verified name, never the
    /// token).
    User,
    /// By both (`isolate client,user`).
    Both,
}

impl Isolate {
    /// Does the client's address tell clients apart?
    pub const fn by_client(self) -> bool {
        matches!(self, Self::Client | Self::Both)
    }

    /// Does the client's user name tell clients apart?
    pub const fn by_user(self) -> bool {
        matches!(self, Self::User | Self::Both)
    }
}

impl FromStr for Isolate {
    type Err = RuleError;

    /// `client`, `user`, or both separated by a comma (in either order, each once).
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadIsolate(s.to_string());
        let (mut client, mut user) = (false, false);
        for part in s.split(',') {
            let seen = match part {
                "client" => core::mem::replace(&mut client, true),
                "user" => core::mem::replace(&mut user, true),
                _ => return Err(bad()),
            };
            if seen {
                return Err(bad());
            }
        }
        match (client, user) {
            (true, true) => Ok(Self::Both),
            (true, false) => Ok(Self::Client),
            (false, true) => Ok(Self::User),
            (false, false) => Err(bad()),
        }
    }
}

impl fmt::Display for Isolate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::User => "user",
            Self::Both => "client,user",
        })
    }
}

/// The most source addresses one `out` list may hold.
pub const MAX_OUT_ADDRS: usize = 16;

/// The longest interface name `out dev` takes (Linux's `IFNAMSIZ` less its NUL).
pub const MAX_DEVICE_LEN: usize = 15;

/// Where a rule's outgoing connections leave from (`out`, allow rules only): the server binds the
/// outgoing socket accordingly before it connects.
///
/// Text form, in a rule: `out 203.0.113.7` or `out 203.0.113.7,2001:db8::7` (at most
/// [`MAX_OUT_ADDRS`]; several rotate, an address of the other family than the destination's is
/// skipped), `out dev eth1` (the interface, `SO_BINDTODEVICE`), or `out same` (the address the
/// client connected to, Dante's `same-same`: for a host with several addresses).
///
/// ```
/// use socks4_core::rules::{Egress, Rule};
/// let rule: Rule = "allow user alice out 127.0.0.2,::1".parse()?;
/// assert_eq!(rule.egress, Some(Egress::Addrs(vec![[127, 0, 0, 2].into(), "::1".parse().unwrap()])));
/// assert_eq!(rule.to_string(), "allow user alice out 127.0.0.2,::1");
/// assert_eq!("allow out dev eth1".parse::<Rule>()?.egress, Some(Egress::Device("eth1".into())));
/// assert_eq!("allow out same".parse::<Rule>()?.egress, Some(Egress::Same));
/// assert!("deny out same".parse::<Rule>().is_err());
/// # Ok::<(), socks4_core::rules::RuleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Egress {
    /// Bind one of these source addresses (1..=[`MAX_OUT_ADDRS`], IPv4-mapped ones as IPv4).
    Addrs(Vec<IpAddr>),
    /// Bind the socket to this network interface (`SO_BINDTODEVICE`).
    Device(String),
    /// Leave by the address the client connected to.
    Same,
}

impl Egress {
    /// Parses the value after `out`: `ADDR[,ADDR...]` or `same` (`dev IFACE` is two words: see
    /// [`device`](Self::device)).
    fn parse_value(value: &str) -> Result<Self, RuleError> {
        if value == "same" {
            return Ok(Self::Same);
        }
        let bad = || RuleError::BadOut(value.to_string());
        let mut addrs = Vec::new();
        for text in value.split(',') {
            let ip = text.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
            // Never a source: the unspecified address (that is no `out`), multicast, broadcast.
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                return Err(bad());
            }
            if addrs.len() >= MAX_OUT_ADDRS {
                return Err(bad());
            }
            addrs.push(ip);
        }
        Ok(Self::Addrs(addrs))
    }

    /// The interface form, `dev IFACE`: a Linux interface name (1..=[`MAX_DEVICE_LEN`] bytes, not
    /// `.` or `..`, no `/` or `:`).
    fn device(name: &str) -> Result<Self, RuleError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_DEVICE_LEN
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if valid { Ok(Self::Device(name.to_string())) } else { Err(RuleError::BadOut(alloc::format!("dev {name}"))) }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out ")?;
        match self {
            Self::Addrs(addrs) => {
                for (i, ip) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{ip}")?;
                }
                Ok(())
            }
            Self::Device(name) => write!(f, "dev {name}"),
            Self::Same => f.write_str("same"),
        }
    }
}

/// One access rule: an action and the conditions (all must hold) under which it applies.
///
/// Parse one from its text form, or build one from [`Rule::any`] and the `with_*` methods:
///
/// ```
/// use socks4_core::rules::{Action, AddrClass, DestMatch, Rule};
/// let rule = Rule::any(Action::Deny).with_to(DestMatch::Class(AddrClass::Private)).with_user("guest");
/// assert_eq!(rule.to_string(), "deny to private user guest");
/// assert_eq!("deny to private user guest".parse::<Rule>()?, rule);
/// # Ok::<(), socks4_core::rules::RuleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Rule {
    /// What to do with a matching request.
    pub action: Action,
    /// The client's network.
    pub from: Option<IpNet>,
    /// The destination network or host pattern.
    pub to: Option<DestMatch>,
    /// The destination port range.
    pub port: Option<PortRange>,
    /// The command.
    pub command: Option<Command>,
    /// The exact user id.
    pub user: Option<String>,
    /// Allow only if the client's identd confirms the request's user id (allow rules only).
    pub ident: bool,
    /// Send allowed requests through parent proxies (`via`, allow rules only); `None`: directly.
    pub route: Option<Route>,
    /// Where allowed requests' outgoing connections leave from (`out`, allow rules only); `None`:
    /// the server's default.
    pub egress: Option<Egress>,
}

impl Rule {
    /// A rule with the action and no conditions: it matches every request.
    pub const fn any(action: Action) -> Self {
        Self {
            action,
            from: None,
            to: None,
            port: None,
            command: None,
            user: None,
            ident: false,
            route: None,
            egress: None,
        }
    }

    /// With the client network.
    #[must_use]
    pub fn with_from(mut self, net: IpNet) -> Self {
        self.from = Some(net);
        self
    }

    /// With the destination condition.
    #[must_use]
    pub fn with_to(mut self, to: DestMatch) -> Self {
        self.to = Some(to);
        self
    }

    /// With the destination port range.
    #[must_use]
    pub fn with_port(mut self, port: PortRange) -> Self {
        self.port = Some(port);
        self
    }

    /// With the command.
    #[must_use]
    pub fn with_command(mut self, command: Command) -> Self {
        self.command = Some(command);
        self
    }

    /// With the exact user id.
    #[must_use]
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// Requires the client's identd to confirm the request's user id (the `ident` keyword); only
    /// meaningful on an allow rule (the text form refuses it on a deny rule).
    ///
    /// ```
    /// use socks4_core::rules::{Action, Rule};
    /// let rule = Rule::any(Action::Allow).with_user("alice").with_ident();
    /// assert_eq!(rule.to_string(), "allow user alice ident");
    /// assert_eq!("allow user alice ident".parse::<Rule>()?, rule);
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    #[must_use]
    pub fn with_ident(mut self) -> Self {
        self.ident = true;
        self
    }

    /// With a route through parent proxies (`via`; only meaningful on an allow rule).
    #[must_use]
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// With the source of its outgoing connections (`out`; only meaningful on an allow rule).
    ///
    /// ```
    /// use socks4_core::rules::{Action, Egress, Rule};
    /// let rule = Rule::any(Action::Allow).with_user("alice").with_egress(Egress::Same);
    /// assert_eq!(rule.to_string(), "allow user alice out same");
    /// ```
    #[must_use]
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = Some(egress);
        self
    }

    /// Do all of the rule's conditions hold for this client and request? (`ident` is not a
    /// condition: it is checked after the match, see [`Rules::decide`].)
    pub fn matches(&self, client: IpAddr, req: &AccessRequest<'_>) -> bool {
        self.from.is_none_or(|net| net.contains(client))
            && self.to.as_ref().is_none_or(|to| match to {
                DestMatch::Net(net) => req.addr.is_some_and(|ip| net.contains(ip)),
                DestMatch::Class(class) => req.addr.is_some_and(|ip| class.contains(ip)),
                DestMatch::Host(pat) => req.host.is_some_and(|h| pat.matches(h)),
            })
            && self.port.is_none_or(|p| p.contains(req.port))
            && self.command.is_none_or(|c| c == req.command)
            && self.user.as_ref().is_none_or(|u| u.as_bytes() == req.user_id)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// Parses the text form; see the [module docs](self).
    ///
    /// ```
    /// use socks4_core::rules::{Action, Rule};
    /// let rule: Rule = "allow from 127.0.0.0/8 to *.example.com port 80-443 command connect".parse()?;
    /// assert_eq!(rule.action, Action::Allow);
    /// assert_eq!(rule.to_string(), "allow from 127.0.0.0/8 to *.example.com port 80-443 command connect");
    /// assert!("allow port 99999".parse::<Rule>().is_err());
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let mut words = s.split_whitespace();
        let action = match words.next() {
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some(other) => return Err(RuleError::BadAction(other.to_string())),
            None => return Err(RuleError::Empty),
        };
        let mut rule = Rule::any(action);
        let mut peek = words.clone();
        if matches!((peek.next(), peek.next()), (Some("any" | "all"), None)) {
            return Ok(rule);
        }
        let mut route: Option<Route> = None;
        let mut route_user: Option<String> = None;
        let mut isolate: Option<Isolate> = None;
        while let Some(key) = words.next() {
            if key == "ident" {
                if rule.ident {
                    return Err(RuleError::Duplicate(key.to_string()));
                }
                rule.ident = true;
                continue;
            }
            let value = words.next().ok_or_else(|| RuleError::MissingValue(key.to_string()))?;
            let duplicate = match key {
                "from" => rule.from.replace(value.parse()?).is_some(),
                "to" => {
                    let to = match (value.parse::<IpNet>(), value.parse::<AddrClass>()) {
                        (Ok(net), _) => DestMatch::Net(net),
                        (_, Ok(class)) => DestMatch::Class(class),
                        _ if value.contains(':')
                            || value.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/') =>
                        {
                            return Err(RuleError::BadNetwork(value.to_string()));
                        }
                        _ => DestMatch::Host(value.parse()?),
                    };
                    rule.to.replace(to).is_some()
                }
                "port" => rule.port.replace(value.parse()?).is_some(),
                "command" => {
                    let command = match value.to_ascii_lowercase().as_str() {
                        "connect" => Command::Connect,
                        "bind" => Command::Bind,
                        _ => return Err(RuleError::BadCommand(value.to_string())),
                    };
                    rule.command.replace(command).is_some()
                }
                "user" => rule.user.replace(value.to_string()).is_some(),
                "via" => {
                    let parents = route.get_or_insert_with(Route::default);
                    for parent in value.split(',') {
                        let parent: Parent = parent.parse()?;
                        let mixed = parents.parents.first().is_some_and(|p| p.scheme != parent.scheme);
                        if parents.parents.len() >= MAX_PARENTS || mixed {
                            return Err(RuleError::BadRoute(value.to_string()));
                        }
                        parents.parents.push(parent);
                    }
                    false
                }
                "as" => route_user.replace(value.to_string()).is_some(),
                "isolate" => isolate.replace(value.parse()?).is_some(),
                "out" => {
                    let egress = match value {
                        "dev" => Egress::device(words.next().ok_or_else(|| RuleError::BadOut("dev".to_string()))?)?,
                        _ => Egress::parse_value(value)?,
                    };
                    rule.egress.replace(egress).is_some()
                }
                _ => return Err(RuleError::UnknownKey(key.to_string())),
            };
            if duplicate {
                return Err(RuleError::Duplicate(key.to_string()));
            }
        }
        if rule.ident && rule.action == Action::Deny {
            return Err(RuleError::IdentOnDeny);
        }
        if rule.egress.is_some() && rule.action == Action::Deny {
            return Err(RuleError::OutOnDeny);
        }
        match (route, route_user, isolate) {
            (Some(_), _, _) if rule.action == Action::Deny => return Err(RuleError::RouteOnDeny),
            (Some(_), Some(name), _) if name.len() > 255 || name.contains('\0') => {
                return Err(RuleError::BadRouteUser(name.len()));
            }
            (Some(_), Some(prefix), Some(_)) if prefix.len() > MAX_ISOLATED_PREFIX => {
                return Err(RuleError::IsolatePrefixTooLong(prefix.len()));
            }
            (Some(route), user, isolate) => rule.route = Some(Route { user, isolate, ..route }),
            (None, Some(_), _) => return Err(RuleError::AsWithoutVia),
            (None, None, Some(_)) => return Err(RuleError::IsolateWithoutVia),
            (None, None, None) => {}
        }
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        if let Some(from) = &self.from {
            write!(f, " from {from}")?;
        }
        match &self.to {
            Some(DestMatch::Net(net)) => write!(f, " to {net}")?,
            Some(DestMatch::Class(class)) => write!(f, " to {class}")?,
            Some(DestMatch::Host(pat)) => write!(f, " to {pat}")?,
            None => {}
        }
        if let Some(port) = &self.port {
            write!(f, " port {port}")?;
        }
        if let Some(command) = &self.command {
            f.write_str(match command {
                Command::Connect => " command connect",
                Command::Bind => " command bind",
            })?;
        }
        if let Some(user) = &self.user {
            write!(f, " user {user}")?;
        }
        if self.ident {
            f.write_str(" ident")?;
        }
        if let Some(route) = &self.route {
            write!(f, " {route}")?;
        }
        if let Some(egress) = &self.egress {
            write!(f, " {egress}")?;
        }
        Ok(())
    }
}

/// An ordered list of rules. Empty means "allow everything" (the config refuses that beyond loopback);
/// otherwise the first matching rule decides and no match means deny.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// The decision for a request from `client`.
    ///
    /// ```
    /// use socks4_core::{rules::Rules, AccessRequest, Action, Command};
    /// let rules = Rules::parse("deny user mallory\nallow from 127.0.0.0/8  # local clients\n")?;
    /// let req = AccessRequest::new(Command::Connect, 80, b"alice").with_addr([10, 0, 0, 1].into());
    /// assert_eq!(rules.evaluate([127, 0, 0, 1].into(), &req), Action::Allow);
    /// assert_eq!(rules.evaluate([192, 0, 2, 1].into(), &req), Action::Deny);
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    pub fn evaluate(&self, client: IpAddr, req: &AccessRequest<'_>) -> Action {
        self.decide(client, req).action
    }

    /// The decision for a request from `client`, with what the matching rule requires beyond it:
    /// [`Decision::ident`] is set when the first matching rule is an allow rule with `ident`.
    ///
    /// ```
    /// use socks4_core::{rules::Rules, AccessRequest, Action, Command};
    /// let rules = Rules::parse("allow from 10.0.0.0/8 ident\nallow from 127.0.0.0/8")?;
    /// let req = AccessRequest::new(Command::Connect, 80, b"alice").with_addr([192, 0, 2, 1].into());
    /// let remote = rules.decide([10, 1, 2, 3].into(), &req);
    /// assert_eq!((remote.action, remote.ident), (Action::Allow, true));
    /// let local = rules.decide([127, 0, 0, 1].into(), &req);
    /// assert_eq!((local.action, local.ident), (Action::Allow, false));
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    pub fn decide(&self, client: IpAddr, req: &AccessRequest<'_>) -> Decision {
        if self.0.is_empty() {
            return Decision { action: Action::Allow, ident: false, rule: None };
        }
        match self.0.iter().position(|r| r.matches(client, req)) {
            Some(i) => {
                let rule = &self.0[i];
                Decision { action: rule.action, ident: rule.ident && rule.action == Action::Allow, rule: Some(i) }
            }
            None => Decision { action: Action::Deny, ident: false, rule: None },
        }
    }

    /// The route of the rule that made `decision` (of these same rules): `None` for a direct
    /// connection, a denial, or no matching rule.
    ///
    /// ```
    /// use socks4_core::{rules::Rules, AccessRequest, Command};
    /// let rules = Rules::parse("allow to *.onion via socks4a://127.0.0.1:9050\nallow from 127.0.0.0/8")?;
    /// let onion = AccessRequest::new(Command::Connect, 80, b"").with_host("duck.onion");
    /// let route = rules.route(&rules.decide([127, 0, 0, 1].into(), &onion)).unwrap();
    /// assert_eq!(route.to_string(), "via socks4a://127.0.0.1:9050");
    /// let other = AccessRequest::new(Command::Connect, 80, b"").with_addr([192, 0, 2, 1].into());
    /// assert!(rules.route(&rules.decide([127, 0, 0, 1].into(), &other)).is_none());
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    pub fn route(&self, decision: &Decision) -> Option<&Route> {
        match decision.action {
            Action::Allow => self.0.get(decision.rule?)?.route.as_ref(),
            Action::Deny => None,
        }
    }

    /// The egress (`out`) of the rule that made `decision` (of these same rules): `None` for the
    /// server's default, a denial, or no matching rule.
    ///
    /// ```
    /// use socks4_core::{rules::{Egress, Rules}, AccessRequest, Command};
    /// let rules = Rules::parse("allow user alice out 127.0.0.2\nallow from 127.0.0.0/8")?;
    /// let alice = AccessRequest::new(Command::Connect, 80, b"alice").with_addr([192, 0, 2, 1].into());
    /// let out = rules.egress(&rules.decide([127, 0, 0, 1].into(), &alice));
    /// assert_eq!(out, Some(&Egress::Addrs(vec![[127, 0, 0, 2].into()])));
    /// let bob = AccessRequest::new(Command::Connect, 80, b"bob").with_addr([192, 0, 2, 1].into());
    /// assert!(rules.egress(&rules.decide([127, 0, 0, 1].into(), &bob)).is_none());
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    pub fn egress(&self, decision: &Decision) -> Option<&Egress> {
        match decision.action {
            Action::Allow => self.0.get(decision.rule?)?.egress.as_ref(),
            Action::Deny => None,
        }
    }

    /// Does any rule have a route?
    pub fn has_routes(&self) -> bool {
        self.0.iter().any(|r| r.route.is_some())
    }

    /// Parses rules one per line; blank lines and `#` comments are skipped. Errors name the line.
    ///
    /// # Errors
    ///
    /// The first line that is not a valid rule, as a [`RuleError`] whose `Display` names the line.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            rules.push(line.parse().map_err(|e| RuleError::Line(i + 1, alloc::boxed::Box::new(e)))?);
        }
        Ok(Self(rules))
    }

    /// Is the list empty (allow everything)?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What [`Rules::decide`] says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// Allowed only if the client's identd confirms the request's user id (never set with
    /// [`Action::Deny`]).
    pub ident: bool,
    /// The index of the matching rule (`None` without rules, or when none matched): see
    /// [`Rules::route`].
    pub rule: Option<usize>,
}

/// A rule's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule is empty.
    Empty,
    /// The first word is not `allow` or `deny`.
    BadAction(String),
    /// A keyword is not one of `from`, `to`, `port`, `command`, `user`, `ident`, `via`, `as`,
    /// `isolate`, `out`.
    UnknownKey(String),
    /// A condition keyword has no value after it.
    MissingValue(String),
    /// A condition appears twice.
    Duplicate(String),
    /// Not an IP network.
    BadNetwork(String),
    /// Not a port or port range.
    BadPort(String),
    /// Not `connect` or `bind`.
    BadCommand(String),
    /// Not a host pattern (`*`, `*.example.com`, `example.com`).
    BadHostPattern(String),
    /// `ident` on a deny rule, where it would mean nothing.
    IdentOnDeny,
    /// Not a parent list like `socks4a://127.0.0.1:9050,socks4a://10.0.0.1:9050` (at most
    /// [`MAX_PARENTS`] parents, all of one protocol).
    BadRoute(String),
    /// `via` on a deny rule, where it would mean nothing.
    RouteOnDeny,
    /// `as NAME` without `via`.
    AsWithoutVia,
    /// `as NAME`: NAME (this many bytes) is not a SOCKS4 user id (a NUL byte, or over 255 bytes).
    BadRouteUser(usize),
    /// Not an `isolate` value (`client`, `user` or `client,user`).
    BadIsolate(String),
    /// `as NAME` with `isolate`: NAME (this many bytes) is too long to prefix the per-client id
    /// (at most [`MAX_ISOLATED_PREFIX`]).
    IsolatePrefixTooLong(usize),
    /// `isolate` without `via`.
    IsolateWithoutVia,
    /// Not an `out` value: `ADDR[,ADDR...]` (at most [`MAX_OUT_ADDRS`] unicast addresses),
    /// `dev IFACE` or `same`.
    BadOut(String),
    /// `out` on a deny rule, where it would mean nothing.
    OutOnDeny,
    /// The error is on this line (1-based) of a multi-line text.
    Line(usize, alloc::boxed::Box<RuleError>),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty rule: write `allow ...` or `deny ...`"),
            Self::BadAction(w) => write!(f, "rule starts with `{w}`, expected `allow` or `deny`"),
            Self::UnknownKey(w) => {
                write!(f, "unknown condition `{w}` (use from, to, port, command, user, ident, via, as, isolate, out)")
            }
            Self::MissingValue(w) => write!(f, "condition `{w}` has no value"),
            Self::Duplicate(w) => write!(f, "condition `{w}` given twice"),
            Self::BadNetwork(w) => write!(f, "`{w}` is not a network like 10.0.0.0/8 or fd00::/8"),
            Self::BadPort(w) => write!(f, "`{w}` is not a port or a range like 80-443"),
            Self::BadCommand(w) => write!(f, "`{w}` is not a command (connect or bind)"),
            Self::BadHostPattern(w) => {
                write!(f, "`{w}` is not a host pattern like *.example.com or a class (loopback, private, link-local)")
            }
            Self::IdentOnDeny => f.write_str("`ident` applies to allow rules only"),
            Self::BadRoute(w) => {
                write!(
                    f,
                    "`{w}` is not a parent list like socks4a://127.0.0.1:9050,socks4a://10.0.0.1:9050 (one protocol, at most {MAX_PARENTS})"
                )
            }
            Self::RouteOnDeny => f.write_str("`via` applies to allow rules only"),
            Self::AsWithoutVia => f.write_str("`as NAME` (the user id for the parent proxy) needs `via`"),
            Self::BadRouteUser(n) => {
                write!(f, "`as NAME`: NAME ({n} bytes) is not a user id: no NUL byte, at most 255 bytes")
            }
            Self::BadIsolate(w) => {
                write!(
                    f,
                    "`isolate {w}` is not stream isolation: write `isolate client`, `isolate user` or `isolate client,user`"
                )
            }
            Self::IsolatePrefixTooLong(n) => write!(
                f,
                "`as NAME` with `isolate`: NAME is {n} bytes, at most {MAX_ISOLATED_PREFIX} (it prefixes the per-client id)"
            ),
            Self::IsolateWithoutVia => f.write_str("`isolate` (stream isolation at the parent proxy) needs `via`"),
            Self::BadOut(w) => write!(
                f,
                "`out {w}` is not a source: write `out ADDR[,ADDR...]` (at most {MAX_OUT_ADDRS} unicast addresses), \
                 `out dev IFACE` or `out same`"
            ),
            Self::OutOnDeny => f.write_str("`out` applies to allow rules only"),
            Self::Line(n, e) => write!(f, "line {n}: {e}"),
        }
    }
}

impl core::error::Error for RuleError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec;

    fn req<'a>(command: Command, ip: [u8; 4], port: u16, host: Option<&'a str>, user: &'a [u8]) -> AccessRequest<'a> {
        let r = AccessRequest::new(command, port, user).with_addr(ip.into());
        match host {
            Some(h) => r.with_host(h),
            None => r,
        }
    }

    #[test]
    fn a_trailing_dot_is_the_same_name() {
        let onion: HostPattern = "*.onion".parse().unwrap();
        assert!(onion.matches("duck.onion") && onion.matches("duck.onion.") && onion.matches("DUCK.ONION."));
        assert!(!onion.matches(".onion.") && !onion.matches("onion."));
        let exact: HostPattern = "example.com.".parse().unwrap();
        assert_eq!(exact.to_string(), "example.com");
        assert!(exact.matches("example.com") && exact.matches("Example.COM."));
        assert!(!exact.matches("example.com.."), "one dot only");
        for bad in ["..us...", "a..b", ".example.com", "example.com..", "*..x", "*."] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
        let rules = Rules::parse("deny to *.corp\nallow any").unwrap();
        let by_name = |h| AccessRequest::new(Command::Connect, 80, b"").with_host(h);
        assert_eq!(rules.decide([127, 0, 0, 1].into(), &by_name("db.corp.")).action, Action::Deny);
    }

    #[test]
    fn every_condition_matches_and_misses() {
        let local: IpAddr = [127, 0, 0, 1].into();
        let r = |s: &str| s.parse::<Rule>().unwrap();
        let base = req(Command::Connect, [10, 1, 2, 3], 443, Some("www.Example.com"), b"alice");
        assert!(r("allow").matches(local, &base));
        assert_eq!(r("deny any"), Rule::any(Action::Deny));
        assert_eq!(r("allow all"), Rule::any(Action::Allow));
        assert!(r("allow from 127.0.0.0/8").matches(local, &base));
        assert!(!r("allow from 10.0.0.0/8").matches(local, &base));
        assert!(r("allow from 127.0.0.1").matches("::ffff:127.0.0.1".parse().unwrap(), &base), "v4-mapped client");
        assert!(r("allow from ::1").matches("::1".parse().unwrap(), &base));
        assert!(!r("allow from ::1").matches(local, &base));
        assert!(r("allow to 10.0.0.0/8").matches(local, &base));
        assert!(!r("allow to 10.2.0.0/16").matches(local, &base));
        assert!(r("allow to 0.0.0.0/0").matches(local, &base));
        assert!(r("allow to *.example.com").matches(local, &base));
        assert!(
            !r("allow to *.example.com")
                .matches(local, &req(Command::Connect, [1, 1, 1, 1], 1, Some("example.com"), b""))
        );
        assert!(r("allow to www.example.COM").matches(local, &base));
        assert!(r("allow to *").matches(local, &base));
        assert!(
            !r("allow to *").matches(local, &req(Command::Connect, [1, 1, 1, 1], 1, None, b"")),
            "no host, no match"
        );
        assert!(r("allow port 443").matches(local, &base));
        assert!(r("allow port 1-1024").matches(local, &base));
        assert!(!r("allow port 444-500").matches(local, &base));
        assert!(r("allow command CONNECT").matches(local, &base));
        assert!(!r("allow command bind").matches(local, &base));
        assert!(r("allow user alice").matches(local, &base));
        assert!(!r("allow user bob").matches(local, &base));
    }

    #[test]
    fn parse_errors_are_typed() {
        let e = |s: &str| s.parse::<Rule>().unwrap_err();
        assert_eq!(e(""), RuleError::Empty);
        assert!(matches!(e("permit"), RuleError::BadAction(_)));
        assert!(matches!(e("allow over x"), RuleError::UnknownKey(_)));
        assert!(matches!(e("allow from"), RuleError::MissingValue(_)));
        assert!(matches!(e("allow port 1 port 2"), RuleError::Duplicate(_)));
        assert!(matches!(e("allow from 10.0.0.0/33"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow from nonsense"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow to ::1/200"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow to 10.0.0.256"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow port 70000"), RuleError::BadPort(_)));
        assert!(matches!(e("allow port 9-1"), RuleError::BadPort(_)));
        assert!(matches!(e("allow command udp"), RuleError::BadCommand(_)));
        assert!(matches!(e("allow to bad_host!"), RuleError::BadHostPattern(_)));
        assert!(matches!(e("allow to *."), RuleError::BadHostPattern(_)));
        for err in
            [e(""), e("permit"), e("allow over x"), e("allow from"), e("allow port 1 port 2"), e("allow to ::1/200")]
        {
            assert!(!format!("{err}").is_empty());
        }
        let err = Rules::parse("allow\n\n# c\ndeny port x\n").unwrap_err();
        assert!(matches!(&err, RuleError::Line(4, inner) if matches!(**inner, RuleError::BadPort(_))));
        assert!(format!("{err}").starts_with("line 4: "));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "allow",
            "deny from 192.168.0.0/16 to 10.0.0.1/32 port 22 command bind user root",
            "allow from ::1/128 to *.example.com port 80-443",
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(format!("{rule}"), text);
            assert_eq!(format!("{rule}").parse::<Rule>().unwrap(), rule);
        }
        assert_eq!(IpNet::new([10, 0, 0, 0].into(), 33), None);
    }

    #[test]
    fn ipv6_networks_classes_and_unresolved_names() {
        let local: IpAddr = [127, 0, 0, 1].into();
        let r = |s: &str| s.parse::<Rule>().unwrap();
        let v6 = |s: &str| AccessRequest::new(Command::Connect, 80, b"").with_addr(s.parse().unwrap());
        assert!(r("deny to ::1").matches(local, &v6("::1")));
        assert!(r("deny to 2001:db8::/32").matches(local, &v6("2001:db8::7")));
        assert!(!r("deny to 2001:db8::/32").matches(local, &v6("2001:db9::7")));
        assert!(r("deny to 127.0.0.0/8").matches(local, &v6("::ffff:127.0.0.1")), "v4-mapped destination");
        for (class, yes, no) in [
            ("loopback", ["127.9.9.9", "::1", "::ffff:127.0.0.1"], ["10.0.0.1", "::2", "fe80::1"]),
            ("private", ["10.1.1.1", "172.31.0.1", "fd12::1"], ["172.32.0.1", "8.8.8.8", "2001:db8::1"]),
            ("private", ["192.168.0.1", "100.64.0.1", "::ffff:10.0.0.1"], ["100.128.0.1", "127.0.0.1", "fe80::1"]),
            ("link-local", ["169.254.169.254", "fe80::1", "febf::1"], ["169.255.0.1", "fec0::1", "10.0.0.1"]),
        ] {
            let rule = r(&format!("deny to {class}"));
            assert_eq!(format!("{rule}"), format!("deny to {class}"));
            for ip in yes {
                assert!(rule.matches(local, &v6(ip)), "{class} {ip}");
            }
            for ip in no {
                assert!(!rule.matches(local, &v6(ip)), "{class} {ip}");
            }
        }
        // A name forwarded unresolved has no address: address conditions never match it.
        let by_name = AccessRequest::new(Command::Connect, 80, b"").with_host("internal.example");
        for rule in ["deny to 0.0.0.0/0", "deny to ::/0", "deny to loopback", "deny to private"] {
            assert!(!r(rule).matches(local, &by_name), "{rule}");
        }
        assert!(r("deny to *.example").matches(local, &by_name));
    }

    #[test]
    fn forbidden_destinations() {
        for ip in ["0.0.0.0", "0.255.255.255", "255.255.255.255", "224.0.0.1", "239.255.255.255", "::", "ff02::1"] {
            assert!(is_forbidden_destination(ip.parse().unwrap()), "{ip}");
            let mapped: IpAddr = match ip.parse().unwrap() {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            };
            assert!(is_forbidden_destination(mapped), "{mapped}");
        }
        for ip in ["1.0.0.0", "127.0.0.1", "223.255.255.255", "240.0.0.1", "::1", "2001:db8::1", "fe80::1"] {
            assert!(!is_forbidden_destination(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ident_keyword_parses_displays_and_decides() {
        let r = |s: &str| s.parse::<Rule>();
        assert_eq!(r("allow ident"), Ok(Rule::any(Action::Allow).with_ident()));
        assert_eq!(r("allow ident from 10.0.0.0/8"), r("allow from 10.0.0.0/8 ident"), "anywhere in the rule");
        assert_eq!(r("allow user ident"), Ok(Rule::any(Action::Allow).with_user("ident")), "a user named ident");
        assert_eq!(r("allow ident port 80 ident"), Err(RuleError::Duplicate("ident".into())));
        assert_eq!(r("deny from 10.0.0.0/8 ident"), Err(RuleError::IdentOnDeny));
        assert_eq!(r("allow any ident"), Err(RuleError::UnknownKey("any".into())));
        assert_eq!(format!("{}", RuleError::IdentOnDeny), "`ident` applies to allow rules only");
        for text in ["allow ident", "allow from 10.0.0.0/8 to *.example.com port 22 command connect user bob ident"] {
            let rule: Rule = text.parse().unwrap();
            assert!(rule.ident);
            assert_eq!(format!("{rule}"), text);
            assert_eq!(format!("{rule}").parse::<Rule>().unwrap(), rule);
        }
        // `ident` does not change what a rule matches; `decide` reports it for the first match.
        let rules =
            Rules::parse("allow from 10.0.0.0/8 user alice ident\ndeny user alice\nallow from 10.0.0.0/8").unwrap();
        let alice = req(Command::Connect, [1, 1, 1, 1], 80, None, b"alice");
        let bob = req(Command::Connect, [1, 1, 1, 1], 80, None, b"bob");
        let inside: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(rules.decide(inside, &alice), Decision { action: Action::Allow, ident: true, rule: Some(0) });
        assert_eq!(rules.decide(inside, &bob), Decision { action: Action::Allow, ident: false, rule: Some(2) });
        assert_eq!(
            rules.decide([8, 8, 8, 8].into(), &alice),
            Decision { action: Action::Deny, ident: false, rule: Some(1) }
        );
        assert_eq!(rules.evaluate(inside, &alice), Action::Allow, "evaluate keeps its meaning");
        assert_eq!(
            Rules::default().decide(inside, &alice),
            Decision { action: Action::Allow, ident: false, rule: None }
        );
        // A deny rule built by hand with the flag still denies, without ident.
        let hand = Rules(vec![Rule::any(Action::Deny).with_ident()]);
        assert_eq!(hand.decide(inside, &alice), Decision { action: Action::Deny, ident: false, rule: Some(0) });
    }

    #[test]
    fn egress_parses_displays_and_decides() {
        let r = |s: &str| s.parse::<Rule>();
        let two = r("allow user alice out 127.0.0.2,::ffff:127.0.0.3,2001:db8::7").unwrap();
        let v4 = |a, b, c, d| IpAddr::from([a, b, c, d]);
        assert_eq!(
            two.egress,
            Some(Egress::Addrs(vec![v4(127, 0, 0, 2), v4(127, 0, 0, 3), "2001:db8::7".parse().unwrap()])),
            "an IPv4-mapped address is the IPv4 one"
        );
        assert_eq!(two.to_string(), "allow user alice out 127.0.0.2,127.0.0.3,2001:db8::7");
        for text in [
            "allow out dev eth1",
            "allow out dev dev",
            "allow out dev same",
            "allow from 10.0.0.0/8 out same",
            "allow to *.onion via socks4a://127.0.0.1:9050 as tor out 127.0.0.2",
            "allow user bob ident out ::1",
        ] {
            let rule = r(text).unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(r(&rule.to_string()).unwrap(), rule);
        }
        assert_eq!(r("allow out same").unwrap(), Rule::any(Action::Allow).with_egress(Egress::Same));
        assert_eq!(r("deny out same"), Err(RuleError::OutOnDeny));
        assert_eq!(r("allow out same out same"), Err(RuleError::Duplicate("out".into())));
        assert_eq!(r("allow out"), Err(RuleError::MissingValue("out".into())));
        let sixteen = vec!["127.0.0.9"; MAX_OUT_ADDRS].join(",");
        assert!(r(&format!("allow out {sixteen}")).is_ok());
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "eth0",
            "127.0.0.2,",
            "127.0.0.2/32",
            "[::1]",
            "dev",
            "dev a/b",
            "dev a:1",
            "dev ..",
            "dev sixteen-chars-xx",
            &format!("{sixteen},127.0.0.1"),
        ] {
            assert!(matches!(r(&format!("allow out {bad}")), Err(RuleError::BadOut(_))), "{bad}");
        }
        assert!(format!("{}", RuleError::BadOut("x".into())).contains("out dev IFACE"));
        let rules =
            Rules::parse("allow user alice out 127.0.0.2\nallow to *.onion via socks4a://t:9050 out same\nallow")
                .unwrap();
        let local: IpAddr = [127, 0, 0, 1].into();
        let alice = req(Command::Connect, [1, 1, 1, 1], 80, None, b"alice");
        assert_eq!(rules.egress(&rules.decide(local, &alice)), Some(&Egress::Addrs(vec![v4(127, 0, 0, 2)])));
        let onion = AccessRequest::new(Command::Connect, 80, b"").with_host("x.onion");
        assert_eq!(rules.egress(&rules.decide(local, &onion)), Some(&Egress::Same));
        let other = req(Command::Connect, [1, 1, 1, 1], 80, None, b"bob");
        assert_eq!(rules.egress(&rules.decide(local, &other)), None);
        assert_eq!(Rules::default().egress(&Rules::default().decide(local, &alice)), None);
    }

    #[test]
    fn isolation_parses_displays_and_rejects_bad_forms() {
        let r = |s: &str| s.parse::<Rule>();
        let route = |s: &str| r(s).unwrap().route.unwrap();
        assert_eq!(route("allow via socks4a://127.0.0.1:9050 isolate client").isolate, Some(Isolate::Client));
        assert_eq!(route("allow via socks4a://127.0.0.1:9050 isolate user").isolate, Some(Isolate::User));
        assert_eq!(route("allow via socks4a://127.0.0.1:9050 isolate user,client").isolate, Some(Isolate::Both));
        assert_eq!(route("allow via socks4a://127.0.0.1:9050").isolate, None);
        // `as client` stays a literal user id named "client".
        let literal = route("allow via socks4a://127.0.0.1:9050 as client");
        assert_eq!((literal.user.as_deref(), literal.isolate), (Some("client"), None));
        let both = route("allow isolate client via socks4a://h:1 as tor");
        assert_eq!((both.user.as_deref(), both.isolate), (Some("tor"), Some(Isolate::Client)));
        for text in [
            "allow to *.onion via socks4a://127.0.0.1:9050 isolate client",
            "allow user alice via socks4a://127.0.0.1:9050 isolate user",
            "allow via socks4a://a:9050,socks4a://b:9050 as tor isolate client,user",
        ] {
            let rule = r(text).unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(r(&rule.to_string()), Ok(rule));
        }
        assert_eq!(
            r("allow via socks4a://h:1 isolate user,client").unwrap().to_string(),
            "allow via socks4a://h:1 isolate client,user",
            "one spelling"
        );
        let built = Rule::any(Action::Allow)
            .with_route(Route::new(vec!["socks4a://h:1".parse().unwrap()]).with_isolate(Isolate::User));
        assert_eq!(r("allow via socks4a://h:1 isolate user"), Ok(built));
        assert_eq!(r("allow via socks4a://h:1 isolate"), Err(RuleError::MissingValue("isolate".into())));
        for bad in ["bogus", "client,", ",user", "client,client", "user,user,client", "Client", "client;user", "all"] {
            assert_eq!(
                r(&format!("allow via socks4a://h:1 isolate {bad}")),
                Err(RuleError::BadIsolate(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            r("allow via socks4a://h:1 isolate client isolate user"),
            Err(RuleError::Duplicate("isolate".into()))
        );
        assert_eq!(r("allow isolate client"), Err(RuleError::IsolateWithoutVia));
        assert_eq!(r("deny via socks4a://h:1 isolate client"), Err(RuleError::RouteOnDeny));
        let long = "n".repeat(MAX_ISOLATED_PREFIX);
        assert!(r(&format!("allow via socks4a://h:1 as {long} isolate client")).is_ok());
        assert_eq!(
            r(&format!("allow via socks4a://h:1 as {long}n isolate client")),
            Err(RuleError::IsolatePrefixTooLong(MAX_ISOLATED_PREFIX + 1))
        );
        assert!(r(&format!("allow via socks4a://h:1 as {long}n")).is_ok(), "no isolation, no prefix limit");
        let user = "u".repeat(255);
        assert!(r(&format!("allow via socks4a://h:1 as {user}")).is_ok());
        assert_eq!(r(&format!("allow via socks4a://h:1 as {user}u")), Err(RuleError::BadRouteUser(256)));
        assert_eq!(r("allow via socks4a://h:1 as a\0b"), Err(RuleError::BadRouteUser(3)));
        for e in [
            RuleError::BadIsolate("x".into()),
            RuleError::IsolateWithoutVia,
            RuleError::IsolatePrefixTooLong(300),
            RuleError::BadRouteUser(300),
        ] {
            assert!(!format!("{e}").is_empty());
        }
    }

    #[test]
    fn routes_parse_display_and_decide() {
        let r = |s: &str| s.parse::<Rule>();
        let tor = r("allow to *.onion via socks4a://127.0.0.1:9050").unwrap();
        let route = tor.route.clone().unwrap();
        assert_eq!(route.parents, vec!["socks4a://127.0.0.1:9050".parse::<Parent>().unwrap()]);
        assert!(route.forwards_names() && route.user.is_none());
        let two = r("allow via socks4a://a:9050 to *.onion via socks4a://b:9050 as tor").unwrap();
        assert_eq!(
            two.to_string(),
            "allow to *.onion via socks4a://a:9050,socks4a://b:9050 as tor",
            "repeated via appends"
        );
        assert_eq!(two, r("allow to *.onion via socks4a://a:9050,socks4a://b:9050 as tor").unwrap());
        assert_eq!(r("allow user alice via socks4://h:1 as bob").unwrap().user.as_deref(), Some("alice"));
        for text in [
            "allow to 10.0.0.0/8 via socks4://bastion:1080 as relay",
            "allow from 127.0.0.0/8 via socks4://[::1]:1080",
            "allow user bob ident via socks4a://tor_1.example:9050",
        ] {
            assert_eq!(r(text).unwrap().to_string(), text);
        }
        assert_eq!(r("deny via socks4://h:1"), Err(RuleError::RouteOnDeny));
        assert_eq!(r("allow as bob"), Err(RuleError::AsWithoutVia));
        assert_eq!(r("allow via socks4://h:1 as a as b"), Err(RuleError::Duplicate("as".into())));
        for bad in [
            "http://h:1",
            "socks4://h",
            "socks4://h:0",
            "socks4://h:99999",
            "socks4://:1",
            "socks4://::1:1",
            "socks4://[nothost]:1",
            "socks4://a b:1",
            "socks4a://h:1,socks4://h:2",
            "socks4://h:1,",
            "socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1,socks4://h:1",
        ] {
            assert!(matches!(r(&format!("allow via {bad}")), Err(RuleError::BadRoute(_))), "{bad}");
        }
        assert!(!format!("{}", RuleError::BadRoute("x".into())).is_empty());
        let rules =
            Rules::parse("allow to *.onion via socks4a://127.0.0.1:9050\ndeny to *.onion\nallow from 127.0.0.0/8")
                .unwrap();
        assert!(rules.has_routes() && !Rules::parse("allow").unwrap().has_routes());
        let local: IpAddr = [127, 0, 0, 1].into();
        let onion = AccessRequest::new(Command::Connect, 80, b"").with_host("x.ONION");
        let d = rules.decide(local, &onion);
        assert_eq!((d.action, d.rule), (Action::Allow, Some(0)));
        assert_eq!(rules.route(&d), Some(&route));
        let direct = rules.decide(local, &req(Command::Connect, [1, 1, 1, 1], 80, None, b""));
        assert_eq!((direct.action, rules.route(&direct)), (Action::Allow, None));
        let deny = Decision { action: Action::Deny, ident: false, rule: Some(0) };
        assert_eq!(rules.route(&deny), None, "a denial has no route");
        let stale = Decision { action: Action::Allow, ident: false, rule: Some(99) };
        assert_eq!(rules.route(&stale), None);
    }

    #[test]
    fn first_match_wins_and_no_match_denies() {
        let local: IpAddr = [127, 0, 0, 1].into();
        let rules = Rules::parse("deny port 25\nallow from 127.0.0.0/8\n").unwrap();
        assert_eq!(rules.evaluate(local, &req(Command::Connect, [1, 1, 1, 1], 25, None, b"")), Action::Deny);
        assert_eq!(rules.evaluate(local, &req(Command::Connect, [1, 1, 1, 1], 80, None, b"")), Action::Allow);
        assert_eq!(
            rules.evaluate([8, 8, 8, 8].into(), &req(Command::Connect, [1, 1, 1, 1], 80, None, b"")),
            Action::Deny
        );
        assert_eq!(Rules::default().evaluate(local, &req(Command::Bind, [1, 1, 1, 1], 80, None, b"")), Action::Allow);
        assert!(Rules::default().is_empty());
    }
}
