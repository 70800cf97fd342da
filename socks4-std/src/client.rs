//! A blocking SOCKS4/4a client over `std::net::TcpStream` (or any `Read + Write` stream), built
//! on `ClientHandshake`. The same API in the three adapters, and what differs by runtime:
//! [`ProxyAddr`](socks4_core::ProxyAddr#one-client-api-three-runtimes). [`Target`], [`ProxyAddr`]
//! and [`ConnectError`] are [`socks4_core`]'s, re-exported.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use socks4_core::{ClientEvent, ClientHandshake, REPLY_LEN};
pub use socks4_core::{ConnectError, ProxyAddr, Target};

/// An I/O error of the handshake: a read or write timeout (`TimedOut`, or `WouldBlock` from a
/// socket timeout) is [`ConnectError::TimedOut`], anything else [`ConnectError::Io`].
fn io_error(e: io::Error) -> ConnectError {
    if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
        ConnectError::TimedOut
    } else {
        ConnectError::Io(e)
    }
}

/// Opens a connection to `target` through the SOCKS4 proxy at `proxy` (a [`SocketAddr`], or a
/// [`ProxyAddr`] with a time limit, which then bounds the whole handshake: TCP connect, request,
/// reply). The returned stream is blocking, with no timeouts and `TCP_NODELAY` set; nothing past
/// the reply has been read from it.
///
/// ```no_run
/// use std::time::Duration;
/// let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse()?;
/// let stream = socks4_std::connect(proxy, ("example.com", 80), b"alice")?;
/// let bounded = socks4_std::ProxyAddr::new(proxy).with_timeout(Duration::from_secs(5));
/// let stream = socks4_std::connect(bounded, ("example.com", 80), b"alice")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ConnectError::TimedOut`] past the proxy's time limit; else the I/O error, a request that
/// cannot be encoded, a bad reply, or the proxy's refusal.
pub fn connect<'a>(
    proxy: impl Into<ProxyAddr>,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<TcpStream, ConnectError> {
    let proxy = proxy.into();
    let hs = ClientHandshake::connect_to(target.into(), user_id)?;
    let deadline = Deadline::after(proxy.timeout());
    let (mut stream, mut hs) = open(proxy.addr(), hs, deadline)?;
    next_event(&mut stream, &mut hs, deadline)?.granted()?;
    finish(stream)
}

/// Runs the CONNECT handshake to `target` over `stream`, a connection to the proxy you already have
/// (TLS, another proxy's tunnel), and returns it ready for data (nothing past the reply read). No
/// time limit of its own: set the socket's read and write timeouts first.
///
/// # Errors
/// The I/O error (a socket timeout is [`ConnectError::TimedOut`]), a request that cannot be
/// encoded, a bad reply, or the proxy's refusal.
pub fn connect_over<'a, S: Read + Write>(
    mut stream: S,
    target: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<S, ConnectError> {
    let mut hs = ClientHandshake::connect_to(target.into(), user_id)?;
    stream.write_all(hs.request_bytes()).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    read_event(&mut stream, &mut hs, || Ok(()))?.granted()?;
    Ok(stream)
}

/// Asks the proxy at `proxy` to accept one connection from `expected_peer` (SOCKS4 BIND).
///
/// Returns after the first reply: tell the peer [`PendingBind::listen_addr`], then call
/// [`PendingBind::accept`]. The proxy's time limit, if any, bounds this first step.
///
/// # Errors
/// [`ConnectError::TimedOut`] past the proxy's time limit; else the I/O error, a request that
/// cannot be encoded, a bad reply, or the proxy's refusal.
pub fn bind(
    proxy: impl Into<ProxyAddr>,
    expected_peer: SocketAddrV4,
    user_id: &[u8],
) -> Result<PendingBind, ConnectError> {
    PendingBind::open(proxy.into(), ClientHandshake::bind(expected_peer, user_id)?)
}

/// [`bind`] for a peer given as a [`Target`]: by address (SOCKS4), or by name (SOCKS4a: the proxy
/// resolves it to the one address it accepts the peer from).
///
/// # Errors
/// As [`bind`]; an IPv6 address cannot be sent (give its name).
pub fn bind_to<'a>(
    proxy: impl Into<ProxyAddr>,
    peer: impl Into<Target<'a>>,
    user_id: &[u8],
) -> Result<PendingBind, ConnectError> {
    PendingBind::open(proxy.into(), ClientHandshake::bind_to(peer.into(), user_id)?)
}

