//! What the driver needs from an async runtime: [`Runtime`], and the few helpers built on it.
//!
//! The shape follows quinn's `runtime` module and hyper's `rt`: a handful of readiness-level
//! operations, each a static method (no `dyn`, no allocation on the hot path), with the stream
//! passed by shared reference, so the relay reads and writes one socket from two directions at once
//! without splitting or cloning it. tokio's `TcpStream` (`readable`/`try_read`/`try_io`),
//! async-io's `Async<TcpStream>` (`readable`/`read_with`) and async-std's `&TcpStream: AsyncRead`
//! all fit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::future;

/// Which readiness a [`Runtime::try_io`] operation consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// The operation reads from the socket.
    Readable,
    /// The operation writes to the socket.
    Writable,
}

/// What the driver needs from an async runtime. Every worker runs its connections on one thread,
/// so nothing here needs `Send` (but [`unblock`](Self::unblock)'s work, which runs elsewhere).
///
/// # Implementing it
/// - [`read`](Self::read) and [`write`](Self::write) wait until they can move at least one byte
///   (or fail, or see end of file); several may be pending on one stream at once, one per direction.
/// - A runtime that caches readiness (tokio) must clear it when an operation returns
///   `WouldBlock`, in `read`/`write` and in [`try_io`](Self::try_io): else the next wait returns at
///   once and the task spins.
/// - The optional waits ([`readable`](Self::readable), [`writable`](Self::writable),
///   [`peek`](Self::peek)) return `None` when the runtime cannot wait without a buffer (async-std
///   cannot wait for readability): the relay then copies with its buffer held during the read, and
///   the handshake does not watch its client while it waits on something else.
///
/// `socks4-tokio` implements it for tokio, `socks4-smol` for smol and async-std (about a hundred
/// lines each).
pub trait Runtime: 'static {
    /// A connected TCP stream. Dropping it closes the socket.
    type Stream: 'static;
    /// A TCP listener (BIND's one-shot listener).
    type Listener: 'static;

    /// Registers a connected std stream (non-blocking already) with the runtime.
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self::Stream>;
    /// Connects `socket` to `addr` within `timeout`: a new non-blocking TCP socket, not connected,
    /// bound (or not) to the source the egress chose (socks4-server's `egress::socket`, which
    /// makes every outgoing socket of a server). Start the connect with
    /// [`connect_started`](socks4_sys::socket::connect_started) (or the runtime's own), wait
    /// until the socket is writable, and read its pending error.
    fn connect_socket(
        socket: socket2::Socket,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<Self::Stream>>;

    /// Connects to `addr` within `timeout` from the system's choice of source (no source port is
    /// bound first): [`connect_socket`](Self::connect_socket) with an unbound socket.
    fn connect(addr: SocketAddr, timeout: Duration) -> impl Future<Output = io::Result<Self::Stream>> {
        async move {
            let socket = socks4_sys::socket::nonblocking(socket2::Domain::for_address(addr))?;
            Self::connect_socket(socket, addr, timeout).await
        }
    }
    /// Resolves `host` without blocking the event loop.
    fn resolve(host: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>>;
    /// Runs blocking `work` off the event loop (a lookup, an Argon2 verification). `None` if
    /// it could not finish (the runtime is shutting down, or the work panicked).
    fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> impl Future<Output = Option<T>>;
    /// Listens on `addr` (port 0 picks a free port).
    fn listen(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>>;
    /// Accepts one connection.
    fn accept(listener: &Self::Listener) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    /// The address a listener is bound to.
    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr>;
    /// Waits for `duration`.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;
    /// The stream's socket, for the option and address calls (`TCP_NODELAY`, `SO_LINGER`,
    /// half-close, local and peer address).
    fn socket(stream: &Self::Stream) -> socket2::SockRef<'_>;

    /// Reads what is there into `buf`, waiting until something is (`Ok(0)`: end of file).
    fn read<'a>(stream: &'a Self::Stream, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + 'a;
    /// Writes some of `buf`, waiting until the socket takes at least one byte.
    fn write<'a>(stream: &'a Self::Stream, buf: &'a [u8]) -> impl Future<Output = io::Result<usize>> + 'a;

    /// Waits until a read would not block (bytes, end of file or an error are there), without a
    /// buffer. `None` (the default) when the runtime cannot tell.
    fn readable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        let _ = stream;
        None::<future::Ready<io::Result<()>>>
    }

    /// Waits until a write would not block. `None` (the default) when the runtime cannot tell; the
    /// relay then copies instead of splicing.
    fn writable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        let _ = stream;
        None::<future::Ready<io::Result<()>>>
    }

    /// Waits until `stream` is readable and peeks at one byte without consuming it (`Ok(0)`: end of
    /// file). How a handshake watches its client while it waits on something else. `None` (the
    /// default) when the runtime cannot.
    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        let _ = stream;
        None::<future::Ready<io::Result<usize>>>
    }

    /// Runs a non-blocking system call on the stream's socket (a splice) after its readiness was
    /// awaited; on `WouldBlock` the runtime forgets that readiness (tokio: `try_io`). The default
    /// just calls `op`: right for a runtime that keeps no readiness of its own (async-io).
    fn try_io<T>(stream: &Self::Stream, interest: Interest, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let _ = (stream, interest);
        op()
    }

    /// Linux: the stream's non-blocking socket, for the zero-copy `splice(2)` relay, which also
    /// needs [`readable`](Self::readable) and [`writable`](Self::writable). `None` (the default):
    /// the relay copies.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn fd(stream: &Self::Stream) -> Option<std::os::fd::BorrowedFd<'_>> {
        let _ = stream;
        None
    }
}

/// Runs `work` for at most `timeout`: `None` after that.
#[cfg(feature = "server")]
pub(crate) async fn within<R: Runtime, T>(timeout: Duration, work: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        R::sleep(timeout).await;
        None
    })
    .await
}

/// Runs `op`, or fails with `ErrorKind::TimedOut` after `timeout`.
#[cfg(feature = "server")]
pub(crate) async fn with_timeout<R: Runtime, T>(
    timeout: Duration,
    op: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let timed_out = || Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    within::<R, _>(timeout, op).await.unwrap_or_else(timed_out)
}

/// Writes all of `data` to `stream`.
pub(crate) async fn write_all<R: Runtime>(stream: &R::Stream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match R::write(stream, data).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => data = &data[n..],
        }
    }
    Ok(())
}

/// Fills `buf` from `stream`; end of file first is `UnexpectedEof`.
pub(crate) async fn read_exact<R: Runtime>(stream: &R::Stream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match R::read(stream, buf).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

/// The stream's local address (unspecified if the socket cannot tell).
#[cfg(feature = "server")]
pub(crate) fn local_addr<R: Runtime>(stream: &R::Stream) -> io::Result<SocketAddr> {
    R::socket(stream).local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
}

/// The stream's peer address.
pub(crate) fn peer_addr<R: Runtime>(stream: &R::Stream) -> io::Result<SocketAddr> {
    R::socket(stream).peer_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Sets `TCP_NODELAY` (best effort: a socket that refuses still works).
#[cfg(feature = "server")]
pub(crate) fn set_nodelay<R: Runtime>(stream: &R::Stream) {
    let _ = R::socket(stream).set_tcp_nodelay(true);
}
