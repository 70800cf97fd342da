//! `ServerHandshake` driven by an arbitrary sequence of operations on a non-decreasing clock, in
//! either [`Names`] mode, with IPv4, IPv6, IPv4-mapped and forbidden addresses in every result.
//!
//! After each operation `poll_output` is drained until `Wait`, `Authorize`, `Relay` or `Closed`.
//! Checks: no panic; at most two `Send`s (the second only for BIND after a granted first), with the
//! allowed codes, and a rejection is followed by `Closed`; `Relay` and `Closed` are terminal;
//! `Resolve` and `Listen` appear at most once each, `Connect` once per accepted address; no hot
//! timer loop (a deadline at or before `now` is one that `handle_timeout(now)` acts on, and after
//! `handle_timeout(t)` no deadline is at or before `t`); an early `handle_timeout` is a no-op; a
//! `Misuse` error comes exactly when the call was not asked for, and changes nothing;
//! `handle_input` consumes at most its input, and exactly the request once it is complete;
//! `wants_input()` is true exactly while no request is complete and the handshake is not closed.
//!
//! Addresses: a forbidden CONNECT destination (`is_forbidden_destination`, checked against an
//! oracle written from its docs) never reaches `Authorize` or `Connect`: whether literal, resolved
//! or retried it gets 91 and `Closed(Forbidden(ip))`; every `Connect` address is one the caller
//! supplied (literal, resolved or retried), canonical, with the request's port. With
//! `Names::Forward` a CONNECT by name never emits `Resolve`, its `Authorize` has `addr == None` and
//! the name, and its `Connect` is `Target::Host`. `retry_connect` is accepted exactly while a
//! resolved name's `Connect` is awaited, authorizes the next address again, and every address of a
//! name shares the first connect's deadline. Each answered result is followed by exactly the
//! outputs it implies: the grant carries the bound address (IPv6 as `0.0.0.0` and its port),
//! `Failure::Rejected(code)` replies with that code (91 for 90), failures reply 91 with their reason.
//! `forward_name` is accepted exactly while a `Resolve` is awaited, and then behaves as
//! `Names::Forward` from there on for a CONNECT (an `Authorize` with the name and no address,
//! `Connect` to the host) and refuses a BIND (91, `BindByName`). A name written as a number
//! (`numeric_host`) is never resolved nor forwarded: `Authorize` with that address (or 91 +
//! `Forbidden` for a never-real CONNECT destination). Ident: `Ident` at most once, only after an accept and before `Connect`/`Listen`; 92 and 93 only
//! as the answer (or the ident deadline) calls for.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::ident::{ErrorKind, IdentReply};
use socks4_core::rules::{Action, Rules, is_forbidden_destination};
use socks4_core::{
    CloseReason, Command, Dest, Failure, Limits, MAX_REQUEST_LEN, Misuse, Names, Output, Reply, ReplyCode, Request,
    ServerHandshake, Target, Timeouts,
};

/// A few fixed rule sets, built once: IPv4 and IPv6 networks, classes, host patterns.
fn rule_sets() -> &'static [Rules] {
    static RULES: OnceLock<Vec<Rules>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            "",
            "allow from 127.0.0.0/8",
            "deny to 10.0.0.0/8\nallow port 1-1024 command connect\nallow command bind user alice",
            "allow to *.example.com\ndeny to 0.0.0.0/0 port 22",
            "deny",
            "deny to loopback\ndeny to link-local\nallow to private\nallow to 2001:db8::/32",
            "deny to ::/0\ndeny to 0.0.0.0/0\nallow to *",
            "allow from ::1/128\nallow from 127.0.0.0/8 command bind\ndeny to fe80::/10",
            "allow from 127.0.0.0/8 ident\nallow command bind ident\nallow user alice",
        ]
        .iter()
        .map(|text| Rules::parse(text).expect("fixed rules parse"))
        .collect()
    })
}

/// `is_forbidden_destination` as its documentation states it, written independently.
fn forbidden_oracle(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.octets() {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            _ => ip,
        },
        IpAddr::V4(_) => ip,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 0 || o == [255; 4] || (224..=239).contains(&o[0])
        }
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED || v6.octets()[0] == 0xff,
    }
}

fn forbidden(ip: IpAddr) -> bool {
    let f = is_forbidden_destination(ip);
    assert_eq!(f, forbidden_oracle(ip), "is_forbidden_destination({ip}) disagrees with its docs");
    f
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(s: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
}

const fn mapped(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V6(Ipv4Addr::new(a, b, c, d).to_ipv6_mapped())
}

/// Never real destinations, in each spelling.
const FORBIDDEN: [IpAddr; 12] = [
    v4(0, 0, 0, 0),
    v4(0, 1, 2, 3),
    v4(255, 255, 255, 255),
    v4(224, 0, 0, 1),
    v4(239, 255, 255, 250),
    v6([0; 8]),
    v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
    v6([0xff0e, 0, 0, 0, 0, 0, 0, 0x101]),
    mapped(0, 0, 0, 0),
    mapped(0, 0, 0, 1),
    mapped(255, 255, 255, 255),
    mapped(224, 0, 0, 251),
];

/// Addresses rules have something to say about, and near-misses of the forbidden ones.
const SPECIAL: [IpAddr; 14] = [
    v4(127, 0, 0, 1),
    v6([0, 0, 0, 0, 0, 0, 0, 1]),
    mapped(127, 0, 0, 1),
    v4(10, 0, 0, 1),
    mapped(10, 0, 0, 1),
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]),
    v4(169, 254, 169, 254),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
    v4(192, 0, 2, 1),
    v4(1, 0, 0, 0),
    v4(223, 255, 255, 255),
    v4(240, 0, 0, 1),
    v6([0, 0, 0, 0, 0, 0, 0, 2]), // IPv4-compatible ::0.0.0.2: not mapped, so not 0.0.0.0/8
];

