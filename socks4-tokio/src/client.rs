//! The client connector: CONNECT (SOCKS4 and 4a) and BIND through a SOCKS4 proxy, built on
//! [`ClientHandshake`].
//!
//! Replies are read with `read_exact` of [`ClientHandshake::bytes_wanted`] bytes, so nothing past
//! the reply is consumed: payload the proxy relays right after it stays in the returned stream.
//! [`Target`] and [`ConnectError`] are [`socks4_core`]'s, re-exported.

use std::net::SocketAddrV4;

use socks4_core::ClientHandshake;
pub use socks4_core::{ConnectError, Target};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::Tokio;

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
    let stream = open(proxy).await?;
    socks4_async::client::request::<Tokio>(&stream, &mut hs).await?.granted()?;
    Ok(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens (the first reply): tell the peer [`PendingBind::listen_addr`], then
/// [`PendingBind::accept`].
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
) -> Result<PendingBind, ConnectError> {
    let hs = ClientHandshake::bind(expected_peer, user_id)?;
    PendingBind::start(open(proxy).await?, hs).await
}

/// A BIND in progress: the proxy listens for the peer ([`PendingBind::listen_addr`]); its
/// [`accept`](PendingBind::accept) waits for the second reply.
pub type PendingBind = socks4_async::client::PendingBind<Tokio>;

/// Connects to the proxy.
async fn open(proxy: impl ToSocketAddrs) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
