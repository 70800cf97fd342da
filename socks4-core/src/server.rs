//! The server side of the handshake as a sans-IO state machine.
//!
//! Feed it what happens ([`handle_input`](ServerHandshake::handle_input), the `handle_*` results of
//! the actions it asked for, [`handle_timeout`](ServerHandshake::handle_timeout)) and drain what it
//! wants done with [`poll_output`](ServerHandshake::poll_output) until that returns
//! [`Output::Wait`], [`Output::Relay`] or [`Output::Closed`].
//!
//! Time is the caller's: every `now` is a reading of one monotonic clock as a [`Duration`] since an
//! epoch the caller picks (for example `Instant::now()` when the worker started); deadlines come
//! back on the same clock.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use crate::error::{Misuse, ParseError};
use crate::reply::{Reply, ReplyCode};
use crate::request::{Command, Dest, Limits, MAX_REQUEST_LEN, Request, Status, parse_request};
use crate::rules::{AccessRequest, Action, Rules};
use crate::timeouts::Timeouts;

/// Why an action the runtime performed failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// The phase's deadline passed (or the runtime's own timeout fired).
    TimedOut,
    /// The destination refused the connection.
    Refused,
    /// The destination network or host is unreachable.
    Unreachable,
    /// The host name has no IPv4 address.
    NotFound,
    /// Any other error.
    Other,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "timed out",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::NotFound => "no IPv4 address",
            Self::Other => "failed",
        })
    }
}

#[cfg(feature = "std")]
impl From<&std::io::Error> for Failure {
    fn from(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::TimedOut => Self::TimedOut,
            K::ConnectionRefused => Self::Refused,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => Self::Unreachable,
            K::NotFound => Self::NotFound,
            _ => Self::Other,
        }
    }
}

/// Why the handshake ended without a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed before sending a whole request (no reply sent).
    ClientEof,
    /// The handshake phase timed out: no whole request in time (no reply sent), or no decision on a
    /// complete one (reply 91 sent).
    HandshakeTimeout,
    /// The request was malformed (reply 91 sent).
    Invalid(ParseError),
    /// The request was refused by policy (reply sent with the caller's code).
    Denied(ReplyCode),
    /// A SOCKS4a name could not be resolved (reply 91 sent).
    ResolveFailed(Failure),
    /// The outgoing connection failed (reply 91 sent).
    ConnectFailed(Failure),
    /// BIND: the server could not listen or accept (reply 91 sent).
    BindFailed(Failure),
    /// BIND: no peer connected in time (second reply 91 sent).
    BindTimeout,
    /// BIND: a peer other than the expected one connected (second reply 91 sent).
    WrongPeer(Ipv4Addr),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientEof => f.write_str("client closed during handshake"),
            Self::HandshakeTimeout => f.write_str("handshake timed out"),
            Self::Invalid(e) => write!(f, "invalid request: {e}"),
            Self::Denied(code) => write!(f, "denied by rules ({})", code.code()),
            Self::ResolveFailed(e) => write!(f, "resolve {e}"),
            Self::ConnectFailed(e) => write!(f, "connect {e}"),
            Self::BindFailed(e) => write!(f, "bind {e}"),
            Self::BindTimeout => f.write_str("bind: no peer in time"),
            Self::WrongPeer(ip) => write!(f, "bind: unexpected peer {ip}"),
        }
    }
}

