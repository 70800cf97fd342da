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

use std::net::{SocketAddr, SocketAddrV4};

use async_io::Async;
use async_net::TcpStream;
pub use socks4_async::client::{handshake, read_reply};
use socks4_core::ClientHandshake;

use crate::Smol;
pub use socks4_core::{ConnectError, Target};

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (CONNECT, SOCKS4 or 4a).
pub async fn connect<'a>(
    proxy: SocketAddr,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<TcpStream, ConnectError> {
    let mut hs = ClientHandshake::connect_to(target.into(), user_id)?;
    let stream = open(proxy).await?;
    socks4_async::client::request::<Smol>(&stream, &mut hs).await?.granted()?;
    Ok(stream.into())
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (BIND). Returns once
/// the proxy listens; tell the peer [`PendingBind::listen_addr`], then [`PendingBind::accept`].
pub async fn bind(proxy: SocketAddr, expected_peer: SocketAddrV4, user_id: &[u8]) -> Result<PendingBind, ConnectError> {
    let hs = ClientHandshake::bind(expected_peer, user_id)?;
    PendingBind::start(open(proxy).await?, hs).await
}

/// A BIND whose first reply arrived: the proxy listens for the peer ([`PendingBind::listen_addr`]);
/// its [`accept`](PendingBind::accept) waits for the second reply.
pub type PendingBind = socks4_async::client::PendingBind<Smol>;

/// Connects to the proxy.
async fn open(proxy: SocketAddr) -> Result<Async<std::net::TcpStream>, ConnectError> {
    let stream = Async::<std::net::TcpStream>::connect(proxy).await?;
    let _ = stream.get_ref().set_nodelay(true);
    Ok(stream)
}
