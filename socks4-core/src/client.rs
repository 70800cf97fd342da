//! The client side of the handshake as a sans-IO state machine.

use core::fmt;
use core::net::SocketAddrV4;

use crate::error::{EncodeError, ParseError};
use crate::reply::{REPLY_LEN, Reply, ReplyCode};
use crate::request::{Command, MAX_REQUEST_LEN, Request, Status};
#[cfg(feature = "std")]
use crate::target::ConnectError;
use crate::target::Target;

/// What a reply meant; returned by [`ClientHandshake::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The request was granted; the connection now carries the relayed stream. For CONNECT the
    /// address is the one the server reports (often its outgoing address, or zeros); for BIND it is
    /// the peer that connected.
    Granted(SocketAddrV4),
    /// BIND's first reply: the server listens here (an unspecified IP means "the proxy's own
    /// address"). Tell the peer, then keep feeding input for the second reply.
    BindListening(SocketAddrV4),
    /// The server refused (91, 92 or 93); it closes the connection.
    Rejected(ReplyCode),
}

impl ClientEvent {
    /// For a connector that expects a grant (CONNECT's reply, BIND's second), without `std`: the
    /// address of a [`Granted`](Self::Granted).
    ///
    /// # Errors
    ///
    /// A rejection is [`NotGranted::Rejected`] with its code, any other event
    /// [`NotGranted::Unexpected`].
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{ClientEvent, NotGranted, ReplyCode};
    /// let addr = SocketAddrV4::new([192, 0, 2, 1].into(), 80);
    /// assert_eq!(ClientEvent::Granted(addr).into_granted(), Ok(addr));
    /// let refused = ClientEvent::Rejected(ReplyCode::IdentUnreachable).into_granted();
    /// assert_eq!(refused, Err(NotGranted::Rejected(ReplyCode::IdentUnreachable)));
    /// let early = ClientEvent::BindListening(addr).into_granted();
    /// assert_eq!(early, Err(NotGranted::Unexpected(ClientEvent::BindListening(addr))));
    /// ```
    pub const fn into_granted(self) -> Result<SocketAddrV4, NotGranted> {
        match self {
            Self::Granted(addr) => Ok(addr),
            Self::Rejected(code) => Err(NotGranted::Rejected(code)),
            other => Err(NotGranted::Unexpected(other)),
        }
    }

    /// For a BIND's first reply, without `std`: the address of a
    /// [`BindListening`](Self::BindListening).
    ///
    /// # Errors
    ///
    /// A rejection is [`NotGranted::Rejected`] with its code, any other event
    /// [`NotGranted::Unexpected`].
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{ClientEvent, NotGranted, ReplyCode};
    /// let addr = SocketAddrV4::new([0, 0, 0, 0].into(), 40000);
    /// assert_eq!(ClientEvent::BindListening(addr).into_bind_listening(), Ok(addr));
    /// let refused = ClientEvent::Rejected(ReplyCode::Rejected).into_bind_listening();
    /// assert_eq!(refused, Err(NotGranted::Rejected(ReplyCode::Rejected)));
    /// ```
    pub const fn into_bind_listening(self) -> Result<SocketAddrV4, NotGranted> {
        match self {
            Self::BindListening(addr) => Ok(addr),
            Self::Rejected(code) => Err(NotGranted::Rejected(code)),
            other => Err(NotGranted::Unexpected(other)),
        }
    }
}

/// A valid reply that is not the grant the client waited for; returned by
/// [`ClientEvent::into_granted`] and [`ClientEvent::into_bind_listening`]. With `std`,
/// `ConnectError` converts from it (`?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotGranted {
    /// The proxy refused the request (91, 92 or 93).
    Rejected(ReplyCode),
    /// A valid reply that does not fit the step (e.g. a BIND's first reply where the second was
    /// expected).
    Unexpected(ClientEvent),
}

