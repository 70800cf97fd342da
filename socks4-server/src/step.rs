//! The per-connection decisions between the handshake's outputs and the I/O, sans IO: what a
//! driver does next ([`Step`]), given the handshake's [`Output`], the connection's config snapshot
//! and what it decided so far ([`Decisions`]). Every driver asks [`Decisions::next`] and only
//! *performs* the step it gets (writes the reply, resolves, connects, listens, drives a chained
//! [`Attempt`], relays, closes); what is pure policy is applied to the handshake here:
//!
//! - `Resolve`: a CONNECT by name routed to a `socks4a://` parent ([`upstream::forwards_name`]) is
//!   forwarded unresolved (a BIND by such a name refused, unresolved); otherwise [`Step::Resolve`];
//! - `Authorize`: with a users file, the user id is checked first ([`Verifier::check_cached`]; a
//!   miss is [`Step::VerifyUser`] for the verifier's threads, answered with
//!   [`Decisions::user_checked`]); a refusal is logged and answered ([`users::refuse`]); then
//!   the rules decide ([`upstream::authorize`]) and a route is kept;
//! - `Resolve` answered ([`Decisions::resolved`]): the addresses ordered for Happy Eyeballs
//!   ([`eyeballs::order`](crate::eyeballs::order)), the first one the rules allow handed to the handshake;
//! - `Connect`: through the route's parents ([`Step::Chain`]), directly ([`Step::Connect`]), or
//!   for a name with several addresses the rules allow, racing them ([`Step::Race`]);
//! - `Listen` (BIND): the BIND-wait slot is taken ([`Admission::start_bind_wait`]; over the limit,
//!   91), then through the route's parents ([`Step::Chain`]) or directly ([`Step::Listen`]);
//! - `Ident`: for a client behind a PROXY header answered at once
//!   ([`proxy::ident_through_balancer`]), otherwise [`Step::Ident`];
//! - `Send`: the handshake slot is freed ([`Admission::handshake_done`]), then [`Step::Send`].
//!
//! A driver's loop, in outline (an async one awaits each step inline; socks4-std's poller
//! starts it and comes back on the answer):
//!
//! ```text
//! loop match decisions.next(&mut hs, &mut admission, &Context { config, verifier, client, .. })? {
//!     Send(reply)              => write it (meter.replied)
//!     Resolve { host, port }   => lookup → decisions.resolved(&mut hs, &cx, addresses)
//!     VerifyUser { .. }        => verifier.verify(client, user_id) (await or notify) → decisions.user_checked
//!     Ident                    => ask identd → hs.handle_ident
//!     Connect(addr)            => connect → hs.handle_connected
//!     Race(race)               => perform race.poll()'s RaceIo until Won or Failed → hs.handle_connected
//!     Chain(attempt)           => perform attempt.poll()'s Io until each Answer → answer.apply(&mut hs)
//!     Listen                   => listen → hs.handle_listening, accept → hs.handle_bind_peer
//!     Wait { deadline }        => wait for the client, an answer or the deadline (hs.handle_timeout)
//!     Relay                    => relay;  Closed(reason) => linger, log
//! }
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use socks4_server::limits::{ClientLimits, Limiter};
//! use socks4_server::step::{Context, Decisions, Step};
//! use socks4_server::{ServerConfig, upstream::Upstreams};
//! let config = ServerConfig::default();
//! let (now, at, client) = (Duration::ZERO, Instant::now(), std::net::SocketAddr::from(([127, 0, 0, 1], 5000)));
//! let mut admission = Limiter::new(ClientLimits::default(), at).admit(client.ip(), at).unwrap();
//! let upstreams = Arc::new(Upstreams::new());
//! let cx = Context { config: &config, verifier: None, client, proxied: false, upstreams: &upstreams, now, at };
//! let mut hs = config.handshake(now);
//! hs.handle_input(now, b"\x04\x01\x00\x50\x7f\x00\x00\x01\0");
//! let mut decisions = Decisions::default();
//! assert_eq!(decisions.next(&mut hs, &mut admission, &cx)?, Step::Connect("127.0.0.1:80".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socks4_core::rules::{AccessRequest, Action, Route, is_forbidden_destination};
use socks4_core::{CloseReason, Command, Dest, Failure, Misuse, Output, Reply, ReplyCode, Request, ServerHandshake};

