//! `ServerHandshake` driven by an arbitrary sequence of operations on a non-decreasing clock.
//!
//! After each operation `poll_output` is drained until `Wait`, `Authorize`, `Relay` or `Closed`.
//! Checks: no panic; at most two `Send`s (the second only for BIND after a granted first), with the
//! allowed codes, and a rejection is followed by `Closed`; `Relay` and `Closed` are terminal;
//! `Resolve`, `Connect` and `Listen` appear at most once each; no hot timer loop (a deadline at or
//! before `now` is one that `handle_timeout(now)` acts on, and after `handle_timeout(t)` no deadline
//! is at or before `t`); an early `handle_timeout` is a no-op; a `Misuse` error changes nothing;
//! `handle_input` consumes at most its input, and exactly the request once it is complete.
//! Ident: `Ident` at most once, only after an accept and before `Connect`/`Listen`; 92 and 93 only
//! as the answer (or the ident deadline) calls for.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::ident::{ErrorKind, IdentReply};
use socks4_core::rules::Rules;
use socks4_core::{
    CloseReason, Command, Dest, Failure, Limits, MAX_REQUEST_LEN, Misuse, Output, Reply, ReplyCode, Request,
    ServerHandshake, Timeouts,
};

/// A few fixed rule sets, built once.
fn rule_sets() -> &'static [Rules] {
    static RULES: OnceLock<Vec<Rules>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            "",
            "allow from 127.0.0.0/8",
            "deny to 10.0.0.0/8\nallow port 1-1024 command connect\nallow command bind user alice",
            "allow to *.example.com\ndeny to 0.0.0.0/0 port 22",
            "deny",
            "allow from 127.0.0.0/8 ident\nallow command bind ident\nallow user alice",
        ]
        .iter()
        .map(|text| Rules::parse(text).expect("fixed rules parse"))
        .collect()
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fail {
    TimedOut,
    Refused,
    Unreachable,
    NotFound,
    Other,
}

impl From<Fail> for Failure {
    fn from(f: Fail) -> Self {
        match f {
            Fail::TimedOut => Failure::TimedOut,
            Fail::Refused => Failure::Refused,
            Fail::Unreachable => Failure::Unreachable,
            Fail::NotFound => Failure::NotFound,
            Fail::Other => Failure::Other,
        }
    }
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
        host: Option<Vec<u8>>,
        user: Vec<u8>,
        payload: Vec<u8>,
    },
    Eof,
    /// Move the clock forward without telling the handshake.
    Advance(u16),
    /// Move the clock forward, then `handle_timeout`.
    Timeout(u16),
    /// Jump to the current deadline (if later), then `handle_timeout`.
    TimeoutAtDeadline,
    Accept,
    Reject(u8),
    Authorize {
        rules: u8,
        client: [u8; 4],
    },
    Resolved(Result<[u8; 4], Fail>),
    Connected(Result<([u8; 4], u16), Fail>),
    Listening(Result<([u8; 4], u16), Fail>),
    /// `Ok(None)` is the expected peer (the request's address), to reach the grant.
    BindPeer(Result<Option<([u8; 4], u16)>, Fail>),
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
    user_limit: u8,
    host_limit: u8,
    handshake_ms: u8,
    connect_ms: u8,
    bind_ms: u16,
    start_ms: u32,
    ops: Vec<Op>,
}

/// An owned copy of an [`Output`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Send(Reply),
    Resolve(String, u16),
    Authorize,
    Connect(SocketAddrV4),
    Listen(Ipv4Addr),
    Ident,
    Relay,
    Wait(Option<Duration>),
    Closed(CloseReason),
}

fn owned(out: Output<'_>) -> Out {
    match out {
        Output::Send(r) => Out::Send(r),
        Output::Resolve { host, port } => Out::Resolve(host.to_owned(), port),
        Output::Authorize(_) => Out::Authorize,
        Output::Connect(a) => Out::Connect(a),
        Output::Listen { expected_peer } => Out::Listen(expected_peer),
        Output::Ident => Out::Ident,
        Output::Relay => Out::Relay,
        Output::Wait { deadline } => Out::Wait(deadline),
        Output::Closed(r) => Out::Closed(r),
        other => panic!("unknown output {other:?}"),
    }
}

