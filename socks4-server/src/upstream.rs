//! Chaining through parent proxies: the outgoing-connect phase of a request whose rule has a
//! [`Route`] (`allow to *.onion via socks4a://127.0.0.1:9050`), shared by every adapter.
//!
//! The decisions ([`step::Decisions`](crate::step::Decisions)) wire it at these points of the
//! handshake:
//!
//! ```text
//! Output::Resolve:   if forwards_name(rules, client, &hs, users) { hs.forward_name(now) }  // no lookup
//!                    else resolve as before
//! Output::Authorize: (after the users file) if let Via(route) = authorize(&mut hs, now, rules, client,
//!                       users)? { keep it for Connect or Listen }
//! Output::Connect:   with a route: chain::Attempt::connect(.., &route, &target, client, user_id, ..)
//! Output::Listen:    with a route (BIND): chain::Attempt::bind(.., &route, expected_peer, client, user_id, ..)
//! ```
//!
//! Every driver (socks4-std's poller, the async driver on its event loop) performs the
//! [`chain::Attempt`](crate::chain::Attempt)'s I/O with its own sockets; a client that leaves
//! drops the attempt and closes the parent's connection at once. The attempt follows the pieces
//! here: the request ([`connect_request`], [`bind_request`]), the order and health
//! ([`Upstreams::order`], [`Upstreams::record`]) and what a reply means ([`finish_connect`],
//! [`first_bind_reply`], [`second_bind_reply`]); the log line's result ends with `via PARENT`
//! ([`Via`]).
//!
//! Names: with a `socks4a://` route the request is decided on the name alone, *before* any
//! lookup ([`forwards_name`]), and the name goes to the parent unresolved, so a routed `.onion`
//! name never reaches the local resolver. With a `socks4://` route the name is resolved here and
//! the parent gets the address; a request by address goes as an address either way.
//!
//! Failover: the parents are tried in order while one *cannot be reached* (its name does not
//! resolve, the TCP connect is refused, fails or takes longer than the connect timeout, which
//! applies to each parent). Once a parent has accepted the connection the request has been sent
//! to it, and what it says is the answer: a refusal (91/92/93) goes to the client as it is, and a
//! parent that closes, stalls past the timeout or sends a malformed reply gets the client a 91
//! (never a second attempt elsewhere, which could reach the destination twice).
//!
//! BIND: the parent listens for the peer; its first reply (where it listens, its own address when
//! it says `0.0.0.0`) and its second (the peer that connected) are relayed to the client, and a
//! client that leaves ends the parent's wait (closing the connection to it).
//!
//! Health: after [`FAILURES_TO_SKIP`] consecutive failures a parent is skipped for [`SKIP_FOR`]
//! while another parent of the route is available (if all are skipped, they are tried anyway, in
//! order). Only attempts that end count: one dropped because its client left records nothing.
//! [`Upstreams::stats`] gives the counters a metrics exporter can publish.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socks4_core::rules::{ISOLATION_ID_LEN, Parent, Route, Rules};
use socks4_core::{
    AccessRequest, Action, ClientEvent, ClientHandshake, Dest, Failure, Misuse, ReplyCode, ServerHandshake, Target,
};

/// Consecutive failures after which a parent is skipped.
pub const FAILURES_TO_SKIP: u32 = 3;
/// How long a failing parent is skipped.
pub const SKIP_FOR: Duration = Duration::from_secs(30);