use crate::ServerConfig;
use crate::chain::Attempt;
use crate::egress::{Egress, Outgoing};
use crate::eyeballs::{Lookup, Race};
use crate::limits::Admission;
use crate::proxy;
use crate::upstream::{self, Authorized, ChainTarget, Upstreams};
use crate::users::{self, AuthError, Verifier};

/// What the decisions read about the connection, lent for one [`Decisions::next`] call.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The config the connection runs with (its snapshot's).
    pub config: &'a ServerConfig,
    /// The users file's verifier (the snapshot's), if any.
    pub verifier: Option<&'a Arc<Verifier>>,
    /// The client: the peer, or the one a trusted balancer's PROXY header named.
    pub client: SocketAddr,
    /// Whether the client came through a PROXY header (identd cannot be asked).
    pub proxied: bool,
    /// The parents' health (the process's: [`Upstreams::global`]).
    pub upstreams: &'a Arc<Upstreams>,
    /// The handshake's clock now.
    pub now: Duration,
    /// The wall clock now (limits, parents' health and deadlines).
    pub at: Instant,
}

/// What the driver does next (see the [module docs](self)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// Write this reply to the client.
    Send(Reply),
    /// Look up the SOCKS4a name (within the connect timeout); answer with
    /// [`Decisions::resolved`].
    Resolve {
        /// The name.
        host: String,
        /// The requested port.
        port: u16,
    },
    /// Check the user id against the users file off the event loop ([`Verifier::verify`], on the
    /// verifier's threads; keep its [`Verification`](crate::users::Verification) while waiting:
    /// dropping it withdraws the check); answer with [`Decisions::user_checked`].
    VerifyUser {
        /// The verifier.
        verifier: Arc<Verifier>,
        /// The client's user id.
        user_id: Box<[u8]>,
    },
    /// Ask the client's identd (within the ident timeout); answer with
    /// [`ServerHandshake::handle_ident`].
    Ident,
    /// Connect directly to this address; answer with [`ServerHandshake::handle_connected`].
    Connect(SocketAddr),
    /// Connect directly to one of a name's addresses, racing them (Happy Eyeballs, see
    /// [`eyeballs`](crate::eyeballs); every address in it is authorized): perform each
    /// [`RaceIo`](crate::eyeballs::RaceIo) of [`Race::poll`] until it is `Won` (close the other
    /// attempts, answer [`ServerHandshake::handle_connected`] with the winner's local address)
    /// or `Failed` (answer with the failure).
    Race(Box<Race>),
    /// Connect (or BIND) through the route's parents: drive the attempt and give each of its
    /// answers to the handshake ([`Answer::apply`](crate::chain::Answer::apply)).
    Chain(Box<Attempt>),
    /// BIND directly: listen on the address the client reached us on (the BIND-wait slot is
    /// held); answer with [`ServerHandshake::handle_listening`], then accept one peer and answer
    /// with [`ServerHandshake::handle_bind_peer`].
    Listen,
    /// Relay both ways.
    Relay,
    /// Wait for input, an answer, or the deadline ([`ServerHandshake::handle_timeout`]).
    Wait {
        /// When the current phase times out, on the handshake's clock.
        deadline: Option<Duration>,
    },
    /// Close (after writing the replies sent; then drain the client: [`linger`](crate::linger)).
    Closed(CloseReason),
}

