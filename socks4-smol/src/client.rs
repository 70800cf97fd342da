//! The client connector: a SOCKS4/4a handshake over any `futures-io` stream, and conveniences that
//! open smol `TcpStream`s through a proxy.
//!
//! Replies are read exactly (8 bytes at a time), so nothing the destination sends after the reply
//! is consumed: it stays in the stream for the caller.
//!
//! ```no_run
//! use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
//! use socks4_smol::client::{Target, connect};
//! # smol::block_on(async {
//! let proxy = "127.0.0.1:1080".parse()?;
//! let mut stream = connect(proxy, Target::Host("example.com", 80), b"alice").await?;
//! stream.write_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").await?;
//! let mut page = Vec::new();
//! stream.read_to_end(&mut page).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) });
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use socks4_core::{ClientEvent, ClientHandshake, EncodeError, REPLY_LEN, ReplyCode};

/// Where to connect through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An IPv4 address (SOCKS4).
    Addr(SocketAddrV4),
    /// A host name the proxy resolves (SOCKS4a), and a port.
    Host(&'a str, u16),
}

impl From<SocketAddrV4> for Target<'_> {
    fn from(addr: SocketAddrV4) -> Self {
        Target::Addr(addr)
    }
}

/// Why a connection through the proxy failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Connecting to, writing to or reading from the proxy failed.
    Io(io::Error),
    /// The request could not be encoded (a NUL in the user id, a bad host name, …).
    Encode(EncodeError),
    /// The proxy's reply was malformed, or it closed during the handshake.
    Protocol(socks4_core::ClientError),
    /// The proxy refused (91, 92 or 93).
    Rejected(ReplyCode),
    /// The proxy sent a reply that does not fit the step (e.g. a second BIND reply was expected).
    Unexpected(ClientEvent),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "proxy connection: {e}"),
            Self::Encode(e) => write!(f, "bad request: {e}"),
            Self::Protocol(e) => e.fmt(f),
            Self::Rejected(code) => write!(f, "the proxy refused the request ({})", code.code()),
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
            _ => None,
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

impl From<socks4_core::ClientError> for ConnectError {
    fn from(e: socks4_core::ClientError) -> Self {
        Self::Protocol(e)
    }
}

/// Writes `hs`'s request to `stream` and reads the first (for CONNECT, the only) reply.
///
/// For BIND the event is [`ClientEvent::BindListening`]; call [`read_reply`] for the second reply.
/// A rejection is returned as [`ClientEvent::Rejected`], not as an error.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut ClientHandshake,
) -> Result<ClientEvent, ConnectError> {
    stream.write_all(hs.request_bytes()).await?;
    stream.flush().await?;
    read_reply(stream, hs).await
}

/// Reads exactly one 8-byte reply and reports what it meant (BIND's second reply, for example).
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    hs: &mut ClientHandshake,
) -> Result<ClientEvent, ConnectError> {
    let mut reply = [0u8; REPLY_LEN];
    let mut have = 0;
    while have < REPLY_LEN {
        let n = stream.read(&mut reply[have..]).await?;
        if n == 0 {
            hs.handle_eof()?;
            return Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof));
        }
        have += n;
    }
    match hs.handle_input(&reply)? {
        (_, Some(event)) => Ok(event),
        (_, None) => Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof)),
    }
}

fn request_for(target: Target<'_>, user_id: &[u8]) -> Result<ClientHandshake, EncodeError> {
    match target {
        Target::Addr(addr) => ClientHandshake::connect(addr, user_id),
        Target::Host(host, port) => ClientHandshake::connect_host(host, port, user_id),
    }
}

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (CONNECT, SOCKS4 or 4a).
pub async fn connect(proxy: SocketAddr, target: Target<'_>, user_id: &[u8]) -> Result<TcpStream, ConnectError> {
    let mut hs = request_for(target, user_id)?;
    let mut stream = TcpStream::connect(proxy).await?;
    let _ = stream.set_nodelay(true);
    match handshake(&mut stream, &mut hs).await? {
        ClientEvent::Granted(_) => Ok(stream),
        ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
        other => Err(ConnectError::Unexpected(other)),
    }
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens; tell the peer [`PendingBind::listen_addr`], then [`PendingBind::accept`].
pub async fn bind(proxy: SocketAddr, expected_peer: SocketAddrV4, user_id: &[u8]) -> Result<PendingBind, ConnectError> {
    let mut hs = ClientHandshake::bind(expected_peer, user_id)?;
    let mut stream = TcpStream::connect(proxy).await?;
    let _ = stream.set_nodelay(true);
    match handshake(&mut stream, &mut hs).await? {
        ClientEvent::BindListening(addr) => {
            let ip = if addr.ip().is_unspecified() { proxy.ip() } else { IpAddr::V4(*addr.ip()) };
            Ok(PendingBind { stream, hs, listen: SocketAddr::new(ip, addr.port()) })
        }
        ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
        other => Err(ConnectError::Unexpected(other)),
    }
}

/// A BIND whose first reply arrived: the proxy listens for the peer.
#[derive(Debug)]
pub struct PendingBind {
    stream: TcpStream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl PendingBind {
    /// Where the peer must connect (an unspecified address in the reply is replaced by the
    /// proxy's).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits for the second reply: on success, the stream relays to the peer, whose address is
    /// returned.
    pub async fn accept(mut self) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        match read_reply(&mut self.stream, &mut self.hs).await? {
            ClientEvent::Granted(peer) => Ok((self.stream, peer)),
            ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
            other => Err(ConnectError::Unexpected(other)),
        }
    }
}