/// At [`Output::Resolve`](socks4_core::Output::Resolve): does the rule deciding this CONNECT (or BIND) on
/// its host name alone (no address yet) send it through a `socks4a://` route? Then answer with
/// [`ServerHandshake::forward_name`] instead of resolving it (a BIND is then refused, never looked up: the
/// peer check needs an address the parent would resolve). `users_file`: rules see the user's
/// name, as at `Authorize` (see [`users::named`](crate::users::named)).
///
/// ```
/// use std::time::Duration;
/// use socks4_core::{rules::Rules, Limits, Output, ServerHandshake, Timeouts};
/// use socks4_server::upstream::forwards_name;
/// let rules = Rules::parse("allow to *.onion via socks4a://127.0.0.1:9050\nallow from 127.0.0.0/8")?;
/// let now = Duration::ZERO;
/// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
/// hs.handle_input(now, b"\x04\x01\x00\x50\x00\x00\x00\x01\0duck.onion\0");
/// assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
/// assert!(forwards_name(&rules, [127, 0, 0, 1].into(), &hs, false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn forwards_name(rules: &Rules, client: IpAddr, hs: &ServerHandshake, users_file: bool) -> bool {
    let Some(req) = hs.request() else { return false };
    // A BIND by a name such a route claims is not looked up either: `forward_name` refuses it.
    let Dest::Domain(host) = req.dest else { return false };
    // An address written as a name (`127.0.0.1`, `127.1`, `0x7f000001`, `::1`) is that address:
    // the handshake takes it as resolved, and the address rules and the never-real check see it,
    // as if sent by address (it never gets here; this is the second lock on that door).
    if !rules.has_routes() || socks4_core::rules::numeric_host(host).is_some() {
        return false;
    }
    let by_name = AccessRequest::new(req.command, req.port, req.user_id).with_host(host);
    let by_name = if users_file { crate::users::named(by_name) } else { by_name };
    let decision = rules.decide(client.to_canonical(), &by_name);
    decision.action == Action::Allow && rules.route(&decision).is_some_and(Route::forwards_names)
}

/// The first parent of `rules`' routes that is this server itself: one whose address (or, for a
/// name, one of the addresses it resolves to) reaches a listener on `listen`
/// ([`reaches_listener`](crate::listen::reaches_listener)). Each request on such a route would
/// come back to us and loop until the connect timeout or the fd limit ends it; the config check
/// refuses it ([`ConfigError::RouteToSelf`](crate::ConfigError::RouteToSelf)). Names are looked
/// up only when their port is one of the listen ports; one that does not resolve is let be.
///
/// ```
/// use socks4_core::rules::Rules;
/// use socks4_server::upstream::route_to_self;
/// let listen = ["0.0.0.0:1080".parse()?];
/// let rules = Rules::parse("allow to *.onion via socks4a://127.0.0.1:9050\nallow via socks4://127.0.0.2:1080")?;
/// assert_eq!(route_to_self(&rules, &listen).map(|p| p.to_string()).as_deref(), Some("socks4://127.0.0.2:1080"));
/// assert!(route_to_self(&Rules::parse("allow via socks4://192.0.2.1:1080")?, &listen).is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn route_to_self<'r>(rules: &'r Rules, listen: &[SocketAddr]) -> Option<&'r Parent> {
    let ports: Vec<u16> = listen.iter().map(SocketAddr::port).filter(|&p| p != 0).collect();
    let parents = rules.0.iter().filter_map(|rule| rule.route.as_ref()).flat_map(|route| &route.parents);
    parents.filter(|parent| ports.contains(&parent.port)).find(|parent| {
        let addrs: Vec<SocketAddr> = match parent.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, parent.port)],
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(parent.host.as_str(), parent.port))
                .map(Iterator::collect)
                .unwrap_or_default(),
        };
        addrs.into_iter().any(|addr| crate::listen::reaches_listener(addr, listen))
    })
}

/// What [`authorize`] decided beyond allow/deny.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authorized {
    /// Denied, or allowed to connect (or listen) directly.
    Direct,
    /// Allowed through this route: a CONNECT connects, a BIND listens through a parent (see
    /// [`chain::Attempt`](crate::chain::Attempt)).
    Via(Route),
}