impl PartialEq for Step {
    /// Steps compare by kind and data; two [`Chain`](Step::Chain) steps are equal when they
    /// answer the same question (for tests).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Send(a), Self::Send(b)) => a == b,
            (Self::Resolve { host: a, port: p }, Self::Resolve { host: b, port: q }) => a == b && p == q,
            (Self::VerifyUser { user_id: a, .. }, Self::VerifyUser { user_id: b, .. }) => a == b,
            (Self::Connect(a), Self::Connect(b)) => a == b,
            (Self::Race(a), Self::Race(b)) => a.addrs() == b.addrs(),
            (Self::Chain(_), Self::Chain(_))
            | (Self::Ident, Self::Ident)
            | (Self::Listen, Self::Listen)
            | (Self::Relay, Self::Relay) => true,
            (Self::Wait { deadline: a }, Self::Wait { deadline: b }) => a == b,
            (Self::Closed(a), Self::Closed(b)) => a == b,
            _ => false,
        }
    }
}

/// Where the users-file check of the request's user id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum UserCheck {
    #[default]
    Todo,
    /// On the blocking pool.
    Pending,
    /// Passed just now: the embedder's check saw this `Authorize` before the users file.
    Verified,
    Passed,
}

/// What one connection decided so far: the users-file check, the route and index of the rule
/// that allowed it, and a name's further addresses. Small (a direct connection pays three words);
/// keep it with the connection and ask [`next`](Self::next) after each input.
#[derive(Debug)]
pub struct Decisions {
    user: UserCheck,
    /// The request was counted (protocol) and, under `--warn-unsafe-socks`, looked at.
    noted: bool,
    /// The index of the rule that allowed the request, for its `out`; [`NO_RULE`] before (or
    /// without) one. A `u32`: the whole stays two words.
    rule: u32,
    route: Option<Box<Route>>,
    /// A name's addresses beyond the first, for a race at `Connect`.
    lookup: Option<Box<Lookup>>,
}

/// [`Decisions::rule`] before a rule allowed the request.
const NO_RULE: u32 = u32::MAX;

impl Default for Decisions {
    fn default() -> Self {
        Self { user: UserCheck::Todo, noted: false, rule: NO_RULE, route: None, lookup: None }
    }
}

impl Decisions {
    /// Applies the handshake's pure decisions and returns the next step to perform.
    ///
    /// # Errors
    /// A misuse of the handshake (a bug, never the peer's doing): end the connection with it.
    pub fn next(
        &mut self,
        hs: &mut ServerHandshake,
        admission: &mut Admission,
        cx: &Context<'_>,
    ) -> Result<Step, Misuse> {
        self.next_checked(hs, admission, cx, &mut |_| Ok(()))
    }

