//! PROXY protocol on accept (`--proxy-protocol CIDR`): a connection from a trusted load balancer
//! starts with a PROXY header (v1 or v2, parsed by [`socks4_core::proxy_header`]) naming the
//! original client, which rules, per-client limits, authentication, metrics and the log line then
//! see instead of the balancer.
//!
//! Policy, the same on every adapter:
//! - A source inside a `--proxy-protocol` network **must** send a header: one that sends anything
//!   else is closed (logged `result=no PROXY protocol header ...`); the header must be complete
//!   within the handshake timeout, and the request then gets its own handshake timeout.
//! - A source outside them is an ordinary SOCKS client: a header from it is an invalid request
//!   (reply 91, closed; the log line's result names a likely PROXY header).
//! - v2 `LOCAL` (a balancer's health check, e.g. HAProxy's `check` with `send-proxy-v2`) and a
//!   trusted connection closed before its first byte (a plain TCP check) are closed at once,
//!   sending nothing, and logged at debug only: a check every two seconds would flood the log.
//! - A header without a client address (v1 `UNKNOWN`, v2 for Unix sockets, UDP or `UNSPEC`) is
//!   closed: serving it would make the balancer itself the client, so a rule or limit for the
//!   balancer's address would apply to whoever is behind it.
//! - A header naming a client inside the trusted networks, or the address this host itself
//!   reaches the balancer from, is refused and logged ([`HeaderEnd::Reentry`]): it is this
//!   server (or a balancer) connecting back through the balancer on some client's behalf — a
//!   client that CONNECTs to the balancer's front and sends a SOCKS request inside that tunnel —
//!   and serving it would launder that client: every `from` rule and per-client limit would see
//!   the trusted address instead. (Balancers' own checks use v2 `LOCAL`.) In a pool of several
//!   hosts, one server can still reach another through the balancer from its own address: deny
//!   CONNECTs to the balancer's front in the rules (`deny to FRONT_IP/32 port FRONT_PORT`).
//! - Per-client limits are checked once the header is read, against the original client: the
//!   balancer's own connections count only against `max_connections` (see
//!   [`Limiter::defer`](crate::limits::Limiter::defer)).
//! - Ident cannot ask a client behind a balancer (identd matches the connection by its two
//!   endpoints, and ours is with the balancer): a rule with `ident` replies 92 to such a client,
//!   with a log line saying why ([`ident_through_balancer`]).
//!
//! ```
//! use socks4_server::proxy::{HeaderReader, HeaderStep};
//! let balancer = "10.0.0.2:50000".parse()?;
//! let mut reader = HeaderReader::new(balancer);
//! assert!(matches!(reader.handle_input(b"PROXY TCP4 192.0.2.7 10.0.0.2 40"), HeaderStep::More));
//! let HeaderStep::Client { client, rest } = reader.handle_input(b"000 1080\r\n\x04\x01") else { panic!() };
//! assert_eq!((client.to_string().as_str(), rest), ("192.0.2.7:40000", &b"\x04\x01"[..]));
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use socks4_core::proxy_header::{HeaderError, HeaderParser, HeaderStatus, ProxyHeader};
use socks4_core::rules::{Action, AddrClass, DestMatch, IpNet, PortRange, Rule, Rules};
use socks4_core::{Command, Failure};

pub use crate::config::TrustedProxies;
use crate::log::ConnLine;

/// `rules` behind deny rules for CONNECTs to this server's own listeners when PROXY headers are
/// trusted (else `rules` as they are): a client could otherwise have the server connect to itself
/// and, when its outgoing address is trusted, send a PROXY header naming any client it likes. A
/// listener on a specific address guards that address and port; one on `0.0.0.0`/`::` guards its
/// port on loopback and on the trusted networks (connecting to one of its own addresses, the
/// host uses that address as the source, so only those can pass as a balancer). With no rules,
/// everything else stays allowed.
///
/// ```
/// use socks4_core::{Command, rules::{Action, Rules}, AccessRequest};
/// use socks4_server::proxy::{TrustedProxies, guard_own_listeners};
/// let trusted = TrustedProxies(vec!["127.0.0.1/32".parse().unwrap()]);
/// let rules = guard_own_listeners(&Rules::default(), &["127.0.0.1:1080".parse().unwrap()], &trusted);
/// let to = |port| AccessRequest::new(Command::Connect, port, b"").with_addr([127, 0, 0, 1].into());
/// assert_eq!(rules.decide([127, 0, 0, 1].into(), &to(1080)).action, Action::Deny);
/// assert_eq!(rules.decide([127, 0, 0, 1].into(), &to(80)).action, Action::Allow);
/// ```
pub fn guard_own_listeners(rules: &Rules, listening: &[SocketAddr], trusted: &TrustedProxies) -> Rules {
    if trusted.is_empty() || listening.is_empty() {
        return rules.clone();
    }
    let mut guarded = Vec::new();
    for addr in listening {
        let port = PortRange { first: addr.port(), last: addr.port() };
        let deny = |to| Rule::any(Action::Deny).with_command(Command::Connect).with_to(to).with_port(port);
        let ip = addr.ip().to_canonical();
        if ip.is_unspecified() {
            guarded.push(deny(DestMatch::Class(AddrClass::Loopback)));
            guarded.extend(trusted.0.iter().map(|net| deny(DestMatch::Net(*net))));
        } else if let Some(net) = IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }) {
            guarded.push(deny(DestMatch::Net(net)));
        }
    }
    if rules.is_empty() {
        guarded.push(Rule::any(Action::Allow));
    } else {
        guarded.extend(rules.0.iter().cloned());
    }
    Rules(guarded)
}