/// Answers [`Output::Authorize`](socks4_core::Output::Authorize) with the rules' decision, like
/// [`ServerHandshake::authorize`], and says where an allowed CONNECT goes. `users_file`: rules see
/// the user's name (see [`users::named`](crate::users::named)); call it after the user id was
/// verified.
///
/// ```
/// use std::time::Duration;
/// use socks4_core::{rules::Rules, Limits, Output, ServerHandshake, Timeouts};
/// use socks4_server::upstream::{authorize, Authorized};
/// let rules = Rules::parse("allow to 10.0.0.0/8 via socks4://127.0.0.1:1081\nallow from 127.0.0.0/8")?;
/// let now = Duration::ZERO;
/// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
/// hs.handle_input(now, b"\x04\x01\x00\x50\x0a\x00\x00\x01\0");
/// let Authorized::Via(route) = authorize(&mut hs, now, &rules, [127, 0, 0, 1].into(), false)? else { panic!() };
/// assert_eq!(route.to_string(), "via socks4://127.0.0.1:1081");
/// assert!(matches!(hs.poll_output(), Output::Connect(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`Misuse`] when the handshake is not waiting for a decision
/// ([`Output::Authorize`](socks4_core::Output::Authorize)).
pub fn authorize(
    hs: &mut ServerHandshake,
    now: Duration,
    rules: &Rules,
    client: IpAddr,
    users_file: bool,
) -> Result<Authorized, Misuse> {
    authorize_by_rule(hs, now, rules, client, users_file).map(|(authorized, _)| authorized)
}

/// [`authorize`], also giving the index of the rule that allowed the request (`None`: denied, or
/// no rules), whose `out` the outgoing connection follows (see [`egress`](crate::egress)).
///
/// # Errors
///
/// As [`authorize`].
pub fn authorize_by_rule(
    hs: &mut ServerHandshake,
    now: Duration,
    rules: &Rules,
    client: IpAddr,
    users_file: bool,
) -> Result<(Authorized, Option<usize>), Misuse> {
    let Some(req) = hs.access_request() else {
        return hs.authorize(now, rules, client).map(|_| (Authorized::Direct, None));
    };
    let req = if users_file { crate::users::named(req) } else { req };
    let decision = rules.decide(client.to_canonical(), &req);
    let route = rules.route(&decision).cloned();
    match (decision.action, route) {
        (Action::Allow, route) => {
            if decision.ident {
                hs.accept_with_ident(now)?
            } else {
                hs.accept(now)?
            }
            Ok((route.map_or(Authorized::Direct, Authorized::Via), decision.rule))
        }
        _ => {
            hs.reject(ReplyCode::Rejected)?;
            Ok((Authorized::Direct, None))
        }
    }
}

/// The destination to ask a parent for, owned (it outlives the handshake's borrow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainTarget {
    /// An address (sent as a SOCKS4 request; IPv6 cannot be sent and gets the client a 91).
    Addr(SocketAddr),
    /// A host name, sent unresolved (SOCKS4a).
    Host(String, u16),
}

impl From<Target<'_>> for ChainTarget {
    fn from(target: Target<'_>) -> Self {
        match target {
            Target::Addr(addr) => Self::Addr(addr),
            Target::Host(host, port) => Self::Host(host.to_owned(), port),
        }
    }
}

