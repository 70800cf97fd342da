//! The async-std implementation of [`Runtime`] (feature `async-std`).
//!
//! async-std is deprecated upstream in favour of smol; this exists so the server can run inside
//! programs that still use it.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::runtime::{Runtime, with_timeout};

/// The async-std runtime: its reactor, timers, sockets and resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl Runtime for AsyncStd {
    type Stream = TcpStream;
    type Listener = TcpListener;

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }

    fn from_std(stream: std::net::TcpStream) -> io::Result<Self::Stream> {
        // async-std's conversion panics if the reactor cannot register the socket; turn that into
        // an error rather than losing the worker.
        stream.set_nonblocking(true)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| TcpStream::from(stream)))
            .map_err(|_| io::Error::other("could not register the socket with the reactor"))
    }

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        with_timeout::<Self, _>(timeout, TcpStream::connect(addr)).await
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs().await?.collect())
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        async_std::task::spawn_blocking(work).await
    }

    async fn listen(addr: SocketAddr) -> io::Result<Self::Listener> {
        TcpListener::bind(addr).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn sleep(duration: Duration) {
        async_std::task::sleep(duration).await;
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

    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        // async-std's `peek` waits for readiness itself (no `readable` here).
        Some(async move { stream.peek(&mut [0]).await })
    }
}
