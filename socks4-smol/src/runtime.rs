//! The smol implementation of [`socks4_async::Runtime`], and [`BlockOn`]: how a worker thread
//! runs its executor on a runtime.
//!
//! Streams are async-io's `Async<TcpStream>` (no `Arc` of smol's `TcpStream` per connection); reads
//! and writes go through `read_with`/`write_with` (a call first, the readiness wait only on
//! `WouldBlock`). async-io keeps no readiness of its own (each wait is for a new event), so the
//! default [`try_io`](socks4_async::Runtime::try_io) is right.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use async_io::Async;
use futures_lite::future;
use socks4_async::Runtime;

/// A runtime a worker thread can run its executor on: `SmolLocal` (the
/// server's default), [`Smol`], or `AsyncStd` (feature `async-std`), and how the server's accept
/// loops wait on their listeners there.
pub trait BlockOn: Runtime {
    /// Runs a future to completion on the current thread, driving the runtime's reactor and timers.
    fn block_on<T>(future: impl Future<Output = T>) -> T;

    /// A listener an accept loop waits on; it accepts std streams, which the worker they are
    /// dealt to registers ([`Runtime::from_std`]).
    type AcceptListener: 'static;

    /// Sets up what the runtime needs on a worker thread before [`block_on`](Self::block_on), so
    /// that a failure (no descriptor for a poller) is an error of `Server::spawn`.
    fn init_thread() -> io::Result<()> {
        Ok(())
    }

    /// Registers a listener (on the worker thread whose accept loop uses it).
    fn accept_listener(listener: TcpListener) -> io::Result<Self::AcceptListener>;

    /// Accepts one pending connection, non-blocking, without registering it (`WouldBlock`: none;
    /// a runtime that caches readiness forgets it then).
    fn try_accept(listener: &Self::AcceptListener) -> io::Result<(TcpStream, SocketAddr)>;

    /// Waits until the listener may have a connection to accept.
    fn accept_readable(listener: &Self::AcceptListener) -> impl Future<Output = io::Result<()>> + '_;
}

/// The accept loop's listener on async-io ([`Smol`], and `AsyncStd`, which runs on async-io).
macro_rules! async_io_accept {
    () => {
        type AcceptListener = async_io::Async<std::net::TcpListener>;

        fn accept_listener(listener: std::net::TcpListener) -> std::io::Result<Self::AcceptListener> {
            async_io::Async::new(listener)
        }

        fn try_accept(listener: &Self::AcceptListener) -> std::io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
            socks4_sys::accept_nonblocking(listener.get_ref())
        }

        fn accept_readable(
            listener: &Self::AcceptListener,
        ) -> impl std::future::Future<Output = std::io::Result<()>> + '_ {
            listener.readable()
        }
    };
}
#[cfg(feature = "async-std")]
pub(crate) use async_io_accept;

/// The smol runtime: `async-io` reactor and timers (a per-thread wheel, see `timers`), `async-net`
/// resolution, blocking work on smol's thread pool. Its streams work on any executor that
/// async-io's reactor serves; the server's pool defaults to `SmolLocal`
/// instead (a reactor per worker, faster: see there), and runs on this with
/// `server.spawn_on::<Smol>()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl BlockOn for Smol {
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        crate::timers::block_on(future)
    }

    async_io_accept!();
}

impl Runtime for Smol {
    type Stream = Async<TcpStream>;
    type Listener = Async<TcpListener>;

    fn from_std(stream: TcpStream) -> io::Result<Self::Stream> {
        // Accepted non-blocking (accept4 with SOCK_NONBLOCK): no fcntl/ioctl again.
        Async::new_nonblocking(stream)
    }

    async fn connect_socket(socket: socket2::Socket, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        within::<Self, _>(timeout, connect_async_io(socket, addr)).await
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        async_net::resolve((host, port)).await
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        Some(blocking::unblock(work).await)
    }

    async fn listen(addr: SocketAddr) -> io::Result<Self::Listener> {
        Async::<TcpListener>::bind(addr)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.get_ref().local_addr()
    }

    async fn sleep(duration: Duration) {
        crate::timers::Sleep::after(duration).await;
    }

    fn socket(stream: &Self::Stream) -> socket2::SockRef<'_> {
        socket2::SockRef::from(stream.get_ref())
    }

    async fn read<'a>(stream: &'a Self::Stream, buf: &'a mut [u8]) -> io::Result<usize> {
        stream
            .read_with(|s| {
                let mut s = s;
                s.read(buf)
            })
            .await
    }

    async fn write<'a>(stream: &'a Self::Stream, buf: &'a [u8]) -> io::Result<usize> {
        stream
            .write_with(|s| {
                let mut s = s;
                s.write(buf)
            })
            .await
    }

    fn readable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(stream.readable())
    }

    fn writable(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(stream.writable())
    }

    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        // A readiness without bytes (`WouldBlock`) waits for the next event, not a busy loop.
        Some(stream.read_with(|s| s.peek(&mut [0])))
    }

    #[cfg(target_os = "linux")]
    fn fd(stream: &Self::Stream) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(stream.get_ref().as_fd())
    }
}

/// `work`'s result, or `TimedOut` once `timeout` has passed on `R`'s timers: the connect bound
/// of each of the crate's runtimes.
pub(crate) async fn within<R: Runtime, T>(
    timeout: Duration,
    work: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(work, async {
        R::sleep(timeout).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

/// Connects a new non-blocking socket with async-io (what `Async::<TcpStream>::connect` does
/// with a socket of its own): start the connect, wait until writable, read the pending error.
/// async-std's runtime uses it too (it has no writability wait of its own).
pub(crate) async fn connect_async_io(socket: socket2::Socket, addr: SocketAddr) -> io::Result<Async<TcpStream>> {
    socks4_sys::socket::connect_started(&socket, addr)?;
    let stream = Async::new_nonblocking(TcpStream::from(socket))?;
    stream.writable().await?;
    match stream.get_ref().take_error()? {
        None => Ok(stream),
        Some(e) => Err(e),
    }
}