/// The request to send to a route's parents for a CONNECT to `target` from the client at `client`:
/// the user id is [`parent_user_id`]'s (the route's `as` user id, else the user name of
/// `client_user_id`, never a token after `:`; with `isolate`, the client's own id); a name goes
/// unresolved, and only on a `socks4a://` route. `Err` (the client's 91) when the request cannot be made: a name on
/// a `socks4://` route (it is resolved before), an IPv6 address, a user id that cannot be sent.
///
/// ```
/// use socks4_server::upstream::{connect_request, ChainTarget};
/// let rule: socks4_core::rules::Rule = "allow via socks4a://127.0.0.1:9050 as tor".parse()?;
/// let route = rule.route.unwrap();
/// let (duck, client) = (ChainTarget::Host("duck.onion".into(), 443), [127, 0, 0, 1].into());
/// let hs = connect_request(&route, &duck, client, b"alice:token").unwrap();
/// assert_eq!(hs.request_bytes(), b"\x04\x01\x01\xbb\x00\x00\x00\x01tor\0duck.onion\0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`Failure::Other`] (the client's 91) when the request cannot be encoded, or for a name on a
/// `socks4://` route (which takes addresses only).
pub fn connect_request(
    route: &Route,
    target: &ChainTarget,
    client: IpAddr,
    client_user_id: &[u8],
) -> Result<ClientHandshake, Failure> {
    let user = &*parent_user_id(route, client, client_user_id);
    let request = match target {
        ChainTarget::Addr(addr) => ClientHandshake::connect_to(Target::Addr(*addr), user),
        ChainTarget::Host(host, port) if route.forwards_names() => ClientHandshake::connect_host(host, *port, user),
        // A `socks4://` route gets addresses only: the name was resolved before.
        ChainTarget::Host(..) => return Err(Failure::Other),
    };
    request.map_err(|_| Failure::Other)
}

/// The request to send to a route's parents for a BIND expecting `expected_peer` from the client
/// at `client` (user id as in [`connect_request`]); `Err` (the client's 91) when it cannot be sent.
///
/// # Errors
///
/// [`Failure::Other`] (the client's 91) when the request cannot be encoded.
pub fn bind_request(
    route: &Route,
    expected_peer: SocketAddrV4,
    client: IpAddr,
    client_user_id: &[u8],
) -> Result<ClientHandshake, Failure> {
    ClientHandshake::bind(expected_peer, &parent_user_id(route, client, client_user_id)).map_err(|_| Failure::Other)
}

/// What a parent's reply to a CONNECT means for the client: the address it reports (for our
/// reply), or its refusal ([`Failure::Rejected`]: its 91/92/93 goes to the client as it is).
///
/// # Errors
///
/// [`Failure::Rejected`] with the parent's code when it refused; [`Failure::Other`] for any other
/// reply.
pub fn finish_connect(event: ClientEvent) -> Result<SocketAddr, Failure> {
    match event {
        ClientEvent::Granted(bound) => Ok(SocketAddr::V4(bound)),
        ClientEvent::Rejected(code) => Err(Failure::Rejected(code)),
        _ => Err(Failure::Other),
    }
}

/// What a parent's first reply to a BIND means for the client: where the parent listens (its own
/// address `parent`, when known, if it says `0.0.0.0`), or its refusal.
///
/// ```
/// use socks4_core::ClientEvent;
/// use socks4_server::upstream::first_bind_reply;
/// let parent = "192.0.2.9:1080".parse().ok();
/// let zeros = ClientEvent::BindListening("0.0.0.0:40000".parse()?);
/// assert_eq!(first_bind_reply(zeros, parent), Ok("192.0.2.9:40000".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`Failure::Rejected`] with the parent's code when it refused; [`Failure::Other`] for any other
/// reply.
pub fn first_bind_reply(event: ClientEvent, parent: Option<SocketAddr>) -> Result<SocketAddr, Failure> {
    match event {
        ClientEvent::BindListening(addr) => {
            let ip = match (addr.ip().is_unspecified(), parent) {
                (true, Some(parent)) => parent.ip(),
                _ => IpAddr::V4(*addr.ip()),
            };
            Ok(SocketAddr::new(ip, addr.port()))
        }
        ClientEvent::Rejected(code) => Err(Failure::Rejected(code)),
        _ => Err(Failure::Other),
    }
}

/// What a parent's second reply to a BIND means for the client: the peer that connected (the
/// handshake checks it), or why not.
///
/// # Errors
///
/// [`Failure::BadAnswer`] for a second first reply, [`Failure::Other`] for a refusal or any other
/// event.
pub fn second_bind_reply(event: ClientEvent) -> Result<SocketAddr, Failure> {
    match event {
        ClientEvent::Granted(peer) => Ok(SocketAddr::V4(peer)),
        ClientEvent::BindListening(_) => Err(Failure::BadAnswer),
        _ => Err(Failure::Other),
    }
}