/// An address of any kind a resolver, a socket or a caller could hand over.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ip {
    V4([u8; 4]),
    V6([u16; 8]),
    /// `::ffff:a.b.c.d`.
    Mapped([u8; 4]),
    Forbidden(u8),
    Special(u8),
}

impl Ip {
    fn get(self) -> IpAddr {
        let ip = match self {
            Ip::V4(o) => IpAddr::V4(o.into()),
            Ip::V6(s) => v6(s),
            Ip::Mapped(o) => IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()),
            Ip::Forbidden(i) => FORBIDDEN[usize::from(i) % FORBIDDEN.len()],
            Ip::Special(i) => SPECIAL[usize::from(i) % SPECIAL.len()],
        };
        forbidden(ip); // cross-checks the oracle on every address used
        ip
    }

    fn sock(a: (Ip, u16)) -> SocketAddr {
        SocketAddr::new(a.0.get(), a.1)
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fail {
    TimedOut,
    Refused,
    Unreachable,
    NotFound,
    /// An upstream's reply code, 90 + n % 4.
    Rejected(u8),
    Other,
    /// The server's own limit (e.g. a BIND over `--max-bind-waits`).
    OverLimit,
}

impl From<Fail> for Failure {
    fn from(f: Fail) -> Self {
        match f {
            Fail::TimedOut => Failure::TimedOut,
            Fail::Refused => Failure::Refused,
            Fail::Unreachable => Failure::Unreachable,
            Fail::NotFound => Failure::NotFound,
            Fail::Rejected(n) => Failure::Rejected(ReplyCode::from_code(90 + n % 4).expect("90..=93")),
            Fail::Other => Failure::Other,
            Fail::OverLimit => Failure::OverLimit,
        }
    }
}

/// The peer that connects to a BIND listener.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    /// The request's address (to reach the grant).
    Expected(u16),
    /// The request's address as IPv4-mapped IPv6 (a dual-stack listener's view of it).
    ExpectedMapped(u16),
    Other(Ip, u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw client bytes.
    Input(Vec<u8>),
    /// A well-formed request (4 or 4a) with trailing payload, so deep states are reached quickly.
    Request {
        bind: bool,
        port: u16,
        ip: [u8; 4],
        /// Replaces `ip` with a forbidden or special IPv4 address.
        special: Option<Ip>,
        host: Option<Vec<u8>>,
        user: Vec<u8>,
        payload: Vec<u8>,
    },
    Eof,
    /// The client's connection failed.
    ClientError,
    /// Move the clock forward without telling the handshake.
    Advance(u16),
    /// Move the clock forward, then `handle_timeout`.
    Timeout(u16),
    /// Jump to the current deadline (if later), then `handle_timeout`.
    TimeoutAtDeadline,
    Accept,
    Reject(u8),
    /// `refuse_user`: a users file refused the user id (closes with `UserRefused`).
    RefuseUser(u8),
    Authorize {
        rules: u8,
        client: Ip,
    },
    Resolved(Result<Ip, Fail>),
    /// `forward_name` instead of a resolve result (a name routed to a SOCKS4a parent).
    ForwardName,
    Connected(Result<(Ip, u16), Fail>),
    /// `retry_connect` with the name's "next" address.
    Retry(Ip),
    Listening(Result<(Ip, u16), Fail>),
    BindPeer(Result<Peer, Fail>),
    /// Answers whatever the handshake is waiting for (resolve, decide, connect — or with `other`
    /// retry —, listen, peer) with `ip`/`port` or `fail`, so that deep states (retries, a BIND's
    /// second reply) are a few operations away.
    Answer {
        ip: Ip,
        port: u16,
        fail: Option<Fail>,
        other: bool,
    },
    AcceptWithIdent,
    Ident(IdentAnswer),
}

/// Identd's answer to `Output::Ident`.
#[derive(Arbitrary, Debug)]
enum IdentAnswer {
    /// The request's own user id.
    Same,
    /// This user id (possibly the request's).
    User(Vec<u8>),
    /// `ERROR : NO-USER`.
    Error,
    Fail(Fail),
}

#[derive(Arbitrary, Debug)]
struct Case {
    forward: bool,
    user_limit: u8,
    host_limit: u8,
    handshake_ms: u8,
    connect_ms: u8,
    bind_ms: u16,
    start_ms: u32,
    ops: Vec<Op>,
}

/// An owned copy of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum To {
    Addr(SocketAddr),
    Host(String, u16),
}