impl fmt::Display for NotGranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(code) => write!(f, "the proxy refused the request (reply {})", code.code()),
            Self::Unexpected(event) => write!(f, "unexpected reply from the proxy: {event:?}"),
        }
    }
}

impl core::error::Error for NotGranted {}

#[cfg(feature = "std")]
impl ClientEvent {
    /// For a connector that expects a grant (CONNECT's reply, BIND's second): the address of a
    /// [`Granted`](Self::Granted). Only with `std`; [`into_granted`](Self::into_granted) is the
    /// feature-free form.
    ///
    /// # Errors
    ///
    /// A rejection is [`ConnectError::Rejected`], any other event [`ConnectError::Unexpected`].
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{ClientEvent, ConnectError, ReplyCode};
    /// let addr = SocketAddrV4::new([192, 0, 2, 1].into(), 80);
    /// assert_eq!(ClientEvent::Granted(addr).granted().unwrap(), addr);
    /// let refused = ClientEvent::Rejected(ReplyCode::Rejected).granted();
    /// assert!(matches!(refused, Err(ConnectError::Rejected(ReplyCode::Rejected))));
    /// assert!(matches!(ClientEvent::BindListening(addr).granted(), Err(ConnectError::Unexpected(_))));
    /// ```
    pub fn granted(self) -> Result<SocketAddrV4, ConnectError> {
        Ok(self.into_granted()?)
    }

    /// For a BIND's first reply: the address of a [`BindListening`](Self::BindListening). Only
    /// with `std`; [`into_bind_listening`](Self::into_bind_listening) is the feature-free form.
    ///
    /// # Errors
    ///
    /// A rejection is [`ConnectError::Rejected`], any other event [`ConnectError::Unexpected`].
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{ClientEvent, ConnectError, ReplyCode};
    /// let addr = SocketAddrV4::new([0, 0, 0, 0].into(), 40000);
    /// assert_eq!(ClientEvent::BindListening(addr).bind_listening().unwrap(), addr);
    /// let refused = ClientEvent::Rejected(ReplyCode::IdentMismatch).bind_listening();
    /// assert!(matches!(refused, Err(ConnectError::Rejected(ReplyCode::IdentMismatch))));
    /// assert!(matches!(ClientEvent::Granted(addr).bind_listening(), Err(ConnectError::Unexpected(_))));
    /// ```
    pub fn bind_listening(self) -> Result<SocketAddrV4, ConnectError> {
        Ok(self.into_bind_listening()?)
    }
}

/// The server's reply could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The reply bytes are invalid.
    BadReply(ParseError),
    /// The server closed the connection before its reply was complete.
    UnexpectedEof,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadReply(e) => write!(f, "bad reply from the proxy: {e}"),
            Self::UnexpectedEof => f.write_str("the proxy closed the connection during the handshake"),
        }
    }
}

impl core::error::Error for ClientError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first (or only) reply.
    First,
    /// BIND: waiting for the second reply.
    Second,
    /// A final event was reported.
    Done,
}

/// The client side of one handshake: the request to send and a parser for the reply or replies.
///
/// ```
/// use core::net::SocketAddrV4;
/// use socks4_core::{ClientEvent, ClientHandshake};
/// let mut hs = ClientHandshake::connect_host("example.com", 80, b"")?;
/// assert_eq!(hs.request_bytes(), b"\x04\x01\x00\x50\x00\x00\x00\x01\0example.com\0");
/// let input = [0, 90, 0, 0, 0, 0, 0, 0, b'h', b'i'];
/// let (used, event) = hs.handle_input(&input)?;
/// assert_eq!(event, Some(ClientEvent::Granted(SocketAddrV4::new([0, 0, 0, 0].into(), 0))));
/// assert_eq!(&input[used..], b"hi"); // payload that followed the reply
/// assert!(hs.is_done());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: [u8; MAX_REQUEST_LEN],
    request_len: u16,
    command: Command,
    reply: [u8; REPLY_LEN],
    reply_len: u8,
    phase: Phase,
}

