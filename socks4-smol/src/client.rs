//! The client connector: CONNECT (SOCKS4 and 4a) and BIND through a SOCKS4 proxy, over smol's
//! `TcpStream` or any `futures-io` stream, built on socks4-async's shared client (one
//! implementation for smol and tokio). The same API in the three adapters, and what differs by
//! runtime: [`ProxyAddr`](socks4_core::ProxyAddr#one-client-api-three-runtimes).
//!
//! Replies are read exactly ([`ClientHandshake::bytes_wanted`] bytes), so nothing the destination
//! sends after the reply is consumed: it stays in the stream for the caller. [`Target`],
//! [`ProxyAddr`] and [`ConnectError`] are [`socks4_core`]'s, re-exported.
//!
//! ```no_run
//! use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
//! use socks4_smol::{Target, connect};
//! # smol::block_on(async {
//! let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse()?;
//! let mut stream = connect(proxy, Target::Host("example.com", 80), b"alice").await?;
//! stream.write_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").await?;
//! let mut page = Vec::new();
//! stream.read_to_end(&mut page).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) });
//! ```

use std::net::SocketAddrV4;

use async_net::TcpStream;
use futures_io::{AsyncRead, AsyncWrite};
pub use socks4_async::client::{handshake, read_reply};
use socks4_core::ClientHandshake;
pub use socks4_core::{ConnectError, ProxyAddr, Target};

use crate::Smol;

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (a
/// [`SocketAddr`](std::net::SocketAddr), or a [`ProxyAddr`] with a time limit): CONNECT, SOCKS4
/// for an address, 4a for a name.
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
    Ok(socks4_async::client::connect::<Smol>(proxy.into(), hs).await?.into())
}

/// Runs the CONNECT handshake to `target` over `stream`, a connection to the proxy you already have
/// (TLS, another proxy's tunnel), and returns it ready for data. No time limit of its own.
///
/// # Errors
/// The I/O error, a request that cannot be encoded, a bad reply, or the proxy's refusal.
pub async fn connect_over<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<S, ConnectError> {
    let hs = ClientHandshake::connect_to(target.into(), user_id)?;
    socks4_async::client::connect_over(stream, hs).await
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens; tell the peer [`PendingBind::listen_addr`], then [`PendingBind::accept`].
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

/// A BIND whose first reply arrived: the proxy listens for the peer ([`PendingBind::listen_addr`]);
/// its [`accept`](PendingBind::accept) (or `accept_timeout`) waits for the second reply.
pub type PendingBind = socks4_async::client::PendingBind<Smol>;