/// What the state machine wants done next; returned by [`ServerHandshake::poll_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<'a> {
    /// Write this 8-byte reply to the client (`reply.to_bytes()`).
    Send(Reply),
    /// Resolve `host` to an IPv4 address; answer with [`ServerHandshake::handle_resolved`].
    Resolve {
        /// The SOCKS4a host name.
        host: &'a str,
        /// The requested port.
        port: u16,
    },
    /// Decide on this request: call [`accept`](ServerHandshake::accept),
    /// [`reject`](ServerHandshake::reject) or [`authorize`](ServerHandshake::authorize).
    /// Repeated until answered.
    Authorize(AccessRequest<'a>),
    /// Open a TCP connection; answer with [`ServerHandshake::handle_connected`] and the local address
    /// of the new connection.
    Connect(SocketAddrV4),
    /// BIND: listen on a fresh port of the address the client reached the server on; answer with
    /// [`ServerHandshake::handle_listening`], then accept one connection and answer with
    /// [`ServerHandshake::handle_bind_peer`].
    Listen {
        /// The only peer address the second reply may grant.
        expected_peer: Ipv4Addr,
    },
    /// The handshake is done: relay both ways. Client bytes after those
    /// [`handle_input`](ServerHandshake::handle_input) consumed go upstream first. Repeats.
    Relay,
    /// Nothing to do until input, a result, or the deadline (if any) passes. Then call
    /// [`handle_timeout`](ServerHandshake::handle_timeout).
    Wait {
        /// When the current phase times out, on the caller's clock.
        deadline: Option<Duration>,
    },
    /// The handshake failed; any reply has already been returned as [`Output::Send`]. Close the
    /// connection. Repeats.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Resolving { asked: bool },
    Authorizing,
    Connecting { asked: bool },
    Listening { asked: bool },
    AwaitingPeer,
    Relay,
    Closed(CloseReason),
}

/// The server side of one connection's handshake.
///
/// One flat value (about 600 bytes, no heap) per connection. It copies at most one request's worth
/// of bytes into its own buffer, so the caller may reuse its read buffer; bytes past the request
/// are never consumed and are the client's early payload.
///
/// ```
/// use core::net::SocketAddrV4;
/// use core::time::Duration;
/// use socks4_core::{Limits, Output, ReplyCode, ServerHandshake, Timeouts};
///
/// let now = Duration::ZERO;
/// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
/// let input = b"\x04\x01\x00\x50\x0a\x00\x00\x01\0GET / HTTP/1.0\r\n\r\n";
/// let used = hs.handle_input(now, input);
/// assert_eq!(&input[used..], b"GET / HTTP/1.0\r\n\r\n"); // early data, to forward first
/// assert!(matches!(hs.poll_output(), Output::Authorize(_)));
/// hs.accept(now)?;
/// assert_eq!(hs.poll_output(), Output::Connect(SocketAddrV4::new([10, 0, 0, 1].into(), 80)));
/// hs.handle_connected(now, Ok(SocketAddrV4::new([192, 0, 2, 7].into(), 40000)))?;
/// let Output::Send(reply) = hs.poll_output() else { panic!() };
/// assert_eq!(reply.code, ReplyCode::Granted);
/// assert_eq!(hs.poll_output(), Output::Relay);
/// # Ok::<(), socks4_core::Misuse>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    buf: [u8; MAX_REQUEST_LEN],
    len: u16,
    /// Length of the complete request in `buf`, 0 while incomplete.
    request_len: u16,
    resolved: Option<Ipv4Addr>,
    state: State,
    pending: Option<Reply>,
    deadline: Option<Duration>,
    limits: Limits,
    timeouts: Timeouts,
}

