//! Client-side helpers shared by the scenarios: connecting, reading replies, expecting a close,
//! echo round trips, and the [`Failure`] type.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::wire::{self, Reply};

/// Read/write timeout for ordinary steps (a reply, an echo).
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout, to the proxy or to a BIND port.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to reject or close after bad input.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a scenario failed: a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Failure { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::new(format!("I/O error: {e}"))
    }
}

/// Adds what was being done to an error, turning it into a [`Failure`].
pub(crate) trait Context<T> {
    /// Wraps the error as `"{what}: {error}"`.
    fn context(self, what: impl fmt::Display) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(format!("{what}: {e}")))
    }
}

/// Returns early with a formatted [`Failure`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::scenarios::Failure::new(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// Connects to `addr` with the standard timeouts and `TCP_NODELAY`.
pub(crate) fn connect_to(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).context(format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects to the proxy under test.
pub(crate) fn connect_proxy(ctx: &Ctx) -> Result<TcpStream, Failure> {
    let Some(source) = ctx.profile.source else { return connect_to(ctx.proxy) };
    let socket = socket2::Socket::new(socket2::Domain::for_address(ctx.proxy), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into()).context(format!("binding {source}"))?;
    socket
        .connect_timeout(&ctx.proxy.into(), CONNECT_TIMEOUT)
        .context(format!("connecting to {} from {source}", ctx.proxy))?;
    let s = TcpStream::from(socket);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Whether an error means "the peer closed or reset the connection".
pub(crate) fn is_close(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

/// Whether an error is a read/write timeout.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// What arrived when a reply was expected.
#[derive(Debug)]
pub(crate) enum ReplyOrClose {
    /// A full, valid 8-byte reply.
    Reply(Reply),
    /// EOF or reset before any byte.
    Closed,
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` if the connection closed after `n` bytes.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, Failure> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_close(&e) => return Ok(got),
            Err(e) if is_timeout(&e) => {
                bail!("timed out after {got} of {} bytes", buf.len())
            }
            Err(e) => bail!("read failed after {got} of {} bytes: {e}", buf.len()),
        }
    }
    Ok(got)
}

/// Reads a reply, or notices a close before the first byte. A partial or invalid reply fails.
pub(crate) fn read_reply_or_close(s: &mut TcpStream) -> Result<ReplyOrClose, Failure> {
    let mut buf = [0u8; wire::REPLY_LEN];
    match read_full(s, &mut buf).context("reading the reply")? {
        0 => Ok(ReplyOrClose::Closed),
        wire::REPLY_LEN => Ok(ReplyOrClose::Reply(wire::parse_reply(&buf).context("bad reply")?)),
        n => bail!("connection closed after {n} of 8 reply bytes: {:?}", &buf[..n]),
    }
}

/// Reads a reply; a close is a failure.
pub(crate) fn read_reply(s: &mut TcpStream) -> Result<Reply, Failure> {
    match read_reply_or_close(s)? {
        ReplyOrClose::Reply(r) => Ok(r),
        ReplyOrClose::Closed => bail!("connection closed instead of a reply"),
    }
}

/// Reads a reply and checks its code.
pub(crate) fn expect_reply(s: &mut TcpStream, code: u8, what: &str) -> Result<Reply, Failure> {
    let r = read_reply(s).context(what)?;
    if r.code != code {
        bail!("{what}: expected reply code {code}, got {}", r.code);
    }
    Ok(r)
}

/// Expects the server to close the connection (EOF or reset) within `within`, sending nothing.
pub(crate) fn expect_close(s: &mut TcpStream, within: Duration, what: &str) -> Result<(), Failure> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{what}: the server did not close the connection within {within:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => bail!("{what}: expected the connection to close, got {n} bytes: {:?}", &buf[..n.min(16)]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_close(&e) => return Ok(()),
            Err(e) if is_timeout(&e) => {
                bail!("{what}: the server did not close the connection within {within:?}")
            }
            Err(e) => bail!("{what}: read failed while waiting for a close: {e}"),
        }
    }
}

/// Expects a rejection (reply 91..=93 then close) or a close without reply, within `within`.
/// Returns the reply code, if any.
pub(crate) fn expect_rejected_or_closed(
    s: &mut TcpStream,
    within: Duration,
    what: &str,
) -> Result<Option<u8>, Failure> {
    let started = Instant::now();
    s.set_read_timeout(Some(within))?;
    let r = read_reply_or_close(s).context(what)?;
    match r {
        ReplyOrClose::Closed => Ok(None),
        ReplyOrClose::Reply(r) if r.granted() => bail!("{what}: expected a rejection or a close, got reply 90"),
        ReplyOrClose::Reply(r) => {
            let left = within.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
            expect_close(s, left, &format!("{what} (after reply {})", r.code))?;
            Ok(Some(r.code))
        }
    }
}

/// Expects reply 91 exactly, then a close.
pub(crate) fn expect_rejected(s: &mut TcpStream, what: &str) -> Result<(), Failure> {
    expect_reply(s, wire::REJECTED, what)?;
    expect_close(s, CLOSE_TIMEOUT, &format!("{what} (after reply 91)"))
}

/// Writes `payload` and reads the same bytes back.
pub(crate) fn echo_round_trip(s: &mut TcpStream, payload: &[u8], what: &str) -> Result<(), Failure> {
    s.write_all(payload).context(format!("{what}: writing the echo payload"))?;
    let mut back = vec![0u8; payload.len()];
    let n = read_full(s, &mut back).context(format!("{what}: reading the echo"))?;
    if n < back.len() {
        bail!("{what}: connection closed after {n} of {} echoed bytes", back.len());
    }
    if back != payload {
        bail!("{what}: the echo differs from what was sent");
    }
    Ok(())
}

/// Reads exactly `n` bytes; a close or timeout before that fails.
pub(crate) fn read_exact_n(s: &mut TcpStream, n: usize, what: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = vec![0u8; n];
    let got = read_full(s, &mut buf).context(what)?;
    if got < n {
        bail!("{what}: connection closed after {got} of {n} bytes");
    }
    Ok(buf)
}

/// Checks that nothing arrives for `quiet` (no extra bytes after a reply).
pub(crate) fn expect_quiet(s: &mut TcpStream, quiet: Duration, what: &str) -> Result<(), Failure> {
    s.set_read_timeout(Some(quiet))?;
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    match r {
        Err(e) if is_timeout(&e) => Ok(()),
        Ok(0) => bail!("{what}: the server closed the connection"),
        Ok(n) => bail!("{what}: {n} unexpected bytes after the reply: {:?}", &buf[..n.min(16)]),
        Err(e) => bail!("{what}: {e}"),
    }
}

/// Opens a CONNECT to `target` through the proxy and expects reply 90.
pub(crate) fn open_connect(ctx: &Ctx, target: SocketAddrV4, user: &[u8]) -> Result<TcpStream, Failure> {
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect(target, user)).context("sending CONNECT")?;
    expect_reply(&mut s, wire::GRANTED, "CONNECT reply")?;
    Ok(s)
}

/// Checks the server still serves: a fresh CONNECT to `target` and an echo round trip.
pub(crate) fn still_serves(ctx: &Ctx, target: SocketAddrV4) -> Result<(), Failure> {
    let mut s = open_connect(ctx, target, b"after").context("a later CONNECT (does the server still serve?)")?;
    echo_round_trip(&mut s, b"still alive", "echo on a later CONNECT")?;
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}