/// A BIND after the proxy's first reply: the proxy listens and waits for the peer.
#[derive(Debug)]
pub struct PendingBind {
    stream: TcpStream,
    hs: ClientHandshake,
    listen: SocketAddr,
}

impl PendingBind {
    fn open(proxy: ProxyAddr, hs: ClientHandshake) -> Result<Self, ConnectError> {
        let deadline = Deadline::after(proxy.timeout());
        let (mut stream, mut hs) = open(proxy.addr(), hs, deadline)?;
        let addr = next_event(&mut stream, &mut hs, deadline)?.bind_listening()?;
        let ip = if addr.ip().is_unspecified() { proxy.addr().ip() } else { (*addr.ip()).into() };
        Ok(PendingBind { stream, hs, listen: SocketAddr::new(ip, addr.port()) })
    }

    /// Where the peer must connect (the proxy's address if its reply left the IP unspecified).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Waits for the second reply (as long as the proxy waits: two minutes for ours): on success,
    /// the relayed stream to the peer (blocking, no timeouts) and the peer's address.
    ///
    /// # Errors
    /// The I/O error, a bad reply, or the proxy's refusal (91: the wrong peer, or none in time).
    pub fn accept(self) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        self.accept_until(Deadline(None))
    }

    /// [`accept`](Self::accept), giving up after `limit` with [`ConnectError::TimedOut`].
    ///
    /// # Errors
    /// [`ConnectError::TimedOut`] past the limit; else as [`accept`](Self::accept).
    pub fn accept_timeout(self, limit: Duration) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        self.accept_until(Deadline::after(Some(limit)))
    }

    fn accept_until(mut self, deadline: Deadline) -> Result<(TcpStream, SocketAddrV4), ConnectError> {
        let peer = next_event(&mut self.stream, &mut self.hs, deadline)?.granted()?;
        Ok((finish(self.stream)?, peer))
    }
}

/// When a call must be done by, if ever.
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<Instant>);

impl Deadline {
    fn after(limit: Option<Duration>) -> Self {
        // A limit too far to represent is no limit.
        Deadline(limit.and_then(|limit| Instant::now().checked_add(limit)))
    }

    /// The time left (`None`: no limit); past the deadline, [`ConnectError::TimedOut`].
    fn remaining(self) -> Result<Option<Duration>, ConnectError> {
        let Some(deadline) = self.0 else { return Ok(None) };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(ConnectError::TimedOut) } else { Ok(Some(left)) }
    }
}

/// Connects to the proxy and sends the request.
fn open(
    proxy: SocketAddr,
    hs: ClientHandshake,
    deadline: Deadline,
) -> Result<(TcpStream, ClientHandshake), ConnectError> {
    let mut stream = match deadline.remaining()? {
        Some(left) => TcpStream::connect_timeout(&proxy, left),
        None => TcpStream::connect(proxy),
    }
    .map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    stream.set_write_timeout(deadline.remaining()?).map_err(io_error)?;
    stream.write_all(hs.request_bytes()).map_err(io_error)?;
    Ok((stream, hs))
}

/// Reads one reply from the proxy's socket within `deadline`.
fn next_event(
    stream: &mut TcpStream,
    hs: &mut ClientHandshake,
    deadline: Deadline,
) -> Result<ClientEvent, ConnectError> {
    let socket = stream.try_clone().map_err(io_error)?;
    read_event(stream, hs, || socket.set_read_timeout(deadline.remaining()?).map_err(io_error))
}

/// Reads one reply (never more than its bytes: [`ClientHandshake::bytes_wanted`]) and returns what
/// it meant; `before_read` runs before each read (to set the time left).
fn read_event(
    stream: &mut impl Read,
    hs: &mut ClientHandshake,
    mut before_read: impl FnMut() -> Result<(), ConnectError>,
) -> Result<ClientEvent, ConnectError> {
    let mut buf = [0u8; REPLY_LEN];
    loop {
        before_read()?;
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
