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

use crate::config::Timeouts;
use crate::error::{Misuse, ParseError};
use crate::reply::{Reply, ReplyCode};
use crate::request::{Command, Dest, Limits, MAX_REQUEST_LEN, Request, Status, parse_request};
use crate::rules::{AccessRequest, Action, Rules};

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
    /// The client did not finish its request in time (no reply sent).
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
            State::Reading | State::Authorizing => self.close(CloseReason::HandshakeTimeout),
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