    /// [`next`](Self::next), with an embedder's `check` asked at each `Authorize`, before the users
    /// file and the rules (once per request it sees: a name's next address is a new one):
    /// `Err(code)` rejects the request with `code` (a `Granted` there counts as `Rejected`).
    ///
    /// # Errors
    /// A misuse of the handshake, as [`next`](Self::next).
    pub fn next_checked(
        &mut self,
        hs: &mut ServerHandshake,
        admission: &mut Admission,
        cx: &Context<'_>,
        check: &mut dyn FnMut(&AccessRequest<'_>) -> Result<(), ReplyCode>,
    ) -> Result<Step, Misuse> {
        let users_file = cx.verifier.is_some();
        if !self.noted {
            if let Some(req) = hs.request() {
                self.noted = true;
                note_request(&req, cx);
            }
        }
        loop {
            let output = hs.poll_output();
            let (host, port) = match output {
                Output::Send(reply) => {
                    // The (first) reply is out: a BIND waiting for its peer holds no handshake slot.
                    admission.handshake_done();
                    return Ok(Step::Send(reply));
                }
                Output::Relay => return Ok(Step::Relay),
                Output::Wait { deadline } => return Ok(Step::Wait { deadline }),
                Output::Closed(reason) => {
                    admission.handshake_done();
                    return Ok(Step::Closed(reason));
                }
                Output::Resolve { host, port } => (host.to_owned(), port),
                Output::Authorize(_) => {
                    if let Some(step) = self.authorize(hs, cx, check)? {
                        return Ok(step);
                    }
                    continue;
                }
                Output::Connect(target) => {
                    let target = ChainTarget::from(target);
                    match (&self.route, target) {
                        (Some(route), target) => {
                            let user_id = hs.request().map_or(&[][..], |r| r.user_id);
                            let timeout = cx.config.timeouts.connect;
                            let (ups, client) = (Arc::clone(cx.upstreams), cx.client.ip());
                            match Attempt::connect(ups, route, &target, client, user_id, timeout, cx.at) {
                                Ok(attempt) => return Ok(Step::Chain(Box::new(attempt))),
                                Err(failure) => hs.handle_connected(cx.now, Err(failure))?,
                            }
                        }
                        (None, ChainTarget::Addr(addr)) => {
                            let Some(lookup) = self.lookup.take() else { return Ok(Step::Connect(addr)) };
                            let addrs = race_addrs(hs, cx, check, addr, &lookup, self.rule());
                            if addrs.len() < 2 {
                                return Ok(Step::Connect(addr));
                            }
                            let left = hs.deadline().map_or(cx.config.timeouts.connect, |d| d.saturating_sub(cx.now));
                            let stagger = cx.config.names.connect_stagger;
                            return Ok(Step::Race(Box::new(Race::new(addrs, stagger, cx.at, cx.at + left))));
                        }
                        // Names are forwarded only through a route (at `Resolve`).
                        (None, ChainTarget::Host(..)) => hs.handle_connected(cx.now, Err(Failure::Other))?,
                    }
                    continue;
                }
                Output::Listen { expected_peer } => {
                    // Through a parent too, a BIND waits like one here: it takes a BIND-wait slot.
                    if admission.start_bind_wait(cx.at).is_err() {
                        // Counted and summarised by the limiter; the client gets 91.
                        hs.handle_listening(cx.now, Err(Failure::OverLimit))?;
                        continue;
                    }
                    let Some(route) = &self.route else { return Ok(Step::Listen) };
                    let (peer, user_id) = match hs.request() {
                        Some(r) => (SocketAddr::new(expected_peer, r.port), r.user_id),
                        None => (SocketAddr::new(expected_peer, 0), &[][..]),
                    };
                    let timeouts = (cx.config.timeouts.connect, cx.config.timeouts.bind);
                    match Attempt::bind(Arc::clone(cx.upstreams), route, peer, cx.client.ip(), user_id, timeouts, cx.at)
                    {
                        Ok(attempt) => return Ok(Step::Chain(Box::new(attempt))),
                        Err(failure) => hs.handle_listening(cx.now, Err(failure))?,
                    }
                    continue;
                }
                Output::Ident if cx.proxied => {
                    hs.handle_ident(cx.now, proxy::ident_through_balancer(cx.client))?;
                    continue;
                }
                Output::Ident => return Ok(Step::Ident),
                _ => return Err(Misuse::new("Decisions::next (an output it does not know)")),
            };
            if upstream::forwards_name(&cx.config.rules, cx.client.ip(), hs, users_file) {
                // Routed to a SOCKS4a parent: the name goes there unresolved.
                hs.forward_name(cx.now)?;
                continue;
            }
            return Ok(Step::Resolve { host, port });
        }
    }

    /// The answer to [`Step::Resolve`]: the lookup's addresses (or its error). They are ordered
    /// for Happy Eyeballs ([`eyeballs::order`](crate::eyeballs::order), by the config's
    /// `prefer`), the first one the rules allow goes to the handshake
    /// ([`ServerHandshake::handle_resolved`], which authorizes it), and the others are kept for a
    /// race at `Connect` (each authorized there before it is tried). Returns whether the lookup
    /// gave an address (for the metrics); ask [`next`](Self::next) again.
    ///
    /// # Errors
    /// If the handshake was not asking for a lookup (it timed out meanwhile): nothing to do.
    pub fn resolved(
        &mut self,
        hs: &mut ServerHandshake,
        cx: &Context<'_>,
        found: io::Result<Vec<SocketAddr>>,
    ) -> Result<bool, Misuse> {
        let mut lookup = Lookup::new(found, cx.config.names.prefer);
        // The handshake refuses the name if the first address it sees is denied: give it the
        // first one the rules allow (an IPv4-only allow rule still lets a dual-stack name through
        // by its IPv4 address). The rules are asked again, with every other check, at `Authorize`.
        if let Some(ip) = lookup.addrs().iter().copied().find(|&ip| rules_allow(hs, cx, ip).is_some()) {
            lookup.put_first(ip);
        }
        let first = lookup.first();
        hs.handle_resolved(cx.now, first)?;
        self.lookup = (lookup.addrs().len() > 1).then(|| Box::new(lookup));
        Ok(first.is_ok())
    }

    /// The users file's verdict on the user id ([`Step::VerifyUser`]); ask [`next`](Self::next)
    /// again. A refusal is logged and answered (91 when the pool was busy, 93 otherwise).
    ///
    /// # Errors
    /// If the handshake was not asking any more (it timed out meanwhile): nothing to do.
    pub fn user_checked(
        &mut self,
        hs: &mut ServerHandshake,
        verdict: Result<(), AuthError>,
        client: SocketAddr,
    ) -> Result<(), Misuse> {
        if self.user != UserCheck::Pending {
            return Ok(());
        }
        match verdict {
            Ok(()) => {
                self.user = UserCheck::Verified;
                Ok(())
            }
            Err(e) => {
                self.user = UserCheck::Todo;
                users::refuse(hs, client, e)
            }
        }
    }

    /// Whether a users-file check is on the blocking pool.
    pub fn user_pending(&self) -> bool {
        self.user == UserCheck::Pending
    }

    /// The index (in the snapshot's `config.rules`) of the rule that allowed the request, once
    /// one did: its `out` says where the outgoing connection leaves from.
    pub fn rule(&self) -> Option<usize> {
        (self.rule != NO_RULE).then_some(self.rule as usize)
    }

    /// How this connection's outgoing sockets are made ([`Step::Connect`], and a
    /// [`Step::Chain`]'s connects to parents): the source the allowing rule's `out` or the
    /// server's `outgoing` names, from the snapshot's `egress`. `arrived_on`: the address the
    /// client connected to (asked only for `out same`).
    pub fn outgoing<'e>(&self, egress: &'e Egress, arrived_on: impl FnOnce() -> Option<IpAddr>) -> Outgoing<'e> {
        Outgoing::new(egress, self.rule(), arrived_on)
    }

    /// At `Authorize`: the embedder's check, the users file, then the rules; `Some(step)` when the
    /// driver has work.
    fn authorize(
        &mut self,
        hs: &mut ServerHandshake,
        cx: &Context<'_>,
        check: &mut dyn FnMut(&AccessRequest<'_>) -> Result<(), ReplyCode>,
    ) -> Result<Option<Step>, Misuse> {
        let Some(req) = hs.access_request() else {
            return Err(Misuse::new("Decisions::next (authorize without a request)"));
        };
        match self.user {
            // The verdict is on its way; the handshake's deadline bounds the wait.
            UserCheck::Pending => return Ok(Some(Step::Wait { deadline: hs.deadline() })),
            // The check saw this request before its verification.
            UserCheck::Verified => self.user = UserCheck::Passed,
            UserCheck::Todo | UserCheck::Passed => {
                if let Err(code) = check(&req) {
                    hs.reject(if code == ReplyCode::Granted { ReplyCode::Rejected } else { code })?;
                    return Ok(None);
                }
            }
        }
        if let (Some(verifier), UserCheck::Todo) = (cx.verifier, self.user) {
            match verifier.check_cached(req.user_id) {
                Some(Ok(())) => self.user = UserCheck::Passed,
                Some(Err(e)) => {
                    users::refuse(hs, cx.client, e)?;
                    return Ok(None);
                }
                None => {
                    self.user = UserCheck::Pending;
                    let user_id = req.user_id.into();
                    return Ok(Some(Step::VerifyUser { verifier: Arc::clone(verifier), user_id }));
                }
            }
        }
        let named = cx.verifier.is_some();
        let (authorized, rule) = upstream::authorize_by_rule(hs, cx.now, &cx.config.rules, cx.client.ip(), named)?;
        self.rule = rule.and_then(|i| u32::try_from(i).ok()).filter(|&i| i != NO_RULE).unwrap_or(NO_RULE);
        if let Authorized::Via(route) = authorized {
            self.route = Some(Box::new(route));
        }
        Ok(None)
    }
}