/// An owned copy of an [`Output`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Send(Reply),
    Resolve(String, u16),
    Authorize { command: Command, addr: Option<IpAddr>, host: Option<String>, port: u16 },
    Connect(To),
    Listen(IpAddr),
    Ident,
    Relay,
    Wait(Option<Duration>),
    Closed(CloseReason),
}

fn owned(out: Output<'_>) -> Out {
    match out {
        Output::Send(r) => Out::Send(r),
        Output::Resolve { host, port } => Out::Resolve(host.to_owned(), port),
        Output::Authorize(req) => {
            Out::Authorize { command: req.command, addr: req.addr, host: req.host.map(str::to_owned), port: req.port }
        }
        Output::Connect(Target::Addr(a)) => Out::Connect(To::Addr(a)),
        Output::Connect(Target::Host(h, p)) => Out::Connect(To::Host(h.to_owned(), p)),
        Output::Listen { expected_peer } => Out::Listen(expected_peer),
        Output::Ident => Out::Ident,
        Output::Relay => Out::Relay,
        Output::Wait { deadline } => Out::Wait(deadline),
        Output::Closed(r) => Out::Closed(r),
        other => panic!("unknown output {other:?}"),
    }
}

/// One output the last operation implies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Exactly(Out),
    AnyWait,
}

/// What a reply can carry for a bound address: IPv4 (or mapped) as is, IPv6 as `0.0.0.0:port`.
fn reply_addr(a: SocketAddr) -> SocketAddrV4 {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddrV4::new(ip, a.port()),
        IpAddr::V6(ip) => SocketAddrV4::new(ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED), a.port()),
    }
}

/// 91 and `Closed(reason)`.
fn refused(reason: CloseReason) -> Vec<Expect> {
    vec![Expect::Exactly(Out::Send(Reply::rejected())), Expect::Exactly(Out::Closed(reason))]
}

struct Driver {
    hs: ServerHandshake,
    forward: bool,
    now: Duration,
    consumed: usize,
    sends: Vec<ReplyCode>,
    resolves: u32,
    /// `Connect`s since the last accept (at most one).
    connects: u32,
    listens: u32,
    idents: u32,
    /// `Relay` or `Closed` once seen.
    terminal: Option<Out>,
    /// The code of the last successful `reject`, rules' deny or upstream refusal.
    rejected_with: Option<ReplyCode>,
    /// Set by accept/authorize-allow: Connect or Listen may follow.
    accepted: bool,
    /// Command and "by name" of the complete request.
    request: Option<(Command, bool)>,
    /// The question the handshake asked and the caller has not answered yet.
    awaiting: Option<Awaiting>,
    /// Canonical addresses the caller supplied as destinations: literal, resolved, retried.
    supplied: Vec<IpAddr>,
    /// Addresses handed out in `Connect`.
    connected_to: Vec<IpAddr>,
    /// The deadline when the first `Connect` was handed out: every retry shares it.
    connect_deadline: Option<Duration>,
    /// The outputs the last operation implies, in order.
    expect: Vec<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Resolved,
    Decision,
    Connected,
    Listening,
    Peer,
    Ident,
}

impl Driver {
    fn snapshot(&self) -> String {
        format!("{:?}", self.hs)
    }

    /// A `Misuse` must leave the state exactly as it was.
    fn check_misuse<T>(&self, before: &str, r: &Result<T, Misuse>) {
        if r.is_err() {
            assert_eq!(before, self.snapshot(), "Misuse changed the state");
        }
    }