impl ClientHandshake {
    /// A handshake that sends `request` (CONNECT or BIND, SOCKS4 or 4a).
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when `request` cannot be encoded (see [`Request::validate`]).
    pub fn new(request: &Request<'_>) -> Result<Self, EncodeError> {
        let mut buf = [0; MAX_REQUEST_LEN];
        let len = request.encode(&mut buf)?;
        Ok(Self {
            request: buf,
            request_len: len as u16,
            command: request.command,
            reply: [0; REPLY_LEN],
            reply_len: 0,
            phase: Phase::First,
        })
    }

    /// SOCKS4 CONNECT to an IPv4 address.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BadUserId`] for a user id with a NUL or over 255 bytes,
    /// [`EncodeError::MarkerAddress`] for an address in `0.0.0.1..=0.0.0.255`.
    pub fn connect(addr: SocketAddrV4, user_id: &[u8]) -> Result<Self, EncodeError> {
        Self::new(&Request::connect(addr, user_id))
    }

    /// SOCKS4a CONNECT to a host name the proxy resolves.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BadHost`] for an empty, over-long (255 bytes) or not printable ASCII name,
    /// [`EncodeError::BadUserId`] for a user id with a NUL or over 255 bytes.
    pub fn connect_host(host: &str, port: u16, user_id: &[u8]) -> Result<Self, EncodeError> {
        Self::new(&Request::connect_host(host, port, user_id))
    }

    /// CONNECT to `target`: SOCKS4 for an IPv4 (or IPv4-mapped) address, SOCKS4a for a host name
    /// (what [`connect`](Self::connect) or [`connect_host`](Self::connect_host) would build). An IPv6
    /// address is [`EncodeError::NotIpv4`]: SOCKS4 cannot carry it (send its name instead).
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use socks4_core::{ClientHandshake, Target};
    /// let by_ip = ClientHandshake::connect_to((Ipv4Addr::new(10, 0, 0, 1), 80).into(), b"me")?;
    /// assert_eq!(by_ip.request_bytes(), b"\x04\x01\x00\x50\x0a\x00\x00\x01me\0");
    /// let by_name = ClientHandshake::connect_to(Target::Host("example.com", 80), b"")?;
    /// assert_eq!(by_name.request_bytes(), b"\x04\x01\x00\x50\x00\x00\x00\x01\0example.com\0");
    /// # Ok::<(), socks4_core::EncodeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EncodeError::NotIpv4`] for an IPv6 address, and the errors of [`connect`](Self::connect)
    /// or [`connect_host`](Self::connect_host).
    pub fn connect_to(target: Target<'_>, user_id: &[u8]) -> Result<Self, EncodeError> {
        match target {
            Target::Addr(addr) => match addr.ip().to_canonical() {
                core::net::IpAddr::V4(ip) => Self::connect(SocketAddrV4::new(ip, addr.port()), user_id),
                core::net::IpAddr::V6(_) => Err(EncodeError::NotIpv4),
            },
            Target::Host(host, port) => Self::connect_host(host, port, user_id),
        }
    }

    /// BIND: ask the proxy to accept one connection from `expected_peer` (its port is informative).
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the request cannot be encoded (see [`Request::validate`]).
    pub fn bind(expected_peer: SocketAddrV4, user_id: &[u8]) -> Result<Self, EncodeError> {
        Self::new(&Request::bind(expected_peer, user_id))
    }

