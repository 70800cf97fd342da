//! The client connector: CONNECT (SOCKS4 and 4a) and BIND through a SOCKS4 proxy, built on
//! [`ClientHandshake`] and socks4-async's shared client (one implementation for tokio and smol).
//! The same API in the three adapters, and what differs by runtime:
//! [`ProxyAddr`](socks4_core::ProxyAddr#one-client-api-three-runtimes).
//!
//! Replies are read with `read_exact` of [`ClientHandshake::bytes_wanted`] bytes, so nothing past
//! the reply is consumed: payload the proxy relays right after it stays in the returned stream.
//! [`Target`], [`ProxyAddr`] and [`ConnectError`] are [`socks4_core`]'s, re-exported.

use std::net::SocketAddrV4;

use socks4_async::client::ReplyBuf;
use socks4_core::ClientHandshake;
pub use socks4_core::{ConnectError, ProxyAddr, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Tokio;

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (a [`SocketAddr`](std::net::SocketAddr),
/// or a [`ProxyAddr`] with a time limit); the returned stream is ready for data (any bytes the
/// proxy relayed right after its reply are still in it).
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
/// use std::net::{Ipv4Addr, SocketAddr};
/// use std::time::Duration;
/// let proxy: SocketAddr = "127.0.0.1:1080".parse().unwrap();
/// let by_ip = socks4_tokio::connect(proxy, (Ipv4Addr::new(192, 0, 2, 1), 80), b"").await?;
/// let bounded = socks4_tokio::ProxyAddr::new(proxy).with_timeout(Duration::from_secs(10));
/// let by_name = socks4_tokio::connect(bounded, ("example.com", 80), b"alice").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`ConnectError::TimedOut`] past the proxy's time limit; else the I/O error, a request that
/// cannot be encoded, a bad reply, or the proxy's refusal.
pub async fn connect<'a>(
    proxy: impl Into<ProxyAddr>,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<TcpStream, ConnectError> {
    let hs = ClientHandshake::connect_to(target.into(), user_id)?;
    socks4_async::client::connect::<Tokio>(proxy.into(), hs).await
}

/// Runs the CONNECT handshake to `target` over `stream`, a connection to the proxy you already have
/// (TLS, another proxy's tunnel), and returns it ready for data. No time limit of its own: wrap it
/// in `tokio::time::timeout`.
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
/// let to_proxy = tokio::net::TcpStream::connect("127.0.0.1:1080").await?;
/// let stream = socks4_tokio::connect_over(to_proxy, ("example.com", 80), b"alice").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// The I/O error, a request that cannot be encoded, a bad reply, or the proxy's refusal.
pub async fn connect_over<'a, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<S, ConnectError> {
    let mut hs = ClientHandshake::connect_to(target.into(), user_id)?;
    stream.write_all(hs.request_bytes()).await?;
    stream.flush().await?;
    let mut reply = ReplyBuf::new(&hs);
    let read = stream.read_exact(reply.buf()).await.map(drop);
    reply.finish(&mut hs, read)?.granted()?;
    Ok(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens (the first reply): tell the peer [`PendingBind::listen_addr`], then
/// [`PendingBind::accept`].
///
/// ```no_run
/// # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
/// let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse().unwrap();
/// let bind = socks4_tokio::bind(proxy, "192.0.2.7:20".parse().unwrap(), b"").await?;
/// println!("peer, connect to {}", bind.listen_addr());
/// let (stream, peer) = bind.accept().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`ConnectError::TimedOut`] past the proxy's time limit; else the I/O error, a request that
/// cannot be encoded, a bad reply, or the proxy's refusal.
pub async fn bind(
    proxy: impl Into<ProxyAddr>,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
) -> Result<PendingBind, ConnectError> {
    PendingBind::open(proxy.into(), ClientHandshake::bind(expected_peer, user_id)?).await
}

/// [`bind`] for a peer given as a [`Target`]: by address (SOCKS4), or by name (SOCKS4a: the proxy
/// resolves it to the one address it accepts the peer from).
///
/// # Errors
/// As [`bind`]; an IPv6 address cannot be sent (give its name).
pub async fn bind_to<'a>(
    proxy: impl Into<ProxyAddr>,
    peer: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<PendingBind, ConnectError> {
    PendingBind::open(proxy.into(), ClientHandshake::bind_to(peer.into(), user_id)?).await
}

/// A BIND in progress: the proxy listens for the peer ([`PendingBind::listen_addr`]); its
/// [`accept`](PendingBind::accept) (or `accept_timeout`) waits for the second reply.
pub type PendingBind = socks4_async::client::PendingBind<Tokio>;
