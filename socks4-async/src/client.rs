//! The client side's reply reading, once for every adapter: [`ReplyBuf`] holds exactly the bytes
//! one reply still needs ([`ClientHandshake::bytes_wanted`], so nothing the destination sends
//! after the reply is consumed) and turns what was read into a [`ClientEvent`]. Any I/O can fill it:
//! the `futures-io` helpers here ([`handshake`], [`read_reply`]), tokio's `read_exact`, a blocking
//! std read, or the driver's own runtime (chaining).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_core::{ClientError, ClientEvent, ClientHandshake, ConnectError, ProxyAddr, REPLY_LEN};

use crate::runtime::{Runtime, peer_addr, read_exact, write_all};

/// The bytes one reply still needs.
///
/// ```
/// use socks4_async::client::ReplyBuf;
/// use socks4_core::{ClientEvent, ClientHandshake};
/// let mut hs = ClientHandshake::connect_to(("192.0.2.1".parse::<std::net::Ipv4Addr>()?, 80).into(), b"")?;
/// let mut reply = ReplyBuf::new(&hs);
/// reply.buf().copy_from_slice(&[0, 90, 0, 80, 192, 0, 2, 1]); // what a read_exact filled in
/// assert!(matches!(reply.finish(&mut hs, Ok(()))?, ClientEvent::Granted { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReplyBuf {
    bytes: [u8; REPLY_LEN],
    len: usize,
}

impl ReplyBuf {
    /// The buffer for `hs`'s next reply.
    pub fn new(hs: &ClientHandshake) -> Self {
        ReplyBuf { bytes: [0; REPLY_LEN], len: hs.bytes_wanted().min(REPLY_LEN) }
    }

    /// The bytes to fill exactly (a `read_exact` of this slice).
    pub fn buf(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    /// What the reply meant, given how filling [`buf`](Self::buf) went. An end of file before the
    /// reply is the handshake's error (a closed proxy), other I/O errors are returned as they are.
    ///
    /// # Errors
    /// The I/O error, or the protocol error the reply is.
    pub fn finish(&self, hs: &mut ClientHandshake, read: io::Result<()>) -> Result<ClientEvent, ConnectError> {
        if let Err(e) = read {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                hs.handle_eof()?;
            }
            return Err(ConnectError::Io(e));
        }
        match hs.handle_input(&self.bytes[..self.len])? {
            (_, Some(event)) => Ok(event),
            (_, None) => Err(ConnectError::Protocol(ClientError::UnexpectedEof)),
        }
    }
}

/// Writes `hs`'s request to `stream` and reads the first (for CONNECT, the only) reply.
///
/// For BIND the event is [`ClientEvent::BindListening`]; call [`read_reply`] for the second reply.
/// A rejection is returned as [`ClientEvent::Rejected`], not as an error.
///
/// # Errors
/// The I/O error, or the protocol error the reply is.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut ClientHandshake,
) -> Result<ClientEvent, ConnectError> {
    stream.write_all(hs.request_bytes()).await?;
    stream.flush().await?;
    read_reply(stream, hs).await
}

/// Reads exactly the rest of one reply (never payload behind it) and reports what it meant (BIND's
/// second reply, for example).
///
/// # Errors
/// The I/O error, or the protocol error the reply is.
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    hs: &mut ClientHandshake,
) -> Result<ClientEvent, ConnectError> {
    let mut reply = ReplyBuf::new(hs);
    let read = stream.read_exact(reply.buf()).await;
    reply.finish(hs, read)
}

/// CONNECT handshake `hs` over `stream`, any stream to the proxy (TLS, another proxy's tunnel):
/// on a grant the stream is returned, ready for data. What the adapters' `connect_over` is.
///
/// # Errors
/// The I/O error, the protocol error the reply is, or the proxy's refusal.
pub async fn connect_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut hs: ClientHandshake,
) -> Result<S, ConnectError> {
    handshake(&mut stream, &mut hs).await?.granted()?;
    Ok(stream)
}

/// Opens a connection to `proxy` and runs CONNECT handshake `hs` on it, all within the proxy's
/// time limit ([`ProxyAddr::timeout`]). What the adapters' `connect` is.
///
/// # Errors
/// [`ConnectError::TimedOut`] past the limit; else the I/O error, the protocol error the reply is,
/// or the proxy's refusal.
pub async fn connect<R: Runtime>(proxy: ProxyAddr, mut hs: ClientHandshake) -> Result<R::Stream, ConnectError> {
    limited::<R, _>(proxy.timeout(), async {
        let stream = open::<R>(proxy).await?;
        request::<R>(&stream, &mut hs).await?.granted()?;
        Ok(stream)
    })
    .await
}