struct Driver {
    hs: ServerHandshake,
    now: Duration,
    consumed: usize,
    sends: Vec<ReplyCode>,
    resolves: u32,
    connects: u32,
    listens: u32,
    idents: u32,
    /// `Relay` or `Closed` once seen.
    terminal: Option<Out>,
    /// The code of the last successful `reject`.
    rejected_with: Option<ReplyCode>,
    /// Set by accept/authorize-allow: Connect or Listen may follow.
    accepted: bool,
    request: Option<(Command, bool)>,
    /// The question the handshake asked and the caller has not answered yet.
    awaiting: Option<Awaiting>,
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
                return out;
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
                    self.awaiting = Some(Awaiting::Resolved);
                }
                Out::Connect(addr) => {
                    self.connects += 1;
                    assert_eq!(self.connects, 1, "Connect twice");
                    assert!(self.accepted, "Connect before accept");
                    assert_eq!(self.hs.access_request().map(|r| r.addr), Some(*addr));
                    assert_eq!(self.hs.request().map(|r| r.command), Some(Command::Connect));
                    self.awaiting = Some(Awaiting::Connected);
                }
                Out::Listen(ip) => {
                    self.listens += 1;
                    assert_eq!(self.listens, 1, "Listen twice");
                    assert!(self.accepted, "Listen before accept");
                    assert_eq!(self.hs.access_request().map(|r| *r.addr.ip()), Some(*ip));
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
                Out::Authorize => {
                    assert!(!self.accepted);
                    assert_eq!(owned(self.hs.poll_output()), Out::Authorize, "Authorize does not repeat");
                    self.awaiting = Some(Awaiting::Decision);
                    return out;
                }
                Out::Relay | Out::Closed(_) => {
                    if matches!(out, Out::Relay) {
                        assert_eq!(self.sends.last(), Some(&ReplyCode::Granted), "Relay without a grant");
                    }
                    self.terminal = Some(out.clone());
                    self.awaiting = None;
                    assert_eq!(owned(self.hs.poll_output()), out, "terminal output does not repeat");
                    return out;
                }
                Out::Wait(_) => {
                    self.check_wait(&out);
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

    fn request_changed(&mut self) {
        if self.request.is_some() {
            return;
        }
        if let Some(req) = self.hs.request() {
            self.request = Some((req.command, matches!(req.dest, Dest::Domain(_))));
            assert_eq!(self.consumed, req.encoded_len(), "consumed bytes != request length");
        }
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
    }

    fn addr(a: ([u8; 4], u16)) -> SocketAddrV4 {
        SocketAddrV4::new(a.0.into(), a.1)
    }

    fn step(&mut self, op: &Op) {
        // Formatting the state is the costliest part of a run: only for the calls that need it.
        let before = match op {
            Op::Input(_) | Op::Request { .. } | Op::Advance(_) | Op::Timeout(_) | Op::TimeoutAtDeadline => {
                String::new()
            }
            _ => self.snapshot(),
        };
        match op {
            Op::Input(bytes) => self.input(bytes),
            Op::Request { bind, port, ip, host, user, payload } => {
                let host: Option<String> =
                    host.as_ref().map(|h| h.iter().take(64).map(|b| char::from(b % 94 + 33)).collect());
                let user: Vec<u8> = user.iter().take(64).map(|&b| b.max(1)).collect();
                let dest = match &host {
                    Some(h) if !h.is_empty() => Dest::Domain(h),
                    _ => Dest::Ip((*ip).into()),
                };
                let command = if *bind { Command::Bind } else { Command::Connect };
                let req = Request { command, port: *port, dest, user_id: &user };
                let mut wire = [0u8; MAX_REQUEST_LEN];
                if let Ok(n) = req.encode(&mut wire) {
                    let mut bytes = wire[..n].to_vec();
                    bytes.extend_from_slice(payload);
                    self.input(&bytes);
                }
            }
            Op::Eof => {
                let had_request = self.hs.request().is_some();
                self.hs.handle_eof(self.now);
                if had_request {
                    assert_eq!(before, self.snapshot(), "eof after the request changed the state");
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
                }
            }
            Op::Authorize { rules, client } => {
                let sets = rule_sets();
                let rules = &sets[*rules as usize % sets.len()];
                let r = self.hs.authorize(self.now, rules, IpAddr::V4((*client).into()));
                self.check_answer(Awaiting::Decision, &before, &r);
                match r {
                    Ok(socks4_core::rules::Action::Allow) => self.accepted = true,
                    Ok(_) => self.rejected_with = Some(ReplyCode::Rejected),
                    Err(_) => {}
                }
            }
            Op::Resolved(r) => {
                let r = self.hs.handle_resolved(self.now, r.map(Ipv4Addr::from).map_err(Failure::from));
                self.check_answer(Awaiting::Resolved, &before, &r);
            }
            Op::Connected(r) => {
                let r = self.hs.handle_connected(self.now, r.map(Self::addr).map_err(Failure::from));
                self.check_answer(Awaiting::Connected, &before, &r);
            }
            Op::Listening(r) => {
                let r = self.hs.handle_listening(self.now, r.map(Self::addr).map_err(Failure::from));
                self.check_answer(Awaiting::Listening, &before, &r);
            }
            Op::BindPeer(r) => {
                let expected = self.hs.access_request().map(|r| *r.addr.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED);
                let r = r.map(|a| a.map_or(SocketAddrV4::new(expected, 4000), Self::addr)).map_err(Failure::from);
                let r = self.hs.handle_bind_peer(self.now, r);
                self.check_answer(Awaiting::Peer, &before, &r);
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
    }
}

fuzz_target!(|case: Case| {
    let limits = Limits::new(case.user_limit, case.host_limit);
    let timeouts = Timeouts::default()
        .with_handshake(Duration::from_millis(u64::from(case.handshake_ms)))
        .with_connect(Duration::from_millis(u64::from(case.connect_ms)))
        .with_bind(Duration::from_millis(u64::from(case.bind_ms)));
    let now = Duration::from_millis(u64::from(case.start_ms));
    let hs = ServerHandshake::new(now, limits, timeouts);
    let mut d = Driver {
        hs,
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
    };
    d.drain();
    for op in case.ops.iter().take(64) {
        d.step(op);
    }
});