/// Whether a parent that answered with `result` counts as reached for its health: an answer, even
/// a refusal, does; a parent that closed, stalled or sent a malformed reply does not.
pub(crate) fn reached<T>(result: &Result<T, Failure>) -> bool {
    matches!(result, Ok(_) | Err(Failure::Rejected(_)))
}

/// A connection's log result with the route taken: `ok via socks4a://127.0.0.1:9050`.
///
/// ```
/// use socks4_server::upstream::Via;
/// let parent = "socks4a://127.0.0.1:9050".parse().ok();
/// assert_eq!(Via(&"ok", parent.as_ref()).to_string(), "ok via socks4a://127.0.0.1:9050");
/// assert_eq!(Via(&"ok", None).to_string(), "ok");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Via<'a, R>(pub &'a R, pub Option<&'a Parent>);

impl<R: std::fmt::Display> std::fmt::Display for Via<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(parent) => write!(f, "{} via {parent}", self.0),
            None => self.0.fmt(f),
        }
    }
}

/// Counters of the parents' health, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UpstreamStats {
    /// Connects through a parent that could not be reached (each failed parent counts).
    pub failures: u64,
    /// Times a parent was passed over because it is being skipped.
    pub skips: u64,
    /// Parents being skipped now.
    pub down: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    failures: u32,
    skip_until: Option<Instant>,
}

/// The parents' health, shared by all workers ([`Upstreams::global`]): failures in a row and until
/// when a parent is skipped. Only routed connects touch it.
#[derive(Debug, Default)]
pub struct Upstreams {
    health: Mutex<HashMap<Parent, Health>>,
    failures: AtomicU64,
    skips: AtomicU64,
}

impl Upstreams {
    /// No parent has failed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's registry, which every server of the process (all workers) shares: a
    /// parent's health is the same whichever connection finds it out. A metrics exporter reads
    /// [`stats`](Self::stats) from here.
    pub fn global() -> &'static Arc<Upstreams> {
        static GLOBAL: OnceLock<Arc<Upstreams>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Upstreams::new()))
    }

    /// The route's parents in the order to try them now: those not being skipped first, in the
    /// route's order, then the skipped ones (a last resort when all are down).
    pub fn order<'r>(&self, route: &'r Route, now: Instant) -> Vec<&'r Parent> {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for parent in &route.parents {
            if self.is_skipped(parent, now) { down.push(parent) } else { up.push(parent) }
        }
        if !up.is_empty() {
            self.skips.fetch_add(down.len() as u64, Ordering::Relaxed);
        }
        up.extend(down);
        up
    }

    /// Is `parent` being skipped at `now`?
    pub fn is_skipped(&self, parent: &Parent, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.get(parent).and_then(|h| h.skip_until).is_some_and(|until| now < until)
    }

    /// Records whether `parent` could be reached (an answer, even a refusal, counts as reached).
    pub fn record(&self, parent: &Parent, reached: bool, now: Instant) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if reached {
            health.remove(parent);
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let h = health.entry(parent.clone()).or_default();
        h.failures = h.failures.saturating_add(1);
        if h.failures >= FAILURES_TO_SKIP {
            h.skip_until = Some(now + SKIP_FOR);
        }
    }

    /// The counters, for a metrics exporter.
    pub fn stats(&self) -> UpstreamStats {
        let now = Instant::now();
        let down = {
            let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            health.values().filter(|h| h.skip_until.is_some_and(|u| now < u)).count()
        };
        UpstreamStats {
            failures: self.failures.load(Ordering::Relaxed),
            skips: self.skips.load(Ordering::Relaxed),
            down,
        }
    }
}

