//! The client connector: CONNECT (SOCKS4 and 4a) and BIND through a SOCKS4 proxy, built on
//! [`ClientHandshake`].
//!
//! Replies are read with `read_exact` (a reply is always 8 bytes), so nothing past the reply is
//! consumed: payload the proxy relays right after it stays in the returned stream.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socks4_core::{ClientEvent, ClientHandshake, EncodeError, REPLY_LEN, ReplyCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Where a CONNECT goes: an IPv4 address (SOCKS4) or a host name the proxy resolves (SOCKS4a).
///
/// ```
/// use socks4_tokio::Target;
/// let a: Target = "192.0.2.1:80".parse::<std::net::SocketAddrV4>().unwrap().into();
/// let b: Target = ("example.com", 443).into();
/// assert_eq!(b, Target::Host("example.com".into(), 443));
/// # let _ = a;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IPv4 address and port: a SOCKS4 request.
    Addr(SocketAddrV4),
    /// A host name and port: a SOCKS4a request.
    Host(String, u16),
}

impl From<SocketAddrV4> for Target {
    fn from(a: SocketAddrV4) -> Self {
        Target::Addr(a)
    }
}

impl From<(Ipv4Addr, u16)> for Target {
    fn from((ip, port): (Ipv4Addr, u16)) -> Self {
        Target::Addr(SocketAddrV4::new(ip, port))
    }
}

impl From<(&str, u16)> for Target {
    fn from((host, port): (&str, u16)) -> Self {
        Target::Host(host.to_owned(), port)
    }
}

impl From<(String, u16)> for Target {
    fn from((host, port): (String, u16)) -> Self {
        Target::Host(host, port)
    }
}

/// Why a proxied connection could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting to or talking with the proxy failed.
    Io(io::Error),
    /// The request could not be encoded (a user id with NUL or over 255 bytes, a bad host name).
    Request(EncodeError),
    /// The proxy's reply was invalid, or it closed the connection mid-handshake.
    Protocol(socks4_core::ClientError),
    /// The proxy refused the request (91, 92 or 93).
    Rejected(ReplyCode),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "proxy connection: {e}"),
            Self::Request(e) => write!(f, "cannot encode the request: {e}"),
            Self::Protocol(e) => e.fmt(f),
            Self::Rejected(code) => write!(f, "the proxy rejected the request (reply {})", code.code()),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Request(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::Rejected(_) => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy`; the returned stream is
/// ready for data (any bytes the proxy relayed right after its reply are still in it).
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ClientError> {
/// use std::net::Ipv4Addr;
/// let by_ip = socks4_tokio::connect("127.0.0.1:1080", (Ipv4Addr::new(192, 0, 2, 1), 80), b"").await?;
/// let by_name = socks4_tokio::connect("127.0.0.1:1080", ("example.com", 80), b"alice").await?;
/// # Ok(()) }
/// ```
pub async fn connect(
    proxy: impl ToSocketAddrs,
    target: impl Into<Target>,
    user_id: &[u8],
) -> Result<TcpStream, ClientError> {
    let mut hs = match target.into() {
        Target::Addr(addr) => ClientHandshake::connect(addr, user_id),
        Target::Host(host, port) => ClientHandshake::connect_host(&host, port, user_id),
    }
    .map_err(ClientError::Request)?;
    let mut stream = open(proxy, &hs).await?;
    match read_reply(&mut stream, &mut hs).await? {
        ClientEvent::Granted(_) => Ok(stream),
        ClientEvent::Rejected(code) => Err(ClientError::Rejected(code)),
        ClientEvent::BindListening(_) => Err(ClientError::Protocol(socks4_core::ClientError::UnexpectedEof)),
    }
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens (the first reply): tell the peer [`Bind::listen_addr`], then
/// [`Bind::accept`].
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ClientError> {
/// let bind = socks4_tokio::bind("127.0.0.1:1080", "192.0.2.7:20".parse().unwrap(), b"").await?;
/// println!("peer, connect to {}", bind.listen_addr());
/// let (stream, peer) = bind.accept().await?;
/// # Ok(()) }
/// ```
pub async fn bind(proxy: impl ToSocketAddrs, expected_peer: SocketAddrV4, user_id: &[u8]) -> Result<Bind, ClientError> {
    let mut hs = ClientHandshake::bind(expected_peer, user_id).map_err(ClientError::Request)?;
    let mut stream = open(proxy, &hs).await?;
    match read_reply(&mut stream, &mut hs).await? {
        ClientEvent::BindListening(addr) => {
            let listen = if addr.ip().is_unspecified() {
                SocketAddr::new(stream.peer_addr()?.ip(), addr.port())
            } else {
                SocketAddr::V4(addr)
            };
            Ok(Bind { stream, hs, listen })
        }
        ClientEvent::Rejected(code) => Err(ClientError::Rejected(code)),
        // The core reports a first 90 to a BIND as `BindListening`; anything else is a bad reply.
        ClientEvent::Granted(_) => Err(ClientError::Protocol(socks4_core::ClientError::UnexpectedEof)),
    }
}

/// A BIND in progress: the proxy listens for the peer.
#[derive(Debug)]
pub struct Bind {
    stream: TcpStream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl Bind {
    /// Where the peer must connect: the proxy's listening address (an unspecified address in the
    /// reply is replaced by the proxy's own).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits for the second reply: the relayed stream to the peer and the peer's address.
    pub async fn accept(mut self) -> Result<(TcpStream, SocketAddrV4), ClientError> {
        match read_reply(&mut self.stream, &mut self.hs).await? {
            ClientEvent::Granted(peer) => Ok((self.stream, peer)),
            ClientEvent::Rejected(code) => Err(ClientError::Rejected(code)),
            ClientEvent::BindListening(_) => Err(ClientError::Protocol(socks4_core::ClientError::UnexpectedEof)),
        }
    }
}

/// Connects to the proxy and writes the request.
async fn open(proxy: impl ToSocketAddrs, hs: &ClientHandshake) -> Result<TcpStream, ClientError> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(hs.request_bytes()).await?;
    Ok(stream)
}

/// Reads exactly one reply.
async fn read_reply(stream: &mut TcpStream, hs: &mut ClientHandshake) -> Result<ClientEvent, ClientError> {
    let mut buf = [0u8; REPLY_LEN];
    if let Err(e) = stream.read_exact(&mut buf).await {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            hs.handle_eof().map_err(ClientError::Protocol)?;
        }
        return Err(ClientError::Io(e));
    }
    match hs.handle_input(&buf).map_err(ClientError::Protocol)? {
        (_, Some(event)) => Ok(event),
        (_, None) => Err(ClientError::Protocol(socks4_core::ClientError::UnexpectedEof)),
    }
}
