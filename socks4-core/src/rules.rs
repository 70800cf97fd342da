//! Access rules: plain data, evaluated in order, first match wins.
//!
//! The text form, one rule per line (the config file and the `--allow`/`--deny` options use it):
//!
//! ```text
//! allow|deny [from CIDR] [to CIDR|HOST-PATTERN] [port N|N-M] [command connect|bind] [user NAME]
//! allow|deny any
//! ```
//!
//! `from` matches the client's address (IPv4 or IPv6), `to` the destination: a network matches the
//! destination address (for SOCKS4a, the address the name resolved to), a host pattern (`example.com`,
//! `*.example.com`, `*`) matches a SOCKS4a host name, case-insensitively. A rule with no conditions
//! matches everything. With rules present, a request no rule matches is denied.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddrV4};
use core::str::FromStr;

use crate::request::Command;

/// What a rule does with a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// CONNECT or BIND.
    pub command: Command,
    /// The destination (CONNECT) or the expected peer (BIND), with the requested port.
    pub addr: SocketAddrV4,
    /// The SOCKS4a host name the address came from, if any.
    pub host: Option<&'a str>,
    /// The user id the client sent.
    pub user_id: &'a [u8],
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
    /// Does the pattern match `host` (ASCII case-insensitive)?
    pub fn matches(&self, host: &str) -> bool {
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
        let body = s.strip_prefix("*.").unwrap_or(if s == "*" { "" } else { s });
        let valid =
            s == "*" || (!body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if valid { Ok(Self(s.to_ascii_lowercase())) } else { Err(RuleError::BadHostPattern(s.to_string())) }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a request goes: a network or a host-name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestMatch {
    /// The destination address lies in this IPv4 network.
    Net(IpNet),
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

/// One access rule: an action and the conditions (all must hold) under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

impl Rule {
    /// A rule with the action and no conditions: it matches every request.
    pub const fn any(action: Action) -> Self {
        Self { action, from: None, to: None, port: None, command: None, user: None }
    }

    /// Do all of the rule's conditions hold for this client and request?
    pub fn matches(&self, client: IpAddr, req: &AccessRequest<'_>) -> bool {
        self.from.is_none_or(|net| net.contains(client))
            && self.to.as_ref().is_none_or(|to| match to {
                DestMatch::Net(net) => net.contains(IpAddr::V4(*req.addr.ip())),
                DestMatch::Host(pat) => req.host.is_some_and(|h| pat.matches(h)),
            })
            && self.port.is_none_or(|p| p.contains(req.addr.port()))
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
        while let Some(key) = words.next() {
            let value = words.next().ok_or_else(|| RuleError::MissingValue(key.to_string()))?;
            let duplicate = match key {
                "from" => rule.from.replace(value.parse()?).is_some(),
                "to" => {
                    let to = match value.parse::<IpNet>() {
                        Ok(net) if net.addr.is_ipv4() => DestMatch::Net(net),
                        Ok(_) => return Err(RuleError::BadNetwork(value.to_string())),
                        Err(_) if value.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/') => {
                            return Err(RuleError::BadNetwork(value.to_string()));
                        }
                        Err(_) => DestMatch::Host(value.parse()?),
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
                _ => return Err(RuleError::UnknownKey(key.to_string())),
            };
            if duplicate {
                return Err(RuleError::Duplicate(key.to_string()));
            }
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
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{rules::{AccessRequest, Action, Rules}, Command};
    /// let rules = Rules::parse("deny user mallory\nallow from 127.0.0.0/8  # local clients\n")?;
    /// let req = AccessRequest { command: Command::Connect, addr: SocketAddrV4::new([10, 0, 0, 1].into(), 80), host: None, user_id: b"alice" };
    /// assert_eq!(rules.evaluate([127, 0, 0, 1].into(), &req), Action::Allow);
    /// assert_eq!(rules.evaluate([192, 0, 2, 1].into(), &req), Action::Deny);
    /// # Ok::<(), socks4_core::rules::RuleError>(())
    /// ```
    pub fn evaluate(&self, client: IpAddr, req: &AccessRequest<'_>) -> Action {
        if self.0.is_empty() {
            return Action::Allow;
        }
        self.0.iter().find(|r| r.matches(client, req)).map_or(Action::Deny, |r| r.action)
    }

    /// Parses rules one per line; blank lines and `#` comments are skipped. Errors name the line.
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

/// A rule's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule is empty.
    Empty,
    /// The first word is not `allow` or `deny`.
    BadAction(String),
    /// A condition keyword is not one of `from`, `to`, `port`, `command`, `user`.
    UnknownKey(String),
    /// A condition keyword has no value after it.
    MissingValue(String),
    /// A condition appears twice.
    Duplicate(String),
    /// Not an IP network (`to` takes IPv4 networks only).
    BadNetwork(String),
    /// Not a port or port range.
    BadPort(String),
    /// Not `connect` or `bind`.
    BadCommand(String),
    /// Not a host pattern (`*`, `*.example.com`, `example.com`).
    BadHostPattern(String),
    /// The error is on this line (1-based) of a multi-line text.
    Line(usize, alloc::boxed::Box<RuleError>),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty rule: write `allow ...` or `deny ...`"),
            Self::BadAction(w) => write!(f, "rule starts with `{w}`, expected `allow` or `deny`"),
            Self::UnknownKey(w) => write!(f, "unknown condition `{w}` (use from, to, port, command, user)"),
            Self::MissingValue(w) => write!(f, "condition `{w}` has no value"),
            Self::Duplicate(w) => write!(f, "condition `{w}` given twice"),
            Self::BadNetwork(w) => write!(f, "`{w}` is not a network like 10.0.0.0/8 (`to` takes IPv4 only)"),
            Self::BadPort(w) => write!(f, "`{w}` is not a port or a range like 80-443"),
            Self::BadCommand(w) => write!(f, "`{w}` is not a command (connect or bind)"),
            Self::BadHostPattern(w) => write!(f, "`{w}` is not a host pattern like *.example.com"),
            Self::Line(n, e) => write!(f, "line {n}: {e}"),
        }
    }
}

impl core::error::Error for RuleError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    fn req<'a>(command: Command, ip: [u8; 4], port: u16, host: Option<&'a str>, user: &'a [u8]) -> AccessRequest<'a> {
        AccessRequest { command, addr: SocketAddrV4::new(ip.into(), port), host, user_id: user }
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
        assert!(matches!(e("allow via x"), RuleError::UnknownKey(_)));
        assert!(matches!(e("allow from"), RuleError::MissingValue(_)));
        assert!(matches!(e("allow port 1 port 2"), RuleError::Duplicate(_)));
        assert!(matches!(e("allow from 10.0.0.0/33"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow from nonsense"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow to ::1"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow to 10.0.0.256"), RuleError::BadNetwork(_)));
        assert!(matches!(e("allow port 70000"), RuleError::BadPort(_)));
        assert!(matches!(e("allow port 9-1"), RuleError::BadPort(_)));
        assert!(matches!(e("allow command udp"), RuleError::BadCommand(_)));
        assert!(matches!(e("allow to bad_host!"), RuleError::BadHostPattern(_)));
        assert!(matches!(e("allow to *."), RuleError::BadHostPattern(_)));
        for err in [e(""), e("permit"), e("allow via x"), e("allow from"), e("allow port 1 port 2"), e("allow to ::1")]
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
