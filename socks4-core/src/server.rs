//! The server side of the handshake as a sans-IO state machine ([`ServerHandshake`], whose docs
//! hold the phase and timeout table).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

use crate::error::{Misuse, ParseError};
use crate::ident::{ErrorKind, IdentReply};
use crate::reply::{Reply, ReplyCode};
use crate::request::{Command, Dest, Limits, MAX_REQUEST_LEN, Request, Status, parse_request};
use crate::rules::{AccessRequest, Action, Rules, is_forbidden_destination, numeric_host};
use crate::target::Target;
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
    /// The host name has no (usable) address.
    NotFound,
    /// An upstream proxy refused with this reply code; the client gets the same code (a
    /// [`Granted`](ReplyCode::Granted) here is treated as 91).
    Rejected(ReplyCode),
    /// Any other error.
    Other,
    /// The peer answered, but not with a valid answer: an ident reply that does not parse or is
    /// about other ports (see `From<IdentError>`), or identd closed before the end of its line.
    BadAnswer,
    /// The server's own limit refused the action (e.g. too many BIND requests waiting).
    OverLimit,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "timed out",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::NotFound => "no address",
            Self::Rejected(code) => return write!(f, "rejected by upstream ({})", code.code()),
            Self::Other => "failed",
            Self::BadAnswer => "bad answer",
            Self::OverLimit => "over the limit",
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
    /// The client left (its connection failed, or it closed while a BIND waited for the peer)
    /// before the handshake ended (no reply sent).
    ClientGone,
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
    WrongPeer(IpAddr),
    /// CONNECT to an address that is never a real destination: unspecified, broadcast or multicast
    /// (reply 91 sent, no rule asked).
    Forbidden(IpAddr),
    /// A SOCKS4 CONNECT by address while addresses are refused
    /// ([`refuse_addresses`](ServerHandshake::refuse_addresses)): the client resolved the name
    /// itself (reply 91 sent, no rule asked).
    AddressOnly(Ipv4Addr),
    /// Ident: the client's identd could not be asked or gave no valid answer in time (reply 92 sent).
    IdentUnavailable(Failure),
    /// Ident: identd named a user other than the request's user id (reply 93 sent).
    IdentMismatch,
    /// Ident: identd answered `ERROR` of this type, so it did not confirm the user id (reply 93 sent).
    IdentRefused(ErrorKind),
    /// A BIND by host name that the caller routes through a parent which takes names
    /// ([`forward_name`](ServerHandshake::forward_name)): the name is never looked up here, and
    /// the peer check needs an address, so it is refused (reply 91 sent).
    BindByName,
    /// The caller refused the request's user id (its credentials: a users file's check) with this
    /// code, before any rule was asked ([`refuse_user`](ServerHandshake::refuse_user)).
    UserRefused(ReplyCode),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientEof => f.write_str("client closed during handshake"),
            Self::ClientGone => f.write_str("client gone during handshake"),
            Self::HandshakeTimeout => f.write_str("handshake timed out"),
            Self::Invalid(e) => write!(f, "invalid request: {e}"),
            Self::Denied(code) => write!(f, "denied by rules ({})", code.code()),
            Self::ResolveFailed(e) => write!(f, "resolve {e}"),
            Self::ConnectFailed(e) => write!(f, "connect {e}"),
            Self::BindFailed(e) => write!(f, "bind {e}"),
            Self::BindTimeout => f.write_str("bind: no peer in time"),
            Self::WrongPeer(ip) => write!(f, "bind: unexpected peer {ip}"),
            Self::Forbidden(ip) => write!(f, "forbidden destination {ip}"),
            Self::AddressOnly(ip) => write!(f, "refused request by address {ip} (names required)"),
            Self::IdentUnavailable(e) => write!(f, "identd {e}"),
            Self::IdentMismatch => f.write_str("identd names another user"),
            Self::IdentRefused(kind) => write!(f, "identd answered ERROR {kind}"),
            Self::BindByName => f.write_str("BIND by host name on a route that forwards names: refused, not resolved"),
            Self::UserRefused(code) => write!(f, "auth refused ({})", code.code()),
        }
    }
}

/// What the state machine wants done next; returned by [`ServerHandshake::poll_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<'a> {
    /// Write this 8-byte reply to the client (`reply.to_bytes()`).
    Send(Reply),
    /// Resolve `host` to an address (IPv4 or IPv6); answer with [`ServerHandshake::handle_resolved`].
    /// Emitted once, and never with [`Names::Forward`] for a CONNECT, nor for a name written as
    /// a number ([`numeric_host`](crate::rules::numeric_host): `127.1`, `0x7f000001`, `::1`),
    /// which is taken as that address.
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
    /// Open a TCP connection to this target: an address (IPv4, or IPv6 from a SOCKS4a name), or with
    /// [`Names::Forward`] a host name to pass on unresolved. Answer with
    /// [`ServerHandshake::handle_connected`] and the local address of the new connection, or
    /// [`ServerHandshake::retry_connect`] with the name's next address. Emitted once per address.
    Connect(Target<'a>),
    /// Ask the client host's identd who owns the client's connection (RFC 1413, see
    /// [`ident`](crate::ident)): connect to port 113 of the client's address, write
    /// [`ident::Query::new`](crate::ident::Query::new)`(client port, server port)`, read the answer
    /// with [`ident::parse_reply`](crate::ident::parse_reply), and answer with
    /// [`ServerHandshake::handle_ident`]. Emitted once, after the request was allowed by a rule
    /// with `ident` or by [`ServerHandshake::accept_with_ident`].
    Ident,
    /// BIND: listen on a fresh port of the address the client reached the server on; answer with
    /// [`ServerHandshake::handle_listening`], then accept one connection and answer with
    /// [`ServerHandshake::handle_bind_peer`]. Emitted once.
    Listen {
        /// The only peer address the second reply may grant.
        expected_peer: IpAddr,
    },
    /// The handshake is done: relay both ways. Client bytes after those
    /// [`handle_input`](ServerHandshake::handle_input) consumed go upstream first. Repeats.
    Relay,
    /// Nothing to do until input, a result, or the deadline (if any) passes. Then call
    /// [`handle_timeout`](ServerHandshake::handle_timeout).
    Wait {
        /// When the current phase times out, on the caller's clock. Always `Some` today: every
        /// phase before the relay has a deadline (`Wait` is never returned after it).
        deadline: Option<Duration>,
    },
    /// The handshake failed; any reply has already been returned as [`Output::Send`]. Close the
    /// connection. Repeats. To close cleanly after a reply: write it, shut down the write side,
    /// then read and discard what the client still sends (bounded in bytes and time) before
    /// closing; closing a socket with unread input sends a reset, which can destroy the reply in
    /// flight.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Resolving { asked: bool },
    Authorizing,
    Ident { asked: bool },
    Connecting { asked: bool },
    Listening { asked: bool },
    AwaitingPeer,
    Relay,
    Closed(CloseReason),
}

/// What the server handshake does with a SOCKS4a host name in a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Names {
    /// Ask the caller to resolve it ([`Output::Resolve`]), authorize with the name and the address,
    /// and connect to the address (the default).
    #[default]
    Resolve,
    /// Resolve nothing: authorize with the name alone (no address, so `to CIDR` rules do not
    /// match) and hand the name on in [`Output::Connect`] as [`Target::Host`], for a proxy that
    /// forwards to an upstream SOCKS4a proxy (no DNS lookup, no DNS leak). BIND requests by name
    /// are still resolved: the peer check needs an address.
    Forward,
}