    fn drain(&mut self) -> Out {
        let mut after_send = None;
        for _ in 0..8 {
            let out = owned(self.hs.poll_output());
            if let Some(t) = &self.terminal {
                assert_eq!(&out, t, "output after a terminal one");
                assert!(self.expect.is_empty(), "expected {:?} after terminal {t:?}", self.expect);
                return out;
            }
            if !self.expect.is_empty() {
                match self.expect.remove(0) {
                    Expect::Exactly(e) => assert_eq!(out, e, "unexpected output"),
                    Expect::AnyWait => assert!(matches!(out, Out::Wait(_)), "expected Wait, got {out:?}"),
                }
            }
            match (after_send.take(), &out) {
                (None, _) | (Some(ReplyCode::Granted), Out::Relay | Out::Wait(_)) | (Some(_), Out::Closed(_)) => {}
                (Some(code), other) => panic!("after reply {code:?}: {other:?}"),
            }
            match &out {
                Out::Send(reply) => {
                    let first = self.sends.first().copied();
                    self.sends.push(reply.code);
                    assert!(self.sends.len() <= 2, "more than two replies: {:?}", self.sends);
                    match first {
                        None => match reply.code {
                            ReplyCode::Granted | ReplyCode::Rejected => {}
                            code => assert_eq!(Some(code), self.rejected_with, "unasked code"),
                        },
                        Some(ReplyCode::Granted) => {
                            assert_eq!(self.request.map(|r| r.0), Some(Command::Bind), "second reply for CONNECT");
                            assert!(matches!(reply.code, ReplyCode::Granted | ReplyCode::Rejected));
                        }
                        Some(code) => panic!("a reply after rejection {code:?}"),
                    }
                    if reply.code != ReplyCode::Granted {
                        assert_eq!(reply.addr, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), "a refusal's address");
                    }
                    // BIND's first grant: now the peer is awaited.
                    self.awaiting = (self.sends.len() == 1 && reply.code == ReplyCode::Granted && self.listens == 1)
                        .then_some(Awaiting::Peer);
                    after_send = Some(reply.code);
                    continue;
                }
                Out::Resolve(host, port) => {
                    self.resolves += 1;
                    assert_eq!(self.resolves, 1, "Resolve twice");
                    let req = self.hs.request().expect("Resolve without a request");
                    assert_eq!(req.dest, Dest::Domain(host));
                    assert_eq!(req.port, *port);
                    assert!(
                        !(self.forward && req.command == Command::Connect),
                        "Resolve for a CONNECT with Names::Forward"
                    );
                    self.awaiting = Some(Awaiting::Resolved);
                }
                Out::Connect(to) => {
                    self.connects += 1;
                    assert_eq!(self.connects, 1, "Connect twice for one accept");
                    assert!(self.accepted, "Connect before accept");
                    let req = self.hs.request().expect("Connect without a request");
                    assert_eq!(req.command, Command::Connect);
                    let access = self.hs.access_request().expect("Connect without an access request");
                    match to {
                        To::Addr(a) => {
                            let ip = a.ip();
                            assert!(!forbidden(ip), "Connect to forbidden {ip}");
                            assert_eq!(ip, ip.to_canonical(), "Connect to a non-canonical {ip}");
                            assert!(self.supplied.contains(&ip), "Connect to {ip}, never supplied");
                            assert_eq!(access.addr, Some(ip));
                            assert_eq!(a.port(), req.port);
                            self.connected_to.push(ip);
                        }
                        To::Host(h, p) => {
                            assert!(self.forward, "Connect to a host without Names::Forward");
                            assert_eq!(req.dest, Dest::Domain(h));
                            assert_eq!(*p, req.port);
                            assert_eq!((access.addr, access.host), (None, Some(h.as_str())));
                        }
                    }
                    // Every address of a name shares the first connect's deadline.
                    let d = self.hs.deadline();
                    match self.connect_deadline {
                        None => self.connect_deadline = d,
                        Some(first) => {
                            assert!(d.is_some_and(|d| d <= first), "retry's deadline {d:?} past the first {first:?}")
                        }
                    }
                    self.awaiting = Some(Awaiting::Connected);
                }
                Out::Listen(ip) => {
                    self.listens += 1;
                    assert_eq!(self.listens, 1, "Listen twice");
                    assert!(self.accepted, "Listen before accept");
                    assert_eq!(self.hs.access_request().and_then(|r| r.addr), Some(*ip));
                    assert_eq!(self.hs.request().map(|r| r.command), Some(Command::Bind));
                    self.awaiting = Some(Awaiting::Listening);
                }
                Out::Ident => {
                    self.idents += 1;
                    assert_eq!(self.idents, 1, "Ident twice");
                    assert!(self.accepted, "Ident before accept");
                    assert_eq!((self.connects, self.listens), (0, 0), "Ident after Connect or Listen");
                    self.awaiting = Some(Awaiting::Ident);
                }
                Out::Authorize { command, addr, host, port } => {
                    assert!(!self.accepted);
                    let req = self.hs.request().expect("Authorize without a request");
                    assert_eq!((*command, *port), (req.command, req.port));
                    match req.dest {
                        Dest::Ip(ip) => assert_eq!((*addr, host.as_deref()), (Some(IpAddr::V4(ip)), None)),
                        Dest::Domain(name) => {
                            assert_eq!(host.as_deref(), Some(name));
                            let numeric = socks4_core::rules::numeric_host(name);
                            if let Some(ip) = numeric {
                                // A name written as a number is that address, in either mode.
                                assert_eq!(*addr, Some(ip.to_canonical()), "a numeric name is its address");
                            } else if self.forward && req.command == Command::Connect {
                                assert_eq!(*addr, None, "a forwarded name has no address");
                            } else {
                                let ip = addr.expect("a resolved name has an address");
                                assert!(self.supplied.contains(&ip), "Authorize for {ip}, never supplied");
                            }
                        }
                    }
                    if let Some(ip) = addr {
                        assert_eq!(*ip, ip.to_canonical(), "Authorize with a non-canonical {ip}");
                        if req.command == Command::Connect {
                            assert!(!forbidden(*ip), "Authorize for forbidden destination {ip}");
                        }
                    }
                    assert_eq!(owned(self.hs.poll_output()), out, "Authorize repeats until answered");
                    self.awaiting = Some(Awaiting::Decision);
                    return out;
                }
                Out::Relay | Out::Closed(_) => {
                    match &out {
                        Out::Relay => {
                            assert_eq!(self.sends.last(), Some(&ReplyCode::Granted), "Relay without a grant")
                        }
                        Out::Closed(CloseReason::Forbidden(ip)) => {
                            assert!(forbidden(*ip), "Forbidden({ip}) is allowed");
                            assert_eq!(*ip, ip.to_canonical());
                            assert_eq!(self.request.map(|r| r.0), Some(Command::Connect));
                            assert_eq!(self.sends, [ReplyCode::Rejected]);
                        }
                        _ => {}
                    }
                    self.terminal = Some(out.clone());
                    self.awaiting = None;
                    assert_eq!(owned(self.hs.poll_output()), out, "terminal output does not repeat");
                    assert!(self.expect.is_empty(), "expected {:?} after {out:?}", self.expect);
                    return out;
                }
                Out::Wait(_) => {
                    self.check_wait(&out);
                    assert!(self.expect.is_empty(), "expected {:?} after {out:?}", self.expect);
                    return out;
                }
            }
        }
        panic!("poll_output did not settle within 8 calls");
    }

    /// A call answering `what` must succeed exactly when the handshake asked for it.
    fn check_answer<T>(&mut self, what: Awaiting, before: &str, r: &Result<T, Misuse>) {
        self.check_misuse(before, r);
        assert_eq!(r.is_ok(), self.awaiting == Some(what), "{what:?} answered while awaiting {:?}", self.awaiting);
        if r.is_ok() {
            self.awaiting = None;
        }
    }

    /// A deadline at or before `now` must be one that `handle_timeout(now)` acts on.
    fn check_wait(&self, out: &Out) {
        let Out::Wait(Some(deadline)) = *out else { return };
        if deadline > self.now {
            return;
        }
        let mut probe = self.hs.clone();
        probe.handle_timeout(self.now);
        let after = owned(probe.poll_output());
        assert_ne!(after, *out, "hot timer loop: deadline {deadline:?} at now {:?}", self.now);
    }

    /// `wants_input()` is true exactly while no request is complete and the handshake is open.
    fn check_wants_input(&self) {
        let open = !matches!(self.terminal, Some(Out::Closed(_)));
        assert_eq!(self.hs.wants_input(), self.hs.request().is_none() && open, "wants_input");
    }

    /// The request just became complete: note it and what it implies.
    fn request_changed(&mut self) {
        if self.request.is_some() {
            return;
        }
        let Some(req) = self.hs.request() else { return };
        self.request = Some((req.command, matches!(req.dest, Dest::Domain(_))));
        assert_eq!(self.consumed, req.encoded_len(), "consumed bytes != request length");
        let authorize = |addr| Out::Authorize {
            command: req.command,
            addr,
            host: match req.dest {
                Dest::Domain(h) => Some(h.to_owned()),
                Dest::Ip(_) => None,
            },
            port: req.port,
        };
        let numeric = match req.dest {
            Dest::Domain(h) => socks4_core::rules::numeric_host(h),
            Dest::Ip(_) => None,
        };
        self.expect = match (req.command, req.dest) {
            (Command::Connect, Dest::Ip(ip)) if forbidden(ip.into()) => refused(CloseReason::Forbidden(ip.into())),
            // A name written as a number is that address: never resolved nor forwarded.
            (Command::Connect, Dest::Domain(_)) if numeric.is_some_and(forbidden) => {
                refused(CloseReason::Forbidden(numeric.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
            }
            (_, Dest::Domain(_)) if numeric.is_some() => {
                self.supplied.extend(numeric);
                vec![Expect::Exactly(authorize(numeric))]
            }
            (_, Dest::Ip(ip)) => {
                self.supplied.push(ip.into());
                vec![Expect::Exactly(authorize(Some(ip.into())))]
            }
            (Command::Connect, Dest::Domain(_)) if self.forward => vec![Expect::Exactly(authorize(None))],
            (_, Dest::Domain(h)) => {
                vec![Expect::Exactly(Out::Resolve(h.to_owned(), req.port)), Expect::AnyWait]
            }
        };
    }

    fn input(&mut self, data: &[u8]) {
        let before_request = self.hs.request().is_some();
        let n = self.hs.handle_input(self.now, data);
        assert!(n <= data.len());
        if before_request || self.terminal.is_some() {
            assert_eq!(n, 0, "consumed after the request was complete");
        }
        self.consumed += n;
        assert!(self.consumed <= MAX_REQUEST_LEN);
        self.request_changed();
    }

    fn timeout(&mut self) {
        let early = self.hs.deadline().is_none_or(|d| self.now < d);
        if !early && self.awaiting == Some(Awaiting::Ident) {
            self.rejected_with = Some(ReplyCode::IdentUnreachable);
        }
        let before = if early { self.snapshot() } else { String::new() };
        self.hs.handle_timeout(self.now);
        if early {
            assert_eq!(before, self.snapshot(), "early handle_timeout changed the state");
        }
        let out = self.drain();
        if let Out::Wait(Some(d)) = out {
            assert!(d > self.now, "deadline {d:?} not after handle_timeout({:?})", self.now);
        }
        self.check_wants_input();
    }

    /// Can `retry_connect` be asked for now: awaiting the connect to a name's resolved address.
    fn retryable(&self) -> bool {
        self.awaiting == Some(Awaiting::Connected) && self.request == Some((Command::Connect, true)) && !self.forward
    }

    fn step(&mut self, op: &Op) {
        // Formatting the state is the costliest part of a run: only for the calls that need it.
        let before = match op {
            Op::Input(_)
            | Op::Request { .. }
            | Op::Advance(_)
            | Op::Timeout(_)
            | Op::TimeoutAtDeadline
            | Op::Answer { .. } => String::new(),
            _ => self.snapshot(),
        };
        match op {
            Op::Answer { ip, port, fail, other } => {
                let result = fail.map_or(Ok((*ip, *port)), Err);
                let op = match self.awaiting {
                    None => Op::Advance(0),
                    Some(Awaiting::Resolved) => Op::Resolved(result.map(|a| a.0)),
                    Some(Awaiting::Decision) if *other => Op::Authorize { rules: *port as u8, client: *ip },
                    Some(Awaiting::Decision) => match fail {
                        Some(_) if *port % 2 == 1 => Op::RefuseUser(*port as u8),
                        Some(_) => Op::Reject(*port as u8),
                        None => Op::Accept,
                    },
                    Some(Awaiting::Connected) if *other => Op::Retry(*ip),
                    Some(Awaiting::Connected) => Op::Connected(result),
                    Some(Awaiting::Listening) => Op::Listening(result),
                    Some(Awaiting::Peer) if *other => Op::BindPeer(result.map(|a| Peer::Other(a.0, a.1))),
                    Some(Awaiting::Peer) => Op::BindPeer(result.map(|a| Peer::Expected(a.1))),
                    Some(Awaiting::Ident) => Op::Ident(match fail {
                        Some(f) => IdentAnswer::Fail(*f),
                        None if *other => IdentAnswer::Error,
                        None => IdentAnswer::Same,
                    }),
                };
                return self.step(&op);
            }
            Op::Input(bytes) => self.input(bytes),
            Op::Request { bind, port, ip, special, host, user, payload } => {
                let host: Option<String> =
                    host.as_ref().map(|h| h.iter().take(64).map(|b| char::from(b % 94 + 33)).collect());
                let user: Vec<u8> = user.iter().take(64).map(|&b| b.max(1)).collect();
                let ip = match special.map(|s| s.get().to_canonical()) {
                    Some(IpAddr::V4(special)) => special,
                    _ => Ipv4Addr::from(*ip),
                };
                let dest = match &host {
                    Some(h) if !h.is_empty() => Dest::Domain(h),
                    _ => Dest::Ip(ip),
                };
                let command = if *bind { Command::Bind } else { Command::Connect };
                let req = Request::new(command, *port, dest, &user);
                let mut wire = [0u8; MAX_REQUEST_LEN];
                if let Ok(n) = req.encode(&mut wire) {
                    let mut bytes = wire[..n].to_vec();
                    bytes.extend_from_slice(payload);
                    self.input(&bytes);
                }
            }
            Op::Eof => {
                let had_request = self.hs.request().is_some();
                let bind_wait = self.awaiting == Some(Awaiting::Peer);
                self.hs.handle_eof(self.now);
                if bind_wait {
                    // A BIND client that closes while waiting for its peer is gone: closed, no reply.
                    self.expect = vec![Expect::Exactly(Out::Closed(CloseReason::ClientGone))];
                    self.awaiting = None;
                } else if had_request {
                    assert_eq!(before, self.snapshot(), "eof after the request changed the state");
                }
            }
            Op::ClientError => {
                let open = self.terminal.is_none();
                self.hs.handle_client_error(self.now);
                if open {
                    // Any phase before the relay ends at once, dropping a reply not yet taken.
                    self.expect = vec![Expect::Exactly(Out::Closed(CloseReason::ClientGone))];
                    self.awaiting = None;
                } else {
                    assert_eq!(before, self.snapshot(), "a client error after the end changed the state");
                }
            }
            Op::Advance(ms) => self.now += Duration::from_millis(u64::from(*ms)),
            Op::Timeout(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                return self.timeout();
            }
            Op::TimeoutAtDeadline => {
                if let Some(d) = self.hs.deadline() {
                    self.now = self.now.max(d);
                }
                return self.timeout();
            }
            Op::Accept => {
                let r = self.hs.accept(self.now);
                self.check_answer(Awaiting::Decision, &before, &r);
                self.accepted |= r.is_ok();
            }
            Op::Reject(code) => {
                let code = ReplyCode::from_code(90 + code % 4).expect("90..=93");
                let r = self.hs.reject(code);
                if code == ReplyCode::Granted {
                    assert!(r.is_err(), "reject with 90 accepted");
                    self.check_misuse(&before, &r);
                } else {
                    self.check_answer(Awaiting::Decision, &before, &r);
                }
                if r.is_ok() {
                    self.rejected_with = Some(code);
                    self.expect = vec![
                        Expect::Exactly(Out::Send(Reply { code, ..Reply::rejected() })),
                        Expect::Exactly(Out::Closed(CloseReason::Denied(code))),
                    ];
                }
            }
            Op::RefuseUser(code) => {
                let code = ReplyCode::from_code(90 + code % 4).expect("90..=93");
                let r = self.hs.refuse_user(code);
                if code == ReplyCode::Granted {
                    assert!(r.is_err(), "refuse_user with 90 accepted");
                    self.check_misuse(&before, &r);
                } else {
                    self.check_answer(Awaiting::Decision, &before, &r);
                }
                if r.is_ok() {
                    self.rejected_with = Some(code);
                    self.expect = vec![
                        Expect::Exactly(Out::Send(Reply { code, ..Reply::rejected() })),
                        Expect::Exactly(Out::Closed(CloseReason::UserRefused(code))),
                    ];
                }
            }
            Op::Authorize { rules, client } => {
                let sets = rule_sets();
                let rules = &sets[*rules as usize % sets.len()];
                let r = self.hs.authorize(self.now, rules, client.get());
                self.check_answer(Awaiting::Decision, &before, &r);
                match r {
                    Ok(Action::Allow) => self.accepted = true,
                    Ok(_) => {
                        self.rejected_with = Some(ReplyCode::Rejected);
                        self.expect = refused(CloseReason::Denied(ReplyCode::Rejected));
                    }
                    Err(_) => {}
                }
            }
            Op::Resolved(result) => {
                let result = result.map(Ip::get).map_err(Failure::from);
                let r = self.hs.handle_resolved(self.now, result);
                self.check_answer(Awaiting::Resolved, &before, &r);
                if r.is_ok() {
                    let connect = self.request.map(|r| r.0) == Some(Command::Connect);
                    self.expect = match result {
                        Ok(ip) if connect && forbidden(ip) => refused(CloseReason::Forbidden(ip.to_canonical())),
                        Ok(ip) => {
                            self.supplied.push(ip.to_canonical());
                            let req = self.hs.request().expect("resolved a request");
                            vec![Expect::Exactly(Out::Authorize {
                                command: req.command,
                                addr: Some(ip.to_canonical()),
                                host: match req.dest {
                                    Dest::Domain(h) => Some(h.to_owned()),
                                    Dest::Ip(_) => None,
                                },
                                port: req.port,
                            })]
                        }
                        Err(e) => refused(CloseReason::ResolveFailed(e)),
                    };
                }
            }
            Op::ForwardName => {
                let r = self.hs.forward_name(self.now);
                self.check_misuse(&before, &r);
                let connect = self.request.map(|r| r.0) == Some(Command::Connect);
                let asked = self.awaiting == Some(Awaiting::Resolved);
                assert_eq!(r.is_ok(), asked, "forward_name while awaiting {:?}", self.awaiting);
                if r.is_ok() && !connect {
                    // A BIND by name is refused, never resolved.
                    self.awaiting = None;
                    self.expect = refused(CloseReason::BindByName);
                } else if r.is_ok() {
                    self.awaiting = None;
                    self.forward = true;
                    let req = self.hs.request().expect("forwarded a request");
                    let Dest::Domain(host) = req.dest else { panic!("forwarded a request by address") };
                    self.expect = vec![Expect::Exactly(Out::Authorize {
                        command: Command::Connect,
                        addr: None,
                        host: Some(host.to_owned()),
                        port: req.port,
                    })];
                }
            }
            Op::Connected(result) => {
                let result = result.map(Ip::sock).map_err(Failure::from);
                let r = self.hs.handle_connected(self.now, result);
                self.check_answer(Awaiting::Connected, &before, &r);
                if r.is_ok() {
                    self.expect = match result {
                        Ok(bound) => vec![
                            Expect::Exactly(Out::Send(Reply::new(ReplyCode::Granted, reply_addr(bound)))),
                            Expect::Exactly(Out::Relay),
                        ],
                        Err(Failure::Rejected(code)) => {
                            let code = if code == ReplyCode::Granted { ReplyCode::Rejected } else { code };
                            self.rejected_with = Some(code);
                            vec![
                                Expect::Exactly(Out::Send(Reply { code, ..Reply::rejected() })),
                                Expect::Exactly(Out::Closed(CloseReason::ConnectFailed(Failure::Rejected(code)))),
                            ]
                        }
                        Err(e) => refused(CloseReason::ConnectFailed(e)),
                    };
                }
            }
            Op::Retry(next) => {
                let next = next.get();
                let deadline = self.hs.deadline();
                let retryable = self.retryable();
                let r = self.hs.retry_connect(self.now, next);
                self.check_misuse(&before, &r);
                assert_eq!(r.is_ok(), retryable, "retry_connect while awaiting {:?}", self.awaiting);
                if r.is_ok() {
                    self.awaiting = None;
                    if forbidden(next) {
                        self.expect = refused(CloseReason::Forbidden(next.to_canonical()));
                    } else {
                        assert_eq!(self.hs.deadline(), deadline, "retry_connect moved the deadline");
                        self.accepted = false;
                        self.connects = 0;
                        self.supplied.push(next.to_canonical());
                        let req = self.hs.request().expect("retried a request");
                        self.expect = vec![Expect::Exactly(Out::Authorize {
                            command: Command::Connect,
                            addr: Some(next.to_canonical()),
                            host: match req.dest {
                                Dest::Domain(h) => Some(h.to_owned()),
                                Dest::Ip(_) => None,
                            },
                            port: req.port,
                        })];
                    }
                }
            }
            Op::Listening(result) => {
                let result = result.map(Ip::sock).map_err(Failure::from);
                let r = self.hs.handle_listening(self.now, result);
                self.check_answer(Awaiting::Listening, &before, &r);
                if r.is_ok() {
                    self.expect = match result {
                        Ok(a) => {
                            vec![
                                Expect::Exactly(Out::Send(Reply::new(ReplyCode::Granted, reply_addr(a)))),
                                Expect::AnyWait,
                            ]
                        }
                        Err(e) => refused(CloseReason::BindFailed(e)),
                    };
                }
            }
            Op::BindPeer(result) => {
                let expected = self.hs.access_request().and_then(|r| r.addr).unwrap_or(Ipv4Addr::UNSPECIFIED.into());
                let result = result
                    .map(|p| match p {
                        Peer::Expected(port) => SocketAddr::new(expected, port),
                        Peer::ExpectedMapped(port) => match expected {
                            IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), port),
                            IpAddr::V6(_) => SocketAddr::new(expected, port),
                        },
                        Peer::Other(ip, port) => Ip::sock((ip, port)),
                    })
                    .map_err(Failure::from);
                let r = self.hs.handle_bind_peer(self.now, result);
                self.check_answer(Awaiting::Peer, &before, &r);
                if r.is_ok() {
                    self.expect = match result {
                        Ok(peer) if peer.ip().to_canonical() == expected => vec![
                            Expect::Exactly(Out::Send(Reply::new(ReplyCode::Granted, reply_addr(peer)))),
                            Expect::Exactly(Out::Relay),
                        ],
                        Ok(peer) => refused(CloseReason::WrongPeer(peer.ip().to_canonical())),
                        Err(Failure::TimedOut) => refused(CloseReason::BindTimeout),
                        Err(e) => refused(CloseReason::BindFailed(e)),
                    };
                }
            }
            Op::AcceptWithIdent => {
                let r = self.hs.accept_with_ident(self.now);
                self.check_answer(Awaiting::Decision, &before, &r);
                self.accepted |= r.is_ok();
            }
            Op::Ident(answer) => {
                let own = self.hs.request().map(|r| r.user_id.to_vec()).unwrap_or_default();
                let answer = match answer {
                    IdentAnswer::Same => Ok(IdentReply::User { os: "UNIX", charset: None, user: &own }),
                    IdentAnswer::User(user) => Ok(IdentReply::User { os: "OTHER", charset: None, user }),
                    IdentAnswer::Error => Ok(IdentReply::Error { kind: ErrorKind::NoUser, token: "NO-USER" }),
                    IdentAnswer::Fail(f) => Err(Failure::from(*f)),
                };
                let refusal = match answer {
                    Ok(IdentReply::User { user, .. }) if user == own.as_slice() => None,
                    Ok(_) => Some(ReplyCode::IdentMismatch),
                    Err(_) => Some(ReplyCode::IdentUnreachable),
                };
                let r = self.hs.handle_ident(self.now, answer);
                self.check_answer(Awaiting::Ident, &before, &r);
                if r.is_ok() {
                    self.rejected_with = refusal.or(self.rejected_with);
                }
            }
        }
        self.drain();
        assert!(self.expect.is_empty(), "expected outputs not seen: {:?}", self.expect);
        self.check_wants_input();
    }
}

fuzz_target!(|case: Case| {
    let limits = Limits::new(case.user_limit, case.host_limit);
    let timeouts = Timeouts::default()
        .with_handshake(Duration::from_millis(u64::from(case.handshake_ms)))
        .with_connect(Duration::from_millis(u64::from(case.connect_ms)))
        .with_bind(Duration::from_millis(u64::from(case.bind_ms)));
    let now = Duration::from_millis(u64::from(case.start_ms));
    let names = if case.forward { Names::Forward } else { Names::Resolve };
    let hs = ServerHandshake::new(now, limits, timeouts).with_names(names);
    let mut d = Driver {
        hs,
        forward: case.forward,
        now,
        consumed: 0,
        sends: Vec::new(),
        resolves: 0,
        connects: 0,
        listens: 0,
        idents: 0,
        terminal: None,
        rejected_with: None,
        accepted: false,
        request: None,
        awaiting: None,
        supplied: Vec::new(),
        connected_to: Vec::new(),
        connect_deadline: None,
        expect: Vec::new(),
    };
    d.drain();
    d.check_wants_input();
    for op in case.ops.iter().take(64) {
        d.step(op);
    }
    assert!(d.connected_to.iter().all(|&ip| !forbidden(ip)), "a forbidden address was connected to");
});