    /// BIND for a peer given as a [`Target`]: SOCKS4 for an IPv4 (or IPv4-mapped) address (what
    /// [`bind`](Self::bind) builds), SOCKS4a for a host name, which the proxy resolves to the only
    /// address it will accept the peer from (an FTP server known by name, or a chain passing a
    /// name on).
    ///
    /// # Errors
    ///
    /// [`EncodeError::NotIpv4`] for an IPv6 address (SOCKS4 cannot carry it: send its name), and
    /// the other [`EncodeError`]s when the request cannot be encoded (see [`Request::validate`]).
    ///
    /// ```
    /// use core::net::{Ipv4Addr, SocketAddrV4};
    /// use socks4_core::{ClientEvent, ClientHandshake, EncodeError, Target};
    /// let mut hs = ClientHandshake::bind_to(Target::Host("ftp.example", 20), b"anon")?;
    /// assert_eq!(hs.request_bytes(), b"\x04\x02\x00\x14\x00\x00\x00\x01anon\0ftp.example\0");
    /// // The first reply says where the proxy listens; the second, who connected.
    /// let (_, first) = hs.handle_input(&[0, 90, 0x9c, 0x40, 0, 0, 0, 0])?;
    /// assert_eq!(first, Some(ClientEvent::BindListening(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 40000))));
    /// let (_, second) = hs.handle_input(&[0, 90, 0, 20, 192, 0, 2, 9])?;
    /// assert_eq!(second.map(ClientEvent::into_granted), Some(Ok(SocketAddrV4::new([192, 0, 2, 9].into(), 20))));
    /// let by_ip = ClientHandshake::bind_to((Ipv4Addr::new(192, 0, 2, 9), 20).into(), b"")?;
    /// assert_eq!(by_ip.request_bytes(), b"\x04\x02\x00\x14\xc0\x00\x02\x09\0");
    /// assert_eq!(ClientHandshake::bind_to("[2001:db8::1]:20".parse::<core::net::SocketAddr>()?.into(), b"").err(), Some(EncodeError::NotIpv4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_to(target: Target<'_>, user_id: &[u8]) -> Result<Self, EncodeError> {
        match target {
            Target::Addr(addr) => match addr.ip().to_canonical() {
                core::net::IpAddr::V4(ip) => Self::bind(SocketAddrV4::new(ip, addr.port()), user_id),
                core::net::IpAddr::V6(_) => Err(EncodeError::NotIpv4),
            },
            Target::Host(host, port) => Self::new(&Request::bind_host(host, port, user_id)),
        }
    }

    /// The request bytes to write to the proxy, once.
    pub fn request_bytes(&self) -> &[u8] {
        &self.request[..self.request_len as usize]
    }

    /// Feeds bytes read from the proxy. Returns how many were used (at most up to the end of one
    /// reply) and the event that reply completed, if any. Call again with the rest while it
    /// consumes bytes; once [`is_done`](Self::is_done), the rest is relayed payload.
    ///
    /// # Errors
    ///
    /// [`ClientError::BadReply`] when the reply bytes are invalid (a version other than 0, a code
    /// other than 90 to 93); the handshake is then over ([`is_done`](Self::is_done)).
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(usize, Option<ClientEvent>), ClientError> {
        if self.phase == Phase::Done {
            return Ok((0, None));
        }
        let have = self.reply_len as usize;
        let take = data.len().min(REPLY_LEN - have);
        self.reply[have..have + take].copy_from_slice(&data[..take]);
        self.reply_len += take as u8;
        let reply = match Reply::parse(&self.reply[..self.reply_len as usize]) {
            Ok(Status::Complete(reply)) => reply,
            Ok(Status::Partial) => return Ok((take, None)),
            Err(e) => {
                self.phase = Phase::Done;
                return Err(ClientError::BadReply(e));
            }
        };
        self.reply_len = 0;
        let event = match (reply.code, self.command, self.phase) {
            (ReplyCode::Granted, Command::Bind, Phase::First) => {
                self.phase = Phase::Second;
                ClientEvent::BindListening(reply.addr)
            }
            (ReplyCode::Granted, _, _) => {
                self.phase = Phase::Done;
                ClientEvent::Granted(reply.addr)
            }
            (code, _, _) => {
                self.phase = Phase::Done;
                ClientEvent::Rejected(code)
            }
        };
        Ok((take, Some(event)))
    }

    /// The proxy closed the connection: an error unless the handshake already finished.
    ///
    /// # Errors
    ///
    /// [`ClientError::UnexpectedEof`] when the proxy closed before the final reply (after a BIND's
    /// first reply too).
    pub fn handle_eof(&mut self) -> Result<(), ClientError> {
        if self.phase == Phase::Done {
            Ok(())
        } else {
            self.phase = Phase::Done;
            Err(ClientError::UnexpectedEof)
        }
    }

    /// How many bytes to read next: what is left of the reply being read (0 once
    /// [`is_done`](Self::is_done)). Reading exactly that many (`read_exact`, or reads into a buffer
    /// of that length) never consumes payload that follows the reply.
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{ClientHandshake, REPLY_LEN};
    /// let mut hs = ClientHandshake::bind(SocketAddrV4::new([127, 0, 0, 1].into(), 0), b"")?;
    /// assert_eq!(hs.bytes_wanted(), REPLY_LEN);
    /// hs.handle_input(&[0, 90, 0x9c])?; // a short read
    /// assert_eq!(hs.bytes_wanted(), REPLY_LEN - 3);
    /// hs.handle_input(&[0x40, 0, 0, 0, 0])?; // the first BIND reply is complete
    /// assert_eq!(hs.bytes_wanted(), REPLY_LEN); // the second one comes next
    /// hs.handle_input(&[0, 90, 0x13, 0x88, 127, 0, 0, 1])?;
    /// assert!(hs.is_done());
    /// assert_eq!(hs.bytes_wanted(), 0); // the rest is payload
    /// # Ok::<(), Box<dyn core::error::Error>>(())
    /// ```
    pub fn bytes_wanted(&self) -> usize {
        match self.phase {
            Phase::Done => 0,
            Phase::First | Phase::Second => REPLY_LEN - self.reply_len as usize,
        }
    }

    /// Has a final event ([`ClientEvent::Granted`] or [`ClientEvent::Rejected`]) been reported?
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(a.into(), port)
    }

    #[test]
    fn bind_to_by_name_and_by_address() {
        let by_name = ClientHandshake::bind_to(Target::Host("peer.example", 21), b"u").unwrap();
        assert_eq!(by_name.request_bytes(), b"\x04\x02\x00\x15\x00\x00\x00\x01u\0peer.example\0");
        let mapped = "[::ffff:192.0.2.7]:21".parse::<core::net::SocketAddr>().unwrap();
        let by_mapped = ClientHandshake::bind_to(mapped.into(), b"").unwrap();
        assert_eq!(
            by_mapped.request_bytes(),
            ClientHandshake::bind(v4([192, 0, 2, 7], 21), b"").unwrap().request_bytes()
        );
        let v6 = "[2001:db8::7]:21".parse::<core::net::SocketAddr>().unwrap();
        assert_eq!(ClientHandshake::bind_to(v6.into(), b"").err(), Some(EncodeError::NotIpv4));
        assert_eq!(ClientHandshake::bind_to(Target::Host("", 21), b"").err(), Some(EncodeError::BadHost));
    }

    #[test]
    fn bind_by_name_reads_both_replies() {
        let mut hs = ClientHandshake::bind_to(Target::Host("peer.example", 21), b"").unwrap();
        let (used, first) = hs.handle_input(&[0, 90, 0x9c, 0x40, 0, 0, 0, 0, 0, 91]).unwrap();
        assert_eq!(used, 8, "the second reply is not consumed with the first");
        assert_eq!(first.map(ClientEvent::into_bind_listening), Some(Ok(v4([0, 0, 0, 0], 40000))));
        assert!(!hs.is_done());
        let (_, second) = hs.handle_input(&[0, 91, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(second.map(ClientEvent::into_granted), Some(Err(NotGranted::Rejected(ReplyCode::Rejected))));
        assert!(hs.is_done());
    }

    #[test]
    fn not_granted_words() {
        use std::string::ToString;
        assert_eq!(
            NotGranted::Rejected(ReplyCode::IdentMismatch).to_string(),
            "the proxy refused the request (reply 93)"
        );
        let event = ClientEvent::Granted(v4([10, 0, 0, 1], 80));
        assert_eq!(event.into_bind_listening(), Err(NotGranted::Unexpected(event)));
    }

    #[cfg(feature = "std")]
    #[test]
    fn std_helpers_agree_with_the_feature_free_ones() {
        for event in [
            ClientEvent::Granted(v4([10, 0, 0, 1], 80)),
            ClientEvent::BindListening(v4([0, 0, 0, 0], 1)),
            ClientEvent::Rejected(ReplyCode::IdentUnreachable),
        ] {
            let same = |a: Result<SocketAddrV4, ConnectError>, b: Result<SocketAddrV4, NotGranted>| match (a, b) {
                (Ok(x), Ok(y)) => x == y,
                (Err(ConnectError::Rejected(x)), Err(NotGranted::Rejected(y))) => x == y,
                (Err(ConnectError::Unexpected(x)), Err(NotGranted::Unexpected(y))) => x == y,
                _ => false,
            };
            assert!(same(event.granted(), event.into_granted()), "{event:?}");
            assert!(same(event.bind_listening(), event.into_bind_listening()), "{event:?}");
        }
    }

    #[test]
    fn connect_granted_byte_at_a_time() {
        let mut hs = ClientHandshake::connect(v4([10, 1, 2, 3], 8080), b"me").unwrap();
        assert_eq!(hs.request_bytes(), b"\x04\x01\x1f\x90\x0a\x01\x02\x03me\0");
        let reply = [0, 90, 0x1f, 0x90, 1, 2, 3, 4];
        for (i, b) in reply.iter().enumerate() {
            let (used, event) = hs.handle_input(core::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            assert_eq!(event.is_some(), i == 7);
        }
        assert!(hs.is_done());
        assert_eq!(hs.handle_input(b"payload").unwrap(), (0, None));
        assert_eq!(hs.handle_eof(), Ok(()));
    }

    #[test]
    fn connect_to_matches_connect_and_connect_host() {
        let addr = v4([10, 1, 2, 3], 8080);
        let a = ClientHandshake::connect_to(Target::Addr(addr.into()), b"me").unwrap();
        assert_eq!(a.request_bytes(), ClientHandshake::connect(addr, b"me").unwrap().request_bytes());
        let h = ClientHandshake::connect_to(Target::Host("example.com", 80), b"u").unwrap();
        assert_eq!(h.request_bytes(), ClientHandshake::connect_host("example.com", 80, b"u").unwrap().request_bytes());
        assert_eq!(ClientHandshake::connect_to(("bad host", 1).into(), b"").unwrap_err(), EncodeError::BadHost);
        assert_eq!(ClientHandshake::connect_to(addr.into(), b"nul\0").unwrap_err(), EncodeError::BadUserId);
    }

    #[cfg(feature = "std")]
    #[test]
    fn events_as_connector_results() {
        let a = v4([10, 1, 2, 3], 8080);
        assert_eq!(ClientEvent::Granted(a).granted().unwrap(), a);
        assert_eq!(ClientEvent::BindListening(a).bind_listening().unwrap(), a);
        for code in [ReplyCode::Rejected, ReplyCode::IdentUnreachable, ReplyCode::IdentMismatch] {
            assert!(matches!(ClientEvent::Rejected(code).granted(), Err(ConnectError::Rejected(c)) if c == code));
            assert!(
                matches!(ClientEvent::Rejected(code).bind_listening(), Err(ConnectError::Rejected(c)) if c == code)
            );
        }
        let odd = ClientEvent::BindListening(a).granted();
        assert!(matches!(odd, Err(ConnectError::Unexpected(ClientEvent::BindListening(x))) if x == a));
        let odd = ClientEvent::Granted(a).bind_listening();
        assert!(matches!(odd, Err(ConnectError::Unexpected(ClientEvent::Granted(x))) if x == a));
    }

    #[test]
    fn bytes_wanted_tracks_the_current_reply() {
        let mut hs = ClientHandshake::connect(v4([10, 1, 2, 3], 8080), b"").unwrap();
        let reply = [0, 90, 0, 0, 0, 0, 0, 0];
        for (i, b) in reply.iter().enumerate() {
            assert_eq!(hs.bytes_wanted(), REPLY_LEN - i);
            hs.handle_input(core::slice::from_ref(b)).unwrap();
        }
        assert_eq!(hs.bytes_wanted(), 0);
        let mut bad = ClientHandshake::connect(v4([10, 1, 2, 3], 8080), b"").unwrap();
        assert!(bad.handle_input(b"HTTP").is_err());
        assert_eq!(bad.bytes_wanted(), 0);
        let mut eof = ClientHandshake::connect(v4([10, 1, 2, 3], 8080), b"").unwrap();
        eof.handle_input(&[0, 90]).unwrap();
        assert_eq!(eof.bytes_wanted(), 6);
        assert!(eof.handle_eof().is_err());
        assert_eq!(eof.bytes_wanted(), 0);
    }

    #[test]
    fn rejection_and_bad_replies() {
        let mut a = ClientHandshake::connect_host("h", 1, b"").unwrap();
        assert_eq!(
            a.handle_input(&[0, 92, 0, 0, 0, 0, 0, 0]).unwrap(),
            (8, Some(ClientEvent::Rejected(ReplyCode::IdentUnreachable)))
        );
        assert!(a.is_done());
        let mut b = ClientHandshake::connect_host("h", 1, b"").unwrap();
        assert_eq!(b.handle_input(b"HTTP/1.1 400"), Err(ClientError::BadReply(ParseError::BadReplyVersion(b'H'))));
        assert!(b.is_done());
        let mut c = ClientHandshake::connect_host("h", 1, b"").unwrap();
        assert_eq!(c.handle_input(&[0, 90, 0]).unwrap(), (3, None));
        assert_eq!(c.handle_eof(), Err(ClientError::UnexpectedEof));
        assert!(ClientHandshake::connect_host("bad host", 1, b"").is_err());
        assert!(!std::format!("{}", ClientError::UnexpectedEof).is_empty());
    }

    #[test]
    fn bind_reads_two_replies_and_leaves_payload() {
        let mut hs = ClientHandshake::bind(v4([127, 0, 0, 1], 0), b"").unwrap();
        assert_eq!(hs.request_bytes(), b"\x04\x02\x00\x00\x7f\x00\x00\x01\0");
        let mut input = std::vec![0, 90, 0x9c, 0x40, 0, 0, 0, 0, 0, 90, 0x13, 0x88, 127, 0, 0, 1];
        input.extend_from_slice(b"data");
        let (a, e1) = hs.handle_input(&input).unwrap();
        assert_eq!((a, e1), (8, Some(ClientEvent::BindListening(v4([0, 0, 0, 0], 40000)))));
        assert!(!hs.is_done());
        let (b, e2) = hs.handle_input(&input[a..]).unwrap();
        assert_eq!(e2, Some(ClientEvent::Granted(v4([127, 0, 0, 1], 5000))));
        assert_eq!(&input[a + b..], b"data");
        let mut wrong = ClientHandshake::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), b"").unwrap();
        wrong.handle_input(&input[..8]).unwrap();
        assert_eq!(
            wrong.handle_input(&[0, 91, 0, 0, 0, 0, 0, 0]).unwrap().1,
            Some(ClientEvent::Rejected(ReplyCode::Rejected))
        );
    }
}
