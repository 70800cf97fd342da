//! A blocking SOCKS4/4a client over `std::net::TcpStream`, built on `ClientHandshake`. [`Target`]
//! and [`ConnectError`] are [`socks4_core`]'s, re-exported.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use socks4_core::{ClientEvent, ClientHandshake, REPLY_LEN};
pub use socks4_core::{ConnectError, Target};

/// An I/O error of the handshake: a read or write timeout (`TimedOut`, or `WouldBlock` from a
/// socket timeout) is [`ConnectError::TimedOut`], anything else [`ConnectError::Io`].
fn io_error(e: io::Error) -> ConnectError {
    if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
        ConnectError::TimedOut
    } else {
        ConnectError::Io(e)
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
    let hs = ClientHandshake::connect_to(target.into(), user_id)?;
    let deadline = Instant::now() + timeout;
    let (mut stream, mut hs) = open(proxy, hs, deadline)?;
    next_event(&mut stream, &mut hs, deadline)?.granted()?;
    finish(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (SOCKS4 BIND).
///
/// Returns after the first reply: tell the peer [`PendingBind::listen_addr`], then call
/// [`PendingBind::accept`]. `timeout` bounds this first step.
pub fn bind(
    proxy: SocketAddr,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
    timeout: Duration,
) -> Result<PendingBind, ConnectError> {
    let hs = ClientHandshake::bind(expected_peer, user_id)?;
    let deadline = Instant::now() + timeout;
    let (mut stream, mut hs) = open(proxy, hs, deadline)?;
    let addr = next_event(&mut stream, &mut hs, deadline)?.bind_listening()?;
    let ip = if addr.ip().is_unspecified() { proxy.ip() } else { (*addr.ip()).into() };
    Ok(PendingBind { stream, hs, listen: SocketAddr::new(ip, addr.port()) })
}

/// A BIND after the proxy's first reply: the proxy listens and waits for the peer.
#[derive(Debug)]
pub struct PendingBind {
    stream: TcpStream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl PendingBind {
    /// Where the peer must connect (the proxy's address if its reply left the IP unspecified).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits up to `timeout` for the second reply: on success, the relayed stream to the peer
    /// (blocking, no timeouts) and the peer's address.
    pub fn accept(mut self, timeout: Duration) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        let deadline = Instant::now() + timeout;
        let peer = next_event(&mut self.stream, &mut self.hs, deadline)?.granted()?;
        Ok((finish(self.stream)?, peer))
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
    let mut stream = TcpStream::connect_timeout(&proxy, remaining(deadline)?).map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    stream.set_write_timeout(Some(remaining(deadline)?)).map_err(io_error)?;
    stream.write_all(hs.request_bytes()).map_err(io_error)?;
    Ok((stream, hs))
}

/// Reads one reply (never more than its bytes: [`ClientHandshake::bytes_wanted`]) and returns what
/// it meant.
fn next_event(
    stream: &mut TcpStream,
    hs: &mut ClientHandshake,
    deadline: Instant,
) -> Result<ClientEvent, ConnectError> {
    let mut buf = [0u8; REPLY_LEN];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?)).map_err(io_error)?;
        let buf = &mut buf[..hs.bytes_wanted()];
        let n = match stream.read(buf) {
            Ok(0) => {
                hs.handle_eof()?;
                return Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        if let (_, Some(event)) = hs.handle_input(&buf[..n])? {
            return Ok(event);
        }
    }
}

fn finish(stream: TcpStream) -> Result<TcpStream, ConnectError> {
    stream.set_read_timeout(None).map_err(io_error)?;
    stream.set_write_timeout(None).map_err(io_error)?;
    Ok(stream)
}
