//! A blocking SOCKS4/4a client over `std::net::TcpStream`, built on `ClientHandshake`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use socks4_core::{ClientError, ClientEvent, ClientHandshake, EncodeError, REPLY_LEN, ReplyCode};

/// Where a CONNECT goes: an IPv4 address (SOCKS4) or a host name the proxy resolves (SOCKS4a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An IPv4 address and port.
    Addr(SocketAddrV4),
    /// A host name and port, resolved by the proxy.
    Host(&'a str, u16),
}

impl From<SocketAddrV4> for Target<'_> {
    fn from(addr: SocketAddrV4) -> Self {
        Target::Addr(addr)
    }
}

impl From<(Ipv4Addr, u16)> for Target<'_> {
    fn from((ip, port): (Ipv4Addr, u16)) -> Self {
        Target::Addr(SocketAddrV4::new(ip, port))
    }
}

impl<'a> From<(&'a str, u16)> for Target<'a> {
    fn from((host, port): (&'a str, u16)) -> Self {
        Target::Host(host, port)
    }
}

/// Why a client handshake failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Connecting to the proxy or talking to it failed.
    Io(io::Error),
    /// The timeout passed before the handshake finished.
    TimedOut,
    /// The proxy refused with this code (91, 92 or 93).
    Rejected(ReplyCode),
    /// The proxy's reply was invalid, or it closed the connection during the handshake.
    Protocol(ClientError),
    /// The request could not be encoded (a NUL in the user id, a bad host name).
    Encode(EncodeError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "proxy I/O: {e}"),
            Self::TimedOut => f.write_str("the proxy handshake timed out"),
            Self::Rejected(code) => write!(f, "the proxy refused the request (reply {})", code.code()),
            Self::Protocol(e) => write!(f, "{e}"),
            Self::Encode(e) => write!(f, "cannot encode the request: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::Encode(e) => Some(e),
            Self::TimedOut | Self::Rejected(_) => None,
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
            Self::TimedOut
        } else {
            Self::Io(e)
        }
    }
}

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy`.
///
/// `timeout` bounds the whole handshake (TCP connect, request, reply). The returned stream is
/// blocking, with no timeouts and `TCP_NODELAY` set; nothing past the reply has been read from it.
pub fn connect<'a>(
    proxy: SocketAddr,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let hs = match target.into() {
        Target::Addr(addr) => ClientHandshake::connect(addr, user_id),
        Target::Host(host, port) => ClientHandshake::connect_host(host, port, user_id),
    }
    .map_err(ConnectError::Encode)?;
    let deadline = Instant::now() + timeout;
    let (mut stream, mut hs) = open(proxy, hs, deadline)?;
    match next_event(&mut stream, &mut hs, deadline)? {
        ClientEvent::Granted(_) => finish(stream),
        ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
        ClientEvent::BindListening(_) => Err(ConnectError::Protocol(ClientError::UnexpectedEof)),
    }
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (SOCKS4 BIND).
///
/// Returns after the first reply: tell the peer [`BindPending::listen_addr`], then call
/// [`BindPending::accept`]. `timeout` bounds this first step.
pub fn bind(
    proxy: SocketAddr,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
    timeout: Duration,
) -> Result<BindPending, ConnectError> {
    let hs = ClientHandshake::bind(expected_peer, user_id).map_err(ConnectError::Encode)?;
    let deadline = Instant::now() + timeout;
    let (mut stream, mut hs) = open(proxy, hs, deadline)?;
    match next_event(&mut stream, &mut hs, deadline)? {
        ClientEvent::BindListening(addr) => {
            let ip = if addr.ip().is_unspecified() { proxy.ip() } else { (*addr.ip()).into() };
            Ok(BindPending { stream, hs, listen: SocketAddr::new(ip, addr.port()) })
        }
        ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
        // A single 90 reply to a BIND cannot happen: the handshake reports the first as listening.
        ClientEvent::Granted(_) => Err(ConnectError::Protocol(ClientError::UnexpectedEof)),
    }
}

/// A BIND after the proxy's first reply: the proxy listens and waits for the peer.
#[derive(Debug)]
pub struct BindPending {
    stream: TcpStream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl BindPending {
    /// Where the peer must connect (the proxy's address if its reply left the IP unspecified).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits up to `timeout` for the second reply: on success, the relayed stream to the peer
    /// (blocking, no timeouts) and the peer's address.
    pub fn accept(mut self, timeout: Duration) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        let deadline = Instant::now() + timeout;
        match next_event(&mut self.stream, &mut self.hs, deadline)? {
            ClientEvent::Granted(peer) => Ok((finish(self.stream)?, peer)),
            ClientEvent::Rejected(code) => Err(ConnectError::Rejected(code)),
            ClientEvent::BindListening(_) => Err(ConnectError::Protocol(ClientError::UnexpectedEof)),
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(ConnectError::TimedOut) } else { Ok(left) }
}

/// Connects to the proxy and sends the request.
fn open(
    proxy: SocketAddr,
    hs: ClientHandshake,
    deadline: Instant,
) -> Result<(TcpStream, ClientHandshake), ConnectError> {
    let mut stream = TcpStream::connect_timeout(&proxy, remaining(deadline)?)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(hs.request_bytes())?;
    Ok((stream, hs))
}

/// Reads one reply (never more than its bytes) and returns what it meant.
fn next_event(
    stream: &mut TcpStream,
    hs: &mut ClientHandshake,
    deadline: Instant,
) -> Result<ClientEvent, ConnectError> {
    let mut buf = [0u8; REPLY_LEN];
    let mut need = REPLY_LEN;
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match stream.read(&mut buf[..need]) {
            Ok(0) => {
                hs.handle_eof().map_err(ConnectError::Protocol)?;
                return Err(ConnectError::Protocol(ClientError::UnexpectedEof));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (used, event) = hs.handle_input(&buf[..n]).map_err(ConnectError::Protocol)?;
        need -= used;
        if let Some(event) = event {
            return Ok(event);
        }
    }
}

fn finish(stream: TcpStream) -> Result<TcpStream, ConnectError> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}