/// A whole request arrived: counts its protocol, and under `--warn-unsafe-socks` warns about a
/// CONNECT by address (bounded: [`unsafe_socks`](crate::unsafe_socks)).
fn note_request(req: &Request<'_>, cx: &Context<'_>) {
    crate::metrics::count_protocol(matches!(req.dest, Dest::Domain(_)));
    if let (true, Command::Connect, Dest::Ip(ip)) = (cx.config.warn_unsafe_socks, req.command, req.dest) {
        crate::unsafe_socks::warn(cx.client.ip(), SocketAddrV4::new(ip, req.port), cx.at);
    }
}

/// The rules' decision on the request with its name's address `ip` (as the rules see it at
/// `Authorize`: with a users file, by the user's name): `Some((direct, rule))` when allowed,
/// `direct` being whether the allow goes without a route and without asking identd (unless identd
/// already confirmed the user), `rule` the index of the rule that allowed it.
fn rules_allow(hs: &ServerHandshake, cx: &Context<'_>, ip: IpAddr) -> Option<(bool, Option<usize>)> {
    let req = addr_request(hs, ip)?;
    let req = if cx.verifier.is_some() { crate::users::named(req) } else { req };
    let rules = &cx.config.rules;
    let decision = rules.decide(cx.client.ip().to_canonical(), &req);
    let direct = rules.route(&decision).is_none() && (!decision.ident || hs.ident_confirmed());
    (decision.action == Action::Allow).then_some((direct, decision.rule))
}

