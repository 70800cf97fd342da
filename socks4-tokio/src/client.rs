//! The client connector: CONNECT (SOCKS4 and 4a) and BIND through a SOCKS4 proxy, built on
//! [`ClientHandshake`].
//!
//! Replies are read with `read_exact` of [`ClientHandshake::bytes_wanted`] bytes, so nothing past
//! the reply is consumed: payload the proxy relays right after it stays in the returned stream.
//! [`Target`] and [`ConnectError`] are [`socks4_core`]'s, re-exported.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};

use socks4_core::{ClientEvent, ClientHandshake, REPLY_LEN};
pub use socks4_core::{ConnectError, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy`; the returned stream is
/// ready for data (any bytes the proxy relayed right after its reply are still in it).
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
/// use std::net::Ipv4Addr;
/// let by_ip = socks4_tokio::connect("127.0.0.1:1080", (Ipv4Addr::new(192, 0, 2, 1), 80), b"").await?;
/// let by_name = socks4_tokio::connect("127.0.0.1:1080", ("example.com", 80), b"alice").await?;
/// # Ok(()) }
/// ```
pub async fn connect<'a>(
    proxy: impl ToSocketAddrs,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<TcpStream, ConnectError> {
    let mut hs = ClientHandshake::connect_to(target.into(), user_id)?;
    let mut stream = open(proxy, &hs).await?;
    read_reply(&mut stream, &mut hs).await?.granted()?;
    Ok(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens (the first reply): tell the peer [`Bind::listen_addr`], then
/// [`Bind::accept`].
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
/// let bind = socks4_tokio::bind("127.0.0.1:1080", "192.0.2.7:20".parse().unwrap(), b"").await?;
/// println!("peer, connect to {}", bind.listen_addr());
/// let (stream, peer) = bind.accept().await?;
/// # Ok(()) }
/// ```
pub async fn bind(
    proxy: impl ToSocketAddrs,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
) -> Result<Bind, ConnectError> {
    let mut hs = ClientHandshake::bind(expected_peer, user_id)?;
    let mut stream = open(proxy, &hs).await?;
    let addr = read_reply(&mut stream, &mut hs).await?.bind_listening()?;
    let listen = if addr.ip().is_unspecified() {
        SocketAddr::new(stream.peer_addr()?.ip(), addr.port())
    } else {
        SocketAddr::V4(addr)
    };
    Ok(Bind { stream, hs, listen })
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
    pub async fn accept(mut self) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        let peer = read_reply(&mut self.stream, &mut self.hs).await?.granted()?;
        Ok((self.stream, peer))
    }
}

/// Connects to the proxy and writes the request.
async fn open(proxy: impl ToSocketAddrs, hs: &ClientHandshake) -> Result<TcpStream, ConnectError> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(hs.request_bytes()).await?;
    Ok(stream)
}

/// Reads exactly the rest of one reply (never payload behind it) and returns what it meant.
pub(crate) async fn read_reply(stream: &mut TcpStream, hs: &mut ClientHandshake) -> Result<ClientEvent, ConnectError> {
    let mut buf = [0u8; REPLY_LEN];
    let buf = &mut buf[..hs.bytes_wanted()];
    if let Err(e) = stream.read_exact(buf).await {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            hs.handle_eof()?;
        }
        return Err(ConnectError::Io(e));
    }
    match hs.handle_input(buf)? {
        (_, Some(event)) => Ok(event),
        (_, None) => Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof)),
    }
}