/// The user id to send to a route's parents for the client at `client` whose request carried
/// `client_user_id`: without `isolate`, the route's `as` name, else the client's user name (never a
/// token after `:`); with `isolate` (stream isolation, [`Isolate`](socks4_core::rules::Isolate)), an id of the client's own:
/// [`ISOLATION_ID_LEN`] hex digits of a keyed hash of what `isolate` names — the client's address
/// (IPv4-mapped IPv6 as IPv4, an IPv6 address whole), its user name, or both — after `NAME-` when
/// the route has `as NAME`.
///
/// The hash's key is random, made once per process: the parent cannot recover the address or
/// the name from the id, one client keeps its id (and its Tor circuits) for the process's life,
/// reloads included, and two clients get two ids. The id is always a valid SOCKS4 user id (hex
/// digits, after a prefix the rule parser bounds to
/// [`MAX_ISOLATED_PREFIX`](socks4_core::rules::MAX_ISOLATED_PREFIX)).
///
/// ```
/// use socks4_server::upstream::parent_user_id;
/// let rule: socks4_core::rules::Rule = "allow via socks4a://127.0.0.1:9050 as tor isolate client".parse()?;
/// let route = rule.route.unwrap();
/// let one = parent_user_id(&route, [127, 0, 0, 1].into(), b"alice:token");
/// assert!(one.starts_with(b"tor-") && one.len() == 4 + 16);
/// assert_eq!(one, parent_user_id(&route, [127, 0, 0, 1].into(), b"bob"), "by address only");
/// assert_ne!(one, parent_user_id(&route, [127, 0, 0, 2].into(), b"alice:token"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parent_user_id<'a>(route: &'a Route, client: IpAddr, client_user_id: &'a [u8]) -> Cow<'a, [u8]> {
    let name = crate::users::user_name(client_user_id);
    let Some(isolate) = route.isolate else {
        return Cow::Borrowed(route.user.as_deref().map_or(name, str::as_bytes));
    };
    let addr = isolate.by_client().then(|| client.to_canonical());
    let user = isolate.by_user().then_some(name);
    // One key for the process (reloads keep it): SipHash under a random 128-bit key.
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let id = KEY.get_or_init(RandomState::new).hash_one((addr, user));
    let mut out = Vec::with_capacity(route.user.as_ref().map_or(0, |p| p.len() + 1) + ISOLATION_ID_LEN);
    if let Some(prefix) = &route.user {
        out.extend_from_slice(prefix.as_bytes());
        out.push(b'-');
    }
    out.extend_from_slice(format!("{id:0width$x}", width = ISOLATION_ID_LEN).as_bytes());
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        let rule: socks4_core::rules::Rule = text.parse().unwrap();
        rule.route.unwrap()
    }

    #[test]
    fn a_bind_by_a_name_a_socks4a_route_claims_is_refused_unresolved() {
        let rules = Rules::parse("allow to *.onion via socks4a://127.0.0.1:9050\nallow any").unwrap();
        let now = Duration::ZERO;
        let mut hs = ServerHandshake::new(now, socks4_core::Limits::default(), socks4_core::Timeouts::default());
        hs.handle_input(now, b"\x04\x02\x00\x15\x00\x00\x00\x01\0duck.onion\0");
        assert!(matches!(hs.poll_output(), socks4_core::Output::Resolve { .. }));
        assert!(forwards_name(&rules, [127, 0, 0, 1].into(), &hs, false), "the route claims the name");
        hs.forward_name(now).unwrap();
        assert_eq!(hs.poll_output(), socks4_core::Output::Send(socks4_core::Reply::rejected()));
        assert_eq!(hs.poll_output(), socks4_core::Output::Closed(socks4_core::CloseReason::BindByName));
        // A BIND by a name no such route claims is resolved as before.
        let mut other = ServerHandshake::new(now, socks4_core::Limits::default(), socks4_core::Timeouts::default());
        other.handle_input(now, b"\x04\x02\x00\x15\x00\x00\x00\x01\0ftp.example\0");
        assert!(matches!(other.poll_output(), socks4_core::Output::Resolve { .. }));
        assert!(!forwards_name(&rules, [127, 0, 0, 1].into(), &other, false));
    }

    fn handshake(request: &[u8]) -> ServerHandshake {
        let now = Duration::ZERO;
        let mut hs = ServerHandshake::new(now, socks4_core::Limits::default(), socks4_core::Timeouts::default());
        hs.handle_input(now, request);
        hs
    }

    #[test]
    fn only_names_routed_to_socks4a_skip_the_lookup() {
        let rules = Rules::parse(
            "allow user alice to *.onion via socks4a://127.0.0.1:9050\n\
             allow to *.corp via socks4://127.0.0.1:1080\n\
             allow from 127.0.0.0/8",
        )
        .unwrap();
        let local: IpAddr = [127, 0, 0, 1].into();
        let by_name = |host: &str, user: &str, cmd: u8| {
            let mut req = vec![4, cmd, 0, 80, 0, 0, 0, 1];
            req.extend_from_slice(user.as_bytes());
            req.push(0);
            req.extend_from_slice(host.as_bytes());
            req.push(0);
            handshake(&req)
        };
        assert!(forwards_name(&rules, local, &by_name("duck.onion", "alice", 1), false));
        assert!(!forwards_name(&rules, local, &by_name("duck.onion", "bob", 1), false), "another user: direct");
        assert!(!forwards_name(&rules, local, &by_name("duck.onion", "alice:tok", 1), false));
        assert!(forwards_name(&rules, local, &by_name("duck.onion", "alice:tok", 1), true), "users file: the name");
        assert!(!forwards_name(&rules, local, &by_name("intranet.corp", "alice", 1), false), "socks4: resolve here");
        assert!(forwards_name(&rules, local, &by_name("duck.onion", "alice", 2), false), "BIND: refused, not resolved");
        assert!(!forwards_name(&rules, local, &handshake(b"\x04\x01\x00\x50\x0a\x00\x00\x01\0"), false));
        assert!(!forwards_name(&Rules::default(), local, &by_name("duck.onion", "alice", 1), false));
        assert!(forwards_name(&rules, local, &by_name("duck.onion.", "alice", 1), false), "a trailing dot");
        // An address written as a name is resolved (to itself): address rules and the never-real
        // check see it.
        let any = Rules::parse("deny to loopback\nallow via socks4a://127.0.0.1:9050").unwrap();
        assert!(forwards_name(&any, local, &by_name("example.com", "", 1), false));
        for literal in ["127.0.0.1", "0.0.0.0", "::1", "::ffff:127.0.0.1"] {
            assert!(!forwards_name(&any, local, &by_name(literal, "", 1), false), "{literal}");
        }

        let mut bind = handshake(b"\x04\x02\x00\x50\x0a\x00\x00\x01\0");
        let routed = Rules::parse("allow via socks4://127.0.0.1:1080").unwrap();
        assert!(matches!(authorize(&mut bind, Duration::ZERO, &routed, local, false), Ok(Authorized::Via(_))));
        assert!(matches!(bind.poll_output(), socks4_core::Output::Listen { .. }));
        let mut denied = handshake(b"\x04\x01\x00\x50\x0a\x00\x00\x01\0");
        let deny = Rules::parse("deny any").unwrap();
        assert_eq!(authorize(&mut denied, Duration::ZERO, &deny, local, false), Ok(Authorized::Direct));
        assert!(matches!(denied.poll_output(), socks4_core::Output::Send(r) if r.code == ReplyCode::Rejected));
        assert!(authorize(&mut denied, Duration::ZERO, &deny, local, false).is_err(), "answered already");
    }

    #[test]
    fn what_replies_mean() {
        let a = SocketAddrV4::new([192, 0, 2, 1].into(), 80);
        assert_eq!(finish_connect(ClientEvent::Granted(a)), Ok(a.into()));
        assert_eq!(
            finish_connect(ClientEvent::Rejected(ReplyCode::IdentMismatch)),
            Err(Failure::Rejected(ReplyCode::IdentMismatch))
        );
        assert_eq!(first_bind_reply(ClientEvent::BindListening(a), None), Ok(a.into()), "an address stays");
        assert_eq!(
            first_bind_reply(ClientEvent::Rejected(ReplyCode::Rejected), None),
            Err(Failure::Rejected(ReplyCode::Rejected))
        );
        assert_eq!(second_bind_reply(ClientEvent::Granted(a)), Ok(a.into()));
        assert_eq!(second_bind_reply(ClientEvent::Rejected(ReplyCode::Rejected)), Err(Failure::Other));
        assert_eq!(second_bind_reply(ClientEvent::BindListening(a)), Err(Failure::BadAnswer));
        let r = route("allow via socks4://127.0.0.1:1");
        let host = ChainTarget::Host("a.example".into(), 80);
        assert_eq!(connect_request(&r, &host, [127, 0, 0, 1].into(), b"").err(), Some(Failure::Other));
    }

    #[test]
    fn isolation_gives_each_client_its_own_id() {
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let by_client = route("allow via socks4a://127.0.0.1:9050 isolate client");
        let id = parent_user_id(&by_client, a, b"alice:tok");
        assert_eq!(id.len(), ISOLATION_ID_LEN);
        assert!(id.iter().all(u8::is_ascii_hexdigit) && !id.windows(9).any(|w| w == b"127.0.0.1"));
        assert_eq!(id, parent_user_id(&by_client, a, b"alice:other"), "the same client, the same id");
        assert_eq!(id, parent_user_id(&by_client, "::ffff:127.0.0.1".parse().unwrap(), b""), "mapped is IPv4");
        assert_ne!(id, parent_user_id(&by_client, b, b"alice:tok"));
        let by_user = route("allow via socks4a://127.0.0.1:9050 as tor isolate user");
        let alice = parent_user_id(&by_user, a, b"alice:tok");
        assert!(alice.starts_with(b"tor-") && alice.len() == 4 + ISOLATION_ID_LEN && !alice.ends_with(b"alice"));
        assert_eq!(alice, parent_user_id(&by_user, b, b"alice:other"), "the name, never the token");
        assert_ne!(alice, parent_user_id(&by_user, a, b"bob:tok"));
        let both = route("allow via socks4a://127.0.0.1:9050 isolate client,user");
        let ids =
            [(a, &b"alice"[..]), (b, b"alice"), (a, b"bob")].map(|(ip, u)| parent_user_id(&both, ip, u).into_owned());
        assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2]);
        let plain = route("allow via socks4a://127.0.0.1:9050");
        assert_eq!(&*parent_user_id(&plain, a, b"alice:tok"), b"alice", "no isolation: as before");
    }

    #[test]
    fn a_failing_parent_is_skipped_for_a_while() {
        let r = route("allow via socks4a://a.invalid:1,socks4a://b.invalid:1");
        let (a, b) = (&r.parents[0], &r.parents[1]);
        let ups = Upstreams::new();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_SKIP - 1 {
            ups.record(a, false, t0);
        }
        assert_eq!(ups.order(&r, t0), [a, b]);
        ups.record(a, false, t0);
        assert!(ups.is_skipped(a, t0));
        assert_eq!(ups.order(&r, t0), [b, a], "skipped: last");
        assert_eq!(ups.order(&r, t0 + SKIP_FOR), [a, b], "until the time is up");
        for _ in 0..FAILURES_TO_SKIP {
            ups.record(b, false, t0);
        }
        assert_eq!(ups.order(&r, t0), [a, b], "all down: tried in order anyway");
        ups.record(a, true, t0);
        assert!(!ups.is_skipped(a, t0));
        let stats = ups.stats();
        assert_eq!((stats.failures, stats.skips), (6, 1));
    }
}