/// Reads the PROXY header of one connection from a trusted source; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HeaderReader {
    parser: HeaderParser,
    balancer: SocketAddr,
    /// The trusted networks, which no header may name as its client.
    trusted: TrustedProxies,
}

/// What to do after [`HeaderReader::handle_input`].
#[derive(Debug)]
pub enum HeaderStep<'a> {
    /// Read more (the reader is still within its header).
    More,
    /// The header named `client`; `rest` (possibly empty) is the start of the SOCKS request.
    Client {
        /// The original client.
        client: SocketAddr,
        /// The input's bytes after the header.
        rest: &'a [u8],
    },
    /// Close the connection (sending nothing) and log it with [`HeaderEnd::log`].
    Close(HeaderEnd),
}

/// Why a connection from a trusted source ended before its SOCKS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderEnd {
    /// v2 `LOCAL`: the balancer's health check.
    Local,
    /// Closed before its first byte: a plain TCP health check.
    ClosedAtOnce,
    /// Closed within its header.
    ClosedEarly,
    /// The header did not arrive whole within the handshake timeout.
    TimedOut,
    /// A header naming no client address (v1 `UNKNOWN`, Unix sockets, UDP, `UNSPEC`).
    NoAddress,
    /// Not a (valid) PROXY header.
    Invalid(HeaderError),
    /// The header names a client inside the trusted networks or the address this host reaches
    /// the balancer from: a connection back to us through the balancer, refused (see the
    /// [module docs](self)). (The address is logged at debug when it is read: a variant without
    /// data keeps this type, which connections hold, two bytes.)
    Reentry,
}

impl HeaderEnd {
    /// Whether it was a balancer's health check (logged at debug, not info).
    pub fn is_health_check(self) -> bool {
        matches!(self, Self::Local | Self::ClosedAtOnce)
    }

    /// Writes the connection's log line: at info as `conn client=BALANCER ... result=...`, or at
    /// debug for a health check.
    pub fn log(self, balancer: SocketAddr, elapsed: Duration) {
        let worker = crate::worker::current();
        let line = ConnLine {
            client: balancer,
            request: None,
            result: &self,
            up: 0,
            down: 0,
            elapsed,
            worker,
            reply: None,
            users_file: false,
            out: None,
        };
        if self.is_health_check() {
            tracing::debug!("{line}");
        } else {
            line.log();
        }
    }
}

impl fmt::Display for HeaderEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("PROXY LOCAL (health check)"),
            Self::ClosedAtOnce => f.write_str("closed before a PROXY header (health check)"),
            Self::ClosedEarly => f.write_str("closed within its PROXY header"),
            Self::TimedOut => f.write_str("PROXY header timed out"),
            Self::NoAddress => f.write_str("PROXY header without a client address (UNKNOWN, Unix, UDP): refused"),
            Self::Invalid(HeaderError::NotAHeader) => {
                f.write_str("no PROXY protocol header from a --proxy-protocol source: refused")
            }
            Self::Invalid(e) => write!(f, "{e}: refused"),
            Self::Reentry => f.write_str(
                "PROXY header names a trusted balancer or this host (a connection back through the balancer, \
                 which would launder its client): refused",
            ),
        }
    }
}

impl HeaderReader {
    /// A reader for a connection accepted from `balancer`.
    pub fn new(balancer: SocketAddr) -> Self {
        Self { parser: HeaderParser::new(), balancer, trusted: TrustedProxies::default() }
    }

