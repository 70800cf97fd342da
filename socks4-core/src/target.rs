//! Where a client's CONNECT goes, and (with `std`) why a client connector failed: the types the
//! adapters' client connectors share.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

/// Where a CONNECT goes: a socket address, or a host name and port.
///
/// A client connector sends an IPv4 address as a SOCKS4 request and a host name as SOCKS4a
/// ([`ClientHandshake::connect_to`](crate::ClientHandshake::connect_to)); a server handshake asks its
/// caller to connect to one ([`Output::Connect`](crate::Output::Connect)): an address of either family
/// (a SOCKS4a name may resolve to IPv6), or a host name when names are forwarded unresolved. So a
/// chaining proxy hands the server's target straight to its upstream's client handshake.
///
/// Build one with `into()` from a [`SocketAddr`], a [`SocketAddrV4`], an `(IpAddr, u16)`, an
/// `(Ipv4Addr, u16)` or a `(&str, u16)`.
///
/// ```
/// use core::net::{Ipv4Addr, SocketAddrV4};
/// use socks4_core::Target;
/// let a: Target<'_> = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80).into();
/// let b: Target<'_> = (Ipv4Addr::new(192, 0, 2, 1), 80).into();
/// let c: Target<'_> = ("example.com", 443).into();
/// assert_eq!(a, b);
/// assert_eq!(c, Target::Host("example.com", 443));
/// assert_eq!(c.to_string(), "example.com:443");
/// assert_eq!(c.port(), 443);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    /// A socket address. A client connector can send only IPv4 (SOCKS4 has no IPv6 field).
    Addr(SocketAddr),
    /// A host name and port, resolved by the proxy: a SOCKS4a request.
    Host(&'a str, u16),
}

impl Target<'_> {
    /// The destination port.
    pub const fn port(&self) -> u16 {
        match self {
            Self::Addr(addr) => addr.port(),
            Self::Host(_, port) => *port,
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Target<'_> {
    fn from(addr: SocketAddr) -> Self {
        Target::Addr(addr)
    }
}

impl From<SocketAddrV4> for Target<'_> {
    fn from(addr: SocketAddrV4) -> Self {
        Target::Addr(addr.into())
    }
}

impl From<(IpAddr, u16)> for Target<'_> {
    fn from((ip, port): (IpAddr, u16)) -> Self {
        Target::Addr(SocketAddr::new(ip, port))
    }
}

impl From<(Ipv4Addr, u16)> for Target<'_> {
    fn from((ip, port): (Ipv4Addr, u16)) -> Self {
        Target::Addr(SocketAddrV4::new(ip, port).into())
    }
}

impl<'a> From<(&'a str, u16)> for Target<'a> {
    fn from((host, port): (&'a str, u16)) -> Self {
        Target::Host(host, port)
    }
}

#[cfg(feature = "std")]
pub use connect_error::ConnectError;

#[cfg(feature = "std")]
mod connect_error {
    use core::fmt;
    use std::io;

    use crate::{ClientError, ClientEvent, EncodeError, Failure, NotGranted, ReplyCode};

    /// Why a client connector (CONNECT or BIND through a proxy) failed; shared by the adapters.
    ///
    /// `?` converts an [`io::Error`], an [`EncodeError`] and a [`ClientError`] into it. Only with
    /// the `std` feature.
    ///
    /// ```
    /// use std::error::Error;
    /// use socks4_core::{ClientError, ConnectError, ReplyCode};
    /// let refused = ConnectError::Rejected(ReplyCode::Rejected);
    /// assert_eq!(refused.to_string(), "the proxy refused the request (reply 91)");
    /// let eof = ConnectError::from(ClientError::UnexpectedEof);
    /// assert!(matches!(eof, ConnectError::Protocol(ClientError::UnexpectedEof)));
    /// assert!(eof.source().is_some());
    /// ```
    #[derive(Debug)]
    #[non_exhaustive]
    pub enum ConnectError {
        /// Connecting to, writing to or reading from the proxy failed.
        Io(io::Error),
        /// The connector's timeout passed before the handshake finished.
        TimedOut,
        /// The request could not be encoded (a NUL in the user id or one over 255 bytes, a bad host
        /// name, a `0.0.0.x` address).
        Encode(EncodeError),
        /// The proxy's reply was invalid, or it closed the connection during the handshake.
        Protocol(ClientError),
        /// The proxy refused the request (91, 92 or 93).
        Rejected(ReplyCode),
        /// A valid reply that does not fit the step (e.g. a BIND's first reply where the second
        /// was expected).
        Unexpected(ClientEvent),
    }

