//! The few things a runtime must provide, and the smol implementation.
//!
//! The per-connection code ([`crate::conn`]) only needs `futures-io` streams plus this trait, so the
//! same code runs on smol ([`Smol`]) and, with the `async-std` feature, on async-std
//! ([`AsyncStd`](crate::AsyncStd)).

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::future;

/// What the server needs from an async runtime. Every worker runs single-threaded, so nothing here
/// needs `Send`.
pub trait Runtime: 'static {
    /// A TCP stream. `Clone` handles share one socket (both smol's and async-std's streams are
    /// reference-counted), which lets the relay read and write it from two directions at once.
    type Stream: AsyncRead + AsyncWrite + Unpin + Clone + 'static;
    /// A TCP listener (BIND's one-shot listener).
    type Listener: 'static;

    /// Runs a future to completion on the current thread, driving the runtime's reactor and timers.
    fn block_on<T>(future: impl Future<Output = T>) -> T;
    /// Registers a connected std stream (handed over by an accept task, already non-blocking) with
    /// the runtime.
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self::Stream>;
    /// Connects to `addr` within `timeout` (no source port is bound first).
    fn connect(addr: SocketAddr, timeout: Duration) -> impl Future<Output = io::Result<Self::Stream>>;
    /// Resolves `host` off the event loop.
    fn resolve(host: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>>;
    /// Runs blocking `work` off the event loop (for an ident query).
    fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> impl Future<Output = T>;
    /// Listens on `addr` (port 0 picks a free port).
    fn listen(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>>;
    /// Accepts one connection.
    fn accept(listener: &Self::Listener) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    /// The address a listener is bound to.
    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr>;
    /// Waits for `duration`.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;
    /// Half-closes a stream: no more writes, the peer sees end of file.
    fn shutdown_write(stream: &Self::Stream) -> io::Result<()>;
    /// Makes closing the stream abortive (`SO_LINGER` 0): once its last handle is dropped, the
    /// peer sees a reset instead of an end of file. How the relay passes a reset on.
    fn set_abortive(stream: &Self::Stream) -> io::Result<()>;
    /// Sets `TCP_NODELAY`.
    fn set_nodelay(stream: &Self::Stream) -> io::Result<()>;
    /// The stream's local address.
    fn local_addr(stream: &Self::Stream) -> io::Result<SocketAddr>;
    /// The stream's remote address.
    fn peer_addr(stream: &Self::Stream) -> io::Result<SocketAddr>;

    /// Waits until a read on `stream` would not block (bytes, end of file or an error are there),
    /// without a buffer. `None` (the default) when the runtime cannot tell: the relay then waits
    /// inside `read` with its buffer held, instead of borrowing one only while bytes flow.
    fn readable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        let _ = stream;
        None::<future::Ready<io::Result<()>>>
    }

    /// Waits until `stream` is readable and peeks at one byte without consuming it: `Ok(0)` is end
    /// of file. How a handshake watches its client while it waits on something else. `None` (the
    /// default) when the runtime cannot: the handshake then does not watch.
    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        let _ = stream;
        None::<future::Ready<io::Result<usize>>>
    }

    /// Waits until a write on `stream` would not block. `None` (the default) when the runtime
    /// cannot tell; the relay then copies instead of splicing.
    fn writable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        let _ = stream;
        None::<future::Ready<io::Result<()>>>
    }

    /// Linux: the stream's (non-blocking) socket, for the zero-copy `splice(2)` relay, which also
    /// needs [`readable`](Self::readable) and [`writable`](Self::writable). `None` (the default):
    /// the relay copies.
    #[cfg(target_os = "linux")]
    fn fd(stream: &Self::Stream) -> Option<std::os::fd::BorrowedFd<'_>> {
        let _ = stream;
        None
    }
}

/// Runs `op`, or fails with `ErrorKind::TimedOut` after `timeout`.
pub(crate) async fn with_timeout<R: Runtime, T>(
    timeout: Duration,
    op: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(op, async {
        R::sleep(timeout).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// The smol runtime: `async-io` reactor and timers, `async-net` sockets, resolution on the
/// `blocking` thread pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl Runtime for Smol {
    type Stream = smol::net::TcpStream;
    type Listener = smol::net::TcpListener;

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        crate::timers::block_on(future)
    }

    fn from_std(stream: std::net::TcpStream) -> io::Result<Self::Stream> {
        // Accepted non-blocking (accept4 with SOCK_NONBLOCK): no fcntl/ioctl again.
        Async::new_nonblocking(stream).map(smol::net::TcpStream::from)
    }

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        with_timeout::<Self, _>(timeout, smol::net::TcpStream::connect(addr)).await
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        smol::net::resolve((host, port)).await
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        smol::unblock(work).await
    }

    async fn listen(addr: SocketAddr) -> io::Result<Self::Listener> {
        smol::net::TcpListener::bind(addr).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn sleep(duration: Duration) {
        crate::timers::Sleep::after(duration).await;
    }

    fn shutdown_write(stream: &Self::Stream) -> io::Result<()> {
        stream.shutdown(Shutdown::Write)
    }

    fn set_abortive(stream: &Self::Stream) -> io::Result<()> {
        socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
    }

    fn set_nodelay(stream: &Self::Stream) -> io::Result<()> {
        stream.set_nodelay(true)
    }

    fn local_addr(stream: &Self::Stream) -> io::Result<SocketAddr> {
        stream.local_addr()
    }

    fn peer_addr(stream: &Self::Stream) -> io::Result<SocketAddr> {
        stream.peer_addr()
    }

    fn readable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        // The smol stream is a handle on a shared `Async` source: wait on the source itself.
        let source: Arc<Async<std::net::TcpStream>> = stream.clone().into();
        Some(async move { source.readable().await })
    }

    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        let source: Arc<Async<std::net::TcpStream>> = stream.clone().into();
        Some(async move {
            loop {
                // Readiness first: no `recv` while nothing is there. A readiness without bytes
                // (`WouldBlock`) waits for the next event, not a busy loop.
                source.readable().await?;
                match source.get_ref().peek(&mut [0]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
            }
        })
    }

    fn writable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        let source: Arc<Async<std::net::TcpStream>> = stream.clone().into();
        Some(async move { source.writable().await })
    }

    #[cfg(target_os = "linux")]
    fn fd(stream: &Self::Stream) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(stream.as_fd())
    }
}
