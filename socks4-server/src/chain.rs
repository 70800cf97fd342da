//! One request through a route's parent proxies as a sans-IO state machine ([`Attempt`]): which
//! parent to connect to and by when, the bytes to write to it and how many to read, and what its
//! replies mean for the client. The driver performs each [`Io`] with its own sockets, resolver and
//! timers, and feeds back what happened; nothing here blocks or holds a thread, so a parent that
//! stalls costs a socket and a timer entry, and a client that leaves ends the attempt by dropping
//! it (which records nothing about the parent: health is learnt from attempts that end).
//!
//! The policy is [`upstream`](crate::upstream)'s: the request ([`connect_request`],
//! [`bind_request`]), the parents' order and health ([`Upstreams::order`], [`Upstreams::record`]),
//! failover while a parent cannot be reached (its name does not resolve, no address connects
//! within the connect timeout), and once one is connected, its reply is the answer
//! ([`finish_connect`], [`first_bind_reply`], [`second_bind_reply`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use socks4_server::chain::{AnswerTo, Attempt, Io};
//! use socks4_server::upstream::{ChainTarget, Upstreams};
//! let rule: socks4_core::rules::Rule = "allow via socks4a://127.0.0.1:9050".parse()?;
//! let (route, now) = (rule.route.unwrap(), Instant::now());
//! let target = ChainTarget::Host("duck.onion".into(), 443);
//! let ups = Arc::new(Upstreams::new());
//! let client = [127, 0, 0, 1].into();
//! let mut attempt = Attempt::connect(ups, &route, &target, client, b"", Duration::from_secs(5), now).unwrap();
//! assert!(matches!(attempt.poll(), Io::Connect(addr) if addr.port() == 9050));
//! attempt.handle_connected(now, Ok(()));
//! let Io::Write(request) = attempt.poll() else { panic!() };
//! let n = request.len();
//! attempt.handle_written(n);
//! assert_eq!(attempt.poll(), Io::Read(8));
//! attempt.handle_input(now, &[0, 90, 0, 0, 0, 0, 0, 0]);
//! let Io::Answer(answer) = attempt.poll() else { panic!() };
//! assert_eq!((answer.to, answer.result), (AnswerTo::Connect, Ok("0.0.0.0:0".parse()?)));
//! assert_eq!(attempt.via().unwrap().port, 9050);
//! assert_eq!(attempt.poll(), Io::Done);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socks4_core::driver::Candidates;
use socks4_core::rules::{Parent, Route};
use socks4_core::{ClientEvent, ClientHandshake, Failure, Misuse, ServerHandshake};

use crate::upstream::{
    ChainTarget, Upstreams, bind_request, connect_request, finish_connect, first_bind_reply, reached, second_bind_reply,
};

/// What the driver does next for an [`Attempt`] ([`Attempt::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io<'a> {
    /// Look up the parent's host name (`port` for `getaddrinfo`); answer with
    /// [`Attempt::handle_resolved`] and this `parent` number. Emitted once per parent.
    Resolve {
        /// The parent's host name.
        host: &'a str,
        /// The parent's port.
        port: u16,
        /// Which parent of the attempt this is (a late answer about another one is ignored).
        parent: usize,
    },
    /// Close any connection to a parent this attempt opened before, and open a TCP connection to
    /// this address; answer with [`Attempt::handle_connected`]. Emitted once per address.
    Connect(SocketAddr),
    /// Write (some of) these bytes to the parent; answer with [`Attempt::handle_written`].
    Write(&'a [u8]),
    /// Read at most this many bytes from the parent (never more: what follows a reply is the
    /// destination's data, for the relay); answer with [`Attempt::handle_input`],
    /// [`Attempt::handle_eof`] or [`Attempt::handle_error`].
    Read(usize),
    /// A reply for the client's handshake: give it to the [`ServerHandshake`]
    /// ([`Answer::apply`]). On an error, close the connection to the parent. Emitted once each.
    Answer(Answer),
    /// Nothing to do until the awaited I/O happens or [`deadline`](Attempt::deadline) passes
    /// (then [`Attempt::handle_timeout`]).
    Wait,
    /// The attempt is over: the connection to the parent (after a granted CONNECT, or BIND's
    /// second reply) is the relay's.
    Done,
}

