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

/// A runtime a worker thread can run its executor on: [`Smol`], or `AsyncStd` (feature
/// `async-std`).
pub trait BlockOn: Runtime {
    /// Runs a future to completion on the current thread, driving the runtime's reactor and timers.
    fn block_on<T>(future: impl Future<Output = T>) -> T;
}

/// The smol runtime: `async-io` reactor and timers (a per-thread wheel, see `timers`), `async-net`
/// resolution, blocking work on smol's thread pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl BlockOn for Smol {
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        crate::timers::block_on(future)
    }
}

impl Runtime for Smol {
    type Stream = Async<TcpStream>;
    type Listener = Async<TcpListener>;

    fn from_std(stream: TcpStream) -> io::Result<Self::Stream> {
        // Accepted non-blocking (accept4 with SOCK_NONBLOCK): no fcntl/ioctl again.
        Async::new_nonblocking(stream)
    }

    async fn connect_socket(socket: socket2::Socket, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        future::or(connect_async_io(socket, addr), async {
            Self::sleep(timeout).await;
            Err(io::ErrorKind::TimedOut.into())
        })
        .await
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