/// The server side of one connection's handshake.
///
/// One flat value (about 660 bytes, no heap) per connection. It copies at most one request's worth
/// of bytes into its own buffer, so the caller may reuse its read buffer; bytes past the request
/// are never consumed and are the client's early payload.
///
/// Feed it what happens ([`handle_input`](Self::handle_input), the `handle_*` results of
/// the actions it asked for, [`handle_timeout`](Self::handle_timeout)) and drain what it
/// wants done with [`poll_output`](Self::poll_output) until that returns
/// [`Output::Wait`], [`Output::Relay`] or [`Output::Closed`].
///
/// Time is the caller's: every `now` is a reading of one monotonic clock as a [`Duration`] since an
/// epoch the caller picks (for example `Instant::now()` when the worker started, see
/// `driver::Clock` with feature `std`); deadlines come back on the same clock.
///
/// ## Phases, outputs and timeouts
///
/// | phase | output | answered by | [`handle_timeout`](Self::handle_timeout) at the deadline |
/// |---|---|---|---|
/// | reading the request | `Wait` ([`wants_input`](Self::wants_input) is true) | [`handle_input`](Self::handle_input) / [`handle_eof`](Self::handle_eof) | close, no reply (`HandshakeTimeout`) |
/// | resolving a 4a name | `Resolve`, **once** | [`handle_resolved`](Self::handle_resolved) | reply 91 (`ResolveFailed(TimedOut)`) |
/// | deciding | `Authorize`, repeated until answered | [`accept`](Self::accept) / [`accept_with_ident`](Self::accept_with_ident) / [`reject`](Self::reject) / [`authorize`](Self::authorize) | reply 91 (`HandshakeTimeout`) |
/// | asking identd (a rule with `ident`, or `accept_with_ident`) | `Ident`, **once** | [`handle_ident`](Self::handle_ident) | reply 92 (`IdentUnavailable(TimedOut)`) |
/// | connecting | `Connect`, **once** per address | [`handle_connected`](Self::handle_connected) or [`retry_connect`](Self::retry_connect) | reply 91 (`ConnectFailed(TimedOut)`) |
/// | BIND: listening | `Listen`, **once** | [`handle_listening`](Self::handle_listening) | reply 91 (`BindFailed(TimedOut)`) |
/// | BIND: awaiting the peer | `Wait` | [`handle_bind_peer`](Self::handle_bind_peer) | second reply 91 (`BindTimeout`) |
/// | done | `Relay` or `Closed`, repeated | — | nothing |
///
/// The deadlines: the handshake timeout from accept covers reading and deciding; resolving gets the
/// connect timeout, asking identd the ident timeout, and connecting gets the connect timeout again
/// (shared by every address tried); awaiting a BIND peer gets the bind timeout. A `handle_timeout`
/// before the deadline is a no-op. `Send` is returned at most twice (BIND's two replies) and
/// always before the `Closed` it explains.
///
/// Every phase before the relay has a deadline: an [`Output::Wait`] always carries
/// `deadline: Some(_)` (its `Option` leaves room for a phase without one), so a driver needs no
/// "wait forever" branch during the handshake. [`deadline`](Self::deadline) is `None` only once
/// the handshake is over ([`Output::Relay`] or [`Output::Closed`]).
///
/// ## Reading and watching the client
///
/// Until the request is complete, read the client and feed every chunk to
/// [`handle_input`](Self::handle_input) (a read of 0 bytes is end of file: call
/// [`handle_eof`](Self::handle_eof); an empty `data` changes nothing). Once it is complete
/// ([`wants_input`](Self::wants_input) is false), stop *reading* the client — what it sends next
/// is payload that should wait in the socket for the relay — but keep *watching* it while the
/// handshake waits for a lookup, identd, a connect or a BIND peer: peek (`MSG_PEEK`) or poll for
/// readiness; a peek of 0 bytes is its end of file ([`handle_eof`](Self::handle_eof), which ends
/// a BIND wait and changes nothing otherwise), an error its failure
/// ([`handle_client_error`](Self::handle_client_error), which ends every phase), and data is
/// early payload (stop watching for the rest of the phase: the phase's deadline bounds it).
///
/// Whatever the rules say, a CONNECT to an address that is never a real destination (see
/// [`is_forbidden_destination`](crate::rules::is_forbidden_destination)) is refused with 91 and
/// [`CloseReason::Forbidden`], whether the address came literally or from a name.
///
/// ## Example
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
/// assert!(!hs.wants_input()); // the rest stays in the socket until the relay
/// assert!(matches!(hs.poll_output(), Output::Authorize(_)));
/// hs.accept(now)?;
/// assert_eq!(hs.poll_output(), Output::Connect(SocketAddrV4::new([10, 0, 0, 1].into(), 80).into()));
/// hs.handle_connected(now, Ok(SocketAddrV4::new([192, 0, 2, 7].into(), 40000).into()))?;
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
    resolved: Option<IpAddr>,
    /// A [`retry_connect`](Self::retry_connect) happened: later addresses keep the connect deadline.
    retried: bool,
    names: Names,
    refuse_addresses: bool,
    /// Identd confirmed the user id: a retried connect does not ask again.
    ident_confirmed: bool,
    /// Compare identd's answer with the user id's name only (up to its first `:`).
    ident_name_only: bool,
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
            retried: false,
            names: Names::Resolve,
            refuse_addresses: false,
            ident_confirmed: false,
            ident_name_only: false,
            state: State::Reading,
            pending: None,
            deadline: Some(now.saturating_add(timeouts.handshake)),
            limits,
            timeouts,
        }
    }

    /// Sets what happens to SOCKS4a names (default [`Names::Resolve`]).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Limits, Names, Output, ServerHandshake, Target, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default()).with_names(Names::Forward);
    /// hs.handle_input(now, b"\x04\x01\x01\xbb\x00\x00\x00\x01\0example.onion\0");
    /// let Output::Authorize(req) = hs.poll_output() else { panic!() };
    /// assert_eq!((req.host, req.addr), (Some("example.onion"), None)); // no placeholder address
    /// hs.accept(now)?;
    /// assert_eq!(hs.poll_output(), Output::Connect(Target::Host("example.onion", 443)));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    #[must_use]
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// With `true`, refuses every CONNECT that carries only an IP address (SOCKS4 rather than 4a),
    /// like Tor's `SafeSocks`: such a client resolved the name itself, leaking its DNS lookup to
    /// the local network. Reply 91 and [`CloseReason::AddressOnly`], before any rule. BIND always
    /// carries an address and is not affected.
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{CloseReason, Limits, Output, ServerHandshake, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default()).refuse_addresses(true);
    /// hs.handle_input(now, b"\x04\x01\x00\x50\x5d\xb8\xd8\x22\0");
    /// assert!(matches!(hs.poll_output(), Output::Send(_))); // 91
    /// assert_eq!(hs.poll_output(), Output::Closed(CloseReason::AddressOnly([93, 184, 216, 34].into())));
    /// ```
    #[must_use]
    pub fn refuse_addresses(mut self, refuse: bool) -> Self {
        self.refuse_addresses = refuse;
        self
    }

    /// With `true`, [`handle_ident`](Self::handle_ident) compares identd's answer with the user
    /// id up to its first `:` only: the name of a `NAME:TOKEN` user id, for a server whose user ids
    /// carry a secret after the name (the token is never identd's business).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::ident::IdentReply;
    /// use socks4_core::{Limits, Output, ServerHandshake, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default()).ident_name_only(true);
    /// hs.handle_input(now, b"\x04\x01\x00\x50\xc0\x00\x02\x01alice:s3cret\0");
    /// hs.accept_with_ident(now)?;
    /// assert_eq!(hs.poll_output(), Output::Ident);
    /// hs.handle_ident(now, Ok(IdentReply::User { os: "UNIX", charset: None, user: b"alice" }))?;
    /// assert!(matches!(hs.poll_output(), Output::Connect(_)));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    #[must_use]
    pub fn ident_name_only(mut self, name_only: bool) -> Self {
        self.ident_name_only = name_only;
        self
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// Feeds bytes read from the client; returns how many belong to the request.
    ///
    /// Once the request is complete (or rejected) it consumes nothing more: the unconsumed rest of
    /// `data`, and anything read later, is payload for the relay. Stop *reading* the client until
    /// [`Output::Relay`] so that the payload waits in the socket, but keep *watching* it (peek or
    /// poll) for its end of file or failure (see [`handle_eof`](Self::handle_eof) and
    /// [Reading and watching the client](Self#reading-and-watching-the-client)). An empty `data`
    /// changes nothing and returns 0: it is not an end of file (call `handle_eof` for that).
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
                // A name written as a number (`127.1`, `0x7f000001`, `::1`) is that address: never
                // looked up nor passed on as a name, and checked as an address.
                let numeric = match req.dest {
                    Dest::Domain(host) => numeric_host(host),
                    Dest::Ip(_) => None,
                };
                let resolve = match req.dest {
                    Dest::Domain(_) => {
                        numeric.is_none() && (self.names == Names::Resolve || req.command == Command::Bind)
                    }
                    Dest::Ip(_) => false,
                };
                let refused = match (req.command, req.dest) {
                    (Command::Connect, Dest::Ip(ip)) if is_forbidden_destination(ip.into()) => {
                        Some(CloseReason::Forbidden(ip.into()))
                    }
                    (Command::Connect, Dest::Domain(_)) if numeric.is_some_and(is_forbidden_destination) => {
                        numeric.map(CloseReason::Forbidden)
                    }
                    (Command::Connect, Dest::Ip(ip)) if self.refuse_addresses => Some(CloseReason::AddressOnly(ip)),
                    _ => None,
                };
                self.len = used as u16;
                self.request_len = used as u16;
                if let Some(reason) = refused {
                    self.reject_with(reason);
                } else if let Some(ip) = numeric {
                    self.resolved = Some(ip);
                    self.state = State::Authorizing;
                } else if resolve {
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

    /// The client closed its sending side. Before the request is complete this ends the handshake.
    /// While a BIND waits for its peer it ends it too ([`CloseReason::ClientGone`], no reply): the
    /// client has left, and its listening port and slot must not wait for the bind timeout.
    /// Otherwise it changes nothing: the request stands and the half-close is relayed later (a
    /// client may send its request and data and half-close before the reply).
    ///
    /// Keep watching the client (without reading it: peek, or poll for readiness, so that its
    /// payload stays in the socket; see [`handle_input`](Self::handle_input)) while waiting for a
    /// resolve, a connect, identd or a BIND peer, and call this (or
    /// [`handle_client_error`](Self::handle_client_error)) as soon as it ends.
    pub fn handle_eof(&mut self, _now: Duration) {
        match self.state {
            State::Reading => self.close(CloseReason::ClientEof),
            State::AwaitingPeer => self.close(CloseReason::ClientGone),
            _ => {}
        }
    }

    /// The client's connection failed (reset, or any read or write error): whatever the phase, the
    /// handshake ends at once with [`CloseReason::ClientGone`] and no reply; drop what was started
    /// for it (a lookup's answer, a connection attempt, a BIND listener).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{CloseReason, Limits, Output, ServerHandshake, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
    /// hs.handle_input(now, b"\x04\x01\x00\x50\x00\x00\x00\x01\0slow.example\0");
    /// assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
    /// hs.handle_client_error(now); // the client reset while we were resolving
    /// assert_eq!(hs.poll_output(), Output::Closed(CloseReason::ClientGone));
    /// ```
    pub fn handle_client_error(&mut self, _now: Duration) {
        if !matches!(self.state, State::Relay | State::Closed(_)) {
            self.pending = None;
            self.close(CloseReason::ClientGone);
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
            State::Ident { .. } => {
                self.refuse(ReplyCode::IdentUnreachable, CloseReason::IdentUnavailable(Failure::TimedOut));
            }
            State::Connecting { .. } => self.reject_with(CloseReason::ConnectFailed(Failure::TimedOut)),
            State::Listening { .. } => self.reject_with(CloseReason::BindFailed(Failure::TimedOut)),
            State::AwaitingPeer => self.reject_with(CloseReason::BindTimeout),
            State::Relay | State::Closed(_) => self.deadline = None,
        }
    }

    /// Grants the request from [`Output::Authorize`]: the next output is `Connect` or `Listen`.
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake is waiting for a decision ([`Output::Authorize`]); the state
    /// is left unchanged.
    pub fn accept(&mut self, now: Duration) -> Result<(), Misuse> {
        if self.state != State::Authorizing || self.request().is_none() {
            return Err(Misuse { call: "accept" });
        }
        self.proceed(now);
        Ok(())
    }

    /// Grants the request from [`Output::Authorize`] on condition that the client's identd
    /// confirms its user id: the next output is [`Output::Ident`] (what a rule with `ident` does
    /// through [`authorize`](Self::authorize)). If identd already confirmed it (a
    /// [`retry_connect`](Self::retry_connect)), this is [`accept`](Self::accept).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::ident::IdentReply;
    /// use socks4_core::{CloseReason, Limits, Output, Reply, ReplyCode, ServerHandshake, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
    /// hs.handle_input(now, b"\x04\x01\x00\x50\x0a\x00\x00\x01alice\0");
    /// assert!(matches!(hs.poll_output(), Output::Authorize(_)));
    /// hs.accept_with_ident(now)?;
    /// assert_eq!(hs.poll_output(), Output::Ident);
    /// assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(Duration::from_secs(10)) });
    /// hs.handle_ident(now, Ok(IdentReply::User { os: "UNIX", charset: None, user: b"mallory" }))?;
    /// assert_eq!(hs.poll_output(), Output::Send(Reply { code: ReplyCode::IdentMismatch, ..Reply::rejected() }));
    /// assert_eq!(hs.poll_output(), Output::Closed(CloseReason::IdentMismatch));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake is waiting for a decision ([`Output::Authorize`]); the state
    /// is left unchanged.
    pub fn accept_with_ident(&mut self, now: Duration) -> Result<(), Misuse> {
        if self.state != State::Authorizing || self.request().is_none() {
            return Err(Misuse { call: "accept_with_ident" });
        }
        if self.ident_confirmed {
            self.proceed(now);
        } else {
            self.enter(State::Ident { asked: false }, now, self.timeouts.ident);
        }
        Ok(())
    }

    /// Refuses the request from [`Output::Authorize`] with a rejection code (91, 92 or 93).
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake is waiting for a decision ([`Output::Authorize`]), or for
    /// [`ReplyCode::Granted`] (not a rejection); the state is left unchanged.
    pub fn reject(&mut self, code: ReplyCode) -> Result<(), Misuse> {
        if self.state != State::Authorizing || code == ReplyCode::Granted {
            return Err(Misuse { call: "reject" });
        }
        self.pending = Some(Reply { code, ..Reply::rejected() });
        self.close(CloseReason::Denied(code));
        Ok(())
    }

    /// Like [`reject`](Self::reject), for a user id that failed the caller's credential check
    /// (not the rules): the handshake closes with [`CloseReason::UserRefused`].
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{CloseReason, Limits, Output, ReplyCode, ServerHandshake, Timeouts};
    /// let mut hs = ServerHandshake::new(Duration::ZERO, Limits::default(), Timeouts::default());
    /// hs.handle_input(Duration::ZERO, b"\x04\x01\x00\x50\x7f\x00\x00\x01alice:wrong\0");
    /// assert!(matches!(hs.poll_output(), Output::Authorize(_)));
    /// hs.refuse_user(ReplyCode::IdentMismatch)?;
    /// assert!(matches!(hs.poll_output(), Output::Send(r) if r.code == ReplyCode::IdentMismatch));
    /// let Output::Closed(reason) = hs.poll_output() else { panic!() };
    /// assert_eq!((reason, reason.to_string()), (CloseReason::UserRefused(ReplyCode::IdentMismatch), "auth refused (93)".into()));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake is waiting for a decision ([`Output::Authorize`]), or for
    /// [`ReplyCode::Granted`] (not a refusal); the state is left unchanged.
    pub fn refuse_user(&mut self, code: ReplyCode) -> Result<(), Misuse> {
        if self.state != State::Authorizing || code == ReplyCode::Granted {
            return Err(Misuse { call: "refuse_user" });
        }
        self.pending = Some(Reply { code, ..Reply::rejected() });
        self.close(CloseReason::UserRefused(code));
        Ok(())
    }

    /// Answers [`Output::Authorize`] with the rules' decision for `client` (deny → reply 91). An
    /// allow rule with `ident` allows through [`accept_with_ident`](Self::accept_with_ident): the
    /// result is still [`Action::Allow`], and the next output is [`Output::Ident`].
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake is waiting for a decision ([`Output::Authorize`]); the state
    /// is left unchanged.
    pub fn authorize(&mut self, now: Duration, rules: &Rules, client: IpAddr) -> Result<Action, Misuse> {
        let decision = match (self.state, self.access_request()) {
            (State::Authorizing, Some(req)) => rules.decide(client, &req),
            _ => return Err(Misuse { call: "authorize" }),
        };
        match decision.action {
            Action::Allow if decision.ident => self.accept_with_ident(now)?,
            Action::Allow => self.accept(now)?,
            Action::Deny => self.reject(ReplyCode::Rejected)?,
        }
        Ok(decision.action)
    }

    /// The result of [`Output::Ident`]: identd's reply, or why there is none.
    ///
    /// A `USERID` reply whose user id equals the request's, byte for byte, grants the request as
    /// [`accept`](Self::accept) would (`Connect` or `Listen` next). Another user id gets 93
    /// ([`CloseReason::IdentMismatch`]), and so does an `ERROR` reply
    /// ([`CloseReason::IdentRefused`]): identd was reached and did not vouch for the user. No
    /// reply — identd unreachable, refused, timed out, closed early, or a reply that does not
    /// parse (`Err(IdentError::into())`) — gets 92 ([`CloseReason::IdentUnavailable`]).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::ident::{parse_reply, Query};
    /// use socks4_core::rules::Rules;
    /// use socks4_core::{Limits, Output, ServerHandshake, Status, Target, Timeouts};
    /// let now = Duration::ZERO;
    /// let rules = Rules::parse("allow from 10.0.0.0/8 ident")?;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
    /// hs.handle_input(now, b"\x04\x01\x00\x50\xc0\x00\x02\x01alice\0");
    /// hs.authorize(now, &rules, [10, 0, 0, 7].into())?;
    /// assert_eq!(hs.poll_output(), Output::Ident);
    /// // The client is 10.0.0.7:40000 and reached us on port 1080: ask 10.0.0.7:113.
    /// let query = Query::new(40000, 1080);
    /// let from_identd = b"40000 , 1080 : USERID : UNIX : alice\r\n";
    /// let Ok(Status::Complete((reply, _))) = parse_reply(from_identd, &query) else { panic!() };
    /// hs.handle_ident(now, Ok(reply))?;
    /// assert_eq!(hs.poll_output(), Output::Connect(Target::Addr("192.0.2.1:80".parse()?)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for identd ([`Output::Ident`]); the state is left
    /// unchanged. A failed or refusing identd is not an error here: it is the answer (92 or 93).
    pub fn handle_ident(&mut self, now: Duration, answer: Result<IdentReply<'_>, Failure>) -> Result<(), Misuse> {
        let user_id = match (self.state, self.request()) {
            (State::Ident { .. }, Some(req)) if self.ident_name_only => {
                req.user_id.split(|&b| b == b':').next().unwrap_or(req.user_id)
            }
            (State::Ident { .. }, Some(req)) => req.user_id,
            _ => return Err(Misuse { call: "handle_ident" }),
        };
        match answer {
            Ok(IdentReply::User { user, .. }) if user == user_id => {
                self.ident_confirmed = true;
                self.proceed(now);
            }
            Ok(IdentReply::User { .. }) => self.refuse(ReplyCode::IdentMismatch, CloseReason::IdentMismatch),
            Ok(IdentReply::Error { kind, .. }) => {
                self.refuse(ReplyCode::IdentMismatch, CloseReason::IdentRefused(kind))
            }
            Err(e) => self.refuse(ReplyCode::IdentUnreachable, CloseReason::IdentUnavailable(e)),
        }
        Ok(())
    }

    /// The result of [`Output::Resolve`]: the host's first usable address (IPv4 or IPv6), or why
    /// there is none (→ 91). Keep the others for [`retry_connect`](Self::retry_connect). An
    /// address that is never a real destination is refused (→ 91, [`CloseReason::Forbidden`]).
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for a lookup ([`Output::Resolve`]); the state is left
    /// unchanged.
    pub fn handle_resolved(&mut self, now: Duration, result: Result<IpAddr, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Resolving { .. }) {
            return Err(Misuse { call: "handle_resolved" });
        }
        match result {
            Ok(ip) if self.is_connect() && is_forbidden_destination(ip) => {
                self.reject_with(CloseReason::Forbidden(ip.to_canonical()));
            }
            Ok(ip) => {
                self.resolved = Some(ip.to_canonical());
                self.enter(State::Authorizing, now, self.timeouts.handshake);
            }
            Err(e) => self.reject_with(CloseReason::ResolveFailed(e)),
        }
        Ok(())
    }

    /// Instead of [`handle_resolved`](Self::handle_resolved): pass this CONNECT's SOCKS4a name on
    /// unresolved, as [`Names::Forward`] would, for a request the caller routes through a SOCKS4a
    /// parent proxy (no local DNS lookup). The request is authorized with the name alone (no
    /// address, so `to CIDR` rules do not match) and [`Output::Connect`] carries
    /// [`Target::Host`]. A BIND by name, whose peer check needs an address, is refused instead
    /// (reply 91, [`CloseReason::BindByName`]): a name routed to such a parent is never looked up
    /// here, for either command.
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Limits, Output, ServerHandshake, Target, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
    /// hs.handle_input(now, b"\x04\x01\x00\x50\x00\x00\x00\x01\0duck.onion\0");
    /// assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
    /// hs.forward_name(now)?;
    /// let Output::Authorize(req) = hs.poll_output() else { panic!() };
    /// assert_eq!((req.host, req.addr), (Some("duck.onion"), None));
    /// hs.accept(now)?;
    /// assert_eq!(hs.poll_output(), Output::Connect(Target::Host("duck.onion", 80)));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for a lookup ([`Output::Resolve`]) of a CONNECT (a
    /// BIND by name must be resolved); the state is left unchanged.
    pub fn forward_name(&mut self, now: Duration) -> Result<(), Misuse> {
        if !matches!(self.state, State::Resolving { .. }) {
            return Err(Misuse { call: "forward_name" });
        }
        if !self.is_connect() {
            self.reject_with(CloseReason::BindByName);
            return Ok(());
        }
        self.names = Names::Forward;
        self.enter(State::Authorizing, now, self.timeouts.handshake);
        Ok(())
    }

    /// The result of [`Output::Connect`]: the outgoing connection's local address (sent in the
    /// reply; an IPv6 one is sent as `0.0.0.0` with its port), or why it failed (→ 91, or the code
    /// of a [`Failure::Rejected`]).
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for a connection ([`Output::Connect`]); the state is
    /// left unchanged. A failed connect is not an error here: it is the answer (91).
    pub fn handle_connected(&mut self, _now: Duration, result: Result<SocketAddr, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Connecting { .. }) {
            return Err(Misuse { call: "handle_connected" });
        }
        match result {
            Ok(bound) => self.grant(bound),
            Err(Failure::Rejected(code)) => {
                let code = if code == ReplyCode::Granted { ReplyCode::Rejected } else { code };
                self.pending = Some(Reply { code, ..Reply::rejected() });
                self.close(CloseReason::ConnectFailed(Failure::Rejected(code)));
            }
            Err(e) => self.reject_with(CloseReason::ConnectFailed(e)),
        }
        Ok(())
    }

    /// Instead of [`handle_connected`](Self::handle_connected) with an error: the connection to a
    /// resolved name's address failed, try its `next` address. The request is authorized again
    /// for that address ([`Output::Authorize`], then [`Output::Connect`]), within the deadline of
    /// the first connect. Only for a name this handshake asked to resolve.
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Limits, Output, ServerHandshake, Timeouts};
    /// let now = Duration::ZERO;
    /// let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
    /// hs.handle_input(now, b"\x04\x01\x00\x50\x00\x00\x00\x01\0dual.example\0");
    /// assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
    /// hs.handle_resolved(now, Ok([192, 0, 2, 1].into()))?;
    /// hs.accept(now)?;
    /// assert!(matches!(hs.poll_output(), Output::Connect(_)));
    /// // 192.0.2.1 refused; the lookup also gave 2001:db8::1.
    /// hs.retry_connect(now, "2001:db8::1".parse().unwrap())?;
    /// let Output::Authorize(req) = hs.poll_output() else { panic!() };
    /// assert_eq!(req.addr, Some("2001:db8::1".parse().unwrap()));
    /// # Ok::<(), socks4_core::Misuse>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for a connection ([`Output::Connect`]) to an address
    /// it resolved from a name; the state is left unchanged.
    pub fn retry_connect(&mut self, _now: Duration, next: IpAddr) -> Result<(), Misuse> {
        if !matches!(self.state, State::Connecting { .. }) || self.resolved.is_none() {
            return Err(Misuse { call: "retry_connect" });
        }
        if is_forbidden_destination(next) {
            self.reject_with(CloseReason::Forbidden(next.to_canonical()));
        } else {
            self.resolved = Some(next.to_canonical());
            self.retried = true;
            self.state = State::Authorizing; // the connect deadline stands, through `accept` too
        }
        Ok(())
    }

    /// BIND: the result of [`Output::Listen`]: the listening address for the first reply (an
    /// unspecified IP tells the client to use the server's address; an IPv6 one is sent as
    /// `0.0.0.0` with its port), or why listening failed (→ 91).
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless the handshake asked for a listener ([`Output::Listen`]); the state is left
    /// unchanged.
    pub fn handle_listening(&mut self, now: Duration, result: Result<SocketAddr, Failure>) -> Result<(), Misuse> {
        if !matches!(self.state, State::Listening { .. }) {
            return Err(Misuse { call: "handle_listening" });
        }
        match result {
            Ok(addr) => {
                self.pending = Some(Reply::new(ReplyCode::Granted, reply_addr(addr)));
                self.enter(State::AwaitingPeer, now, self.timeouts.bind);
            }
            Err(e) => self.reject_with(CloseReason::BindFailed(e)),
        }
        Ok(())
    }

    /// BIND: the address of the peer that connected to the listener, or why none did. A peer whose
    /// IP differs from the request's gets the second reply 91; the expected one gets 90 and the relay.
    ///
    /// # Errors
    ///
    /// [`Misuse`] unless a BIND is awaiting its peer (after
    /// [`handle_listening`](Self::handle_listening) succeeded); the state is left unchanged.
    pub fn handle_bind_peer(&mut self, _now: Duration, result: Result<SocketAddr, Failure>) -> Result<(), Misuse> {
        let expected = match (self.state, self.access_request()) {
            (State::AwaitingPeer, Some(AccessRequest { addr: Some(ip), .. })) => ip,
            _ => return Err(Misuse { call: "handle_bind_peer" }),
        };
        match result {
            Ok(peer) if peer.ip().to_canonical() == expected => self.grant(peer),
            Ok(peer) => self.reject_with(CloseReason::WrongPeer(peer.ip().to_canonical())),
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
            State::Ident { asked: false } => {
                self.state = State::Ident { asked: true };
                return Output::Ident;
            }
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
            (State::Connecting { .. }, _, Some(req)) => Output::Connect(match (req.addr, req.host) {
                (Some(ip), _) => Target::Addr(SocketAddr::new(ip, req.port)),
                (None, Some(host)) => Target::Host(host, req.port),
                (None, None) => return Output::Wait { deadline: self.deadline }, // unreachable: a request has one
            }),
            (State::Listening { .. }, _, Some(AccessRequest { addr: Some(ip), .. })) => {
                Output::Listen { expected_peer: ip }
            }
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

    /// The request with its destination address: the literal one, or the SOCKS4a name's resolution
    /// (`None` before it, and with [`Names::Forward`] where the name is passed on unresolved).
    pub fn access_request(&self) -> Option<AccessRequest<'_>> {
        let req = self.request()?;
        let base = AccessRequest::new(req.command, req.port, req.user_id);
        match req.dest {
            Dest::Ip(ip) => Some(base.with_addr(IpAddr::V4(ip))),
            Dest::Domain(host) => match (self.resolved, self.names, req.command) {
                (Some(ip), _, _) => Some(base.with_host(host).with_addr(ip)),
                (None, Names::Forward, Command::Connect) => Some(base.with_host(host)),
                (None, _, _) => None,
            },
        }
    }

    /// Does the handshake want more request bytes? True until the request is complete (or
    /// rejected); afterwards "waiting" means waiting for an answer, and client bytes are payload
    /// to leave in the socket until [`Output::Relay`].
    pub fn wants_input(&self) -> bool {
        self.state == State::Reading
    }

    /// Whether the client's identd confirmed the request's user id (an allow with `ident`, or
    /// [`accept_with_ident`](Self::accept_with_ident), was answered by a matching
    /// [`handle_ident`](Self::handle_ident)): a caller that authorizes further addresses of the
    /// name itself (Happy Eyeballs) may allow one whose rule asks identd only then.
    pub fn ident_confirmed(&self) -> bool {
        self.ident_confirmed
    }

    fn is_connect(&self) -> bool {
        self.request().is_some_and(|r| r.command == Command::Connect)
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

    /// Accepted (and identified, if asked): connect or listen next, under the connect timeout.
    fn proceed(&mut self, now: Duration) {
        let next = match self.request().map(|r| r.command) {
            Some(Command::Bind) => State::Listening { asked: false },
            _ => State::Connecting { asked: false },
        };
        if self.retried {
            self.state = next; // every address of a name shares the first connect's deadline
        } else {
            self.enter(next, now, self.timeouts.connect);
        }
    }

    fn grant(&mut self, addr: SocketAddr) {
        self.pending = Some(Reply::new(ReplyCode::Granted, reply_addr(addr)));
        self.state = State::Relay;
        self.deadline = None;
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed(reason);
        self.deadline = None;
    }

    fn reject_with(&mut self, reason: CloseReason) {
        self.refuse(ReplyCode::Rejected, reason);
    }

    fn refuse(&mut self, code: ReplyCode, reason: CloseReason) {
        self.pending = Some(Reply { code, ..Reply::rejected() });
        self.close(reason);
    }

    fn fail(&mut self, reason: CloseReason, consumed: usize) -> usize {
        self.reject_with(reason);
        consumed
    }
}

/// The address a reply can carry: IPv4 (or IPv4-mapped) as is, IPv6 as `0.0.0.0` with its port.
fn reply_addr(addr: SocketAddr) -> SocketAddrV4 {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => SocketAddrV4::new(ip, addr.port()),
        IpAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, addr.port()),
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
        Timeouts::default().with_handshake(SEC * 5).with_connect(SEC * 7).with_bind(SEC * 20).with_ident(SEC * 3)
    }

    fn hs() -> ServerHandshake {
        ServerHandshake::new(T0, Limits::default(), timeouts())
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(a.into(), port)
    }

    fn sa(a: [u8; 4], port: u16) -> SocketAddr {
        v4(a, port).into()
    }

    fn tgt(a: [u8; 4], port: u16) -> Target<'static> {
        v4(a, port).into()
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
        assert_eq!((req.addr, req.port), (Some([10, 0, 0, 1].into()), 80));
        assert_eq!(req.user_id, b"u");
        assert!(matches!(hs.poll_output(), Output::Authorize(_)), "repeats until answered");
        hs.accept(T0 + SEC).unwrap();
        assert_eq!(hs.poll_output(), Output::Connect(tgt([10, 0, 0, 1], 80)));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 8) });
        assert_eq!(hs.handle_input(T0, b"more"), 0, "nothing consumed after the request");
        hs.handle_connected(T0, Ok(sa([10, 0, 0, 9], 5555))).unwrap();
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
        hs.handle_resolved(T0 + SEC, Ok(Ipv4Addr::new(93, 184, 216, 34).into())).unwrap();
        let rules = Rules::parse("deny to *.example.com\nallow to example.com port 443\n").unwrap();
        assert_eq!(hs.authorize(T0 + SEC, &rules, [127, 0, 0, 1].into()), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(tgt([93, 184, 216, 34], 443)));
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
        assert_eq!(hs2.handle_resolved(T0, Ok(Ipv4Addr::LOCALHOST.into())), Err(Misuse { call: "handle_resolved" }));
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
        assert_eq!(hs.handle_connected(T0, Ok(sa([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_connected" }));
        assert_eq!(hs.handle_listening(T0, Ok(sa([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_listening" }));
        assert_eq!(hs.handle_bind_peer(T0, Ok(sa([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_bind_peer" }));
        assert_eq!(hs.handle_resolved(T0, Ok(Ipv4Addr::LOCALHOST.into())), Err(Misuse { call: "handle_resolved" }));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 5) });
        hs.handle_input(T0, CONNECT);
        assert_eq!(hs.handle_connected(T0, Ok(sa([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_connected" }));
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(std::format!("{}", Misuse { call: "accept" }), "`accept` called in a state that does not expect it");
    }

    fn bind_until_listening(expected: [u8; 4]) -> ServerHandshake {
        let mut hs = hs();
        let mut req = [0u8; 16];
        let n = Request { command: Command::Bind, ..Request::connect(v4(expected, 21), b"") }.encode(&mut req).unwrap();
        hs.handle_input(T0, &req[..n]);
        hs.accept(T0).unwrap();
        assert_eq!(hs.poll_output(), Output::Listen { expected_peer: Ipv4Addr::from(expected).into() });
        hs.handle_listening(T0 + SEC, Ok(sa([127, 0, 0, 1], 40000))).unwrap();
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([127, 0, 0, 1], 40000))));
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 21) });
        hs
    }

    #[test]
    fn bind_two_replies_then_relay() {
        let mut hs = bind_until_listening([127, 0, 0, 1]);
        hs.handle_bind_peer(T0, Ok(sa([127, 0, 0, 1], 5000))).unwrap();
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([127, 0, 0, 1], 5000))));
        assert_eq!(hs.poll_output(), Output::Relay);
    }

    #[test]
    fn bind_wrong_peer_timeout_and_failures() {
        let mut a = bind_until_listening([127, 0, 0, 2]);
        a.handle_bind_peer(T0, Ok(sa([127, 0, 0, 1], 5000))).unwrap();
        assert_eq!(drain(&mut a).0, [Reply::rejected()]);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::WrongPeer(Ipv4Addr::LOCALHOST.into())));

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
    fn forbidden_destinations_refused_before_rules() {
        // A literal 0.0.0.0 (Linux connects it to the local host) never reaches Authorize.
        let mut a = hs();
        a.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x00\0");
        assert!(!a.wants_input());
        assert_eq!(a.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::Forbidden(Ipv4Addr::UNSPECIFIED.into())));
        for ip in [[255, 255, 255, 255], [224, 0, 0, 1], [0, 9, 9, 9]] {
            let mut b = hs();
            let mut req = [0u8; 16];
            let n = Request::connect(v4(ip, 80), b"").encode(&mut req).unwrap();
            b.handle_input(T0, &req[..n]);
            assert_eq!(drain(&mut b).1, std::format!("{:?}", Output::Closed(CloseReason::Forbidden(ip.into()))));
        }
        // A name that resolves to one (`zero.example` to `0.0.0.0`, `::ffff:0.0.0.0`) is refused the same way.
        for resolved in [IpAddr::from([0, 0, 0, 0]), "::ffff:0.0.0.0".parse().unwrap(), "::".parse().unwrap()] {
            let mut c = hs();
            c.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0zero.example\0");
            assert!(matches!(c.poll_output(), Output::Resolve { host: "zero.example", .. }));
            c.handle_resolved(T0, Ok(resolved)).unwrap();
            assert_eq!(c.poll_output(), Output::Send(Reply::rejected()));
            assert_eq!(c.poll_output(), Output::Closed(CloseReason::Forbidden(resolved.to_canonical())));
        }
        // So is a name written as one (`0`, `0x0`, `0.0.0.0.`, `::`), without a lookup, in either
        // names mode (a forwarding server must not pass it on as a name).
        for names in [Names::Resolve, Names::Forward] {
            for name in ["0", "00", "0x0", "0.0.0.0.", "0.0", "::", "::ffff:0.0.0.0"] {
                let mut c = hs().with_names(names);
                let mut req = std::vec::Vec::from(&b"\x04\x01\x00\x50\x00\x00\x00\x01\0"[..]);
                req.extend_from_slice(name.as_bytes());
                req.push(0);
                c.handle_input(T0, &req);
                assert_eq!(c.poll_output(), Output::Send(Reply::rejected()), "{name}");
                assert!(matches!(c.poll_output(), Output::Closed(CloseReason::Forbidden(_))), "{name}");
            }
            // And loopback written as a number is checked as 127.0.0.1 by the rules, never resolved.
            let rules = Rules::parse("deny to loopback\nallow any").unwrap();
            for name in ["127.1", "127.0.0.1.", "2130706433", "0x7f000001", "0177.0.0.1", "::1"] {
                let mut c = hs().with_names(names);
                let mut req = std::vec::Vec::from(&b"\x04\x01\x00\x50\x00\x00\x00\x01\0"[..]);
                req.extend_from_slice(name.as_bytes());
                req.push(0);
                c.handle_input(T0, &req);
                let Output::Authorize(access) = c.poll_output() else { panic!("{name}: no Authorize") };
                assert!(access.addr.is_some_and(|ip| ip.is_loopback()), "{name}: {access:?}");
                assert_eq!(c.authorize(T0, &rules, [10, 0, 0, 1].into()).unwrap(), Action::Deny, "{name}");
            }
        }
        // BIND's address is the expected peer, not a destination: not refused here.
        let mut d = hs();
        d.handle_input(T0, b"\x04\x02\x00\x15\x00\x00\x00\x00\0");
        assert!(matches!(d.poll_output(), Output::Authorize(_)));
    }

    #[test]
    fn client_leaving_while_waiting() {
        // A BIND client that closes while waiting for its peer is gone: no reply, closed at once.
        let mut a = bind_until_listening([127, 0, 0, 1]);
        a.handle_eof(T0);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::ClientGone));
        // A half-close during a connect is not leaving: the request stands.
        let mut b = hs();
        b.handle_input(T0, CONNECT);
        b.accept(T0).unwrap();
        assert!(matches!(b.poll_output(), Output::Connect(_)));
        b.handle_eof(T0);
        assert!(matches!(b.poll_output(), Output::Wait { .. }));
        // An error ends any phase before the relay, dropping a reply not yet taken.
        b.handle_client_error(T0);
        assert_eq!(b.poll_output(), Output::Closed(CloseReason::ClientGone));
        let mut c = hs();
        c.handle_input(T0, CONNECT);
        c.reject(ReplyCode::Rejected).unwrap();
        c.handle_client_error(T0);
        assert_eq!(drain(&mut c).1, std::format!("{:?}", Output::Closed(CloseReason::Denied(ReplyCode::Rejected))));
        let mut d = bind_until_listening([127, 0, 0, 1]);
        d.handle_bind_peer(T0, Ok(sa([127, 0, 0, 1], 5))).unwrap();
        d.handle_client_error(T0);
        assert!(matches!(d.poll_output(), Output::Send(_)));
        assert_eq!(d.poll_output(), Output::Relay, "the relay handles errors from here");
    }

    #[test]
    fn refusing_addresses_keeps_names_and_bind() {
        let mut a = hs().refuse_addresses(true);
        a.handle_input(T0, CONNECT);
        assert_eq!(drain(&mut a).0, [Reply::rejected()]);
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::AddressOnly([10, 0, 0, 1].into())));
        let mut b = hs().refuse_addresses(true);
        b.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0example.com\0");
        assert!(matches!(b.poll_output(), Output::Resolve { .. }));
        let mut c = hs().refuse_addresses(true);
        c.handle_input(T0, b"\x04\x02\x00\x15\x7f\x00\x00\x01\0");
        assert!(matches!(c.poll_output(), Output::Authorize(_)));
    }

    #[test]
    fn forward_names_never_resolve_or_match_addresses() {
        let rules = Rules::parse("deny to 0.0.0.0/0\ndeny to loopback\nallow to *.onion\n").unwrap();
        let mut a = hs().with_names(Names::Forward);
        a.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01u\0abc.onion\0");
        let Output::Authorize(req) = a.poll_output() else { panic!() };
        assert_eq!((req.addr, req.host, req.port), (None, Some("abc.onion"), 80));
        assert_eq!(a.authorize(T0, &rules, [127, 0, 0, 1].into()), Ok(Action::Allow));
        assert_eq!(a.poll_output(), Output::Connect(Target::Host("abc.onion", 80)));
        assert_eq!(a.retry_connect(T0, Ipv4Addr::LOCALHOST.into()), Err(Misuse { call: "retry_connect" }));
        a.handle_connected(T0, Ok("[2001:db8::1]:4000".parse().unwrap())).unwrap();
        assert_eq!(a.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([0, 0, 0, 0], 4000))));
        // Literal addresses are still checked by address rules in forward mode.
        let mut b = hs().with_names(Names::Forward);
        b.handle_input(T0, b"\x04\x01\x00\x50\x7f\x00\x00\x01u\0");
        assert_eq!(b.authorize(T0, &rules, [127, 0, 0, 1].into()), Ok(Action::Deny));
        // A BIND by name still resolves: the peer check needs an address.
        let mut c = hs().with_names(Names::Forward);
        c.handle_input(T0, b"\x04\x02\x00\x15\x00\x00\x00\x01u\0peer.example\0");
        assert!(matches!(c.poll_output(), Output::Resolve { host: "peer.example", .. }));
    }

    #[test]
    fn ipv6_destination_retry_and_upstream_codes() {
        let rules = Rules::parse("deny to 2001:db8:bad::/48\nallow").unwrap();
        let mut a = hs();
        a.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0six.example\0");
        assert!(matches!(a.poll_output(), Output::Resolve { .. }));
        a.handle_resolved(T0, Ok("2001:db8::1".parse().unwrap())).unwrap();
        a.authorize(T0, &rules, [127, 0, 0, 1].into()).unwrap();
        assert_eq!(a.poll_output(), Output::Connect(Target::Addr("[2001:db8::1]:80".parse().unwrap())));
        // The first address fails: retry with the next, authorized again under the same deadline.
        a.retry_connect(T0 + SEC, "2001:db8:bad::1".parse().unwrap()).unwrap();
        assert!(matches!(a.poll_output(), Output::Authorize(_)));
        assert_eq!(a.deadline(), Some(T0 + SEC * 7), "the connect deadline stands");
        assert_eq!(a.authorize(T0, &rules, [127, 0, 0, 1].into()), Ok(Action::Deny), "rules see each address");
        assert_eq!(drain(&mut a).0, [Reply::rejected()]);

        let mut b = hs();
        b.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0two.example\0");
        b.handle_resolved(T0, Ok(Ipv4Addr::new(192, 0, 2, 1).into())).unwrap();
        b.accept(T0).unwrap();
        assert!(matches!(b.poll_output(), Output::Connect(_)));
        assert_eq!(b.retry_connect(T0, Ipv4Addr::BROADCAST.into()), Ok(()));
        assert_eq!(b.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(b.poll_output(), Output::Closed(CloseReason::Forbidden(Ipv4Addr::BROADCAST.into())));

        // An upstream's refusal keeps its code.
        let mut c = hs();
        c.handle_input(T0, CONNECT);
        c.accept(T0).unwrap();
        assert_eq!(c.retry_connect(T0, Ipv4Addr::LOCALHOST.into()), Err(Misuse { call: "retry_connect" }), "literal");
        c.handle_connected(T0, Err(Failure::Rejected(ReplyCode::IdentMismatch))).unwrap();
        assert_eq!(c.poll_output(), Output::Send(Reply { code: ReplyCode::IdentMismatch, ..Reply::rejected() }));
        let closed = c.poll_output();
        assert_eq!(closed, Output::Closed(CloseReason::ConnectFailed(Failure::Rejected(ReplyCode::IdentMismatch))));
        let Output::Closed(reason) = closed else { panic!() };
        assert_eq!(std::format!("{reason}"), "connect rejected by upstream (93)");
        let mut d = hs();
        d.handle_input(T0, CONNECT);
        d.accept(T0).unwrap();
        d.handle_connected(T0, Err(Failure::Rejected(ReplyCode::Granted))).unwrap();
        assert_eq!(d.poll_output(), Output::Send(Reply::rejected()), "a 90 is no refusal code");
    }

    #[test]
    fn retries_share_the_first_connect_deadline() {
        let mut a = hs();
        a.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01\0dual.example\0");
        assert!(matches!(a.poll_output(), Output::Resolve { .. }));
        a.handle_resolved(T0, Ok(Ipv4Addr::new(192, 0, 2, 1).into())).unwrap();
        a.accept(T0 + SEC).unwrap();
        assert!(matches!(a.poll_output(), Output::Connect(_)));
        assert_eq!(a.deadline(), Some(T0 + SEC * 8));
        // The first address fails 4 s in; the second is accepted 2 s later: still the first deadline.
        a.retry_connect(T0 + SEC * 5, "2001:db8::1".parse().unwrap()).unwrap();
        assert!(matches!(a.poll_output(), Output::Authorize(_)));
        a.accept(T0 + SEC * 7).unwrap();
        assert_eq!(a.poll_output(), Output::Connect(Target::Addr("[2001:db8::1]:80".parse().unwrap())));
        assert_eq!(a.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 8) }, "not T0 + 14 s");
        a.handle_timeout(T0 + SEC * 8);
        assert_eq!(a.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(a.poll_output(), Output::Closed(CloseReason::ConnectFailed(Failure::TimedOut)));
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
            CloseReason::WrongPeer(Ipv4Addr::LOCALHOST.into()),
            CloseReason::Forbidden(Ipv4Addr::UNSPECIFIED.into()),
            CloseReason::AddressOnly(Ipv4Addr::LOCALHOST),
            CloseReason::IdentUnavailable(Failure::BadAnswer),
            CloseReason::IdentMismatch,
            CloseReason::IdentRefused(ErrorKind::HiddenUser),
            CloseReason::ClientGone,
        ];
        let texts: Vec<_> = reasons.iter().map(|r| std::format!("{r}")).collect();
        assert_eq!(texts[5], "connect refused");
        assert_eq!(texts[8], "bind: unexpected peer 127.0.0.1");
        assert_eq!(texts[9], "forbidden destination 0.0.0.0");
        assert_eq!(texts[10], "refused request by address 127.0.0.1 (names required)");
        assert_eq!(texts[11], "identd bad answer");
        assert_eq!(texts[12], "identd names another user");
        assert_eq!(texts[13], "identd answered ERROR HIDDEN-USER");
        assert_eq!(texts[14], "client gone during handshake");
        assert!(texts.iter().all(|t| !t.is_empty()));
        assert_eq!(std::format!("{}", Failure::TimedOut), "timed out");
        assert_eq!(std::format!("{}", Failure::Other), "failed");
    }

    const ALICE: &[u8] = b"\x04\x01\x00\x50\x0a\x00\x00\x01alice\0";

    fn user(name: &[u8]) -> Result<IdentReply<'_>, Failure> {
        Ok(IdentReply::User { os: "UNIX", charset: None, user: name })
    }

    /// A handshake for `request`, authorized by a rule with `ident`, that has asked for ident.
    fn asking_ident(request: &[u8]) -> ServerHandshake {
        let rules = Rules::parse("allow from 10.0.0.0/8 ident\nallow from 127.0.0.0/8").unwrap();
        let mut hs = hs();
        hs.handle_input(T0, request);
        assert_eq!(hs.authorize(T0 + SEC, &rules, [10, 9, 9, 9].into()), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Ident);
        assert_eq!(hs.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 4) }, "asked once, ident timeout");
        assert!(!hs.wants_input());
        hs
    }

    #[test]
    fn ident_confirmed_connects_or_listens() {
        let mut a = asking_ident(ALICE);
        a.handle_ident(T0 + SEC * 2, user(b"alice")).unwrap();
        assert_eq!(a.poll_output(), Output::Connect(tgt([10, 0, 0, 1], 80)));
        assert_eq!(a.poll_output(), Output::Wait { deadline: Some(T0 + SEC * 9) }, "connect timeout from the answer");
        a.handle_connected(T0, Ok(sa([10, 0, 0, 2], 4000))).unwrap();
        assert_eq!(a.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, v4([10, 0, 0, 2], 4000))));
        assert_eq!(a.poll_output(), Output::Relay);

        let mut b = asking_ident(b"\x04\x02\x00\x15\x0a\x00\x00\x05alice\0");
        b.handle_ident(T0, user(b"alice")).unwrap();
        assert_eq!(b.poll_output(), Output::Listen { expected_peer: Ipv4Addr::new(10, 0, 0, 5).into() });

        // A rule without `ident` does not ask.
        let mut c = hs();
        c.handle_input(T0, ALICE);
        c.authorize(T0, &Rules::parse("allow from 10.0.0.0/8 ident\nallow").unwrap(), [127, 0, 0, 1].into()).unwrap();
        assert_eq!(c.poll_output(), Output::Connect(tgt([10, 0, 0, 1], 80)));
    }

    #[test]
    fn ident_mismatch_and_error_replies_get_93() {
        for (answer, reason) in [
            (user(b"bob"), CloseReason::IdentMismatch),
            (user(b"Alice"), CloseReason::IdentMismatch),
            (user(b"alice2"), CloseReason::IdentMismatch),
            (user(b"alic"), CloseReason::IdentMismatch),
            (
                Ok(IdentReply::Error { kind: ErrorKind::NoUser, token: "NO-USER" }),
                CloseReason::IdentRefused(ErrorKind::NoUser),
            ),
            (
                Ok(IdentReply::Error { kind: ErrorKind::Other, token: "X-NO" }),
                CloseReason::IdentRefused(ErrorKind::Other),
            ),
        ] {
            let mut hs = asking_ident(ALICE);
            hs.handle_ident(T0, answer).unwrap();
            assert_eq!(hs.poll_output(), Output::Send(Reply { code: ReplyCode::IdentMismatch, ..Reply::rejected() }));
            assert_eq!(hs.poll_output(), Output::Closed(reason));
            assert_eq!(hs.poll_output(), Output::Closed(reason));
            assert_eq!(hs.handle_ident(T0, user(b"alice")), Err(Misuse { call: "handle_ident" }), "answered once");
        }
        // A request with an empty user id is never confirmed (identd's user id is never empty).
        let mut empty = asking_ident(b"\x04\x01\x00\x50\x0a\x00\x00\x01\0");
        empty.handle_ident(T0, user(b"root")).unwrap();
        assert_eq!(drain(&mut empty).1, std::format!("{:?}", Output::Closed(CloseReason::IdentMismatch)));
    }

    #[test]
    fn ident_unavailable_or_timeout_gets_92() {
        let code92 = Output::Send(Reply { code: ReplyCode::IdentUnreachable, ..Reply::rejected() });
        for failure in [Failure::Refused, Failure::Unreachable, Failure::TimedOut, Failure::BadAnswer, Failure::Other] {
            let mut hs = asking_ident(ALICE);
            hs.handle_ident(T0, Err(failure)).unwrap();
            assert_eq!(hs.poll_output(), code92);
            assert_eq!(hs.poll_output(), Output::Closed(CloseReason::IdentUnavailable(failure)));
        }
        let mut late = asking_ident(ALICE);
        late.handle_timeout(T0 + SEC * 4 - Duration::from_nanos(1));
        assert!(matches!(late.poll_output(), Output::Wait { .. }), "early timeout is a no-op");
        late.handle_timeout(T0 + SEC * 4);
        assert_eq!(late.poll_output(), code92);
        assert_eq!(late.poll_output(), Output::Closed(CloseReason::IdentUnavailable(Failure::TimedOut)));
        assert_eq!(late.handle_ident(T0, user(b"alice")), Err(Misuse { call: "handle_ident" }));
    }

    #[test]
    fn ident_misuse_leaves_state_unchanged() {
        let mut hs = hs();
        let snapshot = |hs: &ServerHandshake| std::format!("{hs:?}");
        let before = snapshot(&hs);
        assert_eq!(hs.accept_with_ident(T0), Err(Misuse { call: "accept_with_ident" }));
        assert_eq!(hs.handle_ident(T0, user(b"u")), Err(Misuse { call: "handle_ident" }));
        assert_eq!(snapshot(&hs), before);
        hs.handle_input(T0, ALICE);
        let before = snapshot(&hs);
        assert_eq!(hs.handle_ident(T0, user(b"alice")), Err(Misuse { call: "handle_ident" }), "not asked yet");
        assert_eq!(snapshot(&hs), before);
        hs.accept_with_ident(T0).unwrap();
        let before = snapshot(&hs);
        for r in [hs.accept(T0), hs.accept_with_ident(T0), hs.reject(ReplyCode::Rejected)] {
            assert!(r.is_err());
        }
        assert_eq!(hs.authorize(T0, &Rules::default(), [127, 0, 0, 1].into()), Err(Misuse { call: "authorize" }));
        assert_eq!(hs.handle_connected(T0, Ok(sa([1, 1, 1, 1], 1))), Err(Misuse { call: "handle_connected" }));
        assert_eq!(snapshot(&hs), before);
        assert_eq!(hs.poll_output(), Output::Ident, "misuse did not consume the action");
        hs.handle_ident(T0, user(b"alice")).unwrap();
        assert_eq!(hs.handle_ident(T0, user(b"alice")), Err(Misuse { call: "handle_ident" }), "after the answer");
        assert_eq!(hs.accept_with_ident(T0), Err(Misuse { call: "accept_with_ident" }));
    }

    #[test]
    fn ident_is_asked_once_across_connect_retries() {
        let mut hs = hs();
        hs.handle_input(T0, b"\x04\x01\x00\x50\x00\x00\x00\x01alice\0dual.example\0");
        assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
        hs.handle_resolved(T0, Ok(Ipv4Addr::new(192, 0, 2, 1).into())).unwrap();
        let rules = Rules::parse("allow ident").unwrap();
        hs.authorize(T0, &rules, [10, 0, 0, 9].into()).unwrap();
        assert_eq!(hs.poll_output(), Output::Ident);
        hs.handle_ident(T0, user(b"alice")).unwrap();
        assert_eq!(hs.poll_output(), Output::Connect(tgt([192, 0, 2, 1], 80)));
        hs.retry_connect(T0, "2001:db8::1".parse().unwrap()).unwrap();
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        hs.authorize(T0, &rules, [10, 0, 0, 9].into()).unwrap();
        assert_eq!(
            hs.poll_output(),
            Output::Connect(Target::Addr("[2001:db8::1]:80".parse().unwrap())),
            "no second Ident"
        );
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