/// Connects to the proxy (`TCP_NODELAY` set: the handshake is small writes).
async fn open<R: Runtime>(proxy: ProxyAddr) -> Result<R::Stream, ConnectError> {
    // The whole call is bounded by `limited`; the runtime's connect wants a bound of its own.
    let stream = R::connect(proxy.addr(), proxy.timeout().unwrap_or(Duration::MAX)).await?;
    let _ = R::socket(&stream).set_tcp_nodelay(true);
    Ok(stream)
}

/// Runs `work`, ending it with [`ConnectError::TimedOut`] after `limit` if there is one.
async fn limited<R: Runtime, T>(
    limit: Option<Duration>,
    work: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    let Some(limit) = limit else { return work.await };
    future::or(
        async {
            match work.await {
                Err(ConnectError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => Err(ConnectError::TimedOut),
                done => done,
            }
        },
        async {
            R::sleep(limit).await;
            Err(ConnectError::TimedOut)
        },
    )
    .await
}

/// [`handshake`] over a runtime's stream: writes `hs`'s request, reads the first reply.
///
/// # Errors
/// The I/O error, or the protocol error the reply is.
pub async fn request<R: Runtime>(stream: &R::Stream, hs: &mut ClientHandshake) -> Result<ClientEvent, ConnectError> {
    write_all::<R>(stream, hs.request_bytes()).await?;
    read_reply_on::<R>(stream, hs).await
}

/// [`read_reply`] over a runtime's stream.
pub(crate) async fn read_reply_on<R: Runtime>(
    stream: &R::Stream,
    hs: &mut ClientHandshake,
) -> Result<ClientEvent, ConnectError> {
    let mut reply = ReplyBuf::new(hs);
    let read = read_exact::<R>(stream, reply.buf()).await;
    reply.finish(hs, read)
}

/// A BIND whose first reply arrived: the proxy listens for the peer. The adapters' client
/// connectors return it (`socks4_tokio::PendingBind`, `socks4_smol::PendingBind`).
pub struct PendingBind<R: Runtime> {
    stream: R::Stream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl<R: Runtime> fmt::Debug for PendingBind<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingBind").field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl<R: Runtime> PendingBind<R> {
    /// Opens a connection to `proxy` and sends BIND request `hs`, up to the first reply, all within
    /// the proxy's time limit ([`ProxyAddr::timeout`]). What the adapters' `bind` and `bind_to` are.
    ///
    /// # Errors
    /// [`ConnectError::TimedOut`] past the limit; else the I/O error, the protocol error the reply
    /// is, or the proxy's refusal.
    pub async fn open(proxy: ProxyAddr, hs: ClientHandshake) -> Result<Self, ConnectError> {
        limited::<R, _>(proxy.timeout(), async { Self::start(open::<R>(proxy).await?, hs).await }).await
    }

    /// Sends BIND request `hs` on `stream`, a connection to the proxy, and reads the first reply.
    ///
    /// # Errors
    /// The I/O error, the protocol error the reply is, or the proxy's refusal.
    pub async fn start(stream: R::Stream, mut hs: ClientHandshake) -> Result<Self, ConnectError> {
        let addr = request::<R>(&stream, &mut hs).await?.bind_listening()?;
        let listen = if addr.ip().is_unspecified() {
            SocketAddr::new(peer_addr::<R>(&stream)?.ip(), addr.port())
        } else {
            SocketAddr::V4(addr)
        };
        Ok(PendingBind { stream, hs, listen })
    }

    /// Where the peer must connect: the proxy's listening address (an unspecified address in the
    /// reply is replaced by the proxy's own).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits for the second reply: on success, the stream relays to the peer, whose address is
    /// returned.
    ///
    /// # Errors
    /// The I/O error, the protocol error the reply is, or the proxy's refusal.
    pub async fn accept(mut self) -> Result<(R::Stream, SocketAddrV4), ConnectError> {
        let peer = read_reply_on::<R>(&self.stream, &mut self.hs).await?.granted()?;
        Ok((self.stream, peer))
    }

    /// [`accept`](Self::accept), giving up after `limit` with [`ConnectError::TimedOut`] (the
    /// proxy bounds its own wait too: two minutes for ours).
    ///
    /// # Errors
    /// [`ConnectError::TimedOut`] past the limit; else as [`accept`](Self::accept).
    pub async fn accept_timeout(self, limit: Duration) -> Result<(R::Stream, SocketAddrV4), ConnectError> {
        limited::<R, _>(Some(limit), self.accept()).await
    }
}