    impl fmt::Display for ConnectError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Io(e) => write!(f, "proxy connection: {e}"),
                Self::TimedOut => f.write_str("the proxy handshake timed out"),
                Self::Encode(e) => write!(f, "cannot encode the request: {e}"),
                Self::Protocol(e) => e.fmt(f),
                Self::Rejected(code) => write!(f, "the proxy refused the request (reply {})", code.code()),
                Self::Unexpected(event) => write!(f, "unexpected reply from the proxy: {event:?}"),
            }
        }
    }

    impl std::error::Error for ConnectError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            match self {
                Self::Io(e) => Some(e),
                Self::Encode(e) => Some(e),
                Self::Protocol(e) => Some(e),
                Self::TimedOut | Self::Rejected(_) | Self::Unexpected(_) => None,
            }
        }
    }

    impl From<io::Error> for ConnectError {
        fn from(e: io::Error) -> Self {
            Self::Io(e)
        }
    }

    impl From<EncodeError> for ConnectError {
        fn from(e: EncodeError) -> Self {
            Self::Encode(e)
        }
    }

    impl From<ClientError> for ConnectError {
        fn from(e: ClientError) -> Self {
            Self::Protocol(e)
        }
    }

    /// [`NotGranted::Rejected`] is [`ConnectError::Rejected`], [`NotGranted::Unexpected`]
    /// [`ConnectError::Unexpected`].
    impl From<NotGranted> for ConnectError {
        fn from(e: NotGranted) -> Self {
            match e {
                NotGranted::Rejected(code) => Self::Rejected(code),
                NotGranted::Unexpected(event) => Self::Unexpected(event),
            }
        }
    }

    /// How a chaining proxy answers its client when the upstream connector failed: an upstream
    /// refusal keeps its reply code ([`Failure::Rejected`]), an I/O error maps like
    /// `From<&io::Error>`, a timeout is [`Failure::TimedOut`], anything else [`Failure::Other`].
    ///
    /// ```
    /// use socks4_core::{ConnectError, Failure, ReplyCode};
    /// let refused = ConnectError::Rejected(ReplyCode::IdentMismatch);
    /// assert_eq!(Failure::from(&refused), Failure::Rejected(ReplyCode::IdentMismatch));
    /// assert_eq!(Failure::from(&ConnectError::TimedOut), Failure::TimedOut);
    /// ```
    impl From<&ConnectError> for Failure {
        fn from(e: &ConnectError) -> Self {
            match e {
                ConnectError::Io(e) => Failure::from(e),
                ConnectError::TimedOut => Failure::TimedOut,
                ConnectError::Rejected(code) => Failure::Rejected(*code),
                _ => Failure::Other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 8080);
        assert_eq!(Target::from(addr), Target::Addr(addr.into()));
        assert_eq!(Target::from((Ipv4Addr::new(10, 0, 0, 1), 8080)), Target::Addr(addr.into()));
        assert_eq!(Target::from((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080)), Target::Addr(addr.into()));
        assert_eq!(std::format!("{}", Target::from(SocketAddr::from(addr))), "10.0.0.1:8080");
        let host = std::string::String::from("example.com");
        assert_eq!(Target::from((host.as_str(), 80)), Target::Host("example.com", 80));
    }

    #[cfg(feature = "std")]
    #[test]
    fn connect_error_display_source_and_from() {
        use crate::{ClientError, ClientEvent, EncodeError, ParseError, ReplyCode};
        use std::error::Error as _;
        use std::io;
        use std::string::ToString;

        let io = ConnectError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(io, ConnectError::Io(ref e) if e.kind() == io::ErrorKind::ConnectionRefused));
        assert!(io.to_string().starts_with("proxy connection: "));
        assert!(io.source().is_some());

        let enc = ConnectError::from(EncodeError::BadUserId);
        assert!(matches!(enc, ConnectError::Encode(EncodeError::BadUserId)));
        assert!(enc.source().is_some());

        let bad = ConnectError::from(ClientError::BadReply(ParseError::BadReplyVersion(b'H')));
        assert_eq!(bad.to_string(), ClientError::BadReply(ParseError::BadReplyVersion(b'H')).to_string());
        assert!(bad.source().is_some());

        assert_eq!(ConnectError::TimedOut.to_string(), "the proxy handshake timed out");
        assert_eq!(
            ConnectError::Rejected(ReplyCode::IdentMismatch).to_string(),
            "the proxy refused the request (reply 93)"
        );
        let odd = ConnectError::Unexpected(ClientEvent::BindListening(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1)));
        assert!(odd.to_string().starts_with("unexpected reply from the proxy: BindListening"));
        assert!(odd.source().is_none() && ConnectError::TimedOut.source().is_none());
    }
}