/// The request by name, with `ip` as its address (`None` for a request by address).
fn addr_request(hs: &ServerHandshake, ip: IpAddr) -> Option<AccessRequest<'_>> {
    let req = hs.request()?;
    let Dest::Domain(host) = req.dest else { return None };
    Some(AccessRequest::new(req.command, req.port, req.user_id).with_host(host).with_addr(ip))
}

/// The addresses to race: `first` (which the handshake authorized), then each other address of
/// the lookup that passes what `first` passed — the embedder's check and the rules, allowing it
/// directly by the same rule `rule` (no route; identd only if it confirmed the user already; the
/// same `out`) — and is a real destination.
fn race_addrs(
    hs: &ServerHandshake,
    cx: &Context<'_>,
    check: &mut dyn FnMut(&AccessRequest<'_>) -> Result<(), ReplyCode>,
    first: SocketAddr,
    lookup: &Lookup,
    rule: Option<usize>,
) -> Vec<SocketAddr> {
    let mut addrs = vec![first];
    for &ip in lookup.addrs() {
        if ip == first.ip() || is_forbidden_destination(ip) {
            continue;
        }
        let hook_allows = addr_request(hs, ip).is_some_and(|req| check(&req).is_ok());
        // The same rule, so the race leaves by that rule's `out` whichever address wins.
        if hook_allows && rules_allow(hs, cx, ip) == Some((true, rule)) {
            addrs.push(SocketAddr::new(ip, first.port()));
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use socks4_core::ReplyCode;
    use socks4_core::rules::Rules;

    use super::*;
    use crate::limits::{ClientLimits, Limiter};
    use crate::users::Users;

    /// A connection's pieces: config, limiter and the parents' health.
    struct Fixture {
        config: ServerConfig,
        verifier: Option<Arc<Verifier>>,
        limiter: Arc<Limiter>,
        upstreams: Arc<Upstreams>,
        at: Instant,
    }

    impl Fixture {
        fn new(rules: &str) -> Self {
            let config = ServerConfig { rules: Rules::parse(rules).unwrap(), ..ServerConfig::default() };
            let at = Instant::now();
            let limits = ClientLimits { max_bind_waits_per_client: 1, ..ClientLimits::default() };
            let limiter = Limiter::new(limits, at);
            Self { config, verifier: None, limiter, upstreams: Arc::new(Upstreams::new()), at }
        }

        fn cx(&self, proxied: bool) -> Context<'_> {
            let client = "127.0.0.1:5000".parse().unwrap();
            let (config, upstreams, at) = (&self.config, &self.upstreams, self.at);
            Context { config, verifier: self.verifier.as_ref(), client, proxied, upstreams, now: Duration::ZERO, at }
        }

        /// The steps for `request`, performing none but replies, until one that needs I/O.
        fn steps(&self, request: &[u8], proxied: bool) -> (ServerHandshake, Decisions, Admission, Vec<Step>) {
            let cx = self.cx(proxied);
            let mut admission = self.limiter.admit(cx.client.ip(), self.at).unwrap();
            let mut hs = self.config.handshake(cx.now);
            hs.handle_input(cx.now, request);
            let mut decisions = Decisions::default();
            let mut steps = Vec::new();
            loop {
                let step = decisions.next(&mut hs, &mut admission, &cx).unwrap();
                let more = matches!(step, Step::Send(_));
                steps.push(step);
                if !more {
                    return (hs, decisions, admission, steps);
                }
            }
        }
    }

    fn reply(code: ReplyCode) -> Step {
        Step::Send(Reply { code, addr: std::net::SocketAddrV4::new(0.into(), 0) })
    }

    const BY_NAME: &[u8] = b"\x04\x01\x00\x50\x00\x00\x00\x01alice:tok\0duck.onion\0";

    #[test]
    fn names_routed_to_socks4a_are_forwarded_others_resolved() {
        let f = Fixture::new("allow to *.onion via socks4a://127.0.0.1:9050\nallow any");
        let (_, _, _, steps) = f.steps(BY_NAME, false);
        assert!(matches!(steps[..], [Step::Chain(_)]), "no lookup: {steps:?}");
        let (_, _, _, steps) = f.steps(b"\x04\x01\x00\x50\x00\x00\x00\x01\0example.com\0", false);
        assert_eq!(steps, [Step::Resolve { host: "example.com".into(), port: 80 }]);
        let (_, _, _, steps) = f.steps(b"\x04\x01\x00\x50\x7f\x00\x00\x01\0", false);
        assert_eq!(steps, [Step::Connect("127.0.0.1:80".parse().unwrap())], "direct");
        let denied = Fixture::new("deny any");
        let (_, _, _, steps) = denied.steps(b"\x04\x01\x00\x50\x7f\x00\x00\x01\0", false);
        assert_eq!(steps, [reply(ReplyCode::Rejected), Step::Closed(CloseReason::Denied(ReplyCode::Rejected))]);
    }

    #[test]
    fn the_users_file_is_asked_before_the_rules() {
        let mut f = Fixture::new("allow user alice to *.onion via socks4a://127.0.0.1:9050\nallow user bob");
        let hash = users::hash_token_with(b"tok", argon2::Params::new(8, 1, 1, None).unwrap()).unwrap();
        let users = Users::parse(format!("alice:{hash}\n").as_bytes()).unwrap();
        f.verifier = Some(Arc::new(Verifier::new(users)));
        // Not NAME:TOKEN: refused from the cache (93), without the pool.
        let (_, _, _, steps) = f.steps(b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\0", false);
        assert_eq!(steps[0], reply(ReplyCode::IdentMismatch));

        let (mut hs, mut decisions, mut admission, steps) = f.steps(BY_NAME, false);
        assert_eq!(
            steps,
            [Step::VerifyUser { verifier: Arc::clone(f.verifier.as_ref().unwrap()), user_id: b"alice:tok"[..].into() }]
        );
        assert!(decisions.user_pending());
        let cx = f.cx(false);
        assert!(matches!(decisions.next(&mut hs, &mut admission, &cx), Ok(Step::Wait { deadline: Some(_) })));
        decisions.user_checked(&mut hs, Ok(()), cx.client).unwrap();
        let step = decisions.next(&mut hs, &mut admission, &cx).unwrap();
        assert!(matches!(step, Step::Chain(_)), "the rules saw the name `alice` and the host: {step:?}");

        let (mut hs, mut decisions, mut admission, _) = f.steps(b"\x04\x01\x00\x50\x7f\x00\x00\x01alice:bad\0", false);
        decisions.user_checked(&mut hs, Err(AuthError::BadToken), cx.client).unwrap();
        assert_eq!(decisions.next(&mut hs, &mut admission, &cx).unwrap(), reply(ReplyCode::IdentMismatch));
        decisions.user_checked(&mut hs, Ok(()), cx.client).unwrap();
        assert!(matches!(decisions.next(&mut hs, &mut admission, &cx), Ok(Step::Closed(_))), "a late verdict: ignored");
    }

    #[test]
    fn an_embedders_check_comes_first_once_per_request() {
        let mut f = Fixture::new("allow any");
        let hash = users::hash_token_with(b"tok", argon2::Params::new(8, 1, 1, None).unwrap()).unwrap();
        f.verifier = Some(Arc::new(Verifier::new(Users::parse(format!("alice:{hash}\n").as_bytes()).unwrap())));
        let cx = f.cx(false);
        let mut seen = Vec::new();
        let mut check = |req: &AccessRequest<'_>| {
            seen.push(req.port);
            if req.port == 25 { Err(ReplyCode::Granted) } else { Ok(()) }
        };
        let start = |request: &[u8], check: &mut dyn FnMut(&AccessRequest<'_>) -> Result<(), ReplyCode>| {
            let mut admission = f.limiter.admit(cx.client.ip(), f.at).unwrap();
            let mut hs = f.config.handshake(cx.now);
            hs.handle_input(cx.now, request);
            let mut decisions = Decisions::default();
            let step = decisions.next_checked(&mut hs, &mut admission, &cx, check).unwrap();
            (hs, decisions, admission, step)
        };
        // Refused before the users file (no verification), a `Granted` as a 91.
        let (.., step) = start(b"\x04\x01\x00\x19\x7f\x00\x00\x01alice:tok\0", &mut check);
        assert_eq!(step, reply(ReplyCode::Rejected));
        let (mut hs, mut decisions, mut admission, step) =
            start(b"\x04\x01\x00\x50\x7f\x00\x00\x01alice:tok\0", &mut check);
        assert!(matches!(step, Step::VerifyUser { .. }), "{step:?}");
        decisions.user_checked(&mut hs, Ok(()), cx.client).unwrap();
        let step = decisions.next_checked(&mut hs, &mut admission, &cx, &mut check).unwrap();
        assert_eq!(step, Step::Connect("127.0.0.1:80".parse().unwrap()));
        assert_eq!(seen, [25, 80], "asked once per request, also across its verification");
    }

    #[test]
    fn bind_takes_a_wait_slot_directly_or_through_a_parent() {
        let f = Fixture::new("allow to 10.0.0.0/8 via socks4://127.0.0.1:1080\nallow any");
        let (_, _, _held, steps) = f.steps(b"\x04\x02\x00\x50\x0a\x00\x00\x01\0", false);
        assert!(matches!(steps[..], [Step::Chain(_)]), "{steps:?}");
        let (_, _, _, steps) = f.steps(b"\x04\x02\x00\x50\x7f\x00\x00\x01\0", false);
        assert_eq!(steps[0], reply(ReplyCode::Rejected), "one wait per client: the second is over the limit");
        drop(_held);
        let (_, _, _, steps) = f.steps(b"\x04\x02\x00\x50\x7f\x00\x00\x01\0", false);
        assert_eq!(steps, [Step::Listen], "the slot is free again");
    }

    #[test]
    fn ident_behind_a_balancer_is_answered_at_once() {
        let f = Fixture::new("allow ident");
        let request = b"\x04\x01\x00\x50\x7f\x00\x00\x01bob\0";
        assert_eq!(f.steps(request, false).3, [Step::Ident]);
        assert_eq!(f.steps(request, true).3[0], reply(ReplyCode::IdentUnreachable));
    }
}