    /// With the trusted networks (`--proxy-protocol`), which no header may name as its client.
    ///
    /// ```
    /// use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep, TrustedProxies};
    /// let trusted = TrustedProxies(vec!["10.0.0.0/24".parse().unwrap()]);
    /// let mut reader = HeaderReader::new("10.0.0.2:50000".parse()?).trusting(&trusted);
    /// let HeaderStep::Close(end) = reader.handle_input(b"PROXY TCP4 10.0.0.3 10.0.0.2 4000 1080\r\n") else { panic!() };
    /// assert_eq!(end, HeaderEnd::Reentry);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn trusting(mut self, trusted: &TrustedProxies) -> Self {
        self.trusted.clone_from(trusted);
        self
    }

    /// The address the connection came from.
    pub fn balancer(&self) -> SocketAddr {
        self.balancer
    }

    /// Feeds the bytes read; see [`HeaderStep`].
    pub fn handle_input<'a>(&mut self, input: &'a [u8]) -> HeaderStep<'a> {
        match self.parser.handle_input(input) {
            Ok(HeaderStatus::Partial) => HeaderStep::More,
            Ok(HeaderStatus::Done { header: ProxyHeader::Proxy { source, .. }, used }) => {
                // A mapped IPv4 client is an IPv4 client, for rules, limits and the log alike.
                let client = SocketAddr::new(source.ip().to_canonical(), source.port());
                if self.trusted.contains(client.ip()) || is_our_source_toward(client.ip(), self.balancer.ip()) {
                    tracing::debug!(balancer = %self.balancer, "PROXY header names {client}: a re-entry, refused");
                    return HeaderStep::Close(HeaderEnd::Reentry);
                }
                HeaderStep::Client { client, rest: &input[used..] }
            }
            Ok(HeaderStatus::Done { header: ProxyHeader::Local, .. }) => HeaderStep::Close(HeaderEnd::Local),
            Ok(_) => HeaderStep::Close(HeaderEnd::NoAddress), // no client address, or a status to come
            Err(e) => HeaderStep::Close(HeaderEnd::Invalid(e)),
        }
    }

    /// The connection closed (read 0) before the header was whole.
    pub fn handle_eof(&self) -> HeaderEnd {
        if self.parser.started() { HeaderEnd::ClosedEarly } else { HeaderEnd::ClosedAtOnce }
    }
}

/// Is `client` the address this host sends from to reach `balancer` (asked of the kernel's
/// routing, with a UDP socket that is connected and never sends)? Then a header naming it is this
/// host coming back through the balancer.
fn is_our_source_toward(client: std::net::IpAddr, balancer: std::net::IpAddr) -> bool {
    let balancer = balancer.to_canonical();
    if client.is_ipv4() != balancer.is_ipv4() {
        return false;
    }
    let unspecified: std::net::IpAddr = if balancer.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let source = std::net::UdpSocket::bind((unspecified, 0))
        .and_then(|s| s.connect((balancer, 9)).and_then(|()| s.local_addr()))
        .map(|a| a.ip().to_canonical());
    source.is_ok_and(|ip| ip == client)
}

/// The answer to a rule with `ident` for a client that came through a PROXY header: identd
/// cannot be asked (see the [module docs](self)), so the request gets 92. Logs why, at info.
///
/// # Errors
///
/// Always: [`Failure::Unreachable`], so the handshake replies 92.
pub fn ident_through_balancer<T>(client: SocketAddr) -> Result<T, Failure> {
    tracing::info!(%client, "ident cannot ask a client behind a PROXY protocol balancer: reply 92");
    Err(Failure::Unreachable)
}

#[cfg(test)]
mod tests {
    use socks4_core::proxy_header::encode_v2;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn steps() {
        let b = addr("10.0.0.2:5000");
        let mut out = [0u8; 52];
        let n = encode_v2(addr("[::ffff:192.0.2.9]:7"), addr("[::1]:1080"), &mut out);
        match HeaderReader::new(b).handle_input(&out[..n]) {
            HeaderStep::Client { client, rest } => assert_eq!((client, rest), (addr("192.0.2.9:7"), &b""[..])),
            other => panic!("{other:?}"),
        }
        let mut r = HeaderReader::new(b);
        assert_eq!(r.handle_eof(), HeaderEnd::ClosedAtOnce);
        assert!(matches!(r.handle_input(b"PRO"), HeaderStep::More));
        assert_eq!(r.handle_eof(), HeaderEnd::ClosedEarly);
        let cases: [(&[u8], HeaderEnd); 3] = [
            (b"\x04\x01\x00\x50", HeaderEnd::Invalid(HeaderError::NotAHeader)),
            (b"PROXY UNKNOWN\r\n", HeaderEnd::NoAddress),
            (b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", HeaderEnd::Local),
        ];
        for (input, end) in cases {
            match HeaderReader::new(b).handle_input(input) {
                HeaderStep::Close(got) => assert_eq!(got, end),
                other => panic!("{other:?}"),
            }
        }
        assert!(HeaderEnd::Local.is_health_check() && !HeaderEnd::NoAddress.is_health_check());
        assert_eq!(
            HeaderEnd::Invalid(HeaderError::NotAHeader).to_string(),
            "no PROXY protocol header from a --proxy-protocol source: refused"
        );
    }
}