/// Which of the handshake's questions an [`Answer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerTo {
    /// `Output::Connect`: [`ServerHandshake::handle_connected`].
    Connect,
    /// `Output::Listen`, BIND's first reply: [`ServerHandshake::handle_listening`].
    Listen,
    /// BIND's second reply: [`ServerHandshake::handle_bind_peer`].
    BindPeer,
}

/// A reply of the parent (or the attempt's failure), for the client's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The handshake's question it answers.
    pub to: AnswerTo,
    /// The address for our reply (the parent's bound address, where it listens, the BIND peer),
    /// or why not (a parent's refusal is [`Failure::Rejected`]).
    pub result: Result<SocketAddr, Failure>,
}

impl Answer {
    /// Gives the answer to `hs`.
    ///
    /// # Errors
    /// If `hs` was not asking (a bug of the driver).
    pub fn apply(self, hs: &mut ServerHandshake, now: Duration) -> Result<(), Misuse> {
        match self.to {
            AnswerTo::Connect => hs.handle_connected(now, self.result),
            AnswerTo::Listen => hs.handle_listening(now, self.result),
            AnswerTo::BindPeer => hs.handle_bind_peer(now, self.result),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Start the next parent of the plan (or end with the last failure).
    NextParent,
    /// The parent's name is being looked up.
    Resolving {
        asked: bool,
    },
    /// Connecting to `addr` (one of the parent's addresses; the rest in `candidates`).
    Connecting {
        addr: SocketAddr,
        asked: bool,
    },
    /// Connected: writing the request, `written` bytes so far.
    Writing {
        written: usize,
    },
    /// Reading the (first) reply.
    Reading,
    /// BIND: the parent listens; reading its second reply.
    AwaitingPeer,
    /// An answer to hand out, then `then`.
    Answering(Answer, Box<State>),
    Done,
}

/// A CONNECT or BIND through a route's parent proxies, sans IO (see the [module docs](self)).
/// Drop it to abandon the attempt (its client left): that records nothing.
#[derive(Debug)]
pub struct Attempt {
    upstreams: Arc<Upstreams>,
    /// The parents in the order to try them.
    parents: Vec<Parent>,
    /// The parent being tried: `parents[current - 1]` (0: none yet).
    current: usize,
    /// The request to send to each parent.
    request: ClientHandshake,
    /// The request sent to the current parent, and its reply parser.
    hs: ClientHandshake,
    bind: bool,
    state: State,
    /// The current parent's addresses not tried yet.
    candidates: Candidates,
    /// The address connected to.
    connected: Option<SocketAddr>,
    /// Per parent: resolve, connect, write and read the first reply by this.
    timeout: Duration,
    /// BIND: the second reply within this, from the first.
    bind_timeout: Duration,
    deadline: Option<Instant>,
    /// The last parent that could not be reached, and why.
    last_failure: Option<Failure>,
    /// The parent that answered, or was tried last.
    via: Option<Parent>,
}

impl Attempt {
    /// A CONNECT to `target` through `route` for the client at `client` ([`connect_request`]'s
    /// request, `timeout` per parent), its health recorded in `upstreams` (the process's: [`Upstreams::global`]).
    ///
    /// # Errors
    /// When the request cannot be made (the client's reply: 91), as [`connect_request`].
    pub fn connect(
        upstreams: Arc<Upstreams>,
        route: &Route,
        target: &ChainTarget,
        client: IpAddr,
        client_user_id: &[u8],
        timeout: Duration,
        now: Instant,
    ) -> Result<Self, Failure> {
        let request = connect_request(route, target, client, client_user_id)?;
        Ok(Self::new(upstreams, route, request, false, timeout, Duration::ZERO, now))
    }

    /// A BIND for `expected_peer` through `route` for the client at `client` ([`bind_request`]): the first reply within
    /// `timeout` per parent, the second within `bind_timeout` of it.
    ///
    /// # Errors
    /// When the request cannot be made (an IPv6 peer, a user id that cannot be sent).
    pub fn bind(
        upstreams: Arc<Upstreams>,
        route: &Route,
        expected_peer: SocketAddr,
        client: IpAddr,
        client_user_id: &[u8],
        (timeout, bind_timeout): (Duration, Duration),
        now: Instant,
    ) -> Result<Self, Failure> {
        let IpAddr::V4(ip) = expected_peer.ip().to_canonical() else { return Err(Failure::Other) };
        let request = bind_request(route, SocketAddrV4::new(ip, expected_peer.port()), client, client_user_id)?;
        Ok(Self::new(upstreams, route, request, true, timeout, bind_timeout, now))
    }

    fn new(
        upstreams: Arc<Upstreams>,
        route: &Route,
        request: ClientHandshake,
        bind: bool,
        timeout: Duration,
        bind_timeout: Duration,
        now: Instant,
    ) -> Self {
        let parents = upstreams.order(route, now).into_iter().cloned().collect();
        let hs = request.clone();
        let mut attempt = Self {
            upstreams,
            parents,
            current: 0,
            request,
            hs,
            bind,
            state: State::NextParent,
            candidates: Candidates::default(),
            connected: None,
            timeout,
            bind_timeout,
            deadline: None,
            last_failure: None,
            via: None,
        };
        attempt.next_parent(now);
        attempt
    }

    /// What to do next. Call again after each answer to it.
    pub fn poll(&mut self) -> Io<'_> {
        match &mut self.state {
            State::NextParent | State::Done => Io::Done,
            State::Resolving { asked } => {
                if std::mem::replace(asked, true) {
                    return Io::Wait;
                }
                let parent = &self.parents[self.current - 1];
                Io::Resolve { host: &parent.host, port: parent.port, parent: self.current }
            }
            State::Connecting { addr, asked } => match std::mem::replace(asked, true) {
                true => Io::Wait,
                false => Io::Connect(*addr),
            },
            State::Writing { written } => Io::Write(&self.hs.request_bytes()[*written..]),
            State::Reading | State::AwaitingPeer => Io::Read(self.hs.bytes_wanted()),
            State::Answering(..) => {
                let State::Answering(answer, then) = std::mem::replace(&mut self.state, State::Done) else {
                    unreachable!("matched above")
                };
                self.state = *then;
                Io::Answer(answer)
            }
        }
    }

    /// When the current step times out (the connect timeout per parent; BIND's second reply's
    /// timeout), if it can.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Resolving { .. }
            | State::Connecting { .. }
            | State::Writing { .. }
            | State::Reading
            | State::AwaitingPeer => self.deadline,
            _ => None,
        }
    }

    /// Whether it is a BIND.
    pub fn is_bind(&self) -> bool {
        self.bind
    }

    /// Whether the handshake's outgoing phase still waits for it: the connect (or BIND's first
    /// reply) through a parent is under way, bounded by the attempt's timeout per parent rather
    /// than the handshake's.
    pub fn is_reaching(&self) -> bool {
        !matches!(self.state, State::AwaitingPeer | State::Done)
            && !matches!(&self.state, State::Answering(a, _) if a.to == AnswerTo::BindPeer)
    }

    /// The parent that answered, or the last one tried (for the log line:
    /// [`Via`](crate::upstream::Via)).
    pub fn via(&self) -> Option<&Parent> {
        self.via.as_ref()
    }

    /// The answer to [`Io::Resolve`] for `parent` (a lookup's [`Candidates`]).
    pub fn handle_resolved(&mut self, now: Instant, parent: usize, mut candidates: Candidates) {
        if parent != self.current || !matches!(self.state, State::Resolving { asked: true }) {
            return;
        }
        match candidates.first() {
            Ok(ip) => {
                let port = self.parents[self.current - 1].port;
                self.candidates = candidates;
                self.state = State::Connecting { addr: SocketAddr::new(ip, port), asked: false };
            }
            Err(failure) => self.unreachable(now, failure),
        }
    }

    /// The answer to [`Io::Connect`]: connected, or why not.
    pub fn handle_connected(&mut self, now: Instant, result: Result<(), Failure>) {
        let State::Connecting { addr, asked: true } = self.state else { return };
        match result {
            Ok(()) => {
                self.connected = Some(addr);
                self.state = State::Writing { written: 0 };
            }
            Err(failure) => match self.candidates.next_after(failure) {
                Some(ip) => self.state = State::Connecting { addr: SocketAddr::new(ip, addr.port()), asked: false },
                None => self.unreachable(now, failure),
            },
        }
    }

    /// `n` bytes of [`Io::Write`]'s were written.
    pub fn handle_written(&mut self, n: usize) {
        let State::Writing { written } = &mut self.state else { return };
        *written = (*written + n).min(self.hs.request_bytes().len());
        if *written == self.hs.request_bytes().len() {
            self.state = State::Reading;
        }
    }

    /// Bytes read from the parent ([`Io::Read`]); returns how many were used (those past a
    /// reply are not: they belong to the relay).
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> usize {
        if !matches!(self.state, State::Reading | State::AwaitingPeer) {
            return 0;
        }
        let (used, event) = match self.hs.handle_input(bytes) {
            Ok(step) => step,
            Err(_malformed) => {
                self.reply_failed(now, Failure::Other);
                return bytes.len();
            }
        };
        if let Some(event) = event {
            self.replied(now, event);
        }
        used
    }

    /// The parent closed its side before (all of) its reply.
    pub fn handle_eof(&mut self, now: Instant) {
        if matches!(self.state, State::Writing { .. } | State::Reading | State::AwaitingPeer) {
            self.reply_failed(now, Failure::Other);
        }
    }

    /// The connection to the parent failed (reading or writing); `failure` from the I/O error.
    pub fn handle_error(&mut self, now: Instant, failure: Failure) {
        match self.state {
            State::Connecting { asked: true, .. } => self.handle_connected(now, Err(failure)),
            // A reset before the reply is the parent's answer: 91 (a timeout stays one).
            State::Writing { .. } | State::Reading | State::AwaitingPeer => {
                self.reply_failed(now, if failure == Failure::TimedOut { failure } else { Failure::Other });
            }
            _ => {}
        }
    }

    /// The [`deadline`](Self::deadline) may have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline().is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Resolving { .. } | State::Connecting { .. } => self.unreachable(now, Failure::TimedOut),
            _ => self.reply_failed(now, Failure::TimedOut),
        }
    }

    /// The current parent could not be reached: its health, then the next parent.
    fn unreachable(&mut self, now: Instant, failure: Failure) {
        if let Some(parent) = self.current.checked_sub(1).and_then(|i| self.parents.get(i)) {
            self.upstreams.record(parent, false, now);
        }
        self.last_failure = Some(failure);
        self.next_parent(now);
    }

    /// Starts the next parent, or ends with the last one's failure.
    fn next_parent(&mut self, now: Instant) {
        self.connected = None;
        let Some(parent) = self.parents.get(self.current) else {
            let to = if self.bind { AnswerTo::Listen } else { AnswerTo::Connect };
            let failure = self.last_failure.unwrap_or(Failure::Unreachable);
            return self.answer(Answer { to, result: Err(failure) }, State::Done);
        };
        self.current += 1;
        self.via = Some(parent.clone());
        self.hs = self.request.clone();
        self.deadline = Some(now + self.timeout);
        self.state = match parent.host.parse::<IpAddr>() {
            Ok(ip) => {
                self.candidates = Candidates::default();
                State::Connecting { addr: SocketAddr::new(ip, parent.port), asked: false }
            }
            Err(_) => State::Resolving { asked: false },
        };
    }

    /// A complete reply from the connected parent.
    fn replied(&mut self, now: Instant, event: ClientEvent) {
        match (&self.state, self.bind) {
            (State::AwaitingPeer, _) => {
                let result = second_bind_reply(event);
                self.answer(Answer { to: AnswerTo::BindPeer, result }, State::Done);
            }
            (_, false) => {
                let result = finish_connect(event);
                self.record_answer(now, &result);
                self.answer(Answer { to: AnswerTo::Connect, result }, State::Done);
            }
            (_, true) => {
                let result = first_bind_reply(event, self.connected);
                self.record_answer(now, &result);
                self.deadline = Some(now + self.bind_timeout);
                let then = if result.is_ok() { State::AwaitingPeer } else { State::Done };
                self.answer(Answer { to: AnswerTo::Listen, result }, then);
            }
        }
    }

    /// The connected parent's reply could not be read: the client's answer is `failure` (no second
    /// parent: it could reach the destination twice).
    fn reply_failed(&mut self, now: Instant, failure: Failure) {
        let to = match (&self.state, self.bind) {
            (State::AwaitingPeer, _) => AnswerTo::BindPeer,
            (_, true) => AnswerTo::Listen,
            (_, false) => AnswerTo::Connect,
        };
        if to != AnswerTo::BindPeer {
            self.record_answer(now, &Err::<(), _>(failure));
        }
        self.answer(Answer { to, result: Err(failure) }, State::Done);
    }

    fn record_answer<T>(&self, now: Instant, result: &Result<T, Failure>) {
        if let Some(parent) = &self.via {
            self.upstreams.record(parent, reached(result), now);
        }
    }

    fn answer(&mut self, answer: Answer, then: State) {
        self.state = State::Answering(answer, Box::new(then));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        let rule: socks4_core::rules::Rule = text.parse().unwrap();
        rule.route.unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Drives `attempt` until it answers: connects fail on the ports in `refused`, resolves go to
    /// `lookup`, the parent's bytes are `reply`, split at `split`.
    fn run(attempt: &mut Attempt, now: Instant, refused: &[u16], reply: &[u8], split: usize) -> (Vec<u8>, Answer) {
        let mut sent = Vec::new();
        let mut input = reply;
        loop {
            match attempt.poll() {
                Io::Resolve { parent, .. } => attempt.handle_resolved(
                    now,
                    parent,
                    Candidates::from_lookup(Ok::<_, std::io::Error>(["127.0.0.1:1081".parse().unwrap()])),
                ),
                Io::Connect(addr) if refused.contains(&addr.port()) => {
                    attempt.handle_connected(now, Err(Failure::Refused));
                }
                Io::Connect(_) => attempt.handle_connected(now, Ok(())),
                Io::Write(bytes) => {
                    let n = bytes.len().min(3);
                    sent.extend_from_slice(&bytes[..n]);
                    attempt.handle_written(n);
                }
                Io::Read(max) if input.is_empty() => {
                    assert!(max > 0);
                    attempt.handle_eof(now);
                }
                Io::Read(max) => {
                    let n = max.min(split.max(1)).min(input.len());
                    let used = attempt.handle_input(now, &input[..n]);
                    assert_eq!(used, n, "never more than asked for");
                    input = &input[n..];
                }
                Io::Answer(answer) => return (sent, answer),
                Io::Wait | Io::Done => panic!("stuck in {:?}", attempt.state),
            }
        }
    }

    #[test]
    fn fails_over_to_a_parent_that_answers_and_records_health() {
        let ups = Arc::new(Upstreams::new());
        let r = route("allow via socks4a://127.0.0.1:1,socks4a://127.0.0.1:2 as tor");
        let now = Instant::now();
        let target = ChainTarget::Host("duck.onion".into(), 443);
        let mut attempt = Attempt::connect(Arc::clone(&ups), &r, &target, LOCAL, b"alice:secret", SECOND, now).unwrap();
        let (sent, answer) = run(&mut attempt, now, &[1], &[0, 90, 0, 80, 1, 2, 3, 4], 3);
        assert_eq!(sent, b"\x04\x01\x01\xbb\x00\x00\x00\x01tor\0duck.onion\0");
        assert_eq!(answer, Answer { to: AnswerTo::Connect, result: Ok("1.2.3.4:80".parse().unwrap()) });
        assert_eq!(attempt.via().unwrap().port, 2);
        assert_eq!(attempt.poll(), Io::Done);
        assert_eq!(ups.stats().failures, 1);
    }

    #[test]
    fn a_refusal_is_the_answer_and_a_bad_or_short_reply_a_91() {
        let ups = Arc::new(Upstreams::new());
        let r = route("allow via socks4://127.0.0.1:1,socks4://127.0.0.1:2");
        let (now, target) = (Instant::now(), ChainTarget::Addr("192.0.2.1:80".parse().unwrap()));
        let mut attempt = Attempt::connect(Arc::clone(&ups), &r, &target, LOCAL, b"alice:x", SECOND, now).unwrap();
        let (sent, answer) = run(&mut attempt, now, &[], &[0, 93, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(sent, b"\x04\x01\x00\x50\xc0\x00\x02\x01alice\0", "the name, not the token");
        assert_eq!(answer.result, Err(Failure::Rejected(socks4_core::ReplyCode::IdentMismatch)));
        assert_eq!((attempt.via().unwrap().port, ups.stats().failures), (1, 0), "a refusal is not a failure");

        for reply in [&b"HTTP/1.1 400 Bad"[..], &[0, 90, 0]] {
            let mut attempt = Attempt::connect(Arc::clone(&ups), &r, &target, LOCAL, b"", SECOND, now).unwrap();
            let (_, answer) = run(&mut attempt, now, &[], reply, 2);
            assert_eq!(answer.result, Err(Failure::Other), "{reply:?}: no second parent");
            assert_eq!(attempt.via().unwrap().port, 1);
        }
        assert_eq!(ups.stats().failures, 2);
        let r4 = route("allow via socks4://127.0.0.1:1");
        let host = ChainTarget::Host("a.example".into(), 80);
        assert_eq!(Attempt::connect(ups, &r4, &host, LOCAL, b"", SECOND, now).err(), Some(Failure::Other));
    }

    #[test]
    fn timeouts_fail_over_before_the_connect_and_answer_after_it() {
        let ups = Arc::new(Upstreams::new());
        let r = route("allow via socks4://127.0.0.1:1,socks4://parent.example:2");
        let (now, target) = (Instant::now(), ChainTarget::Addr("192.0.2.1:80".parse().unwrap()));
        let mut attempt = Attempt::connect(Arc::clone(&ups), &r, &target, LOCAL, b"", SECOND, now).unwrap();
        assert!(matches!(attempt.poll(), Io::Connect(_)));
        assert_eq!(attempt.poll(), Io::Wait);
        attempt.handle_timeout(now + SECOND / 2);
        assert_eq!(attempt.poll(), Io::Wait, "not yet");
        attempt.handle_timeout(now + SECOND);
        let later = now + SECOND;
        assert_eq!(attempt.poll(), Io::Resolve { host: "parent.example", port: 2, parent: 2 });
        assert_eq!(attempt.deadline(), Some(later + SECOND), "a deadline per parent");
        attempt.handle_resolved(later, 1, Candidates::failed(Failure::NotFound));
        assert_eq!(attempt.poll(), Io::Wait, "a late answer about the first parent is ignored");
        let lookup = Candidates::from_lookup(Ok::<_, std::io::Error>(["127.0.0.2:2".parse().unwrap()]));
        attempt.handle_resolved(later, 2, lookup);
        assert_eq!(attempt.poll(), Io::Connect("127.0.0.2:2".parse().unwrap()));
        attempt.handle_connected(later, Ok(()));
        let Io::Write(bytes) = attempt.poll() else { panic!() };
        let n = bytes.len();
        attempt.handle_written(n);
        assert_eq!(attempt.poll(), Io::Read(8));
        attempt.handle_timeout(later + SECOND);
        let Io::Answer(answer) = attempt.poll() else { panic!() };
        assert_eq!(answer.result, Err(Failure::TimedOut), "a stalled parent: no second attempt");
        assert_eq!(attempt.poll(), Io::Done);
        assert_eq!(ups.stats().failures, 2);

        let mut none =
            Attempt::connect(ups, &route("allow via socks4://127.0.0.1:1"), &target, LOCAL, b"", SECOND, now).unwrap();
        assert!(matches!(none.poll(), Io::Connect(_)));
        none.handle_error(now, Failure::Refused);
        let Io::Answer(answer) = none.poll() else { panic!() };
        assert_eq!(answer.result, Err(Failure::Refused), "the last parent's failure");
    }

    #[test]
    fn bind_hands_out_both_replies() {
        let ups = Arc::new(Upstreams::new());
        let r = route("allow via socks4://127.0.0.1:1080");
        let now = Instant::now();
        let peer = "192.0.2.7:0".parse().unwrap();
        let mut attempt = Attempt::bind(Arc::clone(&ups), &r, peer, LOCAL, b"bob", (SECOND, 2 * SECOND), now).unwrap();
        let replies = [[0, 90, 0x9c, 0x40, 0, 0, 0, 0], [0, 90, 0x13, 0x88, 192, 0, 2, 7]].concat();
        let (sent, first) = run(&mut attempt, now, &[], &replies, 5);
        assert_eq!(sent, b"\x04\x02\x00\x00\xc0\x00\x02\x07bob\0");
        assert_eq!(first, Answer { to: AnswerTo::Listen, result: Ok("127.0.0.1:40000".parse().unwrap()) });
        assert_eq!(attempt.deadline(), Some(now + 2 * SECOND), "the second reply's own timeout");
        let (_, second) = run(&mut attempt, now, &[], &replies[8..], 8);
        assert_eq!(second, Answer { to: AnswerTo::BindPeer, result: Ok("192.0.2.7:5000".parse().unwrap()) });
        assert_eq!(attempt.poll(), Io::Done);

        let mut hs = ServerHandshake::new(Duration::ZERO, Default::default(), Default::default());
        assert!(first.apply(&mut hs, Duration::ZERO).is_err(), "a handshake that did not ask");
        let v6 = "[2001:db8::1]:0".parse().unwrap();
        assert!(Attempt::bind(ups, &r, v6, LOCAL, b"", (SECOND, SECOND), now).is_err(), "SOCKS4 cannot ask for IPv6");
    }
}
