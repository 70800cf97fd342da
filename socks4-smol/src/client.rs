//! The client connector: a SOCKS4/4a handshake over any `futures-io` stream, and conveniences that
//! open smol `TcpStream`s through a proxy.
//!
//! Replies are read exactly ([`ClientHandshake::bytes_wanted`] bytes), so nothing the destination
//! sends after the reply is consumed: it stays in the stream for the caller. [`Target`] and
//! [`ConnectError`] are [`socks4_core`]'s, re-exported.
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

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use smol::net::TcpStream;
pub use socks4_async::client::{handshake, read_reply};
use socks4_core::ClientHandshake;
pub use socks4_core::{ConnectError, Target};

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (CONNECT, SOCKS4 or 4a).
pub async fn connect<'a>(
    proxy: SocketAddr,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<TcpStream, ConnectError> {
    let mut hs = ClientHandshake::connect_to(target.into(), user_id)?;
    let mut stream = TcpStream::connect(proxy).await?;
    let _ = stream.set_nodelay(true);
    handshake(&mut stream, &mut hs).await?.granted()?;
    Ok(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens; tell the peer [`PendingBind::listen_addr`], then [`PendingBind::accept`].
pub async fn bind(proxy: SocketAddr, expected_peer: SocketAddrV4, user_id: &[u8]) -> Result<PendingBind, ConnectError> {
    let mut hs = ClientHandshake::bind(expected_peer, user_id)?;
    let mut stream = TcpStream::connect(proxy).await?;
    let _ = stream.set_nodelay(true);
    let addr = handshake(&mut stream, &mut hs).await?.bind_listening()?;
    let ip = if addr.ip().is_unspecified() { proxy.ip() } else { IpAddr::V4(*addr.ip()) };
    Ok(PendingBind { stream, hs, listen: SocketAddr::new(ip, addr.port()) })
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
        let peer = read_reply(&mut self.stream, &mut self.hs).await?.granted()?;
        Ok((self.stream, peer))
    }
}