impl ServerHandshake {
    /// A handshake for a connection accepted at `now`.
    pub fn new(now: Duration, limits: Limits, timeouts: Timeouts) -> Self {
        Self {
            buf: [0; MAX_REQUEST_LEN],
            len: 0,
            request_len: 0,
            resolved: None,
            state: State::Reading,
            pending: None,
            deadline: Some(now.saturating_add(timeouts.handshake)),
            limits,
            timeouts,
        }
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// Feeds bytes read from the client; returns how many belong to the request.
    ///
    /// Once the request is complete (or rejected) it consumes nothing more: the unconsumed rest of
    /// `data`, and anything read later, is payload for the relay. Stop reading the client until
    /// [`Output::Relay`] so that the payload waits in the socket.
    pub fn handle_input(&mut self, now: Duration, data: &[u8]) -> usize {
        if self.state != State::Reading {
            return 0;
        }
        let old = self.len as usize;
        let take = data.len().min(MAX_REQUEST_LEN - old);
        self.buf[old..old + take].copy_from_slice(&data[..take]);
        let filled = old + take;
        match parse_request(&self.buf[..filled], &self.limits) {
            Ok(Status::Complete((req, used))) => {
                let is_domain = matches!(req.dest, Dest::Domain(_));
                self.len = used as u16;
                self.request_len = used as u16;
                if is_domain {
                    self.enter(State::Resolving { asked: false }, now, self.timeouts.connect);
                } else {
                    self.state = State::Authorizing;
                }
                used - old
            }
            Ok(Status::Partial) if filled < MAX_REQUEST_LEN => {
                self.len = filled as u16;
                take
            }
            // A full buffer that is still partial cannot happen with `u8` limits; treat it as too long.
            Ok(Status::Partial) => self.fail(CloseReason::Invalid(ParseError::UserIdTooLong), take),
            Err(e) => self.fail(CloseReason::Invalid(e), take),
        }
    }

    /// The client closed its sending side. Before the request is complete this ends the handshake;
    /// afterwards it changes nothing (the request stands; relay the half-close later).
    pub fn handle_eof(&mut self, _now: Duration) {
        if self.state == State::Reading {
            self.close(CloseReason::ClientEof);
        }
    }

    /// The deadline from [`Output::Wait`] may have passed. A call before the deadline is a no-op.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Reading => self.close(CloseReason::HandshakeTimeout),
            State::Authorizing => self.reject_with(CloseReason::HandshakeTimeout),
            State::Resolving { .. } => self.reject_with(CloseReason::ResolveFailed(Failure::TimedOut)),
            State::Connecting { .. } => self.reject_with(CloseReason::ConnectFailed(Failure::TimedOut)),
            State::Listening { .. } => self.reject_with(CloseReason::BindFailed(Failure::TimedOut)),
            State::AwaitingPeer => self.reject_with(CloseReason::BindTimeout),
            State::Relay | State::Closed(_) => self.deadline = None,
        }
    }

    /// Grants the request from [`Output::Authorize`]: the next output is `Connect` or `Listen`.
    pub fn accept(&mut self, now: Duration) -> Result<(), Misuse> {
        let command = match (self.state, self.request()) {
            (State::Authorizing, Some(req)) => req.command,
            _ => return Err(Misuse { call: "accept" }),
        };
        let next = match command {
            Command::Connect => State::Connecting { asked: false },
            Command::Bind => State::Listening { asked: false },
        };
        self.enter(next, now, self.timeouts.connect);
        Ok(())
    }

    /// Refuses the request from [`Output::Authorize`] with a rejection code (91, 92 or 93).
    pub fn reject(&mut self, code: ReplyCode) -> Result<(), Misuse> {
        if self.state != State::Authorizing || code == ReplyCode::Granted {
            return Err(Misuse { call: "reject" });
        }
        self.pending = Some(Reply { code, ..Reply::rejected() });
        self.close(CloseReason::Denied(code));
        Ok(())
    }

    /// Answers [`Output::Authorize`] with the rules' decision for `client` (deny → reply 91).
    pub fn authorize(&mut self, now: Duration, rules: &Rules, client: IpAddr) -> Result<Action, Misuse> {
        let action = match (self.state, self.access_request()) {
            (State::Authorizing, Some(req)) => rules.evaluate(client, &req),
            _ => return Err(Misuse { call: "authorize" }),
        };
        match action {
            Action::Allow => self.accept(now)?,
            Action::Deny => self.reject(ReplyCode::Rejected)?,
        }
        Ok(action)
    }

    /// The result of [`Output::Resolve`]: the host's IPv4 address, or why there is none (→ 91).
    pub fn handle_resolved(&mut self, now: Duration, result: Result<Ipv4Addr, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Resolving { .. }) {
            return Err(Misuse { call: "handle_resolved" });
        }
        match result {
            Ok(ip) => {
                self.resolved = Some(ip);
                self.enter(State::Authorizing, now, self.timeouts.handshake);
            }
            Err(e) => self.reject_with(CloseReason::ResolveFailed(e)),
        }
        Ok(())
    }

    /// The result of [`Output::Connect`]: the outgoing connection's local address (sent in the
    /// reply), or why it failed (→ 91).
    pub fn handle_connected(&mut self, _now: Duration, result: Result<SocketAddrV4, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Connecting { .. }) {
            return Err(Misuse { call: "handle_connected" });
        }
        match result {
            Ok(bound) => self.grant(bound),
            Err(e) => self.reject_with(CloseReason::ConnectFailed(e)),
        }
        Ok(())
    }

    /// BIND: the result of [`Output::Listen`]: the listening address for the first reply (an
    /// unspecified IP tells the client to use the server's address), or why listening failed (→ 91).
    pub fn handle_listening(&mut self, now: Duration, result: Result<SocketAddrV4, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Listening { .. }) {
            return Err(Misuse { call: "handle_listening" });
        }
        match result {
            Ok(addr) => {
                self.pending = Some(Reply::new(ReplyCode::Granted, addr));
                self.enter(State::AwaitingPeer, now, self.timeouts.bind);
            }
            Err(e) => self.reject_with(CloseReason::BindFailed(e)),
        }
        Ok(())
    }

    /// BIND: the address of the peer that connected to the listener, or why none did. A peer whose
    /// IP differs from the request's gets the second reply 91; the expected one gets 90 and the relay.
    pub fn handle_bind_peer(&mut self, _now: Duration, result: Result<SocketAddrV4, Failure>) -> Result<(), Misuse> {
        let expected = match (self.state, self.access_request()) {
            (State::AwaitingPeer, Some(req)) => *req.addr.ip(),
            _ => return Err(Misuse { call: "handle_bind_peer" }),
        };
        match result {
            Ok(peer) if *peer.ip() == expected => self.grant(peer),
            Ok(peer) => self.reject_with(CloseReason::WrongPeer(*peer.ip())),
            Err(Failure::TimedOut) => self.reject_with(CloseReason::BindTimeout),
            Err(e) => self.reject_with(CloseReason::BindFailed(e)),
        }
        Ok(())
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// The next thing to do. Call until it returns `Wait`, `Relay` or `Closed`.
    pub fn poll_output(&mut self) -> Output<'_> {
        if let Some(reply) = self.pending.take() {
            return Output::Send(reply);
        }
        match self.state {
            State::Resolving { asked: false } => self.state = State::Resolving { asked: true },
            State::Connecting { asked: false } => self.state = State::Connecting { asked: true },
            State::Listening { asked: false } => self.state = State::Listening { asked: true },
            _ => {
                return match (self.state, self.access_request()) {
                    (State::Authorizing, Some(req)) => Output::Authorize(req),
                    (State::Relay, _) => Output::Relay,
                    (State::Closed(reason), _) => Output::Closed(reason),
                    _ => Output::Wait { deadline: self.deadline },
                };
            }
        }
        match (self.state, self.request(), self.access_request()) {
            (State::Resolving { .. }, Some(Request { dest: Dest::Domain(host), port, .. }), _) => {
                Output::Resolve { host, port }
            }
            (State::Connecting { .. }, _, Some(req)) => Output::Connect(req.addr),
            (State::Listening { .. }, _, Some(req)) => Output::Listen { expected_peer: *req.addr.ip() },
            _ => Output::Wait { deadline: self.deadline },
        }
    }

    // ---- accessors ----------------------------------------------------------------------------

    /// The complete request, once it has arrived (for logging and policy).
    pub fn request(&self) -> Option<Request<'_>> {
        let bytes = self.buf.get(..self.request_len as usize).filter(|b| !b.is_empty())?;
        match parse_request(bytes, &self.limits) {
            Ok(Status::Complete((req, _))) => Some(req),
            _ => None,
        }
    }

    /// The request's bytes as received, once complete (empty before): a copy lets the caller log
    /// the request after dropping the handshake (parse it back with [`parse_request`]).
    pub fn request_bytes(&self) -> &[u8] {
        &self.buf[..self.request_len as usize]
    }

    /// The request with its destination address: the literal one, or the SOCKS4a name's resolution.
    pub fn access_request(&self) -> Option<AccessRequest<'_>> {
        let req = self.request()?;
        let (ip, host) = match req.dest {
            Dest::Ip(ip) => (ip, None),
            Dest::Domain(host) => (self.resolved?, Some(host)),
        };
        Some(AccessRequest { command: req.command, addr: SocketAddrV4::new(ip, req.port), host, user_id: req.user_id })
    }

    /// The current phase's deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    // ---- transitions --------------------------------------------------------------------------

    fn enter(&mut self, state: State, now: Duration, timeout: Duration) {
        self.state = state;
        self.deadline = Some(now.saturating_add(timeout));
    }

    fn grant(&mut self, addr: SocketAddrV4) {
        self.pending = Some(Reply::new(ReplyCode::Granted, addr));
        self.state = State::Relay;
        self.deadline = None;
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed(reason);
        self.deadline = None;
    }

    fn reject_with(&mut self, reason: CloseReason) {
        self.pending = Some(Reply::rejected());
        self.close(reason);
    }

    fn fail(&mut self, reason: CloseReason, consumed: usize) -> usize {
        self.reject_with(reason);
        consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rules;
    use std::vec::Vec;

    const T0: Duration = Duration::from_secs(100);
    const SEC: Duration = Duration::from_secs(1);

    fn timeouts() -> Timeouts {
        Timeouts::default().with_handshake(SEC * 5).with_connect(SEC * 7).with_bind(SEC * 20)
    }

    fn hs() -> ServerHandshake {
        ServerHandshake::new(T0, Limits::default(), timeouts())
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(a.into(), port)
    }

    /// Drains outputs up to and including the first non-`Send`, returning the replies and it.
    fn drain(hs: &mut ServerHandshake) -> (Vec<Reply>, std::string::String) {
        let mut sent = Vec::new();
        loop {
            match hs.poll_output() {
                Output::Send(r) => sent.push(r),
                other => return (sent, std::format!("{other:?}")),
            }
        }
    }

    const CONNECT: &[u8] = b"\x04\x01\x00\x50\x0a\x00\x00\x01u\0";

    #[test]
    fn connect_happy_path_with_deadlines() {
        let mut hs = hs();
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 5) });
        assert_eq!(hs.handle_input(T0, CONNECT), CONNECT.len());
        let Output::Authorize(req) = hs.poll_output() else { panic!() };
        assert_eq!(req.addr, v4([10, 0, 0, 1], 80));
        assert_eq!(req.user_id, b"u");
        assert!(matches!(hs.poll_output(), Output::Authorize(_)), "repeats until answered");
        hs.accept(T0 + SEC).unwrap();
        assert_eq!(hs.poll_output(), Output::Connect(v4([10, 0, 0, 1], 80)));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 8) });
        assert_eq!(hs.handle_input(T0, b"more"), 0, "nothing consumed after the request");
        hs.handle_connected(T0, Ok(v4([10, 0, 0, 9], 5555))).unwrap();
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([10, 0, 0, 9], 5555))));
        assert_eq!(hs.poll_output(), Output::Relay);
        assert_eq!(hs.poll_output(), Output::Relay);
        assert_eq!(hs.deadline(), None);
        hs.handle_timeout(T0 + SEC * 1000);
        assert_eq!(hs.poll_output(), Output::Relay);
    }

    #[test]
    fn byte_at_a_time_then_early_data() {
        let mut hs = hs();
        let mut wire = CONNECT.to_vec();
        wire.extend_from_slice(b"early");
        let mut used = 0;
        for i in 0..CONNECT.len() - 1 {
            used += hs.handle_input(T0, &wire[i..i + 1]);
            assert!(matches!(hs.poll_output(), Output::Wait { .. }));
        }
        used += hs.handle_input(T0, &wire[CONNECT.len() - 1..]);
        assert_eq!(used, CONNECT.len());
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(hs.request().unwrap().user_id, b"u");
        assert_eq!(hs.request_bytes(), CONNECT);
    }

    #[test]
    fn socks4a_resolves_then_authorizes_with_host() {
        let mut hs = hs();
        hs.handle_input(T0, b"\x04\x01\x01\xbb\x00\x00\x00\x01\0Example.com\0");
        assert_eq!(hs.poll_output(), Output::Resolve { host: "Example.com", port: 443 });
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 7) });
        assert!(hs.access_request().is_none());
        hs.handle_resolved(T0 + SEC, Ok([93, 184, 216, 34].into())).unwrap();
        let rules = Rules::parse("deny to *.example.com\nallow to example.com port 443\n").unwrap();
        assert_eq!(hs.authorize(T0 + SEC, &rules, [127, 0, 0, 1].into()), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(v4([93, 184, 216, 34], 443)));
    }

    #[test]
    fn resolve_failure_and_timeout_reply_91() {
        let mut hs1 = hs();
        hs1.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0nope.invalid\0");
        assert!(matches!(hs1.poll_output(), Output::Resolve { .. }));
        hs1.handle_resolved(T0, Err(Failure::NotFound)).unwrap();
        let (sent, last) = drain(&mut hs1);
        assert_eq!(sent, [Reply::rejected()]);
        assert_eq!(last, std::format!("{:?}", Output::Closed(CloseReason::ResolveFailed(Failure::NotFound))));

        let mut hs2 = hs();
        hs2.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0slow\0");
        hs2.handle_timeout(T0 + SEC * 7 - Duration::from_nanos(1));
        assert!(matches!(hs2.poll_output(), Output::Resolve { .. }));
        hs2.handle_timeout(T0 + SEC * 7);
        assert_eq!(drain(&mut hs2).0, [Reply::rejected()]);
        assert_eq!(hs2.handle_resolved(T0, Ok(Ipv4Addr::LOCALHOST)), Err(Misuse { call: "handle_resolved" }));
    }

    #[test]
    fn invalid_request_gets_91_then_close() {
        for (bytes, err) in [
            (&b"GET / HTTP/1.1\r\n"[..], ParseError::BadVersion(b'G')),
            (&b"\x04\x09"[..], ParseError::BadCommand(9)),
            (&b"\x04\x01\x00\x50\x00\x00\x00\x01\0\0"[..], ParseError::EmptyHost),
        ] {
            let mut hs = hs();
            hs.handle_input(T0, bytes);
            assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
            assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Invalid(err)));
            assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Invalid(err)));
            assert_eq!(hs.handle_input(T0, b"\x04"), 0);
        }
    }

    #[test]
    fn eof_and_handshake_timeout_close_without_reply() {
        let mut a = hs();
        a.handle_input(T0, b"\x04\x01\x00");
        a.handle_eof(T0);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::ClientEof));

        let mut b = hs();
        b.handle_timeout(T0 + SEC * 4);
        assert!(matches!(b.poll_output(), Output::Wait { .. }));
        b.handle_timeout(T0 + SEC * 5);
        assert_eq!(b.poll_output(), Output::Closed(CloseReason::HandshakeTimeout));

        // After a complete request, EOF is only a half-close: the request stands.
        let mut c = hs();
        c.handle_input(T0, CONNECT);
        c.handle_eof(T0);
        assert!(matches!(c.poll_output(), Output::Authorize(_)));
        c.handle_timeout(T0 + SEC * 5);
        assert_eq!(c.poll_output(), Output::Send(Reply::rejected()), "a complete request gets its 91");
        assert_eq!(c.poll_output(), Output::Closed(CloseReason::HandshakeTimeout));
    }

    #[test]
    fn connect_failure_and_timeout() {
        let mut a = hs();
        a.handle_input(T0, CONNECT);
        a.accept(T0).unwrap();
        a.handle_connected(T0, Err(Failure::Refused)).unwrap();
        assert_eq!(drain(&mut a).0, [Reply::rejected()]);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::ConnectFailed(Failure::Refused)));

        let mut b = hs();
        b.handle_input(T0, CONNECT);
        b.accept(T0).unwrap();
        b.handle_timeout(T0 + SEC * 7);
        assert_eq!(b.poll_output(), Output::Send(Reply::rejected()), "the Connect action is superseded");
        assert_eq!(b.poll_output(), Output::Closed(CloseReason::ConnectFailed(Failure::TimedOut)));
    }

    #[test]
    fn reject_and_rules() {
        let mut a = hs();
        a.handle_input(T0, CONNECT);
        assert_eq!(a.reject(ReplyCode::Granted), Err(Misuse { call: "reject" }));
        a.reject(ReplyCode::IdentMismatch).unwrap();
        assert_eq!(
            a.poll_output().clone(),
            Output::Send(Reply { code: ReplyCode::IdentMismatch, ..Reply::rejected() })
        );
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::Denied(ReplyCode::IdentMismatch)));

        let rules = Rules::parse("deny user u\nallow").unwrap();
        let mut b = hs();
        b.handle_input(T0, CONNECT);
        assert_eq!(b.authorize(T0, &rules, [127, 0, 0, 1].into()), Ok(Action::Deny));
        assert_eq!(drain(&mut b).0, [Reply::rejected()]);
        assert_eq!(b.authorize(T0, &rules, [127, 0, 0, 1].into()), Err(Misuse { call: "authorize" }));
    }

    #[test]
    fn misuse_leaves_state_unchanged() {
        let mut hs = hs();
        assert_eq!(hs.accept(T0), Err(Misuse { call: "accept" }));
        assert_eq!(hs.reject(ReplyCode::Rejected), Err(Misuse { call: "reject" }));
        assert_eq!(hs.handle_connected(T0, Ok(v4([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_connected" }));
        assert_eq!(hs.handle_listening(T0, Ok(v4([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_listening" }));
        assert_eq!(hs.handle_bind_peer(T0, Ok(v4([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_bind_peer" }));
        assert_eq!(hs.handle_resolved(T0, Ok(Ipv4Addr::LOCALHOST)), Err(Misuse { call: "handle_resolved" }));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 5) });
        hs.handle_input(T0, CONNECT);
        assert_eq!(hs.handle_connected(T0, Ok(v4([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_connected" }));
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(std::format!("{}", Misuse { call: "accept" }), "`accept` called in a state that does not expect it");
    }

    fn bind_until_listening(expected: [u8; 4]) -> ServerHandshake {
        let mut hs = hs();
        let mut req = [0u8; 16];
        let n = Request { command: Command::Bind, ..Request::connect(v4(expected, 21), b"") }.encode(&mut req).unwrap();
        hs.handle_input(T0, &req[..n]);
        hs.accept(T0).unwrap();
        assert_eq!(hs.poll_output(), Output::Listen { expected_peer: expected.into() });
        hs.handle_listening(T0 + SEC, Ok(v4([127, 0, 0, 1], 40000))).unwrap();
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([127, 0, 0, 1], 40000))));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 21) });
        hs
    }

    #[test]
    fn bind_two_replies_then_relay() {
        let mut hs = bind_until_listening([127, 0, 0, 1]);
        hs.handle_bind_peer(T0, Ok(v4([127, 0, 0, 1], 5000))).unwrap();
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([127, 0, 0, 1], 5000))));
        assert_eq!(hs.poll_output(), Output::Relay);
    }

    #[test]
    fn bind_wrong_peer_timeout_and_failures() {
        let mut a = bind_until_listening([127, 0, 0, 2]);
        a.handle_bind_peer(T0, Ok(v4([127, 0, 0, 1], 5000))).unwrap();
        assert_eq!(drain(&mut a).0, [Reply::rejected()]);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::WrongPeer([127, 0, 0, 1].into())));

        let mut b = bind_until_listening([127, 0, 0, 1]);
        b.handle_timeout(T0 + SEC * 21);
        assert_eq!(drain(&mut b).0, [Reply::rejected()]);
        assert_eq!(b.poll_output(), Output::Closed(CloseReason::BindTimeout));

        let mut c = bind_until_listening([127, 0, 0, 1]);
        c.handle_bind_peer(T0, Err(Failure::TimedOut)).unwrap();
        assert_eq!(drain(&mut c).1, std::format!("{:?}", Output::Closed(CloseReason::BindTimeout)));
        let mut d = bind_until_listening([127, 0, 0, 1]);
        d.handle_bind_peer(T0, Err(Failure::Other)).unwrap();
        assert_eq!(drain(&mut d).1, std::format!("{:?}", Output::Closed(CloseReason::BindFailed(Failure::Other))));

        let mut e = hs();
        e.handle_input(T0, b"\x04\x02\x00\x15\x7f\x00\x00\x01\0");
        e.accept(T0).unwrap();
        e.handle_listening(T0, Err(Failure::Other)).unwrap();
        assert_eq!(drain(&mut e).0, [Reply::rejected()]);
        let mut f = hs();
        f.handle_input(T0, b"\x04\x02\x00\x15\x7f\x00\x00\x01\0");
        f.accept(T0).unwrap();
        f.handle_timeout(T0 + SEC * 7);
        assert_eq!(drain(&mut f).1, std::format!("{:?}", Output::Closed(CloseReason::BindFailed(Failure::TimedOut))));
    }

    #[test]
    fn reasons_and_failures_display() {
        let reasons = [
            CloseReason::ClientEof,
            CloseReason::HandshakeTimeout,
            CloseReason::Invalid(ParseError::EmptyHost),
            CloseReason::Denied(ReplyCode::Rejected),
            CloseReason::ResolveFailed(Failure::NotFound),
            CloseReason::ConnectFailed(Failure::Refused),
            CloseReason::BindFailed(Failure::Unreachable),
            CloseReason::BindTimeout,
            CloseReason::WrongPeer(Ipv4Addr::LOCALHOST),
        ];
        let texts: Vec<_> = reasons.iter().map(|r| std::format!("{r}")).collect();
        assert_eq!(texts[5], "connect refused");
        assert_eq!(texts[8], "bind: unexpected peer 127.0.0.1");
        assert!(texts.iter().all(|t| !t.is_empty()));
        assert_eq!(std::format!("{}", Failure::TimedOut), "timed out");
        assert_eq!(std::format!("{}", Failure::Other), "failed");
    }

    #[cfg(feature = "std")]
    #[test]
    fn io_errors_map_to_failures() {
        use std::io::{Error, ErrorKind};
        assert_eq!(Failure::from(&Error::from(ErrorKind::ConnectionRefused)), Failure::Refused);
        assert_eq!(Failure::from(&Error::from(ErrorKind::TimedOut)), Failure::TimedOut);
        assert_eq!(Failure::from(&Error::from(ErrorKind::HostUnreachable)), Failure::Unreachable);
        assert_eq!(Failure::from(&Error::from(ErrorKind::NotFound)), Failure::NotFound);
        assert_eq!(Failure::from(&Error::from(ErrorKind::Other)), Failure::Other);
    }
}
